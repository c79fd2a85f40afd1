// The media encoders' row ops (gemma4uv / gemma4v: runtime/ops/text.py LayerNorm, AddVector,
// GatherAdd; runtime/ops/vision.py Clamp, Rope2D, FullAttention, PoolRows, Standardize).
// numpy_ref defines them (runtime/backends/numpy_ref/backend.py); shaders/cpu/media_ops.c and
// vit_ops.c are the native CPU twins. All arithmetic fp32 with fp32 (or, where the reference
// says so, double) accumulation; no f16 anywhere.
#include "common.cuh"

#define MEDIA_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// ---- LayerNorm: one block per row ---------------------------------------------------------------
// (v - mean) / sqrt(var + eps), mean and population variance in double (two passes), the value
// rounded to float, then * w[i] and + b[i] in float when given. grid (rows), any block size that
// is a multiple of 32. In place is safe: a thread writes only the elements it read itself.
extern "C" __global__ void layernorm(const float* x, float* out, const float* w, const float* b, int cols,
                                     double eps) {
    __shared__ double sh[32];
    const size_t base = (size_t)blockIdx.x * cols;
    double s = 0.0;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += (double)x[base + i];
    const double mean = block_sum_d(s, sh) / (double)cols;
    double q = 0.0;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const double t = (double)x[base + i] - mean;
        q += t * t;
    }
    const double var = block_sum_d(q, sh) / (double)cols;
    const double inv = 1.0 / sqrt(var + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float y = (float)(((double)x[base + i] - mean) * inv);
        if (w) y = y * w[i];
        if (b) y = y + b[i];
        out[base + i] = y;
    }
}

// ---- element-wise (grid-stride loops over rows * cols; in place is fine) ----------------------
// out[r, c] = x[r, c] + w[c]
extern "C" __global__ void add_vector(const float* x, const float* w, float* out, int rows, int cols) {
    const long long n = (long long)rows * cols;
    MEDIA_GRID_STRIDE(i, n) out[i] = x[i] + w[i % cols];
}

// out[r, c] = x[r, c] + table[index[r, 0], c] + table[index[r, 1], c] + ... (J indexes a row, f32
// holding integers; added in index order, as the reference). An index outside the table adds
// nothing (the caller checks them; this only keeps memory safe).
extern "C" __global__ void gather_add(const float* x, const float* table, const float* index, float* out,
                                      int rows, int cols, int J, int table_rows) {
    const long long n = (long long)rows * cols;
    MEDIA_GRID_STRIDE(i, n) {
        const long long r = i / cols, c = i % cols;
        float v = x[i];
        for (int j = 0; j < J; j++) {
            const int t = (int)index[r * J + j];
            if (t >= 0 && t < table_rows) v = v + table[(size_t)t * cols + c];
        }
        out[i] = v;
    }
}

// out = min(max(x, lo), hi)
extern "C" __global__ void clamp(const float* x, float* out, int n, float lo, float hi) {
    MEDIA_GRID_STRIDE(i, n) {
        float v = x[i];
        v = v < lo ? lo : v;
        out[i] = v > hi ? hi : v;
    }
}

// out[r] = (x[r] - bias) * w
extern "C" __global__ void standardize(const float* x, const float* bias, const float* w, float* out, int rows,
                                       int cols) {
    const long long n = (long long)rows * cols;
    MEDIA_GRID_STRIDE(i, n) {
        const int c = (int)(i % cols);
        out[i] = (x[i] - bias[c]) * w[c];
    }
}

// out[r, c] = scale * (float)(mean over g < group of x[r * group + g, c]) (double sums).
extern "C" __global__ void pool_rows(const float* x, float* out, int rows, int cols, int group, float scale) {
    const long long n = (long long)rows * cols;
    MEDIA_GRID_STRIDE(i, n) {
        const long long r = i / cols, c = i % cols;
        const float* p = x + (size_t)r * group * cols + c;
        double s = 0.0;
        for (int g = 0; g < group; g++) s += (double)p[(size_t)g * cols];
        out[i] = (float)(s / (double)group) * scale;
    }
}

// ---- axial 2-D RoPE -----------------------------------------------------------------------------
// x [rows, cols] in heads of head_dim (% 4 == 0) columns; pos [rows, 2] (x, y) f32 integers. Half
// `axis` (columns axis*head_dim/2 ..) of each head turns NeoX-style: pair (i, i + head_dim/4) by
// pos[r, axis] * base^(-2i/(head_dim/2)), angle and cos/sin in double, rounded to float (as Rope).
// One thread per (row, head, axis, pair); out may be x.
extern "C" __global__ void rope2d(const float* x, const float* pos, float* out, int rows, int cols, int head_dim,
                                  double base) {
    const int half = head_dim / 2, q = head_dim / 4, heads = cols / head_dim;
    const long long total = (long long)rows * heads * 2 * q;
    MEDIA_GRID_STRIDE(idx, total) {
        const int i = (int)(idx % q);
        const int axis = (int)((idx / q) % 2);
        const int h = (int)((idx / (2 * q)) % heads);
        const long long r = idx / ((long long)2 * q * heads);
        const double p = (double)(long long)pos[r * 2 + axis];
        const double ang = p * pow(base, (-2.0 * (double)i) / (double)half);
        const float cs = (float)cos(ang), sn = (float)sin(ang);
        const size_t o = (size_t)r * cols + (size_t)h * head_dim + (size_t)axis * half + i;
        const float a = x[o], b = x[o + q];
        out[o] = a * cs - b * sn;
        out[o + q] = a * sn + b * cs;
    }
}

