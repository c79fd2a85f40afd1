/* matvec_q8_x86.h: the q8 matvec kernels (q8.h has the arithmetic) on 256-bit integer vectors,
 * included by the AVX2 and the AVX-512 matvec (an AVX-512 build runs them on ymm registers with
 * EVEX's 32 registers and VNNI where the CPU has it; on Zen 4 and Intel alike a ymm integer dot
 * is as fast per byte as a zmm one, and the weights' 18..34-byte blocks fit ymm loads).
 *
 * The dot of 32 unsigned weight bytes u with 32 signed activation bytes q, summed per int32 lane
 * onto a starting value (DPB): vpdpbusd on AVX512_VNNI / AVX-VNNI, else vpmaddubsw + vpmaddwd.
 * The pair sums of vpmaddubsw saturate at 32767: every u here is < 64 (2 * 63 * 127 < 32767),
 * or Q8_0's |w| <= 128 against |q| <= 127 (the sign trick): 2 * 128 * 127 < 32767.
 *
 * Each kernel handles R rows (a compile-time constant at each call: Q8_ROWS_SWITCH) with four
 * accumulators per row, block (or sub-block) k into accumulator k % 4, so one row alone and the
 * same row among R take the same operations in the same order: row-exact. The caller defines
 * Q8_ROWS_G, the most rows per call (AVX-512: 4, AVX2: 2, for the 32 / 16 vector registers).
 *
 * The AVX-512 build adds zmm kernels for the repacked types that take two 8-row groups at once
 * (q8r2_*: 16 weight rows per zmm, up to Q8R_ROWS_G = 16 activation rows per pass over the
 * weights) for batches; per lane they do the ymm kernels' operations, so the bits are the same
 * and a one-row step (which keeps the ymm kernels: one weight stream) equals its batched rows. */
#ifndef G4_MATVEC_Q8_X86_H
#define G4_MATVEC_Q8_X86_H

#include "arch/avx2/matvec_x86.h"
#include "q8.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define Q8_DOT_NAME "vnni"
static inline __m256i q8_dpb(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
#elif defined(__AVXVNNI__)
#define Q8_DOT_NAME "avxvnni"
static inline __m256i q8_dpb(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
#else
#define Q8_DOT_NAME "maddubs"
static inline __m256i q8_dpb(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#endif

#define Q8_AI static inline __attribute__((always_inline))

/* The integer dot of codes u with a row's activation bytes at offset o: one plane (q8), or
 * two (i16: 128 * dot(u, q) + dot(u, q2), q8.h); init is added to the low plane's dot. */
Q8_AI __m256i q8_dot(const int two, __m256i init, __m256i u, const q8_row *x, int64_t o) {
    const __m256i s = _mm256_loadu_si256((const __m256i *)(x->q + o));
    if (!two) return q8_dpb(init, u, s);
    const __m256i h = q8_dpb(_mm256_setzero_si256(), u, s);
    return _mm256_add_epi32(_mm256_slli_epi32(h, 7), q8_dpb(init, u, _mm256_loadu_si256((const __m256i *)(x->q2 + o))));
}

/* (a0 + a1) + (a2 + a3), reduced: the end of every kernel, per row */
Q8_AI float q8_total(const __m256 *a) {
    return hsum8(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

/* The 32 codes of a 16-byte nibble block in value order: low nibbles (values 0..15), then high. */
Q8_AI __m256i q8_nibbles16(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0f));
}

/* 32 bits -> 32 bytes of 0x10 where the bit is set (Q5_0 / Q5_1's fifth bit). */
Q8_AI __m256i q8_bit4_bytes(uint32_t bits) {
#if defined(G4_AVX512)
    return _mm256_maskz_mov_epi8((__mmask32)bits, _mm256_set1_epi8(0x10));
#else
    const __m256i sel = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
        _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(sel, bit), bit), _mm256_set1_epi8(0x10));
#endif
}

/* ---- 32-value blocks: Q4_0, Q4_1, Q5_0, Q5_1 (nibbles, optional fifth bit, offset or min) ----
 * bs: block bytes; mo: offset of the f16 min (0: none); ho: offset of qh (0: none); qo: of qs. */
Q8_AI void q8_nib_block(const int R, const int two, const uint8_t *p, const q8_row *x, int64_t b, __m256 (*acc)[4],
                        float (*ms)[4], const int k, const int mo, const int ho, const int qo) {
    __m256i u = q8_nibbles16(p + qo);
    if (ho) u = _mm256_or_si256(u, q8_bit4_bytes(rd32(p + ho)));
    const __m256 dw = _mm256_set1_ps(HT(p));
    const float m = mo ? HT(p + mo) : 0.0f;
    for (int r = 0; r < R; r++) {
        const __m256i i = q8_dot(two, mo ? _mm256_setzero_si256() : _mm256_set1_epi32(x[r].bias[b]), u, &x[r], b * 32);
        acc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw, _mm256_broadcast_ss(x[r].d + b)),
                                    acc[r][k]);
        if (mo) ms[r][k] += m * x[r].sd[b];
    }
}

