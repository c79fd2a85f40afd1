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

#include "gemm_ukr_table.h"    /* ukr_1 .. ukr_16 and g4_gemm_ukr from ukr_body */

#endif
