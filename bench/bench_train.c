/* bench_train.c - training throughput of a DeepSpec-shaped drafter, and the cost of computing
 * target features on the fly against reading them from a cache (issue: drafter training).
 *
 *   bench_train [--anchors A] [--seq S] [--steps N] [--threads N] [--hidden D --layers L --vocab V]
 *               [--target DIR] [--json OUT]
 *
 * Part 1: a DSpark drafter of DeepSpec's Qwen3-4B shape (hidden 2560, 32/8 heads of 128, FFN
 * 9728, 5 layers, block 7, Markov rank 256 vanilla, confidence head, vocab 151936), random
 * weights and features, one training forward + backward per step (train_draft_step, the
 * vocabulary-sized losses in chunks), fewer anchors than DeepSpec's 512 so a step fits this
 * machine; prints supervised block tokens per second and the process's peak memory.
 * Part 2 (with --target DIR, e.g. the Qwen3-0.6B-shaped weights bench_cpu writes): the
 * features of S tokens computed by the target's forward vs read back from a BF16 cache file
 * of the same features (what `train` would memory-map), per token; the cache's bytes per token
 * against DeepSpec's 6 + 12 x hidden.
 *
 *   bench_train --lm [--micro B (8)] [--seq T (256)] [--steps N] [--threads N]
 *
 * LM mode (issue 5): the embedded default target's shape (scripts/default_model: 6 layers,
 * hidden 192, 4/2 heads of 48, FFN 576, vocab 2048 tied), one train_lm_step (forward,
 * loss, backward; no optimiser) over B x T random tokens per step; prints the best and the
 * median step as tokens/s (the median says how noisy the machine was) and the best step's
 * CPU time over all threads (tokens per CPU-second: what a shared machine distorts least). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "draft_init.h"
#include "json_report.h"
#include "train_lm.h"
#include "qwen3.h"
#include "train_draft.h"

static long peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atol(line + 6);
    if (f) fclose(f);
    return kb / 1024;
}

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* this process's CPU time, all threads (on a shared machine it does not count time spent
 * waiting for a core, which wall time does) */
static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench_lm(int B, int T, int steps, int threads) {
    Qwen3Config c = {.vocab_size = 2048, .hidden_size = 192, .intermediate_size = 576, .n_layers = 6, .n_heads = 4,
                     .n_kv_heads = 2, .head_dim = 48, .rms_norm_eps = 1e-6f, .rope_theta = 10000.0f,
                     .tie_word_embeddings = true, .max_position_embeddings = 2048};
    snprintf(c.architecture, sizeof c.architecture, "Qwen3ForCausalLM");
    char err[DS_ERR_LEN];
    TrainLM m;
    if (train_lm_init(&m, &c, B, T, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
    train_lm_init_weights(&m, 0.02f, 1);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (T + 1));
    uint64_t s = 11;
    for (size_t i = 0; i < (size_t)B * (T + 1); i++) tok[i] = (int32_t)((frand(&s) + 1) * 0.5f * (c.vocab_size - 1));
    double *dt = malloc(sizeof(double) * 2 * (size_t)steps), *cpu = dt + steps, loss = 0;
    for (int k = 0; k <= steps; k++) { /* step 0 warms up */
        params_zero(&m.grads);
        double a = ds_now(), ca = cpu_seconds();
        loss = train_lm_step(&m, tok, B, 1.0f, true);
        if (k > 0) dt[k - 1] = ds_now() - a, cpu[k - 1] = cpu_seconds() - ca;
    }
    qsort(dt, (size_t)steps, sizeof *dt, cmp_double);
    qsort(cpu, (size_t)steps, sizeof *cpu, cmp_double);
    double tokens = (double)B * T;
    printf("lm step (default target shape, %d x %d tokens, %d threads, %d steps): best %.3f s = %.0f tokens/s, median %.3f s = %.0f "
           "tokens/s; CPU time (all threads) best %.3f s = %.0f tokens per CPU-second (loss %.3f)\n",
           B, T, threads, steps, dt[0], tokens / dt[0], dt[steps / 2], tokens / dt[steps / 2], cpu[0], tokens / cpu[0], loss);
    free(dt); free(tok);
    train_lm_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    int lm = 0, micro = 8;
    for (int i = 1; i < argc; i++) lm |= !strcmp(argv[i], "--lm");
    int anchors = 16, seq = 0, steps = 3, threads = 0, hidden = 2560, layers = 5, vocab = 151936, ffn = 9728;
    const char *target_dir = NULL, *json = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: bench_train [--anchors A (16)] [--seq S (512)] [--steps N (3)] [--threads N] [--hidden D (2560)]\n"
                   "                   [--layers L (5)] [--ffn F (9728)] [--vocab V (151936)] [--target DIR] [--json OUT]\n"
                   "       bench_train --lm [--micro B (8)] [--seq T (256)] [--steps N] [--threads N]\n");
            return 0;
        }
        if (!strcmp(a, "--lm")) continue;
        if (!v) { fprintf(stderr, "bench_train: %s needs a value (see --help)\n", a); return 2; }
        if (!strcmp(a, "--anchors")) anchors = atoi(v);
        else if (!strcmp(a, "--micro")) micro = atoi(v);
        else if (!strcmp(a, "--seq")) seq = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--hidden")) hidden = atoi(v);
        else if (!strcmp(a, "--layers")) layers = atoi(v);
        else if (!strcmp(a, "--ffn")) ffn = atoi(v);
        else if (!strcmp(a, "--vocab")) vocab = atoi(v);
        else if (!strcmp(a, "--target")) target_dir = v;
        else if (!strcmp(a, "--json")) json = v;
        else { fprintf(stderr, "bench_train: unknown flag %s (see --help)\n", a); return 2; }
        i++;
    }
    if (anchors < 1 || (seq && seq < 16) || steps < 1 || hidden < 64 || layers < 1 || vocab < 16 || ffn < 1 || micro < 1) {
        fprintf(stderr, "bench_train: sizes must be positive (anchors >= 1, seq >= 16)\n");
        return 2;
    }
    if (!json_report_check("bench_train", json)) return 2;
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
    threads = omp_get_max_threads();
