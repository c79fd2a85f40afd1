/* gemm_ukr.h: the micro-kernel of the tiled product (gemm.c), written once on simd.h's names
 * (vf, VW, vloada, vload, vstore, vset1, vzero, vfma) and instantiated for every tile height
 * m = 1 .. 16 as the table g4_gemm_ukr. Included by one arch/<isa>/gemm.c, which has those
 * names defined. MR x NR accumulators stay in registers across the whole K-block. */
#ifndef G4_GEMM_UKR_H
#define G4_GEMM_UKR_H

#include "gemm.h"

#if NR % VW != 0
#error "G4_GEMM_NR must be a multiple of the vector width"
#endif
#define NV (NR / VW)

/* c[i][0..NR) (+)= sum_k a[i][k] * p[k][0..NR) for i < m; p is a 64-byte aligned [kc][NR] panel. */
G4_AI void ukr_body(const int m, const float *restrict a, int64_t lda, const float *restrict p,
                   int kc, float *restrict c, int64_t ldc, int accumulate) {
    vf acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < m; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) acc[i][j] = accumulate ? vload(c + i * ldc + j * VW) : vzero();
    for (int k = 0; k < kc; k++) {
        vf w[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) w[j] = vloada(p + (size_t)k * NR + j * VW);
#pragma GCC unroll 16
        for (int i = 0; i < m; i++) {
            vf b = vset1(a[i * lda + k]);
#pragma GCC unroll 8
            for (int j = 0; j < NV; j++) acc[i][j] = vfma(b, w[j], acc[i][j]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < m; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NV; j++) vstore(c + i * ldc + j * VW, acc[i][j]);
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
