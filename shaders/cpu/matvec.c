/* matvec.c: decode matvec y[o] = W[o] . x for one activation row, straight from GGUF rows.
 *
 * fp32-exact design: every weight code is decoded exactly to float in registers, x stays float32
 * and products accumulate in float32 with FMA. Each weight byte is read once, in row order, with
 * a software prefetch 4 KB ahead. Every type has a fused kernel for AVX-512, one for
 * AVX2+FMA+F16C and a portable one.
 *
 * Decode is memory-bound only if the decode keeps up with the memory; for 4- and 6-bit codes
 * the vector ALU ports are the limit (AVX-512: ports 0 and 5 only), so the kernels count uops:
 *   - f16 block scales are looked up in a 65536-entry float table (f16tab, built once, thread
 *     safe): a load, used as the FMA's broadcast memory operand - no vector-ALU work per scale.
 *   - AVX-512 4-bit codes: vpmovzxbd of 16 qs bytes; the low nibbles through vpermps from a
 *     16-entry float table (vpermps reads index bits 0..3 only, so no mask), the high nibbles
 *     through vpermps / vcvtdq2ps of (v >> 4), mixed to keep ports 0 and 5 balanced.
 *   - Q4_0 (SIMD builds): g4_matvec_prepare() re-expresses x per block (xq: xa = x0 - x1/16,
 *     xb = x1/16, xc = -8 (x0 + x1)) so that lo*xa + byte*xb + xc = (lo-8) x0 + (hi-8) x1:
 *     one permute, one convert and two FMAs per 16 bytes, no shift, no offset term.
 *   - mins terms (Q4_K, Q5_K; AVX2 / portable Q4_1, Q5_0, Q5_1 and portable Q4_0) are
 *     m * sum(x over the 32 values): per-block sums of x come from g4_matvec_prepare().
 *   - a block's float dot is scaled once: acc += d * sum(q * x); K-quant sub-block scales are
 *     decoded with vector ops one super-block ahead (double-buffered, so the broadcasts never
 *     wait on a just-stored value).
 *
 * ws (g4_matvec_scratch(c) bytes, filled by g4_matvec_prepare): Q4_0 on SIMD builds: xq, 48
 * floats per 32 inputs; other types with mins / offsets: sx[K/32 + 16], per-32 sums of x (0 past
 * K/32); F32, F16, BF16, Q8_0, Q6_K: nothing (scratch 0, ws may be NULL).
 */
#include <stdatomic.h>
#include "g4cpu.h"

#define QK 32
#define QKK 256

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* f16 -> f32 for every code, built once (by whichever thread gets here first). */
static float f16tab[65536] __attribute__((aligned(64)));
static atomic_int f16tab_state;   /* 0: empty, 1: being built, 2: ready */

static void f16tab_init(void) {
    if (atomic_load_explicit(&f16tab_state, memory_order_acquire) == 2) return;
    int expect = 0;
    if (atomic_compare_exchange_strong(&f16tab_state, &expect, 1)) {
        uint32_t i = 0;
#if defined(G4_AVX2)
        const __m256i step = _mm256_set1_epi32(8);
        __m256i v = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; i < 65536; i += 8, v = _mm256_add_epi32(v, step))
            _mm256_store_ps(f16tab + i, _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(v),
                                                                         _mm256_extracti128_si256(v, 1))));
#endif
        for (; i < 65536; i++) f16tab[i] = g4_h2f((uint16_t)i);
        atomic_store_explicit(&f16tab_state, 2, memory_order_release);
    } else {
        while (atomic_load_explicit(&f16tab_state, memory_order_acquire) != 2) {
#if defined(G4_AVX2)
            _mm_pause();
#endif
        }
    }
}

#define HT(p) f16tab[rd16(p)]   /* the f16 at byte address p, as float */

static int needs_sums(int qtype) {
    return qtype == G4_Q4_0 || qtype == G4_Q4_1 || qtype == G4_Q5_0 || qtype == G4_Q5_1
        || qtype == G4_Q4_K || qtype == G4_Q5_K;
}

#if defined(G4_AVX2)
#define Q40_XQ 1   /* the SIMD Q4_0 kernels read x re-expressed per block (xq, below) */
#else
#define Q40_XQ 0
#endif

size_t g4_matvec_scratch(const g4_cmd *c) {
    if (!needs_sums(c->qtype)) return 0;
    const size_t nb = (size_t)(c->in_cols / QK);
    const size_t n = (Q40_XQ && c->qtype == G4_Q4_0) ? nb * 48 : nb + 16;
    return (n * sizeof(float) + 63) & ~(size_t)63;
}

void g4_matvec_prepare(const g4_cmd *c, const float *x, void *ws) {
    f16tab_init();
    if (!needs_sums(c->qtype) || !ws) return;
    const int64_t nb = c->in_cols / QK;
    if (Q40_XQ && c->qtype == G4_Q4_0) {
        /* xq: per block 48 floats, for i < 16 (x0 = x[i], x1 = x[16 + i] of the block):
         *   xa = x0 - x1/16, xb = x1/16, xc = -8 (x0 + x1),
         * so that with lo, hi the nibbles of qs byte i and byte = 16 hi + lo:
         *   lo*xa + byte*xb + xc = (lo - 8) x0 + (hi - 8) x1.
         * The kernel then needs no nibble shift and no offset term: a permute (lo), a convert
         * (byte) and two FMAs per 16 bytes. */
        float *xq = (float *)ws;
        for (int64_t b = 0; b < nb; b++) {
            const float *x0 = x + b * QK, *x1 = x0 + 16;
            float *q = xq + b * 48;
            for (int i = 0; i < 16; i++) {
                const float h = x1[i] * 0.0625f;
                q[i] = x0[i] - h;
                q[16 + i] = h;
                q[32 + i] = -8.0f * (x0[i] + x1[i]);
            }
        }
        return;
    }
    float *sx = (float *)ws;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
#if defined(G4_AVX512)
        sx[b] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16)));
#else
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int i = 0; i < QK; i += 4) { s0 += xb[i]; s1 += xb[i + 1]; s2 += xb[i + 2]; s3 += xb[i + 3]; }
        sx[b] = (s0 + s1) + (s2 + s3);
#endif
    }
    for (int i = 0; i < 16; i++) sx[nb + i] = 0.0f;
}

/* Q4_K / Q5_K: the 8 six-bit scales and 8 mins of a super-block as 16 bytes (sc[0..7], m[0..7]),
 * llama.cpp's kmask unpacking of get_scale_min_k4. */
static inline void k4_unpack(const uint8_t *scales, uint32_t u[4]) {
    const uint32_t km1 = 0x3f3f3f3fu, km2 = 0x0f0f0f0fu, km3 = 0x03030303u;
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    const uint32_t a = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = a;
    u[0] &= km1;
}

#if defined(G4_AVX2)
/* The same unpacking with vector ops, as 16 bytes (m[0..7], sc[0..7]); reads 16 bytes at scales
 * (the 12 scale bytes and 4 bytes of what follows them in the block). */
