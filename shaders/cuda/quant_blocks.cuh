// GGUF block layouts: decoding of every supported weight type, in ONE place (CUDA).
//
// Weights stay exactly as the GGUF file stores them (row-major rows of blocks, little-endian);
// nothing is repacked. Every block size is even and every field of a block starts at an even
// byte offset, so blocks are read with 16-bit loads (rows are only 2-byte aligned in general).
//
// API (QT is a GGML type id, below):
//   QB<QT>::VALS, QB<QT>::BYTES        values and bytes per block (float types: 32-value "blocks")
//   qb_dq32<QT>(blk, j, nv, v)         values 32j .. 32j+31 of the block at `blk` (j < VALS/32);
//                                      float types: only the first `nv` are read, the rest are 0
//   qb_group<QT>(row, g, K, v)         values 32g .. 32g+31 of a row of K values (a "group")
//   qb_dot32<QT>(blk, j, x)            sum of values 32j+i times x[i], i < 32, decoded on the fly
//                                      (x 16-byte aligned, all 32 values present): the matvec path
//
// Layouts (offsets in bytes; d/dmin/m are IEEE halfs; reference: gguf-py gguf/quants.py):
//   F32   4 B/value                 F16 2 B/value             BF16 2 B/value (top half of an f32)
//   Q8_0  34 B / 32: d@0, int8 q[32]@2                                       v = d*q
//   Q4_0  18 B / 32: d@0, qs[16]@2; v[i] = lo nibble of qs[i], v[i+16] = hi   v = d*(q-8)
//   Q4_1  20 B / 32: d@0, m@2, qs[16]@4 (nibbles as Q4_0)                    v = d*q + m
//   Q5_0  22 B / 32: d@0, qh(u32)@2, qs[16]@6; q = nibble | bit i of qh << 4 v = d*(q-16)
//   Q5_1  24 B / 32: d@0, m@2, qh@4, qs[16]@8                                v = d*q + m
//   Q4_K 144 B / 256: d@0, dmin@2, scales[12]@4, qs[128]@16. Sub-block j (32 values):
//        bytes qs[32*(j/2) + l], nibble j%2; 6-bit (sc, mn) of j packed in the 12 scale bytes
//        (qb_k_scale_min)                                                    v = d*sc*q - dmin*mn
//   Q5_K 176 B / 256: as Q4_K with qh[32]@16 and qs[128]@48; high bit = bit j of qh[l]
//   Q6_K 210 B / 256: ql[128]@0, qh[64]@128, int8 scales[16]@192, d@208. Value 32j+l:
//        low 4 bits: ql[64*(j/4) + 32*(j%2) + l] >> 4*((j%4)/2); high 2 bits:
//        qh[32*(j/4) + l] >> 2*(j%4); scale scales[2j + l/16]               v = d*sc*(q-32)
#pragma once
#include "common.cuh"
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__) && !defined(G4RT_CPU_SIM)
struct float4 { float x, y, z, w; };       // host build (decoder test)
#endif

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

// X(suffix, type id): every supported type, for instantiating one kernel per type; or only the
// type named by -DG4RT_QTYPE_NAME=q4_0 -DG4RT_QTYPE_ID=GGML_Q4_0 (the runtime compiles the
// per-type kernel files once per type a model uses: smaller, parallel, lazy compiles).
#if defined(G4RT_QTYPE_NAME) && defined(G4RT_QTYPE_ID)
#define G4RT_APPLY_QTYPE(X, name, id) X(name, id)
#define G4RT_FOR_EACH_QTYPE(X) G4RT_APPLY_QTYPE(X, G4RT_QTYPE_NAME, G4RT_QTYPE_ID)
#else
#define G4RT_FOR_EACH_QTYPE(X) \
    X(f32, GGML_F32) X(f16, GGML_F16) X(bf16, GGML_BF16) X(q8_0, GGML_Q8_0) X(q4_0, GGML_Q4_0) \
    X(q4_1, GGML_Q4_1) X(q5_0, GGML_Q5_0) X(q5_1, GGML_Q5_1) X(q4_k, GGML_Q4_K) X(q5_k, GGML_Q5_K) \
    X(q6_k, GGML_Q6_K)
#endif

