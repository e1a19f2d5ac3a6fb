/* cmd_train.c - `dspark train`: DeepSpec's drafter training (digest §5), one process, CPU/host.
 *
 *   dspark train --model T --data DATA.jsonl --algo dspark|dflash [--draft INIT_DIR]
 *                [--config FILE.json] [--set key=value ...] --out DIR [--resume]
 *
 * Settings: DeepSpec's config defaults (digest §5.8), changed by --config (a JSON object of the
 * same keys) and then --set (only known keys, as DeepSpec's --opts): lr 6e-4,
 * global_batch_size 512, num_train_epochs 10, max_train_steps 0 (= epochs x floor(N/batch)),
 * warmup_ratio 0.04, max_grad_norm 1.0, weight_decay 0, num_anchors 512, max_length 4096,
 * min_loss_tokens 14, checkpointing_steps 3000, keep_checkpoints 0 (all), seed 42,
 * loss_decay_gamma 4, ce_loss_alpha / l1_loss_alpha / confidence_head_alpha 0.1 / 0.9 / 1.0
 * (dspark) or 1 / 0 / 0 (dflash); for a new drafter (no --draft) its shape: block_size 7,
 * num_draft_layers, markov_rank, markov_head_type (draft_init.h scales them to the target).
 * Target features are computed on the fly by the target's inference forward (no cache).
 * Outputs in DIR: step_N/ checkpoints (train_ckpt.h: DeepSpec's config.json + BF16
 * model.safetensors, optimiser state beside it), metrics.csv (step, lr, loss, ce, l1, conf,
 * grad_norm, tau_probabilistic: means over the step's batch), loss.svg, and with --eval-prompts
 * eval.csv: the speculative-decoding tau of each checkpoint's BF16 drafter on held-out prompts
 * (eval's prompt format, seeds 980406 + i). --resume continues from the newest valid checkpoint
 * bit for bit. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "args.h"
#include "chat.h"
#include "commands.h"
#include "draft_init.h"
#include "gen_common.h"
#include "progress.h"
#include "svgplot.h"
#include "train_data.h"
#include "train_loop.h"

#if !__has_include("train_draft.h")
/* The drafter's training forward/backward (src/train_draft.*) lands from another branch; until
 * then the command exists but says so. */
int cmd_train(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "dspark train: this build has no drafter trainer (src/train_draft.c)\n");
    return 1;
}
#else
#include "spec.h"
#include "train_draft.h"

typedef struct {
    double lr, warmup_ratio, max_grad_norm, weight_decay, gamma, ce_alpha, l1_alpha, conf_alpha;
    int global_batch, epochs, max_steps, num_anchors, max_length, min_loss_tokens, ckpt_every, keep_last, seed;
    int block_size, num_draft_layers, markov_rank;
    char markov_head_type[16];
} TrainSettings;

typedef struct { const char *key; char type; size_t off; } SettingKey; /* type: d double, i int, s string */
#define SK(k, t, f) {k, t, offsetof(TrainSettings, f)}
static const SettingKey KEYS[] = {
    SK("lr", 'd', lr), SK("warmup_ratio", 'd', warmup_ratio), SK("max_grad_norm", 'd', max_grad_norm),
    SK("weight_decay", 'd', weight_decay), SK("loss_decay_gamma", 'd', gamma), SK("ce_loss_alpha", 'd', ce_alpha),
    SK("l1_loss_alpha", 'd', l1_alpha), SK("confidence_head_alpha", 'd', conf_alpha),
    SK("global_batch_size", 'i', global_batch), SK("num_train_epochs", 'i', epochs), SK("max_train_steps", 'i', max_steps),
    SK("num_anchors", 'i', num_anchors), SK("max_length", 'i', max_length), SK("min_loss_tokens", 'i', min_loss_tokens),
    SK("checkpointing_steps", 'i', ckpt_every), SK("keep_checkpoints", 'i', keep_last), SK("seed", 'i', seed),
    SK("block_size", 'i', block_size), SK("num_draft_layers", 'i', num_draft_layers), SK("markov_rank", 'i', markov_rank),
    SK("markov_head_type", 's', markov_head_type),
};
#define N_KEYS (int)(sizeof KEYS / sizeof KEYS[0])