static inline __m128i k4_unpack_v(const uint8_t *scales) {
    const __m128i q = _mm_loadu_si128((const __m128i *)scales);
    const __m128i A = _mm_shuffle_epi8(q, _mm_setr_epi8(4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11));
    const __m128i B = _mm_shuffle_epi8(q, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 0, 1, 2, 3));
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(A, _mm_setr_epi32(0, 4, 0, 0)),
                                     _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    return _mm_or_si128(lo, _mm_and_si128(_mm_srli_epi32(B, 2), _mm_set1_epi8(0x30)));
}
#endif

#define G4_AI_MV static inline __attribute__((always_inline))

#if defined(__GNUC__) && !defined(__clang__)
#define G4_PRAGMA(x) _Pragma(#x)
#define G4_UNROLL(n) G4_PRAGMA(GCC unroll n)
#else
#define G4_UNROLL(n)
#endif

/* Software prefetch PF_DIST bytes ahead of the row pointer, issued about once per 64 bytes read
 * (rows are contiguous, so it runs on into the next rows). The hardware prefetchers alone leave
 * these kernels at ~45 % of the read bandwidth here; 4 KB ahead measured best (512 B: ~55 %).
 * Both are overridable for tuning (-DPF_DIST=0 turns it off). */
#ifndef PF_DIST
#define PF_DIST 4096
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif
#if defined(G4_AVX2) && PF_DIST > 0
#define PF(p) _mm_prefetch((const char *)(p) + PF_DIST, PF_HINT)
#else
#define PF(p) ((void)0)
#endif

/* ======================================================================================= */
#if defined(G4_AVX512)

static inline float hsum16(__m512 v) { return _mm512_reduce_add_ps(v); }

static float dot_f32(const uint8_t *w8, const float *x, int64_t K) {
    const float *w = (const float *)(const void *)w8;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= K; i += 64) {
        PF(w + i); PF(w + i + 16); PF(w + i + 32); PF(w + i + 48);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= K; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < K) {
        __mmask16 m = (__mmask16)((1u << (K - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return hsum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* 16-bit float rows (F16, BF16): one loop, the half -> float conversion picked by `bf` (a
 * constant at both call sites, so each is compiled with its own conversion inlined). */
static inline __m512 half16_to_ps(__m256i h, int bf) {
    return bf ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

static inline float dot_half(const uint8_t *w8, const float *x, int64_t K, int bf) {
    const uint16_t *w = (const uint16_t *)(const void *)w8;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
#define H16(j) half16_to_ps(_mm256_loadu_si256((const __m256i *)(w + i + (j))), bf)
    for (; i + 64 <= K; i += 64) {
        PF(w + i); PF(w + i + 32);
        a0 = _mm512_fmadd_ps(H16(0), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(H16(16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(H16(32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(H16(48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= K; i += 16) a0 = _mm512_fmadd_ps(H16(0), _mm512_loadu_ps(x + i), a0);
#undef H16
    if (i < K) {
        __mmask16 m = (__mmask16)((1u << (K - i)) - 1);
        __m512 wv = half16_to_ps(_mm256_maskz_loadu_epi16(m, w + i), bf);
        a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return hsum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_f16(const uint8_t *w8, const float *x, int64_t K) { return dot_half(w8, x, K, 0); }
static float dot_bf16(const uint8_t *w8, const float *x, int64_t K) { return dot_half(w8, x, K, 1); }

static inline __m512i zx16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }

/* Q4_1, Q5_0, Q5_1: the 16-entry table holds the block's weights d*q (+ m) themselves; Q5's
 * fifth bit adds 16*d under a mask from qh. */
#define TBL_0_15 _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

/* Q4_K / Q5_K super-block scales: s[8..15] = d*sc[0..7]; am += dmin * m[j] * sx[j] (lanes 0..7). */
static inline __m512 k4_scales(const uint8_t *blk, const float *sxb, float *s, __m512 am) {
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(k4_unpack_v(blk + 4)));
    _mm512_store_ps(s, _mm512_mul_ps(f, _mm512_set1_ps(HT(blk))));
    return _mm512_fmadd_ps(_mm512_mul_ps(f, _mm512_maskz_loadu_ps(0x00ff, sxb)), _mm512_set1_ps(HT(blk + 2)), am);
}

/* Q4_K / Q5_K: sub-block pair j of a super-block as floats: l0, l1 the low nibbles of qs[32j ..
 * 32j+32) (through vpermps, an identity table), h0, h1 the high ones (through vcvtdq2ps: port
 * balance); Q5_K adds 16 where its qh bits are set. */
G4_AI_MV void k45_codes(const uint8_t *q, __m256i vh, int j, int five, __m512 *l0, __m512 *l1, __m512 *h0,
                        __m512 *h1) {
    const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 c16 = _mm512_set1_ps(16.0f);
    const __m512i v0 = zx16(q), v1 = zx16(q + 16);
    *l0 = _mm512_permutexvar_ps(v0, tbl);
    *l1 = _mm512_permutexvar_ps(v1, tbl);
    *h0 = _mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4));
    *h1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(v1, 4));
    if (five) {
        const __mmask32 ml = _mm256_test_epi8_mask(vh, _mm256_set1_epi8((char)(1 << (2 * j))));
        const __mmask32 mh = _mm256_test_epi8_mask(vh, _mm256_set1_epi8((char)(1 << (2 * j + 1))));
        *l0 = _mm512_mask_add_ps(*l0, (__mmask16)ml, *l0, c16);
        *l1 = _mm512_mask_add_ps(*l1, (__mmask16)(ml >> 16), *l1, c16);
        *h0 = _mm512_mask_add_ps(*h0, (__mmask16)mh, *h0, c16);
        *h1 = _mm512_mask_add_ps(*h1, (__mmask16)(mh >> 16), *h1, c16);
    }
}

/* Q4_K / Q5_K: sub-block 2j are the low nibbles of qs[32j .. 32j+32), 2j+1 the high ones; the
 * low nibbles go through vpermps (identity table), the high through vcvtdq2ps (port balance). */
static inline __attribute__((always_inline)) float dot_k45(const uint8_t *w, const float *x, const float *sx,
                                                            int64_t nsb, int five) {
    const int bs = five ? 176 : 144, qo = five ? 48 : 16;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, am = a0;
    /* scales one super-block ahead, double-buffered: the broadcasts below then read values
     * stored well before (a store right before its loads stalls the accumulator chain) */
    float sb[2][16] __attribute__((aligned(64)));
    if (nsb > 0) am = k4_scales(w, sx, sb[0], am);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * bs, *qs = blk + qo;
        const float *xs = x + i * QKK;
        const float *s = sb[i & 1];
        PF(blk); PF(blk + 64); PF(blk + 128);
        if (i + 1 < nsb) am = k4_scales(blk + bs, sx + (i + 1) * 8, sb[(i + 1) & 1], am);
        __m256i vh = _mm256_setzero_si256();
        if (five) vh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        G4_UNROLL(4)
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = qs + j * 32;
            const float *xj = xs + j * 64;
            __m512 l0, l1, h0, h1;
            k45_codes(q, vh, j, five, &l0, &l1, &h0, &h1);
            const __m512 sl = _mm512_fmadd_ps(l1, _mm512_loadu_ps(xj + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(xj)));
            const __m512 sh = _mm512_fmadd_ps(h1, _mm512_loadu_ps(xj + 48), _mm512_mul_ps(h0, _mm512_loadu_ps(xj + 32)));
            a0 = _mm512_fmadd_ps(sl, _mm512_set1_ps(s[8 + 2 * j]), a0);
            a1 = _mm512_fmadd_ps(sh, _mm512_set1_ps(s[8 + 2 * j + 1]), a1);
        }
    }
    return hsum16(_mm512_sub_ps(_mm512_add_ps(a0, a1), am));
}

static float dot_q4_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) { return dot_k45(w, x, sx, nsb, 0); }
static float dot_q5_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) { return dot_k45(w, x, sx, nsb, 1); }

/* Q6_K: the 6-bit codes of a 128-value half are assembled as bytes in two zmm (values in order:
 * lo = values 0..63, hi = 64..127 of the half), stored to the stack, and read back 16 at a time
 * with vpmovsxbd from memory (cheaper on port 5 than extracting 128-bit lanes). */
static float dot_q6_k(const uint8_t *w, const float *x, int64_t nsb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), c32 = _mm512_set1_epi8(32);
    const __m512i shv = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    float sb[2][16] __attribute__((aligned(64)));   /* d*sc, one super-block ahead */
    int8_t qb[128] __attribute__((aligned(64)));
#define Q6S(blk, dst) _mm512_store_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32( \
        _mm_loadu_si128((const __m128i *)((blk) + 192)))), _mm512_set1_ps(HT((blk) + 208))))
    if (nsb > 0) Q6S(w, sb[0]);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        const float *xs = x + i * QKK;
        const float *s = sb[i & 1];
        PF(blk); PF(blk + 64); PF(blk + 128); PF(blk + 192);
        if (i + 1 < nsb) Q6S(blk + 210, sb[(i + 1) & 1]);
#undef Q6S
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512((const void *)(ql + 64 * h));
            const __m512i H = _mm512_srlv_epi16(
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qh + 32 * h))), shv);
            _mm512_store_si512((void *)qb, _mm512_sub_epi8(_mm512_ternarylogic_epi32(
                _mm512_and_si512(L, m4), _mm512_slli_epi16(H, 4), m30, 0xF8), c32));   /* a | (b & c) */
            _mm512_store_si512((void *)(qb + 64), _mm512_sub_epi8(_mm512_ternarylogic_epi32(
                _mm512_and_si512(_mm512_srli_epi16(L, 4), m4), H, m30, 0xF8), c32));
            const float *xh = xs + 128 * h;
            const float *sh = s + 8 * h;
            for (int g = 0; g < 8; g += 2) {
                const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(qb + 16 * g))));
                const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(qb + 16 * g + 16))));
                a0 = _mm512_fmadd_ps(_mm512_mul_ps(q0, _mm512_loadu_ps(xh + 16 * g)), _mm512_set1_ps(sh[g]), a0);
                a1 = _mm512_fmadd_ps(_mm512_mul_ps(q1, _mm512_loadu_ps(xh + 16 * g + 16)), _mm512_set1_ps(sh[g + 1]), a1);
            }
        }
    }
    return hsum16(_mm512_add_ps(a0, a1));
}