template <int QT> struct QB;
template <> struct QB<GGML_F32>  { static const int VALS = 32;  static const int BYTES = 128; };
template <> struct QB<GGML_F16>  { static const int VALS = 32;  static const int BYTES = 64; };
template <> struct QB<GGML_BF16> { static const int VALS = 32;  static const int BYTES = 64; };
template <> struct QB<GGML_Q8_0> { static const int VALS = 32;  static const int BYTES = 34; };
template <> struct QB<GGML_Q4_0> { static const int VALS = 32;  static const int BYTES = 18; };
template <> struct QB<GGML_Q4_1> { static const int VALS = 32;  static const int BYTES = 20; };
template <> struct QB<GGML_Q5_0> { static const int VALS = 32;  static const int BYTES = 22; };
template <> struct QB<GGML_Q5_1> { static const int VALS = 32;  static const int BYTES = 24; };
template <> struct QB<GGML_Q4_K> { static const int VALS = 256; static const int BYTES = 144; };
template <> struct QB<GGML_Q5_K> { static const int VALS = 256; static const int BYTES = 176; };
template <> struct QB<GGML_Q6_K> { static const int VALS = 256; static const int BYTES = 210; };

// The 6-bit scale and min of K-quant sub-block j (0..7) from the 12 packed bytes at `s`.
__device__ __forceinline__ void qb_k_scale_min(const u8* s, int j, float& sc, float& mn) {
    if (j < 4) {
        sc = (float)(ld_u8(s + j) & 63u);
        mn = (float)(ld_u8(s + j + 4) & 63u);
    } else {
        sc = (float)((ld_u8(s + j + 4) & 0xFu) | ((ld_u8(s + j - 4) >> 6) << 4));
        mn = (float)((ld_u8(s + j + 4) >> 4) | ((ld_u8(s + j) >> 6) << 4));
    }
}

// Where sub-block j (values 32j .. 32j+31) of a Q6_K block keeps its bits: the low 4 bits in
// ql[l] >> ls, the high 2 in qh[l] >> hs (l < 32), int8 scales of its two halves in sw.
struct Q6Sub {
    const u8* ql;
    const u8* qh;
    int ls, hs;
    u32 sw;
    float d;
};
__device__ __forceinline__ Q6Sub qb_q6k_sub(const u8* b, int j) {
    Q6Sub q;
    q.ql = b + 64 * (j >> 2) + 32 * (j & 1);
    q.qh = b + 128 + 32 * (j >> 2);
    q.ls = 4 * ((j & 3) >> 1);
    q.hs = 2 * (j & 3);
    q.sw = ld_u16(b + 192 + 2 * j);
    q.d = f16_to_f32((u16)ld_u16(b + 208));
    return q;
}

// Q4_K / Q5_K sub-block j: its scale d = d_block * sc and min m = dmin_block * mn (value = d*q - m).
__device__ __forceinline__ void qb_k_dm(const u8* b, int j, float& d, float& m) {
    float sc, mn;
    qb_k_scale_min(b + 4, j, sc, mn);
    d = f16_to_f32((u16)ld_u16(b)) * sc;
    m = f16_to_f32((u16)ld_u16(b + 2)) * mn;
}

template <int QT> __device__ __forceinline__ void qb_dq32(const u8* b, int j, int nv, float v[32]);

