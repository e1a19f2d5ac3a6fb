/* test_drafter.c - the four fixture drafters (vanilla, gated, rnn, dflash) against DeepSpec's
 * own PyTorch modules (tests/data/tiny-qwen3, float32): round 1 (context ids[:24], anchor
 * ids[24]) hidden, base logits, teacher-forced logits, confidence logits and the greedy draft;
 * round 2 through the real cache path (round 1, crop to 24, append the features of 24..26,
 * draft at 27). Plus loader errors: a missing tensor, a wrong shape, a mismatched target.
 * ctest: labels=unit;ref */
#include "drafter.h"
#include "safetensors.h"
#include "sample.h"
#include "test.h"

#define P 24

static Qwen3Model g_target;
static Backend *g_be;
static int32_t g_ids[40];

/* target features of ids[:n] for the drafter's layer ids, [n][m*d] (backend == host memory) */
static float *target_features(const Drafter *d, int n) {
    char err[DS_ERR_LEN];
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_target, n, 1, d->cfg.n_target_layers, 1, 64, err), err);
    int32_t pos[40], row = n - 1;
    for (int i = 0; i < n; i++) pos[i] = i;
    Qwen3Batch b = {.n = n, .tokens = g_ids, .pos = pos, .logit_rows = &row, .n_logits = 1,
                    .feature_layers = d->cfg.target_layer_ids, .n_feature_layers = d->cfg.n_target_layers};
    CHECK_OK(qwen3_forward(&g_target, &st, &b, err), err);
    size_t sz = sizeof(float) * (size_t)n * d->cfg.n_target_layers * d->cfg.base.hidden_size;
    float *f = malloc(sz);
    memcpy(f, st.features, sz);
    qwen3_state_free(&st, &g_target);
    return f;
}

static void check_npy(const char *head, const char *what, const float *got, size_t n, float tol) {
    char rel[256], name[128];
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_%s.npy", head, what);
    snprintf(name, sizeof name, "%s %s", head, what);
    NpyArray a;
    float *ref = test_load_f32(rel, &a);
    CHECK(a.numel == n);
    CHECK_CLOSE(name, got, ref, n, tol, 0);
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)got[i] - ref[i]));
    printf("  %-8s %-18s max|err| %.3g\n", head, what, mx);
    npy_free(&a);
}

static void run_head(const char *head) {
    char err[DS_ERR_LEN], dir[128];
    snprintf(dir, sizeof dir, "tiny-qwen3/draft-%s", head);
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data(dir), &g_target, g_be, err), err);
    if (!d.layers) return;
    CHECK(d.shared_embed && d.shared_lm_head); /* copied from the target: one copy */
    const int B = d.cfg.block_size, D = d.cfg.base.hidden_size, V = d.cfg.base.vocab_size;
    DraftState s;
    CHECK_OK(draft_state_init(&s, &d, 64, 16, err), err); /* chunk 16 < 24: two append calls */
    float *feat = target_features(&d, P + 3);
    size_t fw = (size_t)d.cfg.n_target_layers * D;
    /* round 1 */
    CHECK_OK(drafter_append_context(&d, &s, feat, P, 0, err), err);
    CHECK_OK(drafter_block(&d, &s, g_ids[P], P, err), err);
    float *logits = malloc(sizeof(float) * B * V), conf[8], greedy[8];
    check_npy(head, "r1_hidden", s.hidden, (size_t)B * D, 1e-4f);
    check_npy(head, "r1_base_logits", s.base_logits, (size_t)B * V, 1e-4f);
    for (int j = 0; j < B; j++) { /* teacher-forced: slot j sees ids[P+j-1] (slot 0: the anchor) */
        CHECK_OK(drafter_head(&d, &s, j, g_ids[P + j], &conf[j], err), err);
        memcpy(logits + (size_t)j * V, s.logits_host, sizeof(float) * V);
    }
    check_npy(head, "r1_logits", logits, (size_t)B * V, 1e-4f);
    if (d.cfg.enable_confidence_head) check_npy(head, "r1_confidence_logits", conf, (size_t)B, 1e-4f);
    /* greedy: the drafter's own previous tokens; the block forward is recomputed (RNN reset) */
    CHECK(s.cache_len == P);
    CHECK_OK(drafter_block(&d, &s, g_ids[P], P, err), err);
    int32_t prev = g_ids[P];
    for (int j = 0; j < B; j++) {
        CHECK_OK(drafter_head(&d, &s, j, prev, NULL, err), err);
        prev = argmax_f32(s.logits_host, V);
        greedy[j] = (float)prev;
    }
    NpyArray g;
    char rel[128];
    snprintf(rel, sizeof rel, "tiny-qwen3/%s_r1_greedy_draft.npy", head);
    CHECK_OK(npy_read(test_data(rel), &g, err), err);
    for (int j = 0; j < B; j++) CHECK_MSG((int64_t)greedy[j] == ((int64_t *)g.data)[j], "%s greedy[%d] %g vs %lld", head, j, greedy[j], (long long)((int64_t *)g.data)[j]);
    npy_free(&g);
    /* round 2: crop (the block did not extend the context), append 24..26, draft at 27 */
    CHECK(s.cache_len == P);
    CHECK_OK(drafter_append_context(&d, &s, feat + (size_t)P * fw, 3, P, err), err);
    CHECK_OK(drafter_block(&d, &s, g_ids[P + 3], P + 3, err), err);
    check_npy(head, "r2_hidden", s.hidden, (size_t)B * D, 1e-4f);
    check_npy(head, "r2_base_logits", s.base_logits, (size_t)B * V, 1e-4f);
    /* must fail: appending at a position other than the cache end, a block past the cache */
    CHECK(drafter_append_context(&d, &s, feat, 1, P, err) == DS_EARG);
    CHECK(drafter_block(&d, &s, g_ids[0], 61, err) == DS_EARG);
    free(feat);
    free(logits);
    draft_state_free(&s, &d);
    drafter_free(&d);
}

