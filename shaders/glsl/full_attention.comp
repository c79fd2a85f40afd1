#version 450
// Non-causal attention over every row of the call (ops.FullAttention: an encoder's
// self-attention): per head, softmax(scale * q.k) v over all n_keys key rows, GQA (q head h reads
// kv head h / (n_head / n_kv_head)), float32 scores and an online (streaming) softmax.
// Parallelisation as attention_rows.comp: the eight invocations of a workgroup are eight
// consecutive query rows of one head walking all keys together, so every key / value row is a
// broadcast load; q and the output accumulator stay in registers; no shared memory, no barriers.
// The runtime keeps the per-invocation loop count, n_keys * (2 * ceil(D/32) + 1), below
// llvmpipe's 65535 limit (common.glsl). Global row numbers (*_base: the word offset of row 0, see
// media_elem.comp): query / output rows r0 .. r1-1 of a band, key rows 0 .. n_keys-1.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 8
#ifdef HEAD_DIM          // a compile-time head size (a multiple of 32): loops unrolled, no column guards
#define MAXD HEAD_DIM
#define DGUARD(c) true
#else
#define MAXD 256
#define DGUARD(c) (c < D)
#endif
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer QBuf { float qs[]; };
layout(set = 0, binding = 1) readonly buffer KBuf { float ks[]; };
layout(set = 0, binding = 2) readonly buffer VBuf { float vs[]; };
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint q_base, q_stride, k_base, k_stride, v_base, v_stride, o_base, o_stride;
    uint r0, r1, n_keys, n_head, n_kv_head, head_dim;
    float scale;
} pc;
#include "common.glsl"

void main() {
    #ifdef HEAD_DIM
    const uint D = HEAD_DIM;
#else
    uint D = pc.head_dim;
#endif
    uint rep = pc.n_head / pc.n_kv_head;
    uint rows = pc.r1 - pc.r0;
    uint row_blocks = (rows + WG - 1u) / WG;
    for (uint it = G4_WG_ID; it < row_blocks * pc.n_head; it += G4_WG_STRIDE) {
        uint rb = it % row_blocks, h = it / row_blocks;
        uint hb = (h / rep) * D;
        uint lane = rb * WG + gl_LocalInvocationID.x;
        bool live = lane < rows;
        uint r = pc.r0 + min(lane, rows - 1u);
        float q[MAXD], acc[MAXD];
        [[unroll]] for (uint d = 0u; d < D; d += 32u) {
            [[unroll]] for (uint u = 0u; u < 32u; u++) {
                q[d + u] = DGUARD(d + u) ? qs[pc.q_base + r * pc.q_stride + h * D + d + u] : 0.0;
                acc[d + u] = 0.0;
            }
        }
        float m = -3.0e38, l = 0.0;
        for (uint kp = 0u; kp < pc.n_keys; kp++) {
            uint kb = pc.k_base + kp * pc.k_stride + hb;
            float s = 0.0;
            [[unroll]] for (uint d = 0u; d < D; d += 32u) {
                [[unroll]] for (uint u = 0u; u < 32u; u++) {
                    if (DGUARD(d + u)) s += q[d + u] * ks[kb + d + u];
                }
            }
            s *= pc.scale;
            float mn = max(m, s);
            float corr = exp(m - mn), w = exp(s - mn);
            m = mn;
            l = l * corr + w;
            uint vb = pc.v_base + kp * pc.v_stride + hb;
            [[unroll]] for (uint d = 0u; d < D; d += 32u) {
                [[unroll]] for (uint u = 0u; u < 32u; u++) {
                    if (DGUARD(d + u)) acc[d + u] = acc[d + u] * corr + w * vs[vb + d + u];
                }
            }
        }
        if (live) {
            float inv = 1.0 / l;
            [[unroll]] for (uint d = 0u; d < D; d += 32u) {
                [[unroll]] for (uint u = 0u; u < 32u; u++) {
                    if (DGUARD(d + u)) os[pc.o_base + r * pc.o_stride + h * D + d + u] = acc[d + u] * inv;
                }
            }
        }
    }
}
