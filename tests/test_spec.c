/* test_spec.c - speculative decoding is lossless (issue 3 item 6), on the tiny fixture target.
 *
 * The random fixture drafters almost never get a token accepted, so most tests use a
 * test-only ProposalSource: the target's own logits (computed by a second target state), each
 * slot corrupted with probability `rate` by adding N(0, sigma^2) noise to every logit. rate 0
 * drafts exactly the target (full-block acceptance), rate 1 is mostly rejected, in between
 * gives all three kinds of rounds.
 *   - greedy speculative output == plain greedy output (an independent token-by-token loop)
 *     over many prompts, lengths, block sizes and corruption rates, and with the real drafters;
 *   - chi-square test: the joint law of the first 3 generated tokens under sampled speculative
 *     decoding equals the target's (enumerated exactly), and the same test rejects two
 *     deliberately broken verifiers (bf16 draft probabilities in the ratio; correction drawn
 *     from p_t instead of the residual), so it has power;
 *   - edge cases: stop token inside an accepted block, max tokens mid-block, context longer
 *     than the drafter's cache, block size 1, the confidence-threshold policy;
 *   - spec_generate allocates nothing.
 * ctest: labels=unit;spec timeout=600 */
#include <math.h>

#include "spec.h"
#include "test.h"

#define CTX 160

static Qwen3Model g_t;
static Backend *g_be;

/* ---- the test-only proposal source ---- */
typedef struct {
    Qwen3State st;      /* its own target state and KV cache */
    int cache_len;      /* committed positions in st's cache */
    int start;
    int block;
    float rate, sigma;
    float sharpen;      /* corrupted slots: sharpen * logits + N(0, sigma^2) noise */
    float offset;       /* added to every logit: softmax-invariant in float32, but real LLM
                           logits are 20-40 in size, where bf16 spacing is 0.125-0.25 */
    Rng rng;
    float *logits;      /* [V] */
    ProposalSource src;
} NoisySource;

static void ns_reset(void *self) { NoisySource *ns = self; ns->cache_len = 0; }
static ds_status ns_context(void *self, const float *f, int n, int pos0, char *err) { (void)self; (void)f; (void)n; (void)pos0; (void)err; return DS_OK; }

static ds_status ns_forward(NoisySource *ns, const int32_t *tok, int n, int pos0, char *err) {
    int32_t pos[CTX], row = n - 1;
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = &row, .n_logits = 1};
    return qwen3_forward(&g_t, &ns->st, &b, err);
}

static double gauss(Rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

static void ns_noise(NoisySource *ns) {
    int V = g_t.cfg.vocab_size;
    bool corrupt = rng_uniform(&ns->rng) < ns->rate;
    for (int i = 0; i < V; i++) {
        float l = ns->st.logits_host[i];
        if (corrupt) l = ns->sharpen * l + (float)(ns->sigma * gauss(&ns->rng));
        ns->logits[i] = l + ns->offset;
    }
}

static ds_status ns_begin(void *self, const int32_t *tokens, int start, int *n_slots, char *err) {
    NoisySource *ns = self;
    ds_status rc = ns_forward(ns, tokens + ns->cache_len, start + 1 - ns->cache_len, ns->cache_len, err);
    if (rc) return rc;
    ns->cache_len = start + 1;
    ns->start = start;
    *n_slots = start + 1 + ns->block <= CTX ? ns->block : 0;
    return DS_OK;
}

static ds_status ns_slot(void *self, int j, int32_t prev, const float **logits, float *conf, char *err) {
    NoisySource *ns = self;
    if (j > 0) { /* the target after the previous draft token (written past cache_len, overwritten later) */
        ds_status rc = ns_forward(ns, &prev, 1, ns->start + j, err);
        if (rc) return rc;
    }
    ns_noise(ns);
    *logits = ns->logits;
    *conf = 0;
    return DS_OK;
}

static void ns_init(NoisySource *ns, int block, float rate, float sigma, uint64_t seed) {
    char err[DS_ERR_LEN];
    memset(ns, 0, sizeof *ns);
    CHECK_OK(qwen3_state_init(&ns->st, &g_t, CTX, 1, 0, 1, CTX, err), err);
    ns->block = block;
    ns->rate = rate;
    ns->sigma = sigma;
    ns->sharpen = 1.0f;
    rng_seed(&ns->rng, seed, 99);
    ns->logits = ds_malloc(sizeof(float) * g_t.cfg.vocab_size);
    ns->src = (ProposalSource){.block_size = block, .self = ns, .reset = ns_reset, .context = ns_context, .begin = ns_begin, .slot = ns_slot};
}
static void ns_free(NoisySource *ns) { qwen3_state_free(&ns->st, &g_t); ds_free(ns->logits); }

/* ---- independent plain decoding: one token per forward, full recompute of nothing ---- */
static int plain_greedy(const int32_t *prompt, int n_prompt, int max_new, const int32_t *stop, int n_stop, int32_t *out) {
    char err[DS_ERR_LEN];
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_t, CTX, 1, 0, 1, CTX, err), err);
    int32_t pos[CTX], seq[CTX], row;
    memcpy(seq, prompt, sizeof(int32_t) * n_prompt);
    for (int i = 0; i < CTX; i++) pos[i] = i;
    int n = 0, len = n_prompt, fed = 0;
    while (n < max_new) {
        row = len - fed - 1;
        Qwen3Batch b = {.n = len - fed, .tokens = seq + fed, .pos = pos + fed, .logit_rows = &row, .n_logits = 1};
        CHECK_OK(qwen3_forward(&g_t, &st, &b, err), err);
        fed = len;
        int32_t t = argmax_f32(st.logits_host, g_t.cfg.vocab_size);
        out[n++] = t;
        seq[len++] = t;
        bool s = false;
        for (int k = 0; k < n_stop; k++) s |= stop[k] == t;
        if (s || len >= CTX) break;
    }
    qwen3_state_free(&st, &g_t);
    return n;
}

