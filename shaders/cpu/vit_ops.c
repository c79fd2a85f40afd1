/* g4cpu vision encoder ops (gemma4v, the Gemma 4 ViT): clamp, axial 2-D RoPE, full (non-causal)
 * attention over the call's rows, row-group average pooling, standardization (g4cpu.h CLAMP ..
 * STANDARDIZE; runtime/ops.py's "vision encoder ops").
 *
 * numpy_ref defines them: RoPE angles and cos/sin in double, then float; attention scores, the
 * softmax and the weighted sum in float (the max subtracted first); pooling sums in double.
 * These run once per image on a few hundred to a few thousand patch rows: plain C, threads split
 * rows (or (row, head) items). Attention's per-thread score row is taken from the heap.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* out = min(max(a, scale), cap): the bounds travel in scale (lo) and cap (hi). */
void g4_k_clamp(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const float lo = c->scale, hi = c->cap;
    int64_t i, e;
    g4_split_elems((int64_t)c->rows * c->cols, ith, nth, &i, &e);
    for (; i < e; i++) {
        float v = c->a[i];
        v = v < lo ? lo : v;
        c->out[i] = v > hi ? hi : v;
    }
}

/* a [rows, cols] in heads of group cols; b [rows, 2] positions (x, y) as floats; freqs[group/4]
 * (double): the half (axis 0: columns 0 .. group/2, axis 1: group/2 .. group) of each head turns
 * NeoX-style, pair (i, i + group/4) by pos[axis] * freqs[i]. */
void g4_k_rope2d(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols, hd = c->group, half = hd / 2, q = hd / 4, heads = cols / hd;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        for (int axis = 0; axis < 2; axis++) {
            const double p = (double)c->b[r * 2 + axis];
            for (int64_t i = 0; i < q; i++) {
                const double ang = p * c->freqs[i];
                const float cs = (float)cos(ang), sn = (float)sin(ang);
                for (int64_t h = 0; h < heads; h++) {
                    const int64_t o = r * cols + h * hd + axis * half + i;
                    const float x0 = c->a[o], x1 = c->a[o + q];
                    c->out[o] = x0 * cs - x1 * sn;
                    c->out[o + q] = x0 * sn + x1 * cs;
                }
            }
        }
    }
}

/* q = a [rows, n_head*group], k = b, v = c [rows, n_kv_head*group]; every row sees every row. */
void g4_k_full_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t n = c->rows, D = c->group, H = c->n_head, Hkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    const int64_t qw = H * D, kw = Hkv * D, rep = H / Hkv;
    float *s = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    float *acc = (float *)malloc((size_t)(D > 0 ? D : 1) * sizeof(float));
    int64_t b0, b1;
    g4_split_even(n * H, ith, nth, &b0, &b1);
    for (int64_t item = b0; item < b1 && s && acc; item++) {
        const int64_t r = item / H, h = item % H, kh = h / rep;
        const float *qr = c->a + r * qw + h * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            const float *kr = c->b + j * kw + kh * D;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++) dot += qr[d] * kr[d];
            s[j] = dot * c->scale;
            if (s[j] > mx) mx = s[j];
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            const float *vr = c->c + j * kw + kh * D;
            const float pj = s[j] * inv;
            for (int64_t d = 0; d < D; d++) acc[d] += pj * vr[d];
        }
        memcpy(c->out + r * qw + h * D, acc, (size_t)D * sizeof(float));
    }
    free(s);
    free(acc);
}

/* out [rows, cols] = scale * mean of a's rows r*group .. r*group + group - 1 (double sums). */
void g4_k_pool_rows(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols, G = c->group;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < cols; i++) {
            double sum = 0.0;
            for (int64_t g = 0; g < G; g++) sum += c->a[(r * G + g) * cols + i];
            c->out[r * cols + i] = (float)(sum / (double)G) * c->scale;
        }
}

/* out[r] = (a[r] - d) * w: d the bias, w the scale (f32 rows of cols values). */
void g4_k_standardize(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    const float *w = (const float *)c->w, *bias = c->d;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < cols; i++) c->out[r * cols + i] = (c->a[r * cols + i] - bias[i]) * w[i];
}
