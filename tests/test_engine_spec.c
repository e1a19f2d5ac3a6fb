/* test_engine_spec.c - speculative decoding inside the continuously batched engine: many
 * requests drafted, scheduled and verified in ONE flattened target forward per step.
 * Greedy: every request's tokens equal plain greedy decoding alone. Sampling: every request's
 * tokens equal spec_generate of the same request alone (same seed, same proposal source),
 * so batching changes nothing. With a real DSpark drafter and with scheduler policies that
 * verify fewer drafts (fixed 1, none), and with the draft bypass skipping most drafting rounds.
 * ctest: labels=unit;spec */
#include "engine.h"
#include "spec_testing.h"

#define NR 5
#define MAXNEW 24

typedef struct { int32_t out[64]; int n; int finished; } Sink;
static bool on_tok(void *u, int32_t t, bool s) { Sink *k = u; (void)s; if (k->n < 64) k->out[k->n++] = t; return true; }
static void on_fin(void *u, FinishReason r) { Sink *k = u; (void)r; k->finished++; }

static int32_t g_prompts[NR][40];
static double g_bypass_s;   /* EngineConfig.bypass_draft_s of run_engine (0: off) */
static int g_probe_every;
static double flat_sps(void *ctx, int tokens) { (void)ctx; (void)tokens; return 1000.0; }
static int g_plen[NR];

static void make_prompts(void) {
    Rng r;
    rng_seed(&r, 77, 1);
    for (int i = 0; i < NR; i++) { g_plen[i] = 3 + 7 * i; random_prompt(&r, g_prompts[i], g_plen[i]); }
}

/* run all NR requests through an engine with the given sources / scheduler */
static void run_engine(ProposalSource **srcs, int n_slots, EngineScheduler sched, float temp, Sink *sink, EngineStats *stats) {
    char err[DS_ERR_LEN];
    Engine e;
    EngineConfig cfg = {.n_slots = n_slots, .max_ctx = CTX - 16, .max_batch_tokens = 40, .sources = srcs, .sched = sched,
                        .bypass_draft_s = g_bypass_s, .bypass_probe_every = g_probe_every,
                        .sps = {flat_sps, NULL}};
    CHECK_OK(engine_init(&e, &g_t, &cfg, err), err);
    EngineRequest req[NR];
    for (int i = 0; i < NR; i++) {
        memset(&req[i], 0, sizeof req[i]);
        memset(&sink[i], 0, sizeof sink[i]);
        req[i] = (EngineRequest){.prompt = g_prompts[i], .n_prompt = g_plen[i], .max_new = MAXNEW, .sampler = {temp, 0, 1.0f},
                                 .seed = 500 + i, .on_token = on_tok, .on_finish = on_fin, .user = &sink[i]};
        CHECK_OK(engine_submit(&e, &req[i], err), err);
    }
    for (int guard = 0; guard < 2000; guard++) {
        int done = 1;
        for (int i = 0; i < NR; i++) done &= sink[i].finished == 1;
        if (done) break;
        CHECK(engine_step(&e, err) >= 0);
    }
    for (int i = 0; i < NR; i++) CHECK(sink[i].finished == 1);
    if (stats) *stats = engine_stats(&e);
    engine_free(&e);
}

static void verify_one(void *ctx, int n_req, const float *const *conf, const int *n_drafted, int *len) {
    (void)conf;
    int cap = *(int *)ctx;
    for (int i = 0; i < n_req; i++) len[i] = n_drafted[i] < cap ? n_drafted[i] : cap;
}

static void test_greedy_noisy(void) {
    NoisySource ns[NR];
    ProposalSource *srcs[NR];
    for (int i = 0; i < NR; i++) { ns_init(&ns[i], 4, 0.3f, 3.0f, 100 + i); srcs[i] = &ns[i].src; }
    Sink sink[NR];
    EngineStats st;
    int caps[3] = {99, 1, 0};
    for (int c = 0; c < 3; c++) {
        EngineScheduler sched = {c ? verify_one : NULL, &caps[c]};
        run_engine(srcs, 3, sched, 0.0f, sink, &st); /* 3 slots for 5 requests: some wait */
        for (int i = 0; i < NR; i++) {
            int32_t ref[64];
            int n = plain_greedy(g_prompts[i], g_plen[i], MAXNEW, NULL, 0, ref);
            CHECK_MSG(n == sink[i].n && memcmp(ref, sink[i].out, sizeof(int32_t) * n) == 0, "request %d (cap %d): engine spec != plain greedy", i, caps[c]);
        }
        double tau = (double)st.tokens_generated / (double)(st.rounds ? st.rounds : 1);
        if (c == 0) CHECK_MSG(st.drafts_verified > 0 && tau > 1.3, "no real acceptance: tau %.2f", tau);
        if (c == 2) CHECK(st.drafts_verified == 0);
        fprintf(stderr, "  cap %d: tau %.2f (tokens %llu, rounds %llu, drafts verified %llu)\n", caps[c], tau,
                (unsigned long long)st.tokens_generated, (unsigned long long)st.rounds, (unsigned long long)st.drafts_verified);
    }
    for (int i = 0; i < NR; i++) ns_free(&ns[i]);
}

