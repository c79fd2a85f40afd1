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


// The row loop of the matvecs: one warp per weight row (the block's MV_WARPS rows), the row
// streamed through the warp's slice of shared memory a tile at a time (the next tile's loads in
// flight while this one is decoded); each lane takes whole 32-value groups, and
// dot(blk, j, g, t) gives group g's contribution (sub-block j of the block at blk, in shared
// memory) to output row t < n. Lane sums are reduced with warp shuffles.
template <int QT, class Dot>
__device__ __forceinline__ void mv_rows(const u8* __restrict__ W, int row_bytes, float* __restrict__ y,
                                        int rows, int K, int n, Dot dot) {
    typedef MvTile<QT> T;
    __shared__ uint4 sm[MV_WARPS][T::CHUNKS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * MV_WARPS + warp;
    if (row >= rows) return;                      // the whole warp leaves; no block barriers below
    const int GPB = QB<QT>::VALS / 32;
    const int G = (K + 31) / 32;                  // groups in the row
    const int ntiles = (G + T::GROUPS - 1) / T::GROUPS;
    const u64 rstart = (u64)W + (u64)row * (u64)row_bytes;

    float acc[MV_MAXN];
#pragma unroll
    for (int t = 0; t < MV_MAXN; t++) acc[t] = 0.0f;

    uint4 r[T::CPL];
    int nch, shift;
    mv_load_tile<QT>(rstart, row_bytes, 0, lane, r, nch, shift);
    for (int tile = 0; tile < ntiles; tile++) {
#pragma unroll
        for (int k = 0; k < T::CPL; k++) {
            const int c = lane + 32 * k;
            if (c < nch) sm[warp][c] = r[k];
        }
        __syncwarp();
        const u8* base = (const u8*)&sm[warp][0] + shift;
        if (tile + 1 < ntiles) mv_load_tile<QT>(rstart, row_bytes, tile + 1, lane, r, nch, shift);
        const int g0 = tile * T::GROUPS;
        const int ng = min(T::GROUPS, G - g0);
        for (int gl = lane; gl < ng; gl += 32) {
            const u8* blk = base + (gl / GPB) * QB<QT>::BYTES;
#pragma unroll
            for (int t = 0; t < MV_MAXN; t++)
                if (t < n) acc[t] += dot(blk, gl % GPB, g0 + gl, t);
        }
        __syncwarp();
    }
#pragma unroll
    for (int t = 0; t < MV_MAXN; t++) {
        if (t < n) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) y[(size_t)t * rows + row] = s;
        }
    }
}
