/* bench_cuda.c - step times of the CUDA backend on a Qwen3-4B-shaped target (36 layers, hidden
 * 2560, 32/8 heads, head_dim 128, FFN 9728, vocab 151936, tied) with random BF16 weights made
 * in memory by this program, against the memory floor measured in the same process:
 * floor = weight bytes read per step / device-to-device copy bandwidth (bytes read + written
 * per second, so a step that only reads its weights could reach it).
 *
 *   bench_cuda [--ctx 512] [--reps 20] [--layers 36] [--json OUT] [--profile]
 *
 * Rows: the batch-1 decode step (one token at position ctx, logits to the host), the verify
 * curve (n = 1..16 tokens of one sequence in one forward), larger flat batches, and prefill.
 * Each step is timed with the backend's step graphs (CUDA graphs, the default) and again with
 * them off (graph_begin/graph_end set to NULL, as DSPARK_CUDA_GRAPHS=0 would). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "op_profile.h"
#include "qwen3.h"
#ifdef DSPARK_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

static uint64_t g_s = 88172645463325252ull;
static uint16_t rand_bf16(float scale) {
    g_s ^= g_s << 13; g_s ^= g_s >> 7; g_s ^= g_s << 17;
    float u = (float)((g_s >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; /* uniform [-1, 1) */
    return ds_f32_to_bf16(u * scale);
}

/* --profile: each op of one decode step timed between two synchronize() calls (so launch
 * gaps and the sync itself are included: small ops read high; matmul's share is the signal) */
/* median seconds of `reps` forwards of n tokens at positions pos0.. (n_logits rows to the host) */
static double time_forward(Qwen3Model *m, Qwen3State *st, int n, int pos0, int n_logits, int reps, char *err, int *fail) {
    int32_t tok[256], pos[256], rows[256];
    for (int i = 0; i < n; i++) { tok[i] = (i * 7919 + 13) % m->cfg.vocab_size; pos[i] = pos0 + i; rows[i] = n - n_logits + i; }
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = n_logits};
    double t[64];
    if (reps > 64) reps = 64;
    for (int r = -2; r < reps; r++) { /* two warm-up runs */
        double t0 = ds_now();
        if (qwen3_forward(m, st, &b, err)) { *fail = 1; return 0; }
        m->be->synchronize(m->be);
        if (r >= 0) t[r] = ds_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    return t[reps / 2];
}

