/* bpe_train.h - training a byte-level BPE tokenizer in Hugging Face tokenizer.json format, with
 * Qwen3's pipeline (NFC, its Split regex, byte-level alphabet, added special tokens, Qwen3's
 * chat template), so small targets trained by `dspark pretrain` get a small vocabulary that our
 * tokenizer (src/tokenizer.c) and the `tokenizers` library both load.
 *
 * Training is the classic algorithm (Sennrich et al.; what `tokenizers`' BpeTrainer does):
 * split the corpus into pieces exactly as encoding will, count distinct pieces, start from the
 * 256 byte symbols and repeatedly merge the most frequent adjacent pair (ties: the pair of older
 * symbols, i.e. smaller ids, first) until the vocabulary is full or no pair occurs
 * min_frequency times. Pair counts are updated incrementally (only the pieces holding the
 * merged pair are visited) and the best pair comes from a max-heap with lazy invalidation. */
#ifndef DSPARK_BPE_TRAIN_H
#define DSPARK_BPE_TRAIN_H

#include "base.h"

typedef struct {
    int vocab_size;      /* total: 256 bytes + merges + special tokens */
    int min_frequency;   /* stop when the best pair occurs fewer times (>= 1) */
    const char *const *special_tokens; /* added after the merges, in this order */
    int n_special;
} BpeTrainConfig;

/* Qwen3's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, <think>, </think>). */
extern const char *const BPE_QWEN3_SPECIALS[];
extern const int BPE_QWEN3_N_SPECIALS;

typedef struct BpeTrainer BpeTrainer;

ds_status bpe_trainer_new(BpeTrainer **out, char *err);
void bpe_trainer_free(BpeTrainer *t);
/* Count the pieces of one document (NFC-normalised and split as the encoder does). */
ds_status bpe_trainer_feed(BpeTrainer *t, const char *text, size_t len, char *err);
/* Number of distinct pieces and total pieces fed so far. */
void bpe_trainer_counts(const BpeTrainer *t, size_t *distinct, uint64_t *total);
/* progress(ctx, merges done, merges wanted) is called now and then (may be NULL). */
ds_status bpe_trainer_train(BpeTrainer *t, const BpeTrainConfig *cfg, void (*progress)(void *ctx, int done, int total),
                            void *ctx, char *err);
/* Writes dir/tokenizer.json and dir/tokenizer_config.json (atomically; dir is created). */
ds_status bpe_trainer_save(const BpeTrainer *t, const char *dir, char *err);
/* Merges learned (after bpe_trainer_train). */
int bpe_trainer_n_merges(const BpeTrainer *t);

#endif
