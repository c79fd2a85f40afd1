#version 450
// NeoX RoPE on each head of head_dim columns at the row's position (rows.glsl): pair
// (i, i + n_rot/2) turns by pos * inv_freq[i]; columns past n_rot are copied.
// The angle is computed in exact integer arithmetic, in turns: the host gives each frequency as
// a 64-bit fixed-point fraction of a turn per position, F = round(inv_freq / (2 pi) * 2^64)
// (inv_freq = base^(-2i/n_rot) / freq_factors[i], computed in float64), so pos * F mod 2^64 is
// the exact fractional turn. Its top bits become an angle in [-pi, pi) with ~3e-7 rad error at
// any position (a float32 pos * theta would be off by ~1e-4 rad at pos 2000).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer PBuf { uint params[]; };
layout(set = 0, binding = 1) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 2) readonly buffer TBuf { uvec2 freq[]; };   // (F >> 32, F & 0xffffffff)
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_off, x_stride, o_off, o_stride, rows, n_heads, head_dim, n_rot, row_base;
} pc;
#include "common.glsl"
#include "rows.glsl"

const float TURN_K = 1.4629180792671596e-09;   // 2 pi / 2^32

float rope_angle(uint pos, uvec2 f) {
    uint m1, l1;
    umulExtended(pos, f.y, m1, l1);
    uint top = pos * f.x + m1;                  // turns * 2^32, modulo one turn
    // as a signed fraction of a turn: multiples of 256 convert to float exactly
    float a = float(int(top & 0xFFFFFF00u));
    float rest = float(top & 0xFFu) + float(l1) * (1.0 / 4294967296.0);
    return a * TURN_K + rest * TURN_K;
}

void main() {
    uint half_rot = pc.n_rot / 2u;
    uint per_head = half_rot + (pc.head_dim - pc.n_rot);
    uint per_row = pc.n_heads * per_head;
    uint total = pc.rows * per_row;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / per_row, rem = e % per_row;
        uint h = rem / per_head, j = rem % per_head;
        uint xb = pc.x_off + r * pc.x_stride + h * pc.head_dim;
        uint ob = pc.o_off + r * pc.o_stride + h * pc.head_dim;
        if (j < half_rot) {
            float ang = rope_angle(row_pos(pc.row_base + r), freq[j]);
            float c = cos(ang), s = sin(ang);
            float a = xs[xb + j], b = xs[xb + j + half_rot];
            os[ob + j] = a * c - b * s;
            os[ob + j + half_rot] = a * s + b * c;
        } else {
            uint col = pc.n_rot + (j - half_rot);
            os[ob + col] = xs[xb + col];
        }
    }
}
