/* Test-only stand-ins for what shaders/cpu/gemm.c links against, so its tests (and benchmarks)
 * run before / without the real pool.c, quant.c and matvec kernels (arch/<isa>/matvec.c):
 *   g4_chunk (an atomic counter), g4_barrier (a counting spin barrier), g4_block_values/bytes,
 *   g4_dequant_row (plain C, the gguf.quants formulas), g4_matvec_* (dequantize + float dot),
 * plus gemm_shim_run(): runs g4_k_matmul on nth real pthreads, as the pool would.
 * Never part of the runtime build. */
#include "g4cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ---- runtime stand-ins ---- */
typedef struct {
    _Atomic int64_t chunk;
    _Atomic int count, gen;
} shim_counters;

int64_t g4_chunk(g4_exec *ex) {
    return atomic_fetch_add(&((shim_counters *)ex->counters)->chunk, 1);
}

void g4_barrier(g4_exec *ex) {
    shim_counters *s = (shim_counters *)ex->counters;
    int gen = atomic_load(&s->gen);
    if (atomic_fetch_add(&s->count, 1) == ex->nth - 1) {
        atomic_store(&s->count, 0);
        atomic_fetch_add(&s->gen, 1);
    } else {
        while (atomic_load(&s->gen) == gen) { }
    }
}

/* ---- quant stand-ins ---- */
int g4_block_values(int t) {
    switch (t) {
    case G4_F32: case G4_F16: case G4_BF16: return 1;
    case G4_Q4_0: case G4_Q4_1: case G4_Q5_0: case G4_Q5_1: case G4_Q8_0: return 32;
    case G4_Q4_K: case G4_Q5_K: case G4_Q6_K: return 256;
    default: return 0;
    }
}

int g4_block_bytes(int t) {
    switch (t) {
    case G4_F32: return 4;
    case G4_F16: case G4_BF16: return 2;
    case G4_Q4_0: return 18;
    case G4_Q4_1: return 20;
    case G4_Q5_0: return 22;
    case G4_Q5_1: return 24;
    case G4_Q8_0: return 34;
    case G4_Q4_K: return 144;
    case G4_Q5_K: return 176;
    case G4_Q6_K: return 210;
    default: return 0;
    }
}

static float h2f(const uint8_t *p) { return g4_h2f((uint16_t)(p[0] | (p[1] << 8))); }

