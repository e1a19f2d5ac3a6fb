/* matmul_sk.cuh - the streamed tensor-core product (opt-in, DSPARK_CUDA_MM_SK).
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

/* ---- the streamed tensor-core product (opt-in, DSPARK_CUDA_MM_SK; BF16, <= CUDA_SMALL_N rows) ----
 * k_matmul_tc's mma layout and x split, with the weights (and, for <= 8 rows, x) brought into
 * shared memory by cp.async through a ring of `ring` stages, so ring - 1 stages (8 KB of
 * weights each) stay in flight per block without registers holding them, and x's latency is
 * hidden with them. Work: a 16-row tile's K is cut into PPT parts of at most SK_PART_KSTEPS
 * k-steps (PPT = 1 up to K 4096), an item is one (tile, part), and a block takes `ipb`
 * consecutive items (a launch setting; no value depends on it). A stage is 8 KPS k-steps of
 * one item; k-step j of a part belongs to warp j % 8, as in k_matmul_tc.
 * Arithmetic of one output, fixed by K (and KPS) alone: per part, each warp's k-steps in
 * ascending order into one F32 sum (each k-step's 6 mma into a fresh accumulator), the 8
 * warps' sums added in k_matmul_tc's tree, then the PPT part sums added in part order (the
 * last block to finish a part of the tile, found by an atomic counter, adds them from
 * `scratch`). So rows stay bitwise the same alone or in a block; with PPT = 1 the values are
 * k_matmul_tc's exactly. Blocks call griddepcontrol.wait after their first weight stages are
 * requested: launched with programmatic stream serialization (DSPARK_CUDA_PDL), the weight
 * loads overlap the end of the kernel before. */
#define SK_PART_KSTEPS 128 /* k-steps per part at most: K 4096 */
#define SK_WPAD 32         /* bf16 of padding per smem weight row: fragment reads hit 8 banks apart */
#define SK_XPAD 4          /* floats of padding per smem x row */
#define SK_MAX_RING 8

typedef struct {
    MmMulti mm;
    const float *x;
    int n, K, KS, SPT, PPT, items, ipb, ring;
    float *scratch; /* [tiles * PPT][NT * 32] float4, PPT > 1 only */
    int *count;     /* [tiles], zero between launches */
} SkArgs;

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* wait until at most n groups are pending (n is an immediate in PTX) */
__device__ __forceinline__ void cp_async_wait(int n) {
    switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    }
}
/* the bulk-copy (TMA) producer: one thread requests a stage's rows, an mbarrier per slot
 * counts the bytes in */
