/* vmath.h: e^x and tanh on simd.h's vectors (the GeLU, softcap and softmax kernels).
 *
 * The vector builds use Cephes-style range reduction + polynomial (~1-2 ulp), written once on
 * simd.h's names; only applying 2^n and the lane masks are per ISA. The portable build calls
 * libm's expf / tanhf.
 */
#ifndef G4_VMATH_H
#define G4_VMATH_H

#include <math.h>

#include "simd.h"

#if defined(G4_AVX512) || defined(G4_AVX2)

/* e^x before its 2^n: x clamped to [-104, 89] (min/max keep a NaN in their second operand, so
 * the clamps pass NaN through) is split as n*ln2 + r; returns e^r, *xc the clamped x, *n. */
G4_AI vf vexp_reduced(vf x, vf *xc, vf *n) {
    x = vmin(vset1(89.0f), x);
    x = vmax(vset1(-104.0f), x);
    vf fx = vround(vmul(x, vset1(1.44269504088896341f)));
    vf r = vfnma(fx, vset1(0.693359375f), x);
    r = vfnma(fx, vset1(-2.12194440e-4f), r);
    vf y = vset1(1.9875691500e-4f);
    y = vfma(y, r, vset1(1.3981999507e-3f));
    y = vfma(y, r, vset1(8.3334519073e-3f));
    y = vfma(y, r, vset1(4.1665795894e-2f));
    y = vfma(y, r, vset1(1.6666665459e-1f));
    y = vfma(y, r, vset1(5.0000001201e-1f));
    *xc = x;
    *n = fx;
    return vfma(y, vmul(r, r), vadd(r, vset1(1.0f)));
}

#endif

#if defined(G4_AVX512)

/* e^x: |rel err| ~1e-7 on [-87.3, 88.7], 0 below (no denormal results), +inf above, NaN -> NaN. */
G4_AI vf vexp(vf x) {
    vf xc, n;
    vf y = vexp_reduced(x, &xc, &n);
    /* results below FLT_MIN become 0 (no denormals into the FMAs downstream); NaN stays */
    __mmask16 keep = _mm512_cmp_ps_mask(xc, vset1(-87.33654f), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(keep, y, n);
}

#elif defined(G4_AVX2)

/* e^x as in the AVX-512 path; 2^n is applied as two factors 2^(n>>1) * 2^(n - (n>>1)) so that
 * n in [-150, 128] never leaves the normal exponent range. */
G4_AI vf vexp(vf x) {
    vf xc, fx;
    vf y = vexp_reduced(x, &xc, &fx);
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    vf keep = _mm256_cmp_ps(xc, vset1(-87.33654f), _CMP_NLT_UQ);   /* as in AVX-512 */
    return _mm256_and_ps(_mm256_mul_ps(_mm256_mul_ps(y, s1), s2), keep);
}

#endif

#if defined(G4_AVX512) || defined(G4_AVX2)

/* Cephes tanhf on |x|: *small, the odd polynomial (used below 0.625), and *large,
 * 1 - 2/(e^2|x| + 1) (above); the caller picks per lane and restores the sign. */
G4_AI void vtanh_parts(vf ax, vf *small, vf *large) {
    vf s = vmul(ax, ax);
    vf p = vset1(-5.70498872745e-3f);
    p = vfma(p, s, vset1(2.06390887954e-2f));
    p = vfma(p, s, vset1(-5.37397155531e-2f));
    p = vfma(p, s, vset1(1.33314422036e-1f));
    p = vfma(p, s, vset1(-3.33332819422e-1f));
    *small = vfma(vmul(ax, s), p, ax);
    vf c = vmin(vset1(10.0f), ax);
    vf e = vexp(vadd(c, c));
    *large = vsub(vset1(1.0f), vdiv(vset1(2.0f), vadd(e, vset1(1.0f))));
}

#endif

#if defined(G4_AVX512)

G4_AI vf vtanh(vf x) {
    const __m512i sm = _mm512_set1_epi32((int)0x80000000u);
    __m512i xi = _mm512_castps_si512(x);
    vf ax = _mm512_castsi512_ps(_mm512_andnot_si512(sm, xi));
    vf small, large;
    vtanh_parts(ax, &small, &large);
    __mmask16 m = _mm512_cmp_ps_mask(ax, vset1(0.625f), _CMP_LT_OQ);
    vf res = _mm512_mask_blend_ps(m, large, small);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(res), _mm512_and_si512(sm, xi)));
}

#elif defined(G4_AVX2)

G4_AI vf vtanh(vf x) {
    const vf sm = _mm256_set1_ps(-0.0f);
    vf ax = _mm256_andnot_ps(sm, x);
    vf small, large;
    vtanh_parts(ax, &small, &large);
    vf m = _mm256_cmp_ps(ax, vset1(0.625f), _CMP_LT_OQ);
    vf res = _mm256_blendv_ps(large, small, m);
    return _mm256_or_ps(res, _mm256_and_ps(sm, x));
}

#else /* portable */

G4_AI vf vexp(vf x) { return expf(x); }
G4_AI vf vtanh(vf x) { return tanhf(x); }

#endif
#endif