static void k_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void dq_block(int t, const uint8_t *b, float *y) {
    switch (t) {
    case G4_Q4_0: {
        float d = h2f(b);
        for (int i = 0; i < 16; i++) {
            y[i] = d * (float)((b[2 + i] & 0xF) - 8);
            y[i + 16] = d * (float)((b[2 + i] >> 4) - 8);
        }
    } break;
    case G4_Q4_1: {
        float d = h2f(b), m = h2f(b + 2);
        for (int i = 0; i < 16; i++) {
            y[i] = d * (float)(b[4 + i] & 0xF) + m;
            y[i + 16] = d * (float)(b[4 + i] >> 4) + m;
        }
    } break;
    case G4_Q5_0: {
        float d = h2f(b);
        uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
        for (int i = 0; i < 16; i++) {
            int lo = (b[6 + i] & 0xF) | (((qh >> i) & 1) << 4);
            int hi = (b[6 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            y[i] = d * (float)(lo - 16);
            y[i + 16] = d * (float)(hi - 16);
        }
    } break;
    case G4_Q5_1: {
        float d = h2f(b), m = h2f(b + 2);
        uint32_t qh = (uint32_t)b[4] | ((uint32_t)b[5] << 8) | ((uint32_t)b[6] << 16) | ((uint32_t)b[7] << 24);
        for (int i = 0; i < 16; i++) {
            int lo = (b[8 + i] & 0xF) | (((qh >> i) & 1) << 4);
            int hi = (b[8 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            y[i] = d * (float)lo + m;
            y[i + 16] = d * (float)hi + m;
        }
    } break;
    case G4_Q8_0: {
        float d = h2f(b);
        for (int i = 0; i < 32; i++) y[i] = (float)(int8_t)b[2 + i] * d;
    } break;
    case G4_Q4_K: case G4_Q5_K: {
        float d = h2f(b), dmin = h2f(b + 2);
        const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + (t == G4_Q5_K ? 48 : 16);
        for (int j = 0; j < 8; j++) {
            int s, m;
            k_scale_min(sc, j, &s, &m);
            float dl = d * (float)s, ml = dmin * (float)m;
            for (int i = 0; i < 32; i++) {
                int q = (qs[(j / 2) * 32 + i] >> (4 * (j & 1))) & 0xF;
                if (t == G4_Q5_K) q |= ((qh[i] >> j) & 1) << 4;
                y[j * 32 + i] = dl * (float)q - ml;
            }
        }
    } break;
    case G4_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = h2f(b + 208);
        for (int j = 0; j < 8; j++) {          /* 8 groups of 32 */
            for (int i = 0; i < 32; i++) {
                int idx = j * 32 + i;
                int lo = (ql[(j / 4) * 64 + (j & 1) * 32 + i] >> (4 * ((j / 2) & 1))) & 0xF;
                int hi = (qh[(j / 4) * 32 + i] >> (2 * (j & 3))) & 3;
                y[idx] = d * (float)sc[idx / 16] * (float)((lo | (hi << 4)) - 32);
            }
        }
    } break;
    }
}

void g4_dequant_row(int t, const void *row, int64_t k0, int64_t n, float *dst) {
    const uint8_t *r = (const uint8_t *)row;
    if (t == G4_F32) { memcpy(dst, (const float *)row + k0, (size_t)n * 4); return; }
    if (t == G4_F16) { for (int64_t i = 0; i < n; i++) dst[i] = h2f(r + 2 * (k0 + i)); return; }
    if (t == G4_BF16) {
        for (int64_t i = 0; i < n; i++) dst[i] = g4_bf2f((uint16_t)(r[2 * (k0 + i)] | (r[2 * (k0 + i) + 1] << 8)));
        return;
    }
    int bv = g4_block_values(t), bb = g4_block_bytes(t);
    for (int64_t i = 0; i < n; i += bv) dq_block(t, r + (k0 + i) / bv * bb, dst + i);
}

/* ---- matvec stand-ins (dequantize a row, float dot) ---- */
size_t g4_matvec_scratch(const g4_cmd *c) { return (size_t)c->in_cols * sizeof(float) + 64; }

void g4_matvec_prepare(const g4_cmd *c, const float *x, void *ws) { (void)c; (void)x; (void)ws; }

void g4_matvec(const g4_cmd *c, const float *x, const void *ws, float *y, int64_t o0, int64_t o1) {
    float *row = (float *)ws;   /* the shim uses its "read-only" scratch as a row buffer */
    for (int64_t o = o0; o < o1; o++) {
        g4_dequant_row(c->qtype, (const uint8_t *)c->w + o * c->w_row_bytes, 0, c->in_cols, row);
        float s = 0;
        for (int i = 0; i < c->in_cols; i++) s += row[i] * x[i];
        y[o] = s;
    }
}

void g4_matvec_rows(const g4_cmd *c, int R, const float *const *x, void *const *ws, float *const *y,
                    int64_t o0, int64_t o1) {
    for (int r = 0; r < R; r++) g4_matvec(c, x[r], ws[r], y[r], o0, o1);
}

/* ---- a pool stand-in ---- */
typedef struct { const g4_cmd *c; g4_exec *ex; int ith, nth; } shim_job;

static void *shim_thread(void *arg) {
    shim_job *j = (shim_job *)arg;
    g4_k_matmul(j->c, j->ex, j->ith, j->nth);
    return NULL;
}

/* Run one matmul command on nth threads (threaded != 0) or by calling every ith in turn. */
int gemm_shim_run(const g4_cmd *c, int nth, int threaded) {
    size_t ws_bytes = (g4_matmul_scratch(c, nth) + 63) & ~(size_t)63;
    uint8_t *ws = (uint8_t *)aligned_alloc(64, ws_bytes * (size_t)nth + 64);
    shim_counters *cnt = (shim_counters *)aligned_alloc(64, 64);
    if (!ws || !cnt) return -1;
    atomic_init(&cnt->chunk, 0);
    atomic_init(&cnt->count, 0);
    atomic_init(&cnt->gen, 0);
    g4_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.ws = ws;
    ex.ws_bytes = ws_bytes;
    ex.nth = nth;
    ex.counters = cnt;
    shim_job jobs[64];
    pthread_t th[64];
    if (nth > 64) return -1;
    for (int i = 0; i < nth; i++) jobs[i] = (shim_job){c, &ex, i, nth};
    if (threaded) {
        for (int i = 1; i < nth; i++) pthread_create(&th[i], NULL, shim_thread, &jobs[i]);
        shim_thread(&jobs[0]);
        for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
    } else {
        for (int i = 0; i < nth; i++) shim_thread(&jobs[i]);
    }
    free(ws);
    free(cnt);
    return 0;
}

const char *gemm_shim_isa(void) { return G4_ISA_NAME; }
