/* g4cpu ops: embedding, RMSNorm, RoPE, KV store, GeLU, element-wise, softcap, slice
 * (attention is attention.c).
 *
 * numpy_ref (runtime/backends/numpy_ref/backend.py) defines every op; this file matches it:
 * RMSNorm's mean of squares in double, RoPE angles and cos/sin in double then float, f16 caches
 * rounded to nearest even.
 *
 * Three builds from one source: the kernels are written on simd.h's vectors (vf, VW lanes) and
 * vmath.h's exp / tanh.
 *
 * Threading: element-wise ops split the flat element range in 16-float pieces; row ops split
 * (row, group) items (pool.h's helpers).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kv_cache.h"
#include "pool.h"
#include "simd.h"
#include "vmath.h"

/* gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * One exp and one divide; e^(-2u) = inf for very negative x gives -0 (numpy_ref: -0 too). */
#define GELU_K0 ((float)(-2.0 * 0.79788456080286535588))
#define GELU_K1 ((float)(-2.0 * 0.79788456080286535588 * 0.044715))
G4_AI vf vgelu(vf x) {
    vf t = vmul(x, vfma(vmul(x, x), vset1(GELU_K1), vset1(GELU_K0)));
    return vdiv(x, vadd(vset1(1.0f), vexp(t)));
}

/* ------------------------------------------------------------------------------------------ */
/* Element-wise                                                                                */

enum { EW_ADD, EW_MUL, EW_SCALE, EW_GELU, EW_GELU_MUL, EW_SOFTCAP };

G4_AI vf ew_op(int kind, vf a, vf b, float s) {
    switch (kind) {
    case EW_ADD: return vadd(a, b);
    case EW_MUL: return vmul(a, b);
    case EW_SCALE: return vmul(a, vset1(s));
    case EW_GELU: return vgelu(a);
    case EW_GELU_MUL: return vmul(vgelu(a), b);
    default: return vmul(vset1(s), vtanh(vdiv(a, vset1(s))));   /* EW_SOFTCAP */
    }
}

G4_AI void ew_run(int kind, const g4_cmd *c, int ith, int nth) {
    const int binary = kind == EW_ADD || kind == EW_MUL || kind == EW_GELU_MUL;
    const float s = kind == EW_SOFTCAP ? c->cap : c->scale;
    const float *a = c->a, *b = c->b;
    float *o = c->out;
    int64_t i, e;
    g4_split_elems((int64_t)c->rows * c->cols, ith, nth, &i, &e);
    for (; i + 2 * VW <= e; i += 2 * VW) {
        vf a0 = vload(a + i), a1 = vload(a + i + VW);
        vf b0 = binary ? vload(b + i) : a0, b1 = binary ? vload(b + i + VW) : a1;
        vstore(o + i, ew_op(kind, a0, b0, s));
        vstore(o + i + VW, ew_op(kind, a1, b1, s));
    }
    for (; i + VW <= e; i += VW) {
        vf a0 = vload(a + i), b0 = binary ? vload(b + i) : a0;
        vstore(o + i, ew_op(kind, a0, b0, s));
    }
    if (i < e) {   /* tail (vector builds): the same vector code on a padded copy */
        float ta[VW], tb[VW], to[VW];
        int n = (int)(e - i);
        memset(ta, 0, sizeof ta);
        memset(tb, 0, sizeof tb);
        memcpy(ta, a + i, (size_t)n * 4);
        if (binary) memcpy(tb, b + i, (size_t)n * 4);
        vstore(to, ew_op(kind, vload(ta), vload(tb), s));
        memcpy(o + i, to, (size_t)n * 4);
    }
}

void g4_k_add(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_ADD, c, ith, nth); }
void g4_k_mul(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_MUL, c, ith, nth); }
void g4_k_scale(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_SCALE, c, ith, nth); }
void g4_k_gelu(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_GELU, c, ith, nth); }
void g4_k_gelu_mul(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_GELU_MUL, c, ith, nth); }
void g4_k_softcap(const g4_cmd *c, g4_exec *ex, int ith, int nth) { (void)ex; ew_run(EW_SOFTCAP, c, ith, nth); }

