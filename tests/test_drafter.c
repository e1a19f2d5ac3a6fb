/* test_drafter.c - the four fixture drafters (vanilla, gated, rnn, dflash) against DeepSpec's
 * own PyTorch modules (tests/data/tiny-qwen3, float32): round 1 (context ids[:24], anchor
 * ids[24]) hidden, base logits, teacher-forced logits, confidence logits and the greedy draft;
 * round 2 through the real cache path (round 1, crop to 24, append the features of 24..26,
 * draft at 27). Plus loader errors: a missing tensor, a wrong shape, a mismatched target; and
 * the drafter's step-graph brackets on emulated graph hooks (bitwise the plain CPU backend); the
 * folded layers (target and drafters) on an emulated folding CPU backend (bitwise the plain path).
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

/* ---- step-graph brackets on the CPU (backend.h's contract, emulated) ----
 * A copy of the CPU backend whose graph_begin / graph_end act as the CUDA backend's may:
 * some brackets only "check" (their ops are not run) and graph_end says false, so the
 * caller must issue the same ops again; memory calls inside a bracket abort. The drafter
 * through it must give bitwise the plain CPU backend's outputs. */
static Backend g_fake, g_ops;  /* g_ops: the real op table, restored at graph_end */
static bool g_in_bracket, g_retry;
static long g_brackets, g_skipped, g_bad_keys;
static void no_mem(void) { fprintf(stderr, "test_drafter: memory call inside a step-graph bracket\n"); abort(); }
static void *nm_alloc(Backend *be, size_t n) { (void)be; (void)n; no_mem(); return NULL; }
static void nm_free(Backend *be, void *p) { (void)be; (void)p; no_mem(); }
static void nm_xfer(Backend *be, void *d, const void *s, size_t n) { (void)be; (void)d; (void)s; (void)n; no_mem(); }
static void nm_sync(Backend *be) { (void)be; no_mem(); }
static void sk_embed(Backend *be, float *o, const Weight *t, const int32_t *ids, int n) { (void)be; (void)o; (void)t; (void)ids; (void)n; }
static void sk_matmul(Backend *be, float *o, const float *x, const Weight *w, int n) { (void)be; (void)o; (void)x; (void)w; (void)n; }
static void sk_rmsnorm(Backend *be, float *o, const float *x, const Weight *w, int n, int dim, float eps) {
    (void)be; (void)o; (void)x; (void)w; (void)n; (void)dim; (void)eps;
}
static void sk_rope(Backend *be, float *x, const int32_t *pos, int n, int h, int hd, float th) {
    (void)be; (void)x; (void)pos; (void)n; (void)h; (void)hd; (void)th;
}
static void sk_kv_write(Backend *be, KvCache *kv, int l, const float *k, const float *v, const int32_t *sl, const int32_t *pos, int n) {
    (void)be; (void)kv; (void)l; (void)k; (void)v; (void)sl; (void)pos; (void)n;
}
static void sk_attention(Backend *be, float *o, const float *q, const KvCache *kv, int l, const int32_t *sl, const int32_t *kl, int n,
                         int h, int kvh, int hd) {
    (void)be; (void)o; (void)q; (void)kv; (void)l; (void)sl; (void)kl; (void)n; (void)h; (void)kvh; (void)hd;
}
static void sk_swiglu(Backend *be, float *o, const float *g, const float *u, size_t n) { (void)be; (void)o; (void)g; (void)u; (void)n; }
static void sk_add(Backend *be, float *x, const float *y, size_t n) { (void)be; (void)x; (void)y; (void)n; }
static void sk_gather(Backend *be, float *d, int ds, const float *s, int ss, const int32_t *r, int n, int c) {
    (void)be; (void)d; (void)ds; (void)s; (void)ss; (void)r; (void)n; (void)c;
}
static void sk_bias_act(Backend *be, float *x, const Weight *b, int n, int dim, int act) { (void)be; (void)x; (void)b; (void)n; (void)dim; (void)act; }
static void sk_ew(Backend *be, int op, float *o, const float *a, const float *b, const float *c, size_t n) {
    (void)be; (void)op; (void)o; (void)a; (void)b; (void)c; (void)n;
}
static void sk_copy(Backend *be, void *d, const void *s, size_t n) { (void)be; (void)d; (void)s; (void)n; }

