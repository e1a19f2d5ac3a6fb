/* train_ops.c - F32 training ops, forward next to backward (contract and determinism rules
 * in train_ops.h). Each backward states the derivative it implements in the comment above. */
#include "train_ops.h"
#include "base.h"
#include "kernels.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* Column sums of a [N][D] matrix (optionally times rstd[n] * x[n][j]) must run rows in order
 * for every column whatever the thread count: threads own column chunks of COLS and walk the
 * rows top to bottom, so memory is read row-contiguously and each column's sum order is fixed. */
enum { COLS = 64 };

/* ---- linear ---- */

void top_linear_fwd(float *out, const float *in, const float *W, const float *b, int N, int n_in, int n_out) {
    if (N <= 0 || n_out <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n_out, n_in, 1.0f, in, n_in, W, n_in, 0.0f, out, n_out);
    if (b) {
        #pragma omp parallel for schedule(static) if ((size_t)N * n_out > 65536)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < n_out; o++) out[(size_t)n * n_out + o] += b[o];
    }
}

/* y = x W^T + b:  dx = dy W,  dW = dy^T x,  db = sum_rows dy (sgemm with beta = 1 accumulates) */
void top_linear_bwd(float *d_in, float *d_W, float *d_b, const float *d_out, const float *in, const float *W, int N, int n_in, int n_out) {
    if (N <= 0 || n_out <= 0) return;
    if (d_in) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, n_in, n_out, 1.0f, d_out, n_out, W, n_in, 1.0f, d_in, n_in);
    if (d_W) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, N, 1.0f, d_out, n_out, in, n_in, 1.0f, d_W, n_in);
    if (d_b) {
        int nch = (n_out + COLS - 1) / COLS;
        #pragma omp parallel for schedule(static) if ((size_t)N * n_out > 65536)
        for (int c = 0; c < nch; c++) {
            int o0 = c * COLS, o1 = o0 + COLS < n_out ? o0 + COLS : n_out;
            float acc[COLS] = {0};
            for (int n = 0; n < N; n++) {
                const float *dy = d_out + (size_t)n * n_out;
                for (int o = o0; o < o1; o++) acc[o - o0] += dy[o];
            }
            for (int o = o0; o < o1; o++) d_b[o] += acc[o - o0];
        }
    }
}

/* ---- RMSNorm ---- */

void top_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps) {
    kern_init();
    #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * D;
        float *o = out + (size_t)n * D;
        float r = 1.0f / sqrtf(kern_dot_f32(xr, xr, D) / (float)D + eps);
        rstd[n] = r;
        for (int j = 0; j < D; j++) o[j] = w[j] * (xr[j] * r);
    }
}

/* y_j = w_j x_j r, r = (sum_k x_k^2 / D + eps)^-1/2, dr/dx_j = -r^3 x_j / D:
 * dx_j = r w_j dy_j - (r^3 / D) x_j sum_k (w_k dy_k x_k);  dw_j = sum_rows dy_j x_j r */
void top_rmsnorm_bwd(float *d_x, float *d_w, const float *d_out, const float *x, const float *w, const float *rstd, int N, int D) {
    kern_init();
    if (d_x) {
        #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * D, *dy = d_out + (size_t)n * D;
            float *dx = d_x + (size_t)n * D;
            float acc[16] = {0}; /* fixed 16 lanes, fixed tree: as kern_dot_f32's portable path */
            int j = 0;
            for (; j + 16 <= D; j += 16)
                for (int l = 0; l < 16; l++) acc[l] += w[j + l] * dy[j + l] * xr[j + l];
            for (; j < D; j++) acc[j & 15] += w[j] * dy[j] * xr[j];
            for (int s = 8; s; s >>= 1)
                for (int l = 0; l < s; l++) acc[l] += acc[l + s];
            float r = rstd[n], c = r * r * r * acc[0] / (float)D;
            for (j = 0; j < D; j++) dx[j] += r * w[j] * dy[j] - c * xr[j];
        }
    }
    if (d_w) {
        int nch = (D + COLS - 1) / COLS;
        #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
        for (int c = 0; c < nch; c++) {
            int j0 = c * COLS, j1 = j0 + COLS < D ? j0 + COLS : D;
            float acc[COLS] = {0};
            for (int n = 0; n < N; n++) {
                const float *xr = x + (size_t)n * D, *dy = d_out + (size_t)n * D;
                float r = rstd[n];
                for (int j = j0; j < j1; j++) acc[j - j0] += dy[j] * xr[j] * r;
            }
            for (int j = j0; j < j1; j++) d_w[j] += acc[j - j0];
        }
    }
}

/* ---- RoPE ---- */

/* (a, b) = (x_j, x_{j+hd/2}) -> (a cos - b sin, b cos + a sin): a rotation, so the backward is
 * the rotation by -angle (sign = -1). */
