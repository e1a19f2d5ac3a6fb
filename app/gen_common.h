/* gen_common.h - what generate, eval and serve share: generation defaults read from the
 * model directory (generation_config.json), stop tokens, and prompt construction. */
#ifndef DSPARK_GEN_COMMON_H
#define DSPARK_GEN_COMMON_H

#include "qwen3.h"
#include "sample.h"
#include "tokenizer.h"

#define GEN_MAX_STOP 32

typedef struct {
    SamplerParams sampler;   /* the model's recommended settings, or T 1.0 / top-k off / top-p 1 */
    bool from_file;          /* generation_config.json was found */
    int32_t stop_ids[GEN_MAX_STOP];
    int n_stop;
} GenDefaults;

/* Stop tokens: eos_token_id of generation_config.json (int or list), else config.json's;
 * plus <|im_end|> when the tokenizer (may be NULL) has it. Sampling defaults from
 * generation_config.json (do_sample false = greedy). */
ds_status gen_defaults_load(GenDefaults *g, const char *model_dir, const Qwen3Config *cfg, const Tokenizer *tok, char *err);
void gen_add_stop(GenDefaults *g, int32_t id);
bool gen_is_stop(const GenDefaults *g, int32_t id);

/* A tokenizer directory for a model: the model dir itself (tokenizer.json). NULL if none. */
ds_status gen_load_tokenizer(const char *model_dir, Tokenizer **out, char *err);

/* Token ids of a prompt: raw text, or one user turn through the chat template. */
ds_status gen_prompt_ids(const Tokenizer *tok, const char *text, bool chat, bool think, int32_t **ids, int *n, char *err);

/* FILE.jsonl, one prompt per non-blank line: the first of "turns", or "prompt" (text through
 * the chat template when the tokenizer has one, raw otherwise), or "prompt_ids". An empty file
 * or a bad row (file:line) is an error. */
typedef struct {
    int32_t *ids;      /* the first turn (or "prompt" / "prompt_ids") as the model sees it */
    int n;
    char **turns;      /* every user turn of "turns" (eval --multi-turn); NULL otherwise */
    int n_turns;
} GenPrompt;
ds_status gen_read_prompts(const char *path, int vocab, const Tokenizer *tok, GenPrompt **out, int *n_out, char *err);
void gen_free_prompts(GenPrompt *p, int n);

/* DeepSpec's capped subset: order[0..n_rows) = 0..n_rows-1, then, when cap > 0 and the file has
 * more rows, CPython's random.Random(seed).shuffle of it; returns how many rows to use. */
int gen_capped_order(int32_t *order, int n_rows, int cap, uint64_t seed);

#endif
