/* test_train_lm.c - Qwen3 causal-LM training (dspark pretrain's model):
 *  - the training forward's loss equals the cross-entropy of the inference forward
 *    (src/qwen3.c) on the same saved F32 weights (two independent implementations);
 *  - every weight gradient against central finite differences of the loss (double-checked
 *    on a random subset of entries per tensor);
 *  - a few AdamW steps on one batch make the loss fall (memorisation);
 *  - the loss of a shorter batch uses only its sequences. */
/* ctest: labels=unit */
#include "test.h"
#include "optim.h"
#include "qwen3.h"
#include "train_lm.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static Qwen3Config tiny_config(void) {
    Qwen3Config c = {0};
    snprintf(c.architecture, sizeof c.architecture, "Qwen3ForCausalLM");
    c.vocab_size = 67; c.hidden_size = 24; c.intermediate_size = 40;
    c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 8;
    c.rms_norm_eps = 1e-6f; c.rope_theta = 10000.0f; c.tie_word_embeddings = true;
    c.max_position_embeddings = 64; c.bos_token_id = 0; c.eos_token_ids[0] = 1; c.n_eos = 1;
    return c;
}

static void fill_tokens(int32_t *tok, int n, int V, uint64_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 6364136223846793005ull + 1442695040888963407ull; tok[i] = (int32_t)((seed >> 33) % (uint64_t)V); }
}

static void test_loss_matches_inference(void) {
    char err[DS_ERR_LEN], dir[512];
    Qwen3Config c = tiny_config();
    c.tie_word_embeddings = false; /* exercise lm_head too */
    TrainLM m;
    int B = 2, T = 9;
    CHECK_OK(train_lm_init(&m, &c, B, T, err), err);
    train_lm_init_weights(&m, 0.3f, 7); /* large std: O(1) logits so the comparison means something */
    int32_t tok[2 * 10];
    fill_tokens(tok, 20, c.vocab_size, 3);
    double loss = train_lm_step(&m, tok, B, 1.0f, false);
    snprintf(dir, sizeof dir, "%s/lm", test_tmpdir("train_lm"));
    CHECK_OK(train_lm_save(&m, dir, DS_F32, err), err);
    Backend *be = backend_cpu_create(1);
    Qwen3Model q;
    CHECK_OK(qwen3_load(&q, dir, be, err), err);
    Qwen3State s;
    CHECK_OK(qwen3_state_init(&s, &q, T, T, 0, 1, T, err), err);
    double ref = 0;
    for (int b = 0; b < B; b++) {
        int32_t pos[16], rows[16];
        for (int t = 0; t < T; t++) { pos[t] = t; rows[t] = t; }
        Qwen3Batch bt = {.n = T, .tokens = tok + b * (T + 1), .pos = pos, .logit_rows = rows, .n_logits = T};
        CHECK_OK(qwen3_forward(&q, &s, &bt, err), err);
        for (int t = 0; t < T; t++) {
            const float *z = s.logits_host + (size_t)t * c.vocab_size;
            double mx = z[0], sum = 0;
            for (int v = 1; v < c.vocab_size; v++) mx = z[v] > mx ? z[v] : mx;
            for (int v = 0; v < c.vocab_size; v++) sum += exp(z[v] - mx);
            ref += log(sum) + mx - z[tok[b * (T + 1) + t + 1]];
        }
    }
    ref /= B * T;
    CHECK_MSG(fabs(loss - ref) < 1e-5 * fabs(ref), "training loss %.8f vs inference CE %.8f", loss, ref);
    CHECK(loss > 1.0); /* not a degenerate model */
    qwen3_state_free(&s, &q);
    qwen3_free(&q);
    be->destroy(be);
    train_lm_free(&m);
}

/* d loss / d w for sampled entries of every tensor vs central differences (eps 1e-2 on O(0.3)
 * weights; the loss is computed in F32 with double sums: agreement to 2e-2 relative on
 * entries with |g| > 1e-3, and the dot product over all sampled entries to 1e-2) */
