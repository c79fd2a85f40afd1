/* g4cpu mixture-of-experts kernels: routing, the expert matmul, the weighted sum.
 *
 * MOE_ROUTE  a = router logits [rows, in_cols = n_expert]; out [rows, 2k] (k = group): the k
 *            largest logits' experts (equal logits: lower index first) with weights
 *            p_j / sum p_sel computed in double, times w[e] (f32 per-expert scale) when w != NULL;
 *            columns k..2k-1 hold the expert indices as floats.
 * MOE_MATMUL a = x [rows or rows*k, in_cols], b = route [rows, 2k]; w = every expert's [cols,
 *            in_cols] matrix one after another (n_head = n_expert, w_rows = n_expert * cols, GGUF
 *            blocks as stored); out [rows*k, cols]: selection s = r*k + j times expert route[r][k+j].
 *            row0 = 1: x has one row per selection, else one per token shared by its k selections.
 * MOE_SUM    a = y [rows*k, cols], b = route; out[r] = sum over j in order of route[r][j] * y[r*k+j].
 *
 * The expert matmul reads only the chosen experts' bytes. Few tokens (decode): the matvec kernels
 * on every (expert, chunk of output features) item, for that expert's selections only. A batch:
 * each thread claims whole experts, gathers the expert's selections' input rows into its scratch
 * and runs gemm.c's tiled product on them, so each used expert's weights are decoded once per
 * batch, then scatters the rows back to their selections. On an integer path (c->act) a batch
 * runs the multi-row matvec kernels per expert instead (moe_matmul_rows), row-exact; there the
 * experts are repacked 8 rows at a time like a dense matrix (moe_expert), decode and batch alike.
 */
#include <math.h>

#include "pool.h"

void g4_k_moe_route(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t n = c->in_cols, k = c->group;
    const float *scale = (const float *)c->w;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float *l = c->a + r * n;
        float *o = c->out + r * 2 * k;
        /* selection by repeated scans: k is small (2..8) and a strict > keeps the lower index */
        double sum = 0.0, first = 0.0;
        for (int64_t j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < n; e++) {
                int taken = 0;
                for (int64_t i = 0; i < j; i++) taken |= (int64_t)o[k + i] == e;
                if (taken) continue;
                if (best < 0 || l[e] > l[best]) best = e;
            }
            o[k + j] = (float)best;
            if (j == 0) first = l[best];
            sum += exp((double)l[best] - first);       /* the softmax denominator cancels */
        }
        for (int64_t j = 0; j < k; j++) {
            const int64_t e = (int64_t)o[k + j];
            double p = exp((double)l[e] - first) / sum;
            if (scale) p *= (double)scale[e];
            o[j] = (float)p;
        }
    }
}

void g4_k_moe_sum(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t k = c->group, W = c->cols;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float *route = c->b + r * 2 * k;
        float *o = c->out + r * W;
        for (int64_t i = 0; i < W; i++) o[i] = 0.0f;
        for (int64_t j = 0; j < k; j++) {
            const float wj = route[j];
            const float *y = c->a + (r * k + j) * W;
            for (int64_t i = 0; i < W; i++) o[i] += wj * y[i];
        }
    }
}

/* Expert e's matrix: GGUF rows one expert after another, or on an integer path with repacked
 * weights (c->act & G4_ACT_REPACKED; cols % 8 == 0, so no 8-row group spans two experts) its
 * cols / 8 groups of repack.c's layout. */
static const uint8_t *moe_expert(const g4_cmd *c, int64_t e) {
    if (c->act & G4_ACT_REPACKED)
        return (const uint8_t *)c->w + (size_t)e * (size_t)(c->cols / 8) * (size_t)g4_repack8_group_bytes(c->qtype, c->in_cols);
    return (const uint8_t *)c->w + (size_t)e * (size_t)c->cols * (size_t)c->w_row_bytes;
}

#define MOE_GEMM_MIN_ROWS (G4_ROW_EXACT_MAX + 1)   /* tokens from which a batch goes through the tiled product */
#define A64(n) (((size_t)(n) + 63) / 64 * 64)

/* Distinct input rows of the expert matmul: one per selection (row0: the down projection reads
 * each selection's own row), else one per token (gate / up read the token's row k times). */
static int64_t moe_inputs(const g4_cmd *c) { return c->row0 ? (int64_t)c->rows * c->group : c->rows; }

size_t g4_moe_matmul_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    g4_cmd sub = *c;
    sub.op = G4_OP_MATMUL;
    sub.w_rows = c->cols;
    if (c->rows >= MOE_GEMM_MIN_ROWS && (c->act & G4_ACT_MODE))   /* moe_matmul_rows' groups */
        return (size_t)G4_ROW_EXACT_MAX * A64(g4_matvec_scratch(&sub));
    if (c->rows >= MOE_GEMM_MIN_ROWS)   /* a token picks an expert once: at most rows selections each */
        return A64(g4_gemm_scratch()) + A64((size_t)c->rows * c->in_cols * 4) + A64((size_t)c->rows * c->cols * 4)
               + A64((size_t)c->rows * 8);
    return (size_t)moe_inputs(c) * A64(g4_matvec_scratch(&sub));
}

