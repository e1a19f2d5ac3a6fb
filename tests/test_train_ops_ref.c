/* test_train_ops_ref.c - the training ops against double-precision references and central finite
 * differences, on small random shapes: two-range grouped-query attention (the drafter's
 * "context < anchor, plus own block" pattern, an empty query, GQA groups of 2), RMSNorm,
 * RoPE (== the inference backend's), SwiGLU, linear; and thread-count independence of the
 * non-BLAS ops. (The whole Qwen3 layer stack is checked end to end by test_train_lm.) */
/* ctest: labels=unit */
#include "test.h"
#include "backend.h"
#include "train_ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

static uint64_t g_seed = 12345;
static float frand(void) {
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static void fill(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = frand(); }

enum { NQ = 7, NK = 9, HQ = 4, HKV = 2, HD = 8 };
/* query ranges: [0, a) U [b, c); query 3 sees nothing */
static const int32_t R0L[NQ] = {0, 0, 0, 0, 0, 0, 0}, R0H[NQ] = {2, 2, 4, 0, 5, 5, 0};
static const int32_t R1L[NQ] = {5, 5, 5, 0, 7, 7, 2}, R1H[NQ] = {7, 7, 7, 0, 9, 9, 9};

static void attention_ref(double *out, const float *q, const float *k, const float *v) {
    for (int i = 0; i < NQ; i++)
        for (int h = 0; h < HQ; h++) {
            int kh = h / (HQ / HKV);
            double sc[NK], m = -INFINITY, z = 0;
            for (int j = 0; j < NK; j++) {
                bool in = (j >= R0L[i] && j < R0H[i]) || (j >= R1L[i] && j < R1H[i]);
                double s = 0;
                for (int e = 0; e < HD; e++) s += (double)q[(i * HQ + h) * HD + e] * k[(j * HKV + kh) * HD + e];
                sc[j] = in ? s / sqrt((double)HD) : -INFINITY;
                if (sc[j] > m) m = sc[j];
            }
            for (int e = 0; e < HD; e++) out[(i * HQ + h) * HD + e] = 0;
            if (m == -INFINITY) continue;
            for (int j = 0; j < NK; j++) z += sc[j] == -INFINITY ? 0 : exp(sc[j] - m);
            for (int j = 0; j < NK; j++) {
                if (sc[j] == -INFINITY) continue;
                double p = exp(sc[j] - m) / z;
                for (int e = 0; e < HD; e++) out[(i * HQ + h) * HD + e] += p * v[(j * HKV + kh) * HD + e];
            }
        }
}

/* L = sum(w .* attention(q, k, v)) for a fixed random w */
static double attention_loss(const float *q, const float *k, const float *v, const float *w) {
    double out[NQ * HQ * HD], L = 0;
    attention_ref(out, q, k, v);
    for (int i = 0; i < NQ * HQ * HD; i++) L += out[i] * w[i];
    return L;
}

static void test_attention(void) {
    float q[NQ * HQ * HD], k[NK * HKV * HD], v[NK * HKV * HD], w[NQ * HQ * HD], out[NQ * HQ * HD], lse[NQ * HQ];
    fill(q, sizeof q / 4); fill(k, sizeof k / 4); fill(v, sizeof v / 4); fill(w, sizeof w / 4);
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] *= 3; /* peaked softmax */
    top_attention_fwd(out, lse, q, k, v, R0L, R0H, R1L, R1H, NQ, NK, HQ, HKV, HD);
    double ref[NQ * HQ * HD], worst = 0;
    attention_ref(ref, q, k, v);
    for (int i = 0; i < NQ * HQ * HD; i++) worst = fmax(worst, fabs(out[i] - ref[i]));
    CHECK_MSG(worst < 1e-5, "attention forward max error %.3g vs double reference", worst);
    for (int h = 0; h < HQ; h++) CHECK(out[(3 * HQ + h) * HD] == 0 && isinf(lse[3 * HQ + h]));
    float dq[sizeof q / 4] = {0}, dk[sizeof k / 4] = {0}, dv[sizeof v / 4] = {0};
    top_attention_bwd(dq, dk, dv, w, out, lse, q, k, v, R0L, R0H, R1L, R1H, NQ, NK, HQ, HKV, HD);
    struct { float *x, *g; int n; const char *name; } t[3] = {{q, dq, NQ * HQ * HD, "q"}, {k, dk, NK * HKV * HD, "k"}, {v, dv, NK * HKV * HD, "v"}};
    for (int a = 0; a < 3; a++) {
        double err = 0, scale = 0;
        for (int i = 0; i < t[a].n; i++) {
            float x0 = t[a].x[i], eps = 1e-3f;
            t[a].x[i] = x0 + eps; double lp = attention_loss(q, k, v, w);
            t[a].x[i] = x0 - eps; double lm = attention_loss(q, k, v, w);
            t[a].x[i] = x0;
            double fd = (lp - lm) / (2.0 * eps);
            err = fmax(err, fabs(fd - t[a].g[i]));
            scale = fmax(scale, fabs(fd));
        }
        CHECK_MSG(err < 1e-3 * scale + 1e-5, "attention d%s: max |grad - fd| %.3g (max |fd| %.3g)", t[a].name, err, scale);
    }
    /* with these ranges keys 2..4 are in no query's range: their gradient is exactly zero */
    float dk2[sizeof k / 4] = {0};
    int32_t hi0[NQ] = {2, 2, 2, 0, 2, 2, 0}, l1[NQ] = {5, 5, 5, 0, 5, 5, 5};
    top_attention_fwd(out, lse, q, k, v, R0L, hi0, l1, R1H, NQ, NK, HQ, HKV, HD);
    top_attention_bwd(dq, dk2, dv, w, out, lse, q, k, v, R0L, hi0, l1, R1H, NQ, NK, HQ, HKV, HD);
    for (int j = 2; j < 5; j++)
        for (int e = 0; e < HKV * HD; e++) CHECK(dk2[j * HKV * HD + e] == 0);
}

