/* fuzz_targets.h - the entry functions the libFuzzer harnesses (fuzz/fuzz_*.c) and the ctest
 * replay (tests/test_fuzz_replay.c) share, so a corpus file replays through exactly the code
 * it was found with. Each takes arbitrary bytes, must never crash, leak or hit UB, and returns 0. */
#ifndef DSPARK_FUZZ_TARGETS_H
#define DSPARK_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

/* The bytes are a whole .safetensors file: st_open_buffer, then claim every tensor. */
int fuzz_safetensors(const uint8_t *data, size_t size);
/* The bytes are a config.json: qwen3_config_parse and draft_config_parse (+ validate). */
int fuzz_config(const uint8_t *data, size_t size);

/* The bytes are a .npy file: npy_parse, then touch every element. */
int fuzz_npy(const uint8_t *data, size_t size);

/* With the real Qwen3 tokenizer (tests/data/qwen3-tokenizer: $DSPARK_TEST_DATA or
 * $DSPARK_FUZZ_DATA, else tests/data), loaded once. The first byte picks the mode:
 *   0: encode the rest as text (any bytes, invalid UTF-8 included); ids in range, decode valid
 *      UTF-8, and for valid UTF-8 input decode(encode(x)) == NFC(x) (byte-level BPE loses nothing)
 *   1: decode the rest as ids (3 bytes each, some outside the vocabulary): whole-sequence and
 *      streaming decode agree, and give valid UTF-8
 *   2: render the rest as chat messages (0xFF-separated) with the chat template, then encode */
int fuzz_tokenizer(const uint8_t *data, size_t size);
void fuzz_tokenizer_cleanup(void);

#endif
