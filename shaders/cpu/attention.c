/* g4cpu attention: causal (windowed) GQA attention over the KV caches (g4cpu.h, ATTENTION).
 *
 * Matches numpy_ref: float32 throughout, max-subtracted softmax, keys read from the cache as
 * it holds them (f16 or f32, kv_cache.h). Written once on simd.h's vectors and vmath.h's exp.
 *
 * Threading: (row block, kv head, head chunk) units are handed out through g4_chunk; for a few
 * rows with long contexts the key positions are split across all threads instead
 * (flash-decoding), merging per-thread partials in ex->shared after a barrier. Batches of
 * 2..G4_ROW_EXACT_MAX rows run row by row (att_rows_exact) to be row-exact; with c->act set
 * (a graph on an integer path, lowering.py) every batch does, so a prefill gives each row its decode bits: the
 * quantized activations downstream would turn the last-bit differences of a tiled prefill into
 * different int8 codes, and a prompt would then decode differently after a cache hit.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kv_cache.h"
#include "pool.h"
#include "simd.h"
#include "vmath.h"

#if defined(G4_AVX512)
#define ATT_QB 8           /* queries per register block */
#else
#define ATT_QB 4
#endif
#define ATT_Q_TARGET 8     /* queries per work unit (rows x heads of one kv head) */
#define ATT_HC 16          /* most query heads in one unit */
#define ATT_QMAX ATT_HC
#define ATT_SPLIT_ROWS 4   /* split-K only for batches of at most this many rows */
#define ATT_SPLIT_KEYS 256 /* ... and at least this many key positions */
#define ATT_VBLOCK_BYTES 16384 /* V rows per pass of the weighted sum (L1) */

typedef struct {
    int64_t pos0, rows, D, nh, nkv, rep, hc, nhc, rb, nrb, window, cr, kvw, qw;
    int f16;
    /* Row-exact batches (below): the cache holds positions < cpos; positions [cpos, pos0) are
     * earlier rows of this batch, read from rk / rv (rounded as the cache would hold them). */
    int64_t cpos;
    const void *rk, *rv;
    /* Media prompts: row r also sees the next ahead[r] rows of the batch (c->d), or NULL. */
    const float *ahead;
} att_geo;

static void att_geo_init(att_geo *g, const g4_cmd *c, int64_t pos0) {
    g->pos0 = pos0;
    g->rows = c->rows;
    g->D = c->group;
    g->nh = c->n_head;
    g->nkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    g->rep = g->nh / g->nkv > 0 ? g->nh / g->nkv : 1;
    g->hc = g->rep < ATT_HC ? g->rep : ATT_HC;
    g->nhc = (g->rep + g->hc - 1) / g->hc;
    g->rb = ATT_Q_TARGET / g->hc > 1 ? ATT_Q_TARGET / g->hc : 1;
    g->nrb = (g->rows + g->rb - 1) / g->rb;
    g->window = c->window;
    g->cr = c->cache_rows > 0 ? c->cache_rows : 0;
    g->kvw = g->nkv * g->D;
    g->qw = g->nh * g->D;
    g->f16 = c->cache_f16 != 0;
    g->cpos = pos0;
    g->rk = g->rv = NULL;
    g->ahead = c->d;
}

/* Last key position of the query in batch row r (itself, or later rows of its image block). */
static inline int64_t att_hi(const att_geo *g, int64_t r) {
    int64_t p = g->pos0 + r;
    if (!g->ahead) return p;
    int64_t a = (int64_t)g->ahead[r];
    if (a < 0) return p - 1;   /* ops.PastAttention: only the cached positions before the row */
    if (a > g->rows - 1 - r) a = g->rows - 1 - r;
    return a > 0 ? p + a : p;
}

/* First key position of the query at position p (the cache holds the last cr positions only). */
static inline int64_t att_lo(const att_geo *g, int64_t p) {
    int64_t lo = g->window > 0 ? p - g->window + 1 : 0;
    if (lo < 0) lo = 0;
    if (lo < g->pos0 - g->cr) lo = g->pos0 - g->cr;
    return lo;
}

static inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Most keys one unit can see (scores buffer columns). */
static int64_t att_max_keys(const att_geo *g) {
    int64_t n = g->cr + g->rows;
    /* keys ahead: a unit's span reaches the end of the batch, not only its window */
    if (!g->ahead && g->window > 0 && g->window + g->rb - 1 < n) n = g->window + g->rb - 1;
    return n;
}

/* Contiguous key rows: positions j0 .. j0+n-1 of the unit's key range (relative to ka). */
typedef struct {
    const void *k, *v;   /* first row, already offset to the kv head */
    int64_t stride;      /* elements between rows */
    int64_t j0, n;
    int f16;
} att_run;

static int att_runs(const att_geo *g, const g4_cmd *c, int64_t kvh, int64_t ka, int64_t kb, att_run *runs) {
    int nr = 0;
    int64_t cb = kb < g->cpos ? kb : g->cpos;   /* cache positions [ka, cb) */
    int64_t p = ka;
    while (p < cb) {
        int64_t row = p % g->cr, n = cb - p;
        if (n > g->cr - row) n = g->cr - row;
        size_t off = (size_t)row * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = g->f16;
        r->k = g->f16 ? (const void *)((const uint16_t *)c->cache_k + off) : (const void *)((const float *)c->cache_k + off);
        r->v = g->f16 ? (const void *)((const uint16_t *)c->cache_v + off) : (const void *)((const float *)c->cache_v + off);
        r->stride = g->kvw;
        r->j0 = p - ka;
        r->n = n;
        p += n;
    }
    if (g->cpos < g->pos0 && kb > g->cpos && ka < g->pos0) {   /* earlier batch rows, as cached */
        int64_t b0 = ka > g->cpos ? ka : g->cpos, b1 = kb < g->pos0 ? kb : g->pos0;
        size_t off = (size_t)(b0 - g->cpos) * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = g->f16;
        r->k = g->f16 ? (const void *)((const uint16_t *)g->rk + off) : (const void *)((const float *)g->rk + off);
        r->v = g->f16 ? (const void *)((const uint16_t *)g->rv + off) : (const void *)((const float *)g->rv + off);
        r->stride = g->kvw;
        r->j0 = b0 - ka;
        r->n = b1 - b0;
    }
    if (kb > g->pos0) {   /* this batch's rows [max(ka, pos0), kb) */
        int64_t b0 = ka > g->pos0 ? ka : g->pos0;
        size_t off = (size_t)(b0 - g->pos0) * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = 0;
        r->k = c->b + off;
        r->v = c->c + off;
        r->stride = g->kvw;
        r->j0 = b0 - ka;
        r->n = kb - b0;
    }
    return nr;
}

/* S[x*ld + j] = scale * q[x].k for the NQ queries and the run's keys. */
G4_AI void att_dots_t(int NQ, int F16, const float *const *q, const att_run *run, int64_t D, float scale,
                      float *S, int64_t ld) {
    for (int64_t i = 0; i < run->n; i++) {
        const void *k = F16 ? (const void *)((const uint16_t *)run->k + i * run->stride)
                            : (const void *)((const float *)run->k + i * run->stride);
        /* U independent accumulators per query: enough FMA chains in flight even for NQ = 1 */
        const int U = NQ == 1 ? 4 : 2;
        vf acc[ATT_QB][4];
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
            for (int u = 0; u < U; u++) acc[x][u] = vzero();
        int64_t d = 0;
        for (; d + U * VW <= D; d += U * VW) {
            vf kk[4];
#pragma GCC unroll 4
            for (int u = 0; u < U; u++) kk[u] = vload_kv(k, (size_t)(d + u * VW), F16);
#pragma GCC unroll 8
            for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
                for (int u = 0; u < U; u++) acc[x][u] = vfma(vload(q[x] + d + u * VW), kk[u], acc[x][u]);
        }
        for (; d + VW <= D; d += VW) {
            vf k0 = vload_kv(k, (size_t)d, F16);
#pragma GCC unroll 8
            for (int x = 0; x < NQ; x++) acc[x][0] = vfma(vload(q[x] + d), k0, acc[x][0]);
        }
        float *s = S + run->j0 + i;
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++) {
            vf a = acc[x][0];
#pragma GCC unroll 4
            for (int u = 1; u < U; u++) a = vadd(a, acc[x][u]);
            float t = vsum(a);
            for (int64_t dd = d; dd < D; dd++) t += q[x][dd] * load_kv1(k, (size_t)dd, F16);
            s[x * ld] = t * scale;
        }
    }
}

