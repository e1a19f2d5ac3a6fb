/* test_train_draft.c - the drafter's training forward and backward against DeepSpec.
 *
 * Fixtures (tests/data/tiny-qwen3, README "Training step"): DeepSpec's own Qwen3DSparkModel
 * forward + compute_dspark_loss + autograd in F32 on a GPU, for the four head types, with fixed
 * anchors (a dummy slot, a block running past the end). We compare the eval mask, the draft
 * logits and confidence logits, the loss and every gradient tensor (||g - ref|| / ||ref|| <=
 * 1e-4: F32 on both sides, different summation orders; measured errors are printed).
 * Independent checks: the heads' backward against central finite differences, the anchor
 * sampler's invariants and uniformity, chunked vocabulary == one chunk, dummies computed ==
 * dummies skipped, gradient accumulation, and errors that must be reported.
 * ctest: labels=unit timeout=300 */
#include "test.h"
#include "train_draft.h"

static Backend *g_be;
static Qwen3Model g_target;

static uint64_t g_rng = 12345;
static float frand(void) { /* uniform [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---------------- heads: finite differences ---------------- */

typedef struct {
    HeadWeights w;
    float *buf;          /* all weights */
    float *h;            /* [N][d] */
    int32_t *prev;
    float *Ru, *Rc;      /* random functional of u and conf */
    int nb;
} HeadCase;

/* L = sum(u * Ru) + sum(conf * Rc), in double */
static double head_loss(HeadCase *hc) {
    int N = hc->nb * hc->w.B;
    float *acts = ds_calloc(heads_act_floats(&hc->w, N), sizeof(float));
    HeadActs a;
    heads_acts_bind(&a, &hc->w, N, acts);
    heads_fwd(&hc->w, &a, hc->h, hc->prev, hc->nb);
    double L = 0;
    if (hc->w.type != MARKOV_NONE)
        for (size_t j = 0; j < (size_t)N * hc->w.r; j++) L += (double)a.u[j] * hc->Ru[j];
    if (hc->w.conf_in)
        for (int i = 0; i < N; i++) L += (double)a.conf[i] * hc->Rc[i];
    ds_free(acts);
    return L;
}

/* directional derivative along a random direction of x[n] vs the analytic gradient g[n] */
static void fd_check(HeadCase *hc, const char *name, float *x, const float *g, size_t n) {
    float *dir = ds_malloc(sizeof(float) * n), *save = ds_malloc(sizeof(float) * n);
    double an = 0, gn = 0;
    for (size_t j = 0; j < n; j++) { dir[j] = frand(); an += (double)dir[j] * g[j]; gn += (double)g[j] * g[j]; }
    memcpy(save, x, sizeof(float) * n);
    const float eps = 1e-2f;
    for (size_t j = 0; j < n; j++) x[j] = save[j] + eps * dir[j];
    double lp = head_loss(hc);
    for (size_t j = 0; j < n; j++) x[j] = save[j] - eps * dir[j];
    double lm = head_loss(hc);
    memcpy(x, save, sizeof(float) * n);
    double fd = (lp - lm) / (2.0 * eps);
    /* eps 1e-2: truncation O(eps^2 f''') ~ 1e-4 relative for these O(1) smooth functions;
     * F32 rounding of L (~1e-7 |L|) / eps ~ 1e-5. Tolerance 2e-3 of the gradient's scale. */
    double scale = sqrt(gn * (double)n) + 1e-3;
    CHECK_MSG(fabs(fd - an) <= 2e-3 * scale, "%s: fd %.7g analytic %.7g (type %d)", name, fd, an, (int)hc->w.type);
    if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  %s type %d: fd %.7g an %.7g\n", name, (int)hc->w.type, fd, an);
    ds_free(dir);
    ds_free(save);
}

static void heads_case(MarkovType type, bool conf, bool conf_markov) {
    const int V = 11, d = 6, r = 4, B = 3, nb = 2, N = nb * B;
    HeadCase hc;
    memset(&hc, 0, sizeof hc);
    hc.nb = nb;
    HeadWeights *w = &hc.w;
    w->type = type; w->V = V; w->d = d; w->r = type == MARKOV_NONE ? 0 : r; w->B = B;
    w->conf_in = conf ? d + (conf_markov ? r : 0) : 0;
    size_t sz[8] = {(size_t)V * r, (size_t)V * r, (size_t)r * (d + r), (size_t)r, (size_t)3 * r * (2 * r + d), (size_t)3 * r,
                    (size_t)(d + r), 1};
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += sz[i];
    hc.buf = ds_malloc(sizeof(float) * total);
    float *gbuf = ds_calloc(total, sizeof(float));
    for (size_t j = 0; j < total; j++) hc.buf[j] = 0.5f * frand();
    float *pw[8], *pg[8];
    size_t off = 0;
    for (int i = 0; i < 8; i++) { pw[i] = hc.buf + off; pg[i] = gbuf + off; off += sz[i]; }
    w->w1 = pw[0]; w->w2 = pw[1]; w->gate_w = pw[2]; w->gate_b = pw[3]; w->joint_w = pw[4]; w->joint_b = pw[5];
    w->conf_w = pw[6]; w->conf_b = pw[7];
    HeadGrads g = {pg[0], pg[1], pg[2], pg[3], pg[4], pg[5], pg[6], pg[7]};
    hc.h = ds_malloc(sizeof(float) * N * d);
    hc.prev = ds_malloc(sizeof(int32_t) * N);
    hc.Ru = ds_malloc(sizeof(float) * N * r);
    hc.Rc = ds_malloc(sizeof(float) * N);
    for (int j = 0; j < N * d; j++) hc.h[j] = frand();
    for (int i = 0; i < N; i++) hc.prev[i] = (i * 7 + 3) % V;
    hc.prev[4] = hc.prev[1]; /* a repeated token: W1's scatter-add */
    for (int j = 0; j < N * r; j++) hc.Ru[j] = frand();
    for (int i = 0; i < N; i++) hc.Rc[i] = frand();
    /* analytic */
    float *acts = ds_calloc(heads_act_floats(w, N), sizeof(float));
    float *scratch = ds_calloc(heads_bwd_scratch_floats(w, N), sizeof(float));
    float *d_h = ds_calloc((size_t)N * d, sizeof(float));
    HeadActs a;
    heads_acts_bind(&a, w, N, acts);
    heads_fwd(w, &a, hc.h, hc.prev, nb);
    heads_bwd(w, &a, &g, d_h, hc.Ru, conf ? hc.Rc : NULL, hc.h, hc.prev, nb, scratch);
    fd_check(&hc, "h", hc.h, d_h, (size_t)N * d);
    if (type != MARKOV_NONE || conf_markov) fd_check(&hc, "W1", pw[0], pg[0], sz[0]);
    if (type == MARKOV_GATED) { fd_check(&hc, "gate_w", pw[2], pg[2], sz[2]); fd_check(&hc, "gate_b", pw[3], pg[3], sz[3]); }
    if (type == MARKOV_RNN) { fd_check(&hc, "joint_w", pw[4], pg[4], sz[4]); fd_check(&hc, "joint_b", pw[5], pg[5], sz[5]); }
    if (conf) { fd_check(&hc, "conf_w", pw[6], pg[6], (size_t)w->conf_in); fd_check(&hc, "conf_b", pw[7], pg[7], 1); }
    /* the RNN state is reset per block: block 1 with block 0's inputs changed is unchanged */
    if (type == MARKOV_RNN) {
        float *u1 = ds_malloc(sizeof(float) * B * r);
        memcpy(u1, a.u + (size_t)B * r, sizeof(float) * B * r);
        for (int j = 0; j < B * d; j++) hc.h[j] += 1.0f;
        heads_fwd(w, &a, hc.h, hc.prev, nb);
        CHECK(memcmp(u1, a.u + (size_t)B * r, sizeof(float) * B * r) == 0);
        ds_free(u1);
    }
    ds_free(acts); ds_free(scratch); ds_free(d_h); ds_free(gbuf); ds_free(hc.buf); ds_free(hc.h); ds_free(hc.prev);
    ds_free(hc.Ru); ds_free(hc.Rc);
}

static void test_heads_fd(void) {
    heads_case(MARKOV_VANILLA, true, true);
    heads_case(MARKOV_GATED, true, true);
    heads_case(MARKOV_RNN, true, true);
    heads_case(MARKOV_VANILLA, true, false);
    heads_case(MARKOV_NONE, true, false);
    heads_case(MARKOV_GATED, false, false);
}

/* ---------------- anchors ---------------- */

static void test_anchor_sampling(void) {
    enum { S = 30, A = 8 };
    uint8_t mask[S], keep[A];
    int32_t anc[A];
    for (int i = 0; i < S; i++) mask[i] = (i >= 5 && i < 12) || i >= 20; /* candidates 5..10, 20..28 */
    uint64_t rng = 7;
    int counts[S] = {0};
    const int trials = 4000;
    for (int t = 0; t < trials; t++) {
        int nc = train_sample_anchors(mask, S, A, &rng, anc, keep);
        CHECK(nc == 15);
        for (int i = 0; i < A; i++) {
            CHECK(keep[i]);
            CHECK(mask[anc[i]] && mask[anc[i] + 1]);
            if (i) CHECK(anc[i] > anc[i - 1]); /* sorted, distinct */
            counts[anc[i]]++;
        }
    }
    /* uniform: each candidate drawn with probability A/15; 4000 trials -> mean 2133, sd ~32 */
    double expect = (double)trials * A / 15.0;
    for (int p = 0; p < S; p++)
        if (mask[p] && p + 1 < S && mask[p + 1]) CHECK_MSG(fabs(counts[p] - expect) < 6 * sqrt(expect), "pos %d: %d vs %.0f", p, counts[p], expect);
        else CHECK(counts[p] == 0);
    /* fewer candidates than anchors: all of them, then dummies (anchor 0, keep 0) */
    int32_t anc2[20];
    uint8_t keep2[20];
    int nc = train_sample_anchors(mask, S, 20, &rng, anc2, keep2);
    CHECK(nc == 15);
    for (int i = 0; i < 20; i++) CHECK(keep2[i] == (i < 15) && (i < 15 || anc2[i] == 0));
}

/* ---------------- fixtures ---------------- */

static int64_t elem_i(const NpyArray *a, size_t i) {
    switch (a->dtype) {
        case DS_I64: return ((const int64_t *)a->data)[i];
        case DS_I32: return ((const int32_t *)a->data)[i];
        case DS_F32: return (int64_t)((const float *)a->data)[i];
        default: return ((const uint8_t *)a->data)[i];
    }
}

typedef struct {
    int S, A, m, d;
    int32_t ids[64];
    uint8_t loss_mask[64], keep[16];
    int32_t anchors[16];
    float *features, *last_hidden;
} Fixture;

static void load_fixture(Fixture *f, const char *h, const DraftConfig *cfg) {
    NpyArray ids, lm, an, kp, layers, fn;
    char rel[128], err[DS_ERR_LEN];
    CHECK_OK(npy_read(test_data("tiny-qwen3/target_ids.npy"), &ids, err), err);
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_loss_mask.npy", h);
    CHECK_OK(npy_read(test_data(rel), &lm, err), err);
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_anchors.npy", h);
    CHECK_OK(npy_read(test_data(rel), &an, err), err);
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_anchor_keep.npy", h);
    CHECK_OK(npy_read(test_data(rel), &kp, err), err);
    test_load_f32("tiny-qwen3/target_layers.npy", &layers);
    test_load_f32("tiny-qwen3/target_final_norm.npy", &fn);
    f->S = (int)ids.numel;
    f->A = (int)an.numel;
    f->d = (int)fn.shape[1];
    f->m = cfg->n_target_layers;
    DS_ASSERT(f->S <= 64 && f->A <= 16);
    for (int i = 0; i < f->S; i++) { f->ids[i] = (int32_t)elem_i(&ids, i); f->loss_mask[i] = elem_i(&lm, i) != 0; }
    for (int i = 0; i < f->A; i++) { f->anchors[i] = (int32_t)elem_i(&an, i); f->keep[i] = elem_i(&kp, i) != 0; }
    /* features = rows id+1 of target_layers (README), concatenated in target_layer_ids order */
    f->features = ds_malloc(sizeof(float) * (size_t)f->S * f->m * f->d);
    f->last_hidden = ds_malloc(sizeof(float) * (size_t)f->S * f->d);
    const float *L = layers.data;
    for (int i = 0; i < f->S; i++)
        for (int j = 0; j < f->m; j++)
            memcpy(f->features + ((size_t)i * f->m + j) * f->d, L + ((size_t)(cfg->target_layer_ids[j] + 1) * f->S + i) * f->d,
                   sizeof(float) * f->d);
    memcpy(f->last_hidden, fn.data, sizeof(float) * (size_t)f->S * f->d);
    npy_free(&ids); npy_free(&lm); npy_free(&an); npy_free(&kp); npy_free(&layers); npy_free(&fn);
}

static void free_fixture(Fixture *f) { ds_free(f->features); ds_free(f->last_hidden); }

static ds_status setup(TrainDraft *t, const char *h, int max_seq, int A, char *err) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s", test_data(""));
    snprintf(dir, sizeof dir, "%s/tiny-qwen3/draft-%s", test_data("."), h);
    snprintf(path, sizeof path, "%s/config.json", dir);
    DraftConfig cfg;
    ds_status rc = draft_config_load(&cfg, path, err);
    if (rc) return rc;
    if ((rc = train_draft_init(t, &cfg, &g_target, max_seq, A, err))) return rc;
    if ((rc = train_draft_load(t, dir, err))) { train_draft_free(t); return rc; }
    return DS_OK;
}

