/* test_spec_stat.c - sampled speculative decoding has the target's distribution: a
 * chi-square test on the joint law of the first 3 generated tokens (enumerated exactly under
 * the target) over 8000 seeds, with the test-only noisy proposal source of spec_testing.h
 * (70% of the slots drafted from sharpened, noisy logits: zero, partial and full acceptance).
 * The same test rejects two deliberately broken verifiers (correction drawn from p_t instead of
 * the residual; bf16 draft probabilities in the acceptance ratio), so it is known to have power.
 * ctest: labels=unit;spec timeout=600 */
#include "spec_stat.h"

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
    Chi2Result ok = chi2_run(VERIFY_EXACT, &sp, n_samples, prompt, 6, cells, prob, nc, NULL);
    Chi2Result b1 = chi2_run(VERIFY_BUG_RESIDUAL_PT, &sp, n_samples, prompt, 6, cells, prob, nc, NULL);
    Chi2Result b2 = chi2_run(VERIFY_BUG_RATIO_Q, &sp, n_samples, prompt, 6, cells, prob, nc, NULL);
    printf("  chi2 over the first %d tokens (T 0.8, top-k 8, %d samples, %d cells): exact chi2 %.1f df %d p %.3g (tau %.2f)\n"
           "    broken: residual drawn from p_t chi2 %.1f df %d p %.3g; bf16 draft probs in the ratio chi2 %.1f df %d p %.3g\n",
           G, n_samples, nc, ok.chi2, ok.df, ok.p, ok.tau, b1.chi2, b1.df, b1.p, b2.chi2, b2.df, b2.p);
    CHECK(ok.p > 1e-3);
    CHECK(b1.p < 1e-6);
    if (!TEST_SANITIZED) CHECK(b2.p < 1e-6); /* needs the full sample count */
    free(cells);
    free(prob);
}

/* The same law with the drafter trained by dspark itself (tests/data/trained-draft), at T 1.0
 * where its acceptance is substantial: exact verification keeps the target's distribution. */
static void test_chi_square_trained(void) {
    char err[DS_ERR_LEN];
    int32_t prompt[6] = {5, 77, 301, 12, 450, 9};
    int cap = 8 * 8 * 8;
    int32_t (*cells)[G] = malloc(sizeof(int32_t) * G * cap);
    double *prob = malloc(sizeof(double) * cap);
    SamplerParams sp = {1.0f, 8, 1.0f};
    int nc = exact_joint(&sp, prompt, 6, cells, prob, cap);
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("trained-draft"), &g_t, g_be, err), err);
    DrafterSource ds;
    CHECK_OK(spec_drafter_source_init(&ds, &d, CTX, 16, err), err);
    int n_samples = TEST_SANITIZED ? 1000 : 6000;
    Chi2Result r = chi2_run(VERIFY_EXACT, &sp, n_samples, prompt, 6, cells, prob, nc, &ds.src);
    printf("  trained drafter, T 1.0, top-k 8, %d samples: chi2 %.1f df %d p %.3g (tau %.2f)\n", n_samples, r.chi2, r.df, r.p, r.tau);
    CHECK(r.p > 1e-3);
    CHECK(r.tau > 1.2); /* acceptance is substantial, so the test is about the accept path too */
    spec_drafter_source_free(&ds);
    drafter_free(&d);
    free(cells);
    free(prob);
}

int main(void) {
    spec_testing_load();
    RUN(test_chi_square);
    RUN(test_chi_square_trained);
    spec_testing_free();
    return test_summary();
}
