// Causal attention with sliding window, GQA and a ring KV cache; split-K "flash decode".
//
// Query row r sits at position p (its row words in the parameters buffer, common.cuh, so the
// same recorded launch serves every call) and attends to its own sequence's key positions
// lo .. p, lo = max(0, p - window + 1) (window 0: lo = 0). With pos0 the first position of the
// row's segment (rows b0 ..), a key position kp >= pos0 comes from the segment's k/v rows (row
// b0 + kp - pos0, f32); an earlier one from row kp % ring of the sequence's cache slot.
//
// attn_partial_*: grid (n_split, n_head, n_rows), 4 warps. The key range of a query is cut into
// n_split equal chunks (the chunk length is computed on the device from pos0); each warp takes
// 4 consecutive keys at a time (then skips the other warps' keys) with an online softmax
// (running max m, sum l, and the weighted sum of values acc[D], the head dimension spread over
// the 32 lanes); then the 4 warps are merged and the block writes (m, l, acc[0..D)) to `part`.
// attn_combine: grid (n_head, n_rows) merges the n_split partial results of each query head.
// fp32 scores, expf softmax, fp32 accumulation.
// round_batch (row-exact small batches, with an f16 cache): the batch's rows before the query's
// own are read rounded to half, as a one-row decode step reads them from the cache; with the
// decode step's n_split each row then gets a decode step's bits.
// ahead (media prompts; NULL otherwise): per row, how many later rows of its segment it also
// sees (an image's tokens see their whole image; the window still applies): keys lo .. p + ahead.
// round_batch is a flags word: bit 0 the rounding above; bit 1 (ATT_PAST, ops.PastAttention: an MTP
// drafter reading its target's cache) keys end before the query, lo .. p - 1, all from the cache
// (k and v are not read).
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_KB 4      // keys per warp step
#define ATT_ROUND 1   // flags (the round_batch argument)
#define ATT_PAST 2

__device__ __forceinline__ float ld_kv(const float* p, int i) { return p[i]; }
__device__ __forceinline__ float ld_kv(const u16* p, int i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ float as_cached(float x, bool round) { return round ? f16_to_f32(f32_to_f16(x)) : x; }

template <typename KV, int DPL>
__device__ __forceinline__ void attn_partial_impl(
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
        const KV* __restrict__ ck, const KV* __restrict__ cv, float* __restrict__ part,
        const int* __restrict__ params, int n_head, int n_kv_head, int D, int window, int ring,
        float scale, int n_split, int round_batch, const float* __restrict__ ahead) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][DPL * 32];
    const float NEG_INF = __int_as_float(0xff800000);
    const int s = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p = ROW_POS(params, r), b0 = ROW_SEG0(params, r);
    const bool past = (round_batch & ATT_PAST) != 0;
    const int pos0 = past ? p + 1 : p - (r - b0);   // past: no fresh rows, every key is cached
    const size_t sbase = (size_t)ROW_SLOT(params, r) * ring;
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    int hi = past ? p - 1 : p;
    if (ahead) hi = p + min(max((int)ahead[r], 0), b0 + ROW_SEGN(params, r) - 1 - r);
    const int L = hi - lo + 1;
    const int chunk = (L + n_split - 1) / n_split;
    const int c0 = lo + s * chunk;
    const int c1 = min(hi + 1, c0 + chunk);
    const int kvh = h / (n_head / n_kv_head);
    const int qstride = n_head * D, kvstride = n_kv_head * D;

    float qv[DPL], acc[DPL];
    const float* qr = q + (size_t)r * qstride + h * D;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        const int d = lane + 32 * i;
        qv[i] = d < D ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    // Each warp takes ATT_KB consecutive keys at a time (independent loads and reductions in
    // flight), then the next ATT_KB after the other warps' keys.
    for (int kb = c0 + warp * ATT_KB; kb < c1; kb += ATT_WARPS * ATT_KB) {
        float dots[ATT_KB];
#pragma unroll
        for (int u = 0; u < ATT_KB; u++) {
            const int kp = kb + u;
            float dot = 0.0f;
            if (kp < c1) {
                if (kp >= pos0) {
                    const float* kr = k + (size_t)(b0 + kp - pos0) * kvstride + kvh * D;
                    const bool rnd = (round_batch & ATT_ROUND) && kp < p;
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        const int d = lane + 32 * i;
                        if (d < D) dot += qv[i] * as_cached(kr[d], rnd);
                    }
                } else {
                    const KV* kr = ck + (sbase + kp % ring) * kvstride + kvh * D;
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        const int d = lane + 32 * i;
                        if (d < D) dot += qv[i] * ld_kv(kr, d);
                    }
                }
            }
            dots[u] = dot;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < ATT_KB; u++) {
            dots[u] = warp_sum(dots[u]) * scale;
            if (kb + u < c1) mx = fmaxf(mx, dots[u]);
        }
        const float corr = expf(m - mx);          // 0 while m is still -inf
        l *= corr;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
        m = mx;
