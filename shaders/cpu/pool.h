/* pool.h: what the thread pool (pool.c) offers inside the library.
 *
 * Kernels use the work-splitting helpers below and g4_barrier / g4_chunk (g4cpu.h); the command
 * walk (dispatch.c) hands a job to the pool with g4_pool_run. The pool knows nothing of
 * commands or kernels: calls run dispatch -> kernels -> pool, never back.
 */
#ifndef G4_POOL_H
#define G4_POOL_H

#include "g4cpu.h"

#define G4_INTERNAL __attribute__((visibility("hidden")))

/* [b, e) of n items for thread ith of nth, even split. */
static inline void g4_split_even(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    *b = n * ith / nth;
    *e = n * (ith + 1) / nth;
}

/* Element range for thread ith, split in 16-float pieces (64 bytes: no shared cache lines). */
static inline void g4_split_elems(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    int64_t nb = (n + 15) / 16;
    *b = nb * ith / nth * 16;
    *e = nb * (ith + 1) / nth * 16;
    if (*b > n) *b = n;
    if (*e > n) *e = n;
}

/* Output features per g4_chunk claim of a matvec over n_mats matrices of `cols` features each
 * (dense: 1; MoE: the used experts), always a multiple of 16 so that no 8-row repacked group is
 * split. One row (decode) streams each weight once: about G4_DECODE_CHUNKS claims per thread in
 * all, so each thread reads long runs and its prefetches stay in its own range (64-feature claims
 * alternating between two threads streamed 12-15 % slower on a Sapphire Rapids VM,
 * docs/benchmarks/cpu-native.md). Several rows reuse each block from L1: 16..64 features, ~8
 * claims per thread, for the balance. */
#ifndef G4_DECODE_CHUNKS
#define G4_DECODE_CHUNKS 2
#endif
static inline int64_t g4_feature_chunk(int64_t cols, int64_t rows, int nth, int64_t n_mats) {
    if (rows == 1) {
        const int64_t want = (int64_t)G4_DECODE_CHUNKS * nth;
        const int64_t cs = cols / (n_mats > 1 ? (want + n_mats - 1) / n_mats : want);
        return cs < 16 ? 16 : (cs + 15) & ~(int64_t)15;
    }
    const int64_t cs = cols / (8 * (int64_t)nth);
    return cs < 16 ? 16 : cs > 64 ? 64 : (cs + 15) & ~(int64_t)15;
}

/* One job: job(arg, ex, ith) on every thread, ex being that thread's copy of the caller's
 * g4_exec (with pool, nth and counters set). A job must read what it needs from arg before its
 * first g4_barrier and end with a g4_barrier on every thread: the pool does not wait for the
 * workers again, so the barrier is what tells the caller they are done. */
typedef void (*g4_job_fn)(void *arg, g4_exec *ex, int ith);

/* n chunk counters (g4_chunk: one per command of the job), all reset to 0; 0, or -1 when out of
 * memory. Call before g4_pool_run. */
G4_INTERNAL int g4_pool_reset_counters(g4_pool *pool, int32_t n);
/* Run a job on the pool; the caller is thread 0. */
G4_INTERNAL void g4_pool_run(g4_pool *pool, g4_job_fn job, void *arg, const g4_exec *ex);

#endif
