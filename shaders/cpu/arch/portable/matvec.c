/* Portable C decode matvec (matvec.h has the design): the path of every CPU without AVX2
 * (aarch64 included, built with the compiler's -mcpu=native). Offset / min terms come from
 * per-block sums of x; several rows run g4_matvec per row. */
#include "matvec.h"

/* Q4_K / Q5_K: the 8 six-bit scales and 8 mins of a super-block as 16 bytes (sc[0..7], m[0..7]),
 * llama.cpp's kmask unpacking of get_scale_min_k4. */
static inline void k4_unpack(const uint8_t *scales, uint32_t u[4]) {
    const uint32_t km1 = 0x3f3f3f3fu, km2 = 0x0f0f0f0fu, km3 = 0x03030303u;
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    const uint32_t a = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = a;
    u[0] &= km1;
}

/* F32 / F16 / BF16 rows: one loop (8 partial sums, then the tail), the element read picked by
 * `kind` (a constant at each call site, so each is compiled with its own read inlined). */
enum { ROW_F32, ROW_F16, ROW_BF16 };

static inline __attribute__((always_inline)) float row_value(const uint8_t *w8, int64_t i, int kind) {
    if (kind == ROW_F32) return ((const float *)(const void *)w8)[i];
    const uint16_t h = ((const uint16_t *)(const void *)w8)[i];
    return kind == ROW_F16 ? g4_h2f(h) : g4_bf2f(h);
}

static inline __attribute__((always_inline)) float dot_float_row(const uint8_t *w8, const float *x, int64_t K,
                                                                  int kind) {
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        for (int j = 0; j < 8; j++) a[j] += row_value(w8, i + j, kind) * x[i + j];
    float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < K; i++) r += row_value(w8, i, kind) * x[i];
    return r;
}

static float dot_f32(const uint8_t *w8, const float *x, int64_t K) { return dot_float_row(w8, x, K, ROW_F32); }
static float dot_f16(const uint8_t *w8, const float *x, int64_t K) { return dot_float_row(w8, x, K, ROW_F16); }
static float dot_bf16(const uint8_t *w8, const float *x, int64_t K) { return dot_float_row(w8, x, K, ROW_BF16); }

/* sum over a 32-value 4-bit block of nibble * x (codes 0..15). */
static inline float nib_dot(const uint8_t *q, const float *xb) {
    float a[4] = {0, 0, 0, 0};
    for (int j = 0; j < 16; j += 4)
        for (int t = 0; t < 4; t++)
            a[t] += (float)(q[j + t] & 0xF) * xb[j + t] + (float)(q[j + t] >> 4) * xb[j + t + 16];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static inline float nib5_dot(const uint8_t *q, uint32_t qh, const float *xb) {
    float a[4] = {0, 0, 0, 0};
    for (int j = 0; j < 16; j += 4)
        for (int t = 0; t < 4; t++) {
            const int l = j + t;
            const int q0 = (q[l] & 0xF) | (int)(((qh >> l) & 1u) << 4);
            const int q1 = (q[l] >> 4) | (int)(((qh >> (l + 16)) & 1u) << 4);
            a[t] += (float)q0 * xb[l] + (float)q1 * xb[l + 16];
        }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static float dot_q8_0(const uint8_t *w, const float *x, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 34;
        const int8_t *q = (const int8_t *)(p + 2);
        const float *xb = x + b * QK;
        float a[4] = {0, 0, 0, 0};
        for (int j = 0; j < 32; j += 4)
            for (int t = 0; t < 4; t++) a[t] += (float)q[j + t] * xb[j + t];
        acc += HT(p) * ((a[0] + a[1]) + (a[2] + a[3]));
    }
    return acc;
}

static float dot_q4_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 18;
        acc += HT(p) * (nib_dot(p + 2, x + b * QK) - 8.0f * sx[b]);
    }
    return acc;
}

static float dot_q4_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 20;
        acc += HT(p) * nib_dot(p + 4, x + b * QK) + HT(p + 2) * sx[b];
    }
    return acc;
}

static float dot_q5_0(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 22;
        acc += HT(p) * (nib5_dot(p + 6, rd32(p + 2), x + b * QK) - 16.0f * sx[b]);
    }
    return acc;
}

static float dot_q5_1(const uint8_t *w, const float *x, const float *sx, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + b * 24;
        acc += HT(p) * nib5_dot(p + 8, rd32(p + 4), x + b * QK) + HT(p + 2) * sx[b];
    }
    return acc;
}

