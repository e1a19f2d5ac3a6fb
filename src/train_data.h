/* train_data.h - the training data file DATA.jsonl that `dspark gen-data` writes and
 * `dspark train` reads: one line per prompt, in prompt order,
 *   {"id": k, "input_ids": [...], "loss_mask": [...]}
 * input_ids = the prompt as the chat template renders it + the target's answer (the tokens the
 * target generated, not a re-tokenisation); loss_mask 1 on the assistant part only, as
 * DeepSpec's parser marks it (digest §6.3): everything after the "<|im_start|>assistant\n"
 * header, i.e. the empty think block, the answer, "<|im_end|>" and the "\n" after it.
 *
 * Writing is append-only, one whole line per write, flushed and fsynced; a crash can leave at
 * most one partial last line, which train_data_resume cuts off. */
#ifndef DSPARK_TRAIN_DATA_H
#define DSPARK_TRAIN_DATA_H

#include <jansson.h>
#include <stdio.h>

#include "base.h"

typedef struct {
    int64_t n;               /* samples kept */
    int32_t **ids;           /* [n][len[i]] */
    uint8_t **mask;          /* [n][len[i]] */
    int *len;
    int64_t *line_id;        /* the "id" of each kept sample */
    int64_t tokens, loss_tokens, dropped;
    int max_len;             /* longest kept sample */
    uint64_t hash;           /* checksum of the file's bytes (part of a run's config hash) */
} TrainData;

/* Reads every line; ids must be in [0, vocab); samples longer than max_len are truncated
 * (DeepSpec: max_length 4096); samples with fewer than min_loss_tokens masked tokens are
 * dropped (DeepSpec: 14) and counted. */
ds_status train_data_load(TrainData *d, const char *path, int vocab, int max_len, int min_loss_tokens, char *err);
void train_data_free(TrainData *d);

/* Append one line and make it durable (fflush + fsync). */
ds_status train_data_write_line(FILE *f, const char *path, int64_t id, const int32_t *ids, const uint8_t *mask, int n, char *err);

/* For an existing output file: cut a partial last line (a write the crash interrupted), check
 * the ids are 0, 1, 2, ... and return the next id (0 for a missing or empty file). */
ds_status train_data_resume(const char *path, int64_t *next_id, char *err);

/* The prompt of one prompt-file row (gen-data's input, train's held-out prompts): the first of
 * "turns" (DeepSpec's eval format), a "prompt" string, or the first user message of
 * "conversations" (DeepSpec's training format; role/content or from/value). NULL with err
 * naming path:line_no when the row has none. Borrowed from row. */
const char *train_data_row_prompt(json_t *row, const char *path, int64_t line_no, char *err);

#endif