Q8_AI void q8_nib_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t nb, float *out,
                       const int bs, const int mo, const int ho, const int qo) {
    __m256 acc[Q8_ROWS_G][4];
    float ms[Q8_ROWS_G][4];
    for (int r = 0; r < R; r++)
        for (int k = 0; k < 4; k++) { acc[r][k] = _mm256_setzero_ps(); ms[r][k] = 0.0f; }
    /* four blocks a step, so that each accumulator index is a constant (registers, not memory) */
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const uint8_t *p = w + b * bs;
        PF(p); PF(p + 2 * bs);
        q8_nib_block(R, two, p, x, b, acc, ms, 0, mo, ho, qo);
        q8_nib_block(R, two, p + bs, x, b + 1, acc, ms, 1, mo, ho, qo);
        q8_nib_block(R, two, p + 2 * bs, x, b + 2, acc, ms, 2, mo, ho, qo);
        q8_nib_block(R, two, p + 3 * bs, x, b + 3, acc, ms, 3, mo, ho, qo);
    }
    if (b < nb) q8_nib_block(R, two, w + b * bs, x, b, acc, ms, 0, mo, ho, qo);
    if (b + 1 < nb) q8_nib_block(R, two, w + (b + 1) * bs, x, b + 1, acc, ms, 1, mo, ho, qo);
    if (b + 2 < nb) q8_nib_block(R, two, w + (b + 2) * bs, x, b + 2, acc, ms, 2, mo, ho, qo);
    for (int r = 0; r < R; r++) out[r] = q8_total(acc[r]) + ((ms[r][0] + ms[r][1]) + (ms[r][2] + ms[r][3]));
}

/* ---- Q8_0: signed codes, |w| . sign(q, w) (vpdpbusd wants one unsigned side) ---- */
Q8_AI void q8_q8_0_block(const int R, const int two, const uint8_t *p, const q8_row *x, int64_t b, __m256 (*acc)[4],
                         const int k) {
    const __m256i wv = _mm256_loadu_si256((const __m256i *)(p + 2));
    const __m256 dw = _mm256_set1_ps(HT(p));
    const __m256i u = _mm256_sign_epi8(wv, wv);     /* |w|, unsigned; q takes w's sign */
    for (int r = 0; r < R; r++) {
        const __m256i s = _mm256_loadu_si256((const __m256i *)(x[r].q + b * 32));
        __m256i i = q8_dpb(_mm256_setzero_si256(), u, _mm256_sign_epi8(s, wv));
        if (two) {
            const __m256i s2 = _mm256_loadu_si256((const __m256i *)(x[r].q2 + b * 32));
            i = _mm256_add_epi32(_mm256_slli_epi32(i, 7), q8_dpb(_mm256_setzero_si256(), u, _mm256_sign_epi8(s2, wv)));
        }
        acc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw, _mm256_broadcast_ss(x[r].d + b)),
                                    acc[r][k]);
    }
}

Q8_AI void q8_q8_0_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t nb, float *out) {
    __m256 acc[Q8_ROWS_G][4];
    for (int r = 0; r < R; r++)
        for (int k = 0; k < 4; k++) acc[r][k] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const uint8_t *p = w + b * 34;
        PF(p); PF(p + 64); PF(p + 128);
        for (int k = 0; k < 4; k++) q8_q8_0_block(R, two, p + k * 34, x, b + k, acc, k);
    }
    for (int k = 0; b + k < nb; k++) q8_q8_0_block(R, two, w + (b + k) * 34, x, b + k, acc, k);
    for (int r = 0; r < R; r++) out[r] = q8_total(acc[r]);
}