/* ======================================================================================= */

/* Several activation rows against the same weight rows (row-exact batches, speculative
 * verification): a block's codes are decoded once and applied to up to ROWS_G rows, each row
 * through exactly the operations of its one-row kernel above (same accumulators, same order), so
 * every row's result is bit for bit the one-row result. */
#define ROWS_G 8

G4_AI_MV void q8_0_rows_t(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    __m512 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
#define Q8R(p, bo, acc) do { \
        const __m512 q0_ = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((p) + 2)))); \
        const __m512 q1_ = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((p) + 18)))); \
        const __m512 d_ = _mm512_set1_ps(HT(p)); \
        for (int r = 0; r < R; r++) { \
            const float *xb_ = x[r] + (bo); \
            const __m512 s_ = _mm512_fmadd_ps(q1_, _mm512_loadu_ps(xb_ + 16), _mm512_mul_ps(q0_, _mm512_loadu_ps(xb_))); \
            acc[r] = _mm512_fmadd_ps(s_, d_, acc[r]); \
        } } while (0)
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *p = w + b * 34;
        PF(p); PF(p + 64);
        Q8R(p, b * QK, a0);
        Q8R(p + 34, b * QK + QK, a1);
    }
    if (b < nb) Q8R(w + b * 34, b * QK, a0);
#undef Q8R
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(a0[r], a1[r]));
}

/* Q4_1 / Q5_0 / Q5_1: the decoded weights w0, w1 are shared; each row adds two FMAs. */
G4_AI_MV void nib_rows_t(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out,
                         int bs, int qo, int ho, int mo, float off) {
    const __m512 tbl = _mm512_add_ps(TBL_0_15, _mm512_set1_ps(-off));
    __m512 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * bs;
        PF(p);
        const __m512 d = _mm512_set1_ps(HT(p));
        const __m512 t = mo ? _mm512_fmadd_ps(tbl, d, _mm512_set1_ps(HT(p + mo))) : _mm512_mul_ps(tbl, d);
        const __m512i v = zx16(p + qo);
        __m512 w0 = _mm512_permutexvar_ps(v, t), w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t);
        if (ho) {
            const uint32_t qh = rd32(p + ho);
            const __m512 d16 = _mm512_mul_ps(d, _mm512_set1_ps(16.0f));
            w0 = _mm512_mask_add_ps(w0, (__mmask16)(qh & 0xffffu), w0, d16);
            w1 = _mm512_mask_add_ps(w1, (__mmask16)(qh >> 16), w1, d16);
        }
        for (int r = 0; r < R; r++) {
            const float *xb = x[r] + b * QK;
            a0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), a0[r]);
            a1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), a1[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(a0[r], a1[r]));
}

