/* cmd_pretrain.c - `dspark pretrain`: trains a small Qwen3-architecture causal LM from text
 * files with the trainer's loop (src/train_loop.c: AdamW, warmup + cosine, clipping, verified
 * checkpoints, bit-exact --resume), so the project makes its own small targets.
 *
 * Data: every file is tokenized with the given tokenizer (an <|endoftext|> between files) into
 * one token stream, cut into non-overlapping windows of seq+1 tokens; a sample is --micro-batch
 * adjacent windows, run as one forward (larger matrix products).
 * The held-out files give the evaluation loss (fixed windows) at every checkpoint.
 * Output: OUT/ckpt/step_N (checkpoints) and OUT/model: a Hugging Face model directory (config,
 * BF16 safetensors, generation_config.json, the tokenizer files) updated at each checkpoint. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "progress.h"
#include "svgplot.h"
#include "tokenizer.h"
#include "train_lm.h"
#include "train_loop.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    TrainLM lm;
    const int32_t *train;  /* token stream */
    int64_t n_train;
    const int32_t *held;
    int64_t n_held;
    int eval_windows;
    const char *out, *tok_dir;
    Progress pg;
    FILE *csv;
    double *plot_x, *plot_y, *plot_ex, *plot_ey;
    int n_plot, n_eval, cap_plot;
    bool resume;
    int64_t first_step;
    double tok_s_ema;
    char err[DS_ERR_LEN];
} Pretrain;

static ds_status lm_sample(void *ctx, int64_t sample, const ParamSet *params, ParamSet *grads, float grad_scale, uint64_t *rng,
                           TrainSampleStats *out, char *err) {
    (void)params; (void)grads; (void)rng; (void)err;
    Pretrain *p = ctx;
    int T = p->lm.T;
    int M = p->lm.B; /* a sample is M adjacent windows: one forward over M x T rows keeps the matrix products large */
    double loss = train_lm_step(&p->lm, p->train + sample * M * (T + 1), M, grad_scale, true);
    out->loss = loss;
    out->ce = loss;
    out->tokens = (double)M * T;
    return DS_OK;
}

static double heldout_loss(Pretrain *p) {
    int T = p->lm.T;
    int64_t windows = p->n_held / (T + 1);
    if (windows <= 0) return NAN;
    int n = p->eval_windows < windows ? p->eval_windows : (int)windows;
    double sum = 0;
    for (int i = 0; i < n; i++) { /* evenly spread, fixed windows */
        int64_t w = (int64_t)((double)i * (double)windows / n);
        sum += train_lm_step(&p->lm, p->held + w * (T + 1), 1, 0, false);
    }
    return sum / n;
}

static ds_status copy_file(const char *src_dir, const char *dst_dir, const char *name, char *err) {
    char src[1024], dst[1024], *data;
    size_t len;
    if (!ds_path_join(src, sizeof src, src_dir, name) || !ds_path_join(dst, sizeof dst, dst_dir, name))
        return ds_err(err, DS_EARG, "path too long: %s", dst_dir);
    if (!ds_file_exists(src)) return DS_OK;
    ds_status s = ds_read_file(src, &data, &len, err);
    if (!s) s = ds_write_file_atomic(dst, data, len, err);
    ds_free(data);
    return s;
}

/* OUT/model: loadable by dspark and transformers */
static ds_status export_model(Pretrain *p, char *err) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/model", p->out);
    ds_status s = train_lm_save(&p->lm, dir, DS_BF16, err);
    if (!s) s = copy_file(p->tok_dir, dir, "tokenizer.json", err);
    if (!s) s = copy_file(p->tok_dir, dir, "tokenizer_config.json", err);
    if (s) return s;
    const Qwen3Config *c = &p->lm.cfg;
    char gen[256];
    snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"do_sample\": true,\n  \"temperature\": 0.7,\n  \"top_p\": 0.8,\n  \"top_k\": 20\n}\n",
             c->bos_token_id, c->eos_token_ids[0]);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    return ds_write_file_atomic(path, gen, strlen(gen), err);
}