static void test_norm_rope_swiglu(void) {
    enum { N = 5, D = 16 };
    float x[N * D], w[D], out[N * D], rstd[N], dy[N * D];
    fill(x, N * D); fill(w, D); fill(dy, N * D);
    top_rmsnorm_fwd(out, rstd, x, w, N, D, 1e-6f);
    float dx[N * D] = {0}, dw[D] = {0};
    top_rmsnorm_bwd(dx, dw, dy, x, w, rstd, N, D);
    double err = 0;
    for (int i = 0; i < N * D + D; i++) {
        float *p = i < N * D ? &x[i] : &w[i - N * D], g = i < N * D ? dx[i] : dw[i - N * D], p0 = *p, eps = 1e-3f;
        double L[2];
        for (int s = 0; s < 2; s++) {
            *p = p0 + (s ? -eps : eps);
            float o[N * D], r[N];
            top_rmsnorm_fwd(o, r, x, w, N, D, 1e-6f);
            L[s] = 0;
            for (int j = 0; j < N * D; j++) L[s] += (double)o[j] * dy[j];
        }
        *p = p0;
        err = fmax(err, fabs((L[0] - L[1]) / (2 * eps) - g));
    }
    CHECK_MSG(err < 2e-3, "rmsnorm gradient max error %.3g", err);
    /* RoPE: same bits as the inference backend; backward is the exact transpose */
    float a[N * 2 * D], b[N * 2 * D], c[N * 2 * D];
    int32_t pos[N] = {0, 1, 7, 100, 3000};
    fill(a, sizeof a / 4);
    memcpy(b, a, sizeof a);
    memcpy(c, a, sizeof a);
    top_rope_fwd(b, pos, N, 2, D, 10000.0f);
    Backend *be = backend_cpu_create(1);
    be->rope(be, c, pos, N, 2, D, 10000.0f);
    CHECK(memcmp(b, c, sizeof b) == 0);
    be->destroy(be);
    float r[N * 2 * D], dot1 = 0, dot2 = 0; /* <R a, r> == <a, R^T r> */
    fill(r, sizeof r / 4);
    for (int i = 0; i < N * 2 * D; i++) dot1 += b[i] * r[i];
    top_rope_bwd(r, pos, N, 2, D, 10000.0f);
    for (int i = 0; i < N * 2 * D; i++) dot2 += a[i] * r[i];
    CHECK_MSG(fabsf(dot1 - dot2) < 1e-4f, "rope transpose: %.7g vs %.7g", dot1, dot2);
    /* SwiGLU */
    float g[8], u[8], o[8], dg[8] = {0}, du[8] = {0}, d[8];
    fill(g, 8); fill(u, 8); fill(d, 8);
    for (int i = 0; i < 8; i++) g[i] *= 4;
    top_swiglu_bwd(dg, du, d, g, u, 8);
    double e2 = 0;
    for (int i = 0; i < 8; i++) {
        float eps = 1e-3f, g0 = g[i], u0 = u[i], op, om;
        g[i] = g0 + eps; top_swiglu_fwd(&op, &g[i], &u[i], 1);
        g[i] = g0 - eps; top_swiglu_fwd(&om, &g[i], &u[i], 1);
        g[i] = g0;
        e2 = fmax(e2, fabs((op - om) / (2 * eps) * d[i] - dg[i]));
        u[i] = u0 + eps; top_swiglu_fwd(&op, &g[i], &u[i], 1);
        u[i] = u0 - eps; top_swiglu_fwd(&om, &g[i], &u[i], 1);
        u[i] = u0;
        e2 = fmax(e2, fabs((op - om) / (2 * eps) * d[i] - du[i]));
    }
    top_swiglu_fwd(o, g, u, 8);
    CHECK_MSG(e2 < 2e-3, "swiglu gradient max error %.3g", e2);
}

