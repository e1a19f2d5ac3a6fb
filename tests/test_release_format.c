/* test_release_format.c - the released format, proven with a generated checkpoint: a Qwen3-4B
 * target (36 layers, d 2560, tied embeddings, 3 BF16 shards + index, ~8 GB) and a
 * dspark_qwen3_4b_block7-shaped drafter (5 layers, block 7, layer ids [1,9,17,25,33], mask
 * 151669, vanilla Markov head r 256, confidence head with Markov features; BF16, 2 shards +
 * index, ~2.8 GB; config.json written by draft_config_save from the target's config as
 * DeepSpec's save_pretrained does). Random weights. The drafter must load unchanged, share the
 * target's embedding / lm_head (equal bytes: one copy), and greedy speculative decoding of a
 * few tokens must equal plain greedy decoding. Heavy (11 GB written, 2-core forward): slow.
 * DSPARK_RELEASE_KEEP=1 keeps the files.
 * ctest: labels=slow timeout=3600 */
#include "spec.h"
#include "safetensors.h"
#include "test.h"

#define V 151936
#define D 2560
#define FF 9728
#define LT 36
#define LD 5
#define HQ 4096 /* 32 heads x 128 */
#define HKV 1024 /* 8 x 128 */
#define R 256

static uint64_t fnv(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* bf16 uniform(-a, a), a = sqrt(3) * std, seeded by the tensor's name; norms are ones */
static uint16_t *gen(const char *name, size_t n, float std, bool ones) {
    uint16_t *p = malloc(n * 2);
    if (ones) { for (size_t i = 0; i < n; i++) p[i] = ds_f32_to_bf16(1.0f); return p; }
    uint64_t x = fnv(name) | 1;
    float a = std * 1.7320508f;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        float u = (float)(x >> 40) * (1.0f / 16777216.0f);
        p[i] = ds_f32_to_bf16((2 * u - 1) * a);
    }
    return p;
}

typedef struct { char name[128]; int64_t rows, cols; bool ones; float std; } Spec;

static int layer_specs(Spec *s, const char *prefix, int i) {
    struct { const char *suf; int64_t r, c; bool ones; } t[] = {
        {"input_layernorm.weight", 0, D, true}, {"self_attn.q_proj.weight", HQ, D, false},
        {"self_attn.k_proj.weight", HKV, D, false}, {"self_attn.v_proj.weight", HKV, D, false},
        {"self_attn.o_proj.weight", D, HQ, false}, {"self_attn.q_norm.weight", 0, 128, true},
        {"self_attn.k_norm.weight", 0, 128, true}, {"post_attention_layernorm.weight", 0, D, true},
        {"mlp.gate_proj.weight", FF, D, false}, {"mlp.up_proj.weight", FF, D, false}, {"mlp.down_proj.weight", D, FF, false}};
    for (int k = 0; k < 11; k++) {
        snprintf(s[k].name, sizeof s[k].name, "%slayers.%d.%s", prefix, i, t[k].suf);
        s[k].rows = t[k].r; s[k].cols = t[k].c; s[k].ones = t[k].ones; s[k].std = 0.02f;
    }
    return 11;
}

/* write specs[0..n) split into n_shards files + model.safetensors.index.json */
static void write_sharded(const char *dir, Spec *sp, int n, int n_shards) {
    char err[DS_ERR_LEN], path[1200];
    json_t *wm = json_object();
    size_t total = 0;
    int per = (n + n_shards - 1) / n_shards;
    for (int sh = 0; sh < n_shards; sh++) {
        int a = sh * per, b = a + per < n ? a + per : n;
        StWriteTensor *w = calloc((size_t)(b - a), sizeof *w);
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", sh + 1, n_shards);
        for (int i = a; i < b; i++) {
            size_t cnt = (size_t)(sp[i].rows ? sp[i].rows : 1) * sp[i].cols;
            /* the drafter's frozen copies hold the target's bytes (DeepSpec copies them) */
            const char *seed = strstr(sp[i].name, "embed_tokens") || strcmp(sp[i].name, "lm_head.weight") == 0 ? "model.embed_tokens.weight" : sp[i].name;
            w[i - a] = (StWriteTensor){sp[i].name, DS_BF16, sp[i].rows ? 2 : 1, {0}, gen(seed, cnt, sp[i].std, sp[i].ones)};
            if (sp[i].rows) { w[i - a].shape[0] = sp[i].rows; w[i - a].shape[1] = sp[i].cols; }
            else w[i - a].shape[0] = sp[i].cols;
            total += cnt * 2;
            json_object_set_new(wm, sp[i].name, json_string(file));
        }
        snprintf(path, sizeof path, "%s/%s", dir, file);
        CHECK_OK(st_write(path, w, b - a, NULL, err), err);
        for (int i = 0; i < b - a; i++) free((void *)w[i].data);
        free(w);
    }
    json_t *idx = json_object(), *meta = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(idx, "metadata", meta);
    json_object_set_new(idx, "weight_map", wm);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK(json_dump_file(idx, path, JSON_INDENT(2)) == 0);
    json_decref(idx);
}

static const char *TARGET_CONFIG =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,\n"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151645, \"head_dim\": 128, \"hidden_act\": \"silu\",\n"
    " \"hidden_size\": 2560, \"initializer_range\": 0.02, \"intermediate_size\": 9728, \"max_position_embeddings\": 40960,\n"
    " \"max_window_layers\": 36, \"model_type\": \"qwen3\", \"num_attention_heads\": 32, \"num_hidden_layers\": 36,\n"
    " \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 1000000,\n"
    " \"sliding_window\": null, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\",\n"
    " \"transformers_version\": \"4.51.0\", \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}\n";

