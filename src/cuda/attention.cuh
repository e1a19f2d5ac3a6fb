/* attention.cuh - attention over a flattened batch against per-sequence KV caches (keys in
 * splits, merged in order).
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

#define ATT_WARPS 8
#define ATT_SPLITS 16  /* the most splits a token has (a (token, head block) has at most this many blocks: cu_attention) */
/* keys per chunk: the backend's att_chunk (DSPARK_CUDA_ATT_CHUNK) or, where that is 0 (the
 * default), 128 up to 1024 keys and 256 beyond (H200, Qwen3-4B shape: a block should take
 * 128-256 keys; at 32 per chunk a decode step at context 512 was 3.98 ms, at 128 3.81 ms;
 * docs/bench-cuda.md). Split z takes chunks z, z + ATT_SPLITS, ... */
__device__ __forceinline__ int att_chunk_log2(int len) { return len <= 1024 ? 7 : 8; } /* the default chunk's */
__device__ __forceinline__ int att_chunk_of(int len, int chunk) { return chunk > 0 ? chunk : 1 << att_chunk_log2(len); }

/* the splits that hold keys of a token with len keys (blocks past them exit at once; the rest
 * are not merged): like the chunk, a property of the token alone, so a row is the same alone or in a
 * batch */
__device__ __forceinline__ int att_splits(int len, int chunk) {
    const int lg = att_chunk_log2(len), c = chunk > 0 ? (len + chunk - 1) / chunk : (len + (1 << lg) - 1) >> lg; /* (the default: no division) */
    return c < ATT_SPLITS ? c : ATT_SPLITS;
}

/* where split z's part of (token i, head h) starts in part: [head_dim] sum, max, normaliser */
__device__ __forceinline__ size_t att_part(int i, int h, int z, int n_heads, int head_dim) {
    return (((size_t)i * n_heads + h) * ATT_SPLITS + z) * (head_dim + 2);
}

/* the weights that merge nz <= N partial softmaxes (part z: its max m_of(z) and normaliser
 * l_of(z)), in part order: M = the largest max, f[z] = 2^(m_z - M) (the maxima are in log2
 * units; 0 for a part without keys); returns L = sum l_z f[z]. The warps' merge in
 * k_attention and the splits' in att_merge are this one arithmetic. */
template <int N, typename MOf, typename LOf>
__device__ __forceinline__ float att_weights(int nz, MOf m_of, LOf l_of, float (&f)[N], float &M) {
    M = -INFINITY;
#pragma unroll
    for (int z = 0; z < N; z++)
        if (z < nz) M = fmaxf(M, m_of(z));
    float L = 0.0f;
#pragma unroll
    for (int z = 0; z < N; z++) {
        if (z >= nz) break;
        const float mz = m_of(z);
        f[z] = mz == -INFINITY ? 0.0f : exp2f(mz - M);
        L += l_of(z) * f[z];
    }
    return L;
}

/* out of (head h, token i): the nz splits' partial results merged in split order (read from
 * L2: the fused path reads what other blocks of its own launch wrote) */
__device__ __forceinline__ void att_merge(float *out, uint16_t *xp, const float *part, int h, int i, int n_heads, int head_dim, int nz,
                                          int tid, int nthreads) {
    const float *p = part + att_part(i, h, 0, n_heads, head_dim);
    float M, f[ATT_SPLITS];
    const float L = att_weights<ATT_SPLITS>(
        nz, [&](int z) { return __ldcg(p + z * (head_dim + 2) + head_dim); }, [&](int z) { return __ldcg(p + z * (head_dim + 2) + head_dim + 1); },
        f, M);
    const float inv = 1.0f / L;
    float *oi = out + ((size_t)i * n_heads + h) * head_dim;
    for (int d = tid; d < head_dim; d += nthreads) {
        float o = 0.0f;
#pragma unroll
        for (int z = 0; z < ATT_SPLITS; z++)
            if (z < nz) o += __ldcg(p + z * (head_dim + 2) + d) * f[z];
        oi[d] = o * inv;
        if (xp) xp_store(xp, i, (size_t)h * head_dim + d, (size_t)n_heads * head_dim, o * inv); /* o_proj's pieces */
    }
}

/* the fused merge's turnstile: the block adds the splits it did (zb, zb + gridDim.z, ... below
 * total) to its counter; true in the block that completes total, which resets the counter for
 * the next launch and may then read every other block's parts. One thread's acq_rel atomic
 * between two barriers orders them (the pattern of cooperative groups' grid sync and CUTLASS's
 * semaphore): the barrier puts the block's part stores before its release, and the last block's
 * acquire before its reads (ld.global.cg, from L2). A __threadfence in every thread before and
 * after (MEMBAR.SC.GPU and an L1 invalidation each) did the same 0.6 us a launch slower (H100,
 * one token at context 512: k_attention 12.3 -> 11.7 us; docs/bench-cuda.md). */
