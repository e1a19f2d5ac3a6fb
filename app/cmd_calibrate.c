/* cmd_calibrate.c - `dspark calibrate`: Sequential Temperature Scaling of a drafter's
 * confidence head (paper §3.2.1; DeepSpec has none, digest §4.4).
 * 1. Speculative decoding with full-length proposals (every drafted slot verified) on the
 *    prompts, recording per round and slot j the confidence logit z_j and the label
 *    y_j = 1 iff slots 0..j were all accepted. Prompts as `dspark eval` builds them: a row's
 *    first "turns" entry or its "prompt" string as one user turn through the target's chat
 *    template (generation prompt, thinking disabled, no system prompt), the raw text when the
 *    tokenizer has no template, or "prompt_ids" as they are; --max-samples N keeps N rows per
 *    file, shuffled with CPython's random.Random(seed) as eval does; sample idx seeded seed + idx.
 *    Use prompts disjoint from the ones you evaluate on.
 * 2. Left to right, one temperature T_j per position from 64 log-spaced values in [0.25, 4]
 *    minimising the 20-bin ECE of prod_{i<=j} sigmoid(z_i / T_i), earlier positions fixed
 *    (src/calib_fit.h).
 * 3. ECE and ROC-AUC per position before (all T = 1) and after as a table on stderr, a
 *    reliability diagram per position (SVG: PREFIX-pos<j>.svg), and the result, written
 *    atomically, in the format the engine reads (extra keys may be added, never these changed):
 *      {"format": "dspark-calibration", "version": 1, "block_size": B,
 *       "temperatures": [T_0..T_{B-1}], "rounds": N, "ece_before": [...], "ece_after": [...],
 *       "auc_before": [...], "auc_after": [...], "positions_with_data": [...]}
 *    (null where a metric is undefined: no data, or only one class). --json REPORT adds the
 *    configuration and the reliability bins.
 * --records FILE.jsonl fits rounds recorded by `dspark eval --record` instead of step 1 (record
 * once, e.g. on the GPU machine; fit anywhere). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "calib_fit.h"
#include "chat.h"
#include "commands.h"
#include "draft_config.h"
#include "gen_common.h"
#include "progress.h"
#include "spec.h"
#include "svgplot.h"

typedef GenPrompt Prompt;

/* the recorded rounds: [cap][B] */
typedef struct {
    int B, n, cap;
    float *z;
    uint8_t *valid, *y;
} Rounds;

static void rounds_reserve(Rounds *r, int more) {
    if (r->n + more <= r->cap) return;
    int cap = r->cap ? r->cap : 1024;
    while (cap < r->n + more) cap *= 2;
    r->z = ds_realloc(r->z, sizeof(float) * (size_t)cap * r->B);
    r->valid = ds_realloc(r->valid, (size_t)cap * r->B);
    r->y = ds_realloc(r->y, (size_t)cap * r->B);
    r->cap = cap;
}

/* SpecParams.on_round; capacity is reserved before each prompt (a round yields >= 1 token) */
static void record_round(void *user, const float *conf, int n_drafted, int n_verified, int n_accepted) {
    Rounds *r = user;
    if (n_verified <= 0 || r->n >= r->cap) return;
    size_t o = (size_t)r->n++ * r->B;
    for (int j = 0; j < r->B; j++) {
        r->z[o + j] = j < n_drafted ? conf[j] : 0;
        r->valid[o + j] = j < n_verified;
        r->y[o + j] = j < n_verified && j < n_accepted;
    }
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *num_array(const double *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, num_or_null(v[i]));
    return a;
}

static json_t *bins_json(const int *count, const double *mp, const double *my, int bins) {
    json_t *a = json_array();
    for (int b = 0; b < bins; b++) {
        if (!count[b]) continue;
        json_t *o = json_object();
        json_object_set_new(o, "bin", json_integer(b));
        json_object_set_new(o, "range", json_pack("[f, f]", (double)b / bins, (double)(b + 1) / bins));
        json_object_set_new(o, "count", json_integer(count[b]));
        json_object_set_new(o, "mean_pred", json_real(mp[b]));
        json_object_set_new(o, "mean_label", json_real(my[b]));
        json_array_append_new(a, o);
    }
    return a;
}

