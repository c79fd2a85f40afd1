/* AVX-512 decode matvec (matvec.h has the design): one fused kernel per weight type, the
 * multi-row kernels of row-exact batches, and g4cpu.h's matvec API for this build.
 * Q4_0 reads x re-expressed per block (xq); Q4_1 / Q5_0 / Q5_1 fold their offset or min into a
 * 16-entry table, so only the K-quants read per-block sums of x. */
#include "arch/avx2/matvec_x86.h"
#include "matvec.h"

#if !defined(G4_AVX512)
#error "arch/avx512 needs the AVX-512 flags (runtime/backends/cpu/compiler.py X86_FLAGS)"
#endif

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
static float dot_q4_0(const uint8_t *w, const float *x, const float *xq, int64_t nb) {
    (void)x; float y; q4_0_rows_t(1, w, &xq, nb, &y); return y;
}
static float dot_q4_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) { (void)sx; float y; nib_rows_t(1, w, &x, nb, &y, 20, 4, 0, 2, 0.0f); return y; }
static float dot_q5_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) { (void)sx; float y; nib_rows_t(1, w, &x, nb, &y, 22, 6, 2, 0, 16.0f); return y; }
static float dot_q5_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) { (void)sx; float y; nib_rows_t(1, w, &x, nb, &y, 24, 8, 4, 2, 0.0f); return y; }


/* ======================================================================================= */

/* the q8 path (q8.h): ymm integer kernels, 4 rows per call */
#define Q8_ROWS_G 4
#define Q8_ROWS_SWITCH(R, CALL) switch (R) { case 1: CALL(1); break; case 2: CALL(2); break; \
    case 3: CALL(3); break; default: CALL(4); break; }
#include "arch/avx2/matvec_q8_x86.h"
#include "matvec_q8_entry.h"

size_t g4_matvec_scratch(const g4_cmd *c) { return q8_active(c) ? q8_scratch(c) : mv_scratch_bytes(c, 1); }

void g4_matvec_prepare(const g4_cmd *c, const float *x, void *ws) {
    g4_f16tab_ready();
    if (q8_active(c)) {
        q8_prepare(c, x, ws);
        return;
    }
    if (!mv_needs_sums(c->qtype) || !ws) return;
    const int64_t nb = c->in_cols / QK;
    if (c->qtype == G4_Q4_0) {
        mv_write_xq(x, nb, (float *)ws);
        return;
    }
    float *sx = (float *)ws;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        sx[b] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16)));
    }
    for (int i = 0; i < 16; i++) sx[nb + i] = 0.0f;
}


/* The multi-row kernels g4_matvec_rows (matvec_entry.h) runs: every quantized type decodes each block once for up to
 * ROWS_G rows, F32 / F16 / BF16 run g4_matvec per row. ws[r]: row r's g4_matvec_prepare
 * scratch. ROWS_SWITCH: the row count as a constant, so that each case unrolls its row loop. */
#define ROWS_SWITCH(CALL) switch (g) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
    case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; \
    default: CALL(8); break; }
#define CALL_Q8_0(n) q8_0_rows_t(n, wo, xs, nb, v)
#define CALL_Q4_0(n) q4_0_rows_t(n, wo, xs, nb, v)
#define CALL_Q4_1(n) nib_rows_t(n, wo, xs, nb, v, 20, 4, 0, 2, 0.0f)
#define CALL_Q5_0(n) nib_rows_t(n, wo, xs, nb, v, 22, 6, 2, 0, 16.0f)
#define CALL_Q5_1(n) nib_rows_t(n, wo, xs, nb, v, 24, 8, 4, 2, 0.0f)
#define CALL_Q4_K(n) k45_rows_t(n, wo, xs, ss, nsb, v, 0)
#define CALL_Q5_K(n) k45_rows_t(n, wo, xs, ss, nsb, v, 1)
#define CALL_Q6_K(n) q6_k_rows_t(n, wo, xs, nsb, v)
#define MV_ROWS_K_QUANTS 1

#include "matvec_entry.h"     /* g4_matvec, g4_matvec_rows */
