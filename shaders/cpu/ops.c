/* g4cpu ops: embedding, RMSNorm, RoPE, attention, KV store, GeLU, element-wise, softcap, slice.
 *
 * numpy_ref (runtime/backends/numpy_ref/backend.py) defines every op; this file matches it:
 * RMSNorm's mean of squares in double, RoPE angles and cos/sin in double then float, attention
 * in float32 (max-subtracted softmax), f16 caches rounded to nearest even.
 *
 * Three builds from one source (see g4cpu.h): a small vector layer (vf, VW lanes) is __m512 under
 * AVX-512, __m256 under AVX2 and plain float in the portable build, and the kernels are written
 * once on top of it. exp/tanh are Cephes-style (range reduction + polynomial, ~1-2 ulp) on the
 * vector ISAs and libm's expf/tanhf in the portable build.
 *
 * Threading: element-wise ops split the flat element range in 16-float pieces; row ops split
 * (row, group) items; attention hands out (row block, kv head, head chunk) units through
 * g4_chunk, and for a few rows with long contexts splits the key positions across all threads
 * instead (flash-decoding), merging per-thread partials in ex->shared after a barrier.
 */
#include "g4cpu.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define G4_AI static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------ */
/* Vector layer                                                                                */

#if defined(G4_AVX512)

typedef __m512 vf;
#define VW 16
G4_AI vf vzero(void) { return _mm512_setzero_ps(); }
G4_AI vf vset1(float x) { return _mm512_set1_ps(x); }
G4_AI vf vload(const float *p) { return _mm512_loadu_ps(p); }
G4_AI void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
G4_AI vf vloadh(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
G4_AI void vstoreh(uint16_t *p, vf v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
G4_AI vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
G4_AI vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
G4_AI vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
G4_AI vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
G4_AI vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
G4_AI vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
G4_AI float vsum(vf v) { return _mm512_reduce_add_ps(v); }
G4_AI float vhmax(vf v) { return _mm512_reduce_max_ps(v); }

/* e^x: |rel err| ~1e-7 on [-87.3, 88.7], 0 below (no denormal results), +inf above, NaN -> NaN.
 * min/max keep a NaN in their second operand, so the clamps pass NaN through. */
G4_AI vf vexp(vf x) {
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    vf fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    vf y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    /* results below FLT_MIN become 0 (no denormals into the FMAs downstream); NaN stays */
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(keep, y, fx);
}

/* tanh: Cephes tanhf (odd polynomial below 0.625, 1 - 2/(e^2x + 1) above), sign restored. */
G4_AI vf vtanh(vf x) {
    const __m512i sm = _mm512_set1_epi32((int)0x80000000u);
    __m512i xi = _mm512_castps_si512(x);
    vf ax = _mm512_castsi512_ps(_mm512_andnot_si512(sm, xi));
    vf s = _mm512_mul_ps(ax, ax);
    vf p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-3.33332819422e-1f));
    vf small = _mm512_fmadd_ps(_mm512_mul_ps(ax, s), p, ax);
    vf e = vexp(_mm512_add_ps(_mm512_min_ps(_mm512_set1_ps(10.0f), ax), _mm512_min_ps(_mm512_set1_ps(10.0f), ax)));
    vf large = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                             _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    __mmask16 m = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    vf res = _mm512_mask_blend_ps(m, large, small);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(res), _mm512_and_si512(sm, xi)));
}

#elif defined(G4_AVX2)

typedef __m256 vf;
#define VW 8
G4_AI vf vzero(void) { return _mm256_setzero_ps(); }
G4_AI vf vset1(float x) { return _mm256_set1_ps(x); }
G4_AI vf vload(const float *p) { return _mm256_loadu_ps(p); }
G4_AI void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
G4_AI vf vloadh(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
G4_AI void vstoreh(uint16_t *p, vf v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
G4_AI vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
G4_AI vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
G4_AI vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
G4_AI vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
G4_AI vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
G4_AI vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
G4_AI float vsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
G4_AI float vhmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x as in the AVX-512 path; 2^n is applied as two factors 2^(n>>1) * 2^(n - (n>>1)) so that
 * n in [-150, 128] never leaves the normal exponent range. */
G4_AI vf vexp(vf x) {
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    vf fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    vf y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    vf keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_NLT_UQ);   /* as in AVX-512 */
    return _mm256_and_ps(_mm256_mul_ps(_mm256_mul_ps(y, s1), s2), keep);
}

G4_AI vf vtanh(vf x) {
    const vf sm = _mm256_set1_ps(-0.0f);
    vf ax = _mm256_andnot_ps(sm, x);
    vf s = _mm256_mul_ps(ax, ax);
    vf p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-3.33332819422e-1f));
    vf small = _mm256_fmadd_ps(_mm256_mul_ps(ax, s), p, ax);
    vf c = _mm256_min_ps(_mm256_set1_ps(10.0f), ax);
    vf e = vexp(_mm256_add_ps(c, c));
    vf large = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                             _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    vf m = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
    vf res = _mm256_blendv_ps(large, small, m);
    return _mm256_or_ps(res, _mm256_and_ps(sm, x));
}

