/* test_train_ops.c - the F32 training ops (src/train_ops.c):
 *  - each forward against an independent reference computed in double (attention: a plain
 *    softmax over an explicit [Nq][Nk] mask; RoPE and RMSNorm also bit for bit the inference
 *    backend's);
 *  - each backward against central finite differences: L = sum c . out for a random c (so
 *    d_out = c), the directional derivative along 3 random directions u of every input and
 *    weight: central differences L(x + h u) - L(x - h u) at h = 1e-2 and 2e-2 against
 *    g . (x+ - x-) with the float steps actually taken, the O(h^2) truncation removed by
 *    Richardson extrapolation (fd_err). Tolerance: relative 1e-3; F32 rounding of L (about
 *    1e-6 absolute over ~200 terms, against a_h ~ 1e-2) makes the expected error ~1e-4;
 *  - gradients accumulate and NULL gradients are skipped;
 *  - the same bits with 1, 2 and 3 threads (attention's two backward schedules included),
 *    except sgemm (linear), which is only checked run to run at a fixed thread count;
 *  - attention over many 64 x 64 tiles (random ranges, a causal batch whose sequences cross
 *    tile edges, the drafter's layout) against the double reference's forward and its
 *    analytic backward in double: 1e-5 of the largest gradient entry (measured 3e-7);
 *  - top_expf against double exp over [-87.3, 88]: relative 1.5e-7 (it measures 8.3e-8), the
 *    edges (-inf, underflow, overflow clamp, NaN), and a 1e-6 error the check must catch;
 *  - RoPE over repeated positions (its per-position table) bit for bit one row at a time;
 *  - edge cases: a query with no keys (0 output, no gradient), Hq / Hkv = 2 grouping, a
 *    query with only its second range; and a wrong gradient that the FD check must catch.
 * Set DSPARK_TEST_VERBOSE=1 to print every FD error. */
/* ctest: labels=unit */
#include "test.h"
#include "backend.h"
#include "train_ops.h"

#include <cblas.h>
#include <omp.h>

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float urand(void) { /* uniform [-1, 1) */
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *rnd(size_t n, float lo, float hi) {
    float *a = ds_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) a[i] = lo + (hi - lo) * 0.5f * (urand() + 1.0f);
    return a;
}
static float *zeros(size_t n) { return ds_calloc(n ? n : 1, sizeof(float)); }
static float *copyf(const float *a, size_t n) {
    float *b = ds_malloc(sizeof(float) * (n ? n : 1));
    memcpy(b, a, sizeof(float) * n);
    return b;
}
static bool same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, sizeof(float) * n) == 0; }

/* ---- finite differences ---- */

typedef double (*loss_fn)(void *ctx); /* runs the forward, returns sum c . out in double */
static double g_worst_fd; /* worst relative FD error over every check that must pass */

/* Directional derivative of L along 3 random directions u over x[n] (perturbed in place,
 * restored, and the forward rerun so the context's outputs are the unperturbed ones) against
 * the analytic gradient g[n]. Steps h = 1e-2 and 2h; with the float steps actually taken,
 * f_h = L(x+) - L(x-) = g.(x+ - x-) + T_h and T_2h = 8 T_h (the odd Taylor terms), so
 * (8 (f_h - a_h) - (f_2h - a_2h)) / 6 is the gradient error along the step with the
 * truncation removed (Richardson); F32 rounding of L then limits the check to ~1e-4.
 * Returns the worst error relative to the directional derivative a_h. */
static double fd_err(const char *name, float *x, const float *g, size_t n, loss_fn L, void *ctx) {
    const float h = 1e-2f;
    float *x0 = copyf(x, n), *u = zeros(n), *xp = zeros(n), *xm = zeros(n);
    double worst = 0;
    for (int dir = 0; dir < 3; dir++) {
        for (size_t i = 0; i < n; i++) u[i] = urand();
        double f[2], a[2], gabs = 0;
        for (int s = 0; s < 2; s++) {
            float step = s ? 2 * h : h;
            for (size_t i = 0; i < n; i++) {
                xp[i] = x0[i] + step * u[i];
                xm[i] = x0[i] - step * u[i];
            }
            memcpy(x, xp, sizeof(float) * n);
            double Lp = L(ctx);
            memcpy(x, xm, sizeof(float) * n);
            double Lm = L(ctx);
            f[s] = Lp - Lm;
            a[s] = 0;
            for (size_t i = 0; i < n; i++) {
                double t = (double)g[i] * ((double)xp[i] - (double)xm[i]);
                a[s] += t;
                if (!s) gabs += fabs(t);
            }
        }
        /* floored at 1% of the absolute terms: a direction nearly orthogonal to g would
         * otherwise divide by ~0 */
        double e = fabs(8 * (f[0] - a[0]) - (f[1] - a[1])) / 6 / fmax(fabs(a[0]), 1e-2 * gabs + 1e-30);
        worst = fmax(worst, e);
    }
    memcpy(x, x0, sizeof(float) * n);
    L(ctx);
    if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  fd %-28s rel err %.2e\n", name, worst);
    ds_free(x0); ds_free(u); ds_free(xp); ds_free(xm);
    return worst;
}

#define FD_TOL 1e-3
#define CHECK_FD(name, x, g, n, L, ctx) do { \
        double _e = fd_err(name, x, g, n, L, ctx); \
        g_worst_fd = fmax(g_worst_fd, _e); \
        CHECK_MSG(_e <= FD_TOL, "%s: FD relative error %.3g > %.0e", name, _e, FD_TOL); \
    } while (0)

