#version 450
// TakeRows: out[r] = take[r] != 0 ? src[r] : x[r] (a prompt's media placeholder rows take the soft
// tokens; out may alias x).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer SBuf { float ss[]; };
layout(set = 0, binding = 2) readonly buffer TBuf { float ts[]; };
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, s_off, s_stride, t_off, t_stride, o_off, o_stride, rows, cols;
} pc;
#include "common.glsl"

void main() {
    uint total = pc.rows * pc.cols;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / pc.cols, c = e % pc.cols;
        bool take = ts[pc.t_off + r * pc.t_stride] != 0.0;
        os[pc.o_off + r * pc.o_stride + c] = take ? ss[pc.s_off + r * pc.s_stride + c] : xs[pc.x_off + r * pc.x_stride + c];
    }
}
