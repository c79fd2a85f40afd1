/* quant.c: GGUF block geometry and exact dequantization (bit-exact with gguf.quants.dequantize).
 *
 * Every value is computed with the same float32 operations, in the same order, as gguf/quants.py
 * (llama.cpp's own reference): e.g. Q4_K = (d*sc)*q - (dmin*m), each product and the difference
 * rounded to float32 separately. Contraction of a*b+c into one FMA would change the rounding, so
 * it is switched off for this file whatever flags it is built with.
 *
 * Used for embedding rows and for prefill panels (gemm.c), so the hot types have AVX2 paths
 * (taken by the AVX-512 build too); the others are plain C.
 */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "g4cpu.h"

#define QK 32
#define QKK 256

int g4_block_values(int qtype) {
    switch (qtype) {
    case G4_F32: case G4_F16: case G4_BF16: return 1;
    case G4_Q4_0: case G4_Q4_1: case G4_Q5_0: case G4_Q5_1: case G4_Q8_0: return QK;
    case G4_Q4_K: case G4_Q5_K: case G4_Q6_K: return QKK;
    default: return 0;
    }
}

int g4_block_bytes(int qtype) {
    switch (qtype) {
    case G4_F32: return 4;
    case G4_F16: case G4_BF16: return 2;
    case G4_Q4_0: return 18;
    case G4_Q4_1: return 20;
    case G4_Q5_0: return 22;
    case G4_Q5_1: return 24;
    case G4_Q8_0: return 34;
    case G4_Q4_K: return 144;
    case G4_Q5_K: return 176;
    case G4_Q6_K: return 210;
    default: return 0;
    }
}

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block (llama.cpp get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* ---- per-block decoders (one block of the type -> its values) ---- */

static void dq_q4_0(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b));
    const uint8_t *qs = b + 2;
#if defined(G4_AVX2)
    const __m256 vd = _mm256_set1_ps(d);
    const __m128i m4 = _mm_set1_epi8(0x0F), off = _mm_set1_epi8(8);
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), off);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), off);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
#else
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((int)(qs[j] & 0xF) - 8);
        y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
    }
#endif
}

#if defined(G4_AVX2)
/* codes of one 32-value block as 4 x 8 int32 lanes (values 0..7, 8..15, 16..23, 24..31): the
 * nibbles of qs[16], plus 16 where bit i of qh is set (qh_on). */
static inline void nib_codes(const uint8_t *qs, uint32_t qh, int qh_on, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi32(15);
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    q[0] = _mm256_and_si256(a, m4);
    q[1] = _mm256_and_si256(b, m4);
    q[2] = _mm256_srli_epi32(a, 4);
    q[3] = _mm256_srli_epi32(b, 4);
    if (qh_on) {
        const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
        for (int k = 0; k < 4; k++) {
            const __m256i bits = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> (8 * k))), sh), one);
            q[k] = _mm256_or_si256(q[k], _mm256_slli_epi32(bits, 4));
        }
    }
}
#endif

static void dq_q4_1(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b)), m = g4_h2f(rd16(b + 2));
    const uint8_t *qs = b + 4;
#if defined(G4_AVX2)
    __m256i q[4];
    nib_codes(qs, 0, 0, q);
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(vd, _mm256_cvtepi32_ps(q[k])), vm));
#else
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 0xF) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
#endif
}

static void dq_q5_0(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b));
    const uint32_t qh = rd32(b + 2);
    const uint8_t *qs = b + 6;
#if defined(G4_AVX2)
    __m256i q[4];
    nib_codes(qs, qh, 1, q);
    const __m256 vd = _mm256_set1_ps(d);
    const __m256i c16 = _mm256_set1_epi32(16);
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], c16))));
#else
    for (int j = 0; j < 16; j++) {
        int q0 = (qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
        int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * (float)(q0 - 16);
        y[j + 16] = d * (float)(q1 - 16);
    }
#endif
}

static void dq_q5_1(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b)), m = g4_h2f(rd16(b + 2));
    const uint32_t qh = rd32(b + 4);
    const uint8_t *qs = b + 8;
