/* vmath.h: e^x and tanh on simd.h's vectors (the GeLU, softcap and softmax kernels).
 *
 * The vector builds use Cephes-style range reduction + polynomial (~1-2 ulp); the portable
 * build calls libm's expf / tanhf.
 */
#ifndef G4_VMATH_H
#define G4_VMATH_H

#include <math.h>

#include "simd.h"

#if defined(G4_AVX512)

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

G4_AI vf vexp(vf x) { return expf(x); }
G4_AI vf vtanh(vf x) { return tanhf(x); }

#endif
#endif
