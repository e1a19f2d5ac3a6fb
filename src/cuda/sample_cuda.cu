/* sample_cuda.cu - backend.h's sampling ops on the GPU (see sample_cuda.h).
 *
 * One block of 1024 threads per row; every reduction is a fixed tree (warp xor shuffles, then
 * the 32 warps in order), so results never depend on timing. Semantics are sample.c's and
 * verify.c's; where the arithmetic differs it is said here:
 *   softmax   e_i = (float)exp((double)((l_i - max) * (1/T))): the float result of the double
 *             exponential is the correctly rounded expf, which glibc's expf also returns to
 *             within its 0.502 ulp, so the values are (almost always) bitwise the CPU's; the
 *             double sum is a tree, not index order (rounding of the 1/sum scale only).
 *   top-k     the k-th largest probability by a radix select on the float bits (4 passes of
 *             8-bit histograms), then the candidates (p >= it; ties by index) sorted by the key
 *             (prob bits, ~index) descending: sample.c's order (prob desc, index asc), exactly.
 *   top-p     sample.c's own candidate threshold loop (t = pmax 1e-3, 1e-6, ...), the
 *             candidates sorted as above, the cut found by a segmented double prefix sum.
 *   draw      inverse CDF in index order: each thread sums a contiguous segment, an exclusive
 *             block scan gives each segment its start, the segment holding u is walked.
 *   verify    verify_block's acceptance loop on one thread (k <= 64 reads), then the residual
 *             max(0, p - q) (its mass a tree sum) or p or pt_k drawn as above.
 * A vocabulary above SP_CHUNK values (every real one: 151936) takes one block per chunk of
 * SP_CHUNK values, not one block per row, where the distribution is greedy's one-hot or the
 * plain softmax (no top-k / top-p), and in draw: one SM walking 150K values was most of a
 * drafted slot (H200, docs/bench-cuda.md). The values e_i are the same; the sum is each chunk's tree sum, the
 * chunks then added in order; draw finds the chunk holding u from the chunks' sums (in
 * order), then walks it as above: the same token but where u is within rounding of a
 * cumulative boundary. */
#include "sample_cuda.h"

#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NT 1024
#define NW (NT / 32)
#define SMEM_SORT 4096     /* candidates sorted in shared memory up to this many, else in ws */
#define VERIFY_MAX_K 64
#define SP_CHUNK (8 * NT)  /* values per block of the multi-block softmax and draw */
#define SP_MAX_CHUNKS NT   /* (a vocabulary of up to 8.4M values) */

static bool g_sync_ops; /* DSPARK_CUDA_SYNC=1: wait after every op, as the backend does */

static void sc_check(const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && g_sync_ops) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        fprintf(stderr, "dspark: CUDA error in %s: %s\n", what, cudaGetErrorString(e));
        abort();
    }
}

/* ---- block reductions (fixed order) ---- */

struct SumD { __device__ double operator()(double a, double b) const { return a + b; } };
struct SumI { __device__ int operator()(int a, int b) const { return a + b; } };
struct MinI { __device__ int operator()(int a, int b) const { return a < b ? a : b; } };
struct MaxI { __device__ int operator()(int a, int b) const { return a > b ? a : b; } };
struct MaxF { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };
struct MaxU { __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a > b ? a : b; } };

/* every thread of the block calls it; every thread gets the result */
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
    __shared__ T sh[NW];
    __shared__ T res;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* the previous call's readers are done with sh / res */
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T r = sh[0];
        for (int i = 1; i < NW; i++) r = op(r, sh[i]);
        res = r;
    }
    __syncthreads();
    return res;
}

/* exclusive prefix sum of one double per thread, in thread order */
__device__ double block_excl_scan(double v) {
    __shared__ double sh[NW];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    double x = v;
    for (int o = 1; o < 32; o <<= 1) {
        double y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    double ex = __shfl_up_sync(0xffffffffu, x, 1);
    if (lane == 0) ex = 0;
    __syncthreads();
    if (lane == 31) sh[w] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int i = 0; i < NW; i++) { double t = sh[i]; sh[i] = s; s += t; }
    }
    __syncthreads();
    return sh[w] + ex;
}

/* ---- inverse CDF over val(0..n) in index order (sample_from) ---- */