static void random_prompt(Rng *r, int32_t *p, int n) {
    for (int i = 0; i < n; i++) p[i] = (int32_t)(rng_next(r) % (uint64_t)(g_t.cfg.vocab_size - 1));
}

static SpecParams greedy_params(int max_new) {
    SpecParams p = {.sampler = {0.0f, 0, 1.0f}, .seed = 1, .max_new = max_new};
    return p;
}

/* ---- greedy speculative == plain greedy ---- */
static void test_greedy_identical(void) {
    char err[DS_ERR_LEN];
    Rng r;
    rng_seed(&r, 7, 0);
    int n_cases = TEST_SANITIZED ? 12 : 60, rounds_zero = 0, rounds_partial = 0, rounds_full = 0, mismatches = 0;
    const int blocks[] = {1, 4, 7};
    const float rates[] = {0.0f, 0.3f, 1.0f};
    for (int c = 0; c < n_cases; c++) {
        int block = blocks[c % 3];
        float rate = rates[(c / 3) % 3];
        NoisySource ns;
        ns_init(&ns, block, rate, 3.0f, (uint64_t)c);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &ns.src, CTX, 16, err), err);
        int32_t prompt[40], ref[CTX], got[CTX];
        int np = 1 + (int)(rng_next(&r) % 30), max_new = 1 + (int)(rng_next(&r) % 48);
        random_prompt(&r, prompt, np);
        int nref = plain_greedy(prompt, np, max_new, NULL, 0, ref), ngot;
        SpecParams p = greedy_params(max_new);
        SpecStats stats;
        CHECK_OK(spec_generate(&sd, prompt, np, &p, got, &ngot, &stats, err), err);
        bool same = ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0;
        mismatches += !same;
        CHECK_MSG(same, "case %d (block %d rate %.1f prompt %d max %d): %d vs %d tokens", c, block, rate, np, max_new, ngot, nref);
        CHECK(stats.tau_sum + 1 == ngot); /* every token but the first comes from a round */
        rounds_zero += stats.rounds - stats.accepted_at[0];
        if (block > 1) {
            rounds_full += stats.accepted_at[block - 1];
            rounds_partial += stats.accepted_at[0] - stats.accepted_at[block - 1];
        }
        spec_free(&sd);
        ns_free(&ns);
    }
    printf("  greedy: %d cases, %d mismatches; rounds with zero %d, partial %d, full-block %d acceptance\n", n_cases, mismatches,
           rounds_zero, rounds_partial, rounds_full);
    CHECK(rounds_zero > 0 && rounds_partial > 0 && rounds_full > 0);
}

