/* matvec_q8_entry.h: the q8 path's matvec entry points, written once for every ISA: each
 * arch/<isa>/matvec.c includes its q8 kernels (q8_weight_row, q8_quantize_row, Q8_ROWS_G,
 * Q8_ROWS_SWITCH, Q8_DOT_NAME, and for a build with repacked kernels Q8_REPACKED_TYPE,
 * q8_repacked_span, q8_repacked_finish) before this file. g4_matvec_scratch / _prepare and
 * matvec_entry.h's g4_matvec / g4_matvec_rows call these when q8_active(c). */
#ifndef G4_MATVEC_Q8_ENTRY_H
#define G4_MATVEC_Q8_ENTRY_H

#include "q8.h"

#ifndef Q8_REPACKED_TYPE              /* a build without repacked kernels (the portable one) */
#define Q8_REPACKED_TYPE(qt) 0
#else
#define Q8_HAS_REPACKED 1
#endif
#ifndef Q8R_ROWS_G                    /* the most activation rows of one repacked call */
#define Q8R_ROWS_G Q8_ROWS_G
#endif

static inline int q8_active(const g4_cmd *c) {
    const int mode = c->act & G4_ACT_MODE;
    if (mode != G4_ACT_Q8 && mode != G4_ACT_I16) return 0;
    if (c->act & G4_ACT_REPACKED) return Q8_REPACKED_TYPE(c->qtype) && c->in_cols % (c->qtype == G4_Q4_0 ? 32 : 256) == 0;
    switch (c->qtype) {
    case G4_Q4_0: case G4_Q4_1: case G4_Q5_0: case G4_Q5_1: case G4_Q8_0:
        return c->in_cols % 32 == 0;
    case G4_Q4_K: case G4_Q5_K: case G4_Q6_K:
        return c->in_cols % 256 == 0;
    default: return 0;
    }
}

static size_t q8_scratch(const g4_cmd *c) { return q8_row_bytes(c->in_cols); }

/* x -> its quantized row in ws (q8.h's layout), with the side data c->qtype's kernel reads */
static void q8_prepare(const g4_cmd *c, const float *x, void *ws) {
    const int64_t K = c->in_cols;
    uint8_t *p = (uint8_t *)ws;
    const q8_row r = q8_row_at(ws, K);
    const int two = (c->act & G4_ACT_MODE) == G4_ACT_I16;
    if (two) q8_quantize_i16(x, K, (int8_t *)p, (int8_t *)r.q2, (float *)r.d);
    else if (q8_k_type(c->qtype)) q8_quantize_k(x, K, (int8_t *)p, (float *)r.d);
    else q8_quantize_row(x, K, (int8_t *)p, (float *)r.d);
    /* a repacked kernel's int32 lane sums a whole block: the full offset, not an eighth */
    q8_write_sums(K, c->qtype, two, q8_bias_mult(c->qtype) * (c->act & G4_ACT_REPACKED ? 8 : 1), ws);
}

#ifdef Q8_HAS_REPACKED
/* Rows [o0, o1) of a repacked matrix: whole groups of 8 are computed (the same bits whatever
 * the range), the rows asked for stored. K goes in spans of Q8_SPAN values for up to 8 groups
 * at a time, each group's per-row state carried from span to span (the same operations in the
 * same order as one pass), so that R activation rows' span stays in L1 while the groups stream. */
