#version 450
// Causal softmax(scale * q.k) v per (query row, head), GQA, sliding window, over the ring KV
// cache (positions < pos0) and this batch's k/v rows (positions >= pos0), per sequence: each row
// reads its own segment's rows and its own slot of the caches (rows.glsl).
// One workgroup per (row, head): keys are streamed in blocks of WG, one key per thread for the
// scores, an online softmax (running max / sum) rescales the output, whose head_dim columns are
// owned by the threads (at most MAXD / WG each). Per block of WG keys an invocation runs about
// D/8 + 2*WG/8 loop iterations, which keeps a 8K-token context far below llvmpipe's 65535-iteration
// loop limit (see common.glsl); the runtime refuses spans where it would not.
// Define KV_F16: the caches hold IEEE halfs packed two per 32-bit word (else f32).
// Define ROUND_BATCH (row-exact small batches, with KV_F16): the batch's rows before the query's
// own are read rounded to half, as a decode step reads them from the cache, so that every row of
// the batch gets the bits a one-row decode step would.
// Define AHEAD (media prompts): binding 7 holds per row how many later rows of its segment it
// also sees (an image's tokens see their whole image; the window still applies).
// Define PAST (ops.PastAttention, an MTP drafter reading its target's cache): the keys end before
// the query (p - 1) and all come from the cache; the k/v bindings are not read.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
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
#ifdef AHEAD
layout(set = 0, binding = 7) readonly buffer ABuf { float ahead_s[]; };
#endif
layout(push_constant) uniform PC {
    uint q_off, q_stride, k_off, k_stride, v_off, v_stride, o_off, o_stride;
    uint rows, row_base, n_head, n_kv_head, head_dim, window, ring, kv_cols;
    float scale;
    uint ck_off, cv_off;   // word offsets of the caches in their buffers
#ifdef AHEAD
    uint a_off;            // word offset of row 0's keys-ahead count
#endif
} pc;
#include "common.glsl"
#include "rows.glsl"

#ifdef ROUND_BATCH
float as_cached(float x, uint kp, uint p) { return kp < p ? unpackHalf2x16(packHalf2x16(vec2(x, 0.0))).x : x; }
#else
float as_cached(float x, uint kp, uint p) { return x; }
#endif

shared float q_s[MAXD];
shared float p_s[WG];

// Element d of cache row `slot` (kv_cols values per row).
float cache_k(uint slot, uint d) {
#ifdef KV_F16
    uint i = slot * pc.kv_cols + d;
    return unpackHalf2x16(ck[pc.ck_off + (i >> 1)])[i & 1u];
#else
    return ck[pc.ck_off + slot * pc.kv_cols + d];
#endif
}
float cache_v(uint slot, uint d) {
#ifdef KV_F16
    uint i = slot * pc.kv_cols + d;
    return unpackHalf2x16(cv[pc.cv_off + (i >> 1)])[i & 1u];
#else
    return cv[pc.cv_off + slot * pc.kv_cols + d];
#endif
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint D = pc.head_dim;
    uint rep = pc.n_head / pc.n_kv_head;
    for (uint it = G4_WG_ID; it < pc.rows * pc.n_head; it += G4_WG_STRIDE) {
        uint r = it / pc.n_head, h = it % pc.n_head;
        uint kvh = h / rep;
        // the row's sequence (rows.glsl): positions >= pos0 are its segment's rows from b0 on,
        // earlier ones its cache slot's ring (rows sbase ..)
        uint row = pc.row_base + r;
        uint p = row_pos(row), b0 = row_seg0(row), sbase = row_slot(row) * pc.ring;
        uint pos0 = p - (row - b0);
        uint first = (pc.window > 0u && p + 1u > pc.window) ? p + 1u - pc.window : 0u;
        uint last = p;
#ifdef AHEAD
        // later rows of the segment this row sees (at most the segment's end)
        uint seg_left = row_seg0(row) + row_segn(row) - 1u - row;
        last = p + min(uint(max(ahead_s[pc.a_off + row], 0.0)), seg_left);
#endif
#ifdef PAST
        pos0 = p + 1u;       // no fresh rows: every key is a cached position
        last = p - 1u;       // p >= 1
#endif
        uint n_keys = last - first + 1u;
        barrier();   // q_s / p_s of the previous item are no longer read
        for (uint d = tid; d < D; d += WG) q_s[d] = qs[pc.q_off + r * pc.q_stride + h * D + d];
        barrier();
        float m = -3.0e38, l = 0.0;
        float acc[MAXD / WG];
        [[unroll]] for (uint j = 0u; j < MAXD / WG; j++) acc[j] = 0.0;
        for (uint k0 = 0u; k0 < n_keys; k0 += WG) {
            // scores, one key per thread
            uint kp = first + k0 + tid;
            bool valid = k0 + tid < n_keys;
            float s = -3.0e38;
            if (valid) {
                // D is a multiple of 8: loops of D/8 iterations with unrolled bodies
                float dotv = 0.0;
                if (kp >= pos0) {
                    uint kb = pc.k_off + (b0 + kp - pos0) * pc.k_stride + kvh * D;
                    for (uint d = 0u; d < D; d += 8u) {
                        [[unroll]] for (uint u = 0u; u < 8u; u++) dotv += q_s[d + u] * as_cached(ks[kb + d + u], kp, p);
                    }
                } else {
                    uint slot = sbase + kp % pc.ring;
                    for (uint d = 0u; d < D; d += 8u) {
                        [[unroll]] for (uint u = 0u; u < 8u; u++) dotv += q_s[d + u] * cache_k(slot, kvh * D + d + u);
                    }
                }
                s = dotv * pc.scale;
            }
            p_s[tid] = s;
            barrier();
            uint nb = min(uint(WG), n_keys - k0);
            float bm = m;
            [[unroll]] for (uint i = 0u; i < WG; i++) bm = max(bm, p_s[i]);   // masked entries hold -3e38
            barrier();
            p_s[tid] = valid ? exp(s - bm) : 0.0;
            barrier();
            float corr = exp(m - bm);
            m = bm;
            float bsum = 0.0;
            [[unroll]] for (uint i = 0u; i < WG; i++) bsum += p_s[i];
            l = l * corr + bsum;
            [[unroll]] for (uint j = 0u; j < MAXD / WG; j++) {
                uint d = j * WG + tid;
                if (d >= D) break;
                float a = acc[j] * corr;
                uint i = 0u;
                for (; i + 8u <= nb; i += 8u) {
                    [[unroll]] for (uint u = 0u; u < 8u; u++) {
                        uint vp = first + k0 + i + u;
                        a += p_s[i + u] * (vp >= pos0 ? as_cached(vs[pc.v_off + (b0 + vp - pos0) * pc.v_stride + kvh * D + d], vp, p)
                                                       : cache_v(sbase + vp % pc.ring, kvh * D + d));
                    }
                }
                for (; i < nb; i++) {
                    uint vp = first + k0 + i;
                    a += p_s[i] * (vp >= pos0 ? as_cached(vs[pc.v_off + (b0 + vp - pos0) * pc.v_stride + kvh * D + d], vp, p)
                                              : cache_v(sbase + vp % pc.ring, kvh * D + d));
                }
                acc[j] = a;
            }
            barrier();   // p_s is rewritten by the next block
        }
        [[unroll]] for (uint j = 0u; j < MAXD / WG; j++) {
            uint d = j * WG + tid;
            if (d < D) os[pc.o_off + r * pc.o_stride + h * D + d] = acc[j] / l;
        }
    }
}
