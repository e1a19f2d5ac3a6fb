/* test_cuda_sample.c - the CUDA backend's sampling ops (backend.h: sample_probs, draw, verify;
 * src/cuda/sample_cuda.cu) against the host functions, and speculative decoding through them.
 *   - sample_probs vs sample_dist on random logits, V 7 .. 151936, greedy, temperature,
 *     top-k, top-p and both, heavy ties, several rows per call: the same support exactly and
 *     |gpu - cpu| <= 1e-6 * p_cpu per entry (float rounding of the softmax's scale; the
 *     observed maximum is printed). Must fail: top-k one larger, T 1% off.
 *   - draw vs sample_from and verify vs verify_block given the same uniforms: the same tokens,
 *     n_accepted, and the number of uniforms spec_generate advances the stream by; test_verify's
 *     closed-form law (first emitted token ~ p0) and its two broken verifiers, on the device.
 *   - test_spec_stat's chi-square test run end to end on the GPU (the target, the noisy source
 *     and the trained drafter on the CUDA backend, q / pt / drafts / verification on the
 *     device), with a broken verifier that must be detected.
 *   - greedy speculative decoding on the GPU's sampling path gives exactly the CPU's tokens
 *     (fixture and trained drafters, with and without a confidence policy); sampled decoding
 *     gives the GPU host-sampling path's tokens for (almost) every seed.
 * Without a GPU it prints why and exits 77 (ctest SKIP); DSPARK_REQUIRE_CUDA=1 makes that a failure.
 * ctest: labels=cuda timeout=600 */
#include "spec_stat.h"
#ifdef DSPARK_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

static Backend *g_cpu;
static Qwen3Model g_tc; /* the target on the CPU */
static Rng g_rng;
static bool g_quick; /* DSPARK_TEST_QUICK=1 (under compute-sanitizer): fewer draws and cases */

static float randn(void) {
    double u1 = rng_uniform(&g_rng), u2 = rng_uniform(&g_rng);
    return (float)(sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2));
}
static void *dev_alloc(size_t bytes) {
    void *p = g_be->alloc(g_be, bytes);
    DS_ASSERT(p);
    return p;
}

/* ---- sample_probs ---- */

static double g_worst_rel;

/* rows of logits through both; returns false when any row breaks the bound (quiet = must-fail) */
static bool probs_case(const char *name, const float *logits, int n, int V, SamplerParams sp, SamplerParams ref_sp, bool quiet) {
    char err[DS_ERR_LEN];
    SampleScratch sc;
    CHECK_OK(sample_scratch_init(&sc, V, err), err);
    float *ref = malloc(sizeof(float) * (size_t)n * V), *got = malloc(sizeof(float) * (size_t)n * V);
    for (int r = 0; r < n; r++) sample_dist(&ref_sp, logits + (size_t)r * V, V, ref + (size_t)r * V, &sc);
    float *dl = dev_alloc(sizeof(float) * (size_t)n * V), *dp = dev_alloc(sizeof(float) * (size_t)n * V);
    void *ws = dev_alloc(g_be->sample_ws_bytes(g_be, n, V));
    g_be->to_device(g_be, dl, logits, sizeof(float) * (size_t)n * V);
    g_be->sample_probs(g_be, dp, dl, n, V, sp.temperature, sp.top_k, sp.top_p, ws);
    g_be->to_host(g_be, got, dp, sizeof(float) * (size_t)n * V);
    double worst = 0;
    long bad_support = 0, support = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        if ((ref[i] > 0) != (got[i] > 0)) bad_support++;
        if (ref[i] > 0) {
            support++;
            double rel = fabs((double)got[i] - ref[i]) / ref[i];
            if (rel > worst || isnan(rel)) worst = isnan(rel) ? INFINITY : rel;
        }
    }
    bool ok = bad_support == 0 && worst <= 1e-6;
    if (!quiet) {
        CHECK_MSG(ok, "%s: %ld entries differ in support, max rel err %.3g (bound 1e-6)", name, bad_support, worst);
        if (ok && worst > g_worst_rel) g_worst_rel = worst;
        if (getenv("DSPARK_TEST_VERBOSE")) printf("  %-44s support %ld, max rel err %.3g\n", name, support / n, worst);
    }
    g_be->free(g_be, dl); g_be->free(g_be, dp); g_be->free(g_be, ws);
    free(ref); free(got);
    sample_scratch_free(&sc);
    return ok;
}