static double dotc(const float *c, const float *out, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)c[i] * (double)out[i];
    return s;
}

/* ---- linear ---- */

typedef struct { float *out, *in, *W, *b, *c; int N, Ni, O; } LinCtx;
static double lin_loss(void *p) {
    LinCtx *t = p;
    top_linear_fwd(t->out, t->in, t->W, t->b, t->N, t->Ni, t->O);
    return dotc(t->c, t->out, (size_t)t->N * t->O);
}

static void test_linear(void) {
    int N = 5, Ni = 7, O = 6;
    LinCtx t = {zeros(N * O), rnd(N * Ni, -1, 1), rnd(O * Ni, -1, 1), rnd(O, -1, 1), rnd(N * O, -1, 1), N, Ni, O};
    lin_loss(&t);
    float ref[5 * 6];
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double s = t.b[o];
            for (int i = 0; i < Ni; i++) s += (double)t.in[n * Ni + i] * t.W[o * Ni + i];
            ref[n * O + o] = (float)s;
        }
    CHECK_CLOSE("linear out", t.out, ref, (size_t)N * O, 1e-6f, 1e-5f);
    float *d_in = zeros(N * Ni), *d_W = zeros(O * Ni), *d_b = zeros(O);
    top_linear_bwd(d_in, d_W, d_b, t.c, t.in, t.W, N, Ni, O);
    CHECK_FD("linear d_in", t.in, d_in, (size_t)N * Ni, lin_loss, &t);
    CHECK_FD("linear d_W", t.W, d_W, (size_t)O * Ni, lin_loss, &t);
    CHECK_FD("linear d_b", t.b, d_b, (size_t)O, lin_loss, &t);
    /* accumulation: a second call doubles; NULL gradients are skipped */
    float *d_in2 = copyf(d_in, N * Ni), *d_W2 = copyf(d_W, O * Ni), *d_b2 = copyf(d_b, O);
    top_linear_bwd(d_in2, NULL, NULL, t.c, t.in, t.W, N, Ni, O);
    top_linear_bwd(NULL, d_W2, d_b2, t.c, t.in, t.W, N, Ni, O);
    for (int i = 0; i < N * Ni; i++) d_in[i] *= 2;
    for (int i = 0; i < O * Ni; i++) d_W[i] *= 2;
    for (int i = 0; i < O; i++) d_b[i] *= 2;
    CHECK_CLOSE("linear d_in accumulates", d_in2, d_in, (size_t)N * Ni, 1e-6f, 1e-6f);
    CHECK_CLOSE("linear d_W accumulates", d_W2, d_W, (size_t)O * Ni, 1e-6f, 1e-6f);
    CHECK_CLOSE("linear d_b accumulates", d_b2, d_b, (size_t)O, 1e-6f, 1e-6f);
    /* no bias */
    top_linear_fwd(t.out, t.in, t.W, NULL, N, Ni, O);
    CHECK_CLOSE("linear out no bias", &t.out[0], &(float){ref[0] - t.b[0]}, 1, 1e-6f, 1e-5f);
    ds_free(t.out); ds_free(t.in); ds_free(t.W); ds_free(t.b); ds_free(t.c);
    ds_free(d_in); ds_free(d_W); ds_free(d_b); ds_free(d_in2); ds_free(d_W2); ds_free(d_b2);
}

/* ---- RMSNorm ---- */

typedef struct { float *out, *rstd, *x, *w, *c; int N, D; float eps; } NormCtx;
static double norm_loss(void *p) {
    NormCtx *t = p;
    top_rmsnorm_fwd(t->out, t->rstd, t->x, t->w, t->N, t->D, t->eps);
    return dotc(t->c, t->out, (size_t)t->N * t->D);
}

static void test_rmsnorm(void) {
    int shapes[2][2] = {{4, 12}, {3, 40}}; /* D < 16 and D = 2 x 16 + 8: every lane path */
    for (int s = 0; s < 2; s++) {
        int N = shapes[s][0], D = shapes[s][1];
        NormCtx t = {zeros(N * D), zeros(N), rnd(N * D, -1, 1), rnd(D, 0.5f, 1.5f), rnd(N * D, -1, 1), N, D, 1e-6f};
        norm_loss(&t);
        float *ref = zeros(N * D), *rref = zeros(N);
        for (int n = 0; n < N; n++) {
            double ss = 0;
            for (int j = 0; j < D; j++) ss += (double)t.x[n * D + j] * t.x[n * D + j];
            double r = 1.0 / sqrt(ss / D + t.eps);
            rref[n] = (float)r;
            for (int j = 0; j < D; j++) ref[n * D + j] = (float)(t.w[j] * t.x[n * D + j] * r);
        }
        CHECK_CLOSE("rmsnorm out", t.out, ref, (size_t)N * D, 1e-6f, 1e-5f);
        CHECK_CLOSE("rmsnorm rstd", t.rstd, rref, (size_t)N, 0, 1e-5f);
        /* the inference backend's rmsnorm on the same input: bit for bit (either ISA path) */
        Backend *be = backend_cpu_create(0);
        float *inf = zeros(N * D);
        Weight wv = weight_view(t.w, DS_F32, 1, D);
        be->rmsnorm(be, inf, t.x, &wv, N, D, t.eps);
        CHECK(same_bits(inf, t.out, (size_t)N * D));
        be->destroy(be);
        ds_free(inf);
        float *d_x = zeros(N * D), *d_w = zeros(D);
        top_rmsnorm_bwd(d_x, d_w, t.c, t.x, t.w, t.rstd, N, D);
        CHECK_FD(s ? "rmsnorm d_x (D 40)" : "rmsnorm d_x (D 12)", t.x, d_x, (size_t)N * D, norm_loss, &t);
        CHECK_FD(s ? "rmsnorm d_w (D 40)" : "rmsnorm d_w (D 12)", t.w, d_w, (size_t)D, norm_loss, &t);
        float *d_x2 = copyf(d_x, N * D);
        top_rmsnorm_bwd(d_x2, NULL, t.c, t.x, t.w, t.rstd, N, D);
        for (int i = 0; i < N * D; i++) d_x[i] *= 2;
        CHECK_CLOSE("rmsnorm d_x accumulates", d_x2, d_x, (size_t)N * D, 1e-6f, 1e-6f);
        ds_free(t.out); ds_free(t.rstd); ds_free(t.x); ds_free(t.w); ds_free(t.c);
        ds_free(ref); ds_free(rref); ds_free(d_x); ds_free(d_w); ds_free(d_x2);
    }
}