/* the real fixture drafters (random weights: little acceptance, still exact) */
static void test_greedy_real_drafters(void) {
    char err[DS_ERR_LEN];
    const char *heads[] = {"vanilla", "gated", "rnn", "dflash"};
    Rng r;
    rng_seed(&r, 11, 0);
    for (int h = 0; h < 4; h++) {
        char dir[64];
        snprintf(dir, sizeof dir, "tiny-qwen3/draft-%s", heads[h]);
        Drafter d;
        CHECK_OK(drafter_load(&d, test_data(dir), &g_t, g_be, err), err);
        DrafterSource ds;
        CHECK_OK(spec_drafter_source_init(&ds, &d, CTX, 16, err), err);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &ds.src, CTX, 16, err), err);
        for (int c = 0; c < (TEST_SANITIZED ? 2 : 6); c++) {
            int32_t prompt[40], ref[CTX], got[CTX];
            int np = 1 + (int)(rng_next(&r) % 30), max_new = 1 + (int)(rng_next(&r) % 40), ngot;
            random_prompt(&r, prompt, np);
            int nref = plain_greedy(prompt, np, max_new, NULL, 0, ref);
            SpecParams p = greedy_params(max_new);
            SpecStats stats;
            CHECK_OK(spec_generate(&sd, prompt, np, &p, got, &ngot, &stats, err), err);
            CHECK_MSG(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0, "%s case %d", heads[h], c);
        }
        spec_free(&sd);
        spec_drafter_source_free(&ds);
        drafter_free(&d);
    }
}

/* ---- chi-square on the joint law of the first G generated tokens ---- */
#define G 3

/* P(t1, t2, t3) under the target, enumerated (sampler with top-k keeps it finite) */
static int exact_joint(const SamplerParams *sp, const int32_t *prompt, int np, int32_t (*cells)[G], double *prob, int cap) {
    char err[DS_ERR_LEN];
    int V = g_t.cfg.vocab_size, n = 0;
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_t, CTX, 1, 0, 1, CTX, err), err);
    SampleScratch sc;
    CHECK_OK(sample_scratch_init(&sc, V, err), err);
    float *p1 = malloc(sizeof(float) * V), *p2 = malloc(sizeof(float) * V), *p3 = malloc(sizeof(float) * V);
    int32_t seq[CTX], pos[CTX];
    for (int i = 0; i < CTX; i++) pos[i] = i;
    memcpy(seq, prompt, sizeof(int32_t) * np);
    int32_t row = np - 1;
    Qwen3Batch b = {.n = np, .tokens = seq, .pos = pos, .logit_rows = &row, .n_logits = 1};
    CHECK_OK(qwen3_forward(&g_t, &st, &b, err), err);
    sample_dist(sp, st.logits_host, V, p1, &sc);
    for (int a = 0; a < V; a++) {
        if (p1[a] <= 0) continue;
        seq[np] = a;
        Qwen3Batch b2 = {.n = 1, .tokens = seq + np, .pos = pos + np, .logit_rows = (int32_t[]){0}, .n_logits = 1};
        CHECK_OK(qwen3_forward(&g_t, &st, &b2, err), err);
        sample_dist(sp, st.logits_host, V, p2, &sc);
        for (int c = 0; c < V; c++) {
            if (p2[c] <= 0) continue;
            seq[np + 1] = c;
            Qwen3Batch b3 = {.n = 1, .tokens = seq + np + 1, .pos = pos + np + 1, .logit_rows = (int32_t[]){0}, .n_logits = 1};
            CHECK_OK(qwen3_forward(&g_t, &st, &b3, err), err);
            sample_dist(sp, st.logits_host, V, p3, &sc);
            for (int e = 0; e < V; e++) {
                if (p3[e] <= 0 || n >= cap) continue;
                cells[n][0] = a; cells[n][1] = c; cells[n][2] = e;
                prob[n++] = (double)p1[a] * p2[c] * p3[e];
            }
        }
    }
    free(p1); free(p2); free(p3);
    sample_scratch_free(&sc);
    qwen3_state_free(&st, &g_t);
    return n;
}

/* upper tail of chi-square(df) at x: Wilson-Hilferty normal approximation (accurate to a
 * few percent of p for df >= 10, ample for thresholds 1e-3 / 1e-6) */
static double chi2_sf(double x, int df) {
    double k = df, z = (pow(x / k, 1.0 / 3) - (1 - 2 / (9 * k))) / sqrt(2 / (9 * k));
    return 0.5 * erfc(z / sqrt(2.0));
}

typedef struct { double chi2, p; int df; double tau; } Chi2Result;

