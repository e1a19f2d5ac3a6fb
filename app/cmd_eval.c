/* cmd_eval.c - `dspark eval`: DeepSpec's evaluation protocol (digest §3.3-3.5) so numbers
 * compare: per dataset (FILE.jsonl, name = basename), DeepSpec's cap (gsm8k 500, math500 500,
 * aime25 30, humaneval 164, mbpp 256, livecodebench 500, mt-bench 80, alpaca 500,
 * arena-hard-v2 500; --max-samples overrides), rows over the cap shuffled with CPython's
 * random.Random(seed).shuffle and the first `cap` kept; sample idx seeded with seed + idx;
 * temperature 1.0 and 2048 new tokens by default; first turn only.
 * Prompts: the first of a row's "turns" as one user message rendered with the target's chat
 * template (generation prompt, thinking disabled, no system prompt: DeepSpec's), or the raw
 * turn when the tokenizer has no chat template (the JSON config says which); a row's
 * "prompt_ids" (token ids) are used as they are. Prompts longer than the
 * context minus the generation budget are left-truncated and counted; -n is clamped to the
 * context.
 * Reports per dataset: tau (accepted drafts + bonus per round), proposal length, DeepSpec's
 * accept_rate@k (prefix survival), the paper's conditional acceptance per position, tokens/s,
 * plain decoding's tokens/s (same samples, same seeds) and the speedup; --json writes
 *   {"config": {...}, "datasets": [{"name", "samples", "rounds", "tau", "proposal_len",
 *    "accept_rate_at": [...], "cond_accept": [...], "tokens_per_s", "plain_tokens_per_s", "speedup"}]} */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "chat.h"
#include "gen_common.h"
#include "gen_spec.h"

static int deepspec_cap(const char *name) {
    static const struct { const char *name; int cap; } caps[] = {
        {"gsm8k", 500}, {"math500", 500}, {"aime25", 30}, {"humaneval", 164}, {"mbpp", 256},
        {"livecodebench", 500}, {"mt-bench", 80}, {"alpaca", 500}, {"arena-hard-v2", 500}};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) if (strcmp(caps[i].name, name) == 0) return caps[i].cap;
    return 0; /* unknown set: all rows */
}

typedef GenPrompt Prompt;

