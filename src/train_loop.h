/* train_loop.h - the optimiser loop of a training run, independent of the model (DeepSpec's
 * base_trainer, digest §5.7): gradient accumulation over a global batch of samples in F32,
 * global-norm clipping, AdamW with warmup + cosine, checkpoints, and a bit-exact resume.
 *
 * The model is a function that adds grad_scale * d loss(sample) / d params to grads (the
 * drafter's train_draft_step, or a test's stand-in). World size 1, local batch 1, so
 * grad_scale = 1 / global_batch: the mean over the batch of per-sample normalised losses,
 * which is DeepSpec's per-step gradient on one rank (digest §5.5). Gradients accumulate in F32
 * (DeepSpec accumulates in bf16, digest §8.3).
 *
 * Data order: per epoch e a permutation of the N samples (Fisher-Yates on splitmix64 seeded
 * with seed + e; DeepSpec uses torch.randperm with seed 42 + e, which we do not reproduce),
 * truncated to steps_per_epoch * global_batch samples; the stream runs across epochs, so the
 * position is just the number of samples consumed (= step * global_batch).
 * T = epochs * floor(N / global_batch) unless max_steps is set.
 * Resume: the newest valid checkpoint gives the master weights, moments, step, data position
 * and RNG state; the loop then makes exactly the calls it would have made. */
#ifndef DSPARK_TRAIN_LOOP_H
#define DSPARK_TRAIN_LOOP_H

#include "optim.h"
#include "train_ckpt.h"

typedef struct {
    double loss, ce, l1, conf;      /* per-sample loss terms (summed over a step's samples) */
    double tau_sum, tau_blocks;     /* DeepSpec's tau_probabilistic = tau_sum / tau_blocks */
    double tokens;                  /* tokens processed (for tokens/s) */
} TrainSampleStats;

typedef ds_status (*TrainSampleFn)(void *ctx, int64_t sample, const ParamSet *params, ParamSet *grads, float grad_scale,
                                   uint64_t *rng, TrainSampleStats *out, char *err);

typedef struct {
    int64_t step, total_steps;
    double lr, grad_norm;
    TrainSampleStats sum;           /* over the step's global batch */
    int samples;                    /* global batch */
    double seconds;                 /* this step's wall time */
    bool checkpointed;
} TrainStepLog;

typedef struct {
    int64_t n_samples;              /* N */
    int global_batch;               /* DeepSpec 512 */
    int epochs;                     /* DeepSpec 10 */
    int64_t max_steps;              /* 0: epochs * floor(N / global_batch) */
    double lr, warmup_ratio, max_grad_norm;   /* 6e-4, 0.04, 1.0 */
    AdamWCfg adam;
    uint64_t seed;                  /* data order and the model's RNG */
    int ckpt_every;                 /* optimizer steps between checkpoints (0: only at the end) */
    int keep_last;                  /* 0: keep every checkpoint */
    int64_t stop_after;             /* > 0: return after this step (saving a checkpoint there) */
    uint64_t extra_hash;            /* the caller's part of the config hash (model, data, loss) */
    const char *out_dir;
    CkptConfigWriter write_config;
    void *config_ctx;
    TrainSampleFn sample_fn;
    void *model_ctx;
    void (*on_step)(void *ctx, const TrainStepLog *log);   /* may be NULL */
    void *log_ctx;
} TrainLoopCfg;

int64_t train_total_steps(const TrainLoopCfg *c);
/* The sample index at stream position pos (perm cache: caller-owned [N] + its epoch, -1 at start). */
int64_t train_sample_at(const TrainLoopCfg *c, int64_t pos, int64_t *perm, int64_t *perm_epoch);

/* Runs (or with resume, continues) the loop over params / grads (grads: the trainable tensors,
 * see optim.h). resume without a checkpoint starts fresh; a checkpoint whose config hash
 * differs is an error. *resumed_from = the step resumed from (0: fresh), may be NULL.
 * warn (DS_ERR_LEN) gets a refused newer checkpoint's reason, or "". */
ds_status train_loop_run(const TrainLoopCfg *c, ParamSet *params, ParamSet *grads, bool resume, int64_t *resumed_from,
                         char *warn, char *err);

#endif
