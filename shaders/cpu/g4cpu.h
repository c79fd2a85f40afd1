/* g4cpu: the native CPU backend's kernels and executor (C11).
 *
 * The Python side lowers an op list (runtime/ops.py) once into an array of g4_cmd, one command
 * per op, with every pointer resolved (activation buffers in one arena, KV caches, weights left
 * in their GGUF block layout in the memory map). A token is one call, g4_run(): a pool of `nth`
 * threads (the caller is thread 0) walks the commands, every thread calls every command's kernel
 * with its own (ith, nth), and a barrier separates consecutive commands. Per-call values (pos0,
 * token ids) come in g4_exec.
 *
 * Kernel contract (every g4_k_* below):
 *   - called by all nth threads with the same command; thread ith does its share, split so
 *     that the union over ith = 0..nth-1 is the whole op, with no two threads writing one value;
 *   - may call g4_barrier(ex) only if every thread calls it the same number of times;
 *   - may claim dynamic work with g4_chunk(ex): a counter that starts at 0 for each command;
 *   - per-thread scratch: g4_ws(ex, ith) of ex->ws_bytes bytes (64-byte aligned); the size is
 *     the max over commands of g4_scratch_bytes(cmd, nth), queried at lowering time;
 *   - shared scratch: ex->shared (64-byte aligned), ex->shared_bytes >= max of
 *     g4_shared_bytes(cmd, nth);
 *   - in-place ops are common: `out` may equal `a` (or `b`) for element-wise ops, RMSNorm, RoPE,
 *     Scale, Softcap. MatMul, Attention and Slice never alias out with an input.
 * All activations are float32, row-major, contiguous ([rows, cols], row stride = cols).
 *
 * ISA: the library builds three ways. With __AVX512F__ (+BW/VL/DQ) the AVX-512 paths, with
 * __AVX2__ + __FMA__ + __F16C__ the AVX2 paths, else portable C (any CPU, aarch64 included).
 * G4_ISA_NAME says which one a build took. The shared files are written on simd.h's vectors;
 * the matvec and gemm kernels of each path are in arch/avx512, arch/avx2 or arch/portable, and a
 * build compiles that one folder (runtime/backends/cpu/compiler.py).
 *
 * Files: dispatch.c (g4_run, the command walk) calls the kernels - gemm.c + arch/<isa>/
 * (matmul), quant.c (dequantization), ops.c, attention.c, moe.c - and hands the walk to
 * pool.c (threads, barrier, chunk counters). Kernels call the pool's g4_barrier / g4_chunk,
 * never the dispatcher.
 */
#ifndef G4CPU_H
#define G4CPU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) \
    && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define G4_AVX512 1
#define G4_AVX2 1
#define G4_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define G4_AVX2 1
#define G4_ISA_NAME "avx2"
#else
#define G4_ISA_NAME "scalar"
#endif

#if defined(G4_AVX2)
#include <immintrin.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Batches of up to this many rows are row-exact: every row gets the bits a one-row batch (a
 * decode step) would give it, so speculative verification and several sequences decoded
 * together reproduce plain decoding token for token. Matmuls of such batches run the decode
 * matvec per row (the weights still stream from memory once); attention runs each row as a
 * one-row attention over the batch's earlier rows as the cache holds them. */
#define G4_ROW_EXACT_MAX 16
#define G4_ALIGN64(x) (((size_t)(x) + 63) & ~(size_t)63)

/* GGML tensor type ids (gguf.GGMLQuantizationType). */
enum {
    G4_F32 = 0, G4_F16 = 1, G4_Q4_0 = 2, G4_Q4_1 = 3, G4_Q5_0 = 6, G4_Q5_1 = 7, G4_Q8_0 = 8,
    G4_Q4_K = 12, G4_Q5_K = 13, G4_Q6_K = 14, G4_BF16 = 30,
};

/* Activation paths of a matmul (g4_cmd.act; q8.h): exact float32 (0), or a mode - int8 (Q8) or
 * int16-precision as two int8 planes (I16) - plus G4_ACT_REPACKED when w points at the weights
 * repacked 8 rows at a time (repack.c) instead of the GGUF rows. */