static void fake_graph_begin(Backend *be, int key) {
    CHECK(!g_in_bracket);
    g_in_bracket = true;
    g_brackets++;
    if (key < GRAPH_KEY_DRAFT || key >= GRAPH_KEY_DRAFT + GRAPH_KEYS_DRAFT) g_bad_keys++;
    g_ops = *be;
    be->alloc = nm_alloc;
    be->free = nm_free;
    be->to_device = nm_xfer;
    be->to_host = nm_xfer;
    be->synchronize = nm_sync;
    /* a check pass at two of three first tries (a retry always runs) */
    static long first_tries;
    const bool skip = !g_retry && ++first_tries % 3 != 0;
    g_retry = false;
    if (skip) {
        g_skipped++;
        be->embed = sk_embed;
        be->matmul = sk_matmul;
        be->rmsnorm = sk_rmsnorm;
        be->rope = sk_rope;
        be->kv_write = sk_kv_write;
        be->attention = sk_attention;
        be->matmul_multi = NULL; /* not called by the drafter */
        be->qk_norm_rope_kv = NULL;
        be->add_rmsnorm = NULL;
        be->swiglu = sk_swiglu;
        be->add = sk_add;
        be->gather_rows = sk_gather;
        be->bias_act = sk_bias_act;
        be->ew = sk_ew;
        be->copy = sk_copy;
        g_retry = true;
    }
}
static bool fake_graph_end(Backend *be) {
    CHECK(g_in_bracket);
    g_in_bracket = false;
    const bool ran = be->embed != sk_embed;
    *be = g_ops;
    return ran;
}

static void graph_case(const char *head) {
    char err[DS_ERR_LEN], dir[128];
    snprintf(dir, sizeof dir, "tiny-qwen3/draft-%s", head);
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data(dir), &g_target, g_be, err), err);
    if (!d.layers) return;
    g_fake = *g_be;
    g_fake.graph_begin = fake_graph_begin;
    g_fake.graph_end = fake_graph_end;
    const int B = d.cfg.block_size, D = d.cfg.base.hidden_size, V = d.cfg.base.vocab_size;
    const size_t fw = (size_t)d.cfg.n_target_layers * D, n_out = (size_t)B * (D + 2 * V) + 2 * B;
    float *feat = target_features(&d, P + 4), *out[2];
    DraftState st[2]; /* 0: plain CPU backend, 1: through the emulated brackets */
    int32_t prev[2][9];
    float cdev[2];
    for (int k = 0; k < 2; k++) {
        d.be = k ? &g_fake : g_be;
        CHECK_OK(draft_state_init(&st[k], &d, 64, 16, err), err);
        CHECK_OK(drafter_append_context(&d, &st[k], feat, P, 0, err), err);
        out[k] = malloc(sizeof(float) * n_out);
    }
    int same = 0;
    for (int r = 0; r < 6; r++) {
        const int start = P + r / 2;
        for (int k = 0; k < 2; k++) {
            DraftState *s = &st[k];
            d.be = k ? &g_fake : g_be;
            float *o = out[k], *lg = o + (size_t)B * D, *bl = lg + (size_t)B * V, *cf = bl + (size_t)B * V;
            memset(o, 0, sizeof(float) * n_out);
            CHECK_OK(drafter_block(&d, s, g_ids[start], start, err), err);
            for (int j = 0; j <= B; j++) prev[k][j] = g_ids[start + j];
            for (int j = 0; j < B; j++) {
                if (r % 2) { /* the device path: previous token and confidence in backend (here host) memory */
                    CHECK_OK(drafter_head_dev(&d, s, j, &prev[k][j], &cdev[k], err), err);
                    cf[j] = d.cfg.enable_confidence_head ? cdev[k] : 0.0f;
                    memcpy(lg + (size_t)j * V, s->logits, sizeof(float) * V);
                } else {
                    CHECK_OK(drafter_head(&d, s, j, g_ids[start + j], &cf[j], err), err);
                    memcpy(lg + (size_t)j * V, s->logits_host, sizeof(float) * V);
                }
            }
            memcpy(o, s->hidden, sizeof(float) * (size_t)B * D);
            memcpy(bl, s->base_logits, sizeof(float) * (size_t)s->logits_ready * V);
            if (r % 2) CHECK_OK(drafter_append_context(&d, s, feat + (size_t)start * fw, 1, start, err), err);
        }
        bool eq = memcmp(out[0], out[1], sizeof(float) * n_out) == 0;
        CHECK_MSG(eq, "%s round %d: drafter through emulated step-graph brackets differs from the plain CPU backend", head, r);
        same += eq;
    }
    CHECK(g_skipped > 0 && g_bad_keys == 0);
    printf("  %-8s emulated step-graph brackets: %d of 6 rounds bitwise equal; %ld brackets, %ld check passes\n", head, same, g_brackets,
           g_skipped);
    for (int k = 0; k < 2; k++) {
        d.be = k ? &g_fake : g_be;
        draft_state_free(&st[k], &d);
        free(out[k]);
    }
    d.be = g_be;
    free(feat);
    drafter_free(&d);
}