/* the non-empty bins' (mean prediction, accept rate) points, in bin order */
static int bin_points(const int *count, const double *mp, const double *my, int bins, double *x, double *y) {
    int n = 0;
    for (int b = 0; b < bins; b++)
        if (count[b]) x[n] = mp[b], y[n++] = my[b];
    return n;
}

static ds_status write_json(const char *path, json_t *o, char *err) {
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    if (!text) return ds_err(err, DS_ENOMEM, "%s: cannot serialise", path);
    size_t len = strlen(text);
    char *t2 = ds_malloc(len + 2);
    memcpy(t2, text, len);
    t2[len] = '\n';
    free(text);
    ds_status rc = ds_write_file_atomic(path, t2, len + 1, err);
    ds_free(t2);
    return rc;
}

typedef struct {
    const char *model, *draft, *device;
    const ArgList *data;
    int max_samples, max_new, seed, threads, ctx; /* max_new and ctx: as used, on return */
    double temp;
    int prompts, truncated;                       /* out */
} DecodeOpts;

/* Decode every prompt with full-length proposals, recording each round into rec (rec->B set
 * here from the drafter). */
static ds_status decode_rounds(DecodeOpts *o, Rounds *rec, char *err) {
    ds_status rc;
    Backend *be = NULL;
    Qwen3Model m = {0};
    Drafter d = {0};
    DrafterSource ds = {0};
    SpecDecoder sd = {0};
    Tokenizer *tok = NULL;
    GenDefaults gd;
    const int nf = o->data->n;
    Prompt **prompts = ds_calloc((size_t)nf, sizeof(Prompt *));
    int *n_rows = ds_calloc((size_t)nf, sizeof(int)), *n_use = ds_calloc((size_t)nf, sizeof(int));
    int32_t **order = ds_calloc((size_t)nf, sizeof(int32_t *)), *out = NULL;
    if ((rc = backend_create(o->device, o->threads, &be, err)) || (rc = qwen3_load(&m, o->model, be, err)) ||
        (rc = drafter_load(&d, o->draft, &m, be, err)))
        goto done;
    if (!d.cfg.enable_confidence_head) {
        rc = ds_err(err, DS_EUNSUPPORTED, "%s: the drafter has no confidence head (enable_confidence_head is false): nothing to calibrate", o->draft);
        goto done;
    }
    char tpath[1200];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", o->model);
    if (ds_file_exists(tpath) && (rc = gen_load_tokenizer(o->model, &tok, err))) goto done; /* prompt_ids rows need none */
    if ((rc = gen_defaults_load(&gd, o->model, &m.cfg, tok, err))) goto done;
    const int B = rec->B = d.cfg.block_size;
    if (!o->ctx) o->ctx = m.cfg.max_position_embeddings < 8192 ? m.cfg.max_position_embeddings : 8192;
    if (o->max_new > o->ctx - 1) o->max_new = o->ctx - 1;
    int total = 0;
    for (int f = 0; f < nf; f++) { /* read every file first: a bad one fails before any decoding */
        if ((rc = gen_read_prompts(o->data->items[f], m.cfg.vocab_size, tok, &prompts[f], &n_rows[f], err))) goto done;
        order[f] = ds_malloc(sizeof(int32_t) * (size_t)n_rows[f]);
        n_use[f] = gen_capped_order(order[f], n_rows[f], o->max_samples, (uint64_t)o->seed); /* eval's capping */
        total += n_use[f];
    }
    if ((rc = spec_drafter_source_init(&ds, &d, o->ctx + B + 1, 512, err)) || (rc = spec_init(&sd, &m, &ds.src, o->ctx, 512, err)))
        goto done;
    SpecParams p = {.sampler = {(float)o->temp, 0, 1.0f}, .max_new = o->max_new, .on_round = record_round, .user = rec};
    for (int i = 0; i < gd.n_stop && p.n_stop < SPEC_MAX_STOP; i++) p.stop_ids[p.n_stop++] = gd.stop_ids[i];
    out = ds_malloc(sizeof(int32_t) * (size_t)o->max_new);
    Progress bar;
    progress_start(&bar, "calibrate", total);
    char extra[64];
    for (int f = 0; f < nf; f++) {
        for (int idx = 0; idx < n_use[f]; idx++) {
            Prompt *q = &prompts[f][order[f][idx]];
            int keep = q->n, room = o->ctx - o->max_new > 1 ? o->ctx - o->max_new : 1;
            if (keep > room) { keep = room; o->truncated++; } /* left-truncate: keep the end */
            p.seed = (uint64_t)o->seed + (uint64_t)idx;       /* eval's seeding */
            rounds_reserve(rec, o->max_new);                  /* a round yields >= 1 token */
            int n;
            SpecStats st;
            if ((rc = spec_generate(&sd, q->ids + (q->n - keep), keep, &p, out, &n, &st, err))) goto done;
            snprintf(extra, sizeof extra, "%d rounds", rec->n);
            progress_update(&bar, ++o->prompts, extra);
        }
    }
    snprintf(extra, sizeof extra, "%d rounds", rec->n);
    progress_finish(&bar, o->prompts, extra);
done:
    for (int f = 0; f < nf; f++) {
        gen_free_prompts(prompts[f], n_rows[f]);
        ds_free(order[f]);
    }
    ds_free(prompts); ds_free(n_rows); ds_free(n_use); ds_free(order); ds_free(out);
    if (sd.target) spec_free(&sd);
    if (ds.d) spec_drafter_source_free(&ds);
    if (d.layers) drafter_free(&d);
    if (m.layers) qwen3_free(&m);
    if (tok) tokenizer_free(tok);
    if (be) be->destroy(be);
    return rc;
}