#if defined(G4_AVX2)
    __m256i q[4];
    nib_codes(qs, qh, 1, q);
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(vd, _mm256_cvtepi32_ps(q[k])), vm));
#else
    for (int j = 0; j < 16; j++) {
        int q0 = (qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
        int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * (float)q0 + m;
        y[j + 16] = d * (float)q1 + m;
    }
#endif
}

static void dq_q8_0(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b));
    /* tests/test_cpu_ops.py turns the 0 below into 1 (a wrong block offset) and expects failures */
    const int8_t *qs = (const int8_t *)(b + 2 + /* G4_MUTATION_POINT */ 0);
#if defined(G4_AVX2)
    const __m256 vd = _mm256_set1_ps(d);
    for (int j = 0; j < 32; j += 8) {
        __m128i q = _mm_loadl_epi64((const __m128i *)(qs + j));
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd));
    }
#else
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
#endif
}

static void dq_q4_k(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b)), dmin = g4_h2f(rd16(b + 2));
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j += 2) {
        int sc0, m0, sc1, m1;
        scale_min_k4(j, scales, &sc0, &m0);
        scale_min_k4(j + 1, scales, &sc1, &m1);
        const float d0 = d * (float)sc0, dm0 = dmin * (float)m0;
        const float d1 = d * (float)sc1, dm1 = dmin * (float)m1;
        const uint8_t *q = qs + (j / 2) * 32;
        float *y0 = y + j * 32, *y1 = y0 + 32;
#if defined(G4_AVX2)
        const __m256 vd0 = _mm256_set1_ps(d0), vm0 = _mm256_set1_ps(dm0);
        const __m256 vd1 = _mm256_set1_ps(d1), vm1 = _mm256_set1_ps(dm1);
        const __m128i m4 = _mm_set1_epi8(0x0F);
        for (int l = 0; l < 32; l += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(q + l));
            __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            __m256 bb = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            __m256 e = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            _mm256_storeu_ps(y0 + l, _mm256_sub_ps(_mm256_mul_ps(vd0, a), vm0));
            _mm256_storeu_ps(y0 + l + 8, _mm256_sub_ps(_mm256_mul_ps(vd0, bb), vm0));
            _mm256_storeu_ps(y1 + l, _mm256_sub_ps(_mm256_mul_ps(vd1, c), vm1));
            _mm256_storeu_ps(y1 + l + 8, _mm256_sub_ps(_mm256_mul_ps(vd1, e), vm1));
        }
#else
        for (int l = 0; l < 32; l++) {
            y0[l] = d0 * (float)(q[l] & 0xF) - dm0;
            y1[l] = d1 * (float)(q[l] >> 4) - dm1;
        }
#endif
    }
}

static void dq_q5_k(const uint8_t *b, float *y) {
    const float d = g4_h2f(rd16(b)), dmin = g4_h2f(rd16(b + 2));
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(j, scales, &sc, &m);
        const float dj = d * (float)sc, dmj = dmin * (float)m;
        const uint8_t *q = qs + (j / 2) * 32;
        const int sh = (j & 1) * 4;
        float *yj = y + j * 32;
#if defined(G4_AVX2)
        const __m256 vd = _mm256_set1_ps(dj), vm = _mm256_set1_ps(dmj);
        const __m256i m4 = _mm256_set1_epi32(15), m16 = _mm256_set1_epi32(16);
        const __m128i csh = _mm_cvtsi32_si128(sh), chb = _mm_cvtsi32_si128(4 - j > 0 ? 4 - j : 0),
                      chr = _mm_cvtsi32_si128(j - 4 > 0 ? j - 4 : 0);
        for (int l = 0; l < 32; l += 8) {
            const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + l)));
            const __m256i h = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qh + l)));
            /* bit j of qh moved to bit 4 */
            const __m256i hb = _mm256_and_si256(_mm256_srl_epi32(_mm256_sll_epi32(h, chb), chr), m16);
            const __m256i c = _mm256_or_si256(_mm256_and_si256(_mm256_srl_epi32(v, csh), m4), hb);
            _mm256_storeu_ps(yj + l, _mm256_sub_ps(_mm256_mul_ps(vd, _mm256_cvtepi32_ps(c)), vm));
        }
