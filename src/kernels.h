/* kernels.h - CPU compute kernels behind backend_cpu.c (and the trainer's F32 paths).
 *
 * Every dot product of length K is summed in 16 fixed lanes (lane = k mod 16, k increasing)
 * and the lanes are reduced by one fixed tree ((j, j+8), (j, j+4), (j, j+2), (j, j+1)), so
 * results are independent of batch composition and thread count: tiles, panels and thread
 * splits only group independent (row, column) pairs (the opt-in BF16-activation path's AMX
 * part relaxes this, see kern_set_bf16_activations). An ISA path (AVX-512,
 * kernels_avx512.c, else AVX2+FMA+F16C, kernels_avx2.c) is chosen once, at kern_init(), by
 * cpuid; it fuses multiply-add (so its last bits differ from the portable path's), and one
 * path is used for the whole process.
 * DSPARK_KERNELS=portable forces the portable path. */
#ifndef DSPARK_KERNELS_H
#define DSPARK_KERNELS_H

#include "backend.h"

void kern_init(void);
/* "portable", "avx2", "avx512", "avx512+bf16act" (all products on the AVX512_BF16 kernels) or
 * "avx512+bf16act+amx" (products of >= KERN_AMX_MIN_ROWS rows on AMX tiles, kernels_amx.c) */
const char *kern_path_name(void);
/* Tests and benchmarks only: switch to path "portable", "avx2" or "avx512" between calls (no
 * kernel may be running; the BF16-activation path goes off). false, nothing changed, when the
 * CPU lacks it. */
bool kern_set_path(const char *name);

/* OPT-IN lossy path (kernels_bf16_avx512.c): activations rounded to BF16 for matmuls with BF16
 * weights, on CPUs with AVX512_BF16. Off by default and never used by the parity or lossless
 * tests; DSPARK_BF16_ACT=1 turns it on at kern_init. Returns whether it is now on (false when
 * the CPU cannot). With AMX off, rows stay bitwise independent of the batch and the thread count
 * on this path too.
 * AMX (on with the path where kern_amx_available(): oneDNN built in, cpuid AMX-BF16, the OS's
 * tile permission; DSPARK_AMX=0 keeps it off): products of n >= KERN_AMX_MIN_ROWS rows go to
 * oneDNN's AMX matmul, same BF16 inputs, F32 accumulation in oneDNN's order. This RELAXES
 * backend.h's contract for the opt-in path: a row's value may differ in the last bits between
 * batch sizes (below / above the threshold, and between M for oneDNN's blocking); the error
 * bound against exact F32 is the same (tests/test_kernels.c). */
bool kern_set_bf16_activations(bool on);
bool kern_bf16_activations(void);
#define KERN_AMX_MIN_ROWS 9 /* measured: the vdpbf16ps decode kernel wins below (kernels_bf16_avx512.c) */
/* Tests and benchmarks: AMX for the BF16-activation path on / off (between calls); returns
 * whether it is now on (false when not available). */
bool kern_set_amx(bool on);
bool kern_amx_on(void);
/* frees the calling thread's BF16 scratch (backend destroy) */
void kern_release_scratch(void);

float kern_dot_f32(const float *a, const float *b, int n);
/* the first index of the largest of x[0..n) (NaNs never win; x[0] when it is NaN): the scalar
 * loop `if (x[i] > x[best]) best = i`, vectorised as a max over the non-NaN values, then the
 * first index equal to it. Greedy decoding takes one per drafted and verified slot. */
int32_t kern_argmax_f32(const float *x, int n);
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
/* outs[j] = x . ws[j]^T for j < count (all ws[j]->cols equal), in one parallel region, each
 * value bitwise the one kern_matmul gives; act KERN_ACT_SWIGLU (count 2, equal rows): then
 * outs[0] = silu(outs[0]) * outs[1], bitwise kern_swiglu's values. */
enum { KERN_ACT_NONE = 0, KERN_ACT_SWIGLU = 1 };
void kern_matmul_multi(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act);

/* RMSNorm of n rows of dim: ss = dot(x, x) / dim, r = 1 / sqrtf(ss + eps), out = w * (x * r)
 * (out may be x) */
void kern_rmsnorm(float *out, const float *x, const Weight *w, int n, int dim, float eps);
/* rotate-half rotary embedding of one token's n_heads heads in place, with that token's
 * cos c[half] and sin s[half]: v[j] = a c - b s, v[j + half] = b c + a s (a = v[j],
 * b = v[j + half]; two roundings each, no FMA, on every path) */