#else /* portable */

typedef float vf;
#define VW 1
G4_AI vf vzero(void) { return 0.0f; }
G4_AI vf vset1(float x) { return x; }
G4_AI vf vload(const float *p) { return *p; }
G4_AI void vstore(float *p, vf v) { *p = v; }
G4_AI vf vloadh(const uint16_t *p) { return g4_h2f(*p); }
G4_AI void vstoreh(uint16_t *p, vf v) { *p = g4_f2h(v); }
G4_AI vf vadd(vf a, vf b) { return a + b; }
G4_AI vf vsub(vf a, vf b) { return a - b; }
G4_AI vf vmul(vf a, vf b) { return a * b; }
G4_AI vf vdiv(vf a, vf b) { return a / b; }
G4_AI vf vfma(vf a, vf b, vf c) { return a * b + c; }
G4_AI vf vmax(vf a, vf b) { return a > b ? a : b; }
G4_AI float vsum(vf v) { return v; }
G4_AI float vhmax(vf v) { return v; }
G4_AI vf vexp(vf x) { return expf(x); }
G4_AI vf vtanh(vf x) { return tanhf(x); }

#endif

/* A value from a row that is f16 (F16 = 1) or f32, at element index i. */
G4_AI vf vload_kv(const void *p, size_t i, int F16) {
    return F16 ? vloadh((const uint16_t *)p + i) : vload((const float *)p + i);
}
G4_AI float load_kv1(const void *p, size_t i, int F16) {
    return F16 ? g4_h2f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * One exp and one divide; e^(-2u) = inf for very negative x gives -0 (numpy_ref: -0 too). */
#define GELU_K0 ((float)(-2.0 * 0.79788456080286535588))
#define GELU_K1 ((float)(-2.0 * 0.79788456080286535588 * 0.044715))
G4_AI vf vgelu(vf x) {
    vf t = vmul(x, vfma(vmul(x, x), vset1(GELU_K1), vset1(GELU_K0)));
    return vdiv(x, vadd(vset1(1.0f), vexp(t)));
}

/* ------------------------------------------------------------------------------------------ */
/* Work splitting                                                                              */

/* [b, e) of n items for thread ith of nth, even split. */
static inline void split_even(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    *b = n * ith / nth;
    *e = n * (ith + 1) / nth;
}

/* Element range for thread ith, split in 16-float pieces (64 bytes: no shared cache lines). */
static inline void split_elems(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    int64_t nb = (n + 15) / 16;
    *b = nb * ith / nth * 16;
    *e = nb * (ith + 1) / nth * 16;
    if (*b > n) *b = n;
    if (*e > n) *e = n;
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
    split_elems((int64_t)c->rows * c->cols, ith, nth, &i, &e);
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
    split_elems((int64_t)c->rows * cols, ith, nth, &i, &e);
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
    split_even((int64_t)c->rows * per_row, ith, nth, &b, &e);
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
    split_even((int64_t)c->rows * ng, ith, nth, &b, &e);
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
    split_even(rows * pc, ith, nth, &b, &e);
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

static void store_row(void *cache, int f16, int64_t off, const float *x, int64_t n) {
    if (!f16) {
        memcpy((float *)cache + off, x, (size_t)n * 4);
        return;
    }
    uint16_t *d = (uint16_t *)cache + off;
    int64_t i = 0;
    for (; i + VW <= n; i += VW) vstoreh(d + i, vload(x + i));
    for (; i < n; i++) d[i] = g4_f2h(x[i]);
}

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
        store_row(c->cache_k, c->cache_f16, slot * W + k, c->a + r * W + k, n);
        store_row(c->cache_v, c->cache_f16, slot * W + k, c->b + r * W + k, n);
        i += n;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Attention                                                                                   */

#if defined(G4_AVX512)
#define ATT_QB 8           /* queries per register block */
#else
#define ATT_QB 4
#endif
#define ATT_Q_TARGET 8     /* queries per work unit (rows x heads of one kv head) */
#define ATT_HC 16          /* most query heads in one unit */
#define ATT_QMAX ATT_HC
#define ATT_SPLIT_ROWS 4   /* split-K only for batches of at most this many rows */
#define ATT_SPLIT_KEYS 256 /* ... and at least this many key positions */
#define ATT_VBLOCK_BYTES 16384 /* V rows per pass of the weighted sum (L1) */

typedef struct {
    int64_t pos0, rows, D, nh, nkv, rep, hc, nhc, rb, nrb, window, cr, kvw, qw;
    int f16;
    /* Row-exact batches (below): the cache holds positions < cpos; positions [cpos, pos0) are
     * earlier rows of this batch, read from rk / rv (rounded as the cache would hold them). */
    int64_t cpos;
    const void *rk, *rv;
} att_geo;

static void att_geo_init(att_geo *g, const g4_cmd *c, int64_t pos0) {
    g->pos0 = pos0;
    g->rows = c->rows;
    g->D = c->group;
    g->nh = c->n_head;
    g->nkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    g->rep = g->nh / g->nkv > 0 ? g->nh / g->nkv : 1;
    g->hc = g->rep < ATT_HC ? g->rep : ATT_HC;
    g->nhc = (g->rep + g->hc - 1) / g->hc;
    g->rb = ATT_Q_TARGET / g->hc > 1 ? ATT_Q_TARGET / g->hc : 1;
    g->nrb = (g->rows + g->rb - 1) / g->rb;
    g->window = c->window;
    g->cr = c->cache_rows > 0 ? c->cache_rows : 0;
    g->kvw = g->nkv * g->D;
    g->qw = g->nh * g->D;
    g->f16 = c->cache_f16 != 0;
    g->cpos = pos0;
    g->rk = g->rv = NULL;
}

/* First key position of the query at position p (the cache holds the last cr positions only). */
static inline int64_t att_lo(const att_geo *g, int64_t p) {
    int64_t lo = g->window > 0 ? p - g->window + 1 : 0;
    if (lo < 0) lo = 0;
    if (lo < g->pos0 - g->cr) lo = g->pos0 - g->cr;
    return lo;
}

static inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Most keys one unit can see (scores buffer columns). */
static int64_t att_max_keys(const att_geo *g) {
    int64_t n = g->cr + g->rows;
    if (g->window > 0 && g->window + g->rb - 1 < n) n = g->window + g->rb - 1;
    return n;
}

/* Contiguous key rows: positions j0 .. j0+n-1 of the unit's key range (relative to ka). */
typedef struct {
    const void *k, *v;   /* first row, already offset to the kv head */
    int64_t stride;      /* elements between rows */
    int64_t j0, n;
    int f16;
} att_run;

static int att_runs(const att_geo *g, const g4_cmd *c, int64_t kvh, int64_t ka, int64_t kb, att_run *runs) {
    int nr = 0;
    int64_t cb = kb < g->cpos ? kb : g->cpos;   /* cache positions [ka, cb) */
    int64_t p = ka;
    while (p < cb) {
        int64_t row = p % g->cr, n = cb - p;
        if (n > g->cr - row) n = g->cr - row;
        size_t off = (size_t)row * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = g->f16;
        r->k = g->f16 ? (const void *)((const uint16_t *)c->cache_k + off) : (const void *)((const float *)c->cache_k + off);
        r->v = g->f16 ? (const void *)((const uint16_t *)c->cache_v + off) : (const void *)((const float *)c->cache_v + off);
        r->stride = g->kvw;
        r->j0 = p - ka;
        r->n = n;
        p += n;
    }
    if (g->cpos < g->pos0 && kb > g->cpos && ka < g->pos0) {   /* earlier batch rows, as cached */
        int64_t b0 = ka > g->cpos ? ka : g->cpos, b1 = kb < g->pos0 ? kb : g->pos0;
        size_t off = (size_t)(b0 - g->cpos) * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = g->f16;
        r->k = g->f16 ? (const void *)((const uint16_t *)g->rk + off) : (const void *)((const float *)g->rk + off);
        r->v = g->f16 ? (const void *)((const uint16_t *)g->rv + off) : (const void *)((const float *)g->rv + off);
        r->stride = g->kvw;
        r->j0 = b0 - ka;
        r->n = b1 - b0;
    }
    if (kb > g->pos0) {   /* this batch's rows [max(ka, pos0), kb) */
        int64_t b0 = ka > g->pos0 ? ka : g->pos0;
        size_t off = (size_t)(b0 - g->pos0) * g->kvw + kvh * g->D;
        att_run *r = &runs[nr++];
        r->f16 = 0;
        r->k = c->b + off;
        r->v = c->c + off;
        r->stride = g->kvw;
        r->j0 = b0 - ka;
        r->n = kb - b0;
    }
    return nr;
}

/* S[x*ld + j] = scale * q[x].k for the NQ queries and the run's keys. */
G4_AI void att_dots_t(int NQ, int F16, const float *const *q, const att_run *run, int64_t D, float scale,
                      float *S, int64_t ld) {
    for (int64_t i = 0; i < run->n; i++) {
        const void *k = F16 ? (const void *)((const uint16_t *)run->k + i * run->stride)
                            : (const void *)((const float *)run->k + i * run->stride);
        /* U independent accumulators per query: enough FMA chains in flight even for NQ = 1 */
        const int U = NQ == 1 ? 4 : 2;
        vf acc[ATT_QB][4];
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
            for (int u = 0; u < U; u++) acc[x][u] = vzero();
        int64_t d = 0;
        for (; d + U * VW <= D; d += U * VW) {
            vf kk[4];
#pragma GCC unroll 4
            for (int u = 0; u < U; u++) kk[u] = vload_kv(k, (size_t)(d + u * VW), F16);
#pragma GCC unroll 8
            for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
                for (int u = 0; u < U; u++) acc[x][u] = vfma(vload(q[x] + d + u * VW), kk[u], acc[x][u]);
        }
        for (; d + VW <= D; d += VW) {
            vf k0 = vload_kv(k, (size_t)d, F16);
#pragma GCC unroll 8
            for (int x = 0; x < NQ; x++) acc[x][0] = vfma(vload(q[x] + d), k0, acc[x][0]);
        }
        float *s = S + run->j0 + i;
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++) {
            vf a = acc[x][0];
#pragma GCC unroll 4
            for (int u = 1; u < U; u++) a = vadd(a, acc[x][u]);
            float t = vsum(a);
            for (int64_t dd = d; dd < D; dd++) t += q[x][dd] * load_kv1(k, (size_t)dd, F16);
            s[x * ld] = t * scale;
        }
    }
}

#define ATT_DOTS_CASE(n) \
    case n: if (f16) att_dots_t(n, 1, q, run, D, scale, S, ld); else att_dots_t(n, 0, q, run, D, scale, S, ld); break;

static void att_dots(int nq, int f16, const float *const *q, const att_run *run, int64_t D, float scale,
                     float *S, int64_t ld) {
    switch (nq) {
    ATT_DOTS_CASE(1) ATT_DOTS_CASE(2) ATT_DOTS_CASE(3) ATT_DOTS_CASE(4)
#if ATT_QB > 4
    ATT_DOTS_CASE(5) ATT_DOTS_CASE(6) ATT_DOTS_CASE(7) ATT_DOTS_CASE(8)
#endif
    default: break;
    }
}

/* dst[x][d0 .. d0 + NV*VW) (+)= sum_j S[x*ld + j] v_j over the run's keys; `first`: start at 0. */
G4_AI void att_wsum_t(int NQ, int NV, int F16, float *const *dst, const att_run *run, int64_t d0,
                      const float *S, int64_t ld, int first) {
    vf acc[ATT_QB][4];
#pragma GCC unroll 8
    for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) acc[x][n] = first ? vzero() : vload(dst[x] + d0 + n * VW);
    const float *s = S + run->j0;
    for (int64_t i = 0; i < run->n; i++) {
        const void *v = F16 ? (const void *)((const uint16_t *)run->v + i * run->stride + d0)
                            : (const void *)((const float *)run->v + i * run->stride + d0);
        vf vv[4];
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) vv[n] = vload_kv(v, (size_t)(n * VW), F16);
#pragma GCC unroll 8
        for (int x = 0; x < NQ; x++) {
            vf p = vset1(s[x * ld + i]);
#pragma GCC unroll 4
            for (int n = 0; n < NV; n++) acc[x][n] = vfma(p, vv[n], acc[x][n]);
        }
    }