#define ATT_DOTS_CASE(n) \
    case n: if (f16) att_dots_t(n, 1, q, run, D, scale, S, ld); else att_dots_t(n, 0, q, run, D, scale, S, ld); break;

static void att_dots(int nq, int f16, const float *const *q, const att_run *run, int64_t D, float scale,
                     float *S, int64_t ld) {
    switch (nq) {
    ATT_DOTS_CASE(1) ATT_DOTS_CASE(2) ATT_DOTS_CASE(3) ATT_DOTS_CASE(4)
#if ATT_QB > 4
    ATT_DOTS_CASE(5) ATT_DOTS_CASE(6) ATT_DOTS_CASE(7) ATT_DOTS_CASE(8)
#endif
    default: break;
    }
}

/* dst[x][d0 .. d0 + NV*VW) (+)= sum_j S[x*ld + j] v_j over the run's keys; `first`: start at 0. */
G4_AI void att_wsum_t(int NQ, int NV, int F16, float *const *dst, const att_run *run, int64_t d0,
                      const float *S, int64_t ld, int first) {
    vf acc[ATT_QB][4];
#pragma GCC unroll 8
    for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) acc[x][n] = first ? vzero() : vload(dst[x] + d0 + n * VW);
    const float *s = S + run->j0;
    for (int64_t i = 0; i < run->n; i++) {
        const void *v = F16 ? (const void *)((const uint16_t *)run->v + i * run->stride + d0)
                            : (const void *)((const float *)run->v + i * run->stride + d0);
        vf vv[4];
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) vv[n] = vload_kv(v, (size_t)(n * VW), F16);
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++) {
            vf p = vset1(s[x * ld + i]);
#pragma GCC unroll 4
            for (int n = 0; n < NV; n++) acc[x][n] = vfma(p, vv[n], acc[x][n]);
        }
    }
#pragma GCC unroll 8
    for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) vstore(dst[x] + d0 + n * VW, acc[x][n]);
}

/* All head-dim chunks of one run for NQ queries. */
G4_AI void att_wsum_q(int NQ, int F16, float *const *dst, const att_run *run, int64_t D, const float *S,
                      int64_t ld, int first) {
    int64_t d0 = 0;
    if (NQ <= 2) {
        for (; d0 + 4 * VW <= D; d0 += 4 * VW) att_wsum_t(NQ, 4, F16, dst, run, d0, S, ld, first);
    }
    for (; d0 + 2 * VW <= D; d0 += 2 * VW) att_wsum_t(NQ, 2, F16, dst, run, d0, S, ld, first);
    for (; d0 + VW <= D; d0 += VW) att_wsum_t(NQ, 1, F16, dst, run, d0, S, ld, first);
    for (; d0 < D; d0++) {   /* scalar tail of an odd head size */
        for (int x = 0; x < NQ; x++) {
            float t = first ? 0.0f : dst[x][d0];
            for (int64_t i = 0; i < run->n; i++) {
                const void *v = F16 ? (const void *)((const uint16_t *)run->v + i * run->stride)
                                    : (const void *)((const float *)run->v + i * run->stride);
                t += S[x * ld + run->j0 + i] * load_kv1(v, (size_t)d0, F16);
            }
            dst[x][d0] = t;
        }
    }
}

