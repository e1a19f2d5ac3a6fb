/* matmul_tc.cuh - the tensor-core product for BF16 weights (decode and verify rows).
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

/* ---- the tensor-core product: BF16 weights, <= CUDA_SMALL_N rows (decode and verify) ----
 * out[i][o] = sum_k x[i][k] w[o][k] with mma.sync m16n8k16 (bf16 in, f32 accumulate), "swap
 * AB": A = 16 weight rows x 16 k (W row-major [O][K] is A's row-major layout), B = x^T, 16 k x
 * 8 rows of x (x row-major [n][K] is B's column layout), C = 16 outputs x 8 rows. Lane
 * (g = lane / 4, t = lane % 4) loads 16 bytes of weight rows g and g + 8 at k = 32 j + 8 t
 * (one k-step j covers 32 k: 4 lanes x 8 per row, two mma) and x row g's 8 floats at the same
 * k; the k slots of the two mma are a permutation of those 32 k, the same for A and B, so the
 * fragments come straight from the loads (no shuffles, no shared memory). The weights are
 * row-major or, as uploaded by default, in tiles laid out in exactly this load order
 * (cuda_common.cuh's tile_at: a warp's load is then 512 contiguous bytes); only the addresses
 * differ, never a value.
 * x is F32: each value is split into P bf16 pieces x = h + m + l (h = bf16(x), m = bf16(x - h),
 * l = bf16(x - h - m); both differences are exact in F32), and each piece's products w * piece
 * are exact in the mma's F32 accumulation, so 3 pieces carry x's whole 24-bit significand
 * (normal floats; a value beyond bf16's largest finite, ~3.39e38, or an inf/NaN gives NaN).
 * Arithmetic of one output, fixed by K alone: k-step j belongs to warp j % 8 of the block; a
 * warp runs, for each of its k-steps in ascending order, mma(first 16 k) with h, m, l, then
 * mma(second 16 k) with h, m, l into one F32 accumulator; the 8 warps' sums are added as
 * ((w0 + w4) + (w2 + w6)) + ((w1 + w5) + (w3 + w7)). Nothing depends on n, on the other rows
 * (an mma's column j reads only column j of B), on MT (16-row tiles per block) or on the
 * segment layout of matmul_multi, so a row's result is bitwise the same alone or in a block.
 * Needs K % 32 == 0 and 16-byte aligned x and w (else the F32-FMA kernel above). */
#define TC_WARPS 8

/* 8 floats -> P bf16 pieces, each as 4 packed pairs (pair j: k 2j, 2j + 1) */
template <int P>
__device__ __forceinline__ void tc_split(float (&r)[8], uint32_t (&p)[P][4]) {
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t u = bf16x2_rn(r[2 * j], r[2 * j + 1]);
            p[q][j] = u;
            if (q + 1 < P) { /* the remainder, exact in F32 */
                r[2 * j] = r[2 * j] - __uint_as_float(u << 16);
                r[2 * j + 1] = r[2 * j + 1] - __uint_as_float(u & 0xffff0000u);
            }
        }
}

/* one k-step of one 16-row tile: rows g, g + 8 (lo, hi) times x's 8 values f (split into P
 * pieces; ptx.cuh's mma_bf16), the 32 k into a fresh accumulator, then one F32 add into the sum s: the mma's own
 * accumulation (not IEEE-rounded) spans 2 P mma, not the whole K */
template <int P>
__device__ __forceinline__ void tc_kstep(float *s, uint4 lo, uint4 hi, const uint32_t (&p)[P][4]) {
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < P; q++) mma_bf16(c, lo.x, hi.x, lo.y, hi.y, p[q][0], p[q][1]);
#pragma unroll
    for (int q = 0; q < P; q++) mma_bf16(c, lo.z, hi.z, lo.w, hi.w, p[q][2], p[q][3]);
    s[0] = s[0] + c[0]; s[1] = s[1] + c[1]; s[2] = s[2] + c[2]; s[3] = s[3] + c[3];
}
/* the block's rows: with sw (mm.act) tile group g of gate (up is the same rows of w[1]), else
 * matmul_multi's segment of group g of 16 MT rows */