/* Q4_K / Q5_K: codes and scales shared, the mins term per row (in super-block order, as above). */
G4_AI_MV void k45_rows_t(const int R, const uint8_t *w, const float *const *x, const float *const *sx,
                         int64_t nsb, float *out, int five) {
    const int bs = five ? 176 : 144, qo = five ? 48 : 16;
    __m512 a0[ROWS_G], a1[ROWS_G], am[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = am[r] = _mm512_setzero_ps();
    float s[16] __attribute__((aligned(64)));
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * bs, *qs = blk + qo;
        PF(blk); PF(blk + 64); PF(blk + 128);
        const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(k4_unpack_v(blk + 4)));
        _mm512_store_ps(s, _mm512_mul_ps(f, _mm512_set1_ps(HT(blk))));
        const __m512 dmin = _mm512_set1_ps(HT(blk + 2));
        for (int r = 0; r < R; r++)
            am[r] = _mm512_fmadd_ps(_mm512_mul_ps(f, _mm512_maskz_loadu_ps(0x00ff, sx[r] + i * 8)), dmin, am[r]);
        __m256i vh = _mm256_setzero_si256();
        if (five) vh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = qs + j * 32;
            __m512 l0, l1, h0, h1;
            k45_codes(q, vh, j, five, &l0, &l1, &h0, &h1);
            const __m512 s0 = _mm512_set1_ps(s[8 + 2 * j]), s1 = _mm512_set1_ps(s[8 + 2 * j + 1]);
            for (int r = 0; r < R; r++) {
                const float *xj = x[r] + i * QKK + j * 64;
                const __m512 sl = _mm512_fmadd_ps(l1, _mm512_loadu_ps(xj + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(xj)));
                const __m512 sh = _mm512_fmadd_ps(h1, _mm512_loadu_ps(xj + 48), _mm512_mul_ps(h0, _mm512_loadu_ps(xj + 32)));
                a0[r] = _mm512_fmadd_ps(sl, s0, a0[r]);
                a1[r] = _mm512_fmadd_ps(sh, s1, a1[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_sub_ps(_mm512_add_ps(a0[r], a1[r]), am[r]));
}

/* Q6_K: the codes of a half assembled once (as dot_q6_k), the products per row. */
G4_AI_MV void q6_k_rows_t(const int R, const uint8_t *w, const float *const *x, int64_t nsb, float *out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), c32 = _mm512_set1_epi8(32);
    const __m512i shv = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    __m512 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    float s[16] __attribute__((aligned(64)));
    int8_t qb[128] __attribute__((aligned(64)));
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        PF(blk); PF(blk + 64); PF(blk + 128); PF(blk + 192);
        _mm512_store_ps(s, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_loadu_si128((const __m128i *)(blk + 192)))), _mm512_set1_ps(HT(blk + 208))));
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512((const void *)(ql + 64 * h));
            const __m512i H = _mm512_srlv_epi16(
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qh + 32 * h))), shv);
            _mm512_store_si512((void *)qb, _mm512_sub_epi8(_mm512_ternarylogic_epi32(
                _mm512_and_si512(L, m4), _mm512_slli_epi16(H, 4), m30, 0xF8), c32));
            _mm512_store_si512((void *)(qb + 64), _mm512_sub_epi8(_mm512_ternarylogic_epi32(
                _mm512_and_si512(_mm512_srli_epi16(L, 4), m4), H, m30, 0xF8), c32));
            const float *sh = s + 8 * h;
            for (int g = 0; g < 8; g += 2) {
                const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(qb + 16 * g))));
                const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(qb + 16 * g + 16))));
                const __m512 s0 = _mm512_set1_ps(sh[g]), s1 = _mm512_set1_ps(sh[g + 1]);
                for (int r = 0; r < R; r++) {
                    const float *xh = x[r] + i * QKK + 128 * h;
                    a0[r] = _mm512_fmadd_ps(_mm512_mul_ps(q0, _mm512_loadu_ps(xh + 16 * g)), s0, a0[r]);
                    a1[r] = _mm512_fmadd_ps(_mm512_mul_ps(q1, _mm512_loadu_ps(xh + 16 * g + 16)), s1, a1[r]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(a0[r], a1[r]));
}

G4_AI_MV void q4_0_rows_t(const int R, const uint8_t *w, const float *const *xq, int64_t nb, float *out) {
    const __m512 id = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
#define Q40R(p, bo, acc) do { \
        const __m512i v_ = zx16((p) + 2); \
        const __m512 lo_ = _mm512_permutexvar_ps(v_, id), by_ = _mm512_cvtepi32_ps(v_); \
        const __m512 d_ = _mm512_set1_ps(HT(p)); \
        for (int r = 0; r < R; r++) { \
            const float *xb_ = xq[r] + (bo); \
            const __m512 s_ = _mm512_fmadd_ps(lo_, _mm512_loadu_ps(xb_), \
                _mm512_fmadd_ps(by_, _mm512_loadu_ps(xb_ + 16), _mm512_loadu_ps(xb_ + 32))); \
            acc[r] = _mm512_fmadd_ps(s_, d_, acc[r]); \
        } } while (0)
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *p = w + b * 18;
        PF(p);
        Q40R(p, b * 48, a0);
        Q40R(p + 18, b * 48 + 48, a1);
    }
    if (b < nb) Q40R(w + b * 18, b * 48, a0);
#undef Q40R
    for (int r = 0; r < R; r++) out[r] = hsum16(_mm512_add_ps(a0[r], a1[r]));
}


/* The one-row kernels are the multi-row ones with one row (the same code once inlined). */
static float dot_q8_0(const uint8_t *w, const float *x, int64_t nb) { float y; q8_0_rows_t(1, w, &x, nb, &y); return y; }
/* Q4_0 against xq (see g4_matvec_prepare): s = lo*xa + byte*xb + xc, acc += d*s; 6 uops a block. */
static float dot_q4_0(const uint8_t *w, const float *xq, int64_t nb) { float y; q4_0_rows_t(1, w, &xq, nb, &y); return y; }
static float dot_q4_1(const uint8_t *w, const float *x, int64_t nb) { float y; nib_rows_t(1, w, &x, nb, &y, 20, 4, 0, 2, 0.0f); return y; }
static float dot_q5_0(const uint8_t *w, const float *x, int64_t nb) { float y; nib_rows_t(1, w, &x, nb, &y, 22, 6, 2, 0, 16.0f); return y; }
static float dot_q5_1(const uint8_t *w, const float *x, int64_t nb) { float y; nib_rows_t(1, w, &x, nb, &y, 24, 8, 4, 2, 0.0f); return y; }

#elif defined(G4_AVX2)

static inline float hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static float dot_f32(const uint8_t *w8, const float *x, int64_t K) {
    const float *w = (const float *)(const void *)w8;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= K; i += 32) {
        PF(w + i); PF(w + i + 16);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= K; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float r = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < K; i++) r += w[i] * x[i];
    return r;
}