static void rope(float *x, const int32_t *pos, int N, int H, int hd, float theta, float sign) {
    int half = hd / 2;
    float inv_freq[512];
    DS_ASSERT(hd % 2 == 0 && half <= 512);
    /* transformers: inv_freq = 1 / theta^(arange(0, hd, 2) / hd) in float32, as backend_cpu.c */
    for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
    #pragma omp parallel for schedule(static) if (N >= 16)
    for (int i = 0; i < N; i++) {
        float c[512], s[512];
        for (int j = 0; j < half; j++) {
            float f = (float)pos[i] * inv_freq[j];
            c[j] = cosf(f);
            s[j] = sign * sinf(f);
        }
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)i * H + h) * hd;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * c[j] - b * s[j];
                v[j + half] = b * c[j] + a * s[j];
            }
        }
    }
}

void top_rope_fwd(float *x, const int32_t *pos, int N, int H, int hd, float theta) { rope(x, pos, N, H, hd, theta, 1.0f); }
void top_rope_bwd(float *d_x, const int32_t *pos, int N, int H, int hd, float theta) { rope(d_x, pos, N, H, hd, theta, -1.0f); }

/* ---- SwiGLU ---- */

void top_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

/* silu(g) = g s, s = sigmoid(g); silu'(g) = s (1 + g (1 - s)) */
void top_swiglu_bwd(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        if (d_up) d_up[i] += d_out[i] * (g * s);
        if (d_gate) d_gate[i] += d_out[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
    }
}

/* ---- attention over two key ranges ---- */

static void check_ranges(const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq,
                         int Nk) {
    for (int i = 0; i < Nq; i++) {
        DS_ASSERT(0 <= r0_lo[i] && r0_lo[i] <= r0_hi[i] && r0_hi[i] <= Nk);
        DS_ASSERT(0 <= r1_lo[i] && r1_lo[i] <= r1_hi[i] && r1_hi[i] <= Nk);
        DS_ASSERT(r0_lo[i] == r0_hi[i] || r1_lo[i] == r1_hi[i] || r0_hi[i] <= r1_lo[i] || r1_hi[i] <= r0_lo[i]);
    }
}

static inline void axpy(float *y, float a, const float *x, int n) {
    for (int e = 0; e < n; e++) y[e] += a * x[e];
}

/* Two passes per (query, head): the scores into a per-thread row (and their max), then
 * p = exp(s - max), z = sum p, out = sum p v / z, lse = max + log z. Every (query, head) is
 * one task with its own fixed order: the bits do not depend on the thread count. */
void top_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *r0_lo,
                       const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    DS_ASSERT(Hkv > 0 && Hq % Hkv == 0);
    check_ranges(r0_lo, r0_hi, r1_lo, r1_hi, Nq, Nk);
    kern_init();
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = Hq / Hkv, nt = omp_get_max_threads();
    float *scratch = ds_malloc(sizeof(float) * (size_t)nt * (size_t)(Nk > 0 ? Nk : 1)); /* [nt][Nk] scores */
    DS_ASSERT(scratch);
    #pragma omp parallel for schedule(dynamic, 8)
    for (int64_t ih = 0; ih < (int64_t)Nq * Hq; ih++) {
        int i = (int)(ih / Hq), h = (int)(ih % Hq), kh = h / group;
        const float *qi = q + (size_t)ih * hd;
        float *o = out + (size_t)ih * hd, *s = scratch + (size_t)omp_get_thread_num() * Nk;
        int lo[2] = {r0_lo[i], r1_lo[i]}, hi[2] = {r0_hi[i], r1_hi[i]};
        float m = -INFINITY;
        for (int r = 0; r < 2; r++)
            for (int j = lo[r]; j < hi[r]; j++) {
                s[j] = kern_dot_f32(qi, k + ((size_t)j * Hkv + kh) * hd, hd) * scale;
                m = s[j] > m ? s[j] : m;
            }
        memset(o, 0, sizeof(float) * (size_t)hd);
        if (lo[0] == hi[0] && lo[1] == hi[1]) { lse[ih] = -INFINITY; continue; }
        float z = 0;
        for (int r = 0; r < 2; r++)
            for (int j = lo[r]; j < hi[r]; j++) {
                float p = expf(s[j] - m);
                z += p;
                axpy(o, p, v + ((size_t)j * Hkv + kh) * hd, hd);
            }
        float inv = 1.0f / z;
        for (int e = 0; e < hd; e++) o[e] *= inv;
        lse[ih] = m + logf(z);
    }
    ds_free(scratch);
}

/* With p_ij = exp(s_ij - lse_i), s_ij = scale q_i.k_j, o_i = sum_j p_ij v_j:
 *   dv_j += p_ij do_i;  dp_ij = do_i.v_j;  ds_ij = p_ij (dp_ij - D_i), D_i = do_i.o_i;
 *   dq_i += scale ds_ij k_j;  dk_j += scale ds_ij q_i.
 * ATT_G computes the shared factors of one (query, head, key) triple; every path below calls
 * it, so they agree bit for bit. */
#define ATT_G(qi, doi, kj, vj, L, Di, p, g) do { \
        p = expf(kern_dot_f32(qi, kj, hd) * scale - (L)); \
        g = p * (kern_dot_f32(doi, vj, hd) - (Di)) * scale; \
    } while (0)