template <> __device__ __forceinline__ void qb_dq32<GGML_F32>(const u8* b, int j, int nv, float v[32]) {
    const float* f = (const float*)b;
    if (nv >= 32) {
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = f[i];
    } else {
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = i < nv ? f[i] : 0.0f;
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_F16>(const u8* b, int j, int nv, float v[32]) {
#pragma unroll
    for (int i = 0; i < 32; i++) v[i] = i < nv ? f16_to_f32((u16)ld_u16(b + 2 * i)) : 0.0f;
}

template <> __device__ __forceinline__ void qb_dq32<GGML_BF16>(const u8* b, int j, int nv, float v[32]) {
#pragma unroll
    for (int i = 0; i < 32; i++) v[i] = i < nv ? bf16_to_f32((u16)ld_u16(b + 2 * i)) : 0.0f;
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q8_0>(const u8* b, int j, int nv, float v[32]) {
    const float d = f16_to_f32((u16)ld_u16(b));
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const u32 w = ld_u16(b + 2 + 2 * i);
        v[2 * i] = d * (float)(int)(i8)(w & 0xFFu);
        v[2 * i + 1] = d * (float)(int)(i8)(w >> 8);
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q4_0>(const u8* b, int j, int nv, float v[32]) {
    const float d = f16_to_f32((u16)ld_u16(b));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 w = ld_u16(b + 2 + 2 * i);          // qs[2i] | qs[2i+1] << 8
        v[2 * i] = d * (float)((int)(w & 0xFu) - 8);
        v[2 * i + 1] = d * (float)((int)((w >> 8) & 0xFu) - 8);
        v[2 * i + 16] = d * (float)((int)((w >> 4) & 0xFu) - 8);
        v[2 * i + 17] = d * (float)((int)(w >> 12) - 8);
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q4_1>(const u8* b, int j, int nv, float v[32]) {
    const float d = f16_to_f32((u16)ld_u16(b));
    const float m = f16_to_f32((u16)ld_u16(b + 2));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 w = ld_u16(b + 4 + 2 * i);
        v[2 * i] = d * (float)(w & 0xFu) + m;
        v[2 * i + 1] = d * (float)((w >> 8) & 0xFu) + m;
        v[2 * i + 16] = d * (float)((w >> 4) & 0xFu) + m;
        v[2 * i + 17] = d * (float)(w >> 12) + m;
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q5_0>(const u8* b, int j, int nv, float v[32]) {
    const float d = f16_to_f32((u16)ld_u16(b));
    const u32 qh = ld_u32_a2(b + 2);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 w = ld_u16(b + 6 + 2 * i);
        const int l = 2 * i;
        v[l] = d * (float)((int)((w & 0xFu) | (((qh >> l) & 1u) << 4)) - 16);
        v[l + 1] = d * (float)((int)(((w >> 8) & 0xFu) | (((qh >> (l + 1)) & 1u) << 4)) - 16);
        v[l + 16] = d * (float)((int)(((w >> 4) & 0xFu) | (((qh >> (l + 16)) & 1u) << 4)) - 16);
        v[l + 17] = d * (float)((int)((w >> 12) | (((qh >> (l + 17)) & 1u) << 4)) - 16);
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q5_1>(const u8* b, int j, int nv, float v[32]) {
    const float d = f16_to_f32((u16)ld_u16(b));
    const float m = f16_to_f32((u16)ld_u16(b + 2));
    const u32 qh = ld_u32_a2(b + 4);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 w = ld_u16(b + 8 + 2 * i);
        const int l = 2 * i;
        v[l] = d * (float)((w & 0xFu) | (((qh >> l) & 1u) << 4)) + m;
        v[l + 1] = d * (float)(((w >> 8) & 0xFu) | (((qh >> (l + 1)) & 1u) << 4)) + m;
        v[l + 16] = d * (float)(((w >> 4) & 0xFu) | (((qh >> (l + 16)) & 1u) << 4)) + m;
        v[l + 17] = d * (float)((w >> 12) | (((qh >> (l + 17)) & 1u) << 4)) + m;
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q4_K>(const u8* b, int j, int nv, float v[32]) {
    float d, m;
    qb_k_dm(b, j, d, m);
    const u8* qs = b + 16 + 32 * (j >> 1);
    const int sh = 4 * (j & 1);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const u32 w = ld_u16(qs + 2 * i);
        v[2 * i] = d * (float)((w >> sh) & 0xFu) - m;
        v[2 * i + 1] = d * (float)((w >> (8 + sh)) & 0xFu) - m;
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q5_K>(const u8* b, int j, int nv, float v[32]) {
    float d, m;
    qb_k_dm(b, j, d, m);
    const u8* qh = b + 16;
    const u8* qs = b + 48 + 32 * (j >> 1);
    const int sh = 4 * (j & 1);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const u32 w = ld_u16(qs + 2 * i);
        const u32 h = ld_u16(qh + 2 * i);
        const u32 q0 = ((w >> sh) & 0xFu) | (((h >> j) & 1u) << 4);
        const u32 q1 = ((w >> (8 + sh)) & 0xFu) | (((h >> (8 + j)) & 1u) << 4);
        v[2 * i] = d * (float)q0 - m;
        v[2 * i + 1] = d * (float)q1 - m;
    }
}

template <> __device__ __forceinline__ void qb_dq32<GGML_Q6_K>(const u8* b, int j, int nv, float v[32]) {
    const Q6Sub q6 = qb_q6k_sub(b, j);
    const u8 *ql = q6.ql, *qh = q6.qh;
    const int ls = q6.ls, hs = q6.hs;
    const float s0 = q6.d * (float)(int)(i8)(q6.sw & 0xFFu);
    const float s1 = q6.d * (float)(int)(i8)(q6.sw >> 8);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const u32 wl = ld_u16(ql + 2 * i);
        const u32 wh = ld_u16(qh + 2 * i);
        const int q0 = (int)(((wl >> ls) & 0xFu) | (((wh >> hs) & 3u) << 4)) - 32;
        const int q1 = (int)(((wl >> (8 + ls)) & 0xFu) | (((wh >> (8 + hs)) & 3u) << 4)) - 32;
        const float s = i < 8 ? s0 : s1;
        v[2 * i] = s * (float)q0;
        v[2 * i + 1] = s * (float)q1;
    }
}

// Values 32g .. 32g+31 of a row of K values starting at `row` (2-byte aligned; 4-byte for F32).
template <int QT>
__device__ __forceinline__ void qb_group(const u8* row, int g, int K, float v[32]) {
    const int GPB = QB<QT>::VALS / 32;
    const u8* blk = row + (size_t)(g / GPB) * QB<QT>::BYTES;
    int nv = K - 32 * g;
    nv = nv > 32 ? 32 : nv;
    qb_dq32<QT>(blk, g % GPB, nv, v);
}

// ---- fused decode + dot (matvec) -----------------------------------------------------------
// sum_{i < 32} value(32j + i) * x[i]. Decodes 4 values per 32-bit word; the block scale (and min)
// are applied once per group: d * sum(q x) (+ m * sum(x)). fp32 throughout.
#define QB_X4(c) (((const float4*)x)[c])

template <int QT> __device__ __forceinline__ float qb_dot32(const u8* b, int j, const float* x);

template <> __device__ __forceinline__ float qb_dot32<GGML_F32>(const u8* b, int j, const float* x) {
    const float* f = (const float*)b;
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const float4 xv = QB_X4(c);
        s += f[4 * c] * xv.x + f[4 * c + 1] * xv.y + f[4 * c + 2] * xv.z + f[4 * c + 3] * xv.w;
    }
    return s;
}

template <> __device__ __forceinline__ float qb_dot32<GGML_F16>(const u8* b, int j, const float* x) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const float4 xv = QB_X4(c);
        const u32 w0 = ld_u32_a2(b + 8 * c), w1 = ld_u32_a2(b + 8 * c + 4);
        s += f16_to_f32((u16)(w0 & 0xFFFFu)) * xv.x + f16_to_f32((u16)(w0 >> 16)) * xv.y +
             f16_to_f32((u16)(w1 & 0xFFFFu)) * xv.z + f16_to_f32((u16)(w1 >> 16)) * xv.w;
    }
    return s;
}

template <> __device__ __forceinline__ float qb_dot32<GGML_BF16>(const u8* b, int j, const float* x) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const float4 xv = QB_X4(c);
        const u32 w0 = ld_u32_a2(b + 8 * c), w1 = ld_u32_a2(b + 8 * c + 4);
        s += __uint_as_float(w0 << 16) * xv.x + __uint_as_float(w0 & 0xFFFF0000u) * xv.y +
             __uint_as_float(w1 << 16) * xv.z + __uint_as_float(w1 & 0xFFFF0000u) * xv.w;
    }
    return s;
}

__device__ __forceinline__ float qb_i8(u32 w, int k) { return (float)(int)(i8)((w >> (8 * k)) & 0xFFu); }

template <> __device__ __forceinline__ float qb_dot32<GGML_Q8_0>(const u8* b, int j, const float* x) {
    const float d = f16_to_f32((u16)ld_u16(b));
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const float4 xv = QB_X4(c);
        const u32 w = ld_u32_a2(b + 2 + 4 * c);
        s += qb_i8(w, 0) * xv.x + qb_i8(w, 1) * xv.y + qb_i8(w, 2) * xv.z + qb_i8(w, 3) * xv.w;
    }
    return d * s;
}

// nibble k (0..3 bytes) of word w: low (sh = 0) or high (sh = 4) half of byte k
#define QB_NIB(w, k, sh) ((float)(((w) >> (8 * (k) + (sh))) & 0xFu))

// Integer -> float without a conversion instruction: the bits 0x4B000000 | m are the float
// 2^23 + m exactly for any m below 2^23. So a 4- or 6-bit field that already sits within bits
// 0..22 of a word becomes (2^23 + field * 2^pos) with ONE mask-and-or (LOP3), and one exact FADD
// removes 2^23 and the bias (times 2^pos). Products are summed per position and scaled back by
// 2^-pos at the end (exact). This replaces shift + mask + I2F per value, which left the 4- and
// 6-bit decoders issue-bound (scripts/sass_stats.py, docs/benchmarks/cuda-sass.md).
#define QB_MAGIC 8388608.0f
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// (w & mask) | 0x4B000000 as ONE lop3 (left to itself the compiler emits an AND and an OR, each
// with an immediate)
__device__ __forceinline__ u32 qb_mag_bits(u32 w, u32 mask) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w), "r"(mask), "r"(0x4B000000u));
    return d;
}
#else
__device__ __forceinline__ u32 qb_mag_bits(u32 w, u32 mask) { return (w & mask) | 0x4B000000u; }
#endif
#define QB_MAG(w, mask) __uint_as_float(qb_mag_bits((w), (mask)))

