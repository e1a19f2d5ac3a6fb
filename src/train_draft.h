/* train_draft.h - DeepSpec's training forward and backward of a DSpark / DFlash drafter
 * (Qwen3DSparkModel.forward + compute_dspark_loss + autograd; DeepSpec digest §5.2-§5.5), on
 * the host in F32, for one sequence at a time.
 *
 * One step for a sequence of S tokens with target features:
 *   anchors   n_anchors positions (sampled as DeepSpec does, or given), each a block of B slots:
 *             input [x_p, mask x (B-1)] at positions p..p+B-1 (dummy blocks: all mask at 0..B-1)
 *   backbone  ctx = hidden_norm(fc(features)); per layer the block tokens attend to the context
 *             keys < p and to their own block (bidirectional); dummy blocks attend to nothing
 *   heads     draft logits = lm_head(out) + Markov bias, teacher-forced with the true previous
 *             tokens (slot 0: x_p, slot k: x_{p+k}); RNN state reset per block; confidence logit
 *             = proj([out ; W1[prev]])
 *   loss      train_loss() with the eval mask (keep & in range & loss mask, cumulative) and the
 *             aligned target logits lm_head(last_hidden[p+k]) (frozen)
 *   backward  into t->grads (+=, scaled by grad_scale), every trainable tensor; embed_tokens and
 *             lm_head are frozen and get no gradient.
 * Vocabulary-sized tensors ([rows][V] logits, target logits, their gradient) exist only for a
 * chunk of blocks at a time, so memory stays bounded for V = 151936.
 *
 * Parameter layout: t->params holds every tensor of the checkpoint under DeepSpec's names
 * (digest §1.3), F32, frozen ones (embed_tokens, lm_head) with trainable = false; t->grads
 * holds the trainable tensors only, same names, same order (so params_like(&moments,
 * &t->grads) gives the optimiser's moments). */
#ifndef DSPARK_TRAIN_DRAFT_H
#define DSPARK_TRAIN_DRAFT_H

#include "draft_config.h"
#include "params.h"
#include "qwen3.h"
#include "train_loss.h"

#define TRAIN_MAX_BLOCK 32

/* Pointers into a ParamSet for one decoder layer (weights, or their gradients). */
typedef struct {
    float *input_norm, *q_proj, *k_proj, *v_proj, *o_proj, *q_norm, *k_norm, *post_norm;
    float *gate_proj, *up_proj, *down_proj;
} TrainLayerPtrs;

/* The whole drafter's tensors in a ParamSet (NULL where absent: frozen tensors in grads,
 * heads the config lacks). */
typedef struct {
    float *embed, *lm_head;               /* [V][d] frozen */
    TrainLayerPtrs *layers;               /* [Ld] */
    float *norm, *fc, *hidden_norm;       /* [d], [d][m*d], [d] */
    float *w1, *w2;                       /* [V][r] each */
    float *gate_w, *gate_b;               /* [r][d+r], [r] */
    float *joint_w, *joint_b;             /* [3r][2r+d], [3r] */
    float *conf_w, *conf_b;               /* [1][d(+r)], [1] */
} TrainPtrs;

/* Markov / confidence heads (train_heads.c): teacher-forced forward over rows i = block*B + k
 * and its backward. Weights are host F32; matrices row-major [out][in]. */
typedef struct {
    MarkovType type;        /* MARKOV_NONE: no Markov head */
    int V, d, r, B;
    int conf_in;            /* 0: no confidence head; d or d + r (with Markov features) */
    const float *w1, *w2, *gate_w, *gate_b, *joint_w, *joint_b, *conf_w, *conf_b;
} HeadWeights;

typedef struct {
    float *d_w1, *d_w2, *d_gate_w, *d_gate_b, *d_joint_w, *d_joint_b, *d_conf_w, *d_conf_b; /* NULL: skip */
} HeadGrads;

/* Saved activations of the heads for N = n_blocks * B rows. */
typedef struct {
    float *w1x;    /* [N][r]  W1[prev] */
    float *u;      /* [N][r]  what W2 reads: W1[prev] (vanilla), g*W1[prev] (gated), tanh(o) (rnn) */
    float *g;      /* [N][r]  gated: sigmoid gate; rnn: sigmoid(gate) */
    float *c;      /* [N][r]  rnn: tanh(candidate) */
    float *s_prev; /* [N][r]  rnn: state before the step (0 at slot 0) */
    float *conf;   /* [N]     confidence logits */
} HeadActs;

/* Floats of scratch the heads need for N rows (the layout inside is theirs). */
size_t heads_act_floats(const HeadWeights *w, int N);
/* Point a HeadActs into buf (heads_act_floats(w, N) floats). */
void heads_acts_bind(HeadActs *a, const HeadWeights *w, int N, float *buf);
/* Forward: h [N][d] backbone output (after the final norm), prev [N] previous tokens. Fills a.
 * The Markov bias of row i is W2 a->u[i] (added by the caller, chunked with lm_head). */
void heads_fwd(const HeadWeights *w, HeadActs *a, const float *h, const int32_t *prev, int n_blocks);
/* Backward: d_u [N][r] = dL/du (dLoss/dbias W2; NULL or ignored without a Markov head), d_conf
 * [N] (NULL: no confidence gradient). Accumulates dL/dh into d_h [N][d] and the head weight
 * gradients into g. Uses scratch [N][3r + 2r + d] floats (heads_bwd_scratch_floats). */
