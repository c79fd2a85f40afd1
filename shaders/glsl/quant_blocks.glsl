// GGUF block layouts: decoding of every supported weight type, in ONE place.
//
// The includer declares the weight buffer as 32-bit words named `w_words` and defines QTYPE to a
// GGML type id before including this file:
//     layout(set = 0, binding = N) readonly buffer WBuf { uint w_words[]; };
// Weights stay exactly as the GGUF file stores them (row-major rows of blocks, little-endian);
// nothing is repacked, so reads of fields that are not 4-byte aligned go through the byte
// helpers below. A CUDA port mirrors this file with `const uint32_t* w_words`.
//
// API (every function takes the byte offset `base` of a weight row inside the buffer):
//   void  qb_dq32(uint base, uint g, out float v[32])  values 32g .. 32g+31 of the row
//   void  qb_dq4(uint base, uint g, uint q, out vec4 v, out uvec4 c)
//         the 4 values of "quad" q (0..7) of group g, at columns 32g + c: eight threads decode
//         one group together, reading neighbouring bytes (vector-friendly on SIMD CPUs, coalesced
//         on GPUs); the column pattern follows the nibble order of the type
//   float qb_dq1(uint base, uint col)                   one value (F32 / F16 / BF16 only)
// A "group" is 32 consecutive values: one block of the 32-wide types, one sub-block of a
// 256-wide K-quant super-block. Float types use groups too (tails are read with qb_dq1).
//
// Layouts (offsets in bytes; d/dmin/m are IEEE halfs; reference: gguf-py gguf/quants.py):
//   F32   4 B/value                 F16 2 B/value             BF16 2 B/value (top half of an f32)
//   Q8_0  34 B / 32: d@0, int8 q[32]@2                                       v = d*q
//   Q4_0  18 B / 32: d@0, qs[16]@2; v[i] = lo nibble of qs[i], v[i+16] = hi   v = d*(q-8)
//   Q4_1  20 B / 32: d@0, m@2, qs[16]@4 (nibbles as Q4_0)                    v = d*q + m
//   Q5_0  22 B / 32: d@0, qh(u32)@2, qs[16]@6; q = nibble | bit i of qh << 4 v = d*(q-16)
//   Q5_1  24 B / 32: d@0, m@2, qh@4, qs[16]@8                                v = d*q + m
//   Q4_K 144 B / 256: d@0, dmin@2, scales[12]@4, qs[128]@16. Sub-block j (32 values):
//        bytes qs[32*(j/2) + l], nibble j%2; 6-bit scale/min pair (sc, mn) of j packed in
//        scales (see qb_k_scale_min)                                        v = d*sc*q - dmin*mn
//   Q5_K 176 B / 256: as Q4_K with qh[32]@16 and qs[128]@48; high bit = bit j of qh[l]
//   Q6_K 210 B / 256: ql[128]@0, qh[64]@128, int8 scales[16]@192, d@208. Value 32j+l:
//        low 4 bits: ql[64*(j/4) + 32*(j%2) + l] >> 4*((j%4)/2); high 2 bits:
//        qh[32*(j/4) + l] >> 2*(j%4); scale scales[2j + l/16]               v = d*sc*(q-32)

#define GGML_F32 0
#define GGML_F16 1
#define GGML_Q4_0 2
#define GGML_Q4_1 3
#define GGML_Q5_0 6
#define GGML_Q5_1 7
#define GGML_Q8_0 8
#define GGML_Q4_K 12
#define GGML_Q5_K 13
#define GGML_Q6_K 14
#define GGML_BF16 30

#ifndef QTYPE
#error "define QTYPE (a GGML type id) before including quant_blocks.glsl"
#endif

