/* The tiled product's portable pieces: 4 x 16 tiles (gemm.h). The micro-kernel is gemm_ukr.h on
 * GCC / Clang generic vectors of 4 floats (SSE2 on x86-64, NEON on aarch64, scalar elsewhere),
 * not simd.h's one-float vf: its lanes never mix, so the width changes no result. Other
 * compilers get the same loops in plain C, left to their vectorizer. */
#include "gemm.h"

#if defined(__GNUC__)
typedef float vf __attribute__((vector_size(16)));
#define VW 4
#define G4_AI static inline __attribute__((always_inline))
G4_AI vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
G4_AI vf vloada(const float *p) { return *(const vf *)(const void *)p; }
G4_AI void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
G4_AI vf vset1(float x) { return (vf){x, x, x, x}; }
G4_AI vf vzero(void) { return (vf){0, 0, 0, 0}; }
G4_AI vf vfma(vf a, vf b, vf c) { return a * b + c; }
#include "gemm_ukr.h"

#else

static inline void ukr_body(const int m, const float *restrict a, int64_t lda, const float *restrict p, int kc,
                             float *restrict c, int64_t ldc, int accumulate) {
    float acc[MR][NR];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = accumulate ? c[i * ldc + j] : 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *w = p + (size_t)k * NR;
        for (int i = 0; i < m; i++) {
            float b = a[i * lda + k];
            for (int j = 0; j < NR; j++) acc[i][j] += b * w[j];
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
}

#include "gemm_ukr_table.h"    /* ukr_1 .. ukr_16 and g4_gemm_ukr from ukr_body */

#endif

void g4_gemm_pack_k(const float *const src[NR], int kb, float *d) {
    for (int k = 0; k < kb; k++)
        for (int j = 0; j < NR; j++) d[(size_t)k * NR + j] = src[j][k];
}
