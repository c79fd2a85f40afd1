/* Test shim for shaders/cpu/quant.c + the matvec (arch/<isa>/matvec.c; tests/test_cpu_kernels_quant.py): one call that
 * builds a MATMUL command over raw GGUF rows, runs g4_matvec_prepare once for x and g4_matvec on
 * rows [o0, o1). */
#include <stdlib.h>
#include "g4cpu.h"

const char *g4t_isa(void) { return G4_ISA_NAME; }

int g4t_matvec(int qtype, const void *w, int64_t rows, int64_t row_bytes, int64_t k,
               const float *x, float *y, int64_t o0, int64_t o1) {
    g4_cmd c;
    memset(&c, 0, sizeof c);
    c.op = G4_OP_MATMUL;
    c.qtype = qtype;
    c.rows = 1;
    c.cols = (int32_t)rows;
    c.in_cols = (int32_t)k;
    c.w_rows = rows;
    c.w_row_bytes = row_bytes;
    c.w = w;
    c.a = x;
    c.out = y;
    size_t n = g4_matvec_scratch(&c);
    void *ws = NULL;
    if (n) {
        ws = aligned_alloc(64, (n + 63) & ~(size_t)63);
        if (!ws) return -1;
        memset(ws, 0xff, n);   /* garbage: prepare must fill what matvec reads */
    }
    g4_matvec_prepare(&c, x, ws);
    g4_matvec(&c, x, ws, y, o0, o1);
    free(ws);
    return 0;
}