#pragma GCC unroll 8
    for (int x = 0; x < NQ; x++)
#pragma GCC unroll 4
        for (int n = 0; n < NV; n++) vstore(dst[x] + d0 + n * VW, acc[x][n]);
}

/* All head-dim chunks of one run for NQ queries. */
G4_AI void att_wsum_q(int NQ, int F16, float *const *dst, const att_run *run, int64_t D, const float *S,
                      int64_t ld, int first) {
    int64_t d0 = 0;
    if (NQ <= 2) {
        for (; d0 + 4 * VW <= D; d0 += 4 * VW) att_wsum_t(NQ, 4, F16, dst, run, d0, S, ld, first);
    }
    for (; d0 + 2 * VW <= D; d0 += 2 * VW) att_wsum_t(NQ, 2, F16, dst, run, d0, S, ld, first);
    for (; d0 + VW <= D; d0 += VW) att_wsum_t(NQ, 1, F16, dst, run, d0, S, ld, first);
    for (; d0 < D; d0++) {   /* scalar tail of an odd head size */
        for (int x = 0; x < NQ; x++) {
            float t = first ? 0.0f : dst[x][d0];
            for (int64_t i = 0; i < run->n; i++) {
                const void *v = F16 ? (const void *)((const uint16_t *)run->v + i * run->stride)
                                    : (const void *)((const float *)run->v + i * run->stride);
                t += S[x * ld + run->j0 + i] * load_kv1(v, (size_t)d0, F16);
            }
            dst[x][d0] = t;
        }
    }
}

