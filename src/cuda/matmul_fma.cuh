/* matmul_fma.cuh - the F32-FMA products (any dtype, <= CUDA_SMALL_N rows) and the widening
 * kernel of the cuBLAS path.
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

/* out[i][o] = sum_k x[i][k] w[o][k] for i < n (rows in chunks of NB) and C columns o0.. per
 * block of 256 threads: the block reads its columns' weights once per chunk of rows (once per
 * call for n <= NB) and applies each load to all rows of the chunk. Per (i, o) the arithmetic
 * is exactly k_matmul_ref's: thread t sums k = 8t.. in steps of 2048 with the same fmaf order
 * (scalar path: k = t.. in steps of 256), each warp's 32 partial sums go through warp_sum's
 * tree (warp_sum_multi, many values at once), then the 8 warps are added in order from 0. So
 * every row's result is bitwise the same whatever n, NB and C are. */
/* The products' shared steps. fma8_rows: acc[c * NB + i] += x row i's 8 values from k times
 * wv[c], eight fmaf in k order, for the nr valid rows. reduce_store: each thread's partial
 * sums through warp_sum_multi's tree, then the 8 warps in order, into out[i][o0 + c]
 * (rows of this chunk). Both are one arithmetic for every kernel and launch setting. */
template <int NB, int C>
__device__ __forceinline__ void fma8_rows(float (&acc)[C * NB], const float *xb, int K, int k, int nr, const float (*wv)[8]) {
#pragma unroll
    for (int i = 0; i < NB; i++) {
        if (i < nr) {
            const float4 *xp = (const float4 *)(xb + (size_t)i * K + k);
            const float4 a = ld_act4(xp), b = ld_act4(xp + 1);
#pragma unroll
            for (int c = 0; c < C; c++) {
                float s = acc[c * NB + i];
                s = fmaf(a.x, wv[c][0], s); s = fmaf(a.y, wv[c][1], s); s = fmaf(a.z, wv[c][2], s); s = fmaf(a.w, wv[c][3], s);
                s = fmaf(b.x, wv[c][4], s); s = fmaf(b.y, wv[c][5], s); s = fmaf(b.z, wv[c][6], s); s = fmaf(b.w, wv[c][7], s);
                acc[c * NB + i] = s;
            }
        }
    }
}
/* acc[c * NB + i] += thread t's part of sum_k x[i][k] w[c][k] for the nr rows of xb (weight
 * row c at wo[c]): k = 8t.. in steps of 2048 through fma8_rows (VEC), else k = t.. in steps of
 * 256, one fmaf per (k, row, column) */
template <int NB, int C, int DT, bool VEC>
__device__ __forceinline__ void mm_sums(float (&acc)[C * NB], const float *xb, const void *w, const size_t (&wo)[C], int K, int nr) {
    const int t = threadIdx.x;
    if (VEC) {
        for (int k0 = t * 8; k0 < K; k0 += 2048) {
            float wv[C][8];
#pragma unroll
            for (int c = 0; c < C; c++) load8<DT>(w, wo[c] + k0, wv[c]);
            fma8_rows<NB, C>(acc, xb, K, k0, nr, wv);
        }
    } else {
        for (int k = t; k < K; k += 256) {
            float wv[C];
#pragma unroll
            for (int c = 0; c < C; c++) wv[c] = weight_at(w, DT, wo[c] + k);
#pragma unroll
            for (int i = 0; i < NB; i++)
                if (i < nr) {
                    const float xv = xb[(size_t)i * K + k];
#pragma unroll
                    for (int c = 0; c < C; c++) acc[c * NB + i] = fmaf(xv, wv[c], acc[c * NB + i]);
                }
        }
    }
}

/* after a barrier: out[i][o0 + c] = the 8 warps' sums part[w][c * NB + i], added in order */
template <int NB, int C>
__device__ __forceinline__ void parts_store(const float (*part)[C * NB], int t, int nr, int o0, int O, float *out) {
    for (int q = t; q < C * NB; q += 256) {
        const int c = q / NB, i = q % NB;
        if (i < nr && o0 + c < O) {
            float v = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) v += part[j][q];
            out[(size_t)i * O + o0 + c] = v;
        }
    }
}

/* The previous product kernel, kept as the reference the new one must equal bitwise
 * (DSPARK_CUDA_MATMUL_REF=1 selects it; tests/test_cuda.c compares the two).
 * out[i][o] = sum_k x[i][k] w[o][k] for i < n <= NB and R columns o0.. per block of 256
 * threads. Thread t sums k = 8t.. in steps of 2048 (scalar path: k = t.. in steps of 256), then
 * each warp's lanes by a fixed xor tree and the 8 warps in order: every (i, o) gets the same
 * arithmetic whatever n, NB and R are. R > 1 reuses each x load for R columns. Its sums are
 * the helpers above (the one arithmetic); its reduction is its own: warp_sum per value. */
