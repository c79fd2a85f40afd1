// Embedding lookup: out[r] = dequant(table[tokens[r]]) * scale, token ids from the parameters
// buffer (clamped to the table; the engine validates ids before every call).
// grid (ceil(groups / 128), n_rows), 128 threads: one 32-value group per thread.
#include "quant_blocks.cuh"

template <int QT>
__device__ __forceinline__ void embed_impl(const u8* __restrict__ table, int row_bytes, int n_table,
                                           const int* __restrict__ params, float* __restrict__ out,
                                           int K, float scale) {
    const int r = blockIdx.y;
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (32 * g >= K) return;
    int tok = params[P_TOKENS + r];
    tok = tok < 0 ? 0 : (tok >= n_table ? n_table - 1 : tok);
    float v[32];
    qb_group<QT>(table + (size_t)tok * row_bytes, g, K, v);
    float* o = out + (size_t)r * K + 32 * g;
#pragma unroll
    for (int i = 0; i < 32; i++)
        if (32 * g + i < K) o[i] = v[i] * scale;
}

#define G4RT_EMBED(name, QT)                                                                    \
    extern "C" __global__ void embed_##name(const u8* table, int row_bytes, int n_table,        \
                                            const int* params, float* out, int K, float scale) { \
        embed_impl<QT>(table, row_bytes, n_table, params, out, K, scale);                      \
    }
G4RT_FOR_EACH_QTYPE(G4RT_EMBED)