static ds_status set_key(TrainSettings *s, const char *key, const char *val, const char *where, char *err) {
    for (int i = 0; i < N_KEYS; i++) {
        if (strcmp(KEYS[i].key, key) != 0) continue;
        char *end;
        void *dst = (char *)s + KEYS[i].off;
        if (KEYS[i].type == 's') {
            if (strlen(val) >= sizeof s->markov_head_type) return ds_err(err, DS_EARG, "%s: %s value too long", where, key);
            snprintf(dst, sizeof s->markov_head_type, "%s", val);
            return DS_OK;
        }
        double v = strtod(val, &end);
        if (end == val || *end) return ds_err(err, DS_EARG, "%s: %s=%s is not a number", where, key, val);
        if (KEYS[i].type == 'i') {
            if (v != (double)(int)v || v < 0) return ds_err(err, DS_EARG, "%s: %s=%s must be a non-negative integer", where, key, val);
            *(int *)dst = (int)v;
        } else {
            *(double *)dst = v;
        }
        return DS_OK;
    }
    char known[1024] = "";
    for (int i = 0; i < N_KEYS; i++) { strcat(known, i ? ", " : ""); strcat(known, KEYS[i].key); }
    return ds_err(err, DS_EARG, "%s: unknown setting '%s' (known: %s)", where, key, known);
}

static ds_status load_config_file(TrainSettings *s, const char *path, char *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!json_is_object(root)) { json_decref(root); return ds_err(err, DS_EFORMAT, "%s: not a JSON object (%s)", path, je.text); }
    const char *key;
    json_t *v;
    ds_status rc = DS_OK;
    json_object_foreach(root, key, v) {
        char buf[64];
        if (json_is_string(v)) snprintf(buf, sizeof buf, "%s", json_string_value(v));
        else if (json_is_integer(v)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
        else { rc = ds_err(err, DS_EFORMAT, "%s: %s must be a number or a string", path, key); break; }
        if ((rc = set_key(s, key, buf, path, err))) break;
    }
    json_decref(root);
    return rc;
}

/* ---- the drafter as the loop's model ---- */

typedef struct {
    TrainDraft t;
    Qwen3Model *target;
    const TrainData *data;
    TrainLossCfg loss;
    int num_anchors;
    float *features, *last_hidden;   /* [max_len][m*d], [max_len][d] */
} DraftModel;

static ds_status draft_sample(void *ctx, int64_t i, const ParamSet *params, ParamSet *grads, float scale, uint64_t *rng,
                              TrainSampleStats *out, char *err) {
    (void)params; (void)grads; /* they are m->t.params / m->t.grads */
    DraftModel *m = ctx;
    const int32_t *ids = m->data->ids[i];
    const uint8_t *mask = m->data->mask[i];
    int S = m->data->len[i];
    ds_status rc = train_draft_features(m->target, &m->t.cfg, ids, S, m->features, m->last_hidden, err);
    if (rc) return rc;
    TrainDraftStats st;
    if ((rc = train_draft_step(&m->t, ids, mask, S, m->features, m->last_hidden, NULL, NULL, m->num_anchors, rng, &m->loss, scale, &st,
                               err)))
        return ds_err(err, rc, "sample %lld (line id %lld): %s", (long long)i, (long long)m->data->line_id[i], err);
    out->loss = st.parts.total;
    out->ce = st.parts.ce;
    out->l1 = st.parts.l1;
    out->conf = st.parts.conf;
    out->tau_sum = st.tau_sum;
    out->tau_blocks = st.tau_blocks;
    out->tokens = S;
    return DS_OK;
}

typedef struct { const DraftConfig *dc; char target_cfg[1200]; } ConfigCtx;
static ds_status write_config(void *ctx, const char *path, char *err) {
    ConfigCtx *c = ctx;
    return draft_config_save(c->dc, c->target_cfg, path, err);
}

