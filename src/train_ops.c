/* train_ops.c - F32 training ops, forward next to backward (contract and determinism rules
 * in train_ops.h). Each backward states the derivative it implements in the comment above. */
#include "train_ops.h"
#include "base.h"
#include "kernels.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* Column sums of a [N][D] matrix (optionally times rstd[n] * x[n][j]) must run rows in order
 * for every column whatever the thread count: threads own chunks of COLS columns (a cache
 * line) and walk the rows top to bottom, so each column's sum order is fixed. */
enum { COLS = 16 };

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
    /* when positions repeat (a batch of sequences), cos and sin once per position: a table */
    int P = 0;
    for (int i = 0; i < N; i++) {
        DS_ASSERT(pos[i] >= 0);
        P = pos[i] >= P ? pos[i] + 1 : P;
    }
    float *tab = P < N ? ds_malloc(sizeof(float) * 2 * (size_t)P * half) : NULL; /* [P][cos half | sin half] */
    if (tab) {
        #pragma omp parallel for schedule(static) if (P >= 16)
        for (int p = 0; p < P; p++)
            for (int j = 0; j < half; j++) {
                float f = (float)p * inv_freq[j];
                tab[(size_t)p * 2 * half + j] = cosf(f);
                tab[(size_t)p * 2 * half + half + j] = sign * sinf(f);
            }
    }
    #pragma omp parallel for schedule(static) if (N >= 16)
    for (int i = 0; i < N; i++) {
        float cbuf[512], sbuf[512];
        const float *c = cbuf, *s = sbuf;
        if (tab) {
            c = tab + (size_t)pos[i] * 2 * half;
            s = c + half;
        } else {
            for (int j = 0; j < half; j++) {
                float f = (float)pos[i] * inv_freq[j];
                cbuf[j] = cosf(f);
                sbuf[j] = sign * sinf(f);
            }
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
    ds_free(tab);
}

void top_rope_fwd(float *x, const int32_t *pos, int N, int H, int hd, float theta) { rope(x, pos, N, H, hd, theta, 1.0f); }
void top_rope_bwd(float *d_x, const int32_t *pos, int N, int H, int hd, float theta) { rope(d_x, pos, N, H, hd, theta, -1.0f); }

/* ---- SwiGLU ---- */

void top_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = (g / (1.0f + top_expf(-g))) * up[i];
    }
}

/* silu(g) = g s, s = sigmoid(g); silu'(g) = s (1 + g (1 - s)) */
void top_swiglu_bwd(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up, size_t n) {
    if (d_up && d_gate) { /* loops without a branch inside, so that they vectorise */
        #pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float g = gate[i], s = 1.0f / (1.0f + top_expf(-g));
            d_up[i] += d_out[i] * (g * s);
            d_gate[i] += d_out[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        }
    } else if (d_up) {
        #pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float g = gate[i];
            d_up[i] += d_out[i] * (g * (1.0f / (1.0f + top_expf(-g))));
        }
    } else if (d_gate) {
        #pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float g = gate[i], s = 1.0f / (1.0f + top_expf(-g));
            d_gate[i] += d_out[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        }
    }
}

/* ---- attention over two key ranges, in tiles ---- */

/* Queries and keys are cut into fixed tiles of ATT_Q queries and ATT_K keys (absolute
 * indices, so the cut does not depend on the thread count). A block is one (query tile, key
 * tile, query head); the plan marks the blocks where at least one query sees at least one key,
 * and only those are computed, each by small single-threaded sgemm products (OpenBLAS runs
 * single-threaded inside an active OpenMP region, and these sizes are below its threading
 * threshold in the pthreads build too) plus an elementwise mask and exp. */
enum { ATT_Q = 64, ATT_K = 64 };

typedef struct {
    const float *q, *k, *v, *d_out, *lse, *D;
    int32_t *rg;          /* [Nq][4]: query i's ranges sorted, lo0 <= hi0 <= lo1 <= hi1 */
    unsigned char *map;   /* [nqt][nkt]: 1 where the block has a (query, key) pair */
    int Nq, Nk, Hq, Hkv, hd, group, nqt, nkt;
    float scale;
} Att;

