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

#define G4_UKR(M)                                                                                  \
    static void ukr_##M(const float *restrict a, int64_t lda, const float *restrict p, int kc,    \
                        float *restrict c, int64_t ldc, int acc) {                                \
        ukr_body((M) <= MR ? (M) : MR, a, lda, p, kc, c, ldc, acc);                               \
    }
G4_UKR(1) G4_UKR(2) G4_UKR(3) G4_UKR(4) G4_UKR(5) G4_UKR(6) G4_UKR(7) G4_UKR(8)
G4_UKR(9) G4_UKR(10) G4_UKR(11) G4_UKR(12) G4_UKR(13) G4_UKR(14) G4_UKR(15) G4_UKR(16)

const ukr_fn g4_gemm_ukr[17] = {
    NULL, ukr_1, ukr_2, ukr_3, ukr_4, ukr_5, ukr_6, ukr_7, ukr_8,
    ukr_9, ukr_10, ukr_11, ukr_12, ukr_13, ukr_14, ukr_15, ukr_16,
};

#endif

void g4_gemm_pack_k(const float *const src[NR], int kb, float *d) {
    for (int k = 0; k < kb; k++)
        for (int j = 0; j < NR; j++) d[(size_t)k * NR + j] = src[j][k];
}
