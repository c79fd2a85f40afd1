#version 450
// RmsNorm: each run of `group` columns: v / sqrt(mean(v^2) + eps), times weight[group] if has_w.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer WBuf { float ws[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, rows, cols, group, has_w;
    float eps;
    uint w_off;     // word offset of the weight
} pc;
#include "common.glsl"

shared float red[WG];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint ngr = pc.cols / pc.group;
    for (uint it = G4_WG_ID; it < pc.rows * ngr; it += G4_WG_STRIDE) {
        uint r = it / ngr, gi = it % ngr;
        uint xb = pc.x_off + r * pc.x_stride + gi * pc.group;
        uint ob = pc.o_off + r * pc.o_stride + gi * pc.group;
        float s = 0.0;
        for (uint c = tid; c < pc.group; c += WG) { float v = xs[xb + c]; s += v * v; }
        red[tid] = s;
        barrier();
        for (uint k = WG / 2u; k > 0u; k >>= 1) {
            if (tid < k) red[tid] += red[tid + k];
            barrier();
        }
        float scale = 1.0 / sqrt(red[0] / float(pc.group) + pc.eps);
        // Each thread rewrites only the elements it read, so out may alias x.
        for (uint c = tid; c < pc.group; c += WG) {
            float y = xs[xb + c] * scale;
            os[ob + c] = pc.has_w != 0u ? y * ws[pc.w_off + c] : y;
        }
        barrier();   // red[0] is read above before the next item overwrites it
    }
}
