/* tokenizer.h - Hugging Face tokenizer.json byte-level BPE, as Qwen3 uses it.
 *
 * Pipeline (the `tokenizers` library's order): added/special tokens are matched first on the
 * raw text (leftmost, longest); each remaining segment is NFC-normalised (utf8proc), split by
 * the pre-tokenizer's regex (PCRE2, Unicode properties; pattern read from tokenizer.json,
 * "Isolated" behaviour: matches and gaps are both pieces), mapped to bytes, and merged by BPE
 * rank. Decoding maps ids back to bytes; the streaming decoder emits only complete UTF-8
 * characters, holding a split multi-byte character back until its last byte arrives. */
#ifndef DSPARK_TOKENIZER_H
#define DSPARK_TOKENIZER_H

#include "base.h"

typedef struct Tokenizer Tokenizer;

/* dir holds tokenizer.json (and optionally tokenizer_config.json, for the chat template). */
ds_status tokenizer_load(Tokenizer **out, const char *dir, char *err);
void tokenizer_free(Tokenizer *t);

/* ids: ds_malloc'ed (ds_free them); special tokens written in the text are matched. */
ds_status tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids, int *n_ids, char *err);
int tokenizer_vocab_size(const Tokenizer *t);            /* largest id + 1 */
int32_t tokenizer_token_id(const Tokenizer *t, const char *token); /* exact token string, -1 if absent */

typedef struct { unsigned char pending[8]; int n_pending; } DecodeStream;
/* Bytes of complete UTF-8 for `id` (plus what was pending), at most cap (give cap >= 1024: a
 * token's bytes can triple); an unknown id adds nothing; an invalid byte sequence becomes
 * U+FFFD, as the `tokenizers` decode (Python's errors="replace") does. Output is valid UTF-8. */
size_t tokenizer_decode_step(const Tokenizer *t, DecodeStream *s, int32_t id, char *out, size_t cap);
/* An incomplete character still pending at the end becomes U+FFFD. */
size_t tokenizer_decode_flush(DecodeStream *s, char *out, size_t cap);
/* Whole-sequence decode to a NUL-terminated ds_malloc'ed string. */
ds_status tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, char **text, char *err);

/* The chat template text from tokenizer_config.json (NULL if none) and the token strings. */
const char *tokenizer_chat_template(const Tokenizer *t);

#endif
