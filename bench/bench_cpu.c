/* bench_cpu.c - prefill and decode tokens/s of the CPU backend on a Qwen3-0.6B-shaped model
 * (28 layers, hidden 1024, 16/8 heads, head_dim 128, FFN 3072, vocab 151936, tied) with
 * random BF16 weights that this program writes itself (once, to DIR).
 *
 *   bench_cpu [--dir DIR] [--threads 1,2] [--prefill 128] [--decode 32] [--reps 3] [--json OUT]
 *             [--ik-llama PATH_TO_llama-bench --gguf MODEL.gguf] [--vs-portable]
 *
 * Prints a table and, with --ik-llama, runs ik_llama.cpp's llama-bench on the same weights
 * (converted to GGUF beforehand; see docs/bench-cpu.md) at the same thread counts,
 * interleaved with our runs, and prints the ratios. With --vs-portable the baseline is this
 * program's own portable C kernels (kern_set_path), interleaved the same way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include <jansson.h>

#include "qwen3.h"
#include "json_report.h"
#include "kernels.h"
#include "op_profile.h"
#include "sample.h"

static ds_status write_model(const char *dir, char *err) {
    const int V = 151936, d = 1024, L = 28, H = 16, KV = 8, hd = 128, ff = 3072;
    char path[1200];
    if (ds_mkdirs(dir, err)) return ds_err(err, DS_EIO, "%s", err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    char cfg[1024];
    int n = snprintf(cfg, sizeof cfg,
                     "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d,"
                     " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,"
                     " \"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, \"tie_word_embeddings\": true,"
                     " \"max_position_embeddings\": 40960, \"eos_token_id\": 151645, \"model_type\": \"qwen3\"}\n",
                     V, d, ff, L, H, KV, hd);
    ds_status rc = ds_write_file_atomic(path, cfg, (size_t)n, err);
    if (rc) return rc;
    /* tensors in a fixed order; values ~ N(0, 0.02) (uniform with that std), norms = 1 */
    int n_t = 2 + L * 11;
    StWriteTensor *t = calloc((size_t)n_t, sizeof *t);
    char (*names)[96] = calloc((size_t)n_t, 96);
    size_t total = 0;
    struct { const char *suffix; int rows, cols; } spec[] = {
        {"input_layernorm.weight", 1, d}, {"self_attn.q_proj.weight", H * hd, d}, {"self_attn.k_proj.weight", KV * hd, d},
        {"self_attn.v_proj.weight", KV * hd, d}, {"self_attn.o_proj.weight", d, H * hd}, {"self_attn.q_norm.weight", 1, hd},
        {"self_attn.k_norm.weight", 1, hd}, {"post_attention_layernorm.weight", 1, d}, {"mlp.gate_proj.weight", ff, d},
        {"mlp.up_proj.weight", ff, d}, {"mlp.down_proj.weight", d, ff}};
    int k = 0;
    snprintf(names[k], 96, "model.embed_tokens.weight");
    t[k] = (StWriteTensor){names[k], DS_BF16, 2, {V, d}, NULL}; k++;
    snprintf(names[k], 96, "model.norm.weight");
    t[k] = (StWriteTensor){names[k], DS_BF16, 1, {d}, NULL}; k++;
    for (int l = 0; l < L; l++)
        for (int s = 0; s < 11; s++, k++) {
            snprintf(names[k], 96, "model.layers.%d.%s", l, spec[s].suffix);
            t[k] = spec[s].rows == 1 ? (StWriteTensor){names[k], DS_BF16, 1, {spec[s].cols}, NULL}
                                     : (StWriteTensor){names[k], DS_BF16, 2, {spec[s].rows, spec[s].cols}, NULL};
        }
    for (int i = 0; i < n_t; i++) total += (size_t)t[i].shape[0] * (t[i].n_dims == 2 ? (size_t)t[i].shape[1] : 1);
    uint16_t *buf = malloc(total * 2);
    if (!buf) { free(t); free(names); return ds_err(err, DS_ENOMEM, "out of memory"); }
    Rng r;
    rng_seed(&r, 1234, 0);
    size_t off = 0;
    for (int i = 0; i < n_t; i++) {
        size_t cnt = (size_t)t[i].shape[0] * (t[i].n_dims == 2 ? (size_t)t[i].shape[1] : 1);
        for (size_t j = 0; j < cnt; j++)
            buf[off + j] = ds_f32_to_bf16(t[i].n_dims == 1 ? 1.0f : (float)((rng_uniform(&r) - 0.5) * 0.0693));
        t[i].data = buf + off;
        off += cnt;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = st_write(path, t, n_t, NULL, err);
    free(buf); free(t); free(names);
    return rc;
}

/* --profile: every backend op timed (wall clock, the caller's thread) by wrapping the function
 * pointers; printed per op for the prefill and the decode phase. */
