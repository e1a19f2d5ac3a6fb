/* backend.h - the small interface between model code and the hardware.
 *
 * Model code (qwen3.c, drafter.c, ...) calls only these function pointers, on buffers that
 * the backend allocated: on the CPU they are host memory, on CUDA device memory. Model code
 * never tests which backend runs it. Every op is eager and synchronous from the caller's view
 * (a CUDA backend may queue work on one stream; to_host synchronises).
 *
 * Exactness contract (what speculative decoding, batching and resume rest on): every output
 * row of every op is computed by the same arithmetic, in the same order, whatever the number
 * of rows in the call and the number of threads. So a token's logits are bitwise the same
 * alone, in a batch of 17, or inside a verification block.
 *
 * Conventions: activations are F32, row-major. A Weight is [rows][cols] as PyTorch stores
 * nn.Linear ([out][in]); matmul computes out[i][o] = sum_k x[i][k] * W[o][k]. */
#ifndef DSPARK_BACKEND_H
#define DSPARK_BACKEND_H

#include "base.h"

typedef struct {
    const void *host;  /* F32/BF16/F16 data in host memory (usually the checkpoint mmap) */
    void *dev;         /* backend copy, NULL when the backend reads host memory directly */
    ds_dtype dtype;
    int rows, cols;    /* a 1-D weight (norm) has rows == 1 */
    int dev_layout;    /* how the backend laid dev out: 0 as host (row-major); else its own
                          (the CUDA backend's tiles of 16 rows, backend_cuda.cu) */
} Weight;

/* KV cache of one model: per layer and sequence slot, max_ctx rows of kv_dim floats.
 * Layout [n_layers][n_slots][max_ctx][kv_dim], in backend memory. Lengths are the caller's:
 * truncation (rollback after verification) is just the caller using a shorter length. */
typedef struct {
    float *k, *v;
    int n_layers, n_slots, max_ctx, kv_dim;
} KvCache;

enum { ACT_NONE = 0, ACT_SIGMOID = 1, ACT_TANH = 2 };
enum { EW_MUL = 0, EW_LERP = 1 };

/* graph_begin keys of the drafter's steps (drafter.c): block, then slot j's head at + 1 + j */
#define GRAPH_KEY_DRAFT (1 << 30)
#define GRAPH_KEYS_DRAFT 65 /* block + 64 slots (draft_config's largest block_size) */

typedef struct Backend Backend;
struct Backend {
    const char *name;
    bool host_memory;  /* buffers are plain host memory (to_host/to_device are memcpy) */
    int n_threads;

