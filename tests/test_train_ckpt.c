/* test_train_ckpt.c - the training loop and its checkpoints on a stand-in model (least squares
 * in a ParamSet): the loss falls; run 2N steps == run N, stop, resume N, byte for byte; a
 * truncated or corrupt checkpoint is detected and the previous one used; a half-written save
 * (leftover temporary directory) is ignored; a resume with other settings is refused. */
#include <sys/stat.h>
#include <unistd.h>

#include "train_loop.h"
#include "test.h"

#define DIM 8
#define N_SAMPLES 40

typedef struct { float x[N_SAMPLES][DIM], y[N_SAMPLES]; } LsqData;

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float unif(uint64_t *s) { return (float)((mix(s) >> 40) * 0x1.0p-24) * 2.0f - 1.0f; }

static void make_data(LsqData *d) {
    uint64_t s = 7;
    float w[DIM];
    for (int j = 0; j < DIM; j++) w[j] = unif(&s);
    for (int i = 0; i < N_SAMPLES; i++) {
        d->y[i] = 0.5f; /* the frozen bias below */
        for (int j = 0; j < DIM; j++) { d->x[i][j] = unif(&s); d->y[i] += w[j] * d->x[i][j]; }
    }
}

/* loss = 0.5 * u * (w.x + b - y)^2 with u in [0.9, 1.1) drawn from the loop's RNG, so a resume
 * that lost the RNG state would not be bit-exact. b is frozen (never moves). */
static ds_status lsq_step(void *ctx, int64_t i, const ParamSet *params, ParamSet *grads, float scale, uint64_t *rng,
                          TrainSampleStats *out, char *err) {
    (void)err;
    const LsqData *d = ctx;
    const float *w = params_get(params, "w"), *b = params_get(params, "b");
    float *g = params_get(grads, "w");
    float u = 1.0f + 0.1f * unif(rng), r = b[0] - d->y[i];
    for (int j = 0; j < DIM; j++) r += w[j] * d->x[i][j];
    for (int j = 0; j < DIM; j++) g[j] += scale * u * r * d->x[i][j];
    out->loss = 0.5 * u * r * r;
    out->tokens = 1;
    return DS_OK;
}

static void lsq_params(ParamSet *p, ParamSet *g) {
    char err[DS_ERR_LEN];
    int64_t dim[1] = {DIM}, one[1] = {1};
    memset(p, 0, sizeof *p);
    memset(g, 0, sizeof *g);
    CHECK_OK(params_add(p, "b", 1, one, false, err), err);
    CHECK_OK(params_add(p, "w", 1, dim, true, err), err);
    CHECK_OK(params_alloc(p, err), err);
    CHECK_OK(params_add(g, "w", 1, dim, true, err), err);
    CHECK_OK(params_alloc(g, err), err);
    params_get(p, "b")[0] = 0.5f;
}

static ds_status write_cfg(void *ctx, const char *path, char *err) {
    (void)ctx;
    return ds_write_file_atomic(path, "{\"stand_in\": true}\n", 19, err);
}

typedef struct { double first, last; int n; } LossLog;
static void on_step(void *ctx, const TrainStepLog *l) {
    LossLog *g = ctx;
    double mean = l->sum.loss / l->samples;
    if (g->n++ == 0) g->first = mean;
    g->last = mean;
}

static LsqData g_data;

static TrainLoopCfg base_cfg(const char *out, LossLog *log) {
    TrainLoopCfg c = {.n_samples = N_SAMPLES, .global_batch = 4, .epochs = 6, .lr = 0.05, .warmup_ratio = 0.04,
                      .max_grad_norm = 1.0, .adam = adamw_default(), .seed = 42, .ckpt_every = 5, .out_dir = out,
                      .write_config = write_cfg, .sample_fn = lsq_step, .model_ctx = &g_data, .on_step = on_step, .log_ctx = log};
    return c;
}

