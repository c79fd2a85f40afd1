/* q8.h: the quantized-activation (q8) matvec path that every ISA shares the data layout of.
 *
 * A matmul with c->act == G4_ACT_Q8 quantizes each activation row once (g4_matvec_prepare) to
 * int8 exactly as llama.cpp quantizes it for the same weight type (its vec_dot_type), so the
 * path lands where llama.cpp lands and meets the bars derived from it:
 *   - Q4_0, Q5_0, Q8_0 weights -> Q8_0 blocks of 32: amax = max |x|, q = nearest-even(x * (127 /
 *     amax)), d = f16(amax / 127) (the f16 rounding of the block scale included);
 *   - Q4_1, Q5_1 -> Q8_1: the same, with the block's d * S rounded to f16 (S = sum of its q);
 *   - Q4_K, Q5_K, Q6_K -> Q8_K blocks of 256: max = the value of largest magnitude,
 *     iscale = -127 / max, q = min(127, nearest-even(iscale * x)), d = 1 / iscale (f32).
 * The weight codes then meet q in integer dot products (AVX-512 VNNI vpdpbusd, AVX-VNNI, else
 * AVX2 vpmaddubsw + vpmaddwd), and only block results are scaled in float:
 *   32-blocks: acc += (d_w * d_x) * sum(u * q) over the block, with the weights' offsets (Q4_0:
 *     8, Q5_0: 16) folded into the integer sum through bias[b]
 *     (the dot's starting value per int32 lane, 8 lanes: -S * offset / 8), and the mins of
 *     Q4_1 / Q5_1 added as m * sd[b];
 *   K-quants: per 32-value sub-block, the 6-bit scales folded into the float scale
 *     (d * sc * d_x); the mins as dmin * m * sd; Q6_K's offset 32 as 32 * scale * s16 per 16.
 * The layout keeps a scale per 32 values for every type (a Q8_K block repeats its d 8 times).
 *
 * Row-exact: a row's result depends only on its own quantized row and the weights, through the
 * same sequence of operations whatever the number of rows processed together (the multi-row
 * kernels are the one-row kernel with R copies of the per-row state), so batches and prefill
 * give every row the bits of its one-row decode step.
 *
 * Layout of one quantized row in ws (q8_row_bytes(K)), every part 64-byte aligned:
 *   q[K] int8 | q2[K] int8 (the i16 mode's low plane) | d[K/32] float | sd[K/32] float (d * S) |
 *   bias[K/32] int32 | s16[K/16] float (S of each 16 values, exact integers), S the sum of the
 *   block's codes (q, or 128 q + q2 in the i16 mode).
 */
#ifndef G4_Q8_H
#define G4_Q8_H

#include <math.h>

#include "g4cpu.h"

typedef struct {
    const int8_t *q;
    const int8_t *q2;    /* i16 mode: the low plane (q8: unused) */
    const float *d;
    const float *sd;
    const int32_t *bias;
    const float *s16;
} q8_row;

static inline size_t q8_row_bytes(int64_t K) {
    const size_t nb = (size_t)(K / 32);
    return 2 * G4_ALIGN64((size_t)K) + 3 * G4_ALIGN64(nb * 4) + G4_ALIGN64((size_t)(K / 16) * 4);
}

static inline q8_row q8_row_at(const void *ws, int64_t K) {
    const uint8_t *p = (const uint8_t *)ws;
    const size_t nb = (size_t)(K / 32), a = 2 * G4_ALIGN64((size_t)K), b = G4_ALIGN64(nb * 4);
    q8_row r = {(const int8_t *)p, (const int8_t *)(p + G4_ALIGN64((size_t)K)), (const float *)(p + a),
                (const float *)(p + a + b), (const int32_t *)(p + a + 2 * b), (const float *)(p + a + 3 * b)};
    return r;
}

/* The bias multiplier of a weight type: its offset / 8 (0: no offset folded in). Q8_0's signed
 * codes take the sign trick (|w| against sign(q, w)) on every build, so the VNNI and the AVX2
 * builds give the same lanes and the same bits. */
static inline int32_t q8_bias_mult(int qtype) {
    switch (qtype) {
    case G4_Q4_0: return 1;
    case G4_Q5_0: return 2;
    default: return 0;
    }
}

/* Blocks whose largest |x| is below this quantize to 0 (127 / amax would overflow float; their
 * contribution is below any float32 sum's last bit). */
#define Q8_TINY 1e-30f

static inline int q8_k_type(int qtype) { return qtype == G4_Q4_K || qtype == G4_Q5_K || qtype == G4_Q6_K; }

static inline float q8_f16_round(float v) { return g4_h2f(g4_f2h(v)); }

/* Per-block side data of a row whose q and (unrounded) d are written: sd, bias (for qtype),
 * s16, and d rounded as llama.cpp stores it (f16 for the 32-block types). mult: the bias
 * multiplier (q8_bias_mult, times 8 for a repacked kernel's whole-block lanes). */
