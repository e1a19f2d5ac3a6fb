/* bench_weight_read.cu - how fast a batch-1 product can read its BF16 weights on this GPU, by
 * access pattern (issue 7: the layer products of bench_cuda --mm reach 0.42-0.75 of the copy
 * bandwidth, lm_head 0.95; is it the order in which they read memory?). Timing only: each
 * kernel reads every weight once and folds the words into one value per thread, so the loads
 * stay; nothing is multiplied.
 *
 *   bench_weight_read [--layers 36] [--reps 10]
 *
 * Blocks of 256 threads (8 warps), 16 * MT weight rows a block, U k-steps of 32 k in flight per
 * warp, k-step j read by warp j % 8, as k_matmul_tc (src/cuda/matmul_tc.cuh) reads them:
 *   rows   the row-major [O][K] layout: lane (g, t) reads 16 bytes of rows g and g + 8 at
 *          k = 32 j + 8 t, so a warp's load touches 8 rows x 64 bytes, 2 K bytes apart
 *   tiles  a layout tiled at load time, the same 16 bytes per lane and k-step: a 16-row tile's
 *          k-step is 1024 contiguous bytes in lane order, a tile 32 K contiguous bytes, so a
 *          warp's load is 512 contiguous bytes and a block streams its tiles end to end
 *   flat   a persistent grid reading the matrix as one contiguous array (the read ceiling)
 *   +x     tiles, and each k-step's x pieces as k_matmul_col loads them for one row (16 bytes per
 *          lane of lanes g < 3, after pdl_wait, from L2): the product's loads without its math
 * Each product is launched with programmatic dependent launch (the first k-steps' loads issued
 * before griddepcontrol.wait, as the backend's kernels do) inside a CUDA graph of L copies of
 * the shape (L distinct matrices: more bytes than L2 holds), and the whole step's products (L
 * layers of q/k/v, o, gate/up, down, then lm_head) as one graph, against the memory floor
 * (bytes / device-to-device copy bandwidth, read + written, measured here). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "cuda/cuda_common.cuh" /* the backend's ld_stream, pdl_start and tile_at: the same loads and layout */

#define CK(x)                                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (x);                                                                         \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "bench_weight_read: %s: %s\n", #x, cudaGetErrorString(e_));              \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

__device__ __forceinline__ uint32_t fold(uint32_t a, uint4 v) { return (a ^ v.x) + (v.y ^ v.z) + v.w; }

/* XL: also each k-step's 16 bytes of x pieces per lane (lanes g < 3, as k_matmul_col loads one
 * row's three pieces: ld_act16 after pdl_wait, from a buffer L2 holds), folded in too: does the
 * product's x load change how the weight stream behaves with U? */
template <int MT, int U, bool TILED, bool XL = false>
__global__ void __launch_bounds__(256) k_read(const uint16_t *w, int K, uint32_t *sink, const uint4 *xp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, KS = K / 32;
    constexpr int step = TILED ? 64 : 4; /* uint4 per k-step */
    const uint4 *p[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const size_t r = 16 * ((size_t)blockIdx.x * MT + mt) + 8 * h + g;
            p[mt][h] = (const uint4 *)(w + (TILED ? tile_at(r, 8 * t, K) : r * K + 8 * t));
        }
    uint32_t a = 0;
    for (int j0 = warp; j0 < KS; j0 += 8 * U) {
        uint4 v[U][MT][2];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) v[u][mt][h] = j0 + 8 * u < KS ? ld_stream(p[mt][h] + (size_t)(j0 + 8 * u) * step) : make_uint4(0, 0, 0, 0);
        if (j0 == warp) pdl_start();
        if constexpr (XL) {
            uint4 xv[U];
#pragma unroll
            for (int u = 0; u < U; u++)
                xv[u] = j0 + 8 * u < KS && g < 3 ? ld_act16(xp + (size_t)(4 * (j0 + 8 * u) + t) * 3 + g) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < U; u++) a = fold(a, xv[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) a = fold(a, v[u][mt][h]);
    }
    if (warp >= KS) pdl_start();
    if (a == 0x9e3779b9u) sink[threadIdx.x] = a; /* (practically never: keeps the loads) */
}
__global__ void __launch_bounds__(256) k_read_flat(const uint4 *w, size_t n, uint32_t *sink) {
    constexpr int U = 8;
    const size_t stride = (size_t)gridDim.x * 256;
    uint32_t a = 0;
    bool waited = false;
    for (size_t i0 = (size_t)blockIdx.x * 256 + threadIdx.x; i0 < n; i0 += U * stride) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = i0 + u * stride < n ? ld_stream(w + i0 + u * stride) : make_uint4(0, 0, 0, 0);
        if (!waited) pdl_start();
        waited = true;
#pragma unroll
        for (int u = 0; u < U; u++) a = fold(a, v[u]);
    }
    if (!waited) pdl_start();
    if (a == 0x9e3779b9u) sink[threadIdx.x] = a;
}