/* 16-bit float rows (F16, BF16), as in the AVX-512 path. */
static inline __m256 half8_to_ps(__m128i h, int bf) {
    return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

static inline float dot_half(const uint8_t *w8, const float *x, int64_t K, int bf) {
    const uint16_t *w = (const uint16_t *)(const void *)w8;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
#define H8(j) half8_to_ps(_mm_loadu_si128((const __m128i *)(w + i + (j))), bf)
    for (; i + 32 <= K; i += 32) {
        PF(w + i);
        a0 = _mm256_fmadd_ps(H8(0), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(H8(8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(H8(16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(H8(24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= K; i += 8) a0 = _mm256_fmadd_ps(H8(0), _mm256_loadu_ps(x + i), a0);
#undef H8
    float r = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < K; i++) r += (bf ? g4_bf2f(w[i]) : g4_h2f(w[i])) * x[i];
    return r;
}

static float dot_f16(const uint8_t *w8, const float *x, int64_t K) { return dot_half(w8, x, K, 0); }
static float dot_bf16(const uint8_t *w8, const float *x, int64_t K) { return dot_half(w8, x, K, 1); }

static inline __m256i zx8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline __m256i sx8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

/* 256 x 8 floats: lane i of row b is 16 when bit i of b is set (the 5th bit of Q5 codes). */
#define K5E(i) {((i) & 1) ? 16.f : 0.f, ((i) & 2) ? 16.f : 0.f, ((i) & 4) ? 16.f : 0.f, ((i) & 8) ? 16.f : 0.f, \
    ((i) & 16) ? 16.f : 0.f, ((i) & 32) ? 16.f : 0.f, ((i) & 64) ? 16.f : 0.f, ((i) & 128) ? 16.f : 0.f}
#define K5_4(i) K5E(i), K5E((i) + 1), K5E((i) + 2), K5E((i) + 3)
#define K5_16(i) K5_4(i), K5_4((i) + 4), K5_4((i) + 8), K5_4((i) + 12)
#define K5_64(i) K5_16(i), K5_16((i) + 16), K5_16((i) + 32), K5_16((i) + 48)
static const float k5tab[256][8] __attribute__((aligned(32))) = {K5_64(0), K5_64(64), K5_64(128), K5_64(192)};
#define K5(b) _mm256_load_ps(k5tab[(b) & 0xff])

/* One row's share of a decoded 32-value block, c0..c3 its values 0-7, 8-15, 16-23, 24-31:
 * s0 = c0 x[0..8) + c2 x[16..24), s1 = c1 x[8..16) + c3 x[24..32), then acc += d * s (the
 * one-row order, which the multi-row kernels must keep). */
G4_AI_MV void block32_row(__m256 c0, __m256 c1, __m256 c2, __m256 c3, __m256 d, const float *xb, __m256 *a0,
                          __m256 *a1) {
    __m256 s0 = _mm256_mul_ps(c0, _mm256_loadu_ps(xb));
    __m256 s1 = _mm256_mul_ps(c1, _mm256_loadu_ps(xb + 8));
    s0 = _mm256_fmadd_ps(c2, _mm256_loadu_ps(xb + 16), s0);
    s1 = _mm256_fmadd_ps(c3, _mm256_loadu_ps(xb + 24), s1);
    *a0 = _mm256_fmadd_ps(s0, d, *a0);
    *a1 = _mm256_fmadd_ps(s1, d, *a1);
}

/* bs: block bytes; qo: offset of qs; ho: offset of qh (0: none); mo: offset of the f16 min (0:
 * none); off: code offset (8 for Q4_0, 16 for Q5_0, 0 with a min). The offset / min term is
 * a scalar FMA per block against the per-block sums of x. */
G4_AI_MV void nib_rows_t(const int R, const uint8_t *w, const float *const *x, const float *const *sx, int64_t nb,
                         float *out, int bs, int qo, int ho, int mo, float off) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 a0[4], a1[4];
    float ao[4];
    for (int r = 0; r < R; r++) {
        a0[r] = a1[r] = _mm256_setzero_ps();
        ao[r] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * bs, *q = p + qo;
        PF(p);
        const __m256i va = zx8(q), vb = zx8(q + 8);
        __m256 c0 = _mm256_cvtepi32_ps(_mm256_and_si256(va, m4)), c1 = _mm256_cvtepi32_ps(_mm256_and_si256(vb, m4));
        __m256 c2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(va, 4)), c3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(vb, 4));
        if (ho) {                                   /* 5-bit codes: + 16 where the qh bit is set */
            const uint32_t qh = rd32(p + ho);
            c0 = _mm256_add_ps(c0, K5(qh));
            c1 = _mm256_add_ps(c1, K5(qh >> 8));
            c2 = _mm256_add_ps(c2, K5(qh >> 16));
            c3 = _mm256_add_ps(c3, K5(qh >> 24));
        }
        const float *dp = &HT(p);
        const __m256 d = _mm256_broadcast_ss(dp);
        const float dm = mo ? HT(p + mo) : *dp;
        for (int r = 0; r < R; r++) {
            block32_row(c0, c1, c2, c3, d, x[r] + b * QK, &a0[r], &a1[r]);
            ao[r] += dm * sx[r][b];
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r])) + (mo ? ao[r] : -off * ao[r]);
}

static float dot_q4_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float y;
    nib_rows_t(1, w, &x, &sx, nb, &y, 20, 4, 0, 2, 0.0f);
    return y;
}
static float dot_q5_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float y;
    nib_rows_t(1, w, &x, &sx, nb, &y, 22, 6, 2, 0, 16.0f);
    return y;
}
static float dot_q5_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float y;
    nib_rows_t(1, w, &x, &sx, nb, &y, 24, 8, 4, 2, 0.0f);
    return y;
}

/* d*sc[0..7] into s[0..7]; returns dmin*m[0..7]. */
static inline __m256 k4_scales(const uint8_t *blk, float *s) {
    const __m128i u = k4_unpack_v(blk + 4);
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(u));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(u, u)));
    _mm256_store_ps(s, _mm256_mul_ps(sc, _mm256_broadcast_ss(&HT(blk))));
    return _mm256_mul_ps(mn, _mm256_broadcast_ss(&HT(blk + 2)));
}

/* Q4_K on AVX2: sub-block 2j = low nibbles of qs[32j ..), 2j+1 = high nibbles; one 4-deep
 * FMA chain per sub-block; scales one super-block ahead, double-buffered. */
static float dot_q4_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, am = a0;
    float sb[2][8] __attribute__((aligned(32)));
    if (nsb > 0) am = _mm256_fmadd_ps(k4_scales(w, sb[0]), _mm256_loadu_ps(sx), am);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 144, *qs = blk + 16;
        const float *xs = x + i * QKK;
        const float *s = sb[i & 1];
        PF(blk); PF(blk + 64); PF(blk + 128);
        if (i + 1 < nsb)
            am = _mm256_fmadd_ps(k4_scales(blk + 144, sb[(i + 1) & 1]), _mm256_loadu_ps(sx + (i + 1) * 8), am);
        G4_UNROLL(4)
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = qs + j * 32;
            const float *xj = xs + j * 64;
            const __m256i v0 = zx8(q), v1 = zx8(q + 8), v2 = zx8(q + 16), v3 = zx8(q + 24);
            __m256 l = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, m4)), _mm256_loadu_ps(xj));
            __m256 h = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), _mm256_loadu_ps(xj + 32));
            l = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, m4)), _mm256_loadu_ps(xj + 8), l);
            h = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), _mm256_loadu_ps(xj + 40), h);
            l = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v2, m4)), _mm256_loadu_ps(xj + 16), l);
            h = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v2, 4)), _mm256_loadu_ps(xj + 48), h);
            l = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v3, m4)), _mm256_loadu_ps(xj + 24), l);
            h = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v3, 4)), _mm256_loadu_ps(xj + 56), h);
            a0 = _mm256_fmadd_ps(l, _mm256_broadcast_ss(s + 2 * j), a0);
            a1 = _mm256_fmadd_ps(h, _mm256_broadcast_ss(s + 2 * j + 1), a1);
        }
    }
    return hsum8(_mm256_add_ps(a0, a1)) - hsum8(am);
}

static float dot_q5_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, am = a0;
    float s[8] __attribute__((aligned(32)));
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 176, *qs = blk + 48;
        const float *xs = x + i * QKK;
        PF(blk); PF(blk + 64); PF(blk + 128);
        am = _mm256_fmadd_ps(k4_scales(blk, s), _mm256_loadu_ps(sx + i * 8), am);
        const __m256i vh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = qs + j * 32;
            const float *xj = xs + j * 64;
            /* bit 2j / 2j+1 of qh[0..31] -> 32-bit masks */
            const uint32_t hl = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(vh, 7 - 2 * j));
            const uint32_t hh = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(vh, 6 - 2 * j));
            const __m256i v0 = zx8(q), v1 = zx8(q + 8), v2 = zx8(q + 16), v3 = zx8(q + 24);
