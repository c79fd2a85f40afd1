/* MatMul: out[r, o] = sum_i a[r, i] * W[o, i]   (r < rows, o < cols = w_rows, i < K = in_cols)
 *
 * fp32-exact: weights are decoded exactly to float32 (g4_dequant_row), activations stay float32,
 * products accumulate with float32 FMA.
 *
 * Few rows (decode): each thread prepares every activation row once (g4_matvec_prepare), then
 * claims chunks of output features (g4_chunk) and runs g4_matvec (matvec.c) for each row on the
 * chunk, so a chunk's weights come from memory once and stay in cache for the other rows.
 *
 * More rows (prefill): a register-tiled GEMM in the spirit of llamafile's tinyBLAS / GotoBLAS.
 * A task is TP micro-panels of NR weight rows (x a token range when the output is narrow):
 *   for each K-block of KC values:
 *     decode the task's weight rows [o, o + NR) x [k0, k0 + KC) with g4_dequant_row and transpose
 *     them into k-major panels ([KC][NR] floats, 64-byte aligned, in the thread's scratch) -- one
 *     k gives NR contiguous floats = NR/16 zmm or NR/8 ymm;
 *     for each panel, for each tile of MR tokens: the micro-kernel broadcasts a[t][k] and FMAs
 *     it into MR x NR accumulators held in registers, then adds them into out.
 * Edges: a token tile of m < MR rows uses the m-row instance of the micro-kernel; a panel of
 * n < NR weight rows is zero-padded and goes through an MR x NR staging tile on the stack;
 * the last K-block may be shorter than KC (K is always a multiple of the type's block size).
 * No barrier: threads claim tasks with g4_chunk and write disjoint parts of out.
 */
#include "g4cpu.h"

/* ---- tile sizes (overridable with -D for tuning) ---- */
#if defined(G4_AVX512)
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 12
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 32
#endif
#elif defined(G4_AVX2)
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 6
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 16
#endif
#else
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 4
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 16
#endif
#endif
#ifndef G4_GEMM_KC
#define G4_GEMM_KC 768          /* a multiple of 256 (the K-quant block) */
#endif
#ifndef G4_GEMM_TP
#define G4_GEMM_TP 4            /* most micro-panels per task */
#endif
#ifndef G4_GEMM_MATVEC_ROWS
#define G4_GEMM_MATVEC_ROWS 1   /* rows <= this go through matvec.c */
#endif

#define MR G4_GEMM_MR
#define NR G4_GEMM_NR
#define KC G4_GEMM_KC
#define TP G4_GEMM_TP

#if KC % 256 != 0
#error "G4_GEMM_KC must be a multiple of 256"
#endif

#define G4_ALIGN64(x) (((size_t)(x) + 63) & ~(size_t)63)
#define G4_INLINE static inline __attribute__((always_inline))

/* ---- vector abstraction for the micro-kernel ---- */
#if defined(G4_AVX512)
typedef __m512 vf;
#define VL 16
#define V_LOADA(p) _mm512_load_ps(p)
#define V_LOADU(p) _mm512_loadu_ps(p)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_SET1(x) _mm512_set1_ps(x)
#define V_ZERO() _mm512_setzero_ps()
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#elif defined(G4_AVX2)
typedef __m256 vf;
#define VL 8
#define V_LOADA(p) _mm256_load_ps(p)
#define V_LOADU(p) _mm256_loadu_ps(p)
#define V_STOREU(p, v) _mm256_storeu_ps(p, v)
#define V_SET1(x) _mm256_set1_ps(x)
#define V_ZERO() _mm256_setzero_ps()
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#endif

#if defined(G4_AVX2)
#if NR % VL != 0
#error "G4_GEMM_NR must be a multiple of the vector width"
#endif
#define NV (NR / VL)