void top_attention_bwd(float *d_q, float *d_k, float *d_v, const float *d_out, const float *out, const float *lse, const float *q,
                       const float *k, const float *v, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo,
                       const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    DS_ASSERT(Hkv > 0 && Hq % Hkv == 0);
    check_ranges(r0_lo, r0_hi, r1_lo, r1_hi, Nq, Nk);
    kern_init();
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = Hq / Hkv;
    /* D_i = do_i . o_i per (query, head): [Nq][Hq] */
    float *Dd = ds_malloc(sizeof(float) * ((size_t)Nq * Hq + 1));
    DS_ASSERT(Dd);
    #pragma omp parallel for schedule(static)
    for (int64_t ih = 0; ih < (int64_t)Nq * Hq; ih++) Dd[ih] = kern_dot_f32(d_out + ih * hd, out + ih * hd, hd);

    /* Every d_q row is a sum over its keys in visiting order; every d_k / d_v row is a sum over
     * (query, head) pairs in increasing (query, head) order. Two schedules give exactly these
     * orders: one task per kv head doing everything (the least arithmetic; used when there are
     * at least as many kv heads as threads), or, for more parallelism, a query-side pass over
     * (query, head) for d_q and a key-side pass over (kv head, key) for d_k and d_v, which
     * recomputes p and ds. Both give the same bits, so the result does not depend on the
     * thread count either way. */
    if (Hkv >= omp_get_max_threads()) {
        #pragma omp parallel for schedule(static, 1)
        for (int kh = 0; kh < Hkv; kh++) {
            for (int i = 0; i < Nq; i++) {
                int lo[2] = {r0_lo[i], r1_lo[i]}, hi[2] = {r0_hi[i], r1_hi[i]};
                for (int h = kh * group; h < (kh + 1) * group; h++) {
                    size_t ih = (size_t)i * Hq + h;
                    if (lse[ih] == -INFINITY) continue;
                    const float *qi = q + ih * hd, *doi = d_out + ih * hd;
                    for (int r = 0; r < 2; r++)
                        for (int j = lo[r]; j < hi[r]; j++) {
                            size_t jk = ((size_t)j * Hkv + kh) * hd;
                            float p, g;
                            ATT_G(qi, doi, k + jk, v + jk, lse[ih], Dd[ih], p, g);
                            if (d_v) axpy(d_v + jk, p, doi, hd);
                            if (d_q) axpy(d_q + ih * hd, g, k + jk, hd);
                            if (d_k) axpy(d_k + jk, g, qi, hd);
                        }
                }
            }
        }
    } else {
        if (d_q) {
            #pragma omp parallel for schedule(dynamic, 8)
            for (int64_t ih = 0; ih < (int64_t)Nq * Hq; ih++) {
                int i = (int)(ih / Hq), kh = (int)(ih % Hq) / group;
                if (lse[ih] == -INFINITY) continue;
                int lo[2] = {r0_lo[i], r1_lo[i]}, hi[2] = {r0_hi[i], r1_hi[i]};
                const float *qi = q + ih * hd, *doi = d_out + ih * hd;
                for (int r = 0; r < 2; r++)
                    for (int j = lo[r]; j < hi[r]; j++) {
                        size_t jk = ((size_t)j * Hkv + kh) * hd;
                        float p, g;
                        ATT_G(qi, doi, k + jk, v + jk, lse[ih], Dd[ih], p, g);
                        axpy(d_q + ih * hd, g, k + jk, hd);
                    }
            }
        }
        if (d_k || d_v) {
            #pragma omp parallel for schedule(dynamic, 4)
            for (int64_t jh = 0; jh < (int64_t)Nk * Hkv; jh++) {
                int j = (int)(jh / Hkv), kh = (int)(jh % Hkv);
                size_t jk = (size_t)jh * hd;
                for (int i = 0; i < Nq; i++) {
                    if (!((r0_lo[i] <= j && j < r0_hi[i]) || (r1_lo[i] <= j && j < r1_hi[i]))) continue;
                    for (int h = kh * group; h < (kh + 1) * group; h++) {
                        size_t ih = (size_t)i * Hq + h;
                        if (lse[ih] == -INFINITY) continue;
                        const float *qi = q + ih * hd, *doi = d_out + ih * hd;
                        float p, g;
                        ATT_G(qi, doi, k + jk, v + jk, lse[ih], Dd[ih], p, g);
                        if (d_v) axpy(d_v + jk, p, doi, hd);
                        if (d_k) axpy(d_k + jk, g, qi, hd);
                    }
                }
            }
        }
    }
    ds_free(Dd);
}

/* ---- embedding ---- */

void top_embedding_fwd(float *out, const float *table, const int32_t *ids, int N, int D) {
    for (int i = 0; i < N; i++) {
        DS_ASSERT(ids[i] >= 0);
        memcpy(out + (size_t)i * D, table + (size_t)ids[i] * D, sizeof(float) * (size_t)D);
    }
}