static void test_sample_probs(void) {
    const int Vs[] = {7, 64, 1000, 151936};
    const SamplerParams sps[] = {{0.0f, 0, 1.0f}, {1.0f, 0, 1.0f}, {0.7f, 50, 1.0f}, {1.0f, 0, 0.9f}, {0.8f, 40, 0.95f},
                                 {1.3f, 1000, 0.5f}, {1.0f, 5000, 1.0f}, {1.0f, 0, 0.999f}, {0.6f, 1, 1.0f}, {1.0f, 3, 0.3f},
                                 {2.0f, 0, 0.05f}};
    const int nsp = sizeof sps / sizeof sps[0];
    for (size_t v = 0; v < sizeof Vs / sizeof Vs[0]; v++) {
        const int V = Vs[v], n = V > 10000 ? 3 : 5;
        float *l = malloc(sizeof(float) * (size_t)n * V);
        for (int kind = 0; kind < 3; kind++) {
            /* 0: N(0, 3^2); 1: heavy ties (integers 0..7); 2: a few large logits (peaked), shifted by 25 */
            for (size_t i = 0; i < (size_t)n * V; i++) {
                float x = 3.0f * randn();
                l[i] = kind == 0 ? x : kind == 1 ? floorf(fabsf(x) * 0.8f) : 25.0f + (rng_uniform(&g_rng) < 0.001 ? 6.0f + x : 0.5f * x);
            }
            if (kind == 1) l[V - 1] = l[1] = 30.0f; /* two equal maxima: greedy takes index 1 */
            for (int s = 0; s < nsp; s++) {
                char name[96];
                snprintf(name, sizeof name, "V %d kind %d T %.1f top-k %d top-p %.3f", V, kind, sps[s].temperature, sps[s].top_k, sps[s].top_p);
                probs_case(name, l, n, V, sps[s], sps[s], false);
            }
            /* top-k at or beyond V: off */
            SamplerParams all = {1.0f, V, 1.0f}, km1 = {1.0f, V - 1, 1.0f};
            probs_case("top-k = V", l, n, V, all, all, false);
            probs_case("top-k = V - 1", l, n, V, km1, km1, false);
        }
        /* must fail: one more top-k candidate, a 1% temperature error */
        if (V >= 1000) {
            SamplerParams a = {0.7f, 50, 1.0f}, b = {0.7f, 51, 1.0f}, c = {0.707f, 50, 1.0f};
            bool f1 = probs_case("must fail: top-k 51 vs 50", l, n, V, b, a, true);
            bool f2 = probs_case("must fail: T 0.707 vs 0.7", l, n, V, c, a, true);
            CHECK_MSG(!f1 && !f2, "V %d: a wrong top-k (%d) or temperature (%d) was not caught", V, f1, f2);
        }
        free(l);
    }
    printf("  sample_probs: worst relative error %.3g among passing rows (bound 1e-6)\n", g_worst_rel);
}

/* ---- draw and verify ---- */

static int32_t dev_draw(const float *dprobs, int V, double u, int32_t *dout) {
    int32_t t;
    g_be->draw(g_be, dout, dprobs, V, u);
    g_be->to_host(g_be, &t, dout, sizeof t);
    return t;
}

static void test_draw(void) {
    const int Vs[3] = {1000, 20000, 151936}; /* one block; and chunks of the multi-block draw (8192 values each) */
    int same = 0, cases = 0;
    for (int vi = 0; vi < 3; vi++) {
        const int V = Vs[vi];
        float *p = malloc(sizeof(float) * V);
        float *dp = dev_alloc(sizeof(float) * V);
        int32_t *dout = dev_alloc(sizeof(int32_t) * 4);
        for (int rep = 0; rep < (vi ? 8 : 20); rep++) {
            double sum = 0;
            for (int i = 0; i < V; i++) { /* a third of the entries zero; mass 1, or 0.9 (u past the mass) */
                p[i] = rng_uniform(&g_rng) < 0.33 ? 0.0f : (float)rng_uniform(&g_rng);
                sum += p[i];
            }
            float scale = (float)((rep % 4 == 3 ? 0.9 : 1.0) / sum);
            for (int i = 0; i < V; i++) p[i] *= scale;
            if (rep == 5) { memset(p, 0, sizeof(float) * V); p[V - 1] = 1.0f; } /* a one-hot at the end */
            if (rep == 6) { memset(p, 0, sizeof(float) * V); p[V / 2] = 0.5f; p[V / 2 + 1] = 0.5f; } /* mass inside one chunk */
            g_be->to_device(g_be, dp, p, sizeof(float) * V);
            /* u: random, 0, close below 1, and just either side of cumulative boundaries (spread over the row) */
            double us[40];
            int nu = 0;
            us[nu++] = 0.0;
            us[nu++] = 1.0 - 1e-12;
            for (int k = 0; k < 18; k++) us[nu++] = rng_uniform(&g_rng);
            double cum = 0;
            for (int i = 0; i < V && nu < 40; i++) {
                cum += p[i];
                if (p[i] > 0 && rng_uniform(&g_rng) < 20.0 / V) { us[nu++] = cum * (1 - 1e-9); us[nu++] = cum * (1 + 1e-9); }
            }
            for (int k = 0; k < nu; k++) {
                int32_t want = sample_from(p, V, us[k]), got = dev_draw(dp, V, us[k], dout);
                cases++;
                same += want == got;
                CHECK_MSG(want == got && p[got] > 0, "draw V %d rep %d u %.17g: gpu %d, sample_from %d", V, rep, us[k], got, want);
            }
        }
        g_be->free(g_be, dp);
        g_be->free(g_be, dout);
        free(p);
    }
    printf("  draw (V 1000, 20000, 151936): %d/%d uniforms give sample_from's token\n", same, cases);
}