template <int MT>
__device__ __forceinline__ MmSeg tc_segment(const MmMulti &mm, bool sw, int g) {
    return sw ? MmSeg{mm.out[0], mm.w[0], mm.O[0], 16 * g} : mm_segment<16 * MT>(mm, g);
}
/* lane (g, t)'s 16 bytes at k-step 0 of row 8 h + g of the 16-row tile from row r0 of w [O][K]:
 * tiled, the next k-step is 64 uint4 on, row-major 4 (rows past O: the padded last tile, or the
 * last row, whose sums are not stored) */
__device__ __forceinline__ const uint4 *tc_lane_w(const void *w, bool tiled, int r0, int h, int g, int t, int O, int K) {
    const int r = r0 + 8 * h + g, last_tile = (O - 1) >> 4, tile = (r0 >> 4) < last_tile ? r0 >> 4 : last_tile;
    return (const uint4 *)((const uint16_t *)w + (tiled ? tile_at((size_t)16 * tile + 8 * h + g, 8 * t, K) : (size_t)(r < O ? r : O - 1) * K + 8 * t));
}
/* a round's weights: k-steps j0 + 8 u (u < U, those below KS) of the MT tiles' lanes (wr:
 * k-step 0; kstep uint4 to the next), all requested before any is used */
template <int U, int MT>
__device__ __forceinline__ void tc_load_round(uint4 (&wv)[U][MT][2], const uint4 *const (&wr)[MT][2], int j0, int KS, int kstep) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int j = j0 + TC_WARPS * u;
        if (j < KS)
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                wv[u][mt][0] = ld_stream(wr[mt][0] + (size_t)j * kstep);
                wv[u][mt][1] = ld_stream(wr[mt][1] + (size_t)j * kstep);
            }
    }
}
/* the 8 warps' sums in the fixed tree: 4..7 onto 0..3, 2..3 onto 0..1, 1 onto 0 (warp 0 holds
 * the result; every thread of the block must call it) */
template <int T>
__device__ __forceinline__ void tc_warp_tree(float (&acc)[T][4], float4 (*red)[T][32], int warp, int lane) {
#pragma unroll
    for (int s = TC_WARPS / 2; s >= 1; s >>= 1) {
        if (warp >= s && warp < 2 * s)
#pragma unroll
            for (int q = 0; q < T; q++) red[warp - s][q][lane] = make_float4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]);
        __syncthreads();
        if (warp < s)
#pragma unroll
            for (int q = 0; q < T; q++) {
                const float4 v = red[warp][q][lane];
                acc[q][0] = acc[q][0] + v.x; acc[q][1] = acc[q][1] + v.y; acc[q][2] = acc[q][2] + v.z; acc[q][3] = acc[q][3] + v.w;
            }
        __syncthreads();
    }
}
/* warp 0's C fragments into out: acc[mt * NT + nt][e] is output row o0 + 16 mt + g (+ 8 for
 * e = 2, 3) of x row 8 nt + 2t (+ 1 for odd e). add: out += them (matmul_add; bitwise k_add's
 * sum), every old value loaded before the first store so the loads are in flight together
 * (a load after a store to the same array waits for it: one L2 round trip per value) */
template <int MT, int NT>
__device__ __forceinline__ void tc_store(const MmSeg &sg, float (&acc)[MT * NT][4], int n, int g, int t, bool add) {
    float *out = sg.out;
    const int O = sg.O;
    auto at = [&](int q, int e, size_t &off) {
        const int i = 8 * (q % NT) + 2 * t + (e & 1), r = sg.o0 + 16 * (q / NT) + g + (e & 2 ? 8 : 0);
        off = (size_t)i * O + r;
        return i < n && r < O;
    };
    if (add)
#pragma unroll
        for (int q = 0; q < MT * NT; q++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                size_t off;
                if (at(q, e, off)) acc[q][e] = out[off] + acc[q][e];
            }
#pragma unroll
    for (int q = 0; q < MT * NT; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            size_t off;
            if (at(q, e, off)) out[off] = acc[q][e];
        }
}

