/* kernels.c - portable deterministic kernels and the ISA dispatch (see kernels.h). */
#include "kernels.h"

#include <omp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool g_avx512, g_avx2, g_bf16_ok, g_bf16act, g_amx_want = true, g_amx;
static const char *g_path = "portable";

void kern_init(void) {
    static int done;
    if (done) return;
    done = 1;
    const char *force = getenv("DSPARK_KERNELS");
    if (force && strcmp(force, "portable") == 0) return;
    if (kern_avx512_available()) { g_avx512 = true; g_path = "avx512"; }
    else if (kern_avx2_available()) { g_avx2 = true; g_path = "avx2"; }
    g_bf16_ok = g_avx512 && kern_avx512bf16_available();
    const char *amx = getenv("DSPARK_AMX");
    if (amx && strcmp(amx, "0") == 0) g_amx_want = false;
    const char *bf = getenv("DSPARK_BF16_ACT");
    if (bf && strcmp(bf, "1") == 0) kern_set_bf16_activations(true);
}

bool kern_set_bf16_activations(bool on) {
    g_bf16act = on && g_bf16_ok;
    g_amx = g_bf16act && g_amx_want && kern_amx_available();
    g_path = g_amx ? "avx512+bf16act+amx" : g_bf16act ? "avx512+bf16act" : g_avx512 ? "avx512" : g_avx2 ? "avx2" : "portable";
    return g_bf16act;
}

bool kern_set_amx(bool on) {
    g_amx_want = on;
    kern_set_bf16_activations(g_bf16act);
    return g_amx;
}
bool kern_amx_on(void) { return g_amx; }

bool kern_set_path(const char *name) {
    kern_init();
    bool avx512 = strcmp(name, "avx512") == 0, avx2 = strcmp(name, "avx2") == 0;
    if (!avx512 && !avx2 && strcmp(name, "portable") != 0) return false;
    if ((avx512 && !kern_avx512_available()) || (avx2 && !kern_avx2_available())) return false;
    kern_release_scratch();
    g_bf16_ok = avx512 && kern_avx512bf16_available();
    g_avx512 = avx512;
    g_avx2 = avx2;
    kern_set_bf16_activations(false);
    return true;
}
bool kern_bf16_activations(void) { return g_bf16act; }

void kern_release_scratch(void) {
    if (g_avx512) kern_bf16_release_scratch();
    kern_amx_release();
}
const char *kern_path_name(void) { return g_path; }

/* fixed reduction tree over 16 lanes */
static inline float reduce16(float *acc) {
    for (int s = 8; s; s >>= 1)
        for (int j = 0; j < s; j++) acc[j] += acc[j + s];
    return acc[0];
}