static void profile_print(const char *phase, double total, int tokens) {
    double sum = 0;
    printf("  %s: %.2f ms per token;", phase, 1e3 * total / tokens);
    for (int i = 0; i < OP_N; i++) {
        sum += op_time[i];
        if (op_time[i] > 0) printf(" %s %.1f%%", op_name[i], 100 * op_time[i] / total);
    }
    op_profile_reset();
    printf(" (rest %.1f%%)\n", 100 * (total - sum) / total);
}
static bool g_profile;

typedef struct { double prefill, decode; } Speed;

static Speed run_ours(Qwen3Model *m, int threads, int n_prefill, int n_decode, char *err, int *fail) {
    omp_set_num_threads(threads);
    op_profile_reset();
    Qwen3State st;
    Speed sp = {0, 0};
    if (qwen3_state_init(&st, m, n_prefill, 1, 0, 1, n_prefill + n_decode + 1, err)) { *fail = 1; return sp; }
    int32_t *tok = malloc(sizeof(int32_t) * n_prefill), *pos = malloc(sizeof(int32_t) * n_prefill), last = n_prefill - 1;
    for (int i = 0; i < n_prefill; i++) { tok[i] = (i * 7919) % m->cfg.vocab_size; pos[i] = i; }
    Qwen3Batch b = {.n = n_prefill, .tokens = tok, .pos = pos, .logit_rows = &last, .n_logits = 1};
    double t0 = ds_now();
    if (qwen3_forward(m, &st, &b, err)) *fail = 1;
    double t1 = ds_now();
    if (g_profile) profile_print("prefill", t1 - t0, n_prefill);
    int32_t next = argmax_f32(st.logits_host, m->cfg.vocab_size);
    for (int i = 0; i < n_decode && !*fail; i++) {
        int32_t p = n_prefill + i, row = 0;
        Qwen3Batch one = {.n = 1, .tokens = &next, .pos = &p, .logit_rows = &row, .n_logits = 1};
        if (qwen3_forward(m, &st, &one, err)) *fail = 1;
        next = argmax_f32(st.logits_host, m->cfg.vocab_size);
    }
    double t2 = ds_now();
    if (g_profile) profile_print("decode", t2 - t1, n_decode);
    sp.prefill = n_prefill / (t1 - t0);
    sp.decode = n_decode / (t2 - t1);
    qwen3_state_free(&st, m);
    free(tok); free(pos);
    return sp;
}

/* llama-bench -m GGUF -t T -p P -n N -r 1 -o json: avg_ts of the pp and the tg test (its
 * defaults otherwise: one warm-up run, F16 KV cache, flash attention) */