static Chi2Result chi2_run(VerifyBug bug, const SamplerParams *sp, int n_samples, const int32_t *prompt, int np,
                           int32_t (*cells)[G], const double *prob, int n_cells) {
    char err[DS_ERR_LEN];
    NoisySource ns;
    ns_init(&ns, 4, 0.7f, 0.3f, 1234);
    ns.sharpen = 1.6f; /* q above p on the top tokens: their acceptance is where the bugs show */
    ns.offset = 200.0f; /* bf16 spacing 1 at 128..256: bf16(l/T) is off by up to 0.5 */
    SpecDecoder sd;
    CHECK_OK(spec_init(&sd, &g_t, &ns.src, CTX, 16, err), err);
    double *count = calloc((size_t)n_cells + 1, sizeof(double));
    SpecStats total = {0};
    for (int s = 0; s < n_samples; s++) {
        SpecParams p = {.sampler = *sp, .seed = ds_hash64(42, (uint64_t)s), .max_new = G + 1, .bug = bug};
        int32_t out[8];
        int n;
        SpecStats st;
        CHECK_OK(spec_generate(&sd, prompt, np, &p, out, &n, &st, err), err);
        spec_stats_add(&total, &st);
        int cell = n_cells; /* "impossible" bin */
        for (int c = 0; c < n_cells && n >= G; c++)
            if (cells[c][0] == out[0] && cells[c][1] == out[1] && cells[c][2] == out[2]) { cell = c; break; }
        count[cell] += 1;
    }
    /* merge cells with expected count < 5 into one bin */
    double chi2 = 0, pooled_e = 0, pooled_o = count[n_cells];
    int df = 0;
    for (int c = 0; c < n_cells; c++) {
        double e = prob[c] * n_samples;
        if (e < 5) { pooled_e += e; pooled_o += count[c]; continue; }
        chi2 += (count[c] - e) * (count[c] - e) / e;
        df++;
    }
    if (pooled_e > 0) { chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e; df++; }
    df -= 1;
    free(count);
    spec_free(&sd);
    ns_free(&ns);
    Chi2Result r = {chi2, chi2_sf(chi2, df), df, total.rounds ? (double)total.tau_sum / total.rounds : 0};
    return r;
}

/* One scenario (T 0.8, top-k 8; 70% of the slots drafted from noisy logits, so zero,
 * partial and full acceptance all occur), three verifiers, the same seeds. */
static void test_chi_square(void) {
    int32_t prompt[6] = {5, 77, 301, 12, 450, 9};
    int cap = 8 * 8 * 8;
    int32_t (*cells)[G] = malloc(sizeof(int32_t) * G * cap);
    double *prob = malloc(sizeof(double) * cap);
    int n_samples = TEST_SANITIZED ? 1500 : 8000;
    SamplerParams sp = {0.8f, 8, 1.0f};
    int nc = exact_joint(&sp, prompt, 6, cells, prob, cap);
    Chi2Result ok = chi2_run(VERIFY_EXACT, &sp, n_samples, prompt, 6, cells, prob, nc);
    Chi2Result b1 = chi2_run(VERIFY_BUG_RESIDUAL_PT, &sp, n_samples, prompt, 6, cells, prob, nc);
    Chi2Result b2 = chi2_run(VERIFY_BUG_RATIO_Q, &sp, n_samples, prompt, 6, cells, prob, nc);
    printf("  chi2 over the first %d tokens (T 0.8, top-k 8, %d samples, %d cells): exact chi2 %.1f df %d p %.3g (tau %.2f)\n"
           "    broken: residual drawn from p_t chi2 %.1f df %d p %.3g; bf16 draft probs in the ratio chi2 %.1f df %d p %.3g\n",
           G, n_samples, nc, ok.chi2, ok.df, ok.p, ok.tau, b1.chi2, b1.df, b1.p, b2.chi2, b2.df, b2.p);
    CHECK(ok.p > 1e-3);
    CHECK(b1.p < 1e-6);
    if (!TEST_SANITIZED) CHECK(b2.p < 1e-6); /* needs the full sample count */
    free(cells);
    free(prob);
}

