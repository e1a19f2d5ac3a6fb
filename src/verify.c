/* verify.c - see verify.h. */
#include "verify.h"

VerifyResult verify_block(const float *pt, const float *q, const int32_t *drafts, int k, int V, bool greedy, Rng *rng,
                          float *resid, VerifyBug bug, const float *q_ratio) {
    VerifyResult r = {0, 0};
    if (greedy) {
        /* pt rows are one-hots at the target argmax (sample_dist) */
        for (int j = 0; j < k; j++) {
            if (!(pt[(size_t)j * V + drafts[j]] > 0.5f)) break;
            r.n_accepted++;
        }
        r.next = argmax_f32(pt + (size_t)r.n_accepted * V, V);
        return r;
    }
    for (int j = 0; j < k; j++) {
        const float *p = pt + (size_t)j * V, *qj = q + (size_t)j * V;
        int32_t x = drafts[j];
        float qx = (bug == VERIFY_BUG_RATIO_Q ? q_ratio + (size_t)j * V : qj)[x];
        double u = rng_uniform(rng);
        /* accept iff u < min(1, p/q); x was drawn from qj so qj[x] > 0 (the clamp is DeepSpec's) */
        if (u * (double)(qx > 1e-8f ? qx : 1e-8f) < (double)p[x]) { r.n_accepted++; continue; }
        /* rejected: residual max(0, p - q), renormalised */
        double mass = 0;
        for (int i = 0; i < V; i++) {
            float d = p[i] - qj[i];
            resid[i] = d > 0 ? d : 0.0f;
            mass += resid[i];
        }
        double u2 = rng_uniform(rng);
        if (bug == VERIFY_BUG_RESIDUAL_PT || mass <= 1e-8) r.next = sample_from(p, V, u2);
        else r.next = sample_from(resid, V, u2 * mass);
        return r;
    }
    r.next = sample_from(pt + (size_t)k * V, V, rng_uniform(rng));
    return r;
}

void verify_peek_uniforms(const Rng *rng, int L, bool greedy, double *u) {
    if (greedy) return;
    Rng r = *rng;
    for (int i = 0; i <= L; i++) u[i] = rng_uniform(&r);
}

void verify_consume_uniforms(Rng *rng, int L, bool greedy, int n_accepted) {
    int used = greedy ? 0 : n_accepted < L ? n_accepted + 2 : L + 1;
    for (int i = 0; i < used; i++) rng_uniform(rng);
}
