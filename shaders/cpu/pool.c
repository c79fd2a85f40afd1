/* g4cpu thread pool: the persistent workers, the barrier and the chunk counters (pool.h).
 *
 * The caller of a job is thread 0; nth - 1 workers wait for a job by spinning briefly, then
 * sleeping on a condition variable (a decode step arrives every few milliseconds: spinning
 * through the Python side's sampling would steal a core from it). Within a job every thread
 * runs the job function with its own ith; dispatch.c's job meets the others at a spinning
 * barrier after each command, as ggml's CPU backend does.
 */
#define _GNU_SOURCE
#include "pool.h"

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
    g4_job_fn job;
    void *job_arg;
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
        /* read the job once: after its last barrier thread 0 may already publish the next one */
        g4_job_fn job = p->job;
        void *job_arg = p->job_arg;
        job(job_arg, &p->slots[ith].ex, ith);
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

int g4_pool_reset_counters(g4_pool *p, int32_t n) {
    if (n > p->n_counters) {
        free(p->counters);
        p->counters = calloc((size_t)n, sizeof *p->counters);
        if (!p->counters) { p->n_counters = 0; return -1; }
        p->n_counters = n;
    }
    for (int32_t i = 0; i < n; i++) atomic_store_explicit(&p->counters[i], 0, memory_order_relaxed);
    return 0;
}

void g4_pool_run(g4_pool *p, g4_job_fn job, void *arg, const g4_exec *ex) {
    p->job = job;
    p->job_arg = arg;
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
    job(arg, &p->slots[0].ex, 0);    /* ends with the job's last barrier: every worker is done */
}
