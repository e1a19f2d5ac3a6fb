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
 * same flattened forward (see spec.h); with no drafter every proposal is empty. */
#ifndef DSPARK_ENGINE_H
#define DSPARK_ENGINE_H

#include <pthread.h>

#include "qwen3.h"
#include "sample.h"

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
    int32_t pending;                     /* last sampled token, fed at the next step */
    Rng rng;
    double t_submit, t_first_token;
    volatile int cancel;                 /* set by engine_cancel */
    EngineRequest *next;                 /* waiting queue */
};

typedef struct {
    int n_slots;           /* concurrent requests (KV slots) */
    int max_ctx;           /* positions per slot */
    int max_batch_tokens;  /* tokens per forward (prefill chunks + decode tokens) */
} EngineConfig;

typedef struct {
    uint64_t requests_finished, tokens_generated, prompt_tokens, steps;
    uint64_t rounds;           /* request-rounds: a request verified once (tau = tokens / rounds) */
    uint64_t drafts_verified;  /* draft tokens sent to verification (mean verify length) */
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
    SampleScratch scratch;
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
