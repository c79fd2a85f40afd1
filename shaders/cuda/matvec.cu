// Matrix-vector product for small batches (decode): y[t, o] = sum_i x[t, i] * W[o, i], t < n <= MV_MAXN.
//
// One warp per weight row. The row is streamed in tiles of 2048 values (about 2 KiB for the float types) with
// coalesced 16-byte loads (32 lanes x 16 B per instruction, every byte of the row read once,
// the next tile's loads in flight while the current one is decoded) into the warp's slice of
// shared memory; each lane then decodes whole 32-value groups from shared memory and dots them
// with the activations on the fly (qb_dot32 in quant_blocks.cuh; float4 loads, L1/L2 hits).
// Partial sums are reduced with warp shuffles; fp32 throughout.
//
// Requirements (checked by the host): W's allocation is 16-byte aligned and padded by at least
// 16 bytes past the last row (tiles are read in whole aligned 16-byte chunks, which may reach a
// few bytes into the next row or the padding); every row starts at an even byte offset.
#include "matvec_tile.cuh"

// Unaligned activation rows (K % 4 != 0) or a partial last group (float types): decode, then dot.
template <int QT>
__device__ __noinline__ float mv_dot_slow(const u8* blk, int j, const float* xr, int nv) {
    float v[32];
    nv = nv > 32 ? 32 : nv;
    qb_dq32<QT>(blk, j, nv, v);
    float s = 0.0f;
    for (int i = 0; i < nv; i++) s += v[i] * xr[i];
    return s;
}

template <int QT>
__device__ __forceinline__ void matvec_impl(const u8* __restrict__ W, int row_bytes,
                                            const float* __restrict__ x, float* __restrict__ y,
                                            int rows, int K, int n) {
    typedef MvTile<QT> T;
    __shared__ uint4 sm[MV_WARPS][T::CHUNKS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * MV_WARPS + warp;
    if (row >= rows) return;                      // the whole warp leaves; no block barriers below
    const int GPB = QB<QT>::VALS / 32;
    const int G = (K + 31) / 32;                  // groups in the row
    const int ntiles = (G + T::GROUPS - 1) / T::GROUPS;
    const u64 rstart = (u64)W + (u64)row * (u64)row_bytes;
    const bool vec_x = (K & 3) == 0;

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
            const int g = g0 + gl;
            const u8* blk = base + (gl / GPB) * QB<QT>::BYTES;
            const bool fast = vec_x && 32 * g + 32 <= K;
#pragma unroll
            for (int t = 0; t < MV_MAXN; t++) {
                if (t < n) {
                    const float* xr = x + (size_t)t * K + 32 * g;
                    acc[t] += fast ? qb_dot32<QT>(blk, gl % GPB, xr) : mv_dot_slow<QT>(blk, gl % GPB, xr, K - 32 * g);
                }
            }
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

#define G4RT_MATVEC(name, QT)                                                                   \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                 \
    matvec_##name(const u8* W, int row_bytes, const float* x, float* y, int rows, int K, int n) { \
        matvec_impl<QT>(W, row_bytes, x, y, rows, K, n);                                        \
    }
G4RT_FOR_EACH_QTYPE(G4RT_MATVEC)
