/* matvec_q8_zmm.h: the AVX-512 build's multi-row q8 / i16 kernels on repacked weights, two 8-row
 * groups per zmm (included by arch/avx2/matvec_q8_x86.h inside its G4_AVX512 block, after the
 * ymm kernels it shares its helpers with; the ymm kernels stay the AVX2 build's and R = 1's). */
/* ---- AVX-512: repacked Q4_0 two groups at a time (16 weight rows, one zmm lane per row) ----
 * Lanes 0..7 are group g's rows, 8..15 group g + 1's (two 32-byte loads joined): the same
 * repacked layout as the ymm kernel, and per lane the same operations (an exact integer dot,
 * then acc = fma(cvt(dot + bias), dw * d_x, acc)), so the bits equal the ymm kernel's. Per
 * activation row and 16 weight rows a block costs 8 (i16: 16) zmm dots with the activation's
 * 4 bytes as an embedded broadcast and 3 float ops, where the ymm kernel spent twice the float
 * ops, two extra adds and the broadcasts for every 8 rows; the weights of up to 16 activation
 * rows are decoded once per block (Q8R_ROWS_G). */
#define Q8R_PAIR 1
#define Q8R_ROWS_G 16
#if defined(__AVX512VNNI__)
Q8_AI __m512i q8_dpb512(__m512i acc, __m512i u, __m512i s) { return _mm512_dpbusd_epi32(acc, u, s); }
#else
Q8_AI __m512i q8_dpb512(__m512i acc, __m512i u, __m512i s) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}
#endif

/* the 4 activation bytes at p in every lane */
Q8_AI __m512i q8r_bc512(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }

/* sum over chunks c of dot(u[c], p[4c .. 4c+4)) onto init: one chain where several activation
 * rows interleave (CH = 1), else two for latency (integer sums: the same value either way) */
Q8_AI __m512i q8r_plane8_512(const int CH, __m512i init, const __m512i *u, const int8_t *p) {
    if (CH == 1) {
        __m512i a = init;
        for (int c = 0; c < 8; c++) a = q8_dpb512(a, u[c], q8r_bc512(p + 4 * c));
        return a;
    }
    __m512i a = q8_dpb512(init, u[0], q8r_bc512(p)), b = q8_dpb512(_mm512_setzero_si512(), u[1], q8r_bc512(p + 4));
    for (int c = 2; c < 8; c += 2) {
        a = q8_dpb512(a, u[c], q8r_bc512(p + 4 * c));
        b = q8_dpb512(b, u[c + 1], q8r_bc512(p + 4 * c + 4));
    }
    return _mm512_add_epi32(a, b);
}

Q8_AI void q8r2_q4_0_rows(const int R, const int two, const uint8_t *w, int64_t gb, const q8_row *x, int64_t b0,
                          int64_t b1, __m512 *acc) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int CH = R >= 4 ? 1 : 2;
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *p = w + b * 144, *q = p + gb;
        PF(p); PF(p + 64); PF(p + 128); PF(q); PF(q + 64); PF(q + 128);
        const __m512 dw = _mm512_cvtph_ps(_mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)), _mm_loadu_si128((const __m128i *)q), 1));
        __m512i u[8];
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 16 + 32 * c))),
                                                 _mm256_loadu_si256((const __m256i *)(q + 16 + 32 * c)), 1);
            u[c] = _mm512_and_si512(v, m4);
            u[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512i bias = _mm512_set1_epi32(x[r].bias[b]);
            __m512i i;
            if (two) {
                const __m512i h = q8r_plane8_512(CH, _mm512_setzero_si512(), u, x[r].q + b * 32);
                i = _mm512_add_epi32(_mm512_slli_epi32(h, 7), q8r_plane8_512(CH, bias, u, x[r].q2 + b * 32));
            } else {
                i = q8r_plane8_512(CH, bias, u, x[r].q + b * 32);
            }
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, _mm512_set1_ps(x[r].d[b])), acc[r]);
        }
    }
}

/* two groups' 32 (16, 8) bytes at p and p + gb as one zmm (ymm, xmm) */
Q8_AI __m512i q8r_join256(const uint8_t *p, int64_t gb) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)),
                              _mm256_loadu_si256((const __m256i *)(p + gb)), 1);
}
Q8_AI __m256i q8r_join128(const uint8_t *p, int64_t gb) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                   _mm_loadu_si128((const __m128i *)(p + gb)), 1);
}
Q8_AI __m128i q8r_join64(const uint8_t *p, int64_t gb) {
    return _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)p), _mm_loadl_epi64((const __m128i *)(p + gb)));
}