typedef struct { const char *h; double worst_group[6]; } GradReport;
static const char *group_of(const char *name, int *gi) {
    static const char *names[6] = {"attention", "mlp+norms", "context (fc, hidden_norm)", "markov head", "confidence head", "final norm"};
    if (strstr(name, "self_attn")) *gi = 0;
    else if (strstr(name, "layers.")) *gi = 1;
    else if (strstr(name, "fc.") == name || strstr(name, "hidden_norm")) *gi = 2;
    else if (strstr(name, "markov_head")) *gi = 3;
    else if (strstr(name, "confidence_head")) *gi = 4;
    else *gi = 5;
    return names[*gi];
}
static void report_grad(const char *name, double rel, double ref_norm, void *user) {
    GradReport *r = user;
    int gi;
    group_of(name, &gi);
    if (rel > r->worst_group[gi]) r->worst_group[gi] = rel;
    if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "    %s %s: rel %.3g (|ref| %.3g)\n", r->h, name, rel, ref_norm);
    CHECK_MSG(rel <= 1e-4, "%s %s: gradient rel err %.3g", r->h, name, rel);
}

static void check_fixture(const char *h) {
    char err[DS_ERR_LEN], rel[128];
    TrainDraft t;
    Fixture f;
    CHECK_OK(setup(&t, h, 40, 5, err), err);
    if (g_checks_failed) return;
    load_fixture(&f, h, &t.cfg);
    const int B = t.cfg.block_size, V = t.cfg.base.vocab_size, N = f.A * B;
    /* features by our own target forward equal the fixture's (the helper the trainer uses) */
    float *feat = ds_malloc(sizeof(float) * (size_t)f.S * f.m * f.d), *last = ds_malloc(sizeof(float) * (size_t)f.S * f.d);
    CHECK_OK(train_draft_features(&g_target, &t.cfg, f.ids, f.S, feat, last, err), err);
    CHECK_CLOSE("features", feat, f.features, (size_t)f.S * f.m * f.d, 1e-5f, 1e-4f);
    CHECK_CLOSE("last_hidden", last, f.last_hidden, (size_t)f.S * f.d, 1e-5f, 1e-4f);
    float *logits = ds_malloc(sizeof(float) * (size_t)N * V);
    t.dbg_logits = logits;
    TrainLossCfg lc = train_loss_default();
    TrainDraftStats st;
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, f.A, NULL, &lc, 1.0f, &st, err), err);
    /* eval mask */
    NpyArray em, lg, cf, ls;
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_eval_mask.npy", h);
    CHECK_OK(npy_read(test_data(rel), &em, err), err);
    for (int i = 0; i < N; i++) CHECK(t.eval_mask[i] == (float)elem_i(&em, i));
    /* logits: F32 through 2 layers + heads, O(3) values; 2e-5 absolute */
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_train_logits.npy", h);
    float *ref_logits = test_load_f32(rel, &lg);
    double lerr = 0;
    for (size_t j = 0; j < (size_t)N * V; j++) lerr = fmax(lerr, fabs(logits[j] - ref_logits[j]));
    CHECK_CLOSE("train logits", logits, ref_logits, (size_t)N * V, 2e-5f, 1e-5f);
    double cerr = 0;
    if (t.cfg.enable_confidence_head) {
        snprintf(rel, sizeof rel, "tiny-qwen3/%s_train_confidence.npy", h);
        float *ref_conf = test_load_f32(rel, &cf);
        for (int i = 0; i < N; i++) cerr = fmax(cerr, fabs(t.conf[i] - ref_conf[i]));
        CHECK_CLOSE("train confidence", t.conf, ref_conf, (size_t)N, 2e-5f, 1e-5f);
        npy_free(&cf);
    }
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_loss.npy", h);
    float *ref_loss = test_load_f32(rel, &ls);
    double loss_rel = fabs(st.parts.total - ref_loss[0]) / fabs(ref_loss[0]);
    CHECK_MSG(loss_rel < 1e-5, "%s loss %.8g ref %.8g", h, st.parts.total, ref_loss[0]);
    /* gradients */
    GradReport gr = {h, {0}};
    double worst = 0;
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_grads.safetensors", h);
    CHECK_OK(train_grads_compare(&t.grads, test_data(rel), report_grad, &gr, &worst, err), err);
    fprintf(stderr, "  %-7s loss %.7f (ref %.7f, rel %.2g) max|logit err| %.2g max|conf err| %.2g; grad rel err: worst %.2g",
            h, st.parts.total, ref_loss[0], loss_rel, lerr, cerr, worst);
    for (int gi = 0; gi < 6; gi++) {
        const char *name;
        int dummy;
        static const char *probe[6] = {"self_attn", "layers.mlp", "fc.", "markov_head", "confidence_head", "norm"};
        name = group_of(probe[gi], &dummy);
        (void)dummy;
        fprintf(stderr, "%s %s %.2g", gi ? "," : " [", name, gr.worst_group[gi]);
    }
    fprintf(stderr, "]\n");
    /* metrics: accept_rate per slot within [0,1], tau in [1, B+1] */
    CHECK(st.n_kept == 4 && st.tau_blocks == 4);
    double tau = st.tau_sum / st.tau_blocks;
    CHECK(tau >= 1.0 && tau <= B + 1);
    for (int k = 0; k < B; k++) CHECK(st.accept_count[k] > 0 && st.accept_sum[k] >= 0 && st.accept_sum[k] <= st.accept_count[k]);
    if (t.cfg.enable_confidence_head) {
        double ae = st.conf_abs_err_sum / st.parts.den, bi = st.conf_bias_sum / st.parts.den;
        CHECK(ae > 0 && ae <= 1 && fabs(bi) <= ae + 1e-12 && fabs(st.conf_cumprod_bias_sum / st.parts.den) <= 1);
    } else CHECK(st.conf_abs_err_sum == 0);

    /* chunked vocabulary == one chunk (2 blocks per chunk: 3 chunks, one with the dummy) */
    ParamSet g1;
    CHECK_OK(params_like(&g1, &t.grads, err), err);
    memcpy(g1.data, t.grads.data, sizeof(float) * t.grads.numel);
    params_zero(&t.grads);
    t.chunk_blocks = 2;
    TrainDraftStats st2;
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, f.A, NULL, &lc, 1.0f, &st2, err), err);
    CHECK_MSG(fabs(st2.parts.total - st.parts.total) <= 1e-6 * fabs(st.parts.total), "chunked loss %.9g vs %.9g", st2.parts.total, st.parts.total);
    /* these three compare the same gradients summed in another order (BLAS blocking follows the
     * row count, and differs between CPUs): atol 1e-6 against gradients up to ~0.5, since small
     * gradients that are differences of large terms (the RNN head's) move by ~1e-7 */
    CHECK_CLOSE("chunked grads", t.grads.data, g1.data, t.grads.numel, 1e-6f, 1e-5f);
    /* dummies skipped: the 4 kept anchors alone give the same loss and gradients */
    params_zero(&t.grads);
    t.dbg_logits = NULL;
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, 4, NULL, &lc, 1.0f, &st2, err), err);
    CHECK_MSG(fabs(st2.parts.total - st.parts.total) <= 1e-6 * fabs(st.parts.total), "no-dummy loss %.9g vs %.9g", st2.parts.total, st.parts.total);
    CHECK_CLOSE("no-dummy grads", t.grads.data, g1.data, t.grads.numel, 1e-6f, 1e-5f);
    /* accumulation: two half-scaled steps add up to one step */
    params_zero(&t.grads);
    for (int k = 0; k < 2; k++)
        CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, f.A, NULL, &lc, 0.5f, NULL, err), err);
    CHECK_CLOSE("accumulated grads", t.grads.data, g1.data, t.grads.numel, 1e-6f, 1e-5f);
    params_free(&g1);
    npy_free(&em); npy_free(&lg); npy_free(&ls);
    ds_free(logits); ds_free(feat); ds_free(last);
    free_fixture(&f);
    train_draft_free(&t);
}

