// KV store: write each batch row into its sequence's slot of the caches (common.cuh's row
// words): position p of slot s at row s * ring + p % ring. Only the last `ring` rows of each
// sequence's segment are written (earlier ones would be overwritten by later rows of the same
// batch; writing them too would race). Caches are f16 (round to nearest even) or f32.
#include "common.cuh"

template <typename KV> __device__ __forceinline__ KV to_kv(float x);
template <> __device__ __forceinline__ u16 to_kv<u16>(float x) { return f32_to_f16(x); }
template <> __device__ __forceinline__ float to_kv<float>(float x) { return x; }

template <typename KV>
__device__ __forceinline__ void kv_store_impl(const float* __restrict__ k, const float* __restrict__ v,
                                              KV* __restrict__ ck, KV* __restrict__ cv,
                                              const int* __restrict__ params, int n, int cols, int ring) {
    const long long total = (long long)n * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / cols);
        const int c = (int)(i % cols);
        if (r - ROW_SEG0(params, r) + ring < ROW_SEGN(params, r)) continue;   // a later row takes it
        const long long slot = (long long)ROW_SLOT(params, r) * ring + ROW_POS(params, r) % ring;
        ck[slot * cols + c] = to_kv<KV>(k[(size_t)r * cols + c]);
        cv[slot * cols + c] = to_kv<KV>(v[(size_t)r * cols + c]);
    }
}

extern "C" __global__ void kv_store_f16(const float* k, const float* v, u16* ck, u16* cv,
                                        const int* params, int n, int cols, int ring) {
    kv_store_impl<u16>(k, v, ck, cv, params, n, cols, ring);
}

extern "C" __global__ void kv_store_f32(const float* k, const float* v, float* ck, float* cv,
                                        const int* params, int n, int cols, int ring) {
    kv_store_impl<float>(k, v, ck, cv, params, n, cols, ring);
}
