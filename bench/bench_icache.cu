/* bench_icache.cu - what a kernel's first pass over its own code costs on this GPU (issue 7:
 * the products lose ~4 us a launch against a bare read of their weights, and their time follows
 * their code size: k_matmul_col 15-28 KB of SASS, the bare read 4-5 KB; is it instruction fetch?).
 * Timing only: each kernel runs a straight-line block of independent integer instructions
 * (4 chains of lop3 / funnel shifts, no memory) `passes` times, and lane 0 of every warp reads
 * clock64 around each pass. Pass 0 fetches the code (cold), later passes run it from the
 * instruction caches; (pass 0 - pass 1) per KB of code is the fetch cost.
 *
 *   bench_icache [--reps 5]
 *
 * Rows: (1) one warp per SM, code of 4-256 KB; (2) eight warps per SM, the same code (does one
 * warp's miss serve the others?); (3) kernel A, then kernel B of other code, then A again: is
 * A's code still cached after B (by B's size: the capacity that survives a kernel switch, as a
 * decode step switches kernels ~7 times a layer)? Table 1 also launches the same kernel again
 * right after: does a launch find its code cached, or start cold whatever ran before? */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (x);                                                                         \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "bench_icache: %s: %s\n", #x, cudaGetErrorString(e_));                   \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

/* one unit: 4 instructions (16 bytes each in SASS), 64 bytes of code; LUT differs by SALT so
 * two instances are different code */
template <int SALT>
__device__ __forceinline__ void unit(uint32_t &a, uint32_t &b, uint32_t &c, uint32_t &d) {
    asm volatile("lop3.b32 %0, %0, %1, %2, %3;" : "+r"(a) : "r"(b), "r"(c), "n"((0x96 + SALT) & 0xff));
    asm volatile("shf.l.wrap.b32 %0, %0, %1, 5;" : "+r"(b) : "r"(d));
    asm volatile("lop3.b32 %0, %0, %1, %2, %3;" : "+r"(c) : "r"(d), "r"(a), "n"((0xe8 + SALT) & 0xff));
    asm volatile("shf.l.wrap.b32 %0, %0, %1, 11;" : "+r"(d) : "r"(b));
}
template <int N, int SALT>
__device__ __forceinline__ void units(uint32_t &a, uint32_t &b, uint32_t &c, uint32_t &d) {
    if constexpr (N == 1) unit<SALT>(a, b, c, d);
    else {
        units<N / 2, SALT>(a, b, c, d);
        units<N - N / 2, SALT>(a, b, c, d);
    }
}

enum { MAX_PASSES = 4 };
/* cycles[(block * warps + warp) * MAX_PASSES + pass] */
template <int N, int SALT>
__global__ void k_code(uint32_t *sink, long long *cycles, int passes) {
    uint32_t a = threadIdx.x, b = blockIdx.x, c = a ^ 0x1234u, d = b + 77u;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll 1
    for (int p = 0; p < passes; p++) {
        const long long t0 = clock64();
        units<N, SALT>(a, b, c, d);
        const long long t1 = clock64();
        if ((threadIdx.x & 31) == 0) cycles[((size_t)blockIdx.x * warps + warp) * MAX_PASSES + p] = t1 - t0;
    }
    if ((a ^ b ^ c ^ d) == 0x9e3779b9u) sink[threadIdx.x] = a; /* (keeps the chains) */
}

typedef void (*KFn)(uint32_t *, long long *, int);
typedef struct { const char *name; KFn fn; int kb; } Code;
/* kernels of 4, 16, 64 and 256 KB of straight-line code (N units of 64 bytes), and a second
 * instance (other LUTs) of each for the kernel switches */
static const Code codes[] = {{"4 KB", k_code<64, 0>, 4},      {"16 KB", k_code<256, 0>, 16},   {"32 KB", k_code<512, 0>, 32},
                             {"64 KB", k_code<1024, 0>, 64},  {"128 KB", k_code<2048, 0>, 128}, {"256 KB", k_code<4096, 0>, 256}};
static const Code others[] = {{"4 KB", k_code<64, 1>, 4},     {"16 KB", k_code<256, 1>, 16},   {"32 KB", k_code<512, 1>, 32},
                              {"64 KB", k_code<1024, 1>, 64}, {"128 KB", k_code<2048, 1>, 128}, {"256 KB", k_code<4096, 1>, 256}};
enum { N_CODES = sizeof codes / sizeof codes[0] };

static int g_sms, g_reps = 5;
static uint32_t *g_sink;
static long long *g_cyc, *g_host;

