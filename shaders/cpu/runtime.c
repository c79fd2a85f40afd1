/* g4cpu runtime: the persistent thread pool, the barrier, and the command walk (g4_run).
 *
 * The caller of g4_run is thread 0; nth - 1 workers wait for a job by spinning briefly, then
 * sleeping on a condition variable (a decode step arrives every few milliseconds: spinning
 * through the Python side's sampling would steal a core from it). Within a job every thread
 * runs every command with its own (ith, nth) and meets the others at a spinning barrier after
 * each command, as ggml's CPU backend does.
 */
#define _GNU_SOURCE
#include "g4cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

#define SPIN_BEFORE_YIELD 2000     /* barrier: pause loops before giving the core away */
#define SPIN_BEFORE_SLEEP_NS 1000000L  /* idle worker: spin 1 ms for the next job, then sleep */
#define MAX_THREADS 256

typedef struct {
    _Alignas(64) g4_exec ex;       /* this thread's copy (cmd_index is per thread) */
} thread_slot;

struct g4_pool {
    int nth;
    pthread_t threads[MAX_THREADS];
    thread_slot *slots;
    /* the job */
    const g4_cmd *cmds;
    int32_t begin, end;
    _Atomic int64_t *counters;     /* one per command of the job */
    int32_t n_counters;
    _Alignas(64) atomic_uint job_gen;
    _Alignas(64) atomic_int sleeping;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* barrier */
    _Alignas(64) atomic_int bar_count;
    _Alignas(64) atomic_uint bar_phase;
};

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

const char *g4_isa(void) { return G4_ISA_NAME; }

int g4_pool_threads(const g4_pool *pool) { return pool->nth; }

void g4_barrier(g4_exec *ex) {
    g4_pool *p = ex->pool;
    if (p->nth == 1) return;
    unsigned phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->nth - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_acq_rel);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase) {
        if (++spins < SPIN_BEFORE_YIELD) cpu_relax();
        else sched_yield();            /* another process has our core: let the laggard run */
    }
}

