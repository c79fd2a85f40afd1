/* kv_cache.h: how a KV cache row is written (ops.c's KV_STORE, attention.c's row-exact copies)
 * and read (attention.c): IEEE half (cache_f16, rounded to nearest even) or float32. */
#ifndef G4_KV_CACHE_H
#define G4_KV_CACHE_H

#include "simd.h"

/* cache[off .. off + n) <- x[0 .. n), as f16 or f32. */
static inline void g4_store_kv_row(void *cache, int f16, int64_t off, const float *x, int64_t n) {
    if (!f16) {
        memcpy((float *)cache + off, x, (size_t)n * 4);
        return;
    }
    uint16_t *d = (uint16_t *)cache + off;
    int64_t i = 0;
    for (; i + VW <= n; i += VW) vstoreh(d + i, vload(x + i));
    for (; i < n; i++) d[i] = g4_f2h(x[i]);
}

/* A value from a row that is f16 (F16 = 1) or f32, at element index i. */
G4_AI vf vload_kv(const void *p, size_t i, int F16) {
    return F16 ? vloadh((const uint16_t *)p + i) : vload((const float *)p + i);
}
G4_AI float load_kv1(const void *p, size_t i, int F16) {
    return F16 ? g4_h2f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

#endif