__device__ __forceinline__ bool att_last_block(int *cnt, int zb, int total) {
    const int units = (total - zb + gridDim.z - 1) / gridDim.z;
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atom_add_acq_rel(cnt, units) == total - units;
        if (last) *cnt = 0;
    }
    __syncthreads();
    return last;
}

/* the K and V rows (head_dim floats each, 16-byte aligned) of the block's keys into L2, one
 * bulk prefetch per row: issued before pdl_wait so their memory latency overlaps the kernel
 * before (a hint that moves no value into the kernel: L2 is coherent, and a row the kernel
 * before writes, this step's own keys, is refreshed there) */
__device__ __forceinline__ void att_prefetch(const float *kc, const float *vc, size_t base, int kv_dim, int head_dim, int len, int z,
                                             int chunk) {
    for (int c0 = z * chunk; c0 < len; c0 += ATT_SPLITS * chunk) {
        const int n = chunk < len - c0 ? chunk : len - c0;
        for (int r = threadIdx.x; r < 2 * n; r += blockDim.x) {
            const float *row = (r < n ? kc : vc) + base + (size_t)(c0 + (r < n ? r : r - n)) * kv_dim;
            prefetch_l2(row, (uint32_t)head_dim * 4);
        }
    }
}

/* a lane's dims: V4 (DPL % 4 == 0, head_dim % 4 == 0) 4 consecutive ones per 128, one float4
 * load a K or V row piece; else one in 32 (lane + 32 t) */
template <bool V4>
__device__ __forceinline__ int att_dim(int lane, int t) { return V4 ? 128 * (t >> 2) + 4 * lane + (t & 3) : lane + 32 * t; }

/* a K or V row's DPL values of this lane; doff[t]: the lane's dims clamped into the row (a lane
 * past head_dim reads dim 0: its q is 0 and its acc never stored, so no load is predicated) */
