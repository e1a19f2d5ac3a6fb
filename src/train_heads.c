/* train_heads.c - the Markov heads and the confidence head of a DSpark drafter in training:
 * teacher-forced forward over all blocks at once and the backward (see train_draft.h).
 *
 * Rows are i = n*B + k (block n, slot k); prev[i] is the true previous token (DeepSpec
 * Qwen3DSparkModel.forward: prev = [x_p, labels[:-1]]), h[i] the backbone output after the
 * final norm. With e = W1[prev] (markov_head.py):
 *   vanilla  u = e
 *   gated    g = sigmoid(G [h ; e] + bg),  u = g * e
 *   rnn      (pg, pc, po) = J [s ; e ; h] + bj, g = sigmoid(pg), c = tanh(pc), u = tanh(po),
 *            s' = g * s + (1 - g) * c,  s = 0 at slot 0 of every block (unrolled over k)
 * bias = W2 u is added to lm_head(h) by the caller. Confidence (AcceptRatePredictor):
 *   conf = P [h ; e] + bp (P [h] + bp without Markov features).
 * The confidence loss reaches h and W1 (DeepSpec detaches only the soft label).
 *
 * Matrix products use cblas_sgemm on strided row views (slot k of every block has stride B
 * rows), so the RNN's per-slot steps run over all blocks in one call. Weight gradients are
 * summed over rows in a fixed order (sgemm, or sequential loops), so results do not depend on
 * the OpenMP thread count for a fixed BLAS thread count. */
#include "train_draft.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

size_t heads_act_floats(const HeadWeights *w, int N) {
    size_t r = (size_t)w->r, n = (size_t)N;
    size_t f = n; /* conf */
    if (w->type != MARKOV_NONE) {
        f += 2 * n * r;                                   /* w1x, u */
        if (w->type == MARKOV_GATED) f += n * r;          /* g */
        if (w->type == MARKOV_RNN) f += 3 * n * r;        /* g, c, s_prev */
        if (w->type == MARKOV_RNN) f += n * 3 * r;        /* pre-activations of one slot (scratch) */
    }
    return f;
}

void heads_acts_bind(HeadActs *a, const HeadWeights *w, int N, float *buf) {
    memset(a, 0, sizeof *a);
    size_t r = (size_t)w->r, n = (size_t)N;
    a->conf = buf; buf += n;
    if (w->type == MARKOV_NONE) return;
    a->w1x = buf; buf += n * r;
    a->u = buf; buf += n * r;
    if (w->type == MARKOV_GATED) { a->g = buf; buf += n * r; }
    if (w->type == MARKOV_RNN) {
        a->g = buf; buf += n * r;
        a->c = buf; buf += n * r;
        a->s_prev = buf; buf += n * r;
    }
}

/* scratch for the RNN's pre-activations, right after s_prev (see heads_act_floats) */
static float *rnn_pre(const HeadActs *a, int N, int r) { return a->s_prev + (size_t)N * r; }

