/* gemm_pack.h: g4_gemm_pack_k with AVX2 8 x 8 transposes (the AVX-512 build uses it too). */
#ifndef G4_GEMM_PACK_X86_H
#define G4_GEMM_PACK_X86_H

#include "gemm.h"

/* dst[q * NR + j] = src[j][q] for q, j < 8 (two 4x4 in-lane transposes; the rows' halves are
 * paired by 128-bit loads, so only 16 shuffles per 64 values). */
static inline __attribute__((always_inline)) void tr8x8_store(const float *const src[8], int k, float *dst) {
#define G4_LD2(a, b, o) _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src[a] + k + (o))), \
                                             _mm_loadu_ps(src[b] + k + (o)), 1)
    for (int h = 0; h < 8; h += 4) {
        __m256 t0 = G4_LD2(0, 4, h), t1 = G4_LD2(1, 5, h), t2 = G4_LD2(2, 6, h), t3 = G4_LD2(3, 7, h);
        __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
        __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
        _mm256_storeu_ps(dst + (h + 0) * NR, _mm256_shuffle_ps(u0, u2, 0x44));
        _mm256_storeu_ps(dst + (h + 1) * NR, _mm256_shuffle_ps(u0, u2, 0xEE));
        _mm256_storeu_ps(dst + (h + 2) * NR, _mm256_shuffle_ps(u1, u3, 0x44));
        _mm256_storeu_ps(dst + (h + 3) * NR, _mm256_shuffle_ps(u1, u3, 0xEE));
    }
#undef G4_LD2
}

void g4_gemm_pack_k(const float *const src[NR], int kb, float *d) {
    int k = 0;
    for (; k + 8 <= kb; k += 8)
        for (int g = 0; g < NR; g += 8) tr8x8_store(src + g, k, d + (size_t)k * NR + g);
    for (; k < kb; k++)
        for (int j = 0; j < NR; j++) d[(size_t)k * NR + j] = src[j][k];
}

#endif