static const char *tmpdir(const char *name, char *buf, size_t cap) {
    const char *root = getenv("DSPARK_TEST_TMP") ? getenv("DSPARK_TEST_TMP") : "/tmp";
    snprintf(buf, cap, "%s/train_ckpt_%s_%d", root, name, (int)getpid());
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", buf);
    if (system(cmd) != 0) fprintf(stderr, "cannot clean %s\n", buf);
    return buf;
}

static bool same_file(const char *a, const char *b) {
    char *x, *y, err[DS_ERR_LEN];
    size_t nx, ny;
    if (ds_read_file(a, &x, &nx, err)) return false;
    if (ds_read_file(b, &y, &ny, err)) { ds_free(x); return false; }
    bool same = nx == ny && memcmp(x, y, nx) == 0;
    ds_free(x);
    ds_free(y);
    return same;
}

/* 60 steps (6 epochs of 10 batches of 4): the mean batch loss falls by 10x or more. */
static void test_loss_falls_and_resume_bit_exact(void) {
    char err[DS_ERR_LEN], warn[DS_ERR_LEN], a[1024], b[1024], pa[1200], pb[1200];
    make_data(&g_data);
    ParamSet p, g;
    LossLog log = {0};
    lsq_params(&p, &g);
    TrainLoopCfg c = base_cfg(tmpdir("full", a, sizeof a), &log);
    CHECK(train_total_steps(&c) == 60);
    int64_t from;
    CHECK_OK(train_loop_run(&c, &p, &g, false, &from, warn, err), err);
    CHECK_MSG(log.n == 60 && log.last < 0.1 * log.first, "steps %d loss %g -> %g", log.n, log.first, log.last);
    CHECK(params_get(&p, "b")[0] == 0.5f);
    params_free(&p);
    params_free(&g);

    /* run 25 steps and stop, then resume to the end in a second "process" (fresh params) */
    LossLog l1 = {0}, l2 = {0};
    lsq_params(&p, &g);
    TrainLoopCfg c1 = base_cfg(tmpdir("split", b, sizeof b), &l1);
    c1.stop_after = 27; /* not a checkpoint multiple: the stop itself saves */
    CHECK_OK(train_loop_run(&c1, &p, &g, true, &from, warn, err), err);
    CHECK(from == 0 && l1.n == 27);
    params_free(&p);
    params_free(&g);
    lsq_params(&p, &g);
    TrainLoopCfg c2 = base_cfg(b, &l2);
    CHECK_OK(train_loop_run(&c2, &p, &g, true, &from, warn, err), err);
    CHECK(from == 27 && l2.n == 33);
    CHECK(l2.last == log.last);
    const char *files[] = {"model.safetensors", "master.safetensors", "exp_avg.safetensors", "exp_avg_sq.safetensors", "train_state.json"};
    for (int i = 0; i < 5; i++) {
        snprintf(pa, sizeof pa, "%s/step_60/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/step_60/%s", b, files[i]);
        CHECK_MSG(same_file(pa, pb), "%s differs after resume", files[i]);
    }
    /* model.safetensors is the BF16 rounding of the master weights, frozen tensors included */
    ParamSet back, gb;
    lsq_params(&back, &gb);
    params_zero(&back);
    snprintf(pa, sizeof pa, "%s/step_60/model.safetensors", a);
    CHECK_OK(params_load(&back, pa, false, err), err);
    int bf = params_get(&back, "b")[0] == 0.5f;
    for (int j = 0; j < DIM; j++) bf &= params_get(&back, "w")[j] == ds_bf16_to_f32(ds_f32_to_bf16(params_get(&p, "w")[j]));
    CHECK(bf);
    params_free(&back);
    params_free(&gb);
    /* resuming a finished run does nothing */
    LossLog l3 = {0};
    TrainLoopCfg c3 = base_cfg(b, &l3);
    CHECK_OK(train_loop_run(&c3, &p, &g, true, &from, warn, err), err);
    CHECK(from == 60 && l3.n == 0);
    /* must fail: other settings on the same directory */
    c3.lr = 0.01;
    CHECK(train_loop_run(&c3, &p, &g, true, &from, warn, err) == DS_EARG && strstr(err, "config hash"));
    params_free(&p);
    params_free(&g);
}