static void check_ranges(const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq,
                         int Nk) {
    for (int i = 0; i < Nq; i++) {
        DS_ASSERT(0 <= r0_lo[i] && r0_lo[i] <= r0_hi[i] && r0_hi[i] <= Nk);
        DS_ASSERT(0 <= r1_lo[i] && r1_lo[i] <= r1_hi[i] && r1_hi[i] <= Nk);
        DS_ASSERT(r0_lo[i] == r0_hi[i] || r1_lo[i] == r1_hi[i] || r0_hi[i] <= r1_lo[i] || r1_hi[i] <= r0_lo[i]);
    }
}

static void att_plan(Att *a, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi) {
    a->group = a->Hq / a->Hkv;
    a->scale = 1.0f / sqrtf((float)a->hd);
    a->nqt = (a->Nq + ATT_Q - 1) / ATT_Q;
    a->nkt = (a->Nk + ATT_K - 1) / ATT_K;
    a->rg = ds_malloc(sizeof(int32_t) * 4 * (size_t)(a->Nq > 0 ? a->Nq : 1));
    a->map = ds_calloc((size_t)a->nqt * a->nkt + 1, 1);
    DS_ASSERT(a->rg && a->map);
    for (int i = 0; i < a->Nq; i++) {
        int32_t *g = a->rg + 4 * (size_t)i;
        bool swap = r0_lo[i] > r1_lo[i];
        g[0] = swap ? r1_lo[i] : r0_lo[i]; g[1] = swap ? r1_hi[i] : r0_hi[i];
        g[2] = swap ? r0_lo[i] : r1_lo[i]; g[3] = swap ? r0_hi[i] : r1_hi[i];
        if (g[0] == g[1]) g[0] = g[1] = 0; /* an empty range matches no key */
        if (g[2] == g[3]) g[2] = g[3] = 0;
        for (int r = 0; r < 4; r += 2)
            for (int kt = g[r] / ATT_K; g[r] < g[r + 1] && kt <= (g[r + 1] - 1) / ATT_K; kt++)
                a->map[(size_t)(i / ATT_Q) * a->nkt + kt] = 1;
    }
}

static void att_unplan(Att *a) { ds_free(a->rg); ds_free(a->map); }

/* s[c] (key k0 + c) = -inf where query g does not see that key */
static inline void att_mask(float *s, const int32_t *g, int k0, int nc) {
    int lo0 = g[0] - k0, hi0 = g[1] - k0, lo1 = g[2] - k0, hi1 = g[3] - k0;
    #pragma omp simd
    for (int c = 0; c < nc; c++) s[c] = (c >= lo0 && c < hi0) || (c >= lo1 && c < hi1) ? s[c] : -INFINITY;
}

static inline int imin(int a, int b) { return a < b ? a : b; }

/* Forward of query tile qt, head h: S = scale Q K^T per marked key tile into S [ATT_Q][nkt *
 * ATT_K] (masked), m = row max, p = exp(s - m), z = sum p (key tiles ascending, keys ascending),
 * out = (sum over key tiles P V) / z, lse = m + log z. */