/* Rounds recorded by `dspark eval --record`: {"z": [...], "y": [...]} per line over the verified
 * slots (at most rec->B, y a 0/1 prefix indicator). */
static ds_status read_records(const char *path, Rounds *rec, char *err) {
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    int64_t line_no = 0;
    char *cursor = text, *s;
    while ((s = ds_next_nonblank_line(&cursor, &line_no))) {
        json_error_t je;
        json_t *row = json_loads(s, 0, &je), *z = json_object_get(row, "z"), *y = json_object_get(row, "y");
        size_t n = json_array_size(z);
        if (!json_is_array(z) || !json_is_array(y) || n == 0 || n > (size_t)rec->B || json_array_size(y) != n) {
            rc = ds_err(err, DS_EFORMAT, "%s:%lld: needs \"z\" and \"y\", lists of the same length in [1, %d] (the block size)", path,
                        (long long)line_no, rec->B);
            json_decref(row);
            break;
        }
        rounds_reserve(rec, 1);
        size_t o = (size_t)rec->n * rec->B;
        for (int j = 0; j < rec->B; j++) {
            json_t *zj = json_array_get(z, j), *yj = json_array_get(y, j);
            bool v = (size_t)j < n;
            if (v && (!json_is_number(zj) || !json_is_integer(yj) || json_integer_value(yj) < 0 || json_integer_value(yj) > 1 ||
                      (j && json_integer_value(yj) > rec->y[o + j - 1]))) {
                rc = ds_err(err, DS_EFORMAT, "%s:%lld: z[%d] must be a number and y[%d] 0 or 1, never 1 after a 0", path, (long long)line_no, j, j);
                break;
            }
            rec->z[o + j] = v ? (float)json_number_value(zj) : 0;
            rec->valid[o + j] = v;
            rec->y[o + j] = v ? (uint8_t)json_integer_value(yj) : 0;
        }
        json_decref(row);
        if (rc) break;
        rec->n++;
    }
    ds_free(text);
    return rc;
}

/* Fit, print the table, draw the diagrams, write calibration.json (and the report). cfg is
 * consumed. */
