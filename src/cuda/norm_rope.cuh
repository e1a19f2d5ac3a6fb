/* norm_rope.cuh - RMSNorm, RoPE, the KV write and their fusions (add_rmsnorm, qk_norm_rope_kv).
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

/* 1 / rms of a row from each lane's sum of squares ss (every lane of the warp must call it) */
__device__ __forceinline__ float rms_warp_scale(float ss, int dim, float eps) { return 1.0f / sqrtf(warp_sum(ss) / (float)dim + eps); }
/* rows of dim <= 256: one warp per row, 8 rows per block */
/* One row's RMSNorm by one warp (lane k takes k, k + 32, ...). The separate and the fused
 * kernels below all call this (and rms_row_block, rope_rot), so fusing changes no bit. */
__device__ __forceinline__ void rms_row_warp(float *oi, const float *xi, const void *w, int dt, int dim, float eps, int lane) {
    float ss = 0.0f;
    for (int k = lane; k < dim; k += 32) ss = fmaf(xi[k], xi[k], ss);
    const float r = rms_warp_scale(ss, dim, eps);
    for (int k = lane; k < dim; k += 32) oi[k] = weight_at(w, dt, k) * (xi[k] * r);
}

__global__ void k_rmsnorm_warp(float *out, const float *x, const void *w, int dt, int n, int dim, float eps) {
    pdl_start();
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= n) return;
    rms_row_warp(out + (size_t)row * dim, x + (size_t)row * dim, w, dt, dim, eps, lane);
}

/* 1 / rms of a row from each thread's sum of squares ss: the lanes by warp_sum, the 8 warps in
 * order (every thread of the block must call it) */
__device__ __forceinline__ float rms_block_scale(float ss, int dim, float eps) {
    __shared__ float part[8];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) t += part[j];
    return 1.0f / sqrtf(t / (float)dim + eps);
}

/* larger rows: one block of 256 per row */
__device__ __forceinline__ void rms_row_block(float *oi, const float *xi, const void *w, int dt, int dim, float eps) {
    float ss = 0.0f;
    for (int k = threadIdx.x; k < dim; k += 256) ss = fmaf(xi[k], xi[k], ss);
    const float r = rms_block_scale(ss, dim, eps);
    for (int k = threadIdx.x; k < dim; k += 256) oi[k] = weight_at(w, dt, k) * (xi[k] * r);
}

/* rms_row_block (and add_rms before it: x += y) with the row in registers, for dim <= 256 *
 * RMS_REG: every load of the row, of y and of the weights is issued at once (one memory
 * latency, not one per pass), and the arithmetic is rms_row_block's (and k_add's) exactly.
 * out may be x or y (all of both is read before out is written). */
#define RMS_REG 20 /* hidden sizes up to 5120 */
template <bool ADD>
__device__ __forceinline__ void rms_row_block_reg(float *xi, const float *yi, float *oi, const void *w, int dt, int dim, float eps) {
    float v[RMS_REG], wv[RMS_REG];
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        v[r] = k < dim ? xi[k] : 0.0f;
    }
    if (ADD) {
        float yv[RMS_REG];
#pragma unroll
        for (int r = 0; r < RMS_REG; r++) {
            const int k = threadIdx.x + 256 * r;
            yv[r] = k < dim ? yi[k] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < RMS_REG; r++) {
            const int k = threadIdx.x + 256 * r;
            if (k < dim) xi[k] = v[r] = v[r] + yv[r];
        }
    }
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        wv[r] = k < dim ? weight_at(w, dt, k) : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int r = 0; r < RMS_REG; r++)
        if (threadIdx.x + 256 * r < dim) ss = fmaf(v[r], v[r], ss);
    const float rs = rms_block_scale(ss, dim, eps);
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        if (k < dim) oi[k] = wv[r] * (v[r] * rs);
    }
}

__global__ void __launch_bounds__(256) k_rmsnorm_block(float *out, const float *x, const void *w, int dt, int dim, float eps) {
    pdl_start();
    if (dim <= 256 * RMS_REG) /* (without ADD x is only read) */
        rms_row_block_reg<false>((float *)x + (size_t)blockIdx.x * dim, NULL, out + (size_t)blockIdx.x * dim, w, dt, dim, eps);
    else rms_row_block(out + (size_t)blockIdx.x * dim, x + (size_t)blockIdx.x * dim, w, dt, dim, eps);
}

/* fused x += y; out = rmsnorm(x) (out may be y): each thread adds exactly the elements it
 * then normalises, so no other thread's write is awaited; the add is k_add's */
__global__ void k_add_rmsnorm_warp(float *x, const float *y, float *out, const void *w, int dt, int n, int dim, float eps) {
    pdl_start();
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= n) return;
    float *xi = x + (size_t)row * dim;
    const float *yi = y + (size_t)row * dim;
    for (int k = lane; k < dim; k += 32) xi[k] += yi[k];
    rms_row_warp(out + (size_t)row * dim, xi, w, dt, dim, eps, lane);
}

__global__ void __launch_bounds__(256) k_add_rmsnorm_block(float *x, const float *y, float *out, const void *w, int dt, int dim, float eps) {
    pdl_start();
    float *xi = x + (size_t)blockIdx.x * dim;
    const float *yi = y + (size_t)blockIdx.x * dim;
    if (dim <= 256 * RMS_REG) {
        rms_row_block_reg<true>(xi, yi, out + (size_t)blockIdx.x * dim, w, dt, dim, eps);
        return;
    }
    for (int k = threadIdx.x; k < dim; k += 256) xi[k] += yi[k];
    rms_row_block(out + (size_t)blockIdx.x * dim, xi, w, dt, dim, eps);
}