/* the paired store (mm.act): tile 0 holds gate rows o0.., tile 1 the same up rows; up to
 * out[1] as the product alone would write it, silu(gate) * up to out[0] */
template <int NT>
__device__ __forceinline__ void tc_store_swiglu(const MmMulti &mm, int o0, const float (&acc)[2 * NT][4], int n, int g, int t) {
    float *gate = mm.out[0], *up = mm.out[1];
    const int O = mm.O[0];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const float *cg = acc[nt], *cu = acc[NT + nt];
        const int i = 8 * nt + 2 * t, r0 = o0 + g, r1 = r0 + 8;
#pragma unroll
        for (int e = 0; e < 4; e++) { /* e: (row r0, x row i), (r0, i + 1), (r1, i), (r1, i + 1) */
            const int ii = i + (e & 1), r = e & 2 ? r1 : r0;
            if (ii < n && r < O) {
                const size_t at = (size_t)ii * O + r;
                up[at] = cu[e];
                const float y = silu_mul(cg[e], cu[e]);
                gate[at] = y;
                if (mm.xp_out) xp_store(mm.xp_out, ii, r, O, y); /* down_proj's pieces */
            }
        }
    }
}

/* a row-major [O][K] BF16 matrix (src) into tiles (dst: rows = O rounded up to 16; tile_at),
 * one 16-byte piece (8 k of a row) per thread; rows past O are zeros */
__global__ void k_tile(uint4 *dst, const uint4 *src, int O, int K, int rows) {
    pdl_start(); /* (launched without PDL; pdl_ptx_check wants every kernel to wait) */
    const size_t per_row = (size_t)K / 8, pieces = (size_t)rows * per_row;
    for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < pieces; q += (size_t)gridDim.x * blockDim.x) {
        const size_t r = q / per_row, k = 8 * (q % per_row);
        dst[tile_at(r, k, K) / 8] = r < (size_t)O ? src[q] : make_uint4(0, 0, 0, 0);
    }
}

/* k_matmul_tc's __launch_bounds__ minimum of resident blocks by MT and NT (0: none given).
 * Without one, ptxas kept the NT 4 / NT 8 instances at 58 / 76 registers with their loads
 * serialised; with 1 / 2 it takes 91 / 125 and keeps the loads in flight (H200: 32 tokens
 * 11.35 -> 8.69 ms, 64 tokens 22.7 -> 17.4; docs/bench-cuda.md). For NT <= 2 a minimum gave
 * more registers and a slower step. 16 tiles of sums (gate/up paired at 33-64 rows) do not fit
 * 2 blocks' registers (64 bytes spilled): 1. Registers only: the arithmetic is the same. */
constexpr int tc_min_blocks(int mt, int nt) { return mt * nt >= 16 ? 1 : nt >= 8 ? 2 : nt >= 4 ? 1 : 0; }

/* NORM (matmul_norm): the product of rmsnorm(x) by mm.norm (BF16), folded in. By linearity
 * W . (nw * x * r) = r * (W . (nw * x)) with r = 1 / sqrt(mean(x^2) + eps) of the row: the
 * block splits nw * x (one F32 product per value) instead of x and scales its sums by r in the
 * store, and r comes from the x values the block loads anyway (each lane's squares in k order,
 * its 4 lanes t by the xor tree, then the 8 warps in order), so no norm kernel runs and no
 * value waits for one. A row's bits still depend on K alone (not on n or the launch), but
 * differ from rmsnorm then the product within rounding: nw * (x * r) is not rounded. */
