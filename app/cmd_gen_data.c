/* cmd_gen_data.c - `dspark gen-data`: the target answers each prompt; the result is DATA.jsonl
 * for `dspark train` (format in src/train_data.h). DeepSpec's generate_train_data.py (digest
 * §6.2) through our batched engine instead of SGLang servers:
 *   - prompts: a row's first "turns" entry, a "prompt" string, or the first user message of
 *     "conversations" (DeepSpec's training format), as ONE user turn through the target's chat
 *     template with the generation prompt and thinking disabled (eval's prompt format; digest §8.2:
 *     DeepSpec's trainer prepends "You are a helpful assistant." which neither its regeneration
 *     nor its eval uses, so here it is a choice: --system-prompt TEXT);
 *   - sampling: the target's generation_config.json (Qwen3: T 0.7, top-p 0.8, top-k 20, what
 *     DeepSpec sends) unless --temp/--top-p/--top-k; each prompt k is seeded with seed + k, so
 *     the answer does not depend on batching or on where a resumed run restarted;
 *   - the answer is followed by "<|im_end|>\n", as DeepSpec's template render of the finished
 *     conversation has it, and the loss mask covers everything after the assistant header;
 *   - output in prompt order, one fsynced line per prompt; --resume cuts a partial last line and
 *     continues after the last complete id (DeepSpec's --resume counts lines but writes in
 *     completion order: it can duplicate or lose prompts, digest §8.16). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "chat.h"
#include "commands.h"
#include "engine.h"
#include "gen_common.h"
#include "progress.h"
#include "train_data.h"

typedef struct {
    int64_t id;
    int32_t *ids;          /* prompt, then the answer */
    int n_prompt, n, cap;
    int mask_from;         /* first loss-mask position (after the assistant header) */
    EngineRequest req;
    bool submitted, finished, skipped;
} Job;

static bool on_token(void *user, int32_t token, bool is_stop) {
    Job *j = user;
    if (!is_stop && j->n < j->cap) j->ids[j->n++] = token;
    return true;
}
static void on_finish(void *user, FinishReason r) { Job *j = user; (void)r; j->finished = true; }

/* Prompt ids and where the assistant part starts. */
static ds_status build_prompt(const Tokenizer *tok, const char *system, const char *text, Job *j, int max_new, char *err) {
    bool chat = chat_has_template(tok);
    int32_t *ids = NULL, *hdr = NULL;
    int n = 0, nh = 0;
    ds_status rc;
    if (!chat) {
        rc = tokenizer_encode(tok, text, strlen(text), &ids, &n, err);
        if (rc) return rc;
        nh = n;
    } else {
        ChatMessage msgs[2] = {{"system", system}, {"user", text}};
        int k = system ? 2 : 1;
        char *r1 = NULL, *r2 = NULL;
        /* thinking disabled: "...<|im_start|>assistant\n<think>\n\n</think>\n\n"; the header alone
         * (thinking on adds nothing after it) gives the mask start */
        rc = chat_render(tok, system ? msgs : msgs + 1, k, true, false, &r1, err);
        if (!rc) rc = chat_render(tok, system ? msgs : msgs + 1, k, true, true, &r2, err);
        if (!rc) rc = tokenizer_encode(tok, r1, strlen(r1), &ids, &n, err);
        if (!rc) rc = tokenizer_encode(tok, r2, strlen(r2), &hdr, &nh, err);
        ds_free(r1);
        ds_free(r2);
        if (!rc && (nh > n || memcmp(ids, hdr, sizeof *ids * (size_t)nh) != 0))
            rc = ds_err(err, DS_EFORMAT, "chat template: the assistant header does not tokenize as a prefix of the prompt");
        ds_free(hdr);
        if (rc) { ds_free(ids); return rc; }
    }
    j->cap = n + max_new + 4;
    j->ids = ds_realloc(ids, sizeof *ids * (size_t)j->cap);
    j->n_prompt = j->n = n;
    j->mask_from = nh;
    return DS_OK;
}