template <> __device__ __forceinline__ float qb_dot32<GGML_Q4_0>(const u8* b, int j, const float* x) {
    const float d = f16_to_f32((u16)ld_u16(b));
    // value 4c+k: low nibble of byte k; value 16+4c+k: its high nibble. Byte 3 and the high
    // nibble of byte 2 reach bit 23, so they are read from w >> 16.
    float s0 = 0.0f, s4 = 0.0f, s8 = 0.0f, s12 = 0.0f, s16 = 0.0f;   // sums per 2^pos
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const u32 w = ld_u32_a2(b + 2 + 4 * c);        // qs[4c .. 4c+3]
        const u32 u = w >> 16;
        const float4 lo = QB_X4(c), hi = QB_X4(c + 4);  // values 4c.., 16+4c..
        s0 = fmaf(QB_MAG(w, 0xFu) - (QB_MAGIC + 8.0f), lo.x, s0);
        s8 = fmaf(QB_MAG(w, 0xF00u) - (QB_MAGIC + 2048.0f), lo.y, s8);
        s16 = fmaf(QB_MAG(w, 0xF0000u) - (QB_MAGIC + 524288.0f), lo.z, s16);
        s8 = fmaf(QB_MAG(u, 0xF00u) - (QB_MAGIC + 2048.0f), lo.w, s8);
        s4 = fmaf(QB_MAG(w, 0xF0u) - (QB_MAGIC + 128.0f), hi.x, s4);
        s12 = fmaf(QB_MAG(w, 0xF000u) - (QB_MAGIC + 32768.0f), hi.y, s12);
        s4 = fmaf(QB_MAG(u, 0xF0u) - (QB_MAGIC + 128.0f), hi.z, s4);
        s12 = fmaf(QB_MAG(u, 0xF000u) - (QB_MAGIC + 32768.0f), hi.w, s12);
    }
    return d * fmaf(s16, 1.0f / 65536.0f, fmaf(s12, 1.0f / 4096.0f, fmaf(s8, 1.0f / 256.0f, fmaf(s4, 0.0625f, s0))));
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q4_1>(const u8* b, int j, const float* x) {
    const float d = f16_to_f32((u16)ld_u16(b));
    const float m = f16_to_f32((u16)ld_u16(b + 2));
    float s = 0.0f, sx = 0.0f;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const u32 w = ld_u32_a2(b + 4 + 4 * c);
        const float4 lo = QB_X4(c), hi = QB_X4(c + 4);
        s += QB_NIB(w, 0, 0) * lo.x + QB_NIB(w, 1, 0) * lo.y + QB_NIB(w, 2, 0) * lo.z + QB_NIB(w, 3, 0) * lo.w;
        s += QB_NIB(w, 0, 4) * hi.x + QB_NIB(w, 1, 4) * hi.y + QB_NIB(w, 2, 4) * hi.z + QB_NIB(w, 3, 4) * hi.w;
        sx += (lo.x + lo.y) + (lo.z + lo.w) + (hi.x + hi.y) + (hi.z + hi.w);
    }
    return d * s + m * sx;
}

