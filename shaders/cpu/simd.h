/* simd.h: the one vector layer every kernel file is written on (ops.c, attention.c, gemm's
 * micro-kernel): `vf` holds VW floats - __m512 (16) under AVX-512, __m256 (8) under AVX2, one
 * plain float in the portable build, so a kernel written once on these names is the same
 * arithmetic in each build, and the portable one sums in plain scalar order.
 *
 * vload / vstore are unaligned, vloada needs 64-byte (AVX-512) / 32-byte (AVX2) alignment;
 * vloadh / vstoreh convert IEEE half (round to nearest even); vsum / vhmax reduce the lanes.
 */
#ifndef G4_SIMD_H
#define G4_SIMD_H

#include "g4cpu.h"

#define G4_AI static inline __attribute__((always_inline))

#if defined(G4_AVX512)

typedef __m512 vf;
#define VW 16
G4_AI vf vzero(void) { return _mm512_setzero_ps(); }
G4_AI vf vset1(float x) { return _mm512_set1_ps(x); }
G4_AI vf vload(const float *p) { return _mm512_loadu_ps(p); }
G4_AI vf vloada(const float *p) { return _mm512_load_ps(p); }
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
G4_AI vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
G4_AI vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }      /* c - a*b, one rounding */
G4_AI vf vround(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
G4_AI float vsum(vf v) { return _mm512_reduce_add_ps(v); }
G4_AI float vhmax(vf v) { return _mm512_reduce_max_ps(v); }


#elif defined(G4_AVX2)

typedef __m256 vf;
#define VW 8
G4_AI vf vzero(void) { return _mm256_setzero_ps(); }
G4_AI vf vset1(float x) { return _mm256_set1_ps(x); }
G4_AI vf vload(const float *p) { return _mm256_loadu_ps(p); }
G4_AI vf vloada(const float *p) { return _mm256_load_ps(p); }
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
G4_AI vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
G4_AI vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
G4_AI vf vround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
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


#else /* portable */

typedef float vf;
#define VW 1
G4_AI vf vzero(void) { return 0.0f; }
G4_AI vf vset1(float x) { return x; }
G4_AI vf vload(const float *p) { return *p; }
G4_AI vf vloada(const float *p) { return *p; }
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

#endif
#endif
