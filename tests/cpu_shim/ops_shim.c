/* Test-only harness for shaders/cpu/ops.c and attention.c (tests/test_cpu_kernels_ops.py).
 *
 * Stands in for pool.c and dispatch.c: shim_run() starts nth real pthreads, each calling the command's
 * kernel with its own ith (thread 0 is the caller), with a real barrier (g4_barrier) and an
 * atomic work counter (g4_chunk); per-thread and shared scratch are sized by the kernels' own
 * g4_attention_scratch / g4_attention_shared. A minimal g4_dequant_row (F32, F16, BF16, Q8_0)
 * replaces quant.c. Exported helpers wrap the header's inline f16 conversions and time
 * tanhf for the speed comparison.
 */
#define _POSIX_C_SOURCE 200809L
#include "g4cpu.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct g4_pool {
    pthread_barrier_t bar;
    atomic_llong counter;
    atomic_int barriers;   /* barrier waits, all threads (tests check that split-K ran) */
};

void g4_barrier(g4_exec *ex) {
    struct g4_pool *p = ex->pool;
    atomic_fetch_add(&p->barriers, 1);
    pthread_barrier_wait(&p->bar);
}

int64_t g4_chunk(g4_exec *ex) { return (int64_t)atomic_fetch_add(&ex->pool->counter, 1); }

const char *g4_isa(void) { return G4_ISA_NAME; }

/* ---- minimal quant.c stand-in (weak: a build that links quant.c uses the real one) ---- */
__attribute__((weak)) int g4_block_values(int qtype) {
    switch (qtype) {
    case G4_F32: case G4_F16: case G4_BF16: return 1;
    case G4_Q8_0: return 32;
    default: return 0;
    }
}

__attribute__((weak)) int g4_block_bytes(int qtype) {
    switch (qtype) {
    case G4_F32: return 4;
    case G4_F16: case G4_BF16: return 2;
    case G4_Q8_0: return 34;
    default: return 0;
    }
}

__attribute__((weak)) void g4_dequant_row(int qtype, const void *row, int64_t k0, int64_t n, float *dst) {
    const uint8_t *r = (const uint8_t *)row;
    switch (qtype) {
    case G4_F32: memcpy(dst, (const float *)row + k0, (size_t)n * 4); break;
    case G4_F16: for (int64_t i = 0; i < n; i++) dst[i] = g4_h2f(((const uint16_t *)row)[k0 + i]); break;
    case G4_BF16: for (int64_t i = 0; i < n; i++) dst[i] = g4_bf2f(((const uint16_t *)row)[k0 + i]); break;
    case G4_Q8_0:
        for (int64_t b = k0 / 32; b < (k0 + n) / 32; b++) {
            const uint8_t *blk = r + b * 34;
            uint16_t dh;
            memcpy(&dh, blk, 2);
            float d = g4_h2f(dh);
            for (int i = 0; i < 32; i++) dst[(b - k0 / 32) * 32 + i] = d * (float)(int8_t)blk[2 + i];
        }
        break;
    default: memset(dst, 0, (size_t)n * 4);
    }
}

/* ---- threaded runner ---- */
typedef struct {
    const g4_cmd *c;
    g4_exec *ex;
    int ith, nth;
} shim_arg;

static void call_kernel(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    switch (c->op) {
    case G4_OP_EMBED: g4_k_embed(c, ex, ith, nth); break;
    case G4_OP_RMSNORM: g4_k_rmsnorm(c, ex, ith, nth); break;
    case G4_OP_ROPE: g4_k_rope(c, ex, ith, nth); break;
    case G4_OP_ATTENTION: g4_k_attention(c, ex, ith, nth); break;
    case G4_OP_KV_STORE: g4_k_kv_store(c, ex, ith, nth); break;
    case G4_OP_GELU_MUL: g4_k_gelu_mul(c, ex, ith, nth); break;
    case G4_OP_GELU: g4_k_gelu(c, ex, ith, nth); break;
    case G4_OP_ADD: g4_k_add(c, ex, ith, nth); break;
    case G4_OP_MUL: g4_k_mul(c, ex, ith, nth); break;
    case G4_OP_SCALE: g4_k_scale(c, ex, ith, nth); break;
    case G4_OP_SOFTCAP: g4_k_softcap(c, ex, ith, nth); break;
    case G4_OP_SLICE: g4_k_slice(c, ex, ith, nth); break;
    default: break;
    }
}

static void *thread_main(void *p) {
    shim_arg *a = p;
    call_kernel(a->c, a->ex, a->ith, a->nth);
    return NULL;
}

