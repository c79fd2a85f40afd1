/* The tiled product's AVX-512: 12 x 32 tiles, 24 zmm accumulators (gemm.h has the sizes); the micro-kernel is
 * gemm_ukr.h on simd.h's vectors, the panel transpose AVX2's 8 x 8 one. */
#include "gemm.h"
#include "simd.h"

#if !defined(G4_AVX512)
#error "arch/avx512 needs the AVX-512 flags (runtime/backends/cpu/compiler.py X86_FLAGS)"
#endif

#include "arch/avx2/gemm_pack.h"
#include "gemm_ukr.h"