enum { G4_ACT_EXACT = 0, G4_ACT_Q8 = 1, G4_ACT_I16 = 2, G4_ACT_MODE = 3, G4_ACT_REPACKED = 4,
       G4_ACT_ROW_EXACT = 8 /* an exact matmul in a graph on an integer path: row-exact at any size */ };

/* Op kinds (one per op class of runtime/ops.py). */
enum {
    G4_OP_EMBED = 1,      /* out[r] = dequant(w row tokens[r]) * scale                         */
    G4_OP_MATMUL = 2,     /* out[r, o] = sum_i a[r, i] * W[o, i]; W: w_rows x in_cols, qtype  */
    G4_OP_RMSNORM = 3,    /* each run of `group` cols: v / sqrt(mean(v^2) + eps) (* w[group]) */
    G4_OP_ROPE = 4,       /* NeoX rotary on heads of `group` cols, n_rot dims, freqs[n_rot/2] */
    G4_OP_ATTENTION = 5,  /* causal (windowed) GQA attention, see below                        */
    G4_OP_KV_STORE = 6,   /* cache rows (pos0 + r) % cache_rows <- a (K) / b (V) rows (per seg) */
    G4_OP_GELU_MUL = 7,   /* out = gelu_tanh(a) * b                                            */
    G4_OP_GELU = 8,       /* out = gelu_tanh(a)                                                */
    G4_OP_ADD = 9,        /* out = a + b                                                       */
    G4_OP_MUL = 10,       /* out = a * b                                                       */
    G4_OP_SCALE = 11,     /* out = a * scale                                                   */
    G4_OP_SOFTCAP = 12,   /* out = cap * tanh(a / cap)                                         */
    G4_OP_SLICE = 13,     /* out = a[row0 : row0 + rows, col0 : col0 + cols]; a has in_cols   */
    G4_OP_MOE_ROUTE = 14, /* top-k experts and weights from router logits (moe.c)             */
    G4_OP_MOE_MATMUL = 15,/* each selection's expert matrix times its row (moe.c)             */
    G4_OP_MOE_SUM = 16,   /* weighted sum of a row's k expert outputs (moe.c)                 */
    G4_OP_LAYERNORM = 17, /* per row (v - mean) / sqrt(var + eps) (* w) (+ d); media_ops.c      */
    G4_OP_ADD_VECTOR = 18,/* out[r] = a[r] + w[cols]                                           */
    G4_OP_GATHER_ADD = 19,/* out[r] = a[r] + sum_j w[(int)b[r*group + j]]; w f32 [w_rows, cols] */
    G4_OP_TAKE_ROWS = 20, /* out[r] = c[r] != 0 ? b[r] : a[r] (b [rows, cols], c [rows, 1])    */
    /* vision encoder ops (vit_ops.c; numbered apart so other additions do not collide) */
    G4_OP_CLAMP = 40,     /* out = min(max(a, scale), cap)                                      */
    G4_OP_ROPE2D = 41,    /* axial NeoX rotary: each head's halves by b[r*2 + 0] / b[r*2 + 1],   */
                          /* group = head_dim, freqs[group/4] (double)                          */
    G4_OP_FULL_ATTENTION = 42, /* non-causal softmax(scale q.k) v over all rows: a, b, c as   */
                          /* ATTENTION's q, k, v; no cache                                      */
    G4_OP_POOL_ROWS = 43, /* out[r] = scale * mean of a rows r*group .. r*group + group - 1     */
    G4_OP_STANDARDIZE = 44, /* out[r] = (a[r] - d) * w (f32 rows of cols values)                 */
    /* the gemma4a conformer's ops (conformer_ops.c; its clamps are CLAMP); numbered apart */
    G4_OP_SILU = 50,      /* out = a * sigmoid(a)                                              */
    G4_OP_GLU = 51,       /* out[r, j] = a[r, j] * sigmoid(a[r, j + cols]); a has in_cols      */
    G4_OP_CONV2D_NORM_RELU = 52, /* 3x3 s2 p1 conv (group in -> n_head out channels, n_rot
                                    input rows, c = row mask) -> LayerNorm(d) -> ReLU        */
    G4_OP_DEPTHWISE_CONV1D = 53, /* causal depthwise conv over rows, kernel `group`, w [cols][group] */
    G4_OP_CHUNKED_ATTENTION = 54,/* local attention with a relative table w, keys < row0 (valid) */
    G4_OP_COUNT_
};
/* Limits of the conformer kernels' stack arrays (the lowering refuses more). */
#define G4_CONV_MAX_CH 1024
#define G4_CONV_MAX_HEAD_DIM 512
#define G4_CONV_MAX_WINDOW 64

