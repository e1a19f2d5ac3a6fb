/* test_sched.c - the verification-length scheduler (src/scheduler.c) and the calibration
 * loader (src/calib.c).
 *   - The paper's Appendix A example as a Monte Carlo simulation (10^5 draws, the real
 *     verify_block): the retrospective search (no early stop) outputs A with probability
 *     about 0.85 instead of the target's 0.7 (the case that must fail losslessness), the
 *     causal Algorithm 1 and the asynchronous scheduler give 0.7. Tolerance 0.01 (the standard
 *     error of a frequency from 10^5 draws is 0.0015, so 0.01 is about 7 sigma).
 *   - Hand-made cases of Algorithm 1: tie order, flat SPS admits everything, steep SPS admits
 *     nothing, a tight SPS admits exactly the predicted prefix; with step time affine in the
 *     batch size the early-stopped greedy equals a brute-force global optimum (1e-12).
 *   - The chosen verification length shrinks as concurrency grows (synthetic SPS curve).
 *   - Policy names, the scheduler object with calibration, calibration.json errors.
 * ctest: labels=unit */
#include "scheduler.h"
#include "test.h"
#include "verify.h"

/* an SPS table: tab[B] for B < n, tab[n-1] * (n-1) / B beyond */
typedef struct { const double *tab; int n; } Table;
static double table_at(void *ctx, int B) {
    const Table *t = ctx;
    return B < t->n ? t->tab[B] : t->tab[t->n - 1] * (t->n - 1) / B;
}
/* step time c0 + c1 * B */
typedef struct { double c0, c1, p; } Affine;
static double affine_at(void *ctx, int B) { const Affine *a = ctx; return 1.0 / (a->c0 + a->c1 * pow(B, a->p)); }
static double flat_at(void *ctx, int B) { (void)ctx; (void)B; return 100.0; }

/* ---- Appendix A ---- */
enum { SCHED_RETRO, SCHED_CAUSAL, SCHED_ASYNC_OBJ };

/* P(first output token = A) over n draws. */
static double appendix_a(int which, const double *sps_tab, uint64_t seed, int n) {
    const float pt[3][2] = {{0.7f, 0.3f}, {0.7f, 0.3f}, {0.7f, 0.3f}}, q[2][2] = {{0.5f, 0.5f}, {0.5f, 0.5f}};
    Table tab = {sps_tab, 4};
    SpsCurve sps = {table_at, &tab};
    Scheduler sc;
    char err[DS_ERR_LEN];
    SchedPolicy pol = {.kind = SCHED_ASYNC};
    if (which == SCHED_ASYNC_OBJ) CHECK_OK(sched_init(&sc, &pol, NULL, sps, 1, 2, err), err);
    Rng rng;
    rng_seed(&rng, seed, 0);
    float resid[2];
    long a_count = 0;
    for (int i = 0; i < n; i++) {
        int32_t drafts[2];
        drafts[0] = sample_from(q[0], 2, rng_uniform(&rng));
        drafts[1] = sample_from(q[1], 2, rng_uniform(&rng));
        /* a_1 = 0.8 is known before x_1; c_2 depends on x_1: 0.9 after A, 0 after B */
        float c2 = drafts[0] == 0 ? 0.9f : 0.0f;
        float surv[2] = {0.8f, 0.8f * c2};
        const float *rows[1] = {surv};
        int n_avail = 2, len = 0;
        if (which == SCHED_RETRO) sched_search_unconstrained(1, rows, &n_avail, sps, &len);
        else if (which == SCHED_CAUSAL) sched_alg1(1, rows, &n_avail, sps, &len);
        else {
            float z[2] = {logf(0.8f / 0.2f), c2 > 0 ? logf(c2 / (1 - c2)) : -30.0f}; /* the same survivals as logits */
            len = sched_choose_one(&sc, z, 2);
        }
        VerifyResult vr = verify_block(&pt[0][0], &q[0][0], drafts, len, 2, false, &rng, resid, VERIFY_EXACT, NULL);
        int32_t first = vr.n_accepted > 0 ? drafts[0] : vr.next;
        a_count += first == 0;
    }
    if (which == SCHED_ASYNC_OBJ) sched_free(&sc);
    return (double)a_count / n;
}

