/* spec_stat.h - the chi-square machinery of test_spec_stat.c, shared with test_cuda_sample.c
 * (the same test on the GPU's sampling path): the exact joint law of the first G generated
 * tokens under the target (g_t of spec_testing.h), and a chi-square run of spec_generate over
 * seeds with the noisy test source or a given ProposalSource. */
#ifndef DSPARK_SPEC_STAT_H
#define DSPARK_SPEC_STAT_H

#include "spec_testing.h"

/* ---- chi-square on the joint law of the first G generated tokens ---- */
#define G 3

/* P(t1, t2, t3) under the target, enumerated (sampler with top-k keeps it finite) */
static inline int exact_joint(const SamplerParams *sp, const int32_t *prompt, int np, int32_t (*cells)[G], double *prob, int cap) {
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
static inline double chi2_sf(double x, int df) {
    double k = df, z = (pow(x / k, 1.0 / 3) - (1 - 2 / (9 * k))) / sqrt(2 / (9 * k));
    return 0.5 * erfc(z / sqrt(2.0));
}

typedef struct { double chi2, p; int df; double tau; } Chi2Result;

/* src NULL: the noisy test source below; else a real drafter's source */
static inline Chi2Result chi2_run(VerifyBug bug, const SamplerParams *sp, int n_samples, const int32_t *prompt, int np,
                           int32_t (*cells)[G], const double *prob, int n_cells, ProposalSource *src) {
    char err[DS_ERR_LEN];
    NoisySource ns;
    ns_init(&ns, 4, 0.7f, 0.3f, 1234);
    ns.sharpen = 1.6f; /* q above p on the top tokens: their acceptance is where the bugs show */
    ns.offset = 200.0f; /* bf16 spacing 1 at 128..256: bf16(l/T) is off by up to 0.5 */
    SpecDecoder sd;
    CHECK_OK(spec_init(&sd, &g_t, src ? src : &ns.src, CTX, 16, err), err);
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

#endif