/* the dot of n (4 or 8) chunks with row x's codes at o: q, or 128 q + q2 (i16), from 0 */
Q8_AI __m512i q8r_dotn_512(const int CH, const int n, const int two, const __m512i *u, const q8_row *x, int64_t o) {
    __m512i h;
    if (n == 8) h = q8r_plane8_512(CH, _mm512_setzero_si512(), u, x->q + o);
    else {
        h = q8_dpb512(q8_dpb512(_mm512_setzero_si512(), u[0], q8r_bc512(x->q + o)), u[1], q8r_bc512(x->q + o + 4));
        h = q8_dpb512(q8_dpb512(h, u[2], q8r_bc512(x->q + o + 8)), u[3], q8r_bc512(x->q + o + 12));
    }
    if (!two) return h;
    __m512i l;
    if (n == 8) l = q8r_plane8_512(CH, _mm512_setzero_si512(), u, x->q2 + o);
    else {
        l = q8_dpb512(q8_dpb512(_mm512_setzero_si512(), u[0], q8r_bc512(x->q2 + o)), u[1], q8r_bc512(x->q2 + o + 4));
        l = q8_dpb512(q8_dpb512(l, u[2], q8r_bc512(x->q2 + o + 8)), u[3], q8r_bc512(x->q2 + o + 12));
    }
    return _mm512_add_epi32(_mm512_slli_epi32(h, 7), l);
}

/* repacked Q4_K, two groups: q8r_q4_k_rows's operations per lane */
Q8_AI void q8r2_q4_k_rows(const int R, const int two, const uint8_t *w, int64_t gb, const q8_row *x, int64_t i0,
                          int64_t i1, __m512 *acc, __m512 *am) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int CH = R >= 4 ? 1 : 2;
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *p = w + i * 1184;
        PF(p); PF(p + 64); PF(p + 128); PF(p + gb); PF(p + gb + 64); PF(p + gb + 128);
        const __m512 dw = _mm512_cvtph_ps(q8r_join128(p, gb)), dm = _mm512_cvtph_ps(q8r_join128(p + 16, gb));
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = p + 160 + 256 * j;
            PF(q + 32); PF(q + 96); PF(q + 160); PF(q + 224);
            PF(q + gb + 32); PF(q + gb + 96); PF(q + gb + 160); PF(q + gb + 224);
            __m512i ul[8], uh[8];
            for (int c = 0; c < 8; c++) {
                const __m512i v = q8r_join256(q + 32 * c, gb);
                ul[c] = _mm512_and_si512(v, m4);
                uh[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
            for (int h = 0; h < 2; h++) {
                const int k = 2 * j + h;
                const __m512i *u = h ? uh : ul;
                const __m512 sc = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q8r_join64(p + 32 + 8 * k, gb))));
                const __m512 mn = _mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q8r_join64(p + 96 + 8 * k, gb))));
#pragma GCC unroll 16
                for (int r = 0; r < R; r++) {
                    const int64_t sb = i * 8 + k;
                    const __m512i d = q8r_dotn_512(CH, 8, two, u, &x[r], sb * 32);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sc, _mm512_set1_ps(x[r].d[sb])), acc[r]);
                    am[r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(x[r].sd[sb]), am[r]);
                }
            }
        }
    }
}