/* c[i][0..NR) (+)= sum_k a[i][k] * p[k][0..NR) for i < m; p is a 64-byte aligned [kc][NR] panel. */
G4_INLINE void ukr_body(const int m, const float *restrict a, int64_t lda, const float *restrict p,
                        int kc, float *restrict c, int64_t ldc, int accumulate) {
    vf acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < m; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) acc[i][j] = accumulate ? V_LOADU(c + i * ldc + j * VL) : V_ZERO();
    for (int k = 0; k < kc; k++) {
        vf w[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) w[j] = V_LOADA(p + (size_t)k * NR + j * VL);
#pragma GCC unroll 16
        for (int i = 0; i < m; i++) {
            vf b = V_SET1(a[i * lda + k]);
#pragma GCC unroll 8
            for (int j = 0; j < NV; j++) acc[i][j] = V_FMA(b, w[j], acc[i][j]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < m; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) V_STOREU(c + i * ldc + j * VL, acc[i][j]);
}

#else /* portable C: plain loops, left to the compiler's vectorizer */

G4_INLINE void ukr_body(const int m, const float *restrict a, int64_t lda, const float *restrict p,
                        int kc, float *restrict c, int64_t ldc, int accumulate) {
    float acc[MR][NR];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = accumulate ? c[i * ldc + j] : 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *w = p + (size_t)k * NR;
        for (int i = 0; i < m; i++) {
            float b = a[i * lda + k];
            for (int j = 0; j < NR; j++) acc[i][j] += b * w[j];
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
}
#endif

typedef void (*ukr_fn)(const float *restrict, int64_t, const float *restrict, int, float *restrict, int64_t, int);

#define G4_UKR(M)                                                                                  \
    static void ukr_##M(const float *restrict a, int64_t lda, const float *restrict p, int kc,    \
                        float *restrict c, int64_t ldc, int acc) {                                \
        ukr_body((M) <= MR ? (M) : MR, a, lda, p, kc, c, ldc, acc);                               \
    }
G4_UKR(1) G4_UKR(2) G4_UKR(3) G4_UKR(4) G4_UKR(5) G4_UKR(6) G4_UKR(7) G4_UKR(8)
G4_UKR(9) G4_UKR(10) G4_UKR(11) G4_UKR(12) G4_UKR(13) G4_UKR(14) G4_UKR(15) G4_UKR(16)

#if MR > 16
#error "G4_GEMM_MR must be <= 16"
#endif

static const ukr_fn ukr_tab[17] = {
    NULL, ukr_1, ukr_2, ukr_3, ukr_4, ukr_5, ukr_6, ukr_7, ukr_8,
    ukr_9, ukr_10, ukr_11, ukr_12, ukr_13, ukr_14, ukr_15, ukr_16,
};

/* ---- packing: rows [0, n) of src (row stride ld floats) x [0, kc) -> dst[k][NR], zero rows >= n ---- */
#if defined(G4_AVX2)
G4_INLINE void tr8x8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

/* Transpose 8 (or fewer: n8 valid) rows j0..j0+7 of src into columns j0..j0+7 of dst. */
static void pack8(const float *src, int64_t ld, int n8, int kc, float *dst, int j0) {
    int k = 0;
#if defined(G4_AVX2)
    if (n8 == 8) {
        for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + j * ld + k);
            tr8x8(r);
            for (int q = 0; q < 8; q++) _mm256_storeu_ps(dst + (size_t)(k + q) * NR + j0, r[q]);
        }
    }
#endif
    for (; k < kc; k++)
        for (int j = 0; j < 8; j++) dst[(size_t)k * NR + j0 + j] = j < n8 ? src[j * ld + k] : 0.0f;
}

/* Decode weight rows [o0, o0 + n) x [k0, k0 + kc) into the k-major panel dst ([kc][NR]). */
static void pack_panel(const g4_cmd *c, int64_t o0, int n, int64_t k0, int kc, float *dst, float *tmp) {
    const uint8_t *w = (const uint8_t *)c->w;
    for (int j0 = 0; j0 < NR; j0 += 8) {
        int n8 = n - j0;
        if (n8 > 8) n8 = 8;
        if (n8 <= 0) {      /* padding rows */
            for (int k = 0; k < kc; k++) memset(dst + (size_t)k * NR + j0, 0, 8 * sizeof(float));
            continue;
        }
        if (c->qtype == G4_F32 && (c->w_row_bytes & 3) == 0) {
            pack8((const float *)(w + (o0 + j0) * c->w_row_bytes) + k0, c->w_row_bytes / 4, n8, kc, dst, j0);
        } else {
            for (int j = 0; j < n8; j++)
                g4_dequant_row(c->qtype, w + (o0 + j0 + j) * c->w_row_bytes, k0, kc, tmp + (size_t)j * KC);
            pack8(tmp, KC, n8, kc, dst, j0);
        }
    }
}

/* Rows [r0, r1) x panel (n valid cols at out col o0), one K-block. */
static void tile_rows(const g4_cmd *c, const float *panel, int64_t o0, int n, int64_t k0, int kc,
                      int64_t r0, int64_t r1) {
    const int64_t K = c->in_cols, N = c->cols;
    const int acc = k0 > 0;
    for (int64_t r = r0; r < r1; r += MR) {
        int m = (int)(r1 - r < MR ? r1 - r : MR);
        const float *a = c->a + r * K + k0;
        float *out = c->out + r * N + o0;
        if (n == NR) {
            ukr_tab[m](a, K, panel, kc, out, N, acc);
        } else {
            float cb[MR * NR] __attribute__((aligned(64)));
            if (acc)
                for (int i = 0; i < m; i++) memcpy(cb + i * NR, out + i * N, (size_t)n * sizeof(float));
            ukr_tab[m](a, K, panel, kc, cb, NR, acc);
            for (int i = 0; i < m; i++) memcpy(out + i * N, cb + i * NR, (size_t)n * sizeof(float));
        }
    }
}