void kern_rope_apply(float *x, const float *c, const float *s, int n_heads, int head_dim);
/* x += y */
void kern_add(float *x, const float *y, size_t n);
/* out = silu(gate) * up, n elements (out may be gate) */
void kern_swiglu(float *out, const float *gate, const float *up, size_t n);
/* Grouped-query attention (backend.h's contract): q [n][n_heads][head_dim] -> out, token i
 * attends to rows [0, kv_len[i]) of its slot, online softmax over fixed key blocks. */
void kern_attention(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                    int n, int n_heads, int n_kv_heads, int head_dim);

/* Part `part` of `nparts` of the prefetches (into L2) of nrows rows of row_bytes each, ld_bytes
 * apart: a prefill kernel spreads the next weight panel's prefetches over the tiles of the
 * current one, so the panel copy finds its rows in L2 instead of waiting on DRAM. */
static inline void kern_prefetch_part(const void *p, size_t row_bytes, size_t ld_bytes, int nrows, int part, int nparts) {
    const size_t lines = row_bytes / 64 + 2, total = lines * (size_t)nrows;
    const size_t a = total * part / nparts, b = total * (part + 1) / nparts;
    for (size_t l = a; l < b; l++) {
        size_t r = l / lines, off = (l % lines) * 64;
        if (off < row_bytes + 63) __builtin_prefetch((const char *)p + r * ld_bytes + off, 0, 2);
    }
}

/* ---- ISA entry points (kernels_avx512.c), called only after kern_init chose them ---- */
bool kern_avx512_available(void);
bool kern_avx512bf16_available(void);
void kern_matmul_avx512(float *out, const float *x, const Weight *w, int n);
float kern_dot_f32_avx512(const float *a, const float *b, int n);
int32_t kern_argmax_f32_avx512(const float *x, int n);
void kern_scale_mul_avx512(float *out, const float *x, float r, const Weight *w, int dim);
void kern_add_avx512(float *x, const float *y, size_t n);
void kern_rope_apply_avx512(float *x, const float *c, const float *s, int n_heads, int head_dim);
void kern_swiglu_avx512(float *out, const float *gate, const float *up, size_t n);
/* kernels_amx.c: out[n][ldo] = xb[n][ldx] (BF16) . W^T through oneDNN on AMX; false (nothing
 * written) when unavailable or oneDNN refused */
bool kern_amx_available(void);
const char *kern_amx_impl(void);  /* oneDNN's implementation name of the last AMX primitive made */
long kern_amx_products(void);     /* products run on AMX so far (tests) */
size_t kern_amx_weight_bytes(void); /* bytes of reordered weights held (DSPARK_AMX_REORDER=1) */
/* weights reordered once into oneDNN's layout and cached by address until kern_amx_release
 * (DSPARK_AMX_REORDER=1; tests): only while weights stay fixed in memory */
void kern_amx_set_reorder(bool on);
bool kern_matmul_amx(float *out, int ldo, const uint16_t *xb, int ldx, const Weight *w, int n);
void kern_amx_release(void);
bool kern_matmul_bf16act_avx512(float *out, const float *x, const Weight *w, int n);
void kern_matmul_multi_avx512(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act);
bool kern_matmul_multi_bf16act_avx512(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act);
void kern_bf16_release_scratch(void);
bool kern_attention_avx512_ok(int head_dim);
void kern_attention_avx512(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                           const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim);

/* ---- AVX2 + FMA + F16C entry points (kernels_avx2.c), same contracts ---- */
bool kern_avx2_available(void);
void kern_matmul_avx2(float *out, const float *x, const Weight *w, int n);
void kern_matmul_multi_avx2(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act);
float kern_dot_f32_avx2(const float *a, const float *b, int n);
int32_t kern_argmax_f32_avx2(const float *x, int n);
void kern_scale_mul_avx2(float *out, const float *x, float r, const Weight *w, int dim);
void kern_add_avx2(float *x, const float *y, size_t n);
void kern_rope_apply_avx2(float *x, const float *c, const float *s, int n_heads, int head_dim);
void kern_swiglu_avx2(float *out, const float *gate, const float *up, size_t n);
bool kern_attention_avx2_ok(int head_dim);
void kern_attention_avx2(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                         const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim);

#endif
