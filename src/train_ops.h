/* train_ops.h - F32 training ops on host memory, each forward next to its backward (llm.c's
 * layout): linear (OpenBLAS sgemm), RMSNorm (also per head for q/k norms), RoPE, SwiGLU,
 * attention over explicit key ranges, embedding gather. Used by the drafter trainer
 * (train_draft.c) and the LM pretrainer (train_lm.c).
 *
 * Conventions: row-major; every gradient output ACCUMULATES (+=) so residual streams and
 * shared weights add up; the caller zeroes. A NULL gradient pointer means "not wanted" (a
 * frozen weight, an input that needs no gradient). Inputs are never modified, except x in
 * top_rope_fwd and d_x in top_rope_bwd (in place by contract). Outputs must not alias inputs.
 *
 * Determinism:
 *  - norms, RoPE, SwiGLU, attention, bias gradients: the same bits for ANY thread count. Work
 *    is split over independent rows, heads, columns or keys (attention: over fixed tiles of
 *    64 queries or 64 keys); every sum (a row's dot product, a weight gradient's sum over
 *    rows, a key's sum over queries) runs in one fixed order. Dot products use kernels.c's
 *    16-lane kern_dot_f32 (the ISA path, chosen once per process by kern_init, which these ops
 *    call first); attention's tile products are single-threaded sgemm calls inside the
 *    ops' own parallel loops (OpenBLAS's kernel for this CPU, fixed per process).
 *  - linear's products (sgemm): the same bits run to run for a fixed OpenBLAS thread count
 *    only. They change with that count (OpenBLAS 0.3.21, Debian's pthreads build, which
 *    ignores omp_set_num_threads: 1 vs 2 threads differ in the last bits; test_train_ops).
 *    So a bit-exact resume needs the same OPENBLAS_NUM_THREADS / core count. */
#ifndef DSPARK_TRAIN_OPS_H
#define DSPARK_TRAIN_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* e^x in a form compilers vectorise (no call; no float comparison, which -ftrapping-math
 * would keep as a branch: the range checks work on the bits): Cody-Waite reduction
 * x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, times 2^n through the
 * exponent bits. Relative error at most 1.5e-7 against double exp for x in [-87.3, 88]
 * (test_train_ops sweeps it); x < -87.3 (so -inf) gives 0, x > 88 gives e^88, NaN stays NaN. */
static inline float top_expf(float x) {
    int32_t ix, ax, cb, eb, sb;
    memcpy(&ix, &x, sizeof ix);
    ax = ix & INT32_MAX;
    const int32_t lo = 0x42ae999a, hi = 0x42b00000; /* the bits of 87.3f and 88.0f */
    int32_t under = -((ix < 0) & (ax > lo)), over = -((ix >= 0) & (ax > hi)), nan = -(ax > 0x7f800000);
    cb = (ix & ~(under | over)) | ((INT32_MIN | lo) & under) | (hi & over); /* x clamped to [-87.3, 88] */
    float xc, scale, e;
    memcpy(&xc, &cb, sizeof xc);
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    sb = ((int32_t)n + 127) * (1 << 23); /* 2^n, n in [-126, 127] */
    memcpy(&scale, &sb, sizeof scale);
    e = scale * (p * r * r + r + 1.0f);
    memcpy(&eb, &e, sizeof eb);
    eb = (ix & nan) | (eb & ~(nan | under));
    memcpy(&e, &eb, sizeof e);
    return e;
}

static inline float top_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float top_silu(float x) { return x / (1.0f + expf(-x)); }

/* out[N][n_out] = in[N][n_in] W[n_out][n_in]^T (+ b[n_out]; b may be NULL) (nn.Linear) */
void top_linear_fwd(float *out, const float *in, const float *W, const float *b, int N, int n_in, int n_out);
/* d_in[N][n_in] += d_out W;  d_W[n_out][n_in] += d_out^T in;  d_b[n_out] += sum_rows d_out */
void top_linear_bwd(float *d_in, float *d_W, float *d_b, const float *d_out, const float *in, const float *W, int N, int n_in, int n_out);

/* Qwen3RMSNorm over N rows of D: rstd[n] = 1/sqrtf(mean(x^2) + eps), out = w * (x * rstd)
 * (bit for bit the inference backend's rmsnorm, kern_rmsnorm, on either ISA path: the same
 * 16-lane kern_dot_f32 and multiplication order). rstd [N] is saved for the
 * backward. q/k norms: N = tokens * heads, D = head_dim. */
void top_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps);
/* d_x[N][D] += dL/dx;  d_w[D] += sum_rows d_out * x * rstd */
void top_rmsnorm_bwd(float *d_x, float *d_w, const float *d_out, const float *x, const float *w, const float *rstd, int N, int D);

/* Rotary embedding in place on x[N][H][hd] at positions pos[N]: transformers' rotate_half
 * layout with float32 inv_freq[j] = 1/powf(theta, 2j/hd) and cosf/sinf(pos * inv_freq[j]),
 * bit for bit backend_cpu.c's rope (test_train_ops checks). hd even, hd/2 <= 512.
 * Backward: the transpose, i.e. rotation by the negative angle, in place on d_x (so it
 * OVERWRITES d_x with dL/d(pre-rope x) rather than accumulating: it is a pure rotation). */
void top_rope_fwd(float *x, const int32_t *pos, int N, int H, int hd, float theta);
void top_rope_bwd(float *d_x, const int32_t *pos, int N, int H, int hd, float theta);

/* out = silu(gate) * up elementwise over n, silu(g) = g / (1 + top_expf(-g)) (so within
 * 2e-7 relative of, not bit for bit, the inference kernels' kern_swiglu) */
void top_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
/* d_gate += d_out * up * silu'(gate);  d_up += d_out * silu(gate) */
void top_swiglu_bwd(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up, size_t n);

/* Grouped-query attention where query i attends to keys [r0_lo[i], r0_hi[i]) U [r1_lo[i],
 * r1_hi[i]) (the drafter's block: context keys < anchor, then its own block; a causal LM:
 * one range [start, i+1) and r1 empty). The two ranges must be disjoint, within [0, Nk),
 * and lo <= hi (lo == hi: empty). Keys are summed tile by tile (64 keys) in increasing order.
 * q[Nq][Hq][hd], k, v[Nk][Hkv][hd], out[Nq][Hq][hd]; query head h reads kv head
 * h / (Hq / Hkv); scale = 1/sqrt(hd). lse[Nq][Hq] = log-sum-exp of the scaled scores is saved
 * for the backward. A query without keys outputs 0 with lse = -inf and gets no gradient.
 * Each call allocates a small scratch (forward: threads x 64 x Nk floats; backward: Nq x Hq
 * plus threads x 2 x 64 x 64). Cost: only the 64 x 64 (query, key) tiles holding a visible
 * pair are computed, so a causal run or a drafter block costs about what its mask holds. */
void top_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *r0_lo,
                       const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd);
/* The backward recomputes p = exp(s - lse) (flash-attention style, no [Nq][Nk] matrix is
 * kept; out is the forward's output) and accumulates d_q, d_k, d_v (each may be NULL). */
void top_attention_bwd(float *d_q, float *d_k, float *d_v, const float *d_out, const float *out, const float *lse, const float *q,
                       const float *k, const float *v, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo,
                       const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd);

/* out[N][D] = table[ids[i]][:] (the embedding is frozen in training: no backward) */
void top_embedding_fwd(float *out, const float *table, const int32_t *ids, int N, int D);

#endif
