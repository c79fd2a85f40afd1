/* MatMul: out[r, o] = sum_i a[r, i] * W[o, i]   (r < rows, o < cols = w_rows, i < K = in_cols)
 *
 * fp32-exact: weights are decoded exactly to float32 (g4_dequant_row, or read as is for F32),
 * activations stay float32, products accumulate in float32 (FMA on AVX2 / AVX-512).
 *
 * Few rows (decode, and batches up to G4_ROW_EXACT_MAX rows, which must be row-exact): each thread
 * prepares every activation row once (g4_matvec_prepare, into its own scratch), then claims
 * chunks of 16..64 output features (g4_chunk) and runs g4_matvec (arch/<isa>/matvec.c) for each row on the
 * chunk, so a chunk's weights come from memory once and stay in cache for the other rows.
 *
 * More rows (prefill): a register-tiled GEMM after llamafile's tinyBLAS / GotoBLAS. A task
 * (claimed with g4_chunk) is up to TP micro-panels of NR weight rows, x a token range when the
 * output is too narrow to give every thread 4 tasks. For each K-block of KC values:
 *   pack: decode the task's weight rows [o, o + NR) x [k0, k0 + KC) 256 values at a time into an
 *     L1 buffer and transpose them 8 x 8 into k-major panels ([KC][NR] floats, 64-byte aligned,
 *     in the thread's scratch): one k gives NR contiguous floats = NR/16 zmm or NR/8 ymm;
 *   compute: for each tile of MR tokens, for each panel, the micro-kernel broadcasts a[t][k]
 *     and FMAs it into MR x NR accumulators held in registers, then adds them into out (token
 *     tiles outer: the tile's MR x KC activations stay in L1 while the panels stream from L2).
 * Tiles (sizes in gemm.h, micro-kernels and panel transposes in arch/<isa>/gemm.c): AVX-512
 * 12 x 32 (24 zmm accumulators), AVX2 6 x 16 (12 ymm), portable 4 x 16 (GCC vectors);
 * KC 512 / 768 / 512; TP = 4. On Sapphire Rapids (1 core, 512 x 3840 . 3840 x 15360,
 * decode included) that is ~135-147 GFLOP/s of a 170 FMA peak with AVX-512 and ~75-80 of ~89
 * with AVX2, for F32, Q4_0 and Q4_K weights alike; 12 x 32, 14 x 32, 8 x 48 and 6 x 64 (and
 * 4 x 24 on AVX2) measured the same within noise, and all reach ~97 % of peak with data in L1.
 * Edges: a token tile of m < MR rows uses the m-row instance of the micro-kernel; a panel of
 * n < NR weight rows is zero-padded and goes through an MR x NR staging tile on the stack;
 * the last K-block may be shorter than KC (K is always a multiple of the type's block size).
 * No barrier: threads claim tasks with g4_chunk and write disjoint parts of out.
 *
 * The q8 path (c->act, q8.h) has no tiled product: its multi-row matvec kernels decode a weight
 * block once for a group of rows and take one integer dot per row, which is the work of a GEMM
 * tile already, and keeps every row's bits those of its one-row step. Batches of more than
 * G4_ROW_EXACT_MAX rows quantize their rows once into the shared scratch (threads take every
 * nth row, then a barrier) and hand out tasks of 16..64 features x 16 rows.
 */
#include <string.h>

#include "gemm.h"

/* ---- packing: weight rows -> k-major panel ----
 * The K-block is decoded PK values at a time for all NR rows into tmp ([NR][PK], L1-resident),
 * then transposed into the panel (g4_gemm_pack_k), so the panel is written in whole rows of NR
 * floats, front to back. */
static const float g4_zero_row[PK] __attribute__((aligned(64)));

/* Decode weight rows [o0, o0 + n) x [k0, k0 + kc) into the k-major panel dst ([kc][NR]); rows
 * n..NR-1 of the panel are zero. tmp: NR * PK floats. */
