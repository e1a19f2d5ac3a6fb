/* tests/emu/cublas_v2.h - cuBLAS's names that backend_cuda.cu declares its dlopen'ed pointers
 * with; no definitions (the emulated backend never opens cuBLAS: test_cuda_emu sets
 * DSPARK_CUDA_CUBLAS=0) */
#ifndef DSPARK_EMU_CUBLAS_V2_H
#define DSPARK_EMU_CUBLAS_V2_H
#include "cuda_runtime.h"
typedef struct EmuCublas *cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;
cublasStatus_t cublasCreate_v2(cublasHandle_t *);
cublasStatus_t cublasDestroy_v2(cublasHandle_t);
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t);
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t);
cublasStatus_t cublasSgemm_v2(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float *, const float *, int,
                              const float *, int, const float *, float *, int);
#endif