struct ProbVal { const float *p; __device__ float operator()(int i) const { return p[i]; } };
struct ResidVal {
    const float *p, *q;
    __device__ float operator()(int i) const { float d = p[i] - q[i]; return d > 0 ? d : 0.0f; }
};

/* the first i with val(i) > 0 and u < sum_{j <= i} val(j); else the last i with val(i) > 0; else 0 */
template <typename F>
__device__ int block_draw(F val, int n, double u) {
    const int seg = (n + NT - 1) / NT, b = min(n, (int)threadIdx.x * seg), e = min(n, b + seg);
    double s = 0;
    int last = -1;
    for (int i = b; i < e; i++) {
        float v = val(i);
        if (v > 0) { s += v; last = i; }
    }
    double cum = block_excl_scan(s);
    int found = INT_MAX;
    for (int i = b; i < e; i++) {
        float v = val(i);
        if (!(v > 0)) continue;
        cum += v;
        if (u < cum) { found = i; break; }
    }
    found = block_reduce(found, MinI());
    last = block_reduce(last, MaxI());
    return found != INT_MAX ? found : last >= 0 ? last : 0;
}

/* argmax order: value (order-preserving bits), then the lower index */
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
    unsigned b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u); /* order-preserving */
    return ((unsigned long long)b << 32) | (unsigned)~(unsigned)i;
}
/* the argmax with the lowest index among equal maxima (argmax_f32); NaNs never win */
__device__ int block_argmax(const float *x, int n) {
    unsigned long long best = 0;
    for (int i = threadIdx.x; i < n; i += NT) {
        float v = x[i];
        if (v != v) continue;
        const unsigned long long k = argmax_key(v, i);
        best = k > best ? k : best;
    }
    best = block_reduce(best, MaxU());
    return best ? (int)~(unsigned)(best & 0xffffffffu) : 0;
}

/* ---- sample_probs ---- */

/* candidate key: descending order = probability descending, then index ascending */
__device__ __forceinline__ unsigned long long cand_key(float p, int i) {
    return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned)~(unsigned)i;
}
__device__ __forceinline__ float key_prob(unsigned long long k) { return __uint_as_float((unsigned)(k >> 32)); }
__device__ __forceinline__ int key_idx(unsigned long long k) { return (int)~(unsigned)(k & 0xffffffffu); }

/* bitonic sort of a[0..P) (P a power of two) into descending order */
__device__ void bitonic_desc(unsigned long long *a, int P) {
    for (int k = 2; k <= P; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < P; i += NT) {
                int ixj = i ^ j;
                if (ixj > i) {
                    unsigned long long x = a[i], y = a[ixj];
                    bool desc = (i & k) == 0;
                    if (desc ? x < y : x > y) { a[i] = y; a[ixj] = x; }
                }
            }
            __syncthreads();
        }
}