#define ATT_WSUM_CASE(n) \
    case n: if (f16) att_wsum_q(n, 1, dst, run, D, S, ld, first); else att_wsum_q(n, 0, dst, run, D, S, ld, first); break;

static void att_wsum(int nq, int f16, float *const *dst, const att_run *run, int64_t D, const float *S,
                     int64_t ld, int first) {
    switch (nq) {
    ATT_WSUM_CASE(1) ATT_WSUM_CASE(2) ATT_WSUM_CASE(3) ATT_WSUM_CASE(4)
#if ATT_QB > 4
    ATT_WSUM_CASE(5) ATT_WSUM_CASE(6) ATT_WSUM_CASE(7) ATT_WSUM_CASE(8)
#endif
    default: break;
    }
}

/* One unit over key positions [ka, kb): nq queries of kv head kvh, query x allowed keys [lo[x], hi[x]].
 * mo == NULL: normalized output into dst; else unnormalized partials (max mo, sum lo_, acc dst). */
static void att_core(const att_geo *g, const g4_cmd *c, int64_t kvh, int nq, const float *const *q,
                     float *const *dst, const int64_t *lo, const int64_t *hi, int64_t ka, int64_t kb,
                     float *const *mo, float *const *lsum, float *S) {
    const int64_t D = g->D, nk = kb - ka;
    if (nk <= 0) {
        for (int x = 0; x < nq; x++) {
            memset(dst[x], 0, (size_t)D * 4);
            if (mo) { *mo[x] = -INFINITY; *lsum[x] = 0.0f; }
        }
        return;
    }
    const int64_t ld = round16(nk);
    att_run runs[4];
    const int nr = att_runs(g, c, kvh, ka, kb, runs);
    /* scores */
    for (int r = 0; r < nr; r++)
        for (int x0 = 0; x0 < nq; x0 += ATT_QB) {
            int n = nq - x0 < ATT_QB ? nq - x0 : ATT_QB;
            att_dots(n, runs[r].f16, q + x0, &runs[r], D, c->scale, S + x0 * ld, ld);
        }
    /* mask, softmax */
    for (int x = 0; x < nq; x++) {
        float *s = S + x * ld;
        int64_t a = lo[x] - ka, b = hi[x] - ka + 1;   /* allowed [a, b) */
        if (a > nk) a = nk;
        if (b < 0) b = 0;
        for (int64_t j = 0; j < a; j++) s[j] = -INFINITY;
        int64_t z = b > a ? b : a;
        if (z > nk) z = nk;
        for (int64_t j = z; j < ld; j++) s[j] = -INFINITY;
        vf vm = vset1(-INFINITY);
        for (int64_t j = 0; j < ld; j += VW) vm = vmax(vm, vload(s + j));
        float m = vhmax(vm);
        float l = 0.0f;
        if (m == -INFINITY) {
            memset(s, 0, (size_t)ld * 4);
        } else {
            const vf mv = vset1(m);
            vf acc = vzero();
            for (int64_t j = 0; j < ld; j += VW) {
                vf p = vexp(vsub(vload(s + j), mv));
                vstore(s + j, p);
                acc = vadd(acc, p);
            }
            l = vsum(acc);
            if (!mo) {
                const vf inv = vset1(1.0f / l);
                for (int64_t j = 0; j < ld; j += VW) vstore(s + j, vmul(vload(s + j), inv));
            }
        }
        if (mo) { *mo[x] = m; *lsum[x] = l; }
    }
    /* weighted sum of the values, in blocks of keys small enough to stay in L1 while every
     * head-dim chunk of every query group passes over them */
    const int64_t kblk = ATT_VBLOCK_BYTES / (D * (g->f16 ? 2 : 4)) > 8 ? ATT_VBLOCK_BYTES / (D * (g->f16 ? 2 : 4)) : 8;
    for (int r = 0; r < nr; r++)
        for (int64_t i0 = 0; i0 < runs[r].n; i0 += kblk) {
            att_run sub = runs[r];
            sub.n = runs[r].n - i0 < kblk ? runs[r].n - i0 : kblk;
            sub.j0 = runs[r].j0 + i0;
            sub.v = sub.f16 ? (const void *)((const uint16_t *)sub.v + i0 * sub.stride)
                            : (const void *)((const float *)sub.v + i0 * sub.stride);
            for (int x0 = 0; x0 < nq; x0 += ATT_QB) {
                int n = nq - x0 < ATT_QB ? nq - x0 : ATT_QB;
                att_wsum(n, sub.f16, dst + x0, &sub, D, S + x0 * ld, ld, r == 0 && i0 == 0);
            }
        }
}