#define CV(v, t) _mm256_add_ps(_mm256_cvtepi32_ps(v), K5(t))
            __m256 l0 = _mm256_mul_ps(CV(_mm256_and_si256(v0, m4), hl), _mm256_loadu_ps(xj));
            __m256 l1 = _mm256_mul_ps(CV(_mm256_and_si256(v1, m4), hl >> 8), _mm256_loadu_ps(xj + 8));
            __m256 h0 = _mm256_mul_ps(CV(_mm256_srli_epi32(v0, 4), hh), _mm256_loadu_ps(xj + 32));
            __m256 h1 = _mm256_mul_ps(CV(_mm256_srli_epi32(v1, 4), hh >> 8), _mm256_loadu_ps(xj + 40));
            l0 = _mm256_fmadd_ps(CV(_mm256_and_si256(v2, m4), hl >> 16), _mm256_loadu_ps(xj + 16), l0);
            l1 = _mm256_fmadd_ps(CV(_mm256_and_si256(v3, m4), hl >> 24), _mm256_loadu_ps(xj + 24), l1);
            h0 = _mm256_fmadd_ps(CV(_mm256_srli_epi32(v2, 4), hh >> 16), _mm256_loadu_ps(xj + 48), h0);
            h1 = _mm256_fmadd_ps(CV(_mm256_srli_epi32(v3, 4), hh >> 24), _mm256_loadu_ps(xj + 56), h1);
#undef CV
            a0 = _mm256_fmadd_ps(_mm256_add_ps(l0, l1), _mm256_set1_ps(s[2 * j]), a0);
            a1 = _mm256_fmadd_ps(_mm256_add_ps(h0, h1), _mm256_set1_ps(s[2 * j + 1]), a1);
        }
    }
    return hsum8(_mm256_add_ps(a0, a1)) - hsum8(am);
}

static float dot_q6_k(const uint8_t *w, const float *x, int64_t nsb) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), c32 = _mm256_set1_epi8(32);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    float sb[2][16] __attribute__((aligned(32)));   /* d*sc, one super-block ahead */
    int8_t qb[128] __attribute__((aligned(32)));
#define Q6S(blk, dst) do { \
        const __m128i sc_ = _mm_loadu_si128((const __m128i *)((blk) + 192)); \
        const __m256 d_ = _mm256_broadcast_ss(&HT((blk) + 208)); \
        _mm256_store_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc_)), d_)); \
        _mm256_store_ps((dst) + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc_, 8))), d_)); \
    } while (0)
    if (nsb > 0) Q6S(w, sb[0]);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        const float *xs = x + i * QKK;
        const float *s = sb[i & 1];
        PF(blk); PF(blk + 64); PF(blk + 128); PF(blk + 192);
        if (i + 1 < nsb) Q6S(blk + 210, sb[(i + 1) & 1]);
#undef Q6S
        for (int h = 0; h < 2; h++) {
            const __m256i L0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
            const __m256i L1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
            const __m256i H = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
            /* 128 signed codes of this half, in value order */
            _mm256_store_si256((__m256i *)qb, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(L0, m4),
                _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)), c32));
            _mm256_store_si256((__m256i *)(qb + 32), _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(L1, m4),
                _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)), c32));
            _mm256_store_si256((__m256i *)(qb + 64), _mm256_sub_epi8(_mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(L0, 4), m4), _mm256_and_si256(H, m30)), c32));
            _mm256_store_si256((__m256i *)(qb + 96), _mm256_sub_epi8(_mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(L1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30)), c32));
            const float *xh = xs + 128 * h;
            for (int g = 0; g < 8; g += 2) {
                const uint8_t *qg = (const uint8_t *)qb + 16 * g;
                const float *xg = xh + 16 * g;
                __m256 p0 = _mm256_mul_ps(_mm256_cvtepi32_ps(sx8(qg)), _mm256_loadu_ps(xg));
                __m256 p1 = _mm256_mul_ps(_mm256_cvtepi32_ps(sx8(qg + 16)), _mm256_loadu_ps(xg + 16));
                p0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sx8(qg + 8)), _mm256_loadu_ps(xg + 8), p0);
                p1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sx8(qg + 24)), _mm256_loadu_ps(xg + 24), p1);
                a0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(s[8 * h + g]), a0);
                a1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(s[8 * h + g + 1]), a1);
            }
        }
    }
    return hsum8(_mm256_add_ps(a0, a1));
}

/* ======================================================================================= */

/* Several activation rows against the same weight rows: see the AVX-512 section. */
#define ROWS_G 4

G4_AI_MV void q8_0_rows_t(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    __m256 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 34, *q = p + 2;
        PF(p);
        const __m256 c0 = _mm256_cvtepi32_ps(sx8(q)), c1 = _mm256_cvtepi32_ps(sx8(q + 8));
        const __m256 c2 = _mm256_cvtepi32_ps(sx8(q + 16)), c3 = _mm256_cvtepi32_ps(sx8(q + 24));
        const __m256 d = _mm256_broadcast_ss(&HT(p));
        for (int r = 0; r < R; r++) block32_row(c0, c1, c2, c3, d, x[r] + b * QK, &a0[r], &a1[r]);
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
}

G4_AI_MV void q4_0_rows_t(const int R, const uint8_t *w, const float *const *xq, int64_t nb, float *out) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 a0[ROWS_G], a1[ROWS_G];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        PF(p);
        const __m256i va = zx8(p + 2), vb = zx8(p + 10);
        const __m256 ca = _mm256_cvtepi32_ps(va), cb = _mm256_cvtepi32_ps(vb);
        const __m256 la = _mm256_cvtepi32_ps(_mm256_and_si256(va, m4)), lb = _mm256_cvtepi32_ps(_mm256_and_si256(vb, m4));
        const __m256 d = _mm256_broadcast_ss(&HT(p));
        for (int r = 0; r < R; r++) {
            const float *xb = xq[r] + b * 48;
            __m256 s0 = _mm256_fmadd_ps(ca, _mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 32));
            __m256 s1 = _mm256_fmadd_ps(cb, _mm256_loadu_ps(xb + 24), _mm256_loadu_ps(xb + 40));
            s0 = _mm256_fmadd_ps(la, _mm256_loadu_ps(xb), s0);
            s1 = _mm256_fmadd_ps(lb, _mm256_loadu_ps(xb + 8), s1);
            a0[r] = _mm256_fmadd_ps(s0, d, a0[r]);
            a1[r] = _mm256_fmadd_ps(s1, d, a1[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
}


/* The one-row kernels are the multi-row ones with one row (the same code once inlined). */
static float dot_q8_0(const uint8_t *w, const float *x, int64_t nb) { float y; q8_0_rows_t(1, w, &x, nb, &y); return y; }
/* Q4_0 against xq (see g4_matvec_prepare): s = lo*xa + byte*xb + xc, acc += d*s. */
static float dot_q4_0(const uint8_t *w, const float *xq, int64_t nb) { float y; q4_0_rows_t(1, w, &xq, nb, &y); return y; }

#else /* portable C */

static float dot_f32(const uint8_t *w8, const float *x, int64_t K) {
    const float *w = (const float *)(const void *)w8;
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        for (int j = 0; j < 8; j++) a[j] += w[i + j] * x[i + j];
    float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < K; i++) r += w[i] * x[i];
    return r;
}

