/* train_ckpt.h - training checkpoints: DIR/step_N/ directories written atomically, verified on
 * load, with a DIR/latest pointer (DeepSpec digest §1.1, §1.7; its step_latest symlink is
 * replaced non-atomically, ours is a file renamed into place).
 *
 * DIR/step_N/ holds
 *   config.json           the drafter config (written by the caller's callback; DeepSpec format)
 *   model.safetensors     every tensor (frozen embed_tokens / lm_head included), BF16, metadata
 *                         {"format": "pt"}: what DeepSpec's from_pretrained and drafter_load read
 *   master.safetensors    F32 master weights of the trainable tensors
 *   exp_avg.safetensors, exp_avg_sq.safetensors   AdamW moments, F32 (gradient layout)
 *   train_state.json      step, samples consumed (data position), RNG state, AdamW step count,
 *                         config hash, and the caller's extra object
 *   manifest.json         size and checksum of each file above (written last)
 * Save: everything goes into DIR/.tmp-step_N/ (files fsynced), the directory is fsynced and
 * renamed to DIR/step_N, DIR is fsynced, then DIR/latest ("step_N") is replaced atomically.
 * A crash at any point leaves either the old or the new checkpoint whole.
 * Load: ckpt_find picks the checkpoint named by DIR/latest when its manifest verifies (every
 * file present, same size, same checksum), else the newest step_N that verifies; the reason
 * the newer one was refused comes back as one line.
 * Checksum: FNV-1a 64 over the file's 8-byte little-endian words, then its tail bytes. */
#ifndef DSPARK_TRAIN_CKPT_H
#define DSPARK_TRAIN_CKPT_H

#include <jansson.h>

#include "optim.h"
#include "params.h"

typedef struct {
    int64_t step;           /* optimizer steps done */
    int64_t samples;        /* training samples consumed: where the data stream resumes */
    uint64_t rng;           /* the trainer's RNG state after the last step */
    uint64_t config_hash;   /* hash of everything a resume must not change */
    json_t *extra;          /* caller's object (borrowed on save; owned by the caller after load) */
} TrainState;

/* Writes DIR/step_N/config.json (may be NULL: no config.json). */
typedef ds_status (*CkptConfigWriter)(void *ctx, const char *path, char *err);

/* Save step st->step. params: every tensor; opt: moments and step count. keep_last > 0 removes
 * all but the newest keep_last step directories after the save. */
ds_status ckpt_save(const char *dir, const TrainState *st, const ParamSet *params, const AdamW *opt,
                    CkptConfigWriter write_config, void *config_ctx, int keep_last, char *err);

/* Checks a step directory against its manifest. */
ds_status ckpt_verify(const char *step_dir, char *err);

/* The newest valid checkpoint under dir into step_dir (cap bytes). DS_EIO when there is none.
 * warn (DS_ERR_LEN) gets "" or one line naming a checkpoint that failed verification. */
ds_status ckpt_find(const char *dir, char *step_dir, size_t cap, char *warn, char *err);

/* Restore: trainable tensors of params from master.safetensors (frozen ones left as they are),
 * opt's moments and step count, and the train state (st->extra: a new reference or NULL). */
ds_status ckpt_load(const char *step_dir, TrainState *st, ParamSet *params, AdamW *opt, char *err);

uint64_t ckpt_hash_bytes(uint64_t h, const void *data, size_t n); /* FNV-1a 64 continuation; h0 = CKPT_HASH_INIT */
#define CKPT_HASH_INIT 0xcbf29ce484222325ull

#endif
