#version 450
// Attention for CPU Vulkan drivers (lavapipe), batches of several queries: the eight invocations
// of a workgroup are eight consecutive query rows of one head; they walk the union of their key
// ranges together, so every key / value row is a broadcast load, and each keeps its own online
// softmax (running max, sum, output accumulator) over the keys it may see (causal, window).
// No shared memory, no barriers. Semantics as attention.comp; the runtime uses this kernel only
// where the per-invocation loop count stays below llvmpipe's 65535 limit (keys * (2*D/32 + 1)).
// Define KV_F16: the caches hold IEEE halfs packed two per 32-bit word (else f32).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 8
#define MAXD 512
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer PBuf { uint params[]; };
layout(set = 0, binding = 1) readonly buffer QBuf { float qs[]; };
layout(set = 0, binding = 2) readonly buffer KBuf { float ks[]; };
layout(set = 0, binding = 3) readonly buffer VBuf { float vs[]; };
#ifdef KV_F16
layout(set = 0, binding = 4) readonly buffer CKBuf { uint ck[]; };
layout(set = 0, binding = 5) readonly buffer CVBuf { uint cv[]; };
#else
layout(set = 0, binding = 4) readonly buffer CKBuf { float ck[]; };
layout(set = 0, binding = 5) readonly buffer CVBuf { float cv[]; };
#endif
layout(set = 0, binding = 6) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint q_off, q_stride, k_off, k_stride, v_off, v_stride, o_off, o_stride;
    uint rows, row_base, n_head, n_kv_head, head_dim, window, ring, kv_cols;
    float scale;
    uint ck_off, cv_off;
} pc;
#include "common.glsl"
#include "rows.glsl"

// One sequence per call (graphs over caches of several slots use attention.comp): its cache
// slot starts at ring row g_sbase.
uint g_sbase;

// 32 values d0 .. d0+31 of key / value position kp (head column base hb).
void load32(bool is_v, uint kp, uint pos0, uint hb, uint d0, out float r[32]) {
    if (kp >= pos0) {
        uint b = is_v ? pc.v_off + (kp - pos0) * pc.v_stride + hb + d0 : pc.k_off + (kp - pos0) * pc.k_stride + hb + d0;
        if (is_v) { [[unroll]] for (uint u = 0u; u < 32u; u++) r[u] = vs[b + u]; }
        else      { [[unroll]] for (uint u = 0u; u < 32u; u++) r[u] = ks[b + u]; }
    } else {
        uint i = (g_sbase + kp % pc.ring) * pc.kv_cols + hb + d0;
#ifdef KV_F16
        uint w = (is_v ? pc.cv_off : pc.ck_off) + (i >> 1);   // kv_cols, hb, d0 even
        if (is_v) { [[unroll]] for (uint u = 0u; u < 16u; u++) { vec2 h = unpackHalf2x16(cv[w + u]); r[2u * u] = h.x; r[2u * u + 1u] = h.y; } }
        else      { [[unroll]] for (uint u = 0u; u < 16u; u++) { vec2 h = unpackHalf2x16(ck[w + u]); r[2u * u] = h.x; r[2u * u + 1u] = h.y; } }
#else
        if (is_v) { [[unroll]] for (uint u = 0u; u < 32u; u++) r[u] = cv[pc.cv_off + i + u]; }
        else      { [[unroll]] for (uint u = 0u; u < 32u; u++) r[u] = ck[pc.ck_off + i + u]; }
#endif
    }
}

void main() {
    uint D = pc.head_dim;             // a multiple of 32
    uint rep = pc.n_head / pc.n_kv_head;
    uint pos0 = row_pos(0u);
    g_sbase = row_slot(0u) * pc.ring;
    uint row_blocks = (pc.rows + WG - 1u) / WG;
    for (uint it = G4_WG_ID; it < row_blocks * pc.n_head; it += G4_WG_STRIDE) {
        uint rb = it % row_blocks, h = it / row_blocks;
        uint hb = (h / rep) * D;
        uint r0 = rb * WG, r_last = min(r0 + WG, pc.rows) - 1u;
        uint r = min(r0 + gl_LocalInvocationID.x, r_last);
        bool live = r0 + gl_LocalInvocationID.x < pc.rows;
        uint p = pos0 + pc.row_base + r;
        uint first = (pc.window > 0u && p + 1u > pc.window) ? p + 1u - pc.window : 0u;
        uint p0 = pos0 + pc.row_base + r0;                       // the block's first query
        uint k_lo = (pc.window > 0u && p0 + 1u > pc.window) ? p0 + 1u - pc.window : 0u;
        uint k_hi = pos0 + pc.row_base + r_last;
        float q[MAXD], acc[MAXD];
        for (uint d = 0u; d < D; d += 32u) {
            [[unroll]] for (uint u = 0u; u < 32u; u++) {
                q[d + u] = qs[pc.q_off + r * pc.q_stride + h * D + d + u] * pc.scale;
                acc[d + u] = 0.0;
            }
        }
        float m = -3.0e38, l = 0.0;
        float t[32];
        for (uint kp = k_lo; kp <= k_hi; kp++) {
            float s = 0.0;
            for (uint d = 0u; d < D; d += 32u) {
                load32(false, kp, pos0, hb, d, t);
                [[unroll]] for (uint u = 0u; u < 32u; u++) s += q[d + u] * t[u];
            }
            if (kp < first || kp > p) continue;    // outside this row's causal window
            float mn = max(m, s);
            float corr = exp(m - mn), w = exp(s - mn);
            m = mn;
            l = l * corr + w;
            for (uint d = 0u; d < D; d += 32u) {
                load32(true, kp, pos0, hb, d, t);
                [[unroll]] for (uint u = 0u; u < 32u; u++) acc[d + u] = acc[d + u] * corr + w * t[u];
            }
        }
        if (live) {
            for (uint d = 0u; d < D; d += 32u) {
                [[unroll]] for (uint u = 0u; u < 32u; u++)
                    os[pc.o_off + r * pc.o_stride + h * D + d + u] = acc[d + u] / l;
            }
        }
    }
}
