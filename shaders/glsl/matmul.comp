#version 450
// MatMul for many tokens (prefill): out[t, col0 + o] = sum_i x[t, i] * W[o, i].
// 32 weight rows x 32 tokens per tile, 64 threads each owning 4x4 outputs; per 32-wide K step
// half the threads decode one weight group each into shared memory while the other half stage
// the activations, so every weight block is decoded once per 32 tokens.
// Define: QTYPE.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
#define BM 32
#define BN 32
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, n_tok, K, w_rows, row_bytes, out_col0, w_off;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"

shared float Ws[BM][33];
shared float Xs[BN][33];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint tiles_m = (pc.w_rows + BM - 1u) / BM;
    uint tiles_n = (pc.n_tok + BN - 1u) / BN;
    uint ng = (pc.K + 31u) / 32u;
    uint tm = (tid % 8u) * 4u, tn = (tid / 8u) * 4u;
    for (uint it = G4_WG_ID; it < tiles_m * tiles_n; it += G4_WG_STRIDE) {
        uint m0 = (it % tiles_m) * BM, n0 = (it / tiles_m) * BN;
        float acc[4][4];
        [[unroll]] for (uint i = 0u; i < 4u; i++) [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] = 0.0;
        for (uint g = 0u; g < ng; g++) {
            barrier();   // the previous step's reads of Ws/Xs are done
            if (tid < BM) {
                uint row = m0 + tid;
                float v[32];
                if (row < pc.w_rows && 32u * g + 32u <= pc.K) {
                    qb_dq32(pc.w_off + row * pc.row_bytes, g, v);
                } else {
                    [[unroll]] for (uint i = 0u; i < 32u; i++) {
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
                        uint c = 32u * g + i;
                        v[i] = (row < pc.w_rows && c < pc.K) ? qb_dq1(pc.w_off + row * pc.row_bytes, c) : 0.0;
#else
                        v[i] = 0.0;
#endif
                    }
                }
                [[unroll]] for (uint i = 0u; i < 32u; i++) Ws[tid][i] = v[i];
            } else {
                [[unroll]] for (uint i = 0u; i < 32u; i++) {
                    uint idx = (tid - BM) + BM * i;     // 0 .. 1023
                    uint t = idx / 32u, k = idx % 32u;
                    uint c = 32u * g + k;
                    Xs[t][k] = (n0 + t < pc.n_tok && c < pc.K) ? xs[pc.x_off + (n0 + t) * pc.x_stride + c] : 0.0;
                }
            }
            barrier();
            [[unroll]] for (uint k = 0u; k < 32u; k++) {
                float a[4], b[4];
                [[unroll]] for (uint i = 0u; i < 4u; i++) { a[i] = Ws[tm + i][k]; b[i] = Xs[tn + i][k]; }
                [[unroll]] for (uint i = 0u; i < 4u; i++) [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] += a[i] * b[j];
            }
        }
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            uint row = m0 + tm + i;
            if (row >= pc.w_rows) break;
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                uint t = n0 + tn + j;
                if (t < pc.n_tok) os[pc.o_off + t * pc.o_stride + pc.out_col0 + row] = acc[i][j];
            }
        }
    }
}