uint qb_u8(uint b) {
    return (w_words[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu;
}

// 16 bits at an even byte offset (never straddles a word).
uint qb_u16(uint b) {
    return (w_words[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu;
}

// 32 bits at any byte offset (the runtime pads each weight buffer by a word for the last read).
uint qb_u32(uint b) {
    uint s = (b & 3u) * 8u;
    uint lo = w_words[b >> 2];
    if (s == 0u) return lo;
    return (lo >> s) | (w_words[(b >> 2) + 1u] << (32u - s));
}

float qb_f16(uint bits) { return unpackHalf2x16(bits).x; }
float qb_bf16(uint bits) { return uintBitsToFloat(bits << 16); }

// Byte k (0..3) of word w.
uint qb_byte(uint w, uint k) { return (w >> (8u * k)) & 0xFFu; }

// The 6-bit scale and min of K-quant sub-block j from the 12 packed scale bytes at `sb`.
void qb_k_scale_min(uint sb, uint j, out float sc, out float mn) {
    if (j < 4u) {
        sc = float(qb_u8(sb + j) & 63u);
        mn = float(qb_u8(sb + j + 4u) & 63u);
    } else {
        sc = float((qb_u8(sb + j + 4u) & 0xFu) | ((qb_u8(sb + j - 4u) >> 6) << 4));
        mn = float((qb_u8(sb + j + 4u) >> 4) | ((qb_u8(sb + j) >> 6) << 4));
    }
}

// As qb_k_scale_min, from the three (aligned) words holding the 12 scale bytes.
void qb_k_scale_min_w(uint s0, uint s1, uint s2, uint j, out float sc, out float mn) {
    if (j < 4u) {
        sc = float(qb_byte(s0, j) & 63u);
        mn = float(qb_byte(s1, j) & 63u);
    } else {
        uint k = j - 4u;
        sc = float((qb_byte(s2, k) & 0xFu) | ((qb_byte(s0, k) >> 6) << 4));
        mn = float((qb_byte(s2, k) >> 4) | ((qb_byte(s1, k) >> 6) << 4));
    }
}

float qb_dq1(uint base, uint col) {
#if QTYPE == GGML_F32
    return uintBitsToFloat(w_words[(base >> 2) + col]);
#elif QTYPE == GGML_F16
    return qb_f16(qb_u16(base + 2u * col));
#elif QTYPE == GGML_BF16
    return qb_bf16(qb_u16(base + 2u * col));
#else
    return 0.0;   // quantized rows are whole groups; never called
#endif
}

void qb_dq32(uint base, uint g, out float v[32]) {
#if QTYPE == GGML_F32
    uint w0 = (base >> 2) + 32u * g;
    [[unroll]] for (uint i = 0u; i < 32u; i++) v[i] = uintBitsToFloat(w_words[w0 + i]);
#elif QTYPE == GGML_F16 || QTYPE == GGML_BF16
    uint b = base + 64u * g;
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        uint w = qb_u32(b + 4u * i);
#if QTYPE == GGML_F16
        vec2 h = unpackHalf2x16(w);
        v[2u * i] = h.x;
        v[2u * i + 1u] = h.y;
#else
        v[2u * i] = uintBitsToFloat(w << 16);
        v[2u * i + 1u] = uintBitsToFloat(w & 0xFFFF0000u);
#endif
    }
#elif QTYPE == GGML_Q8_0 || QTYPE == GGML_Q4_0
    // Blocks at even offsets: load the aligned words that cover the block once (9 / 5 loads
    // instead of one or two per field; loads are what CPU drivers pay for), then the d half is
    // at byte 0 and the quants start at byte 2, i.e. word-aligned exactly when the block is not.
#if QTYPE == GGML_Q8_0
#define QB_NW 9u
    uint b = base + 34u * g;
#else
#define QB_NW 5u
    uint b = base + 18u * g;
#endif
    uint win[QB_NW];
    [[unroll]] for (uint i = 0u; i < QB_NW; i++) win[i] = w_words[(b >> 2) + i];
    bool odd = (b & 2u) != 0u;
    float d = qb_f16(odd ? win[0] >> 16 : win[0]);
#if QTYPE == GGML_Q8_0
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        int w = int(odd ? win[i + 1u] : (win[i] >> 16) | (win[i + 1u] << 16));
        [[unroll]] for (int k = 0; k < 4; k++) v[4u * i + uint(k)] = d * float(bitfieldExtract(w, 8 * k, 8));
    }
#else
    float m = -8.0 * d;
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint w = odd ? win[i + 1u] : (win[i] >> 16) | (win[i + 1u] << 16);
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            uint q = qb_byte(w, k);
            v[4u * i + k] = d * float(q & 0xFu) + m;
            v[4u * i + k + 16u] = d * float(q >> 4) + m;
        }
    }
#endif
#undef QB_NW
#elif QTYPE == GGML_Q4_1
    uint b = base + 20u * g;
    float d = qb_f16(qb_u16(b));
    float m = qb_f16(qb_u16(b + 2u));
    uint qs = b + 4u;
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint w = qb_u32(qs + 4u * i);
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            uint q = qb_byte(w, k);
            v[4u * i + k] = d * float(q & 0xFu) + m;
            v[4u * i + k + 16u] = d * float(q >> 4) + m;
        }
    }