int64_t g4_chunk(g4_exec *ex) {
    _Atomic int64_t *c = (_Atomic int64_t *)ex->counters + ex->cmd_index;
    return atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* Kernels are weak so that a build with a kernel file missing still loads and says which op
 * it cannot run (g4_cmd_valid) instead of failing to link. */
#define WEAK __attribute__((weak))
WEAK void g4_k_matmul(const g4_cmd *, g4_exec *, int, int);
WEAK size_t g4_matmul_scratch(const g4_cmd *, int);
WEAK void g4_k_embed(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_rmsnorm(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_rope(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_attention(const g4_cmd *, g4_exec *, int, int);
WEAK size_t g4_attention_scratch(const g4_cmd *, int);
WEAK size_t g4_attention_shared(const g4_cmd *, int);
WEAK void g4_k_kv_store(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_gelu_mul(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_gelu(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_add(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_mul(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_scale(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_softcap(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_slice(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_moe_route(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_moe_matmul(const g4_cmd *, g4_exec *, int, int);
WEAK size_t g4_moe_matmul_scratch(const g4_cmd *, int);
WEAK void g4_k_moe_sum(const g4_cmd *, g4_exec *, int, int);
WEAK int g4_block_values(int);

typedef void (*kernel_fn)(const g4_cmd *, g4_exec *, int, int);

static kernel_fn kernel_of(int op) {
    switch (op) {
    case G4_OP_EMBED: return g4_k_embed;
    case G4_OP_MATMUL: return g4_k_matmul;
    case G4_OP_RMSNORM: return g4_k_rmsnorm;
    case G4_OP_ROPE: return g4_k_rope;
    case G4_OP_ATTENTION: return g4_k_attention;
    case G4_OP_KV_STORE: return g4_k_kv_store;
    case G4_OP_GELU_MUL: return g4_k_gelu_mul;
    case G4_OP_GELU: return g4_k_gelu;
    case G4_OP_ADD: return g4_k_add;
    case G4_OP_MUL: return g4_k_mul;
    case G4_OP_SCALE: return g4_k_scale;
    case G4_OP_SOFTCAP: return g4_k_softcap;
    case G4_OP_SLICE: return g4_k_slice;
    case G4_OP_MOE_ROUTE: return g4_k_moe_route;
    case G4_OP_MOE_MATMUL: return g4_k_moe_matmul;
    case G4_OP_MOE_SUM: return g4_k_moe_sum;
    default: return NULL;
    }
}

int g4_cmd_valid(const g4_cmd *c) {
    if (kernel_of(c->op) == NULL) return 0;
    if (c->op == G4_OP_MATMUL || c->op == G4_OP_EMBED || c->op == G4_OP_MOE_MATMUL) {
        if (!g4_block_values || g4_block_values(c->qtype) <= 0) return 0;
        if (c->in_cols % g4_block_values(c->qtype) != 0) return 0;
    }
    if (c->op == G4_OP_MATMUL && !g4_matmul_scratch) return 0;
    if (c->op == G4_OP_MOE_MATMUL && (!g4_moe_matmul_scratch || c->n_head <= 0 || c->group <= 0)) return 0;
    if (c->op == G4_OP_ATTENTION && (!g4_attention_scratch || !g4_attention_shared)) return 0;
    return 1;
}

size_t g4_scratch_bytes(const g4_cmd *c, int nth) {
    if (c->op == G4_OP_MATMUL && g4_matmul_scratch) return g4_matmul_scratch(c, nth);
    if (c->op == G4_OP_ATTENTION && g4_attention_scratch) return g4_attention_scratch(c, nth);
    if (c->op == G4_OP_MOE_MATMUL && g4_moe_matmul_scratch) return g4_moe_matmul_scratch(c, nth);
    return 0;
}

size_t g4_shared_bytes(const g4_cmd *c, int nth) {
    if (c->op == G4_OP_ATTENTION && g4_attention_shared) return g4_attention_shared(c, nth);
    return 0;
}

static int per_sequence(int op) {
    return op == G4_OP_ROPE || op == G4_OP_KV_STORE || op == G4_OP_ATTENTION;
}

/* A per-sequence command over a batch of several segments: the command on each segment's rows
 * (pointers moved to its first row and its cache slot) with the segment's pos0, one after the
 * other, so each segment gets exactly the bits it gets alone. */
static void run_segments(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    g4_exec es = *ex;
    es.n_segs = 0;
    es.in_segment = 1;
    const int64_t D = c->group;
    const int64_t kvw = c->op == G4_OP_ATTENTION ? (int64_t)(c->n_kv_head > 0 ? c->n_kv_head : 1) * D : c->cols;
    const int64_t qw = c->op == G4_OP_ATTENTION ? (int64_t)c->n_head * D : c->cols;
    const size_t slot_bytes = (size_t)c->cache_rows * (size_t)kvw * (c->cache_f16 ? 2 : 4);
    for (int32_t s = 0; s < ex->n_segs; s++) {
        const int32_t *sg = ex->segs + (size_t)s * G4_SEG_FIELDS;
        const int64_t row0 = sg[0];
        g4_cmd cs = *c;
        cs.rows = sg[1];
        es.pos0 = sg[2];
        if (c->op == G4_OP_ROPE) {
            cs.a = c->a + row0 * qw;
            cs.out = c->out + row0 * qw;
        } else {
            if (c->op == G4_OP_KV_STORE) {
                cs.a = c->a + row0 * kvw;
                cs.b = c->b + row0 * kvw;
            } else {
                cs.a = c->a + row0 * qw;
                cs.b = c->b + row0 * kvw;
                cs.c = c->c + row0 * kvw;
                cs.out = c->out + row0 * qw;
            }
            cs.cache_k = (uint8_t *)c->cache_k + (size_t)sg[3] * slot_bytes;
            cs.cache_v = (uint8_t *)c->cache_v + (size_t)sg[3] * slot_bytes;
        }
        kernel_of(c->op)(&cs, &es, ith, nth);
        /* attention's shared scratch (split partials, row copies) is reused by the next one */
        if (c->op == G4_OP_ATTENTION && s + 1 < ex->n_segs) g4_barrier(ex);
    }
}

/* Every thread's part of a job: each command, then the barrier. */
static void run_commands(g4_pool *p, int ith) {
    /* Read the job once: after the last barrier thread 0 may already publish the next one. */
    g4_exec *ex = &p->slots[ith].ex;
    const g4_cmd *cmds = p->cmds;
    const int32_t begin = p->begin, end = p->end, nth = p->nth;
    for (int32_t i = begin; i < end; i++) {
        ex->cmd_index = i - begin;
        if (ex->n_segs > 0 && per_sequence(cmds[i].op))
            run_segments(&cmds[i], ex, ith, nth);
        else
            kernel_of(cmds[i].op)(&cmds[i], ex, ith, nth);
        g4_barrier(ex);
    }
}

static void *worker_main(void *arg) {
    g4_pool *p = ((void **)arg)[0];
    int ith = (int)(intptr_t)((void **)arg)[1];
    free(arg);
    unsigned seen = 0;         /* job_gen at creation: a job published before we got here still runs */
    for (;;) {
        /* A pause costs 10 to 140 cycles depending on the CPU: spin by the clock, not by count. */
        int spins = 0;
        long t0 = now_ns();
        unsigned gen;
        while ((gen = atomic_load_explicit(&p->job_gen, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
            cpu_relax();
            if ((++spins & 255) != 0 || now_ns() - t0 < SPIN_BEFORE_SLEEP_NS) continue;
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleeping, 1);
            while (atomic_load(&p->job_gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            t0 = now_ns();
        }
        seen = gen;
        if (atomic_load(&p->stop)) return NULL;
        run_commands(p, ith);
    }
}

g4_pool *g4_pool_create(int nth) {
    if (nth < 1) nth = 1;
    if (nth > MAX_THREADS) nth = MAX_THREADS;
    g4_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->slots = aligned_alloc(64, sizeof(thread_slot) * (size_t)nth);
    if (!p->slots) { free(p); return NULL; }
    memset(p->slots, 0, sizeof(thread_slot) * (size_t)nth);
    p->nth = nth;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 1; i < nth; i++) {
        void **arg = malloc(2 * sizeof(void *));
        arg[0] = p;
        arg[1] = (void *)(intptr_t)i;
        if (pthread_create(&p->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            p->nth = i;                 /* run with the threads we got */
            break;
        }
    }
    return p;
}

void g4_pool_free(g4_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->job_gen, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nth; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->counters);
    free(p->slots);
    free(p);
}

int g4_run(g4_pool *p, const g4_cmd *cmds, int32_t begin, int32_t end, g4_exec *ex) {
    if (!p || begin < 0 || end < begin) return -1;
    for (int32_t i = begin; i < end; i++)
        if (!g4_cmd_valid(&cmds[i])) return -2 - i;
    if (end == begin) return 0;
    int32_t n = end - begin;
    if (n > p->n_counters) {
        free(p->counters);
        p->counters = calloc((size_t)n, sizeof *p->counters);
        if (!p->counters) { p->n_counters = 0; return -1; }
        p->n_counters = n;
    }
    for (int32_t i = 0; i < n; i++) atomic_store_explicit(&p->counters[i], 0, memory_order_relaxed);
    p->cmds = cmds;
    p->begin = begin;
    p->end = end;
    for (int t = 0; t < p->nth; t++) {
        p->slots[t].ex = *ex;
        p->slots[t].ex.pool = p;
        p->slots[t].ex.nth = p->nth;
        p->slots[t].ex.counters = (void *)p->counters;
    }
    /* publish the job (seq_cst: pairs with a worker's sleeping++ then job_gen re-check) */
    atomic_fetch_add(&p->job_gen, 1);
    if (atomic_load(&p->sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_commands(p, 0);    /* ends with the last command's barrier: every worker is done */
    return 0;
}

/* The Python side checks its ctypes mirrors against these. */
size_t g4_sizeof_cmd(void) { return sizeof(g4_cmd); }
size_t g4_sizeof_exec(void) { return sizeof(g4_exec); }