static ds_status fit_and_report(const Rounds *rec, const char *out_path, const char *prefix, const char *json_out, double temp,
                                json_t *cfg, char *err) {
    const int B = rec->B;
    double temps[SPEC_MAX_BLOCK], ones[SPEC_MAX_BLOCK], acc[SPEC_MAX_BLOCK];
    double ece_b[SPEC_MAX_BLOCK], ece_a[SPEC_MAX_BLOCK], auc_b[SPEC_MAX_BLOCK], auc_a[SPEC_MAX_BLOCK];
    int counts[SPEC_MAX_BLOCK];
    for (int j = 0; j < B; j++) ones[j] = 1;
    calib_sts_fit(rec->z, rec->valid, rec->y, rec->n, B, CALIB_GRID, CALIB_T_MIN, CALIB_T_MAX, CALIB_BINS, temps, counts);

    ds_status rc = DS_OK, plot_rc = DS_OK; /* a diagram that cannot be written does not cost the fit */
    char plot_err[DS_ERR_LEN];
    double *pred = ds_malloc(sizeof(double) * (size_t)rec->n);
    uint8_t *label = ds_malloc((size_t)rec->n);
    json_t *rel = json_array(), *cal = json_object(), *report = NULL;
    for (int j = 0; j < B; j++) {
        int count[2][CALIB_BINS];
        double mp[2][CALIB_BINS], my[2][CALIB_BINS];
        for (int k = 0; k < 2; k++) {
            int n = calib_predictions(rec->z, rec->valid, rec->y, rec->n, B, k ? temps : ones, j, pred, label);
            (k ? ece_a : ece_b)[j] = calib_ece(pred, label, n, CALIB_BINS);
            (k ? auc_a : auc_b)[j] = calib_roc_auc(pred, label, n);
            calib_reliability(pred, label, n, CALIB_BINS, count[k], mp[k], my[k]);
            if (k) continue;
            int pos = 0;
            for (int i = 0; i < n; i++) pos += label[i];
            acc[j] = n ? (double)pos / n : NAN;
        }
        json_t *o = json_object();
        json_object_set_new(o, "position", json_integer(j));
        json_object_set_new(o, "count", json_integer(counts[j]));
        json_object_set_new(o, "before", bins_json(count[0], mp[0], my[0], CALIB_BINS));
        json_object_set_new(o, "after", bins_json(count[1], mp[1], my[1], CALIB_BINS));
        json_array_append_new(rel, o);
        if (!counts[j]) continue; /* nothing to draw */
        double xb[CALIB_BINS], yb[CALIB_BINS], xa[CALIB_BINS], ya[CALIB_BINS], diag[2] = {0, 1};
        char la[32], title[160], path[1300];
        snprintf(la, sizeof la, "after (T = %.3f)", temps[j]);
        snprintf(title, sizeof title, "position %d: ECE %.4f -> %.4f (%d rounds, accepted %.3f)", j, ece_b[j], ece_a[j], counts[j],
                 acc[j]);
        PlotSeries s[3] = {{"perfect", diag, diag, 2, true},
                           {"before (T = 1)", xb, yb, bin_points(count[0], mp[0], my[0], CALIB_BINS, xb, yb), false},
                           {la, xa, ya, bin_points(count[1], mp[1], my[1], CALIB_BINS, xa, ya), false}};
        PlotSpec spec = {title, "predicted survival (mean per bin)", "observed survival", false, true, true};
        snprintf(path, sizeof path, "%s-pos%d.svg", prefix, j);
        if (!plot_rc) plot_rc = svg_plot(path, &spec, s, 3, plot_err);
    }
    fprintf(stderr, "%-8s %8s %8s %7s %10s %10s %10s %10s\n", "position", "rounds", "accept", "T", "ECE before", "ECE after",
            "AUC before", "AUC after");
    int few = 0;
    for (int j = 0; j < B; j++) {
        char cell[4][16];
        const double v[4] = {ece_b[j], ece_a[j], auc_b[j], auc_a[j]};
        for (int k = 0; k < 4; k++)
            if (isfinite(v[k])) snprintf(cell[k], sizeof cell[k], "%.4f", v[k]);
            else snprintf(cell[k], sizeof cell[k], "-");
        fprintf(stderr, "%-8d %8d %8.4f %7.3f %10s %10s %10s %10s\n", j, counts[j], isfinite(acc[j]) ? acc[j] : 0, temps[j],
                cell[0], cell[1], cell[2], cell[3]);
        few += counts[j] < 200;
    }
    if (few) fprintf(stderr, "note: %d position(s) have fewer than 200 rounds; their temperatures are noisy (more prompts help)\n", few);

    json_object_set_new(cal, "format", json_string("dspark-calibration"));
    json_object_set_new(cal, "version", json_integer(1));
    json_object_set_new(cal, "block_size", json_integer(B));
    json_object_set_new(cal, "temperatures", num_array(temps, B));
    json_object_set_new(cal, "rounds", json_integer(rec->n));
    json_object_set_new(cal, "ece_before", num_array(ece_b, B));
    json_object_set_new(cal, "ece_after", num_array(ece_a, B));
    json_object_set_new(cal, "auc_before", num_array(auc_b, B));
    json_object_set_new(cal, "auc_after", num_array(auc_a, B));
    json_t *pw = json_array();
    for (int j = 0; j < B; j++) json_array_append_new(pw, json_integer(counts[j]));
    json_object_set_new(cal, "positions_with_data", pw);
    /* extra keys */
    json_object_set_new(cal, "accept_rate", num_array(acc, B)); /* observed survival per position */
    json_object_set_new(cal, "sampling_temperature", temp >= 0 ? json_real(temp) : json_null()); /* null: --records */
    json_object_set_new(cal, "method", json_pack("{s:s, s:i, s:f, s:f, s:i}", "name", "sequential temperature scaling", "grid",
                                                 CALIB_GRID, "t_min", CALIB_T_MIN, "t_max", CALIB_T_MAX, "ece_bins", CALIB_BINS));
    if ((rc = write_json(out_path, cal, err))) goto done;
    if (!plot_rc) fprintf(stderr, "wrote %s (%d rounds), reliability diagrams %s-pos*.svg\n", out_path, rec->n, prefix);
    if (json_out) {
        report = json_object();
        json_object_set_new(report, "config", cfg);
        cfg = NULL;
        json_object_set_new(report, "calibration", json_incref(cal));
        json_object_set_new(report, "reliability", rel);
        rel = NULL;
        rc = write_json(json_out, report, err);
    }
    if (!rc && plot_rc) rc = ds_err(err, plot_rc, "%s (%s was written)", plot_err, out_path);
done:
    ds_free(pred);
    ds_free(label);
    json_decref(rel);
    json_decref(cal);
    json_decref(report);
    json_decref(cfg);
    return rc;
}

