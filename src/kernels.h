/* kernels.h - CPU compute kernels behind backend_cpu.c (and the trainer's F32 paths).
 *
 * The portable kernels sum every dot product in 16 fixed lanes (lane = k mod 16), reduced by
 * a fixed tree, so results are independent of batch composition and thread count. An ISA
 * path (AVX-512, kernels_avx512.c) is chosen once, at kern_init(), by cpuid; it keeps the same
 * independence within itself. DSPARK_KERNELS=portable forces the portable path. */
#ifndef DSPARK_KERNELS_H
#define DSPARK_KERNELS_H

#include "backend.h"

void kern_init(void);
const char *kern_path_name(void);   /* "portable" or "avx512" */

float kern_dot_f32(const float *a, const float *b, int n);
/* widen row r of w into out[w->cols] */
void kern_row_to_f32(float *out, const Weight *w, int r);
/* element k of a 1-D weight */
static inline float kern_weight_at(const Weight *w, int k) {
    switch (w->dtype) {
    case DS_BF16: return ds_bf16_to_f32(((const uint16_t *)w->host)[k]);
    case DS_F16: return ds_f16_to_f32(((const uint16_t *)w->host)[k]);
    default: return ((const float *)w->host)[k];
    }
}
/* out[n][w->rows] = x[n][w->cols] . W^T, OpenMP over output columns */
void kern_matmul(float *out, const float *x, const Weight *w, int n);

/* ISA-specific matmul over output columns [o0, o1) for all n rows; returns false if this
 * weight dtype is not handled (caller falls back to portable). */
typedef bool (*kern_matmul_cols_fn)(float *out, const float *x, const Weight *w, int n, int o0, int o1);
bool kern_avx512_available(void);
bool kern_matmul_cols_avx512(float *out, const float *x, const Weight *w, int n, int o0, int o1);

#endif