/* ---- held-out tau at each checkpoint (the drafting issue's speculative decoding) ---- */

typedef struct {
    Qwen3Model *m;
    Backend *be;
    int32_t **ids;                     /* [n] prompt ids */
    int *len;
    int n, max_new, ctx;
    double temp;
    GenDefaults gd;
    char csv_path[1200];
} HeldOut;

#define HELDOUT_MAX_PROMPT 512

static ds_status heldout_load(HeldOut *h, const char *path, int max_samples, const Tokenizer *tok, char *err) {
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    int64_t line_no = 0;
    int longest = 1;
    for (char *line = text, *next; line && *line && h->n < max_samples && !rc; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        if (!line[strspn(line, " \t\r")]) continue;
        json_t *row = json_loads(line, 0, NULL);
        const char *p = train_data_row_prompt(row, path, line_no, err);
        int32_t *ids = NULL;
        int n = 0;
        if (!p) rc = DS_EFORMAT;
        else rc = gen_prompt_ids(tok, p, chat_has_template(tok), false, &ids, &n, err); /* eval's prompt format */
        json_decref(row);
        if (rc) break;
        if (n > HELDOUT_MAX_PROMPT) { memmove(ids, ids + n - HELDOUT_MAX_PROMPT, sizeof *ids * HELDOUT_MAX_PROMPT); n = HELDOUT_MAX_PROMPT; }
        h->ids = ds_realloc(h->ids, sizeof *h->ids * (size_t)(h->n + 1));
        h->len = ds_realloc(h->len, sizeof *h->len * (size_t)(h->n + 1));
        h->ids[h->n] = ids;
        h->len[h->n++] = n;
        if (n > longest) longest = n;
    }
    ds_free(text);
    if (!rc && h->n == 0) rc = ds_err(err, DS_EFORMAT, "%s: no prompts", path);
    h->ctx = longest + h->max_new + 1;
    return rc;
}

static void heldout_free(HeldOut *h) {
    for (int i = 0; i < h->n; i++) ds_free(h->ids[i]);
    ds_free(h->ids);
    ds_free(h->len);
}

/* tau (accepted drafts + bonus per round) of the checkpoint's BF16 drafter over the held-out
 * prompts; prompt i sampled with seed 980406 + i (DeepSpec eval's seed), the same at every
 * checkpoint, so the numbers compare */
static ds_status heldout_tau(HeldOut *h, const char *step_dir, double *tau, char *err) {
    Drafter d = {0};
    DrafterSource ds = {0};
    SpecDecoder sd = {0};
    SpecStats tot = {0};
    int32_t *out = ds_malloc(sizeof *out * (size_t)h->max_new);
    ds_status rc = drafter_load(&d, step_dir, h->m, h->be, err);
    if (!rc) rc = spec_drafter_source_init(&ds, &d, h->ctx + d.cfg.block_size + 1, 256, err);
    if (!rc) rc = spec_init(&sd, h->m, &ds.src, h->ctx, 256, err);
    SpecParams p = {.sampler = {(float)h->temp, 0, 1.0f}, .max_new = h->max_new};
    for (int i = 0; i < h->gd.n_stop && p.n_stop < SPEC_MAX_STOP; i++) p.stop_ids[p.n_stop++] = h->gd.stop_ids[i];
    for (int i = 0; i < h->n && !rc; i++) {
        SpecStats st;
        int n;
        p.seed = 980406u + (uint64_t)i;
        if (!(rc = spec_generate(&sd, h->ids[i], h->len[i], &p, out, &n, &st, err))) spec_stats_add(&tot, &st);
    }
    *tau = tot.rounds ? (double)tot.tau_sum / tot.rounds : 0;
    if (sd.target) spec_free(&sd);
    if (ds.d) spec_drafter_source_free(&ds);
    if (d.layers) drafter_free(&d);
    ds_free(out);
    return rc;
}

/* ---- progress, metrics.csv, loss.svg ---- */