/* The queries of unit u: kv head, query/dst pointers (dst into out), allowed ranges, key span. */
typedef struct {
    int64_t kvh, ka, kb;
    int nq;
    int64_t row[ATT_QMAX], head[ATT_QMAX], lo[ATT_QMAX], hi[ATT_QMAX];
    const float *q[ATT_QMAX];
} att_unit;

static void att_unit_get(const att_geo *g, const g4_cmd *c, int64_t u, att_unit *U) {
    const int64_t per_rb = g->nkv * g->nhc;
    const int64_t rbi = u / per_rb, rem = u - rbi * per_rb;
    const int64_t kvh = rem / g->nhc, hci = rem - kvh * g->nhc;
    const int64_t r0 = rbi * g->rb, r1 = r0 + g->rb < g->rows ? r0 + g->rb : g->rows;
    const int64_t h0 = kvh * g->rep + hci * g->hc;
    const int64_t h1 = h0 + g->hc < (kvh + 1) * g->rep ? h0 + g->hc : (kvh + 1) * g->rep;
    U->kvh = kvh;
    U->nq = 0;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t p = g->pos0 + r;
        for (int64_t h = h0; h < h1; h++) {
            int x = U->nq++;
            U->row[x] = r;
            U->head[x] = h;
            U->lo[x] = att_lo(g, p);
            U->hi[x] = p;
            U->q[x] = c->a + r * g->qw + h * g->D;
        }
    }
    U->ka = att_lo(g, g->pos0 + r0);
    U->kb = g->pos0 + r1;
}

