/* test_calib_fit.c - the calibration math of src/calib_fit.c:
 *   - ECE and ROC-AUC against hand-computed values, AUC against a brute-force O(n^2) pair
 *     count (ties 1/2) on random data with many ties;
 *   - Sequential Temperature Scaling on synthetic rounds whose true temperatures are known
 *     (z ~ N(mu, sd), slot j accepted with probability sigmoid(z_j / T*_j), y_j = slots 0..j
 *     all accepted): the fit recovers every T*_j within 20% (|log T - log T*| < log 1.2;
 *     seen: at most 9% at 160k rounds, 14% at 40k; passes for 8 of 8 seeds at both sizes) and
 *     lowers ECE at every position (160k rounds; 60k under the sanitizers);
 *   - must fail: deliberately wrong temperatures (T* x 2, T* / 2) have higher ECE than the fit,
 *     and fitting each position on its own (ignoring the earlier positions' temperatures,
 *     i.e. not sequential) misses at least two of the three later true temperatures by more than 20%.
 * ctest: labels=unit */
#include "test.h"

#include "calib_fit.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double uniform(void) { /* splitmix64 -> [0, 1) */
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static double normal(void) { return sqrt(-2 * log(1 - uniform())) * cos(2 * M_PI * uniform()); }

static void test_ece_by_hand(void) {
    /* bins of 0.05: {0.11, 0.13} -> bin 2 (mean p 0.12, mean y 0.5), 0.82 -> 16, 0.93 -> 18,
     * 0.97 -> 19: ECE = (2*0.38 + 0.18 + 0.07 + 0.97) / 5 = 0.396 */
    double p[] = {0.11, 0.13, 0.82, 0.93, 0.97};
    uint8_t y[] = {0, 1, 1, 1, 0};
    CHECK(fabs(calib_ece(p, y, 5, 20) - 0.396) < 1e-12);
    /* one bin: |mean p - mean y| = |0.592 - 0.6| */
    CHECK(fabs(calib_ece(p, y, 5, 1) - 0.008) < 1e-12);
    /* perfectly calibrated bins give 0; p = 1 lands in the last bin, not past it */
    double q[] = {0.25, 0.25, 0.25, 0.25, 1.0};
    uint8_t w[] = {1, 0, 0, 0, 1};
    CHECK(fabs(calib_ece(q, w, 5, 20)) < 1e-15);
    CHECK(isnan(calib_ece(q, w, 0, 20)));
    CHECK(isnan(calib_ece(q, w, 5, CALIB_MAX_BINS + 1)));
    int count[20];
    double mp[20], my[20];
    calib_reliability(p, y, 5, 20, count, mp, my);
    CHECK(count[2] == 2 && fabs(mp[2] - 0.12) < 1e-12 && my[2] == 0.5 && count[19] == 1 && isnan(mp[0]));
}

static double auc_brute(const double *p, const uint8_t *y, int n) {
    double s = 0, pairs = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            if (y[i] && !y[k]) { pairs++; s += p[i] > p[k] ? 1 : p[i] == p[k] ? 0.5 : 0; }
    return pairs ? s / pairs : NAN;
}

static void test_auc(void) {
    double p[] = {0.11, 0.13, 0.82, 0.93, 0.97};
    uint8_t y[] = {0, 1, 1, 1, 0};
    CHECK(fabs(calib_roc_auc(p, y, 5) - 0.5) < 1e-12); /* 3 of 6 pairs ordered */
    double t[] = {0.5, 0.5, 0.7, 0.2};                 /* one tied pair: (0.5 + 1 + 1 + 1) / 4 */
    uint8_t ty[] = {1, 0, 1, 0};
    CHECK(fabs(calib_roc_auc(t, ty, 4) - 0.875) < 1e-12);
    uint8_t all[] = {1, 1, 1, 1};
    CHECK(isnan(calib_roc_auc(t, all, 4)));
    enum { N = 700 };
    double r[N];
    uint8_t ry[N];
    for (int i = 0; i < N; i++) {
        r[i] = floor(uniform() * 40) / 40; /* 40 distinct values: many ties */
        ry[i] = uniform() < 0.2 + 0.6 * r[i];
    }
    double a = calib_roc_auc(r, ry, N), b = auc_brute(r, ry, N);
    CHECK_MSG(fabs(a - b) < 1e-12, "auc %.15f brute %.15f", a, b);
    CHECK(a > 0.6); /* informative by construction */
}

/* synthetic rounds: B positions, every slot verified except a random tail in 10% of rounds */
enum { B = 4 };
#define TOL log(1.2)
static const double T_TRUE[B] = {0.5, 2.0, 1.0, 1.6};

static void synth(int rounds, float *z, uint8_t *valid, uint8_t *y) {
    for (int r = 0; r < rounds; r++) {
        int len = uniform() < 0.1 ? (int)(uniform() * B) : B, alive = 1;
        for (int j = 0; j < B; j++) {
            float zz = (float)(1.0 + 2.5 * normal());
            z[r * B + j] = zz;
            valid[r * B + j] = j < len;
            alive = alive && uniform() < 1 / (1 + exp(-zz / T_TRUE[j]));
            y[r * B + j] = (uint8_t)(j < len && alive);
        }
    }
}

