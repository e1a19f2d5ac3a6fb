/* gen_common.c - see gen_common.h. */
#include "gen_common.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "pyrandom.h"

void gen_add_stop(GenDefaults *g, int32_t id) {
    if (id < 0 || gen_is_stop(g, id) || g->n_stop >= GEN_MAX_STOP) return;
    g->stop_ids[g->n_stop++] = id;
}

bool gen_is_stop(const GenDefaults *g, int32_t id) {
    for (int i = 0; i < g->n_stop; i++) if (g->stop_ids[i] == id) return true;
    return false;
}

ds_status gen_defaults_load(GenDefaults *g, const char *model_dir, const Qwen3Config *cfg, const Tokenizer *tok, char *err) {
    memset(g, 0, sizeof *g);
    g->sampler = (SamplerParams){1.0f, 0, 1.0f};
    char path[1200];
    snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
    bool eos_from_file = false;
    if (ds_file_exists(path)) {
        json_error_t je;
        json_t *root = json_load_file(path, 0, &je);
        if (!root) return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d: %s", path, je.line, je.text);
        if (!json_is_object(root)) { json_decref(root); return ds_err(err, DS_EFORMAT, "%s: not a JSON object", path); }
        g->from_file = true;
        json_t *v;
        if (json_is_number(v = json_object_get(root, "temperature"))) g->sampler.temperature = (float)json_number_value(v);
        if (json_is_integer(v = json_object_get(root, "top_k"))) g->sampler.top_k = (int)json_integer_value(v);
        if (json_is_number(v = json_object_get(root, "top_p"))) g->sampler.top_p = (float)json_number_value(v);
        if (json_is_false(json_object_get(root, "do_sample"))) g->sampler.temperature = 0;
        json_t *eos = json_object_get(root, "eos_token_id");
        if (json_is_integer(eos)) { gen_add_stop(g, (int32_t)json_integer_value(eos)); eos_from_file = true; }
        else if (json_is_array(eos)) {
            size_t i;
            json_t *e;
            json_array_foreach(eos, i, e) if (json_is_integer(e)) gen_add_stop(g, (int32_t)json_integer_value(e));
            eos_from_file = true;
        }
        json_decref(root);
        ds_status rc = sampler_params_check(&g->sampler, err);
        if (rc) return ds_err(err, rc, "%s: %s", path, err);
    }
    if (!eos_from_file)
        for (int i = 0; i < cfg->n_eos; i++) gen_add_stop(g, cfg->eos_token_ids[i]);
    if (tok) gen_add_stop(g, tokenizer_token_id(tok, "<|im_end|>"));
    return DS_OK;
}

ds_status gen_load_tokenizer(const char *model_dir, Tokenizer **out, char *err) {
    *out = NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (!ds_file_exists(path)) return ds_err(err, DS_EIO, "%s: no tokenizer.json (text needs one; use --prompt-ids and --print-ids without)", model_dir);
    return tokenizer_load(out, model_dir, err);
}

ds_status gen_prompt_ids(const Tokenizer *tok, const char *text, bool chat, bool think, int32_t **ids, int *n, char *err) {
    if (!chat) return tokenizer_encode(tok, text, strlen(text), ids, n, err);
    if (!chat_has_template(tok)) return ds_err(err, DS_EUNSUPPORTED, "this tokenizer has no (supported) chat template; use --prompt");
    ChatMessage msg = {"user", text};
    char *rendered = NULL;
    ds_status rc = chat_render(tok, &msg, 1, true, think, &rendered, err);
    if (rc) return rc;
    rc = tokenizer_encode(tok, rendered, strlen(rendered), ids, n, err);
    ds_free(rendered);
    return rc;
}

/* DeepSpec's prompt files (eval, calibrate) */
ds_status gen_read_prompts(const char *path, int vocab, const Tokenizer *tok, GenPrompt **out, int *n_out, char *err) {
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    int cap = 64, n = 0;
    int64_t line_no = 0;
    GenPrompt *p = ds_malloc(sizeof(GenPrompt) * cap);
    char *cursor = text, *s;
    while ((s = ds_next_nonblank_line(&cursor, &line_no))) {
        json_error_t je;
        json_t *row = json_loads(s, 0, &je);
        if (!json_is_object(row)) { rc = ds_err(err, DS_EFORMAT, "%s:%lld: not a JSON object (%s)", path, (long long)line_no, je.text); json_decref(row); goto fail; }
        if (n == cap) p = ds_realloc(p, sizeof(GenPrompt) * (cap *= 2));
        json_t *ids = json_object_get(row, "prompt_ids"), *turn = json_array_get(json_object_get(row, "turns"), 0);
        if (!json_is_string(turn)) turn = json_object_get(row, "prompt");
        if (!json_is_array(ids) && json_is_string(turn)) {
            if (!tok) rc = ds_err(err, DS_EUNSUPPORTED, "%s:%lld: text prompts need the target's tokenizer.json (or give \"prompt_ids\")", path, (long long)line_no);
            else rc = gen_prompt_ids(tok, json_string_value(turn), chat_has_template(tok), false, &p[n].ids, &p[n].n, err);
            p[n].turns = NULL;
            p[n].n_turns = 0;
            json_t *turns = json_object_get(row, "turns");
            for (size_t t = 0; !rc && json_is_string(json_array_get(turns, t)); t++) { /* every turn, for --multi-turn */
                p[n].turns = ds_realloc(p[n].turns, sizeof(char *) * (t + 1));
                p[n].turns[p[n].n_turns++] = ds_strdup(json_string_value(json_array_get(turns, t)));
            }
            json_decref(row);
            if (rc) goto fail;
            n++;
            continue;
        }
        if (!json_is_array(ids) || json_array_size(ids) == 0) {
            rc = ds_err(err, DS_EFORMAT, "%s:%lld: needs \"turns\" (a list of strings), \"prompt\" (a string) or \"prompt_ids\"", path, (long long)line_no);
            json_decref(row);
            goto fail;
        }
        p[n].turns = NULL;
        p[n].n_turns = 0;
        p[n].n = (int)json_array_size(ids);
        p[n].ids = ds_malloc(sizeof(int32_t) * p[n].n);
        for (int i = 0; i < p[n].n; i++) {
            json_t *v = json_array_get(ids, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
                rc = ds_err(err, DS_EFORMAT, "%s:%lld: prompt_ids[%d] is not a token id in [0, %d)", path, (long long)line_no, i, vocab);
                ds_free(p[n].ids);
                json_decref(row);
                goto fail;
            }
            p[n].ids[i] = (int32_t)json_integer_value(v);
        }
        n++;
        json_decref(row);
    }
    ds_free(text);
    if (n == 0) {
        ds_free(p);
        return ds_err(err, DS_EFORMAT, "%s: no prompts", path);
    }
    *out = p;
    *n_out = n;
    return DS_OK;
fail:
    gen_free_prompts(p, n);
    ds_free(text);
    return rc;
}

int gen_capped_order(int32_t *order, int n_rows, int cap, uint64_t seed) {
    for (int i = 0; i < n_rows; i++) order[i] = i;
    if (cap <= 0 || n_rows <= cap) return n_rows;
    PyRandom r;
    pyrandom_seed(&r, seed);
    pyrandom_shuffle(&r, order, n_rows);
    return cap;
}

void gen_free_prompts(GenPrompt *p, int n) {
    for (int i = 0; p && i < n; i++) {
        ds_free(p[i].ids);
        for (int t = 0; t < p[i].n_turns; t++) ds_free(p[i].turns[t]);
        ds_free(p[i].turns);
    }
    ds_free(p);
}