int cmd_calibrate(int argc, char **argv) {
    const char *out_path = NULL, *plot = NULL, *json_out = NULL;
    ArgList data = {0}, records = {0};
    DecodeOpts o = {.device = "cpu", .data = &data, .max_new = 2048, .seed = 980406, .temp = 1.0};
    ArgSpec specs[] = {
        {"--model", ARG_STR, &o.model, "DIR", "target model directory", 0, -1},
        {"--draft", ARG_STR, &o.draft, "DIR", "DSpark drafter checkpoint with a confidence head", 0, -1},
        {"--data", ARG_LIST, &data, "FILE.jsonl", "calibration prompts (repeatable; keep them disjoint from evaluation)", 0, -1},
        {"--out", ARG_STR, &out_path, "FILE", "where to write the temperatures (usually DRAFT/calibration.json)", 0, -1},
        {"--max-samples", ARG_INT, &o.max_samples, "N", "use N rows per file, shuffled with --seed (default: all)", 1, 1 << 30},
        {"--max-new|-n", ARG_INT, &o.max_new, "N", "new tokens per prompt (default 2048, clamped to the context)", 1, 1 << 30},
        {"--temp", ARG_FLOAT, &o.temp, "T", "sampling temperature to calibrate for (default 1.0)", 0, 100},
        {"--seed", ARG_INT, &o.seed, "S", "seed (default 980406, DeepSpec's)", 0, 2147483647.0},
        {"--plot", ARG_STR, &plot, "PREFIX", "reliability diagrams PREFIX-pos<j>.svg (default: --out without .json, + -reliability)", 0, -1},
        {"--json", ARG_STR, &json_out, "REPORT", "write a report: configuration, metrics and reliability bins", 0, -1},
        {"--records", ARG_LIST, &records, "FILE.jsonl", "fit rounds recorded by `dspark eval --record` (full proposals) instead of decoding; needs only --draft", 0, -1},
        {"--ctx", ARG_INT, &o.ctx, "N", "context positions (default: the target's max_position_embeddings, at most 8192)", 16, 1 << 24},
        {"--threads", ARG_INT, &o.threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &o.device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("calibrate", "--model DIR --draft DIR --data FILE.jsonl... --out FILE [options]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (records.n && (data.n || o.model)) {
        fprintf(stderr, "dspark calibrate: --records replaces --model and --data (give one or the other)\n");
        return 2;
    }
    if (!o.draft || !out_path || (!records.n && (!o.model || data.n == 0))) {
        fprintf(stderr, "dspark calibrate: --model, --draft, --data and --out are required (or --draft, --records and --out; see --help)\n");
        return 2;
    }
    char err[DS_ERR_LEN], prefix[1200];
    Rounds rec = {0};
    json_t *cfg = json_object();
    ds_status st;
    if (records.n) {
        DraftConfig dc;
        char path[1200];
        snprintf(path, sizeof path, "%s/config.json", o.draft);
        st = draft_config_load(&dc, path, err);
        if (!st && !dc.enable_confidence_head)
            st = ds_err(err, DS_EUNSUPPORTED, "%s: the drafter has no confidence head (enable_confidence_head is false): nothing to calibrate", o.draft);
        rec.B = dc.block_size;
        for (int f = 0; !st && f < records.n; f++) st = read_records(records.items[f], &rec, err);
        int longest = 0;
        for (int r = 0; !st && r < rec.n; r++)
            while (longest < rec.B && rec.valid[(size_t)r * rec.B + longest]) longest++;
        if (!st && rec.n && longest < rec.B)
            st = ds_err(err, DS_EFORMAT, "%s: no round verifies all %d slots of %s's block (longest %d): recorded with another drafter or a confidence threshold?",
                        records.items[0], rec.B, o.draft, longest);
        json_t *files = json_array();
        for (int f = 0; f < records.n; f++) json_array_append_new(files, json_string(records.items[f]));
        json_object_set_new(cfg, "records", files);
        o.temp = -1; /* unknown: the recording run's */
    } else {
        st = decode_rounds(&o, &rec, err);
        json_t *files = json_array();
        for (int f = 0; f < data.n; f++) json_array_append_new(files, json_string(data.items[f]));
        json_object_set_new(cfg, "model", json_string(o.model));
        json_object_set_new(cfg, "data", files);
        json_object_set_new(cfg, "prompts", json_integer(o.prompts));
        json_object_set_new(cfg, "truncated_prompts", json_integer(o.truncated));
        json_object_set_new(cfg, "max_samples", o.max_samples ? json_integer(o.max_samples) : json_null());
        json_object_set_new(cfg, "max_new_tokens", json_integer(o.max_new));
        json_object_set_new(cfg, "temperature", json_real(o.temp));
        json_object_set_new(cfg, "seed", json_integer(o.seed));
        json_object_set_new(cfg, "context", json_integer(o.ctx));
    }
    json_object_set_new(cfg, "draft", json_string(o.draft));
    if (!st && rec.n == 0)
        st = ds_err(err, DS_EFORMAT, "no verification rounds were recorded (every prompt ended at once): give more prompts or a larger -n");
    if (plot) snprintf(prefix, sizeof prefix, "%s", plot);
    else {
        size_t l = strlen(out_path);
        int cut = l > 5 && strcmp(out_path + l - 5, ".json") == 0 ? (int)l - 5 : (int)l;
        snprintf(prefix, sizeof prefix, "%.*s-reliability", cut, out_path);
    }
    if (!st) st = fit_and_report(&rec, out_path, prefix, json_out, o.temp, cfg, err);
    else json_decref(cfg);
    if (st) fprintf(stderr, "dspark calibrate: %s\n", err);
    ds_free(rec.z); ds_free(rec.valid); ds_free(rec.y);
    return st ? 1 : 0;
}