static void test_sampled_equals_alone(void) {
    char err[DS_ERR_LEN];
    NoisySource ns[NR];
    ProposalSource *srcs[NR];
    for (int i = 0; i < NR; i++) { ns_init(&ns[i], 4, 0.3f, 3.0f, 200 + i); srcs[i] = &ns[i].src; }
    Sink sink[NR];
    run_engine(srcs, NR, (EngineScheduler){0}, 0.8f, sink, NULL);
    for (int i = 0; i < NR; i++) ns_free(&ns[i]);
    for (int i = 0; i < NR; i++) {
        NoisySource one;
        ns_init(&one, 4, 0.3f, 3.0f, 200 + i);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &one.src, CTX - 16, 32, err), err);
        SpecParams p = {.sampler = {0.8f, 0, 1.0f}, .seed = 500 + i, .max_new = MAXNEW};
        int32_t out[64];
        int n = 0;
        SpecStats stats = {0};
        CHECK_OK(spec_generate(&sd, g_prompts[i], g_plen[i], &p, out, &n, &stats, err), err);
        CHECK_MSG(n == sink[i].n && memcmp(out, sink[i].out, sizeof(int32_t) * n) == 0, "request %d: batched sampled tokens differ from alone", i);
        spec_free(&sd);
        ns_free(&one);
    }
}

static void test_real_drafter(void) {
    char err[DS_ERR_LEN];
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("tiny-qwen3/draft-gated"), &g_t, g_be, err), err);
    DrafterSource ds[3];
    ProposalSource *srcs[3];
    for (int i = 0; i < 3; i++) { CHECK_OK(spec_drafter_source_init(&ds[i], &d, CTX, 40, err), err); srcs[i] = &ds[i].src; }
    Sink sink[NR];
    EngineStats st;
    run_engine(srcs, 3, (EngineScheduler){0}, 0.0f, sink, &st);
    for (int i = 0; i < NR; i++) {
        int32_t ref[64];
        int n = plain_greedy(g_prompts[i], g_plen[i], MAXNEW, NULL, 0, ref);
        CHECK_MSG(n == sink[i].n && memcmp(ref, sink[i].out, sizeof(int32_t) * n) == 0, "request %d: drafter engine != plain greedy", i);
    }
    CHECK(st.drafts_verified > 0);
    for (int i = 0; i < 3; i++) spec_drafter_source_free(&ds[i]);
    drafter_free(&d);
}

/* Draft bypass: with drafting priced absurdly high every request skips drafting except on
 * the periodic re-probes; greedy outputs still equal plain greedy, bypassed rounds are
 * counted, and the probes still draft and get drafts accepted, which needs the drafter's
 * context to have been fed through the bypassed rounds (DrafterSource refuses to draft
 * when its cache does not end at the anchor). */
static void test_bypass_lossless(void) {
    char err[DS_ERR_LEN];
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("trained-draft"), &g_t, g_be, err), err);
    DrafterSource ds[3];
    ProposalSource *srcs[3];
    for (int i = 0; i < 3; i++) { CHECK_OK(spec_drafter_source_init(&ds[i], &d, CTX, 40, err), err); srcs[i] = &ds[i].src; }
    Sink sink[NR];
    EngineStats st_off, st_on;
    run_engine(srcs, 3, (EngineScheduler){0}, 0.0f, sink, &st_off);
    g_bypass_s = 1e9;
    g_probe_every = 3;
    run_engine(srcs, 3, (EngineScheduler){0}, 0.0f, sink, &st_on);
    g_bypass_s = 0;
    g_probe_every = 0;
    for (int i = 0; i < NR; i++) {
        int32_t ref[64];
        int n = plain_greedy(g_prompts[i], g_plen[i], MAXNEW, NULL, 0, ref);
        CHECK_MSG(n == sink[i].n && memcmp(ref, sink[i].out, sizeof(int32_t) * n) == 0, "request %d: bypassed engine != plain greedy", i);
    }
    uint64_t drafted = st_on.rounds - st_on.rounds_bypassed;
    fprintf(stderr, "  no bypass: %llu rounds, %llu drafts verified; bypass: %llu rounds, %llu bypassed, %llu drafted, %llu drafts verified\n",
            (unsigned long long)st_off.rounds, (unsigned long long)st_off.drafts_verified, (unsigned long long)st_on.rounds,
            (unsigned long long)st_on.rounds_bypassed, (unsigned long long)drafted, (unsigned long long)st_on.drafts_verified);
    CHECK(st_off.rounds_bypassed == 0);
    CHECK_MSG(st_on.rounds_bypassed > 0 && drafted > 0 && st_on.rounds_bypassed >= 2 * drafted,
              "expected mostly bypassed rounds with periodic probes: %llu bypassed, %llu drafted",
              (unsigned long long)st_on.rounds_bypassed, (unsigned long long)drafted);
    CHECK_MSG(st_on.drafts_verified > 0 && st_on.tokens_generated > st_on.rounds + NR, "probes after bypassed rounds accepted no drafts");
    for (int i = 0; i < 3; i++) spec_drafter_source_free(&ds[i]);
    drafter_free(&d);
}

int main(void) {
    spec_testing_load();
    make_prompts();
    RUN(test_greedy_noisy);
    RUN(test_sampled_equals_alone);
    RUN(test_real_drafter);
    RUN(test_bypass_lossless);
    spec_testing_free();
    return test_summary();
}