/* ---- Q4_K / Q5_K: 8 sub-blocks of 32 per 256, 6-bit scales and mins ----
 * Per super-block and row, the 8 float scales d * sc[j] * d_x[j] are computed one super-block
 * ahead into sb (double-buffered: the broadcasts read values stored well before), the mins as
 * am += dmin * m[j] * sd[j] (8 lanes). */
Q8_AI void q8_k45_scales(const int R, const uint8_t *blk, const q8_row *x, int64_t i, float (*sb)[8],
                         __m256 *am) {
    const __m128i sm = k4_unpack_v(blk + 4);                 /* m[0..7], sc[0..7] */
    const __m256 sc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8))),
                                    _mm256_set1_ps(HT(blk)));
    const __m256 mn = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)), _mm256_set1_ps(HT(blk + 2)));
    for (int r = 0; r < R; r++) {
        _mm256_store_ps(sb[r], _mm256_mul_ps(sc, _mm256_loadu_ps(x[r].d + i * 8)));
        am[r] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(x[r].sd + i * 8), am[r]);
    }
}

Q8_AI void q8_k45_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t nsb, float *out,
                       const int five) {
    const int bs = five ? 176 : 144, qo = five ? 48 : 16;
    __m256 acc[Q8_ROWS_G][4], am[Q8_ROWS_G];
    float sb[2][Q8_ROWS_G][8] __attribute__((aligned(32)));
    for (int r = 0; r < R; r++) {
        am[r] = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) acc[r][k] = _mm256_setzero_ps();
    }
    if (nsb > 0) q8_k45_scales(R, w, x, 0, sb[0], am);
    const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * bs, *qs = blk + qo;
        PF(blk); PF(blk + 64); PF(blk + 128);
        if (i + 1 < nsb) q8_k45_scales(R, blk + bs, x, i + 1, sb[(i + 1) & 1], am);
        float (*s)[8] = sb[i & 1];
        __m256i qh = _mm256_setzero_si256();
        if (five) qh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                /* bit 2j of qh[l] is value 64j + l's fifth bit, bit 2j + 1 value 64j + 32 + l's */
                __m256i hl, hh;
                switch (j) {
                case 0: hl = _mm256_slli_epi16(qh, 4); hh = _mm256_slli_epi16(qh, 3); break;
                case 1: hl = _mm256_slli_epi16(qh, 2); hh = _mm256_slli_epi16(qh, 1); break;
                case 2: hl = qh; hh = _mm256_srli_epi16(qh, 1); break;
                default: hl = _mm256_srli_epi16(qh, 2); hh = _mm256_srli_epi16(qh, 3); break;
                }
                lo = _mm256_or_si256(lo, _mm256_and_si256(hl, b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(hh, b4));
            }
            for (int r = 0; r < R; r++) {
                const int64_t xo = i * 256 + j * 64;
                const __m256i il = q8_dot(two, _mm256_setzero_si256(), lo, &x[r], xo);
                const __m256i ih = q8_dot(two, _mm256_setzero_si256(), hi, &x[r], xo + 32);
                /* sub-blocks 2j and 2j + 1 into accumulators (2j) % 4 and (2j + 1) % 4 */
                acc[r][(2 * j) & 3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(il), _mm256_broadcast_ss(&s[r][2 * j]),
                                                      acc[r][(2 * j) & 3]);
                acc[r][(2 * j + 1) & 3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ih), _mm256_broadcast_ss(&s[r][2 * j + 1]),
                                                          acc[r][(2 * j + 1) & 3]);
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = q8_total(acc[r]) - hsum8(am[r]);
}

/* ---- Q6_K: 6-bit codes u = q + 32 (0..63), a signed 8-bit scale per 16 values ----
 * Per super-block and row, the lane scales of each sub-block k (4 lanes of group 2k, 4 of 2k+1:
 * lane l of a dot sums values 4l..4l+3) are built one super-block ahead into sb; the offset
 * is am += 32 * scale[g] * s16[g] over the 16 groups. */