__global__ void __launch_bounds__(NT) k_sample_probs(float *probs, const float *logits, int V, float T, int top_k, float top_p,
                                                    unsigned long long *ws, size_t ws_stride) {
    __shared__ unsigned long long sbuf[SMEM_SORT];
    __shared__ int s_cnt;
    const int tid = threadIdx.x;
    const float *l = logits + (size_t)blockIdx.x * V;
    float *p = probs + (size_t)blockIdx.x * V;
    unsigned long long *wsr = ws + (size_t)blockIdx.x * ws_stride;
    if (T < 1e-5f) { /* greedy: the one-hot at the argmax */
        const int bi = block_argmax(l, V);
        for (int i = tid; i < V; i += NT) p[i] = i == bi ? 1.0f : 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int i = tid; i < V; i += NT) mx = fmaxf(mx, l[i]);
    mx = block_reduce(mx, MaxF());
    const float inv_t = 1.0f / T;
    double sum = 0;
    for (int i = tid; i < V; i += NT) {
        float e = (float)exp((double)((l[i] - mx) * inv_t));
        p[i] = e;
        sum += e;
    }
    sum = block_reduce(sum, SumD());
    const float inv = (float)(1.0 / sum);
    for (int i = tid; i < V; i += NT) p[i] *= inv;
    const bool use_k = top_k > 0 && top_k < V, use_p = top_p < 1.0f;
    if (!use_k && !use_p) return;
    __syncthreads();
    /* candidates: every p >= t (as float bits: p >= 0), a prefix of the sorted order */
    unsigned thr;
    if (use_k) { /* the bits of the k-th largest value: radix select, 8 bits a pass from the top */
        __shared__ int hist[256];
        __shared__ unsigned s_digit;
        __shared__ int s_left;
        unsigned prefix = 0, mask = 0;
        int left = top_k; /* rank still to find among the values matching prefix */
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += NT) hist[i] = 0;
            __syncthreads();
            for (int i = tid; i < V; i += NT) {
                unsigned b = __float_as_uint(p[i]);
                if ((b & mask) == prefix) atomicAdd(&hist[(b >> shift) & 255u], 1);
            }
            __syncthreads();
            if (tid == 0) { /* the digit where the count from the top reaches `left` */
                int cum = 0, d = 255;
                for (; d > 0 && cum + hist[d] < left; d--) cum += hist[d];
                s_digit = (unsigned)d;
                s_left = left - cum;
            }
            __syncthreads();
            prefix |= s_digit << shift;
            mask |= 255u << shift;
            left = s_left;
        }
        thr = prefix;
    } else { /* sample.c's loop: lower t until the candidates' mass reaches top_p */
        float pmax = 0;
        for (int i = tid; i < V; i += NT) pmax = fmaxf(pmax, p[i]);
        pmax = block_reduce(pmax, MaxF());
        float t = pmax * 1e-3f;
        for (;;) {
            double mass = 0;
            int c = 0;
            for (int i = tid; i < V; i += NT) {
                float x = p[i];
                if (x >= t) { mass += x; c++; }
            }
            mass = block_reduce(mass, SumD());
            c = block_reduce(c, SumI());
            if (mass >= top_p || t == 0.0f || c == V) break;
            if (t < 1e-30f) t = 0.0f;
            t *= 1e-3f;
        }
        thr = __float_as_uint(t);
    }
    int c = 0;
    for (int i = tid; i < V; i += NT) c += __float_as_uint(p[i]) >= thr;
    c = block_reduce(c, SumI());
    unsigned long long *a = c <= SMEM_SORT ? sbuf : wsr;
    if (tid == 0) s_cnt = 0;
    __syncthreads();
    for (int i = tid; i < V; i += NT) {
        float x = p[i];
        if (__float_as_uint(x) >= thr) a[atomicAdd(&s_cnt, 1)] = cand_key(x, i);
    }
    int P = 1;
    while (P < c) P <<= 1;
    for (int i = c + tid; i < P; i += NT) a[i] = 0; /* below every candidate */
    __syncthreads();
    bitonic_desc(a, P);
    const int n = use_k ? top_k : c;
    /* the mass top-p fractions refer to: the top-k set, or everything */
    double kept = 0;
    if (use_k) for (int i = tid; i < n; i += NT) kept += key_prob(a[i]);
    else for (int i = tid; i < V; i += NT) kept += p[i];
    kept = block_reduce(kept, SumD());
    int keep = n;
    if (use_p) { /* the first i > 0 whose preceding mass / kept >= top_p */
        const int seg = (n + NT - 1) / NT, b = min(n, tid * seg), e = min(n, b + seg);
        double s = 0;
        for (int i = b; i < e; i++) s += key_prob(a[i]);
        double cum = block_excl_scan(s);
        int found = INT_MAX;
        for (int i = b; i < e; i++) {
            if (i > 0 && cum / kept >= top_p) { found = i; break; }
            cum += key_prob(a[i]);
        }
        found = block_reduce(found, MinI());
        if (found != INT_MAX) keep = found;
    }
    double mass = 0;
    for (int i = tid; i < keep; i += NT) mass += key_prob(a[i]);
    mass = block_reduce(mass, SumD());
    const float scale = (float)(1.0 / mass);
    for (int i = tid; i < V; i += NT) p[i] = 0.0f;
    __syncthreads();
    for (int i = tid; i < keep; i += NT) p[key_idx(a[i])] = key_prob(a[i]) * scale;
}

/* ---- the multi-block softmax: chunk c = blockIdx.x of row blockIdx.y, nb chunks a row; the
 * row's partials in ws (its stride in 8-byte words): nb double sums, then nb float maxima ---- */
