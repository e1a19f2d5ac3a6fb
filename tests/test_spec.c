/* test_spec.c - speculative decoding is lossless (issue 3 item 6), on the tiny fixture target.
 *
 * The random fixture drafters almost never get a token accepted, so most tests use a
 * test-only ProposalSource: the target's own logits (computed by a second target state), each
 * slot corrupted with probability `rate` by adding N(0, sigma^2) noise to every logit. rate 0
 * drafts exactly the target (full-block acceptance), rate 1 is mostly rejected, in between
 * gives all three kinds of rounds.
 *   - greedy speculative output == plain greedy output (an independent token-by-token loop)
 *     over many prompts, lengths, block sizes and corruption rates, and with the real drafters;
 *   - (the chi-square test of sampled decoding is test_spec_stat.c);
 *   - edge cases: stop token inside an accepted block, max tokens mid-block, context longer
 *     than the drafter's cache, block size 1, the confidence-threshold policy;
 *   - spec_generate allocates nothing.
 * ctest: labels=unit;spec timeout=600 */
#include "spec_testing.h"

/* ---- greedy speculative == plain greedy ---- */
/* verify at most *ctx slots (causal: the answer for j slots depends on j only) */
static int fixed_len(void *ctx, const float *conf, int n) {
    (void)conf;
    return n < *(int *)ctx ? n : *(int *)ctx;
}

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

/* a drafter trained by dspark train on this target (tests/data/trained-draft): exact, and
 * rejected, partially accepted and fully accepted blocks all happen with a real drafter */
static void test_greedy_trained_drafter(void) {
    char err[DS_ERR_LEN];
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("trained-draft"), &g_t, g_be, err), err);
    DrafterSource ds;
    CHECK_OK(spec_drafter_source_init(&ds, &d, CTX, 16, err), err);
    SpecDecoder sd;
    CHECK_OK(spec_init(&sd, &g_t, &ds.src, CTX, 16, err), err);
    int block = d.cfg.block_size, zero = 0, partial = 0, full = 0, rounds = 0, tau = 0;
    Rng r;
    rng_seed(&r, 13, 0);
    for (int c = 0; c < 12; c++) { /* 3 cases saw no full block (CI, sanitised) */
        int32_t prompt[40], ref[CTX], got[CTX];
        int np = 1 + (int)(rng_next(&r) % 30), max_new = 16 + (int)(rng_next(&r) % 48), ngot;
        random_prompt(&r, prompt, np);
        int nref = plain_greedy(prompt, np, max_new, NULL, 0, ref);
        SpecParams p = greedy_params(max_new);
        SpecStats st;
        CHECK_OK(spec_generate(&sd, prompt, np, &p, got, &ngot, &st, err), err);
        CHECK_MSG(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0, "trained drafter case %d", c);
        zero += st.rounds - st.accepted_at[0];
        full += st.accepted_at[block - 1];
        partial += st.accepted_at[0] - st.accepted_at[block - 1];
        rounds += st.rounds;
        tau += st.tau_sum;
    }
    printf("  trained drafter: %d rounds, tau %.2f; zero %d, partial %d, full-block %d\n", rounds, rounds ? (double)tau / rounds : 0.0,
           zero, partial, full);
    CHECK(zero > 0 && partial > 0 && full > 0);
    spec_free(&sd);
    spec_drafter_source_free(&ds);
    drafter_free(&d);
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
        p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr, true};
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0 && st.proposed == 0 && st.rounds == 29);
        /* a causal policy stops drafting one slot past the last verified one; same tokens */
        int two = 2;
        SpecStats st_all;
        p = greedy_params(30);
        p.policy = (VerifyLenPolicy){fixed_len, &two, false};
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, ref2, &nref2, &st_all, err), err);
        p.policy.causal = true;
        CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
        CHECK(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0 && nref2 == nref);
        CHECK(st.proposed == st_all.proposed && st.rounds == st_all.rounds && st.proposed > 0);
        /* block 4: every drafting round drafts 4 slots, or 3 when it stops at the first unverified */
        CHECK_MSG(st_all.drafted > 0 && st_all.drafted % 4 == 0 && st.drafted * 4 == st_all.drafted * 3,
                  "drafted %d (causal) vs %d over %d rounds", st.drafted, st_all.drafted, st.rounds);
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
    spec_testing_load();
    RUN(test_greedy_identical);
    RUN(test_greedy_real_drafters);
    RUN(test_greedy_trained_drafter);
    RUN(test_edge_cases);
    spec_testing_free();
    return test_summary();
}