static void test_fixture_vanilla(void) { check_fixture("vanilla"); }
static void test_fixture_gated(void) { check_fixture("gated"); }
static void test_fixture_rnn(void) { check_fixture("rnn"); }
static void test_fixture_dflash(void) { check_fixture("dflash"); }

/* sampled anchors: a full step with the rng, stats consistent, loss finite, same rng same result */
static void test_sampled_step(void) {
    char err[DS_ERR_LEN];
    TrainDraft t;
    Fixture f;
    CHECK_OK(setup(&t, "rnn", 40, 8, err), err);
    if (g_checks_failed) return;
    load_fixture(&f, "rnn", &t.cfg);
    TrainLossCfg lc = train_loss_default();
    TrainDraftStats a, b;
    uint64_t r1 = 99, r2 = 99;
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, NULL, NULL, 8, &r1, &lc, 1.0f, &a, err), err);
    ParamSet g1;
    CHECK_OK(params_like(&g1, &t.grads, err), err);
    memcpy(g1.data, t.grads.data, sizeof(float) * t.grads.numel);
    params_zero(&t.grads);
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, NULL, NULL, 8, &r2, &lc, 1.0f, &b, err), err);
    CHECK(a.parts.total == b.parts.total && r1 == r2);
    CHECK(memcmp(g1.data, t.grads.data, sizeof(float) * t.grads.numel) == 0);
    CHECK(a.n_candidates == 31 && a.n_kept == 8 && isfinite(a.parts.total) && a.parts.total > 0);
    /* no valid anchor at all: zero loss, gradients untouched */
    uint8_t none[64] = {0};
    CHECK_OK(train_draft_step(&t, f.ids, none, f.S, f.features, f.last_hidden, NULL, NULL, 8, &r1, &lc, 1.0f, &b, err), err);
    CHECK(b.n_candidates == 0 && b.n_kept == 0 && b.parts.total == 0 && b.tau_blocks == 0);
    CHECK(memcmp(g1.data, t.grads.data, sizeof(float) * t.grads.numel) == 0);
    params_free(&g1);
    free_fixture(&f);
    train_draft_free(&t);
}