typedef struct {
    float *pt, *q, *qr; /* device */
    int32_t *drafts, *out;
    int kmax, V;
} DevVerify;

static DevVerify dv_new(int kmax, int V) {
    DevVerify d = {dev_alloc(sizeof(float) * (size_t)(kmax + 1) * V), dev_alloc(sizeof(float) * (size_t)(kmax + 1) * V),
                   dev_alloc(sizeof(float) * (size_t)(kmax + 1) * V), dev_alloc(sizeof(int32_t) * (size_t)(kmax + 1)),
                   dev_alloc(sizeof(int32_t) * (size_t)(kmax + 2)), kmax, V};
    return d;
}
static void dv_free(DevVerify *d) {
    void *p[] = {d->pt, d->q, d->qr, d->drafts, d->out};
    for (int i = 0; i < 5; i++) g_be->free(g_be, p[i]);
}
static void dv_upload(DevVerify *d, const float *pt, const float *q, const float *qr, int k) {
    const size_t V = (size_t)d->V;
    g_be->to_device(g_be, d->pt, pt, sizeof(float) * (k + 1) * V);
    if (q && k) g_be->to_device(g_be, d->q, q, sizeof(float) * k * V);
    if (qr && k) g_be->to_device(g_be, d->qr, qr, sizeof(float) * k * V);
}
/* the device verify with spec_generate's uniforms: k + 1 from a copy of *rng, which then
 * advances by as many as were used (checked against verify_block's consumption by callers) */
static VerifyResult dv_run(DevVerify *d, const int32_t *drafts, int k, bool greedy, Rng *rng, VerifyBug bug, int32_t *drafts_back) {
    double u[65];
    verify_peek_uniforms(rng, k, greedy, u);
    int32_t res[66];
    if (k) g_be->to_device(g_be, d->drafts, drafts, sizeof(int32_t) * k);
    g_be->verify(g_be, d->out, d->pt, d->q, d->drafts, k, d->V, greedy, u, (int)bug, d->qr);
    g_be->to_host(g_be, res, d->out, sizeof(int32_t) * (size_t)(k + 2));
    VerifyResult vr = {res[0], res[1]};
    verify_consume_uniforms(rng, k, greedy, vr.n_accepted);
    if (drafts_back) memcpy(drafts_back, res + 2, sizeof(int32_t) * k);
    return vr;
}

/* test_verify's closed-form case on the device: the first emitted token ~ p0 exactly */
#define V6 6
static const float P0[V6] = {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f};
static const float Q0[V6] = {0.05f, 0.45f, 0.10f, 0.10f, 0.10f, 0.20f};
static const float P1[V6] = {0.10f, 0.10f, 0.10f, 0.10f, 0.10f, 0.50f};

static double first_token_worst_z(VerifyBug bug, int n, int *mismatch) {
    float pt[2 * V6], q[V6], qr[V6], resid[V6];
    memcpy(pt, P0, sizeof P0);
    memcpy(pt + V6, P1, sizeof P1);
    memcpy(q, Q0, sizeof Q0);
    for (int i = 0; i < V6; i++) qr[i] = Q0[i] * (i == 1 ? 0.6f : 1.0f);
    DevVerify d = dv_new(1, V6);
    dv_upload(&d, pt, q, qr, 1);
    Rng r, rh;
    rng_seed(&r, 2024, 0);
    double f[V6] = {0};
    for (int s = 0; s < n; s++) {
        int32_t x = sample_from(q, V6, rng_uniform(&r));
        rh = r;
        VerifyResult vr = dv_run(&d, &x, 1, false, &r, bug, NULL);
        VerifyResult hr = verify_block(pt, q, &x, 1, V6, false, &rh, resid, bug, qr);
        *mismatch += vr.n_accepted != hr.n_accepted || vr.next != hr.next || rh.state != r.state;
        f[vr.n_accepted ? x : vr.next] += 1.0 / n;
    }
    dv_free(&d);
    double worst = 0;
    for (int i = 0; i < V6; i++) {
        if (P0[i] == 0 && f[i] > 0) worst = INFINITY;
        if (P0[i] > 0) worst = fmax(worst, fabs(f[i] - P0[i]) / sqrt(P0[i] * (1 - P0[i]) / n));
    }
    return worst;
}

