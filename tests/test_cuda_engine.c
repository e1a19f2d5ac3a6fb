/* test_cuda_engine.c - the batched engine (engine.c) on the CUDA backend's sampling path:
 * verify logits, q, pt and drafts stay on the GPU and the host reads one result buffer per
 * step. Against the same engine on the same GPU with host sampling (EngineConfig.host_sampling)
 * and against the CPU engine:
 *   - plain decoding (no drafter), the DSpark drafters (device slots), a mix of device sources,
 *     host-logit test sources and sources that never draft in one engine, a scheduler that
 *     verifies fewer drafts (the confidences read back), the draft bypass; fewer slots than
 *     requests and a small token budget, so requests are at different stages in one step;
 *     greedy and sampled requests (temperature, top-k, top-p, several seeds) mixed;
 *   - greedy: device path == host path == the CPU engine, token for token;
 *   - sampled: device path == host path per request (the same uniforms in the same order; the
 *     distributions agree up to float rounding of the softmax sums, so at most one request per
 *     run may differ, where a uniform falls within ~1e-7 of a boundary);
 *   - at most one device-to-host read per step with device sources (none per slot);
 *   - must fail: the device run with every request's uniform stream shifted by one is caught.
 * Without a GPU it prints why and exits 77 (ctest SKIP); DSPARK_REQUIRE_CUDA=1 makes that a
 * failure. DSPARK_TEST_FAKE_DEVICE=1 runs everything on the CPU backend with the sampling ops
 * emulated by sample.c / verify.c's arithmetic (bitwise: sampled runs must match exactly too),
 * which checks the engine's bookkeeping without a GPU (the unit test test_cuda_engine_fake).
 * ctest: labels=cuda timeout=300 */
#include "engine.h"
#include "spec_testing.h"

#define NR 6
#define MAXNEW 24

static Backend *g_cpu;      /* the CPU reference backend (no sampling ops) */
static Qwen3Model g_tc;     /* the target on it; g_t / g_be (spec_testing.h): the target on the GPU */
static bool g_fake;         /* DSPARK_TEST_FAKE_DEVICE=1 */

/* ---- counting the device-to-host reads ---- */
static void (*g_to_host_real)(Backend *, void *, const void *, size_t);
static long g_reads;
static void counting_to_host(Backend *be, void *dst, const void *src, size_t bytes) {
    g_reads++;
    g_to_host_real(be, dst, src, bytes);
}

/* ---- the fake device: backend.h's sampling ops on host memory, sample.c / verify.c's arithmetic ---- */
static SampleScratch g_fsc;
static float *g_fresid;
static size_t fk_ws_bytes(Backend *be, int n, int vocab) { (void)be; (void)n; (void)vocab; return 16; }
static void fk_probs(Backend *be, float *probs, const float *logits, int n, int V, float t, int k, float p, void *ws) {
    (void)be; (void)ws;
    SamplerParams sp = {t, k, p};
    for (int i = 0; i < n; i++) sample_dist(&sp, logits + (size_t)i * V, V, probs + (size_t)i * V, &g_fsc);
}
static void fk_draw(Backend *be, int32_t *out, const float *probs, int V, double u) { (void)be; *out = sample_from(probs, V, u); }
/* verify_block with the uniforms given (u[j]: the test of draft j, u[a + 1]: the residual's draw) */
static void fk_verify(Backend *be, int32_t *out, const float *pt, const float *q, const int32_t *drafts, int k, int V, bool greedy,
                      const double *u, int bug, const float *q_ratio) {
    (void)be; (void)bug; (void)q_ratio;
    int a = 0;
    int32_t next;
    if (greedy) {
        while (a < k && pt[(size_t)a * V + drafts[a]] > 0.5f) a++;
        next = argmax_f32(pt + (size_t)a * V, V);
    } else {
        bool rej = false;
        for (; a < k; a++) {
            float qx = q[(size_t)a * V + drafts[a]];
            if (!(u[a] * (double)(qx > 1e-8f ? qx : 1e-8f) < (double)pt[(size_t)a * V + drafts[a]])) { rej = true; break; }
        }
        const float *p = pt + (size_t)a * V, *qa = q ? q + (size_t)a * V : NULL;
        if (!rej) next = sample_from(p, V, u[k]);
        else {
            double mass = 0;
            for (int i = 0; i < V; i++) {
                float d = p[i] - qa[i];
                g_fresid[i] = d > 0 ? d : 0.0f;
                mass += g_fresid[i];
            }
            next = mass <= 1e-8 ? sample_from(p, V, u[a + 1]) : sample_from(g_fresid, V, u[a + 1] * mass);
        }
    }
    out[0] = a;
    out[1] = next;
    for (int j = 0; j < k; j++) out[2 + j] = drafts[j];
}

