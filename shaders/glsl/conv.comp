#version 450
// The conformer's convolutions, float32 (global row numbers; *_base: the word offset of row 0,
// see media_elem.comp).
// MODE 1 (ops.Conv2dNormRelu): 3x3 conv, stride 2, padding 1, over (time = rows, frequency) of
//   x [t_in rows, f_in * ci] (channel fastest; rows with mask == 0 count as zeros, when has_mask),
//   w f32 [co][ci][3][3]; then LayerNorm over the co channels of each output (t, f) (two-pass
//   mean and variance, * norm weight a[o], no bias), then ReLU. One workgroup of 64 per (t, f):
//   invocation tid computes channels tid, tid + 64, ... (9 * ci multiply-adds each, summed per
//   (kt, kf) then added, as conformer_ops.c) into shared memory; the statistics are tree-reduced.
// MODE 2 (ops.DepthwiseConv1d): out[t, c] = sum_k w[c * K + k] * x[t - K + 1 + k, c] (causal,
//   rows before 0 are zeros), K = ci, c < co = cols. One invocation per output element.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
#define MAXCO 1024
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer MBuf { float ms[]; };
layout(set = 0, binding = 2) readonly buffer WBuf { float ws[]; };
layout(set = 0, binding = 3) readonly buffer ABuf { float as_[]; };
layout(set = 0, binding = 4) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_base, x_stride, m_base, m_stride, o_base, o_stride, r0, r1;
    uint t_in, f_in, ci, co, f_out, has_mask, w_off, a_off;
    float eps;
} pc;
#include "common.glsl"

#if MODE == 1
shared float vals[MAXCO];
shared float red[WG];

float wg_sum(float s, uint tid) {
    red[tid] = s;
    barrier();
    for (uint k = WG / 2u; k > 0u; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        barrier();
    }
    float t = red[0];
    barrier();
    return t;
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint items = (pc.r1 - pc.r0) * pc.f_out;
    for (uint it = G4_WG_ID; it < items; it += G4_WG_STRIDE) {
        uint t = pc.r0 + it / pc.f_out, fo = it % pc.f_out;
        float part = 0.0;
        for (uint o = tid; o < pc.co; o += WG) {
            float acc = 0.0;
            [[unroll]] for (uint kt = 0u; kt < 3u; kt++) {
                int ti = int(2u * t + kt) - 1;
                if (ti < 0 || uint(ti) >= pc.t_in) continue;
                if (pc.has_mask != 0u && ms[pc.m_base + uint(ti) * pc.m_stride] == 0.0) continue;
                [[unroll]] for (uint kf = 0u; kf < 3u; kf++) {
                    int fi = int(2u * fo + kf) - 1;
                    if (fi < 0 || uint(fi) >= pc.f_in) continue;
                    uint xb = pc.x_base + uint(ti) * pc.x_stride + uint(fi) * pc.ci;
                    uint wb = pc.w_off + o * pc.ci * 9u + kt * 3u + kf;
                    float s = 0.0;
                    for (uint i = 0u; i < pc.ci; i++) s += ws[wb + i * 9u] * xs[xb + i];
                    acc += s;
                }
            }
            vals[o] = acc;
            part += acc;
        }
        float mean = wg_sum(part, tid) / float(pc.co);
        float q = 0.0;
        for (uint o = tid; o < pc.co; o += WG) { float d = vals[o] - mean; q += d * d; }
        float inv = 1.0 / sqrt(wg_sum(q, tid) / float(pc.co) + pc.eps);
        uint ob = pc.o_base + t * pc.o_stride + fo * pc.co;
        for (uint o = tid; o < pc.co; o += WG) os[ob + o] = max((vals[o] - mean) * inv * as_[pc.a_off + o], 0.0);
        barrier();   // vals is read above before the next item overwrites it
    }
}
#elif MODE == 2
void main() {
    uint K = pc.ci, C = pc.co;
    uint total = (pc.r1 - pc.r0) * C;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint t = pc.r0 + e / C, c = e % C;
        float s = 0.0;
        for (uint k = 0u; k < K; k++) {
            int u = int(t + k) - int(K) + 1;
            if (u >= 0) s += ws[pc.w_off + c * K + k] * xs[pc.x_base + uint(u) * pc.x_stride + c];
        }
        os[pc.o_base + t * pc.o_stride + c] = s;
    }
}
#else
#error "MODE must be 1 or 2"
#endif
