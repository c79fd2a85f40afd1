/* membw: this machine's memory READ bandwidth the way a decode kernel sees it: streaming,
 * vectorised loads over a buffer far larger than the last-level cache, reduced into a sum the
 * compiler cannot drop.
 *
 * Build: cc -O3 -march=native -fopenmp -o membw scripts/membw.c   (scripts/measure_bandwidth.sh)
 * Usage: membw [--size-mib N] [--threads 1,2,...] [--passes N] [--thp] [--json]
 *   --size-mib  buffer size (default: max(2048 MiB, 4 x the largest cache))
 *   --threads   comma-separated thread counts (default: 1 and all online CPUs)
 *   --passes    timed full passes per thread count (default 5; one untimed warm-up before them)
 *   --thp       madvise(MADV_HUGEPAGE) the buffer (default: the system's THP policy)
 *   --json      one JSON object instead of one line per thread count
 * GB/s = 1e9 bytes per second; each pass reads the whole buffer once, split evenly over the
 * threads; "best" is the fastest pass, "median" the median pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MAX_COUNTS 64
#define MAX_PASSES 1000
#define CHUNK_ALIGN 4096 /* per-thread slices start on a page */

static volatile uint64_t g_sink;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *isa_name(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "scalar";
#endif
}

/* Sum of the 64-bit words in [p, p + n_bytes); n_bytes a multiple of 256. Four independent
 * accumulators keep the adds off the critical path so the loads are the only limit. */
static uint64_t read_sum(const uint8_t *p, size_t n_bytes) {
#if defined(__AVX512F__)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n_bytes; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(a0);
#elif defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n_bytes; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
    const uint64_t *q = (const uint64_t *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n_bytes / 8; i += 4) {
        s0 += q[i];
        s1 += q[i + 1];
        s2 += q[i + 2];
        s3 += q[i + 3];
    }
    return s0 + s1 + s2 + s3;
#endif
}

/* Thread t of nt gets a page-aligned slice; the slices cover the buffer exactly. */
static void slice(size_t size, int nt, int t, size_t *off, size_t *len) {
    size_t pages = size / CHUNK_ALIGN;
    size_t lo = pages * (size_t)t / (size_t)nt, hi = pages * (size_t)(t + 1) / (size_t)nt;
    *off = lo * CHUNK_ALIGN;
    *len = (hi - lo) * CHUNK_ALIGN;
}

/* One full pass with nt threads; returns seconds. */
static double timed_pass(const uint8_t *buf, size_t size, int nt) {
    uint64_t total = 0;
    double t0 = 0, t1 = 0;
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
        size_t off, len;
        slice(size, omp_get_num_threads(), omp_get_thread_num(), &off, &len);
#pragma omp barrier
#pragma omp master
        t0 = now_s();
        /* no barrier needed after master: t0 is read only after the closing barrier */
        total += read_sum(buf + off, len);
#pragma omp barrier
#pragma omp master
        t1 = now_s();
    }
    g_sink += total;
    return t1 - t0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static size_t largest_cache_bytes(void) {
    size_t best = 0;
    for (int i = 0; i < 16; i++) {
        char path[128], text[64];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(text, sizeof text, f)) {
            char *end;
            unsigned long long v = strtoull(text, &end, 10);
            if (*end == 'K') v <<= 10;
            else if (*end == 'M') v <<= 20;
            else if (*end == 'G') v <<= 30;
            if (v > best) best = (size_t)v;
        }
        fclose(f);
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0 && (size_t)l3 > best) best = (size_t)l3;
#endif
    return best;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--size-mib N] [--threads 1,2,...] [--passes N] [--thp] [--json]\n",
            argv0);
}