template <int NT>
__device__ __forceinline__ void tc_norm_scale(float (&ss)[NT], float (*ss_part)[8 * NT], int warp, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        ss[nt] += __shfl_xor_sync(0xffffffffu, ss[nt], 1);
        ss[nt] += __shfl_xor_sync(0xffffffffu, ss[nt], 2);
        if (t == 0) ss_part[warp][8 * nt + g] = ss[nt];
    }
}
/* 1 / rms of a row from the 8 warps' parts, added in order (rms_block_scale's expression) */
__device__ __forceinline__ float tc_norm_r(const float *part, int stride, int K, float eps) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < TC_WARPS; w++) s += part[w * stride];
    return 1.0f / sqrtf(s / (float)K + eps);
}

/* matmul_norm above 8 rows, where NORM's registers would cost the instances (cu_matmul_norm):
 * xn = nw * x and r of each row (block i) with NORM's arithmetic to the bit (the squares of
 * lane t of warp w over k-steps j = w, w + 8, .. ascending, k = 32 j + 8 t + e; the 4 lanes
 * by xor; the warps in order), so the plain product of xn with its sums scaled by r in the
 * store (mm.rscale) gives NORM's values: a row is the same whichever path its call takes. */
__global__ void __launch_bounds__(256) k_norm_prep(float *xn, float *r, const float *x, const uint16_t *nw, int K, float eps) {
    pdl_start();
    __shared__ float part[TC_WARPS];
    const int i = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
    const float *xi = x + (size_t)i * K;
    float *oi = xn + (size_t)i * K;
    float ss = 0.0f;
    if (lane < 4) /* a chain per (warp, t); 8 k-steps' loads in flight at once */
        for (int j0 = warp; j0 < K / 32; j0 += 8 * TC_WARPS) {
            float4 v[8][2];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int j = j0 + TC_WARPS * u;
                if (j < K / 32) {
                    v[u][0] = ld_act4((const float4 *)(xi + 32 * j + 8 * t));
                    v[u][1] = ld_act4((const float4 *)(xi + 32 * j + 8 * t) + 1);
                }
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                if (j0 + TC_WARPS * u >= K / 32) break;
                const float f[8] = {v[u][0].x, v[u][0].y, v[u][0].z, v[u][0].w, v[u][1].x, v[u][1].y, v[u][1].z, v[u][1].w};
#pragma unroll
                for (int e = 0; e < 8; e++) ss = fmaf(f[e], f[e], ss);
            }
        }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    ss += __shfl_xor_sync(0xffffffffu, ss, 2);
    if (lane == 0) part[warp] = ss;
    __syncthreads(); /* every square read before xn is written: xn may be x (lm_head's rows, in place) */
    for (int k = threadIdx.x; k < K; k += 256) oi[k] = bf16_bits(nw[k]) * xi[k];
    if (threadIdx.x == 0) r[i] = tc_norm_r(part, 1, K, eps);
}

/* one block of 8 warps: MT tiles of 16 output rows (column group blockIdx.x of mm's segments)
 * for NT tiles of 8 rows of x (n <= 8 NT); U k-steps of weights loaded before they are used */
template <int MT, int NT, int P, int U, bool NORM>
__global__ void __launch_bounds__(256, tc_min_blocks(MT, NT)) k_matmul_tc(MmMulti mm, const float *x, int n, int K, int pf_bytes) {
    constexpr int T = MT * NT;
    __shared__ float4 red[TC_WARPS / 2][T][32];
    __shared__ float ss_part[NORM ? TC_WARPS : 1][8 * NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const bool sw = MT == 2 && mm.act; /* gate and up tiles paired */
    const MmSeg sg = tc_segment<MT>(mm, sw, blockIdx.x);
    const uint16_t *w = (const uint16_t *)sg.w;
    /* the block's weight rows into L2 at once (a bulk prefetch per row, up to pf_bytes of each):
     * the whole product's bytes are requested from memory at the start, not only what the
     * warps' registers can hold in flight; the warps' loads then mostly hit L2 */
    if (pf_bytes > 0 && !sw && threadIdx.x < 16 * MT && sg.o0 + (int)threadIdx.x < sg.O) {
        const uint32_t bytes = (uint32_t)(2 * K < pf_bytes ? 2 * K : pf_bytes);
        prefetch_l2(w + (size_t)(sg.o0 + threadIdx.x) * K, bytes);
    }
    /* the lane's 16 bytes of rows g, g + 8 of each tile at k-step 0, and the step to the next
     * k-step (in uint4): row-major 4 (the next 32 k of the row), tiled 64 (the next 1024 bytes) */
    const uint4 *wr[MT][2];
    const bool tiled = mm.layout == WL_TILES;
    const int kstep = tiled ? 64 : 4;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) wr[mt][h] = tc_lane_w(sw && mt == 1 ? mm.w[1] : w, tiled, sg.o0 + (sw ? 0 : 16 * mt), h, g, t, sg.O, K);
    const float *xr[NT];
    bool xok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        xok[nt] = 8 * nt + g < n;
        xr[nt] = x + (size_t)(xok[nt] ? 8 * nt + g : 0) * K + 8 * t;
    }
    float acc[T][4], ss[NT];