/* ---- RoPE ---- */

typedef struct { float *out, *x, *c; const int32_t *pos; int N, H, hd; float theta; } RopeCtx;
static double rope_loss(void *p) {
    RopeCtx *t = p;
    size_t n = (size_t)t->N * t->H * t->hd;
    memcpy(t->out, t->x, sizeof(float) * n);
    top_rope_fwd(t->out, t->pos, t->N, t->H, t->hd, t->theta);
    return dotc(t->c, t->out, n);
}

static void test_rope(void) {
    int N = 5, H = 3, hd = 16;
    size_t n = (size_t)N * H * hd;
    int32_t pos[5] = {0, 1, 7, 300, 4095};
    RopeCtx t = {zeros(n), rnd(n, -1, 1), rnd(n, -1, 1), pos, N, H, hd, 1000000.0f};
    rope_loss(&t);
    /* the inference backend's rope on the same input: bit for bit */
    Backend *be = backend_cpu_create(0);
    float *inf = copyf(t.x, n);
    be->rope(be, inf, pos, N, H, hd, t.theta);
    CHECK(same_bits(inf, t.out, n));
    be->destroy(be);
    /* and a double reference of the formula (the angle is formed in float as transformers does) */
    float *ref = zeros(n);
    for (int i = 0; i < N; i++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < hd / 2; j++) {
                float f = (float)pos[i] * (1.0f / powf(t.theta, (float)(2 * j) / (float)hd));
                const float *x = t.x + ((size_t)i * H + h) * hd;
                ref[((size_t)i * H + h) * hd + j] = (float)(x[j] * cos((double)f) - x[j + hd / 2] * sin((double)f));
                ref[((size_t)i * H + h) * hd + j + hd / 2] = (float)(x[j + hd / 2] * cos((double)f) + x[j] * sin((double)f));
            }
    CHECK_CLOSE("rope vs double", t.out, ref, n, 1e-6f, 1e-5f);
    /* backward = the transpose (rotation by -angle): FD, and bwd(fwd(x)) == x */
    float *g = copyf(t.c, n);
    top_rope_bwd(g, pos, N, H, hd, t.theta);
    CHECK_FD("rope d_x", t.x, g, n, rope_loss, &t);
    float *back = copyf(t.out, n);
    top_rope_bwd(back, pos, N, H, hd, t.theta);
    CHECK_CLOSE("rope bwd(fwd(x)) == x", back, t.x, n, 1e-6f, 1e-6f);
    ds_free(t.out); ds_free(t.x); ds_free(t.c); ds_free(inf); ds_free(ref); ds_free(g); ds_free(back);
    /* repeated positions (a batch of 8 sequences of 5) take the per-position table: the same
     * bits as one row at a time, forward and backward */
    int32_t bpos[40];
    float *bx = rnd((size_t)40 * H * hd, -1, 1), *bx1 = copyf(bx, (size_t)40 * H * hd);
    for (int sgn = 0; sgn < 2; sgn++) {
        for (int i = 0; i < 40; i++) bpos[i] = 3 * (i % 5) + 1; /* positions 1 .. 13 */
        (sgn ? top_rope_bwd : top_rope_fwd)(bx, bpos, 40, H, hd, t.theta);
        for (int i = 0; i < 40; i++) (sgn ? top_rope_bwd : top_rope_fwd)(bx1 + (size_t)i * H * hd, &bpos[i], 1, H, hd, t.theta);
        CHECK(same_bits(bx, bx1, (size_t)40 * H * hd));
    }
    ds_free(bx); ds_free(bx1);
}

/* ---- SwiGLU ---- */

typedef struct { float *out, *gate, *up, *c; size_t n; } GluCtx;
static double glu_loss(void *p) {
    GluCtx *t = p;
    top_swiglu_fwd(t->out, t->gate, t->up, t->n);
    return dotc(t->c, t->out, t->n);
}