__device__ __forceinline__ void sp_range(int V, int &b, int &e) {
    b = blockIdx.x * SP_CHUNK;
    e = min(V, b + SP_CHUNK);
}
__global__ void __launch_bounds__(NT) k_sp_max(const float *logits, int V, unsigned long long *ws, size_t ws_stride) {
    int b, e;
    sp_range(V, b, e);
    const float *l = logits + (size_t)blockIdx.y * V;
    float mx = -INFINITY;
    for (int i = b + threadIdx.x; i < e; i += NT) mx = fmaxf(mx, l[i]);
    mx = block_reduce(mx, MaxF());
    if (threadIdx.x == 0) ((float *)(ws + (size_t)blockIdx.y * ws_stride + gridDim.x))[blockIdx.x] = mx;
}
__global__ void __launch_bounds__(NT) k_sp_exp(float *probs, const float *logits, int V, float T, unsigned long long *ws, size_t ws_stride) {
    int b, e;
    sp_range(V, b, e);
    unsigned long long *w = ws + (size_t)blockIdx.y * ws_stride;
    const float *pm = (const float *)(w + gridDim.x);
    float mx = -INFINITY;
    for (int c = 0; c < (int)gridDim.x; c++) mx = fmaxf(mx, pm[c]);
    const float *l = logits + (size_t)blockIdx.y * V;
    float *p = probs + (size_t)blockIdx.y * V;
    const float inv_t = 1.0f / T;
    double sum = 0;
    for (int i = b + threadIdx.x; i < e; i += NT) {
        float x = (float)exp((double)((l[i] - mx) * inv_t));
        p[i] = x;
        sum += x;
    }
    sum = block_reduce(sum, SumD());
    if (threadIdx.x == 0) ((double *)w)[blockIdx.x] = sum;
}
__global__ void __launch_bounds__(NT) k_sp_scale(float *probs, int V, const unsigned long long *ws, size_t ws_stride) {
    int b, e;
    sp_range(V, b, e);
    const double *ps = (const double *)(ws + (size_t)blockIdx.y * ws_stride);
    double sum = 0;
    for (int c = 0; c < (int)gridDim.x; c++) sum += ps[c];
    const float inv = (float)(1.0 / sum);
    float *p = probs + (size_t)blockIdx.y * V;
    for (int i = b + threadIdx.x; i < e; i += NT) p[i] *= inv;
}

/* greedy: the one-hot at the argmax (block_argmax's), the chunks' best keys first */
__global__ void __launch_bounds__(NT) k_sp_argmax(const float *logits, int V, unsigned long long *ws, size_t ws_stride) {
    int b, e;
    sp_range(V, b, e);
    const float *l = logits + (size_t)blockIdx.y * V;
    unsigned long long best = 0;
    for (int i = b + threadIdx.x; i < e; i += NT) {
        const float v = l[i];
        if (v == v) best = max(best, argmax_key(v, i)); /* NaNs never win */
    }
    best = block_reduce(best, MaxU());
    if (threadIdx.x == 0) ws[(size_t)blockIdx.y * ws_stride + blockIdx.x] = best;
}
__global__ void __launch_bounds__(NT) k_sp_onehot(float *probs, int V, const unsigned long long *ws, size_t ws_stride) {
    int b, e;
    sp_range(V, b, e);
    const unsigned long long *w = ws + (size_t)blockIdx.y * ws_stride;
    unsigned long long best = 0;
    for (int c = 0; c < (int)gridDim.x; c++) best = max(best, w[c]);
    const int bi = best ? (int)~(unsigned)(best & 0xffffffffu) : 0;
    float *p = probs + (size_t)blockIdx.y * V;
    for (int i = b + threadIdx.x; i < e; i += NT) p[i] = i == bi ? 1.0f : 0.0f;
}

/* ---- draw, verify ---- */

/* the multi-block draw: each chunk's sum of its positive values and its last positive index
 * (k_dr_part, into sc: nb doubles, then nb ints), then one block finds the chunk and walks it */
