/* Why batching several sequences scales as it does on this CPU: the Q4_0 decode matvec in three
 * arithmetic forms, for 1, 2 and 4 activation rows against the same weight rows, plus the
 * throughput of the vector instructions they are made of (docs/benchmarks/batching.md).
 *
 *   cc -O3 -mavx2 -mfma -mf16c -mbmi2 -Ishaders/cpu scripts/q4_0_forms.c -o /tmp/q4_0_forms -lm
 *   /tmp/q4_0_forms 15360 3840        # N output rows, K inputs (a 12B FFN matrix)
 *
 * A = the shipped kernel (q4_0_rows_t of shaders/cpu/arch/avx2/matvec.c, included below): x re-expressed
 *     per block so a row costs six FMAs and six loads per 32 weights, the nibbles shared.
 * B = weights decoded once per block to d*(q-8) (exact in float), four FMAs per row.
 * C = weights decoded to q-8, per-row partial sums scaled by d (five FP ops per row).
 * B2 = B with the small-integer -> float conversions done as OR + subtract.
 * I = NOT exact: x rounded to int16 per 32-block (scale max|x| / 32767), products by pmaddwd in
 *     int32, one convert per block and row (an int16-activation path: see STATUS.md "Next").
 * Measure on a quiet machine: ratios within one run only. */
#define _POSIX_C_SOURCE 200809L
#include "../shaders/cpu/g4cpu.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if !defined(G4_AVX2) || defined(G4_AVX512)
int main(void) { puts("needs an AVX2 build (-mavx2 -mfma -mf16c, not the AVX-512 flags)"); return 0; }
#else
#include "../shaders/cpu/f16_table.c"
#include "../shaders/cpu/repack.c"   /* the q8 path of matvec.c uses its group sizes */
#include "../shaders/cpu/arch/avx2/matvec.c"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* Small non-negative integers to float as an OR into the mantissa of 2^23 and a subtraction
 * (exact for 0..2^23: the same floats cvtdq2ps gives). */
static inline __m256 small_u32_to_ps(__m256i v) {
    const __m256 two23 = _mm256_set1_ps(8388608.0f);
    return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(v, _mm256_castps_si256(two23))), two23);
}
static inline __m256 cvt_u32_to_ps(__m256i v) { return _mm256_cvtepi32_ps(v); }

/* B: the block's weights decoded once to d*(q-8) (exact), four FMAs per row; `conv` turns the
 * nibbles into floats. */
G4_AI_MV void form_b_t(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out,
                       __m256 (*conv)(__m256i)) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 a0[4], a1[4];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        PF(p);
        const __m256i va = zx8(p + 2), vb = zx8(p + 10);
        const __m256 d = _mm256_set1_ps(HT(p)), o = _mm256_set1_ps(-8.0f * HT(p));
        const __m256 w0 = _mm256_fmadd_ps(conv(_mm256_and_si256(va, m4)), d, o);
        const __m256 w1 = _mm256_fmadd_ps(conv(_mm256_and_si256(vb, m4)), d, o);
        const __m256 w2 = _mm256_fmadd_ps(conv(_mm256_srli_epi32(va, 4)), d, o);
        const __m256 w3 = _mm256_fmadd_ps(conv(_mm256_srli_epi32(vb, 4)), d, o);
        for (int r = 0; r < R; r++) {
            const float *xb = x[r] + b * QK;
            a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), a0[r]);
            a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), a1[r]);
            a0[r] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), a0[r]);
            a1[r] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), a1[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
}
G4_AI_MV void form_b(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    form_b_t(R, w, x, nb, out, cvt_u32_to_ps);
}
G4_AI_MV void form_b2(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    form_b_t(R, w, x, nb, out, small_u32_to_ps);
}

