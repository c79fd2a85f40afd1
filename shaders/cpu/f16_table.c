/* f16_table.c: the f16 -> f32 table of every f16 code that the matvec kernels (matvec.h) read
 * block scales from: one load, usable as an FMA's broadcast memory operand. */
#include "matvec.h"

float g4_f16tab[65536] __attribute__((aligned(64)));
atomic_int g4_f16tab_state;

void g4_f16tab_build(void) {
    if (atomic_load_explicit(&g4_f16tab_state, memory_order_acquire) == 2) return;
    int expect = 0;
    if (atomic_compare_exchange_strong(&g4_f16tab_state, &expect, 1)) {
        uint32_t i = 0;
#if defined(G4_AVX2)
        const __m256i step = _mm256_set1_epi32(8);
        __m256i v = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; i < 65536; i += 8, v = _mm256_add_epi32(v, step))
            _mm256_store_ps(g4_f16tab + i, _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(v),
                                                                         _mm256_extracti128_si256(v, 1))));
#endif
        for (; i < 65536; i++) g4_f16tab[i] = g4_h2f((uint16_t)i);
        atomic_store_explicit(&g4_f16tab_state, 2, memory_order_release);
    } else {
        while (atomic_load_explicit(&g4_f16tab_state, memory_order_acquire) != 2) {
#if defined(G4_AVX2)
            _mm_pause();
#endif
        }
    }
}
