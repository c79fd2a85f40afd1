/* g4cpu conformer ops: the gemma4a audio encoder's kernels (g4cpu.h SILU .. CHUNKED_ATTENTION; clamps are vit_ops.c's CLAMP;
 * runtime/ops.py "audio encoder ops" defines them, runtime/backends/numpy_ref/audio_ops.py is
 * the reference). They run once per audio clip on narrow rows: plain C, threads split the rows.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"

/* SILU: out = a * sigmoid(a), in double (as the reference). */
void g4_k_silu(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t i = r0 * cols; i < r1 * cols; i++) {
        const double v = c->a[i];
        c->out[i] = (float)(v / (1.0 + exp(-v)));
    }
}

/* GLU: out[r, j] = a[r, j] * sigmoid(a[r, j + cols]); a has in_cols = 2 * cols. */
void g4_k_glu(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols, in = c->in_cols;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float *x = c->a + r * in;
        for (int64_t j = 0; j < cols; j++)
            c->out[r * cols + j] = (float)((double)x[j] / (1.0 + exp(-(double)x[j + cols])));
    }
}

/* CONV2D_NORM_RELU: a [n_rot rows, in_cols = F * group] (channel fastest), c = mask [n_rot] or
 * NULL (a row with mask 0 counts as zeros), w = f32 kernel [n_head][group][3][3], d = f32
 * LayerNorm weight [n_head]; out [rows, cols = Fo * n_head]. 3x3, stride 2, padding 1. */
void g4_k_conv2d_norm_relu(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t Ci = c->group, Co = c->n_head, Tin = c->n_rot, F = c->in_cols / Ci, Fo = c->cols / Co;
    const float *w = (const float *)c->w, *norm = c->d;
    double acc[G4_CONV_MAX_CH];
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        for (int64_t fo = 0; fo < Fo; fo++) {
            for (int64_t o = 0; o < Co; o++) acc[o] = 0.0;
            for (int kt = 0; kt < 3; kt++) {
                const int64_t ti = 2 * t + kt - 1;
                if (ti < 0 || ti >= Tin || (c->c && c->c[ti] == 0.0f)) continue;
                for (int kf = 0; kf < 3; kf++) {
                    const int64_t fi = 2 * fo + kf - 1;
                    if (fi < 0 || fi >= F) continue;
                    const float *x = c->a + ti * c->in_cols + fi * Ci;
                    for (int64_t o = 0; o < Co; o++) {
                        const float *wk = w + (o * Ci) * 9 + kt * 3 + kf;
                        double s = 0.0;
                        for (int64_t i = 0; i < Ci; i++) s += (double)wk[i * 9] * (double)x[i];
                        acc[o] += s;
                    }
                }
            }
            double mean = 0.0, var = 0.0;
            for (int64_t o = 0; o < Co; o++) {
                acc[o] = (double)(float)acc[o];
                mean += acc[o];
            }
            mean /= (double)Co;
            for (int64_t o = 0; o < Co; o++) var += (acc[o] - mean) * (acc[o] - mean);
            var /= (double)Co;
            const double inv = 1.0 / sqrt(var + (double)c->eps);
            float *y = c->out + t * c->cols + fo * Co;
            for (int64_t o = 0; o < Co; o++) {
                const float v = (float)((acc[o] - mean) * inv) * norm[o];
                y[o] = v > 0.0f ? v : 0.0f;
            }
        }
    }
}

/* DEPTHWISE_CONV1D: out[t, ch] = sum_k w[ch * group + k] * a[t - group + 1 + k, ch] (causal,
 * rows before 0 are zeros), accumulated in double. */
void g4_k_depthwise_conv1d(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t C = c->cols, K = c->group;
    const float *w = (const float *)c->w;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t t = r0; t < r1; t++)
        for (int64_t ch = 0; ch < C; ch++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) {
                const int64_t u = t - K + 1 + k;
                if (u >= 0) s += (double)w[ch * K + k] * (double)c->a[u * C + ch];
            }
            c->out[t * C + ch] = (float)s;
        }
}

/* CHUNKED_ATTENTION (ops.ChunkedAttention): q = a, k = b, v = c [rows, n_head * group];
 * w = f32 relative table [window + 1][n_head * group] (the lowering projects it); d = per-dim q
 * scale [group] or NULL; scale = q_scale, eps = k_scale, cap = softcap; keys u = t - j,
 * j = 0 .. window - 1, u >= 0 and u < row0 (the valid frames). */
void g4_k_chunked_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t H = c->n_head, D = c->group, W = c->window, HD = H * D, valid = c->row0;
    const float *rel = (const float *)c->w;
    float qs[G4_CONV_MAX_HEAD_DIM], s[G4_CONV_MAX_WINDOW];
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t t = r0; t < r1; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *q = c->a + t * HD + h * D;
            float *o = c->out + t * HD + h * D;
            for (int64_t i = 0; i < D; i++) {
                qs[i] = q[i] * c->scale;
                if (c->d) qs[i] *= c->d[i];
            }
            int n = 0;
            float mx = -INFINITY;
            for (int64_t j = 0; j < W && t - j >= 0; j++) {
                const int64_t u = t - j;
                if (u >= valid) { s[j] = -INFINITY; continue; }
                const float *k = c->b + u * HD + h * D, *r = rel + (W - j) * HD + h * D;
                float ac = 0.0f, bd = 0.0f;
                for (int64_t i = 0; i < D; i++) {
                    ac += qs[i] * (k[i] * c->eps);
                    bd += qs[i] * r[i];
                }
                float v = ac + bd;
                v = c->cap * tanhf(v / c->cap);
                s[j] = v;
                if (v > mx) mx = v;
                n++;
            }
            for (int64_t i = 0; i < D; i++) o[i] = 0.0f;
            if (n == 0) continue;
            float sum = 0.0f;
            const int64_t J = t + 1 < W ? t + 1 : W;
            for (int64_t j = 0; j < J; j++) {
                s[j] = s[j] == -INFINITY ? 0.0f : expf(s[j] - mx);
                sum += s[j];
            }
            for (int64_t j = 0; j < J; j++) {
                if (s[j] == 0.0f) continue;
                const float p = s[j] / sum, *v = c->c + (t - j) * HD + h * D;
                for (int64_t i = 0; i < D; i++) o[i] += p * v[i];
            }
        }
}