/* One lowered op. Fields an op does not use are zero / NULL.
 *
 * ATTENTION: q = a [rows, n_head*group], this batch's k = b and v = c [rows, n_kv_head*group]
 * (f32), the caches cache_k/cache_v [cache_rows, n_kv_head*group] (f16 when cache_f16, else
 * f32; position p in row p % cache_rows). Query row r is at position p = pos0 + r and attends to
 * positions max(0, p - window + 1) .. p (window 0: 0 .. p): positions >= pos0 from the batch
 * rows (p - pos0), earlier ones from the cache. Head h reads KV head h / (n_head / n_kv_head).
 * scores = scale * q.k (f32), softmax, out[r, h*group ...] = sum p_j v_j.
 * EMBED: w = table (raw GGUF rows of w_row_bytes), tokens from g4_exec.
 * ATTENTION with d != NULL (media prompts): d [rows] f32 holds, per row, how many later rows of
 * the batch it also sees (kv <= p + d[r], the window still applied); such a batch never runs row
 * by row.
 * RMSNORM: w = f32 weight of `group` values, or NULL.  ROPE: freqs = n_rot/2 inverse
 * frequencies (double, frequency factors already applied); angle = (pos0 + r) * freqs[i],
 * computed in double; pair (i, i + n_rot/2) of each head turns by it.
 */
typedef struct g4_cmd {
    int32_t op;            /* G4_OP_* */
    int32_t qtype;         /* EMBED, MATMUL: GGML type of w */
    int32_t rows;          /* rows of out (tokens; 1 for a last-row slice / output) */
    int32_t cols;          /* cols of out (MATMUL: output features = W rows) */
    int32_t in_cols;       /* MATMUL: input width K; SLICE: cols of a; others: = cols */
    int32_t row0, col0;    /* SLICE */
    int32_t group;         /* RMSNORM: group; ROPE, ATTENTION, KV_STORE: head_dim */
    int32_t n_rot;         /* ROPE */
    int32_t n_head;        /* ATTENTION */
    int32_t n_kv_head;     /* ATTENTION */
    int32_t window;        /* ATTENTION: 0 = global */
    int32_t cache_rows;    /* ATTENTION, KV_STORE */
    int32_t cache_f16;     /* ATTENTION, KV_STORE: caches hold IEEE half */
    int64_t w_rows;        /* MATMUL: rows of W (= cols); EMBED: rows of the table */
    int64_t w_row_bytes;   /* MATMUL, EMBED: bytes of one GGUF row of w */
    float eps;             /* RMSNORM */
    float scale;           /* EMBED, SCALE, ATTENTION */
    float cap;             /* SOFTCAP */
    int32_t act;           /* MATMUL, MOE_MATMUL: G4_ACT_* (quantized weight types only);
                              ATTENTION: nonzero = every batch row-exact (the q8 path's) */
    float *out;            /* KV_STORE: unused (writes cache_k / cache_v) */
    const float *a;
    const float *b;
    const float *c;
    const void *w;
    const double *freqs;
    void *cache_k;
    void *cache_v;
    const float *d;        /* ATTENTION: per-row keys ahead, or NULL; LAYERNORM: bias, or NULL */
} g4_cmd;