    /* ---- memory ---- */
    void *(*alloc)(Backend *be, size_t bytes);          /* zeroed; NULL on failure */
    void (*free)(Backend *be, void *p);
    void (*to_device)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*to_host)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes);  /* device to device */
    /* Make w usable by this backend (CUDA: copy to the GPU). CPU: nothing. */
    ds_status (*upload_weight)(Backend *be, Weight *w, char *err);
    void (*release_weight)(Backend *be, Weight *w);
    void (*synchronize)(Backend *be);

    /* ---- ops ---- */
    /* out[i][:] = table[ids[i]][:] (F32), ids in backend memory */
    void (*embed)(Backend *be, float *out, const Weight *table, const int32_t *ids, int n);
    /* out[n][w->rows] = x[n][w->cols] . W^T */
    void (*matmul)(Backend *be, float *out, const float *x, const Weight *w, int n);
    /* RMSNorm of n rows of `dim` (w has dim entries): out = x / sqrt(mean(x^2) + eps) * w.
     * Used for the q/k norms too, with n = tokens * heads and dim = head_dim. out may be x. */
    void (*rmsnorm)(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps);
    /* Rotary embedding in place (rotate-half layout, as transformers' Qwen3):
     * x is [n][n_heads][head_dim]; token i rotated by pos[i]. */
    void (*rope)(Backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim, float theta);
    /* Write k, v ([n][kv_dim]) to the cache of `layer` at (slot[i], pos[i]). */
    void (*kv_write)(Backend *be, KvCache *kv, int layer, const float *k, const float *v,
                     const int32_t *slot, const int32_t *pos, int n);
    /* Grouped-query attention of n query tokens: token i attends to cache rows [0, kv_len[i])
     * of its slot (causal decoding: kv_len = pos + 1; a draft block: start + block_size).
     * q is [n][n_heads][head_dim] -> out [n][n_heads][head_dim]. scale = 1/sqrt(head_dim). */
    void (*attention)(Backend *be, float *out, const float *q, const KvCache *kv, int layer,
                      const int32_t *slot, const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim);
    /* OPTIONAL (NULL: model code calls matmul once per weight, then swiglu): outs[j] =
     * x . ws[j]^T for j < count, same x and n (all ws[j]->cols equal); act 1 (count 2, equal
     * rows): then outs[0] = silu(outs[0]) * outs[1]. Bitwise the values of the separate
     * calls; lets a backend use one parallel region for q/k/v and for gate/up/swiglu. */
    void (*matmul_multi)(Backend *be, float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act);
    /* OPTIONAL fusions (NULL: model code calls the separate ops); each gives bitwise the values
     * of the ops it replaces, and exists to cut launches per step on the GPU.
     * qk_norm_rope_kv: rmsnorm of every q head by q_norm and k head by k_norm, rope of both by
     * pos, then kv_write of k and v: the attention input of one layer.
     * add_rmsnorm: x += y, then out = rmsnorm(x) by w (out may be y). */
    void (*qk_norm_rope_kv)(Backend *be, float *q, float *k, const float *v, const Weight *q_norm, const Weight *k_norm, float eps,
                            KvCache *kv, int layer, const int32_t *slot, const int32_t *pos, int n, int n_heads, int n_kv_heads,
                            int head_dim, float theta);
    void (*add_rmsnorm)(Backend *be, float *x, const float *y, float *out, const Weight *w, int n, int dim, float eps);
    /* OPTIONAL folds of a product's neighbours into it (both or neither; NULL: the separate ops).
     * matmul_norm: matmul_multi of rmsnorm(x) by norm (x [n][K] unchanged, norm K entries);
     * its values may differ from rmsnorm then matmul_multi within rounding (the GPU scales the
     * sums by 1/rms instead of the inputs). tmp ([n][K]; may be x, then x is lost) is scratch
     * for a path that normalises apart.
     * matmul_add: out += x . w^T, bitwise matmul then add; tmp ([n][w->rows]) scratch alike.
     * next_norm (or NULL): a hint that the next op reading out is matmul_norm by next_norm,
     * which the backend may prepare for in this op's launch; it changes no value. */
    void (*matmul_norm)(Backend *be, float *const *outs, const float *x, const Weight *norm, float eps, const Weight *const *ws, int count,
                        int n, int act, float *tmp);
    void (*matmul_add)(Backend *be, float *out, const float *x, const Weight *w, int n, float *tmp, const Weight *next_norm);
    /* out = silu(gate) * up, n elements. out may be gate. */
    void (*swiglu)(Backend *be, float *out, const float *gate, const float *up, size_t n);
    /* x += y, n elements */
    void (*add)(Backend *be, float *x, const float *y, size_t n);
    /* dst[i][0:cols] = src[rows[i]][0:cols] with row strides (in floats); rows NULL = identity */
    void (*gather_rows)(Backend *be, float *dst, int dst_stride, const float *src, int src_stride,
                        const int32_t *rows, int n, int cols);
    /* (drafter sequential heads) x[n][dim] += bias (bias NULL: none), then x = act(x) in place */
    void (*bias_act)(Backend *be, float *x, const Weight *bias, int n, int dim, int act);
    /* (drafter sequential heads) elementwise over n: EW_MUL out = a*b;
     * EW_LERP out = c*a + (1-c)*b (the RNN head's g*s + (1-g)*tanh(cand)). out may alias a or b. */
    void (*ew)(Backend *be, int op, float *out, const float *a, const float *b, const float *c, size_t n);

    /* ---- step graphs (OPTIONAL, both NULL: every op runs when called) ----
     * Bracket the ops of one step (qwen3_forward's, between its input uploads and its logits
     * download; drafter_block's and each drafter head's) so a backend may record them once and
     * replay the record (CUDA graphs). key: the bucket of the record (qwen3: the token count;
     * the drafter: GRAPH_KEY_DRAFT + 0 for the block, + 1 + j for slot j's head, a range no
     * token count reaches); the backend keeps records per
     * key and per exact argument list, so any call is safe. graph_end returns false when the
     * ops were only checked against the records and none matched: the caller must then issue
     * the same ops again in a new begin/end pair (the backend records or runs them then; a
     * third pair always runs them). Between begin and end only ops (embed .. ew, copy) may be
     * called, every buffer they read must hold its input by graph_end (a replay reads it
     * then), and op results are there only after graph_end. */
    void (*graph_begin)(Backend *be, int key);
    bool (*graph_end)(Backend *be);

    /* ---- sampling on backend memory (OPTIONAL, all NULL on the CPU backend: callers then
     * run sample.h / verify.h on host copies of the logits). Same semantics as the host
     * functions, so speculative decoding needs no logits row on the host; called outside
     * graph brackets; results are in backend memory (read them with to_host).
     * sample_probs: probs[n][vocab] = sample_dist(logits[n][vocab]) per row (temperature < 1e-5:
     *   the greedy one-hot; else softmax(logits / T), top-k, top-p as sample.h), equal up to
     *   float rounding in the softmax's sums; ws: sample_ws_bytes(n, vocab) bytes of backend memory.
     * draw: *out = sample_from(probs, vocab, u).
     * verify: verify_block(pt [k+1][vocab], q [k][vocab], drafts [k], u) with the uniforms
     *   u[0..k] given by the host (u[i] = the i-th rng_uniform verify_block would draw; it uses
     *   a + 2 of them when draft a is rejected, k + 1 when all are accepted, none when greedy);
     *   bug: a VerifyBug (tests), q_ratio read only for VERIFY_BUG_RATIO_Q. Writes
     *   out[0] = n_accepted, out[1] = next, out[2 + j] = drafts[j] (j < k): one read commits. */
    size_t (*sample_ws_bytes)(Backend *be, int n, int vocab);
    void (*sample_probs)(Backend *be, float *probs, const float *logits, int n, int vocab, float temperature, int top_k,
                         float top_p, void *ws);
    void (*draw)(Backend *be, int32_t *out, const float *probs, int vocab, double u);
    void (*verify)(Backend *be, int32_t *out, const float *pt, const float *q, const int32_t *drafts, int k, int vocab,
                   bool greedy, const double *u, int bug, const float *q_ratio);

    void (*destroy)(Backend *be);
    void *impl;
};

/* CPU backend (always present). n_threads <= 0: OpenMP default. */
Backend *backend_cpu_create(int n_threads);
/* "cpu" or "cuda". Fails with a one-line error when the device is not available. */
ds_status backend_create(const char *device, int n_threads, Backend **out, char *err);
/* What the process runs: a batch of requests per step (the default: serve, training, data) or
 * one sequence at a time (generate, eval: decode steps of 1 row, verify steps of <= 17). The
 * CUDA backend picks the kernel of the paired gate/up by it (faster at 1-2 rows, slower at
 * 16-64; docs/bench-cuda.md); within a process a row's bits never depend on the batch. The
 * CPU backend ignores it. */
typedef enum { BACKEND_BATCHED = 0, BACKEND_ONE_STREAM = 1 } BackendUse;
ds_status backend_create_for(const char *device, int n_threads, BackendUse use, Backend **out, char *err);

static inline Weight weight_view(const void *host, ds_dtype dtype, int rows, int cols) {
    Weight w = {host, NULL, dtype, rows, cols, 0};
    return w;
}

#endif
