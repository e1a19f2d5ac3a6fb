/* test_draft_init.c - a new drafter's config scaled to the target, and DeepSpec's weight init. */
#include "draft_init.h"
#include "test.h"

static Qwen3Config qwen3_4b(void) {
    Qwen3Config t = {.vocab_size = 151936, .hidden_size = 2560, .intermediate_size = 9728, .n_layers = 36, .n_heads = 32,
                     .n_kv_heads = 8, .head_dim = 128, .rms_norm_eps = 1e-6f, .rope_theta = 1e6f, .tie_word_embeddings = true,
                     .max_position_embeddings = 40960};
    snprintf(t.architecture, sizeof t.architecture, "Qwen3ForCausalLM");
    return t;
}

/* DeepSpec's shipped configs (digest §5.8): Qwen3-4B/8B [1,9,17,25,33], Qwen3-14B (40 layers)
 * [1,10,19,28,37], 5 layers, block 7, rank 256, mask 151669 (the Qwen3 tokenizer has 151669 ids). */
static void test_config_deepspec_targets(void) {
    char err[DS_ERR_LEN];
    Qwen3Config t = qwen3_4b();
    DraftConfig c;
    CHECK_OK(draft_init_config(&c, &t, true, 151669, err), err);
    int want36[] = {1, 9, 17, 25, 33};
    CHECK(c.n_target_layers == 5 && memcmp(c.target_layer_ids, want36, sizeof want36) == 0);
    CHECK(c.base.n_layers == 5 && c.block_size == 7 && c.markov_rank == 256 && c.markov_type == MARKOV_VANILLA);
    CHECK(c.mask_token_id == 151669 && c.enable_confidence_head && c.confidence_head_with_markov && c.num_anchors == 512);
    CHECK(c.base.hidden_size == 2560 && c.base.intermediate_size == 9728 && c.num_target_layers == 36);
    CHECK_OK(draft_config_validate(&c, &t, "init", err), err);
    t.n_layers = 40;
    CHECK_OK(draft_init_config(&c, &t, false, 151669, err), err);
    int want40[] = {1, 10, 19, 28, 37};
    CHECK(c.n_target_layers == 5 && memcmp(c.target_layer_ids, want40, sizeof want40) == 0);
    CHECK(c.markov_rank == 0 && !c.enable_confidence_head); /* DFlash */
}

/* Tiny targets: ids inside [0, Lt-2], strictly increasing; rank capped to hidden; layers <= Lt/2.
 * Saved config.json loads back and validates against the target. A 1-layer target must fail. */
static void test_config_tiny(void) {
    char err[DS_ERR_LEN];
    Qwen3Config t = qwen3_4b();
    t.hidden_size = 64;
    t.vocab_size = 512;
    for (int Lt = 2; Lt <= 12; Lt++) {
        t.n_layers = Lt;
        DraftConfig c;
        CHECK_OK(draft_init_config(&c, &t, true, 505, err), err);
        int ok = c.n_target_layers >= 1 && c.n_target_layers <= 5 && c.target_layer_ids[c.n_target_layers - 1] <= Lt - 2;
        for (int i = 1; i < c.n_target_layers; i++) ok &= c.target_layer_ids[i] > c.target_layer_ids[i - 1];
        CHECK_MSG(ok, "Lt %d", Lt);
        CHECK(c.markov_rank == 64 && c.mask_token_id == 505 && c.base.n_layers >= 1 && c.base.n_layers <= 5);
        CHECK_OK(draft_config_validate(&c, &t, "tiny", err), err);
    }
    t.n_layers = 4;
    DraftConfig c, back;
    CHECK_OK(draft_init_config(&c, &t, true, 0, err), err);
    CHECK(c.mask_token_id == 511 && c.base.n_layers == 2);
    const char *dir = getenv("DSPARK_TEST_TMP") ? getenv("DSPARK_TEST_TMP") : "/tmp";
    char path[1024];
    snprintf(path, sizeof path, "%s/draft_init_config.json", dir);
    CHECK_OK(ds_mkdirs(dir, err), err);
    CHECK_OK(draft_config_save(&c, NULL, path, err), err);
    CHECK_OK(draft_config_load(&back, path, err), err);
    CHECK(back.n_target_layers == c.n_target_layers && back.markov_rank == 64 && back.block_size == 7 && back.base.n_layers == 2);
    CHECK_OK(draft_config_validate(&back, &t, path, err), err);
    t.n_layers = 1;
    CHECK(draft_init_config(&c, &t, true, 0, err) == DS_EARG);
}

/* Weights: N(0, 0.02) over 64k values (mean within 5 sigma of 0: |mean| < 5*0.02/256; std within
 * 2%), bf16-representable, norms 1, biases 0, frozen untouched, same seed same weights. */
static void test_weights(void) {
    char err[DS_ERR_LEN];
    ParamSet p = {0};
    int64_t big[2] = {256, 256}, d[1] = {64}, one[1] = {1};
    CHECK_OK(params_add(&p, "embed_tokens.weight", 2, big, false, err), err);
    CHECK_OK(params_add(&p, "layers.0.self_attn.q_proj.weight", 2, big, true, err), err);
    CHECK_OK(params_add(&p, "layers.0.input_layernorm.weight", 1, d, true, err), err);
    CHECK_OK(params_add(&p, "hidden_norm.weight", 1, d, true, err), err);
    CHECK_OK(params_add(&p, "confidence_head.proj.bias", 1, one, true, err), err);
    CHECK_OK(params_alloc(&p, err), err);
    float *emb = params_get(&p, "embed_tokens.weight");
    emb[7] = 3.5f;
    params_get(&p, "confidence_head.proj.bias")[0] = 9;
    draft_init_weights(&p, 42, 0.02);
    const float *q = params_get(&p, "layers.0.self_attn.q_proj.weight");
    double s = 0, ss = 0;
    int bf16 = 1;
    for (int i = 0; i < 65536; i++) { s += q[i]; ss += (double)q[i] * q[i]; bf16 &= ds_bf16_to_f32(ds_f32_to_bf16(q[i])) == q[i]; }
    double mean = s / 65536, sd = sqrt(ss / 65536 - mean * mean);
    CHECK_MSG(fabs(mean) < 5 * 0.02 / 256 && fabs(sd - 0.02) < 0.0004, "mean %g sd %g", mean, sd);
    CHECK(bf16);
    CHECK(params_get(&p, "layers.0.input_layernorm.weight")[63] == 1.0f && params_get(&p, "hidden_norm.weight")[0] == 1.0f);
    CHECK(params_get(&p, "confidence_head.proj.bias")[0] == 0.0f);
    CHECK(emb[7] == 3.5f && emb[8] == 0.0f);
    ParamSet p2;
    CHECK_OK(params_like(&p2, &p, err), err);
    draft_init_weights(&p2, 42, 0.02);
    CHECK(memcmp(params_get(&p2, "layers.0.self_attn.q_proj.weight"), q, 65536 * sizeof(float)) == 0);
    draft_init_weights(&p2, 43, 0.02);
    CHECK(memcmp(params_get(&p2, "layers.0.self_attn.q_proj.weight"), q, 65536 * sizeof(float)) != 0);
    params_free(&p2);
    params_free(&p);
}

int main(void) {
    RUN(test_config_deepspec_targets);
    RUN(test_config_tiny);
    RUN(test_weights);
    return test_summary();
}
