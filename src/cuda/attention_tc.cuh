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
/* d += a b, m16n8k8: lane (g = lane / 4, t = lane % 4) holds a = A[g][t], A[g+8][t], A[g][t+4],
 * A[g+8][t+4]; b = B[t][g], B[t+4][g]; d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1] */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
/* the three products of the split operands, on three accumulators (shorter dependency chains):
 * big += ah bh, sa += ah bl, sb += al bh */
__device__ __forceinline__ void mma_3x(float (&big)[4], float (&sa)[4], float (&sb)[4], const uint4 &ah, const uint4 &al,
                                       const uint32_t (&bh)[2], const uint32_t (&bl)[2]) {
    const uint32_t h[4] = {ah.x, ah.y, ah.z, ah.w}, l[4] = {al.x, al.y, al.z, al.w};
    mma_tf32(sa, h, bl);
    mma_tf32(sb, l, bh);
    mma_tf32(big, h, bh);
}

/* The A operands sit in shared memory in fragment order, one uint4 a lane and k-step (one
 * 16-byte load, no moves): Q's k-step 2p + e takes dims 16p + 4t + 2e (its k = t) and + 1 (k =
 * t + 4), the pairing of a lane's float4 of a K row; P's k-step s keys 8s + 2t, 8s + 2t + 1.
 * Element (row r, k) of k-step s: [s][lane (r % 8) 4 + k % 4][(k / 4) 2 + r / 8] */
__device__ __forceinline__ int atc_frag(int s, int r, int k) { return (s * 32 + (r & 7) * 4 + (k & 3)) * 4 + (k >> 2) * 2 + (r >> 3); }
/* the shared memory of k_attention_tc, in floats: Q's hi and lo [head_dim / 8][32][4] each, the
 * scores [16][chunk_max + 8], the weights' hi and lo [chunk_max / 8][32][4] each, the rows'
 * rescale factors [16] (64 KB at 128 dims and 256 keys: backend_cuda raises the kernel's
 * limit) */
__host__ __device__ inline size_t atc_smem(int head_dim, int chunk_max) {
    return sizeof(float) * ((size_t)2 * ATC_ROWS * head_dim + (size_t)ATC_ROWS * (chunk_max + 8) + (size_t)2 * ATC_ROWS * chunk_max + ATC_ROWS);
}

/* Partial attention of 16 rows: row r = query head h0 + r % gq of token i0 + r / gq (tg tokens
 * from blockIdx.y * tg on; gq heads of one KV head from blockIdx.x * gq), splits z = blockIdx.z,
 * z + gridDim.z, ... A pass takes the rows whose token has one slot and one chunk size (a run
 * of a sequence's tokens: one pass). Per chunk of a split: warp w scores keys [w ch/8, (w+1)
 * ch/8) of it (S = Q K^T), one online-softmax step per row over the chunk's scores (16 threads
 * a row), then warp w's O dims [16 w, 16 w + 16) (O = P V). Parts and the fused merge as
 * k_attention's. A row's arithmetic depends on its own token alone (its keys, their order and
 * grouping, and the mma rows are independent), so a row is the same bits at every gq, tg and
 * gridDim.z, alone or in a batch (not the bits of k_attention: other sums). head_dim % 16 ==
 * 0, <= 128; chunks of a multiple of 64 keys, <= chunk_max. Opt-in (DSPARK_CUDA_ATT_TC=1):
 * H100, Qwen3-4B shape, context 512, a decode step 3.48 -> 3.70-3.73 ms and 8 tokens 3.91 ->
 * 4.05, 64 tokens 15.6 -> 14.6-14.8 (docs/bench-cuda.md: it issues about 3x the instructions
 * its mma work needs). */