static void test_appendix_a(void) {
    const int N = 100000;
    const double tol = 0.01;
    double paper[4] = {0, 1.0, 0.5, 0.45};   /* SPS(1), SPS(2), SPS(3) of Appendix A */
    double flat[4] = {0, 1.0, 0.9, 0.85};    /* flatter: Algorithm 1 does admit x_1 */
    double retro = appendix_a(SCHED_RETRO, paper, 1, N);
    double causal = appendix_a(SCHED_CAUSAL, paper, 2, N);
    double causal_flat = appendix_a(SCHED_CAUSAL, flat, 3, N);
    double async_paper = appendix_a(SCHED_ASYNC_OBJ, paper, 4, N);
    double async_flat = appendix_a(SCHED_ASYNC_OBJ, flat, 5, N);
    fprintf(stderr, "  P(A): retrospective %.4f, causal %.4f (flat SPS %.4f), async %.4f (flat SPS %.4f); target 0.7\n", retro, causal,
            causal_flat, async_paper, async_flat);
    /* the must-fail case: without the early stop the output is biased to 0.85/0.15 */
    CHECK_MSG(fabs(retro - 0.85) < tol, "retrospective search: P(A) %.4f, expected about 0.85", retro);
    CHECK_MSG(fabs(retro - 0.7) > 10 * tol, "the retrospective search should NOT recover the target (P(A) %.4f)", retro);
    CHECK_MSG(fabs(causal - 0.7) < tol, "Algorithm 1: P(A) %.4f, target 0.7", causal);
    CHECK_MSG(fabs(causal_flat - 0.7) < tol, "Algorithm 1 (flat SPS): P(A) %.4f, target 0.7", causal_flat);
    CHECK_MSG(fabs(async_paper - 0.7) < tol, "async: P(A) %.4f, target 0.7", async_paper);
    CHECK_MSG(fabs(async_flat - 0.7) < tol, "async (flat SPS): P(A) %.4f, target 0.7", async_flat);
}

/* ---- hand-made cases ---- */

static double theta(int R, const float *const *a, const int *len, SpsCurve sps) {
    double tau = R;
    int B = R;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < len[r]; j++) { tau += a[r][j]; B++; }
    return tau * sps.at(sps.ctx, B);
}

static void test_alg1_cases(void) {
    float r0[3] = {0.9f, 0.9f, 0.5f}, r1[3] = {0.9f, 0.9f, 0.5f};
    const float *a[2] = {r0, r1};
    int n[2] = {3, 3}, len[2];
    /* Theta: 2, 2.871, 3.724, 4.559 then 5.6 x 0.5 = 2.8: three admissions, in the order
     * (r0,0), (r1,0), (r0,1): equal survivals go by position, then request */
    double tight[8] = {0, 1, 1, 0.99, 0.98, 0.97, 0.5, 0.4};
    Table t = {tight, 8};
    int k = sched_alg1(2, a, n, (SpsCurve){table_at, &t}, len);
    CHECK_MSG(k == 3 && len[0] == 2 && len[1] == 1, "tight SPS: admitted %d, lengths %d %d (expected 3: 2 1)", k, len[0], len[1]);
    /* float ties inside one request (c = 1 exactly) never shorten it */
    float eq[4] = {0.5f, 0.5f, 0.5f, 0.25f};
    const float *ae[1] = {eq};
    int ne = 4, le;
    CHECK(sched_alg1(1, ae, &ne, (SpsCurve){flat_at, NULL}, &le) == 4 && le == 4);
    /* flat SPS admits every candidate with a > 0 */
    float z0[3] = {0.9f, 0.0f, 0.0f};
    const float *az[2] = {r0, z0};
    k = sched_alg1(2, az, n, (SpsCurve){flat_at, NULL}, len);
    CHECK_MSG(k == 4 && len[0] == 3 && len[1] == 1, "flat SPS: admitted %d, lengths %d %d (expected 3 1)", k, len[0], len[1]);
    /* steep SPS (step time ~ B^2) admits nothing */
    Affine steep = {0, 1, 2};
    k = sched_alg1(2, a, n, (SpsCurve){affine_at, &steep}, len);
    CHECK(k == 0 && len[0] == 0 && len[1] == 0);
    /* step time affine in B: Theta is unimodal along the greedy path, so the early stop finds
     * the global optimum: compare with a brute force over every length vector (R=3, gamma=4) */
    Rng rng;
    rng_seed(&rng, 9, 0);
    int worse = 0;
    for (int trial = 0; trial < 300; trial++) {
        float s[3][4];
        const float *as[3] = {s[0], s[1], s[2]};
        int ns[3] = {4, 4, 4}, l[3], b[3];
        for (int r = 0; r < 3; r++) {
            float c = 1;
            for (int j = 0; j < 4; j++) { c *= (float)(0.3 + 0.7 * rng_uniform(&rng)); s[r][j] = c; }
        }
        Affine af = {1.0, 0.02 + 0.5 * rng_uniform(&rng), 1};
        SpsCurve sps = {affine_at, &af};
        sched_alg1(3, as, ns, sps, l);
        double best = 0;
        for (b[0] = 0; b[0] <= 4; b[0]++)
            for (b[1] = 0; b[1] <= 4; b[1]++)
                for (b[2] = 0; b[2] <= 4; b[2]++) { double th = theta(3, as, b, sps); if (th > best) best = th; }
        worse += theta(3, as, l, sps) < best - 1e-12;
    }
    CHECK_MSG(worse == 0, "%d of 300 affine cases: Algorithm 1 below the brute-force optimum", worse);
    /* top-K and the unconstrained search */
    k = sched_top_k(2, a, n, 5, len);
    CHECK(k == 5 && len[0] == 3 && len[1] == 2);
    double jag[9] = {0, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}; /* a cliff after 2 tokens, flat after it */
    Table tj = {jag, 9};
    CHECK(sched_alg1(2, a, n, (SpsCurve){table_at, &tj}, len) == 0);
    CHECK(sched_search_unconstrained(2, a, n, (SpsCurve){table_at, &tj}, len) == 6 && len[0] == 3 && len[1] == 3);
}

