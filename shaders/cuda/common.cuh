// Shared helpers of the g4rt CUDA kernels (compiled at run time by NVRTC: no system or CUDA
// headers are included, so everything used here is a compiler builtin or inline PTX).
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// The per-call parameters buffer (int32 words), written before every graph launch:
//   [0] pos0 (position of row 0 of the batch)   [1] n_tokens   [2 ..] token ids
//   then four words per row (ops.Segment: several sequences in one batch): its position, its
//   sequence's KV cache slot, the first row of its segment, the segment's row count. One
//   sequence: position pos0 + row, slot 0, segment 0 .. n_tokens - 1.
#define P_POS0 0
#define P_NTOK 1
#define P_TOKENS 2
#define ROW_WORD(params, row, k) ((params)[P_TOKENS + (params)[P_NTOK] + 4 * (row) + (k)])
#define ROW_POS(params, row) ROW_WORD(params, row, 0)
#define ROW_SLOT(params, row) ROW_WORD(params, row, 1)
#define ROW_SEG0(params, row) ROW_WORD(params, row, 2)
#define ROW_SEGN(params, row) ROW_WORD(params, row, 3)

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));   // round to nearest even, like numpy
    return h;
}
#else
// Plain C++: the host build of the block decoders (the CPU-side decoder test,
// tests/test_cuda_compile.py) and the CPU simulator (sim/cuda_sim.h, force-included, supplies
// the CUDA builtins). Plain functions instead of the device intrinsics.
#include <cmath>
#include <cstring>
#ifndef G4RT_CPU_SIM
#define __device__
#define __forceinline__ inline
#endif
static inline float __uint_as_float(u32 u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline float f16_to_f32(u16 h) {
    const u32 s = (u32)(h >> 15) << 31, e = (h >> 10) & 31u, m = h & 1023u;
    u32 bits;
    if (e == 0) {
        if (m == 0) {
            bits = s;
        } else {                      // subnormal: renormalise
            int ee = -1;
            u32 mm = m;
            do { ee++; mm <<= 1; } while (!(mm & 1024u));
            bits = s | ((u32)(127 - 15 - ee) << 23) | ((mm & 1023u) << 13);
        }
    } else if (e == 31) {
        bits = s | 0x7F800000u | (m << 13);
    } else {
        bits = s | ((e + 112u) << 23) | (m << 13);
    }
    return __uint_as_float(bits);
}

// Round to nearest even, as cvt.rn.f16.f32 and numpy do.
static inline u16 f32_to_f16(float f) {
    u32 x;
    std::memcpy(&x, &f, 4);
    const u32 sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (u16)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
    if (ax >= 0x477FF000u) return (u16)(sign | 0x7C00u);          // rounds past 65504: inf
    if (ax < 0x38800000u) {                                        // below 2^-14: subnormal
        float a;
        std::memcpy(&a, &ax, 4);
        return (u16)(sign | (u32)nearbyintf(a * 16777216.0f));     // exact scaling, RNE
    }
    u32 h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 1023u));
    const u32 rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;       // a carry bumps the exponent
    return (u16)(sign | h);
}
#endif

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(G4RT_CPU_SIM)
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `sh` holds at least 32 doubles. Ends with a barrier, so `sh` may be reused right after.
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = lane < nw ? sh[lane] : 0.0;
    t = warp_sum_d(t);
    __syncthreads();
    return t;
}

#endif

// Kernel-side loads of the byte layouts (generic pointers: global or shared memory).
__device__ __forceinline__ u32 ld_u8(const u8* p) { return *p; }
// 16 bits at an even address.
__device__ __forceinline__ u32 ld_u16(const u8* p) { return *(const u16*)p; }
// 32 bits at an even address (two 16-bit halves: block fields are only 2-byte aligned).
__device__ __forceinline__ u32 ld_u32_a2(const u8* p) {
    return ((u32)(*(const u16*)p)) | (((u32)(*(const u16*)(p + 2))) << 16);
}