static void test_swiglu(void) {
    size_t n = 60;
    GluCtx t = {zeros(n), rnd(n, -5, 5), rnd(n, -1, 1), rnd(n, -1, 1), n};
    t.gate[0] = -100.0f; t.gate[1] = 100.0f; t.gate[2] = 0.0f; /* saturated ends and 0 */
    glu_loss(&t);
    float *ref = zeros(n);
    for (size_t i = 0; i < n; i++) ref[i] = (float)((double)t.gate[i] / (1.0 + exp(-(double)t.gate[i])) * t.up[i]);
    CHECK_CLOSE("swiglu out", t.out, ref, n, 1e-7f, 1e-6f);
    float *dg = zeros(n), *du = zeros(n);
    top_swiglu_bwd(dg, du, t.c, t.gate, t.up, n);
    CHECK(fabsf(dg[0]) < 1e-30f && fabsf(dg[1] - t.c[1] * t.up[1]) < 1e-6f && fabsf(dg[2] - 0.5f * t.c[2] * t.up[2]) < 1e-7f);
    CHECK_FD("swiglu d_gate", t.gate, dg, n, glu_loss, &t);
    CHECK_FD("swiglu d_up", t.up, du, n, glu_loss, &t);
    /* must fail: a gradient 1% off is caught by the FD check */
    for (size_t i = 0; i < n; i++) dg[i] *= 1.01f;
    double e = fd_err("swiglu d_gate x1.01", t.gate, dg, n, glu_loss, &t);
    CHECK_MSG(e > 10 * FD_TOL / 2, "a 1%% gradient error gave FD error only %.3g", e);
    ds_free(t.out); ds_free(t.gate); ds_free(t.up); ds_free(t.c); ds_free(ref); ds_free(dg); ds_free(du);
}

/* ---- attention ---- */

typedef struct {
    float *out, *lse, *q, *k, *v, *c;
    int32_t *r0lo, *r0hi, *r1lo, *r1hi;
    int Nq, Nk, Hq, Hkv, hd;
} AttCtx;
static double att_loss(void *p) {
    AttCtx *t = p;
    top_attention_fwd(t->out, t->lse, t->q, t->k, t->v, t->r0lo, t->r0hi, t->r1lo, t->r1hi, t->Nq, t->Nk, t->Hq, t->Hkv, t->hd);
    return dotc(t->c, t->out, (size_t)t->Nq * t->Hq * t->hd);
}

/* ranges: query i gets r0 = [a, b) and r1 = [c, d), b <= c, or the other way round, or one
 * of them (each query at least one key; tests empty queries themselves) */
static AttCtx att_make(int Nq, int Nk, int Hq, int Hkv, int hd, float qscale) {
    AttCtx t = {0};
    t.Nq = Nq; t.Nk = Nk; t.Hq = Hq; t.Hkv = Hkv; t.hd = hd;
    size_t nq = (size_t)Nq * Hq * hd, nk = (size_t)Nk * Hkv * hd;
    t.out = zeros(nq); t.lse = zeros((size_t)Nq * Hq);
    t.q = rnd(nq, -qscale, qscale); t.k = rnd(nk, -1, 1); t.v = rnd(nk, -1, 1); t.c = rnd(nq, -1, 1);
    int32_t *r = ds_malloc(sizeof(int32_t) * 4 * (size_t)Nq);
    t.r0lo = r; t.r0hi = r + Nq; t.r1lo = r + 2 * Nq; t.r1hi = r + 3 * Nq;
    for (int i = 0; i < Nq; i++) {
        int cut[4];
        for (int e = 0; e < 4; e++) cut[e] = (int)((urand() + 1.0f) * 0.5f * (float)(Nk + 1)) % (Nk + 1);
        for (int a = 0; a < 4; a++) /* sort the four cuts */
            for (int b = a + 1; b < 4; b++)
                if (cut[b] < cut[a]) { int x = cut[a]; cut[a] = cut[b]; cut[b] = x; }
        t.r0lo[i] = cut[0]; t.r0hi[i] = cut[1]; t.r1lo[i] = cut[2]; t.r1hi[i] = cut[3];
        if (i % 5 == 1) t.r1lo[i] = t.r1hi[i] = 0;                 /* r0 only */
        if (i % 5 == 2) t.r0lo[i] = t.r0hi[i] = cut[3];             /* r1 only */
        if (i % 5 == 3) {                                           /* r0 above r1 */
            t.r0lo[i] = cut[2]; t.r0hi[i] = cut[3]; t.r1lo[i] = cut[0]; t.r1hi[i] = cut[1];
        }
        if (t.r0lo[i] == t.r0hi[i] && t.r1lo[i] == t.r1hi[i]) {     /* no keys: give it one */
            t.r0lo[i] = t.r0lo[i] < Nk ? t.r0lo[i] : Nk - 1;
            t.r0hi[i] = t.r0lo[i] + 1;
        }
    }
    return t;
}
static void att_free(AttCtx *t) {
    ds_free(t->out); ds_free(t->lse); ds_free(t->q); ds_free(t->k); ds_free(t->v); ds_free(t->c); ds_free(t->r0lo);
}