/* ---- edge cases ---- */
static void test_edge_cases(void) {
    char err[DS_ERR_LEN];
    int32_t prompt[12] = {3, 14, 15, 92, 65, 35, 89, 79, 323, 84, 62, 64}, ref[CTX], got[CTX];
    int nref = plain_greedy(prompt, 12, 30, NULL, 0, ref), ngot;
    SpecStats st;
    /* a stop token inside an accepted block: rate 0 accepts every block of 4 */
    {
        NoisySource ns;
        ns_init(&ns, 4, 0.0f, 0, 1);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &ns.src, CTX, 16, err), err);
        int e = 7; /* generated index 7 = slot 1 of the second round's block */
        int32_t stop = ref[e];
        int first = 0;
        while (ref[first] != stop) first++;
        SpecParams p = greedy_params(30);
        p.stop_ids[0] = stop;
        p.n_stop = 1;
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == first + 1 && memcmp(got, ref, sizeof(int32_t) * ngot) == 0 && st.stopped);
        /* max tokens reached mid-block: 7 = 1 + a full block (5) + 1 */
        for (int mx = 1; mx <= 12; mx++) {
            p = greedy_params(mx);
            CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
            CHECK_MSG(ngot == mx && memcmp(got, ref, sizeof(int32_t) * mx) == 0, "max_new %d: %d tokens", mx, ngot);
        }
        /* the context fills up: generation ends at CTX positions */
        p = greedy_params(1000);
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == CTX - 12 + 1); /* the last token needs no KV entry */
        spec_free(&sd);
        ns_free(&ns);
    }
    /* the context outgrows the drafter's cache (24 positions): the rest is plain decoding */
    {
        Drafter d;
        CHECK_OK(drafter_load(&d, test_data("tiny-qwen3/draft-rnn"), &g_t, g_be, err), err);
        DrafterSource ds;
        CHECK_OK(spec_drafter_source_init(&ds, &d, 24, 8, err), err);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &ds.src, CTX, 16, err), err);
        SpecParams p = greedy_params(30);
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0);
        CHECK(st.proposed > 0 && st.proposed < st.rounds * 4); /* drafted early, not later */
        int32_t long_prompt[30];
        for (int i = 0; i < 30; i++) long_prompt[i] = (i * 37) % 500;
        int32_t ref2[CTX];
        int nref2 = plain_greedy(long_prompt, 30, 10, NULL, 0, ref2);
        p = greedy_params(10);
        CHECK_OK(spec_generate(&sd, long_prompt, 30, &p, got, &ngot, &st, err), err);
        CHECK(ngot == nref2 && memcmp(got, ref2, sizeof(int32_t) * nref2) == 0 && st.proposed == 0);
        /* confidence threshold 1.0: every sigmoid < 1, nothing is verified; 0: the full block */
        float thr = 1.0f;
        p = greedy_params(30);
        p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr};
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0 && st.proposed == 0 && st.rounds == 29);
        /* allocation: a whole generation allocates nothing */
        uint64_t before = ds_alloc_count();
        p = (SpecParams){.sampler = {0.9f, 20, 0.95f}, .seed = 5, .max_new = 20};
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ds_alloc_count() == before);
        spec_free(&sd);
        spec_drafter_source_free(&ds);
        drafter_free(&d);
    }
    /* allocation with the noisy source too (sampled, with rejections) */
    {
        NoisySource ns;
        ns_init(&ns, 4, 0.5f, 2.0f, 3);
        SpecDecoder sd;
        CHECK_OK(spec_init(&sd, &g_t, &ns.src, CTX, 16, err), err);
        SpecParams p = {.sampler = {1.0f, 0, 1.0f}, .seed = 9, .max_new = 40};
        uint64_t before = ds_alloc_count();
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ds_alloc_count() == before);
        CHECK(st.accepted > 0 && st.accepted < st.proposed);
        /* must fail: empty prompt, prompt longer than the context */
        CHECK(spec_generate(&sd, prompt, 0, &p, got, &ngot, &st, err) == DS_EARG);
        int32_t big[CTX] = {0};
        CHECK(spec_generate(&sd, big, CTX, &p, got, &ngot, &st, err) == DS_EARG);
        spec_free(&sd);
        ns_free(&ns);
    }
}

int main(void) {
    char err[DS_ERR_LEN];
    g_be = backend_cpu_create(1); /* tiny model: threads only add overhead */
    if (qwen3_load(&g_t, test_data("tiny-qwen3/target"), g_be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    RUN(test_greedy_identical);
    RUN(test_greedy_real_drafters);
    RUN(test_edge_cases);
    RUN(test_chi_square);
    qwen3_free(&g_t);
    g_be->destroy(g_be);
    return test_summary();
}