Q8_AI void q8_q6k_scales(const int R, const uint8_t *blk, const q8_row *x, int64_t i, __m256 (*sb)[8],
                         __m256 *am) {
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)(blk + 192));
    const __m256 d = _mm256_set1_ps(HT(blk + 208) * 32.0f);
    const __m256 g0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8));                       /* groups 0..7 */
    const __m256 g1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8)));    /* 8..15 */
    const __m256i pair = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (int r = 0; r < R; r++) {
        /* d_x of group g is d_x[g / 2]; the factor 32 is taken out again per lane below */
        const __m256 dx = _mm256_loadu_ps(x[r].d + i * 8);
        const __m256 s0 = _mm256_mul_ps(_mm256_mul_ps(g0, d), _mm256_permutevar8x32_ps(dx, pair));
        const __m256 s1 = _mm256_mul_ps(_mm256_mul_ps(g1, d),
                                        _mm256_permutevar8x32_ps(dx, _mm256_add_epi32(pair, _mm256_set1_epi32(4))));
        am[r] = _mm256_fmadd_ps(s0, _mm256_loadu_ps(x[r].s16 + i * 16), am[r]);
        am[r] = _mm256_fmadd_ps(s1, _mm256_loadu_ps(x[r].s16 + i * 16 + 8), am[r]);
        const __m256 l = _mm256_set1_ps(1.0f / 32.0f);
        const __m256 t0 = _mm256_mul_ps(s0, l), t1 = _mm256_mul_ps(s1, l);
        for (int k = 0; k < 4; k++) {
            const __m256i ix = _mm256_setr_epi32(2 * k, 2 * k, 2 * k, 2 * k, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1);
            sb[r][k] = _mm256_permutevar8x32_ps(t0, ix);
            sb[r][k + 4] = _mm256_permutevar8x32_ps(t1, ix);
        }
    }
}

Q8_AI void q8_q6k_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t nsb, float *out) {
    __m256 acc[Q8_ROWS_G][4], am[Q8_ROWS_G];
    __m256 sb[2][Q8_ROWS_G][8];
    for (int r = 0; r < R; r++) {
        am[r] = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) acc[r][k] = _mm256_setzero_ps();
    }
    if (nsb > 0) q8_q6k_scales(R, w, x, 0, sb[0], am);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210;
        PF(blk); PF(blk + 64); PF(blk + 128); PF(blk + 192);
        if (i + 1 < nsb) q8_q6k_scales(R, blk + 210, x, i + 1, sb[(i + 1) & 1], am);
        __m256 (*s)[8] = sb[i & 1];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i hv = _mm256_loadu_si256((const __m256i *)qh);
            __m256i u[4];
            u[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hv, 4), m2));
            u[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hv, 2), m2));
            u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hv, m2));
            u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(hv, 2), m2));
            for (int r = 0; r < R; r++) {
                for (int t = 0; t < 4; t++) {
                    const __m256i d = q8_dot(two, _mm256_setzero_si256(), u[t], &x[r], i * 256 + h * 128 + 32 * t);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s[r][4 * h + t], acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = q8_total(acc[r]) - hsum8(am[r]);
}

/* The dot of 4 repacked code chunks u[c] (4 bytes of each of 8 rows) with the 16 activation
 * bytes at p (chunk c against p[4c .. 4c+4)), one int32 lane per weight row; two chains for
 * latency. */
Q8_AI __m256i q8r_plane4(const __m256i *u, const int8_t *p) {
    __m256i a = q8_dpb(_mm256_setzero_si256(), u[0], _mm256_broadcastd_epi32(_mm_loadu_si32(p)));
    __m256i b = q8_dpb(_mm256_setzero_si256(), u[1], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 4)));
    a = q8_dpb(a, u[2], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 8)));
    b = q8_dpb(b, u[3], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 12)));
    return _mm256_add_epi32(a, b);
}

