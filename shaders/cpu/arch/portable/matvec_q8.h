/* matvec_q8.h (portable): the q8 matvec kernels (q8.h has the arithmetic) in plain C, one row
 * at a time: each 32-value (sub-)block's integer dot, scaled once in float into one of four
 * partial sums (block k into sum k % 4). The x86 builds run the same arithmetic on vectors. */
#ifndef G4_MATVEC_Q8_PORTABLE_H
#define G4_MATVEC_Q8_PORTABLE_H

#include "matvec.h"
#include "q8.h"

#define Q8_DOT_NAME "scalar"      /* no repacked kernels here (matvec_q8_entry.h: none run) */
#define Q8_ROWS_G 1
#define Q8_ROWS_SWITCH(R, CALL) CALL(1);

/* the activation code at offset o: q, or 128 q + q2 in the i16 mode (two) */
static inline int32_t q8_code(const q8_row *x, int64_t o, int two) { return two ? 128 * x->q[o] + x->q2[o] : x->q[o]; }

/* the dot of 32 weight codes with the activation codes at offset o */
static inline int32_t q8_idot32(const int32_t *u, const q8_row *x, int64_t o, int two) {
    int32_t s = 0;
    for (int i = 0; i < 32; i++) s += u[i] * q8_code(x, o + i, two);
    return s;
}

/* the 4-bit codes of a 16-byte nibble block in value order (low nibbles, then high) */
static inline void q8_nib_codes(const uint8_t *qs, int32_t *u) {
    for (int i = 0; i < 16; i++) { u[i] = qs[i] & 15; u[16 + i] = qs[i] >> 4; }
}

static float q8_dot_row(const g4_cmd *c, const uint8_t *w, const q8_row *x, int two) {
    const int64_t nb = c->in_cols / 32, nsb = c->in_cols / 256;
    float a[4] = {0, 0, 0, 0}, m4[4] = {0, 0, 0, 0};
    int32_t u[32];
    switch (c->qtype) {
    case G4_Q4_0: case G4_Q4_1: case G4_Q5_0: case G4_Q5_1: {
        const int bs = c->qtype == G4_Q4_0 ? 18 : c->qtype == G4_Q4_1 ? 20 : c->qtype == G4_Q5_0 ? 22 : 24;
        const int mins = c->qtype == G4_Q4_1 || c->qtype == G4_Q5_1;
        const int five = c->qtype == G4_Q5_0 || c->qtype == G4_Q5_1;
        const int qo = bs - 16, ho = mins ? 4 : 2;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = w + b * bs;
            q8_nib_codes(p + qo, u);
            if (five) {
                const uint32_t qh = rd32(p + ho);
                for (int i = 0; i < 32; i++) u[i] |= (int32_t)((qh >> i) & 1u) << 4;
            }
            const int32_t s = q8_idot32(u, x, b * 32, two) + 8 * x->bias[b];
            a[b & 3] += (float)s * (g4_h2f(rd16(p)) * x->d[b]);
            if (mins) m4[b & 3] += g4_h2f(rd16(p + 2)) * x->sd[b];
        }
        break;
    }
    case G4_Q8_0:
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = w + b * 34;
            for (int i = 0; i < 32; i++) u[i] = (int8_t)p[2 + i];
            a[b & 3] += (float)q8_idot32(u, x, b * 32, two) * (g4_h2f(rd16(p)) * x->d[b]);
        }
        break;
    case G4_Q4_K: case G4_Q5_K: {
        const int five = c->qtype == G4_Q5_K, bs = five ? 176 : 144, qo = five ? 48 : 16;
        for (int64_t i = 0; i < nsb; i++) {
            const uint8_t *blk = w + i * bs;
            const float d = g4_h2f(rd16(blk)), dmin = g4_h2f(rd16(blk + 2));
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 8; j++) {   /* llama.cpp's get_scale_min_k4 */
                const uint8_t *s = blk + 4;
                if (j < 4) { sc[j] = s[j] & 63; mn[j] = s[j + 4] & 63; }
                else {
                    sc[j] = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
                    mn[j] = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
                }
            }
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = blk + qo + 32 * (j / 2);
                for (int l = 0; l < 32; l++) {
                    u[l] = (j & 1) ? q[l] >> 4 : q[l] & 15;
                    if (five) u[l] |= ((blk[16 + l] >> j) & 1) << 4;
                }
                const int64_t sb = i * 8 + j;
                a[j & 3] += (float)q8_idot32(u, x, sb * 32, two) * ((d * (float)sc[j]) * x->d[sb]);
                m4[j & 3] -= (dmin * (float)mn[j]) * x->sd[sb];
            }
        }
        break;
    }
    case G4_Q6_K:
        for (int64_t i = 0; i < nsb; i++) {
            const uint8_t *blk = w + i * 210;
            const float d = g4_h2f(rd16(blk + 208));
            const int8_t *sc = (const int8_t *)(blk + 192);
            for (int k = 0; k < 8; k++) {
                const int h = k / 4, t = k % 4;
                const uint8_t *ql = blk + 64 * h + 32 * (t & 1), *qh = blk + 128 + 32 * h;
                for (int l = 0; l < 32; l++)
                    u[l] = (int32_t)(((t & 2) ? ql[l] >> 4 : ql[l] & 15) | (((qh[l] >> (2 * t)) & 3) << 4)) - 32;
                const int64_t sb = i * 8 + k;
                int32_t s0 = 0, s1 = 0;
                for (int l = 0; l < 16; l++) { s0 += u[l] * q8_code(x, sb * 32 + l, two); s1 += u[16 + l] * q8_code(x, sb * 32 + 16 + l, two); }
                a[k & 3] += (float)s0 * ((d * (float)sc[2 * k]) * x->d[sb])
                          + (float)s1 * ((d * (float)sc[2 * k + 1]) * x->d[sb]);
            }
        }
        break;
    default: break;
    }
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((m4[0] + m4[1]) + (m4[2] + m4[3]));
}

static inline void q8_weight_row(const g4_cmd *c, int R, const uint8_t *wo, const q8_row *x, float *v) {
    const int two = (c->act & G4_ACT_MODE) == G4_ACT_I16;
    for (int r = 0; r < R; r++) v[r] = q8_dot_row(c, wo, &x[r], two);
}

static void q8_quantize_row(const float *x, int64_t K, int8_t *q, float *d) { q8_quantize_scalar(x, K, q, d); }

#endif