#define ATT_WSUM_CASE(n) \
    case n: if (f16) att_wsum_q(n, 1, dst, run, D, S, ld, first); else att_wsum_q(n, 0, dst, run, D, S, ld, first); break;

static void att_wsum(int nq, int f16, float *const *dst, const att_run *run, int64_t D, const float *S,
                     int64_t ld, int first) {
    switch (nq) {
    ATT_WSUM_CASE(1) ATT_WSUM_CASE(2) ATT_WSUM_CASE(3) ATT_WSUM_CASE(4)
#if ATT_QB > 4
    ATT_WSUM_CASE(5) ATT_WSUM_CASE(6) ATT_WSUM_CASE(7) ATT_WSUM_CASE(8)
#endif
    default: break;
    }
}

/* One unit over key positions [ka, kb): nq queries of kv head kvh, query x allowed keys [lo[x], hi[x]].
 * mo == NULL: normalized output into dst; else unnormalized partials (max mo, sum lo_, acc dst). */
static void att_core(const att_geo *g, const g4_cmd *c, int64_t kvh, int nq, const float *const *q,
                     float *const *dst, const int64_t *lo, const int64_t *hi, int64_t ka, int64_t kb,
                     float *const *mo, float *const *lsum, float *S) {
    const int64_t D = g->D, nk = kb - ka;
    if (nk <= 0) {
        for (int x = 0; x < nq; x++) {
            memset(dst[x], 0, (size_t)D * 4);
            if (mo) { *mo[x] = -INFINITY; *lsum[x] = 0.0f; }
        }
        return;
    }
    const int64_t ld = round16(nk);
    att_run runs[4];
    const int nr = att_runs(g, c, kvh, ka, kb, runs);
    /* scores */
    for (int r = 0; r < nr; r++)
        for (int x0 = 0; x0 < nq; x0 += ATT_QB) {
            int n = nq - x0 < ATT_QB ? nq - x0 : ATT_QB;
            att_dots(n, runs[r].f16, q + x0, &runs[r], D, c->scale, S + x0 * ld, ld);
        }
    /* mask, softmax */
    for (int x = 0; x < nq; x++) {
        float *s = S + x * ld;
        int64_t a = lo[x] - ka, b = hi[x] - ka + 1;   /* allowed [a, b) */
        if (a > nk) a = nk;
        if (b < 0) b = 0;
        for (int64_t j = 0; j < a; j++) s[j] = -INFINITY;
        int64_t z = b > a ? b : a;
        if (z > nk) z = nk;
        for (int64_t j = z; j < ld; j++) s[j] = -INFINITY;
        vf vm = vset1(-INFINITY);
        for (int64_t j = 0; j < ld; j += VW) vm = vmax(vm, vload(s + j));
        float m = vhmax(vm);
        float l = 0.0f;
        if (m == -INFINITY) {
            memset(s, 0, (size_t)ld * 4);
        } else {
            const vf mv = vset1(m);
            vf acc = vzero();
            for (int64_t j = 0; j < ld; j += VW) {
                vf p = vexp(vsub(vload(s + j), mv));
                vstore(s + j, p);
                acc = vadd(acc, p);
            }
            l = vsum(acc);
            if (!mo) {
                const vf inv = vset1(1.0f / l);
                for (int64_t j = 0; j < ld; j += VW) vstore(s + j, vmul(vload(s + j), inv));
            }
        }
        if (mo) { *mo[x] = m; *lsum[x] = l; }
    }
    /* weighted sum of the values, in blocks of keys small enough to stay in L1 while every
     * head-dim chunk of every query group passes over them */
    const int64_t kblk = ATT_VBLOCK_BYTES / (D * (g->f16 ? 2 : 4)) > 8 ? ATT_VBLOCK_BYTES / (D * (g->f16 ? 2 : 4)) : 8;
    for (int r = 0; r < nr; r++)
        for (int64_t i0 = 0; i0 < runs[r].n; i0 += kblk) {
            att_run sub = runs[r];
            sub.n = runs[r].n - i0 < kblk ? runs[r].n - i0 : kblk;
            sub.j0 = runs[r].j0 + i0;
            sub.v = sub.f16 ? (const void *)((const uint16_t *)sub.v + i0 * sub.stride)
                            : (const void *)((const float *)sub.v + i0 * sub.stride);
            for (int x0 = 0; x0 < nq; x0 += ATT_QB) {
                int n = nq - x0 < ATT_QB ? nq - x0 : ATT_QB;
                att_wsum(n, sub.f16, dst + x0, &sub, D, S + x0 * ld, ld, r == 0 && i0 == 0);
            }
        }
}

