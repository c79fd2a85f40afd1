/* g4cpu media ops: the encoders' LayerNorm, bias and factorized position lookup, and the soft
 * tokens that replace a prompt's placeholder rows (g4cpu.h LAYERNORM .. TAKE_ROWS).
 *
 * numpy_ref defines them: LayerNorm's mean and variance in double (two passes), the normalized
 * value rounded to float, then * weight + bias in float. These run once per image or audio clip
 * (or once per media prefill) on narrow rows: plain C, threads split the rows.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"

void g4_k_layernorm(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    const float *w = (const float *)c->w, *bias = c->d;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float *x = c->a + r * cols;
        float *o = c->out + r * cols;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < cols; i++) mean += x[i];
        mean /= (double)cols;
        for (int64_t i = 0; i < cols; i++) {
            double t = x[i] - mean;
            var += t * t;
        }
        var /= (double)cols;
        const double inv = 1.0 / sqrt(var + (double)c->eps);
        for (int64_t i = 0; i < cols; i++) {
            float y = (float)((x[i] - mean) * inv);
            if (w) y *= w[i];
            if (bias) y += bias[i];
            o[i] = y;
        }
    }
}

void g4_k_add_vector(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    const float *w = (const float *)c->w;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < cols; i++) c->out[r * cols + i] = c->a[r * cols + i] + w[i];
}

/* index b [rows, group] (f32 integers); table w [w_rows, cols] f32. An index outside the table
 * adds nothing (the caller checks them before the call; this only keeps memory safe). */
void g4_k_gather_add(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols, J = c->group;
    const float *table = (const float *)c->w;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        float *o = c->out + r * cols;
        const float *x = c->a + r * cols;
        if (o != x) memcpy(o, x, (size_t)cols * 4);
        for (int64_t j = 0; j < J; j++) {
            const int64_t t = (int64_t)c->b[r * J + j];
            if (t < 0 || t >= c->w_rows) continue;
            const float *row = table + t * cols;
            for (int64_t i = 0; i < cols; i++) o[i] += row[i];
        }
    }
}

void g4_k_take_rows(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    int64_t r0, r1;
    g4_split_even(c->rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float *src = c->c[r] != 0.0f ? c->b + r * cols : c->a + r * cols;
        if (src != c->out + r * cols) memcpy(c->out + r * cols, src, (size_t)cols * 4);
    }
}