static void test_vanilla(void) { run_head("vanilla"); }
static void test_gated(void) { run_head("gated"); }
static void test_rnn(void) { run_head("rnn"); }
static void test_dflash(void) { run_head("dflash"); }

/* Rewrite a fixture checkpoint with one tensor dropped or reshaped: the loader names it. */
static void test_load_errors(void) {
    char err[DS_ERR_LEN], path[1200], cmd[2400];
    StModel st;
    CHECK_OK(st_open(&st, test_data("tiny-qwen3/draft-gated"), err), err);
    const char *tmp = test_tmpdir("drafter_bad");
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/'", test_data("tiny-qwen3/draft-gated/config.json"), tmp);
    CHECK(system(cmd) == 0);
    StWriteTensor *w = calloc((size_t)st.n_tensors, sizeof *w);
    for (int variant = 0; variant < 2; variant++) {
        int n = 0;
        for (int i = 0; i < st.n_tensors; i++) {
            const StTensor *t = &st.tensors[i];
            bool victim = strcmp(t->name, "markov_head.gate_proj.bias") == 0;
            if (variant == 0 && victim) continue; /* missing */
            w[n] = (StWriteTensor){t->name, t->dtype, t->n_dims, {0}, t->data};
            memcpy(w[n].shape, t->shape, sizeof t->shape);
            if (variant == 1 && victim) { w[n].shape[0] = 8; } /* wrong shape (half the bytes) */
            n++;
        }
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        CHECK_OK(st_write(path, w, n, NULL, err), err);
        Drafter d;
        ds_status rc = drafter_load(&d, tmp, &g_target, g_be, err);
        CHECK(rc == DS_ECKPT);
        CHECK_MSG(strstr(err, "markov_head.gate_proj.bias") != NULL, "error does not name the tensor: %s", err);
    }
    free(w);
    st_close(&st);
    /* a target with another layer count: layer id 2 is its last layer */
    Qwen3Model small = g_target;
    small.cfg.n_layers = 3;
    Drafter d;
    CHECK(drafter_load(&d, test_data("tiny-qwen3/draft-vanilla"), &small, g_be, err) == DS_ECKPT);
    CHECK(strstr(err, "target_layer_ids") != NULL);
    small.cfg.hidden_size = 32;
    CHECK(drafter_load(&d, test_data("tiny-qwen3/draft-vanilla"), &small, g_be, err) == DS_ECKPT);
}

int main(void) {
    char err[DS_ERR_LEN];
    g_be = backend_cpu_create(0);
    if (qwen3_load(&g_target, test_data("tiny-qwen3/target"), g_be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    NpyArray ids;
    if (npy_read(test_data("tiny-qwen3/target_ids.npy"), &ids, err)) { fprintf(stderr, "%s\n", err); return 2; }
    for (int i = 0; i < 40; i++) g_ids[i] = (int32_t)((int64_t *)ids.data)[i];
    npy_free(&ids);
    RUN(test_vanilla);
    RUN(test_gated);
    RUN(test_rnn);
    RUN(test_dflash);
    RUN(test_load_errors);
    qwen3_free(&g_target);
    g_be->destroy(g_be);
    return test_summary();
}