/* ---- a source that never drafts (its requests decode plainly beside drafted ones) ---- */
typedef struct { ProposalSource src; } NullSource;
static void null_reset(void *self) { (void)self; }
static ds_status null_context(void *self, const float *f, int n, int pos0, char *err) { (void)self; (void)f; (void)n; (void)pos0; (void)err; return DS_OK; }
static ds_status null_begin(void *self, const int32_t *t, int start, int *n_slots, char *err) {
    (void)self; (void)t; (void)start; (void)err;
    *n_slots = 0;
    return DS_OK;
}
static ds_status null_slot(void *self, int j, int32_t prev, const float **logits, float *conf, char *err) {
    (void)self; (void)j; (void)prev; (void)logits; (void)conf;
    return ds_err(err, DS_EARG, "null source: no slots");
}
static void null_init(NullSource *ns, const ProposalSource *like) {
    ns->src = (ProposalSource){.block_size = like->block_size, .feature_layers = like->feature_layers,
                               .n_feature_layers = like->n_feature_layers, .self = ns, .reset = null_reset,
                               .context = null_context, .begin = null_begin, .slot = null_slot};
}

/* ---- running the engine ---- */
typedef struct { int32_t out[64]; int n; int finished; } Sink;
static bool on_tok(void *u, int32_t t, bool s) { Sink *k = u; (void)s; if (k->n < 64) k->out[k->n++] = t; return true; }
static void on_fin(void *u, FinishReason r) { Sink *k = u; (void)r; k->finished++; }

static int32_t g_prompts[NR][48];
static int g_plen[NR];
/* a mix per request: greedy, temperature, top-k, top-p, both */
static const SamplerParams g_sps[NR] = {{0.0f, 0, 1.0f}, {0.8f, 0, 1.0f}, {0.9f, 20, 1.0f}, {1.0f, 0, 0.9f}, {0.0f, 0, 1.0f}, {0.7f, 40, 0.95f}};
static double flat_sps(void *ctx, int tokens) { (void)ctx; (void)tokens; return 1000.0; }

typedef struct {
    int n_slots, batch_tokens;
    ProposalSource **srcs;
    EngineScheduler sched;
    double bypass_s;
    uint64_t seed0;
    void (*before)(void);     /* called before each run (re-seeds the test sources' noise) */
} Setup;

typedef struct {
    Sink sink[NR];
    bool dev;                 /* the engine took the device path */
    long max_reads, steps;    /* device-to-host reads in the worst step; steps */
    EngineStats st;
} Run;

/* all NR requests through one engine on model m; shift: skip that many uniforms of every
 * request's stream after submit (the must-fail case) */