static void test_verify_law(void) {
    const int n = TEST_SANITIZED || g_quick ? 1000 : 40000;
    int mism = 0;
    double z = first_token_worst_z(VERIFY_EXACT, n, &mism);
    double z1 = first_token_worst_z(VERIFY_BUG_RESIDUAL_PT, n, &mism);
    double z2 = first_token_worst_z(VERIFY_BUG_RATIO_Q, n, &mism);
    printf("  verify on the device, %d draws: exact max |z| %.2f; broken (residual from p) %.1f, (ratio with bf16-like q) %.1f; %d differ from verify_block\n",
           n, z, z1, z2, mism);
    CHECK(mism == 0);
    CHECK(z < 4.5);
    CHECK(z1 > (n >= 40000 ? 10 : 5)); /* 57 at 40000 draws, about 9 at 1000 */
    if (n >= 40000) CHECK(z2 > 5);
}

static void test_verify_cases(void) {
    /* greedy, as test_verify */
    float pt[3 * V6] = {0};
    pt[2] = 1; pt[V6 + 4] = 1; pt[2 * V6 + 0] = 1;
    DevVerify d = dv_new(2, V6);
    dv_upload(&d, pt, NULL, NULL, 2);
    Rng r;
    rng_seed(&r, 1, 0);
    uint64_t st0 = r.state;
    int32_t dr[2] = {2, 4}, back[2];
    VerifyResult v = dv_run(&d, dr, 2, true, &r, VERIFY_EXACT, back);
    CHECK(v.n_accepted == 2 && v.next == 0 && back[0] == 2 && back[1] == 4);
    dr[1] = 3;
    v = dv_run(&d, dr, 2, true, &r, VERIFY_EXACT, NULL);
    CHECK(v.n_accepted == 1 && v.next == 4);
    dr[0] = 1;
    v = dv_run(&d, dr, 2, true, &r, VERIFY_EXACT, NULL);
    CHECK(v.n_accepted == 0 && v.next == 2);
    v = dv_run(&d, dr, 0, true, &r, VERIFY_EXACT, NULL);
    CHECK(v.n_accepted == 0 && v.next == 2);
    CHECK(r.state == st0); /* greedy uses no uniforms */
    dv_free(&d);
    /* the residual fallback (p == q, forced rejection): drawn from p */
    float p2[2 * V6], q[V6], qr[V6], resid[V6];
    memcpy(p2, P0, sizeof P0);
    memcpy(p2 + V6, P1, sizeof P1);
    memcpy(q, P0, sizeof P0);
    for (int i = 0; i < V6; i++) qr[i] = 1e9f;
    d = dv_new(1, V6);
    dv_upload(&d, p2, q, qr, 1);
    int hits[V6] = {0}, mism = 0;
    for (int s = 0; s < 2000; s++) {
        int32_t x = 1;
        Rng rh = r;
        v = dv_run(&d, &x, 1, false, &r, VERIFY_BUG_RATIO_Q, NULL);
        VerifyResult h = verify_block(p2, q, &x, 1, V6, false, &rh, resid, VERIFY_BUG_RATIO_Q, qr);
        mism += v.n_accepted != h.n_accepted || v.next != h.next || rh.state != r.state;
        hits[v.next]++;
    }
    CHECK(mism == 0);
    CHECK(hits[5] == 0 && hits[0] > 450 && hits[4] > 120);
    dv_free(&d);
    /* random blocks, V 1000 and 151936, k 0..8: q and pt from sample_dist, drafts from q, the
     * same uniforms: exactly verify_block's result and stream consumption */
    const int Vs[2] = {1000, 151936}, reps[2] = {300, 12};
    for (int vi = 0; vi < 2; vi++) {
        const int V = Vs[vi], K = 8;
        char err[DS_ERR_LEN];
        SampleScratch sc;
        CHECK_OK(sample_scratch_init(&sc, V, err), err);
        float *hp = malloc(sizeof(float) * (size_t)(K + 1) * V), *hq = malloc(sizeof(float) * (size_t)K * V),
              *l = malloc(sizeof(float) * V), *res = malloc(sizeof(float) * V);
        DevVerify dd = dv_new(K, V);
        int same = 0, tested = 0, acc = 0, rejected = 0;
        for (int rep = 0; rep < reps[vi]; rep++) {
            const int k = rep % (K + 1);
            const bool greedy = rep % 7 == 3;
            SamplerParams sp = {greedy ? 0.0f : 0.9f, rep % 3 == 0 ? 20 : 0, rep % 2 ? 0.95f : 1.0f};
            int32_t drafts[8];
            for (int j = 0; j <= k; j++) {
                for (int i = 0; i < V; i++) l[i] = 2.0f * randn();
                sample_dist(&sp, l, V, hp + (size_t)j * V, &sc);
                if (j == k) break;
                /* q: the target's logits, mostly perturbed a little, so acceptance is frequent */
                for (int i = 0; i < V; i++) l[i] += (rep % 5 == 0 ? 1.0f : 0.2f) * randn();
                sample_dist(&sp, l, V, hq + (size_t)j * V, &sc);
                drafts[j] = greedy ? argmax_f32(hq + (size_t)j * V, V) : sample_from(hq + (size_t)j * V, V, rng_uniform(&g_rng));
            }
            dv_upload(&dd, hp, hq, NULL, k);
            Rng rd, rh;
            rng_seed(&rd, 77, (uint64_t)rep);
            rh = rd;
            VerifyResult v1 = dv_run(&dd, drafts, k, greedy, &rd, VERIFY_EXACT, NULL);
            VerifyResult v2 = verify_block(hp, hq, drafts, k, V, greedy, &rh, res, VERIFY_EXACT, NULL);
            tested++;
            bool ok = v1.n_accepted == v2.n_accepted && v1.next == v2.next && rd.state == rh.state;
            same += ok;
            acc += v2.n_accepted;
            rejected += v2.n_accepted < k;
            CHECK_MSG(ok, "V %d rep %d k %d: gpu (%d, %d), verify_block (%d, %d)", V, rep, k, v1.n_accepted, v1.next, v2.n_accepted, v2.next);
        }
        printf("  verify V %d: %d/%d random blocks equal to verify_block (%d drafts accepted, %d rejections)\n", V, same, tested, acc, rejected);
        dv_free(&dd);
        free(hp); free(hq); free(l); free(res);
        sample_scratch_free(&sc);
    }
}