template <int NB, int R, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul_ref(float *__restrict__ out, const float *x, const void *__restrict__ w, int n, int K, int O) {
    pdl_start();
    __shared__ float part[8][R * NB];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, o0 = blockIdx.x * R;
    float acc[R * NB]; /* [r * NB + i] */
#pragma unroll
    for (int q = 0; q < R * NB; q++) acc[q] = 0.0f;
    size_t wo[R];
#pragma unroll
    for (int r = 0; r < R; r++) wo[r] = (size_t)(o0 + r < O ? o0 + r : O - 1) * K;
    mm_sums<NB, R, DT, VEC>(acc, x, w, wo, K, n);
#pragma unroll
    for (int q = 0; q < R * NB; q++)
        if (q % NB < n) { /* n is the same for the whole block */
            const float v = warp_sum(acc[q]);
            if (lane == 0) part[warp][q] = v;
        }
    __syncthreads();
    parts_store<NB, R>(part, t, n, o0, O, out);
}

template <int NB, int C>
__device__ __forceinline__ void reduce_store(float (&acc)[C * NB], float (*part)[C * NB], int t, int nr, int o0, int O, float *out) {
    constexpr int M = C * NB, PER = M < 32 ? 1 : M / 32, COPY_MASK = M < 32 ? 32 / M - 1 : 0;
    const int lane = t & 31, warp = t >> 5;
    const int base = warp_sum_multi<M>(acc, lane);
    if ((lane & COPY_MASK) == 0) {
#pragma unroll
        for (int q = 0; q < PER; q++) part[warp][base + q] = acc[q];
    }
    __syncthreads();
    parts_store<NB, C>(part, t, nr, o0, O, out);
    __syncthreads(); /* part is the next chunk's */
}

template <int NB, int C, int DT, bool VEC>
__device__ __forceinline__ void mm_block(float *__restrict__ out, const float *x, const void *__restrict__ w, int n, int K,
                                         int O, int o0, float (*part)[C * NB]) {
    constexpr int M = C * NB;
    const int t = threadIdx.x;
    size_t wo[C];
#pragma unroll
    for (int c = 0; c < C; c++) wo[c] = (size_t)(o0 + c < O ? o0 + c : O - 1) * K;
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nr = n - i0 < NB ? n - i0 : NB; /* the same for the whole block */
        const float *xb = x + (size_t)i0 * K;
        float acc[M]; /* [c * NB + i] */
#pragma unroll
        for (int q = 0; q < M; q++) acc[q] = 0.0f;
        mm_sums<NB, C, DT, VEC>(acc, xb, w, wo, K, nr);
        reduce_store<NB, C>(acc, part, t, nr, o0, O, out + (size_t)i0 * O);
    }
}

template <int NB, int C, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul(float *__restrict__ out, const float *x, const void *__restrict__ w,
                                                int n, int K, int O) {
    pdl_start();
    __shared__ float part[8][C * NB];
    mm_block<NB, C, DT, VEC>(out, x, w, n, K, O, blockIdx.x * C, part);
}

/* up to 3 products of one x in one launch (matmul_multi): segment j takes the column groups
 * [g_end[j - 1], g_end[j]); every block is k_matmul's block of its segment, so the values are
 * those of the separate calls, and the small k/v products share a wave with q (gate with up) */
typedef struct {
    float *out[3];
    const void *w[3];
    int O[3], g_end[3], count;
    int act; /* 1 (k_matmul_tc, 2 tiles per block): gate (0) and up (1) row tiles paired, out[0] = silu(gate) * up */
    /* k_matmul_tc only: */
    const void *norm;    /* BF16 [K]: the product of rmsnorm(x) by norm (matmul_norm; k_matmul_tc's NORM) */
    float eps;
    const float *rscale; /* [n]: the sums of x row i scaled by rscale[i] (matmul_norm above 8 rows: k_norm_prep) */
    int add;          /* out += the product (matmul_add) */
    int layout;       /* the weights' layout, the same for every segment (WL_ROWS or WL_TILES) */
    uint16_t *xp_out; /* act: the pieces of out[0] (cuda_common.cuh's xp_at), for the product that reads it */
    /* k_matmul_col only, the rmsnorm of matmul_norm from pieces made ahead (matmul_tc.cuh's
     * "norm pieces"): */
    const float *ss_in;  /* [n][K / 16]: x's squares by 16-column tile; x's pieces are those of norm * x,
                          * and each row's sums are scaled by 1 / rms from these (eps above) */
    const void *np_norm; /* with add (matmul_add before a matmul_norm by np_norm, BF16 [O]): the pieces of */
    uint16_t *np_out;    /* np_norm * out (the new out) into np_out and out's squares by tile into */
    float *ss_out;       /* ss_out [n][O / 16] */
} MmMulti;