typedef struct g4_pool g4_pool;

/* What one g4_run call executes with. Filled by the Python side; the pool sets the rest. */
typedef struct g4_exec {
    int32_t pos0;              /* position of row 0 */
    int32_t n_tokens;          /* rows of the batch */
    const int32_t *tokens;     /* n_tokens ids (EMBED) */
    uint8_t *ws;               /* per-thread scratch: thread ith owns ws + ith * ws_bytes */
    size_t ws_bytes;
    uint8_t *shared;           /* scratch shared by all threads */
    size_t shared_bytes;
    /* Several sequences in one batch: n_segs > 0 segments of G4_SEG_FIELDS ints each (first
     * row, rows, position of the first row, cache slot). ROPE, KV_STORE and ATTENTION then run
     * once per segment, on its rows, at its positions, in its slot of the caches (slot s starts
     * at row s * cache_rows); every other command is row-wise and runs over the whole batch.
     * n_segs = 0: one sequence, rows at pos0 + r, slot 0. */
    int32_t n_segs;
    const int32_t *segs;
    /* set by g4_run */
    int32_t in_segment;        /* the kernel runs one segment: deal work units out statically */
    g4_pool *pool;
    int nth;
    int32_t cmd_index;         /* index of the command being run */
    void *counters;            /* one atomic counter per command (g4_chunk) */
} g4_exec;

#define G4_SEG_FIELDS 4

static inline void *g4_ws(const g4_exec *ex, int ith) { return ex->ws + (size_t)ith * ex->ws_bytes; }

/* Thread pool (pool.c) and command dispatch (dispatch.c). */
void g4_barrier(g4_exec *ex);                      /* every thread waits for all nth */
int64_t g4_chunk(g4_exec *ex);                     /* 0, 1, 2, ... across all threads, per command */
const char *g4_isa(void);                          /* G4_ISA_NAME of this build */
g4_pool *g4_pool_create(int nth);
void g4_pool_free(g4_pool *pool);
int g4_pool_threads(const g4_pool *pool);
/* Run commands [begin, end) on the pool: 0, -1 on bad arguments, -2 - i when command i is not
 * runnable (unknown op or weight type, or its kernel is missing from the build). */
int g4_run(g4_pool *pool, const g4_cmd *cmds, int32_t begin, int32_t end, g4_exec *ex);
size_t g4_scratch_bytes(const g4_cmd *c, int nth);  /* per-thread scratch a command needs */
size_t g4_shared_bytes(const g4_cmd *c, int nth);   /* shared scratch a command needs */
int g4_cmd_valid(const g4_cmd *c);                  /* 1 when op and types are supported */
size_t g4_sizeof_cmd(void);                         /* for the ctypes mirrors */
size_t g4_sizeof_exec(void);

/* Kernels. Matmul (gemm.c dispatches: few rows -> the matvec, more -> tiled gemm). */
void g4_k_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth);
size_t g4_matmul_scratch(const g4_cmd *c, int nth);
size_t g4_matmul_shared(const g4_cmd *c, int nth);
/* gemm.c's tiled product, one task on the calling thread (see g4_gemm_block in gemm.c). */
size_t g4_gemm_scratch(void);
int g4_gemm_nr(void);
int g4_gemm_tp(void);
void g4_gemm_block(const g4_cmd *c, int64_t pb0, int64_t pb1, int64_t r0, int64_t r1, void *ws);
/* The matvec (arch/<isa>/matvec.c, matvec.h), one activation row x (in_cols floats) against W rows [o0, o1): y[o] = W[o] . x.
 * g4_matvec_prepare() runs once per activation row and thread before any g4_matvec() on that row
 * and may precompute from x into ws (g4_matvec_scratch(c) bytes, e.g. per-block sums of x). */