__global__ void __launch_bounds__(NT) k_dr_part(const float *probs, int V, void *sc) {
    int b, e;
    sp_range(V, b, e);
    double s = 0;
    int last = -1;
    for (int i = b + threadIdx.x; i < e; i += NT) {
        const float v = probs[i];
        if (v > 0) { s += v; last = i; }
    }
    s = block_reduce(s, SumD());
    last = block_reduce(last, MaxI());
    if (threadIdx.x == 0) {
        ((double *)sc)[blockIdx.x] = s;
        ((int *)((double *)sc + gridDim.x))[blockIdx.x] = last;
    }
}
__global__ void __launch_bounds__(NT) k_dr_find(int32_t *out, const float *probs, int V, const void *sc, int nb, double u) {
    __shared__ int s_chunk;
    __shared__ double s_before;
    const double *cs = (const double *)sc;
    const int *cl = (const int *)(cs + nb), t = threadIdx.x;
    const double mine = t < nb ? cs[t] : 0.0;
    const double before = block_excl_scan(mine);
    /* the first chunk with mass whose cumulative sum passes u; else none (u past the mass) */
    int found = t < nb && mine > 0 && u < before + mine ? t : INT_MAX;
    found = block_reduce(found, MinI());
    if (found == INT_MAX) { /* sample_from's fallback: the last positive value */
        int last = t < nb ? cl[t] : -1;
        last = block_reduce(last, MaxI());
        if (t == 0) *out = last >= 0 ? last : 0;
        return;
    }
    if (t == found) {
        s_chunk = found;
        s_before = before;
    }
    __syncthreads();
    const int c = s_chunk, b = c * SP_CHUNK, e = min(V, b + SP_CHUNK);
    const int i = block_draw(ProbVal{probs + b}, e - b, u - s_before);
    if (t == 0) *out = b + i;
}

__global__ void __launch_bounds__(NT) k_draw(int32_t *out, const float *probs, int V, double u) {
    const int t = block_draw(ProbVal{probs}, V, u);
    if (threadIdx.x == 0) *out = t;
}

struct Uniforms { double u[VERIFY_MAX_K + 1]; };

enum { BUG_RATIO_Q = 1, BUG_RESIDUAL_PT = 2 }; /* verify.h's VerifyBug values */

__global__ void __launch_bounds__(NT) k_verify(int32_t *out, const float *pt, const float *q, const int32_t *drafts, int k, int V,
                                              int greedy, Uniforms un, int bug, const float *q_ratio) {
    __shared__ int s_a, s_rej;
    if (threadIdx.x == 0) {
        int a = 0, rej = 0;
        for (int j = 0; j < k; j++) {
            const float *pj = pt + (size_t)j * V;
            const int x = drafts[j];
            if (greedy) { /* pt rows are one-hots at the target argmax */
                if (!(pj[x] > 0.5f)) break;
                a++;
                continue;
            }
            const float qx = (bug == BUG_RATIO_Q ? q_ratio : q)[(size_t)j * V + x];
            if (un.u[j] * (double)(qx > 1e-8f ? qx : 1e-8f) < (double)pj[x]) { a++; continue; }
            rej = 1;
            break;
        }
        s_a = a;
        s_rej = rej;
    }
    __syncthreads();
    const int a = s_a;
    const float *pa = pt + (size_t)a * V;
    int next;
    if (greedy) next = block_argmax(pa, V);
    else if (!s_rej) next = block_draw(ProbVal{pa}, V, un.u[k]); /* the bonus from pt_k */
    else {
        const float *qa = q + (size_t)a * V;
        double mass = 0;
        for (int i = threadIdx.x; i < V; i += NT) {
            float d = pa[i] - qa[i];
            mass += d > 0 ? d : 0.0f;
        }
        mass = block_reduce(mass, SumD());
        const double u2 = un.u[a + 1];
        if (bug == BUG_RESIDUAL_PT || mass <= 1e-8) next = block_draw(ProbVal{pa}, V, u2);
        else next = block_draw(ResidVal{pa, qa}, V, u2 * mass);
    }
    if (threadIdx.x == 0) {
        out[0] = a;
        out[1] = next;
    }
    for (int j = threadIdx.x; j < k; j += NT) out[2 + j] = drafts[j];
}

/* ---- the ops ---- */

static cudaStream_t stream_of(Backend *be) { return (cudaStream_t)backend_cuda_stream(be); }

