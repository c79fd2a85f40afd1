// RMSNorm (grouped, optional weight) and NeoX RoPE (optional frequency factors).
#include "common.cuh"

// Each run of `group` columns: v / sqrt(mean(v^2) + eps), times w[0 .. group) when w is given.
// grid (cols / group, rows); any block size that is a multiple of 32. The mean of squares is
// accumulated in double (as the reference does); the scale is rounded to float once.
// In place (out == x) is safe: each thread writes only the elements it read, after the barrier.
extern "C" __global__ void rmsnorm(const float* x, float* out, const float* w, int cols, int group,
                                   double eps) {
    __shared__ double sh[32];
    const size_t base = (size_t)blockIdx.y * cols + (size_t)blockIdx.x * group;
    double s = 0.0;
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        const float a = x[base + i];
        s += (double)a * (double)a;
    }
    s = block_sum_d(s, sh);
    const float inv = (float)(1.0 / sqrt(s / (double)group + eps));
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        float y = x[base + i] * inv;
        if (w) y = y * w[i];
        out[base + i] = y;
    }
}

// In place on x ([rows, cols], heads of head_dim columns): the pair (i, i + n_rot/2), i < n_rot/2,
// of every head of row r turns by angle p * base^(-2i/n_rot) / ff[i] (ff optional), p the row's
// position (common.cuh's row words).
// The angle is computed in double (as the reference does), its cos/sin rounded to float.
// Columns past n_rot are not touched (the host copies them first when out != x).
extern "C" __global__ void rope(float* x, const float* ff, const int* params, int rows, int cols,
                                int head_dim, int n_rot, double base) {
    const int half = n_rot / 2;
    const int heads = cols / head_dim;
    const long long total = (long long)rows * heads * half;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const int hh = (int)((idx / half) % heads);
        const int r = (int)(idx / ((long long)half * heads));
        double inv = pow(base, (-2.0 * (double)i) / (double)n_rot);
        if (ff) inv = inv / (double)ff[i];
        const double ang = (double)ROW_POS(params, r) * inv;
        const float c = (float)cos(ang), s = (float)sin(ang);
        float* hp = x + (size_t)r * cols + (size_t)hh * head_dim;
        const float a = hp[i], b = hp[i + half];
        hp[i] = a * c - b * s;
        hp[i + half] = a * s + b * c;
    }
}
