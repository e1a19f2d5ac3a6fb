/* backend_cpu.c - the reference CPU backend: OpenMP threads, F32 activations, weights read
 * straight from the checkpoint mmap (BF16/F16 widened to F32 in registers).
 *
 * Determinism: every dot product is summed in 16 fixed lanes (lane = k mod 16) and reduced
 * by the same fixed tree; threads split output columns, never a reduction. So a row's result
 * does not depend on the batch it is in or on the thread count (backend.h's contract).
 * Faster ISA paths (kernels_avx512.c) keep that property within themselves; the choice is
 * made once per process. A Backend serves one thread at a time (its rope table below is
 * unsynchronised), as the engine and the server use it. */
#include "backend.h"
#include "kernels.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(Backend *be, size_t bytes) {
    (void)be;
    void *p = ds_malloc_aligned(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}
static void cpu_free(Backend *be, void *p) { (void)be; ds_free_aligned(p); }
static void cpu_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (dst != src && bytes) memmove(dst, src, bytes);
}
static ds_status cpu_upload_weight(Backend *be, Weight *w, char *err) { (void)be; (void)w; (void)err; return DS_OK; }
static void cpu_release_weight(Backend *be, Weight *w) { (void)be; (void)w; }
static void cpu_sync(Backend *be) { (void)be; }

static void cpu_embed(Backend *be, float *out, const Weight *table, const int32_t *ids, int n) {
    (void)be;
    for (int i = 0; i < n; i++) kern_row_to_f32(out + (size_t)i * table->cols, table, ids[i]);
}

static void cpu_matmul(Backend *be, float *out, const float *x, const Weight *w, int n) {
    (void)be;
    kern_matmul(out, x, w, n);
}

static void cpu_matmul_multi(Backend *be, float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    (void)be;
    kern_matmul_multi(outs, x, ws, count, n, act == 1 ? KERN_ACT_SWIGLU : KERN_ACT_NONE);
}

static void cpu_rmsnorm(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps) {
    (void)be;
    /* per row: ss = dot(x, x) / dim; r = 1 / sqrt(ss + eps); out = w * (x * r) (kernels.c) */
    kern_rmsnorm(out, x, w, n, dim, eps);
}

/* cos/sin of the last rope call's positions: the q and k calls of a layer, and all the
 * layers of a forward, rotate by the same positions, so the trigonometry is done once per
 * forward instead of 2 x n_layers times (same cosf/sinf values, so the same results). */
typedef struct {
    float *cs;        /* [cap][half] cos, then [cap][half] sin */
    int32_t *pos;     /* [cap] the positions cs holds */
    int cap, n, half;
    size_t cs_cap;    /* floats in cs: a call with fewer positions but a larger head_dim needs more */
    float theta;
} RopeCache;

static const float *rope_table(Backend *be, const int32_t *pos, int n, int half, int head_dim, float theta) {
    RopeCache *rc = be->impl;
    if (rc->n == n && rc->half == half && rc->theta == theta && memcmp(rc->pos, pos, sizeof(int32_t) * n) == 0) return rc->cs;
    if (n > rc->cap || (size_t)2 * n * half > rc->cs_cap) {
        float *cs = ds_malloc(sizeof(float) * 2 * (size_t)n * half);
        int32_t *p = ds_malloc(sizeof(int32_t) * (size_t)n);
        if (!cs || !p) { ds_free(cs); ds_free(p); return NULL; }
        ds_free(rc->cs); ds_free(rc->pos);
        rc->cs = cs; rc->pos = p; rc->cap = n; rc->cs_cap = (size_t)2 * n * half;
    }
    float inv_freq[512];
    DS_ASSERT(half <= 512);
    /* transformers: inv_freq = 1 / theta^(arange(0, hd, 2) / hd), in float32 */
    for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
    float *c = rc->cs, *s = rc->cs + (size_t)n * half;
    #pragma omp parallel for schedule(static) if (n >= 16)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            float f = (float)pos[i] * inv_freq[j];
            c[(size_t)i * half + j] = cosf(f);
            s[(size_t)i * half + j] = sinf(f);
        }
    memcpy(rc->pos, pos, sizeof(int32_t) * n);
    rc->n = n; rc->half = half; rc->theta = theta;
    return rc->cs;
}

static void cpu_rope(Backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim, float theta) {
    int half = head_dim / 2;
    const float *cs = rope_table(be, pos, n, half, head_dim, theta);
    if (!cs) {
        /* no memory for the table: the same values computed in place, per token */
        float inv_freq[512];
        DS_ASSERT(half <= 512);
        for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
        for (int i = 0; i < n; i++)
            for (int h = 0; h < n_heads; h++) {
                float *v = x + ((size_t)i * n_heads + h) * head_dim;
                for (int j = 0; j < half; j++) {
                    float f = (float)pos[i] * inv_freq[j], c = cosf(f), s = sinf(f), a = v[j], b = v[j + half];
                    v[j] = a * c - b * s;
                    v[j + half] = b * c + a * s;
                }
            }
        return;
    }
    const float *cc = cs, *ss = cs + (size_t)n * half;
    #pragma omp parallel for schedule(static) if ((size_t)n * n_heads * head_dim >= 65536)
    for (int i = 0; i < n; i++) {
        kern_rope_apply(x + (size_t)i * n_heads * head_dim, cc + (size_t)i * half, ss + (size_t)i * half, n_heads, head_dim);
    }
}