int main(int argc, char **argv) {
    int ctx = 512, reps = 20, L = 36;
    const char *json_out = NULL;
    bool profile = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) L = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_out = argv[++i];
        else if (!strcmp(argv[i], "--profile")) profile = true;
        else {
            fprintf(stderr, "usage: bench_cuda [--ctx N] [--reps N] [--layers N] [--json OUT] [--profile]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (ctx < 256 || ctx > 32768 || reps < 1 || L < 1 || L > 64) { fprintf(stderr, "bench_cuda: bad arguments\n"); return 2; }
    char err[DS_ERR_LEN];
    Backend *be;
    if (backend_create("cuda", 1, &be, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    const int V = 151936, d = 2560, H = 32, KV = 8, hd = 128, ff = 9728;
    /* one random BF16 buffer as large as the largest tensor; every weight is a view of it */
    size_t big = (size_t)V * d;
    uint16_t *buf = malloc(big * 2), *ones = malloc((size_t)d * 2);
    if (!buf || !ones) { fprintf(stderr, "bench_cuda: out of memory\n"); return 1; }
    for (size_t i = 0; i < big; i++) buf[i] = rand_bf16(0.03f);
    for (int i = 0; i < d; i++) ones[i] = ds_f32_to_bf16(1.0f);
    Qwen3Model m;
    memset(&m, 0, sizeof m);
    m.be = be;
    m.cfg = (Qwen3Config){.architecture = "Qwen3ForCausalLM", .vocab_size = V, .hidden_size = d, .intermediate_size = ff, .n_layers = L,
                          .n_heads = H, .n_kv_heads = KV, .head_dim = hd, .rms_norm_eps = 1e-6f, .rope_theta = 1e6f,
                          .tie_word_embeddings = true, .max_position_embeddings = 40960};
    m.layers = calloc((size_t)L, sizeof(Qwen3Layer));
    size_t bytes = 0;
#define UP(w, host, r, c) do { w = weight_view(host, DS_BF16, r, c); bytes += (size_t)(r) * (c) * 2; \
        if (be->upload_weight(be, &w, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; } } while (0)
    double t0 = ds_now();
    UP(m.embed, buf, V, d);
    UP(m.final_norm, ones, 1, d);
    m.lm_head = m.embed;
    for (int l = 0; l < L; l++) {
        Qwen3Layer *y = &m.layers[l];
        UP(y->input_norm, ones, 1, d); UP(y->post_norm, ones, 1, d); UP(y->q_norm, ones, 1, hd); UP(y->k_norm, ones, 1, hd);
        UP(y->q_proj, buf, H * hd, d); UP(y->k_proj, buf + 1, KV * hd, d); UP(y->v_proj, buf + 2, KV * hd, d);
        UP(y->o_proj, buf + 3, d, H * hd); UP(y->gate_proj, buf + 4, ff, d); UP(y->up_proj, buf + 5, ff, d); UP(y->down_proj, buf + 6, d, ff);
    }
    be->synchronize(be);
    /* bytes one decode step reads: every layer, the final norm, lm_head once (the embedding
     * row is negligible) */
    printf("bench_cuda: %d layers, %.2f GB of BF16 weights uploaded in %.1f s\n", L, bytes / 1e9, ds_now() - t0);
    /* copy bandwidth: 1 GB device to device */
    const size_t cb = (size_t)1 << 30;
    void *a = be->alloc(be, cb), *b2 = be->alloc(be, cb);
    double bw = 0;
    if (a && b2) {
        double ct[10];
        for (int r = -1; r < 10; r++) {
            be->synchronize(be);
            double c0 = ds_now();
            be->copy(be, b2, a, cb);
            be->synchronize(be);
            if (r >= 0) ct[r] = ds_now() - c0;
        }
        qsort(ct, 10, sizeof(double), cmp_d);
        bw = 2.0 * cb / ct[5]; /* bytes read + written (the convention of our measured GPU anchors) */
    }
    if (a) be->free(be, a);
    if (b2) be->free(be, b2);
    const double floor_s = bytes / bw;
    printf("device-to-device copy %.0f GB/s (read + written) -> memory floor %.3f ms per step\n", bw / 1e9, floor_s * 1e3);
    /* the product kernel alone at 1 row: bytes of the weight / time, against the copy bandwidth */
    {
        float *x = be->alloc(be, sizeof(float) * ff), *o = be->alloc(be, sizeof(float) * V);
        const Weight *ws[3] = {&m.embed, &m.layers[0].gate_proj, &m.layers[0].down_proj};
        const char *wn[3] = {"lm_head 151936x2560", "gate_proj 9728x2560", "down_proj 2560x9728"};
        for (int k = 0; k < 3 && x && o; k++) {
            double mt[21];
            for (int r = -1; r < 21; r++) {
                be->synchronize(be);
                double c0 = ds_now();
                be->matmul(be, o, x, ws[k], 1);
                be->synchronize(be);
                if (r >= 0) mt[r] = ds_now() - c0;
            }
            qsort(mt, 21, sizeof(double), cmp_d);
            double wb = (double)ws[k]->rows * ws[k]->cols * 2;
            printf("matmul 1 row, %-22s %8.1f us  %6.0f GB/s  (%.2f of copy bandwidth)\n", wn[k], mt[10] * 1e6, wb / mt[10] / 1e9,
                   wb / mt[10] / bw);
        }
        if (x) be->free(be, x);
        if (o) be->free(be, o);
    }
    Qwen3State st;
    if (qwen3_state_init(&st, &m, 256, 256, 0, 1, ctx + 300, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    int fail = 0;
    double prefill = time_forward(&m, &st, 256, 0, 1, 3, err, &fail);
    for (int p = 256; p < ctx && !fail; p += 256) time_forward(&m, &st, ctx - p < 256 ? ctx - p : 256, p, 1, 1, err, &fail);
    const int ns[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    double t[9], tn[9]; /* with the step graphs, without */
    for (int i = 0; i < 9 && !fail; i++) t[i] = time_forward(&m, &st, ns[i], ctx, ns[i] <= 16 ? ns[i] : 1, ns[i] <= 64 ? reps : 3, err, &fail);
    long caps = 0, reps_g = 0, miss = 0;
#ifdef DSPARK_HAVE_CUDA
    backend_cuda_graph_stats(be, &caps, &reps_g, &miss);
#endif
    const bool graphs = be->graph_begin != NULL;
    void (*gb)(Backend *, int) = be->graph_begin;
    bool (*ge)(Backend *) = be->graph_end;
    be->graph_begin = NULL;
    be->graph_end = NULL;
    for (int i = 0; i < 9 && !fail; i++)
        tn[i] = graphs ? time_forward(&m, &st, ns[i], ctx, ns[i] <= 16 ? ns[i] : 1, ns[i] <= 64 ? reps : 3, err, &fail) : t[i];
    be->graph_begin = gb;
    be->graph_end = ge;
    if (fail) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    char head[64];
    snprintf(head, sizeof head, "step (context %d)", ctx);
    printf("\nstep graphs: %s (%ld recorded, %ld replayed, %ld checks without a record)\n", graphs ? "on" : "off (DSPARK_CUDA_GRAPHS=0)",
           caps, reps_g, miss);
    printf("%-34s %10s %10s %10s %12s\n", head, "ms", "x floor", "x 1 token", "no graphs ms");
    for (int i = 0; i < 9; i++) {
        char lab[64];
        if (i == 0) snprintf(lab, sizeof lab, "decode, 1 token");
        else snprintf(lab, sizeof lab, "%d tokens in one forward%s", ns[i], ns[i] > 64 ? " (cuBLAS)" : "");
        printf("%-34s %10.3f %10.2f %10.2f %12.3f\n", lab, t[i] * 1e3, t[i] / floor_s, t[i] / t[0], tn[i] * 1e3);
    }
    printf("%-34s %10.3f   (%.0f tokens/s)\n", "prefill 256 tokens", prefill * 1e3, 256 / prefill);
    if (profile) { /* one decode step, every op synchronised */
        op_profile_wrap(be, true);
        double step = time_forward(&m, &st, 1, ctx, 1, 5, err, &fail) * 1e3, sum = 0;
        op_profile_unwrap(be);
        printf("\nprofile of a synchronised decode step (%.3f ms; 7 steps, per step):", step);
        for (int i = 0; i < OP_N; i++) {
            sum += op_time[i] / 7 * 1e3;
            if (op_time[i] > 0) printf(" %s %.3f ms", op_name[i], op_time[i] / 7 * 1e3);
        }
        printf("; rest %.3f ms\n", step - sum);
    }
    if (json_out) {
        FILE *f = fopen(json_out, "w");
        if (f) {
            fprintf(f, "{\"layers\": %d, \"weight_bytes\": %zu, \"copy_gbps\": %.1f, \"floor_ms\": %.4f, \"ctx\": %d, \"prefill256_ms\": %.3f, \"graphs\": %s, \"steps\": [",
                    L, bytes, bw / 1e9, floor_s * 1e3, ctx, prefill * 1e3, graphs ? "true" : "false");
            for (int i = 0; i < 9; i++)
                fprintf(f, "%s{\"tokens\": %d, \"ms\": %.4f, \"ms_no_graphs\": %.4f}", i ? ", " : "", ns[i], t[i] * 1e3, tn[i] * 1e3);
            fprintf(f, "]}\n");
            fclose(f);
        }
    }
    qwen3_state_free(&st, &m);
    for (int l = 0; l < L; l++) qwen3_layer_release(&m.layers[l], be);
    be->release_weight(be, &m.embed);
    be->release_weight(be, &m.final_norm);
    free(m.layers);
    free(buf);
    free(ones);
    be->destroy(be);
    return 0;
}