/* ---- speculative decoding on the GPU ---- */

/* test_spec_stat's chi-square test with everything on the CUDA backend */
static void test_chi_square_gpu(void) {
    char err[DS_ERR_LEN];
    int32_t prompt[6] = {5, 77, 301, 12, 450, 9};
    int cap = 8 * 8 * 8;
    int32_t (*cells)[G] = malloc(sizeof(int32_t) * G * cap);
    double *prob = malloc(sizeof(double) * cap);
    SamplerParams sp = {0.8f, 8, 1.0f};
    int nc = exact_joint(&sp, prompt, 6, cells, prob, cap);
    const int n = TEST_SANITIZED ? 300 : 6000;
    double t0 = ds_now();
    Chi2Result ok = chi2_run(VERIFY_EXACT, &sp, n, prompt, 6, cells, prob, nc, NULL);
    double t1 = ds_now();
    Chi2Result b1 = chi2_run(VERIFY_BUG_RESIDUAL_PT, &sp, n, prompt, 6, cells, prob, nc, NULL);
    printf("  GPU chi2 (T 0.8, top-k 8, noisy source, %d samples, %.1f s): exact chi2 %.1f df %d p %.3g (tau %.2f); "
           "broken (residual from p_t) chi2 %.1f p %.3g\n", n, t1 - t0, ok.chi2, ok.df, ok.p, ok.tau, b1.chi2, b1.p);
    CHECK(ok.p > 1e-3);
    if (!TEST_SANITIZED) CHECK(b1.p < 1e-6);
    /* the trained drafter: its slots go through slot_dev (logits, q and drafts on the device) */
    SamplerParams sp1 = {1.0f, 8, 1.0f};
    nc = exact_joint(&sp1, prompt, 6, cells, prob, cap);
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("trained-draft"), &g_t, g_be, err), err);
    DrafterSource ds;
    CHECK_OK(spec_drafter_source_init(&ds, &d, CTX, 16, err), err);
    const int n2 = TEST_SANITIZED ? 300 : 4000;
    Chi2Result r = chi2_run(VERIFY_EXACT, &sp1, n2, prompt, 6, cells, prob, nc, &ds.src);
    printf("  GPU chi2, trained drafter, T 1.0, top-k 8, %d samples: chi2 %.1f df %d p %.3g (tau %.2f)\n", n2, r.chi2, r.df, r.p, r.tau);
    CHECK(r.p > 1e-3);
    CHECK(r.tau > 1.2);
    spec_drafter_source_free(&ds);
    drafter_free(&d);
    free(cells);
    free(prob);
}

