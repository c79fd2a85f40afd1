// Opt-in int8 decode path (CudaBackend(int8_matvec=True), G4RT_CUDA_INT8=1): activations
// quantized to 8 bits per 32-value group, weights dotted with 4-way int8 dot products (dp4a),
// as llama.cpp's q8_1 matvec does. About a quarter of the instructions of the fp32 matvec per
// weight byte (scripts/sass_stats.py), at the price of rounding every activation to 8 bits
// (relative error up to 1/254 of its group's largest value). Off by default: the fp32 path is
// exact to fp32 accumulation.
//
// quantize_q8: x [n, K] f32 -> q [n, G, 32] int8 (G = K / 32), ds [n, G] float2
//   d = max|x| / 127 over the group, q = round(x / d), ds = (d, d * sum q).
// matvec8_<type>: y[t, o] = sum over groups of (weight group . q group), in the weight type's
//   scales; the same tiling as matvec.cu (one warp per row, tiles through shared memory).
//   K must be a multiple of 32 (the host falls back to the fp32 matvec otherwise).
#include "matvec_tile.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#else
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; k++) c += (int)(i8)(a >> (8 * k)) * (int)(i8)(b >> (8 * k));
    return c;
}
#endif

extern "C" __global__ void __launch_bounds__(128)
quantize_q8(const float* __restrict__ x, i8* __restrict__ q, float* __restrict__ ds, int K, int n) {
    const int lane = threadIdx.x & 31;
    const int g = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int t = blockIdx.y;
    const int G = K / 32;
    if (g >= G) return;                                   // whole warps leave
    const float v = x[(size_t)t * K + 32 * g + lane];
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const int qi = amax == 0.0f ? 0 : __float2int_rn(v / d);
    q[((size_t)t * G + g) * 32 + lane] = (i8)qi;
    const float sq = warp_sum((float)qi);                 // exact: |sum| <= 32 * 127
    if (lane == 0) {
        ds[2 * ((size_t)t * G + g)] = d;
        ds[2 * ((size_t)t * G + g) + 1] = d * sq;
    }
}

// One 32-value weight group (sub-block j of the block at b) dotted with 8 words of int8
// activations xq (values 4c .. 4c+3 in word c), in the weight's scales: returns
// sum_i w_i * (d * q_i), given xd = (d, d * sum q).
template <int QT> __device__ __forceinline__ float qb_dot8(const u8* b, int j, const int* xq, float2 xd);

template <> __device__ __forceinline__ float qb_dot8<GGML_Q8_0>(const u8* b, int j, const int* xq, float2 xd) {
    const float d = f16_to_f32((u16)ld_u16(b));
    int acc = 0;
#pragma unroll
    for (int c = 0; c < 8; c++) acc = dp4a((int)ld_u32_a2(b + 2 + 4 * c), xq[c], acc);
    return d * xd.x * (float)acc;
}

template <> __device__ __forceinline__ float qb_dot8<GGML_Q4_0>(const u8* b, int j, const int* xq, float2 xd) {
    const float d = f16_to_f32((u16)ld_u16(b));
    int acc = 0;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const u32 w = ld_u32_a2(b + 2 + 4 * c);           // low nibbles: values 4c.., high: 16+4c..
        acc = dp4a((int)(w & 0x0F0F0F0Fu), xq[c], acc);
        acc = dp4a((int)((w >> 4) & 0x0F0F0F0Fu), xq[c + 4], acc);
    }
    return d * (xd.x * (float)acc - 8.0f * xd.y);          // q - 8: the -8 through sum q
}

template <> __device__ __forceinline__ float qb_dot8<GGML_Q4_K>(const u8* b, int j, const int* xq, float2 xd) {
    float d, m;
    qb_k_dm(b, j, d, m);
    const u8* qs = b + 16 + 32 * (j >> 1);
    const int sh = 4 * (j & 1);
    int acc = 0;
#pragma unroll
    for (int c = 0; c < 8; c++) acc = dp4a((int)((ld_u32_a2(qs + 4 * c) >> sh) & 0x0F0F0F0Fu), xq[c], acc);
    return d * xd.x * (float)acc - m * xd.y;
}

template <> __device__ __forceinline__ float qb_dot8<GGML_Q6_K>(const u8* b, int j, const int* xq, float2 xd) {
    const Q6Sub q6 = qb_q6k_sub(b, j);
    const u8 *ql = q6.ql, *qh = q6.qh;
    const int ls = q6.ls, hs = q6.hs;
    const u32 sw = q6.sw;
    const float d = q6.d;
    int a0 = 0, a1 = 0;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const u32 q = ((ld_u32_a2(ql + 4 * c) >> ls) & 0x0F0F0F0Fu) |
                      (((ld_u32_a2(qh + 4 * c) >> hs) & 0x03030303u) << 4);   // 6-bit codes
        const u32 s = ((q | 0x80808080u) - 0x20202020u) ^ 0x80808080u;          // bytes q - 32
        if (c < 4) a0 = dp4a((int)s, xq[c], a0);
        else a1 = dp4a((int)s, xq[c], a1);
    }
    return d * xd.x * ((float)(int)(i8)(sw & 0xFFu) * (float)a0 + (float)(int)(i8)(sw >> 8) * (float)a1);
}

template <int QT>
__device__ __forceinline__ void matvec8_impl(const u8* __restrict__ W, int row_bytes, const i8* __restrict__ xq,
                                             const float* __restrict__ xds, float* __restrict__ y,
                                             int rows, int K, int n) {
    const int G = K / 32;
    mv_rows<QT>(W, row_bytes, y, rows, K, n, [&](const u8* blk, int j, int g, int t) {
        const uint4* xp = (const uint4*)(xq + ((size_t)t * G + g) * 32);
        const uint4 x0 = xp[0], x1 = xp[1];
        const int xw[8] = {(int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w, (int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w};
        return qb_dot8<QT>(blk, j, xw, ((const float2*)xds)[(size_t)t * G + g]);
    });
}

#define G4RT_MATVEC8(name, QT)                                                                  \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                 \
    matvec8_##name(const u8* W, int row_bytes, const i8* xq, const float* xds, float* y,       \
                   int rows, int K, int n) {                                                    \
        matvec8_impl<QT>(W, row_bytes, xq, xds, y, rows, K, n);                                 \
    }
// only the types with a dp4a decoder; a per-type compile (-DG4RT_QTYPE_NAME) names one of them
#if defined(G4RT_QTYPE_NAME) && defined(G4RT_QTYPE_ID)
G4RT_FOR_EACH_QTYPE(G4RT_MATVEC8)
#else
G4RT_MATVEC8(q8_0, GGML_Q8_0)
G4RT_MATVEC8(q4_0, GGML_Q4_0)
G4RT_MATVEC8(q4_k, GGML_Q4_K)
G4RT_MATVEC8(q6_k, GGML_Q6_K)
#endif