size_t heads_bwd_scratch_floats(const HeadWeights *w, int N);
void heads_bwd(const HeadWeights *w, const HeadActs *a, const HeadGrads *g, float *d_h, const float *d_u, const float *d_conf,
               const float *h, const int32_t *prev, int n_blocks, float *scratch);

typedef struct {
    TrainLossParts parts;     /* loss terms of this sequence (total = parts.total) */
    int n_candidates;         /* valid anchor positions (loss_mask[p] & loss_mask[p+1]) */
    int n_kept;               /* blocks kept (<= n_anchors) */
    int block_size;
    /* DeepSpec's metrics as sums, so a logging window adds them up (digest §5.5):
     * accept_rate@k = accept_sum[k] / accept_count[k], tau_probabilistic = tau_sum / tau_blocks */
    double accept_sum[TRAIN_MAX_BLOCK], accept_count[TRAIN_MAX_BLOCK];
    double tau_sum, tau_blocks;
    double supervised;        /* sum of the eval mask */
    /* confidence head (with one): confidence_abs_error / _bias / _cumprod_bias = these sums
     * / parts.den (loss-weighted, DeepSpec's loss.py) */
    double conf_abs_err_sum, conf_bias_sum, conf_cumprod_bias_sum;
} TrainDraftStats;

typedef struct {
    DraftConfig cfg;
    int max_seq, max_anchors;
    int chunk_blocks;          /* blocks per vocabulary-sized chunk (set by init; may be lowered) */
    ParamSet params;           /* every tensor, F32 master weights */
    ParamSet grads;            /* trainable tensors only */
    TrainPtrs P, G;            /* pointers into params / grads */
    /* activation arena (one allocation, sized by init for max_seq, max_anchors) */
    float *arena;
    size_t arena_floats;
    int32_t *iarena;
    /* last step's per-row values, for tests and logging: [n_anchors*B] */
    int last_n_blocks;
    float *eval_mask;          /* [A*B] 0/1 */
    float *conf;               /* [A*B] confidence logits (NULL without a head) */
    float *soft_label;         /* [A*B] c* */
    float *dbg_logits;         /* caller-owned [A*B][V]: when set, the draft logits are copied here */
    void *priv;                /* buffer pointers (train_draft.c) */
} TrainDraft;

/* Allocates params (F32 master; norms 1, others 0 until train_draft_init_weights or
 * train_draft_load), grads (zeroed) and the activation arena for sequences of up to max_seq
 * tokens and num_anchors blocks. embed_tokens / lm_head are copied (widened to F32) from the
 * target when target is not NULL. */
ds_status train_draft_init(TrainDraft *t, const DraftConfig *cfg, const Qwen3Model *target, int max_seq, int num_anchors,
                           char *err);
void train_draft_free(TrainDraft *t);
/* DeepSpec's initialisation of a new drafter (digest §1.6; draft_init_weights): Linear and
 * Embedding weights ~ N(0, initializer_range 0.02) (bf16-rounded), biases 0, RMSNorm weights 1.
 * Frozen tensors untouched. */
void train_draft_init_weights(TrainDraft *t, uint64_t seed);
/* All tensors from a DeepSpec checkpoint directory (or .safetensors file) into params. */
ds_status train_draft_load(TrainDraft *t, const char *draft_dir, char *err);

/* One DeepSpec training forward + backward for one sequence.
 * ids [S], loss_mask [S] (0/1), features [S][m*d] (target layer outputs, target_layer_ids
 * order), last_hidden [S][d] (final-normed target hidden).
 * anchors NULL: sample min(num_anchors, candidates) anchors with *rng (uniform without
 * replacement, sorted; DeepSpec's sample_anchor_positions; *rng is a splitmix64 state, advanced);
 * dummies are not computed since they
 * carry no loss. Otherwise anchors [n_anchors] / keep [n_anchors] are used as given (dummy slots
 * included, computed as DeepSpec does). Gradients of grad_scale * loss are ADDED to t->grads. */
ds_status train_draft_step(TrainDraft *t, const int32_t *ids, const uint8_t *loss_mask, int S, const float *features,
                           const float *last_hidden, const int32_t *anchors, const uint8_t *keep, int n_anchors,
                           uint64_t *rng, const TrainLossCfg *loss, float grad_scale, TrainDraftStats *out, char *err);

/* Target features of ids[0..S) by one causal forward of the target: features [S][m*d] = the
 * outputs of cfg->target_layer_ids (id -1 = embedding output), last_hidden [S][d] = the
 * final-normed hidden state. Host memory. */
ds_status train_draft_features(Qwen3Model *target, const DraftConfig *cfg, const int32_t *ids, int S, float *features,
                               float *last_hidden, char *err);

/* The anchor sampler alone (for tests and the trainer's statistics): candidates are p in
 * [0, S-2] with loss_mask[p] & loss_mask[p+1]; picks min(A, candidates) uniformly without
 * replacement, ascending, then dummies (anchor 0, keep 0). Returns the number of candidates. */
int train_sample_anchors(const uint8_t *loss_mask, int S, int A, uint64_t *rng, int32_t *anchors, uint8_t *keep);

/* Relative error ||g - ref|| / ||ref|| (L2 over the tensor; ||g|| where ref is all zero) of
 * every tensor of grads against the same-named tensor of a safetensors file or directory;
 * report (may be NULL) is called per tensor; *worst = the largest. A tensor missing from the
 * file or of another shape is an error. */
typedef void (*TrainGradReport)(const char *name, double rel, double ref_norm, void *user);
ds_status train_grads_compare(const ParamSet *grads, const char *ref_path, TrainGradReport report, void *user, double *worst,
                              char *err);

#endif
