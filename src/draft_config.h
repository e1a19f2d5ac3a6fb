/* draft_config.h - the config.json of a DeepSpec DSpark/DFlash drafter (Qwen3DSparkModel).
 *
 * DeepSpec writes it as a deep copy of the target's Qwen3 config plus the draft fields
 * (docs: DeepSpec digest §1.2). DFlash is the same class with markov_rank 0 and no
 * confidence head. markov_head_type exists only when markov_rank > 0 and
 * confidence_head_with_markov only when enable_confidence_head is true. */
#ifndef DSPARK_DRAFT_CONFIG_H
#define DSPARK_DRAFT_CONFIG_H

#include "qwen3.h"

#define DRAFT_MAX_TARGET_LAYERS 16

typedef enum { MARKOV_NONE = 0, MARKOV_VANILLA, MARKOV_GATED, MARKOV_RNN } MarkovType;

typedef struct {
    Qwen3Config base;           /* n_layers = draft layers; other sizes copied from the target */
    int block_size;
    int target_layer_ids[DRAFT_MAX_TARGET_LAYERS];
    int n_target_layers;        /* m: fc maps m*hidden -> hidden */
    int num_target_layers;      /* the target's layer count (informational) */
    int mask_token_id;
    int num_anchors;            /* training only */
    int markov_rank;            /* 0 = no sequential head (DFlash) */
    MarkovType markov_type;
    bool enable_confidence_head;
    bool confidence_head_with_markov;
} DraftConfig;

const char *markov_type_name(MarkovType t); /* "vanilla", "gated", "rnn", "none" */

ds_status draft_config_load(DraftConfig *c, const char *path, char *err);
/* The same from a parsed JSON value (`path` only names it in errors); the fuzz harness's entry. */
ds_status draft_config_parse(DraftConfig *c, json_t *root, const char *path, char *err);
/* Checks the drafter against the target: hidden size, vocab, heads, layer ids in range and
 * not the target's last layer, mask token inside the vocabulary. */
ds_status draft_config_validate(const DraftConfig *c, const Qwen3Config *target, const char *path, char *err);
/* Write config.json as DeepSpec's save_pretrained would: the target config.json's fields
 * (target_config_path, may be NULL) with the draft fields set. Atomic. */
ds_status draft_config_save(const DraftConfig *c, const char *target_config_path, const char *path, char *err);

#endif
