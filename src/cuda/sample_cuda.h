/* sample_cuda.h - the sampling ops of the CUDA backend (sample_cuda.cu): backend.h's
 * sample_probs, draw and verify on device memory, so a speculative round keeps its logits and
 * distributions on the GPU. backend_cuda_create calls cuda_sample_install. */
#ifndef DSPARK_SAMPLE_CUDA_H
#define DSPARK_SAMPLE_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

/* fills be->sample_ws_bytes, sample_probs, draw, verify; be must be a CUDA backend */
void cuda_sample_install(Backend *be);
/* the backend's stream (a cudaStream_t), defined in backend_cuda.cu */
void *backend_cuda_stream(const Backend *be);
/* device scratch of the backend for draw (at least bytes, made with the backend; NULL if it
 * is smaller), defined in backend_cuda.cu */
void *backend_cuda_draw_scratch(const Backend *be, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
