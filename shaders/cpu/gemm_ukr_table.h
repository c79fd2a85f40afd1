/* The micro-kernel table: one function per row count 1..16 (the count a compile-time constant,
 * so each unrolls), all calling the including file's ukr_body(m, a, lda, p, kc, c, ldc, acc). */
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