/* a kernel of this file's, NT threads a block, on the backend's stream (the launch the
 * backend's own kernels take, without programmatic dependent launch) */
template <typename... KArgs, typename... Args>
static void sp_launch(Backend *be, void (*kernel)(KArgs...), dim3 grid, Args... args) {
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid;
    lc.blockDim = NT;
    lc.stream = stream_of(be);
    cudaLaunchKernelEx(&lc, kernel, args...);
}

static size_t pow2_at_least(int v) {
    size_t p = 1;
    while (p < (size_t)v) p <<= 1;
    return p;
}

static size_t cs_ws_bytes(Backend *be, int n, int vocab) {
    (void)be;
    return (size_t)(n > 0 ? n : 1) * pow2_at_least(vocab) * sizeof(unsigned long long);
}

static void cs_sample_probs(Backend *be, float *probs, const float *logits, int n, int vocab, float temperature, int top_k, float top_p,
                            void *ws) {
    if (n < 1) return;
    const int nb = (vocab + SP_CHUNK - 1) / SP_CHUNK;
    const bool greedy = temperature < 1e-5f, plain = !greedy && !(top_k > 0 && top_k < vocab) && !(top_p < 1.0f);
    const size_t stride = pow2_at_least(vocab); /* (ws: 8 bytes a value a row; the partials take 12 a chunk) */
    unsigned long long *w = (unsigned long long *)ws;
    const dim3 grid((unsigned)nb, (unsigned)n);
    const bool many = nb > 1 && nb <= SP_MAX_CHUNKS && n <= 65535; /* one block per chunk */
    if (greedy && many) { /* the multi-block one-hot */
        sp_launch(be, k_sp_argmax, grid, logits, vocab, w, stride);
        sp_launch(be, k_sp_onehot, grid, probs, vocab, w, stride);
        sc_check("sample_probs");
        return;
    }
    if (plain && many) { /* the multi-block softmax */
        sp_launch(be, k_sp_max, grid, logits, vocab, w, stride);
        sp_launch(be, k_sp_exp, grid, probs, logits, vocab, temperature, w, stride);
        sp_launch(be, k_sp_scale, grid, probs, vocab, w, stride);
        sc_check("sample_probs");
        return;
    }
    sp_launch(be, k_sample_probs, n, probs, logits, vocab, temperature, top_k, top_p, w, stride);
    sc_check("sample_probs");
}

static void cs_draw(Backend *be, int32_t *out, const float *probs, int vocab, double u) {
    const int nb = (vocab + SP_CHUNK - 1) / SP_CHUNK;
    void *sc = backend_cuda_draw_scratch(be, (size_t)SP_MAX_CHUNKS * (sizeof(double) + sizeof(int)));
    if (nb > 1 && nb <= SP_MAX_CHUNKS && sc) {
        sp_launch(be, k_dr_part, nb, probs, vocab, sc);
        sp_launch(be, k_dr_find, 1, out, probs, vocab, sc, nb, u);
        sc_check("draw");
        return;
    }
    sp_launch(be, k_draw, 1, out, probs, vocab, u);
    sc_check("draw");
}

static void cs_verify(Backend *be, int32_t *out, const float *pt, const float *q, const int32_t *drafts, int k, int vocab, bool greedy,
                      const double *u, int bug, const float *q_ratio) {
    if (k < 0 || k > VERIFY_MAX_K) {
        fprintf(stderr, "dspark: cuda verify: %d drafts (at most %d)\n", k, VERIFY_MAX_K);
        abort();
    }
    Uniforms un;
    memset(&un, 0, sizeof un);
    if (!greedy) memcpy(un.u, u, sizeof(double) * (size_t)(k + 1));
    sp_launch(be, k_verify, 1, out, pt, q, drafts, k, vocab, greedy, un, bug, q_ratio);
    sc_check("verify");
}

extern "C" void cuda_sample_install(Backend *be) {
    const char *sync = getenv("DSPARK_CUDA_SYNC");
    g_sync_ops = sync && strcmp(sync, "1") == 0;
    be->sample_ws_bytes = cs_ws_bytes;
    be->sample_probs = cs_sample_probs;
    be->draw = cs_draw;
    be->verify = cs_verify;
}
