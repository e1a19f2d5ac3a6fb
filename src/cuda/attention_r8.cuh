/* attention_r8.cuh - attention with 8 lanes a row (DSPARK_CUDA_ATT_R8=1; opt-in, and not yet
 * timed on a GPU: docs/bench-cuda.md, "8 lanes a row").
 * Part of backend_cuda.cu's translation unit (after attention.cuh, whose chunks, splits,
 * prefetch, turnstile and merges it shares); not a header of its own.
 *
 * k_attention gives a lane head_dim / 32 dims of every row of its block, so a score is a
 * 5-level shuffle tree and every lane runs every row's softmax: at 8 tokens and 4 query heads a
 * KV head that is about 19 instructions a (key, head) a lane, of which 8 are products. Here a
 * row (a query head's stream of keys) is 8 lanes of head_dim / 8 dims each, a warp holds 4 rows:
 * a score is a 3-level tree within the row's lanes, and each lane runs its own row's softmax
 * only (about 13 a (key, head) by the same count). With a KV head's query heads per block the
 * 4 rows of a warp are 4 heads reading the same K/V row, one 128-byte line a load.
 *
 * Per head the arithmetic is fixed: a split's keys go to ATR_STREAMS streams (stream w takes
 * keys w, w + 8, ... of each chunk, in order), each an online softmax over 8 lanes, merged in
 * stream order (att_store_part). A block of GQ query heads has 8 GQ rows (64 GQ threads), row
 * r = stream r / GQ of head r % GQ, so GQ = 1 (2 warps a head) and GQ = group give the same
 * bits, alone or in a batch, at any blocks per token (test_attention_emu on the CPU, test_cuda
 * on the GPU). Its bits are not k_attention's (another sum tree): a backend uses one or the
 * other for every call. */

#define ATR_STREAMS ATT_WARPS /* a head's key streams in a split (att_store_part merges ATT_WARPS) */

/* dim t of lane s (0..7) of a row: 4 consecutive ones per 32, one float4 a K or V piece (8
 * lanes read 128 contiguous bytes) */
__device__ __forceinline__ int atr_dim(int s, int t) { return 32 * (t >> 2) + 4 * s + (t & 3); }

template <int DPL>
__device__ __forceinline__ void atr_row(float (&r)[DPL], const float *row, int s) {
#pragma unroll
    for (int t = 0; t < DPL; t += 4) {
        const float4 v = *(const float4 *)(row + atr_dim(s, t));
        r[t] = v.x, r[t + 1] = v.y, r[t + 2] = v.z, r[t + 3] = v.w;
    }
}

/* keys j0, j0 + 8, ... (KB of them) of this lane's stream into its head's online softmax (m, l,
 * acc); att_keys's arithmetic for one head, but the score's sum over 8 lanes. MASK: keys past
 * c1 (the chunk's end) are read at c1 - 1 and score -inf, and SG groups wholly past it are
 * skipped (a warp's rows may be at different keys: their loop is the warp's, so the shuffles
 * see every lane; only the softmax diverges). */
template <int DPL, bool MASK, int KB, int SG>
__device__ __forceinline__ void atr_keys(const float (&qv)[DPL], float (&acc)[DPL], float &m, float &l, const float *kb, const float *vb, int s,
                                         int kv_dim, int j0, int c1) {
    float kr[KB][DPL], vr[KB][DPL];
#pragma unroll
    for (int u = 0; u < KB; u++) {
        int j = j0 + ATR_STREAMS * u;
        if (MASK) j = j < c1 ? j : c1 - 1;
        atr_row<DPL>(kr[u], kb + (size_t)j * kv_dim, s);
    }
#pragma unroll
    for (int u = 0; u < KB; u++) { /* (V after K: the scores wait for K only) */
        int j = j0 + ATR_STREAMS * u;
        if (MASK) j = j < c1 ? j : c1 - 1;
        atr_row<DPL>(vr[u], vb + (size_t)j * kv_dim, s);
    }
    float sc[KB];
#pragma unroll
    for (int u = 0; u < KB; u++) {
        float a = 0.0f;
#pragma unroll
        for (int t = 0; t < DPL; t++) a = fmaf(qv[t], kr[u][t], a);
        sc[u] = a;
    }
    /* the row's 8 lanes: each lane gets the same sum (its pairs commute) */
#pragma unroll
    for (int off = 1; off < 8; off <<= 1)
#pragma unroll
        for (int u = 0; u < KB; u++) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], off);
#pragma unroll
    for (int u0 = 0; u0 < KB; u0 += SG) {
        if (MASK && j0 + ATR_STREAMS * u0 >= c1) break;
        float s2[SG], mg = m;
#pragma unroll
        for (int u = 0; u < SG; u++) {
            s2[u] = !MASK || j0 + ATR_STREAMS * (u0 + u) < c1 ? sc[u0 + u] : -INFINITY;
            mg = fmaxf(mg, s2[u]);
        }
        if (mg > m) {
            const float corr = ex2_ftz(m - mg);
            l *= corr;
#pragma unroll
            for (int t = 0; t < DPL; t++) acc[t] *= corr;
            m = mg;
        }
#pragma unroll
        for (int u = 0; u < SG; u++) {
            const float p = ex2_ftz(s2[u] - m);
            l += p;
#pragma unroll
            for (int t = 0; t < DPL; t++) acc[t] = fmaf(p, vr[u0 + u][t], acc[t]);
        }
    }
}