/* The whole step against central finite differences of its own loss, for loss settings the
 * fixtures do not cover (DeepSpec's DFlash config: ce 1, tv 0, conf 0, and no decay; odd alphas)
 * and an anchor at position 0 (no context keys at all), all slots supervised. Directional derivatives along a random
 * +-1 direction per tensor; eps 1e-3 on an F32 forward whose loss carries ~1e-7 relative
 * rounding: measured agreement ~3e-4 relative; tolerance 5e-3 (the L1 kinks are rarely crossed). */
static void test_step_fd(void) {
    char err[DS_ERR_LEN];
    TrainDraft t;
    Fixture f;
    CHECK_OK(setup(&t, "gated", 40, 3, err), err);
    if (g_checks_failed) return;
    load_fixture(&f, "gated", &t.cfg);
    int32_t anc[3] = {0, 13, 30};
    uint8_t keep[3] = {1, 1, 1};
    uint8_t mask[64];
    for (int i = 0; i < f.S; i++) mask[i] = 1;
    /* conf_alpha 0: the BCE's soft label is detached (DeepSpec), so its analytic gradient is
     * not the derivative of the loss value; the confidence path is checked by the fixtures */
    TrainLossCfg cfgs[2] = {{0.0f, 1.0f, 0.0f, 0.0f}, {2.0f, 0.3f, 0.5f, 0.0f}};
    static const char *names[] = {"fc.weight", "hidden_norm.weight", "layers.0.self_attn.k_norm.weight",
                                  "layers.1.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight",
                                  "markov_head.markov_w1.weight", "markov_head.gate_proj.weight", "confidence_head.proj.weight"};
    for (int c = 0; c < 2; c++) {
        params_zero(&t.grads);
        TrainDraftStats st;
        CHECK_OK(train_draft_step(&t, f.ids, mask, f.S, f.features, f.last_hidden, anc, keep, 3, NULL, &cfgs[c], 1.0f, &st, err), err);
        ParamSet ref; /* the analytic gradients (the FD steps below add to t.grads) */
        CHECK_OK(params_like(&ref, &t.grads, err), err);
        memcpy(ref.data, t.grads.data, sizeof(float) * t.grads.numel);
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            const ParamInfo *pi = params_find(&t.params, names[k]);
            float *w = t.params.data + pi->offset;
            const float *g = params_get(&ref, names[k]);
            float *save = ds_malloc(sizeof(float) * pi->numel);
            memcpy(save, w, sizeof(float) * pi->numel);
            double an = 0, gn = 0;
            const float eps = 1e-3f;
            uint64_t h = 77 + k;
            for (size_t j = 0; j < pi->numel; j++) {
                h = h * 6364136223846793005ull + 1442695040888963407ull;
                float dj = (h >> 63) ? 1.0f : -1.0f;
                an += (double)dj * g[j];
                gn += (double)g[j] * g[j];
                w[j] = save[j] + eps * dj;
            }
            TrainDraftStats sp, sm;
            CHECK_OK(train_draft_step(&t, f.ids, mask, f.S, f.features, f.last_hidden, anc, keep, 3, NULL, &cfgs[c], 1.0f, &sp, err), err);
            h = 77 + k;
            for (size_t j = 0; j < pi->numel; j++) {
                h = h * 6364136223846793005ull + 1442695040888963407ull;
                w[j] = save[j] - eps * ((h >> 63) ? 1.0f : -1.0f);
            }
            CHECK_OK(train_draft_step(&t, f.ids, mask, f.S, f.features, f.last_hidden, anc, keep, 3, NULL, &cfgs[c], 1.0f, &sm, err), err);
            memcpy(w, save, sizeof(float) * pi->numel);
            ds_free(save);
            double fd = (sp.parts.total - sm.parts.total) / (2.0 * eps);
            bool is_conf = strstr(names[k], "confidence") != NULL;
            if (is_conf && cfgs[c].conf_alpha == 0) { CHECK(gn == 0); continue; }
            CHECK_MSG(fabs(fd - an) <= 5e-3 * fabs(an) + 1e-4, "cfg %d %s: fd %.6g analytic %.6g", c, names[k], fd, an);
            if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  cfg %d %s: fd %.6g analytic %.6g\n", c, names[k], fd, an);
        }
        params_free(&ref);
    }
    free_fixture(&f);
    train_draft_free(&t);
}