static double ece_at(const float *z, const uint8_t *v, const uint8_t *y, int rounds, const double *temps, int j, double *pred,
                     uint8_t *lab) {
    int n = calib_predictions(z, v, y, rounds, B, temps, j, pred, lab);
    return calib_ece(pred, lab, n, CALIB_BINS);
}

static void test_sts_recovers_known_temperatures(void) {
    const int R = TEST_SANITIZED ? 60000 : 160000;
    float *z = malloc(sizeof(float) * R * B);
    uint8_t *v = malloc(R * B), *y = malloc(R * B), *lab = malloc(R);
    double *pred = malloc(sizeof(double) * R);
    synth(R, z, v, y);
    double t[B], ones[B] = {1, 1, 1, 1};
    int counts[B];
    calib_sts_fit(z, v, y, R, B, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX, CALIB_BINS, t, counts);
    for (int j = 0; j < B; j++) {
        double before = ece_at(z, v, y, R, ones, j, pred, lab), after = ece_at(z, v, y, R, t, j, pred, lab);
        if (getenv("DSPARK_TEST_VERBOSE"))
            fprintf(stderr, "  pos %d: n %d T %.3f (true %.2f) ECE %.4f -> %.4f\n", j, counts[j], t[j], T_TRUE[j], before, after);
        CHECK_MSG(fabs(log(t[j] / T_TRUE[j])) < TOL, "pos %d: T %.3f, true %.2f", j, t[j], T_TRUE[j]);
        CHECK_MSG(after < before, "pos %d: ECE %.4f -> %.4f", j, before, after);
        CHECK(counts[j] > R / 2 && counts[j] <= R);
    }
    /* the counts are the rows verified through j */
    int n3 = 0;
    for (int r = 0; r < R; r++) n3 += v[r * B + 3];
    CHECK(counts[3] == n3);
    /* must fail: wrong temperatures are worse than the fit at every position */
    for (int s = 0; s < 2; s++) {
        double wrong[B];
        for (int j = 0; j < B; j++) wrong[j] = s ? t[j] / 2 : t[j] * 2;
        for (int j = 0; j < B; j++) {
            double e_fit = ece_at(z, v, y, R, t, j, pred, lab), e_wrong = ece_at(z, v, y, R, wrong, j, pred, lab);
            CHECK_MSG(e_wrong > e_fit, "pos %d: wrong T ECE %.4f <= fitted %.4f", j, e_wrong, e_fit);
        }
    }
    /* must fail: a non-sequential fit (each position alone, earlier slots at T = 1) misses */
    int missed = 0;
    for (int j = 1; j < B; j++) {
        double tj[B] = {1, 1, 1, 1}, grid[CALIB_GRID], best = INFINITY, tb = 1;
        calib_grid(grid, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX);
        for (int k = 0; k < CALIB_GRID; k++) {
            tj[j] = grid[k];
            double e = ece_at(z, v, y, R, tj, j, pred, lab);
            if (e < best) best = e, tb = grid[k];
        }
        missed += fabs(log(tb / T_TRUE[j])) >= TOL;
    }
    CHECK_MSG(missed >= 2, "a non-sequential fit recovered %d of 3 later temperatures", 3 - missed);
    free(z); free(v); free(y); free(lab); free(pred);
}

static void test_sts_edge_cases(void) {
    /* no rows at all, and a position nobody reached: T stays 1 there */
    float z[2 * 3] = {2, 1, 0, -1, 0, 0};
    uint8_t v[2 * 3] = {1, 1, 0, 1, 0, 0}, y[2 * 3] = {1, 0, 0, 0, 0, 0};
    double t[3];
    int c[3];
    calib_sts_fit(z, v, y, 2, 3, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX, CALIB_BINS, t, c);
    CHECK(c[0] == 2 && c[1] == 1 && c[2] == 0 && t[2] == 1);
    CHECK(t[0] >= CALIB_T_MIN && t[0] <= CALIB_T_MAX);
    calib_sts_fit(z, v, y, 0, 3, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX, CALIB_BINS, t, c);
    CHECK(t[0] == 1 && t[1] == 1 && t[2] == 1 && c[0] == 0);
    double g[CALIB_GRID];
    calib_grid(g, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX);
    CHECK(g[0] == CALIB_T_MIN && fabs(g[CALIB_GRID - 1] - CALIB_T_MAX) < 1e-12 && fabs(g[1] / g[0] - pow(16, 1.0 / 63)) < 1e-12);
}

int main(void) {
    RUN(test_ece_by_hand);
    RUN(test_auc);
    RUN(test_sts_recovers_known_temperatures);
    RUN(test_sts_edge_cases);
    return test_summary();
}
