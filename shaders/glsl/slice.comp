#version 450
// Slice: a copy of a (row, column) window of x; the offsets come in x_off (elementwise over rows x cols; out may alias x).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer WBuf { float ws[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, rows, cols, flag;
    float f;
    uint w_off;     // word offset of the one-element weight (scale)
} pc;
#include "common.glsl"

void main() {
    uint total = pc.rows * pc.cols;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / pc.cols, c = e % pc.cols;
        float x = xs[pc.x_off + r * pc.x_stride + c];
        os[pc.o_off + r * pc.o_stride + c] = x;
    }
}
