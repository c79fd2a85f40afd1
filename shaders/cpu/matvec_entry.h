/* The matvec entry points g4_matvec and g4_matvec_rows, written once for every ISA: each
 * arch/<isa>/matvec.c defines its static dot products (and its q8 path, matvec_q8_entry.h)
 * first, then includes this file. A q8 command (q8_active) goes to the q8 path.
 *
 * One signature per family (a kernel ignores what it does not need):
 *   dot_f32 / dot_f16 / dot_bf16 (w, x, K)      dot_q8_0 (w, x, nb)      dot_q6_k (w, x, nsb)
 *   dot_q4_0 / q4_1 / q5_0 / q5_1 (w, x, sx, nb) dot_q4_k / q5_k (w, x, sx, nsb)
 * sx: the row's g4_matvec_prepare scratch (block sums, or Q4_0's prepared activation).
 *
 * Multi-row kernels (optional): an ISA that decodes each block once for several rows defines
 * ROWS_G (rows per group), ROWS_SWITCH(CALL) (the row count as a constant, so each case unrolls
 * its row loop), CALL_Q8_0 .. CALL_Q5_1 and, when it also fuses the K-quants, MV_ROWS_K_QUANTS
 * with CALL_Q4_K / CALL_Q5_K / CALL_Q6_K. Other types, and ISAs without them, run g4_matvec per
 * row: either way each row gets the bits g4_matvec gives it alone. */

void g4_matvec(const g4_cmd *c, const float *x, const void *ws, float *y, int64_t o0, int64_t o1) {
    const uint8_t *W = (const uint8_t *)c->w;
    const int64_t rb = c->w_row_bytes, K = c->in_cols;
    const float *sx = (const float *)ws;
    const int64_t nb = K / QK, nsb = K / QKK;
    int64_t o;
    if (q8_active(c)) {
        q8_matvec(c, ws, y, o0, o1);
        return;
    }
    g4_f16tab_ready();   /* normally done by g4_matvec_prepare; one load when ready */
    switch (c->qtype) {
    case G4_F32:  for (o = o0; o < o1; o++) y[o] = dot_f32(W + o * rb, x, K); break;
    case G4_F16:  for (o = o0; o < o1; o++) y[o] = dot_f16(W + o * rb, x, K); break;
    case G4_BF16: for (o = o0; o < o1; o++) y[o] = dot_bf16(W + o * rb, x, K); break;
    case G4_Q8_0: for (o = o0; o < o1; o++) y[o] = dot_q8_0(W + o * rb, x, nb); break;
    case G4_Q4_0: for (o = o0; o < o1; o++) y[o] = dot_q4_0(W + o * rb, x, sx, nb); break;
    case G4_Q4_1: for (o = o0; o < o1; o++) y[o] = dot_q4_1(W + o * rb, x, sx, nb); break;
    case G4_Q5_0: for (o = o0; o < o1; o++) y[o] = dot_q5_0(W + o * rb, x, sx, nb); break;
    case G4_Q5_1: for (o = o0; o < o1; o++) y[o] = dot_q5_1(W + o * rb, x, sx, nb); break;
    case G4_Q4_K: for (o = o0; o < o1; o++) y[o] = dot_q4_k(W + o * rb, x, sx, nsb); break;
    case G4_Q5_K: for (o = o0; o < o1; o++) y[o] = dot_q5_k(W + o * rb, x, sx, nsb); break;
    case G4_Q6_K: for (o = o0; o < o1; o++) y[o] = dot_q6_k(W + o * rb, x, nsb); break;
    default: break;
    }
}

#ifndef MV_ROWS_K_QUANTS
#define MV_ROWS_K_QUANTS 0
#endif

/* R activation rows against W rows [o0, o1): y[r][o] = W[o] . x[r]. ws[r]: row r's
 * g4_matvec_prepare scratch. */
void g4_matvec_rows(const g4_cmd *c, int R, const float *const *x, void *const *ws, float *const *y,
                    int64_t o0, int64_t o1) {
    if (q8_active(c)) {
        q8_matvec_rows(c, R, ws, y, o0, o1);
        return;
    }
#ifdef ROWS_G
    const uint8_t *W = (const uint8_t *)c->w;
    const int64_t rb = c->w_row_bytes, nb = c->in_cols / QK, nsb = c->in_cols / QKK;
    const int qt = c->qtype;
    const int fused = qt == G4_Q8_0 || qt == G4_Q4_0 || qt == G4_Q4_1 || qt == G4_Q5_0 || qt == G4_Q5_1
        || (MV_ROWS_K_QUANTS && (qt == G4_Q4_K || qt == G4_Q5_K || qt == G4_Q6_K));
    (void)nsb;
    if (R > 1 && fused) {
        g4_f16tab_ready();
        for (int r0 = 0; r0 < R; r0 += ROWS_G) {
            const int g = R - r0 < ROWS_G ? R - r0 : ROWS_G;
            const float *xs[ROWS_G], *ss[ROWS_G];
            for (int r = 0; r < g; r++) {
                xs[r] = qt == G4_Q4_0 ? (const float *)ws[r0 + r] : x[r0 + r];
                ss[r] = (const float *)ws[r0 + r];
            }
            (void)ss;
            for (int64_t o = o0; o < o1; o++) {
                const uint8_t *wo = W + o * rb;
                float v[ROWS_G];
                switch (qt) {
                case G4_Q8_0: ROWS_SWITCH(CALL_Q8_0) break;
                case G4_Q4_0: ROWS_SWITCH(CALL_Q4_0) break;
                case G4_Q4_1: ROWS_SWITCH(CALL_Q4_1) break;
                case G4_Q5_0: ROWS_SWITCH(CALL_Q5_0) break;
                case G4_Q5_1: ROWS_SWITCH(CALL_Q5_1) break;
#if MV_ROWS_K_QUANTS
                case G4_Q4_K: ROWS_SWITCH(CALL_Q4_K) break;
                case G4_Q5_K: ROWS_SWITCH(CALL_Q5_K) break;
                case G4_Q6_K: ROWS_SWITCH(CALL_Q6_K) break;
#endif
                default: break;
                }
                for (int r = 0; r < g; r++) y[r0 + r][o] = v[r];
            }
        }
        return;
    }
#endif
    for (int r = 0; r < R; r++) g4_matvec(c, x[r], ws[r], y[r], o0, o1);
}