static inline int64_t att_units(const att_geo *g) { return g->nrb * g->nkv * g->nhc; }

static inline int64_t att_pstride(int64_t D) { return 16 + round16(D); }

size_t g4_attention_scratch(const g4_cmd *c, int nth) {
    (void)nth;
    att_geo g;
    att_geo_init(&g, c, 0);
    int64_t nq = g.rb * g.hc;
    return (size_t)(nq * round16(att_max_keys(&g)) * 4);   /* a multiple of 64 bytes */
}

static size_t att_partials_bytes(int64_t rows, const g4_cmd *c, int nth) {
    return (size_t)nth * (size_t)rows * (size_t)c->n_head * (size_t)att_pstride(c->group) * 4;
}

/* A row-exact batch's f16 copy of its K and V rows (none for an f32 cache: rows are read in place). */
static size_t att_copy_bytes(const g4_cmd *c) {
    return c->cache_f16 ? G4_ALIGN64((size_t)c->rows * (size_t)(c->n_kv_head > 0 ? c->n_kv_head : 1) * c->group * 2) : 0;
}

static size_t att_shared_rows(const g4_cmd *c, int64_t rows, int nth) {
    if (rows <= 0) return 0;
    if (rows > 1 && rows <= G4_ROW_EXACT_MAX) {   /* one row at a time: a one-row split + the copy */
        g4_cmd cr = *c;
        cr.rows = (int32_t)rows;
        return (nth > 1 ? G4_ALIGN64(att_partials_bytes(1, c, nth)) : 0) + 2 * att_copy_bytes(&cr);
    }
    if (nth <= 1 || rows > ATT_SPLIT_ROWS) return 0;
    return att_partials_bytes(rows, c, nth);
}