/* ------------------------------------------------------------------------------------------ */
/* Slice                                                                                       */

void g4_k_slice(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols;
    if (cols <= 0) return;
    int64_t i, e;
    g4_split_elems((int64_t)c->rows * cols, ith, nth, &i, &e);
    while (i < e) {
        int64_t r = i / cols, k = i - r * cols, n = cols - k;
        if (n > e - i) n = e - i;
        memcpy(c->out + i, c->a + (int64_t)(c->row0 + r) * c->in_cols + c->col0 + k, (size_t)n * 4);
        i += n;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Embedding                                                                                   */

void g4_k_embed(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t cols = c->cols;
    int bv = g4_block_values(c->qtype);
    if (cols <= 0 || bv <= 0) return;
    /* work pieces: runs of `unit` values (a whole number of blocks, >= 16 floats) of each row */
    const int64_t unit = bv >= 16 ? bv : 16;
    const int64_t per_row = (cols + unit - 1) / unit;
    int64_t b, e;
    g4_split_even((int64_t)c->rows * per_row, ith, nth, &b, &e);
    while (b < e) {
        int64_t r = b / per_row, u0 = b - r * per_row, u1 = per_row;
        if (u1 - u0 > e - b) u1 = u0 + (e - b);
        int64_t k0 = u0 * unit, k1 = u1 * unit < cols ? u1 * unit : cols;
        float *dst = c->out + r * cols + k0;
        int32_t tok = ex->tokens ? ex->tokens[r] : -1;
        if (tok < 0 || (int64_t)tok >= c->w_rows) {
            memset(dst, 0, (size_t)(k1 - k0) * 4);   /* invalid id: zeros, never a wild read */
        } else {
            g4_dequant_row(c->qtype, (const uint8_t *)c->w + (int64_t)tok * c->w_row_bytes, k0, k1 - k0, dst);
            const vf s = vset1(c->scale);
            int64_t i = 0, n = k1 - k0;
            for (; i + VW <= n; i += VW) vstore(dst + i, vmul(vload(dst + i), s));
            for (; i < n; i++) dst[i] *= c->scale;
        }
        b += u1 - u0;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* RMSNorm                                                                                     */

static double sum_squares(const float *x, int64_t n) {
    int64_t i = 0;
    double s = 0.0;
#if defined(G4_AVX512)
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        a0 = _mm512_fmadd_pd(lo, lo, a0);   /* a float's square is exact in double */
        a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#elif defined(G4_AVX2)
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    __m256d t = _mm256_add_pd(a0, a1);
    __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    s = _mm_cvtsd_f64(_mm_add_sd(u, _mm_unpackhi_pd(u, u)));
#endif
    for (; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

void g4_k_rmsnorm(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    (void)ex;
    const int64_t cols = c->cols, group = c->group > 0 ? c->group : c->cols;
    if (cols <= 0 || group <= 0) return;
    const int64_t ng = cols / group;
    const float *w = (const float *)c->w;
    int64_t b, e;
    g4_split_even((int64_t)c->rows * ng, ith, nth, &b, &e);
    for (int64_t it = b; it < e; it++) {
        const float *x = c->a + it * group;   /* rows are contiguous: item it starts at it*group */
        float *y = c->out + it * group;
        double ms = sum_squares(x, group) / (double)group;
        const float rs = (float)(1.0 / sqrt(ms + (double)c->eps));
        const vf vr = vset1(rs);
        int64_t i = 0;
        if (w) {
            for (; i + VW <= group; i += VW) vstore(y + i, vmul(vmul(vload(x + i), vr), vload(w + i)));
            for (; i < group; i++) y[i] = (x[i] * rs) * w[i];
        } else {
            for (; i + VW <= group; i += VW) vstore(y + i, vmul(vload(x + i), vr));
            for (; i < group; i++) y[i] = x[i] * rs;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE (NeoX)                                                                                 */

#define ROPE_PAIRS 256   /* cos/sin table on the stack, per piece of pairs */

void g4_k_rope(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t rows = c->rows, cols = c->cols, D = c->group;
    if (rows <= 0 || D <= 0) return;
    const int64_t nh = cols / D;
    int64_t half = c->freqs ? c->n_rot / 2 : 0;
    if (2 * half > D) half = D / 2;
    const float *src = c->a;
    float *dst = c->out;
    /* items: (row, piece of the pair range); several pieces per row only when rows < nth */
    int64_t pc = 1;
    if (rows < nth) {
        pc = (nth + rows - 1) / rows;
        int64_t mx = (half + 15) / 16;
        if (pc > mx) pc = mx;
        if (pc < 1) pc = 1;
    }
    int64_t b, e;
    g4_split_even(rows * pc, ith, nth, &b, &e);
    float cs[ROPE_PAIRS], sn[ROPE_PAIRS];
    for (int64_t it = b; it < e; it++) {
        const int64_t r = it / pc, k = it - r * pc;
        const int64_t i0 = k == 0 ? 0 : (half * k / pc) / 16 * 16;
        const int64_t i1 = k + 1 == pc ? half : (half * (k + 1) / pc) / 16 * 16;
        const float *xr = src + r * cols;
        float *yr = dst + r * cols;
        if (k == 0 && dst != src) {   /* columns past n_rot pass through */
            for (int64_t h = 0; h < nh; h++)
                memcpy(yr + h * D + 2 * half, xr + h * D + 2 * half, (size_t)(D - 2 * half) * 4);
        }
        const double pos = (double)(ex->pos0 + r);
        for (int64_t p0 = i0; p0 < i1; p0 += ROPE_PAIRS) {
            const int64_t np = i1 - p0 < ROPE_PAIRS ? i1 - p0 : ROPE_PAIRS;
            for (int64_t i = 0; i < np; i++) {
                double ang = pos * c->freqs[p0 + i];
                cs[i] = (float)cos(ang);
                sn[i] = (float)sin(ang);
            }
            for (int64_t h = 0; h < nh; h++) {
                const float *xa = xr + h * D + p0, *xb = xa + half;
                float *ya = yr + h * D + p0, *yb = ya + half;
                int64_t i = 0;
                for (; i + VW <= np; i += VW) {
                    vf a = vload(xa + i), bb = vload(xb + i), co = vload(cs + i), si = vload(sn + i);
                    vstore(ya + i, vsub(vmul(a, co), vmul(bb, si)));
                    vstore(yb + i, vadd(vmul(a, si), vmul(bb, co)));
                }
                for (; i < np; i++) {
                    float a = xa[i], bb = xb[i], ac = a * cs[i], bs = bb * sn[i], as = a * sn[i], bc = bb * cs[i];
                    ya[i] = ac - bs;
                    yb[i] = as + bc;
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* KV store                                                                                    */


void g4_k_kv_store(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t rows = c->rows, W = c->cols, CR = c->cache_rows;
    if (rows <= 0 || W <= 0 || CR <= 0) return;
    const int64_t r0 = rows > CR ? rows - CR : 0;   /* only the last cache_rows rows survive */
    int64_t i, e;
    /* 32-element pieces: 64 bytes of an f16 cache row */
    int64_t total = (rows - r0) * W, nb = (total + 31) / 32;
    i = nb * ith / nth * 32;
    e = nb * (ith + 1) / nth * 32;
    if (e > total) e = total;
    while (i < e) {
        int64_t r = r0 + i / W, k = i % W, n = W - k;
        if (n > e - i) n = e - i;
        int64_t slot = ((int64_t)ex->pos0 + r) % CR;
        g4_store_kv_row(c->cache_k, c->cache_f16, slot * W + k, c->a + r * W + k, n);
        g4_store_kv_row(c->cache_v, c->cache_f16, slot * W + k, c->b + r * W + k, n);
        i += n;
    }
}