#elif QTYPE == GGML_Q5_0 || QTYPE == GGML_Q5_1
#if QTYPE == GGML_Q5_0
    uint b = base + 22u * g;
    float d = qb_f16(qb_u16(b));
    float m = -16.0 * d;
    uint qh = qb_u32(b + 2u);
    uint qs = b + 6u;
#else
    uint b = base + 24u * g;
    float d = qb_f16(qb_u16(b));
    float m = qb_f16(qb_u16(b + 2u));
    uint qh = qb_u32(b + 4u);
    uint qs = b + 8u;
#endif
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint w = qb_u32(qs + 4u * i);
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            uint l = 4u * i + k;
            uint q = qb_byte(w, k);
            v[l] = d * float((q & 0xFu) | (((qh >> l) & 1u) << 4)) + m;
            v[l + 16u] = d * float((q >> 4) | (((qh >> (l + 16u)) & 1u) << 4)) + m;
        }
    }
#elif QTYPE == GGML_Q4_K || QTYPE == GGML_Q5_K
    uint j = g & 7u;
#if QTYPE == GGML_Q4_K
    uint b = base + 144u * (g >> 3);
    uint qs = b + 16u + 32u * (j >> 1);
#else
    uint b = base + 176u * (g >> 3);
    uint qs = b + 48u + 32u * (j >> 1);
#endif
    float sc, mn;
    qb_k_scale_min_w(w_words[(b >> 2) + 1u], w_words[(b >> 2) + 2u], w_words[(b >> 2) + 3u], j, sc, mn);
    uint dw = w_words[b >> 2];                          // d, dmin
    float d = qb_f16(dw) * sc;
    float m = qb_f16(dw >> 16) * mn;
    uint shift = 4u * (j & 1u);
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint w = qb_u32(qs + 4u * i);
#if QTYPE == GGML_Q5_K
        uint h = qb_u32(b + 16u + 4u * i);
#endif
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            uint q = (qb_byte(w, k) >> shift) & 0xFu;
#if QTYPE == GGML_Q5_K
            q |= ((qb_byte(h, k) >> j) & 1u) << 4;
#endif
            v[4u * i + k] = d * float(q) - m;
        }
    }
#elif QTYPE == GGML_Q6_K
    uint j = g & 7u;
    uint b = base + 210u * (g >> 3);
    float d = qb_f16(qb_u16(b + 208u));
    uint ql = b + 64u * (j >> 2) + 32u * (j & 1u);
    uint qh = b + 128u + 32u * (j >> 2);
    uint lshift = 4u * ((j & 3u) >> 1);
    uint hshift = 2u * (j & 3u);
    // int8 scales of the two 16-value halves of this group
    uint sw = qb_u16(b + 192u + 2u * j);
    float s0 = d * float(bitfieldExtract(int(sw), 0, 8));
    float s1 = d * float(bitfieldExtract(int(sw), 8, 8));
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint wl = qb_u32(ql + 4u * i);
        uint wh = qb_u32(qh + 4u * i);
        float s = i < 4u ? s0 : s1;
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            int q = int(((qb_byte(wl, k) >> lshift) & 0xFu) | (((qb_byte(wh, k) >> hshift) & 3u) << 4)) - 32;
            v[4u * i + k] = s * float(q);
        }
    }
#else
#error "unsupported QTYPE"
#endif
}