/* q8r_plane4 against row x's activation codes at offset o: q, or 128 q + q2 (i16) */
Q8_AI __m256i q8r_dot4(const int two, const __m256i *u, const q8_row *x, int64_t o) {
    const __m256i h = q8r_plane4(u, x->q + o);
    return two ? _mm256_add_epi32(_mm256_slli_epi32(h, 7), q8r_plane4(u, x->q2 + o)) : h;
}

/* The dot of 8 repacked code chunks u[c] with the 32 activation bytes at o (chunk c against
 * o + 4c .. +4), one int32 lane per weight row: for i16 each plane's 8 dots are summed first and
 * combined once (128 q + q2), the same integers as two q8r_dot4 calls in fewer instructions;
 * two chains per plane for latency. */
Q8_AI __m256i q8r_plane8(const __m256i *u, const int8_t *p) {
    __m256i a = q8_dpb(_mm256_setzero_si256(), u[0], _mm256_broadcastd_epi32(_mm_loadu_si32(p)));
    __m256i b = q8_dpb(_mm256_setzero_si256(), u[1], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 4)));
    for (int c = 2; c < 8; c += 2) {
        a = q8_dpb(a, u[c], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 4 * c)));
        b = q8_dpb(b, u[c + 1], _mm256_broadcastd_epi32(_mm_loadu_si32(p + 4 * c + 4)));
    }
    return _mm256_add_epi32(a, b);
}

Q8_AI __m256i q8r_dot8(const int two, const __m256i *u, const q8_row *x, int64_t o) {
    const __m256i h = q8r_plane8(u, x->q + o);
    return two ? _mm256_add_epi32(_mm256_slli_epi32(h, 7), q8r_plane8(u, x->q2 + o)) : h;
}

/* ---- repacked Q4_0 (repack.c's q4_0x8): 8 weight rows at once, lane j = row 8g + j ----
 * Per block: the 8 rows' scales in one vcvtph2ps; per chunk c of 4 code bytes, the low nibbles
 * meet values 4c..4c+3 of x and the high ones 16+4c..16+4c+3, each as 4 broadcast bytes, so each
 * int32 lane sums its own row's products; the starting value is the row-independent -8 S. */
Q8_AI void q8r_q4_0_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t b0, int64_t b1,
                         __m256 *acc, __m256 *aux) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    (void)aux;
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *p = w + b * 144;
        PFR(p); PFR(p + 64); PFR(p + 128);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        __m256i u[8];            /* chunk c's low nibbles are values 4c.., its high ones 16 + 4c.. */
        for (int c = 0; c < 4; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * c));
            u[c] = _mm256_and_si256(v, m4);
            u[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        for (int r = 0; r < R; r++) {
            __m256i i = q8r_dot8(two, u, &x[r], b * 32);
            i = _mm256_add_epi32(i, _mm256_set1_epi32(x[r].bias[b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i),
                                     _mm256_mul_ps(dw, _mm256_broadcast_ss(x[r].d + b)), acc[r]);
        }
    }
}

#if defined(G4_AVX512)
#include "arch/avx512/matvec_q8_zmm.h"
#endif

/* ---- repacked Q4_K (q4_Kx8): per sub-block k, the 8 rows' scales d * sc[k] as one vector;
 * the mins dmin * m[k] * sd[k] summed apart and subtracted at the end ---- */
Q8_AI void q8r_q4_k_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t i0, int64_t i1,
                         __m256 *acc, __m256 *am) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *p = w + i * 1184;
        PFR(p); PFR(p + 64); PFR(p + 128);       /* the rest spread over the loop below: a burst of 19
                                                * prefetches per super-block streamed 25-35 % slower */
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        /* sub-blocks 2j (low nibbles) and 2j + 1 (high) from one load of their shared bytes, each
         * with a literal nibble choice (a runtime one per sub-block measured 12 % slower) */
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = p + 160 + 256 * j;
            PFR(q + 32); PFR(q + 96); PFR(q + 160); PFR(q + 224);
            __m256i ul[8], uh[8];
            for (int c = 0; c < 8; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
                ul[c] = _mm256_and_si256(v, m4);
                uh[c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
            for (int h = 0; h < 2; h++) {
                const int k = 2 * j + h;
                const __m256i *u = h ? uh : ul;
                const __m256 sc = _mm256_mul_ps(dw, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 32 + 8 * k)))));
                const __m256 mn = _mm256_mul_ps(dm, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 96 + 8 * k)))));
                for (int r = 0; r < R; r++) {
                    const int64_t sb = i * 8 + k;
                    const __m256i d = q8r_dot8(two, u, &x[r], sb * 32);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(sc, _mm256_broadcast_ss(x[r].d + sb)), acc[r]);
                    am[r] = _mm256_fmadd_ps(mn, _mm256_broadcast_ss(x[r].sd + sb), am[r]);
                }
            }
        }
    }
}

