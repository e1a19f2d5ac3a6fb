/* qwen3.h - the Qwen3 target model: config, weights (a struct of pointers into the
 * checkpoint mmap), KV cache and ONE forward over a flat batch of tokens that may belong to
 * several sequences (slots), each with its own position.
 *
 * Layer outputs are numbered as DeepSpec does: -1 = embedding output, i = residual stream
 * after decoder layer i. QWEN3_FINAL_NORM asks for the final-normed hidden state (what
 * lm_head reads). */
#ifndef DSPARK_QWEN3_H
#define DSPARK_QWEN3_H

#include <jansson.h>

#include "backend.h"
#include "safetensors.h"

#define QWEN3_MAX_EOS 8
#define QWEN3_FINAL_NORM 1000

typedef struct {
    char architecture[64];
    int vocab_size, hidden_size, intermediate_size;
    int n_layers, n_heads, n_kv_heads, head_dim;
    float rms_norm_eps, rope_theta;
    bool tie_word_embeddings;
    int max_position_embeddings;
    int bos_token_id;
    int eos_token_ids[QWEN3_MAX_EOS];
    int n_eos;
} Qwen3Config;

/* Parse the Qwen3 fields of a config.json object. `path` is only used in error messages.
 * Accepts rope theta as top-level rope_theta or rope_parameters.rope_theta. */
ds_status qwen3_config_parse(Qwen3Config *c, json_t *root, const char *path, char *err);
ds_status qwen3_config_load(Qwen3Config *c, const char *path, char *err);

typedef struct {
    Weight input_norm;                  /* [hidden] */
    Weight q_proj, k_proj, v_proj;      /* [n_heads*head_dim][hidden], [n_kv_heads*head_dim][hidden] x2 */
    Weight o_proj;                      /* [hidden][n_heads*head_dim] */
    Weight q_norm, k_norm;              /* [head_dim] */
    Weight post_norm;                   /* [hidden] */
    Weight gate_proj, up_proj;          /* [intermediate][hidden] */
    Weight down_proj;                   /* [hidden][intermediate] */
} Qwen3Layer;

/* What one decoder layer reads and writes (backend memory): the residual stream x [n][hidden],
 * scratch h [n][hidden], q/k/v/att/gate/up, and the KV cache at the rows' slots, positions and
 * key counts. */
typedef struct {
    float *x, *h, *q, *k, *v, *att, *gate, *up;
    KvCache *kv;
    const int32_t *slot, *pos, *kv_len;
} Qwen3LayerIo;
/* whether be folds the rmsnorms and residual adds into the products (backend.h's matmul_norm
 * and matmul_add): then a model's layers run qwen3_layer_folded */
static inline bool qwen3_folds(const Backend *be) { return be->matmul_norm && be->matmul_add; }
/* Layer `layer` (weights L of config c) over n rows with the rmsnorms and residual adds folded
 * into the products (be must fold: qwen3_folds): x += the layer. next_norm: the norm the next
 * op applies to x (the next layer's input_norm), or NULL. */
void qwen3_layer_folded(Backend *be, const Qwen3Config *c, const Qwen3Layer *L, int layer, const Weight *next_norm, const Qwen3LayerIo *io,
                        int n);

/* Claim one decoder layer's tensors named prefix + "self_attn.q_proj.weight" etc. */
ds_status qwen3_layer_load(Qwen3Layer *l, StModel *st, const Qwen3Config *c, const char *prefix, Backend *be, char *err);
void qwen3_layer_release(Qwen3Layer *l, Backend *be);
/* Claim a tensor of the given shape (n_dims 1 or 2) as a Weight, uploaded to the backend. */
ds_status qwen3_take_weight(Weight *w, StModel *st, const char *name, int rows, int cols, Backend *be, char *err);

typedef struct {
    Qwen3Config cfg;
    char dir[1024];
    StModel st;
    Backend *be;
    Weight embed;        /* [vocab][hidden] */
    Weight final_norm;   /* [hidden] */
    Weight lm_head;      /* [vocab][hidden]; == embed when tied */
    Qwen3Layer *layers;
} Qwen3Model;

ds_status qwen3_load(Qwen3Model *m, const char *dir, Backend *be, char *err);
void qwen3_free(Qwen3Model *m);

/* Activation arena + KV cache, sized once. */
typedef struct {
    int max_tokens;          /* tokens per forward call */
    int max_logits;          /* logit rows per call */
    int max_feature_layers;  /* layer outputs per call */
    KvCache kv;
    /* backend memory */
    float *x, *h, *q, *k, *v, *att, *gate, *up, *rows_tmp;
    int32_t *d_tokens, *d_pos, *d_slot, *d_kv_len, *d_rows;
    float *logits;           /* [max_logits][vocab] */
    float *features;         /* [max_tokens][n_feature_layers * hidden] of the last call */
    /* host memory */
    float *logits_host;      /* == logits on a host-memory backend */
    int32_t *h_slot, *h_kv_len;
    int n_logits, n_features; /* of the last call */
} Qwen3State;

ds_status qwen3_state_init(Qwen3State *s, const Qwen3Model *m, int max_tokens, int max_logits, int max_feature_layers,
                           int n_slots, int max_ctx, char *err);
void qwen3_state_free(Qwen3State *s, const Qwen3Model *m);

typedef struct {
    int n;                      /* tokens in this call (<= max_tokens) */
    const int32_t *tokens;      /* host arrays of n entries */
    const int32_t *pos;
    const int32_t *slot;        /* NULL: all slot 0 */
    const int32_t *kv_len;      /* NULL: pos + 1 (causal within the slot) */
    const int32_t *logit_rows;  /* which of the n rows get logits (n_logits of them) */
    int n_logits;
    const int *feature_layers;  /* layer ids (-1 = embeddings, QWEN3_FINAL_NORM) to keep, in order */
    int n_feature_layers;
    /* device-resident speculative decoding (backend sampling ops): */
    const int32_t *dev_tokens;  /* non-NULL: the n token ids are already in backend memory (drawn
                                   there, so in range); tokens is not read */
    bool logits_on_device;      /* leave the logits in s->logits; s->logits_host is not written */
} Qwen3Batch;

/* One forward. Logits land in s->logits (backend) and s->logits_host (host copy);
 * requested layer outputs in s->features, row i = [layer a | layer b | ...] of token i. */
ds_status qwen3_forward(Qwen3Model *m, Qwen3State *s, const Qwen3Batch *b, char *err);

#endif
