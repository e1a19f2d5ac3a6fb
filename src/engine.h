/* engine.h - continuous batching of many requests over one target model.
 *
 * Each engine_step() runs ONE flattened forward: prompt chunks of newly admitted requests
 * (prefill, within a token budget) and the pending token of every decoding request, each at
 * its own position in its own KV slot. Requests are admitted into free KV slots between steps
 * and retired when they finish; a request that does not fit waits, it never fails others.
 * KV memory is bounded: n_slots x max_ctx positions, allocated once.
 *
 * Thread model: engine_submit / engine_cancel may be called from any thread; engine_step runs
 * on one thread (the server's engine thread). Callbacks run on the stepping thread.
 *
 * Speculative decoding plugs in per request as a proposal of draft tokens verified in the
 * same flattened forward (see spec.h); with no drafter every proposal is empty.
 *
 * Sampling: when the backend has backend.h's sampling ops (CUDA), every request's q, pt,
 * drafts and verification stay in backend memory and a step reads one small result buffer
 * (Engine.dev); the tokens and each request's uniform stream are those of the host path
 * (greedy: identical; sampled: the same uniforms, distributions equal up to float rounding). */
#ifndef DSPARK_ENGINE_H
#define DSPARK_ENGINE_H

#include <pthread.h>

#include "calib.h"
#include "qwen3.h"
#include "scheduler.h"
#include "sample.h"
#include "spec.h"

#define ENGINE_MAX_STOP 16

typedef enum { FINISH_NONE = 0, FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR } FinishReason;
const char *finish_reason_name(FinishReason r); /* "stop", "length", "cancelled", "error" */

typedef struct EngineRequest EngineRequest;
struct EngineRequest {
    /* ---- set by the caller before engine_submit ---- */
    const int32_t *prompt;
    int n_prompt;
    int max_new;
    SamplerParams sampler;
    uint64_t seed;                       /* stream = seed: same tokens as `dspark generate --seed` */
    int32_t stop_ids[ENGINE_MAX_STOP];
    int n_stop;
    /* called for every new token (stop token included, flagged); return false to cancel */
    bool (*on_token)(void *user, int32_t token, bool is_stop);
    /* called exactly once, when the request leaves the engine (any reason) */
    void (*on_finish)(void *user, FinishReason reason);
    void *user;
    /* ---- engine state (read-only for the caller) ---- */
    int slot;                            /* -1 while waiting */
    int n_prefilled;                     /* prompt tokens already in the KV cache */
    int n_generated;
    int n_committed;                     /* prompt + generated tokens (slot_tokens) */
    int32_t pending;                     /* last sampled token, fed at the next step */
    Rng rng;
    double t_submit, t_first_token;
    volatile int cancel;                 /* set by engine_cancel */
    EngineRequest *next;                 /* waiting queue */
};

/* Chooses how many drafted slots each decoding request verifies this step, looking at all of
 * them at once (the hardware-aware scheduler of issue 6 lives behind this). conf[r] holds the
 * pre-sigmoid confidence logits of request r's n_drafted[r] slots; write len[r] in
 * [0, n_drafted[r]]. NULL choose = verify everything drafted. */
typedef struct {
    void (*choose)(void *ctx, int n_req, const float *const *conf, const int *n_drafted, int *len);
    void *ctx;
} EngineScheduler;

typedef struct {
    int n_slots;           /* concurrent requests (KV slots) */
    int max_ctx;           /* positions per slot */
    int max_batch_tokens;  /* tokens per forward (prefill chunks + decode tokens) */
    /* speculative decoding: one proposal source per slot (NULL array = plain decoding); all
     * must want the same target feature layers and block size */
    ProposalSource **sources;
    EngineScheduler sched;
    /* draft bypass (beyond the paper): request r skips drafting this round and decodes one
     * token plainly when its expected gain g (EMA of the calibrated survival sums of its
     * verified drafts) bought at plain decoding's price of time is worth less than what
     * drafting costs:  g x t_plain < bypass_draft_s + L x t_verify, with L its (EMA) verified
     * length, t_plain = step(R)/R the forward time per token of plain decoding of the R
     * decoding requests and t_verify the marginal forward time of a verified token, both
     * from the SPS profile (sps). Its verified tokens still feed its drafter, and after
     * bypass_probe_every bypassed rounds it drafts again to re-measure. 0 = never bypass. */
    double bypass_draft_s;
    int bypass_probe_every;     /* 0: 8 */
    const Calibration *calib;   /* for the gain (NULL: identity temperatures) */
    SpsCurve sps;               /* forward steps/s by batch size (profile.h); needed for the bypass */
    /* sample on the host even when the backend has backend.h's sampling ops (comparisons,
     * tests); DSPARK_ENGINE_HOST_SAMPLING=1 in the environment does the same */
    bool host_sampling;
} EngineConfig;