/* plain softmax over an explicit mask, in double */
static void att_ref(const AttCtx *t, float *out, float *lse) {
    int group = t->Hq / t->Hkv, hd = t->hd;
    double scale = 1.0 / sqrt((double)hd);
    unsigned char *mask = ds_calloc((size_t)t->Nq * t->Nk, 1);
    for (int i = 0; i < t->Nq; i++)
        for (int j = 0; j < t->Nk; j++)
            mask[(size_t)i * t->Nk + j] = (t->r0lo[i] <= j && j < t->r0hi[i]) || (t->r1lo[i] <= j && j < t->r1hi[i]);
    double *s = ds_malloc(sizeof(double) * (size_t)t->Nk);
    for (int i = 0; i < t->Nq; i++)
        for (int h = 0; h < t->Hq; h++) {
            const float *qi = t->q + ((size_t)i * t->Hq + h) * hd;
            double m = -INFINITY, z = 0;
            for (int j = 0; j < t->Nk; j++) {
                s[j] = -INFINITY;
                if (!mask[(size_t)i * t->Nk + j]) continue;
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)qi[e] * t->k[((size_t)j * t->Hkv + h / group) * hd + e];
                s[j] = d * scale;
                m = fmax(m, s[j]);
            }
            float *o = out + ((size_t)i * t->Hq + h) * hd;
            for (int e = 0; e < hd; e++) o[e] = 0;
            lse[(size_t)i * t->Hq + h] = (float)-INFINITY;
            if (m == -INFINITY) continue;
            for (int j = 0; j < t->Nk; j++) z += exp(s[j] - m);
            for (int e = 0; e < hd; e++) {
                double a = 0;
                for (int j = 0; j < t->Nk; j++) a += exp(s[j] - m) / z * t->v[((size_t)j * t->Hkv + h / group) * hd + e];
                o[e] = (float)a;
            }
            lse[(size_t)i * t->Hq + h] = (float)(m + log(z));
        }
    ds_free(mask); ds_free(s);
}

static void att_grads(AttCtx *t, float *dq, float *dk, float *dv) {
    top_attention_bwd(dq, dk, dv, t->c, t->out, t->lse, t->q, t->k, t->v, t->r0lo, t->r0hi, t->r1lo, t->r1hi, t->Nq, t->Nk,
                      t->Hq, t->Hkv, t->hd);
}

static void test_attention(void) {
    int cfg[3][4] = {{4, 2, 8, 0}, {2, 2, 16, 1}, {3, 1, 8, 2}}; /* Hq, Hkv, hd; groups 2, 1, 3 */
    for (int c = 0; c < 3; c++) {
        int Nq = 7, Nk = 10, Hq = cfg[c][0], Hkv = cfg[c][1], hd = cfg[c][2];
        AttCtx t = att_make(Nq, Nk, Hq, Hkv, hd, 2.0f);
        /* edge: query 4 has no keys at all */
        t.r0lo[4] = t.r0hi[4] = 4; t.r1lo[4] = t.r1hi[4] = 9;
        size_t nq = (size_t)Nq * Hq * hd, nk = (size_t)Nk * Hkv * hd;
        att_loss(&t);
        float *ro = zeros(nq), *rl = zeros((size_t)Nq * Hq);
        att_ref(&t, ro, rl);
        CHECK_CLOSE("attention out", t.out, ro, nq, 1e-6f, 1e-5f);
        bool lse_ok = true;
        for (int i = 0; i < Nq * Hq; i++)
            lse_ok &= (isinf(rl[i]) && isinf(t.lse[i]) && t.lse[i] < 0) || fabsf(t.lse[i] - rl[i]) <= 1e-5f * (1 + fabsf(rl[i]));
        CHECK(lse_ok);
        bool empty_zero = true;
        for (int h = 0; h < Hq; h++) empty_zero &= isinf(t.lse[4 * Hq + h]) && t.lse[4 * Hq + h] < 0;
        for (int e = 0; e < Hq * hd; e++) empty_zero &= t.out[(size_t)4 * Hq * hd + e] == 0.0f;
        CHECK(empty_zero);
        float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
        att_grads(&t, dq, dk, dv);
        bool empty_nograd = true;
        for (int e = 0; e < Hq * hd; e++) empty_nograd &= dq[(size_t)4 * Hq * hd + e] == 0.0f;
        CHECK(empty_nograd);
        const char *nm[3][3] = {{"attention d_q (Hq/Hkv 2)", "attention d_k (Hq/Hkv 2)", "attention d_v (Hq/Hkv 2)"},
                                {"attention d_q (Hq/Hkv 1)", "attention d_k (Hq/Hkv 1)", "attention d_v (Hq/Hkv 1)"},
                                {"attention d_q (Hq/Hkv 3)", "attention d_k (Hq/Hkv 3)", "attention d_v (Hq/Hkv 3)"}};
        CHECK_FD(nm[c][0], t.q, dq, nq, att_loss, &t);
        CHECK_FD(nm[c][1], t.k, dk, nk, att_loss, &t);
        CHECK_FD(nm[c][2], t.v, dv, nk, att_loss, &t);
        /* NULL gradients skipped, the others accumulate */
        float *dk2 = copyf(dk, nk);
        att_grads(&t, NULL, dk2, NULL);
        for (size_t i = 0; i < nk; i++) dk[i] *= 2;
        CHECK_CLOSE("attention d_k accumulates", dk2, dk, nk, 1e-6f, 1e-6f);
        ds_free(ro); ds_free(rl); ds_free(dq); ds_free(dk); ds_free(dv); ds_free(dk2);
        att_free(&t);
    }
}

/* The drafter's layout: keys = [context S][blocks N]; block b (anchor a_b, size B) queries see
 * context keys < a_b and the keys of their own block. Checked against the explicit mask. */
