/* spec.h - speculative decoding of one request (DeepSpec base_evaluator, digest §3):
 * prefill, then rounds of draft -> verify -> accept -> roll back the target KV cache -> feed
 * the accepted tokens' target features to the drafter.
 *
 * Pieces that vary are seams:
 *   ProposalSource   who drafts: the DSpark/DFlash drafter (spec_drafter_source) or a
 *                    test-only stand-in; NULL = plain decoding through the same loop.
 *   VerifyLenPolicy  how many of the drafted slots to verify this round (full block by
 *                    default; DeepSpec's static confidence threshold; the scheduler's own).
 * Exactness: every draft token is drawn from the float32 distribution q = sample_dist(draft
 * logits) and verify_block scores with that same q; the target's rows come from one forward
 * whose per-row arithmetic equals plain decoding's (backend.h contract), so greedy
 * speculative output is token-identical to plain greedy output.
 * Device path: when the target's backend has the sampling ops (backend.h), logits, q and pt
 * stay in backend memory; drafts are drawn there and feed the next slot from there; per round
 * the host reads only verify's (n_accepted, next, drafts) (plus the confidences when a policy
 * or on_round wants them). Same uniforms, same order: greedy output is still token-identical,
 * sampled output has the target's law. */
#ifndef DSPARK_SPEC_H
#define DSPARK_SPEC_H

#include "drafter.h"
#include "sample.h"
#include "verify.h"

#define SPEC_MAX_BLOCK 64
#define SPEC_MAX_STOP 16

typedef struct {
    int block_size;                 /* slots per block */
    const int *feature_layers;      /* target layer outputs the source wants (NULL: none) */
    int n_feature_layers;
    void *self;
    void (*reset)(void *self);      /* new request */
    /* target features [n][n_feature_layers*hidden] (backend memory) of positions pos0.. */
    ds_status (*context)(void *self, const float *features, int n, int pos0, char *err);
    /* new block: committed tokens[0..start], the anchor is tokens[start]; *n_slots = how many
     * slots can be drafted (0: none, e.g. the context outgrew the draft cache) */
    ds_status (*begin)(void *self, const int32_t *tokens, int start, int *n_slots, char *err);
    /* logits [V] of slot j given the previous token (host memory, valid until the next call)
     * and its pre-sigmoid confidence (0 when the source has none) */
    ds_status (*slot)(void *self, int j, int32_t prev, const float **logits, float *confidence, char *err);
    /* OPTIONAL, used when the target's backend samples on the device (backend.h's sampling
     * ops): slot j's logits [V] in backend memory, the previous token read from backend memory
     * (prev_dev), the confidence written to backend memory (conf_dev; left alone when the
     * source has none). NULL: slot() is used and the drafted token is read back per slot. */
    ds_status (*slot_dev)(void *self, int j, const int32_t *prev_dev, const float **logits_dev, float *conf_dev, char *err);
} ProposalSource;

/* The verification-length seam: of n drafted slots, verify the first choose(...) (0..n).
 * confidence: pre-sigmoid confidence logits [n]. */
typedef struct {
    int (*choose)(void *ctx, const float *confidence, int n);
    void *ctx;
    /* choose's answer for the first j slots depends on those slots only (a threshold, the
     * paper's Algorithm 1 with its causal early stop; not the async variant): the loop then
     * asks after each drafted slot and stops drafting once fewer would be verified, so slots
     * that would never be verified are never drafted. Tokens are unchanged. */
    bool causal;
} VerifyLenPolicy;

/* DeepSpec's static rule (_confident_prefix_length): the first slot whose
 * sigmoid(confidence) < threshold ends the proposal; threshold <= 0 verifies all. ctx: float*. */
int spec_len_confidence_threshold(void *ctx, const float *confidence, int n);

typedef struct {
    SamplerParams sampler;
    uint64_t seed;                  /* RNG stream (seed, 0) */
    int max_new;
    int32_t stop_ids[SPEC_MAX_STOP];
    int n_stop;
    VerifyLenPolicy policy;         /* choose NULL: full block */
    bool (*on_token)(void *user, int32_t token); /* optional; return false to stop */
    void *user;
    VerifyBug bug;                  /* tests only */
    /* optional, after each verification: the pre-sigmoid confidences of the n_drafted slots,
     * how many were verified and how many accepted (calibration records these) */
    void (*on_round)(void *user, const float *confidence, int n_drafted, int n_verified, int n_accepted);
} SpecParams;

typedef struct {
    int rounds;                     /* verification rounds (the first token is not one) */
    int generated;
    int proposed;                   /* drafts sent to verification */
    int drafted;                    /* slots the drafter produced (>= proposed: a causal policy stops one past the last verified) */
    int accepted;                   /* drafts accepted */
    int tau_sum;                    /* accepted drafts + bonus per round (no bonus when an accepted stop ends it) */
    int accepted_at[SPEC_MAX_BLOCK];  /* rounds with a > j */
    int proposed_at[SPEC_MAX_BLOCK];  /* rounds that verified slot j */
    int reached_at[SPEC_MAX_BLOCK];   /* rounds that verified slot j with slots < j accepted */
    double prefill_s, draft_s, verify_s, total_s;
    bool stopped;                   /* ended on a stop token */
} SpecStats;
void spec_stats_add(SpecStats *into, const SpecStats *s);

typedef struct {
    Qwen3Model *target;
    ProposalSource *src;
    int max_ctx, chunk, block;
    Qwen3State st;
    SampleScratch scratch;
    int32_t *tokens;                /* [max_ctx + SPEC_MAX_BLOCK + 1] committed tokens (+ drafts) */
    int32_t *pos, *rows;            /* [chunk] */
    float *q, *q_ratio, *pt, *resid; /* [B][V], [B][V], [B+1][V], [V] */
    int32_t drafts[SPEC_MAX_BLOCK];
    float conf[SPEC_MAX_BLOCK];
    /* device path (the backend has sample_probs / draw / verify): backend memory */
    bool dev;
    float *d_q, *d_q_ratio, *d_pt, *d_logits; /* [B][V], [B][V], [B+1][V], [V] (a host source's logits) */
    void *d_ws;                     /* sample_probs scratch for B+1 rows */
    int32_t *d_tok;                 /* [B+1]: the anchor, then the drafts as drawn */
    int32_t *d_res;                 /* [2+B]: n_accepted, next, drafts (verify's output) */
    float *d_conf;                  /* [B] */
    int32_t res[2 + SPEC_MAX_BLOCK];
} SpecDecoder;

/* src may be NULL (plain decoding). max_ctx: target positions; chunk: prefill tokens per
 * forward (>= block + 1). */
ds_status spec_init(SpecDecoder *s, Qwen3Model *target, ProposalSource *src, int max_ctx, int chunk, char *err);
void spec_free(SpecDecoder *s);

/* Generate up to p->max_new tokens after the prompt into out (capacity p->max_new), stopping
 * after a stop token (included). *n_out = tokens written. Allocates nothing. */
ds_status spec_generate(SpecDecoder *s, const int32_t *prompt, int n_prompt, const SpecParams *p, int32_t *out, int *n_out,
                        SpecStats *stats, char *err);

/* ---- the DSpark/DFlash drafter as a ProposalSource ---- */
typedef struct {
    Drafter *d;
    DraftState s;
    bool broken;                    /* context outgrew the draft cache: no more proposals */
    ProposalSource src;
} DrafterSource;
ds_status spec_drafter_source_init(DrafterSource *ds, Drafter *d, int max_ctx, int chunk, char *err);
void spec_drafter_source_free(DrafterSource *ds);

#endif