__global__ void __launch_bounds__(32 * ATT_WARPS, 1) k_attention_tc(float *part, const float *q, const float *kc, const float *vc,
                                                                 const int32_t *slot, const int32_t *kv_len, int layer, int n_slots,
                                                                 int max_ctx, int kv_dim, int n_tok, int n_heads, int group, int gq, int tg,
                                                                 int head_dim, float scale, int chunk, int chunk_max, bool pf, float *out,
                                                                 uint16_t *xp, int *count) {
    extern __shared__ float sm[];
    const int ss = chunk_max + 8;
    uint32_t *qh = (uint32_t *)sm, *ql = qh + ATC_ROWS * head_dim, *ph = ql + ATC_ROWS * (head_dim + ss), *pl = ph + ATC_ROWS * chunk_max;
    float *sp = (float *)(ql + ATC_ROWS * head_dim), *rcorr = (float *)(pl + ATC_ROWS * chunk_max);
    __shared__ int row_len[ATC_ROWS];           /* the pass's key count of a row; 0: not in the pass */
    __shared__ int t_slot[ATC_ROWS], t_len[ATC_ROWS]; /* the block's tokens' */
    const int h0 = blockIdx.x * gq, i0 = blockIdx.y * tg, zb = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nt = n_tok - i0 < tg ? n_tok - i0 : tg; /* tokens of this block */
    /* kv_len and slot before pdl_wait, as k_attention */
    if (threadIdx.x < nt) {
        t_slot[threadIdx.x] = ld_step_int(slot + i0 + threadIdx.x);
        t_len[threadIdx.x] = ld_step_int(kv_len + i0 + threadIdx.x);
    }
    __syncthreads();
    int NZ = 0;
    for (int u = 0; u < nt; u++) NZ = max(NZ, att_splits(t_len[u], chunk));
    if (zb >= NZ) return; /* no keys */
    /* a pass: the block's tokens of token u's slot and chunk size, u the first of them */
    auto same_pass = [&](int u, int v) { return t_slot[v] == t_slot[u] && att_chunk_of(t_len[v], chunk) == att_chunk_of(t_len[u], chunk); };
    auto first_of_pass = [&](int u) {
        for (int v = 0; v < u; v++)
            if (same_pass(u, v)) return false;
        return true;
    };
    auto pass_len = [&](int u) { /* its most keys */
        int len = 0;
        for (int v = u; v < nt; v++)
            if (same_pass(u, v)) len = max(len, t_len[v]);
        return len;
    };
    const size_t head_off = (size_t)(h0 / group) * head_dim;
    /* each pass's K/V rows of the block's splits into L2 (one block per KV head: the first
     * query head's; not where the token before the block is of the slot: that block did) */
    if (pf && (gq == group || h0 % group == 0))
        for (int u = 0; u < nt; u++) {
            if (!first_of_pass(u) || (u == 0 && i0 > 0 && ld_step_int(slot + i0 - 1) == t_slot[0])) continue;
            const int maxlen = pass_len(u), ch = att_chunk_of(t_len[u], chunk);
            const size_t base = ((size_t)layer * n_slots + t_slot[u]) * max_ctx * kv_dim + head_off;
            for (int z = zb; z < att_splits(maxlen, chunk); z += gridDim.z) att_prefetch(kc, vc, base, kv_dim, head_dim, maxlen, z, ch);
        }
    pdl_start();
    /* Q's rows, scaled and split (rows past the block's tokens: 0): warp w's rows 2w, 2w + 1,
     * a lane's dims lane + 32 k, the loads issued together */
    {
        float x[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int r = 2 * warp + j, u = r / gq;
            const float *qr = q + ((size_t)(i0 + u) * n_heads + h0 + r - u * gq) * head_dim;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int d = lane + 32 * k;
                x[j][k] = r < gq * nt && d < head_dim ? qr[d] : 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int r = 2 * warp + j, d = lane + 32 * k;
                if (d >= head_dim) break;
                uint32_t hi, lo;
                tf32_split(x[j][k] * scale, hi, lo);
                const int e = d & 15, f = atc_frag(2 * (d >> 4) + ((e & 3) >> 1), r, (e >> 2) + 4 * (e & 1));
                qh[f] = hi;
                ql[f] = lo;
            }
    }
    const int sr = threadIdx.x >> 4, sq = threadIdx.x & 15; /* the softmax's row and its thread */
    for (int u = 0; u < nt; u++) {
        if (!first_of_pass(u)) continue;
        const int si = t_slot[u], ch = att_chunk_of(t_len[u], chunk), maxlen = pass_len(u);
        __syncthreads(); /* (the pass before has read row_len) */
        if (threadIdx.x < ATC_ROWS) {
            const int r = threadIdx.x, v = r / gq;
            row_len[r] = r < gq * nt && same_pass(u, v) ? t_len[v] : 0;
        }
        __syncthreads();
        const int nzp = att_splits(maxlen, chunk), kpw = ch / ATT_WARPS; /* keys a warp scores */
        const float *kb = kc + ((size_t)layer * n_slots + si) * max_ctx * kv_dim + head_off, *vb = vc + (kb - kc);
        const int len_g = row_len[g], len_g8 = row_len[g + 8], len_s = row_len[sr];
        const bool pv = 16 * warp < head_dim;     /* this warp has O dims (head_dim % 16 == 0) */
        const float *vlane = vb + (pv ? 16 * warp + 2 * g : 0); /* (PV: below) */
        for (int z = zb; z < nzp; z += gridDim.z) {
            float ob[2][4] = {}, oa[2][4] = {}, oc[2][4] = {}, m_run = -INFINITY, l_run = 0.0f;
            for (int c0 = z * ch; c0 < maxlen; c0 += ATT_SPLITS * ch) {
                const int kend = c0 + ch < maxlen ? c0 + ch : maxlen, n_ks = (kend - c0 + 7) / 8;
                /* S = Q K^T: the warp's n-tiles of 8 keys, two at a time (registers); a lane's
                 * float4 of a K row gives k-steps 2p and 2p + 1 */
                for (int n2 = 0; n2 < kpw / 8; n2 += 2) {
                    float sb[2][4] = {}, sa[2][4] = {}, sc[2][4] = {};
                    const float *krow[2];
                    bool live[2];
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        const int key0 = c0 + warp * kpw + 8 * (n2 + n), key = key0 + g < kend ? key0 + g : kend - 1;
                        live[n] = n2 + n < kpw / 8 && key0 < kend;
                        krow[n] = kb + key * kv_dim + 4 * t;
                    }
#pragma unroll 4
                    for (int p = 0; p < head_dim / 16; p++) {
                        const uint4 ah0 = *(const uint4 *)(qh + atc_frag(2 * p, g, t)), al0 = *(const uint4 *)(ql + atc_frag(2 * p, g, t));
                        const uint4 ah1 = *(const uint4 *)(qh + atc_frag(2 * p + 1, g, t)), al1 = *(const uint4 *)(ql + atc_frag(2 * p + 1, g, t));
#pragma unroll
                        for (int n = 0; n < 2; n++) {
                            if (!live[n]) continue;
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
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        if (n2 + n >= kpw / 8) break;
                        const int kc0 = c0 + warp * kpw + 8 * (n2 + n) + 2 * t; /* this lane's two keys (masked past kend: past every row's keys) */
                        float v[4];
#pragma unroll
                        for (int e = 0; e < 4; e++) v[e] = sb[n][e] + (sa[n][e] + sc[n][e]);
                        *(float2 *)(sp + g * ss + (kc0 - c0)) = make_float2(kc0 < len_g ? v[0] : -INFINITY, kc0 + 1 < len_g ? v[1] : -INFINITY);
                        *(float2 *)(sp + (g + 8) * ss + (kc0 - c0)) = make_float2(kc0 < len_g8 ? v[2] : -INFINITY, kc0 + 1 < len_g8 ? v[3] : -INFINITY);
                    }
                }
                /* V's loads of 8 k-steps at a time, ping-pong (the first 8 before the softmax: they
                 * do not wait for it). Warp w's dims [16 w, 16 w + 16): its two n-tiles j = 0, 1
                 * take dims 16 w + 2 n + j, so a lane's float2 of a V row is its b of both */
                auto load_v = [&](float2(&vv)[8][2], int s0) {
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int k0 = c0 + 8 * (s0 + j) + 2 * t, ka = k0 < kend ? k0 : kend - 1, kz = k0 + 1 < kend ? k0 + 1 : kend - 1;
                        vv[j][0] = *(const float2 *)(vlane + ka * kv_dim);
                        vv[j][1] = *(const float2 *)(vlane + kz * kv_dim);
                    }
                };
                float2 va[8][2], vz[8][2];
                load_v(va, 0);
                __syncthreads();
                /* one online-softmax step per row: the chunk's max, the rescale of what came
                 * before, the weights 2^(s - m) split into P's fragments (a row without keys so
                 * far: weights 0, rescale 1) */
                {
                    const float *srow = sp + sr * ss;
                    float mx = -INFINITY;
                    for (int j = sq; j < ch; j += 16) mx = fmaxf(mx, srow[j]);
#pragma unroll
                    for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                    const float m_new = fmaxf(m_run, mx);
                    const float corr = m_new == -INFINITY ? 1.0f : ex2_ftz(m_run - m_new);
                    float ls = 0.0f;
                    for (int j = sq; j < ch; j += 16) {
                        const float p = m_new == -INFINITY ? 0.0f : ex2_ftz(srow[j] - m_new);
                        uint32_t hi, lo;
                        tf32_split(p, hi, lo);
                        const int f = atc_frag(j >> 3, sr, ((j & 7) >> 1) + 4 * (j & 1));
                        ph[f] = hi;
                        pl[f] = lo;
                        ls += p;
                    }
#pragma unroll
                    for (int o = 8; o > 0; o >>= 1) ls += __shfl_xor_sync(0xffffffffu, ls, o);
                    l_run = l_run * corr + ls;
                    m_run = m_new;
                    if (sq == 0) rcorr[sr] = corr;
                }
                __syncthreads();
                /* O = O corr + P V */
                {
                    const float c_g = rcorr[g], c_g8 = rcorr[g + 8];
#pragma unroll
                    for (int w = 0; w < 2; w++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const float c = e < 2 ? c_g : c_g8;
                            ob[w][e] *= c, oa[w][e] *= c, oc[w][e] *= c;
                        }
                    auto pv_steps = [&](const float2(&vv)[8][2], int s0) {
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            const int s = s0 + j;
                            if (s >= n_ks) break;
                            const uint4 ah = *(const uint4 *)(ph + atc_frag(s, g, t)), al = *(const uint4 *)(pl + atc_frag(s, g, t));
                            uint32_t bh[2], bl[2];
                            tf32_split(vv[j][0].x, bh[0], bl[0]);
                            tf32_split(vv[j][1].x, bh[1], bl[1]);
                            mma_3x(ob[0], oa[0], oc[0], ah, al, bh, bl);
                            tf32_split(vv[j][0].y, bh[0], bl[0]);
                            tf32_split(vv[j][1].y, bh[1], bl[1]);
                            mma_3x(ob[1], oa[1], oc[1], ah, al, bh, bl);
                        }
                    };
                    if (pv)
                        for (int s0 = 0; s0 < n_ks; s0 += 16) {
                            load_v(vz, s0 + 8); /* (past the keys: clamped to the last, not used) */
                            pv_steps(va, s0);
                            if (s0 + 16 < n_ks) load_v(va, s0 + 16);
                            pv_steps(vz, s0 + 8);
                        }
                }
                __syncthreads(); /* (before the next chunk's scores overwrite the weights) */
            }
            /* the split's part of each row of the pass: [hd] sum, max, normaliser */
            const int rr[2] = {g, g + 8}, rl[2] = {len_g, len_g8};
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (!rl[h]) continue;
                float *pz = part + att_part(i0 + rr[h] / gq, h0 + rr[h] % gq, z, n_heads, head_dim);
                /* D[row][n = 2t + c] of n-tile j is dim 16 w + 2 (2t + c) + j: a lane's 4 dims 16 w + 4t.. */
                if (pv) { /* (a part is 8-byte aligned) */
                    float o[2][4];
#pragma unroll
                    for (int w = 0; w < 2; w++)
#pragma unroll
                        for (int e = 0; e < 4; e++) o[w][e] = ob[w][e] + (oa[w][e] + oc[w][e]);
                    *(float2 *)(pz + 16 * warp + 4 * t) = make_float2(o[0][2 * h], o[1][2 * h]);
                    *(float2 *)(pz + 16 * warp + 4 * t + 2) = make_float2(o[0][2 * h + 1], o[1][2 * h + 1]);
                }
            }
            if (sq == 0 && len_s) {
                float *pz = part + att_part(i0 + sr / gq, h0 + sr % gq, z, n_heads, head_dim);
                pz[head_dim] = m_run;
                pz[head_dim + 1] = l_run;
            }
        }
    }
    if (!count) return;
    /* fused merge: one counter per (first token, first head) of the block */
    if (!att_last_block(count + (size_t)i0 * n_heads + h0, zb, NZ)) return;
    /* every thread on the block's rows (fewer rows, more threads a row: fewer dims a thread) */
    const int rows = gq * nt, tpr = 32 * ATT_WARPS / rows, r = threadIdx.x / tpr;
    if (r < rows) att_merge(out, xp, part, h0 + r % gq, i0 + r / gq, n_heads, head_dim, att_splits(t_len[r / gq], chunk), threadIdx.x % tpr, tpr);
}