/* C[m][n] (ldc) += A[m][k] (lda) B[n][k]^T (ldb) */
static void gemm_nt(int m, int n, int k, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (m <= 0 || n <= 0 || k <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
/* C[m][n] (ldc) += A[m][k] (lda) B[k][n] (ldb) */
static void gemm_nn(int m, int n, int k, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    if (m <= 0 || n <= 0 || k <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
}
/* C[m][n] (ldc) += A[k][m]^T (lda) B[k][n] (ldb)  (weight gradients: sum over rows k) */
static void gemm_tn(int m, int n, int k, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    if (m <= 0 || n <= 0 || k <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
}

void heads_fwd(const HeadWeights *w, HeadActs *a, const float *h, const int32_t *prev, int n_blocks) {
    const int B = w->B, d = w->d, r = w->r, N = n_blocks * B;
    if (w->type != MARKOV_NONE) {
        for (int i = 0; i < N; i++) memcpy(a->w1x + (size_t)i * r, w->w1 + (size_t)prev[i] * r, sizeof(float) * r);
        if (w->type == MARKOV_VANILLA) {
            memcpy(a->u, a->w1x, sizeof(float) * (size_t)N * r);
        } else if (w->type == MARKOV_GATED) {
            /* g = sigmoid(h G[:, :d]^T + e G[:, d:]^T + b) */
            float *g = a->g;
            for (int i = 0; i < N; i++) memcpy(g + (size_t)i * r, w->gate_b, sizeof(float) * r);
            gemm_nt(N, r, d, h, d, w->gate_w, d + r, 1.0f, g, r);
            gemm_nt(N, r, r, a->w1x, r, w->gate_w + d, d + r, 1.0f, g, r);
            for (size_t j = 0; j < (size_t)N * r; j++) {
                g[j] = sigmoidf_(g[j]);
                a->u[j] = g[j] * a->w1x[j];
            }
        } else { /* RNN, unrolled over the slots of all blocks at once */
            const int zin = 2 * r + d, ld = B * r;
            float *pre = rnn_pre(a, N, r); /* [n_blocks][3r] */
            for (int k = 0; k < B; k++) {
                float *s = a->s_prev + (size_t)k * r;
                if (k == 0)
                    for (int n = 0; n < n_blocks; n++) memset(s + (size_t)n * ld, 0, sizeof(float) * r);
                for (int n = 0; n < n_blocks; n++) memcpy(pre + (size_t)n * 3 * r, w->joint_b, sizeof(float) * 3 * r);
                gemm_nt(n_blocks, 3 * r, r, s, ld, w->joint_w, zin, 1.0f, pre, 3 * r);
                gemm_nt(n_blocks, 3 * r, r, a->w1x + (size_t)k * r, ld, w->joint_w + r, zin, 1.0f, pre, 3 * r);
                gemm_nt(n_blocks, 3 * r, d, h + (size_t)k * d, B * d, w->joint_w + 2 * r, zin, 1.0f, pre, 3 * r);
                for (int n = 0; n < n_blocks; n++) {
                    size_t i = (size_t)n * B + k;
                    const float *p = pre + (size_t)n * 3 * r;
                    float *g = a->g + i * r, *c = a->c + i * r, *u = a->u + i * r;
                    const float *sp = a->s_prev + i * r;
                    for (int j = 0; j < r; j++) {
                        g[j] = sigmoidf_(p[j]);
                        c[j] = tanhf(p[r + j]);
                        u[j] = tanhf(p[2 * r + j]);
                    }
                    if (k + 1 < B) {
                        float *sn = a->s_prev + (i + 1) * r;
                        for (int j = 0; j < r; j++) sn[j] = g[j] * sp[j] + (1.0f - g[j]) * c[j];
                    }
                }
            }
        }
    }
    if (w->conf_in > 0) {
        for (int i = 0; i < N; i++) {
            const float *hi = h + (size_t)i * d;
            float acc = 0.0f;
            for (int j = 0; j < d; j++) acc += w->conf_w[j] * hi[j];
            if (w->conf_in > d) {
                const float *e = a->w1x + (size_t)i * r;
                for (int j = 0; j < r; j++) acc += w->conf_w[d + j] * e[j];
            }
            a->conf[i] = acc + w->conf_b[0];
        }
    }
}

size_t heads_bwd_scratch_floats(const HeadWeights *w, int N) {
    size_t r = (size_t)w->r, n = (size_t)N;
    return n * r + n * 3 * r + n * r + 16; /* d_e, d_pre, carried d_state */
}

void heads_bwd(const HeadWeights *w, const HeadActs *a, const HeadGrads *gr, float *d_h, const float *d_u, const float *d_conf,
               const float *h, const int32_t *prev, int n_blocks, float *scratch) {
    const int B = w->B, d = w->d, r = w->r, N = n_blocks * B;
    float *d_e = scratch;                                    /* [N][r] dL/dW1[prev] */
    float *d_pre = scratch + (size_t)N * r;                  /* [N][3r] (gated: [N][r]) */
    float *ds = d_pre + (size_t)N * 3 * r;                   /* [n_blocks][r] */
    if (w->type != MARKOV_NONE) memset(d_e, 0, sizeof(float) * (size_t)N * r);
    /* confidence head */
    if (w->conf_in > 0 && d_conf) {
        for (int i = 0; i < N; i++) {
            float dc = d_conf[i];
            if (dc == 0.0f) continue;
            const float *hi = h + (size_t)i * d;
            float *dhi = d_h + (size_t)i * d;
            if (gr->d_conf_b) gr->d_conf_b[0] += dc;
            for (int j = 0; j < d; j++) {
                if (gr->d_conf_w) gr->d_conf_w[j] += dc * hi[j];
                dhi[j] += dc * w->conf_w[j];
            }
            if (w->conf_in > d) {
                const float *e = a->w1x + (size_t)i * r;
                float *de = d_e + (size_t)i * r;
                for (int j = 0; j < r; j++) {
                    if (gr->d_conf_w) gr->d_conf_w[d + j] += dc * e[j];
                    de[j] += dc * w->conf_w[d + j];
                }
            }
        }
    }
    if (w->type == MARKOV_NONE) return;
    if (w->type == MARKOV_VANILLA) {
        for (size_t j = 0; j < (size_t)N * r; j++) d_e[j] += d_u[j];
    } else if (w->type == MARKOV_GATED) {
        /* u = g e, g = sigmoid(pre): d_pre = d_u e g (1 - g), d_e += d_u g */
        for (size_t j = 0; j < (size_t)N * r; j++) {
            float g = a->g[j];
            d_pre[j] = d_u[j] * a->w1x[j] * g * (1.0f - g);
            d_e[j] += d_u[j] * g;
        }
        const int ld = d + r;
        if (gr->d_gate_w) {
            gemm_tn(r, d, N, d_pre, r, h, d, gr->d_gate_w, ld);
            gemm_tn(r, r, N, d_pre, r, a->w1x, r, gr->d_gate_w + d, ld);
        }
        if (gr->d_gate_b)
            for (int i = 0; i < N; i++)
                for (int j = 0; j < r; j++) gr->d_gate_b[j] += d_pre[(size_t)i * r + j];
        gemm_nn(N, d, r, d_pre, r, w->gate_w, ld, d_h, d);
        gemm_nn(N, r, r, d_pre, r, w->gate_w + d, ld, d_e, r);
    } else { /* RNN: back through the slots, the state gradient carried per block */
        const int zin = 2 * r + d, ld = B * r;
        memset(ds, 0, sizeof(float) * (size_t)n_blocks * r); /* the last state feeds nothing */
        for (int k = B - 1; k >= 0; k--) {
            for (int n = 0; n < n_blocks; n++) {
                size_t i = (size_t)n * B + k;
                const float *g = a->g + i * r, *c = a->c + i * r, *u = a->u + i * r, *sp = a->s_prev + i * r;
                const float *du = d_u + i * r;
                float *dsn = ds + (size_t)n * r, *dp = d_pre + (size_t)n * 3 * r;
                for (int j = 0; j < r; j++) {
                    float dsj = dsn[j];
                    dp[j] = dsj * (sp[j] - c[j]) * g[j] * (1.0f - g[j]);       /* gate */
                    dp[r + j] = dsj * (1.0f - g[j]) * (1.0f - c[j] * c[j]);   /* candidate */
                    dp[2 * r + j] = du[j] * (1.0f - u[j] * u[j]);             /* output */
                    dsn[j] = dsj * g[j];                                      /* through g * s */
                }
            }
            /* dz = d_pre J: to the state, to e, to h */
            gemm_nn(n_blocks, r, 3 * r, d_pre, 3 * r, w->joint_w, zin, ds, r);
            gemm_nn(n_blocks, r, 3 * r, d_pre, 3 * r, w->joint_w + r, zin, d_e + (size_t)k * r, ld);
            gemm_nn(n_blocks, d, 3 * r, d_pre, 3 * r, w->joint_w + 2 * r, zin, d_h + (size_t)k * d, B * d);
            if (gr->d_joint_w) {
                gemm_tn(3 * r, r, n_blocks, d_pre, 3 * r, a->s_prev + (size_t)k * r, ld, gr->d_joint_w, zin);
                gemm_tn(3 * r, r, n_blocks, d_pre, 3 * r, a->w1x + (size_t)k * r, ld, gr->d_joint_w + r, zin);
                gemm_tn(3 * r, d, n_blocks, d_pre, 3 * r, h + (size_t)k * d, B * d, gr->d_joint_w + 2 * r, zin);
            }
            if (gr->d_joint_b)
                for (int n = 0; n < n_blocks; n++)
                    for (int j = 0; j < 3 * r; j++) gr->d_joint_b[j] += d_pre[(size_t)n * 3 * r + j];
        }
    }
    /* W1 is an embedding table: scatter-add by token, rows in order */
    if (gr->d_w1)
        for (int i = 0; i < N; i++) {
            float *dst = gr->d_w1 + (size_t)prev[i] * r;
            const float *src = d_e + (size_t)i * r;
            for (int j = 0; j < r; j++) dst[j] += src[j];
        }
}
