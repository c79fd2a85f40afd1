/* AVX2 + FMA + F16C decode matvec (matvec.h has the design): one fused kernel per weight type,
 * the multi-row kernels of row-exact batches (Q8_0 and the 4- / 5-bit legacy types), and
 * g4cpu.h's matvec API for this build. Q4_0 reads x re-expressed per block (xq); the other
 * offset / min terms come from per-block sums of x. */
#include "arch/avx2/matvec_x86.h"
#include "matvec.h"

#if !defined(G4_AVX2) || defined(G4_AVX512)
#error "arch/avx2 needs the AVX2 flags and not the AVX-512 ones (runtime/backends/cpu/compiler.py X86_FLAGS)"
#endif

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
static float dot_q4_0(const uint8_t *w, const float *x, const float *xq, int64_t nb) {
    (void)x; float y; q4_0_rows_t(1, w, &xq, nb, &y); return y;
}


/* ======================================================================================= */

/* the q8 path (q8.h): ymm integer kernels, 2 rows per call (16 vector registers) */
#define Q8_ROWS_G 2
#define Q8_ROWS_SWITCH(R, CALL) switch (R) { case 1: CALL(1); break; default: CALL(2); break; }
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
    mv_write_sums(x, nb, (float *)ws);
}


/* The multi-row kernels g4_matvec_rows (matvec_entry.h) runs: Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 decode each block once for up
 * to ROWS_G rows, other types run g4_matvec per row. ws[r]: row r's g4_matvec_prepare scratch.
 * ROWS_SWITCH: the row count as a constant, so that each case unrolls its row loop. */
#define ROWS_SWITCH(CALL) switch (g) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
    default: CALL(4); break; }
#define CALL_Q8_0(n) q8_0_rows_t(n, wo, xs, nb, v)
#define CALL_Q4_0(n) q4_0_rows_t(n, wo, xs, nb, v)
#define CALL_Q4_1(n) nib_rows_t(n, wo, xs, ss, nb, v, 20, 4, 0, 2, 0.0f)
#define CALL_Q5_0(n) nib_rows_t(n, wo, xs, ss, nb, v, 22, 6, 2, 0, 16.0f)
#define CALL_Q5_1(n) nib_rows_t(n, wo, xs, ss, nb, v, 24, 8, 4, 2, 0.0f)

#include "matvec_entry.h"     /* g4_matvec, g4_matvec_rows */