/* ---- repacked Q6_K (q6_Kx8): per 16-value group g, the 8 rows' scales d * sc[g]; the codes'
 * offset 32 as 32 * scale * s16 summed apart (cr) ---- */
/* Sub-block k = 4h + t of super-block i (values 128h + 32t ..); t is a literal at every call, so
 * the nibble and bit selection compiles to straight code (a runtime t measured 1.3x slower). */
Q8_AI void q8r_q6_k_sub(const int R, const int two, const uint8_t *p, const q8_row *x, int64_t i, const int h,
                        const int t, const __m256 d8, __m256 *acc, __m256 *cr) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    const int k = 4 * h + t;
    const uint8_t *ql = p + 144 + 512 * h + 32 * 8 * (t & 1), *qh = p + 1168 + 256 * h;
    for (int half = 0; half < 2; half++) {
        const int g = 2 * k + half;
        __m256i u[4];
        for (int cc = 0; cc < 4; cc++) {
            const int c = 4 * half + cc;
            const __m256i l = _mm256_loadu_si256((const __m256i *)(ql + 32 * c));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(qh + 32 * c));
            const __m256i lo = _mm256_and_si256((t & 2) ? _mm256_srli_epi16(l, 4) : l, m4);
            /* bits 2t, 2t + 1 of qh to bits 4, 5 */
            const __m256i hi = t == 0 ? _mm256_slli_epi16(hb, 4) : t == 1 ? _mm256_slli_epi16(hb, 2)
                             : t == 2 ? hb : _mm256_srli_epi16(hb, 2);
            u[cc] = _mm256_or_si256(lo, _mm256_and_si256(hi, m2));
        }
        const __m256 sc = _mm256_mul_ps(d8, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 16 + 8 * g)))));
        for (int r = 0; r < R; r++) {
            const int64_t sb = i * 8 + k;
            const __m256i dd = q8r_dot4(two, u, &x[r], sb * 32 + 16 * half);
            const __m256 s = _mm256_mul_ps(sc, _mm256_broadcast_ss(x[r].d + sb));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dd), s, acc[r]);
            cr[r] = _mm256_fmadd_ps(s, _mm256_broadcast_ss(x[r].s16 + i * 16 + g), cr[r]);
        }
    }
}

Q8_AI void q8r_q6_k_rows(const int R, const int two, const uint8_t *w, const q8_row *x, int64_t i0, int64_t i1,
                         __m256 *acc, __m256 *cr) {
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *p = w + i * 1680;
        for (int o = 0; o < 1680; o += 64) PFR(p + o);     /* spread over the sub-blocks measured 2x slower */
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        for (int h = 0; h < 2; h++) {
            q8r_q6_k_sub(R, two, p, x, i, h, 0, d8, acc, cr);
            q8r_q6_k_sub(R, two, p, x, i, h, 1, d8, acc, cr);
            q8r_q6_k_sub(R, two, p, x, i, h, 2, d8, acc, cr);
            q8r_q6_k_sub(R, two, p, x, i, h, 3, d8, acc, cr);
        }
    }
}

#define Q8R_SPAN_N(NAME, KERNEL)                                                                          \
    Q8_AI void NAME(const int n, const int two, const uint8_t *wg, const q8_row *x, int64_t u0, int64_t u1,   \
                    float (*st)[16]) {                                                                      \
        __m256 acc[Q8_ROWS_G], aux[Q8_ROWS_G];                                                              \
        for (int r = 0; r < n; r++) {                                                                       \
            acc[r] = _mm256_loadu_ps(st[r]);                                                                \
            aux[r] = _mm256_loadu_ps(st[r] + 8);                                                            \
        }                                                                                                   \
        KERNEL(n, two, wg, x, u0, u1, acc, aux);                                                            \
        for (int r = 0; r < n; r++) {                                                                       \
            _mm256_storeu_ps(st[r], acc[r]);                                                                \
            _mm256_storeu_ps(st[r] + 8, aux[r]);                                                            \
        }                                                                                                   \
    }