static inline void q8_write_sums(int64_t K, int qtype, int two, int32_t mult, void *ws) {
    const q8_row r = q8_row_at(ws, K);
    const size_t nb = (size_t)(K / 32);
    float *d = (float *)r.d, *sd = (float *)r.sd, *s16 = (float *)r.s16;
    int32_t *bias = (int32_t *)r.bias;
    const int kq = q8_k_type(qtype);
    for (size_t b = 0; b < nb; b++) {
        int32_t s0 = 0, s1 = 0;     /* sums of the codes: q, or 128 q + q2 (|.| <= 16 * 16383) */
        for (int i = 0; i < 16; i++) {
            s0 += two ? 128 * r.q[b * 32 + i] + r.q2[b * 32 + i] : r.q[b * 32 + i];
            s1 += two ? 128 * r.q[b * 32 + 16 + i] + r.q2[b * 32 + 16 + i] : r.q[b * 32 + 16 + i];
        }
        s16[2 * b] = (float)s0;
        s16[2 * b + 1] = (float)s1;
        bias[b] = -(s0 + s1) * mult;
        if (kq || two) {            /* f32 scales: Q8_K's, or the i16 mode's own */
            sd[b] = d[b] * (float)(s0 + s1);
        } else {
            sd[b] = q8_f16_round(d[b] * (float)(s0 + s1));     /* Q8_1's s */
            d[b] = q8_f16_round(d[b]);
        }
    }
}

/* The i16 mode (not llama.cpp's: g4rt's near-exact path): per 32 values t = x * (127 / amax),
 * q = nearest-even(t), q2 = nearest-even(128 (t - q)) in [-64, 64], so x = (d / 128)(128 q + q2)
 * with d = amax / 127 within amax / 32512 - int16 precision, taken as two int8 dots. d holds
 * d / 128 (exact: a power of two). */
static inline void q8_quantize_i16(const float *x, int64_t K, int8_t *q, int8_t *q2, float *d) {
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        int finite = 1;
        for (int i = 0; i < 32; i++) {
            amax = fmaxf(amax, fabsf(xb[i]));
            finite &= fabsf(xb[i]) <= 3.4028235e38f;
        }
        const float id = amax >= Q8_TINY ? 127.0f / amax : 0.0f;
        d[b] = !finite ? NAN : (amax / 127.0f) * (1.0f / 128.0f);
        for (int i = 0; i < 32; i++) {
            const float t = finite ? xb[i] * id : 0.0f;
            const float h = nearbyintf(t);
            q[b * 32 + i] = (int8_t)h;
            q2[b * 32 + i] = (int8_t)nearbyintf((t - h) * 128.0f);
        }
    }
}

/* The portable Q8_0 quantizer (the x86 builds vectorize the same arithmetic: x * id in float,
 * then round to nearest even); d unrounded. */
static inline void q8_quantize_scalar(const float *x, int64_t K, int8_t *q, float *d) {
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
        const float id = amax >= Q8_TINY ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        int finite = 1;
        for (int i = 0; i < 32; i++) finite &= fabsf(xb[i]) <= 3.4028235e38f;
        if (!finite) {                      /* inf / NaN in the block: NaN results, as exact */
            d[b] = NAN;
            for (int i = 0; i < 32; i++) q[b * 32 + i] = 0;
            continue;
        }
        for (int i = 0; i < 32; i++) q[b * 32 + i] = (int8_t)nearbyintf(xb[i] * id);
    }
}

/* Q8_K (the K-quants' activations), llama.cpp's quantize_row_q8_K_ref: per 256 values; each of
 * the 8 sub-block scales d[8i .. 8i+8) is the block's 1 / iscale. */
static inline void q8_quantize_k(const float *x, int64_t K, int8_t *q, float *d) {
    for (int64_t i = 0; i < K / 256; i++) {
        const float *xb = x + i * 256;
        float amax = 0.0f, max = 0.0f;
        int finite = 1;
        for (int j = 0; j < 256; j++) {
            const float ax = fabsf(xb[j]);
            finite &= ax <= 3.4028235e38f;
            if (ax > amax) { amax = ax; max = xb[j]; }
        }
        float dd = 0.0f;
        if (!finite) dd = NAN;
        if (amax < Q8_TINY || !finite) {
            memset(q + i * 256, 0, 256);
        } else {
            const float iscale = -127.0f / max;
            for (int j = 0; j < 256; j++) {
                const int v = (int)nearbyintf(iscale * xb[j]);
                q[i * 256 + j] = (int8_t)(v < 127 ? v : 127);
            }
            dd = 1.0f / iscale;
        }
        for (int j = 0; j < 8; j++) d[i * 8 + j] = dd;
    }
}

#endif