/* x [n][n_heads][head_dim] rotated in place by pos[i] (rotate-half) */
/* a rope pair (a, b) rotated by the angle ang */
__device__ __forceinline__ void rope_rot(float &a, float &b, float ang) {
    float s, c;
    sincosf(ang, &s, &c);
    const float x = a, y = b;
    a = x * c - y * s;
    b = y * c + x * s;
}
/* pair j of one head vector v rotated by position p */
__device__ __forceinline__ void rope_pair(float *v, float p, const float *inv_freq, int j, int half) { rope_rot(v[j], v[j + half], p * inv_freq[j]); }

__global__ void k_rope(float *x, const int32_t *pos, const float *inv_freq, int n_heads, int head_dim) {
    pdl_start();
    const int i = blockIdx.x, half = head_dim / 2;
    const float p = (float)pos[i];
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        const int h = t / half, j = t % half;
        rope_pair(x + ((size_t)i * n_heads + h) * head_dim, p, inv_freq, j, half);
    }
}

/* The attention input of one layer in one launch (rmsnorm q and k per head, rope q and k,
 * kv_write): token blockIdx.x, one warp per head (q heads first, then k heads; blockIdx.y
 * picks 8 of them). The k-head warps also write their k head and the matching v head to the
 * cache. Same functions as the separate kernels, so the same bits (head_dim <= 256).
 * R > 0 (head_dim = 32 R, R even): the head in registers, lane l holding elements l + 32 r;
 * a rope pair (j, j + head_dim / 2) then sits in one lane, so every load is issued at once
 * and nothing is read back; the arithmetic is rms_row_warp's and rope_pair's exactly. */
template <int R>
__global__ void __launch_bounds__(256) k_qk_norm_rope_kv(float *q, float *k, const float *v, const void *qw, const void *kw, int dt_q,
                                                         int dt_k, float eps, const int32_t *pos, const float *inv_freq, float *kc,
                                                         float *vc, const int32_t *slot, int layer, int n_slots, int max_ctx,
                                                         int n_heads, int n_kv_heads, int head_dim) {
    pdl_start();
    const int i = blockIdx.x, lane = threadIdx.x & 31, hh = blockIdx.y * 8 + (threadIdx.x >> 5), half = head_dim / 2;
    if (hh >= n_heads + n_kv_heads) return;
    const bool is_q = hh < n_heads;
    const int h = is_q ? hh : hh - n_heads;
    float *hv = is_q ? q + ((size_t)i * n_heads + h) * head_dim : k + ((size_t)i * n_kv_heads + h) * head_dim;
    const void *w = is_q ? qw : kw;
    const int dt = is_q ? dt_q : dt_k, kv_dim = n_kv_heads * head_dim;
    const float *vh = v + (size_t)i * kv_dim + (size_t)h * head_dim;
    if constexpr (R > 0) {
        float x[R], wv[R], vv[R], fr[R / 2];
#pragma unroll
        for (int r = 0; r < R; r++) {
            x[r] = hv[lane + 32 * r];
            wv[r] = weight_at(w, dt, lane + 32 * r);
            vv[r] = is_q ? 0.0f : vh[lane + 32 * r];
        }
#pragma unroll
        for (int r = 0; r < R / 2; r++) fr[r] = inv_freq[lane + 32 * r];
        const float p = (float)pos[i];
        float ss = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) ss = fmaf(x[r], x[r], ss);
        const float rs = rms_warp_scale(ss, head_dim, eps);
#pragma unroll
        for (int r = 0; r < R; r++) x[r] = wv[r] * (x[r] * rs);
#pragma unroll
        for (int r = 0; r < R / 2; r++) rope_rot(x[r], x[r + R / 2], p * fr[r]); /* rope_pair of j = lane + 32 r */
#pragma unroll
        for (int r = 0; r < R; r++) hv[lane + 32 * r] = x[r];
        if (is_q) return;
        const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim + (size_t)h * head_dim;
#pragma unroll
        for (int r = 0; r < R; r++) {
            kc[o + lane + 32 * r] = x[r];
            vc[o + lane + 32 * r] = vv[r];
        }
        return;
    }
    rms_row_warp(hv, hv, w, dt, head_dim, eps, lane);
    __syncwarp(); /* rope reads pairs written by other lanes */
    const float p = (float)pos[i];
    for (int j = lane; j < half; j += 32) rope_pair(hv, p, inv_freq, j, half);
    if (is_q) return;
    __syncwarp();
    const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim + (size_t)h * head_dim;
    for (int c = lane; c < head_dim; c += 32) {
        kc[o + c] = hv[c];
        vc[o + c] = vh[c];
    }
}

__global__ void k_kv_write(float *kc, float *vc, const float *k, const float *v, const int32_t *slot, const int32_t *pos, int layer,
                           int n_slots, int max_ctx, int kv_dim) {
    pdl_start();
    const int i = blockIdx.x;
    const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kc[o + c] = k[(size_t)i * kv_dim + c];
        vc[o + c] = v[(size_t)i * kv_dim + c];
    }
}