static float dot_f16(const uint8_t *w8, const float *x, int64_t K) {
    const uint16_t *w = (const uint16_t *)(const void *)w8;
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        for (int j = 0; j < 8; j++) a[j] += g4_h2f(w[i + j]) * x[i + j];
    float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < K; i++) r += g4_h2f(w[i]) * x[i];
    return r;
}

static float dot_bf16(const uint8_t *w8, const float *x, int64_t K) {
    const uint16_t *w = (const uint16_t *)(const void *)w8;
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        for (int j = 0; j < 8; j++) a[j] += g4_bf2f(w[i + j]) * x[i + j];
    float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < K; i++) r += g4_bf2f(w[i]) * x[i];
    return r;
}

/* sum over a 32-value 4-bit block of nibble * x (codes 0..15). */
static inline float nib_dot(const uint8_t *q, const float *xb) {
    float a[4] = {0, 0, 0, 0};
    for (int j = 0; j < 16; j += 4)
        for (int t = 0; t < 4; t++)
            a[t] += (float)(q[j + t] & 0xF) * xb[j + t] + (float)(q[j + t] >> 4) * xb[j + t + 16];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static inline float nib5_dot(const uint8_t *q, uint32_t qh, const float *xb) {
    float a[4] = {0, 0, 0, 0};
    for (int j = 0; j < 16; j += 4)
        for (int t = 0; t < 4; t++) {
            const int l = j + t;
            const int q0 = (q[l] & 0xF) | (int)(((qh >> l) & 1u) << 4);
            const int q1 = (q[l] >> 4) | (int)(((qh >> (l + 16)) & 1u) << 4);
            a[t] += (float)q0 * xb[l] + (float)q1 * xb[l + 16];
        }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static float dot_q8_0(const uint8_t *w, const float *x, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 34;
        const int8_t *q = (const int8_t *)(p + 2);
        const float *xb = x + b * QK;
        float a[4] = {0, 0, 0, 0};
        for (int j = 0; j < 32; j += 4)
            for (int t = 0; t < 4; t++) a[t] += (float)q[j + t] * xb[j + t];
        acc += HT(p) * ((a[0] + a[1]) + (a[2] + a[3]));
    }
    return acc;
}

static float dot_q4_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        acc += HT(p) * (nib_dot(p + 2, x + b * QK) - 8.0f * sx[b]);
    }
    return acc;
}

static float dot_q4_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 20;
        acc += HT(p) * nib_dot(p + 4, x + b * QK) + HT(p + 2) * sx[b];
    }
    return acc;
}

static float dot_q5_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 22;
        acc += HT(p) * (nib5_dot(p + 6, rd32(p + 2), x + b * QK) - 16.0f * sx[b]);
    }
    return acc;
}

static float dot_q5_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 24;
        acc += HT(p) * nib5_dot(p + 8, rd32(p + 4), x + b * QK) + HT(p + 2) * sx[b];
    }
    return acc;
}

static float dot_q4_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 144, *qs = blk + 16;
        const float *xs = x + i * QKK;
        const float d = HT(blk), dmin = HT(blk + 2);
        uint32_t u[4];
        k4_unpack(blk + 4, u);
        const uint8_t *sc = (const uint8_t *)u, *mn = sc + 8;
        float s = 0.0f, m = 0.0f;
        for (int j = 0; j < 8; j += 2) {
            const uint8_t *q = qs + (j / 2) * 32;
            const float *x0 = xs + j * 32, *x1 = x0 + 32;
            float a0[4] = {0, 0, 0, 0}, a1[4] = {0, 0, 0, 0};
            for (int l = 0; l < 32; l += 4)
                for (int t = 0; t < 4; t++) {
                    a0[t] += (float)(q[l + t] & 0xF) * x0[l + t];
                    a1[t] += (float)(q[l + t] >> 4) * x1[l + t];
                }
            s += (float)sc[j] * ((a0[0] + a0[1]) + (a0[2] + a0[3]))
               + (float)sc[j + 1] * ((a1[0] + a1[1]) + (a1[2] + a1[3]));
            m += (float)mn[j] * sx[i * 8 + j] + (float)mn[j + 1] * sx[i * 8 + j + 1];
        }
        acc += d * s - dmin * m;
    }
    return acc;
}

static float dot_q5_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 176, *qh = blk + 16, *qs = blk + 48;
        const float *xs = x + i * QKK;
        const float d = HT(blk), dmin = HT(blk + 2);
        uint32_t u[4];
        k4_unpack(blk + 4, u);
        const uint8_t *sc = (const uint8_t *)u, *mn = sc + 8;
        float s = 0.0f, m = 0.0f;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = qs + (j / 2) * 32;
            const int sh = (j & 1) * 4;
            const float *xj = xs + j * 32;
            float a[4] = {0, 0, 0, 0};
            for (int l = 0; l < 32; l += 4)
                for (int t = 0; t < 4; t++)
                    a[t] += (float)(((q[l + t] >> sh) & 0xF) | (((qh[l + t] >> j) & 1) << 4)) * xj[l + t];
            s += (float)sc[j] * ((a[0] + a[1]) + (a[2] + a[3]));
            m += (float)mn[j] * sx[i * 8 + j];
        }
        acc += d * s - dmin * m;
    }
    return acc;
}

static float dot_q6_k(const uint8_t *w, const float *x, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const float *xs = x + i * QKK;
        float s = 0.0f;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) {
                const uint8_t *lp = ql + h * 64 + (k & 1) * 32, *hp = qh + h * 32;
                const int lsh = (k >> 1) * 4, hsh = 2 * k;
                const float *xk = xs + h * 128 + k * 32;
                for (int half = 0; half < 2; half++) {
                    float a[4] = {0, 0, 0, 0};
                    for (int l = half * 16; l < half * 16 + 16; l += 4)
                        for (int t = 0; t < 4; t++)
                            a[t] += (float)((((lp[l + t] >> lsh) & 0xF) | (((hp[l + t] >> hsh) & 3) << 4)) - 32) * xk[l + t];
                    s += (float)sc[h * 8 + k * 2 + half] * ((a[0] + a[1]) + (a[2] + a[3]));
                }
            }
        acc += HT(blk + 208) * s;
    }
    return acc;
}

#endif

/* ======================================================================================= */