typedef struct {
    const char *out_dir;
    FILE *csv;
    char csv_path[1200], svg_path[1200];
    double *x, *y;                     /* loss curve (all steps, old rows of a resumed run included) */
    int n, cap;
    char **old_rows;                   /* a resumed run's earlier rows: kept up to the resumed step */
    int64_t *old_steps;
    int n_old;
    bool started;
    double t0, tokens;
    int64_t first_step;
    Progress bar;
    HeldOut *held;                     /* NULL: no held-out evaluation */
    FILE *eval_csv;
} Logger;

static void curve_add(Logger *g, double x, double y) {
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 256;
        g->x = ds_realloc(g->x, sizeof *g->x * (size_t)g->cap);
        g->y = ds_realloc(g->y, sizeof *g->y * (size_t)g->cap);
    }
    g->x[g->n] = x;
    g->y[g->n++] = y;
}

static const char CSV_HEADER[] = "step,lr,loss,ce,l1,conf,grad_norm,tau_probabilistic\n";

static void logger_read_old(Logger *g) {
    char *text, err[DS_ERR_LEN];
    size_t len;
    if (ds_read_file(g->csv_path, &text, &len, err)) return;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        long long step;
        double lr, loss;
        if (sscanf(line, "%lld,%lf,%lf", &step, &lr, &loss) != 3) continue;
        g->old_rows = ds_realloc(g->old_rows, sizeof *g->old_rows * (size_t)(g->n_old + 1));
        g->old_steps = ds_realloc(g->old_steps, sizeof *g->old_steps * (size_t)(g->n_old + 1));
        g->old_rows[g->n_old] = ds_strdup(line);
        g->old_steps[g->n_old++] = step;
    }
    ds_free(text);
}

static void write_plot(Logger *g) {
    char err[DS_ERR_LEN];
    PlotSpec ps = {"Training loss", "optimizer step", "loss (mean over the global batch)", false, true, false};
    PlotSeries s = {"loss", g->x, g->y, g->n, false};
    if (g->n > 0 && svg_plot(g->svg_path, &ps, &s, 1, err)) fprintf(stderr, "\ndspark train: %s\n", err);
}

/* Rewrite a CSV keeping its header and the rows of steps before `step` (a resumed run redoes
 * the later ones), then open it for appending. */
static FILE *csv_restart(const char *path, const char *header, int64_t step) {
    char *text = NULL, err[DS_ERR_LEN];
    size_t len = 0;
    FILE *f = NULL;
    if (ds_read_file(path, &text, &len, err)) text = NULL;
    char *tmp = ds_malloc(len + strlen(header) + 1), *w = tmp;
    w += sprintf(w, "%s", header);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        long long s;
        if (sscanf(line, "%lld,", &s) == 1 && s < step) w += sprintf(w, "%s\n", line);
    }
    if (ds_write_file_atomic(path, tmp, (size_t)(w - tmp), err) == DS_OK) f = fopen(path, "ab");
    ds_free(tmp);
    ds_free(text);
    return f;
}