void qb_dq4(uint base, uint g, uint q, out vec4 v, out uvec4 c) {
    c = uvec4(4u * q) + uvec4(0u, 1u, 2u, 3u);
#if QTYPE == GGML_F32
    uint w0 = (base >> 2) + 32u * g + 4u * q;
    v = vec4(uintBitsToFloat(w_words[w0]), uintBitsToFloat(w_words[w0 + 1u]),
             uintBitsToFloat(w_words[w0 + 2u]), uintBitsToFloat(w_words[w0 + 3u]));
#elif QTYPE == GGML_F16 || QTYPE == GGML_BF16
    uint b = base + 64u * g + 8u * q;
    uint w0 = qb_u32(b), w1 = qb_u32(b + 4u);
#if QTYPE == GGML_F16
    v = vec4(unpackHalf2x16(w0), unpackHalf2x16(w1));
#else
    v = vec4(uintBitsToFloat(w0 << 16), uintBitsToFloat(w0 & 0xFFFF0000u),
             uintBitsToFloat(w1 << 16), uintBitsToFloat(w1 & 0xFFFF0000u));
#endif
#elif QTYPE == GGML_Q8_0
    uint b = base + 34u * g;
    float d = qb_f16(qb_u16(b));
    int w = int(qb_u32(b + 2u + 4u * q));
    v = d * vec4(bitfieldExtract(w, 0, 8), bitfieldExtract(w, 8, 8), bitfieldExtract(w, 16, 8),
                 bitfieldExtract(w, 24, 8));
#elif QTYPE == GGML_Q4_0 || QTYPE == GGML_Q4_1 || QTYPE == GGML_Q5_0 || QTYPE == GGML_Q5_1
    // bytes 2q, 2q+1: low nibbles are values 2q, 2q+1, high nibbles 2q+16, 2q+17
    c = uvec4(2u * q, 2u * q + 1u, 2u * q + 16u, 2u * q + 17u);
#if QTYPE == GGML_Q4_0
    uint b = base + 18u * g;
    float d = qb_f16(qb_u16(b)), m = -8.0 * d;
    uint qs = qb_u16(b + 2u + 2u * q);
    uvec4 u = uvec4(qs & 0xFu, (qs >> 8) & 0xFu, (qs >> 4) & 0xFu, qs >> 12);
#elif QTYPE == GGML_Q4_1
    uint b = base + 20u * g;
    float d = qb_f16(qb_u16(b)), m = qb_f16(qb_u16(b + 2u));
    uint qs = qb_u16(b + 4u + 2u * q);
    uvec4 u = uvec4(qs & 0xFu, (qs >> 8) & 0xFu, (qs >> 4) & 0xFu, qs >> 12);
#elif QTYPE == GGML_Q5_0
    uint b = base + 22u * g;
    float d = qb_f16(qb_u16(b)), m = -16.0 * d;
    uint qh = qb_u32(b + 2u) >> (2u * q);
    uint qs = qb_u16(b + 6u + 2u * q);
    uvec4 u = uvec4(qs & 0xFu, (qs >> 8) & 0xFu, (qs >> 4) & 0xFu, qs >> 12)
            | (uvec4(qh, qh >> 1, qh >> 16, qh >> 17) & 1u) << 4;
#else
    uint b = base + 24u * g;
    float d = qb_f16(qb_u16(b)), m = qb_f16(qb_u16(b + 2u));
    uint qh = qb_u32(b + 4u) >> (2u * q);
    uint qs = qb_u16(b + 8u + 2u * q);
    uvec4 u = uvec4(qs & 0xFu, (qs >> 8) & 0xFu, (qs >> 4) & 0xFu, qs >> 12)
            | (uvec4(qh, qh >> 1, qh >> 16, qh >> 17) & 1u) << 4;
#endif
    v = d * vec4(u) + m;
#elif QTYPE == GGML_Q4_K || QTYPE == GGML_Q5_K
    uint j = g & 7u;
#if QTYPE == GGML_Q4_K
    uint b = base + 144u * (g >> 3);
    uint w = qb_u32(b + 16u + 32u * (j >> 1) + 4u * q) >> (4u * (j & 1u));
#else
    uint b = base + 176u * (g >> 3);
    uint w = qb_u32(b + 48u + 32u * (j >> 1) + 4u * q) >> (4u * (j & 1u));
#endif
    float sc, mn;
    qb_k_scale_min(b + 4u, j, sc, mn);
    uvec4 u = uvec4(w & 0xFu, (w >> 8) & 0xFu, (w >> 16) & 0xFu, (w >> 24) & 0xFu);
#if QTYPE == GGML_Q5_K
    uint h = qb_u32(b + 16u + 4u * q) >> j;
    u |= (uvec4(h, h >> 8, h >> 16, h >> 24) & 1u) << 4;
#endif
    v = (qb_f16(qb_u16(b)) * sc) * vec4(u) - qb_f16(qb_u16(b + 2u)) * mn;
#elif QTYPE == GGML_Q6_K
    uint j = g & 7u;
    uint b = base + 210u * (g >> 3);
    float d = qb_f16(qb_u16(b + 208u));
    uint wl = qb_u32(b + 64u * (j >> 2) + 32u * (j & 1u) + 4u * q) >> (4u * ((j & 3u) >> 1));
    uint wh = qb_u32(b + 128u + 32u * (j >> 2) + 4u * q) >> (2u * (j & 3u));
    ivec4 u = ivec4((uvec4(wl, wl >> 8, wl >> 16, wl >> 24) & 0xFu) |
                    ((uvec4(wh, wh >> 8, wh >> 16, wh >> 24) & 3u) << 4)) - 32;
    // values 4q..4q+3 of the group share the int8 scale of their 16-value half
    float s = d * float(bitfieldExtract(int(qb_u8(b + 192u + 2u * j + (q >> 2))), 0, 8));
    v = s * vec4(u);
#endif
}