#pragma unroll
    for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) ss[nt] = 0.0f;
    const uint4 *nr = (const uint4 *)((const uint16_t *)mm.norm + 8 * t); /* NORM: the norm weights at the lane's k */
    const int KS = K / 32;
    /* a round: the weights and x of U k-steps loaded first (all in flight at once), then used;
     * the first round's weights are requested before pdl_wait (x comes from the kernel before) */
    for (int j0 = warp; j0 < KS; j0 += TC_WARPS * U) {
        uint4 wv[U][MT][2], nv[U];
        float4 xv[U][NT][2];
        tc_load_round<U, MT>(wv, wr, j0, KS, kstep);
        if (j0 == warp) pdl_start();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + TC_WARPS * u;
            if (j < KS) {
                if (NORM) nv[u] = __ldg(nr + (size_t)j * 4);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const float4 *xp = (const float4 *)(xr[nt] + (size_t)j * 32);
                    xv[u][nt][0] = xok[nt] ? ld_act4(xp) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    xv[u][nt][1] = xok[nt] ? ld_act4(xp + 1) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (j0 + TC_WARPS * u >= KS) break;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const float4 a = xv[u][nt][0], b = xv[u][nt][1];
                float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                if (NORM) {
                    float nw[8];
                    unpack8<DS_BF16>(nv[u], nw);
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        ss[nt] = fmaf(f[e], f[e], ss[nt]);
                        f[e] = nw[e] * f[e];
                    }
                }
                uint32_t p[P][4];
                tc_split<P>(f, p);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) tc_kstep<P>(acc[mt * NT + nt], wv[u][mt][0], wv[u][mt][1], p); /* rows g, g + 8 */
            }
        }
    }
    if (warp >= KS) pdl_start(); /* a warp without k-steps (the others waited in their first round) */
    if (NORM) tc_norm_scale<NT>(ss, ss_part, warp, g, t);
    tc_warp_tree<T>(acc, red, warp, lane); /* (its barriers publish ss_part too) */
    if (warp != 0) return;
    if (NORM || mm.rscale)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int i = 8 * nt + 2 * t;
            float r0, r1;
            if (NORM) {
                r0 = tc_norm_r(&ss_part[0][i], 8 * NT, K, mm.eps);
                r1 = tc_norm_r(&ss_part[0][i + 1], 8 * NT, K, mm.eps);
            } else {
                r0 = i < n ? __ldcg(mm.rscale + i) : 1.0f;
                r1 = i + 1 < n ? __ldcg(mm.rscale + i + 1) : 1.0f;
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                float *c = acc[mt * NT + nt];
                c[0] = c[0] * r0; c[1] = c[1] * r1; c[2] = c[2] * r0; c[3] = c[3] * r1;
            }
        }
    if constexpr (MT == 2)
        if (sw) {
            tc_store_swiglu<NT>(mm, sg.o0, acc, n, g, t);
            return;
        }
    tc_store<MT, NT>(sg, acc, n, g, t, mm.add != 0);
}