float kern_dot_f32(const float *a, const float *b, int n) {
    if (g_avx512) return kern_dot_f32_avx512(a, b, n);
    if (g_avx2) return kern_dot_f32_avx2(a, b, n);
    float acc[16] = {0};
    int k = 0;
    for (; k + 16 <= n; k += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[k + j] * b[k + j];
    for (; k < n; k++) acc[k & 15] += a[k] * b[k];
    return reduce16(acc);
}

int32_t kern_argmax_f32(const float *x, int n) {
    if (n >= 64 && x[0] == x[0]) { /* the ISA paths need a non-NaN x[0] (see kernels.h) */
        if (g_avx512) return kern_argmax_f32_avx512(x, n);
        if (g_avx2) return kern_argmax_f32_avx2(x, n);
    }
    int32_t best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static float dot_bf16(const float *x, const uint16_t *w, int n) {
    float acc[16] = {0};
    int k = 0;
    for (; k + 16 <= n; k += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[k + j] * ds_bf16_to_f32(w[k + j]);
    for (; k < n; k++) acc[k & 15] += x[k] * ds_bf16_to_f32(w[k]);
    return reduce16(acc);
}

static float dot_f16(const float *x, const uint16_t *w, int n) {
    float acc[16] = {0};
    for (int k = 0; k < n; k++) acc[k & 15] += x[k] * ds_f16_to_f32(w[k]);
    return reduce16(acc);
}

void kern_row_to_f32(float *out, const Weight *w, int r) {
    size_t off = (size_t)r * w->cols;
    switch (w->dtype) {
    case DS_BF16: for (int k = 0; k < w->cols; k++) out[k] = ds_bf16_to_f32(((const uint16_t *)w->host)[off + k]); break;
    case DS_F16: for (int k = 0; k < w->cols; k++) out[k] = ds_f16_to_f32(((const uint16_t *)w->host)[off + k]); break;
    default: memcpy(out, (const float *)w->host + off, sizeof(float) * w->cols); break;
    }
}

static void matmul_cols_portable(float *out, const float *x, const Weight *w, int n, int o0, int o1) {
    int K = w->cols, O = w->rows;
    for (int o = o0; o < o1; o++) {
        size_t wo = (size_t)o * K;
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * K;
            float v;
            switch (w->dtype) {
            case DS_BF16: v = dot_bf16(xi, (const uint16_t *)w->host + wo, K); break;
            case DS_F16: v = dot_f16(xi, (const uint16_t *)w->host + wo, K); break;
            default: v = kern_dot_f32(xi, (const float *)w->host + wo, K); break;
            }
            out[(size_t)i * O + o] = v;
        }
    }
}

void kern_matmul(float *out, const float *x, const Weight *w, int n) {
    if (g_bf16act && w->dtype == DS_BF16 && kern_matmul_bf16act_avx512(out, x, w, n)) return;
    if (g_avx512) { kern_matmul_avx512(out, x, w, n); return; }
    if (g_avx2) { kern_matmul_avx2(out, x, w, n); return; }
    int O = w->rows;
    /* chunks of 16 output columns: enough work per task, and a chunk boundary never splits a
     * reduction, so the thread count cannot change any value */
    int n_chunks = (O + 15) / 16;
    #pragma omp parallel for schedule(static) if ((size_t)O * w->cols * (size_t)n >= 32768)
    for (int c = 0; c < n_chunks; c++) {
        int o0 = c * 16, o1 = o0 + 16 < O ? o0 + 16 : O;
        matmul_cols_portable(out, x, w, n, o0, o1);
    }
}

void kern_matmul_multi(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    DS_ASSERT(count >= 1 && (act != KERN_ACT_SWIGLU || (count == 2 && ws[0]->rows == ws[1]->rows)));
    bool all_bf16 = true;
    for (int j = 0; j < count; j++) all_bf16 &= ws[j]->dtype == DS_BF16 && ws[j]->cols == ws[0]->cols;
    if (g_bf16act && all_bf16 && kern_matmul_multi_bf16act_avx512(outs, x, ws, count, n, act)) return;
    if (g_avx512 && !g_bf16act) {
        kern_matmul_multi_avx512(outs, x, ws, count, n, act);
        return;
    }
    if (g_avx2) { kern_matmul_multi_avx2(outs, x, ws, count, n, act); return; }
    for (int j = 0; j < count; j++) kern_matmul(outs[j], x, ws[j], n);
    if (act == KERN_ACT_SWIGLU) kern_swiglu(outs[0], outs[0], outs[1], (size_t)n * ws[0]->rows);
}

/* ---- rmsnorm, add ---- */

/* A parallel region costs even when its if() clause is false (libgomp builds a team of one,
 * with a malloc): below the thresholds the ops call their row / chunk function directly. */
static void rmsnorm_row(float *out, const float *x, const Weight *w, int i, int dim, float eps) {
    const float *xi = x + (size_t)i * dim;
    float *oi = out + (size_t)i * dim;
    float ss = kern_dot_f32(xi, xi, dim) / (float)dim;
    float r = 1.0f / sqrtf(ss + eps);
    if (g_avx512) kern_scale_mul_avx512(oi, xi, r, w, dim);
    else if (g_avx2) kern_scale_mul_avx2(oi, xi, r, w, dim);
    else
        for (int k = 0; k < dim; k++) oi[k] = kern_weight_at(w, k) * (xi[k] * r);
}

void kern_rmsnorm(float *out, const float *x, const Weight *w, int n, int dim, float eps) {
    if ((size_t)n * dim < 65536) {
        for (int i = 0; i < n; i++) rmsnorm_row(out, x, w, i, dim, eps);
        return;
    }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) rmsnorm_row(out, x, w, i, dim, eps);
}

static void add_chunk(float *x, const float *y, size_t a, size_t b) {
    if (g_avx512) kern_add_avx512(x + a, y + a, b - a);
    else if (g_avx2) kern_add_avx2(x + a, y + a, b - a);
    else
        for (size_t i = a; i < b; i++) x[i] += y[i];
}

void kern_add(float *x, const float *y, size_t n) {
    const size_t CH = 16384, nch = (n + CH - 1) / CH;
    if (n < 262144) {
        add_chunk(x, y, 0, n);
        return;
    }
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nch; c++) add_chunk(x, y, c * CH, c * CH + CH < n ? c * CH + CH : n);
}

