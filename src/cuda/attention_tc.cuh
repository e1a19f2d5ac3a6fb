/* attention_tc.cuh - attention on the tensor cores: mma.sync m16n8k8 in TF32, each operand split
 * in two (hi + lo, 3 products: FP32-like accuracy), for a block of 16 query rows (the query
 * heads of one KV head times tokens of one sequence) that read each K/V row once.
 * Part of backend_cuda.cu's translation unit, after attention.cuh (its splits, chunks, parts
 * and merge); not a header of its own. */

#define ATC_ROWS 16 /* query rows of a block: the mma's M */

/* x = hi + lo: hi is x with the low 13 bits of its mantissa cleared (a TF32 value), lo = x - hi
 * exactly (the mma reads its top 10 mantissa bits: x to about 21 bits); two instructions where
 * cvt.rna's rounding takes more */
__device__ __forceinline__ void tf32_split(float x, uint32_t &hi, uint32_t &lo) {
    hi = __float_as_uint(x) & 0xffffe000u;
    lo = __float_as_uint(x - __uint_as_float(hi));
}
/* the three products of the split operands (ptx.cuh's mma_tf32), on three accumulators (shorter
 * dependency chains): big += ah bh, sa += ah bl, sb += al bh */
__device__ __forceinline__ void mma_3x(float (&big)[4], float (&sa)[4], float (&sb)[4], const uint4 &ah, const uint4 &al,
                                       const uint32_t (&bh)[2], const uint32_t (&bl)[2]) {
    const uint32_t h[4] = {ah.x, ah.y, ah.z, ah.w}, l[4] = {al.x, al.y, al.z, al.w};
    mma_tf32(sa, h, bl);
    mma_tf32(sb, l, bh);
    mma_tf32(big, h, bh);
}
/* the same three products on one accumulator, the small ones first (where the accumulators are
 * many, independent chains already) */
__device__ __forceinline__ void mma_3x1(float (&d)[4], const uint4 &ah, const uint4 &al, const uint32_t (&bh)[2], const uint32_t (&bl)[2]) {
    const uint32_t h[4] = {ah.x, ah.y, ah.z, ah.w}, l[4] = {al.x, al.y, al.z, al.w};
    mma_tf32(d, h, bl);
    mma_tf32(d, l, bh);
    mma_tf32(d, h, bh);
}

/* Q's A operands sit in shared memory in fragment order, one uint4 a lane and k-step (one
 * 16-byte load, no moves): k-step 2p + e takes dims 16p + 4t + 2e (its k = t) and + 1 (k = t +
 * 4), the pairing of a lane's float4 of a K row. Element (row r, k) of k-step s: [s][lane (r %
 * 8) 4 + k % 4][(k / 4) 2 + r / 8] */
__device__ __forceinline__ int atc_frag(int s, int r, int k) { return (s * 32 + (r & 7) * 4 + (k & 3)) * 4 + (k >> 2) * 2 + (r >> 3); }
/* the shared memory of k_attention_tc, in floats: Q's hi and lo [head_dim / 8][32][4] each, then
 * the warps' partial results for their merge, [ATT_WARPS][16] rows of head_dim + 4 (the pad
 * spreads a fragment's rows over the banks) and their maxima and normalisers [ATT_WARPS][16]
 * each (85 KB at 128 dims: backend_cuda raises the kernel's limit) */
__host__ __device__ inline size_t atc_smem(int head_dim) {
    return sizeof(float) * ((size_t)2 * ATC_ROWS * head_dim + (size_t)ATT_WARPS * ATC_ROWS * (head_dim + 4) + (size_t)2 * ATT_WARPS * ATC_ROWS);
}

/* a split's part of the block's rows from its warps' (sacc, sm_m, sm_l), merged in warp order
 * (att_store_part's arithmetic, 16 threads a row); rows with len_of(r) == 0 are not in the pass */