static void test_linear(void) {
    enum { N = 3, I = 5, O = 4 };
    float in[N * I], W[O * I], b[O], out[N * O], dy[N * O];
    fill(in, N * I); fill(W, O * I); fill(b, O); fill(dy, N * O);
    top_linear_fwd(out, in, W, b, N, I, O);
    double err = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double s = b[o];
            for (int i = 0; i < I; i++) s += (double)in[n * I + i] * W[o * I + i];
            err = fmax(err, fabs(s - out[n * O + o]));
        }
    CHECK_MSG(err < 1e-5, "linear forward error %.3g", err);
    float din[N * I], dW[O * I], db[O];
    for (int i = 0; i < N * I; i++) din[i] = 1; /* accumulate onto existing values */
    for (int i = 0; i < O * I; i++) dW[i] = 1;
    for (int i = 0; i < O; i++) db[i] = 1;
    top_linear_bwd(din, dW, db, dy, in, W, N, I, O);
    err = 0;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            double s = 1;
            for (int o = 0; o < O; o++) s += (double)dy[n * O + o] * W[o * I + i];
            err = fmax(err, fabs(s - din[n * I + i]));
        }
    for (int o = 0; o < O; o++) {
        double sb = 1;
        for (int n = 0; n < N; n++) sb += dy[n * O + o];
        err = fmax(err, fabs(sb - db[o]));
        for (int i = 0; i < I; i++) {
            double s = 1;
            for (int n = 0; n < N; n++) s += (double)dy[n * O + o] * in[n * I + i];
            err = fmax(err, fabs(s - dW[o * I + i]));
        }
    }
    CHECK_MSG(err < 1e-5, "linear backward error %.3g", err);
}

/* same bits with 1 and 2 threads for the ops we parallelise ourselves */
static void test_threads(void) {
    enum { NQ2 = 40, NK2 = 40, H = 4, HK = 2, HD2 = 16 };
    static float q[NQ2 * H * HD2], k[NK2 * HK * HD2], v[NK2 * HK * HD2], o1[NQ2 * H * HD2], o2[NQ2 * H * HD2], l1[NQ2 * H], l2[NQ2 * H];
    static float dq1[NQ2 * H * HD2], dq2[NQ2 * H * HD2], dk1[NK2 * HK * HD2], dk2[NK2 * HK * HD2], dv1[NK2 * HK * HD2], dv2[NK2 * HK * HD2];
    int32_t lo[NQ2], hi[NQ2], z[NQ2];
    for (int i = 0; i < NQ2; i++) { lo[i] = 0; hi[i] = i + 1; z[i] = 0; }
    fill(q, sizeof q / 4); fill(k, sizeof k / 4); fill(v, sizeof v / 4);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    top_attention_fwd(o1, l1, q, k, v, lo, hi, z, z, NQ2, NK2, H, HK, HD2);
    top_attention_bwd(dq1, dk1, dv1, q, o1, l1, q, k, v, lo, hi, z, z, NQ2, NK2, H, HK, HD2);
    omp_set_num_threads(2);
    top_attention_fwd(o2, l2, q, k, v, lo, hi, z, z, NQ2, NK2, H, HK, HD2);
    top_attention_bwd(dq2, dk2, dv2, q, o2, l2, q, k, v, lo, hi, z, z, NQ2, NK2, H, HK, HD2);
    omp_set_num_threads(nt);
    CHECK(memcmp(o1, o2, sizeof o1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    CHECK(memcmp(dq1, dq2, sizeof dq1) == 0 && memcmp(dk1, dk2, sizeof dk1) == 0 && memcmp(dv1, dv2, sizeof dv1) == 0);
}

int main(void) {
    RUN(test_attention);
    RUN(test_norm_rope_swiglu);
    RUN(test_linear);
    RUN(test_threads);
    return test_summary();
}