size_t g4_matvec_scratch(const g4_cmd *c);
void g4_matvec_prepare(const g4_cmd *c, const float *x, void *ws);
void g4_matvec(const g4_cmd *c, const float *x, const void *ws, float *y, int64_t o0, int64_t o1);
/* c->act == G4_ACT_Q8 on a quantized type: the q8 path (q8.h); ws then holds the quantized row
 * (g4_q8_row_bytes(in_cols) bytes). g4_q8_dot: how this build takes integer dots ("vnni",
 * "avxvnni", "maddubs" or "scalar"). */
size_t g4_q8_row_bytes(int64_t K);
/* repack.c: weight types with an 8-row repacked layout, its size and the repacking itself. */
int g4_repack8_type(int qtype);
size_t g4_repack8_bytes(int qtype, int64_t rows, int64_t row_bytes);
int64_t g4_repack8_group_bytes(int qtype, int64_t K);
int g4_repack8(int qtype, const void *src, int64_t rows, int64_t row_bytes, void *dst);
/* whether this build has a kernel for qtype's repacked layout */
int g4_q8_repacked_kernel(int qtype);
const char *g4_q8_dot(void);
/* The same for R rows at once, each row's result bit for bit g4_matvec's (weights decoded once). */
void g4_matvec_rows(const g4_cmd *c, int R, const float *const *x, void *const *ws, float *const *y,
                    int64_t o0, int64_t o1);

/* Element-wise and the rest (ops.c; attention: attention.c). */
void g4_k_embed(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_rmsnorm(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_rope(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth);
size_t g4_attention_scratch(const g4_cmd *c, int nth);
size_t g4_attention_shared(const g4_cmd *c, int nth);
void g4_k_kv_store(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_gelu_mul(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_gelu(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_add(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_mul(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_scale(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_softcap(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_slice(const g4_cmd *c, g4_exec *ex, int ith, int nth);
/* The encoders' ops and the media rows (media_ops.c). */
void g4_k_layernorm(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_add_vector(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_gather_add(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_take_rows(const g4_cmd *c, g4_exec *ex, int ith, int nth);
/* The gemma4a conformer's ops (conformer_ops.c). */
void g4_k_silu(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_glu(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_conv2d_norm_relu(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_depthwise_conv1d(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_chunked_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth);
/* The vision encoder's ops (vit_ops.c). */
void g4_k_clamp(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_rope2d(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_full_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_pool_rows(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_standardize(const g4_cmd *c, g4_exec *ex, int ith, int nth);

/* Mixture of experts (moe.c). */
void g4_k_moe_route(const g4_cmd *c, g4_exec *ex, int ith, int nth);
void g4_k_moe_matmul(const g4_cmd *c, g4_exec *ex, int ith, int nth);
size_t g4_moe_matmul_scratch(const g4_cmd *c, int nth);
void g4_k_moe_sum(const g4_cmd *c, g4_exec *ex, int ith, int nth);

/* Quant blocks (quant.c): exact dequantization as gguf.quants / llama.cpp define it. */
int g4_block_values(int qtype);                    /* values per block (1 for F32/F16/BF16), 0 if unknown */
int g4_block_bytes(int qtype);                     /* bytes per block, 0 if unknown */
/* dst[0 .. n) = values [k0, k0 + n) of one GGUF row; k0 and n multiples of the block size. */
void g4_dequant_row(int qtype, const void *row, int64_t k0, int64_t n, float *dst);

/* IEEE half <-> float, exact (round to nearest even on the way down), any ISA. */
static inline float g4_h2f(uint16_t h) {
#if defined(G4_AVX2)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {                                           /* subnormal: normalize */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint16_t g4_f2h(float f) {
#if defined(G4_AVX2)
    return _cvtss_sh(f, 0);   /* 0 = round to nearest even */
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);        /* rounds to inf */
    if (ax < 0x38800000u) {                                          /* subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;                 /* < half the smallest */
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                     /* 14 + (113 - e) - 1 */
        uint32_t hm = m >> (shift), rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1u))) hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t h = ((ax >> 13) - ((127 - 15) << 10)), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
#endif
}

static inline float g4_bf2f(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#ifdef __cplusplus
}
#endif
#endif