/* ---- the column product (k_matmul_col): the BF16 products of <= 64 rows (plain,
 * matmul_multi, matmul_add's store, the paired gate/up store, and matmul_norm from norm
 * pieces, below; k_matmul_tc keeps NORM, rscale and DSPARK_CUDA_COL=0) ----
 * k_matmul_tc's B holds 8 rows of x and each piece of x costs an mma (6 a k-step, at any n);
 * here B's column 3 i + q holds piece q of x row i, so a row takes 3 columns instead: at 1 or 2
 * rows 2 mma a k-step, and the pieces come ready from memory (x_pieces: made once by the op
 * that wrote x, the attention merge or the paired swiglu store, or k_split_x), one 16-byte load
 * per lane where k_matmul_tc loads 32 bytes and splits them (H200, a step's products at one
 * row: 2.71 -> 2.11 ms, the bare weight read 2.08). Without pieces (XP false) each lane splits
 * the 8 values of its column's row and keeps its own piece: the same pieces, so the same bits.
 * Arithmetic of one output, fixed by K alone: for each of the row's 3 columns, warp j % 8 runs
 * its k-steps j ascending, each 2 mma (first, second 16 k) into a fresh accumulator then one
 * F32 add into the column's sum; the 8 warps' sums in tc_warp_tree's order; the row's value is
 * (s_h + s_m) + s_l (then out + it for add). A column's mma reads only its own B column, so
 * nothing depends on n, the other rows or where the pieces came from. Rows in chunks of cr <= 16 (a
 * block: one 16-row weight tile, one chunk; the chunks of a tile are adjacent blocks, so its
 * weights come from L2 after the first). Needs K % 32 == 0 and 16-byte aligned x, w, pieces. */

/* x's pieces when no op made them (3 or more rows): a thread per 8 values */
__global__ void k_split_x(uint4 *xp, const float *x, int n, int K) {
    pdl_start();
    const size_t groups = (size_t)n * (K / 8);
    for (size_t gi = blockIdx.x * (size_t)blockDim.x + threadIdx.x; gi < groups; gi += (size_t)gridDim.x * blockDim.x) {
        const float4 a = ld_act4((const float4 *)x + 2 * gi), b = ld_act4((const float4 *)x + 2 * gi + 1);
        float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        uint32_t p[3][4];
        tc_split<3>(f, p);
#pragma unroll
        for (int q = 0; q < 3; q++) xp[3 * gi + q] = make_uint4(p[q][0], p[q][1], p[q][2], p[q][3]);
    }
}

/* ---- norm pieces: matmul_norm on the column product ----
 * rmsnorm(x) . W = r (W . (nw * x)) with r = 1 / sqrt(mean(x^2) + eps) (NORM's linearity,
 * above), but with the pieces of nw * x made ahead, so the product is k_matmul_col at full
 * speed: by the matmul_add that wrote x (its store has each new value anyway: the hint in
 * backend.h) or, where no op made them, by k_norm_pieces. Both make the same bits: piece
 * values are xp_store(nw * x), and the squares go by 16-column tile (tile T of row i: x[i][16
 * T + o]^2 over o, added by the half-warp's xor tree 1, 2, 4, 8) into ss [n][K / 16]; the
 * product adds a row's tiles (lane o of the half-warp: tiles o, o + 16, .. in order, then the
 * xor tree 8, 4, 2, 1, the same in every lane) into r. A row's bits depend on K alone. */
__device__ __forceinline__ float np_tile_sum(float s, unsigned half) {
#pragma unroll
    for (int m = 1; m < 16; m <<= 1) s = s + __shfl_xor_sync(half, s, m);
    return s;
}
__device__ __forceinline__ float np_rscale(const float *ss, int K, float eps, int o, unsigned half) {
    float s = 0.0f;
    for (int t0 = o; t0 < K / 16; t0 += 16 * 8) { /* 8 loads in flight, then added in order */
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = t0 + 16 * u < K / 16 ? ld_act(ss + t0 + 16 * u) : 0.0f;
#pragma unroll
        for (int u = 0; u < 8; u++)
            if (t0 + 16 * u < K / 16) s = s + v[u];
    }
#pragma unroll
    for (int m = 8; m >= 1; m >>= 1) s = s + __shfl_xor_sync(half, s, m);
    return 1.0f / sqrtf(s / (float)K + eps);
}
/* the pieces of nw * x and x's tile squares (x [n][K], K % 16 == 0): block (b, i) takes
 * tiles 16 b .. 16 b + 15 of row i, a half-warp each */
