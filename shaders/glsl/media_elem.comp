#version 450
// The encoders' row-wise element ops (ops.Clamp, AddVector, Standardize, Silu, Glu, GatherAdd,
// PoolRows), one variant per OP. Every operand is addressed by global row numbers: *_base is the
// word offset of the operand's row 0 (modulo 2^32: a row band of a split buffer starts below it),
// so out rows r0 .. r1-1 of a band read the same row numbers of their inputs. One invocation per
// output element, 256 per workgroup; out may alias x (each element is read and written by the
// same invocation), except for GLU and POOL, whose out is another buffer.
//   OP 1 CLAMP:       out = min(max(x, f0), f1)
//   OP 2 ADD_VECTOR:  out = x + w[c]
//   OP 3 STANDARDIZE: out = (x - a[c]) * w[c]          (a: the bias, w: the scale)
//   OP 4 SILU:        out = x / (1 + exp(-x))
//   OP 5 GLU:         out = x[r, c] / (1 + exp(-x[r, c + cols]))
//   OP 6 GATHER_ADD:  out = x + sum_j w[idx(r, j) * cols + c], idx(r, j) = a[r, j] (f32 integers;
//                     an index outside the w_rows-row table adds nothing), added in j order
//   OP 7 POOL:        out = (sum_g x[r * group + g, c]) / group * f0
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer XBuf { float xs[]; };
layout(set = 0, binding = 1) readonly buffer ABuf { float as_[]; };
layout(set = 0, binding = 2) readonly buffer WBuf { float ws[]; };
layout(set = 0, binding = 3) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint x_base, x_stride, a_base, a_stride, o_base, o_stride, r0, r1, cols;
    uint w_off, n_idx, w_rows, group;
    float f0, f1;
} pc;
#include "common.glsl"

void main() {
    uint total = (pc.r1 - pc.r0) * pc.cols;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = pc.r0 + e / pc.cols, c = e % pc.cols;
#if OP == 7
        float s = 0.0;
        for (uint g = 0u; g < pc.group; g++) s += xs[pc.x_base + (r * pc.group + g) * pc.x_stride + c];
        float y = (s / float(pc.group)) * pc.f0;
#else
        float x = xs[pc.x_base + r * pc.x_stride + c];
#if OP == 1
        float y = min(max(x, pc.f0), pc.f1);
#elif OP == 2
        float y = x + ws[pc.w_off + c];
#elif OP == 3
        float y = (x - as_[pc.a_base + c]) * ws[pc.w_off + c];
#elif OP == 4
        float y = x / (1.0 + exp(-x));
#elif OP == 5
        float g = xs[pc.x_base + r * pc.x_stride + c + pc.cols];
        float y = x / (1.0 + exp(-g));
#elif OP == 6
        float y = x;
        for (uint j = 0u; j < pc.n_idx; j++) {
            float fi = as_[pc.a_base + r * pc.a_stride + j];
            if (fi < 0.0 || fi >= float(pc.w_rows)) continue;
            y += ws[pc.w_off + uint(fi) * pc.cols + c];
        }
#else
#error "OP must be 1 .. 7"
#endif
#endif
        os[pc.o_base + r * pc.o_stride + c] = y;
    }
}
