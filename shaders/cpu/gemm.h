/* gemm.h: the tiled product's geometry (gemm.c drives it) and what each ISA's arch/<isa>/gemm.c
 * provides: the register-tiled micro-kernel for every tile height and the panel transpose. */
#ifndef G4_GEMM_H
#define G4_GEMM_H

#include "g4cpu.h"
#include "pool.h"

/* ---- tile sizes (overridable with -D for tuning) ---- */
#if defined(G4_AVX512)
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 12
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 32
#endif
#elif defined(G4_AVX2)
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 6
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 16
#endif
#else
#ifndef G4_GEMM_MR
#define G4_GEMM_MR 4
#endif
#ifndef G4_GEMM_NR
#define G4_GEMM_NR 16
#endif
#endif
/* KC: a multiple of 256 (the K-quant block). The MR x KC activation tile must stay in L1 with
 * room to stream the panels: AVX-512 12 x 512 x 4 B = 24 KiB, AVX2 6 x 768 x 4 B = 18 KiB (fits
 * the 32 KiB L1 of Zen 3/4 and Skylake as well as Sapphire Rapids' 48 KiB). */
#ifndef G4_GEMM_KC
#if defined(G4_AVX512) || !defined(G4_AVX2)
#define G4_GEMM_KC 512
#else
#define G4_GEMM_KC 768
#endif
#endif
#ifndef G4_GEMM_TP
#define G4_GEMM_TP 4            /* most micro-panels per task */
#endif

#define MR G4_GEMM_MR
#define NR G4_GEMM_NR
#define KC G4_GEMM_KC
#define TP G4_GEMM_TP

#if KC % 256 != 0
#error "G4_GEMM_KC must be a multiple of 256"
#endif
#if MR > 16
#error "G4_GEMM_MR must be <= 16"
#endif

/* The K-block is decoded in steps of PK = 256 values (one K-quant super-block, 8 legacy blocks). */
#define PK 256

/* c[i][0..NR) (+)= sum_k a[i][k] * p[k][0..NR) for i < m (the table index); p is a 64-byte
 * aligned [kc][NR] panel; acc: add to c instead of overwriting it. */
typedef void (*ukr_fn)(const float *restrict a, int64_t lda, const float *restrict p, int kc,
                       float *restrict c, int64_t ldc, int acc);
G4_INTERNAL extern const ukr_fn g4_gemm_ukr[17];   /* [m], m = 1 .. MR */

/* d[k * NR + j] = src[j][k] for k < kb, j < NR: kb values of NR decoded rows into panel rows. */
G4_INTERNAL void g4_gemm_pack_k(const float *const src[NR], int kb, float *d);

#endif