static void test_attention_drafter_layout(void) {
    int S = 12, B = 3, nb = 3, Nq = nb * B, Nk = S + Nq, Hq = 4, Hkv = 2, hd = 8;
    int anchors[3] = {2, 9, 5};
    AttCtx t = att_make(Nq, Nk, Hq, Hkv, hd, 2.0f);
    for (int b = 0; b < nb; b++)
        for (int s = 0; s < B; s++) {
            int i = b * B + s;
            t.r0lo[i] = 0; t.r0hi[i] = anchors[b];
            t.r1lo[i] = S + b * B; t.r1hi[i] = S + (b + 1) * B;
        }
    att_loss(&t);
    size_t nq = (size_t)Nq * Hq * hd, nk = (size_t)Nk * Hkv * hd;
    float *ro = zeros(nq), *rl = zeros((size_t)Nq * Hq);
    att_ref(&t, ro, rl);
    CHECK_CLOSE("drafter attention out", t.out, ro, nq, 1e-6f, 1e-5f);
    float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
    att_grads(&t, dq, dk, dv);
    CHECK_FD("drafter attention d_q", t.q, dq, nq, att_loss, &t);
    CHECK_FD("drafter attention d_k", t.k, dk, nk, att_loss, &t);
    CHECK_FD("drafter attention d_v", t.v, dv, nk, att_loss, &t);
    /* context keys at or after the last anchor (9) and no query's block: no gradient */
    bool none = true;
    for (size_t e = (size_t)9 * Hkv * hd; e < (size_t)S * Hkv * hd; e++) none &= dk[e] == 0.0f && dv[e] == 0.0f;
    CHECK(none);
    ds_free(ro); ds_free(rl); ds_free(dq); ds_free(dk); ds_free(dv);
    att_free(&t);
}

/* the backward of L = sum c . out in double, from att_ref's softmax: p, dp_ij = c_i . v_j,
 * ds = p (dp - sum_j p dp), dq_i = scale sum_j ds k_j, dk_j = scale sum_i ds q_i, dv_j = sum_i p c_i */
static void att_ref_grads(const AttCtx *t, double *dq, double *dk, double *dv) {
    int group = t->Hq / t->Hkv, hd = t->hd, Nk = t->Nk;
    double scale = 1.0 / sqrt((double)hd), *s = ds_malloc(sizeof(double) * (size_t)Nk * 2), *dp = s + Nk;
    memset(dq, 0, sizeof(double) * (size_t)t->Nq * t->Hq * hd);
    memset(dk, 0, sizeof(double) * (size_t)Nk * t->Hkv * hd);
    memset(dv, 0, sizeof(double) * (size_t)Nk * t->Hkv * hd);
    for (int i = 0; i < t->Nq; i++)
        for (int h = 0; h < t->Hq; h++) {
            const float *qi = t->q + ((size_t)i * t->Hq + h) * hd, *ci = t->c + ((size_t)i * t->Hq + h) * hd;
            double m = -INFINITY, z = 0, D = 0;
            for (int j = 0; j < Nk; j++) {
                s[j] = -INFINITY;
                if (!((t->r0lo[i] <= j && j < t->r0hi[i]) || (t->r1lo[i] <= j && j < t->r1hi[i]))) continue;
                const float *kj = t->k + ((size_t)j * t->Hkv + h / group) * hd;
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)qi[e] * kj[e];
                s[j] = d * scale;
                m = fmax(m, s[j]);
            }
            if (m == -INFINITY) continue;
            for (int j = 0; j < Nk; j++) z += exp(s[j] - m);
            for (int j = 0; j < Nk; j++) {
                const float *vj = t->v + ((size_t)j * t->Hkv + h / group) * hd;
                s[j] = exp(s[j] - m) / z; /* now p */
                dp[j] = 0;
                for (int e = 0; e < hd; e++) dp[j] += (double)ci[e] * vj[e];
                D += s[j] * dp[j];
            }
            for (int j = 0; j < Nk; j++) {
                if (s[j] == 0) continue;
                size_t jk = ((size_t)j * t->Hkv + h / group) * hd;
                double ds = s[j] * (dp[j] - D) * scale;
                for (int e = 0; e < hd; e++) {
                    dq[((size_t)i * t->Hq + h) * hd + e] += ds * t->k[jk + e];
                    dk[jk + e] += ds * qi[e];
                    dv[jk + e] += s[j] * ci[e];
                }
            }
        }
    ds_free(s);
}

/* |got - ref| <= rtol * max|ref| for every entry (gradients of a sum over many keys: the
 * entries' own sizes vary too much for a per-entry relative bound) */
static bool close_to_max(const char *name, const float *got, const double *ref, size_t n, double rtol) {
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) err = fmax(err, fabs((double)got[i] - ref[i]));
    if (!(err <= rtol * mx) && !g_expect_failure) fprintf(stderr, "  %s: max|err| %.3g, max|ref| %.3g\n", name, err, mx);
    if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  %s: max|err| / max|ref| %.3g\n", name, err / mx);
    return err <= rtol * mx;
}