static void att_fwd_tile(const Att *a, int qt, int h, float *out, float *lse, float *S) {
    const int i0 = qt * ATT_Q, nr = imin(ATT_Q, a->Nq - i0), kh = h / a->group, hd = a->hd, ldq = a->Hq * hd, ldk = a->Hkv * hd;
    const size_t ldS = (size_t)a->nkt * ATT_K;
    const unsigned char *mp = a->map + (size_t)qt * a->nkt;
    const float *Q = a->q + ((size_t)i0 * a->Hq + h) * hd;
    float *O = out + ((size_t)i0 * a->Hq + h) * hd;
    float m[ATT_Q], z[ATT_Q];
    for (int r = 0; r < nr; r++) m[r] = -INFINITY, z[r] = 0;
    for (int kt = 0; kt < a->nkt; kt++) {
        if (!mp[kt]) continue;
        int k0 = kt * ATT_K, nc = imin(ATT_K, a->Nk - k0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, hd, a->scale, Q, ldq, a->k + ((size_t)k0 * a->Hkv + kh) * hd,
                    ldk, 0.0f, S + k0, (int)ldS);
        for (int r = 0; r < nr; r++) {
            float *s = S + r * ldS + k0, mx = m[r];
            att_mask(s, a->rg + 4 * (size_t)(i0 + r), k0, nc);
            #pragma omp simd reduction(max : mx)
            for (int c = 0; c < nc; c++) mx = s[c] > mx ? s[c] : mx;
            m[r] = mx;
        }
    }
    bool first = true;
    for (int kt = 0; kt < a->nkt; kt++) {
        if (!mp[kt]) continue;
        int k0 = kt * ATT_K, nc = imin(ATT_K, a->Nk - k0);
        for (int r = 0; r < nr; r++) {
            float *s = S + r * ldS + k0, mr = m[r] == -INFINITY ? 0.0f : m[r], zr = 0;
            #pragma omp simd reduction(+ : zr)
            for (int c = 0; c < nc; c++) { s[c] = top_expf(s[c] - mr); zr += s[c]; }
            z[r] += zr;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, nc, 1.0f, S + k0, (int)ldS,
                    a->v + ((size_t)k0 * a->Hkv + kh) * hd, ldk, first ? 0.0f : 1.0f, O, ldq);
        first = false;
    }
    for (int r = 0; r < nr; r++) {
        float *o = O + (size_t)r * ldq, inv = z[r] > 0 ? 1.0f / z[r] : 0.0f;
        if (first) memset(o, 0, sizeof(float) * (size_t)hd);
        for (int e = 0; e < hd; e++) o[e] *= inv;
        lse[(size_t)(i0 + r) * a->Hq + h] = m[r] == -INFINITY ? -INFINITY : m[r] + logf(z[r]);
    }
}

/* Grouped-query attention, one task per (query tile, head) in (head-major) order; every task
 * has one fixed order of its own, so the bits do not depend on the thread count. */
void top_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *r0_lo,
                       const int32_t *r0_hi, const int32_t *r1_lo, const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    DS_ASSERT(Hkv > 0 && Hq % Hkv == 0);
    check_ranges(r0_lo, r0_hi, r1_lo, r1_hi, Nq, Nk);
    if (Nq <= 0) return;
    Att a = {.q = q, .k = k, .v = v, .Nq = Nq, .Nk = Nk, .Hq = Hq, .Hkv = Hkv, .hd = hd};
    att_plan(&a, r0_lo, r0_hi, r1_lo, r1_hi);
    const int nt = omp_get_max_threads();
    const size_t per = (size_t)ATT_Q * (a.nkt > 0 ? a.nkt : 1) * ATT_K;
    float *scratch = ds_malloc(sizeof(float) * (size_t)nt * per); /* [nt][ATT_Q][nkt * ATT_K] scores */
    DS_ASSERT(scratch);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < a.nqt * Hq; t++)
        att_fwd_tile(&a, t % a.nqt, t / a.nqt, out, lse, scratch + (size_t)omp_get_thread_num() * per);
    ds_free(scratch);
    att_unplan(&a);
}

/* Backward. With p_ij = exp(s_ij - lse_i), s_ij = scale q_i.k_j, o_i = sum_j p_ij v_j:
 *   dv_j += p_ij do_i;  dp_ij = do_i.v_j;  ds_ij = p_ij (dp_ij - D_i), D_i = do_i.o_i;
 *   dq_i += scale ds_ij k_j;  dk_j += scale ds_ij q_i.
 * In blocks: P and G = scale dS come from att_block (S = scale Q K^T, dP = dO V^T); then
 * dQ += G K, dK += G^T Q, dV += P^T dO. Summation orders (what makes the bits independent of
 * the schedule): a d_q tile sums its key tiles in increasing order; a d_k / d_v tile sums its
 * (query tile, head) blocks in increasing (query tile, head). */