static void pack_panel(const g4_cmd *c, int64_t o0, int n, int64_t k0, int kc, float *dst, float *tmp) {
    const uint8_t *w = (const uint8_t *)c->w;
    const int direct = c->qtype == G4_F32 && (c->w_row_bytes & 3) == 0;
    const float *src[NR];
    for (int ks = 0; ks < kc; ks += PK) {
        const int kb = kc - ks < PK ? kc - ks : PK;
        for (int j = 0; j < NR; j++) {
            if (j >= n) {
                src[j] = g4_zero_row;
            } else if (direct) {
                src[j] = (const float *)(w + (o0 + j) * c->w_row_bytes) + k0 + ks;
            } else {
                g4_dequant_row(c->qtype, w + (o0 + j) * c->w_row_bytes, k0 + ks, kb, tmp + (size_t)j * PK);
                src[j] = tmp + (size_t)j * PK;
            }
        }
        g4_gemm_pack_k(src, kb, dst + (size_t)ks * NR);
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
            g4_gemm_ukr[m](a, K, panel, kc, out, N, acc);
        } else {
            float cb[MR * NR] __attribute__((aligned(64)));
            if (acc)
                for (int i = 0; i < m; i++) memcpy(cb + i * NR, out + i * N, (size_t)n * sizeof(float));
            g4_gemm_ukr[m](a, K, panel, kc, cb, NR, acc);
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
    return G4_ALIGN64((size_t)TP * KC * NR * sizeof(float)) + G4_ALIGN64((size_t)NR * PK * sizeof(float));
}

static size_t matvec_ws(const g4_cmd *c) { return G4_ALIGN64(g4_matvec_scratch(c)); }

/* Most rows that go through the matvec (per row, with the weights of a chunk reused from cache)
 * rather than the tiled path, whose fixed cost is decoding + packing every weight once. Measured
 * on a 3840 x 15360 product (Sapphire Rapids, 1 thread): the rows where both cost the same. */
/* Row-exact batches (g4cpu.h) take the matvec path. It was also measured the faster one up to
 * 1 (F32) .. 8 (Q4_0, Q8_0) rows; from there to 16 rows it costs prefill some speed for exactness. */
static int use_matvec(const g4_cmd *c) {
    if (c->act & G4_ACT_ROW_EXACT) return 1;      /* any size, in row groups (matmul_matvec) */
#ifdef G4_GEMM_MATVEC_ROWS
    return c->rows <= G4_GEMM_MATVEC_ROWS && c->rows <= G4_ROW_EXACT_MAX;   /* tests: tiled from here */
#else
    return c->rows <= G4_ROW_EXACT_MAX;
#endif
}

/* a q8 batch too large for the per-thread scratch: its rows quantized once, shared */
static int q8_batch(const g4_cmd *c) { return (c->act & G4_ACT_MODE) != 0 && c->rows > G4_ROW_EXACT_MAX && g4_matvec_scratch(c) > 0; }

size_t g4_matmul_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    if (q8_batch(c)) return 0;
    if (use_matvec(c)) return matvec_ws(c) * (size_t)(c->rows <= 0 ? 1 : c->rows < G4_ROW_EXACT_MAX ? c->rows : G4_ROW_EXACT_MAX);
    return tiled_scratch();
}

size_t g4_matmul_shared(const g4_cmd *c, int nth) {
    (void)nth;
    return q8_batch(c) ? matvec_ws(c) * (size_t)c->rows : 0;
}

static void matmul_q8_batch(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows;
    const size_t mw = matvec_ws(c);
    uint8_t *sh = ex->shared;
    for (int64_t r = ith; r < R; r += nth) g4_matvec_prepare(c, c->a + r * K, sh + (size_t)r * mw);
    g4_barrier(ex);
    const int64_t cs = g4_feature_chunk(c->cols, c->rows, nth, 1), RB = G4_ROW_EXACT_MAX;
    const int64_t nrb = (R + RB - 1) / RB, nch = (N + cs - 1) / cs;
    for (;;) {
        const int64_t t = g4_chunk(ex);
        if (t >= nrb * nch) break;
        const int64_t o0 = (t / nrb) * cs, o1 = o0 + cs < N ? o0 + cs : N;
        const int64_t r0 = (t % nrb) * RB, n = R - r0 < RB ? R - r0 : RB;
        const float *xs[G4_ROW_EXACT_MAX];
        void *wss[G4_ROW_EXACT_MAX];
        float *ys[G4_ROW_EXACT_MAX];
        for (int64_t i = 0; i < n; i++) {
            xs[i] = c->a + (r0 + i) * K;
            wss[i] = sh + (size_t)(r0 + i) * mw;
            ys[i] = c->out + (r0 + i) * N;
        }
        g4_matvec_rows(c, (int)n, xs, wss, ys, o0, o1);
    }
}

