#version 450
// MoeMatMul: out[s, o] = sum_i x[row(s), i] * W_e[o, i] for each selection s = r*k + j, e its
// expert route[r][k + j], row(s) = s (per_sel) or r. This dispatch holds rows [c0, c1) of the
// weight tensor (all experts' rows one after another; the runtime cuts chunks at expert boundaries
// when it can) and computes only the selections' rows inside it, so only the chosen experts' rows
// are read. One work item: NR rows of one selection, decoded as matvec.comp does (groups of 8
// threads per 32-value group, subgroupAdd).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define MAX_SG 64
#define NR 4
layout(local_size_x_id = 0) in;
#define WG gl_WorkGroupSize.x
layout(set = 0, binding = 0) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) readonly buffer RBuf { float rs[]; };
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, r_off, r_stride, o_off, o_stride, n_sel, K, N, row_bytes, w_off, k, per_sel, c0, c1;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"

shared float red[NR][MAX_SG];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint q = tid & 7u, slot = tid >> 3, n_slots = WG / 8u;
    uint n_rb = (pc.N + NR - 1u) / NR;
    uint n_items = pc.n_sel * n_rb;
    uint ng = pc.K / 32u;
    for (uint it = G4_WG_ID; it < n_items; it += G4_WG_STRIDE) {
        uint s = it / n_rb, row0 = (it % n_rb) * NR;
        uint r = s / pc.k, j = s % pc.k;
        uint e = uint(rs[pc.r_off + r * pc.r_stride + pc.k + j]);
        uint grow = e * pc.N + row0;                      // global weight row of this item's first row
        if (grow + NR <= pc.c0 || grow >= pc.c1) continue;   // the same for the whole workgroup
        uint lo = grow < pc.c0 ? pc.c0 - grow : 0u;          // rows [lo, hi) of the item lie in this chunk
        uint hi = min(min(uint(NR), pc.N - row0), pc.c1 - grow);
        uint wrow = grow - pc.c0;   // chunk-local row of the item's row 0 (wraps when grow < c0; row i >= lo is right)
        uint xb = pc.x_off + (pc.per_sel != 0u ? s : r) * pc.x_stride;
        float acc[NR];
        [[unroll]] for (uint i = 0u; i < NR; i++) acc[i] = 0.0;
        for (uint g = slot; g < ng; g += n_slots) {
            [[unroll]] for (uint i = 0u; i < NR; i++) {
                if (i < lo || i >= hi) continue;
                vec4 v;
                uvec4 c;
                qb_dq4(pc.w_off + (wrow + i) * pc.row_bytes, g, q, v, c);
                c += 32u * g;
                acc[i] += dot(v, vec4(xs[xb + c.x], xs[xb + c.y], xs[xb + c.z], xs[xb + c.w]));
            }
        }
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
        for (uint col = 32u * ng + tid; col < pc.K; col += WG) {
            for (uint i = 0u; i < NR; i++) {
                if (i < lo || i >= hi) continue;
                acc[i] += qb_dq1(pc.w_off + (wrow + i) * pc.row_bytes, col) * xs[xb + col];
            }
        }
#endif
        uint ob = pc.o_off + s * pc.o_stride + row0;
        if (gl_NumSubgroups == 1u) {
            [[unroll]] for (uint i = 0u; i < NR; i++) {
                float t = subgroupAdd(acc[i]);
                if (tid == 0u && i >= lo && i < hi) os[ob + i] = t;
            }
        } else {
            [[unroll]] for (uint i = 0u; i < NR; i++) {
                float t = subgroupAdd(acc[i]);
                if (subgroupElect()) red[i][gl_SubgroupID] = t;
            }
            barrier();
            for (uint i = tid; i < NR; i += WG) {
                float t = 0.0;
                for (uint u = 0u; u < gl_NumSubgroups; u++) t += red[i][u];
                if (i >= lo && i < hi) os[ob + i] = t;
            }
            barrier();
        }
    }
}
