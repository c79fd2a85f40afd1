#version 450
// MatMul for few tokens (decode): out[t, col0 + o] = sum_i x[t, i] * W[o, i], t < n_tok <= NTOK.
// One workgroup iteration handles NR weight rows: groups of 8 threads take turns over the row's
// 32-value groups, each thread decoding 4 values of a group (qb_dq4), each decoded value used for
// every token; partial sums are reduced with subgroupAdd and,
// when the workgroup holds several subgroups, through shared memory. The workgroup size is
// specialization constant 0: the runtime sets it to the device's subgroup size, so that the
// common case needs no barrier at all (barriers are costly on CPU drivers).
// Defines: QTYPE (GGML type id), NTOK (max tokens: 1 for decode, 8 for small batches).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define MAX_SG 64
layout(local_size_x_id = 0) in;
#define WG gl_WorkGroupSize.x
layout(set = 0, binding = 0) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, n_tok, K, w_rows, row_bytes, out_col0, w_off;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"
#ifndef NTOK
#define NTOK 1
#endif
// rows per item: 4 for decode; 1 for small batches, where the NTOK dot products of each decoded
// group already give enough work (and fully unrolled NR x NTOK loops compile very slowly)
#if NTOK == 1
#define NR 4
#else
#define NR 1
#endif

shared float red[NR * NTOK][MAX_SG];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint q = tid & 7u, slot = tid >> 3, n_slots = WG / 8u;   // 8 threads decode one group together
    uint n_items = (pc.w_rows + NR - 1u) / NR;
    uint ng = pc.K / 32u;                 // whole groups; float types may have a tail
    for (uint it = G4_WG_ID; it < n_items; it += G4_WG_STRIDE) {
        uint row0 = it * NR;
        float acc[NR * NTOK];
        [[unroll]] for (uint k = 0u; k < NR * NTOK; k++) acc[k] = 0.0;
        for (uint g = slot; g < ng; g += n_slots) {
            [[unroll]] for (uint r = 0u; r < NR; r++) {
                if (row0 + r >= pc.w_rows) break;
                vec4 v;
                uvec4 c;
                qb_dq4(pc.w_off + (row0 + r) * pc.row_bytes, g, q, v, c);
                c += 32u * g;
                [[unroll]] for (uint t = 0u; t < NTOK; t++) {
                    if (t >= pc.n_tok) break;
                    uint xb = pc.x_off + t * pc.x_stride;
                    acc[r * NTOK + t] += dot(v, vec4(xs[xb + c.x], xs[xb + c.y], xs[xb + c.z], xs[xb + c.w]));
                }
            }
        }
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
        for (uint col = 32u * ng + tid; col < pc.K; col += WG) {
            for (uint r = 0u; r < NR; r++) {
                if (row0 + r >= pc.w_rows) break;
                float w = qb_dq1(pc.w_off + (row0 + r) * pc.row_bytes, col);
                for (uint t = 0u; t < NTOK; t++) {
                    if (t >= pc.n_tok) break;
                    acc[r * NTOK + t] += w * xs[pc.x_off + t * pc.x_stride + col];
                }
            }
        }
#endif
        if (gl_NumSubgroups == 1u) {
            [[unroll]] for (uint k = 0u; k < NR * NTOK; k++) {
                float s = subgroupAdd(acc[k]);
                uint r = k / NTOK, t = k % NTOK;
                if (tid == 0u && row0 + r < pc.w_rows && t < pc.n_tok)
                    os[pc.o_off + t * pc.o_stride + pc.out_col0 + row0 + r] = s;
            }
        } else {
            [[unroll]] for (uint k = 0u; k < NR * NTOK; k++) {
                float s = subgroupAdd(acc[k]);
                if (subgroupElect()) red[k][gl_SubgroupID] = s;
            }
            barrier();
            for (uint k = tid; k < NR * NTOK; k += WG) {
                uint r = k / NTOK, t = k % NTOK;
                float s = 0.0;
                for (uint i = 0u; i < gl_NumSubgroups; i++) s += red[k][i];
                if (row0 + r < pc.w_rows && t < pc.n_tok)
                    os[pc.o_off + t * pc.o_stride + pc.out_col0 + row0 + r] = s;
            }
            barrier();   // red is reused by the next item
        }
    }
}