static Speed run_ik(const char *bin, const char *gguf, int threads, int n_prefill, int n_decode) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' -m '%s' -t %d -p %d -n %d -r 1 -o json 2>/dev/null", bin, gguf, threads, n_prefill, n_decode);
    Speed sp = {0, 0};
    FILE *p = popen(cmd, "r");
    if (!p) return sp;
    json_error_t je;
    json_t *root = json_loadf(p, JSON_DISABLE_EOF_CHECK, &je);
    pclose(p);
    size_t i;
    json_t *t;
    if (json_is_array(root))
        json_array_foreach(root, i, t) {
            double ts = json_number_value(json_object_get(t, "avg_ts"));
            json_int_t np = json_integer_value(json_object_get(t, "n_prompt")), ng = json_integer_value(json_object_get(t, "n_gen"));
            if (np > 0 && ng == 0) sp.prefill = ts;
            if (ng > 0 && np == 0) sp.decode = ts;
        }
    json_decref(root);
    return sp;
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    const char *dir = "/tmp/dspark-bench-qwen3-0.6b", *threads_s = "1,2", *json_out = NULL, *ik = NULL, *gguf = NULL;
    int n_prefill = 128, n_decode = 32, reps = 3;
    bool bf16act = false, vs_portable = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads_s = argv[++i];
        else if (!strcmp(argv[i], "--prefill") && i + 1 < argc) n_prefill = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode") && i + 1 < argc) n_decode = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_out = argv[++i];
        else if (!strcmp(argv[i], "--ik-llama") && i + 1 < argc) ik = argv[++i];
        else if (!strcmp(argv[i], "--gguf") && i + 1 < argc) gguf = argv[++i];
        else if (!strcmp(argv[i], "--profile")) g_profile = true;
        else if (!strcmp(argv[i], "--bf16-act")) bf16act = true;
        else if (!strcmp(argv[i], "--vs-portable")) vs_portable = true;
        else {
            fprintf(stderr, "usage: bench_cpu [--dir DIR] [--threads 1,2] [--prefill N] [--decode N] [--reps N] [--json OUT]"
                            " [--ik-llama LLAMA_BENCH --gguf MODEL.gguf] [--profile] [--bf16-act] [--vs-portable]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (reps < 1 || reps > 50 || n_prefill < 1 || n_decode < 1 || (ik && !gguf) || (ik && vs_portable)) { fprintf(stderr, "bench_cpu: bad arguments\n"); return 2; }
    if (!json_report_check("bench_cpu", json_out)) return 2;
    char err[DS_ERR_LEN], path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!ds_file_exists(path)) {
        fprintf(stderr, "bench_cpu: writing a Qwen3-0.6B-shaped model with random BF16 weights to %s\n", dir);
        if (write_model(dir, err)) { fprintf(stderr, "bench_cpu: %s\n", err); return 1; }
    }
    Backend *be = backend_cpu_create(0);
    if (g_profile) op_profile_wrap(be, false);
    if (bf16act && !kern_set_bf16_activations(true)) { fprintf(stderr, "bench_cpu: --bf16-act: this CPU has no AVX512_BF16\n"); return 2; }
    Qwen3Model m;
    if (qwen3_load(&m, dir, be, err)) { fprintf(stderr, "bench_cpu: %s\n", err); return 1; }
    JsonReport rep;
    json_report_open(&rep, json_out);
    FILE *js = rep.f;
    if (js) fprintf(js, "{\"model\": \"qwen3-0.6b-shape random bf16\", \"kernels\": \"%s\", \"prefill_tokens\": %d, \"decode_tokens\": %d, \"results\": [", kern_path_name(), n_prefill, n_decode);
    printf("kernels: %s; prefill pp%d, decode tg%d, median of %d interleaved runs\n", kern_path_name(), n_prefill, n_decode, reps);
    if (bf16act && kern_amx_on())
        printf("bf16-act products: amx (oneDNN %s) for >= %d rows, avx512bf16 (vdpbf16ps) below\n", kern_amx_impl(), KERN_AMX_MIN_ROWS);
    else if (bf16act)
        printf("bf16-act products: avx512bf16 (vdpbf16ps) for all (no AMX: oneDNN, AMX-BF16 or the OS permission missing, or DSPARK_AMX=0)\n");
    const char *path0 = kern_path_name();
    if (vs_portable) printf("baseline: the portable kernels in this process (ratio = %s / portable)\n", path0);
    printf("%-8s %14s %14s %14s %14s %9s %9s\n", "threads", "prefill tok/s", "decode tok/s", vs_portable ? "port prefill" : "ik prefill",
           vs_portable ? "port decode" : "ik decode", "pp ratio", "tg ratio");
    int first = 1;
    for (const char *p = threads_s; *p;) {
        int th = atoi(p);
        double pf[50], dc[50], ipf[50], idc[50];
        int fail = 0;
        bool prof = g_profile;
        g_profile = false;
        run_ours(&m, th, n_prefill, n_decode, err, &fail); /* warm-up (page tables, caches), as llama-bench does */
        g_profile = prof;
        for (int r = 0; r < reps; r++) {
            Speed s = run_ours(&m, th, n_prefill, n_decode, err, &fail);
            pf[r] = s.prefill; dc[r] = s.decode;
            Speed t = ik ? run_ik(ik, gguf, th, n_prefill, n_decode) : (Speed){0, 0};
            if (vs_portable) {
                kern_set_path("portable");
                t = run_ours(&m, th, n_prefill, n_decode, err, &fail);
                kern_set_path(path0);
            }
            ipf[r] = t.prefill; idc[r] = t.decode;
        }
        if (fail) { fprintf(stderr, "bench_cpu: %s\n", err); return 1; }
        qsort(pf, reps, sizeof(double), cmp_d); qsort(dc, reps, sizeof(double), cmp_d);
        qsort(ipf, reps, sizeof(double), cmp_d); qsort(idc, reps, sizeof(double), cmp_d);
        double a = pf[reps / 2], b = dc[reps / 2], c = ipf[reps / 2], d = idc[reps / 2];
        printf("%-8d %14.1f %14.2f %14.1f %14.2f %9.2f %9.2f\n", th, a, b, c, d, c > 0 ? a / c : 0, d > 0 ? b / d : 0);
        const char *bl = vs_portable ? "portable" : "ik";
        if (js) fprintf(js, "%s{\"threads\": %d, \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.3f, \"%s_prefill_tok_s\": %.2f, \"%s_decode_tok_s\": %.3f}",
                        first ? "" : ", ", th, a, b, bl, c, bl, d);
        first = 0;
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
    }
    if (bf16act) printf("bf16-act: %ld products ran on AMX; reordered weights held: %.1f MB\n", kern_amx_products(), kern_amx_weight_bytes() / 1e6);
    if (js) fprintf(js, "]}\n");
    if (json_report_close(&rep, "bench_cpu")) return 1;
    qwen3_free(&m);
    be->destroy(be);
    return 0;
}