template <int DPL, bool V4>
__device__ __forceinline__ void att_row(float (&r)[DPL], const float *row, const int (&doff)[DPL]) {
    if constexpr (V4) {
#pragma unroll
        for (int t = 0; t < DPL; t += 4) {
            const float4 v = *(const float4 *)(row + doff[t]);
            r[t] = v.x, r[t + 1] = v.y, r[t + 2] = v.z, r[t + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int t = 0; t < DPL; t++) r[t] = row[doff[t]];
    }
}

/* one group of KB keys of a warp (keys j0, j0 + ATT_WARPS, ...) into the GQ heads' online
 * softmax. MASK: some of the keys are past c1 (the chunk's end); their rows are read at c1 - 1
 * (written, so finite: 0 x v adds nothing) and their scores are -inf. Scores are in log2 units
 * (q carries 1/sqrt(head_dim) log2(e)); the running max moves once per SG keys. Per key and
 * head this is the same arithmetic at every KB and with or without MASK, so a row's bits do not
 * depend on GQ. */
template <int DPL, int GQ, bool V4, bool MASK, int KB, int SG>
__device__ __forceinline__ void att_keys(const float (&qv)[GQ][DPL], float (&acc)[GQ][DPL], float (&m)[GQ], float (&l)[GQ],
                                         const float *kb, const float *vb, const int (&doff)[DPL], int kv_dim, int j0, int c1) {
    float kr[KB][DPL], vr[KB][DPL];
#pragma unroll
    for (int u = 0; u < KB; u++) {
        int j = j0 + ATT_WARPS * u;
        if (MASK) j = j < c1 ? j : c1 - 1;
        att_row<DPL, V4>(kr[u], kb + (size_t)j * kv_dim, doff);
        att_row<DPL, V4>(vr[u], vb + (size_t)j * kv_dim, doff);
    }
    float sc[KB * GQ]; /* the group's scores first (the reductions interleave), then key by key */
#pragma unroll
    for (int u = 0; u < KB; u++)
#pragma unroll
        for (int g = 0; g < GQ; g++) {
            float s = 0.0f;
#pragma unroll
            for (int t = 0; t < DPL; t++) s = fmaf(qv[g][t], kr[u][t], s);
            sc[u * GQ + g] = s;
        }
    warp_sum_n<KB * GQ>(sc);
#pragma unroll
    for (int u0 = 0; u0 < KB; u0 += SG) {
        if (MASK && j0 + ATT_WARPS * u0 >= c1) break;
#pragma unroll
        for (int g = 0; g < GQ; g++) {
            float s2[SG], mg = m[g];
#pragma unroll
            for (int u = 0; u < SG; u++) {
                s2[u] = !MASK || j0 + ATT_WARPS * (u0 + u) < c1 ? sc[(u0 + u) * GQ + g] : -INFINITY;
                mg = fmaxf(mg, s2[u]);
            }
            if (mg > m[g]) {
                const float corr = ex2_ftz(m[g] - mg);
                l[g] *= corr;
#pragma unroll
                for (int t = 0; t < DPL; t++) acc[g][t] *= corr;
                m[g] = mg;
            }
#pragma unroll
            for (int u = 0; u < SG; u++) {
                const float p = ex2_ftz(s2[u] - m[g]);
                l[g] += p;
#pragma unroll
                for (int t = 0; t < DPL; t++) acc[g][t] = fmaf(p, vr[u0 + u][t], acc[g][t]);
            }
        }
    }
}

/* a split's partial result from its warps' (sacc, sm_m, sm_l, written by k_attention; by
 * k_attention_r8 its key streams'), merged in warp order into part: [hd] sum, [hd] max, [hd + 1]
 * normaliser per head; the GQ heads side by side, head g on threads [g tph, (g + 1) tph) of the
 * block's NT. Not inlined: in k_attention's loop over splits its registers added to the key
 * loop's (the 8-token instance: 120 against 104) */
template <int GQ, int NT = 32 * ATT_WARPS>
__device__ __noinline__ void att_store_part(float *part, const float *sacc, const float *sm_m, const float *sm_l, int i, int n_heads, int h0,
                                            int z, int head_dim) {
    constexpr int tph = NT / GQ;
    const int g = threadIdx.x / tph, tl = threadIdx.x % tph;
    float M, f[ATT_WARPS];
    const float L = att_weights<ATT_WARPS>(ATT_WARPS, [&](int w) { return sm_m[w * GQ + g]; }, [&](int w) { return sm_l[w * GQ + g]; }, f, M);
    float *pz = part + att_part(i, h0 + g, z, n_heads, head_dim);
    for (int d = tl; d < head_dim; d += tph) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) o += sacc[(w * GQ + g) * head_dim + d] * f[w];
        pz[d] = o;
    }
    if (tl == 0) { pz[head_dim] = M; pz[head_dim + 1] = L; }
}

/* Partial attention of (GQ query heads h0.. of one KV head, token i, splits z = blockIdx.z,
 * z + gridDim.z, ...): warp w takes keys w, w + 8, ... of a split's chunks in groups of KB
 * (att_keys); the warps are merged in order into the split's part (att_store_part); the last
 * block of the (token, heads) to finish merges the splits (count; splits past the token's keys
 * exit at once, att_splits). GQ = 1 is the per-head kernel (4x the blocks: it wins at 1
 * token); GQ = group reads each K/V row once for the KV head's query heads. Per query head the
 * arithmetic depends neither on GQ nor on gridDim.z (the same keys per warp in the same order,
 * the same merges), so all give the same bits (DSPARK_CUDA_ATT=0/1 and DSPARK_CUDA_ATT_Z force
 * them; test_attention compares them). head_dim <= 32 DPL, GQ * DPL <= 32 for GQ > 1; V4 as
 * att_dim. */
template <int DPL, int GQ, bool V4>
__global__ void __launch_bounds__(32 * ATT_WARPS) k_attention(float *part, const float *q, const float *kc, const float *vc,
                                                              const int32_t *slot, const int32_t *kv_len, int layer, int n_slots,
                                                              int max_ctx, int kv_dim, int n_heads, int group, int head_dim, float scale,
                                                              int chunk, bool pf, float *out, uint16_t *xp, int *count) {
    DYN_SHARED(float, sm); /* [ATT_WARPS][GQ][head_dim] acc, [ATT_WARPS][GQ] m, [ATT_WARPS][GQ] l */
    const int h0 = blockIdx.x * GQ, i = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* this block's splits: zb, zb + gridDim.z, ... (gridDim.z <= ATT_SPLITS: fewer blocks than
     * splits where a launch has blocks enough without them, cu_attention) */
    const int zb = blockIdx.z;
    /* kv_len and slot before pdl_wait: the caller writes them at least two kernels earlier (a
     * copy at the step's start; the PDL note in ptx.cuh: once this kernel runs, the
     * one before the kernel before it has finished); q and the cache after it */
    const int len = ld_step_int(kv_len + i), nz = att_splits(len, chunk), si = ld_step_int(slot + i);
    chunk = att_chunk_of(len, chunk);
    if (zb >= nz) return; /* no keys */
    const size_t base = ((size_t)layer * n_slots + si) * max_ctx * kv_dim + (size_t)(h0 / group) * head_dim;
    /* one block per (KV head, split) of a sequence prefetches: the first query head's, of the
     * first token of a run of the sequence's tokens (its keys are the run's but for the run's
     * own, which the kernel before has just written through L2) */
    if (pf && (GQ > 1 || h0 % group == 0) && (i == 0 || ld_step_int(slot + i - 1) != si))
        for (int z = zb; z < nz; z += gridDim.z) att_prefetch(kc, vc, base, kv_dim, head_dim, len, z, chunk);
    pdl_start();
    float qv[GQ][DPL];
    int doff[DPL];
