/* The CUDA backend built for the CPU (tests/cuda_emu.h; tests/emu's headers stand in for the
 * CUDA runtime's): test_cuda_emu runs test_cuda against it with no GPU. */
#include "cuda/backend_cuda.cu"