/* The queries of unit u: kv head, query/dst pointers (dst into out), allowed ranges, key span. */
typedef struct {
    int64_t kvh, ka, kb;
    int nq;
    int64_t row[ATT_QMAX], head[ATT_QMAX], lo[ATT_QMAX], hi[ATT_QMAX];
    const float *q[ATT_QMAX];
} att_unit;

static void att_unit_get(const att_geo *g, const g4_cmd *c, int64_t u, att_unit *U) {
    const int64_t per_rb = g->nkv * g->nhc;
    const int64_t rbi = u / per_rb, rem = u - rbi * per_rb;
    const int64_t kvh = rem / g->nhc, hci = rem - kvh * g->nhc;
    const int64_t r0 = rbi * g->rb, r1 = r0 + g->rb < g->rows ? r0 + g->rb : g->rows;
    const int64_t h0 = kvh * g->rep + hci * g->hc;
    const int64_t h1 = h0 + g->hc < (kvh + 1) * g->rep ? h0 + g->hc : (kvh + 1) * g->rep;
    U->kvh = kvh;
    U->nq = 0;
    int64_t kb = g->pos0 + r1;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t p = g->pos0 + r, hi = att_hi(g, r);
        if (hi + 1 > kb) kb = hi + 1;
        for (int64_t h = h0; h < h1; h++) {
            int x = U->nq++;
            U->row[x] = r;
            U->head[x] = h;
            U->lo[x] = att_lo(g, p);
            U->hi[x] = hi;
            U->q[x] = c->a + r * g->qw + h * g->D;
        }
    }
    U->ka = att_lo(g, g->pos0 + r0);
    U->kb = kb;
}

static inline int64_t att_units(const att_geo *g) { return g->nrb * g->nkv * g->nhc; }

static inline int64_t att_pstride(int64_t D) { return 16 + round16(D); }

size_t g4_attention_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    att_geo g;
    att_geo_init(&g, c, 0);
    int64_t nq = g.rb * g.hc;
    return (size_t)(nq * round16(att_max_keys(&g)) * 4);   /* a multiple of 64 bytes */
}

static size_t att_partials_bytes(int64_t rows, const g4_cmd *c, int nth) {
    return (size_t)nth * (size_t)rows * (size_t)c->n_head * (size_t)att_pstride(c->group) * 4;
}

/* A row-exact batch's f16 copy of its K and V rows (none for an f32 cache: rows are read in place). */
static size_t att_copy_bytes(const g4_cmd *c) {
    return c->cache_f16 ? G4_ALIGN64((size_t)c->rows * (size_t)(c->n_kv_head > 0 ? c->n_kv_head : 1) * c->group * 2) : 0;
}

/* Whether a batch of `rows` runs row by row (row-exact). */
static int att_row_by_row(const g4_cmd *c, int64_t rows) { return !c->d && (rows <= G4_ROW_EXACT_MAX || c->act); }