typedef struct { const char *name; int O, K; } Shape;
static const Shape shapes[] = {{"q/k/v (6144 x 2560)", 6144, 2560}, {"o_proj (2560 x 4096)", 2560, 4096},
                               {"gate/up (19456 x 2560)", 19456, 2560}, {"down (2560 x 9728)", 2560, 9728},
                               {"lm_head (151936 x 2560)", 151936, 2560}};
enum { N_SHAPES = 5 };
/* a variant: the kernel, MT, and whether 100 KB of (unused) dynamic shared memory holds it to 2
 * blocks per SM, as k_matmul_tc's registers hold it (the read kernel alone fits 8) */
typedef struct { const char *name; const void *fn; int mt; bool two_per_sm; } Variant;
static const Variant variants[] = {
    {"rows MT1 U4", (const void *)k_read<1, 4, false>, 1, false}, {"rows MT1 U4 2/SM", (const void *)k_read<1, 4, false>, 1, true},
    {"rows MT2 U4", (const void *)k_read<2, 4, false>, 2, false}, {"rows MT1 U8", (const void *)k_read<1, 8, false>, 1, false},
    {"tiles MT1 U4", (const void *)k_read<1, 4, true>, 1, false}, {"tiles MT1 U4 2/SM", (const void *)k_read<1, 4, true>, 1, true},
    {"tiles MT2 U4", (const void *)k_read<2, 4, true>, 2, false}, {"tiles MT1 U8", (const void *)k_read<1, 8, true>, 1, false},
    {"tiles U4 +x", (const void *)k_read<1, 4, true, true>, 1, false}, {"tiles U8 +x", (const void *)k_read<1, 8, true, true>, 1, false},
    {"flat", (const void *)k_read_flat, 0, false}};
enum { N_VARIANTS = sizeof variants / sizeof variants[0], SMEM_2 = 100 << 10 };
static int g_sms;
static uint32_t *g_sink;
static uint4 *g_xp; /* the +x variants' pieces: one row of the largest K */

static void launch(cudaStream_t st, int v, const uint16_t *w, int O, int K) {
    const Variant *vr = &variants[v];
    cudaLaunchConfig_t c = {};
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    c.attrs = &at;
    c.numAttrs = 1;
    c.blockDim = dim3(256);
    c.stream = st;
    c.dynamicSmemBytes = vr->two_per_sm ? SMEM_2 : 0;
    if (!vr->mt) {
        c.gridDim = dim3(4 * g_sms);
        CK(cudaLaunchKernelEx(&c, k_read_flat, (const uint4 *)w, (size_t)O * K / 8, g_sink));
        return;
    }
    c.gridDim = dim3(O / (16 * vr->mt));
    void *args[] = {(void *)&w, (void *)&K, (void *)&g_sink, (void *)&g_xp};
    CK(cudaLaunchKernelExC(&c, vr->fn, args));
}

/* median ms of reps launches of the graph (after one warm-up) */
static int cmp_f(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return (x > y) - (x < y); }
static float time_graph(cudaStream_t st, cudaGraphExec_t ge, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(ge, st));
    float ms[64];
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    qsort(ms, reps, sizeof *ms, cmp_f);
    return ms[reps / 2];
}