static void run_engine(Qwen3Model *m, const Setup *su, bool host_sampling, int shift, Run *out) {
    char err[DS_ERR_LEN];
    Engine e;
    EngineConfig cfg = {.n_slots = su->n_slots, .max_ctx = CTX - 16, .max_batch_tokens = su->batch_tokens, .sources = su->srcs,
                        .sched = su->sched, .bypass_draft_s = su->bypass_s, .bypass_probe_every = 3, .sps = {flat_sps, NULL},
                        .host_sampling = host_sampling};
    memset(out, 0, sizeof *out);
    if (su->before) su->before();
    CHECK_OK(engine_init(&e, m, &cfg, err), err);
    out->dev = e.dev;
    EngineRequest req[NR];
    for (int i = 0; i < NR; i++) {
        memset(&req[i], 0, sizeof req[i]);
        req[i] = (EngineRequest){.prompt = g_prompts[i], .n_prompt = g_plen[i], .max_new = MAXNEW, .sampler = g_sps[i],
                                 .seed = su->seed0 + (uint64_t)i, .on_token = on_tok, .on_finish = on_fin, .user = &out->sink[i]};
        CHECK_OK(engine_submit(&e, &req[i], err), err);
        for (int k = 0; k < shift; k++) rng_uniform(&req[i].rng);
    }
    uint64_t allocs = 0;
    for (int guard = 0; guard < 2000; guard++) {
        int done = 1;
        for (int i = 0; i < NR; i++) done &= out->sink[i].finished == 1;
        if (done) break;
        long r0 = g_reads;
        CHECK(engine_step(&e, err) >= 0);
        if (g_reads - r0 > out->max_reads) out->max_reads = g_reads - r0;
        if (out->steps++ == 0) allocs = ds_alloc_count();
    }
    /* (plain runs only: a drafter allocates lazily on its first block, outside the engine) */
    if (g_fake && !su->srcs) CHECK_MSG(ds_alloc_count() == allocs, "engine steps allocated %llu times (%s path, %s)", (unsigned long long)(ds_alloc_count() - allocs), host_sampling ? "host" : "device", m == &g_tc ? "cpu" : "fake device");
    for (int i = 0; i < NR; i++) CHECK(out->sink[i].finished == 1);
    out->st = engine_stats(&e);
    engine_free(&e);
}

static bool same_tokens(const Sink *a, const Sink *b) { return a->n == b->n && memcmp(a->out, b->out, sizeof(int32_t) * (size_t)a->n) == 0; }

/* device path vs host path on the GPU (and greedy vs the CPU engine when cpu_su is given);
 * returns the number of sampled requests whose tokens differ between device and host */
static int compare(const char *name, const Setup *su, const Setup *cpu_su, bool count_reads) {
    static Run dev, host, cpu;
    run_engine(&g_t, su, false, 0, &dev);
    run_engine(&g_t, su, true, 0, &host);
    CHECK_MSG(dev.dev && !host.dev, "%s: device path %d, host path %d (want 1, 0)", name, dev.dev, host.dev);
    if (cpu_su) run_engine(&g_tc, cpu_su, false, 0, &cpu);
    int greedy = 0, diff = 0, tokens = 0;
    for (int i = 0; i < NR; i++) {
        tokens += dev.sink[i].n;
        if (sampler_is_greedy(&g_sps[i])) {
            greedy++;
            CHECK_MSG(same_tokens(&dev.sink[i], &host.sink[i]), "%s: request %d (greedy): device path tokens differ from the host path's", name, i);
            if (cpu_su) CHECK_MSG(same_tokens(&dev.sink[i], &cpu.sink[i]), "%s: request %d (greedy): GPU engine tokens differ from the CPU engine's", name, i);
        } else diff += !same_tokens(&dev.sink[i], &host.sink[i]);
    }
    if (count_reads) CHECK_MSG(dev.max_reads <= 1, "%s: %ld device-to-host reads in one step (want <= 1)", name, dev.max_reads);
    double tau = (double)dev.st.tokens_generated / (double)(dev.st.rounds ? dev.st.rounds : 1);
    printf("  %-34s %d tokens, %ld steps, tau %.2f, %llu bypassed; greedy %d/%d equal%s; sampled device != host: %d/%d; reads/step <= %ld (host path %ld)\n",
           name, tokens, dev.steps, tau, (unsigned long long)dev.st.rounds_bypassed, greedy, greedy, cpu_su ? " (and == CPU)" : "", diff,
           NR - greedy, dev.max_reads, host.max_reads);
    CHECK_MSG(diff <= (g_fake ? 0 : 1), "%s: %d sampled requests differ between the device and host paths (allowed %d)", name, diff, g_fake ? 0 : 1);
    return diff;
}

static void make_prompts(void) {
    Rng r;
    rng_seed(&r, 77, 1);
    for (int i = 0; i < NR; i++) { g_plen[i] = 3 + 7 * i; random_prompt(&r, g_prompts[i], g_plen[i]); } /* 3 .. 38 tokens */
}

