#version 450
// LayerNorm (ops.LayerNorm) over each run of `group` columns of a row: mean and population
// variance in two passes (float32, tree-reduced over the workgroup), y = (v - mean) / sqrt(var +
// eps), then * w[c] (flags bit 0) and + b[c] (bit 1), c the column in the group. One workgroup of 64 per
// (row, group); rows are global row numbers (*_base: the word offset of row 0, see
// media_elem.comp). out may alias x: each invocation rewrites only the elements it read.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer WBuf { float ws[]; };
layout(set = 0, binding = 2) readonly buffer BBuf { float bs[]; };
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_base, x_stride, o_base, o_stride, r0, r1, cols, group, flags;
    float eps;
    uint w_off, b_off;
} pc;
#include "common.glsl"

shared float red[WG];

float wg_sum(float s, uint tid) {
    red[tid] = s;
    barrier();
    for (uint k = WG / 2u; k > 0u; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        barrier();
    }
    float t = red[0];
    barrier();   // red[0] is read above before the next reduction overwrites it
    return t;
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint ngr = pc.cols / pc.group;
    uint items = (pc.r1 - pc.r0) * ngr;
    for (uint it = G4_WG_ID; it < items; it += G4_WG_STRIDE) {
        uint r = pc.r0 + it / ngr, gi = it % ngr;
        uint xb = pc.x_base + r * pc.x_stride + gi * pc.group;
        uint ob = pc.o_base + r * pc.o_stride + gi * pc.group;
        float s = 0.0;
        for (uint c = tid; c < pc.group; c += WG) s += xs[xb + c];
        float mean = wg_sum(s, tid) / float(pc.group);
        float q = 0.0;
        for (uint c = tid; c < pc.group; c += WG) { float d = xs[xb + c] - mean; q += d * d; }
        float inv = 1.0 / sqrt(wg_sum(q, tid) / float(pc.group) + pc.eps);
        for (uint c = tid; c < pc.group; c += WG) {
            float y = (xs[xb + c] - mean) * inv;
            if ((pc.flags & 1u) != 0u) y *= ws[pc.w_off + c];
            if ((pc.flags & 2u) != 0u) y += bs[pc.b_off + c];
            os[ob + c] = y;
        }
    }
}
