/* test_cuda_warp_sum.cu - warp_sum_n (cuda_common.cuh: warp_sum_multi's scatter, then each sum
 * read from a lane that holds it) against warp_sum per value, bit for bit, on every lane: the
 * attention kernel's scores rely on it (docs/bench-cuda.md, "attention's score sums by
 * scatter"). N = 2..32 take the scatter, N = 3 and 6 the plain tree. On the GPU machine;
 * exit 77 (skip) without a GPU, a failure with DSPARK_REQUIRE_CUDA=1.
 * ctest: labels=cuda */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/cuda_common.cuh"

enum { WARPS = 256 };

/* each warp: N values a lane, their warp_sum one by one and warp_sum_n at once; *bad counts
 * (lane, value) pairs whose bits differ; flip != 0 perturbs one lane's sum (the case that must
 * be caught) */
template <int N>
__global__ void k_check(const float *in, int *bad, int flip) {
    const int lane = threadIdx.x & 31, w = blockIdx.x;
    float v[N], ref[N];
#pragma unroll
    for (int j = 0; j < N; j++) {
        v[j] = in[((size_t)w * N + j) * 32 + lane];
        ref[j] = warp_sum(v[j]);
    }
    warp_sum_n<N>(v);
    if (flip && w == 0 && lane == 7) v[N - 1] = __uint_as_float(__float_as_uint(v[N - 1]) ^ 1u);
#pragma unroll
    for (int j = 0; j < N; j++)
        if (__float_as_uint(v[j]) != __float_as_uint(ref[j])) atomicAdd(bad, 1);
}

static int g_fail = 0, g_pass = 0;

template <int N>
static void check(const float *d_in, int *d_bad, int flip) {
    int bad = -1;
    if (cudaMemset(d_bad, 0, sizeof(int)) != cudaSuccess) { printf("FAIL cudaMemset\n"); g_fail++; return; }
    k_check<N><<<WARPS, 32>>>(d_in, d_bad, flip);
    const cudaError_t e = cudaMemcpy(&bad, d_bad, sizeof(int), cudaMemcpyDeviceToHost);
    const bool ok = e == cudaSuccess && (flip ? bad == 1 : bad == 0);
    printf("%s  N %2d%s: %d of %d (lane, value) pairs differ%s\n", ok ? "ok  " : "FAIL", N, flip ? " (one sum perturbed, must be caught)" : "",
           bad, WARPS * 32 * N, e == cudaSuccess ? "" : cudaGetErrorString(e));
    ok ? g_pass++ : g_fail++;
}

int main(void) {
    const char *req = getenv("DSPARK_REQUIRE_CUDA");
    const bool require = req && !strcmp(req, "1");
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("%s: no CUDA device\n", require ? "FAIL (DSPARK_REQUIRE_CUDA=1)" : "SKIP");
        return require ? 1 : 77;
    }
    const size_t n = (size_t)WARPS * 32 * 32;
    float *h = (float *)malloc(n * sizeof(float)), *d_in = NULL;
    int *d_bad = NULL;
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) { /* xorshift; values of mixed sign over 2^-10 .. 2^10, so roundings differ by order */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        h[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0) * ldexpf(1.0f, (int)(s % 21) - 10);
    }
    if (!h || cudaMalloc(&d_in, n * sizeof(float)) != cudaSuccess || cudaMalloc(&d_bad, sizeof(int)) != cudaSuccess ||
        cudaMemcpy(d_in, h, n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) {
        printf("FAIL: could not set up the device buffers\n");
        return 1;
    }
    check<2>(d_in, d_bad, 0);
    check<4>(d_in, d_bad, 0);
    check<8>(d_in, d_bad, 0);
    check<16>(d_in, d_bad, 0);
    check<32>(d_in, d_bad, 0);
    check<3>(d_in, d_bad, 0);
    check<6>(d_in, d_bad, 0);
    check<16>(d_in, d_bad, 1);
    cudaFree(d_in);
    cudaFree(d_bad);
    free(h);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