template <int HD, typename LenOf>
__device__ __forceinline__ void atc_store_part(float *part, const float *sacc, const float *sm_m, const float *sm_l, int i0, int lgq, int h0,
                                               int z, int n_heads, LenOf len_of) {
    const int r = threadIdx.x >> 4, tl = threadIdx.x & 15;
    if (!len_of(r)) return;
    float M, f[ATT_WARPS];
    const float L = att_weights<ATT_WARPS>(ATT_WARPS, [&](int w) { return sm_m[w * ATC_ROWS + r]; }, [&](int w) { return sm_l[w * ATC_ROWS + r]; },
                                           f, M);
    float *pz = part + att_part(i0 + (r >> lgq), h0 + (r & ((1 << lgq) - 1)), z, n_heads, HD);
#pragma unroll
    for (int d = tl; d < HD; d += 16) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) o += sacc[(w * ATC_ROWS + r) * (HD + 4) + d] * f[w];
        pz[d] = o;
    }
    if (tl == 0) { pz[HD] = M; pz[HD + 1] = L; }
}

/* Partial attention of 16 rows: row r = query head h0 + r % gq of token i0 + r / gq (gq = 2^lgq
 * heads of one KV head from blockIdx.x * gq; tg tokens from blockIdx.y * tg on), splits z =
 * blockIdx.z, z + gridDim.z, ... A pass takes the rows whose token has one slot and one chunk
 * size (a run of a sequence's tokens: one pass). Warp w takes keys [w ch/8, (w+1) ch/8) of each
 * chunk of a split, 16 at a time, on its own (FlashAttention-2's warp: no block barrier in the
 * key loop): S = Q K^T on two n-tiles of 8 keys; an online-softmax step per row (a row's 4 lanes
 * reduce by shuffles); then O^T += V^T P^T, whose B operand (P^T) is the S accumulator's own
 * layout and whose A operand (V^T) is two 8-byte loads a lane, m-tile m holding dims 16m..16m+15
 * (a second n-tile only where the block has more than 8 rows). The warps are merged in order at
 * a split's end (atc_store_part); parts and the fused merge are k_attention's. A row's
 * arithmetic depends on its own token alone (its keys, their order and grouping; the mma rows
 * and columns are independent), so a row is the same bits at every gq, tg and gridDim.z, alone
 * or in a batch (not the bits of k_attention: other sums). head_dim = 16 MT <= 128. Opt-in
 * (DSPARK_CUDA_ATT_TC=1; docs/bench-cuda.md). */
