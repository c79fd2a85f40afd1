#version 450
// MoeRoute: for each row, the k experts with the largest router logits (equal logits: the lower
// index first), weights p_j / sum of the selected p (the softmax's denominator cancels), times
// the per-expert scale when has_scale; out[r] = k weights, then the k expert indices as floats.
// One invocation per row: k x n_exp x k steps at most (8 x 512 x 8), far below llvmpipe's loop cap.
#extension GL_GOOGLE_include_directive : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer LBuf { float ls[]; };
layout(set = 0, binding = 1) readonly buffer SBuf { float ss[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint l_off, l_stride, o_off, o_stride, rows, n_exp, k, has_scale, s_off;
} pc;
#include "common.glsl"

void main() {
    for (uint it = G4_WG_ID; it * WG < pc.rows; it += G4_WG_STRIDE) {
        uint r = it * WG + gl_LocalInvocationID.x;
        if (r >= pc.rows) break;
        uint lb = pc.l_off + r * pc.l_stride, ob = pc.o_off + r * pc.o_stride;
        float first = 0.0, sum = 0.0;
        for (uint j = 0u; j < pc.k; j++) {
            int best = -1;
            for (uint e = 0u; e < pc.n_exp; e++) {
                bool taken = false;
                for (uint i = 0u; i < j; i++) taken = taken || uint(os[ob + pc.k + i]) == e;
                if (taken) continue;
                if (best < 0 || ls[lb + e] > ls[lb + uint(best)]) best = int(e);
            }
            os[ob + pc.k + j] = float(best);
            float l = ls[lb + uint(best)];
            if (j == 0u) first = l;
            sum += exp(l - first);
        }
        for (uint j = 0u; j < pc.k; j++) {
            uint e = uint(os[ob + pc.k + j]);
            float p = exp(ls[lb + e] - first) / sum;
            if (pc.has_scale != 0u) p *= ss[pc.s_off + e];
            os[ob + j] = p;
        }
    }
}