int main(int argc, char **argv) {
    int L = 36, reps = 10;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) L = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_weight_read [--layers N] [--reps N]\n(see the comment at the top of bench/bench_weight_read.cu)\n");
            return 0;
        } else {
            fprintf(stderr, "bench_weight_read: unknown flag or missing value: %s (--help for usage)\n", argv[i]);
            return 2;
        }
    }
    if (L < 1 || L > 64 || reps < 1 || reps > 64) {
        fprintf(stderr, "bench_weight_read: --layers must be 1..64 and --reps 1..64\n");
        return 2;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "bench_weight_read: no CUDA device\n");
        return 1;
    }
    g_sms = prop.multiProcessorCount;
    for (int v = 0; v < N_VARIANTS; v++)
        if (variants[v].two_per_sm) CK(cudaFuncSetAttribute(variants[v].fn, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_2));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaMalloc(&g_sink, 256 * sizeof(uint32_t)));
    CK(cudaMalloc(&g_xp, sizeof(uint4) * 3 * 9728 / 8));
    CK(cudaMemsetAsync(g_xp, 0x3c, sizeof(uint4) * 3 * 9728 / 8, st));
    /* L copies of each layer shape, one of lm_head; the contents do not matter (timing only) */
    uint16_t *w[N_SHAPES][64];
    size_t total = 0;
    for (int s = 0; s < N_SHAPES; s++)
        for (int l = 0; l < (s == 4 ? 1 : L); l++) {
            const size_t b = (size_t)shapes[s].O * shapes[s].K * 2;
            CK(cudaMalloc(&w[s][l], b));
            CK(cudaMemsetAsync(w[s][l], (s * 64 + l) & 0xff, b, st));
            total += b;
        }
    /* the copy bandwidth: 1 GiB device to device */
    const size_t cb = (size_t)1 << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb));
    CK(cudaMalloc(&cbuf, cb));
    CK(cudaMemsetAsync(ca, 1, cb, st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms < best) best = ms;
    }
    CK(cudaFree(ca));
    CK(cudaFree(cbuf));
    const double bw = 2.0 * cb / (best * 1e-3);
    printf("%s, %d SMs; device-to-device copy %.0f GB/s (read + written); %d layers, %.2f GB of weights -> floor %.3f ms\n",
           prop.name, g_sms, bw / 1e9, L, total / 1e9, total / bw * 1e3);
    printf("\nus per product (median of %d graphs of %d back-to-back launches) and the share of the copy bandwidth\n%-26s", reps, L, "");
    for (int v = 0; v < N_VARIANTS; v++) printf(" %17s", variants[v].name);
    printf("\n");
    for (int s = 0; s < N_SHAPES; s++) {
        const int n = s == 4 ? 1 : L, O = shapes[s].O, K = shapes[s].K;
        const double b = (double)O * K * 2;
        printf("%-26s", shapes[s].name);
        for (int v = 0; v < N_VARIANTS; v++) {
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            for (int l = 0; l < (s == 4 ? 8 : n); l++) launch(st, v, w[s][l % n], O, K);
            CK(cudaStreamEndCapture(st, &gr));
            CK(cudaGraphInstantiate(&ge, gr, 0));
            const double us = time_graph(st, ge, reps) * 1e3 / (s == 4 ? 8 : n);
            printf("   %7.1f (%.2f)", us, b / (us * 1e-6) / bw);
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(gr));
        }
        printf("\n");
    }
    /* a whole step's products, one variant for every product */
    printf("\na step's products (%d x q/k/v, o, gate/up, down, then lm_head) as one graph, ms and x floor\n", L);
    for (int v = 0; v < N_VARIANTS; v++) {
        cudaGraph_t gr;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int l = 0; l < L; l++)
            for (int s = 0; s < 4; s++) launch(st, v, w[s][l], shapes[s].O, shapes[s].K);
        launch(st, v, w[4][0], shapes[4].O, shapes[4].K);
        CK(cudaStreamEndCapture(st, &gr));
        CK(cudaGraphInstantiate(&ge, gr, 0));
        const float ms = time_graph(st, ge, reps);
        printf("%-18s %8.3f ms %6.2f\n", variants[v].name, ms, ms * 1e-3 / (total / bw));
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(gr));
    }
    CK(cudaStreamSynchronize(st));
    return 0;
}
