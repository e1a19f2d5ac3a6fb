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

#endif
