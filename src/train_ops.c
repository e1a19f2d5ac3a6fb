/* train_ops.c - see train_ops.h. */
#include "train_ops.h"
#include "base.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void top_linear_fwd(float *out, const float *in, const float *W, const float *b, int N, int n_in, int n_out) {
    if (N <= 0 || n_out <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n_out, n_in, 1.0f, in, n_in, W, n_in, 0.0f, out, n_out);
    if (b) {
        #pragma omp parallel for schedule(static) if ((size_t)N * n_out > 65536)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < n_out; o++) out[(size_t)n * n_out + o] += b[o];
    }
}

void top_linear_bwd(float *d_in, float *d_W, float *d_b, const float *d_out, const float *in, const float *W, int N, int n_in, int n_out) {
    if (N <= 0 || n_out <= 0) return;
    if (d_in) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, n_in, n_out, 1.0f, d_out, n_out, W, n_in, 1.0f, d_in, n_in);
    if (d_W) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, N, 1.0f, d_out, n_out, in, n_in, 1.0f, d_W, n_in);
    if (d_b) {
        #pragma omp parallel for schedule(static) if ((size_t)N * n_out > 65536)
        for (int o = 0; o < n_out; o++) {
            float s = 0;
            for (int n = 0; n < N; n++) s += d_out[(size_t)n * n_out + o];
            d_b[o] += s;
        }
    }
}

void top_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps) {
    #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * D;
        float *o = out + (size_t)n * D;
        float ss = 0;
        for (int j = 0; j < D; j++) ss += xr[j] * xr[j];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        rstd[n] = r;
        for (int j = 0; j < D; j++) o[j] = w[j] * (xr[j] * r);
    }
}

/* y_j = w_j x_j r, r = (mean x^2 + eps)^-1/2:
 * dx_j = r (w_j dy_j) - r^3 x_j / D * sum_k (w_k dy_k x_k);  dw_j = sum_rows dy_j x_j r */
void top_rmsnorm_bwd(float *d_x, float *d_w, const float *d_out, const float *x, const float *w, const float *rstd, int N, int D) {
    if (d_x) {
        #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * D, *dy = d_out + (size_t)n * D;
            float *dx = d_x + (size_t)n * D;
            float r = rstd[n], dot = 0;
            for (int j = 0; j < D; j++) dot += w[j] * dy[j] * xr[j];
            float c = r * r * r * dot / (float)D;
            for (int j = 0; j < D; j++) dx[j] += r * w[j] * dy[j] - c * xr[j];
        }
    }
    if (d_w) { /* columns in parallel, rows in order: thread-count independent */
        #pragma omp parallel for schedule(static) if ((size_t)N * D > 65536)
        for (int j = 0; j < D; j++) {
            float s = 0;
            for (int n = 0; n < N; n++) s += d_out[(size_t)n * D + j] * x[(size_t)n * D + j] * rstd[n];
            d_w[j] += s;
        }
    }
}

static void rope(float *x, const int32_t *pos, int N, int H, int hd, float theta, float sign) {
    int half = hd / 2;
    float inv_freq[512];
    DS_ASSERT(half <= 512);
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

void top_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* silu(g) = g s, s = sigmoid(g); d silu / dg = s (1 + g (1 - s)) */
void top_swiglu_bwd(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        if (d_up) d_up[i] += d_out[i] * g * s;
        if (d_gate) d_gate[i] += d_out[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

static float dotf(const float *a, const float *b, int n) {
    float s = 0;
    for (int e = 0; e < n; e++) s += a[e] * b[e];
    return s;
}

void top_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *r0_lo,
                       const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    (void)Nk;
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = Hq / Hkv;
    #pragma omp parallel for schedule(dynamic, 16)
    for (int64_t ih = 0; ih < (int64_t)Nq * Hq; ih++) {
        int i = (int)(ih / Hq), h = (int)(ih % Hq), kh = h / group;
        const float *qi = q + (size_t)ih * hd;
        float *o = out + (size_t)ih * hd;
        int lo[2] = {r0_lo[i], r1_lo[i]}, hi[2] = {r0_hi[i], r1_hi[i]};
        float m = -INFINITY;
        for (int r = 0; r < 2; r++)
            for (int j = lo[r]; j < hi[r]; j++) {
                float s = dotf(qi, k + ((size_t)j * Hkv + kh) * hd, hd) * scale;
                m = s > m ? s : m;
            }
        memset(o, 0, sizeof(float) * (size_t)hd);
        if (m == -INFINITY) { lse[ih] = -INFINITY; continue; }
        float z = 0;
        for (int r = 0; r < 2; r++)
            for (int j = lo[r]; j < hi[r]; j++) {
                float p = expf(dotf(qi, k + ((size_t)j * Hkv + kh) * hd, hd) * scale - m);
                z += p;
                const float *vj = v + ((size_t)j * Hkv + kh) * hd;
                for (int e = 0; e < hd; e++) o[e] += p * vj[e];
            }
        float inv = 1.0f / z;
        for (int e = 0; e < hd; e++) o[e] *= inv;
        lse[ih] = m + logf(z);
    }
}

/* p_ij = exp(s_ij - lse_i); dv_j += p_ij do_i; dp_ij = do_i . v_j; ds_ij = p_ij (dp_ij - do_i . o_i);
 * dq_i += scale ds_ij k_j; dk_j += scale ds_ij q_i. One KV head per task: every d_k / d_v row
 * is written by one thread, queries in order, whatever the thread count. */
void top_attention_bwd(float *d_q, float *d_k, float *d_v, const float *d_out, const float *out, const float *lse, const float *q,
                       const float *k, const float *v, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo,
                       const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    (void)Nk;
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = Hq / Hkv;
    #pragma omp parallel for schedule(static, 1)
    for (int kh = 0; kh < Hkv; kh++) {
        for (int i = 0; i < Nq; i++) {
            int lo[2] = {r0_lo[i], r1_lo[i]}, hi[2] = {r0_hi[i], r1_hi[i]};
            for (int h = kh * group; h < (kh + 1) * group; h++) {
                size_t ih = (size_t)i * Hq + h;
                float L = lse[ih];
                if (L == -INFINITY) continue;
                const float *qi = q + ih * hd, *doi = d_out + ih * hd;
                float D = dotf(doi, out + ih * hd, hd);
                float *dqi = d_q ? d_q + ih * hd : NULL;
                for (int r = 0; r < 2; r++)
                    for (int j = lo[r]; j < hi[r]; j++) {
                        size_t jk = ((size_t)j * Hkv + kh) * hd;
                        const float *kj = k + jk, *vj = v + jk;
                        float p = expf(dotf(qi, kj, hd) * scale - L);
                        float ds = p * (dotf(doi, vj, hd) - D) * scale;
                        if (d_v) for (int e = 0; e < hd; e++) d_v[jk + e] += p * doi[e];
                        if (dqi) for (int e = 0; e < hd; e++) dqi[e] += ds * kj[e];
                        if (d_k) for (int e = 0; e < hd; e++) d_k[jk + e] += ds * qi[e];
                    }
            }
        }
    }
}

void top_embedding_fwd(float *out, const float *table, const int32_t *ids, int N, int D) {
    for (int i = 0; i < N; i++) memcpy(out + (size_t)i * D, table + (size_t)ids[i] * D, sizeof(float) * (size_t)D);
}
