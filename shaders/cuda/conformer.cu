// The gemma4a conformer's ops (runtime/ops/audio.py: Silu, Glu, Conv2dNormRelu, DepthwiseConv1d,
// ChunkedAttention). numpy_ref/audio_ops.py defines them, shaders/cpu/conformer_ops.c is the
// native CPU twin; the clipped linears' Clamp is media.cu's.
#include "common.cuh"

#define CF_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// out = x * sigmoid(x), in double (as the reference)
extern "C" __global__ void silu(const float* x, float* out, int n) {
    CF_GRID_STRIDE(i, n) {
        const double v = x[i];
        out[i] = (float)(v / (1.0 + exp(-v)));
    }
}

// out[r, j] = x[r, j] * sigmoid(x[r, j + cols]) in double; x has 2 * cols columns
extern "C" __global__ void glu(const float* x, float* out, int rows, int cols) {
    const long long n = (long long)rows * cols;
    CF_GRID_STRIDE(i, n) {
        const long long r = i / cols, j = i % cols;
        const float* xr = x + (size_t)r * 2 * cols;
        out[i] = (float)((double)xr[j] / (1.0 + exp(-(double)xr[j + cols])));
    }
}

// out[t, c] = sum_k w[c * K + k] * x[t - K + 1 + k, c] (causal; rows before 0 are zeros), double sums
extern "C" __global__ void depthwise_conv1d(const float* x, const float* w, float* out, int rows, int cols, int K) {
    const long long n = (long long)rows * cols;
    CF_GRID_STRIDE(i, n) {
        const long long t = i / cols, c = i % cols;
        double s = 0.0;
        for (int k = 0; k < K; k++) {
            const long long u = t - K + 1 + k;
            if (u >= 0) s += (double)w[c * K + k] * (double)x[u * cols + c];
        }
        out[i] = (float)s;
    }
}

// ---- Conv2d 3x3 / stride 2 / pad 1 + LayerNorm over channels + ReLU ------------------------------
// x [T, F * ci] (channel fastest), mask (stride mask_cols) or NULL: rows whose mask is 0 count as
// zeros; w [co][ci][3][3] f32, norm [co]; out [out_rows, Fo * co]. One block per output position
// (fo, t): the 3x3 x ci input patch goes to shared memory, thread o sums output channel o (and
// o + blockDim, ...) in double, rounded to float; the channel LayerNorm's statistics in double.
#define CV_MAX_CI 512
#define CV_MAX_CO 1024
extern "C" __global__ void conv2d_norm_relu(const float* x, const float* mask, const float* w, const float* norm,
                                            float* out, int T, int F, int ci, int co, int mask_cols, double eps) {
    __shared__ float patch[9 * CV_MAX_CI];
    __shared__ double y[CV_MAX_CO];
    __shared__ double sh[32];
    const int fo = blockIdx.x, t = blockIdx.y, Fo = gridDim.x;
    const int in_cols = F * ci;
    for (int e = threadIdx.x; e < 9 * ci; e += blockDim.x) {
        const int tap = e / ci, i = e % ci, kt = tap / 3, kf = tap % 3;
        const int ti = 2 * t + kt - 1, fi = 2 * fo + kf - 1;
        float v = 0.0f;
        if (ti >= 0 && ti < T && fi >= 0 && fi < F && (!mask || mask[(size_t)ti * mask_cols] != 0.0f))
            v = x[(size_t)ti * in_cols + (size_t)fi * ci + i];
        patch[e] = v;
    }
    __syncthreads();
    double s = 0.0;
    for (int o = threadIdx.x; o < co; o += blockDim.x) {
        double acc = 0.0;
        for (int tap = 0; tap < 9; tap++) {
            const float* wk = w + (size_t)o * ci * 9 + tap;
            const float* p = patch + tap * ci;
            double a = 0.0;
            for (int i = 0; i < ci; i++) a += (double)wk[(size_t)i * 9] * (double)p[i];
            acc += a;
        }
        const double r = (double)(float)acc;
        y[o] = r;
        s += r;
    }
    const double mean = block_sum_d(s, sh) / (double)co;
    double q = 0.0;
    for (int o = threadIdx.x; o < co; o += blockDim.x) q += (y[o] - mean) * (y[o] - mean);
    const double var = block_sum_d(q, sh) / (double)co;
    const double inv = 1.0 / sqrt(var + eps);
    float* dst = out + ((size_t)t * Fo + fo) * co;
    for (int o = threadIdx.x; o < co; o += blockDim.x) {
        const float v = (float)((y[o] - mean) * inv) * norm[o];
        dst[o] = v > 0.0f ? v : 0.0f;
    }
}

