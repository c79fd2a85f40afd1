/* The tiled product's AVX2: 6 x 16 tiles, 12 ymm accumulators (gemm.h has the sizes); the micro-kernel is
 * gemm_ukr.h on simd.h's vectors, the panel transpose AVX2's 8 x 8 one. */
#include "gemm.h"
#include "simd.h"

#if !defined(G4_AVX2) || defined(G4_AVX512)
#error "arch/avx2 needs the AVX2 (and not the AVX-512) flags (runtime/backends/cpu/compiler.py X86_FLAGS)"
#endif

#include "arch/avx2/gemm_pack.h"
#include "gemm_ukr.h"