// ---- full (non-causal) attention: flash-style, keys in shared-memory tiles -------------------
// q [n, H*D], k and v [n, Hkv*D], out [n, H*D]; every row attends to every row (GQA: head h reads
// kv head h / (H/Hkv)); score = (q.k) * scale in float, an online softmax over key tiles of
// FA_TILE keys (float32 max / sum / accumulators), out = acc / sum.
// grid (ceil(n / FA_ROWS), H), FA_THREADS threads: FA_WARPS warps of FA_RPW query rows each. Lane
// j scores key j of the tile against the warp's rows (q rows in shared memory, read as broadcasts;
// K rows padded to FA_DMAX + 1 floats so the lanes hit distinct banks); for the weighted sum lane l
// owns dims l, l + 32, ... and takes each key's weight with a shuffle. D <= FA_DMAX.
#define FA_TILE 32
#define FA_DMAX 128
#define FA_WARPS 4
#define FA_RPW 4
#define FA_ROWS (FA_WARPS * FA_RPW)
#define FA_THREADS (FA_WARPS * 32)
#define FA_KSTRIDE (FA_DMAX + 1)

extern "C" __global__ void full_attention(const float* q, const float* k, const float* v, float* out, int n,
                                          int H, int Hkv, int D, float scale) {
    __shared__ float ks[FA_TILE * FA_KSTRIDE];
    __shared__ float vs[FA_TILE * FA_DMAX];
    __shared__ float qs[FA_ROWS * FA_DMAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, kh = h / (H / Hkv);
    const int row0 = blockIdx.x * FA_ROWS;
    const size_t qw = (size_t)H * D, kw = (size_t)Hkv * D;
    for (int e = threadIdx.x; e < FA_ROWS * D; e += FA_THREADS) {
        const int rr = e / D, d = e % D, r = row0 + rr;
        qs[rr * FA_DMAX + d] = r < n ? q[(size_t)r * qw + (size_t)h * D + d] : 0.0f;
    }
    const float NEG_INF = __int_as_float(0xff800000);
    float m[FA_RPW], l[FA_RPW], acc[FA_RPW][FA_DMAX / 32];
#pragma unroll
    for (int a = 0; a < FA_RPW; a++) {
        m[a] = NEG_INF;
        l[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < FA_DMAX / 32; c++) acc[a][c] = 0.0f;
    }
    for (int t0 = 0; t0 < n; t0 += FA_TILE) {
        const int nt = min(FA_TILE, n - t0);
        __syncthreads();                          // the previous tile is consumed (and qs written)
        for (int e = threadIdx.x; e < nt * D; e += FA_THREADS) {
            const int j = e / D, d = e % D;
            const size_t src = (size_t)(t0 + j) * kw + (size_t)kh * D + d;
            ks[j * FA_KSTRIDE + d] = k[src];
            vs[j * FA_DMAX + d] = v[src];
        }
        __syncthreads();                          // the tile is loaded
        // lane j: key j's scores against the warp's FA_RPW rows (each K value read once for all)
        float s[FA_RPW];
#pragma unroll
        for (int a = 0; a < FA_RPW; a++) s[a] = 0.0f;
        if (lane < nt) {
            const float* kr = ks + lane * FA_KSTRIDE;
            const float* qr = qs + warp * FA_RPW * FA_DMAX;
            for (int d = 0; d < D; d++) {
                const float kd = kr[d];
#pragma unroll
                for (int a = 0; a < FA_RPW; a++) s[a] += qr[a * FA_DMAX + d] * kd;
            }
        }
        float p[FA_RPW];
#pragma unroll
        for (int a = 0; a < FA_RPW; a++) {
            const float sa = lane < nt ? s[a] * scale : NEG_INF;
            const float mn = fmaxf(m[a], warp_max(sa));
            const float corr = expf(m[a] - mn);   // 0 on the first tile (m = -inf)
            p[a] = lane < nt ? expf(sa - mn) : 0.0f;
            l[a] = l[a] * corr + warp_sum(p[a]);
            m[a] = mn;
#pragma unroll
            for (int c = 0; c < FA_DMAX / 32; c++) acc[a][c] *= corr;
        }
        // lane l: dims l, l + 32, ... of every row; key j's weights come from lane j
        for (int j = 0; j < nt; j++) {
            float vd[FA_DMAX / 32];
#pragma unroll
            for (int c = 0; c < FA_DMAX / 32; c++) {
                const int d = lane + 32 * c;
                vd[c] = d < D ? vs[j * FA_DMAX + d] : 0.0f;
            }
#pragma unroll
            for (int a = 0; a < FA_RPW; a++) {
                const float pj = __shfl_sync(0xffffffffu, p[a], j);
#pragma unroll
                for (int c = 0; c < FA_DMAX / 32; c++) acc[a][c] += pj * vd[c];
            }
        }
    }
#pragma unroll
    for (int a = 0; a < FA_RPW; a++) {
        const int r = row0 + warp * FA_RPW + a;
        if (r >= n) continue;
        const float inv = 1.0f / l[a];
#pragma unroll
        for (int c = 0; c < FA_DMAX / 32; c++) {
            const int d = lane + 32 * c;
            if (d < D) out[(size_t)r * qw + (size_t)h * D + d] = acc[a][c] * inv;
        }
    }
}
