/* train_lm.h - training a Qwen3 causal language model from scratch (`dspark pretrain`): the
 * forward over a micro-batch of B sequences of T tokens, the mean next-token cross-entropy, and
 * the backward of every weight, in F32 on the CPU with the training ops of train_ops.h (the same
 * ops the drafter trainer uses). Weights live in a ParamSet named as Hugging Face names them
 * (model.layers.{i}.self_attn.q_proj.weight, ...), so a checkpoint is a Qwen3ForCausalLM
 * directory that src/qwen3.c and transformers both load.
 *
 * Activations for the backward are kept in one arena sized at init for B x T (llm.c's layout);
 * the vocabulary-sized logits are computed in chunks of rows, so memory does not grow with V*N. */
#ifndef DSPARK_TRAIN_LM_H
#define DSPARK_TRAIN_LM_H

#include "params.h"
#include "qwen3.h"

typedef struct {
    Qwen3Config cfg;
    int B, T;             /* micro-batch: B sequences of T input tokens */
    ParamSet params;      /* F32 master weights */
    ParamSet grads;       /* same layout; accumulated by train_lm_step */
    float *arena;         /* activations, see train_lm.c */
    size_t arena_floats;
    /* per-token attention key ranges (causal within each sequence) */
    int32_t *r0_lo, *r0_hi, *r1_lo, *r1_hi, *pos;
    int32_t *ids, *targets;  /* [B*T] inputs and next tokens of the current micro-batch */
} TrainLM;

/* Layout of a Qwen3 model's weights under their Hugging Face names (all trainable). */
ds_status train_lm_layout(ParamSet *p, const Qwen3Config *c, char *err);
/* Allocates params (zeroed), grads and the arena for micro-batches of B x T. */
ds_status train_lm_init(TrainLM *m, const Qwen3Config *c, int B, int T, char *err);
void train_lm_free(TrainLM *m);
/* Hugging Face's Qwen3 initialisation: linear and embedding weights ~ N(0, std), norms 1. */
void train_lm_init_weights(TrainLM *m, float std, uint64_t seed);

/* tokens [n_seq][T+1] (inputs are [.., :T], targets [.., 1:]); n_seq <= B. Adds
 * grad_scale * d(mean CE)/dW to m->grads and returns the mean CE of the micro-batch. With
 * grads_wanted false only the loss is computed (evaluation). */
double train_lm_step(TrainLM *m, const int32_t *tokens, int n_seq, float grad_scale, bool grads_wanted);

/* Writes dir/config.json (Qwen3ForCausalLM) and dir/model.safetensors in dtype (F32 or BF16),
 * atomically. */
ds_status train_lm_save(const TrainLM *m, const char *dir, ds_dtype dtype, char *err);
/* Qwen3 config.json text for c (caller frees with free()). */
char *qwen3_config_json(const Qwen3Config *c);

#endif
