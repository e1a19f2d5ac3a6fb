/* test_verify.c - verify_block on small hand-made distributions (V = 6), against the closed
 * form of speculative sampling: for one draft, P(first emitted token = x) =
 * q(x) min(1, p0(x)/q(x)) + (1 - sum_y min(q(y), p0(y))) * resid(x) = p0(x) exactly.
 * Also: the greedy rule, the bonus token after a full acceptance, the residual fallback,
 * no allocation, and the broken-verifier switches really change the law.
 * ctest: labels=unit */
#include "test.h"
#include "verify.h"

#define V 6

static const float P0[V] = {0.30f, 0.25f, 0.20f, 0.15f, 0.10f, 0.00f};
static const float Q0[V] = {0.05f, 0.45f, 0.10f, 0.10f, 0.10f, 0.20f};
static const float P1[V] = {0.10f, 0.10f, 0.10f, 0.10f, 0.10f, 0.50f};

/* empirical law of the first emitted token with the draft drawn from Q0 */
static void first_token_law(VerifyBug bug, int n, double *freq, double *accept_rate) {
    float pt[2 * V], q[V], resid[V], qr[V];
    memcpy(pt, P0, sizeof P0);
    memcpy(pt + V, P1, sizeof P1);
    memcpy(q, Q0, sizeof Q0);
    for (int i = 0; i < V; i++) qr[i] = Q0[i] * (i == 1 ? 0.6f : 1.0f); /* a distorted ratio denominator */
    Rng r;
    rng_seed(&r, 2024, 0);
    memset(freq, 0, sizeof(double) * V);
    int acc = 0;
    for (int s = 0; s < n; s++) {
        int32_t d = sample_from(q, V, rng_uniform(&r));
        VerifyResult vr = verify_block(pt, q, &d, 1, V, false, &r, resid, bug, qr);
        int32_t first = vr.n_accepted ? d : vr.next;
        freq[first] += 1.0 / n;
        acc += vr.n_accepted;
    }
    *accept_rate = (double)acc / n;
}

static void test_exact_law(void) {
    int n = TEST_SANITIZED ? 100000 : 400000;
    double f[V], acc, max_z = 0;
    first_token_law(VERIFY_EXACT, n, f, &acc);
    for (int i = 0; i < V; i++) {
        double sd = sqrt(P0[i] * (1 - P0[i]) / n) + 1e-12, z = fabs(f[i] - P0[i]) / sd;
        if (P0[i] == 0) CHECK(f[i] == 0); /* never emits a token the target excludes */
        else max_z = fmax(max_z, z);
    }
    /* acceptance = sum min(p, q) = 0.05+0.25+0.10+0.10+0.10 = 0.60 */
    printf("  exact: max |z| %.2f over %d draws, acceptance %.4f (theory 0.60)\n", max_z, n, acc);
    CHECK(max_z < 4.5);
    CHECK(fabs(acc - 0.60) < 5 * sqrt(0.24 / n));
    /* both broken verifiers move some probability by > 10 standard errors */
    VerifyBug bugs[2] = {VERIFY_BUG_RESIDUAL_PT, VERIFY_BUG_RATIO_Q};
    for (int b = 0; b < 2; b++) {
        first_token_law(bugs[b], n, f, &acc);
        double worst = 0;
        for (int i = 0; i < V; i++) worst = fmax(worst, fabs(f[i] - P0[i]) / (sqrt(P0[i] * (1 - P0[i]) / n) + 1e-12));
        printf("  bug %d: max |z| %.1f\n", b + 1, worst);
        CHECK(worst > 10);
    }
}

static void test_greedy_and_bonus(void) {
    float pt[3 * V] = {0}, resid[V];
    pt[2] = 1; pt[V + 4] = 1; pt[2 * V + 0] = 1; /* target argmax 2, then 4, then 0 */
    int32_t d[2] = {2, 4};
    VerifyResult r = verify_block(pt, NULL, d, 2, V, true, NULL, resid, VERIFY_EXACT, NULL);
    CHECK(r.n_accepted == 2 && r.next == 0);  /* all accepted: bonus = target argmax after them */
    d[1] = 3;
    r = verify_block(pt, NULL, d, 2, V, true, NULL, resid, VERIFY_EXACT, NULL);
    CHECK(r.n_accepted == 1 && r.next == 4);  /* rejected at slot 1: the target's token */
    d[0] = 1;
    r = verify_block(pt, NULL, d, 2, V, true, NULL, resid, VERIFY_EXACT, NULL);
    CHECK(r.n_accepted == 0 && r.next == 2);
    r = verify_block(pt, NULL, d, 0, V, true, NULL, resid, VERIFY_EXACT, NULL);
    CHECK(r.n_accepted == 0 && r.next == 2);  /* k = 0: plain decoding */
}

