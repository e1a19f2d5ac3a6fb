/* cuda_common.cuh - device helpers of the CUDA kernels: weight loads, warp sums, programmatic
 * dependent launch.
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. Its inline PTX is in ptx.cuh, which a host build of the kernels
 * (tests/cuda_emu.h, DS_CUDA_EMU) replaces with plain C++. */

#ifndef DS_CUDA_EMU
#include "ptx.cuh"
#endif

__device__ __forceinline__ float bf16_bits(uint32_t hi16) { return __uint_as_float(hi16 << 16); }

/* element i of a weight of dtype dt (DS_F32, DS_BF16, DS_F16) */
__device__ __forceinline__ float weight_at(const void *w, int dt, size_t i) {
    if (dt == DS_BF16) return bf16_bits(((const uint16_t *)w)[i]);
    if (dt == DS_F16) return __half2float(((const __half *)w)[i]);
    return ((const float *)w)[i];
}

/* BF16 matrices of K % 32 == 0 and at least 16 rows are kept in tiles on the GPU
 * (Weight.dev_layout WL_TILES; cu_upload_weight): tile T, rows 16 T .. 16 T + 15, is 16 K
 * contiguous values; in it k-step j (k = 32 j ..) is 512, half h (rows + 8 h ..) 256 and lane
 * (g, t) = (row % 8, k % 32 / 8) 8: exactly what lane 4 g + t of a k_matmul_tc warp loads for
 * that tile and k-step, so a warp's load is 512 contiguous bytes and a block streams its
 * tiles end to end (row-major, it touched 8 rows x 64 bytes 2 K bytes apart: a step's
 * products 1.6x as fast as a read in bench/bench_weight_read.cu). The last tile is padded
 * with zero rows. Offset of row r, column k: */
__host__ __device__ __forceinline__ size_t tile_at(size_t r, size_t k, size_t K) {
    return (r >> 4) * 16 * K + (k >> 5) * 512 + ((r >> 3) & 1) * 256 + ((r & 7) * 4 + ((k >> 3) & 3)) * 8 + (k & 7);
}
/* element (r, k) of a [rows][K] weight of dtype dt, in tiles or row-major */
__device__ __forceinline__ float weight_rc(const void *w, int dt, bool tiles, size_t r, size_t k, size_t K) {
    return weight_at(w, dt, tiles ? tile_at(r, k, K) : r * K + k);
}
/* 8 weights of a 16-bit dtype from one 16-byte load, widened to F32 */
template <int DT>
__device__ __forceinline__ void unpack8(uint4 u, float *o) {
    const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (DT == DS_BF16) {
            o[2 * j] = bf16_bits(v[j] & 0xffffu);
            o[2 * j + 1] = __uint_as_float(v[j] & 0xffff0000u);
        } else {
            const float2 f = __half22float2(*(const __half2 *)&v[j]);
            o[2 * j] = f.x;
            o[2 * j + 1] = f.y;
        }
    }
}

/* 8 consecutive weights from element i (16-byte aligned for BF16/F16, 32 for F32) */
template <int DT>
__device__ __forceinline__ void load8(const void *w, size_t i, float *o) {
    if (DT == DS_F32) {
        const float4 *p = (const float4 *)((const float *)w + i);
        float4 a = __ldg(p), b = __ldg(p + 1);
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    } else {
        unpack8<DT>(__ldg((const uint4 *)((const uint16_t *)w + i)), o);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* warp_sum's tree (lanes l and l ^ off added at off = 16, 8, 4, 2, 1) for each of M values
 * at once. While a lane still holds several values, the lanes with bit `off` set keep the upper
 * half of them and the others the lower half, each adding its partner's copy: M values cost
 * about M shuffles instead of 5 M, and every value gets exactly the pairs (and, float addition
 * commuting, the bits) of warp_sum. LIVE: values still held per lane. Afterwards a lane holds
 * values base + q for q < LIVE (LIVE = max(M / 32, 1)); *base is accumulated here. */
template <int M, int LIVE, int OFF>
__device__ __forceinline__ void warp_sum_multi_level(float (&a)[M], int lane, int &base) {
    if constexpr (OFF > 0) {
        if constexpr (LIVE > 1) {
            constexpr int H = LIVE / 2;
            const bool up = (lane & OFF) != 0;
#pragma unroll
            for (int q = 0; q < H; q++) {
                const float keep = up ? a[q + H] : a[q], send = up ? a[q] : a[q + H];
                a[q] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
            }
            if (up) base += H;
            warp_sum_multi_level<M, H, OFF / 2>(a, lane, base);
        } else {
            a[0] += __shfl_xor_sync(0xffffffffu, a[0], OFF);
            warp_sum_multi_level<M, 1, OFF / 2>(a, lane, base);
        }
    }
}
/* returns base: this lane holds the sums of values base .. base + max(M / 32, 1) - 1; when
 * M < 32 the lanes that differ only in the low bits hold copies and lane & (32 / M - 1) == 0
 * is the one to write */
template <int M>
__device__ __forceinline__ int warp_sum_multi(float (&a)[M], int lane) {
    int base = 0;
    warp_sum_multi_level<M, M, 16>(a, lane, base);
    return base;
}

/* warp_sum of N independent values at once, every lane getting every sum: warp_sum_multi's
 * scatter (about N shuffles instead of 5 N, each value the pairs and bits of warp_sum), then
 * each sum read from a lane that holds it (value j: lane j * 32 / N). N a power of two <= 32;
 * other N take warp_sum's tree per value, interleaved. */
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
    if constexpr (N >= 2 && N <= 32 && (N & (N - 1)) == 0) {
        warp_sum_multi(v, (int)(threadIdx.x & 31));
        const float mine = v[0];
#pragma unroll
        for (int j = 0; j < N; j++) v[j] = __shfl_sync(0xffffffffu, mine, j * (32 / N));
    } else {
#pragma unroll
        for (int off = 16; off; off >>= 1)
#pragma unroll
            for (int i = 0; i < N; i++) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
    }
}

/* swiglu's value (k_swiglu and k_matmul_tc's paired store) */
__device__ __forceinline__ float silu_mul(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (lo) in the low half: the smaller k */
    return *reinterpret_cast<const uint32_t *>(&v);
}
/* x's pieces for the column product (matmul_tc.cuh's k_matmul_col): x = h + m + l, h = bf16(x),
 * m = bf16(x - h), l = bf16(x - h - m) (tc_split's). In memory for x [n][K]: 16-byte group
 * (i K / 8 + k / 8) 3 + q holds piece q of x[i][k .. k + 7] (8 bf16, the smaller k in the low
 * half); xp_at is the uint16 index of element (i, k) of piece q */
__host__ __device__ __forceinline__ size_t xp_at(size_t i, size_t k, int q, size_t K) { return ((i * (K / 8) + k / 8) * 3 + q) * 8 + (k & 7); }
/* the 3 pieces of one value of x, stored by the op that writes x (the same bits as tc_split) */
__device__ __forceinline__ void xp_store(uint16_t *xp, size_t i, size_t k, size_t K, float v) {
#pragma unroll
    for (int q = 0; q < 3; q++) {
        const uint32_t u = bf16x2_rn(v, 0.0f) & 0xffffu;
        xp[xp_at(i, k, q, K)] = (uint16_t)u;
        v = v - __uint_as_float(u << 16);
    }
}
/* the start of a kernel with nothing to do before its inputs are ready (ptx.cuh's pdl_wait and
 * pdl_trigger) */
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
}