template <int MT>
__global__ void __launch_bounds__(32 * ATT_WARPS, 1) k_attention_tc(float *part, const float *q, const float *kc, const float *vc,
                                                                 const int32_t *slot, const int32_t *kv_len, int layer, int n_slots,
                                                                 int max_ctx, int kv_dim, int n_tok, int n_heads, int group, int lgq, int tg,
                                                                 float scale, int chunk, bool pf, float *out, uint16_t *xp, int *count) {
    constexpr int HD = 16 * MT;
    static_assert(MT >= 1 && MT <= 8, "head_dim: a multiple of 16, <= 128");
    DYN_SHARED(float, sm);
    uint32_t *qh = (uint32_t *)sm, *ql = qh + ATC_ROWS * HD;
    float *sacc = (float *)(ql + ATC_ROWS * HD), *sm_m = sacc + ATT_WARPS * ATC_ROWS * (HD + 4), *sm_l = sm_m + ATT_WARPS * ATC_ROWS;
    __shared__ int row_len[ATC_ROWS];                 /* the pass's key count of a row; 0: not in the pass */
    __shared__ int t_slot[ATC_ROWS], t_len[ATC_ROWS]; /* the block's tokens' */
    __shared__ int t_lead[ATC_ROWS], p_len[ATC_ROWS]; /* a token's pass: its first token; a pass's most keys (at its first) */
    const int gq = 1 << lgq, h0 = blockIdx.x * gq, i0 = blockIdx.y * tg, zb = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nt = n_tok - i0 < tg ? n_tok - i0 : tg; /* tokens of this block */
    /* kv_len and slot before pdl_wait, as k_attention; then the passes, a thread a token */
    if (threadIdx.x < nt) {
        t_slot[threadIdx.x] = ld_step_int(slot + i0 + threadIdx.x);
        t_len[threadIdx.x] = ld_step_int(kv_len + i0 + threadIdx.x);
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        const int u = threadIdx.x, s_u = t_slot[u], c_u = att_chunk_of(t_len[u], chunk);
        int v = 0;
        while (v < u && !(t_slot[v] == s_u && att_chunk_of(t_len[v], chunk) == c_u)) v++;
        t_lead[u] = v;
    }
    __syncthreads();
    if (threadIdx.x < nt && t_lead[threadIdx.x] == (int)threadIdx.x) {
        int len = 0;
        for (int v = threadIdx.x; v < nt; v++)
            if (t_lead[v] == (int)threadIdx.x) len = max(len, t_len[v]);
        p_len[threadIdx.x] = len;
    }
    __syncthreads();
    int NZ = 0;
    for (int u = 0; u < nt; u++)
        if (t_lead[u] == u) NZ = max(NZ, att_splits(p_len[u], chunk)); /* (one chunk size a pass: its most keys have its most splits) */
    if (zb >= NZ) return; /* no keys */
    const size_t head_off = (size_t)(h0 / group) * HD;
    /* each pass's K/V rows of the block's splits into L2 (one block per KV head: the first
     * query head's; not where the token before the block is of the slot: that block did) */
    if (pf && (gq == group || h0 % group == 0))
        for (int u = 0; u < nt; u++) {
            if (t_lead[u] != u || (u == 0 && i0 > 0 && ld_step_int(slot + i0 - 1) == t_slot[0])) continue;
            const int maxlen = p_len[u], ch = att_chunk_of(t_len[u], chunk);
            const size_t base = ((size_t)layer * n_slots + t_slot[u]) * max_ctx * kv_dim + head_off;
            for (int z = zb; z < att_splits(maxlen, chunk); z += gridDim.z) att_prefetch(kc, vc, base, kv_dim, HD, maxlen, z, ch);
        }
    pdl_start();
    /* Q's rows, scaled and split (rows past the block's tokens: 0): warp w's rows 2w, 2w + 1,
     * a lane's dims lane + 32 k, the loads issued together */
    {
        float x[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int r = 2 * warp + j, u = r >> lgq;
            const float *qr = q + ((size_t)(i0 + u) * n_heads + h0 + (r & (gq - 1))) * HD;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int d = lane + 32 * k;
                x[j][k] = u < nt && d < HD ? qr[d] : 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int r = 2 * warp + j, d = lane + 32 * k;
                if (d >= HD) break;
                uint32_t hi, lo;
                tf32_split(x[j][k] * scale, hi, lo);
                const int e = d & 15, f = atc_frag(2 * (d >> 4) + ((e & 3) >> 1), r, (e >> 2) + 4 * (e & 1));
                qh[f] = hi;
                ql[f] = lo;
            }
    }
    const bool rows16 = gq * nt > 8; /* PV's second n-tile (rows 8..15) has rows */
    for (int u = 0; u < nt; u++) {
        if (t_lead[u] != u) continue;
        const int si = t_slot[u], ch = att_chunk_of(t_len[u], chunk), maxlen = p_len[u];
        __syncthreads(); /* (the pass before has read row_len and sacc) */
        if (threadIdx.x < ATC_ROWS) {
            const int r = threadIdx.x, v = r >> lgq;
            row_len[r] = v < nt && t_lead[v] == u ? t_len[v] : 0;
        }
        __syncthreads();
        const int nzp = att_splits(maxlen, chunk), kpw = ch / ATT_WARPS; /* a warp's keys of a chunk */
        const float *kb = kc + ((size_t)layer * n_slots + si) * max_ctx * kv_dim + head_off, *vb = vc + (kb - kc) + 2 * g;
        const int len_g = row_len[g], len_g8 = row_len[g + 8];
        for (int z = zb; z < nzp; z += gridDim.z) {
            /* the warp's running state: O^T (m-tile m, n-tile c: dims 16m + 2g + (e >> 1), rows 8c
             * + 2t + (e & 1)); rows g's and g + 8's max and this lane's share of their normaliser */
            float o[MT][2][4] = {}, m_g = -INFINITY, m_g8 = -INFINITY, l_g = 0.0f, l_g8 = 0.0f;
            for (int c0 = z * ch; c0 < maxlen; c0 += ATT_SPLITS * ch) {
                const int kend = c0 + ch < maxlen ? c0 + ch : maxlen, wk0 = c0 + warp * kpw, wend = wk0 + kpw < kend ? wk0 + kpw : kend;
                const int lim_g = wend < len_g ? wend : len_g, lim_g8 = wend < len_g8 ? wend : len_g8; /* a row's keys end */
                for (int kb0 = wk0; kb0 < wend; kb0 += 16) {
                    /* S = Q K^T, n-tile n: keys kb0 + 8n.. (past the chunk: its last row, masked);
                     * a lane's float4 of a K row gives k-steps 2p and 2p + 1 */
                    float sb[2][4] = {}, sa[2][4] = {}, sc[2][4] = {};
                    const float *krow[2];
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        const int key = kb0 + 8 * n + g;
                        krow[n] = kb + (key < kend ? key : kend - 1) * kv_dim + 4 * t;
                    }
#pragma unroll
                    for (int p = 0; p < MT; p++) {
                        const uint4 ah0 = *(const uint4 *)(qh + atc_frag(2 * p, g, t)), al0 = *(const uint4 *)(ql + atc_frag(2 * p, g, t));
                        const uint4 ah1 = *(const uint4 *)(qh + atc_frag(2 * p + 1, g, t)), al1 = *(const uint4 *)(ql + atc_frag(2 * p + 1, g, t));
#pragma unroll
                        for (int n = 0; n < 2; n++) {
                            const float4 kv4 = *(const float4 *)(krow[n] + 16 * p);
                            uint32_t bh[2], bl[2];
                            tf32_split(kv4.x, bh[0], bl[0]);
                            tf32_split(kv4.y, bh[1], bl[1]);
                            mma_3x(sb[n], sa[n], sc[n], ah0, al0, bh, bl);
                            tf32_split(kv4.z, bh[0], bl[0]);
                            tf32_split(kv4.w, bh[1], bl[1]);
                            mma_3x(sb[n], sa[n], sc[n], ah1, al1, bh, bl);
                        }
                    }
                    /* the scores of rows g (e < 2) and g + 8, keys kb0 + 8n + 2t + e % 2; -inf past a
                     * row's keys or the warp's */
                    float s[2][4], mx_g = -INFINITY, mx_g8 = -INFINITY;
#pragma unroll
                    for (int n = 0; n < 2; n++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int key = kb0 + 8 * n + 2 * t + (e & 1);
                            const float v = sb[n][e] + (sa[n][e] + sc[n][e]);
                            s[n][e] = key < (e < 2 ? lim_g : lim_g8) ? v : -INFINITY;
                            if (e < 2) mx_g = fmaxf(mx_g, s[n][e]);
                            else mx_g8 = fmaxf(mx_g8, s[n][e]);
                        }
#pragma unroll
                    for (int off = 1; off <= 2; off <<= 1) {
                        mx_g = fmaxf(mx_g, __shfl_xor_sync(0xffffffffu, mx_g, off));
                        mx_g8 = fmaxf(mx_g8, __shfl_xor_sync(0xffffffffu, mx_g8, off));
                    }
                    /* the online step: a row without keys so far has O = 0 and l = 0 exactly, so
                     * its rescale is 1; a row without keys yet: weights 0 */
                    const float mn_g = fmaxf(m_g, mx_g), mn_g8 = fmaxf(m_g8, mx_g8);
                    const float cr_g = m_g == -INFINITY ? 1.0f : ex2_ftz(m_g - mn_g), cr_g8 = m_g8 == -INFINITY ? 1.0f : ex2_ftz(m_g8 - mn_g8);
                    m_g = mn_g, m_g8 = mn_g8;
                    float pw[2][4], ps_g = 0.0f, ps_g8 = 0.0f;
#pragma unroll
                    for (int n = 0; n < 2; n++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const float mn = e < 2 ? mn_g : mn_g8;
                            pw[n][e] = mn == -INFINITY ? 0.0f : ex2_ftz(s[n][e] - mn);
                            if (e < 2) ps_g += pw[n][e];
                            else ps_g8 += pw[n][e];
                        }
                    l_g = l_g * cr_g + ps_g;
                    l_g8 = l_g8 * cr_g8 + ps_g8;
                    if (__any_sync(0xffffffffu, cr_g != 1.0f || cr_g8 != 1.0f)) {
                        /* O^T's columns are rows 8c + 2t + e: their rescales from the lanes of those rows */
                        float cr[2][2];
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            cr[0][e] = __shfl_sync(0xffffffffu, cr_g, 4 * (2 * t + e));
                            cr[1][e] = __shfl_sync(0xffffffffu, cr_g8, 4 * (2 * t + e));
                        }
#pragma unroll
                        for (int m = 0; m < MT; m++)
#pragma unroll
                            for (int c = 0; c < 2; c++)
#pragma unroll
                                for (int e = 0; e < 4; e++) o[m][c][e] *= cr[c][e & 1];
                    }
                    /* O^T += V^T P^T: k-step n is n-tile n's keys, k = t key 2t, k = t + 4 key 2t + 1;
                     * B (P^T) of n-tile c is the weights of rows 8c + g this lane holds; A (V^T) of
                     * m-tile m: dims 16m + 2g, + 1 of keys 2t, 2t + 1, an 8-byte load of each row */
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        uint32_t bh[2][2], bl[2][2];
                        tf32_split(pw[n][0], bh[0][0], bl[0][0]);
                        tf32_split(pw[n][1], bh[0][1], bl[0][1]);
                        tf32_split(pw[n][2], bh[1][0], bl[1][0]);
                        tf32_split(pw[n][3], bh[1][1], bl[1][1]);
                        const int ka = kb0 + 8 * n + 2 * t, kz = ka + 1;
                        const float *va = vb + (ka < kend ? ka : kend - 1) * kv_dim, *vz = vb + (kz < kend ? kz : kend - 1) * kv_dim;
#pragma unroll
                        for (int m = 0; m < MT; m++) {
                            const float2 v0 = *(const float2 *)(va + 16 * m), v1 = *(const float2 *)(vz + 16 * m);
                            uint4 ah, al;
                            tf32_split(v0.x, ah.x, al.x);
                            tf32_split(v0.y, ah.y, al.y);
                            tf32_split(v1.x, ah.z, al.z);
                            tf32_split(v1.y, ah.w, al.w);
                            mma_3x1(o[m][0], ah, al, bh[0], bl[0]);
                            if (rows16) mma_3x1(o[m][1], ah, al, bh[1], bl[1]);
                        }
                    }
                }
            }
            /* the split's part: the warps' states into shared memory, merged in warp order */
