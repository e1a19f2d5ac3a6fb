/* bench_peak.c - the machine's ceilings that bench_cpu's numbers are judged against:
 *   stream: read bandwidth (GB/s) of a 1 GiB buffer, 1..T threads, each thread a contiguous
 *           part, AVX-512 loads (4 independent accumulators), as decode streams its weights;
 *   fma:    vfmadd231ps (16 lanes x 2 flops) and vdpbf16ps (32 pairs x 2 flops) throughput from
 *           registers, GFLOP/s per thread count (12 independent chains hide the latency).
 *   bench_peak [--threads 1,2] [--reps 5] [--mb 1024]
 * Prints the median of reps. Needs AVX-512 (+AVX512_BF16 for the dpbf16 line). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

TGT static double stream_once(const uint8_t *buf, size_t bytes) {
    double t0 = ds_now();
    int tot = 0;
    #pragma omp parallel reduction(| : tot)
    {
        int T = omp_get_num_threads(), t = omp_get_thread_num();
        size_t per = bytes / T / 256 * 256, a = per * t, b = a + per;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        for (size_t i = a; i < b; i += 256) {
            s0 = _mm512_or_si512(s0, _mm512_load_si512(buf + i));
            s1 = _mm512_or_si512(s1, _mm512_load_si512(buf + i + 64));
            s2 = _mm512_or_si512(s2, _mm512_load_si512(buf + i + 128));
            s3 = _mm512_or_si512(s3, _mm512_load_si512(buf + i + 192));
        }
        tot |= _mm512_reduce_or_epi32(_mm512_or_si512(_mm512_or_si512(s0, s1), _mm512_or_si512(s2, s3)));
    }
    double t1 = ds_now();
    volatile int sink = tot;
    (void)sink;
    return (double)(bytes / 256 * 256) / (t1 - t0) / 1e9;
}

#define NIT 20000000L
TGT static double fma_once(int bf16) {
    double t0 = ds_now();
    float sink = 0;
    #pragma omp parallel reduction(+ : sink)
    {
        __m512 a[12];
        for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps(0.001f * (float)(j + omp_get_thread_num()));
        __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
        __m512i xb = _mm512_set1_epi16(0x3f80), yb = _mm512_set1_epi16(0x3f80);
        __asm__ volatile("" : "+v"(x), "+v"(y), "+v"(xb), "+v"(yb));
        if (bf16)
            for (long i = 0; i < NIT; i++) {
                #pragma GCC unroll 12
                for (int j = 0; j < 12; j++) a[j] = _mm512_dpbf16_ps(a[j], (__m512bh)xb, (__m512bh)yb);
            }
        else
            for (long i = 0; i < NIT; i++) {
                #pragma GCC unroll 12
                for (int j = 0; j < 12; j++) a[j] = _mm512_fmadd_ps(a[j], x, y);
            }
        __m512 s = a[0];
        for (int j = 1; j < 12; j++) s = _mm512_add_ps(s, a[j]);
        sink += _mm512_reduce_add_ps(s);
    }
    double t1 = ds_now();
    volatile float v = sink;
    (void)v;
    int T = omp_get_max_threads();
    return (double)NIT * 12 * T * (bf16 ? 64 : 32) / (t1 - t0) / 1e9;
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    const char *threads_s = "1,2";
    int reps = 5;
    size_t mb = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads_s = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = (size_t)atoi(argv[++i]);
        else { fprintf(stderr, "usage: bench_peak [--threads 1,2] [--reps N] [--mb MB]\n"); return strcmp(argv[i], "--help") ? 2 : 0; }
    }
    if (reps < 1 || reps > 50 || mb < 1) return 2;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) { fprintf(stderr, "bench_peak: needs AVX-512\n"); return 1; }
    int have_bf16 = __builtin_cpu_supports("avx512bf16");
    size_t bytes = mb << 20;
    uint8_t *buf = ds_malloc_aligned(bytes);
    if (!buf) return 1;
    memset(buf, 1, bytes);
    printf("%-8s %12s %16s %16s\n", "threads", "read GB/s", "fma32 GFLOP/s", "dpbf16 GFLOP/s");
    for (const char *p = threads_s; *p;) {
        int th = atoi(p);
        omp_set_num_threads(th);
        double s[50], f[50], b[50];
        stream_once(buf, bytes);
        for (int r = 0; r < reps; r++) {
            s[r] = stream_once(buf, bytes);
            f[r] = fma_once(0);
            b[r] = have_bf16 ? fma_once(1) : 0;
        }
        qsort(s, reps, sizeof(double), cmp_d); qsort(f, reps, sizeof(double), cmp_d); qsort(b, reps, sizeof(double), cmp_d);
        printf("%-8d %12.1f %16.1f %16.1f\n", th, s[reps / 2], f[reps / 2], b[reps / 2]);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
    }
    ds_free_aligned(buf);
    return 0;
}