/* Enough for the whole batch and for any segment of it (a batch of several sequences runs the
 * command once per segment, on fewer rows). */
size_t g4_attention_shared(const g4_cmd *c, int nth) {
    size_t most = att_shared_rows(c, c->rows, nth);
    for (int64_t r = 1; r < c->rows && r <= G4_ROW_EXACT_MAX; r++) {
        size_t b = att_shared_rows(c, r, nth);
        if (b > most) most = b;
    }
    return most;
}

/* Split key positions across threads? Same answer on every thread (barrier below). */
static int att_use_split(const att_geo *g, const g4_cmd *c, const g4_exec *ex, int nth) {
    if (nth <= 1 || g->rows > ATT_SPLIT_ROWS) return 0;
    if (!ex->shared || ex->shared_bytes < g4_attention_shared(c, nth)) return 0;
    int64_t units = att_units(g);
    if (units % nth == 0) return 0;   /* whole units already balance */
    int64_t span = g->pos0 + g->rows - att_lo(g, g->pos0);
    return span >= ATT_SPLIT_KEYS;
}

static void att_run_op(const att_geo *gp, const g4_cmd *c, g4_exec *ex, int ith, int nth, int dynamic);

/* Row-exact batches (2..G4_ROW_EXACT_MAX rows: speculative verification, several sequences'
 * decode steps) give every row the bits a one-row decode step would: each row runs as a one-row
 * attention (same key range, same split, same summation order) that reads the batch's earlier
 * rows as the cache would hold them (f16-rounded copies here) instead of the batch's float rows. */
static void att_rows_exact(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    const int64_t rows = c->rows, D = c->group, nkv = c->n_kv_head > 0 ? c->n_kv_head : 1;
    const int64_t kvw = nkv * D, qw = (int64_t)c->n_head * D;
    const void *rk = c->b, *rv = c->c;
    if (c->cache_f16) {
        uint8_t *copy = (uint8_t *)ex->shared + (nth > 1 ? G4_ALIGN64(att_partials_bytes(1, c, nth)) : 0);
        uint16_t *ck = (uint16_t *)copy, *cv = (uint16_t *)(copy + att_copy_bytes(c));
        int64_t r0, r1;
        split_even(rows, ith, nth, &r0, &r1);
        if (r1 > r0) {
            store_row(ck, 1, r0 * kvw, c->b + r0 * kvw, (r1 - r0) * kvw);
            store_row(cv, 1, r0 * kvw, c->c + r0 * kvw, (r1 - r0) * kvw);
        }
        g4_barrier(ex);
        rk = ck;
        rv = cv;
    }
    for (int64_t j = 0; j < rows; j++) {
        g4_cmd cj = *c;
        cj.rows = 1;
        cj.a = c->a + j * qw;
        cj.b = c->b + j * kvw;
        cj.c = c->c + j * kvw;
        cj.out = c->out + j * qw;
        att_geo g;
        att_geo_init(&g, &cj, ex->pos0 + j);
        g.cpos = ex->pos0;
        g.rk = rk;
        g.rv = rv;
        att_run_op(&g, &cj, ex, ith, nth, 0);
        g4_barrier(ex);             /* the split's partials are reused by the next row */
    }
}

