/* draft_init.h - a new DSpark/DFlash drafter as DeepSpec starts one (digest §1.6, §5.8).
 *
 * Config (draft_init_config): DeepSpec's Qwen3 configs scaled to the target:
 *   block_size 7; num_hidden_layers 5 (min(5, max(1, Lt/2)) for targets of fewer than 10 layers);
 *   target_layer_ids = DFlash's build_target_layer_ids: m = 5 ids spread evenly (Python round,
 *   half to even) over [1, Lt-3], which gives [1,9,17,25,33] for 36 layers and [1,10,19,28,37]
 *   for 40; targets of fewer than 10 layers use [0, Lt-2] (never the last layer, which DeepSpec forbids) and fewer ids;
 *   markov_rank 256 (capped to hidden_size), vanilla head, confidence head with Markov features
 *   (DSpark) or markov_rank 0 and no confidence head (DFlash); num_anchors 512;
 *   mask_token_id = the first id the tokenizer does not use (Qwen3: 151669, DeepSpec's), or
 *   vocab_size - 1 when no tokenizer is known. Every other size is the target's.
 *
 * Weights (draft_init_weights), HF's Qwen3 _init_weights through post_init: every trainable
 * Linear / Embedding weight (markov_w1 included) ~ N(0, 0.02), biases 0, RMSNorm weights
 * (names ending in "norm.weight") 1; frozen tensors (embed_tokens, lm_head: copied from the
 * target by the layout's builder) untouched. DeepSpec then casts the model to bf16 and takes
 * its F32 master weights from that, so the values are rounded to bf16 here too.
 * Random numbers: splitmix64 (seeded with `seed`) -> 53-bit uniforms -> Box-Muller in double,
 * both outputs used, tensors in ParamSet order: the same seed gives the same drafter. */
#ifndef DSPARK_DRAFT_INIT_H
#define DSPARK_DRAFT_INIT_H

#include "draft_config.h"
#include "params.h"

/* tokenizer_ids: the tokenizer's id count (largest id + 1), or 0 when unknown. */
ds_status draft_init_config(DraftConfig *c, const Qwen3Config *target, bool dspark, int tokenizer_ids, char *err);
/* DFlash's target layer spread (n ids over Lt target layers); returns the count written. */
int draft_init_layer_ids(int Lt, int *ids);
void draft_init_weights(ParamSet *p, uint64_t seed, double std);

#endif