typedef struct { Drafter d; DrafterSource ds; SpecDecoder sd; } SpecRig;

static bool rig_init(SpecRig *r, Qwen3Model *t, const char *dir) {
    char err[DS_ERR_LEN];
    CHECK_OK(drafter_load(&r->d, test_data(dir), t, t->be, err), err);
    if (!r->d.layers) return false;
    CHECK_OK(spec_drafter_source_init(&r->ds, &r->d, CTX, 16, err), err);
    CHECK_OK(spec_init(&r->sd, t, &r->ds.src, CTX, 16, err), err);
    return true;
}
static void rig_free(SpecRig *r) {
    spec_free(&r->sd);
    spec_drafter_source_free(&r->ds);
    drafter_free(&r->d);
}

/* greedy on the GPU (device sampling) == greedy on the CPU, token for token; sampled: the GPU
 * device path vs the GPU host path (sampling ops hidden) with the same seeds */
static void spec_compare(const char *dir, int n_cases) {
    char err[DS_ERR_LEN];
    SpecRig cpu, gpu, host;
    if (!rig_init(&cpu, &g_tc, dir) || !rig_init(&gpu, &g_t, dir)) return;
    CHECK(gpu.sd.dev && !cpu.sd.dev);
    /* the GPU host-sampling path: the decoder made while the ops are hidden */
    size_t (*wsb)(Backend *, int, int) = g_be->sample_ws_bytes;
    g_be->sample_ws_bytes = NULL;
    bool hinit = rig_init(&host, &g_t, dir);
    g_be->sample_ws_bytes = wsb;
    if (!hinit) return;
    CHECK(!host.sd.dev);
    float thr = 0.3f;
    Rng r;
    rng_seed(&r, 5, 0);
    int same_g = 0, same_s = 0, rounds = 0, tau = 0;
    for (int c = 0; c < n_cases; c++) {
        int32_t prompt[40], a[CTX], b[CTX];
        int np = 1 + (int)(rng_next(&r) % 30), max_new = 8 + (int)(rng_next(&r) % 48), na = 0, nb = 0;
        random_prompt(&r, prompt, np);
        SpecParams p = greedy_params(max_new);
        if (c % 3 == 1) p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr, true};  /* per-slot confidence reads */
        if (c % 3 == 2) p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr, false}; /* one read per round */
        SpecStats st;
        CHECK_OK(spec_generate(&cpu.sd, prompt, np, &p, a, &na, &st, err), err);
        CHECK_OK(spec_generate(&gpu.sd, prompt, np, &p, b, &nb, &st, err), err);
        bool ok = na == nb && memcmp(a, b, sizeof(int32_t) * na) == 0;
        same_g += ok;
        CHECK_MSG(ok, "%s case %d (prompt %d, max %d, policy %d): GPU greedy tokens differ from the CPU's", dir, c, np, max_new, c % 3);
        rounds += st.rounds;
        tau += st.tau_sum;
        p.sampler = (SamplerParams){0.9f, c % 2 ? 0 : 40, c % 4 < 2 ? 1.0f : 0.9f};
        p.seed = 100 + (uint64_t)c;
        CHECK_OK(spec_generate(&host.sd, prompt, np, &p, a, &na, &st, err), err);
        CHECK_OK(spec_generate(&gpu.sd, prompt, np, &p, b, &nb, &st, err), err);
        same_s += na == nb && memcmp(a, b, sizeof(int32_t) * na) == 0;
    }
    printf("  %-26s greedy GPU == CPU %d/%d (%d rounds, tau %.2f); sampled device == host path %d/%d\n", dir, same_g, n_cases, rounds,
           rounds ? (double)tau / rounds : 0.0, same_s, n_cases);
    /* sampled: distributions equal up to float rounding, so a token may differ only where a
     * uniform falls within ~1e-7 of a boundary */
    CHECK(same_s >= n_cases - 1);
    rig_free(&cpu);
    rig_free(&gpu);
    rig_free(&host);
}