static void test_graph_brackets(void) {
    const char *heads[] = {"vanilla", "gated", "rnn", "dflash"};
    for (int i = 0; i < 4; i++) graph_case(heads[i]);
}

/* ---- the folded layers on the CPU ----
 * A copy of the CPU backend whose matmul_norm and matmul_add are made of its own ops (rmsnorm
 * into tmp then the products, and swiglu; the product into tmp then add): the target's and the
 * drafters' folded layers (qwen3_layer_folded, which only the GPU runs otherwise) must give
 * bitwise the plain path's logits, features, hidden states and slot logits. Must fail: the
 * fold with a wrong eps. */
static float g_fold_eps_scale = 1.0f;
static void fold_matmul_norm(Backend *be, float *const *outs, const float *x, const Weight *norm, float eps, const Weight *const *ws, int count,
                             int n, int act, float *tmp) {
    be->rmsnorm(be, tmp, x, norm, n, ws[0]->cols, eps * g_fold_eps_scale);
    for (int j = 0; j < count; j++) be->matmul(be, outs[j], tmp, ws[j], n);
    if (act == 1) be->swiglu(be, outs[0], outs[0], outs[1], (size_t)n * ws[0]->rows);
}
static void fold_matmul_add(Backend *be, float *out, const float *x, const Weight *w, int n, float *tmp, const Weight *next_norm) {
    (void)next_norm; /* (a hint) */
    be->matmul(be, tmp, x, w, n);
    be->add(be, out, tmp, (size_t)n * w->rows);
}

/* the target over ids[:P] on be: the last row's logits, then the features of layers 0, 1 and
 * the final norm (host memory, malloc'd) */
static float *target_outputs(Backend *be, size_t *count) {
    char err[DS_ERR_LEN];
    const int layers[3] = {0, 1, QWEN3_FINAL_NORM}, V = g_target.cfg.vocab_size, D = g_target.cfg.hidden_size;
    Backend *was = g_target.be;
    g_target.be = be;
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_target, P, 1, 3, 1, 64, err), err);
    int32_t pos[P], row = P - 1;
    for (int i = 0; i < P; i++) pos[i] = i;
    Qwen3Batch b = {.n = P, .tokens = g_ids, .pos = pos, .logit_rows = &row, .n_logits = 1, .feature_layers = layers, .n_feature_layers = 3};
    CHECK_OK(qwen3_forward(&g_target, &st, &b, err), err);
    *count = (size_t)V + (size_t)P * 3 * D;
    float *o = malloc(sizeof(float) * *count);
    memcpy(o, st.logits_host, sizeof(float) * V);
    memcpy(o + V, st.features, sizeof(float) * (size_t)P * 3 * D);
    qwen3_state_free(&st, &g_target);
    g_target.be = was;
    return o;
}

