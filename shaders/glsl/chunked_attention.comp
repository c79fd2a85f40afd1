#version 450
// The Gemma 4 conformer's local self-attention (ops.ChunkedAttention). Per head h and row t, over
// keys u = t - j, j = 0 .. window-1, u >= 0 and u < valid:
//   q' = q * q_scale (* by[i] when has_by), s = q'.(k(u) * k_scale) + q'.rel[window - j],
//   s = cap * tanh(s / cap), softmax over the row's keys (max subtracted), out = sum p v(u)
// (no key: zeros). rel [window + 1, n_head * head_dim] is made on the host (ops.relative_table).
// float32 throughout, in the order of the native CPU kernel (conformer_ops.c). One invocation per
// (row, head), 64 per workgroup: the loops run about 2 * window * head_dim times. Global row
// numbers (*_base: the word offset of row 0, see media_elem.comp).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
#define MAXD 256
#define MAXW 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer QBuf { float qs[]; };
layout(set = 0, binding = 1) readonly buffer KBuf { float ks[]; };
layout(set = 0, binding = 2) readonly buffer VBuf { float vs[]; };
layout(set = 0, binding = 3) readonly buffer RBuf { float rel[]; };
layout(set = 0, binding = 4) readonly buffer SBuf { float by[]; };
layout(set = 0, binding = 5) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint q_base, q_stride, k_base, k_stride, v_base, v_stride, o_base, o_stride;
    uint r0, r1, n_head, head_dim, window, valid, has_by, by_off;
    float q_scale, k_scale, cap;
} pc;
#include "common.glsl"

// tanh without the cancellation of (e^x - e^-x) / (e^x + e^-x) near 0: its Taylor series below
// |x| = 0.5 (terms fall ~10x each), 1 - 2 / (e^2x + 1) above.
float tanh_acc(float x) {
    float a = abs(x);
    if (a < 0.5) {
        float z = x * x;
        float p = -929569.0 / 638512875.0;
        p = p * z + 21844.0 / 6081075.0;
        p = p * z - 1382.0 / 155925.0;
        p = p * z + 62.0 / 2835.0;
        p = p * z - 17.0 / 315.0;
        p = p * z + 2.0 / 15.0;
        p = p * z - 1.0 / 3.0;
        return x + x * z * p;
    }
    float t = 1.0 - 2.0 / (exp(2.0 * min(a, 15.0)) + 1.0);
    return x < 0.0 ? -t : t;
}

void main() {
    uint D = pc.head_dim, W = pc.window, HD = pc.n_head * pc.head_dim;
    uint total = (pc.r1 - pc.r0) * pc.n_head;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint t = pc.r0 + e / pc.n_head, h = e % pc.n_head;
        float q[MAXD], s[MAXW];
        for (uint i = 0u; i < D; i++) {
            float v = qs[pc.q_base + t * pc.q_stride + h * D + i] * pc.q_scale;
            q[i] = pc.has_by != 0u ? v * by[pc.by_off + i] : v;
        }
        uint J = min(t + 1u, W);
        float mx = -3.0e38;
        bool any = false;
        for (uint j = 0u; j < J; j++) {
            uint u = t - j;
            if (u >= pc.valid) { s[j] = 0.0; continue; }
            uint kb = pc.k_base + u * pc.k_stride + h * D, rb = (W - j) * HD + h * D;
            float ac = 0.0, bd = 0.0;
            for (uint i = 0u; i < D; i++) {
                ac += q[i] * (ks[kb + i] * pc.k_scale);
                bd += q[i] * rel[rb + i];
            }
            float v = pc.cap * tanh_acc((ac + bd) / pc.cap);
            s[j] = v;
            mx = max(mx, v);
            any = true;
        }
        uint ob = pc.o_base + t * pc.o_stride + h * D;
        if (!any) {
            for (uint i = 0u; i < D; i++) os[ob + i] = 0.0;
            continue;
        }
        float sum = 0.0;
        for (uint j = 0u; j < J; j++) {
            s[j] = t - j < pc.valid ? exp(s[j] - mx) : 0.0;
            sum += s[j];
        }
        for (uint j = 0u; j < J; j++) s[j] /= sum;
        for (uint i = 0u; i < D; i++) {
            float o = 0.0;
            for (uint j = 0u; j < J; j++) {
                if (t - j < pc.valid) o += s[j] * vs[pc.v_base + (t - j) * pc.v_stride + h * D + i];
            }
            os[ob + i] = o;
        }
    }
}