static void moe_matmul_gemm(const g4_cmd *c, g4_exec *ex, int ith) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows, k = c->group, E = c->n_head;
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    void *gw = ws;
    float *A = (float *)(ws + A64(g4_gemm_scratch()));
    float *T = (float *)((uint8_t *)A + A64((size_t)R * K * 4));
    int64_t *sel = (int64_t *)((uint8_t *)T + A64((size_t)R * N * 4));
    const int64_t nr = g4_gemm_nr(), tp = g4_gemm_tp(), np = (N + nr - 1) / nr;
    g4_cmd sub = *c;
    sub.op = G4_OP_MATMUL;
    sub.w_rows = N;
    sub.a = A;
    sub.out = T;
    for (;;) {
        const int64_t e = g4_chunk(ex);
        if (e >= E) break;
        int64_t m = 0;
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < k; j++)
                if ((int64_t)c->b[r * 2 * k + k + j] == e) {
                    const int64_t s = r * k + j;
                    memcpy(A + m * K, c->a + (c->row0 ? s : r) * K, (size_t)K * 4);
                    sel[m++] = s;
                }
        if (m == 0) continue;
        sub.w = moe_expert(c, e);
        sub.rows = (int32_t)m;
        for (int64_t pb = 0; pb < np; pb += tp)
            g4_gemm_block(&sub, pb, pb + tp < np ? pb + tp : np, 0, m, gw);
        for (int64_t i = 0; i < m; i++) memcpy(c->out + sel[i] * N, T + i * N, (size_t)N * 4);
    }
}

/* The integer paths' batches: each expert's selections in groups of up to G4_ROW_EXACT_MAX,
 * quantized straight from their input rows, through the multi-row kernels over all N into their
 * output rows - the bits of each selection's one-row matvec (row-exact), no gathering copies. */
static void moe_matmul_rows(const g4_cmd *c, g4_exec *ex, int ith) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows, k = c->group, E = c->n_head;
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    g4_cmd sub = *c;
    sub.op = G4_OP_MATMUL;
    sub.w_rows = N;
    const size_t mw = A64(g4_matvec_scratch(&sub));
    for (;;) {
        const int64_t e = g4_chunk(ex);
        if (e >= E) break;
        sub.w = moe_expert(c, e);
        const float *xs[G4_ROW_EXACT_MAX];
        void *wss[G4_ROW_EXACT_MAX];
        float *ys[G4_ROW_EXACT_MAX];
        int n = 0;
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < k; j++) {
                if ((int64_t)c->b[r * 2 * k + k + j] != e) continue;
                const int64_t s = r * k + j;
                xs[n] = c->a + (c->row0 ? s : r) * K;
                wss[n] = ws + (size_t)n * mw;
                ys[n] = c->out + s * N;
                g4_matvec_prepare(&sub, xs[n], wss[n]);
                if (++n == G4_ROW_EXACT_MAX) {
                    g4_matvec_rows(&sub, n, xs, wss, ys, 0, N);
                    n = 0;
                }
            }
        if (n) g4_matvec_rows(&sub, n, xs, wss, ys, 0, N);
    }
}

void g4_k_moe_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows, k = c->group, E = c->n_head;
    if (R <= 0 || N <= 0) return;
    if (R >= MOE_GEMM_MIN_ROWS) {
        if (c->act & G4_ACT_MODE) moe_matmul_rows(c, ex, ith);
        else moe_matmul_gemm(c, ex, ith);
        return;
    }
    uint8_t *ws = (uint8_t *)g4_ws(ex, ith);
    g4_cmd sub = *c;            /* one expert's matrix as a plain matmul command */
    sub.op = G4_OP_MATMUL;
    sub.w_rows = N;
    /* every input row prepared once per thread (sums, or the q8 quantization), not per chunk */
    const size_t mw = A64(g4_matvec_scratch(&sub));
    const int64_t n_in = moe_inputs(c);
    for (int64_t i = 0; i < n_in; i++) g4_matvec_prepare(&sub, c->a + i * K, ws + (size_t)i * mw);
    /* the work items are the used experts' output chunks only (every thread lists the same
     * experts: a token's k selections, R < MOE_GEMM_MIN_ROWS tokens), not all E experts' */
    int64_t used[R * k > 0 ? R * k : 1], nu = 0;
    for (int64_t s = 0; s < R * k; s++) {
        const int64_t e = (int64_t)c->b[(s / k) * 2 * k + k + s % k];
        int seen = 0;
        for (int64_t i = 0; i < nu; i++) seen |= used[i] == e;
        if (!seen && e >= 0 && e < E) used[nu++] = e;
    }
    const int64_t cs = g4_feature_chunk(c->cols, c->rows, nth, nu), nchunk = (N + cs - 1) / cs;
    for (;;) {
        const int64_t t = g4_chunk(ex);
        if (t >= nu * nchunk) break;
        const int64_t e = used[t / nchunk], o0 = (t % nchunk) * cs, o1 = o0 + cs < N ? o0 + cs : N;
        sub.w = moe_expert(c, e);
        for (int64_t r = 0; r < R; r++) {
            const float *route = c->b + r * 2 * k;
            for (int64_t j = 0; j < k; j++) {
                if ((int64_t)route[k + j] != e) continue;
                const int64_t s = r * k + j, in = c->row0 ? s : r;
                g4_matvec(&sub, c->a + in * K, ws + (size_t)in * mw, c->out + s * N, o0, o1);
            }
        }
    }
}