static ds_status write_config(void *ctx, const char *path, char *err) {
    Pretrain *p = ctx;
    char *cfg = qwen3_config_json(&p->lm.cfg);
    if (!cfg) return ds_err(err, DS_ENOMEM, "out of memory");
    ds_status s = ds_write_file_atomic(path, cfg, strlen(cfg), err);
    free(cfg);
    return s;
}

static void write_plot(Pretrain *p) {
    char path[1024], err[DS_ERR_LEN];
    snprintf(path, sizeof path, "%s/loss.svg", p->out);
    PlotSeries s[2] = {{"train loss", p->plot_x, p->plot_y, p->n_plot, false}, {"held-out loss", p->plot_ex, p->plot_ey, p->n_eval, true}};
    PlotSpec spec = {.title = "dspark pretrain", .xlabel = "optimizer step", .ylabel = "cross-entropy (nats/token)"};
    if (p->n_plot > 0 && svg_plot(path, &spec, s, p->n_eval > 0 ? 2 : 1, err)) fprintf(stderr, "dspark pretrain: %s\n", err);
}

/* On resume: keep the metrics rows up to the resumed step (a killed run may have logged past
 * its last checkpoint), rewrite the file atomically and load them into the plot. */
static void metrics_resume(Pretrain *p, int64_t resumed) {
    char path[1024], err[DS_ERR_LEN];
    snprintf(path, sizeof path, "%s/metrics.csv", p->out);
    char *data = NULL;
    size_t len = 0;
    size_t cap = 1 << 16, n = 0;
    char *keep = ds_malloc(cap);
    if (!keep) return;
    n += (size_t)snprintf(keep, cap, "step,lr,loss,grad_norm,tokens_per_s,heldout_loss\n");
    if (ds_read_file(path, &data, &len, err) == DS_OK) {
        for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
            long long step;
            double lr, loss, gn, ts, held;
            int got = sscanf(line, "%lld,%lf,%lf,%lf,%lf,%lf", &step, &lr, &loss, &gn, &ts, &held);
            if (got < 5 || step > resumed || p->n_plot >= p->cap_plot) continue;
            p->plot_x[p->n_plot] = (double)step;
            p->plot_y[p->n_plot++] = loss;
            if (got == 6) { p->plot_ex[p->n_eval] = (double)step; p->plot_ey[p->n_eval++] = held; }
            size_t l = strlen(line);
            if (n + l + 2 > cap) {
                char *nk = ds_realloc(keep, cap = (n + l + 2) * 2);
                if (!nk) break;
                keep = nk;
            }
            memcpy(keep + n, line, l);
            keep[n + l] = '\n';
            n += l + 1;
        }
    }
    ds_free(data);
    if (ds_write_file_atomic(path, keep, n, err)) fprintf(stderr, "dspark pretrain: %s\n", err);
    ds_free(keep);
}

static void on_step(void *ctx, const TrainStepLog *log) {
    Pretrain *p = ctx;
    if (!p->csv) { /* first step of this process */
        char path[1024];
        p->first_step = log->step - 1;
        if (p->resume) metrics_resume(p, p->first_step);
        snprintf(path, sizeof path, "%s/metrics.csv", p->out);
        p->csv = fopen(path, p->resume ? "a" : "w");
        if (!p->csv) { fprintf(stderr, "dspark pretrain: %s: cannot open for writing\n", path); exit(1); }
        if (!p->resume) fprintf(p->csv, "step,lr,loss,grad_norm,tokens_per_s,heldout_loss\n");
    }
    double loss = log->sum.loss / log->samples, tok_s = log->seconds > 0 ? log->sum.tokens / log->seconds : 0;
    p->tok_s_ema = p->tok_s_ema > 0 ? 0.9 * p->tok_s_ema + 0.1 * tok_s : tok_s;
    double held = NAN;
    if (log->checkpointed) {
        held = heldout_loss(p);
        if (export_model(p, p->err)) fprintf(stderr, "\ndspark pretrain: %s\n", p->err);
    }
    char heldbuf[32] = "";
    if (!isnan(held)) snprintf(heldbuf, sizeof heldbuf, "%.6f", held);
    if (p->n_plot < p->cap_plot) { p->plot_x[p->n_plot] = (double)log->step; p->plot_y[p->n_plot++] = loss; }
    if (!isnan(held) && p->n_eval < p->cap_plot) { p->plot_ex[p->n_eval] = (double)log->step; p->plot_ey[p->n_eval++] = held; }
    fprintf(p->csv, "%lld,%.6g,%.6f,%.4f,%.1f,%s\n", (long long)log->step, log->lr, loss, log->grad_norm, tok_s, heldbuf);
    fflush(p->csv);
    if (!isnan(held))
        fprintf(stderr, "%s[step %lld] train loss %.4f  held-out loss %.4f\n", p->pg.tty ? "\r\033[K" : "", (long long)log->step, loss, held);
    char extra[160];
    snprintf(extra, sizeof extra, "loss %.3f  %.0f tok/s", loss, p->tok_s_ema);
    p->pg.total = log->total_steps;
    progress_update(&p->pg, log->step, extra);
    if (log->checkpointed || log->step == log->total_steps) write_plot(p);
}

