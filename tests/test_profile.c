/* test_profile.c - the SPS profile (src/profile.c) on the tiny fixture target: the coarse
 * pass keeps to its budget and measures both ends, interpolation stays between its measured
 * neighbours and step time never decreases with the size, the cache round-trips exactly, a
 * different key (size, drafter) or a corrupt file is not used, a cached curve that a busy
 * machine distorted is measured again, refinement completes the table,
 * and the drafting cost is measured when a drafter is given.
 * ctest: labels=unit */
#include <stdlib.h>

#include "profile.h"
#include "test.h"

static Qwen3Model g_t;
static Backend *g_be;

static void test_profile(void) {
    char err[DS_ERR_LEN];
    const char *cache = test_tmpdir("profile-cache");
    setenv("XDG_CACHE_HOME", cache, 1);
    SpsProfile p;
    CHECK_OK(profile_init(&p, &g_t, NULL, 32, 64, err), err);
    CHECK(strncmp(p.path, cache, strlen(cache)) == 0 && strstr(p.path, "/dspark/sps-"));
    CHECK(!profile_load_cache(&p));
    double t0 = ds_now();
    CHECK_OK(profile_measure_coarse(&p, 1.0, err), err);
    double dt = ds_now() - t0;
    CHECK_MSG(dt < 15 && p.n_measured >= 2 && p.n_measured < 32 && p.step_s[1] > 0 && p.step_s[32] > 0,
              "coarse: %d sizes in %.2fs", p.n_measured, dt);
    int bad = 0;
    for (int b = 1; b <= 32; b++) {
        if (b > 1 && profile_step_s(&p, b) < profile_step_s(&p, b - 1)) bad++;     /* never faster when larger */
        if (p.step_s[b] > 0 && profile_step_s(&p, b) > p.step_s[b]) bad++;          /* measured sizes: at most the measurement */
    }
    CHECK_MSG(bad == 0, "%d sizes break monotonicity or interpolation", bad);
    CHECK(fabs(profile_step_s(&p, 64) - 2 * profile_step_s(&p, 32)) < 1e-12);
    CHECK(fabs(profile_sps(&p, 7) * profile_step_s(&p, 7) - 1) < 1e-12);
    CHECK_OK(profile_save_cache(&p, err), err);
    /* the same key loads the same table, bit for bit */
    SpsProfile q;
    CHECK_OK(profile_init(&q, &g_t, NULL, 32, 64, err), err);
    CHECK(strcmp(p.path, q.path) == 0 && profile_load_cache(&q) && q.n_measured == p.n_measured && q.draft_block == p.draft_block);
    CHECK(memcmp(p.step_s, q.step_s, sizeof(double) * 33) == 0);
    profile_free(&q);
    /* a different size or context is another key and another file */
    CHECK_OK(profile_init(&q, &g_t, NULL, 16, 64, err), err);
    CHECK(strcmp(p.path, q.path) != 0 && !profile_load_cache(&q));
    profile_free(&q);
    /* refinement completes the table, one missing size per call */
    int before = p.n_measured;
    ds_status rc;
    int k = 0;
    while (profile_refine_one(&p, err, &rc) && k < 100) k++;
    CHECK_OK(rc, err);
    CHECK_MSG(p.n_measured == 32 && k == 32 - before, "refined %d, measured %d of 32", k, p.n_measured);
    /* a cached curve measured on a busy machine (4 tokens costing 40 one-token steps) is not
     * trusted: profile_get measures again (and caches the new curve, unless this machine is
     * busy right now: then it caps it for the run), so it never hands out such a curve */
    double poisoned = 40 * p.step_s[1];
    p.step_s[4] = poisoned;
    CHECK_OK(profile_save_cache(&p, err), err);
    CHECK_OK(profile_init(&q, &g_t, NULL, 32, 64, err), err);
    CHECK_OK(profile_get(&q, 1.0, NULL, err), err);
    CHECK_MSG(!(q.step_s[4] >= poisoned) && profile_step_s(&q, 4) <= 1.5 * 4 * q.step_s[1], "4 tokens %.3g ms, one %.3g ms",
              1e3 * profile_step_s(&q, 4), 1e3 * q.step_s[1]);
    profile_free(&q);
    CHECK_OK(profile_init(&q, &g_t, NULL, 32, 64, err), err);
    CHECK_OK(profile_get(&q, 1.0, NULL, err), err);
    CHECK(!(q.step_s[4] >= poisoned) && profile_step_s(&q, 4) <= 1.5 * 4 * q.step_s[1]);
    profile_free(&q);
    /* a corrupt cache file is ignored, not trusted */
    CHECK_OK(ds_write_file_atomic(p.path, "{\"key\": 3", 9, err), err);
    CHECK_OK(profile_init(&q, &g_t, NULL, 32, 64, err), err);
    CHECK(!profile_load_cache(&q) && q.n_measured == 0);
    profile_free(&q);
    profile_free(&p);
    /* the drafting cost, with a drafter (also part of the key) */
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data("tiny-qwen3/draft-gated"), &g_t, g_be, err), err);
    CHECK_OK(profile_init(&q, &g_t, &d, 32, 64, err), err);
    CHECK(strstr(q.key, "draft-gated") != NULL);
    CHECK_OK(profile_measure_coarse(&q, 0.5, err), err);
    CHECK_MSG(q.draft_s > 0 && q.draft_s < 1 && q.draft_block == d.cfg.block_size, "draft cost %.3g s", q.draft_s);
    fprintf(stderr, "  tiny target: %.3f ms for 1 token, %.3f ms for 32; drafting one block %.3f ms\n", 1e3 * profile_step_s(&q, 1),
            1e3 * profile_step_s(&q, 32), 1e3 * q.draft_s);
    profile_free(&q);
    drafter_free(&d);
    /* bad sizes are one-line errors */
    CHECK(profile_init(&q, &g_t, NULL, 0, 64, err) == DS_EARG && strstr(err, "--max-tokens"));
    CHECK(profile_init(&q, &g_t, NULL, 32, 1 << 20, err) == DS_EARG && !strchr(err, '\n'));
}

int main(void) {
    char err[DS_ERR_LEN];
    g_be = backend_cpu_create(1);
    if (qwen3_load(&g_t, test_data("tiny-qwen3/target"), g_be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    RUN(test_profile);
    qwen3_free(&g_t);
    g_be->destroy(g_be);
    return test_summary();
}