static void test_spec_gpu(void) {
    spec_compare("trained-draft", g_quick ? 3 : 12);
    if (g_quick) return;
    spec_compare("tiny-qwen3/draft-vanilla", 6);
    spec_compare("tiny-qwen3/draft-gated", 6);
    spec_compare("tiny-qwen3/draft-rnn", 6);
    spec_compare("tiny-qwen3/draft-dflash", 6);
    /* plain decoding through the same loop (k = 0 every round) */
    char err[DS_ERR_LEN];
    SpecDecoder a, b;
    CHECK_OK(spec_init(&a, &g_tc, NULL, CTX, 16, err), err);
    CHECK_OK(spec_init(&b, &g_t, NULL, CTX, 16, err), err);
    int32_t prompt[12] = {3, 14, 15, 92, 65, 35, 89, 79, 323, 84, 62, 64}, x[CTX], y[CTX];
    int nx = 0, ny = 0;
    SpecParams p = greedy_params(60);
    SpecStats st;
    CHECK_OK(spec_generate(&a, prompt, 12, &p, x, &nx, &st, err), err);
    CHECK_OK(spec_generate(&b, prompt, 12, &p, y, &ny, &st, err), err);
    CHECK(nx == ny && memcmp(x, y, sizeof(int32_t) * nx) == 0);
    spec_free(&a);
    spec_free(&b);
}

/* timing: sample_probs on the device vs sample_dist on the host plus the row's download */
static void test_timing(void) {
    const int V = 151936, n = 17, reps = 20;
    char err[DS_ERR_LEN];
    float *l = malloc(sizeof(float) * (size_t)n * V), *hp = malloc(sizeof(float) * V), *hq = malloc(sizeof(float) * V);
    for (size_t i = 0; i < (size_t)n * V; i++) l[i] = 3.0f * randn();
    float *dl = dev_alloc(sizeof(float) * (size_t)n * V), *dp = dev_alloc(sizeof(float) * (size_t)n * V);
    void *ws = dev_alloc(g_be->sample_ws_bytes(g_be, n, V));
    g_be->to_device(g_be, dl, l, sizeof(float) * (size_t)n * V);
    SampleScratch sc;
    CHECK_OK(sample_scratch_init(&sc, V, err), err);
    const SamplerParams sps[] = {{0.0f, 0, 1.0f}, {0.7f, 0, 1.0f}, {0.7f, 50, 1.0f}, {0.7f, 0, 0.9f}, {0.7f, 50, 0.9f}};
    for (size_t s = 0; s < sizeof sps / sizeof sps[0]; s++) {
        for (int rows = 1; rows <= n; rows += n - 1) {
            g_be->sample_probs(g_be, dp, dl, rows, V, sps[s].temperature, sps[s].top_k, sps[s].top_p, ws);
            g_be->synchronize(g_be);
            double t0 = ds_now();
            for (int r = 0; r < reps; r++) g_be->sample_probs(g_be, dp, dl, rows, V, sps[s].temperature, sps[s].top_k, sps[s].top_p, ws);
            g_be->synchronize(g_be);
            double tg = (ds_now() - t0) / reps;
            t0 = ds_now();
            for (int r = 0; r < reps; r++)
                for (int i = 0; i < rows; i++) {
                    g_be->to_host(g_be, hp, dl + (size_t)i * V, sizeof(float) * V);
                    sample_dist(&sps[s], hp, V, hq, &sc);
                }
            double th = (ds_now() - t0) / reps;
            printf("  V %d, %2d rows, T %.1f top-k %d top-p %.1f: device %.3f ms, host (download + sample_dist) %.3f ms\n", V, rows,
                   sps[s].temperature, sps[s].top_k, sps[s].top_p, tg * 1e3, th * 1e3);
        }
    }
    /* the sampling work of one speculative round, block 7 (DeepSpec's): 7 drafted slots
     * (distribution + draw) and 8 verify rows + verification, on the device (one read of the
     * result) vs on the host (each row downloaded, sample_dist, sample_from, verify_block) */
    {
        const int B = 7;
        int32_t *dtok = dev_alloc(sizeof(int32_t) * (B + 1)), *dres = dev_alloc(sizeof(int32_t) * (B + 2)), res[B + 2], drafts[B];
        float *dq = dev_alloc(sizeof(float) * (size_t)B * V), *hpt = malloc(sizeof(float) * (size_t)(B + 1) * V),
              *hqq = malloc(sizeof(float) * (size_t)B * V), *resid = malloc(sizeof(float) * V);
        double u[B + 1];
        for (int i = 0; i <= B; i++) u[i] = 0.5;
        for (size_t s = 1; s < sizeof sps / sizeof sps[0]; s += 3) {
            const SamplerParams *sp = &sps[s];
            double t0 = ds_now();
            for (int r = 0; r < reps; r++) {
                for (int j = 0; j < B; j++) {
                    g_be->sample_probs(g_be, dq + (size_t)j * V, dl + (size_t)j * V, 1, V, sp->temperature, sp->top_k, sp->top_p, ws);
                    g_be->draw(g_be, dtok + 1 + j, dq + (size_t)j * V, V, 0.3);
                }
                g_be->sample_probs(g_be, dp, dl, B + 1, V, sp->temperature, sp->top_k, sp->top_p, ws);
                g_be->verify(g_be, dres, dp, dq, dtok + 1, B, V, false, u, 0, NULL);
                g_be->to_host(g_be, res, dres, sizeof res);
            }
            double td = (ds_now() - t0) / reps;
            t0 = ds_now();
            for (int r = 0; r < reps; r++) {
                for (int j = 0; j < B; j++) {
                    g_be->to_host(g_be, hp, dl + (size_t)j * V, sizeof(float) * V);
                    sample_dist(sp, hp, V, hqq + (size_t)j * V, &sc);
                    drafts[j] = sample_from(hqq + (size_t)j * V, V, 0.3);
                }
                g_be->to_host(g_be, hpt, dl, sizeof(float) * (size_t)(B + 1) * V);
                for (int j = 0; j <= B; j++) sample_dist(sp, hpt + (size_t)j * V, V, hpt + (size_t)j * V, &sc);
                Rng rr;
                rng_seed(&rr, 1, 0);
                verify_block(hpt, hqq, drafts, B, V, false, &rr, resid, VERIFY_EXACT, NULL);
            }
            double th = (ds_now() - t0) / reps;
            printf("  one round's sampling (block %d, V %d, T %.1f top-k %d top-p %.1f): device %.3f ms, host %.3f ms\n", B, V,
                   sp->temperature, sp->top_k, sp->top_p, td * 1e3, th * 1e3);
        }
        g_be->free(g_be, dtok); g_be->free(g_be, dres); g_be->free(g_be, dq);
        free(hpt); free(hqq); free(resid);
    }
    int32_t *dout = dev_alloc(16);
    g_be->synchronize(g_be);
    double t0 = ds_now();
    for (int r = 0; r < reps; r++) g_be->draw(g_be, dout, dp, V, 0.5);
    g_be->synchronize(g_be);
    printf("  draw over V %d: %.3f ms\n", V, (ds_now() - t0) / reps * 1e3);
    g_be->free(g_be, dout);
    g_be->free(g_be, dl); g_be->free(g_be, dp); g_be->free(g_be, ws);
    sample_scratch_free(&sc);
    free(l); free(hp); free(hq);
}