#endif
    if (lm) return bench_lm(micro, seq ? seq : 256, steps, threads);
    if (!seq) seq = 512;
    char err[DS_ERR_LEN];
    /* ---- part 1: drafter training step ---- */
    Qwen3Config tc = {.vocab_size = vocab, .hidden_size = hidden, .intermediate_size = ffn, .n_layers = 36, .n_heads = hidden >= 80 ? hidden / 80 : 1,
                      .n_kv_heads = hidden >= 320 ? hidden / 320 : 1, .head_dim = 128, .rms_norm_eps = 1e-6f, .rope_theta = 1e6f,
                      .tie_word_embeddings = true, .max_position_embeddings = 40960};
    snprintf(tc.architecture, sizeof tc.architecture, "Qwen3ForCausalLM");
    DraftConfig dc;
    if (draft_init_config(&dc, &tc, true, 0, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
    dc.base.n_layers = layers;
    dc.num_anchors = anchors;
    TrainDraft t;
    double t0 = ds_now();
    if (train_draft_init(&t, &dc, NULL, seq, anchors, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
    train_draft_init_weights(&t, 1);
    size_t n_params = 0, n_train = 0;
    for (int i = 0; i < t.params.n; i++) {
        n_params += t.params.info[i].numel;
        if (t.params.info[i].trainable) n_train += t.params.info[i].numel;
    }
    int m = dc.n_target_layers;
    float *feat = malloc(sizeof(float) * (size_t)seq * m * hidden), *last = malloc(sizeof(float) * (size_t)seq * hidden);
    int32_t *ids = malloc(sizeof(int32_t) * seq);
    uint8_t *mask = malloc((size_t)seq);
    uint64_t s = 7;
    for (size_t i = 0; i < (size_t)seq * m * hidden; i++) feat[i] = frand(&s);
    for (size_t i = 0; i < (size_t)seq * hidden; i++) last[i] = frand(&s);
    for (int i = 0; i < seq; i++) { ids[i] = (int32_t)((frand(&s) + 1) * 0.5f * (vocab - 2)); mask[i] = i >= seq / 8; }
    printf("drafter: hidden %d, %d layers, block %d, markov rank %d, vocab %d: %.0fM parameters (%.0fM trainable), init %.1f s\n", hidden,
           layers, dc.block_size, dc.markov_rank, vocab, n_params / 1e6, n_train / 1e6, ds_now() - t0);
    TrainLossCfg lc = train_loss_default();
    double best = 1e30, total = 0;
    double supervised = 0;
    for (int k = 0; k < steps; k++) {
        TrainDraftStats st;
        uint64_t rng = 100 + (uint64_t)k;
        params_zero(&t.grads);
        double a = ds_now();
        if (train_draft_step(&t, ids, mask, seq, feat, last, NULL, NULL, anchors, &rng, &lc, 1.0f, &st, err)) {
            fprintf(stderr, "bench_train: %s\n", err);
            return 1;
        }
        double dt = ds_now() - a;
        if (k > 0 || steps == 1) { best = dt < best ? dt : best; total += dt; }
        supervised = st.supervised;
        printf("  step %d: %.2f s (%d blocks of %d, %.0f supervised tokens, loss %.3f)\n", k + 1, dt, st.n_kept, dc.block_size, st.supervised,
               st.parts.total);
    }
    double block_tok_s = anchors * dc.block_size / best, seq_tok_s = seq / best;
    long peak = peak_rss_mb();
    printf("train step (best of %d, %d threads): %.2f s = %.1f block tokens/s, %.1f sequence tokens/s; peak RSS %ld MB\n", steps, threads,
           best, block_tok_s, seq_tok_s, peak);
    printf("  DeepSpec's setting is 512 anchors per sequence: the vocabulary and block parts scale with anchors, the context part with seq\n");
    train_draft_free(&t);
    free(feat); free(last); free(ids); free(mask);
    /* ---- part 2: features on the fly vs a BF16 cache ---- */
    double fly_tok_s = 0, cache_tok_s = 0, cache_bytes = 0, deepspec_bytes = 0;
    if (target_dir) {
        Backend *be = backend_cpu_create(threads);
        Qwen3Model q;
        if (qwen3_load(&q, target_dir, be, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
        DraftConfig fc;
        if (draft_init_config(&fc, &q.cfg, true, 0, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
        int fm = fc.n_target_layers, d = q.cfg.hidden_size, S = seq;
        size_t row = (size_t)(fm + 1) * d;
        float *f2 = malloc(sizeof(float) * (size_t)S * fm * d), *l2 = malloc(sizeof(float) * (size_t)S * d);
        int32_t *id2 = malloc(sizeof(int32_t) * S);
        for (int i = 0; i < S; i++) id2[i] = (int32_t)(i * 7919 % (q.cfg.vocab_size - 1));
        double a = ds_now();
        if (train_draft_features(&q, &fc, id2, S, f2, l2, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
        double fly = ds_now() - a;
        a = ds_now();
        if (train_draft_features(&q, &fc, id2, S, f2, l2, err)) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
        fly = ds_now() - a < fly ? ds_now() - a : fly;
        /* the cache: per token [m*d features | d last hidden] BF16 + int32 id + uint8 mask + uint8 pad */
        cache_bytes = (double)row * 2 + 6;
        deepspec_bytes = 6.0 + 12.0 * d;
        char path[] = "/tmp/dspark-bench-cache-XXXXXX";
        int fd = mkstemp(path);
        uint16_t *buf = malloc(sizeof(uint16_t) * (size_t)S * row);
        for (int i = 0; i < S; i++) {
            for (size_t j = 0; j < (size_t)fm * d; j++) buf[(size_t)i * row + j] = ds_f32_to_bf16(f2[(size_t)i * fm * d + j]);
            for (int j = 0; j < d; j++) buf[(size_t)i * row + (size_t)fm * d + j] = ds_f32_to_bf16(l2[(size_t)i * d + j]);
        }
        size_t nb = sizeof(uint16_t) * (size_t)S * row;
        if (fd < 0 || write(fd, buf, nb) != (ssize_t)nb) { fprintf(stderr, "bench_train: cannot write %s\n", path); return 1; }
        fsync(fd);
        double best_read = 1e30;
        for (int rep = 0; rep < 3; rep++) { /* page-cache reads: the best case for a cache */
            a = ds_now();
            const uint16_t *map = mmap(NULL, nb, PROT_READ, MAP_SHARED, fd, 0);
            for (int i = 0; i < S; i++) {
                for (size_t j = 0; j < (size_t)fm * d; j++) f2[(size_t)i * fm * d + j] = ds_bf16_to_f32(map[(size_t)i * row + j]);
                for (int j = 0; j < d; j++) l2[(size_t)i * d + j] = ds_bf16_to_f32(map[(size_t)i * row + (size_t)fm * d + j]);
            }
            munmap((void *)map, nb);
            double dt = ds_now() - a;
            best_read = dt < best_read ? dt : best_read;
        }
        close(fd);
        unlink(path);
        fly_tok_s = S / fly;
        cache_tok_s = S / best_read;
        printf("features of %d tokens (target %s: %d layers, hidden %d; %d feature layers):\n", S, target_dir, q.cfg.n_layers, d, fm);
        printf("  on the fly (target forward): %.1f tokens/s; from a BF16 cache in the page cache: %.0f tokens/s (%.0fx)\n", fly_tok_s,
               cache_tok_s, cache_tok_s / fly_tok_s);
        printf("  cache size: %.0f bytes/token (DeepSpec: 6 + 12 x hidden = %.0f); on-the-fly needs none\n", cache_bytes, deepspec_bytes);
        free(f2); free(l2); free(id2); free(buf);
        qwen3_free(&q);
        be->destroy(be);
    }
    if (json) {
        JsonReport rep;
        json_report_open(&rep, json);
        FILE *f = rep.f;
        if (f)
            fprintf(f, "{\"threads\": %d, \"hidden\": %d, \"layers\": %d, \"vocab\": %d, \"anchors\": %d, \"seq\": %d, \"step_s\": %.4f, "
                       "\"block_tokens_per_s\": %.3f, \"seq_tokens_per_s\": %.3f, \"peak_rss_mb\": %ld, \"supervised\": %.0f, "
                       "\"features_fly_tokens_per_s\": %.2f, \"features_cache_tokens_per_s\": %.2f, \"cache_bytes_per_token\": %.0f, "
                       "\"deepspec_cache_bytes_per_token\": %.0f}\n",
                    threads, hidden, layers, vocab, anchors, seq, best, block_tok_s, seq_tok_s, peak, supervised, fly_tok_s, cache_tok_s,
                    cache_bytes, deepspec_bytes);
        if (json_report_close(&rep, "bench_train")) return 1;
    }
    return 0;
}