/* Tokenize files into one stream with <|endoftext|> after each file. */
static ds_status tokenize_files(const Tokenizer *tok, const ArgList *files, int32_t **out, int64_t *n_out, char *err) {
    int32_t eot = tokenizer_token_id(tok, "<|endoftext|>");
    int64_t n = 0, cap = 0;
    int32_t *all = NULL;
    ds_status s = DS_OK;
    for (int i = 0; i < files->n && !s; i++) {
        char *text;
        size_t len;
        int32_t *ids;
        int m;
        if ((s = ds_read_file(files->items[i], &text, &len, err))) break;
        s = tokenizer_encode(tok, text, len, &ids, &m, err);
        ds_free(text);
        if (s) break;
        if (n + m + 1 > cap) {
            cap = (n + m + 1) * 2;
            int32_t *na = ds_realloc(all, sizeof *na * (size_t)cap);
            if (!na) { ds_free(ids); s = ds_err(err, DS_ENOMEM, "out of memory tokenizing %s", files->items[i]); break; }
            all = na;
        }
        memcpy(all + n, ids, sizeof *ids * (size_t)m);
        n += m;
        if (eot >= 0) all[n++] = eot;
        ds_free(ids);
    }
    if (s) { ds_free(all); return s; }
    *out = all;
    *n_out = n;
    return DS_OK;
}

static ds_status load_config(Qwen3Config *c, const char *path, const Tokenizer *tok, char *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d: %s", path, je.line, je.text);
    if (!json_is_object(root)) { json_decref(root); return ds_err(err, DS_EFORMAT, "%s: expected a JSON object", path); }
    int tok_ids = tokenizer_vocab_size(tok);
    if (!json_object_get(root, "vocab_size")) /* the tokenizer's ids, one unused row (a drafter's mask token), rounded to 64 */
        json_object_set_new(root, "vocab_size", json_integer((tok_ids + 1 + 63) / 64 * 64));
    if (!json_object_get(root, "architectures")) json_object_set_new(root, "architectures", json_pack("[s]", "Qwen3ForCausalLM"));
    int32_t eot = tokenizer_token_id(tok, "<|endoftext|>"), im_end = tokenizer_token_id(tok, "<|im_end|>");
    if (!json_object_get(root, "bos_token_id")) json_object_set_new(root, "bos_token_id", json_integer(eot >= 0 ? eot : 0));
    if (!json_object_get(root, "eos_token_id")) json_object_set_new(root, "eos_token_id", json_integer(im_end >= 0 ? im_end : eot >= 0 ? eot : 0));
    ds_status s = qwen3_config_parse(c, root, path, err);
    json_decref(root);
    if (!s && c->vocab_size < tok_ids) s = ds_err(err, DS_EARG, "%s: vocab_size %d is smaller than the tokenizer's %d ids", path, c->vocab_size, tok_ids);
    return s;
}