static void progress(const char *name, int done, int total) {
    int w = 30, f = total ? done * w / total : w;
    fprintf(stderr, "\r%-16s [", name);
    for (int i = 0; i < w; i++) fputc(i < f ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d", done, total);
    if (done == total) fputc('\n', stderr);
}

static json_t *rate_array(const int *num, const int *den, int B) {
    json_t *a = json_array();
    for (int j = 0; j < B; j++) json_array_append_new(a, den[j] ? json_real((double)num[j] / den[j]) : json_null());
    return a;
}

/* --record: one line per verification round, {"z": [confidence logits], "y": [0/1]} over the
 * verified slots, y_j = 1 iff slots 0..j were all accepted (the input of `dspark calibrate`) */
static void record_round(void *user, const float *conf, int n_drafted, int n_verified, int n_accepted) {
    FILE *f = user;
    (void)n_drafted;
    if (!f || n_verified <= 0) return;
    fputs("{\"z\": [", f);
    for (int j = 0; j < n_verified; j++) fprintf(f, j ? ", %.9g" : "%.9g", conf[j]);
    fputs("], \"y\": [", f);
    for (int j = 0; j < n_verified; j++) fprintf(f, j ? ", %d" : "%d", j < n_accepted);
    fputs("]}\n", f);
}

/* 95% confidence interval of tau = sum(a) / sum(b) (a: accepted + bonus, b: rounds, per
 * sample): rounds within a sample are correlated, so samples are the independent units and the
 * ratio estimator's standard error comes from the delta method,
 * se^2 = sum((a_i - tau b_i)^2) / (n (n - 1) mean(b)^2). */
static void tau_ci95(const long *a, const long *b, int n, double *lo, double *hi) {
    double sa = 0, sb = 0, ss = 0;
    for (int i = 0; i < n; i++) sa += (double)a[i], sb += (double)b[i];
    double tau = sb > 0 ? sa / sb : 0, mb = n ? sb / n : 0;
    for (int i = 0; i < n; i++) ss += ((double)a[i] - tau * (double)b[i]) * ((double)a[i] - tau * (double)b[i]);
    double se = n > 1 && mb > 0 ? sqrt(ss / ((double)n * (n - 1))) / mb : 0;
    *lo = tau - 1.96 * se;
    *hi = tau + 1.96 * se;
}

static json_t *long_array(const long *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

/* One generation of the protocol: the prompt left-truncated to the context minus the budget
 * (the end kept), speculative decoding into tot (its rounds recorded when rec is set), then
 * plain decoding of the same prompt with the same seed into tot_plain (plain may be NULL). */
static ds_status eval_one(SpecDecoder *sd, SpecDecoder *plain, const int32_t *ids, int n_ids, int ctx, SpecParams *p, FILE *rec,
                          int32_t *out, int *n_out, SpecStats *tot, SpecStats *tot_plain, int *truncated, char *err) {
    int keep = n_ids, room = ctx - p->max_new;
    if (room < 1) room = 1;
    if (keep > room) { keep = room; ++*truncated; }
    SpecStats st;
    p->on_round = rec ? record_round : NULL;
    p->user = rec;
    ds_status rc = spec_generate(sd, ids + (n_ids - keep), keep, p, out, n_out, &st, err);
    p->on_round = NULL;
    p->user = NULL;
    if (rc) return rc;
    spec_stats_add(tot, &st);
    if (!plain) return DS_OK;
    int n_plain; /* out holds 2 x max_new: the speculative answer stays (multi-turn history) */
    if ((rc = spec_generate(plain, ids + (n_ids - keep), keep, p, out + p->max_new, &n_plain, &st, err))) return rc;
    spec_stats_add(tot_plain, &st);
    return DS_OK;
}

/* --multi-turn: every user turn in order, each answered after the conversation so far (the
 * model's own earlier answers as assistant turns, rendered by the chat template, thinking
 * off). Turn 0 is exactly the first-turn protocol; turn t draws from stream seed + idx, t. */
static ds_status eval_conversation(SpecDecoder *sd, SpecDecoder *plain, const Tokenizer *tok, const GenDefaults *gd, const GenPrompt *q,
                                   int ctx, SpecParams *p, FILE *rec, int32_t *out, SpecStats *tot, SpecStats *tot_plain, int *truncated,
                                   char *err) {
    ChatMessage *msgs = ds_calloc((size_t)q->n_turns * 2, sizeof *msgs);
    char **answers = ds_calloc((size_t)q->n_turns, sizeof *answers);
    uint64_t seed0 = p->seed;
    ds_status rc = DS_OK;
    for (int t = 0; t < q->n_turns && !rc; t++) {
        msgs[2 * t] = (ChatMessage){"user", q->turns[t]};
        char *text = NULL;
        int32_t *ids = NULL;
        int n_ids = 0, n = 0;
        p->seed = seed0 + ((uint64_t)t << 32);
        if (!(rc = chat_render(tok, msgs, 2 * t + 1, true, false, &text, err)) &&
            !(rc = tokenizer_encode(tok, text, strlen(text), &ids, &n_ids, err)) &&
            !(rc = eval_one(sd, plain, ids, n_ids, ctx, p, rec, out, &n, tot, tot_plain, truncated, err))) {
            if (n > 0 && gen_is_stop(gd, out[n - 1])) n--; /* the answer's text, not its stop token */
            rc = tokenizer_decode(tok, out, n, &answers[t], err);
            msgs[2 * t + 1] = (ChatMessage){"assistant", answers[t]};
        }
        ds_free(text);
        ds_free(ids);
    }
    p->seed = seed0;
    for (int t = 0; t < q->n_turns; t++) ds_free(answers[t]);
    ds_free(answers);
    ds_free(msgs);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *draft = NULL, *json_out = NULL, *device = "cpu", *record = NULL;
    ArgList data = {0};
    int max_samples = 0, max_new = 2048, seed = 980406, threads = 0, ctx = 0;
    double temp = 1.0, conf_thr = 0.0;
    bool no_plain = false, multi_turn = false;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "DSpark/DFlash drafter checkpoint", 0, -1},
        {"--data", ARG_LIST, &data, "FILE.jsonl", "dataset (repeatable); name = file basename", 0, -1},
        {"--max-samples", ARG_INT, &max_samples, "N", "cap every dataset at N rows (default: DeepSpec's caps)", 1, 1 << 30},
        {"--temp", ARG_FLOAT, &temp, "T", "temperature (default 1.0)", 0, 100},
        {"--max-new|-n", ARG_INT, &max_new, "N", "new tokens per sample (default 2048, clamped to the context)", 1, 1 << 30},
        {"--seed", ARG_INT, &seed, "S", "seed (default 980406, DeepSpec's)", 0, 2147483647.0},
        {"--json", ARG_STR, &json_out, "OUT", "write the report as JSON", 0, -1},
        {"--record", ARG_STR, &record, "FILE", "write each round's confidences and acceptance (JSONL, for dspark calibrate)", 0, -1},
        {"--confidence-threshold", ARG_FLOAT, &conf_thr, "C", "DeepSpec's static verification-length rule (0 = full block)", 0, 1},
        {"--no-plain", ARG_FLAG, &no_plain, NULL, "skip the plain-decoding run (no speedup)", 0, -1},
        {"--multi-turn", ARG_FLAG, &multi_turn, NULL, "answer every turn of a row after the conversation so far (default: DeepSpec's first turn only)", 0, -1},
        {"--ctx", ARG_INT, &ctx, "N", "context positions (default: the target's max_position_embeddings, at most 8192)", 16, 1 << 24},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("eval", "--model DIR --draft DIR --data FILE.jsonl... [options]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !draft || data.n == 0) { fprintf(stderr, "dspark eval: --model, --draft and --data are required (see --help)\n"); return 2; }

    char err[DS_ERR_LEN];
    int status = 1;
    Backend *be = NULL;
    Qwen3Model m = {0};
    Drafter d = {0};
    DrafterSource ds = {0};
    SpecDecoder sd = {0}, plain = {0};
    json_t *report = json_object(), *dsets = json_array(), *config = json_object(), *trunc = json_object();
    Tokenizer *tok = NULL;
    GenDefaults gd;
    char record_tmp[1200];
    FILE *rec = NULL;
    if (backend_create_for(device, threads, BACKEND_ONE_STREAM, &be, err) || qwen3_load(&m, model, be, err) || drafter_load(&d, draft, &m, be, err)) goto fail;
    char tpath[1200];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model);
    if (ds_file_exists(tpath) && gen_load_tokenizer(model, &tok, err)) goto fail; /* optional: prompt_ids rows need none */
    if (gen_defaults_load(&gd, model, &m.cfg, tok, err)) goto fail;
    if (multi_turn && !(tok && chat_has_template(tok))) {
        ds_err(err, DS_EARG, "--multi-turn needs a model whose tokenizer has a chat template (%s has none)", model);
        goto fail;
    }
    const int B = d.cfg.block_size;
    if (!ctx) ctx = m.cfg.max_position_embeddings < 8192 ? m.cfg.max_position_embeddings : 8192;
    if (max_new > ctx - 1) max_new = ctx - 1;
    int chunk = 512;
    if (spec_drafter_source_init(&ds, &d, ctx + B + 1, chunk, err) || spec_init(&sd, &m, &ds.src, ctx, chunk, err) ||
        (!no_plain && spec_init(&plain, &m, NULL, ctx, chunk, err)))
        goto fail;
    SpecParams p = {.sampler = {(float)temp, 0, 1.0f}, .max_new = max_new};
    for (int i = 0; i < gd.n_stop && p.n_stop < SPEC_MAX_STOP; i++) p.stop_ids[p.n_stop++] = gd.stop_ids[i];
    float thr = (float)conf_thr;
    if (thr > 0) p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr, true};
    int32_t *out = ds_malloc(sizeof(int32_t) * 2 * (size_t)max_new);
    if (record) {
        snprintf(record_tmp, sizeof record_tmp, "%s.tmp", record);
        if (!(rec = fopen(record_tmp, "w"))) { ds_err(err, DS_EIO, "%s: cannot create", record_tmp); ds_free(out); goto fail; }
    }
    for (int f = 0; f < data.n; f++) {
        const char *path = data.items[f], *base = strrchr(path, '/');
        char name[256];
        snprintf(name, sizeof name, "%s", base ? base + 1 : path);
        char *dot = strstr(name, ".jsonl");
        if (dot) *dot = 0;
        Prompt *pr = NULL;
        int n_rows = 0;
        if (gen_read_prompts(path, m.cfg.vocab_size, tok, &pr, &n_rows, err)) { ds_free(out); goto fail; }
        int32_t *order = ds_malloc(sizeof(int32_t) * (size_t)(n_rows ? n_rows : 1));
        int cap = gen_capped_order(order, n_rows, max_samples ? max_samples : deepspec_cap(name), (uint64_t)seed);
        SpecStats tot = {0}, tot_plain = {0};
        int truncated = 0;
        long *s_tau = ds_calloc((size_t)(cap ? cap : 1), sizeof(long)), *s_rounds = ds_calloc((size_t)(cap ? cap : 1), sizeof(long));
        for (int idx = 0; idx < cap; idx++) {
            long tau0 = tot.tau_sum, rounds0 = tot.rounds;
            Prompt *q = &pr[order[idx]];
            p.seed = (uint64_t)seed + (uint64_t)idx; /* DeepSpec: seed_all(seed + idx) */
            if (multi_turn && q->n_turns > 1) {
                if (eval_conversation(&sd, no_plain ? NULL : &plain, tok, &gd, q, ctx, &p, rec, out, &tot, &tot_plain, &truncated, err))
                    goto ds_fail;
            } else {
                int n;
                if (eval_one(&sd, no_plain ? NULL : &plain, q->ids, q->n, ctx, &p, rec, out, &n, &tot, &tot_plain, &truncated, err))
                    goto ds_fail;
            }
            s_tau[idx] = tot.tau_sum - tau0;
            s_rounds[idx] = tot.rounds - rounds0;
            progress(name, idx + 1, cap);
        }
        {
            double tps = tot.total_s > 0 ? tot.generated / tot.total_s : 0;
            double ptps = tot_plain.total_s > 0 ? tot_plain.generated / tot_plain.total_s : 0;
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(name));
            json_object_set_new(o, "samples", json_integer(cap));
            json_object_set_new(o, "rounds", json_integer(tot.rounds));
            json_object_set_new(o, "tau", tot.rounds ? json_real((double)tot.tau_sum / tot.rounds) : json_null());
            double lo, hi;
            tau_ci95(s_tau, s_rounds, cap, &lo, &hi);
            json_t *ci = json_array();
            json_array_append_new(ci, json_real(lo));
            json_array_append_new(ci, json_real(hi));
            json_object_set_new(o, "tau_ci95", ci);
            /* per sample, for paired comparisons of two drafters on the same prompts */
            json_object_set_new(o, "sample_tau_sum", long_array(s_tau, cap));
            json_object_set_new(o, "sample_rounds", long_array(s_rounds, cap));
            json_object_set_new(o, "proposal_len", tot.rounds ? json_real((double)tot.proposed / tot.rounds) : json_null());
            json_object_set_new(o, "accept_rate_at", rate_array(tot.accepted_at, tot.proposed_at, B));
            json_object_set_new(o, "cond_accept", rate_array(tot.accepted_at, tot.reached_at, B));
            json_object_set_new(o, "tokens_per_s", json_real(tps));
            json_object_set_new(o, "plain_tokens_per_s", no_plain ? json_null() : json_real(ptps));
            json_object_set_new(o, "speedup", no_plain || ptps <= 0 ? json_null() : json_real(tps / ptps));
            json_array_append_new(dsets, o);
            json_object_set_new(trunc, name, json_integer(truncated));
            fprintf(stderr, "%-16s samples %d rounds %d tau %.3f (95%% CI %.3f-%.3f) proposal %.2f tokens/s %.1f", name, cap, tot.rounds,
                    tot.rounds ? (double)tot.tau_sum / tot.rounds : 0, lo, hi, tot.rounds ? (double)tot.proposed / tot.rounds : 0, tps);
            if (!no_plain) fprintf(stderr, " plain %.1f speedup %.2fx", ptps, ptps > 0 ? tps / ptps : 0);
            fputc('\n', stderr);
        }
        gen_free_prompts(pr, n_rows);
        ds_free(order);
        ds_free(s_tau);
        ds_free(s_rounds);
        continue;
    ds_fail:
        gen_free_prompts(pr, n_rows);
        ds_free(order);
        ds_free(s_tau);
        ds_free(s_rounds);
        ds_free(out);
        goto fail;
    }
    ds_free(out);
    json_object_set_new(config, "model", json_string(model));
    json_object_set_new(config, "draft", json_string(draft));
    json_object_set_new(config, "temperature", json_real(temp));
    json_object_set_new(config, "max_new_tokens", json_integer(max_new));
    json_object_set_new(config, "seed", json_integer(seed));
    json_object_set_new(config, "max_samples", max_samples ? json_integer(max_samples) : json_null());
    json_object_set_new(config, "confidence_threshold", json_real(conf_thr));
    json_object_set_new(config, "context", json_integer(ctx));
    json_object_set_new(config, "block_size", json_integer(B));
    json_object_set_new(config, "prompts", json_string(!tok ? "prompt_ids from the JSONL rows"
        : chat_has_template(tok) ? "first turn through the chat template (generation prompt, thinking disabled, no system prompt)"
        : "raw first turn: the tokenizer has no chat template"));
    json_object_set_new(config, "multi_turn", json_boolean(multi_turn));
    json_object_set_new(config, "truncated_prompts", trunc);
    trunc = NULL;
    json_object_set_new(report, "config", config);
    json_object_set_new(report, "datasets", dsets);
    config = dsets = NULL;
    if (json_out) {
        char *text = json_dumps(report, JSON_INDENT(2));
        size_t len = strlen(text);
        ds_status w = ds_write_file_atomic(json_out, text, len, err);
        free(text);
        if (w) goto fail;
    }
    if (rec) {
        bool ok = fflush(rec) == 0 && fsync(fileno(rec)) == 0;
        ok &= fclose(rec) == 0;
        rec = NULL;
        if (!ok || rename(record_tmp, record) != 0) { ds_err(err, DS_EIO, "%s: cannot write", record); goto fail; }
    }
    status = 0;
fail:
    if (rec) { fclose(rec); unlink(record_tmp); }
    if (status) fprintf(stderr, "dspark eval: %s\n", err);
    json_decref(report); json_decref(dsets); json_decref(config); json_decref(trunc);
    if (plain.target) spec_free(&plain);
    if (sd.target) spec_free(&sd);
    if (ds.d) spec_drafter_source_free(&ds);
    if (d.layers) drafter_free(&d);
    if (m.layers) qwen3_free(&m);
    if (tok) tokenizer_free(tok);
    if (be) be->destroy(be);
    return status;
}
