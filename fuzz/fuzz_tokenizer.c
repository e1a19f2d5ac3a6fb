/* fuzz_tokenizer.c - libFuzzer harness: encode / decode / chat render with the real Qwen3
 * tokenizer (see fuzz_targets.h for the input format). */
#include "fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_tokenizer(data, size); }