/* Partial attention of (GQ query heads h0.. of one KV head, token i, splits z = blockIdx.z,
 * z + gridDim.z, ...), 8 GQ rows of 8 lanes (the file's comment); the splits' parts, the fused
 * merge and k_attention_merge are k_attention's. head_dim = 8 DPL, DPL % 4 == 0. */
template <int DPL, int GQ>
__global__ void __launch_bounds__(8 * ATR_STREAMS * GQ) k_attention_r8(float *part, const float *q, const float *kc, const float *vc,
                                                                       const int32_t *slot, const int32_t *kv_len, int layer, int n_slots,
                                                                       int max_ctx, int kv_dim, int n_heads, int group, int head_dim,
                                                                       float scale, int chunk, bool pf, float *out, uint16_t *xp, int *count) {
    static_assert(DPL % 4 == 0, "8 lanes a row of float4 pieces: head_dim % 32 == 0");
    constexpr int NT = 8 * ATR_STREAMS * GQ, RPW = 4; /* threads; rows a warp */
    DYN_SHARED(float, sm); /* [ATR_STREAMS][GQ][head_dim] acc, [ATR_STREAMS][GQ] m, [ATR_STREAMS][GQ] l */
    const int h0 = blockIdx.x * GQ, i = blockIdx.y, warp = threadIdx.x >> 5, row = threadIdx.x >> 3, s = threadIdx.x & 7;
    const int g = row % GQ, w = row / GQ;
    /* the warp's streams are w_lo .. w_lo + dw_hi: its loop runs over its first stream's keys
     * (the others' are 1..dw_hi later: they mask what passes the chunk's end) */
    const int w_lo = RPW * warp / GQ, dw = w - w_lo, dw_hi = (RPW * warp + RPW - 1) / GQ - w_lo;
    const int zb = blockIdx.z;
    const int len = ld_step_int(kv_len + i), nz = att_splits(len, chunk), si = ld_step_int(slot + i); /* (k_attention's: before pdl_wait) */
    chunk = att_chunk_of(len, chunk);
    if (zb >= nz) return; /* no keys */
    const size_t base = ((size_t)layer * n_slots + si) * max_ctx * kv_dim + (size_t)(h0 / group) * head_dim;
    if (pf && (GQ > 1 || h0 % group == 0) && (i == 0 || ld_step_int(slot + i - 1) != si))
        for (int z = zb; z < nz; z += gridDim.z) att_prefetch(kc, vc, base, kv_dim, head_dim, len, z, chunk);
    pdl_start();
    float qv[DPL];
    const float *qi = q + ((size_t)i * n_heads + h0 + g) * head_dim;
#pragma unroll
    for (int t = 0; t < DPL; t++) qv[t] = qi[atr_dim(s, t)] * scale;
    /* keys of a stream loaded at once, and SG keys per softmax update (KB a multiple of SG, the
     * same SG at every GQ for a head_dim) */
    constexpr int KB = DPL <= 4 ? 8 : DPL <= 8 ? 4 : DPL <= 16 ? 2 : 1, SG = KB < 4 ? KB : 4;
    const float *kb = kc + base, *vb = vc + base;
    float *sacc = sm, *sm_m = sm + ATR_STREAMS * GQ * head_dim, *sm_l = sm_m + ATR_STREAMS * GQ;
    for (int z = zb; z < nz; z += gridDim.z) {
        float acc[DPL], m = -INFINITY, l = 0.0f;
#pragma unroll
        for (int t = 0; t < DPL; t++) acc[t] = 0.0f;
        for (int c0 = z * chunk; c0 < len; c0 += ATT_SPLITS * chunk) {
            const int c1 = c0 + chunk < len ? c0 + chunk : len;
            for (int jw = c0 + w_lo; jw < c1; jw += ATR_STREAMS * KB) {
                if (jw + dw_hi + ATR_STREAMS * (KB - 1) < c1) atr_keys<DPL, false, KB, SG>(qv, acc, m, l, kb, vb, s, kv_dim, jw + dw, c1);
                else atr_keys<DPL, true, KB, SG>(qv, acc, m, l, kb, vb, s, kv_dim, jw + dw, c1);
            }
        }
        if (z != zb) __syncthreads(); /* (the split before has read sacc) */
#pragma unroll
        for (int t = 0; t < DPL; t++) sacc[(w * GQ + g) * head_dim + atr_dim(s, t)] = acc[t];
        if (s == 0) { sm_m[w * GQ + g] = m; sm_l[w * GQ + g] = l; }
        __syncthreads();
        att_store_part<GQ, NT>(part, sacc, sm_m, sm_l, i, n_heads, h0, z, head_dim);
    }
    if (!count) return;
    constexpr int tph = NT / GQ; /* (att_store_part's) */
    const int hg = threadIdx.x / tph, tl = threadIdx.x % tph;
    if (!att_last_block(count + (size_t)i * n_heads + h0, zb, nz)) return;
    att_merge(out, xp, part, h0 + hg, i, n_heads, head_dim, nz, tl, tph);
}
