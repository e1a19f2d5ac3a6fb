/* test_sample.c - sampler: distributions after temperature/top-k/top-p against hand-computed
 * values, reproducibility of the seeded RNG, and a frequency test of sample_from.
 * ctest: labels=unit */
#include "sample.h"
#include "test.h"

static void test_greedy_and_softmax(void) {
    char err[DS_ERR_LEN];
    SampleScratch sc;
    CHECK_OK(sample_scratch_init(&sc, 5, err), err);
    float logits[5] = {1.0f, 3.0f, 3.0f, -2.0f, 0.5f}, probs[5];
    SamplerParams g = {0, 0, 1};
    sample_dist(&g, logits, 5, probs, &sc);
    CHECK(probs[1] == 1.0f && probs[2] == 0.0f); /* ties: lowest index */
    SamplerParams t = {2.0f, 0, 1};
    sample_dist(&t, logits, 5, probs, &sc);
    double z = 0, ref[5];
    for (int i = 0; i < 5; i++) z += exp(logits[i] / 2.0);
    for (int i = 0; i < 5; i++) ref[i] = exp(logits[i] / 2.0) / z;
    for (int i = 0; i < 5; i++) CHECK_MSG(fabs(probs[i] - ref[i]) < 1e-6, "softmax[%d] %g vs %g", i, probs[i], ref[i]);
    sample_scratch_free(&sc);
}

static void test_top_k_top_p(void) {
    char err[DS_ERR_LEN];
    SampleScratch sc;
    CHECK_OK(sample_scratch_init(&sc, 6, err), err);
    /* probs at T=1 proportional to exp(logits): 0.4, 0.3, 0.15, 0.1, 0.05, 0 */
    float p0[6] = {0.4f, 0.3f, 0.15f, 0.1f, 0.05f, 1e-30f}, logits[6], probs[6];
    for (int i = 0; i < 6; i++) logits[i] = logf(p0[i]);
    SamplerParams k2 = {1.0f, 2, 1.0f};
    sample_dist(&k2, logits, 6, probs, &sc);
    CHECK(fabs(probs[0] - 0.4 / 0.7) < 1e-6 && fabs(probs[1] - 0.3 / 0.7) < 1e-6 && probs[2] == 0 && probs[5] == 0);
    /* top-p 0.8: keep 0.4, 0.3, 0.15 (cumulative before the 4th is 0.85 >= 0.8) */
    SamplerParams p8 = {1.0f, 0, 0.8f};
    sample_dist(&p8, logits, 6, probs, &sc);
    CHECK(fabs(probs[0] - 0.4 / 0.85) < 1e-6 && fabs(probs[2] - 0.15 / 0.85) < 1e-6 && probs[3] == 0);
    /* top-p 0.7: cumulative before the 3rd is exactly 0.7 -> keep 2 */
    SamplerParams p7 = {1.0f, 0, 0.69f};
    sample_dist(&p7, logits, 6, probs, &sc);
    CHECK(probs[2] == 0 && probs[1] > 0);
    /* top-k 3 then top-p 0.9 of the renormalised top-3 (0.4/.85, .3/.85, .15/.85): keep all 3 */
    SamplerParams kp = {1.0f, 3, 0.9f};
    sample_dist(&kp, logits, 6, probs, &sc);
    CHECK(probs[2] > 0 && probs[3] == 0);
    /* must fail: out-of-range parameters are rejected, not clamped */
    SamplerParams bad = {1.0f, 0, 1.5f};
    CHECK(sampler_params_check(&bad, err) == DS_EARG && strstr(err, "top-p"));
    sample_scratch_free(&sc);
}

static void test_rng_and_frequencies(void) {
    Rng a, b;
    rng_seed(&a, 42, 7);
    rng_seed(&b, 42, 7);
    for (int i = 0; i < 100; i++) CHECK(rng_next(&a) == rng_next(&b));
    rng_seed(&b, 42, 8);
    CHECK(rng_next(&a) != rng_next(&b));
    float probs[4] = {0.1f, 0.0f, 0.6f, 0.3f};
    int counts[4] = {0};
    const int N = 200000;
    for (int i = 0; i < N; i++) counts[sample_from(probs, 4, rng_uniform(&a))]++;
    CHECK(counts[1] == 0);
    /* chi-square with 2 dof; 13.8 is the 0.999 quantile */
    double chi = 0;
    for (int i = 0; i < 4; i++) if (probs[i] > 0) chi += pow(counts[i] - N * probs[i], 2) / (N * probs[i]);
    CHECK_MSG(chi < 13.8, "chi-square %g", chi);
}

int main(void) {
    RUN(test_greedy_and_softmax);
    RUN(test_top_k_top_p);
    RUN(test_rng_and_frequencies);
    return test_summary();
}
