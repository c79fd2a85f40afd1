#version 450
// Word copy d[d_off + i] = s[s_off + i] (weight upload from a host staging buffer, read-back of
// one buffer for the op observer), or a fill d[d_off + i] = value when fill != 0.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer SBuf { uint s[]; };
layout(set = 0, binding = 1) buffer DBuf { uint d[]; };
layout(push_constant) uniform PC { uint s_off, d_off, n, fill, value; } pc;
#include "common.glsl"

void main() {
    for (uint it = G4_WG_ID; it * WG < pc.n; it += G4_WG_STRIDE) {
        uint i = it * WG + gl_LocalInvocationID.x;
        if (i >= pc.n) break;
        d[pc.d_off + i] = pc.fill != 0u ? pc.value : s[pc.s_off + i];
    }
}