#pragma unroll
            for (int off = 1; off <= 2; off <<= 1) { /* (every lane of a row gets the same sum: a + b == b + a) */
                l_g += __shfl_xor_sync(0xffffffffu, l_g, off);
                l_g8 += __shfl_xor_sync(0xffffffffu, l_g8, off);
            }
            __syncthreads(); /* (the split before has read sacc) */
#pragma unroll
            for (int c = 0; c < 2; c++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float *srow = sacc + (warp * ATC_ROWS + 8 * c + 2 * t + e) * (HD + 4) + 2 * g;
#pragma unroll
                    for (int m = 0; m < MT; m++) *(float2 *)(srow + 16 * m) = make_float2(o[m][c][e], o[m][c][e + 2]);
                }
            if (t == 0) {
                sm_m[warp * ATC_ROWS + g] = m_g, sm_l[warp * ATC_ROWS + g] = l_g;
                sm_m[warp * ATC_ROWS + g + 8] = m_g8, sm_l[warp * ATC_ROWS + g + 8] = l_g8;
            }
            __syncthreads();
            atc_store_part<HD>(part, sacc, sm_m, sm_l, i0, lgq, h0, z, n_heads, [&](int r) { return row_len[r]; });
        }
    }
    if (!count) return;
    /* fused merge: one counter per (first token, first head) of the block */
    if (!att_last_block(count + (size_t)i0 * n_heads + h0, zb, NZ)) return;
    /* every thread on the block's rows (fewer rows, more threads a row: fewer dims a thread) */
    const int rows = gq * nt, tpr = 32 * ATT_WARPS / rows, r = threadIdx.x / tpr;
    if (r < rows)
        att_merge(out, xp, part, h0 + (r & (gq - 1)), i0 + (r >> lgq), n_heads, HD, att_splits(t_len[r >> lgq], chunk), threadIdx.x % tpr, tpr);
}

/* the kernel's instances, head_dim = 16 MT (backend_cuda: the launch's switch and the shared
 * memory limits) */
#define ATC_EACH_MT(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