/* cases that must fail with one line naming the problem */
static void test_errors(void) {
    char err[DS_ERR_LEN];
    TrainDraft t;
    Fixture f;
    CHECK_OK(setup(&t, "gated", 40, 5, err), err);
    if (g_checks_failed) return;
    load_fixture(&f, "gated", &t.cfg);
    TrainLossCfg lc = train_loss_default();
    int32_t bad[5] = {8, 13, 40, 3, 0};
    ds_status rc = train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, bad, f.keep, 5, NULL, &lc, 1.0f, NULL, err);
    CHECK(rc == DS_EARG && strstr(err, "anchor 2") && strstr(err, "40") && !strchr(err, '\n'));
    rc = train_draft_step(&t, f.ids, f.loss_mask, 41, f.features, f.last_hidden, f.anchors, f.keep, 5, NULL, &lc, 1.0f, NULL, err);
    CHECK(rc == DS_EARG && strstr(err, "41"));
    rc = train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, 6, NULL, &lc, 1.0f, NULL, err);
    CHECK(rc == DS_EARG && strstr(err, "anchors"));
    t.chunk_blocks = 6; /* beyond the buffers sized at init */
    rc = train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, 5, NULL, &lc, 1.0f, NULL, err);
    CHECK(rc == DS_EARG && strstr(err, "chunk_blocks 6"));
    t.chunk_blocks = 5;
    /* gradients of the gated drafter compared with the RNN's file: joint_proj missing */
    double worst;
    rc = train_grads_compare(&t.grads, test_data("tiny-qwen3/rnn_grads.safetensors"), NULL, NULL, &worst, err);
    CHECK(rc == DS_ECKPT && strstr(err, "markov_head.gate_proj.weight"));
    /* vanilla's gradients vs the gated file: same names present, but a wrong value must show */
    free_fixture(&f);
    train_draft_free(&t);
    CHECK_OK(setup(&t, "vanilla", 40, 5, err), err);
    load_fixture(&f, "vanilla", &t.cfg);
    CHECK_OK(train_draft_step(&t, f.ids, f.loss_mask, f.S, f.features, f.last_hidden, f.anchors, f.keep, f.A, NULL, &lc, 1.0f, NULL, err), err);
    CHECK_OK(train_grads_compare(&t.grads, test_data("tiny-qwen3/gated_grads.safetensors"), NULL, NULL, &worst, err), err);
    CHECK_MSG(worst > 1e-2, "vanilla vs gated grads: worst %.3g", worst);
    free_fixture(&f);
    train_draft_free(&t);
}