int cmd_pretrain(int argc, char **argv) {
    const char *config = NULL, *tok_dir = NULL, *out = NULL;
    ArgList data = {0}, held = {0};
    int steps = 2000, batch = 32, micro = 8, seq = 256, threads = 0, save_every = 200, eval_windows = 64, seed = 1234;
    double lr = 3e-3, warmup = 0.04, wd = 0.0, clip = 1.0, init_std = 0.02;
    bool resume = false;
    int stop_after = 0;
    ArgSpec specs[] = {
        {"--config", ARG_STR, &config, "FILE", "model config JSON (Qwen3 fields: hidden_size, num_hidden_layers, ...; vocab_size defaults to the tokenizer's)", 0, -1},
        {"--tokenizer", ARG_STR, &tok_dir, "DIR", "tokenizer.json (+ tokenizer_config.json) directory, e.g. from dspark train-tokenizer", 0, -1},
        {"--data", ARG_LIST, &data, "FILE", "training text file (repeatable)", 0, -1},
        {"--heldout", ARG_LIST, &held, "FILE", "held-out text file for the evaluation loss (repeatable)", 0, -1},
        {"--out", ARG_STR, &out, "DIR", "output: DIR/model (Hugging Face), DIR/ckpt, DIR/metrics.csv, DIR/loss.svg", 0, -1},
        {"--steps", ARG_INT, &steps, "N", "optimizer steps (default 2000)", 1, 1e9},
        {"--batch", ARG_INT, &batch, "N", "sequences per optimizer step (default 32)", 1, 1 << 20},
        {"--micro-batch", ARG_INT, &micro, "M", "sequences per forward (default 8, at most --batch; --batch must be a multiple)", 1, 1 << 16},
        {"--seq", ARG_INT, &seq, "T", "tokens per sequence (default 256)", 2, 1 << 16},
        {"--lr", ARG_FLOAT, &lr, "LR", "peak learning rate (default 3e-3)", 0, 1},
        {"--warmup-ratio", ARG_FLOAT, &warmup, "R", "linear warmup fraction of the steps, then cosine to 0 (default 0.04)", 0, 1},
        {"--weight-decay", ARG_FLOAT, &wd, "W", "AdamW decoupled weight decay (default 0)", 0, 1},
        {"--clip", ARG_FLOAT, &clip, "C", "global gradient-norm clipping (default 1.0; 0: off)", 0, 1e9},
        {"--init-std", ARG_FLOAT, &init_std, "S", "N(0, S) initialisation of linear and embedding weights (default 0.02)", 0, 10},
        {"--seed", ARG_INT, &seed, "S", "initialisation and data order (default 1234)", 0, 2147483647},
        {"--save-every", ARG_INT, &save_every, "N", "checkpoint + held-out loss every N steps (default 200)", 1, 1e9},
        {"--eval-windows", ARG_INT, &eval_windows, "N", "held-out windows per evaluation (default 64)", 1, 1 << 20},
        {"--threads", ARG_INT, &threads, "N", "OpenMP threads (default: all)", 0, 1024},
        {"--resume", ARG_FLAG, &resume, NULL, "continue from the newest valid checkpoint in DIR/ckpt", 0, -1},
        {"--stop-after", ARG_INT, &stop_after, "N", "stop (with a checkpoint) after step N, to be resumed later", 0, 1e9},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("pretrain", "--config FILE --tokenizer DIR --data TEXT... [--heldout TEXT...] --out DIR [options]", specs,
                        n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!config || !tok_dir || !out || data.n == 0) {
        fprintf(stderr, "dspark pretrain: --config, --tokenizer, --data and --out are required (see --help)\n");
        return 2;
    }
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#endif
    char err[DS_ERR_LEN], warn[DS_ERR_LEN];
    Tokenizer *tok = NULL;
    Pretrain p = {.out = out, .tok_dir = tok_dir, .eval_windows = eval_windows};
    int32_t *train = NULL, *hold = NULL;
    int status = 1;
    Qwen3Config cfg;
    if (tokenizer_load(&tok, tok_dir, err)) goto fail;
    if (load_config(&cfg, config, tok, err)) goto fail;
    if (seq > cfg.max_position_embeddings) { ds_err(err, DS_EARG, "--seq %d exceeds the config's max_position_embeddings %d", seq, cfg.max_position_embeddings); goto fail; }
    fprintf(stderr, "dspark pretrain: tokenizing %d training and %d held-out files\n", data.n, held.n);
    if (tokenize_files(tok, &data, &train, &p.n_train, err)) goto fail;
    if (held.n && tokenize_files(tok, &held, &hold, &p.n_held, err)) goto fail;
    p.train = train;
    p.held = hold;
    int64_t n_windows = p.n_train / (seq + 1);
    if (n_windows < 1) { ds_err(err, DS_EARG, "the training text has %lld tokens, fewer than one sequence of %d", (long long)p.n_train, seq + 1); goto fail; }
    if (micro > batch) micro = batch;
    if (batch % micro) { ds_err(err, DS_EARG, "--batch %d is not a multiple of --micro-batch %d", batch, micro); goto fail; }
    if (n_windows < micro) { ds_err(err, DS_EARG, "the training text has %lld windows of %d tokens, fewer than a micro-batch of %d", (long long)n_windows, seq + 1, micro); goto fail; }
    if (train_lm_init(&p.lm, &cfg, micro, seq, err)) goto fail;
    train_lm_init_weights(&p.lm, (float)init_std, (uint64_t)seed);
    size_t n_params = 0;
    for (int i = 0; i < p.lm.params.n; i++) n_params += p.lm.params.info[i].numel;
    fprintf(stderr, "dspark pretrain: %.2fM parameters (%d layers, hidden %d, vocab %d), %lld training tokens (%lld windows of %d), %lld held-out tokens\n",
            n_params / 1e6, cfg.n_layers, cfg.hidden_size, cfg.vocab_size, (long long)p.n_train, (long long)n_windows, seq, (long long)p.n_held);
    char path[1024];
    snprintf(path, sizeof path, "%s/ckpt", out);
    if (ds_mkdirs(path, err)) goto fail;
    char ckpt_dir[1024];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/ckpt", out);
    /* what a resume must not change: model config, data size, sequence length */
    uint64_t h = ckpt_hash_bytes(CKPT_HASH_INIT, &cfg, sizeof cfg);
    int64_t hs[3] = {p.n_train, seq, (int64_t)(init_std * 1e9)};
    h = ckpt_hash_bytes(h, hs, sizeof hs);
    h = ckpt_hash_bytes(h, &micro, sizeof micro);
    TrainLoopCfg lc = {.n_samples = n_windows / micro, .global_batch = batch / micro, .epochs = 1, .max_steps = steps, .lr = lr,
                       .warmup_ratio = warmup, .max_grad_norm = clip, .adam = adamw_default(), .seed = (uint64_t)seed,
                       .ckpt_every = save_every, .keep_last = 2, .stop_after = stop_after, .extra_hash = h, .out_dir = ckpt_dir,
                       .write_config = write_config, .config_ctx = &p, .sample_fn = lm_sample, .model_ctx = &p,
                       .on_step = on_step, .log_ctx = &p};
    lc.adam.weight_decay = wd;
    int64_t n_points = steps + 1;
    p.plot_x = ds_malloc(sizeof(double) * (size_t)n_points * 4);
    if (!p.plot_x) { ds_err(err, DS_ENOMEM, "out of memory"); goto fail; }
    p.plot_y = p.plot_x + n_points; p.plot_ex = p.plot_y + n_points; p.plot_ey = p.plot_ex + n_points;
    p.cap_plot = (int)n_points;
    p.resume = resume;
    int64_t resumed = 0;
    progress_start(&p.pg, "pretrain", steps);
    ds_status s = train_loop_run(&lc, &p.lm.params, &p.lm.grads, resume, &resumed, warn, err);
    if (warn[0]) fprintf(stderr, "dspark pretrain: %s\n", warn);
    if (s) goto fail;
    progress_finish(&p.pg, steps, NULL);
    if (resumed >= steps) fprintf(stderr, "dspark pretrain: the checkpoint in %s is already at step %lld\n", ckpt_dir, (long long)resumed);
    double final_held = heldout_loss(&p);
    fprintf(stderr, "dspark pretrain: done; held-out loss %.4f nats/token; model in %s/model\n", final_held, out);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "dspark pretrain: %s\n", err);
done:
    if (p.csv) fclose(p.csv);
    ds_free(p.plot_x);
    train_lm_free(&p.lm);
    ds_free(train);
    ds_free(hold);
    tokenizer_free(tok);
    return status;
}