int main(int argc, char **argv) {
    size_t size_mib = 0;
    int passes = 5, json = 0, thp = 0, n_counts = 0;
    int counts[MAX_COUNTS];
    int ncpu = omp_get_num_procs();

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--thp")) {
            thp = 1;
        } else if (!strcmp(a, "--size-mib") && i + 1 < argc) {
            size_mib = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(a, "--passes") && i + 1 < argc) {
            passes = atoi(argv[++i]);
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            char *s = argv[++i], *tok, *save = NULL;
            for (tok = strtok_r(s, ",", &save); tok && n_counts < MAX_COUNTS;
                 tok = strtok_r(NULL, ",", &save)) {
                int t = atoi(tok);
                if (t < 1) {
                    fprintf(stderr, "bad thread count '%s'\n", tok);
                    return 2;
                }
                counts[n_counts++] = t;
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(argv[0]);
            return 0;
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (passes < 1 || passes > MAX_PASSES) {
        fprintf(stderr, "--passes must be 1..%d\n", MAX_PASSES);
        return 2;
    }
    if (n_counts == 0) {
        counts[n_counts++] = 1;
        if (ncpu > 1) counts[n_counts++] = ncpu;
    }

    size_t llc = largest_cache_bytes();
    size_t size = size_mib ? size_mib << 20 : (size_t)2048 << 20;
    if (!size_mib && 4 * llc > size) size = 4 * llc;
    size = (size + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1); /* whole 2 MiB pages */
    if (size < (size_t)CHUNK_ALIGN * MAX_COUNTS) size = (size_t)CHUNK_ALIGN * MAX_COUNTS;
    if (!json && size < 4 * llc)
        fprintf(stderr, "warning: buffer (%zu MiB) is under 4x the largest cache (%zu MiB)\n",
                size >> 20, llc >> 20);

    uint8_t *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        fprintf(stderr, "mmap of %zu bytes failed: %s\n", size, strerror(errno));
        return 1;
    }
#ifdef MADV_HUGEPAGE
    if (thp) madvise(buf, size, MADV_HUGEPAGE);
#endif

    /* Touch every page once (non-zero data, so no page stays mapped to the shared zero page),
     * in parallel with the widest slicing so each thread first-touches its own memory. */
    int max_t = 1;
    for (int i = 0; i < n_counts; i++)
        if (counts[i] > max_t) max_t = counts[i];
#pragma omp parallel num_threads(max_t)
    {
        size_t off, len;
        slice(size, omp_get_num_threads(), omp_get_thread_num(), &off, &len);
        uint64_t *q = (uint64_t *)(buf + off);
        for (size_t j = 0; j < len / 8; j++) q[j] = (off / 8 + j) * 0x9E3779B97F4A7C15ull;
    }

    if (json)
        printf("{\"size_bytes\": %zu, \"llc_bytes\": %zu, \"passes\": %d, \"isa\": \"%s\", "
               "\"online_cpus\": %d, \"thp_madvise\": %s, \"results\": [",
               size, llc, passes, isa_name(), ncpu, thp ? "true" : "false");
    for (int c = 0; c < n_counts; c++) {
        int nt = counts[c];
        double gbps[MAX_PASSES], sorted[MAX_PASSES];
        timed_pass(buf, size, nt); /* warm-up: threads spun up, TLB/prefetchers settled */
        for (int p = 0; p < passes; p++) gbps[p] = (double)size / timed_pass(buf, size, nt) / 1e9;
        memcpy(sorted, gbps, sizeof(double) * (size_t)passes);
        qsort(sorted, (size_t)passes, sizeof(double), cmp_double);
        double best = sorted[passes - 1];
        double median = passes % 2 ? sorted[passes / 2]
                                   : 0.5 * (sorted[passes / 2 - 1] + sorted[passes / 2]);
        if (json) {
            printf("%s{\"threads\": %d, \"read_GBps_best\": %.2f, \"read_GBps_median\": %.2f, "
                   "\"passes_GBps\": [",
                   c ? ", " : "", nt, best, median);
            for (int p = 0; p < passes; p++) printf("%s%.2f", p ? ", " : "", gbps[p]);
            printf("]}");
        } else {
            printf("threads=%d read_GBps_best=%.1f median=%.1f\n", nt, best, median);
        }
        fflush(stdout);
    }
    if (json) printf("], \"checksum\": %llu}\n", (unsigned long long)g_sink);
    else
        fprintf(stderr, "# buffer %zu MiB (largest cache %zu MiB), %d passes, %s loads, sum %llx\n",
                size >> 20, llc >> 20, passes, isa_name(), (unsigned long long)g_sink);
    munmap(buf, size);
    return 0;
}