/* the verification length shrinks as concurrency grows: step time flat up to 16 tokens,
 * then linear (a compute-bound regime), every request with c = 0.8 per position */
static double sat_at(void *ctx, int B) { (void)ctx; return 1.0 / (0.01 * (B > 16 ? B / 16.0 : 1.0)); }

static void test_shrinks_with_concurrency(void) {
    enum { G = 7 };
    float s[64][G];
    const float *a[64];
    int n[64], len[64];
    for (int r = 0; r < 64; r++) {
        float c = 1;
        for (int j = 0; j < G; j++) { c *= 0.8f; s[r][j] = c; }
        a[r] = s[r];
        n[r] = G;
    }
    const int levels[] = {1, 2, 4, 8, 16, 32, 64};
    double prev = 1e9, first = 0, last = 0;
    for (int i = 0; i < 7; i++) {
        int R = levels[i];
        int k = sched_alg1(R, a, n, (SpsCurve){sat_at, NULL}, len);
        double mean = (double)k / R;
        fprintf(stderr, "  %2d requests: mean verification length %.3f\n", R, mean);
        CHECK_MSG(mean <= prev + 1e-12, "length grew from %.3f to %.3f at %d requests", prev, mean, R);
        prev = mean;
        if (i == 0) first = mean;
        last = mean;
    }
    CHECK_MSG(first == G && last < 1.0, "1 request: %.2f (expected the full block), 64 requests: %.2f (expected < 1)", first, last);
}

/* ---- the scheduler object, policy names, calibration ---- */

static void test_policy_parse(void) {
    char err[DS_ERR_LEN], buf[64];
    SchedPolicy p;
    const char *good[] = {"full", "fixed:1", "fixed:0", "threshold:0.5", "alg1", "async", "alg1+bypass", "full+bypass"};
    for (int i = 0; i < 8; i++) {
        CHECK_OK(sched_policy_parse(good[i], "--policy", &p, err), err);
        if (strcmp(good[i], "threshold:0.5") != 0) CHECK_MSG(strcmp(sched_policy_format(&p, buf, sizeof buf), good[i]) == 0, "%s -> %s", good[i], buf);
    }
    const char *bad[] = {"", "alg2", "fixed:", "fixed:65", "threshold:1.5", "alg1+", "alg1+bypas", "+bypass", "fixed:-1"};
    for (int i = 0; i < 9; i++) {
        CHECK_MSG(sched_policy_parse(bad[i], "--policy", &p, err) == DS_EARG && strstr(err, "--policy") && !strchr(err, '\n'),
                  "'%s' should be refused naming --policy (got: %s)", bad[i], err);
    }
}