static void att_block(const Att *a, int qt, int kt, int h, float *P, float *G) {
    const int i0 = qt * ATT_Q, nr = imin(ATT_Q, a->Nq - i0), k0 = kt * ATT_K, nc = imin(ATT_K, a->Nk - k0), kh = h / a->group,
              hd = a->hd, ldq = a->Hq * hd, ldk = a->Hkv * hd;
    size_t qo = ((size_t)i0 * a->Hq + h) * hd, ko = ((size_t)k0 * a->Hkv + kh) * hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, hd, a->scale, a->q + qo, ldq, a->k + ko, ldk, 0.0f, P, ATT_K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, hd, 1.0f, a->d_out + qo, ldq, a->v + ko, ldk, 0.0f, G, ATT_K);
    for (int r = 0; r < nr; r++) {
        size_t ih = (size_t)(i0 + r) * a->Hq + h;
        float *p = P + r * ATT_K, *g = G + r * ATT_K, L = a->lse[ih], Di = a->D[ih], sc = a->scale;
        if (L == -INFINITY) { /* no keys: no gradient */
            memset(p, 0, sizeof(float) * (size_t)nc);
            memset(g, 0, sizeof(float) * (size_t)nc);
            continue;
        }
        att_mask(p, a->rg + 4 * (size_t)(i0 + r), k0, nc);
        #pragma omp simd
        for (int c = 0; c < nc; c++) {
            float e = top_expf(p[c] - L);
            p[c] = e;
            g[c] = e * (g[c] - Di) * sc;
        }
    }
}

static void att_bwd_dq(const Att *a, int qt, int kt, int h, const float *G, float *d_q) {
    const int i0 = qt * ATT_Q, nr = imin(ATT_Q, a->Nq - i0), k0 = kt * ATT_K, nc = imin(ATT_K, a->Nk - k0), hd = a->hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, nc, 1.0f, G, ATT_K, a->k + ((size_t)k0 * a->Hkv + h / a->group) * hd,
                a->Hkv * hd, 1.0f, d_q + ((size_t)i0 * a->Hq + h) * hd, a->Hq * hd);
}

static void att_bwd_dkv(const Att *a, int qt, int kt, int h, const float *P, const float *G, float *d_k, float *d_v) {
    const int i0 = qt * ATT_Q, nr = imin(ATT_Q, a->Nq - i0), k0 = kt * ATT_K, nc = imin(ATT_K, a->Nk - k0), hd = a->hd;
    size_t qo = ((size_t)i0 * a->Hq + h) * hd, ko = ((size_t)k0 * a->Hkv + h / a->group) * hd;
    if (d_v) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, hd, nr, 1.0f, P, ATT_K, a->d_out + qo, a->Hq * hd, 1.0f, d_v + ko, a->Hkv * hd);
    if (d_k) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, hd, nr, 1.0f, G, ATT_K, a->q + qo, a->Hq * hd, 1.0f, d_k + ko, a->Hkv * hd);
}

