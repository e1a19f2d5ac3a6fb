/* The CUDA backend's sampling ops built for the CPU (backend_cuda_emu.cc's companion). */
#include "cuda/sample_cuda.cu"
