#version 450
// KvStore: batch row r (absolute row row_base + r of n_total) goes to cache row
// (pos0 + row) % ring; only the last `ring` rows of a batch are kept (earlier ones would be
// overwritten within the same batch). Define KV_F16: halfs packed two per word (kv_cols even).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer PBuf { uint params[]; };
layout(set = 0, binding = 1) readonly buffer KBuf { float ks[]; };
layout(set = 0, binding = 2) readonly buffer VBuf { float vs[]; };
#ifdef KV_F16
layout(set = 0, binding = 3) buffer CKBuf { uint ck[]; };
layout(set = 0, binding = 4) buffer CVBuf { uint cv[]; };
#define PER_ROW (pc.kv_cols / 2u)
#else
layout(set = 0, binding = 3) buffer CKBuf { float ck[]; };
layout(set = 0, binding = 4) buffer CVBuf { float cv[]; };
#define PER_ROW pc.kv_cols
#endif
layout(push_constant) uniform PC {
    uint k_off, k_stride, v_off, v_stride, rows, row_base, n_total, ring, kv_cols, ck_off, cv_off;
} pc;
#include "common.glsl"
#include "rows.glsl"

void main() {
    uint total = pc.rows * PER_ROW;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / PER_ROW, w = e % PER_ROW;
        uint row = pc.row_base + r;
        uint r0 = row_seg0(row);
        if (row - r0 + pc.ring < row_segn(row)) continue;   // a later row of its sequence takes the slot
        uint slot = row_slot(row) * pc.ring + row_pos(row) % pc.ring;
#ifdef KV_F16
        uint kb = pc.k_off + r * pc.k_stride + 2u * w, vb = pc.v_off + r * pc.v_stride + 2u * w;
        ck[pc.ck_off + slot * PER_ROW + w] = packHalf2x16(vec2(ks[kb], ks[kb + 1u]));
        cv[pc.cv_off + slot * PER_ROW + w] = packHalf2x16(vec2(vs[vb], vs[vb + 1u]));
#else
        ck[pc.ck_off + slot * PER_ROW + w] = ks[pc.k_off + r * pc.k_stride + w];
        cv[pc.cv_off + slot * PER_ROW + w] = vs[pc.v_off + r * pc.v_stride + w];
#endif
    }
}