/* p == q up to rounding: acceptance is 1 except for float noise; a forced rejection (the
 * ratio bug with a huge denominator) hits the residual fallback and draws from p. */
static void test_fallback(void) {
    float pt[2 * V], q[V], qr[V], resid[V];
    memcpy(pt, P0, sizeof P0);
    memcpy(pt + V, P1, sizeof P1);
    memcpy(q, P0, sizeof P0);
    for (int i = 0; i < V; i++) qr[i] = 1e9f;
    Rng r;
    rng_seed(&r, 1, 0);
    int32_t d = 1;
    uint64_t before = ds_alloc_count();
    int hits[V] = {0};
    for (int s = 0; s < 20000; s++) {
        VerifyResult vr = verify_block(pt, q, &d, 1, V, false, &r, resid, VERIFY_BUG_RATIO_Q, qr);
        CHECK(vr.n_accepted == 0);
        hits[vr.next]++;
    }
    CHECK(ds_alloc_count() == before);
    CHECK(hits[5] == 0 && hits[0] > 5000 && hits[4] > 1500); /* drawn from p0 */
}

/* verify_peek_uniforms / verify_consume_uniforms (the GPU verifier's bookkeeping) leave the
 * stream exactly where verify_block leaves it, for every accept length; consuming for "all
 * accepted" after an early rejection must not */
static void test_uniform_bookkeeping(void) {
    Rng g;
    rng_seed(&g, 77, 3);
    int seen[9] = {0}, wrong_same = 0, wrong_cases = 0, cases = 0;
    for (int c = 0; c < 4000; c++) {
        const int k = (int)(rng_next(&g) % 8);
        float pt[9 * V], q[8 * V], resid[V];
        for (int j = 0; j <= k; j++) { /* random rows; p and q overlap partially */
            double sp = 0, sq = 0;
            for (int i = 0; i < V; i++) { pt[j * V + i] = (float)rng_uniform(&g); sp += pt[j * V + i]; }
            for (int i = 0; i < V; i++) pt[j * V + i] /= (float)sp;
            if (j == k) break;
            for (int i = 0; i < V; i++) { q[j * V + i] = pt[j * V + i] * (float)(0.2 + rng_uniform(&g)); sq += q[j * V + i]; }
            for (int i = 0; i < V; i++) q[j * V + i] /= (float)sq;
        }
        int32_t d[8];
        for (int j = 0; j < k; j++) d[j] = sample_from(q + j * V, V, rng_uniform(&g));
        const bool greedy = c % 10 == 0;
        Rng a, b;
        rng_seed(&a, (uint64_t)c, 9);
        b = a;
        VerifyResult vr = verify_block(pt, q, d, k, V, greedy, &a, resid, VERIFY_EXACT, NULL);
        double u[9];
        Rng before = b;
        verify_peek_uniforms(&b, k, greedy, u);
        CHECK(b.state == before.state); /* a peek does not advance */
        Rng c1 = b;
        verify_consume_uniforms(&b, k, greedy, vr.n_accepted);
        CHECK(b.state == a.state);
        if (!greedy) {
            seen[vr.n_accepted]++;
            if (vr.n_accepted < k - 1) {
                verify_consume_uniforms(&c1, k, false, k);
                wrong_same += c1.state == a.state;
                wrong_cases++;
            }
        }
        cases++;
    }
    CHECK_MSG(wrong_cases > 0 && wrong_same == 0, "%d of %d wrong accept counts left the stream in the same place", wrong_same, wrong_cases);
    for (int a = 0; a < 4; a++) CHECK_MSG(seen[a] > 0, "accept length %d never seen", a);
    printf("  %d cases; accept lengths 0/1/2/3: %d/%d/%d/%d\n", cases, seen[0], seen[1], seen[2], seen[3]);
}

int main(void) {
    RUN(test_exact_law);
    RUN(test_greedy_and_bonus);
    RUN(test_fallback);
    RUN(test_uniform_bookkeeping);
    return test_summary();
}