void g4_matvec(const g4_cmd *c, const float *x, const void *ws, float *y, int64_t o0, int64_t o1) {
    const uint8_t *W = (const uint8_t *)c->w;
    const int64_t rb = c->w_row_bytes, K = c->in_cols;
    const float *sx = (const float *)ws;
    const int64_t nb = K / QK, nsb = K / QKK;
    int64_t o;
    (void)sx;
    f16tab_init();   /* normally done by g4_matvec_prepare; one load when ready */
    switch (c->qtype) {
    case G4_F32:  for (o = o0; o < o1; o++) y[o] = dot_f32(W + o * rb, x, K); break;
    case G4_F16:  for (o = o0; o < o1; o++) y[o] = dot_f16(W + o * rb, x, K); break;
    case G4_BF16: for (o = o0; o < o1; o++) y[o] = dot_bf16(W + o * rb, x, K); break;
    case G4_Q8_0: for (o = o0; o < o1; o++) y[o] = dot_q8_0(W + o * rb, x, nb); break;
#if defined(G4_AVX512)
    case G4_Q4_0: for (o = o0; o < o1; o++) y[o] = dot_q4_0(W + o * rb, sx, nb); break;
    case G4_Q4_1: for (o = o0; o < o1; o++) y[o] = dot_q4_1(W + o * rb, x, nb); break;
    case G4_Q5_0: for (o = o0; o < o1; o++) y[o] = dot_q5_0(W + o * rb, x, nb); break;
    case G4_Q5_1: for (o = o0; o < o1; o++) y[o] = dot_q5_1(W + o * rb, x, nb); break;
#elif defined(G4_AVX2)
    case G4_Q4_0: for (o = o0; o < o1; o++) y[o] = dot_q4_0(W + o * rb, sx, nb); break;
    case G4_Q4_1: for (o = o0; o < o1; o++) y[o] = dot_q4_1(W + o * rb, x, sx, nb); break;
    case G4_Q5_0: for (o = o0; o < o1; o++) y[o] = dot_q5_0(W + o * rb, x, sx, nb); break;
    case G4_Q5_1: for (o = o0; o < o1; o++) y[o] = dot_q5_1(W + o * rb, x, sx, nb); break;
#else
    case G4_Q4_0: for (o = o0; o < o1; o++) y[o] = dot_q4_0(W + o * rb, x, sx, nb); break;
    case G4_Q4_1: for (o = o0; o < o1; o++) y[o] = dot_q4_1(W + o * rb, x, sx, nb); break;
    case G4_Q5_0: for (o = o0; o < o1; o++) y[o] = dot_q5_0(W + o * rb, x, sx, nb); break;
    case G4_Q5_1: for (o = o0; o < o1; o++) y[o] = dot_q5_1(W + o * rb, x, sx, nb); break;
#endif
    case G4_Q4_K: for (o = o0; o < o1; o++) y[o] = dot_q4_k(W + o * rb, x, sx, nsb); break;
    case G4_Q5_K: for (o = o0; o < o1; o++) y[o] = dot_q5_k(W + o * rb, x, sx, nsb); break;
    case G4_Q6_K: for (o = o0; o < o1; o++) y[o] = dot_q6_k(W + o * rb, x, nsb); break;
    default: break;
    }
}

/* R activation rows against W rows [o0, o1): y[r][o] = W[o] . x[r], each bit for bit what
 * g4_matvec gives that row alone; Q8_0 and Q4_0 (SIMD builds) decode each block once for up to
 * ROWS_G rows, other types run g4_matvec per row. ws[r]: row r's g4_matvec_prepare scratch. */
#if defined(G4_AVX2)
/* the row count as a constant, so that each case unrolls its row loop */
#if ROWS_G > 4
#define ROWS_SWITCH(CALL) switch (g) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
    case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; \
    default: CALL(8); break; }
#else
#define ROWS_SWITCH(CALL) switch (g) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
    default: CALL(4); break; }
#endif
#define CALL_Q8_0(n) q8_0_rows_t(n, wo, xs, nb, v)
#define CALL_Q4_0(n) q4_0_rows_t(n, wo, xs, nb, v)
#if defined(G4_AVX512)
#define CALL_Q4_1(n) nib_rows_t(n, wo, xs, nb, v, 20, 4, 0, 2, 0.0f)
#define CALL_Q5_0(n) nib_rows_t(n, wo, xs, nb, v, 22, 6, 2, 0, 16.0f)
#define CALL_Q5_1(n) nib_rows_t(n, wo, xs, nb, v, 24, 8, 4, 2, 0.0f)
#else                                   /* AVX2: the offset term from the per-block sums of x */
#define CALL_Q4_1(n) nib_rows_t(n, wo, xs, ss, nb, v, 20, 4, 0, 2, 0.0f)
#define CALL_Q5_0(n) nib_rows_t(n, wo, xs, ss, nb, v, 22, 6, 2, 0, 16.0f)
#define CALL_Q5_1(n) nib_rows_t(n, wo, xs, ss, nb, v, 24, 8, 4, 2, 0.0f)
#endif
#define CALL_Q4_K(n) k45_rows_t(n, wo, xs, ss, nsb, v, 0)
#define CALL_Q5_K(n) k45_rows_t(n, wo, xs, ss, nsb, v, 1)
#define CALL_Q6_K(n) q6_k_rows_t(n, wo, xs, nsb, v)
#endif

void g4_matvec_rows(const g4_cmd *c, int R, const float *const *x, void *const *ws, float *const *y,
                    int64_t o0, int64_t o1) {
#if defined(G4_AVX2)
    const uint8_t *W = (const uint8_t *)c->w;
    const int64_t rb = c->w_row_bytes, nb = c->in_cols / QK, nsb = c->in_cols / QKK;
    const int qt = c->qtype;
    int fused = qt == G4_Q8_0 || qt == G4_Q4_0 || qt == G4_Q4_1 || qt == G4_Q5_0 || qt == G4_Q5_1;
#if defined(G4_AVX512)
    fused = fused || qt == G4_Q4_K || qt == G4_Q5_K || qt == G4_Q6_K;
#endif
    if (R > 1 && fused) {
        f16tab_init();
        for (int r0 = 0; r0 < R; r0 += ROWS_G) {
            const int g = R - r0 < ROWS_G ? R - r0 : ROWS_G;
            const float *xs[ROWS_G], *ss[ROWS_G];
            for (int r = 0; r < g; r++) {
                xs[r] = qt == G4_Q4_0 ? (const float *)ws[r0 + r] : x[r0 + r];
                ss[r] = (const float *)ws[r0 + r];
            }
            (void)ss;
            (void)nsb;
            for (int64_t o = o0; o < o1; o++) {
                const uint8_t *wo = W + o * rb;
                float v[ROWS_G];
                switch (qt) {
                case G4_Q8_0: ROWS_SWITCH(CALL_Q8_0) break;
                case G4_Q4_0: ROWS_SWITCH(CALL_Q4_0) break;
                case G4_Q4_1: ROWS_SWITCH(CALL_Q4_1) break;
                case G4_Q5_0: ROWS_SWITCH(CALL_Q5_0) break;
                case G4_Q5_1: ROWS_SWITCH(CALL_Q5_1) break;
#if defined(G4_AVX512)
                case G4_Q4_K: ROWS_SWITCH(CALL_Q4_K) break;
                case G4_Q5_K: ROWS_SWITCH(CALL_Q5_K) break;
                case G4_Q6_K: ROWS_SWITCH(CALL_Q6_K) break;
#endif
                default: break;
                }
                for (int r = 0; r < g; r++) y[r0 + r][o] = v[r];
            }
        }
        return;
    }
#endif
    for (int r = 0; r < R; r++) g4_matvec(c, x[r], ws[r], y[r], o0, o1);
}
