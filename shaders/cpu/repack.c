/* Repacked weights for the q8 path (q8.h): 8 rows interleaved so that one 32-byte load holds 4
 * codes bytes of each of 8 rows, and an integer dot against 4 broadcast activation bytes leaves
 * each row's partial sum in its own int32 lane. The block scales of the 8 rows sit together in
 * front of their codes, so they convert as one vector and the float work of a block is one
 * convert and one FMA for 8 rows (instead of per row) - the layout llama.cpp's CPU_REPACK uses
 * for the same reason (ggml-cpu/repack.cpp), in an order of our own (below).
 *
 * Q4_0, "q4_0x8": per group of 8 rows and per block b (144 bytes = 8 blocks):
 *   8 x f16 d (rows 0..7) | for c = 0..3: for r = 0..7: qs_r[4c .. 4c+4)   (4 x 32 bytes)
 * so the low nibbles of chunk c are values 4c..4c+3 of each row, the high ones 16+4c..16+4c+3.
 * Q4_K, "q4_Kx8": per group and super-block i (1184 bytes; 8 GGUF blocks are 1152):
 *   8 x f16 d | 8 x f16 dmin | sc[8 sub-blocks][8 rows] | m[8][8] (the 6-bit scales unpacked)
 *   | for j = 0..3: for c = 0..7: for r: qs_r[32j + 4c .. +4)   (8 x 32 bytes per j)
 * Q6_K, "q6_Kx8": per group and super-block (1680 bytes, as 8 GGUF blocks):
 *   8 x f16 d | sc[16 groups][8 rows] (int8) | for h = 0..1: for c = 0..15: for r:
 *   ql_r[64h + 4c .. +4) | for h: for c = 0..7: for r: qh_r[32h + 4c .. +4)
 * Rows past the matrix's last are zero (d = 0) in every layout.
 */
#include "g4cpu.h"

int g4_repack8_type(int qtype) { return qtype == G4_Q4_0 || qtype == G4_Q4_K || qtype == G4_Q6_K; }

/* bytes of one group of 8 repacked rows of K values */
int64_t g4_repack8_group_bytes(int qtype, int64_t K) {
    switch (qtype) {
    case G4_Q4_0: return K / 32 * 144;
    case G4_Q4_K: return K / 256 * 1184;
    case G4_Q6_K: return K / 256 * 1680;
    default: return 0;
    }
}

size_t g4_repack8_bytes(int qtype, int64_t rows, int64_t row_bytes) {
    if (!g4_repack8_type(qtype) || rows <= 0) return 0;
    const int64_t K = qtype == G4_Q4_0 ? row_bytes / 18 * 32 : qtype == G4_Q4_K ? row_bytes / 144 * 256 : row_bytes / 210 * 256;
    return (size_t)((rows + 7) / 8) * (size_t)g4_repack8_group_bytes(qtype, K);
}

/* llama.cpp's get_scale_min_k4: the 6-bit scale and min of sub-block j */
static void k4_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; }
    else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* The walk every layout shares: for each group of 8 rows and each block (in: `in` bytes per
 * row, out: `out` bytes for the group), the output zeroed, then `put` places row r's block. */
typedef void (*put_fn)(uint8_t *o, const uint8_t *blk, int r);

static void repack_groups(const uint8_t *src, int64_t rows, int64_t row_bytes, uint8_t *dst, int64_t in,
                          int64_t out, put_fn put) {
    const int64_t nb = row_bytes / in, groups = (rows + 7) / 8;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t i = 0; i < nb; i++) {
            uint8_t *o = dst + (g * nb + i) * out;
            memset(o, 0, (size_t)out);
            for (int r = 0; r < 8 && g * 8 + r < rows; r++) put(o, src + (g * 8 + r) * row_bytes + i * in, r);
        }
}

static void put_q4_0(uint8_t *o, const uint8_t *blk, int r) {
    memcpy(o + 2 * r, blk, 2);
    for (int c = 0; c < 4; c++) memcpy(o + 16 + 32 * c + 4 * r, blk + 2 + 4 * c, 4);
}

static void put_q4_k(uint8_t *o, const uint8_t *blk, int r) {
    memcpy(o + 2 * r, blk, 2);
    memcpy(o + 16 + 2 * r, blk + 2, 2);
    for (int j = 0; j < 8; j++) k4_scale_min(blk + 4, j, o + 32 + 8 * j + r, o + 96 + 8 * j + r);
    for (int j = 0; j < 4; j++)
        for (int c = 0; c < 8; c++) memcpy(o + 160 + 256 * j + 32 * c + 4 * r, blk + 16 + 32 * j + 4 * c, 4);
}

static void put_q6_k(uint8_t *o, const uint8_t *blk, int r) {
    memcpy(o + 2 * r, blk + 208, 2);
    for (int k = 0; k < 16; k++) o[16 + 8 * k + r] = blk[192 + k];
    for (int h = 0; h < 2; h++) {
        for (int c = 0; c < 16; c++) memcpy(o + 144 + 512 * h + 32 * c + 4 * r, blk + 64 * h + 4 * c, 4);
        for (int c = 0; c < 8; c++) memcpy(o + 1168 + 256 * h + 32 * c + 4 * r, blk + 128 + 32 * h + 4 * c, 4);
    }
}

int g4_repack8(int qtype, const void *src, int64_t rows, int64_t row_bytes, void *dst) {
    switch (qtype) {
    case G4_Q4_0: repack_groups(src, rows, row_bytes, dst, 18, 144, put_q4_0); return 0;
    case G4_Q4_K: repack_groups(src, rows, row_bytes, dst, 144, 1184, put_q4_k); return 0;
    case G4_Q6_K: repack_groups(src, rows, row_bytes, dst, 210, 1680, put_q6_k); return 0;
    default: return -1;
    }
}