int main(void) {
    char err[DS_ERR_LEN] = "";
    const char *req = getenv("DSPARK_REQUIRE_CUDA");
    bool require = req && strcmp(req, "1") == 0;
    (void)spec_testing_load; /* spec_testing.h's CPU loader: this test loads the target on the GPU */
    (void)plain_greedy;
    if (backend_create("cuda", 1, &g_be, err) != DS_OK) {
        printf("%s: %s\n", require ? "FAIL (DSPARK_REQUIRE_CUDA=1)" : "SKIP", err);
        return require ? 1 : 77;
    }
#ifdef DSPARK_HAVE_CUDA
    printf("device: %s\n", backend_cuda_info(g_be));
#endif
    if (!g_be->sample_probs || !g_be->draw || !g_be->verify || !g_be->sample_ws_bytes) {
        printf("FAIL: the CUDA backend has no sampling ops\n");
        return 1;
    }
    g_cpu = backend_cpu_create(1);
    rng_seed(&g_rng, 2026, 8);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *quick = getenv("DSPARK_TEST_QUICK");
    g_quick = quick && strcmp(quick, "1") == 0;
    RUN(test_sample_probs);
    RUN(test_draw);
    RUN(test_verify_cases);
    RUN(test_verify_law);
    if (qwen3_load(&g_t, test_data("tiny-qwen3/target"), g_be, err) || qwen3_load(&g_tc, test_data("tiny-qwen3/target"), g_cpu, err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    RUN(test_spec_gpu);
    if (!g_quick) {
        RUN(test_timing);
        RUN(test_chi_square_gpu);
    }
    qwen3_free(&g_tc);
    g_cpu->destroy(g_cpu);
    spec_testing_free();
    return test_summary();
}