G4_AI_MV void form_c(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    const __m256i m4 = _mm256_set1_epi32(15), e8 = _mm256_set1_epi32(8);
    __m256 a[4];
    for (int r = 0; r < R; r++) a[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        PF(p);
        const __m256i va = zx8(p + 2), vb = zx8(p + 10);
        const __m256 d = _mm256_set1_ps(HT(p));
        const __m256 w0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(va, m4), e8));
        const __m256 w1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(vb, m4), e8));
        const __m256 w2 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(va, 4), e8));
        const __m256 w3 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(vb, 4), e8));
        for (int r = 0; r < R; r++) {
            const float *xb = x[r] + b * QK;
            __m256 s0 = _mm256_mul_ps(w0, _mm256_loadu_ps(xb)), s1 = _mm256_mul_ps(w1, _mm256_loadu_ps(xb + 8));
            s0 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), s0);
            s1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), s1);
            a[r] = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), d, a[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(a[r]);
}

/* I: xi = [nb * 32 int16 | nb float scales] per row. */
G4_AI_MV void form_i(const int R, const uint8_t *w, const float *const *x, int64_t nb, float *out) {
    const __m256i m4 = _mm256_set1_epi16(15), e8 = _mm256_set1_epi16(8);
    __m256 a[4];
    for (int r = 0; r < R; r++) a[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        PF(p);
        const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + 2)));
        const __m256i lo = _mm256_sub_epi16(_mm256_and_si256(v, m4), e8);
        const __m256i hi = _mm256_sub_epi16(_mm256_srli_epi16(v, 4), e8);
        const __m256 d = _mm256_set1_ps(HT(p));
        for (int r = 0; r < R; r++) {
            const int16_t *xb = (const int16_t *)x[r] + b * QK;
            const float *scale = (const float *)((const int16_t *)x[r] + nb * QK) + b;
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *)xb)),
                                               _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *)(xb + 16))));
            a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_broadcast_ss(scale)), a[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(a[r]);
}

typedef void (*form_fn)(const uint8_t *, const float *const *, int64_t, float *);
#define FORMS(F) \
    static void F##_1(const uint8_t *w, const float *const *x, int64_t nb, float *o) { F(1, w, x, nb, o); } \
    static void F##_2(const uint8_t *w, const float *const *x, int64_t nb, float *o) { F(2, w, x, nb, o); } \
    static void F##_4(const uint8_t *w, const float *const *x, int64_t nb, float *o) { F(4, w, x, nb, o); }
FORMS(q4_0_rows_t) FORMS(form_b) FORMS(form_b2) FORMS(form_c) FORMS(form_i)