static void test_plain(void) {
    for (int k = 0; k < 3; k++) {
        Setup su = {.n_slots = 3, .batch_tokens = 16, .seed0 = 1000 + 100 * (uint64_t)k}; /* prompts split across steps */
        char name[64];
        snprintf(name, sizeof name, "plain, seeds %llu..", (unsigned long long)su.seed0);
        compare(name, &su, k == 0 ? &su : NULL, true);
    }
}

/* must fail: every request's stream shifted by one uniform on the device path */
static void test_shifted_stream_caught(void) {
    static Run dev, host;
    Setup su = {.n_slots = 3, .batch_tokens = 16, .seed0 = 1000};
    run_engine(&g_t, &su, false, 1, &dev);
    run_engine(&g_t, &su, true, 0, &host);
    int sampled = 0, diff = 0;
    for (int i = 0; i < NR; i++) {
        if (sampler_is_greedy(&g_sps[i])) continue;
        sampled++;
        diff += !same_tokens(&dev.sink[i], &host.sink[i]);
    }
    printf("  must fail: streams shifted by one uniform: %d/%d sampled requests differ\n", diff, sampled);
    CHECK_MSG(diff >= sampled - 1, "a shifted uniform stream went unnoticed in %d of %d sampled requests", sampled - diff, sampled);
}

static void test_drafters(void) {
    char err[DS_ERR_LEN];
    /* the trained drafter (real acceptance) in two slots, a source that never drafts in the third */
    Drafter d, dc;
    CHECK_OK(drafter_load(&d, test_data("trained-draft"), &g_t, g_be, err), err);
    CHECK_OK(drafter_load(&dc, test_data("trained-draft"), &g_tc, g_cpu, err), err);
    DrafterSource ds[3], dsc[3];
    NullSource nul, nulc;
    ProposalSource *srcs[3], *srcc[3];
    for (int i = 0; i < 2; i++) {
        CHECK_OK(spec_drafter_source_init(&ds[i], &d, CTX, 40, err), err);
        CHECK_OK(spec_drafter_source_init(&dsc[i], &dc, CTX, 40, err), err);
        srcs[i] = &ds[i].src;
        srcc[i] = &dsc[i].src;
    }
    null_init(&nul, srcs[0]);
    null_init(&nulc, srcc[0]);
    srcs[2] = &nul.src;
    srcc[2] = &nulc.src;
    for (int k = 0; k < 2; k++) {
        Setup su = {.n_slots = 3, .batch_tokens = k ? 40 : 24, .srcs = srcs, .seed0 = 500 + 50 * (uint64_t)k}, cs = su;
        cs.srcs = srcc;
        char name[64];
        snprintf(name, sizeof name, "trained drafter x2 + none, T %d", su.batch_tokens);
        compare(name, &su, &cs, true);
    }
    /* the draft bypass: the gain reads the confidences back (one more read per step) */
    Setup by = {.n_slots = 3, .batch_tokens = 40, .srcs = srcs, .bypass_s = 1e9, .seed0 = 700}, byc = by;
    byc.srcs = srcc;
    compare("trained drafter, bypass", &by, &byc, false);
    for (int i = 0; i < 2; i++) { spec_drafter_source_free(&ds[i]); spec_drafter_source_free(&dsc[i]); }
    drafter_free(&d);
    drafter_free(&dc);
}

static void verify_two(void *ctx, int n_req, const float *const *conf, const int *n_drafted, int *len) {
    (void)ctx;
    for (int i = 0; i < n_req; i++) len[i] = n_drafted[i] < 2 ? n_drafted[i] : 2 + (conf[i][0] > 0); /* reads the confidences */
    for (int i = 0; i < n_req; i++) if (len[i] > n_drafted[i]) len[i] = n_drafted[i];
}

static NoisySource g_ns[2];
static void reseed_noise(void) { for (int i = 0; i < 2; i++) rng_seed(&g_ns[i].rng, 300 + (uint64_t)i, 99); }