static void test_release_format(void) {
    char err[DS_ERR_LEN], tdir[1200], ddir[1200], path[1300];
    const char *root = test_tmpdir("release");
    snprintf(tdir, sizeof tdir, "%s/Qwen3-4B", root);
    snprintf(ddir, sizeof ddir, "%s/dspark_qwen3_4b_block7", root);
    CHECK_OK(ds_mkdirs(tdir, err), err);
    CHECK_OK(ds_mkdirs(ddir, err), err);
    double t0 = ds_now();
    /* target: embed, 36 layers, norm (tied: no lm_head), 3 shards */
    Spec *sp = calloc(2 + LT * 11 + 8, sizeof(Spec));
    int n = 0;
    sp[n++] = (Spec){"model.embed_tokens.weight", V, D, false, 0.02f};
    for (int i = 0; i < LT; i++) n += layer_specs(sp + n, "model.", i);
    sp[n++] = (Spec){"model.norm.weight", 0, D, true, 0};
    write_sharded(tdir, sp, n, 3);
    snprintf(path, sizeof path, "%s/config.json", tdir);
    CHECK_OK(ds_write_file_atomic(path, TARGET_CONFIG, strlen(TARGET_CONFIG), err), err);
    /* drafter */
    n = 0;
    sp[n++] = (Spec){"embed_tokens.weight", V, D, false, 0.02f};
    for (int i = 0; i < LD; i++) n += layer_specs(sp + n, "", i);
    sp[n++] = (Spec){"norm.weight", 0, D, true, 0};
    sp[n++] = (Spec){"fc.weight", D, 5 * D, false, 0.02f};
    sp[n++] = (Spec){"hidden_norm.weight", 0, D, true, 0};
    sp[n++] = (Spec){"markov_head.markov_w1.weight", V, R, false, 0.02f};
    sp[n++] = (Spec){"markov_head.markov_w2.weight", V, R, false, 0.02f};
    sp[n++] = (Spec){"confidence_head.proj.weight", 1, D + R, false, 0.02f};
    sp[n++] = (Spec){"confidence_head.proj.bias", 0, 1, false, 0.02f};
    sp[n++] = (Spec){"lm_head.weight", V, D, false, 0.02f};
    write_sharded(ddir, sp, n, 2);
    free(sp);
    DraftConfig dc;
    memset(&dc, 0, sizeof dc);
    dc.base = (Qwen3Config){.vocab_size = V, .hidden_size = D, .intermediate_size = FF, .n_layers = LD, .n_heads = 32,
                            .n_kv_heads = 8, .head_dim = 128, .rms_norm_eps = 1e-6f, .rope_theta = 1e6f};
    dc.block_size = 7;
    int ids[5] = {1, 9, 17, 25, 33};
    memcpy(dc.target_layer_ids, ids, sizeof ids);
    dc.n_target_layers = 5;
    dc.num_target_layers = LT;
    dc.mask_token_id = 151669;
    dc.num_anchors = 512;
    dc.markov_rank = R;
    dc.markov_type = MARKOV_VANILLA;
    dc.enable_confidence_head = true;
    dc.confidence_head_with_markov = true;
    char tcfg[1300];
    snprintf(tcfg, sizeof tcfg, "%s/config.json", tdir);
    snprintf(path, sizeof path, "%s/config.json", ddir);
    CHECK_OK(draft_config_save(&dc, tcfg, path, err), err);
    double t_gen = ds_now() - t0;

    /* load and run */
    Backend *be = backend_cpu_create(0);
    Qwen3Model m;
    Drafter d;
    t0 = ds_now();
    CHECK_OK(qwen3_load(&m, tdir, be, err), err);
    CHECK_OK(drafter_load(&d, ddir, &m, be, err), err);
    double t_load = ds_now() - t0;
    CHECK(d.shared_embed && d.shared_lm_head);
    CHECK(d.cfg.block_size == 7 && d.cfg.markov_type == MARKOV_VANILLA && d.cfg.enable_confidence_head && d.st.n_files == 2);
    DrafterSource ds;
    SpecDecoder sd, plain;
    int32_t prompt[8] = {151644, 872, 198, 9707, 11, 1879, 0, 151645}, a[8], b[8];
    int na, nb;
    CHECK_OK(spec_drafter_source_init(&ds, &d, 32, 16, err), err);
    CHECK_OK(spec_init(&sd, &m, &ds.src, 32, 16, err), err);
    CHECK_OK(spec_init(&plain, &m, NULL, 32, 16, err), err);
    SpecParams p = {.sampler = {0, 0, 1}, .seed = 1, .max_new = 4};
    SpecStats st1, st2;
    CHECK_OK(spec_generate(&sd, prompt, 8, &p, a, &na, &st1, err), err);
    CHECK_OK(spec_generate(&plain, prompt, 8, &p, b, &nb, &st2, err), err);
    CHECK(na == 4 && nb == 4 && memcmp(a, b, sizeof(int32_t) * 4) == 0);
    CHECK(st1.proposed > 0);
    printf("  generated 11 GB in %.0f s, loaded in %.1f s; spec %d rounds %d proposed %.1f s, plain %.1f s; ids %d %d %d %d\n",
           t_gen, t_load, st1.rounds, st1.proposed, st1.total_s, st2.total_s, a[0], a[1], a[2], a[3]);
    spec_free(&sd);
    spec_free(&plain);
    spec_drafter_source_free(&ds);
    drafter_free(&d);
    qwen3_free(&m);
    be->destroy(be);
    if (!getenv("DSPARK_RELEASE_KEEP")) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
        CHECK(system(cmd) == 0);
    }
}

int main(void) {
    RUN(test_release_format);
    return test_summary();
}