/* the segment of column group g (selects, not an index: the parameters stay in registers) */
typedef struct {
    float *out;
    const void *w;
    int O, o0;
} MmSeg;
template <int C>
__device__ __forceinline__ MmSeg mm_segment(const MmMulti &mm, int g) {
    const bool s1 = mm.count > 1 && g >= mm.g_end[0], s2 = mm.count > 2 && g >= mm.g_end[1];
    MmSeg r;
    r.out = s2 ? mm.out[2] : s1 ? mm.out[1] : mm.out[0];
    r.w = s2 ? mm.w[2] : s1 ? mm.w[1] : mm.w[0];
    r.O = s2 ? mm.O[2] : s1 ? mm.O[1] : mm.O[0];
    r.o0 = (g - (s2 ? mm.g_end[1] : s1 ? mm.g_end[0] : 0)) * C;
    return r;
}

template <int NB, int C, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul_multi(MmMulti mm, const float *x, int n, int K) {
    pdl_start();
    __shared__ float part[8][C * NB];
    const MmSeg sg = mm_segment<C>(mm, blockIdx.x);
    mm_block<NB, C, DT, VEC>(sg.out, x, sg.w, n, K, sg.O, sg.o0, part);
}

/* k_matmul (or k_matmul_multi: the segments of mm) for 16-bit weights on the vector path,
 * persistent: a grid of about one wave of blocks, each taking column groups g, g + gridDim.x,
 * ... of all segments, and loading the next group's first weight chunk while it computes and
 * reduces the current one, so weight loads stay in flight between groups. Per (i, o) the
 * arithmetic is k_matmul's (the same chunks in the same order, the same trees), so the
 * results are bitwise equal. */
template <int NB, int C, int DT>
__global__ void __launch_bounds__(256) k_matmul_pf(MmMulti mm, const float *x, int n, int K) {
    pdl_start();
    constexpr int M = C * NB;
    __shared__ float part[8][M];
    const int t = threadIdx.x, k0 = t * 8;
    const int G = mm.count > 2 ? mm.g_end[2] : mm.count > 1 ? mm.g_end[1] : mm.g_end[0];
    uint4 pre[C]; /* the first chunk (k0) of group g's columns */
    int g = blockIdx.x;
    auto prefetch = [&](int gg) {
        if (gg >= G || k0 >= K) return;
        const MmSeg sg = mm_segment<C>(mm, gg);
        const uint16_t *w16 = (const uint16_t *)sg.w;
#pragma unroll
        for (int c = 0; c < C; c++) pre[c] = __ldg((const uint4 *)(w16 + (size_t)(sg.o0 + c < sg.O ? sg.o0 + c : sg.O - 1) * K + k0));
    };
    prefetch(g);
    for (; g < G; g += gridDim.x) {
        const MmSeg sg = mm_segment<C>(mm, g);
        const int O = sg.O, o0 = sg.o0;
        const void *w = sg.w;
        float *out = sg.out;
        size_t wo[C];
#pragma unroll
        for (int c = 0; c < C; c++) wo[c] = (size_t)(o0 + c < O ? o0 + c : O - 1) * K;
        for (int i0 = 0; i0 < n; i0 += NB) {
            const int nr = n - i0 < NB ? n - i0 : NB;
            const float *xb = x + (size_t)i0 * K;
            float acc[M];
#pragma unroll
            for (int q = 0; q < M; q++) acc[q] = 0.0f;
            for (int k = k0; k < K; k += 2048) {
                float wv[C][8];
                if (k == k0 && i0 == 0) {
#pragma unroll
                    for (int c = 0; c < C; c++) unpack8<DT>(pre[c], wv[c]);
                    prefetch(g + gridDim.x); /* in flight during this group's products and trees */
                } else {
#pragma unroll
                    for (int c = 0; c < C; c++) load8<DT>(w, wo[c] + k, wv[c]);
                }
                fma8_rows<NB, C>(acc, xb, K, k, nr, wv);
            }
            reduce_store<NB, C>(acc, part, t, nr, o0, O, out + (size_t)i0 * O);
        }
    }
}

__global__ void k_widen(float *dst, const void *w, int dt, bool tiles, int K, size_t r0, size_t count) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = weight_rc(w, dt, tiles, r0 + i / K, i % K, K);
}
