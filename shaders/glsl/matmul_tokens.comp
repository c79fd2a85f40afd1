#version 450
// MatMul for batches on CPU Vulkan drivers (lavapipe): out[t, col0 + o] = sum_i x[t, i] * W[o, i].
// The eight invocations of a workgroup (one SIMD register on llvmpipe) are eight tokens; each
// keeps its 32 activations of the current group in registers and runs them against R weight rows,
// whose blocks are the same for all lanes. llvmpipe's cost is in load instructions (about one
// nanosecond per lane and load, whatever the access pattern), and this layout needs ~0.4 loads
// per multiply-add where one row per lane (matmul_rows.comp) needs ~1.
// Define: QTYPE.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 8
#define R 8
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, n_tok, K, w_rows, row_bytes, out_col0, w_off;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"

void main() {
    uint row_groups = (pc.w_rows + R - 1u) / R;
    uint tok_groups = (pc.n_tok + WG - 1u) / WG;
    uint ng = pc.K / 32u;
    for (uint it = G4_WG_ID; it < row_groups * tok_groups; it += G4_WG_STRIDE) {
        uint row0 = (it % row_groups) * R;
        uint t = (it / row_groups) * WG + gl_LocalInvocationID.x;
        bool live = t < pc.n_tok;
        uint xb = pc.x_off + (live ? t : pc.n_tok - 1u) * pc.x_stride;
        uint nr = min(uint(R), pc.w_rows - row0);
        float acc[R];
        [[unroll]] for (uint r = 0u; r < R; r++) acc[r] = 0.0;
        float xv[32], v[32];
        for (uint g = 0u; g < ng; g++) {
            [[unroll]] for (uint i = 0u; i < 32u; i++) xv[i] = xs[xb + 32u * g + i];
            [[unroll]] for (uint r = 0u; r < R; r++) {
                if (r >= nr) break;
                qb_dq32(pc.w_off + (row0 + r) * pc.row_bytes, g, v);
                float s = 0.0;
                [[unroll]] for (uint i = 0u; i < 32u; i++) s += v[i] * xv[i];
                acc[r] += s;
            }
        }
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
        for (uint c = 32u * ng; c < pc.K; c++) {
            float x1 = xs[xb + c];
            [[unroll]] for (uint r = 0u; r < R; r++) {
                if (r >= nr) break;
                acc[r] += qb_dq1(pc.w_off + (row0 + r) * pc.row_bytes, c) * x1;
            }
        }
#endif
        if (live) {
            [[unroll]] for (uint r = 0u; r < R; r++) {
                if (r >= nr) break;
                os[pc.o_off + t * pc.o_stride + pc.out_col0 + row0 + r] = acc[r];
            }
        }
    }
}