static void test_gradients_fd(void) {
    char err[DS_ERR_LEN];
    Qwen3Config c = tiny_config();
    for (int tied = 0; tied < 2; tied++) {
        c.tie_word_embeddings = tied;
        TrainLM m;
        int B = 2, T = 6;
        CHECK_OK(train_lm_init(&m, &c, B, T, err), err);
        train_lm_init_weights(&m, 0.3f, 11 + tied);
        int32_t tok[2 * 7];
        fill_tokens(tok, 14, c.vocab_size, 5);
        params_zero(&m.grads);
        train_lm_step(&m, tok, B, 1.0f, true);
        double dot_g = 0, dot_fd = 0;
        int bad = 0, checked = 0;
        for (int ti = 0; ti < m.params.n; ti++) {
            const ParamInfo *info = &m.params.info[ti];
            float *w = m.params.data + info->offset;
            const float *g = m.grads.data + info->offset;
            for (int k = 0; k < 6; k++) {
                size_t j = (size_t)(k * 7919 + ti * 104729) % info->numel;
                if (strstr(info->name, "embed_tokens")) j = (size_t)tok[k % 6] * c.hidden_size + (size_t)k % c.hidden_size; /* rows in use */
                float w0 = w[j], eps = 1e-2f;
                w[j] = w0 + eps;
                double lp = train_lm_step(&m, tok, B, 1.0f, false);
                w[j] = w0 - eps;
                double lm = train_lm_step(&m, tok, B, 1.0f, false);
                w[j] = w0;
                double fd = (lp - lm) / (2.0 * eps);
                dot_g += g[j] * fd;
                dot_fd += fd * fd;
                checked++;
                if (fabs(fd) > 1e-3 && fabs(g[j] - fd) > 2e-2 * fabs(fd) + 2e-4) {
                    if (bad++ < 5) fprintf(stderr, "  %s[%zu]: grad %.6g fd %.6g\n", info->name, j, g[j], fd);
                }
            }
        }
        CHECK_MSG(bad == 0, "%d of %d gradient entries disagree with finite differences (tied=%d)", bad, checked, tied);
        CHECK_MSG(fabs(dot_g / dot_fd - 1) < 1e-2, "gradient . fd / |fd|^2 = %.5f", dot_g / dot_fd);
        train_lm_free(&m);
    }
}

static void test_memorises(void) {
    char err[DS_ERR_LEN];
    Qwen3Config c = tiny_config();
    TrainLM m;
    int B = 2, T = 12;
    CHECK_OK(train_lm_init(&m, &c, B, T, err), err);
    train_lm_init_weights(&m, 0.02f, 1);
    AdamW opt;
    AdamWCfg ac = adamw_default();
    CHECK_OK(adamw_init(&opt, &m.params, &m.grads, &ac, err), err);
    int32_t tok[2 * 13];
    fill_tokens(tok, 26, c.vocab_size, 9);
    double first = 0, last = 0;
    for (int step = 0; step < 60; step++) {
        params_zero(&m.grads);
        double l = train_lm_step(&m, tok, B, 1.0f, true);
        if (step == 0) first = l;
        last = l;
        grad_clip(&m.grads, 1.0);
        adamw_step(&opt, &m.params, &m.grads, 1e-2);
    }
    CHECK_MSG(first > 4.0 && last < 1.0, "loss %.3f -> %.3f after 60 steps on one batch", first, last);
    /* a one-sequence batch: same loss as that sequence alone in a B-sized model */
    double one = train_lm_step(&m, tok, 1, 1.0f, false);
    TrainLM m1;
    CHECK_OK(train_lm_init(&m1, &c, 1, T, err), err);
    memcpy(m1.params.data, m.params.data, m.params.numel * sizeof(float));
    CHECK(train_lm_step(&m1, tok, 1, 1.0f, false) == one);
    train_lm_free(&m1);
    adamw_free(&opt);
    train_lm_free(&m);
}

static void test_bad_config(void) {
    char err[DS_ERR_LEN];
    Qwen3Config c = tiny_config();
    TrainLM m;
    CHECK(train_lm_init(&m, &c, 1, 100, err) != DS_OK); /* longer than max_position_embeddings */
    CHECK(strstr(err, "max_position_embeddings") != NULL);
}

int main(void) {
    RUN(test_loss_matches_inference);
    RUN(test_gradients_fd);
    RUN(test_memorises);
    RUN(test_bad_config);
    return test_summary();
}