#pragma unroll
        for (int u = 0; u < ATT_KB; u++) {
            const int kp = kb + u;
            if (kp >= c1) continue;
            const float pe = expf(dots[u] - mx);
            l += pe;
            if (kp >= pos0) {
                const float* vr = v + (size_t)(b0 + kp - pos0) * kvstride + kvh * D;
                const bool rnd = (round_batch & ATT_ROUND) && kp < p;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    const int d = lane + 32 * i;
                    if (d < D) acc[i] += pe * as_cached(vr[d], rnd);
                }
            } else {
                const KV* vr = cv + (sbase + kp % ring) * kvstride + kvh * D;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    const int d = lane + 32 * i;
                    if (d < D) acc[i] += pe * ld_kv(vr, d);
                }
            }
        }
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) sm_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();

    float M = sm_m[0];
#pragma unroll
    for (int w = 1; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float* out = part + ((size_t)(r * n_head + h) * n_split + s) * (D + 2);
    if (M == NEG_INF) {                          // an empty chunk (short key range)
        if (threadIdx.x == 0) {
            out[0] = NEG_INF;
            out[1] = 0.0f;
        }
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[2 + d] = 0.0f;
        return;
    }
    float f[ATT_WARPS];
    float Lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = sm_m[w] == NEG_INF ? 0.0f : expf(sm_m[w] - M);
        Lsum += f[w] * sm_l[w];
    }
    if (threadIdx.x == 0) {
        out[0] = M;
        out[1] = Lsum;
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) a += f[w] * sm_acc[w][d];
        out[2 + d] = a;
    }
}

#define G4RT_ATTN(name, KV, DPL)                                                                 \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) attn_partial_##name(            \
            const float* q, const float* k, const float* v, const KV* ck, const KV* cv,         \
            float* part, const int* params, int n_head, int n_kv_head, int D, int window,       \
            int ring, float scale, int n_split, int round_batch, const float* ahead) {          \
        attn_partial_impl<KV, DPL>(q, k, v, ck, cv, part, params, n_head, n_kv_head, D, window, \
                                   ring, scale, n_split, round_batch, ahead);                   \
    }
// name: cache type and the largest head dimension served (DPL = D / 32 per lane)
G4RT_ATTN(f16_d64, u16, 2)
G4RT_ATTN(f16_d128, u16, 4)
G4RT_ATTN(f16_d256, u16, 8)
G4RT_ATTN(f16_d512, u16, 16)
G4RT_ATTN(f32_d64, float, 2)
G4RT_ATTN(f32_d128, float, 4)
G4RT_ATTN(f32_d256, float, 8)
G4RT_ATTN(f32_d512, float, 16)

extern "C" __global__ void __launch_bounds__(128)
attn_combine(const float* part, float* out, int n_head, int D, int n_split) {
    const int h = blockIdx.x, r = blockIdx.y;
    const float* P = part + (size_t)(r * n_head + h) * n_split * (D + 2);
    float M = P[0];
    for (int s = 1; s < n_split; s++) M = fmaxf(M, P[(size_t)s * (D + 2)]);
    float S = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float ms = P[(size_t)s * (D + 2)];
        S += P[(size_t)s * (D + 2) + 1] * (ms == M ? 1.0f : expf(ms - M));
    }
    const float inv = 1.0f / S;
    float* o = out + (size_t)r * n_head * D + (size_t)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float ms = P[(size_t)s * (D + 2)];
            if (ms == __int_as_float(0xff800000)) continue;
            a += P[(size_t)s * (D + 2) + 2 + d] * expf(ms - M);
        }
        o[d] = a * inv;
    }
}
