/* bench_verify.c - what a speculative-decoding verification forward costs on the CPU backend:
 * one forward of B tokens (all B rows get logits, as a verification block does) against one
 * forward of 1 token, both after a context of C tokens, for the kernels cpuid chose and for
 * the portable C kernels, interleaved in this process.
 *
 *   bench_verify --model DIR [--block 8] [--ctx 64] [--threads 1] [--reps 5] [--min-time 0.3] [--no-portable]
 *
 * Prints per path the milliseconds of each forward, block / single (the cost of verifying B
 * tokens in units of one decode step: well under B is what speculative decoding needs) and
 * the speed ratio of the chosen kernels to the portable ones. A model: tests/data/tiny-qwen3/target
 * (cache-resident), or the Qwen3-0.6B-shaped one bench_cpu writes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "kernels.h"
#include "qwen3.h"

typedef struct {
    double single, block; /* seconds per forward */
} Cost;

/* mean seconds of `iters` forwards of n tokens at positions ctx.. (logits for all n) */
static double time_forward(Qwen3Model *m, Qwen3State *st, int n, int ctx, int iters, char *err, int *fail) {
    int32_t tok[256], pos[256], rows[256];
    for (int i = 0; i < n; i++) { tok[i] = (int32_t)((ctx + i) * 7919 % m->cfg.vocab_size); pos[i] = ctx + i; rows[i] = i; }
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = n};
    double t0 = ds_now();
    for (int it = 0; it < iters && !*fail; it++)
        if (qwen3_forward(m, st, &b, err)) *fail = 1;
    return (ds_now() - t0) / iters;
}

/* prefill ctx tokens, then iterations calibrated to min_time seconds per measurement */
static Cost measure(Qwen3Model *m, Qwen3State *st, int B, int ctx, double min_time, char *err, int *fail) {
    int32_t *tok = malloc(sizeof(int32_t) * ctx), *pos = malloc(sizeof(int32_t) * ctx), last = ctx - 1;
    for (int i = 0; i < ctx; i++) { tok[i] = (int32_t)(i * 7919 % m->cfg.vocab_size); pos[i] = i; }
    Qwen3Batch pre = {.n = ctx, .tokens = tok, .pos = pos, .logit_rows = &last, .n_logits = 1};
    if (qwen3_forward(m, st, &pre, err)) *fail = 1;
    free(tok); free(pos);
    Cost c = {0, 0};
    double t1 = time_forward(m, st, 1, ctx, 1, err, fail), tb = time_forward(m, st, B, ctx, 1, err, fail);
    int n1 = (int)(min_time / (t1 + 1e-9)) + 1, nb = (int)(min_time / (tb + 1e-9)) + 1;
    c.single = time_forward(m, st, 1, ctx, n1, err, fail);
    c.block = time_forward(m, st, B, ctx, nb, err, fail);
    return c;
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    const char *model = NULL;
    int B = 8, ctx = 64, threads = 1, reps = 5;
    double min_time = 0.3;
    bool no_portable = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--block") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-time") && i + 1 < argc) min_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-portable")) no_portable = true;
        else {
            fprintf(stderr, "usage: bench_verify --model DIR [--block 8] [--ctx 64] [--threads 1] [--reps 5] [--min-time 0.3] [--no-portable]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (!model || B < 1 || B > 256 || ctx < 1 || threads < 1 || reps < 1 || reps > 50 || !(min_time >= 0)) {
        fprintf(stderr, "bench_verify: bad arguments (--model DIR is required; --block 1..256, --reps 1..50)\n");
        return 2;
    }
    char err[DS_ERR_LEN];
    Backend *be = backend_cpu_create(threads);
    Qwen3Model m;
    if (qwen3_load(&m, model, be, err)) { fprintf(stderr, "bench_verify: %s\n", err); return 1; }
    Qwen3State st;
    if (qwen3_state_init(&st, &m, ctx > B ? ctx : B, B, 0, 1, ctx + B + 1, err)) { fprintf(stderr, "bench_verify: %s\n", err); return 1; }
    omp_set_num_threads(threads);
    const char *paths[2] = {kern_path_name(), "portable"};
    const int np = strcmp(paths[0], "portable") && !no_portable ? 2 : 1;
    double s1[2][50], sb[2][50];
    int fail = 0;
    for (int r = 0; r < reps && !fail; r++)
        for (int p = 0; p < np; p++) {
            kern_set_path(paths[p]);
            Cost c = measure(&m, &st, B, ctx, min_time, err, &fail);
            s1[p][r] = c.single;
            sb[p][r] = c.block;
        }
    kern_set_path(paths[0]);
    if (fail) { fprintf(stderr, "bench_verify: %s\n", err); return 1; }
    printf("model %s, context %d, block %d, %d thread(s), median of %d interleaved runs\n", model, ctx, B, threads, reps);
    printf("%-10s %12s %12s %14s %16s\n", "kernels", "1 token ms", "block ms", "block / 1", "B singles/block");
    double med1[2], medb[2];
    for (int p = 0; p < np; p++) {
        qsort(s1[p], reps, sizeof(double), cmp_d);
        qsort(sb[p], reps, sizeof(double), cmp_d);
        med1[p] = s1[p][reps / 2];
        medb[p] = sb[p][reps / 2];
        printf("%-10s %12.3f %12.3f %14.2f %16.2f\n", paths[p], 1e3 * med1[p], 1e3 * medb[p], medb[p] / med1[p], B * med1[p] / medb[p]);
    }
    if (np == 2)
        printf("%s / portable speed: 1 token %.2fx, block %.2fx\n", paths[0], med1[1] / med1[0], medb[1] / medb[0]);
    qwen3_state_free(&st, &m);
    qwen3_free(&m);
    be->destroy(be);
    return 0;
}