static void test_scheduler_object(void) {
    char err[DS_ERR_LEN];
    Calibration cal;
    calib_identity(&cal);
    cal.temperature[0] = 2.0f;
    cal.temperature[1] = 0.5f;
    float z[3] = {1.0f, -0.5f, 2.0f}, out[3];
    calib_survival(&cal, z, 3, out);
    double s0 = 1 / (1 + exp(-0.5)), s1 = s0 / (1 + exp(1.0)), s2 = s1 / (1 + exp(-2.0));
    CHECK(fabs(out[0] - s0) < 1e-6 && fabs(out[1] - s1) < 1e-6 && fabs(out[2] - s2) < 1e-6);
    /* threshold on calibrated confidences: position 1's is sigmoid(-1) = 0.27 */
    SchedPolicy pol = {.kind = SCHED_THRESHOLD, .threshold = 0.3};
    Scheduler sc;
    CHECK_OK(sched_init(&sc, &pol, &cal, (SpsCurve){0}, 4, 3, err), err);
    CHECK(sched_choose_one(&sc, z, 3) == 1);
    sched_free(&sc);
    pol = (SchedPolicy){.kind = SCHED_ALG1};
    CHECK(sched_init(&sc, &pol, &cal, (SpsCurve){0}, 4, 3, err) == DS_EARG); /* alg1 needs SPS */
    pol = (SchedPolicy){.kind = SCHED_FIXED, .fixed_len = 2};
    CHECK_OK(sched_init(&sc, &pol, &cal, (SpsCurve){0}, 4, 3, err), err);
    const float *conf[2] = {z, z};
    int nd[2] = {3, 1}, len[2];
    sched_choose(&sc, 2, conf, nd, len);
    CHECK(len[0] == 2 && len[1] == 1);
    sched_free(&sc);
    /* step time proportional to the batch: verifying never pays... unless the step also
     * drafts (draft_s), a cost already paid that a longer verification amortises */
    pol = (SchedPolicy){.kind = SCHED_ALG1};
    Affine lin = {0, 1e-3, 1};
    CHECK_OK(sched_init(&sc, &pol, NULL, (SpsCurve){affine_at, &lin}, 4, 3, err), err);
    float sure[3] = {4, 4, 4}; /* sigmoid(4) = 0.982 */
    CHECK(sched_choose_one(&sc, sure, 3) == 0);
    sc.draft_s = 5e-3;
    CHECK(sched_choose_one(&sc, sure, 3) == 3);
    sched_free(&sc);
    /* async: the capacity follows the survivals of two calls earlier */
    pol = (SchedPolicy){.kind = SCHED_ASYNC};
    CHECK_OK(sched_init(&sc, &pol, NULL, (SpsCurve){flat_at, NULL}, 4, 3, err), err);
    float hi[3] = {5, 5, 5}, lo[3] = {-5, -5, -5};
    int n3 = 3;
    uint64_t before = ds_alloc_count();
    CHECK(sched_choose_one(&sc, hi, n3) == 3); /* no history: Algorithm 1 (flat SPS admits all) */
    CHECK(sched_choose_one(&sc, hi, n3) == 3);
    CHECK(sched_choose_one(&sc, lo, n3) == 3); /* K from call 1 (all admitted) */
    CHECK(ds_alloc_count() == before);
    sched_free(&sc);
}

static void test_calibration_file(void) {
    char err[DS_ERR_LEN], path[1200];
    Calibration c;
    const char *dir = test_tmpdir("calib");
    CHECK_OK(calib_load(dir, &c, err), err); /* absent: identity */
    CHECK(!c.loaded && c.temperature[0] == 1.0f && c.temperature[63] == 1.0f);
    snprintf(path, sizeof path, "%s/calibration.json", dir);
    const char *good = "{\"format\": \"dspark-calibration\", \"version\": 1, \"block_size\": 3, \"temperatures\": [0.5, 1.5, 2],"
                       " \"ece_before\": [0.1]}";
    CHECK_OK(ds_write_file_atomic(path, good, strlen(good), err), err);
    CHECK_OK(calib_load(dir, &c, err), err);
    CHECK(c.loaded && c.block_size == 3 && c.temperature[0] == 0.5f && c.temperature[1] == 1.5f && c.temperature[2] == 2.0f &&
          c.temperature[3] == 1.0f);
    const char *bad[] = {"{\"format\": \"dspark-calibration\", \"version\": 1, \"block_size\": 2, \"temperatures\": [1]}",
                         "{\"format\": \"other\", \"version\": 1, \"block_size\": 1, \"temperatures\": [1]}",
                         "{\"format\": \"dspark-calibration\", \"version\": 2, \"block_size\": 1, \"temperatures\": [1]}",
                         "{\"format\": \"dspark-calibration\", \"version\": 1, \"block_size\": 1, \"temperatures\": [0]}",
                         "{\"format\": \"dspark-calibration\", \"version\": 1, \"block_size\": 1, \"temperatures\": [\"x\"]}",
                         "{\"format\": \"dspark-calibration\", \"version\": 1, \"block_size\": 1, \"temper"};
    for (int i = 0; i < 6; i++) {
        CHECK_OK(ds_write_file_atomic(path, bad[i], strlen(bad[i]), err), err);
        ds_status rc = calib_load(dir, &c, err);
        CHECK_MSG(rc == DS_EFORMAT && strstr(err, "calibration.json") && !strchr(err, '\n') && c.temperature[0] == 1.0f,
                  "bad file %d: rc %d, err %s", i, (int)rc, err);
    }
}

int main(void) {
    RUN(test_appendix_a);
    RUN(test_alg1_cases);
    RUN(test_shrinks_with_concurrency);
    RUN(test_policy_parse);
    RUN(test_scheduler_object);
    RUN(test_calibration_file);
    return test_summary();
}
