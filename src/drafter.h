/* drafter.h - a DeepSpec DSpark / DFlash drafter (Qwen3DSparkModel): checkpoint loading and
 * the drafting forward (DeepSpec digest §2).
 *
 * One drafting round for a request whose last committed token (the anchor) sits at position
 * `start` and whose target features for positions 0..start-1 are in the draft cache:
 *   drafter_block(anchor, start)   -> hidden [B][d] (after the final norm), base logits [B][V]
 *   drafter_head(j, prev)          -> corrected logits of slot j given the previous token
 *                                     (anchor for j = 0, the token drawn at slot j-1 after),
 *                                     and the confidence logit of slot j (pre-sigmoid)
 * then, after verification, drafter_append_context() with the target features of the anchor
 * and the accepted drafts. The draft KV cache holds only context: block entries are written
 * past cache_len and never counted, which is DeepSpec's crop(start).
 *
 * All compute goes through Backend ops, so the CUDA backend runs it unchanged. */
#ifndef DSPARK_DRAFTER_H
#define DSPARK_DRAFTER_H

#include "draft_config.h"
#include "qwen3.h"

typedef struct {
    DraftConfig cfg;
    char dir[1024];
    StModel st;
    Backend *be;
    Weight embed;          /* [V][d]; the target's Weight when the bytes are equal */
    Weight lm_head;        /* [V][d]; idem */
    bool shared_embed, shared_lm_head;
    Qwen3Layer *layers;    /* [Ld] */
    Weight norm;           /* [d] */
    Weight fc;             /* [d][m*d] */
    Weight hidden_norm;    /* [d] */
    /* sequential (Markov) head, markov_rank r > 0 */
    Weight w1;             /* [V][r] embedding table */
    Weight w2;             /* [V][r] linear r -> V */
    Weight gate_w, gate_b; /* gated: [r][d+r], [r]; input [h ; W1[x]] */
    Weight joint_w, joint_b; /* rnn: [3r][2r+d], [3r]; input [s ; W1[x] ; h], out [gate ; cand ; out] */
    /* confidence head */
    Weight conf_w, conf_b; /* [1][d (+r)], [1]; input [h ; W1[x]] */
} Drafter;

/* Loads dir/config.json + model.safetensors (or shards), validates every tensor by name and
 * shape and the config against the target (draft_config_validate). */
ds_status drafter_load(Drafter *d, const char *dir, const Qwen3Model *target, Backend *be, char *err);
void drafter_free(Drafter *d);

/* Per-request drafting state: the draft KV cache (one sequence) and the activation arena. */
typedef struct {
    int max_ctx;          /* draft cache positions */
    int max_chunk;        /* context features per drafter_append_context call */
    int cache_len;        /* positions 0..cache_len-1 hold context K/V */
    KvCache kv;
    /* backend memory */
    float *ctx, *kbuf, *vbuf;                 /* [max_chunk][d], [max(chunk,B)][kd] x2 */
    float *x, *h, *q, *att, *gate, *up;       /* block activations */
    float *hidden;                            /* [B][d] after the final norm */
    float *base_logits;                       /* [B][V] */
    int logits_ready;                         /* rows of base_logits computed for this block */
    float *logits;                            /* [V] corrected logits of the current slot */
    float *w1x, *cat, *pre, *state, *tmp, *conf, *bias, *zeros; /* sequential / confidence head scratch */
    int32_t *d_ids, *d_pos, *d_slot, *d_kvlen;
    /* host memory */
    float *logits_host;                       /* [V] (== logits on a host-memory backend) */
    int32_t *h_pos, *h_zero, *h_kvlen;
} DraftState;

ds_status draft_state_init(DraftState *s, const Drafter *d, int max_ctx, int max_chunk, char *err);
void draft_state_free(DraftState *s, const Drafter *d);
/* Forget all context (a new request). */
static inline void draft_state_reset(DraftState *s) { s->cache_len = 0; }

/* Append target features ([n][m*d], backend memory, row i = position pos0+i) to the draft
 * cache: ctx = hidden_norm(fc(features)), then per layer k_norm(k_proj(ctx)) with RoPE at the
 * true positions and v_proj(ctx). pos0 must equal cache_len. */
ds_status drafter_append_context(Drafter *d, DraftState *s, const float *features, int n, int pos0, char *err);
/* Crop the context to `len` positions (len <= cache_len). */
void drafter_crop(DraftState *s, int len);

/* Block forward: [anchor, mask x (B-1)] at positions start..start+B-1, attending to all
 * context and bidirectionally within the block. start must equal cache_len and
 * start + B <= max_ctx. Resets the RNN head state. */
ds_status drafter_block(Drafter *d, DraftState *s, int32_t anchor, int start, char *err);
/* The block's base logits (s->base_logits [B][V]) are computed for the first rows only, the
 * rest when drafter_head first needs them; this completes them (dumps, tests). */
void drafter_all_logits(Drafter *d, DraftState *s);
/* Slot j's corrected logits (base + sequential bias from prev) into s->logits_host [V], and
 * its confidence logit into *confidence (NULL: skip; 0 without a confidence head). For the
 * RNN head, call j = 0, 1, ... in order after drafter_block. */
ds_status drafter_head(Drafter *d, DraftState *s, int j, int32_t prev, float *confidence, char *err);
/* The same with nothing read back (backend sampling ops): prev_dev, the previous token, is in
 * backend memory (e.g. where the sampler drew it); the logits stay in s->logits (backend);
 * the confidence logit is copied to confidence_dev (backend memory; NULL: skip; untouched
 * without a confidence head). */
ds_status drafter_head_dev(Drafter *d, DraftState *s, int j, const int32_t *prev_dev, float *confidence_dev, char *err);

#endif