__device__ __forceinline__ unsigned smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
    asm volatile("{\n\t.reg .pred p;\n\tLAB_WAIT:\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t@!p bra LAB_WAIT;\n\t}"
                 ::"r"(smem_u32(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void *dst, const void *src, unsigned bytes, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(bytes), "r"(smem_u32(b))
                 : "memory");
}

/* the stages of part p of a tile: [p SPT / PPT, (p + 1) SPT / PPT) */
__device__ __forceinline__ int sk_stage_begin(const SkArgs &a, int part) { return (int)((long long)part * a.SPT / a.PPT); }

template <int NT, int KPS, bool XS, bool TMA>
__global__ void __launch_bounds__(256, 2) k_matmul_sk(SkArgs a) {
    constexpr int KST = 8 * KPS;             /* k-steps per stage */
    constexpr int WROW = 32 * KST + SK_WPAD; /* bf16 per smem weight row */
    constexpr int XROW = 32 * KST + SK_XPAD; /* floats per smem x row */
    constexpr int T = NT;
    extern __shared__ __align__(16) unsigned char sk_smem[];
    __shared__ float4 red[TC_WARPS / 2][T][32];
    __shared__ __align__(8) uint64_t bar[SK_MAX_RING]; /* TMA: slot r's stage is in */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int n = a.n, K = a.K;
    if (TMA) {
        if (tid == 0) {
            for (int r = 0; r < a.ring; r++) mbar_init(&bar[r], 1);
            mbar_fence_init();
        }
        __syncthreads();
    }
    const size_t slot_bytes = (size_t)16 * WROW * 2 + (XS ? (size_t)n * XROW * 4 : 0);
    const int item0 = blockIdx.x * a.ipb, item1 = item0 + a.ipb < a.items ? item0 + a.ipb : a.items;

    /* the issue cursor runs ring - 1 stages ahead of the compute cursor */
    int is_item = item0, is_s = sk_stage_begin(a, item0 % a.PPT), is_end = sk_stage_begin(a, item0 % a.PPT + 1), is_slot = 0;
    auto issue = [&](bool with_x) {
        if (is_item < item1) {
            unsigned char *slot = sk_smem + (size_t)is_slot * slot_bytes;
            const MmSeg sg = mm_segment<16>(a.mm, is_item / a.PPT);
            const uint16_t *w = (const uint16_t *)sg.w;
            const int k0 = is_s * 32 * KST, nk = K - k0 < 32 * KST ? K - k0 : 32 * KST;
            uint16_t *sw = (uint16_t *)slot;
            if (TMA) {
                if (tid == 0) {
                    uint64_t *b = &bar[is_slot];
                    const unsigned bytes = 16u * nk * 2 + (XS && with_x ? (unsigned)n * nk * 4 : 0u);
                    if (with_x) mbar_arrive_expect_tx(b, bytes);
                    else mbar_expect_tx(b, bytes);
                    for (int row = 0; row < 16; row++) {
                        const int r = sg.o0 + row < sg.O ? sg.o0 + row : sg.O - 1;
                        bulk_g2s(sw + row * WROW, w + (size_t)r * K + k0, (unsigned)nk * 2, b);
                    }
                    if (XS && with_x) {
                        float *sx = (float *)(slot + (size_t)16 * WROW * 2);
                        for (int row = 0; row < n; row++) bulk_g2s(sx + row * XROW, a.x + (size_t)row * K + k0, (unsigned)nk * 4, b);
                    }
                }
            } else {
                for (int c = tid; c < 16 * 4 * KST; c += 256) { /* 16-byte chunks: 4 KST per row */
                    const int row = c / (4 * KST), col = c % (4 * KST);
                    const int r = sg.o0 + row < sg.O ? sg.o0 + row : sg.O - 1;
                    if (col * 8 < nk) cp_async16(sw + row * WROW + col * 8, w + (size_t)r * K + k0 + col * 8);
                }
            }
            if (!TMA && XS && with_x) {
                float *sx = (float *)(slot + (size_t)16 * WROW * 2);
                for (int c = tid; c < n * 8 * KST; c += 256) {
                    const int row = c / (8 * KST), col = c % (8 * KST);
                    if (col * 4 < nk) cp_async16(sx + row * XROW + col * 4, a.x + (size_t)row * K + k0 + col * 4);
                }
            }
            if (++is_s == is_end && ++is_item < item1) {
                is_s = sk_stage_begin(a, is_item % a.PPT);
                is_end = sk_stage_begin(a, is_item % a.PPT + 1);
            }
            is_slot = is_slot + 1 == a.ring ? 0 : is_slot + 1;
        }
    };
    auto issue_x = [&](int slot_i, int item, int s) { /* x of a stage whose weights were issued before the wait */
        if (item >= item1) return;
        float *sx = (float *)(sk_smem + (size_t)slot_i * slot_bytes + (size_t)16 * WROW * 2);
        const int k0 = s * 32 * KST, nk = K - k0 < 32 * KST ? K - k0 : 32 * KST;
        if (TMA) { /* the arrive that completes the slot (with x's bytes when x is staged) */
            if (tid == 0) {
                mbar_arrive_expect_tx(&bar[slot_i], XS ? (unsigned)n * nk * 4 : 0u);
                if (XS)
                    for (int row = 0; row < n; row++) bulk_g2s(sx + row * XROW, a.x + (size_t)row * K + k0, (unsigned)nk * 4, &bar[slot_i]);
            }
        } else if (XS) {
            for (int c = tid; c < n * 8 * KST; c += 256) {
                const int row = c / (8 * KST), col = c % (8 * KST);
                if (col * 4 < nk) cp_async16(sx + row * XROW + col * 4, a.x + (size_t)row * K + k0 + col * 4);
            }
        }
    };
    /* prologue: the weights of the first ring - 1 stages (independent of the kernel before),
     * then the wait, then their x, one commit group per stage (the first holds all weights) */
    int pro_item[SK_MAX_RING], pro_s[SK_MAX_RING];
    for (int q = 0; q < a.ring - 1; q++) {
        pro_item[q] = is_item;
        pro_s[q] = is_s;
        issue(false);
    }
    pdl_wait();
    pdl_trigger();
    for (int q = 0; q < a.ring - 1; q++) {
        issue_x(q, pro_item[q], pro_s[q]);
        if (!TMA) cp_async_commit();
    }

    const float *xr[NT];
    bool xok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        xok[nt] = 8 * nt + g < n;
        xr[nt] = a.x + (size_t)(xok[nt] ? 8 * nt + g : 0) * K + 8 * t;
    }
    float acc[T][4];
#pragma unroll
    for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
    int slot_i = 0;
    unsigned parity = 0; /* TMA: of the slots' barriers in this pass over the ring */
    for (int item = item0; item < item1; item++) {
        const int tile = item / a.PPT, part = item % a.PPT;
        const int s_end = sk_stage_begin(a, part + 1);
        for (int s = sk_stage_begin(a, part); s < s_end; s++) {
            if (TMA) mbar_wait(&bar[slot_i], parity);
            else cp_async_wait(a.ring - 2);
            __syncthreads(); /* this stage is in; every warp is done with the slot issue() refills */
            issue(true);
            if (!TMA) cp_async_commit();
            const unsigned char *slot = sk_smem + (size_t)slot_i * slot_bytes;
            const uint16_t *sw = (const uint16_t *)slot;
            const float *sx = (const float *)(slot + (size_t)16 * WROW * 2);
#pragma unroll
            for (int qk = 0; qk < KPS; qk++) {
                const int m = warp + 8 * qk, j = s * KST + m;
                if (j >= a.KS) break;
                const uint4 lo = *(const uint4 *)(sw + g * WROW + m * 32 + 8 * t);
                const uint4 hi = *(const uint4 *)(sw + (g + 8) * WROW + m * 32 + 8 * t);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    float4 xa = make_float4(0.0f, 0.0f, 0.0f, 0.0f), xb = xa;
                    if (xok[nt]) {
                        if (XS) {
                            const float4 *xp = (const float4 *)(sx + g * XROW + m * 32 + 8 * t);
                            xa = xp[0];
                            xb = xp[1];
                        } else {
                            const float4 *xp = (const float4 *)(xr[nt] + (size_t)j * 32);
                            xa = ld_act4(xp);
                            xb = ld_act4(xp + 1);
                        }
                    }
                    float f[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
                    uint32_t p[3][4];
                    tc_split<3>(f, p);
                    tc_kstep<3>(acc[nt], lo, hi, p);
                }
            }
            if (++slot_i == a.ring) {
                slot_i = 0;
                parity ^= 1u;
            }
        }
        tc_warp_tree<T>(acc, red, warp, lane); /* the item's warp sums */
        if (warp == 0) {
            bool write = true;
            if (a.PPT > 1) { /* park this part; the tile's last part to finish adds them in order */
                float4 *sp = (float4 *)a.scratch + (size_t)item * T * 32;
#pragma unroll
                for (int q = 0; q < T; q++) __stcg(sp + q * 32 + lane, make_float4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]));
                __threadfence();
                __syncwarp();
                int done = 0;
                if (lane == 0) done = atomicAdd(a.count + tile, 1) == a.PPT - 1;
                write = __shfl_sync(0xffffffffu, done, 0) != 0;
                if (write) {
                    if (lane == 0) a.count[tile] = 0; /* ready for the next launch */
                    __threadfence();
                    const float4 *tp = (const float4 *)a.scratch + (size_t)tile * a.PPT * T * 32;
#pragma unroll
                    for (int q = 0; q < T; q++) {
                        float4 v = __ldcg(tp + q * 32 + lane);
                        for (int pp = 1; pp < a.PPT; pp++) {
                            const float4 u = __ldcg(tp + ((size_t)pp * T + q) * 32 + lane);
                            v.x = v.x + u.x; v.y = v.y + u.y; v.z = v.z + u.z; v.w = v.w + u.w;
                        }
                        acc[q][0] = v.x; acc[q][1] = v.y; acc[q][2] = v.z; acc[q][3] = v.w;
                    }
                }
            }
            if (write) tc_store<1, NT>(mm_segment<16>(a.mm, tile), acc, n, g, t, false);
        }
#pragma unroll
        for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
    }
    if (!TMA) cp_async_wait(0);
}
