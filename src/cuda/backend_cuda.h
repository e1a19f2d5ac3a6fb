/* backend_cuda.h - the CUDA backend (backend_cuda.cu), declared for the CPU code and tests.
 *
 * Built only when nvcc is found (DSPARK_HAVE_CUDA). The binary never needs a driver to start:
 * cudart is linked statically and asks for the driver at backend_cuda_create(); cuBLAS is
 * opened with dlopen() there too, and without it every product runs on our own kernel.
 *
 * Exactness on the GPU: matmul rows of calls with at most CUDA_SMALL_N rows (decode and
 * verify steps) go through deterministic kernels whose per-element arithmetic does not
 * depend on the number of rows, so a token's logits are bitwise the same alone or in a verify
 * block (backend.h's contract): for BF16 weights (K % 32 == 0, 16-byte aligned x) tensor
 * cores (mma bf16, F32 accumulation) with each F32 activation split into 3 bf16 pieces whose
 * products are exact (F32 quality: nse against the CPU <= 2.5e-13 measured, as the F32-FMA
 * kernel), else the F32-FMA kernel. Larger calls (prefill) use cuBLAS in float32 (no TF32), BF16
 * weights widened to F32 first, equal to the CPU up to float32 rounding; DSPARK_CUDA_CUBLAS=0
 * keeps the deterministic kernels for every size.
 *
 * Environment (read at backend_cuda_create): DSPARK_CUDA_GRAPHS=0 no step graphs;
 * DSPARK_CUDA_SYNC=1 wait after every op (and no graphs); launch settings of the product,
 * none of which changes a value: DSPARK_CUDA_MM_COLS (columns per block, "C" or
 * "C1,C2,C4,C8" by row bucket 1, 2, 3-4, 5-64; 2, 4 or 8), DSPARK_CUDA_MM_PERSIST ("P" or
 * "P1,P2,P4,P8", persistent blocks with prefetch), DSPARK_CUDA_MM_CHUNK=4 (rows per chunk
 * above 4 rows), DSPARK_CUDA_MM_MULTI=0 (no matmul_multi), DSPARK_CUDA_MATMUL_REF=1 (the
 * previous product kernel, for tests and before/after benchmarks). The tensor-core product:
 * DSPARK_CUDA_MM_TC=0 the F32-FMA kernel for BF16 too (before/after; it changes values within
 * float32 rounding), 1 or 2 (x in 1 or 2 bf16 pieces: lossy, for tests and measurements);
 * launch settings that change no value: DSPARK_CUDA_TC_MT ("M" or "M1,M8,M16,M32,M64": 16-row
 * tiles per block by row bucket, 1, 2 or 4), DSPARK_CUDA_TC_DEEP=1/2 (twice/half the k-steps
 * per round), DSPARK_CUDA_TC_PREFETCH=KB (L2 prefetch of each weight row; off), DSPARK_CUDA_TILES=0
 * (BF16 matrices row-major on the GPU, not in k_matmul_tc's tiles; it is also what
 * DSPARK_CUDA_MM_TC=0 and DSPARK_CUDA_MATMUL_REF=1 imply). The plain BF16 products (no folded
 * norm) run on k_matmul_col, x's pieces as columns: DSPARK_CUDA_COL=0 puts them on k_matmul_tc
 * (values change within float32 rounding), DSPARK_CUDA_COL_MT / DSPARK_CUDA_COL_U ("V" or
 * "V1,V3,V6,V9" by row bucket; COL_MT's fifth value: 1-2 rows of a wide product reading its
 * pieces from memory) set its 16-row tiles per block (1, 2) and k-steps per round
 * (1, 2, 4), DSPARK_CUDA_COL_CHUNK its rows of x per block (2..16; a fifth value: 6-8 rows of the narrow products), no value. matmul_norm
 * runs there too, from the pieces of norm * x (made by the matmul_add before it or by
 * k_norm_pieces), except the paired gate/up + swiglu in a batched backend (backend.h's
 * BackendUse; one stream moves it too): DSPARK_CUDA_NORM_PIECES=0 puts all of it back on
 * k_matmul_tc's folded norm, =1 moves the paired one too, =2 keeps it on k_matmul_tc's NORM
 * (values change within float32 rounding). Neither do
 * DSPARK_CUDA_PDL=0 (kernels in plain stream order, not programmatic dependent launch) and
 * DSPARK_CUDA_ATT=0/1 (attention always per query head / grouped per KV head).
 * DSPARK_CUDA_ATT_CHUNK=N fixes attention's keys per chunk (values change within rounding);
 * DSPARK_CUDA_ATT_Z=N fixes its blocks per (token, head block), each taking every N-th split
 * (the same values);
 * DSPARK_CUDA_ATT_R8=1: attention with 8 lanes a row (k_attention_r8, head_dim 32, 64, 128 or
 * 256; values change within rounding, never across calls of one backend);
 * DSPARK_CUDA_ATT_PREFETCH=0: attention does not prefetch its K/V rows into L2 before it waits
 * for the kernel before (the same values);
 * DSPARK_CUDA_FUSE=0 runs the fused ops apart (bitwise the same); DSPARK_CUDA_FOLD=0 keeps
 * the rmsnorms and residual adds out of the products (matmul_norm / matmul_add: the folded
 * norm changes values within rounding). */
#ifndef DSPARK_BACKEND_CUDA_H
#define DSPARK_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

#define CUDA_SMALL_N 64

/* NULL with a one-line error in err when no usable GPU (or driver) exists. one_stream:
 * backend.h's BACKEND_ONE_STREAM (the paired gate/up on norm pieces unless
 * DSPARK_CUDA_NORM_PIECES says otherwise). */
Backend *backend_cuda_create(int n_threads, bool one_stream, char *err);
/* one line: device name, compute capability, memory, whether cuBLAS is used */
const char *backend_cuda_info(const Backend *be);
/* step graphs so far: recorded, replayed, and checks that found no record (DSPARK_CUDA_GRAPHS=0
 * turns them off; bench_cuda and test_cuda read these) */
void backend_cuda_graph_stats(const Backend *be, long *captures, long *replays, long *misses);
/* the fused ops qk_norm_rope_kv and add_rmsnorm (backend.h) on or off, and with them (fold)
 * matmul_norm and matmul_add; all on by default (DSPARK_CUDA_FUSE=0 turns them off at
 * create, DSPARK_CUDA_FOLD=0 only the last two) */
void backend_cuda_set_fused(Backend *be, bool on, bool fold);

#ifdef __cplusplus
}
#endif

#endif
