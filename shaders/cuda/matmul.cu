// Matrix-matrix product for prefill batches: y[t, o] = sum_i x[t, i] * W[o, i].
//
// Classic shared-memory tiling, fp32 (SIMT FMA; fp32 accumulate, no reduced-precision inputs):
// a block of 256 threads owns 64 weight rows x 64 tokens; per step of 32 input features, 64
// threads decode one 32-value group of their weight row (quant_blocks.cuh) into shared memory,
// all threads stage the activations, and each thread accumulates a 4 x 4 tile of outputs.
#include "quant_blocks.cuh"

#define MM_BO 64
#define MM_BT 64
#define MM_BK 32
#define MM_THREADS 256

template <int QT>
__device__ __forceinline__ void matmul_impl(const u8* __restrict__ W, int row_bytes,
                                            const float* __restrict__ x, float* __restrict__ y,
                                            int rows, int K, int n) {
    __shared__ __align__(16) float Ws[MM_BK][MM_BO + 4];
    __shared__ __align__(16) float Xs[MM_BK][MM_BT + 4];
    const int tid = threadIdx.x;
    const int o0 = blockIdx.x * MM_BO, t0 = blockIdx.y * MM_BT;
    const int tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;

    const int G = (K + 31) / 32;
    for (int g = 0; g < G; g++) {
        if (tid < MM_BO) {
            const int o = o0 + tid;
            float v[32];
            if (o < rows) {
                qb_group<QT>(W + (size_t)o * row_bytes, g, K, v);
            } else {
#pragma unroll
                for (int i = 0; i < 32; i++) v[i] = 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 32; i++) Ws[i][tid] = v[i];
        }
#pragma unroll
        for (int m = 0; m < (MM_BT * MM_BK) / MM_THREADS; m++) {
            const int e = tid + MM_THREADS * m;
            const int tt = e >> 5, kk = e & 31;
            const int t = t0 + tt, k = 32 * g + kk;
            Xs[kk][tt] = (t < n && k < K) ? x[(size_t)t * K + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_BK; kk++) {
            const float4 wv = *(const float4*)&Ws[kk][tx * 4];
            const float4 xv = *(const float4*)&Xs[kk][ty * 4];
            const float w4[4] = {wv.x, wv.y, wv.z, wv.w};
            const float x4[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) acc[a][b] += w4[a] * x4[b];
        }
        __syncthreads();
    }
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const int t = t0 + ty * 4 + b;
        if (t >= n) continue;
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int o = o0 + tx * 4 + a;
            if (o < rows) y[(size_t)t * rows + o] = acc[a][b];
        }
    }
}

#define G4RT_MATMUL(name, QT)                                                                   \
    extern "C" __global__ void __launch_bounds__(MM_THREADS)                                    \
    matmul_##name(const u8* W, int row_bytes, const float* x, float* y, int rows, int K, int n) { \
        matmul_impl<QT>(W, row_bytes, x, y, rows, K, n);                                        \
    }
G4RT_FOR_EACH_QTYPE(G4RT_MATMUL)