/* One function per type, each row count a literal with its own accumulators: in one function
 * for all three types the accumulator arrays went to the stack (a store-load in every FMA chain),
 * and a change to one type's loop halved another's speed. */
Q8R_SPAN_N(q8r_span_q4_0_n, q8r_q4_0_rows)
Q8R_SPAN_N(q8r_span_q4_k_n, q8r_q4_k_rows)
Q8R_SPAN_N(q8r_span_q6_k_n, q8r_q6_k_rows)
#define Q8R_SPAN(NAME, KN)                                                                                 \
    static __attribute__((noinline)) void NAME(int R, int two, const uint8_t *wg, const q8_row *x, int64_t u0, \
                                               int64_t u1, float (*st)[16]) {                               \
        if (two) {                                                                                          \
            Q8_ROWS_SWITCH(R, KN##_1)                                                                       \
        } else {                                                                                            \
            Q8_ROWS_SWITCH(R, KN##_0)                                                                       \
        }                                                                                                   \
    }
#define q8r_span_q4_0_n_1(n) q8r_span_q4_0_n(n, 1, wg, x, u0, u1, st)
#define q8r_span_q4_0_n_0(n) q8r_span_q4_0_n(n, 0, wg, x, u0, u1, st)
#define q8r_span_q4_k_n_1(n) q8r_span_q4_k_n(n, 1, wg, x, u0, u1, st)
#define q8r_span_q4_k_n_0(n) q8r_span_q4_k_n(n, 0, wg, x, u0, u1, st)
#define q8r_span_q6_k_n_1(n) q8r_span_q6_k_n(n, 1, wg, x, u0, u1, st)
#define q8r_span_q6_k_n_0(n) q8r_span_q6_k_n(n, 0, wg, x, u0, u1, st)
Q8R_SPAN(q8r_span_q4_0, q8r_span_q4_0_n)
Q8R_SPAN(q8r_span_q4_k, q8r_span_q4_k_n)
Q8R_SPAN(q8r_span_q6_k, q8r_span_q6_k_n)

/* Units [u0, u1) (blocks of 32 for Q4_0, super-blocks for the K-quants) of one group of 8
 * repacked rows against R <= Q8_ROWS_G quantized rows, continuing the per-row state st[r]
 * (16 floats: the accumulator, then the mins / offset sums); the driver (matvec_q8_entry.h)
 * walks K in spans so that the activation rows stay in L1 across a task's groups, and the
 * per-lane order of operations is that of one pass over all of K. */
static void q8_repacked_span(const g4_cmd *c, int R, const uint8_t *wg, const q8_row *x, int64_t u0, int64_t u1,
                             float (*st)[16]) {
    const int two = (c->act & G4_ACT_MODE) == G4_ACT_I16;
    /* more rows than one call takes (Q8R_ROWS_G > Q8_ROWS_G): in turns over this span, whose
     * weights stay in L1 (each row's operations are the same either way) */
    for (int r0 = 0; r0 < R; r0 += Q8_ROWS_G) {
        const int n = R - r0 < Q8_ROWS_G ? R - r0 : Q8_ROWS_G;
        if (c->qtype == G4_Q4_K) q8r_span_q4_k(n, two, wg, x + r0, u0, u1, st + r0);
        else if (c->qtype == G4_Q6_K) q8r_span_q6_k(n, two, wg, x + r0, u0, u1, st + r0);
        else q8r_span_q4_0(n, two, wg, x + r0, u0, u1, st + r0);
    }
}

/* the 8 results of a group from its state: Q4_K subtracts the mins, Q6_K the offset 32 */
static void q8_repacked_finish(const g4_cmd *c, const float *st, float *v) {
    const __m256 a = _mm256_loadu_ps(st), m = _mm256_loadu_ps(st + 8);
    if (c->qtype == G4_Q4_K) _mm256_storeu_ps(v, _mm256_sub_ps(a, m));
    else if (c->qtype == G4_Q6_K) _mm256_storeu_ps(v, _mm256_fnmadd_ps(_mm256_set1_ps(32.0f), m, a));
    else _mm256_storeu_ps(v, a);
}

#define Q8_REPACKED_TYPE(qt) ((qt) == G4_Q4_0 || (qt) == G4_Q4_K || (qt) == G4_Q6_K)

/* ---- quantizing a row (q8.h's arithmetic on 8 lanes: x * id, then cvtps's nearest-even) ---- */
static void q8_quantize_row(const float *x, int64_t K, int8_t *q, float *d) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + b * 32;
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        const float id = amax >= Q8_TINY ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        /* inf / NaN in the block: its results are NaN, as on the exact path */
        __m256 bad = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, v[j]),
                                                                           _mm256_set1_ps(3.4028235e38f), _CMP_NLE_UQ));
        if (_mm256_movemask_ps(bad)) d[b] = NAN;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i[4];
        for (int j = 0; j < 4; j++) i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
        /* pack 4 x 8 int32 to 32 int8 in order (the packs work per 128-bit lane) */
        const __m256i a = _mm256_packs_epi32(i[0], i[1]), c = _mm256_packs_epi32(i[2], i[3]);
        const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, c), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * 32), p);
    }
}