__global__ void __launch_bounds__(256) k_norm_pieces(uint16_t *xp, float *ss, const float *x, const uint16_t *nw, int K) {
    pdl_start();
    const int i = blockIdx.y, o = threadIdx.x & 15, tt = 16 * blockIdx.x + (threadIdx.x >> 4);
    if (tt >= K / 16) return; /* (a whole half-warp) */
    const unsigned half = 0xffffu << (threadIdx.x & 16);
    const int k = 16 * tt + o;
    const float v = ld_act(x + (size_t)i * K + k);
    xp_store(xp, i, k, K, bf16_bits(nw[k]) * v);
    const float q = np_tile_sum(v * v, half);
    if (o == 0) ss[(size_t)i * (K / 16) + tt] = q;
}

/* NC tiles of 8 columns (a chunk of up to 8 NC / 3 rows), U k-steps in flight per warp, MT
 * 16-row weight tiles per block (2: x's loads serve twice the weights). With mm.act (MT 2) the
 * two tiles are the same 16 rows of gate (w[0]) and up (w[1]), stored as tc_store_swiglu does
 * (out[1] = up, out[0] = silu(gate) * up). A tile's values are those of its product alone. */
template <int NC, int U, bool XP, int MT>
__global__ void __launch_bounds__(256) k_matmul_col(MmMulti mm, const float *x, const uint4 *xp, int n, int K, int cr) {
    __shared__ float sums[TC_WARPS][16][8 * NC + 1]; /* (+1: the lanes' stores spread over banks) */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int chunks = (n + cr - 1) / cr, i0 = cr * (int)(blockIdx.x % chunks), nr = n - i0 < cr ? n - i0 : cr; /* (cr <= 16) */
    const bool sw = MT == 2 && mm.act; /* gate and up tiles paired */
    const MmSeg sg = tc_segment<MT>(mm, sw, blockIdx.x / chunks);
    const bool tiled = mm.layout == WL_TILES;
    const int kstep = tiled ? 64 : 4, KS = K / 32;
    const uint4 *wr[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) wr[mt][h] = tc_lane_w(sw && mt ? mm.w[1] : sg.w, tiled, sg.o0 + (sw ? 0 : 16 * mt), h, g, t, sg.O, K);
    /* the lane's column in tile c: 8 c + g, piece q of row i0 + (8 c + g) / 3 */
    int row[NC], q[NC];
    bool ok[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int col = 8 * c + g;
        ok[c] = col < 3 * nr;
        row[c] = i0 + (ok[c] ? col / 3 : 0);
        q[c] = col % 3;
    }
    float acc[MT][NC][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[mt][c][0] = acc[mt][c][1] = acc[mt][c][2] = acc[mt][c][3] = 0.0f;
    for (int j0 = warp; j0 < KS; j0 += TC_WARPS * U) {
        uint4 wv[U][MT][2];
        tc_load_round<U, MT>(wv, wr, j0, KS, kstep);
        if (j0 == warp) pdl_start();
        uint4 pv[U][NC];
        float4 xv[XP ? 1 : U][XP ? 1 : NC][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + TC_WARPS * u;
            if (j < KS)
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    if constexpr (XP) {
                        pv[u][c] = ok[c] ? ld_act16(xp + ((size_t)row[c] * (K / 8) + 4 * j + t) * 3 + q[c]) : make_uint4(0, 0, 0, 0);
                    } else {
                        const float4 *p = (const float4 *)(x + (size_t)row[c] * K + 32 * j + 8 * t);
                        xv[u][c][0] = ok[c] ? ld_act4(p) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                        xv[u][c][1] = ok[c] ? ld_act4(p + 1) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    }
                }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (j0 + TC_WARPS * u >= KS) break;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                if constexpr (!XP) { /* the lane's own piece of its 8 values */
                    float f[8] = {xv[u][c][0].x, xv[u][c][0].y, xv[u][c][0].z, xv[u][c][0].w, xv[u][c][1].x, xv[u][c][1].y, xv[u][c][1].z, xv[u][c][1].w};
                    uint32_t p[3][4];
                    tc_split<3>(f, p);
                    pv[u][c] = q[c] == 0 ? make_uint4(p[0][0], p[0][1], p[0][2], p[0][3])
                               : q[c] == 1 ? make_uint4(p[1][0], p[1][1], p[1][2], p[1][3])
                                           : make_uint4(p[2][0], p[2][1], p[2][2], p[2][3]);
                }
                const uint4 b = pv[u][c];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    const uint4 lo = wv[u][mt][0], hi = wv[u][mt][1];
                    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    mma_bf16(s, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
                    mma_bf16(s, lo.z, hi.z, lo.w, hi.w, b.z, b.w);
                    float *a = acc[mt][c];
                    a[0] = a[0] + s[0]; a[1] = a[1] + s[1]; a[2] = a[2] + s[2]; a[3] = a[3] + s[3];
                }
            }
        }
    }
    if (warp >= KS) pdl_start(); /* a warp without k-steps */
    /* thread (o, i) = (tid % 16, tid / 16): output row o of the tile, x row i of the chunk */
    const int o = threadIdx.x & 15, i = threadIdx.x >> 4, r = sg.o0 + o;
    float y[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        if (mt) __syncthreads(); /* (sums reused) */
        /* C fragment: acc[mt][c][e] is output g (+ 8 for e = 2, 3) of column 8 c + 2 t (+ 1 for odd e) */
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int e = 0; e < 4; e++) sums[warp][g + (e & 2 ? 8 : 0)][8 * c + 2 * t + (e & 1)] = acc[mt][c][e];
        __syncthreads();
        float v[3] = {0.0f, 0.0f, 0.0f};
        if (i < nr)
