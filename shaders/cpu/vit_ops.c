/* g4cpu vision encoder ops (gemma4v, the Gemma 4 ViT): clamp, axial 2-D RoPE, full (non-causal)
 * attention over the call's rows, row-group average pooling, standardization (g4cpu.h CLAMP ..
 * STANDARDIZE; runtime/ops.py's "vision encoder ops").
 *
 * numpy_ref defines them: RoPE angles and cos/sin in double, then float; attention scores, the
 * softmax and the weighted sum in float (the max subtracted first); pooling sums in double.
 * These run once per image on a few hundred to a few thousand patch rows: plain C, threads split
 * rows; the attention (blocked over keys, online softmax, simd.h vectors: below) splits
 * (head, query block) units and takes its per-thread buffers from the heap.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "simd.h"
#include "vmath.h"

/* out = min(max(a, scale), cap): the bounds travel in scale (lo) and cap (hi). */
void g4_k_clamp(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const float lo = c->scale, hi = c->cap;
    int64_t i, e;
    g4_split_elems((int64_t)c->rows * c->cols, ith, nth, &i, &e);
#if VW > 1
    /* max(lo, v) then min(hi, .): the scalar loop's comparisons (a NaN stays NaN) */
    const vf vlo = vset1(lo), vhi = vset1(hi);
    for (; i + VW <= e; i += VW) vstore(c->out + i, vmin(vhi, vmax(vlo, vload(c->a + i))));
#endif
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

/* FULL_ATTENTION: q = a [rows, n_head*group], k = b, v = c [rows, n_kv_head*group]; every row
 * sees every row, softmax(scale q.k) v in float32.
 *
 * Flash-attention style on simd.h's vectors: a unit is FA_QB queries of one head; it walks the
 * keys in blocks of FA_KB with an online softmax (running max and sum; the partial sums rescaled
 * when the max grows), so its scores stay in L1 whatever the number of rows. Each thread keeps
 * its current kv head's keys transposed ([D][rows], padded to whole vectors with zeros), so a
 * score vector is VW keys of one query: broadcast q[d] times a row of the transposed keys, no
 * horizontal sums. Units are handed out head-major (the transposed keys are made once per head
 * and thread). Exponentials are vmath.h's vexp (libm's expf in the portable build). */
#if defined(G4_AVX512)
#define FA_QB 8            /* queries per unit: 8 x 2 score vectors in registers */
#else
#define FA_QB 4            /* AVX2's 16 registers */
#endif
#define FA_KB 256          /* keys per block */

/* S[x * FA_KB + j] = scale * q[x] . k_(j0 + j), j < nkp (a multiple of VW); kt + d * ld holds
 * dimension d of every key. */
static void fa_scores(const float *const *q, const float *kt, int64_t ld, int64_t D, int64_t j0, int64_t nkp,
                      float scale, float *S) {
    const vf sc = vset1(scale);
    int64_t j = 0;
    for (; j + 2 * VW <= nkp; j += 2 * VW) {
        vf acc[FA_QB][2];
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) acc[x][0] = acc[x][1] = vzero();
        const float *kr = kt + j0 + j;
        for (int64_t d = 0; d < D; d++, kr += ld) {
            const vf k0 = vload(kr), k1 = vload(kr + VW);
#pragma GCC unroll 8
            for (int x = 0; x < FA_QB; x++) {
                const vf qd = vset1(q[x][d]);
                acc[x][0] = vfma(qd, k0, acc[x][0]);
                acc[x][1] = vfma(qd, k1, acc[x][1]);
            }
        }
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) {
            vstore(S + x * FA_KB + j, vmul(acc[x][0], sc));
            vstore(S + x * FA_KB + j + VW, vmul(acc[x][1], sc));
        }
    }
    for (; j < nkp; j += VW) {
        vf acc[FA_QB];
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) acc[x] = vzero();
        const float *kr = kt + j0 + j;
        for (int64_t d = 0; d < D; d++, kr += ld) {
            const vf k0 = vload(kr);
#pragma GCC unroll 8
            for (int x = 0; x < FA_QB; x++) acc[x] = vfma(vset1(q[x][d]), k0, acc[x]);
        }
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) vstore(S + x * FA_KB + j, vmul(acc[x], sc));
    }
}

/* O[x * D + d] += sum_j S[x * FA_KB + j] v_j[d] over nk keys, v_j = v + j * vs. */
static void fa_wsum(const float *S, const float *v, int64_t vs, int64_t nk, int64_t D, float *O) {
    int64_t d0 = 0;
    for (; d0 + 2 * VW <= D; d0 += 2 * VW) {
        vf acc[FA_QB][2];
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) {
            acc[x][0] = vload(O + x * D + d0);
            acc[x][1] = vload(O + x * D + d0 + VW);
        }
        const float *vr = v + d0;
        for (int64_t j = 0; j < nk; j++, vr += vs) {
            const vf v0 = vload(vr), v1 = vload(vr + VW);
#pragma GCC unroll 8
            for (int x = 0; x < FA_QB; x++) {
                const vf p = vset1(S[x * FA_KB + j]);
                acc[x][0] = vfma(p, v0, acc[x][0]);
                acc[x][1] = vfma(p, v1, acc[x][1]);
            }
        }
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) {
            vstore(O + x * D + d0, acc[x][0]);
            vstore(O + x * D + d0 + VW, acc[x][1]);
        }
    }
    for (; d0 + VW <= D; d0 += VW) {
        vf acc[FA_QB];
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) acc[x] = vload(O + x * D + d0);
        const float *vr = v + d0;
        for (int64_t j = 0; j < nk; j++, vr += vs) {
            const vf v0 = vload(vr);
#pragma GCC unroll 8
            for (int x = 0; x < FA_QB; x++) acc[x] = vfma(vset1(S[x * FA_KB + j]), v0, acc[x]);
        }