// ---- ChunkedAttention ---------------------------------------------------------------------------
// The relative-position table rel [window + 1, HD] = sinusoids @ w^T (w [HD, width] f32): row r is
// position p = window - r as [sin(p f_i), cos(p f_i)], f_i = expf(i * c) (c = -ln(1e4) /
// max(width/2 - 1, 1), given as a float), all float32; the product in double, rounded to float.
// grid (ceil(HD / 8), window + 1), 256 threads: one warp per output column, lanes over width.
extern "C" __global__ void chunked_rel(const float* w, float* rel, int HD, int width, int window, float c) {
    const int lane = threadIdx.x & 31, j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int r = blockIdx.y, half = width / 2;
    if (j >= HD) return;                           // whole warps leave together
    const float p = (float)(window - r);
    double s = 0.0;
    for (int i = lane; i < 2 * half; i += 32) {
        const int f = i < half ? i : i - half;
        const float arg = p * expf((float)f * c);
        const float tv = i < half ? sinf(arg) : cosf(arg);
        s += (double)tv * (double)w[(size_t)j * width + i];
    }
    s = warp_sum_d(s);
    if (lane == 0) rel[(size_t)r * HD + j] = (float)s;
}

// q, k, v [rows, H * D]; rel [window + 1, H * D] (chunked_rel); by [D] or NULL. Per (row t, head
// h): keys u = t - d, d < window, 0 <= u < valid; q' = q * q_scale (* by), k' = k * k_scale,
// s = q'.k' + q'.rel[window - d] (two float sums), cap * tanh(s / cap), softmax in float,
// out = sum p v (0 when no key is valid). One warp per (t, h), CA_WARPS per block: q' in shared
// memory, lanes over the head's dims for each key's dots (coalesced rows, warp sums); lane d % 32
// keeps key d's score (d < window <= 64). D <= CA_DMAX.
#define CA_WARPS 4
#define CA_DMAX 512
#define CA_MAXW 64                                // two score slots a lane
extern "C" __global__ void chunked_attention(const float* q, const float* k, const float* v, const float* rel,
                                             const float* by, float* out, int rows, int H, int D, float q_scale,
                                             float k_scale, float cap, int window, int valid) {
    __shared__ float qsh[CA_WARPS * CA_DMAX];
    const float NEG_INF = __int_as_float(0xff800000);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long item = (long long)blockIdx.x * CA_WARPS + warp;
    if (item >= (long long)rows * H) return;       // whole warps; no block barrier below
    const int t = (int)(item / H), h = (int)(item % H);
    const size_t HD = (size_t)H * D;
    float* qs = qsh + warp * CA_DMAX;
    for (int i = lane; i < D; i += 32) {
        float a = q[(size_t)t * HD + (size_t)h * D + i] * q_scale;
        if (by) a = a * by[i];
        qs[i] = a;
    }
    __syncwarp();
    float sc0 = NEG_INF, sc1 = NEG_INF;           // lane l: the scores of keys l and l + 32
    float mx = NEG_INF;
    for (int d = 0; d < window && t - d >= 0; d++) {
        const int u = t - d;
        if (u >= valid) continue;                  // the same for every lane
        const float* kr = k + (size_t)u * HD + (size_t)h * D;
        const float* rr = rel + (size_t)(window - d) * HD + (size_t)h * D;
        float ac = 0.0f, bd = 0.0f;
        for (int i = lane; i < D; i += 32) {
            ac += qs[i] * (kr[i] * k_scale);
            bd += qs[i] * rr[i];
        }
        float s = warp_sum(ac) + warp_sum(bd);
        s = cap * tanhf(s / cap);
        mx = fmaxf(mx, s);
        if (lane == (d & 31)) {
            if (d < 32) sc0 = s;
            else sc1 = s;
        }
    }
    float* o = out + (size_t)t * HD + (size_t)h * D;
    if (mx == NEG_INF) {                           // no valid key: zeros (the reference's)
        for (int i = lane; i < D; i += 32) o[i] = 0.0f;
        return;
    }
    sc0 = sc0 == NEG_INF ? 0.0f : expf(sc0 - mx);
    sc1 = sc1 == NEG_INF ? 0.0f : expf(sc1 - mx);
    const float sum = warp_sum(sc0 + sc1);
    for (int i0 = 0; i0 < D; i0 += 32) {
        const int i = i0 + lane;
        float acc = 0.0f;
        for (int d = 0; d < window && t - d >= 0; d++) {
            const float p = __shfl_sync(0xffffffffu, d < 32 ? sc0 : sc1, d & 31);
            if (p == 0.0f) continue;               // masked (the same for every lane)
            if (i < D) acc += (p / sum) * v[(size_t)(t - d) * HD + (size_t)h * D + i];
        }
        if (i < D) o[i] = acc;
    }
}