// 5-bit value: nibble k of w (low half sh = 0 / high sh = 4) and bit `bit` of qh
#define QB_Q5(w, k, sh, qh, bit) ((float)((((w) >> (8 * (k) + (sh))) & 0xFu) | ((((qh) >> (bit)) & 1u) << 4)))

// Q5_0 / Q5_1 group: s = sum of q * x (q: nibble | bit of qh << 4, 0..31) and sx = sum of x.
__device__ __forceinline__ void qb_q5_sums(const u8* qs, u32 qh, const float* x, float& s, float& sx) {
    s = 0.0f;
    sx = 0.0f;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const u32 w = ld_u32_a2(qs + 4 * c);
        const float4 lo = QB_X4(c), hi = QB_X4(c + 4);
        const int l = 4 * c;
        s += QB_Q5(w, 0, 0, qh, l) * lo.x + QB_Q5(w, 1, 0, qh, l + 1) * lo.y +
             QB_Q5(w, 2, 0, qh, l + 2) * lo.z + QB_Q5(w, 3, 0, qh, l + 3) * lo.w;
        s += QB_Q5(w, 0, 4, qh, l + 16) * hi.x + QB_Q5(w, 1, 4, qh, l + 17) * hi.y +
             QB_Q5(w, 2, 4, qh, l + 18) * hi.z + QB_Q5(w, 3, 4, qh, l + 19) * hi.w;
        sx += (lo.x + lo.y) + (lo.z + lo.w) + (hi.x + hi.y) + (hi.z + hi.w);
    }
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q5_0>(const u8* b, int j, const float* x) {
    float s, sx;
    qb_q5_sums(b + 6, ld_u32_a2(b + 2), x, s, sx);
    return f16_to_f32((u16)ld_u16(b)) * (s - 16.0f * sx);
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q5_1>(const u8* b, int j, const float* x) {
    float s, sx;
    qb_q5_sums(b + 8, ld_u32_a2(b + 4), x, s, sx);
    return f16_to_f32((u16)ld_u16(b)) * s + f16_to_f32((u16)ld_u16(b + 2)) * sx;
}

// Q4_K sub-block of 32 values: nibble HIGH of the 32 bytes at qs, value i from byte i. Nibbles
// sit at bits 0|4, 8|12, 16 (low only) of each word; byte 3 (and byte 2's high nibble, which
// reaches bit 23) are read from w >> 16.
template <bool HIGH>
__device__ __forceinline__ float qb_q4k_dot(const u8* qs, float d, float m, const float* x) {
    const u32 m0 = HIGH ? 0xF0u : 0xFu, m1 = m0 << 8;
    float sa = 0.0f, sb = 0.0f, sc = 0.0f, sx = 0.0f;   // sums per position 0|4, 8|12, 16
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const u32 w = ld_u32_a2(qs + 4 * c);
        const u32 u = w >> 16;
        const float4 xv = QB_X4(c);
        sa = fmaf(QB_MAG(w, m0) - QB_MAGIC, xv.x, sa);
        sb = fmaf(QB_MAG(w, m1) - QB_MAGIC, xv.y, sb);
        if (HIGH) sa = fmaf(QB_MAG(u, m0) - QB_MAGIC, xv.z, sa);
        else sc = fmaf(QB_MAG(w, 0xF0000u) - QB_MAGIC, xv.z, sc);
        sb = fmaf(QB_MAG(u, m1) - QB_MAGIC, xv.w, sb);
        sx += (xv.x + xv.y) + (xv.z + xv.w);
    }
    const float s = fmaf(sc, 1.0f / 65536.0f, fmaf(sb, 1.0f / 256.0f, sa));
    return d * (HIGH ? 0.0625f * s : s) - m * sx;
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q4_K>(const u8* b, int j, const float* x) {
    float d, m;
    qb_k_dm(b, j, d, m);
    const u8* qs = b + 16 + 32 * (j >> 1);
    return (j & 1) ? qb_q4k_dot<true>(qs, d, m, x) : qb_q4k_dot<false>(qs, d, m, x);
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q5_K>(const u8* b, int j, const float* x) {
    float d, m;
    qb_k_dm(b, j, d, m);
    const u8* qh = b + 16;
    const u8* qs = b + 48 + 32 * (j >> 1);
    const int sh = 4 * (j & 1);
    // the 4 five-bit codes of word c, one per byte (nibble sh of qs, bit j of qh as bit 4), then
    // to floats at bit positions 0, 8, 16 (and 8 of q >> 16: byte 3)
    float s0 = 0.0f, s8 = 0.0f, s16 = 0.0f, sx = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const u32 q = ((ld_u32_a2(qs + 4 * c) >> sh) & 0x0F0F0F0Fu) |
                      (((ld_u32_a2(qh + 4 * c) >> j) & 0x01010101u) << 4);
        const u32 u = q >> 16;
        const float4 xv = QB_X4(c);
        s0 = fmaf(QB_MAG(q, 0x1Fu) - QB_MAGIC, xv.x, s0);
        s8 = fmaf(QB_MAG(q, 0x1F00u) - QB_MAGIC, xv.y, s8);
        s16 = fmaf(QB_MAG(q, 0x1F0000u) - QB_MAGIC, xv.z, s16);
        s8 = fmaf(QB_MAG(u, 0x1F00u) - QB_MAGIC, xv.w, s8);
        sx += (xv.x + xv.y) + (xv.z + xv.w);
    }
    return d * fmaf(s16, 1.0f / 65536.0f, fmaf(s8, 1.0f / 256.0f, s0)) - m * sx;
}

template <> __device__ __forceinline__ float qb_dot32<GGML_Q6_K>(const u8* b, int j, const float* x) {
    const Q6Sub q6 = qb_q6k_sub(b, j);
    const u8 *ql = q6.ql, *qh = q6.qh;
    const int ls = q6.ls, hs = q6.hs;
    const u32 sw = q6.sw;
    const float d = q6.d;
    // sums per position (bits 0, 8, 16) for values 0..15 (a) and 16..31 (b)
    float a0 = 0.0f, a8 = 0.0f, a16 = 0.0f, b0 = 0.0f, b8 = 0.0f, b16 = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) {
        const u32 wl = ld_u32_a2(ql + 4 * c);
        const u32 wh = ld_u32_a2(qh + 4 * c);
        // the 4 six-bit codes of this word, one per byte (low 4 bits from ql, high 2 from qh)
        const u32 q = ((wl >> ls) & 0x0F0F0F0Fu) | (((wh >> hs) & 0x03030303u) << 4);
        const u32 u = q >> 16;
        const float4 xv = QB_X4(c);
        const float v0 = QB_MAG(q, 0x3Fu) - (QB_MAGIC + 32.0f);              // q - 32
        const float v1 = QB_MAG(q, 0x3F00u) - (QB_MAGIC + 8192.0f);          // (q - 32) * 2^8
        const float v2 = QB_MAG(q, 0x3F0000u) - (QB_MAGIC + 2097152.0f);     // (q - 32) * 2^16
        const float v3 = QB_MAG(u, 0x3F00u) - (QB_MAGIC + 8192.0f);          // (q - 32) * 2^8
        if (c < 4) {
            a0 = fmaf(v0, xv.x, a0);
            a8 = fmaf(v1, xv.y, a8);
            a16 = fmaf(v2, xv.z, a16);
            a8 = fmaf(v3, xv.w, a8);
        } else {
            b0 = fmaf(v0, xv.x, b0);
            b8 = fmaf(v1, xv.y, b8);
            b16 = fmaf(v2, xv.z, b16);
            b8 = fmaf(v3, xv.w, b8);
        }
    }
    const float s0 = fmaf(a16, 1.0f / 65536.0f, fmaf(a8, 1.0f / 256.0f, a0));
    const float s1 = fmaf(b16, 1.0f / 65536.0f, fmaf(b8, 1.0f / 256.0f, b0));
    return d * ((float)(int)(i8)(sw & 0xFFu) * s0 + (float)(int)(i8)(sw >> 8) * s1);
}