#pragma unroll
    for (int t = 0; t < DPL; t++) {
        const int d = att_dim<V4>(lane, t);
        doff[t] = d < head_dim ? d : 0;
    }
#pragma unroll
    for (int g = 0; g < GQ; g++) {
        const float *qi = q + ((size_t)i * n_heads + h0 + g) * head_dim;
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            const int d = att_dim<V4>(lane, t);
            qv[g][t] = d < head_dim ? qi[d] * scale : 0.0f;
        }
    }
    /* keys per warp loaded at once, and SG keys per softmax update (KB a multiple of SG, the
     * same SG at every GQ for a head_dim) */
    constexpr int KB = GQ > 1 ? (DPL >= 16 ? 2 : 4) : DPL <= 4 ? 8 : DPL <= 8 ? 4 : 2, SG = DPL >= 16 ? 2 : 4;
    const float *kb = kc + base, *vb = vc + base;
    float *sacc = sm, *sm_m = sm + ATT_WARPS * GQ * head_dim, *sm_l = sm_m + ATT_WARPS * GQ;
    for (int z = zb; z < nz; z += gridDim.z) {
        float acc[GQ][DPL], m[GQ], l[GQ];
#pragma unroll
        for (int g = 0; g < GQ; g++) {
#pragma unroll
            for (int t = 0; t < DPL; t++) acc[g][t] = 0.0f;
            m[g] = -INFINITY;
            l[g] = 0.0f;
        }
        for (int c0 = z * chunk; c0 < len; c0 += ATT_SPLITS * chunk) {
            const int c1 = c0 + chunk < len ? c0 + chunk : len;
            for (int j0 = c0 + warp; j0 < c1; j0 += ATT_WARPS * KB) {
                if (j0 + ATT_WARPS * (KB - 1) < c1) att_keys<DPL, GQ, V4, false, KB, SG>(qv, acc, m, l, kb, vb, doff, kv_dim, j0, c1);
                else att_keys<DPL, GQ, V4, true, KB, SG>(qv, acc, m, l, kb, vb, doff, kv_dim, j0, c1);
            }
        }
        if (z != zb) __syncthreads(); /* (the split before has read sacc) */
#pragma unroll
        for (int g = 0; g < GQ; g++) {
#pragma unroll
            for (int t = 0; t < DPL; t++) {
                const int d = att_dim<V4>(lane, t);
                if (d < head_dim) sacc[(warp * GQ + g) * head_dim + d] = acc[g][t];
            }
            if (lane == 0) { sm_m[warp * GQ + g] = m[g]; sm_l[warp * GQ + g] = l[g]; }
        }
        __syncthreads();
        att_store_part<GQ>(part, sacc, sm_m, sm_l, i, n_heads, h0, z, head_dim);
    }
    if (!count) return;
    constexpr int tph = 32 * ATT_WARPS / GQ; /* (att_store_part's) */
    const int hg = threadIdx.x / tph, tl = threadIdx.x % tph;
    /* fused merge: one counter per (token, block of heads) (the entry of its first head) */
    if (!att_last_block(count + (size_t)i * n_heads + h0, zb, nz)) return;
    att_merge(out, xp, part, h0 + hg, i, n_heads, head_dim, nz, tl, tph);
}

__global__ void k_attention_merge(float *out, uint16_t *xp, const float *part, const int32_t *kv_len, int n_heads, int head_dim, int chunk) {
    pdl_start();
    att_merge(out, xp, part, blockIdx.x, blockIdx.y, n_heads, head_dim, att_splits(kv_len[blockIdx.y], chunk), threadIdx.x, blockDim.x);
}