#pragma GCC unroll 8
        for (int x = 0; x < FA_QB; x++) vstore(O + x * D + d0, acc[x]);
    }
    for (; d0 < D; d0++)                 /* scalar tail of a head size that is no multiple of VW */
        for (int x = 0; x < FA_QB; x++) {
            float t = O[x * D + d0];
            for (int64_t j = 0; j < nk; j++) t += S[x * FA_KB + j] * v[j * vs + d0];
            O[x * D + d0] = t;
        }
}

void g4_k_full_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t n = c->rows, D = c->group, H = c->n_head, Hkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    if (n <= 0 || D <= 0 || H <= 0) return;
    const int64_t qw = H * D, kw = Hkv * D, rep = H / Hkv > 0 ? H / Hkv : 1;
    const int64_t ld = (n + VW - 1) / VW * VW, nqb = (n + FA_QB - 1) / FA_QB;
    int64_t b0, b1;
    g4_split_even(H * nqb, ith, nth, &b0, &b1);
    if (b1 <= b0) return;
    float *kt = (float *)malloc((size_t)(D * ld) * sizeof(float));
    float *S = (float *)malloc((size_t)FA_QB * FA_KB * sizeof(float));
    float *O = (float *)malloc((size_t)(FA_QB * D) * sizeof(float));
    if (!kt || !S || !O) {
        free(kt); free(S); free(O);
        return;
    }
    int64_t cur = -1;                    /* the kv head kt holds */
    for (int64_t item = b0; item < b1; item++) {
        const int64_t h = item / nqb, r0 = (item % nqb) * FA_QB, kh = h / rep;
        const int nq = (int)(n - r0 < FA_QB ? n - r0 : FA_QB);
        if (kh != cur) {
            for (int64_t j = 0; j < n; j++) {
                const float *kr = c->b + j * kw + kh * D;
                for (int64_t d = 0; d < D; d++) kt[d * ld + j] = kr[d];
            }
            for (int64_t d = 0; d < D; d++)
                for (int64_t j = n; j < ld; j++) kt[d * ld + j] = 0.0f;
            cur = kh;
        }
        const float *q[FA_QB];
        for (int x = 0; x < FA_QB; x++) q[x] = c->a + (r0 + (x < nq ? x : nq - 1)) * qw + h * D;
        float m[FA_QB], l[FA_QB];
        for (int x = 0; x < FA_QB; x++) { m[x] = -INFINITY; l[x] = 0.0f; }
        memset(O, 0, (size_t)(FA_QB * D) * sizeof(float));
        const float *vh = c->c + kh * D;
        for (int64_t j0 = 0; j0 < n; j0 += FA_KB) {
            const int64_t nk = n - j0 < FA_KB ? n - j0 : FA_KB, nkp = (nk + VW - 1) / VW * VW;
            fa_scores(q, kt, ld, D, j0, nkp, c->scale, S);
            for (int x = 0; x < FA_QB; x++) {
                float *s = S + x * FA_KB;
                for (int64_t j = nk; j < nkp; j++) s[j] = -INFINITY;
                vf vm = vset1(-INFINITY);
                for (int64_t j = 0; j < nkp; j += VW) vm = vmax(vm, vload(s + j));
                const float bm = vhmax(vm), mn = bm > m[x] ? bm : m[x];
                const vf mv = vset1(mn);
                vf acc = vzero();
                for (int64_t j = 0; j < nkp; j += VW) {
                    const vf p = vexp(vsub(vload(s + j), mv));
                    vstore(s + j, p);
                    acc = vadd(acc, p);
                }
                if (mn > m[x]) {                     /* the running max grew: rescale the partials */
                    const float corr = m[x] == -INFINITY ? 0.0f : expf(m[x] - mn);
                    l[x] *= corr;
                    for (int64_t d = 0; d < D; d++) O[x * D + d] *= corr;
                    m[x] = mn;
                }
                l[x] += vsum(acc);
            }
            fa_wsum(S, vh + j0 * kw, kw, nk, D, O);
        }
        for (int x = 0; x < nq; x++) {
            const float inv = 1.0f / l[x];
            float *o = c->out + (r0 + x) * qw + h * D;
            for (int64_t d = 0; d < D; d++) o[d] = O[x * D + d] * inv;
        }
    }
    free(kt);
    free(S);
    free(O);
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