/* repacked Q6_K, two groups: q8r_q6_k_sub's operations per lane */
Q8_AI void q8r2_q6_k_sub(const int R, const int two, const uint8_t *p, int64_t gb, const q8_row *x, int64_t i,
                         const int h, const int t, const __m512 d8, __m512 *acc, __m512 *cr) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
    const int CH = R >= 4 ? 1 : 2;
    const int k = 4 * h + t;
    const uint8_t *ql = p + 144 + 512 * h + 32 * 8 * (t & 1), *qh = p + 1168 + 256 * h;
    for (int half = 0; half < 2; half++) {
        const int g = 2 * k + half;
        __m512i u[4];
        for (int cc = 0; cc < 4; cc++) {
            const int c = 4 * half + cc;
            const __m512i l = q8r_join256(ql + 32 * c, gb), hb = q8r_join256(qh + 32 * c, gb);
            const __m512i lo = _mm512_and_si512((t & 2) ? _mm512_srli_epi16(l, 4) : l, m4);
            const __m512i hi = t == 0 ? _mm512_slli_epi16(hb, 4) : t == 1 ? _mm512_slli_epi16(hb, 2)
                             : t == 2 ? hb : _mm512_srli_epi16(hb, 2);
            u[cc] = _mm512_or_si512(lo, _mm512_and_si512(hi, m2));
        }
        const __m512 sc = _mm512_mul_ps(d8, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8r_join64(p + 16 + 8 * g, gb))));
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const int64_t sb = i * 8 + k;
            const __m512i dd = q8r_dotn_512(CH, 4, two, u, &x[r], sb * 32 + 16 * half);
            const __m512 s = _mm512_mul_ps(sc, _mm512_set1_ps(x[r].d[sb]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dd), s, acc[r]);
            cr[r] = _mm512_fmadd_ps(s, _mm512_set1_ps(x[r].s16[i * 16 + g]), cr[r]);
        }
    }
}

Q8_AI void q8r2_q6_k_rows(const int R, const int two, const uint8_t *w, int64_t gb, const q8_row *x, int64_t i0,
                          int64_t i1, __m512 *acc, __m512 *cr) {
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *p = w + i * 1680;
        for (int o = 0; o < 1680; o += 64) { PF(p + o); PF(p + gb + o); }
        const __m512 d8 = _mm512_cvtph_ps(q8r_join128(p, gb));
        for (int h = 0; h < 2; h++) {
            q8r2_q6_k_sub(R, two, p, gb, x, i, h, 0, d8, acc, cr);
            q8r2_q6_k_sub(R, two, p, gb, x, i, h, 1, d8, acc, cr);
            q8r2_q6_k_sub(R, two, p, gb, x, i, h, 2, d8, acc, cr);
            q8r2_q6_k_sub(R, two, p, gb, x, i, h, 3, d8, acc, cr);
        }
    }
}

/* the K-quants' state as two zmm per row (acc, then the mins / offset sums) */
#define Q8R2_SPAN_K(NAME, KERNEL)                                                                          \
    Q8_AI void NAME(const int n, const int two, const uint8_t *wg, int64_t gb, const q8_row *x, int64_t u0,  \
                    int64_t u1, float (*st0)[16], float (*st1)[16]) {                                      \
        __m512 acc[Q8R_ROWS_G], aux[Q8R_ROWS_G];                                                           \
        for (int r = 0; r < n; r++) {                                                                      \
            acc[r] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(st0[r])), _mm256_loadu_ps(st1[r]), 1); \
            aux[r] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(st0[r] + 8)),                 \
                                        _mm256_loadu_ps(st1[r] + 8), 1);                                     \
        }                                                                                                  \
        KERNEL(n, two, wg, gb, x, u0, u1, acc, aux);                                                       \
        for (int r = 0; r < n; r++) {                                                                      \
            _mm256_storeu_ps(st0[r], _mm512_castps512_ps256(acc[r]));                                       \
            _mm256_storeu_ps(st1[r], _mm512_extractf32x8_ps(acc[r], 1));                                    \
            _mm256_storeu_ps(st0[r] + 8, _mm512_castps512_ps256(aux[r]));                                   \
            _mm256_storeu_ps(st1[r] + 8, _mm512_extractf32x8_ps(aux[r], 1));                                \
        }                                                                                                  \
    }
Q8R2_SPAN_K(q8r2_span_q4_k_n, q8r2_q4_k_rows)
Q8R2_SPAN_K(q8r2_span_q6_k_n, q8r2_q6_k_rows)

/* the state of two groups' rows as one zmm per row (group g's acc in lanes 0..7) */
Q8_AI void q8r2_span_q4_0_n(const int n, const int two, const uint8_t *wg, int64_t gb, const q8_row *x, int64_t u0,
                            int64_t u1, float (*st0)[16], float (*st1)[16]) {
    __m512 acc[Q8R_ROWS_G];
    for (int r = 0; r < n; r++)
        acc[r] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(st0[r])), _mm256_loadu_ps(st1[r]), 1);
    q8r2_q4_0_rows(n, two, wg, gb, x, u0, u1, acc);
    for (int r = 0; r < n; r++) {
        _mm256_storeu_ps(st0[r], _mm512_castps512_ps256(acc[r]));
        _mm256_storeu_ps(st1[r], _mm512_extractf32x8_ps(acc[r], 1));
    }
}