/* Row groups of up to G4_ROW_EXACT_MAX rows x feature chunks, claimed with g4_chunk; a thread
 * prepares a group's rows (g4_matvec_prepare, into its own scratch) when it first works on it.
 * One group for a row-exact batch; several for a G4_ACT_ROW_EXACT matmul's prefill. */
static void matmul_matvec(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows;
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    const size_t mw = matvec_ws(c);
    const float *xs[G4_ROW_EXACT_MAX];
    void *wss[G4_ROW_EXACT_MAX];
    float *ys[G4_ROW_EXACT_MAX];
    const int64_t cs = g4_feature_chunk(c->cols, c->rows, nth, 1), nch = (N + cs - 1) / cs;
    const int64_t ngr = (R + G4_ROW_EXACT_MAX - 1) / G4_ROW_EXACT_MAX;
    int64_t have = -1;                   /* the row group whose rows this thread has prepared */
    int n = 0;
    for (;;) {
        const int64_t t = g4_chunk(ex);
        if (t >= ngr * nch) break;
        const int64_t gr = t / nch, o0 = (t % nch) * cs, o1 = o0 + cs < N ? o0 + cs : N;
        if (gr != have) {
            const int64_t r0 = gr * G4_ROW_EXACT_MAX;
            n = (int)(R - r0 < G4_ROW_EXACT_MAX ? R - r0 : G4_ROW_EXACT_MAX);
            for (int r = 0; r < n; r++) {
                g4_matvec_prepare(c, c->a + (r0 + r) * K, ws + r * mw);
                xs[r] = c->a + (r0 + r) * K;
                wss[r] = ws + r * mw;
                ys[r] = c->out + (r0 + r) * N;
            }
            have = gr;
        }
        g4_matvec_rows(c, n, xs, wss, ys, o0, o1);
    }
}

void g4_k_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    if (c->rows <= 0 || c->cols <= 0) return;
    if (q8_batch(c)) {
        matmul_q8_batch(c, ex, ith, nth);
        return;
    }
    if (use_matvec(c)) {
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
    void *ws = g4_ws(ex, ith);
    for (;;) {
        int64_t t = g4_chunk(ex);
        if (t >= p.n_ptask * p.nrb) break;
        int64_t pt = t / p.nrb, rbi = t % p.nrb;
        int64_t pb0 = pt * p.tp, pb1 = pb0 + p.tp < p.n_panels ? pb0 + p.tp : p.n_panels;
        int64_t r0 = rbi * p.rb, r1 = r0 + p.rb < c->rows ? r0 + p.rb : c->rows;
        g4_gemm_block(c, pb0, pb1, r0, r1, ws);
    }
}

size_t g4_gemm_scratch(void) { return tiled_scratch(); }
int g4_gemm_nr(void) { return NR; }
int g4_gemm_tp(void) { return TP; }

/* One task of the tiled product on the calling thread: out rows [r0, r1) x weight panels
 * [pb0, pb1) (at most TP; NR weight rows each), ws = g4_gemm_scratch() bytes. Also called by
 * moe.c on an expert's gathered rows. */
void g4_gemm_block(const g4_cmd *c, int64_t pb0, int64_t pb1, int64_t r0, int64_t r1, void *ws_) {
    uint8_t *ws = (uint8_t *)ws_;
    float *panels = (float *)ws;
    float *tmp = (float *)(ws + G4_ALIGN64((size_t)TP * KC * NR * sizeof(float)));
    const int64_t K = c->in_cols, N = c->cols;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int kc = (int)(K - k0 < KC ? K - k0 : KC);
        for (int64_t pb = pb0; pb < pb1; pb++) {
            int64_t o0 = pb * NR;
            int n = (int)(N - o0 < NR ? N - o0 : NR);
            pack_panel(c, o0, n, k0, kc, panels + (size_t)(pb - pb0) * KC * NR, tmp);
        }
        /* token tiles outer: a tile's A block (MR x kc) stays in L1 across the task's panels,
         * which stream from L2 */
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

