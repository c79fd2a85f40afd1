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
    const bool vec_x = (K & 3) == 0;
    mv_rows<QT>(W, row_bytes, y, rows, K, n, [&](const u8* blk, int j, int g, int t) {
        const float* xr = x + (size_t)t * K + 32 * g;
        return vec_x && 32 * g + 32 <= K ? qb_dot32<QT>(blk, j, xr) : mv_dot_slow<QT>(blk, j, xr, K - 32 * g);
    });
}

#define G4RT_MATVEC(name, QT)                                                                   \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                 \
    matvec_##name(const u8* W, int row_bytes, const float* x, float* y, int rows, int K, int n) { \
        matvec_impl<QT>(W, row_bytes, x, y, rows, K, n);                                        \
    }
G4RT_FOR_EACH_QTYPE(G4RT_MATVEC)

// Mixture of experts: y[s, o] = sum_i x[row(s), i] * W_e[o, i] for each selection s = r*k + j
// (blockIdx.y), e = route[r][k + j] (route rows: k weights then k expert indices as floats),
// row(s) = s when per_sel, else r. W holds every expert's [N, K] matrix one after another: a
// launch reads only the selected experts' rows, with the matvec above (one warp per row).
template <int QT>
__device__ __forceinline__ void moe_matvec_impl(const u8* __restrict__ W, int row_bytes, const float* __restrict__ x,
                                                const float* __restrict__ route, float* __restrict__ y,
                                                int N, int K, int k, int per_sel) {
    const int s = blockIdx.y, r = s / k, j = s - r * k;
    const int e = (int)route[(size_t)r * 2 * k + k + j];
    matvec_impl<QT>(W + (size_t)e * (size_t)N * (size_t)row_bytes, row_bytes,
                    x + (size_t)(per_sel ? s : r) * K, y + (size_t)s * N, N, K, 1);
}

#define G4RT_MOE_MATVEC(name, QT)                                                                \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                  \
    moe_matvec_##name(const u8* W, int row_bytes, const float* x, const float* route, float* y,  \
                      int N, int K, int k, int per_sel) {                                        \
        moe_matvec_impl<QT>(W, row_bytes, x, route, y, N, K, k, per_sel);                         \
    }
G4RT_FOR_EACH_QTYPE(G4RT_MOE_MATVEC)