void top_attention_bwd(float *d_q, float *d_k, float *d_v, const float *d_out, const float *out, const float *lse, const float *q,
                       const float *k, const float *v, const int32_t *r0_lo, const int32_t *r0_hi, const int32_t *r1_lo,
                       const int32_t *r1_hi, int Nq, int Nk, int Hq, int Hkv, int hd) {
    DS_ASSERT(Hkv > 0 && Hq % Hkv == 0);
    check_ranges(r0_lo, r0_hi, r1_lo, r1_hi, Nq, Nk);
    kern_init();
    if (Nq <= 0 || Nk <= 0) return;
    float *D = ds_malloc(sizeof(float) * ((size_t)Nq * Hq + 1)); /* D_i = do_i . o_i, [Nq][Hq] */
    DS_ASSERT(D);
    #pragma omp parallel for schedule(static)
    for (int64_t ih = 0; ih < (int64_t)Nq * Hq; ih++) D[ih] = kern_dot_f32(d_out + ih * hd, out + ih * hd, hd);
    Att a = {.q = q, .k = k, .v = v, .d_out = d_out, .lse = lse, .D = D, .Nq = Nq, .Nk = Nk, .Hq = Hq, .Hkv = Hkv, .hd = hd};
    att_plan(&a, r0_lo, r0_hi, r1_lo, r1_hi);
    const int nt = omp_get_max_threads(), nqt = a.nqt, nkt = a.nkt, group = a.group;
    float *scratch = ds_malloc(sizeof(float) * (size_t)nt * 2 * ATT_Q * ATT_K); /* [nt][P, G][ATT_Q][ATT_K] */
    DS_ASSERT(scratch);

    /* Two schedules with the same sums in the same order (so the same bits, whatever the
     * thread count picks): one task per kv head doing everything, key tile by key tile (each
     * block computed once; used when there are at least as many kv heads as threads); or,
     * for more parallelism, a query-side pass over (query tile, head) for d_q and a key-side
     * pass over (key tile, kv head) for d_k and d_v, which recompute the blocks. */
    if (Hkv >= nt) {
        #pragma omp parallel for schedule(static, 1)
        for (int kh = 0; kh < Hkv; kh++) {
            float *P = scratch + (size_t)omp_get_thread_num() * 2 * ATT_Q * ATT_K, *G = P + ATT_Q * ATT_K;
            for (int kt = 0; kt < nkt; kt++)
                for (int qt = 0; qt < nqt; qt++) {
                    if (!a.map[(size_t)qt * nkt + kt]) continue;
                    for (int h = kh * group; h < (kh + 1) * group; h++) {
                        att_block(&a, qt, kt, h, P, G);
                        att_bwd_dkv(&a, qt, kt, h, P, G, d_k, d_v);
                        if (d_q) att_bwd_dq(&a, qt, kt, h, G, d_q);
                    }
                }
        }
    } else {
        if (d_q) {
            #pragma omp parallel for schedule(dynamic, 1)
            for (int t = 0; t < nqt * Hq; t++) {
                int qt = t % nqt, h = t / nqt;
                float *P = scratch + (size_t)omp_get_thread_num() * 2 * ATT_Q * ATT_K, *G = P + ATT_Q * ATT_K;
                for (int kt = 0; kt < nkt; kt++) {
                    if (!a.map[(size_t)qt * nkt + kt]) continue;
                    att_block(&a, qt, kt, h, P, G);
                    att_bwd_dq(&a, qt, kt, h, G, d_q);
                }
            }
        }
        if (d_k || d_v) {
            #pragma omp parallel for schedule(dynamic, 1)
            for (int t = 0; t < nkt * Hkv; t++) {
                int kt = t % nkt, kh = t / nkt;
                float *P = scratch + (size_t)omp_get_thread_num() * 2 * ATT_Q * ATT_K, *G = P + ATT_Q * ATT_K;
                for (int qt = 0; qt < nqt; qt++) {
                    if (!a.map[(size_t)qt * nkt + kt]) continue;
                    for (int h = kh * group; h < (kh + 1) * group; h++) {
                        att_block(&a, qt, kt, h, P, G);
                        att_bwd_dkv(&a, qt, kt, h, P, G, d_k, d_v);
                    }
                }
            }
        }
    }
    ds_free(scratch);
    att_unplan(&a);
    ds_free(D);
}

/* ---- embedding ---- */

void top_embedding_fwd(float *out, const float *table, const int32_t *ids, int N, int D) {
    for (int i = 0; i < N; i++) {
        DS_ASSERT(ids[i] >= 0);
        memcpy(out + (size_t)i * D, table + (size_t)ids[i] * D, sizeof(float) * (size_t)D);
    }
}