typedef struct {
    uint64_t requests_finished, tokens_generated, prompt_tokens, steps;
    uint64_t rounds;           /* request-rounds: a request verified once (tau = tokens / rounds) */
    uint64_t drafts_verified;  /* draft tokens sent to verification (mean verify length) */
    uint64_t rounds_bypassed;  /* request-rounds decoded without drafting (draft bypass) */
    double step_seconds_total;
    int active, waiting;
} EngineStats;

typedef struct {
    Qwen3Model *model;
    EngineConfig cfg;
    Qwen3State st;
    EngineRequest **slots;               /* [n_slots], NULL = free */
    EngineRequest *wait_head, *wait_tail;
    pthread_mutex_t lock;
    pthread_cond_t wake;                 /* signalled on submit */
    /* per-step scratch, sized once */
    int32_t *b_tokens, *b_pos, *b_slot, *b_rows;
    EngineRequest **b_row_req;           /* which request a logit row belongs to */
    float *probs;
    /* speculative decoding, per slot: committed tokens, drafts, their distributions */
    int block;                           /* drafted slots per round (0: plain) */
    int n_features;
    int32_t *slot_tokens;                /* [n_slots][max_ctx + block + 1] */
    float *slot_q;                       /* [n_slots][block][V] */
    int32_t *slot_drafts;                /* [n_slots][block] */
    float *slot_conf;                    /* [n_slots][block] */
    int *slot_avail, *slot_len, *slot_row0, *slot_prefill_row0, *slot_prefill_n, *slot_prefill_pos;
    bool *slot_src_broken;
    const float **conf_ptrs;             /* [n_slots] for the scheduler */
    float *pt, *resid;                   /* [block+1][V], [V] */
    SampleScratch scratch;
    /* draft bypass, per slot: EMA of expected accepted drafts, consecutive bypassed rounds */
    Calibration calib;
    float *slot_gain, *slot_vlen, *surv_tmp;
    int *slot_bypass_run;
    /* device path (the backend has the sampling ops, host_sampling off): the verify rows'
     * logits, every q and pt and the drafted tokens stay in backend memory; per step the host
     * reads one buffer of every request's (n_accepted, next, drafts) and first tokens (plus
     * the slots' confidences when the scheduler or the bypass wants them) */
    bool dev;
    float *d_q, *d_pt, *d_logits;        /* [n_slots][block][V], [block+1][V], [V] (a host source's slot) */
    void *d_ws;                          /* sample_probs scratch for block+1 rows */
    int32_t *d_tok;                      /* [n_slots][block+1]: the anchor, then the drafts as drawn */
    float *d_conf, *h_conf;              /* [n_slots][block+1] */
    int32_t *d_btok;                     /* [max_batch_tokens]: the step's batch tokens */
    int32_t *d_res, *h_res;              /* [n_slots][block+2] verify results, then [n_slots] first tokens */
    bool *slot_first;                    /* the slot's first token was drawn this step */
    EngineStats stats;
    volatile int stopping;
} Engine;

ds_status engine_init(Engine *e, Qwen3Model *m, const EngineConfig *cfg, char *err);
void engine_free(Engine *e);

/* Validates sizes (prompt + max_new must fit a slot; max_new is clamped to it) and queues. */
ds_status engine_submit(Engine *e, EngineRequest *r, char *err);
void engine_cancel(Engine *e, EngineRequest *r);
/* Cancel everything running or waiting (a drain that ran out of time). Stepping thread only. */
void engine_cancel_all(Engine *e);
/* One forward over everything runnable. Returns the number of requests that made progress
 * (0 = idle). */
int engine_step(Engine *e, char *err);
/* Blocks until a request is waiting or active, or the timeout (seconds) passes. */
void engine_wait_work(Engine *e, double timeout_s);
EngineStats engine_stats(Engine *e);

#endif