/* Corruption: flip a byte of the newest checkpoint's master weights -> ckpt_find refuses it with
 * one line and returns the previous step; truncating its model file is caught too; a leftover
 * .tmp-step directory and a missing manifest are never taken; no valid checkpoint is an error. */
static void test_corrupt_checkpoint(void) {
    char err[DS_ERR_LEN], warn[DS_ERR_LEN], d[1024], step[4096], p[1200];
    make_data(&g_data);
    ParamSet ps, g;
    LossLog log = {0};
    lsq_params(&ps, &g);
    TrainLoopCfg c = base_cfg(tmpdir("corrupt", d, sizeof d), &log);
    c.max_steps = 15;
    CHECK_OK(train_loop_run(&c, &ps, &g, false, NULL, warn, err), err);
    CHECK_OK(ckpt_find(d, step, sizeof step, warn, err), err);
    CHECK(strstr(step, "step_15") && warn[0] == 0);
    /* flip one byte */
    snprintf(p, sizeof p, "%s/step_15/master.safetensors", d);
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (f) { fseek(f, -3, SEEK_END); int ch = fgetc(f); fseek(f, -3, SEEK_END); fputc(ch ^ 0x10, f); fclose(f); }
    CHECK_OK(ckpt_find(d, step, sizeof step, warn, err), err);
    CHECK_MSG(strstr(step, "step_10") && strstr(warn, "checksum mismatch") && !strchr(warn, '\n'), "%s | %s", step, warn);
    /* truncate step_10's model file: step_5 is next */
    snprintf(p, sizeof p, "%s/step_10/model.safetensors", d);
    CHECK(truncate(p, 40) == 0);
    CHECK_OK(ckpt_find(d, step, sizeof step, warn, err), err);
    CHECK_MSG(strstr(step, "step_5") && strstr(warn, "checksum mismatch"), "%s | %s", step, warn); /* latest's reason first */
    CHECK(ckpt_verify(p, err) != DS_OK);
    snprintf(p, sizeof p, "%s/step_10", d);
    CHECK(ckpt_verify(p, err) != DS_OK && strstr(err, "truncated"));
    /* a half-written save: newer temporary directory without manifest, and a step dir without one */
    snprintf(p, sizeof p, "%s/.tmp-step_20", d);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/step_25", d);
    mkdir(p, 0755);
    CHECK_OK(ckpt_find(d, step, sizeof step, warn, err), err);
    CHECK(strstr(step, "step_5") != NULL);
    /* resume from there: continues from step 5 and ends at 15 again, identical to the first run */
    LossLog l2 = {0};
    ParamSet p2, g2;
    lsq_params(&p2, &g2);
    int64_t from;
    c.log_ctx = &l2;
    CHECK_OK(train_loop_run(&c, &p2, &g2, true, &from, warn, err), err);
    snprintf(p, sizeof p, "%s/.tmp-step_20", d);
    CHECK(!ds_dir_exists(p)); /* the next save removed the dead save's directory */
    CHECK(from == 5 && l2.n == 10 && memcmp(params_get(&p2, "w"), params_get(&ps, "w"), DIM * sizeof(float)) == 0);
    /* must fail: nothing valid left */
    for (int k = 5; k <= 15; k += 5) {
        snprintf(p, sizeof p, "%s/step_%d/train_state.json", d, k);
        CHECK(truncate(p, 3) == 0);
    }
    CHECK(ckpt_find(d, step, sizeof step, warn, err) == DS_EIO);
    params_free(&p2);
    params_free(&g2);
    params_free(&ps);
    params_free(&g);
}

int main(void) {
    RUN(test_loss_falls_and_resume_bit_exact);
    RUN(test_corrupt_checkpoint);
    if (g_checks_failed == 0) { /* keep the directories of a failed run for inspection */
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf %s/train_ckpt_*_%d", getenv("DSPARK_TEST_TMP") ? getenv("DSPARK_TEST_TMP") : "/tmp", (int)getpid());
        if (system(cmd) != 0) fprintf(stderr, "cannot clean up\n");
    }
    return test_summary();
}
