/* tests/emu/cuda_fp16.h - its types are in tests/cuda_emu.h */
#include "cuda_runtime.h"