#else
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> sh) & 0xF) | (((qh[l] >> j) & 1) << 4);
            yj[l] = dj * (float)v - dmj;
        }
#endif
    }
}

static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = g4_h2f(rd16(b + 208));
    for (int h = 0; h < 2; h++) {
        const uint8_t *l8 = ql + h * 64, *h8 = qh + h * 32;
        for (int k = 0; k < 4; k++) {
            /* values h*128 + k*32 + l: nibble (k>>1) of ql[h*64 + (k&1)*32 + l], bits 2k of qh[h*32 + l] */
            const uint8_t *lp = l8 + (k & 1) * 32;
            const int lsh = (k >> 1) * 4, hsh = 2 * k;
            float *yk = y + h * 128 + k * 32;
            const float s0 = d * (float)sc[h * 8 + k * 2], s1 = d * (float)sc[h * 8 + k * 2 + 1];
#if defined(G4_AVX2)
            const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03);
            __m256i vl = _mm256_loadu_si256((const __m256i *)lp), vh = _mm256_loadu_si256((const __m256i *)h8);
            vl = _mm256_and_si256(_mm256_srli_epi16(vl, lsh), m4);
            vh = _mm256_and_si256(_mm256_srli_epi16(vh, hsh), m3);
            __m256i q = _mm256_sub_epi8(_mm256_or_si256(vl, _mm256_slli_epi16(vh, 4)), _mm256_set1_epi8(32));
            __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
            const __m256 vs0 = _mm256_set1_ps(s0), vs1 = _mm256_set1_ps(s1);
            _mm256_storeu_ps(yk + 0, _mm256_mul_ps(vs0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0))));
            _mm256_storeu_ps(yk + 8, _mm256_mul_ps(vs0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8)))));
            _mm256_storeu_ps(yk + 16, _mm256_mul_ps(vs1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1))));
            _mm256_storeu_ps(yk + 24, _mm256_mul_ps(vs1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8)))));
#else
            for (int l = 0; l < 32; l++) {
                int q = (((lp[l] >> lsh) & 0xF) | (((h8[l] >> hsh) & 3) << 4)) - 32;
                yk[l] = (l < 16 ? s0 : s1) * (float)q;
            }
#endif
        }
    }
}

static void dq_f16(const uint16_t *h, int64_t n, float *y) {
    int64_t i = 0;
#if defined(G4_AVX2)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) y[i] = g4_h2f(h[i]);
}

static void dq_bf16(const uint16_t *h, int64_t n, float *y) {
    int64_t i = 0;
#if defined(G4_AVX2)
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_slli_epi32(v, 16));
    }
#endif
    for (; i < n; i++) y[i] = g4_bf2f(h[i]);
}

void g4_dequant_row(int qtype, const void *row, int64_t k0, int64_t n, float *dst) {
    const uint8_t *r = (const uint8_t *)row;
    switch (qtype) {
    case G4_F32: memcpy(dst, r + k0 * 4, (size_t)n * 4); return;
    case G4_F16: dq_f16((const uint16_t *)(const void *)(r + k0 * 2), n, dst); return;
    case G4_BF16: dq_bf16((const uint16_t *)(const void *)(r + k0 * 2), n, dst); return;
    default: break;
    }
    const int bv = g4_block_values(qtype), bb = g4_block_bytes(qtype);
    if (bv <= 1) return;
    void (*fn)(const uint8_t *, float *);
    switch (qtype) {
    case G4_Q4_0: fn = dq_q4_0; break;
    case G4_Q4_1: fn = dq_q4_1; break;
    case G4_Q5_0: fn = dq_q5_0; break;
    case G4_Q5_1: fn = dq_q5_1; break;
    case G4_Q8_0: fn = dq_q8_0; break;
    case G4_Q4_K: fn = dq_q4_k; break;
    case G4_Q5_K: fn = dq_q5_k; break;
    case G4_Q6_K: fn = dq_q6_k; break;
    default: return;
    }
    const uint8_t *b = r + (k0 / bv) * bb;
    for (int64_t i = 0; i < n; i += bv, b += bb) fn(b, dst + i);
}
