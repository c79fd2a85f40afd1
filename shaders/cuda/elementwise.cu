// Element-wise ops over n floats (grid-stride loops; in place is fine) and the 2-D slice copy.
#include "common.cuh"

#define G4RT_GELU_C 0.7978845608028654f   // sqrt(2 / pi)

__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(G4RT_GELU_C * (x + 0.044715f * x * x * x)));
}

#define G4RT_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void add(const float* a, const float* b, float* out, int n) {
    G4RT_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

// out[r] = take[r] != 0 ? src[r] : x[r] (media soft tokens into their placeholder rows)
extern "C" __global__ void take_rows(const float* x, const float* src, const float* take, float* out, int rows,
                                     int cols) {
    G4RT_GRID_STRIDE(i, rows * cols) out[i] = take[i / cols] != 0.0f ? src[i] : x[i];
}

extern "C" __global__ void mul(const float* a, const float* b, float* out, int n) {
    G4RT_GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

extern "C" __global__ void gelu_mul(const float* gate, const float* up, float* out, int n) {
    G4RT_GRID_STRIDE(i, n) out[i] = gelu_tanh(gate[i]) * up[i];
}

extern "C" __global__ void gelu(const float* x, float* out, int n) {
    G4RT_GRID_STRIDE(i, n) out[i] = gelu_tanh(x[i]);
}

// out = x * s, then times by[0] when `by` is given.
extern "C" __global__ void scale(const float* x, float* out, int n, float s, const float* by) {
    const float b = by ? by[0] : 1.0f;
    const bool use_b = by != 0;
    G4RT_GRID_STRIDE(i, n) {
        float y = x[i] * s;
        if (use_b) y = y * b;
        out[i] = y;
    }
}

extern "C" __global__ void softcap(const float* x, float* out, int n, float cap) {
    G4RT_GRID_STRIDE(i, n) out[i] = cap * tanhf(x[i] / cap);
}

// out[r, c] = x[row0 + r, col0 + c] for r < rows, c < cols; x has xcols columns.
extern "C" __global__ void slice(const float* x, float* out, int rows, int cols, int xcols, int row0,
                                 int col0) {
    const long long n = (long long)rows * cols;
    G4RT_GRID_STRIDE(i, n) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        out[i] = x[(size_t)(row0 + r) * xcols + col0 + c];
    }
}