static int cmp_ll(const void *x, const void *y) { long long a = *(const long long *)x, b = *(const long long *)y; return (a > b) - (a < b); }
/* median over the launch's warps of pass p's cycles (and the largest, *mx) */
static long long median_pass(int warps_total, int p, long long *mx) {
    long long *v = (long long *)malloc(sizeof(long long) * warps_total);
    for (int i = 0; i < warps_total; i++) v[i] = g_host[(size_t)i * MAX_PASSES + p];
    qsort(v, warps_total, sizeof *v, cmp_ll);
    const long long m = v[warps_total / 2];
    if (mx) *mx = v[warps_total - 1];
    free(v);
    return m;
}
/* launch fn on one block per SM of `threads`, `passes` passes; the clocks into g_host */
static void run(KFn fn, int threads, int passes) {
    fn<<<g_sms, threads>>>(g_sink, g_cyc, passes);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(g_host, g_cyc, sizeof(long long) * (size_t)g_sms * (threads / 32) * MAX_PASSES, cudaMemcpyDeviceToHost));
}

static void keep_min(long long *best, long long v) {
    if (*best < 0 || v < *best) *best = v;
}
/* fn's passes 0 and 1 (medians over the warps; *slowest: pass 0's largest) after 256 KB of
 * other code ran, so nothing of fn's is cached from before */
static void cold_then_warm(KFn fn, int threads, long long *p0, long long *p1, long long *slowest) {
    run(others[N_CODES - 1].fn, threads, 1);
    run(fn, threads, 2);
    const int warps = g_sms * (threads / 32);
    *p0 = median_pass(warps, 0, slowest);
    *p1 = median_pass(warps, 1, NULL);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_icache [--reps N]\n(see the comment at the top of bench/bench_icache.cu)\n");
            return 0;
        } else {
            fprintf(stderr, "bench_icache: unknown flag or missing value: %s (--help for usage)\n", argv[i]);
            return 2;
        }
    }
    if (g_reps < 1 || g_reps > 100) {
        fprintf(stderr, "bench_icache: --reps must be 1..100\n");
        return 2;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "bench_icache: no CUDA device\n");
        return 1;
    }
    g_sms = prop.multiProcessorCount;
    int clock_khz = 0;
    CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
    const double ns_per_cycle = clock_khz > 0 ? 1e6 / clock_khz : 0.0;
    CK(cudaMalloc(&g_sink, 1024 * sizeof(uint32_t)));
    CK(cudaMalloc(&g_cyc, sizeof(long long) * (size_t)g_sms * 8 * MAX_PASSES));
    g_host = (long long *)malloc(sizeof(long long) * (size_t)g_sms * 8 * MAX_PASSES);
    printf("%s, %d SMs, clock %.0f MHz (cycles below are SM clocks; medians over the SMs' warps, best of %d launches)\n", prop.name,
           g_sms, clock_khz / 1e3, g_reps);

    printf("\n(1) one warp per SM: cycles of pass 0 (cold) and pass 1 (warm), the difference per KB of code, and pass 0\n"
           "of the same kernel launched again right after (as bench_cuda --mm launches a product 20 times)\n");
    printf("%-8s %12s %12s %14s %12s %16s\n", "code", "pass 0", "pass 1", "fetch cyc/KB", "fetch us", "again: pass 0");
    for (int k = 0; k < N_CODES; k++) {
        long long best0 = -1, best1 = -1, again = -1;
        for (int r = 0; r < g_reps; r++) {
            long long p0, p1;
            cold_then_warm(codes[k].fn, 32, &p0, &p1, NULL);
            keep_min(&best0, p0);
            keep_min(&best1, p1);
            run(codes[k].fn, 32, 1); /* does a launch start with its code still cached? */
            keep_min(&again, median_pass(g_sms, 0, NULL));
        }
        printf("%-8s %12lld %12lld %14.1f %12.2f %16lld\n", codes[k].name, best0, best1, (double)(best0 - best1) / codes[k].kb,
               (best0 - best1) * ns_per_cycle / 1e3, again);
    }

    printf("\n(2) eight warps per SM, the same code: pass 0 of the median and of the slowest warp, pass 1\n");
    printf("%-8s %12s %12s %12s\n", "code", "pass 0", "slowest", "pass 1");
    for (int k = 0; k < N_CODES; k++) {
        long long best0 = -1, bestmx = -1, best1 = -1;
        for (int r = 0; r < g_reps; r++) {
            long long p0, p1, mx;
            cold_then_warm(codes[k].fn, 256, &p0, &p1, &mx);
            keep_min(&best0, p0);
            keep_min(&bestmx, mx);
            keep_min(&best1, p1);
        }
        printf("%-8s %12lld %12lld %12lld\n", codes[k].name, best0, bestmx, best1);
    }

    printf("\n(3) A (%s: its cold and warm pass in table 1) warm, then B, then A again: A's pass 0 after B, by B's size\n", codes[1].name);
    printf("%-10s %16s\n", "B", "A's pass 0 after");
    for (int k = 0; k < N_CODES; k++) {
        long long best = -1;
        for (int r = 0; r < g_reps; r++) {
            run(codes[1].fn, 32, 1); /* A: its code fetched */
            run(others[k].fn, 32, 1);
            run(codes[1].fn, 32, 1);
            keep_min(&best, median_pass(g_sms, 0, NULL));
        }
        printf("%-10s %16lld\n", others[k].name, best);
    }
    free(g_host);
    return 0;
}