static void on_step(void *ctx, const TrainStepLog *l) {
    Logger *g = ctx;
    if (!g->started) { /* first step of this process: keep the earlier rows up to the resumed step */
        g->started = true;
        g->t0 = ds_now() - l->seconds;
        g->first_step = l->step;
        g->csv = fopen(g->csv_path, "w");
        if (g->csv) fputs(CSV_HEADER, g->csv);
        for (int i = 0; i < g->n_old; i++) {
            if (g->old_steps[i] >= l->step) continue;
            if (g->csv) fprintf(g->csv, "%s\n", g->old_rows[i]);
            double lr, loss;
            long long step;
            if (sscanf(g->old_rows[i], "%lld,%lf,%lf", &step, &lr, &loss) == 3) curve_add(g, (double)step, loss);
        }
        if (g->held) g->eval_csv = csv_restart(g->held->csv_path, "step,heldout_tau,samples\n", l->step);
    }
    double b = l->samples, loss = l->sum.loss / b;
    double tau = l->sum.tau_blocks > 0 ? l->sum.tau_sum / l->sum.tau_blocks : 0;
    if (g->csv) {
        fprintf(g->csv, "%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g\n", (long long)l->step, l->lr, loss, l->sum.ce / b, l->sum.l1 / b,
                l->sum.conf / b, l->grad_norm, tau);
        fflush(g->csv);
    }
    curve_add(g, (double)l->step, loss);
    g->tokens += l->sum.tokens;
    if (g->first_step == l->step) progress_start(&g->bar, "train", l->total_steps - l->step + 1);
    double el = ds_now() - g->t0;
    char extra[256];
    snprintf(extra, sizeof extra, "step %lld/%lld loss %.4f lr %.2e |g| %.3f tau %.2f %.0f tok/s%s", (long long)l->step,
             (long long)l->total_steps, loss, l->lr, l->grad_norm, tau, el > 0 ? g->tokens / el : 0.0, l->checkpointed ? " [ckpt]" : "");
    if (l->step == l->total_steps) progress_finish(&g->bar, l->step - g->first_step + 1, extra);
    else progress_update(&g->bar, l->step - g->first_step + 1, extra);
    if (l->checkpointed || l->step == l->total_steps) write_plot(g);
    if (l->checkpointed && g->held) {
        char dir[1400], err[DS_ERR_LEN];
        double tau;
        snprintf(dir, sizeof dir, "%s/step_%lld", g->out_dir, (long long)l->step);
        if (heldout_tau(g->held, dir, &tau, err)) fprintf(stderr, "\ndspark train: held-out evaluation of %s: %s\n", dir, err);
        else {
            if (g->eval_csv) { fprintf(g->eval_csv, "%lld,%.6f,%d\n", (long long)l->step, tau, g->held->n); fflush(g->eval_csv); }
            fprintf(stderr, "%sstep %lld: held-out tau %.3f (%d prompts)\n", g->bar.tty ? "\n" : "", (long long)l->step, tau, g->held->n);
        }
    }
}

static uint64_t hash_str(uint64_t h, const char *s) { return ckpt_hash_bytes(h, s, strlen(s)); }

