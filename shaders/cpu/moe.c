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
 * The expert matmul runs matvec.c's kernels on every (expert, chunk of output features) item,
 * for that expert's selections only: decode reads only the chosen experts' bytes, and a batch
 * reads each used expert's weights once (a chunk stays in cache across its selections).
 */
#include "g4cpu.h"

#include <math.h>

static void split_rows(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    *b = n * ith / nth;
    *e = n * (ith + 1) / nth;
}

void g4_k_moe_route(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t n = c->in_cols, k = c->group;
    const float *scale = (const float *)c->w;
    int64_t r0, r1;
    split_rows(c->rows, ith, nth, &r0, &r1);
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
            double p = exp((double)l[best] - first);   /* the softmax denominator cancels */
            o[j] = (float)p;                           /* kept in double below */
            sum += p;
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
    split_rows(c->rows, ith, nth, &r0, &r1);
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

static int64_t moe_chunk(const g4_cmd *c, int nth) {
    int64_t cs = c->cols / (8 * (int64_t)nth);
    return cs < 16 ? 16 : cs > 64 ? 64 : (cs + 15) & ~(int64_t)15;
}

size_t g4_moe_matmul_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    g4_cmd sub = *c;
    sub.op = G4_OP_MATMUL;
    sub.w_rows = c->cols;
    return (g4_matvec_scratch(&sub) + 63) / 64 * 64;
}

void g4_k_moe_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t K = c->in_cols, N = c->cols, R = c->rows, k = c->group, E = c->n_head;
    if (R <= 0 || N <= 0) return;
    const int64_t cs = moe_chunk(c, nth), nchunk = (N + cs - 1) / cs;
    void *ws = g4_ws(ex, ith);
    g4_cmd sub = *c;            /* one expert's matrix as a plain matmul command */
    sub.op = G4_OP_MATMUL;
    sub.w_rows = N;
    for (;;) {
        const int64_t t = g4_chunk(ex);
        if (t >= E * nchunk) break;
        const int64_t e = t / nchunk, o0 = (t % nchunk) * cs, o1 = o0 + cs < N ? o0 + cs : N;
        sub.w = (const uint8_t *)c->w + (size_t)e * (size_t)N * (size_t)c->w_row_bytes;
        for (int64_t r = 0; r < R; r++) {
            const float *route = c->b + r * 2 * k;
            for (int64_t j = 0; j < k; j++) {
                if ((int64_t)route[k + j] != e) continue;
                const int64_t s = r * k + j;
                const float *x = c->a + (c->row0 ? s : r) * K;
                g4_matvec_prepare(&sub, x, ws);
                g4_matvec(&sub, x, ws, c->out + s * N, o0, o1);
            }
        }
    }
}
