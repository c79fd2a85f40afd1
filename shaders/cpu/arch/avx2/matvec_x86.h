/* matvec_x86.h: helpers of the AVX2 matvec kernels that the AVX-512 ones and the integer (q8)
 * kernels use too (an AVX-512 build has AVX2): the 8-lane sum, the K-quant scale unpacking on
 * vectors and the software prefetch. */
#ifndef G4_MATVEC_X86_H
#define G4_MATVEC_X86_H

#include "matvec.h"

/* the sum of 8 floats: (0+4, 1+5, 2+6, 3+7), then pairs, then the last two */
static inline float hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Q4_K / Q5_K: the 8 six-bit scales and 8 mins of a super-block (llama.cpp's get_scale_min_k4)
 * unpacked with vector ops, as 16 bytes (m[0..7], sc[0..7]); reads 16 bytes at scales (the 12
 * scale bytes and 4 bytes of what follows them in the block). */
static inline __m128i k4_unpack_v(const uint8_t *scales) {
    const __m128i q = _mm_loadu_si128((const __m128i *)scales);
    const __m128i A = _mm_shuffle_epi8(q, _mm_setr_epi8(4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11));
    const __m128i B = _mm_shuffle_epi8(q, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 0, 1, 2, 3));
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(A, _mm_setr_epi32(0, 4, 0, 0)),
                                     _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    return _mm_or_si128(lo, _mm_and_si128(_mm_srli_epi32(B, 2), _mm_set1_epi8(0x30)));
}

/* Software prefetch PF_DIST bytes ahead of the row pointer, issued about once per 64 bytes read
 * (rows are contiguous, so it runs on into the next rows). The hardware prefetchers alone leave
 * these kernels at ~45 % of the read bandwidth here; 4 KB ahead measured best (512 B: ~55 %).
 * Both are overridable for tuning (-DPF_DIST=0 turns it off). */
#ifndef PF_DIST
#define PF_DIST 4096
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif
/* The repacked kernels' distance (q8r_*, PFR): their one-row stream reaches the read bandwidth
 * with 8-16 KB (4 KB: 80 % of it from two threads, a Sapphire Rapids VM). */
#ifndef PFR_DIST
#define PFR_DIST 16384
#endif
/* a constant distance: 0 compiles to nothing */
#define PF_AHEAD(p, dist) do { if ((dist) > 0) _mm_prefetch((const char *)(p) + (dist), PF_HINT); } while (0)
#define PF(p) PF_AHEAD(p, PF_DIST)
#define PFR(p) PF_AHEAD(p, PFR_DIST)

#endif