/* Independent chains of one instruction: its throughput in instructions per ns. */
#define CHAINS(T, INIT, OP) do { \
        T c0 = INIT, c1 = INIT, c2 = INIT, c3 = INIT, c4 = INIT, c5 = INIT, c6 = INIT, c7 = INIT; \
        const long n = 50000000; double t0 = now(); \
        for (long i = 0; i < n; i++) { \
            __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3)); \
            c0 = OP(c0); c1 = OP(c1); c2 = OP(c2); c3 = OP(c3); c4 = OP(c4); c5 = OP(c5); c6 = OP(c6); c7 = OP(c7); } \
        double t = now() - t0; volatile T sink = c0; sink = c1; sink = c2; sink = c3; sink = c4; sink = c5; sink = c6; sink = c7; (void)sink; \
        printf("  %-22s %.2f per ns\n", #OP, 8.0 * n / t / 1e9); } while (0)
#define FMA_OP(v) _mm256_fmadd_ps(v, _mm256_set1_ps(0.999f), _mm256_set1_ps(0.001f))
#define MADDUBS_OP(v) _mm256_maddubs_epi16(_mm256_set1_epi8(3), v)
#define CVT_OP(v) _mm256_castps_si256(_mm256_cvtepi32_ps(v))
#define OR_SUB_OP(v) _mm256_castps_si256(small_u32_to_ps(v))

int main(int argc, char **argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 15360, K = argc > 2 ? atoi(argv[2]) : 3840;
    const int64_t nb = K / QK, rb = nb * 18;
    g4_f16tab_ready();
    uint8_t *W = aligned_alloc(64, (size_t)N * rb);
    for (size_t i = 0; i < (size_t)N * rb; i++) W[i] = (uint8_t)rand();
    for (int64_t o = 0; o < N; o++)
        for (int64_t b = 0; b < nb; b++) { uint16_t h = 0x2000 + (rand() & 0xff); memcpy(W + o * rb + b * 18, &h, 2); }
    g4_cmd c = {0};
    c.op = G4_OP_MATMUL; c.qtype = G4_Q4_0; c.in_cols = K;
    float *x[4], *xq[4], *xi[4], *y = malloc((size_t)N * 4 * sizeof(float)), *y_a = malloc((size_t)N * 4 * sizeof(float));
    for (int r = 0; r < 4; r++) {
        x[r] = aligned_alloc(64, (size_t)K * sizeof(float));
        xq[r] = aligned_alloc(64, g4_matvec_scratch(&c) + 64);
        for (int i = 0; i < K; i++) x[r][i] = rand() / (float)RAND_MAX - 0.5f;
        g4_matvec_prepare(&c, x[r], xq[r]);
        xi[r] = aligned_alloc(64, (size_t)nb * (QK * sizeof(int16_t) + sizeof(float)) + 64);
        int16_t *q = (int16_t *)xi[r];
        float *scale = (float *)(q + nb * QK);
        for (int64_t b = 0; b < nb; b++) {
            float m = 0;
            for (int i = 0; i < QK; i++) m = fmaxf(m, fabsf(x[r][b * QK + i]));
            scale[b] = m / 32767.0f;
            for (int i = 0; i < QK; i++) q[b * QK + i] = (int16_t)lrintf(m > 0 ? x[r][b * QK + i] / scale[b] : 0);
        }
    }
    float **inputs[] = {x, xq, xi};    /* plain x, A's re-expressed x, I's int16 x */
    const struct { const char *name; form_fn f[3]; int input; } forms[] = {
        {"A (shipped)", {q4_0_rows_t_1, q4_0_rows_t_2, q4_0_rows_t_4}, 1},
        {"B d*(q-8)", {form_b_1, form_b_2, form_b_4}, 0},
        {"B2 (B, OR)", {form_b2_1, form_b2_2, form_b2_4}, 0},
        {"C q-8, *d", {form_c_1, form_c_2, form_c_4}, 0},
        {"I int16 x", {form_i_1, form_i_2, form_i_4}, 2}};
    printf("Q4_0 matvec %d x %d, one thread, best of 7 (ns per 32-weight block; x = vs 1 row)\n", N, K);
    for (int k = 0; k < 5; k++) {
        double t1 = 0;
        printf("  %-12s", forms[k].name);
        for (int ri = 0; ri < 3; ri++) {
            double best = 1e9;
            for (int it = 0; it < 7; it++) {
                const double t0 = now();
                for (int64_t o = 0; o < N; o++)
                    forms[k].f[ri](W + o * rb, (const float *const *)inputs[forms[k].input], nb, y + 4 * o);
                const double t = now() - t0;
                best = t < best ? t : best;
            }
            if (ri == 0) t1 = best;
            if (k == 0) memcpy(y_a, y, (size_t)N * 4 * sizeof(float));
            printf("  R=%d %6.2f (x%.2f)", 1 << ri, best * 1e9 / N / nb, best / t1);
        }
        double big = 0, diff = 0;      /* the 4-row results against A's (rounding; I: int16 x) */
        for (int64_t i = 0; i < (int64_t)N * 4; i++) {
            big = fmax(big, fabs(y_a[i]));
            diff = fmax(diff, fabs(y[i] - y_a[i]));
        }
        printf("  maxrel %.1e\n", diff / big);
    }
    printf("instruction throughput (8 independent chains):\n");
    CHAINS(__m256, _mm256_set1_ps(0.1f), FMA_OP);
    CHAINS(__m256i, _mm256_set1_epi8(1), MADDUBS_OP);
    CHAINS(__m256i, _mm256_set1_epi32(3), CVT_OP);
    CHAINS(__m256i, _mm256_set1_epi32(3), OR_SUB_OP);
    return 0;
}
#endif