/* DeepSpec's initialisation: N(0, 0.02) matrices, zero biases, unit norms, frozen copies of the
 * target's embeddings; names and order of the checkpoint */
static void test_init_layout(void) {
    char err[DS_ERR_LEN], path[1100];
    DraftConfig cfg;
    snprintf(path, sizeof path, "%s/tiny-qwen3/draft-rnn/config.json", test_data("."));
    CHECK_OK(draft_config_load(&cfg, path, err), err);
    TrainDraft t;
    CHECK_OK(train_draft_init(&t, &cfg, &g_target, 16, 2, err), err);
    if (g_checks_failed) return;
    train_draft_init_weights(&t, 1);
    CHECK(strcmp(t.params.info[0].name, "embed_tokens.weight") == 0 && !t.params.info[0].trainable);
    CHECK(t.grads.n == t.params.n - 2 && !params_find(&t.grads, "lm_head.weight"));
    /* grads: the trainable tensors of params, in the same order */
    for (int i = 0, j = 0; i < t.params.n; i++)
        if (t.params.info[i].trainable) CHECK(strcmp(t.grads.info[j++].name, t.params.info[i].name) == 0);
    /* every trainable tensor of the fixture checkpoint is in the layout with its shape */
    double worst;
    CHECK_OK(train_grads_compare(&t.grads, test_data("tiny-qwen3/rnn_grads.safetensors"), NULL, NULL, &worst, err), err);
    const ParamInfo *w = params_find(&t.params, "markov_head.joint_proj.weight");
    const float *x = params_get(&t.params, "markov_head.joint_proj.weight");
    double s1 = 0, s2 = 0;
    for (size_t j = 0; j < w->numel; j++) { s1 += x[j]; s2 += (double)x[j] * x[j]; }
    double mean = s1 / w->numel, sd = sqrt(s2 / w->numel - mean * mean);
    CHECK_MSG(fabs(mean) < 0.002 && fabs(sd - 0.02) < 0.002, "init mean %.4g sd %.4g", mean, sd); /* 4608 samples */
    const float *b = params_get(&t.params, "markov_head.joint_proj.bias"), *n = params_get(&t.params, "layers.1.self_attn.k_norm.weight");
    CHECK(b[0] == 0 && b[47] == 0 && n[0] == 1 && n[15] == 1);
    /* frozen: the target's tables, widened */
    const float *e = params_get(&t.params, "embed_tokens.weight");
    const float *te = g_target.embed.host;
    CHECK(g_target.embed.dtype == DS_F32 && memcmp(e, te, sizeof(float) * 512 * 64) == 0);
    train_draft_free(&t);
}

int main(void) {
    char err[DS_ERR_LEN];
    if (backend_create("cpu", 0, &g_be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    if (qwen3_load(&g_target, test_data("tiny-qwen3/target"), g_be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    RUN(test_heads_fd);
    RUN(test_anchor_sampling);
    RUN(test_init_layout);
    RUN(test_fixture_vanilla);
    RUN(test_fixture_gated);
    RUN(test_fixture_rnn);
    RUN(test_fixture_dflash);
    RUN(test_sampled_step);
    RUN(test_step_fd);
    RUN(test_errors);
    qwen3_free(&g_target);
    g_be->destroy(g_be);
    return test_summary();
}