#pragma unroll
            for (int p = 0; p < 3; p++) {
                const int col = 3 * i + p;
                auto w = [&](int ww) { return sums[ww][o][col]; };
                v[p] = ((w(0) + w(4)) + (w(2) + w(6))) + ((w(1) + w(5)) + (w(3) + w(7)));
            }
        y[mt] = (v[0] + v[1]) + v[2];
    }
    if (i >= nr) return; /* (a half-warp: one row i) */
    const unsigned half = 0xffffu << (threadIdx.x & 16);
    if (mm.ss_in) { /* norm pieces: the sums of nw * x scaled by the row's 1 / rms */
        const float rs = np_rscale(mm.ss_in + (size_t)(i0 + i) * (K / 16), K, mm.eps, o, half);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) y[mt] = y[mt] * rs;
    }
    if (sw) {
        if (r >= sg.O) return;
        const size_t off = (size_t)(i0 + i) * sg.O + r;
        const float a = silu_mul(y[0], y[MT - 1]);
        mm.out[1][off] = y[MT - 1];
        mm.out[0][off] = a;
        if (mm.xp_out) xp_store(mm.xp_out, i0 + i, r, sg.O, a); /* down_proj's pieces */
        return;
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const int rm = r + 16 * mt;
        if (rm >= sg.O) break;
        const size_t off = (size_t)(i0 + i) * sg.O + rm;
        float v = y[mt];
        if (mm.add) v = sg.out[off] + v;
        sg.out[off] = v;
        if (mm.np_out) { /* the next matmul_norm's pieces and tile squares (O % 16 == 0: the break is the half-warp's) */
            xp_store(mm.np_out, i0 + i, rm, sg.O, bf16_bits(((const uint16_t *)mm.np_norm)[rm]) * v);
            const float q = np_tile_sum(v * v, half);
            if (o == 0) mm.ss_out[(size_t)(i0 + i) * (sg.O / 16) + rm / 16] = q;
        }
    }
}
