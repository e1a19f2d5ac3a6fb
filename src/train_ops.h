/* train_ops.h - F32 training ops on host memory, each forward next to its backward (llm.c's
 * layout): linear (OpenBLAS sgemm), RMSNorm (also per head for q/k norms), RoPE, SwiGLU,
 * attention over explicit key ranges, embedding gather. Used by the drafter trainer
 * (train_draft.c) and the LM pretrainer (train_lm.c).
 *
 * Conventions: row-major; every gradient output ACCUMULATES (+=) so residual streams and
 * shared weights add up; the caller zeroes. A NULL gradient pointer means "not wanted".
 * Determinism: for a fixed thread count every op gives the same bits run to run; the
 * non-BLAS ops (norms, RoPE, SwiGLU, attention) give the same bits for any thread count (work
 * is split over independent rows or heads, never over a reduction). */
#ifndef DSPARK_TRAIN_OPS_H
#define DSPARK_TRAIN_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out[N][n_out] = in[N][n_in] W[n_out][n_in]^T (+ b[n_out]) */
void top_linear_fwd(float *out, const float *in, const float *W, const float *b, int N, int n_in, int n_out);
void top_linear_bwd(float *d_in, float *d_W, float *d_b, const float *d_out, const float *in, const float *W, int N, int n_in, int n_out);

/* Qwen3 RMSNorm over rows of D: rstd = 1/sqrt(mean(x^2) + eps), out = w * (x * rstd); rstd [N] saved. */
void top_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps);
void top_rmsnorm_bwd(float *d_x, float *d_w, const float *d_out, const float *x, const float *w, const float *rstd, int N, int D);

/* Rotary embedding in place on x[N][H][hd] at positions pos[N], transformers' rotate_half with
 * float32 inv_freq = 1/theta^(2j/hd) and cosf/sinf of pos*inv_freq (as backend_cpu.c's rope).
 * Backward: the transpose, a rotation by the negative angle, in place on d_x. */
void top_rope_fwd(float *x, const int32_t *pos, int N, int H, int hd, float theta);
void top_rope_bwd(float *d_x, const int32_t *pos, int N, int H, int hd, float theta);

/* out = silu(gate) * up elementwise */
void top_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void top_swiglu_bwd(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up, size_t n);

/* Grouped-query attention where query i attends to keys [r0_lo[i], r0_hi[i]) U [r1_lo[i],
 * r1_hi[i]) (the drafter's block: context keys < anchor, then its own block; a causal LM:
 * one range [start, i+1)). q[Nq][Hq][hd], k, v[Nk][Hkv][hd], out[Nq][Hq][hd], scale
 * 1/sqrt(hd); lse[Nq][Hq] (log-sum-exp of the scaled scores) saved. A query without keys
 * outputs 0 (lse = -inf) and gets no gradient. The backward recomputes the probabilities from
 * lse (no [Nq][Nk] matrix is kept) and accumulates d_q, d_k, d_v. */
void top_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *r0_lo,
                       const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd);
void top_attention_bwd(float *d_q, float *d_k, float *d_v, const float *d_out, const float *out, const float *lse, const float *q,
                       const float *k, const float *v, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo,
                       const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd);

/* out[N][D] = table[ids[i]] (frozen or trained; the scatter-add backward is the caller's) */
void top_embedding_fwd(float *out, const float *table, const int32_t *ids, int N, int D);

#endif