/* Task geometry: np micro-panels per task, nrb token blocks of rb rows. */
typedef struct { int64_t n_panels, tp, n_ptask, rb, nrb; } gemm_plan;

static gemm_plan plan_of(const g4_cmd *c, int nth) {
    gemm_plan p;
    p.n_panels = (c->cols + NR - 1) / NR;
    /* as many panels per task as keep >= 4 tasks per thread (decode once, reuse A more) */
    p.tp = TP;
    while (p.tp > 1 && (p.n_panels + p.tp - 1) / p.tp < 4 * (int64_t)nth) p.tp >>= 1;
    p.n_ptask = (p.n_panels + p.tp - 1) / p.tp;
    /* a narrow output: also split tokens (each block decodes the weights again) */
    int64_t tiles = (c->rows + MR - 1) / MR, nrb = 1;
    if (p.n_ptask < 4 * (int64_t)nth && tiles > 1) {
        nrb = (4 * (int64_t)nth + p.n_ptask - 1) / p.n_ptask;
        if (nrb > tiles) nrb = tiles;
    }
    int64_t tiles_per = (tiles + nrb - 1) / nrb;
    p.rb = tiles_per * MR;
    p.nrb = (c->rows + p.rb - 1) / p.rb;
    return p;
}

static size_t tiled_scratch(void) {
    return G4_ALIGN64((size_t)TP * KC * NR * sizeof(float)) + G4_ALIGN64((size_t)8 * KC * sizeof(float));
}

static size_t matvec_ws(const g4_cmd *c) { return G4_ALIGN64(g4_matvec_scratch(c)); }

size_t g4_matmul_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    if (c->rows <= G4_GEMM_MATVEC_ROWS) return matvec_ws(c) * (size_t)(c->rows > 0 ? c->rows : 1);
    return tiled_scratch();
}

static void matmul_matvec(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t K = c->in_cols, N = c->cols;
    const int rows = c->rows;
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    const size_t mw = matvec_ws(c);
    for (int r = 0; r < rows; r++) g4_matvec_prepare(c, c->a + r * K, ws + r * mw);
    /* chunks of 16..64 features, ~8 per thread at least */
    int64_t cs = N / (8 * (int64_t)nth);
    cs = cs < 16 ? 16 : cs > 64 ? 64 : (cs + 15) & ~(int64_t)15;
    for (;;) {
        int64_t o0 = g4_chunk(ex) * cs;
        if (o0 >= N) break;
        int64_t o1 = o0 + cs < N ? o0 + cs : N;
        for (int r = 0; r < rows; r++) g4_matvec(c, c->a + r * K, ws + r * mw, c->out + r * N, o0, o1);
    }
}

void g4_k_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    if (c->rows <= 0 || c->cols <= 0) return;
    if (c->rows <= G4_GEMM_MATVEC_ROWS) {
        matmul_matvec(c, ex, ith, nth);
        return;
    }
    if (c->in_cols <= 0) {   /* empty sum */
        for (;;) {
            int64_t t = g4_chunk(ex);
            if (t >= c->rows) break;
            memset(c->out + t * c->cols, 0, (size_t)c->cols * sizeof(float));
        }
        return;
    }
    const gemm_plan p = plan_of(c, nth);
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    float *panels = (float *)ws;
    float *tmp = (float *)(ws + G4_ALIGN64((size_t)TP * KC * NR * sizeof(float)));
    const int64_t K = c->in_cols, N = c->cols;
    for (;;) {
        int64_t t = g4_chunk(ex);
        if (t >= p.n_ptask * p.nrb) break;
        int64_t pt = t / p.nrb, rbi = t % p.nrb;
        int64_t pb0 = pt * p.tp, pb1 = pb0 + p.tp < p.n_panels ? pb0 + p.tp : p.n_panels;
        int64_t r0 = rbi * p.rb, r1 = r0 + p.rb < c->rows ? r0 + p.rb : c->rows;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int kc = (int)(K - k0 < KC ? K - k0 : KC);
            for (int64_t pb = pb0; pb < pb1; pb++) {
                int64_t o0 = pb * NR;
                int n = (int)(N - o0 < NR ? N - o0 : NR);
                pack_panel(c, o0, n, k0, kc, panels + (size_t)(pb - pb0) * KC * NR, tmp);
            }
            /* token tiles outer: a tile's A block (MR x kc) stays in L1 across the task's
             * panels, which stream from L2 */
            for (int64_t r = r0; r < r1; r += MR) {
                int64_t re = r + MR < r1 ? r + MR : r1;
                for (int64_t pb = pb0; pb < pb1; pb++) {
                    int64_t o0 = pb * NR;
                    int n = (int)(N - o0 < NR ? N - o0 : NR);
                    tile_rows(c, panels + (size_t)(pb - pb0) * KC * NR, o0, n, k0, kc, r, re);
                }
            }
        }
    }
}
