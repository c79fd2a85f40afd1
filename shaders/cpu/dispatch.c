/* g4cpu command dispatch: g4_run checks the commands, then the pool (pool.c) runs the command
 * walk on every thread - each command's kernel with the thread's (ith, nth), a barrier after
 * each - with per-sequence commands of a multi-sequence batch run once per segment. Also the
 * scratch sizes the Python side queries at lowering time.
 */
#include "pool.h"

/* Kernels are weak so that a build with a kernel file missing still loads and says which op
 * it cannot run (g4_cmd_valid) instead of failing to link. */
#define WEAK __attribute__((weak))
WEAK void g4_k_matmul(const g4_cmd *, g4_exec *, int, int);
WEAK size_t g4_matmul_scratch(const g4_cmd *, int);
WEAK size_t g4_matmul_shared(const g4_cmd *, int);
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
WEAK void g4_k_layernorm(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_add_vector(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_gather_add(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_take_rows(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_silu(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_glu(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_conv2d_norm_relu(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_depthwise_conv1d(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_chunked_attention(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_clamp(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_rope2d(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_full_attention(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_pool_rows(const g4_cmd *, g4_exec *, int, int);
WEAK void g4_k_standardize(const g4_cmd *, g4_exec *, int, int);
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
    case G4_OP_LAYERNORM: return g4_k_layernorm;
    case G4_OP_ADD_VECTOR: return g4_k_add_vector;
    case G4_OP_GATHER_ADD: return g4_k_gather_add;
    case G4_OP_TAKE_ROWS: return g4_k_take_rows;
    case G4_OP_SILU: return g4_k_silu;
    case G4_OP_GLU: return g4_k_glu;
    case G4_OP_CONV2D_NORM_RELU: return g4_k_conv2d_norm_relu;
    case G4_OP_DEPTHWISE_CONV1D: return g4_k_depthwise_conv1d;
    case G4_OP_CHUNKED_ATTENTION: return g4_k_chunked_attention;
    case G4_OP_CLAMP: return g4_k_clamp;
    case G4_OP_ROPE2D: return g4_k_rope2d;
    case G4_OP_FULL_ATTENTION: return g4_k_full_attention;
    case G4_OP_POOL_ROWS: return g4_k_pool_rows;
    case G4_OP_STANDARDIZE: return g4_k_standardize;
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
    if (c->op == G4_OP_MATMUL && g4_matmul_shared) return g4_matmul_shared(c, nth);
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
                if (c->d) cs.d = c->d + row0;   /* keys ahead, one per row */
            }
            cs.cache_k = (uint8_t *)c->cache_k + (size_t)sg[3] * slot_bytes;
            cs.cache_v = (uint8_t *)c->cache_v + (size_t)sg[3] * slot_bytes;
        }
        kernel_of(c->op)(&cs, &es, ith, nth);
        /* attention's shared scratch (split partials, row copies) is reused by the next one */
        if (c->op == G4_OP_ATTENTION && s + 1 < ex->n_segs) g4_barrier(ex);
    }
}

/* What g4_run hands the pool: commands [begin, end). */
typedef struct {
    const g4_cmd *cmds;
    int32_t begin, end;
} command_job;

/* Every thread's part of a job: each command, then the barrier. */
static void run_commands(void *arg, g4_exec *ex, int ith) {
    /* Read the job before the first barrier: after the last one, thread 0 returns from g4_run
     * and the job (on its stack) is gone. */
    const command_job *job = (const command_job *)arg;
    const g4_cmd *cmds = job->cmds;
    const int32_t begin = job->begin, end = job->end, nth = ex->nth;
    for (int32_t i = begin; i < end; i++) {
        ex->cmd_index = i - begin;
        if (ex->n_segs > 0 && per_sequence(cmds[i].op))
            run_segments(&cmds[i], ex, ith, nth);
        else
            kernel_of(cmds[i].op)(&cmds[i], ex, ith, nth);
        g4_barrier(ex);
    }
}

int g4_run(g4_pool *p, const g4_cmd *cmds, int32_t begin, int32_t end, g4_exec *ex) {
    if (!p || begin < 0 || end < begin) return -1;
    for (int32_t i = begin; i < end; i++)
        if (!g4_cmd_valid(&cmds[i])) return -2 - i;
    if (end == begin) return 0;
    if (g4_pool_reset_counters(p, end - begin) != 0) return -1;
    command_job job = {cmds, begin, end};
    g4_pool_run(p, run_commands, &job, ex);
    return 0;
}

const char *g4_isa(void) { return G4_ISA_NAME; }

/* The Python side checks its ctypes mirrors against these. */
size_t g4_sizeof_cmd(void) { return sizeof(g4_cmd); }
size_t g4_sizeof_exec(void) { return sizeof(g4_exec); }