#ifndef Q8_SPAN
#define Q8_SPAN 1024
#endif
static void q8_repacked_rows(const g4_cmd *c, int R, const q8_row *xs, float *const *y, int64_t o0, int64_t o1) {
    const uint8_t *W = (const uint8_t *)c->w;
    const int64_t gb = g4_repack8_group_bytes(c->qtype, c->in_cols);
    const int64_t per = c->qtype == G4_Q4_0 ? 32 : 256, nu = c->in_cols / per;
    /* one row (decode) reuses nothing: one pass per group, the weights as one stream */
    const int64_t span = R == 1 ? nu : Q8_SPAN / per > 0 ? Q8_SPAN / per : 1;
    const int64_t ga = o0 / 8, ge = (o1 + 7) / 8;
    for (int64_t g0 = ga; g0 < ge; g0 += 8) {
        const int ng = (int)(ge - g0 < 8 ? ge - g0 : 8);
        float st[8][Q8R_ROWS_G][16];
        for (int j = 0; j < ng; j++) memset(st[j], 0, sizeof st[0][0] * (size_t)R);   /* the rows in use */
        for (int64_t u0 = 0; u0 < nu; u0 += span) {
            const int64_t u1 = u0 + span < nu ? u0 + span : nu;
            int j = 0;
#ifdef Q8R_PAIR
            /* several rows: two groups at once where the build and the type have it (the same
             * bits); one row streams a group at a time (two streams measured 1.2x slower from DRAM) */
            for (; R > 1 && j + 1 < ng; j += 2)
                if (!q8_repacked_span2(c, R, W + (g0 + j) * gb, gb, xs, u0, u1, st[j], st[j + 1])) break;
#endif
            for (; j < ng; j++) q8_repacked_span(c, R, W + (g0 + j) * gb, xs, u0, u1, st[j]);
        }
        for (int j = 0; j < ng; j++) {
            const int64_t g = g0 + j;
            const int64_t a = g * 8 > o0 ? g * 8 : o0, e = g * 8 + 8 < o1 ? g * 8 + 8 : o1;
            for (int r = 0; r < R; r++) {
                float v[8];
                q8_repacked_finish(c, st[j][r], v);
                for (int64_t o = a; o < e; o++) y[r][o] = v[o - g * 8];
            }
        }
    }
}

#endif

int g4_q8_repacked_kernel(int qtype) { (void)qtype; return Q8_REPACKED_TYPE(qtype); }

static void q8_matvec(const g4_cmd *c, const void *ws, float *y, int64_t o0, int64_t o1) {
    const uint8_t *W = (const uint8_t *)c->w;
    const q8_row x = q8_row_at(ws, c->in_cols);
    g4_f16tab_ready();
#ifdef Q8_HAS_REPACKED
    if (c->act & G4_ACT_REPACKED) {
        q8_repacked_rows(c, 1, &x, &y, o0, o1);
        return;
    }
#endif
    for (int64_t o = o0; o < o1; o++) q8_weight_row(c, 1, W + o * c->w_row_bytes, &x, y + o);
}

/* R rows in groups of Q8_ROWS_G: each weight row is decoded once per group */
static void q8_matvec_rows(const g4_cmd *c, int R, void *const *ws, float *const *y, int64_t o0, int64_t o1) {
    const uint8_t *W = (const uint8_t *)c->w;
    g4_f16tab_ready();
#ifdef Q8_HAS_REPACKED
    if (c->act & G4_ACT_REPACKED) {          /* up to Q8R_ROWS_G rows per pass over the weights */
        for (int r0 = 0; r0 < R; r0 += Q8R_ROWS_G) {
            const int g = R - r0 < Q8R_ROWS_G ? R - r0 : Q8R_ROWS_G;
            q8_row xs[Q8R_ROWS_G];
            for (int r = 0; r < g; r++) xs[r] = q8_row_at(ws[r0 + r], c->in_cols);
            q8_repacked_rows(c, g, xs, y + r0, o0, o1);
        }
        return;
    }
#endif
    for (int r0 = 0; r0 < R; r0 += Q8_ROWS_G) {
        const int g = R - r0 < Q8_ROWS_G ? R - r0 : Q8_ROWS_G;
        q8_row xs[Q8_ROWS_G];
        for (int r = 0; r < g; r++) xs[r] = q8_row_at(ws[r0 + r], c->in_cols);
        for (int64_t o = o0; o < o1; o++) {
            float v[Q8_ROWS_G];
            q8_weight_row(c, g, W + o * c->w_row_bytes, xs, v);
            for (int r = 0; r < g; r++) y[r0 + r][o] = v[r];
        }
    }
}

size_t g4_q8_row_bytes(int64_t K) { return q8_row_bytes(K); }
const char *g4_q8_dot(void) { return Q8_DOT_NAME; }

#endif
