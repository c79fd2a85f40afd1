// Mixture-of-experts routing and the weighted sum of the experts' outputs (ops.MoeRoute, MoeSum).
#include "common.cuh"

// One thread per row: the k largest router logits' experts (equal logits: the lower index
// first), weights p_j / sum of the selected p (the softmax's denominator cancels; in double),
// times scale[e] when scale is given. out[r] = k weights, then the k indices as floats.
extern "C" __global__ void moe_route(const float* __restrict__ logits, float* __restrict__ out,
                                     const float* __restrict__ scale, int rows, int n_exp, int k) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        const float* l = logits + (size_t)r * n_exp;
        float* o = out + (size_t)r * 2 * k;
        double first = 0.0, sum = 0.0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < n_exp; e++) {
                bool taken = false;
                for (int i = 0; i < j; i++) taken |= (int)o[k + i] == e;
                if (!taken && (best < 0 || l[e] > l[best])) best = e;
            }
            o[k + j] = (float)best;
            if (j == 0) first = (double)l[best];
            sum += exp((double)l[best] - first);
        }
        for (int j = 0; j < k; j++) {
            const int e = (int)o[k + j];
            double p = exp((double)l[e] - first) / sum;
            if (scale) p *= (double)scale[e];
            o[j] = (float)p;
        }
    }
}

// out[r, c] = sum over j < k, in order, of route[r][j] * y[r*k + j, c].
extern "C" __global__ void moe_sum(const float* __restrict__ y, const float* __restrict__ route,
                                   float* __restrict__ out, int rows, int cols, int k) {
    const long total = (long)rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long r = i / cols, c = i - r * cols;
        float acc = 0.0f;
        for (int j = 0; j < k; j++) acc += route[r * 2 * k + j] * y[(r * k + j) * cols + c];
        out[i] = acc;
    }
}