static size_t att_shared_rows(const g4_cmd *c, int64_t rows, int nth) {
    if (rows <= 0) return 0;
    if (rows > 1 && att_row_by_row(c, rows)) {   /* one row at a time: a one-row split + the copy */
        g4_cmd cr = *c;
        cr.rows = (int32_t)rows;
        return (nth > 1 ? G4_ALIGN64(att_partials_bytes(1, c, nth)) : 0) + 2 * att_copy_bytes(&cr);
    }
    if (nth <= 1 || rows > ATT_SPLIT_ROWS) return 0;
    return att_partials_bytes(rows, c, nth);
}

/* Enough for the whole batch and for any segment of it (a batch of several sequences runs the
 * command once per segment, on fewer rows). */
size_t g4_attention_shared(const g4_cmd *c, int nth) {
    size_t most = att_shared_rows(c, c->rows, nth);
    for (int64_t r = 1; r < c->rows && (r <= G4_ROW_EXACT_MAX || c->act); r++) {
        size_t b = att_shared_rows(c, r, nth);
        if (b > most) most = b;
    }
    return most;
}

/* Split key positions across threads? Same answer on every thread (barrier below). */
static int att_use_split(const att_geo *g, const g4_cmd *c, const g4_exec *ex, int nth) {
    if (nth <= 1 || g->rows > ATT_SPLIT_ROWS) return 0;
    if (!ex->shared || ex->shared_bytes < g4_attention_shared(c, nth)) return 0;
    int64_t units = att_units(g);
    if (units % nth == 0) return 0;   /* whole units already balance */
    int64_t span = g->pos0 + g->rows - att_lo(g, g->pos0);
    return span >= ATT_SPLIT_KEYS;
}

static void att_run_op(const att_geo *gp, const g4_cmd *c, g4_exec *ex, int ith, int nth, int dynamic);

/* Row-exact batches (2..G4_ROW_EXACT_MAX rows: speculative verification, several sequences'
 * decode steps; any batch with c->act) give every row the bits a one-row decode step would: each row runs as a one-row
 * attention (same key range, same split, same summation order) that reads the batch's earlier
 * rows as the cache would hold them (f16-rounded copies here) instead of the batch's float rows. */
static void att_rows_exact(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t rows = c->rows, D = c->group, nkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    const int64_t kvw = nkv * D, qw = (int64_t)c->n_head * D;
    const void *rk = c->b, *rv = c->c;
    if (c->cache_f16) {
        uint8_t *copy = (uint8_t *)ex->shared + (nth > 1 ? G4_ALIGN64(att_partials_bytes(1, c, nth)) : 0);
        uint16_t *ck = (uint16_t *)copy, *cv = (uint16_t *)(copy + att_copy_bytes(c));
        int64_t r0, r1;
        g4_split_even(rows, ith, nth, &r0, &r1);
        if (r1 > r0) {
            g4_store_kv_row(ck, 1, r0 * kvw, c->b + r0 * kvw, (r1 - r0) * kvw);
            g4_store_kv_row(cv, 1, r0 * kvw, c->c + r0 * kvw, (r1 - r0) * kvw);
        }
        g4_barrier(ex);
        rk = ck;
        rv = cv;
    }
    for (int64_t j = 0; j < rows; j++) {
        g4_cmd cj = *c;
        cj.rows = 1;
        cj.a = c->a + j * qw;
        cj.b = c->b + j * kvw;
        cj.c = c->c + j * kvw;
        cj.out = c->out + j * qw;
        att_geo g;
        att_geo_init(&g, &cj, ex->pos0 + j);
        g.cpos = ex->pos0;
        g.rk = rk;
        g.rv = rv;
        att_run_op(&g, &cj, ex, ith, nth, 0);
        g4_barrier(ex);             /* the split's partials are reused by the next row */
    }
}

void g4_k_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    if (c->rows <= 0 || c->group <= 0 || c->n_head <= 0) return;
    if (c->rows > 1 && att_row_by_row(c, c->rows)) {
        att_rows_exact(c, ex, ith, nth);
        return;
    }
    att_geo g;
    att_geo_init(&g, c, ex->pos0);
    att_run_op(&g, c, ex, ith, nth, !ex->in_segment);   /* g4_chunk counts once per command */
}