static inline size_t kv_offset(const KvCache *kv, int layer, int slot, int pos) {
    return (((size_t)layer * kv->n_slots + slot) * kv->max_ctx + pos) * kv->kv_dim;
}

static void cpu_kv_write(Backend *be, KvCache *kv, int layer, const float *k, const float *v, const int32_t *slot,
                         const int32_t *pos, int n) {
    (void)be;
    for (int i = 0; i < n; i++) {
        DS_ASSERT(slot[i] >= 0 && slot[i] < kv->n_slots && pos[i] >= 0 && pos[i] < kv->max_ctx);
        size_t o = kv_offset(kv, layer, slot[i], pos[i]);
        memcpy(kv->k + o, k + (size_t)i * kv->kv_dim, sizeof(float) * kv->kv_dim);
        memcpy(kv->v + o, v + (size_t)i * kv->kv_dim, sizeof(float) * kv->kv_dim);
    }
}

/* Grouped-query attention: kernels.c (online softmax; the AVX-512 path shares each K/V block
 * among the queries and heads of a group, each query's arithmetic its own). */
static void cpu_attention(Backend *be, float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                          const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim) {
    (void)be;
    kern_attention(out, q, kv, layer, slot, kv_len, n, n_heads, n_kv_heads, head_dim);
}

static void cpu_swiglu(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    (void)be;
    kern_swiglu(out, gate, up, n);
}

static void cpu_add(Backend *be, float *x, const float *y, size_t n) {
    (void)be;
    kern_add(x, y, n);
}

static void cpu_gather_rows(Backend *be, float *dst, int dst_stride, const float *src, int src_stride,
                            const int32_t *rows, int n, int cols) {
    (void)be;
    for (int i = 0; i < n; i++)
        memmove(dst + (size_t)i * dst_stride, src + (size_t)(rows ? rows[i] : i) * src_stride, sizeof(float) * cols);
}

static void cpu_bias_act(Backend *be, float *x, const Weight *bias, int n, int dim, int act) {
    (void)be;
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * dim;
        for (int k = 0; k < dim; k++) {
            float v = xi[k] + (bias ? kern_weight_at(bias, k) : 0.0f);
            if (act == ACT_SIGMOID) v = 1.0f / (1.0f + expf(-v));
            else if (act == ACT_TANH) v = tanhf(v);
            xi[k] = v;
        }
    }
}

static void cpu_ew(Backend *be, int op, float *out, const float *a, const float *b, const float *c, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        if (op == EW_MUL) out[i] = a[i] * b[i];
        else out[i] = c[i] * a[i] + (1.0f - c[i]) * b[i];
    }
}

static void cpu_destroy(Backend *be) {
    RopeCache *rc = be->impl;
    if (rc) { ds_free(rc->cs); ds_free(rc->pos); ds_free(rc); }
    kern_release_scratch();
    ds_free(be);
}

Backend *backend_cpu_create(int n_threads) {
    Backend *be = ds_calloc(1, sizeof *be);
    if (!be) return NULL;
    be->impl = ds_calloc(1, sizeof(RopeCache));
    if (!be->impl) { ds_free(be); return NULL; }
    be->name = "cpu";
    be->host_memory = true;
    if (n_threads > 0) omp_set_num_threads(n_threads);
    be->n_threads = omp_get_max_threads();
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->to_device = cpu_memcpy;
    be->to_host = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->upload_weight = cpu_upload_weight;
    be->release_weight = cpu_release_weight;
    be->synchronize = cpu_sync;
    be->embed = cpu_embed;
    be->matmul = cpu_matmul;
    be->matmul_multi = cpu_matmul_multi;
    be->rmsnorm = cpu_rmsnorm;
    be->rope = cpu_rope;
    be->kv_write = cpu_kv_write;
    be->attention = cpu_attention;
    be->swiglu = cpu_swiglu;
    be->add = cpu_add;
    be->gather_rows = cpu_gather_rows;
    be->bias_act = cpu_bias_act;
    be->ew = cpu_ew;
    be->destroy = cpu_destroy;
    kern_init();
    return be;
}

#ifdef DSPARK_HAVE_CUDA
Backend *backend_cuda_create(int n_threads, bool one_stream, char *err);
#endif

ds_status backend_create(const char *device, int n_threads, Backend **out, char *err) {
    return backend_create_for(device, n_threads, BACKEND_BATCHED, out, err);
}

ds_status backend_create_for(const char *device, int n_threads, BackendUse use, Backend **out, char *err) {
    *out = NULL;
    /* the host side (argmax_f32 / sample_dist over the vocabulary, every drafted slot and
     * verified row) uses the ISA paths on every device: without this a CUDA run took the
     * portable loop, 1.4 ms per 151936-entry row on the H200 host (bench_cuda) */
    kern_init();
    if (!device || strcmp(device, "cpu") == 0) {
        *out = backend_cpu_create(n_threads);
        return *out ? DS_OK : ds_err(err, DS_ENOMEM, "out of memory creating the CPU backend");
    }
    if (strcmp(device, "cuda") == 0) {
#ifdef DSPARK_HAVE_CUDA
        *out = backend_cuda_create(n_threads, use == BACKEND_ONE_STREAM, err);
        return *out ? DS_OK : DS_EDEVICE;
#else
        (void)use;
        return ds_err(err, DS_EUNSUPPORTED, "--device cuda: this build has no CUDA backend (rebuild with nvcc present)");
#endif
    }
    return ds_err(err, DS_EARG, "--device '%s': unknown device (expected cpu or cuda)", device);
}
