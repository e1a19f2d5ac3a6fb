/* chat.h - the Qwen3 chat template, rendered natively (no Jinja engine): system, user and
 * assistant turns, add_generation_prompt, enable_thinking. Produces exactly what
 * transformers' apply_chat_template renders with Qwen3's tokenizer_config.json template
 * (tests/data/tiny-qwen3/chat_template_cases.jsonl). A tokenizer whose template is not
 * Qwen3's has no supported template (chat_has_template false): never a wrong render. */
#ifndef DSPARK_CHAT_H
#define DSPARK_CHAT_H

#include "tokenizer.h"

typedef struct { const char *role; const char *content; } ChatMessage;

bool chat_has_template(const Tokenizer *t);
/* *out: ds_malloc'ed NUL-terminated text. Roles: system, user, assistant. */
ds_status chat_render(const Tokenizer *t, const ChatMessage *msgs, int n, bool add_generation_prompt, bool enable_thinking,
                      char **out, char *err);

#endif