/* ---- one weight row against R quantized rows (matvec_q8_entry.h drives it) ----
 * The including file defines Q8_ROWS_SWITCH(R, CALL): R (1 .. Q8_ROWS_G) as a constant. */

static inline __attribute__((always_inline)) void q8_weight_row_t(const g4_cmd *c, int R, const uint8_t *wo,
                                                                  const q8_row *x, float *v, int64_t nb, int64_t nsb,
                                                                  const int two) {
    switch (c->qtype) {
#define C40(n) q8_nib_rows(n, two, wo, x, nb, v, 18, 0, 0, 2)
#define C41(n) q8_nib_rows(n, two, wo, x, nb, v, 20, 2, 0, 4)
#define C50(n) q8_nib_rows(n, two, wo, x, nb, v, 22, 0, 2, 6)
#define C51(n) q8_nib_rows(n, two, wo, x, nb, v, 24, 2, 4, 8)
#define C80(n) q8_q8_0_rows(n, two, wo, x, nb, v)
#define C4K(n) q8_k45_rows(n, two, wo, x, nsb, v, 0)
#define C5K(n) q8_k45_rows(n, two, wo, x, nsb, v, 1)
#define C6K(n) q8_q6k_rows(n, two, wo, x, nsb, v)
    case G4_Q4_0: Q8_ROWS_SWITCH(R, C40) break;
    case G4_Q4_1: Q8_ROWS_SWITCH(R, C41) break;
    case G4_Q5_0: Q8_ROWS_SWITCH(R, C50) break;
    case G4_Q5_1: Q8_ROWS_SWITCH(R, C51) break;
    case G4_Q8_0: Q8_ROWS_SWITCH(R, C80) break;
    case G4_Q4_K: Q8_ROWS_SWITCH(R, C4K) break;
    case G4_Q5_K: Q8_ROWS_SWITCH(R, C5K) break;
    case G4_Q6_K: Q8_ROWS_SWITCH(R, C6K) break;
    default: for (int r = 0; r < R; r++) v[r] = 0.0f; break;
#undef C40
#undef C41
#undef C50
#undef C51
#undef C80
#undef C4K
#undef C5K
#undef C6K
    }
}

/* v[r] = W[o] . x[r] for one weight row o against R <= Q8_ROWS_G quantized rows */
static void q8_weight_row(const g4_cmd *c, int R, const uint8_t *wo,
                                                                const q8_row *x, float *v) {
    const int64_t nb = c->in_cols / 32, nsb = c->in_cols / 256;
    if ((c->act & G4_ACT_MODE) == G4_ACT_I16) q8_weight_row_t(c, R, wo, x, v, nb, nsb, 1);
    else q8_weight_row_t(c, R, wo, x, v, nb, nsb, 0);
}

#endif