static void test_mixed_sources(void) {
    char err[DS_ERR_LEN];
    NoisySource *ns = g_ns;
    /* device sources (gated drafter, block 4, confidence head) and host-logit test sources in one engine */
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("tiny-qwen3/draft-gated"), &g_t, g_be, err), err);
    DrafterSource ds[2];
    ProposalSource *srcs[4];
    for (int i = 0; i < 2; i++) {
        CHECK_OK(spec_drafter_source_init(&ds[i], &d, CTX, 40, err), err);
        ns_init(&ns[i], 4, 0.3f, 3.0f, 300 + (uint64_t)i);
        ns[i].src.feature_layers = d.cfg.target_layer_ids; /* the engine wants one feature set; the test source ignores it */
        ns[i].src.n_feature_layers = d.cfg.n_target_layers;
    }
    srcs[0] = &ds[0].src;
    srcs[1] = &ns[0].src;
    srcs[2] = &ns[1].src;
    srcs[3] = &ds[1].src;
    Setup su = {.n_slots = 4, .batch_tokens = 24, .srcs = srcs, .seed0 = 900, .before = reseed_noise};
    compare("gated drafter x2 + noisy x2", &su, NULL, false);
    su.sched = (EngineScheduler){verify_two, NULL};
    su.seed0 = 950;
    compare("the same, scheduler (confidences)", &su, NULL, false);
    for (int i = 0; i < 2; i++) { spec_drafter_source_free(&ds[i]); ns_free(&ns[i]); }
    drafter_free(&d);
}

static void test_env_switch(void) {
    char err[DS_ERR_LEN];
    Engine e;
    EngineConfig cfg = {.n_slots = 1, .max_ctx = 32, .max_batch_tokens = 8};
    setenv("DSPARK_ENGINE_HOST_SAMPLING", "1", 1);
    CHECK_OK(engine_init(&e, &g_t, &cfg, err), err);
    CHECK(!e.dev);
    engine_free(&e);
    unsetenv("DSPARK_ENGINE_HOST_SAMPLING");
    CHECK_OK(engine_init(&e, &g_t, &cfg, err), err);
    CHECK(e.dev);
    engine_free(&e);
}

int main(void) {
    char err[DS_ERR_LEN] = "";
    const char *req = getenv("DSPARK_REQUIRE_CUDA"), *fake = getenv("DSPARK_TEST_FAKE_DEVICE");
    bool require = req && strcmp(req, "1") == 0;
    g_fake = fake && strcmp(fake, "1") == 0;
    (void)spec_testing_load; /* spec_testing.h's CPU loader: this test loads the target on the GPU */
    (void)plain_greedy;
    (void)greedy_params;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (g_fake) {
        g_be = backend_cpu_create(1);
        CHECK_OK(sample_scratch_init(&g_fsc, 512, err), err);
        g_fresid = malloc(sizeof(float) * 512);
        g_be->sample_ws_bytes = fk_ws_bytes;
        g_be->sample_probs = fk_probs;
        g_be->draw = fk_draw;
        g_be->verify = fk_verify;
        printf("device: the CPU backend with emulated sampling ops (DSPARK_TEST_FAKE_DEVICE=1)\n");
    } else if (backend_create("cuda", 1, &g_be, err) != DS_OK) {
        printf("%s: %s\n", require ? "FAIL (DSPARK_REQUIRE_CUDA=1)" : "SKIP", err);
        return require ? 1 : 77;
    }
    if (!g_be->sample_probs || !g_be->draw || !g_be->verify || !g_be->sample_ws_bytes) {
        printf("FAIL: the backend has no sampling ops\n");
        return 1;
    }
    g_to_host_real = g_be->to_host;
    g_be->to_host = counting_to_host;
    g_cpu = backend_cpu_create(1);
    if (qwen3_load(&g_t, test_data("tiny-qwen3/target"), g_be, err) || qwen3_load(&g_tc, test_data("tiny-qwen3/target"), g_cpu, err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (g_fake && g_t.cfg.vocab_size > 512) { fprintf(stderr, "fake device: vocab %d > 512\n", g_t.cfg.vocab_size); return 2; }
    make_prompts();
    double t0 = ds_now();
    RUN(test_env_switch);
    RUN(test_plain);
    RUN(test_shifted_stream_caught);
    RUN(test_drafters);
    RUN(test_mixed_sources);
    printf("  %.1f s\n", ds_now() - t0);
    qwen3_free(&g_tc);
    g_cpu->destroy(g_cpu);
    g_be->to_host = g_to_host_real;
    spec_testing_free();
    if (g_fake) { sample_scratch_free(&g_fsc); free(g_fresid); }
    return test_summary();
}
