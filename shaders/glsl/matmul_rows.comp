#version 450
// MatMul for CPU Vulkan drivers (lavapipe): out[t, col0 + o] = sum_i x[t, i] * W[o, i].
// The eight invocations of a workgroup (one SIMD register on llvmpipe) take eight consecutive
// weight rows and the same NTOK tokens: each invocation decodes its row a group at a time and
// uses the 32 values for all NTOK tokens, whose activations are the same for all eight lanes
// (broadcast loads). No shared memory and no barriers, which are what cost most on CPU drivers;
// GPUs use matvec.comp / matmul.comp instead (this layout does not coalesce weight reads).
// Defines: QTYPE, NTOK (tokens per item: 1 for decode, 8 for prefill).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 8
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, n_tok, K, w_rows, row_bytes, out_col0, w_off;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"
#ifndef NTOK
#define NTOK 8
#endif

void main() {
    uint row_groups = (pc.w_rows + WG - 1u) / WG;
    uint tok_groups = (pc.n_tok + NTOK - 1u) / NTOK;
    uint ng = pc.K / 32u;
    for (uint it = G4_WG_ID; it < row_groups * tok_groups; it += G4_WG_STRIDE) {
        uint row = (it % row_groups) * WG + gl_LocalInvocationID.x;
        uint t0 = (it / row_groups) * NTOK;
        bool live = row < pc.w_rows;
        uint base = pc.w_off + (live ? row : 0u) * pc.row_bytes;
        float acc[NTOK];
        [[unroll]] for (uint t = 0u; t < NTOK; t++) acc[t] = 0.0;
        float v[32];
        for (uint g = 0u; g < ng; g++) {
            qb_dq32(base, g, v);
            [[unroll]] for (uint t = 0u; t < NTOK; t++) {
                if (t0 + t >= pc.n_tok) break;
                uint xb = pc.x_off + (t0 + t) * pc.x_stride + 32u * g;
                float s = 0.0;
                [[unroll]] for (uint i = 0u; i < 32u; i++) s += v[i] * xs[xb + i];
                acc[t] += s;
            }
        }
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
        for (uint c = 32u * ng; c < pc.K; c++) {
            float w = qb_dq1(base, c);
            [[unroll]] for (uint t = 0u; t < NTOK; t++) {
                if (t0 + t >= pc.n_tok) break;
                acc[t] += w * xs[pc.x_off + (t0 + t) * pc.x_stride + c];
            }
        }
#endif
        if (live) {
            [[unroll]] for (uint t = 0u; t < NTOK; t++) {
                if (t0 + t >= pc.n_tok) break;
                os[pc.o_off + (t0 + t) * pc.o_stride + pc.out_col0 + row] = acc[t];
            }
        }
    }
}