#define Q8R_ROWS_SWITCH(R, CALL) switch (R) { case 1: CALL(1); break; case 2: CALL(2); break; \
    case 3: CALL(3); break; case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break; \
    case 7: CALL(7); break; case 8: CALL(8); break; case 9: CALL(9); break; case 10: CALL(10); break; \
    case 11: CALL(11); break; case 12: CALL(12); break; case 13: CALL(13); break; \
    case 14: CALL(14); break; case 15: CALL(15); break; default: CALL(16); break; }
/* Q6_K's kernel, with two zmm of state per row and 4-chunk dots, at most 8 rows per call (16
 * spilled: measured 1.3x slower per row) */
#define Q8R_ROWS_SWITCH8(R, CALL) switch (R) { case 1: CALL(1); break; case 2: CALL(2); break; \
    case 3: CALL(3); break; case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break; \
    case 7: CALL(7); break; default: CALL(8); break; }
/* one span function per type: the row count and the mode as literals for the inlined kernel */
#define Q8R2_SPAN(NAME, KN, SWITCH)                                                                        \
    static __attribute__((noinline)) void NAME(int R, int two, const uint8_t *wg, int64_t gb, const q8_row *x, \
                                               int64_t u0, int64_t u1, float (*st0)[16], float (*st1)[16]) { \
        if (two) {                                                                                          \
            SWITCH(R, KN##_1)                                                                               \
        } else {                                                                                            \
            SWITCH(R, KN##_0)                                                                               \
        }                                                                                                   \
    }
#define q8r2_span_q4_0_n_1(n) q8r2_span_q4_0_n(n, 1, wg, gb, x, u0, u1, st0, st1)
#define q8r2_span_q4_0_n_0(n) q8r2_span_q4_0_n(n, 0, wg, gb, x, u0, u1, st0, st1)
#define q8r2_span_q4_k_n_1(n) q8r2_span_q4_k_n(n, 1, wg, gb, x, u0, u1, st0, st1)
#define q8r2_span_q4_k_n_0(n) q8r2_span_q4_k_n(n, 0, wg, gb, x, u0, u1, st0, st1)
#define q8r2_span_q6_k_n_1(n) q8r2_span_q6_k_n(n, 1, wg, gb, x, u0, u1, st0, st1)
#define q8r2_span_q6_k_n_0(n) q8r2_span_q6_k_n(n, 0, wg, gb, x, u0, u1, st0, st1)
Q8R2_SPAN(q8r2_span_q4_0, q8r2_span_q4_0_n, Q8R_ROWS_SWITCH)
Q8R2_SPAN(q8r2_span_q4_k, q8r2_span_q4_k_n, Q8R_ROWS_SWITCH)
Q8R2_SPAN(q8r2_span_q6_k, q8r2_span_q6_k_n, Q8R_ROWS_SWITCH8)

/* Units [u0, u1) of groups wg and wg + gb together (R <= Q8R_ROWS_G rows): 0 where this type has
 * no pair kernel (the driver then runs the groups one at a time). */
static int q8_repacked_span2(const g4_cmd *c, int R, const uint8_t *wg, int64_t gb, const q8_row *x, int64_t u0,
                             int64_t u1, float (*st0)[16], float (*st1)[16]) {
    const int two = (c->act & G4_ACT_MODE) == G4_ACT_I16;
    if (c->qtype == G4_Q4_0) {
        q8r2_span_q4_0(R, two, wg, gb, x, u0, u1, st0, st1);
        return 1;
    }
    if (c->qtype == G4_Q4_K) {
        q8r2_span_q4_k(R, two, wg, gb, x, u0, u1, st0, st1);
        return 1;
    }
    if (c->qtype != G4_Q6_K) return 0;
    for (int r0 = 0; r0 < R; r0 += 8) {      /* 8 rows a turn over the span (its weights in L1) */
        const int n = R - r0 < 8 ? R - r0 : 8;
        q8r2_span_q6_k(n, two, wg, gb, x + r0, u0, u1, st0 + r0, st1 + r0);
    }
    return 1;
}
