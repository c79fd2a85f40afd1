#version 450
// Axial 2-D NeoX RoPE (ops.Rope2D) on each head of head_dim columns: the first half of a head
// turns at the row's x position pos[r, 0], the second half at its y position pos[r, 1]; pair
// (i, i + head_dim/4) of a half by pos * base^(-2i/(head_dim/2)). The angle is exact integer
// arithmetic in turns, as rope.comp: the host gives each frequency as 64-bit fixed-point turns per
// position (derived.rope_table_words), so pos * F mod 2^64 is the exact fractional turn.
// One invocation per (row, head, axis, pair); global row numbers (*_base: the word offset of row
// 0, see media_elem.comp); out may alias x (a pair is read and written by one invocation).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer PBuf { float ps[]; };
layout(set = 0, binding = 2) readonly buffer TBuf { uvec2 freq[]; };   // (F >> 32, F & 0xffffffff)
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_base, x_stride, p_base, p_stride, o_base, o_stride, r0, r1, n_heads, head_dim;
} pc;
#include "common.glsl"

const float TURN_K = 1.4629180792671596e-09;   // 2 pi / 2^32

float rope_angle(uint pos, uvec2 f) {
    uint m1, l1;
    umulExtended(pos, f.y, m1, l1);
    uint top = pos * f.x + m1;                  // turns * 2^32, modulo one turn
    float a = float(int(top & 0xFFFFFF00u));    // a signed fraction of a turn, exact in float
    float rest = float(top & 0xFFu) + float(l1) * (1.0 / 4294967296.0);
    return a * TURN_K + rest * TURN_K;
}

void main() {
    uint q = pc.head_dim / 4u, half_d = pc.head_dim / 2u;
    uint per_row = pc.n_heads * 2u * q;
    uint total = (pc.r1 - pc.r0) * per_row;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = pc.r0 + e / per_row, rem = e % per_row;
        uint h = rem / (2u * q), axis = (rem / q) % 2u, i = rem % q;
        uint pos = uint(ps[pc.p_base + r * pc.p_stride + axis]);
        float ang = rope_angle(pos, freq[i]);
        float cs = cos(ang), sn = sin(ang);
        uint col = h * pc.head_dim + axis * half_d + i;
        float x0 = xs[pc.x_base + r * pc.x_stride + col], x1 = xs[pc.x_base + r * pc.x_stride + col + q];
        os[pc.o_base + r * pc.o_stride + col] = x0 * cs - x1 * sn;
        os[pc.o_base + r * pc.o_stride + col + q] = x0 * sn + x1 * cs;
    }
}
