#version 450
// EmbedLookup: out[r] = dequant(table[tokens[r]]) * scale, for the table rows held by one chunk
// buffer (a large table is split into row chunks; one dispatch per chunk, rows of other chunks
// are skipped). Define: QTYPE.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(set = 0, binding = 0) readonly buffer PBuf { uint params[]; };   // pos0, n, -, -, tokens...
layout(set = 0, binding = 1) readonly buffer WBuf { uint w_words[]; };
layout(set = 0, binding = 2) buffer OBuf { float os[]; };
layout(push_constant) uniform PC {
    uint o_off, o_stride, rows, cols, row_bytes, chunk_row0, chunk_rows, row_base;
    float scale;
    uint w_off;
} pc;
#include "common.glsl"
#include "quant_blocks.glsl"

void main() {
    uint ng = (pc.cols + 31u) / 32u;
    uint total = pc.rows * ng;
    for (uint it = G4_WG_ID; it * WG < total; it += G4_WG_STRIDE) {
        uint e = it * WG + gl_LocalInvocationID.x;
        if (e >= total) break;
        uint r = e / ng, g = e % ng;
        uint tok = params[4u + pc.row_base + r];
        if (tok < pc.chunk_row0 || tok >= pc.chunk_row0 + pc.chunk_rows) continue;
        uint base = pc.w_off + (tok - pc.chunk_row0) * pc.row_bytes;
        uint ob = pc.o_off + r * pc.o_stride + 32u * g;
        if (32u * g + 32u <= pc.cols) {
            float v[32];
            qb_dq32(base, g, v);
            for (uint i = 0u; i < 32u; i++) os[ob + i] = v[i] * pc.scale;
        } else {
#if QTYPE == GGML_F32 || QTYPE == GGML_F16 || QTYPE == GGML_BF16
            for (uint c = 32u * g; c < pc.cols; c++) os[pc.o_off + r * pc.o_stride + c] = qb_dq1(base, c) * pc.scale;
#endif
        }
    }
}