void g4_k_attention(const g4_cmd *c, g4_exec *ex, int ith, int nth) {
    if (c->rows <= 0 || c->group <= 0 || c->n_head <= 0) return;
    if (c->rows > 1 && c->rows <= G4_ROW_EXACT_MAX) {
        att_rows_exact(c, ex, ith, nth);
        return;
    }
    att_geo g;
    att_geo_init(&g, c, ex->pos0);
    att_run_op(&g, c, ex, ith, nth, !ex->in_segment);   /* g4_chunk counts once per command */
}

/* One attention op over geometry g. dynamic: units claimed with g4_chunk (once per command),
 * else dealt out by thread index (a row-exact batch runs several of these in one command). */
static void att_run_op(const att_geo *gp, const g4_cmd *c, g4_exec *ex, int ith, int nth, int dynamic) {
    const att_geo g = *gp;
    float *S = (float *)g4_ws(ex, ith);
    const int64_t units = att_units(&g);
    att_unit U;
    float *dst[ATT_QMAX], *mo[ATT_QMAX], *ls[ATT_QMAX];

    if (!att_use_split(&g, c, ex, nth)) {
        /* whole units, longest (last rows) first */
        for (int64_t k = dynamic ? g4_chunk(ex) : ith; k < units; k = dynamic ? g4_chunk(ex) : k + nth) {
            att_unit_get(&g, c, units - 1 - k, &U);
            for (int x = 0; x < U.nq; x++) dst[x] = c->out + U.row[x] * g.qw + U.head[x] * g.D;
            att_core(&g, c, U.kvh, U.nq, U.q, dst, U.lo, U.hi, U.ka, U.kb, NULL, NULL, S);
        }
        return;
    }

    /* split-K: every thread takes its share of every unit's keys into partials ... */
    float *P = (float *)ex->shared;
    const int64_t ps = att_pstride(g.D);
    for (int64_t u = 0; u < units; u++) {
        att_unit_get(&g, c, u, &U);
        int64_t nk = U.kb - U.ka;
        int64_t ka = U.ka + nk * ith / nth, kb = U.ka + nk * (ith + 1) / nth;
        for (int x = 0; x < U.nq; x++) {
            float *pp = P + ((ith * g.rows + U.row[x]) * g.nh + U.head[x]) * ps;
            mo[x] = pp;
            ls[x] = pp + 1;
            dst[x] = pp + 16;
        }
        att_core(&g, c, U.kvh, U.nq, U.q, dst, U.lo, U.hi, ka, kb, mo, ls, S);
    }
    g4_barrier(ex);
    /* ... then the partials of each (row, head, 64-wide piece of the head) are merged */
    const int64_t npc = (g.D + 63) / 64, items = g.rows * g.nh * npc;
    int64_t b, e;
    split_even(items, ith, nth, &b, &e);
    for (int64_t it = b; it < e; it++) {
        const int64_t rh = it / npc, pc = it - rh * npc;
        const int64_t d0 = pc * 64, d1 = d0 + 64 < g.D ? d0 + 64 : g.D;
        float M = -INFINITY, L = 0.0f;
        for (int t = 0; t < nth; t++) {
            float m = P[(t * g.rows * g.nh + rh) * ps];
            if (m > M) M = m;
        }
        for (int t = 0; t < nth; t++) {
            const float *pp = P + (t * g.rows * g.nh + rh) * ps;
            if (pp[1] > 0.0f) L += pp[1] * expf(pp[0] - M);
        }
        float *o = c->out + rh * g.D;   /* out[r, h*D]: rh = r*nh + h, row stride nh*D */
        const float invL = 1.0f / L;
        int64_t d = d0;
        for (; d + VW <= d1; d += VW) {
            vf acc = vzero();
            for (int t = 0; t < nth; t++) {
                const float *pp = P + (t * g.rows * g.nh + rh) * ps;
                if (pp[1] > 0.0f) acc = vfma(vset1(expf(pp[0] - M) * invL), vload(pp + 16 + d), acc);
            }
            vstore(o + d, acc);
        }
        for (; d < d1; d++) {
            float acc = 0.0f;
            for (int t = 0; t < nth; t++) {
                const float *pp = P + (t * g.rows * g.nh + rh) * ps;
                if (pp[1] > 0.0f) acc += expf(pp[0] - M) * invL * pp[16 + d];
            }
            o[d] = acc;
        }
    }
}