static float dot_q4_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 144, *qs = blk + 16;
        const float *xs = x + i * QKK;
        const float d = HT(blk), dmin = HT(blk + 2);
        uint32_t u[4];
        k4_unpack(blk + 4, u);
        const uint8_t *sc = (const uint8_t *)u, *mn = sc + 8;
        float s = 0.0f, m = 0.0f;
        for (int j = 0; j < 8; j += 2) {
            const uint8_t *q = qs + (j / 2) * 32;
            const float *x0 = xs + j * 32, *x1 = x0 + 32;
            float a0[4] = {0, 0, 0, 0}, a1[4] = {0, 0, 0, 0};
            for (int l = 0; l < 32; l += 4)
                for (int t = 0; t < 4; t++) {
                    a0[t] += (float)(q[l + t] & 0xF) * x0[l + t];
                    a1[t] += (float)(q[l + t] >> 4) * x1[l + t];
                }
            s += (float)sc[j] * ((a0[0] + a0[1]) + (a0[2] + a0[3]))
               + (float)sc[j + 1] * ((a1[0] + a1[1]) + (a1[2] + a1[3]));
            m += (float)mn[j] * sx[i * 8 + j] + (float)mn[j + 1] * sx[i * 8 + j + 1];
        }
        acc += d * s - dmin * m;
    }
    return acc;
}

static float dot_q5_k(const uint8_t *w, const float *x, const float *sx, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 176, *qh = blk + 16, *qs = blk + 48;
        const float *xs = x + i * QKK;
        const float d = HT(blk), dmin = HT(blk + 2);
        uint32_t u[4];
        k4_unpack(blk + 4, u);
        const uint8_t *sc = (const uint8_t *)u, *mn = sc + 8;
        float s = 0.0f, m = 0.0f;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = qs + (j / 2) * 32;
            const int sh = (j & 1) * 4;
            const float *xj = xs + j * 32;
            float a[4] = {0, 0, 0, 0};
            for (int l = 0; l < 32; l += 4)
                for (int t = 0; t < 4; t++)
                    a[t] += (float)(((q[l + t] >> sh) & 0xF) | (((qh[l + t] >> j) & 1) << 4)) * xj[l + t];
            s += (float)sc[j] * ((a[0] + a[1]) + (a[2] + a[3]));
            m += (float)mn[j] * sx[i * 8 + j];
        }
        acc += d * s - dmin * m;
    }
    return acc;
}

static float dot_q6_k(const uint8_t *w, const float *x, int64_t nsb) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const float *xs = x + i * QKK;
        float s = 0.0f;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) {
                const uint8_t *lp = ql + h * 64 + (k & 1) * 32, *hp = qh + h * 32;
                const int lsh = (k >> 1) * 4, hsh = 2 * k;
                const float *xk = xs + h * 128 + k * 32;
                for (int half = 0; half < 2; half++) {
                    float a[4] = {0, 0, 0, 0};
                    for (int l = half * 16; l < half * 16 + 16; l += 4)
                        for (int t = 0; t < 4; t++)
                            a[t] += (float)((((lp[l + t] >> lsh) & 0xF) | (((hp[l + t] >> hsh) & 3) << 4)) - 32) * xk[l + t];
                    s += (float)sc[h * 8 + k * 2 + half] * ((a[0] + a[1]) + (a[2] + a[3]));
                }
            }
        acc += HT(blk + 208) * s;
    }
    return acc;
}


/* ======================================================================================= */

/* the q8 path (q8.h) in plain C */
#include "arch/portable/matvec_q8.h"
#include "matvec_q8_entry.h"

size_t g4_matvec_scratch(const g4_cmd *c) { return q8_active(c) ? q8_scratch(c) : mv_scratch_bytes(c, 0); }

void g4_matvec_prepare(const g4_cmd *c, const float *x, void *ws) {
    g4_f16tab_ready();
    if (q8_active(c)) {
        q8_prepare(c, x, ws);
        return;
    }
    if (!mv_needs_sums(c->qtype) || !ws) return;
    mv_write_sums(x, c->in_cols / QK, (float *)ws);
}


/* No multi-row kernels here: g4_matvec_rows runs g4_matvec per row. */
#include "matvec_entry.h"     /* g4_matvec, g4_matvec_rows */