void kern_rope_apply(float *x, const float *c, const float *s, int n_heads, int head_dim) {
    if (g_avx512) { kern_rope_apply_avx512(x, c, s, n_heads, head_dim); return; }
    if (g_avx2) { kern_rope_apply_avx2(x, c, s, n_heads, head_dim); return; }
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int j = 0; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * c[j] - b * s[j];
            v[j + half] = b * c[j] + a * s[j];
        }
    }
}

/* ---- swiglu ---- */

static void swiglu_chunk(float *out, const float *gate, const float *up, size_t a, size_t b) {
    if (g_avx512) { kern_swiglu_avx512(out + a, gate + a, up + a, b - a); return; }
    if (g_avx2) { kern_swiglu_avx2(out + a, gate + a, up + a, b - a); return; }
    for (size_t i = a; i < b; i++) {
        float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

void kern_swiglu(float *out, const float *gate, const float *up, size_t n) {
    /* elementwise: any split is exact (the vector paths treat a tail like the body) */
    const size_t CH = 4096, nch = (n + CH - 1) / CH;
    if (n < 65536) {
        swiglu_chunk(out, gate, up, 0, n);
        return;
    }
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nch; c++) swiglu_chunk(out, gate, up, c * CH, c * CH + CH < n ? c * CH + CH : n);
}

/* ---- attention (portable) ---- */

static inline size_t kv_offset(const KvCache *kv, int layer, int slot, int pos) {
    return (((size_t)layer * kv->n_slots + slot) * kv->max_ctx + pos) * kv->kv_dim;
}

/* One pass, online softmax (running max and sum), keys in order 0..kv_len-1. */
static void attention_portable(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                               const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim) {
    int group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    long work = 0;
    for (int i = 0; i < n; i++) work += kv_len[i];
    work *= (long)n_heads * head_dim;
    #pragma omp parallel for collapse(2) schedule(static) if (work >= 65536)
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < n_heads; h++) {
            const float *qi = q + ((size_t)i * n_heads + h) * head_dim;
            float *oi = out + ((size_t)i * n_heads + h) * head_dim;
            int kvh = h / group, len = kv_len[i];
            DS_ASSERT(len >= 1 && len <= kv->max_ctx);
            const float *kbase = kv->k + kv_offset(kv, layer, slot[i], 0) + (size_t)kvh * head_dim;
            const float *vbase = kv->v + kv_offset(kv, layer, slot[i], 0) + (size_t)kvh * head_dim;
            float acc[512];
            DS_ASSERT(head_dim <= 512);
            for (int d = 0; d < head_dim; d++) acc[d] = 0.0f;
            float m = -INFINITY, l = 0.0f;
            for (int j = 0; j < len; j++) {
                float s = kern_dot_f32(qi, kbase + (size_t)j * kv->kv_dim, head_dim) * scale;
                const float *vj = vbase + (size_t)j * kv->kv_dim;
                if (s > m) {
                    float corr = expf(m - s); /* exp(-inf) = 0 on the first key */
                    l *= corr;
                    for (int d = 0; d < head_dim; d++) acc[d] *= corr;
                    m = s;
                }
                float p = expf(s - m);
                l += p;
                for (int d = 0; d < head_dim; d++) acc[d] += p * vj[d];
            }
            float inv = 1.0f / l;
            for (int d = 0; d < head_dim; d++) oi[d] = acc[d] * inv;
        }
    }
}

void kern_attention(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                    int n, int n_heads, int n_kv_heads, int head_dim) {
    if (g_avx512 && kern_attention_avx512_ok(head_dim))
        kern_attention_avx512(out, q, kv, layer, slot, kv_len, n, n_heads, n_kv_heads, head_dim);
    else if (g_avx2 && kern_attention_avx2_ok(head_dim))
        kern_attention_avx2(out, q, kv, layer, slot, kv_len, n, n_heads, n_kv_heads, head_dim);
    else
        attention_portable(out, q, kv, layer, slot, kv_len, n, n_heads, n_kv_heads, head_dim);
}