static void att_check_tiled(const char *what, AttCtx *t) {
    size_t nq = (size_t)t->Nq * t->Hq * t->hd, nk = (size_t)t->Nk * t->Hkv * t->hd;
    att_loss(t);
    float *ro = zeros(nq), *rl = zeros((size_t)t->Nq * t->Hq);
    att_ref(t, ro, rl);
    bool out_ok = true, lse_ok = true;
    for (size_t i = 0; i < nq; i++) out_ok &= fabsf(t->out[i] - ro[i]) <= 1e-6f + 1e-5f * fabsf(ro[i]);
    for (int i = 0; i < t->Nq * t->Hq; i++)
        lse_ok &= (isinf(rl[i]) && isinf(t->lse[i]) && t->lse[i] < 0) || fabsf(t->lse[i] - rl[i]) <= 1e-5f * (1 + fabsf(rl[i]));
    CHECK_MSG(out_ok && lse_ok, "%s: forward vs double", what);
    float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
    double *rq = ds_malloc(sizeof(double) * nq), *rk = ds_malloc(sizeof(double) * nk), *rv = ds_malloc(sizeof(double) * nk);
    att_grads(t, dq, dk, dv);
    att_ref_grads(t, rq, rk, rv);
    CHECK_MSG(close_to_max("d_q", dq, rq, nq, 1e-5), "%s: d_q vs double", what);
    CHECK_MSG(close_to_max("d_k", dk, rk, nk, 1e-5), "%s: d_k vs double", what);
    CHECK_MSG(close_to_max("d_v", dv, rv, nk, 1e-5), "%s: d_v vs double", what);
    /* the check must catch one d_k entry off by 1% of the largest */
    size_t worst = 0;
    for (size_t i = 0; i < nk; i++) worst = fabs(rk[i]) > fabs(rk[worst]) ? i : worst;
    dk[worst] += 0.01f * (float)fabs(rk[worst]);
    g_expect_failure = 1;
    CHECK_MSG(!close_to_max("d_k + 1%", dk, rk, nk, 1e-5), "%s: a 1%% d_k error passed", what);
    g_expect_failure = 0;
    ds_free(ro); ds_free(rl); ds_free(dq); ds_free(dk); ds_free(dv); ds_free(rq); ds_free(rk); ds_free(rv);
}

/* many tiles: 150 queries x 200 keys (3 x 4 tiles), 3 layouts */
static void test_attention_tiles(void) {
    {
        AttCtx t = att_make(150, 200, 4, 2, 16, 2.0f);
        att_check_tiled("random ranges", &t);
        att_free(&t);
    }
    {   /* causal LM batch: sequences of 75 tokens, so tiles straddle sequence edges */
        AttCtx t = att_make(150, 150, 6, 2, 8, 2.0f);
        for (int i = 0; i < 150; i++) {
            t.r0lo[i] = i / 75 * 75; t.r0hi[i] = i + 1; t.r1lo[i] = t.r1hi[i] = 0;
        }
        att_check_tiled("causal batch", &t);
        att_free(&t);
    }
    {   /* drafter: context 100, 20 blocks of 7, unsorted anchors, one block with no context */
        int S = 100, B = 7, nb = 20, Nq = nb * B;
        AttCtx t = att_make(Nq, S + Nq, 4, 1, 16, 2.0f);
        for (int b = 0; b < nb; b++)
            for (int s = 0; s < B; s++) {
                int i = b * B + s;
                t.r0lo[i] = 0; t.r0hi[i] = (37 * b) % S;
                t.r1lo[i] = S + b * B; t.r1hi[i] = S + (b + 1) * B;
            }
        att_check_tiled("drafter layout", &t);
        att_free(&t);
    }
}

/* top_expf over [-87.3, 88] against double exp, and its edges */
static void test_expf(void) {
    double worst = 0;
    for (int n = 0; n <= 2000000; n++) {
        float x = -87.3f + (float)((double)n * (88.0 + 87.3) / 2000000);
        double e = exp((double)x);
        worst = fmax(worst, fabs(top_expf(x) - e) / e);
    }
    for (float x = -1e-3f; x < 1e-3f; x += 1.1e-7f) worst = fmax(worst, fabs(top_expf(x) - exp((double)x)) / exp((double)x));
    CHECK_MSG(worst <= 1.5e-7, "top_expf max relative error %.3g", worst);
    if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  top_expf max relative error %.3g\n", worst);
    CHECK(top_expf(-INFINITY) == 0.0f && top_expf(-88.0f) == 0.0f && top_expf(-1e30f) == 0.0f);
    CHECK(top_expf(0.0f) == 1.0f && top_expf(1000.0f) == top_expf(88.0f) && isfinite(top_expf(INFINITY)));
    CHECK(isnan(top_expf(NAN)) && isnan(top_expf(-NAN)));
    /* the bound must catch an exp 1e-6 off */
    CHECK(fabs(top_expf(1.0f) * (1 + 1e-6) - exp(1.0)) / exp(1.0) > 1.5e-7);
}

/* ---- thread-count independence ---- */

typedef struct { float *bufs[16]; size_t n[16]; int nb; } Outs;