int cmd_gen_data(int argc, char **argv) {
    const char *model = NULL, *prompts = NULL, *out = NULL, *system = NULL, *device = "cpu";
    int max_new = 4096, batch = 8, seed = 0, threads = 0, ctx = 0, limit = 0, top_k = -1;
    double temp = -1, top_p = -1;
    bool resume = false;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory (with tokenizer.json)", 0, -1},
        {"--prompts", ARG_STR, &prompts, "FILE.jsonl", "prompts: {\"turns\": [...]}, {\"prompt\": ...} or {\"conversations\": [...]} per line", 0, -1},
        {"--out", ARG_STR, &out, "DATA.jsonl", "output: {\"id\", \"input_ids\", \"loss_mask\"} per prompt, in prompt order", 0, -1},
        {"--max-new|-n", ARG_INT, &max_new, "N", "answer tokens at most (default 4096, DeepSpec's max_tokens)", 1, 1 << 24},
        {"--temp", ARG_FLOAT, &temp, "T", "temperature (default: generation_config.json)", 0, 100},
        {"--top-p", ARG_FLOAT, &top_p, "P", "top-p (default: generation_config.json)", 0, 1},
        {"--top-k", ARG_INT, &top_k, "K", "top-k, 0 = off (default: generation_config.json)", 0, 1 << 24},
        {"--system-prompt", ARG_STR, &system, "TEXT", "system message before each prompt (default none, as eval; DeepSpec's trainer uses \"You are a helpful assistant.\")", 0, -1},
        {"--batch", ARG_INT, &batch, "N", "prompts answered together (default 8)", 1, 4096},
        {"--seed", ARG_INT, &seed, "S", "prompt k samples with seed S + k (default 0)", 0, 2147483647.0},
        {"--limit", ARG_INT, &limit, "N", "only the first N prompts", 1, 1 << 30},
        {"--resume", ARG_FLAG, &resume, NULL, "continue an interrupted run after its last complete line", 0, -1},
        {"--ctx", ARG_INT, &ctx, "N", "positions per sequence (default: max_position_embeddings, at most 8192)", 16, 1 << 24},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("gen-data", "--model DIR --prompts FILE.jsonl --out DATA.jsonl [options]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !prompts || !out) { fprintf(stderr, "dspark gen-data: --model, --prompts and --out are required (see --help)\n"); return 2; }
    if (!resume && ds_file_exists(out)) { fprintf(stderr, "dspark gen-data: %s exists (use --resume to continue it)\n", out); return 2; }

    char err[DS_ERR_LEN];
    int status = 1;
    Backend *be = NULL;
    Qwen3Model m = {0};
    Tokenizer *tok = NULL;
    Engine e = {0};
    bool engine_up = false;
    FILE *f = NULL;
    char *text = NULL;
    char **lines = NULL;                 /* [n_jobs] each prompt's JSON line (inside text) */
    int64_t *line_nos = NULL;
    Job *ring = NULL;                    /* [2 x batch] prompts in flight: job id k in ring[k % n_ring] */
    int n_ring = 2 * batch;
    int64_t n_jobs = 0, next_id = 0, skipped = 0, answer_tokens = 0;
    int32_t *nl = NULL;
    int n_nl = 0;
    GenDefaults gd;
    if (train_data_resume(out, &next_id, err)) goto fail;
    if (backend_create(device, threads, &be, err) || qwen3_load(&m, model, be, err) || gen_load_tokenizer(model, &tok, err) ||
        gen_defaults_load(&gd, model, &m.cfg, tok, err))
        goto fail;
    SamplerParams sp = gd.sampler;
    if (temp >= 0) sp.temperature = (float)temp;
    if (top_p >= 0) sp.top_p = (float)top_p;
    if (top_k >= 0) sp.top_k = top_k;
    if (sampler_params_check(&sp, err)) goto fail;
    int32_t im_end = tokenizer_token_id(tok, "<|im_end|>");
    bool chat = chat_has_template(tok);
    if (chat && (im_end < 0 || tokenizer_encode(tok, "\n", 1, &nl, &n_nl, err))) {
        if (im_end < 0) ds_err(err, DS_EFORMAT, "%s: the chat template needs <|im_end|> in the tokenizer", model);
        goto fail;
    }
    if (!ctx) ctx = m.cfg.max_position_embeddings < 8192 ? m.cfg.max_position_embeddings : 8192;
    /* prompts */
    size_t len;
    if (ds_read_file(prompts, &text, &len, err)) goto fail;
    int64_t cap = 0, line_no = 0;
    char *cursor = text, *s;
    while ((s = ds_next_nonblank_line(&cursor, &line_no))) {
        if (limit && n_jobs >= limit) break;
        json_error_t je; /* every row is checked now, so a bad line fails before any work */
        json_t *row = json_loads(s, 0, &je);
        if (!json_is_object(row)) { ds_err(err, DS_EFORMAT, "%s:%lld: not a JSON object (%s)", prompts, (long long)line_no, je.text); json_decref(row); goto fail; }
        const char *p = train_data_row_prompt(row, prompts, line_no, err);
        json_decref(row);
        if (!p) goto fail;
        if (n_jobs == cap) {
            cap = cap ? cap * 2 : 64;
            lines = ds_realloc(lines, sizeof *lines * (size_t)cap);
            line_nos = ds_realloc(line_nos, sizeof *line_nos * (size_t)cap);
        }
        lines[n_jobs] = s;
        line_nos[n_jobs++] = line_no;
    }
    ring = ds_calloc((size_t)n_ring, sizeof *ring);
    if (next_id > n_jobs) { ds_err(err, DS_EARG, "%s has %lld lines but %s only %lld prompts", out, (long long)next_id, prompts, (long long)n_jobs); goto fail; }
    if (!(f = fopen(out, "ab"))) { ds_err(err, DS_EIO, "%s: cannot open for appending", out); goto fail; }
    EngineConfig ec = {.n_slots = batch, .max_ctx = ctx, .max_batch_tokens = batch > 512 ? batch : 512};
    if (engine_init(&e, &m, &ec, err)) goto fail;
    engine_up = true;
    fprintf(stderr, "dspark gen-data: %lld prompts, %lld done, T %.2f top-p %.2f top-k %d, %s\n", (long long)n_jobs, (long long)next_id,
            sp.temperature, sp.top_p, sp.top_k, chat ? (system ? "chat template + system prompt" : "chat template, no system prompt") : "raw text (no chat template)");
    double t0 = ds_now();
    Progress bar;
    char extra[128] = "";
    progress_start(&bar, "gen-data", n_jobs - next_id);
    int64_t write_pos = next_id, submit_pos = next_id;
    while (write_pos < n_jobs) {
        /* keep at most 2 x batch prompts in the engine (running + waiting) */
        while (submit_pos < n_jobs && submit_pos < write_pos + n_ring) {
            Job *j = &ring[submit_pos % n_ring];
            memset(j, 0, sizeof *j);
            j->id = submit_pos++;
            json_t *row = json_loads(lines[j->id], 0, NULL);
            ds_status b = build_prompt(tok, system, train_data_row_prompt(row, prompts, line_nos[j->id], err), j, max_new, err);
            json_decref(row);
            if (b) { ds_err(err, b, "%s:%lld: %s", prompts, (long long)line_nos[j->id], err); goto fail; }
            int room = ctx - j->n_prompt;
            if (room < 1) { j->skipped = j->finished = true; continue; } /* prompt fills the context: written with no loss tokens */
            EngineRequest *r = &j->req;
            r->prompt = j->ids;
            r->n_prompt = j->n_prompt;
            r->max_new = max_new < room ? max_new : room;
            r->sampler = sp;
            r->seed = (uint64_t)seed + (uint64_t)j->id;
            for (int i = 0; i < gd.n_stop && r->n_stop < ENGINE_MAX_STOP; i++) r->stop_ids[r->n_stop++] = gd.stop_ids[i];
            r->on_token = on_token;
            r->on_finish = on_finish;
            r->user = j;
            if (engine_submit(&e, r, err)) goto fail;
            j->submitted = true;
        }
        if (!ring[write_pos % n_ring].finished && engine_step(&e, err) < 0) goto fail;
        while (write_pos < n_jobs && ring[write_pos % n_ring].finished) {
            Job *j = &ring[write_pos % n_ring];
            if (chat && !j->skipped) { /* the template's end of the assistant turn */
                j->ids[j->n++] = im_end;
                for (int i = 0; i < n_nl && j->n < j->cap; i++) j->ids[j->n++] = nl[i];
            }
            uint8_t *mask = ds_calloc((size_t)j->n, 1);
            for (int i = j->skipped ? j->n : j->mask_from; i < j->n; i++) mask[i] = 1;
            ds_status w = train_data_write_line(f, out, j->id, j->ids, mask, j->n, err);
            ds_free(mask);
            if (w) goto fail;
            skipped += j->skipped;
            answer_tokens += j->n - j->n_prompt;
            ds_free(j->ids);
            j->ids = NULL;
            write_pos++;
            double dt = ds_now() - t0;
            snprintf(extra, sizeof extra, "%lld answer tokens, %.1f tokens/s", (long long)answer_tokens, dt > 0 ? answer_tokens / dt : 0.0);
            progress_update(&bar, write_pos - next_id, extra);
        }
    }
    progress_finish(&bar, write_pos - next_id, extra);
    fprintf(stderr, "dspark gen-data: wrote %s (%lld prompts%s)\n", out, (long long)n_jobs, skipped ? ", some longer than the context: no loss tokens" : "");
    status = 0;
fail:
    if (status) fprintf(stderr, "dspark gen-data: %s\n", err);
    if (f) fclose(f);
    if (engine_up) { engine_cancel_all(&e); engine_free(&e); }
    for (int i = 0; ring && i < n_ring; i++) ds_free(ring[i].ids);
    ds_free(ring);
    ds_free(lines);
    ds_free(line_nos);
    ds_free(text);
    ds_free(nl);
    if (m.layers) qwen3_free(&m);
    if (tok) tokenizer_free(tok);
    if (be) be->destroy(be);
    return status;
}
