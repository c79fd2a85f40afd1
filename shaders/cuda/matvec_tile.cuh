// The matvec kernels' row streaming (matvec.cu, matvec8.cu): one warp per weight row, the row
// read in tiles of GROUPS 32-value groups as the aligned 16-byte chunks that cover the tile
// (rows are only 2-byte aligned), 32 lanes x 16 B per load instruction, L1-bypassing.
#pragma once
#include "quant_blocks.cuh"

#define MV_WARPS 4
#define MV_MAXN 4

template <int QT> struct MvTile {
    static const int GROUPS = QT == GGML_F32 ? 16 : ((QT == GGML_F16 || QT == GGML_BF16) ? 32 : 64);
    static const int BYTES = GROUPS * 32 / QB<QT>::VALS * QB<QT>::BYTES;
    static const int CHUNKS = BYTES / 16 + 2;                      // 16 B chunks at any shift
    static const int CPL = (CHUNKS + 31) / 32;                     // chunks per lane
};

__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {
#ifdef G4RT_CPU_SIM
    return *p;
#else
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
#endif
}

template <int QT>
__device__ __forceinline__ void mv_load_tile(u64 rstart, int row_bytes, int t, int lane,
                                             uint4 (&r)[MvTile<QT>::CPL], int& nch, int& shift) {
    typedef MvTile<QT> T;
    const u64 a = rstart + (u64)t * T::BYTES;
    u64 b = a + T::BYTES;
    const u64 end = rstart + (u64)row_bytes;
    if (b > end) b = end;
    const u64 as = a & ~(u64)15;
    nch = (int)((b - as + 15) >> 4);
    shift = (int)(a - as);
    const uint4* src = (const uint4*)as;
#pragma unroll
    for (int k = 0; k < T::CPL; k++) {
        const int c = lane + 32 * k;
        if (c < nch) r[k] = ld_stream16(src + c);
    }
}