/* every op on shapes above the ops' parallel thresholds, results appended to o */
static void run_all(Outs *o, uint64_t seed, int Hkv) {
    g_rng = seed;
    o->nb = 0;
#define KEEP(p, cnt) (o->bufs[o->nb] = (p), o->n[o->nb++] = (cnt))
    {   /* linear: N*O > 65536 (bias rows in parallel) */
        int N = 300, Ni = 64, O = 256;
        float *in = rnd((size_t)N * Ni, -1, 1), *W = rnd((size_t)O * Ni, -1, 1), *b = rnd(O, -1, 1), *c = rnd((size_t)N * O, -1, 1);
        float *out = zeros((size_t)N * O), *di = zeros((size_t)N * Ni), *dW = zeros((size_t)O * Ni), *db = zeros(O);
        top_linear_fwd(out, in, W, b, N, Ni, O);
        top_linear_bwd(di, dW, db, c, in, W, N, Ni, O);
        KEEP(out, (size_t)N * O); KEEP(di, (size_t)N * Ni); KEEP(dW, (size_t)O * Ni); KEEP(db, (size_t)O);
        ds_free(in); ds_free(W); ds_free(b); ds_free(c);
    }
    {   /* rmsnorm: N*D > 65536 */
        int N = 300, D = 232;
        float *x = rnd((size_t)N * D, -1, 1), *w = rnd(D, 0.5f, 1.5f), *c = rnd((size_t)N * D, -1, 1);
        float *out = zeros((size_t)N * D), *r = zeros(N), *dx = zeros((size_t)N * D), *dw = zeros(D);
        top_rmsnorm_fwd(out, r, x, w, N, D, 1e-6f);
        top_rmsnorm_bwd(dx, dw, c, x, w, r, N, D);
        KEEP(out, (size_t)N * D); KEEP(dx, (size_t)N * D); KEEP(dw, (size_t)D);
        ds_free(x); ds_free(w); ds_free(c); ds_free(r);
    }
    {   /* swiglu: n > 65536 */
        size_t n = 70000;
        float *g = rnd(n, -5, 5), *u = rnd(n, -1, 1), *c = rnd(n, -1, 1), *out = zeros(n), *dg = zeros(n), *du = zeros(n);
        top_swiglu_fwd(out, g, u, n);
        top_swiglu_bwd(dg, du, c, g, u, n);
        KEEP(out, n); KEEP(dg, n);
        ds_free(g); ds_free(u); ds_free(c); ds_free(du);
    }
    {   /* rope: N >= 16 */
        int N = 40, H = 4, hd = 32;
        size_t n = (size_t)N * H * hd;
        float *x = rnd(n, -1, 1), *d = rnd(n, -1, 1);
        int32_t pos[40];
        for (int i = 0; i < N; i++) pos[i] = 37 * i;
        top_rope_fwd(x, pos, N, H, hd, 10000.0f);
        top_rope_bwd(d, pos, N, H, hd, 10000.0f);
        KEEP(x, n); KEEP(d, n);
    }
    {   /* attention over 3 x 4 tiles: Hkv = 1 takes the two-pass backward with 2+ threads, the
         * per-kv-head one with 1; Hkv = 2 the per-kv-head one with 1 and 2, two-pass with 3 */
        AttCtx t = att_make(150, 200, 4, Hkv, 16, 2.0f);
        size_t nq = (size_t)150 * 4 * 16, nk = (size_t)200 * Hkv * 16;
        float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
        att_loss(&t);
        att_grads(&t, dq, dk, dv);
        KEEP(copyf(t.out, nq), nq); KEEP(copyf(t.lse, (size_t)150 * 4), (size_t)150 * 4); KEEP(dq, nq); KEEP(dk, nk); KEEP(dv, nk);
        att_free(&t);
    }
#undef KEEP
}

static void test_thread_independence(void) {
    const char *names[16] = {"linear out", "linear d_in", "linear d_W", "linear d_b", "rmsnorm out", "rmsnorm d_x", "rmsnorm d_w",
                             "swiglu out", "swiglu d_gate", "rope fwd", "rope bwd", "attention out", "attention lse",
                             "attention d_q", "attention d_k", "attention d_v"};
    /* OpenBLAS may run its own thread pool (Debian's default build is the pthreads one, which
     * ignores OpenMP's setting), so both counts are set. sgemm's bits DO change with
     * OpenBLAS's thread count (seen with 0.3.21: 1 vs 2 threads), so for the three sgemm
     * outputs the check is run to run at a fixed count; every other output must match the
     * 1-thread run bit for bit. */
    int saved = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    bool sgemm_same = true;
    for (int Hkv = 1; Hkv <= 2; Hkv++) {
        Outs ref, o, o2;
        omp_set_num_threads(1);
        openblas_set_num_threads(1);
        run_all(&ref, 77, Hkv);
        for (int nt = 2; nt <= 3; nt++) {
            omp_set_num_threads(nt);
            openblas_set_num_threads(nt);
            run_all(&o, 77, Hkv);
            run_all(&o2, 77, Hkv);
            for (int b = 0; b < ref.nb; b++) {
                if (b < 3) { /* linear out, d_in, d_W: sgemm */
                    CHECK_MSG(same_bits(o2.bufs[b], o.bufs[b], ref.n[b]), "%s: two runs with %d threads differ", names[b], nt);
                    sgemm_same &= same_bits(ref.bufs[b], o.bufs[b], ref.n[b]);
                } else {
                    CHECK_MSG(same_bits(ref.bufs[b], o.bufs[b], ref.n[b]), "%s (Hkv %d): %d threads differ from 1", names[b], Hkv, nt);
                }
                ds_free(o.bufs[b]);
                ds_free(o2.bufs[b]);
            }
        }
        for (int b = 0; b < ref.nb; b++) ds_free(ref.bufs[b]);
    }
    fprintf(stderr, "  sgemm (OpenBLAS %s): %s bits with 1, 2 and 3 threads\n", openblas_get_config(),
            sgemm_same ? "the same" : "different");
    omp_set_num_threads(saved);
    openblas_set_num_threads(saved_blas);
}

static void test_embedding(void) {
    float table[4 * 3] = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32}, out[3 * 3];
    int32_t ids[3] = {3, 0, 3};
    top_embedding_fwd(out, table, ids, 3, 3);
    float ref[9] = {30, 31, 32, 0, 1, 2, 30, 31, 32};
    CHECK(same_bits(out, ref, 9));
}

int main(void) {
    RUN(test_linear);
    RUN(test_rmsnorm);
    RUN(test_rope);
    RUN(test_swiglu);
    RUN(test_attention);
    RUN(test_attention_drafter_layout);
    RUN(test_attention_tiles);
    RUN(test_expf);
    RUN(test_thread_independence);
    RUN(test_embedding);
    fprintf(stderr, "worst FD relative error over all checks: %.2e (tolerance %.0e)\n", g_worst_fd, FD_TOL);
    return test_summary();
}