int cmd_train(int argc, char **argv) {
    const char *model = NULL, *data_path = NULL, *algo = NULL, *draft = NULL, *config = NULL, *out = NULL, *device = "cpu";
    const char *eval_prompts = NULL;
    int eval_samples = 16, eval_new = 64;
    double eval_temp = 1.0;
    ArgList sets = {0};
    bool resume = false;
    int threads = 0, stop_after = 0;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory", 0, -1},
        {"--data", ARG_STR, &data_path, "DATA.jsonl", "training data (dspark gen-data)", 0, -1},
        {"--algo", ARG_STR, &algo, "NAME", "dspark (Markov + confidence heads, CE/L1/BCE losses) or dflash (CE only)", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "start from this drafter checkpoint (default: a new drafter, DeepSpec's init)", 0, -1},
        {"--config", ARG_STR, &config, "FILE.json", "settings as a JSON object (keys as --set)", 0, -1},
        {"--set", ARG_LIST, &sets, "KEY=VALUE", "change one setting (repeatable; an unknown key lists the known ones)", 0, -1},
        {"--out", ARG_STR, &out, "DIR", "checkpoints, metrics.csv, loss.svg", 0, -1},
        {"--resume", ARG_FLAG, &resume, NULL, "continue from the newest valid checkpoint in --out", 0, -1},
        {"--stop-after", ARG_INT, &stop_after, "N", "stop after optimizer step N with a checkpoint, as an interrupted run (--resume continues)", 1, 2147483647.0},
        {"--eval-prompts", ARG_STR, &eval_prompts, "FILE.jsonl", "held-out prompts: speculative-decoding tau of each checkpoint (eval.csv)", 0, -1},
        {"--eval-samples", ARG_INT, &eval_samples, "N", "held-out prompts used (default 16)", 1, 1 << 20},
        {"--eval-new", ARG_INT, &eval_new, "N", "tokens generated per held-out prompt (default 64)", 1, 1 << 20},
        {"--eval-temp", ARG_FLOAT, &eval_temp, "T", "held-out sampling temperature (default 1.0, DeepSpec eval's)", 0, 100},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default); the trainer itself runs on the host", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("train", "--model DIR --data DATA.jsonl --algo dspark|dflash --out DIR [options]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !data_path || !algo || !out) { fprintf(stderr, "dspark train: --model, --data, --algo and --out are required (see --help)\n"); return 2; }
    bool dspark = strcmp(algo, "dspark") == 0;
    if (!dspark && strcmp(algo, "dflash") != 0) { fprintf(stderr, "dspark train: --algo must be dspark or dflash, not '%s'\n", algo); return 2; }

    char err[DS_ERR_LEN], warn[DS_ERR_LEN];
    TrainSettings s = {.lr = 6e-4, .warmup_ratio = 0.04, .max_grad_norm = 1.0, .weight_decay = 0, .gamma = 4,
                       .ce_alpha = dspark ? 0.1 : 1.0, .l1_alpha = dspark ? 0.9 : 0, .conf_alpha = dspark ? 1.0 : 0,
                       .global_batch = 512, .epochs = 10, .num_anchors = 512, .max_length = 4096, .min_loss_tokens = 14,
                       .ckpt_every = 3000, .seed = 42, .block_size = 7, .num_draft_layers = -1, .markov_rank = -1};
    if (config && load_config_file(&s, config, err)) { fprintf(stderr, "dspark train: %s\n", err); return 2; }
    for (int i = 0; i < sets.n; i++) {
        char key[128];
        const char *eq = strchr(sets.items[i], '=');
        if (!eq || eq == sets.items[i] || (size_t)(eq - sets.items[i]) >= sizeof key) {
            fprintf(stderr, "dspark train: --set needs KEY=VALUE, got '%s'\n", sets.items[i]);
            return 2;
        }
        snprintf(key, sizeof key, "%.*s", (int)(eq - sets.items[i]), sets.items[i]);
        if (set_key(&s, key, eq + 1, "--set", err)) { fprintf(stderr, "dspark train: %s\n", err); return 2; }
    }
    if (s.global_batch < 1 || s.num_anchors < 1 || s.max_length < 2 || s.block_size < 1) {
        fprintf(stderr, "dspark train: global_batch_size, num_anchors, block_size must be >= 1 and max_length >= 2\n");
        return 2;
    }

    int status = 1;
    Backend *be = NULL;
    Qwen3Model m = {0};
    Tokenizer *tok = NULL;
    TrainData data = {0};
    DraftModel dm = {0};
    DraftConfig dc;
    Logger lg = {.out_dir = out};
    ConfigCtx cc;
    HeldOut held = {.max_new = eval_new, .temp = eval_temp};
    if (backend_create(device, threads, &be, err) || qwen3_load(&m, model, be, err)) goto fail;
    char tpath[1200];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model);
    if (ds_file_exists(tpath) && gen_load_tokenizer(model, &tok, err)) goto fail;
    if (draft) {
        char cpath[1200];
        snprintf(cpath, sizeof cpath, "%s/config.json", draft);
        if (draft_config_load(&dc, cpath, err) || draft_config_validate(&dc, &m.cfg, cpath, err)) goto fail;
    } else {
        if (draft_init_config(&dc, &m.cfg, dspark, tok ? tokenizer_vocab_size(tok) : 0, err)) goto fail;
        dc.block_size = s.block_size;
        if (s.num_draft_layers > 0) dc.base.n_layers = s.num_draft_layers;
        if (dspark && s.markov_rank == 0) { dc.markov_rank = 0; dc.markov_type = MARKOV_NONE; dc.confidence_head_with_markov = false; }
        if (dspark && s.markov_rank > 0) dc.markov_rank = s.markov_rank;
        if (dspark && s.markov_head_type[0] && dc.markov_rank > 0) {
            if (strcasecmp(s.markov_head_type, "vanilla") == 0) dc.markov_type = MARKOV_VANILLA;
            else if (strcasecmp(s.markov_head_type, "gated") == 0) dc.markov_type = MARKOV_GATED;
            else if (strcasecmp(s.markov_head_type, "rnn") == 0) dc.markov_type = MARKOV_RNN;
            else { ds_err(err, DS_EARG, "markov_head_type '%s' (vanilla, gated or rnn)", s.markov_head_type); goto fail; }
        }
    }
    dc.num_anchors = s.num_anchors;
    if (!dspark && (dc.markov_rank > 0 || dc.enable_confidence_head))
        fprintf(stderr, "dspark train: note: --algo dflash with a drafter that has heads: losses ce %.2g l1 %.2g conf %.2g\n", s.ce_alpha,
                s.l1_alpha, s.conf_alpha);
    if (train_data_load(&data, data_path, m.cfg.vocab_size, s.max_length, s.min_loss_tokens, err)) goto fail;
    dm.target = &m;
    dm.data = &data;
    dm.num_anchors = s.num_anchors;
    dm.loss = (TrainLossCfg){(float)s.gamma, (float)s.ce_alpha, (float)s.l1_alpha, (float)s.conf_alpha};
    if (dc.enable_confidence_head == false) dm.loss.conf_alpha = 0;
    if (train_draft_init(&dm.t, &dc, &m, data.max_len, s.num_anchors, err)) goto fail;
    if (draft) { if (train_draft_load(&dm.t, draft, err)) goto fail; }
    else draft_init_weights(&dm.t.params, (uint64_t)s.seed, 0.02);
    size_t fl = (size_t)data.max_len * dc.base.hidden_size;
    dm.features = ds_malloc(sizeof(float) * fl * (size_t)dc.n_target_layers);
    dm.last_hidden = ds_malloc(sizeof(float) * fl);
    if (!dm.features || !dm.last_hidden) { ds_err(err, DS_ENOMEM, "out of memory for target features"); goto fail; }
    if (ds_mkdirs(out, err)) goto fail;
    if (eval_prompts) {
        if (!tok) { ds_err(err, DS_EARG, "--eval-prompts needs the target's tokenizer.json"); goto fail; }
        held.m = &m;
        held.be = be;
        snprintf(held.csv_path, sizeof held.csv_path, "%s/eval.csv", out);
        if (gen_defaults_load(&held.gd, model, &m.cfg, tok, err) || heldout_load(&held, eval_prompts, eval_samples, tok, err)) goto fail;
        lg.held = &held;
    }
    cc.dc = &dc;
    snprintf(cc.target_cfg, sizeof cc.target_cfg, "%s/config.json", model);

    /* everything a resume must not change */
    char desc[1024];
    snprintf(desc, sizeof desc, "%s|d%d|L%d|B%d|m%d|r%d|t%d|c%d%d|A%d|ml%d|min%d|g%.9g|a%.9g,%.9g,%.9g|draft=%s", algo, dc.base.hidden_size,
             dc.base.n_layers, dc.block_size, dc.n_target_layers, dc.markov_rank, (int)dc.markov_type, dc.enable_confidence_head,
             dc.confidence_head_with_markov, s.num_anchors, s.max_length, s.min_loss_tokens, s.gamma, s.ce_alpha, s.l1_alpha, s.conf_alpha,
             draft ? draft : "");
    uint64_t h = hash_str(CKPT_HASH_INIT, desc);
    h = ckpt_hash_bytes(h, &data.hash, sizeof data.hash);
    h = ckpt_hash_bytes(h, dc.target_layer_ids, sizeof(int) * (size_t)dc.n_target_layers);

    AdamWCfg adam = adamw_default();
    adam.weight_decay = s.weight_decay;
    TrainLoopCfg lc = {.n_samples = data.n, .global_batch = s.global_batch, .epochs = s.epochs, .max_steps = s.max_steps,
                       .lr = s.lr, .warmup_ratio = s.warmup_ratio, .max_grad_norm = s.max_grad_norm, .adam = adam,
                       .seed = (uint64_t)s.seed, .ckpt_every = s.ckpt_every, .stop_after = stop_after, .keep_last = s.keep_last, .extra_hash = h,
                       .out_dir = out, .write_config = write_config, .config_ctx = &cc, .sample_fn = draft_sample,
                       .model_ctx = &dm, .on_step = on_step, .log_ctx = &lg};
    snprintf(lg.csv_path, sizeof lg.csv_path, "%s/metrics.csv", out);
    snprintf(lg.svg_path, sizeof lg.svg_path, "%s/loss.svg", out);
    if (resume) logger_read_old(&lg);
    fprintf(stderr, "dspark train: %s, %lld samples (%lld tokens, %lld loss tokens, %lld dropped < %d loss tokens), %lld steps of %d, "
            "drafter %d layers block %d rank %d layer ids",
            algo, (long long)data.n, (long long)data.tokens, (long long)data.loss_tokens, (long long)data.dropped, s.min_loss_tokens,
            (long long)train_total_steps(&lc), s.global_batch, dc.base.n_layers, dc.block_size, dc.markov_rank);
    for (int i = 0; i < dc.n_target_layers; i++) fprintf(stderr, "%s%d", i ? "," : " ", dc.target_layer_ids[i]);
    fputc('\n', stderr);
    if (lg.held) { /* the starting drafter's held-out tau (step 0) when this run starts fresh */
        char step_dir[4096], w2[DS_ERR_LEN], e2[DS_ERR_LEN], init_dir[1400], p[1500];
        if (!resume || ckpt_find(out, step_dir, sizeof step_dir, w2, e2) != DS_OK) {
            double tau;
            snprintf(init_dir, sizeof init_dir, "%s/init", out);
            snprintf(p, sizeof p, "%s/model.safetensors", init_dir);
            if (ds_mkdirs(init_dir, err) || params_save(&dm.t.params, p, DS_BF16, false, "{\"format\": \"pt\"}", err)) goto fail;
            snprintf(p, sizeof p, "%s/config.json", init_dir);
            if (write_config(&cc, p, err) || heldout_tau(&held, init_dir, &tau, err)) goto fail;
            FILE *f = csv_restart(held.csv_path, "step,heldout_tau,samples\n", 0);
            if (f) { fprintf(f, "0,%.6f,%d\n", tau, held.n); fclose(f); }
            fprintf(stderr, "step 0: held-out tau %.3f (%d prompts; the starting drafter, %s)\n", tau, held.n, init_dir);
        }
    }
    int64_t from = 0;
    if (train_loop_run(&lc, &dm.t.params, &dm.t.grads, resume, &from, warn, err)) {
        if (warn[0]) fprintf(stderr, "\ndspark train: warning: %s\n", warn);
        goto fail;
    }
    if (warn[0]) fprintf(stderr, "dspark train: warning: refused a checkpoint: %s\n", warn);
    if (resume && from) fprintf(stderr, "dspark train: resumed from step %lld\n", (long long)from);
    else if (resume) fprintf(stderr, "dspark train: no checkpoint to resume: started fresh\n");
    fprintf(stderr, "dspark train: done; checkpoints in %s (latest: %s/latest)\n", out, out);
    status = 0;
fail:
    if (status) fprintf(stderr, "\ndspark train: %s\n", err);
    if (lg.csv) fclose(lg.csv);
    if (lg.eval_csv) fclose(lg.eval_csv);
    heldout_free(&held);
    for (int i = 0; i < lg.n_old; i++) ds_free(lg.old_rows[i]);
    ds_free(lg.old_rows);
    ds_free(lg.old_steps);
    ds_free(lg.x);
    ds_free(lg.y);
    ds_free(dm.features);
    ds_free(dm.last_hidden);
    if (dm.t.params.data) train_draft_free(&dm.t);
    train_data_free(&data);
    if (tok) tokenizer_free(tok);
    if (m.layers) qwen3_free(&m);
    if (be) be->destroy(be);
    return status;
}
#endif