/* Scratch for a command (poisoned with NaN bytes) unless the caller passed its own. */
static void scratch_setup(const g4_cmd *c, g4_exec *ex, int nth, void **ws, void **shared) {
    *ws = *shared = NULL;
    if (c->op == G4_OP_ATTENTION && !ex->ws) {
        ex->ws_bytes = (g4_attention_scratch(c, nth) + 63) / 64 * 64;
        *ws = aligned_alloc(64, ex->ws_bytes * (size_t)nth);   /* exact: ASan sees overruns */
        memset(*ws, 0xff, ex->ws_bytes * (size_t)nth);
        ex->ws = *ws;
    }
    if (c->op == G4_OP_ATTENTION && !ex->shared) {
        ex->shared_bytes = g4_attention_shared(c, nth);
        if (ex->shared_bytes) {
            *shared = aligned_alloc(64, (ex->shared_bytes + 63) / 64 * 64);
            memset(*shared, 0xff, ex->shared_bytes);
            ex->shared = *shared;
        }
    }
}

/* Runs one command on nth threads. ex: pos0 / n_tokens / tokens (and optionally scratch) from
 * the caller. Returns the number of g4_barrier calls (all threads), or -1. */
int shim_run(const g4_cmd *c, g4_exec *ex_in, int nth) {
    if (nth < 1 || nth > 64) return -1;
    g4_exec ex = *ex_in;
    struct g4_pool pool;
    pthread_barrier_init(&pool.bar, NULL, (unsigned)nth);
    atomic_init(&pool.counter, 0);
    atomic_init(&pool.barriers, 0);
    ex.pool = &pool;
    ex.nth = nth;
    ex.cmd_index = 0;
    ex.counters = NULL;
    void *ws, *shared;
    scratch_setup(c, &ex, nth, &ws, &shared);
    pthread_t th[64];
    shim_arg args[64];
    for (int i = 0; i < nth; i++) args[i] = (shim_arg){c, &ex, i, nth};
    for (int i = 1; i < nth; i++)
        if (pthread_create(&th[i], NULL, thread_main, &args[i]) != 0) abort();   /* test harness */
    thread_main(&args[0]);
    for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&pool.bar);
    free(ws);
    free(shared);
    return atomic_load(&pool.barriers);
}

/* ---- introspection and helpers ---- */
size_t shim_sizeof_cmd(void) { return sizeof(g4_cmd); }
size_t shim_sizeof_exec(void) { return sizeof(g4_exec); }
size_t shim_offsetof_cmd(int which) {
    switch (which) {
    case 0: return offsetof(g4_cmd, w_rows);
    case 1: return offsetof(g4_cmd, eps);
    case 2: return offsetof(g4_cmd, out);
    case 3: return offsetof(g4_cmd, cache_v);
    default: return 0;
    }
}
size_t shim_offsetof_exec(int which) {
    switch (which) {
    case 0: return offsetof(g4_exec, tokens);
    case 1: return offsetof(g4_exec, shared_bytes);
    case 2: return offsetof(g4_exec, nth);
    case 3: return offsetof(g4_exec, counters);
    default: return 0;
    }
}
const char *shim_isa(void) { return G4_ISA_NAME; }
size_t shim_attention_scratch(const g4_cmd *c, int nth) { return g4_attention_scratch(c, nth); }
size_t shim_attention_shared(const g4_cmd *c, int nth) { return g4_attention_shared(c, nth); }

void shim_h2f(const uint16_t *h, float *f, int64_t n) { for (int64_t i = 0; i < n; i++) f[i] = g4_h2f(h[i]); }
void shim_f2h(const float *f, uint16_t *h, int64_t n) { for (int64_t i = 0; i < n; i++) h[i] = g4_f2h(f[i]); }
void shim_bf2f(const uint16_t *h, float *f, int64_t n) { for (int64_t i = 0; i < n; i++) f[i] = g4_bf2f(h[i]); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);   /* CPU time: robust on a busy host */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds for `reps` passes of y = tanhf(x) (libm, this build's flags). */
double shim_time_tanhf(const float *x, float *y, int64_t n, int reps) {
    double t0 = now_s();
    for (int r = 0; r < reps; r++)
        for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
    return now_s() - t0;
}

/* Seconds for `reps` single-threaded passes of the command's kernel. */
double shim_time_kernel(const g4_cmd *c, g4_exec *ex_in, int reps) {
    g4_exec ex = *ex_in;
    struct g4_pool pool;
    pthread_barrier_init(&pool.bar, NULL, 1);
    atomic_init(&pool.barriers, 0);
    ex.pool = &pool;
    ex.nth = 1;
    void *ws, *shared;
    scratch_setup(c, &ex, 1, &ws, &shared);
    double t0 = now_s();
    for (int r = 0; r < reps; r++) {
        atomic_init(&pool.counter, 0);
        call_kernel(c, &ex, 0, 1);
    }
    double t = now_s() - t0;
    pthread_barrier_destroy(&pool.bar);
    free(ws);
    free(shared);
    return t;
}
