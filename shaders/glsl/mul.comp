#version 450
// Mul: out = a * b (elementwise over rows x cols; out may alias an input).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer ABuf { float as_[]; };
layout(set = 0, binding = 1) readonly buffer BBuf { float bs_[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint a_off, a_stride, b_off, b_stride, o_off, o_stride, rows, cols;
} pc;
#include "common.glsl"

void main() {
    uint total = pc.rows * pc.cols;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / pc.cols, c = e % pc.cols;
        float a = as_[pc.a_off + r * pc.a_stride + c];
        float b = bs_[pc.b_off + r * pc.b_stride + c];
        os[pc.o_off + r * pc.o_stride + c] = a * b;
    }
}
