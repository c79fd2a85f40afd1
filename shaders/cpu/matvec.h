/* matvec.h: what the decode matvec of every ISA (arch/<isa>/matvec.c) shares. The matvec is
 * y[o] = W[o] . x for one activation row, straight from GGUF rows.
 *
 * fp32-exact design: every weight code is decoded exactly to float in registers, x stays float32
 * and products accumulate in float32 with FMA. Each weight byte is read once, in row order, with
 * a software prefetch 4 KB ahead. Every type has a fused kernel for AVX-512
 * (arch/avx512/matvec.c), one for AVX2+FMA+F16C (arch/avx2/matvec.c) and a portable one
 * (arch/portable/matvec.c); a build compiles one of them. Each defines the whole matvec API of
 * g4cpu.h (g4_matvec_scratch, _prepare, g4_matvec, g4_matvec_rows).
 *
 * Decode is memory-bound only if the decode keeps up with the memory; for 4- and 6-bit codes
 * the vector ALU ports are the limit (AVX-512: ports 0 and 5 only), so the kernels count uops:
 *   - f16 block scales are looked up in a 65536-entry float table (g4_f16tab, f16_table.c, built
 *     once, thread safe): a load, used as the FMA's broadcast memory operand - no vector-ALU work per scale.
 *   - AVX-512 4-bit codes: vpmovzxbd of 16 qs bytes; the low nibbles through vpermps from a
 *     16-entry float table (vpermps reads index bits 0..3 only, so no mask), the high nibbles
 *     through vpermps / vcvtdq2ps of (v >> 4), mixed to keep ports 0 and 5 balanced.
 *   - Q4_0 (SIMD builds): g4_matvec_prepare() re-expresses x per block (xq: xa = x0 - x1/16,
 *     xb = x1/16, xc = -8 (x0 + x1)) so that lo*xa + byte*xb + xc = (lo-8) x0 + (hi-8) x1:
 *     one permute, one convert and two FMAs per 16 bytes, no shift, no offset term.
 *   - mins terms (Q4_K, Q5_K; AVX2 / portable Q4_1, Q5_0, Q5_1 and portable Q4_0) are
 *     m * sum(x over the 32 values): per-block sums of x come from g4_matvec_prepare().
 *   - a block's float dot is scaled once: acc += d * sum(q * x); K-quant sub-block scales are
 *     decoded with vector ops one super-block ahead (double-buffered, so the broadcasts never
 *     wait on a just-stored value).
 *
 * ws (g4_matvec_scratch(c) bytes, filled by g4_matvec_prepare): Q4_0 on SIMD builds: xq, 48
 * floats per 32 inputs; other types with mins / offsets: sx[K/32 + 16], per-32 sums of x (0 past
 * K/32); F32, F16, BF16, Q8_0, Q6_K: nothing (scratch 0, ws may be NULL).
 */
#ifndef G4_MATVEC_H
#define G4_MATVEC_H

#include <stdatomic.h>

#include "g4cpu.h"
#include "pool.h"

#define QK 32
#define QKK 256

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* f16 -> f32 for every code (f16_table.c), built once by whichever thread gets there first. */
G4_INTERNAL extern float g4_f16tab[65536] __attribute__((aligned(64)));
G4_INTERNAL extern atomic_int g4_f16tab_state;   /* 0: empty, 1: being built, 2: ready */
G4_INTERNAL void g4_f16tab_build(void);

static inline void g4_f16tab_ready(void) {
    if (atomic_load_explicit(&g4_f16tab_state, memory_order_acquire) == 2) return;
    g4_f16tab_build();
}

#define HT(p) g4_f16tab[rd16(p)]   /* the f16 at byte address p, as float */

static inline int mv_needs_sums(int qtype) {
    return qtype == G4_Q4_0 || qtype == G4_Q4_1 || qtype == G4_Q5_0 || qtype == G4_Q5_1
        || qtype == G4_Q4_K || qtype == G4_Q5_K;
}

/* g4_matvec_scratch: xq = 1 where the build's Q4_0 kernel reads x re-expressed (mv_write_xq). */
static inline size_t mv_scratch_bytes(const g4_cmd *c, int xq) {
    if (!mv_needs_sums(c->qtype)) return 0;
    const size_t nb = (size_t)(c->in_cols / QK);
    const size_t n = (xq && c->qtype == G4_Q4_0) ? nb * 48 : nb + 16;
    return (n * sizeof(float) + 63) & ~(size_t)63;
}

/* xq: per block 48 floats, for i < 16 (x0 = x[i], x1 = x[16 + i] of the block):
 *   xa = x0 - x1/16, xb = x1/16, xc = -8 (x0 + x1),
 * so that with lo, hi the nibbles of qs byte i and byte = 16 hi + lo:
 *   lo*xa + byte*xb + xc = (lo - 8) x0 + (hi - 8) x1.
 * The kernel then needs no nibble shift and no offset term: a permute (lo), a convert
 * (byte) and two FMAs per 16 bytes. */
static inline void mv_write_xq(const float *x, int64_t nb, float *xq) {
    for (int64_t b = 0; b < nb; b++) {
        const float *x0 = x + b * QK, *x1 = x0 + 16;
        float *q = xq + b * 48;
        for (int i = 0; i < 16; i++) {
            const float h = x1[i] * 0.0625f;
            q[i] = x0[i] - h;
            q[16 + i] = h;
            q[32 + i] = -8.0f * (x0[i] + x1[i]);
        }
    }
}

/* sx[b] = the sum of x over block b (four partial sums), for b < nb; sx[nb .. nb + 16) = 0. */
static inline void mv_write_sums(const float *x, int64_t nb, float *sx) {
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int i = 0; i < QK; i += 4) { s0 += xb[i]; s1 += xb[i + 1]; s2 += xb[i + 2]; s3 += xb[i + 3]; }
        sx[b] = (s0 + s1) + (s2 + s3);
    }
    for (int i = 0; i < 16; i++) sx[nb + i] = 0.0f;
}

#define G4_AI_MV static inline __attribute__((always_inline))

#if defined(__GNUC__) && !defined(__clang__)
#define G4_PRAGMA(x) _Pragma(#x)
#define G4_UNROLL(n) G4_PRAGMA(GCC unroll n)
#else
#define G4_UNROLL(n)
#endif

#endif
