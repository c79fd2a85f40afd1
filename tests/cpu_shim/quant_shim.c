/* Test shim for shaders/cpu/quant.c + the matvec (arch/<isa>/matvec.c): MATMUL commands over raw
 * GGUF rows, on either activation path (act: G4_ACT_EXACT or G4_ACT_Q8).
 *   g4t_matvec (tests/test_cpu_kernels_quant.py): the exact path, g4_matvec_prepare once for x
 *     and g4_matvec on rows [o0, o1);
 *   g4t_matvec_act: the same with a chosen act;
 *   g4t_prepare (tests/test_cpu_kernels_q8.py): the bytes g4_matvec_prepare writes for x (the
 *     q8 path: the quantized row, q8.h's layout);
 *   g4t_matvec_rows: R activation rows through g4_matvec_rows on rows [o0, o1);
 *   g4t_q8_layout: where q8.h's q8_row_at puts the parts of a quantized row.
 * Every scratch starts as garbage (0xff bytes): prepare must fill what the matvec reads. */
#include <stdlib.h>
#include "g4cpu.h"
#include "q8.h"

const char *g4t_isa(void) { return G4_ISA_NAME; }

static void g4t_cmd(g4_cmd *c, int qtype, int act, const void *w, int64_t rows, int64_t row_bytes, int64_t k) {
    memset(c, 0, sizeof *c);
    c->op = G4_OP_MATMUL;
    c->qtype = qtype;
    c->act = act;
    c->rows = 1;
    c->cols = (int32_t)rows;
    c->in_cols = (int32_t)k;
    c->w_rows = rows;
    c->w_row_bytes = row_bytes;
    c->w = w;
}

/* a 64-byte aligned scratch of n bytes (at least 64), filled with 0xff; NULL when out of memory */
static void *g4t_garbage(size_t n) {
    const size_t m = n ? (n + 63) & ~(size_t)63 : 64;
    void *p = aligned_alloc(64, m);
    if (p) memset(p, 0xff, m);
    return p;
}

/* g4_matvec_scratch of a command (bytes) */
int64_t g4t_scratch(int qtype, int act, int64_t k) {
    g4_cmd c;
    g4t_cmd(&c, qtype, act, NULL, 1, 0, k);
    return (int64_t)g4_matvec_scratch(&c);
}

/* out[0 .. n) = the scratch g4_matvec_prepare writes for x, n = g4_matvec_scratch (bytes the
 * prepare did not write stay 0xff). Returns n, or -1. */
int64_t g4t_prepare(int qtype, int act, int64_t k, const float *x, void *out, int64_t out_bytes) {
    g4_cmd c;
    g4t_cmd(&c, qtype, act, NULL, 1, 0, k);
    c.a = x;
    const size_t n = g4_matvec_scratch(&c);
    if ((int64_t)n > out_bytes) return -1;
    void *ws = g4t_garbage(n);
    if (!ws) return -1;
    g4_matvec_prepare(&c, x, ws);
    memcpy(out, ws, n);
    free(ws);
    return (int64_t)n;
}

int g4t_matvec_act(int qtype, int act, const void *w, int64_t rows, int64_t row_bytes, int64_t k,
                   const float *x, float *y, int64_t o0, int64_t o1) {
    g4_cmd c;
    g4t_cmd(&c, qtype, act, w, rows, row_bytes, k);
    c.a = x;
    c.out = y;
    void *ws = g4t_garbage(g4_matvec_scratch(&c));
    if (!ws) return -1;
    g4_matvec_prepare(&c, x, ws);
    g4_matvec(&c, x, ws, y, o0, o1);
    free(ws);
    return 0;
}

int g4t_matvec(int qtype, const void *w, int64_t rows, int64_t row_bytes, int64_t k,
               const float *x, float *y, int64_t o0, int64_t o1) {
    return g4t_matvec_act(qtype, G4_ACT_EXACT, w, rows, row_bytes, k, x, y, o0, o1);
}

/* x: R rows of k floats; y: R rows of `rows` floats (row r of y gets W[o0 .. o1) . x[r]) */
int g4t_matvec_rows(int qtype, int act, const void *w, int64_t rows, int64_t row_bytes, int64_t k, int R,
                    const float *x, float *y, int64_t o0, int64_t o1) {
    if (R < 1 || R > G4_ROW_EXACT_MAX) return -2;
    g4_cmd c;
    g4t_cmd(&c, qtype, act, w, rows, row_bytes, k);
    c.rows = R;
    c.a = x;
    c.out = y;
    const size_t n = g4_matvec_scratch(&c);
    const float *xs[G4_ROW_EXACT_MAX];
    void *wss[G4_ROW_EXACT_MAX];
    float *ys[G4_ROW_EXACT_MAX];
    int ok = 1;
    for (int r = 0; r < R; r++) {
        xs[r] = x + (int64_t)r * k;
        ys[r] = y + (int64_t)r * rows;
        wss[r] = g4t_garbage(n);
        ok &= wss[r] != NULL;
    }
    if (ok) {
        for (int r = 0; r < R; r++) g4_matvec_prepare(&c, xs[r], wss[r]);
        g4_matvec_rows(&c, R, xs, wss, ys, o0, o1);
    }
    for (int r = 0; r < R; r++) free(wss[r]);
    return ok ? 0 : -1;
}

/* off[0 .. 5) = the byte offsets of q, d, sd, bias and s16 in a quantized row of k values
 * (q8_row_at); returns g4_q8_row_bytes(k), or -1 */
int64_t g4t_q8_layout(int64_t k, int64_t *off) {
    const size_t n = g4_q8_row_bytes(k);
    uint8_t *p = (uint8_t *)g4t_garbage(n);
    if (!p) return -1;
    const q8_row r = q8_row_at(p, k);
    off[0] = (const uint8_t *)r.q - p;
    off[1] = (const uint8_t *)r.q2 - p;
    off[2] = (const uint8_t *)r.d - p;
    off[3] = (const uint8_t *)r.sd - p;
    off[4] = (const uint8_t *)r.bias - p;
    off[5] = (const uint8_t *)r.s16 - p;
    free(p);
    return (int64_t)n;
}