/* a drafter's block at P and its slots' logits on be (hidden, base logits, slot logits) */
static float *drafter_outputs(Drafter *d, Backend *be, const float *feat, size_t *count) {
    char err[DS_ERR_LEN];
    const int B = d->cfg.block_size, D = d->cfg.base.hidden_size, V = d->cfg.base.vocab_size;
    d->be = be;
    DraftState st;
    CHECK_OK(draft_state_init(&st, d, 64, 16, err), err);
    CHECK_OK(drafter_append_context(d, &st, feat, P, 0, err), err);
    CHECK_OK(drafter_block(d, &st, g_ids[P], P, err), err);
    *count = (size_t)B * (D + 2 * (size_t)V);
    float *o = calloc(*count, sizeof(float)), *bl = o + (size_t)B * D, *lg = bl + (size_t)B * V;
    float conf;
    for (int j = 0; j < B; j++) {
        CHECK_OK(drafter_head(d, &st, j, g_ids[P + j], &conf, err), err);
        memcpy(lg + (size_t)j * V, st.logits_host, sizeof(float) * V);
    }
    memcpy(o, st.hidden, sizeof(float) * (size_t)B * D);
    memcpy(bl, st.base_logits, sizeof(float) * (size_t)st.logits_ready * V);
    draft_state_free(&st, d);
    d->be = g_be;
    return o;
}

static void test_folded_layers(void) {
    Backend fold = *g_be;
    fold.matmul_norm = fold_matmul_norm;
    fold.matmul_add = fold_matmul_add;
    size_t n0, n1;
    float *plain = target_outputs(g_be, &n0), *folded = target_outputs(&fold, &n1);
    CHECK_MSG(n0 == n1 && memcmp(plain, folded, sizeof(float) * n0) == 0, "target: the folded layers differ from the plain path");
    g_fold_eps_scale = 100.0f; /* must fail */
    float *wrong = target_outputs(&fold, &n1);
    g_fold_eps_scale = 1.0f;
    CHECK_MSG(memcmp(plain, wrong, sizeof(float) * n0) != 0, "target: the fold with a wrong eps was not caught");
    free(plain); free(folded); free(wrong);
    const char *heads[] = {"vanilla", "gated", "rnn", "dflash"};
    int same = 0;
    for (int h = 0; h < 4; h++) {
        char err[DS_ERR_LEN], dir[128];
        snprintf(dir, sizeof dir, "tiny-qwen3/draft-%s", heads[h]);
        Drafter d;
        CHECK_OK(drafter_load(&d, test_data(dir), &g_target, g_be, err), err);
        if (!d.layers) continue;
        float *feat = target_features(&d, P);
        float *a = drafter_outputs(&d, g_be, feat, &n0), *b = drafter_outputs(&d, &fold, feat, &n1);
        const bool eq = n0 == n1 && memcmp(a, b, sizeof(float) * n0) == 0;
        CHECK_MSG(eq, "%s: the drafter's folded layers differ from the plain path", heads[h]);
        same += eq;
        free(a); free(b); free(feat);
        drafter_free(&d);
    }
    printf("  folded layers on the CPU: the target and %d of 4 drafters bitwise the plain path; a wrong eps caught\n", same);
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
    RUN(test_graph_brackets);
    RUN(test_folded_layers);
    qwen3_free(&g_target);
    g_be->destroy(g_be);
    return test_summary();
}