/* One attention op over geometry g. dynamic: units claimed with g4_chunk (once per command),
 * else dealt out by thread index (a row-exact batch runs several of these in one command). */
static void att_run_op(const att_geo *gp, const g4_cmd *c, g4_exec *ex, int ith, int nth, int dynamic) {
    const att_geo g = *gp;
    float *S = (float *)g4_ws(ex, ith);
    const int64_t units = att_units(&g);
    att_unit U;
    float *dst[ATT_QMAX], *mo[ATT_QMAX], *ls[ATT_QMAX];

    if (!att_use_split(&g, c, ex, nth)) {
        /* whole units, longest (last rows) first */
        for (int64_t k = dynamic ? g4_chunk(ex) : ith; k < units; k = dynamic ? g4_chunk(ex) : k + nth) {
            att_unit_get(&g, c, units - 1 - k, &U);
            for (int x = 0; x < U.nq; x++) dst[x] = c->out + U.row[x] * g.qw + U.head[x] * g.D;
            att_core(&g, c, U.kvh, U.nq, U.q, dst, U.lo, U.hi, U.ka, U.kb, NULL, NULL, S);
        }
        return;
    }

    /* split-K: every thread takes its share of every unit's keys into partials ... */
    float *P = (float *)ex->shared;
    const int64_t ps = att_pstride(g.D);
    for (int64_t u = 0; u < units; u++) {
        att_unit_get(&g, c, u, &U);
        int64_t nk = U.kb - U.ka;
        int64_t ka = U.ka + nk * ith / nth, kb = U.ka + nk * (ith + 1) / nth;
        for (int x = 0; x < U.nq; x++) {
            float *pp = P + ((ith * g.rows + U.row[x]) * g.nh + U.head[x]) * ps;
            mo[x] = pp;
            ls[x] = pp + 1;
            dst[x] = pp + 16;
        }
        att_core(&g, c, U.kvh, U.nq, U.q, dst, U.lo, U.hi, ka, kb, mo, ls, S);
    }
    g4_barrier(ex);
    /* ... then the partials of each (row, head, 64-wide piece of the head) are merged */
    const int64_t npc = (g.D + 63) / 64, items = g.rows * g.nh * npc;
    int64_t b, e;
    g4_split_even(items, ith, nth, &b, &e);
    for (int64_t it = b; it < e; it++) {
        const int64_t rh = it / npc, pc = it - rh * npc;
        const int64_t d0 = pc * 64, d1 = d0 + 64 < g.D ? d0 + 64 : g.D;
        float M = -INFINITY, L = 0.0f;
        for (int t = 0; t < nth; t++) {
            float m = P[(t * g.rows * g.nh + rh) * ps];
            if (m > M) M = m;
        }
        for (int t = 0; t < nth; t++) {
            const float *pp = P + (t * g.rows * g.nh + rh) * ps;
            if (pp[1] > 0.0f) L += pp[1] * expf(pp[0] - M);
        }
        float *o = c->out + rh * g.D;   /* out[r, h*D]: rh = r*nh + h, row stride nh*D */
        const float invL = 1.0f / L;
        int64_t d = d0;
        for (; d + VW <= d1; d += VW) {
            vf acc = vzero();
            for (int t = 0; t < nth; t++) {
                const float *pp = P + (t * g.rows * g.nh + rh) * ps;
                if (pp[1] > 0.0f) acc = vfma(vset1(expf(pp[0] - M) * invL), vload(pp + 16 + d), acc);
            }
            vstore(o + d, acc);
        }
        for (; d < d1; d++) {
            float acc = 0.0f;
            for (int t = 0; t < nth; t++) {
                const float *pp = P + (t * g.rows * g.nh + rh) * ps;
                if (pp[1] > 0.0f) acc += expf(pp[0] - M) * invL * pp[16 + d];
            }
            o[d] = acc;
        }
    }
}
