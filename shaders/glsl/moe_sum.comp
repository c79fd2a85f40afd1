#version 450
// MoeSum: out[r, c] = sum over j < k, in order, of route[r][j] * y[r*k + j, c].
#extension GL_GOOGLE_include_directive : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer YBuf { float ys[]; };
layout(set = 0, binding = 1) readonly buffer RBuf { float rs[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint y_off, y_stride, r_off, r_stride, o_off, o_stride, rows, cols, k;
} pc;
#include "common.glsl"

void main() {
    uint total = pc.rows * pc.cols;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / pc.cols, c = e % pc.cols;
        float acc = 0.0;
        for (uint j = 0u; j < pc.k; j++)
            acc += rs[pc.r_off + r * pc.r_stride + j] * ys[pc.y_off + (r * pc.k + j) * pc.y_stride + c];
        os[pc.o_off + r * pc.o_stride + c] = acc;
    }
}
