/* draft_config.c - see draft_config.h. */
#include "draft_config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

const char *markov_type_name(MarkovType t) {
    switch (t) {
    case MARKOV_VANILLA: return "vanilla";
    case MARKOV_GATED: return "gated";
    case MARKOV_RNN: return "rnn";
    default: return "none";
    }
}

static ds_status req_int(json_t *root, const char *key, int *out, const char *path, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return ds_err(err, DS_EFORMAT, "%s: missing key '%s'", path, key);
    if (!json_is_integer(v) || json_integer_value(v) < -(1 << 30) || json_integer_value(v) > (1 << 30))
        return ds_err(err, DS_EFORMAT, "%s: key '%s' must be an integer (|value| <= 2^30)", path, key);
    *out = (int)json_integer_value(v);
    return DS_OK;
}

/* absent or null: *out unchanged */
static ds_status opt_int(json_t *root, const char *key, int *out, const char *path, char *err) {
    json_t *v = json_object_get(root, key);
    return !v || json_is_null(v) ? DS_OK : req_int(root, key, out, path, err);
}

static ds_status req_bool(json_t *root, const char *key, bool *out, const char *path, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return ds_err(err, DS_EFORMAT, "%s: missing key '%s'", path, key);
    if (!json_is_boolean(v)) return ds_err(err, DS_EFORMAT, "%s: key '%s' must be true or false", path, key);
    *out = json_is_true(v);
    return DS_OK;
}

ds_status draft_config_load(DraftConfig *c, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (!ds_file_exists(path)) return ds_err(err, DS_EIO, "%s: cannot open", path);
        return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    }
    ds_status rc = draft_config_parse(c, root, path, err);
    json_decref(root);
    return rc;
}

ds_status draft_config_parse(DraftConfig *c, json_t *root, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    ds_status rc = qwen3_config_parse(&c->base, root, path, err);
    if (rc) return rc;
    if (strcmp(c->base.architecture, "Qwen3DSparkModel") != 0) {
        rc = ds_err(err, DS_EUNSUPPORTED, "%s: architecture '%s' is not a DSpark/DFlash drafter (expected Qwen3DSparkModel)", path,
                    c->base.architecture[0] ? c->base.architecture : "(none)");
        goto done;
    }
    if ((rc = req_int(root, "block_size", &c->block_size, path, err)) ||
        (rc = req_int(root, "mask_token_id", &c->mask_token_id, path, err)) ||
        (rc = req_int(root, "markov_rank", &c->markov_rank, path, err)) ||
        (rc = req_bool(root, "enable_confidence_head", &c->enable_confidence_head, path, err)))
        goto done;
    c->num_anchors = 512;
    if ((rc = opt_int(root, "num_anchors", &c->num_anchors, path, err)) ||
        (rc = opt_int(root, "num_target_layers", &c->num_target_layers, path, err)))
        goto done;
    if (c->block_size < 1 || c->block_size > 64) { rc = ds_err(err, DS_EFORMAT, "%s: block_size %d out of range [1, 64]", path, c->block_size); goto done; }
    if (c->markov_rank < 0) { rc = ds_err(err, DS_EFORMAT, "%s: markov_rank must be >= 0", path); goto done; }
    json_t *ids = json_object_get(root, "target_layer_ids");
    if (!json_is_array(ids) || json_array_size(ids) == 0 || json_array_size(ids) > DRAFT_MAX_TARGET_LAYERS) {
        rc = ds_err(err, DS_EFORMAT, "%s: target_layer_ids must be a non-empty list of at most %d integers", path, DRAFT_MAX_TARGET_LAYERS);
        goto done;
    }
    for (size_t i = 0; i < json_array_size(ids); i++) {
        json_t *e = json_array_get(ids, i);
        if (!json_is_integer(e) || json_integer_value(e) > (1 << 30)) {
            rc = ds_err(err, DS_EFORMAT, "%s: target_layer_ids[%zu] is not an integer in range", path, i);
            goto done;
        }
        if (json_integer_value(e) < -1) {
            rc = ds_err(err, DS_EFORMAT, "%s: target_layer_ids[%zu] = %lld (minimum -1)", path, i, (long long)json_integer_value(e));
            goto done;
        }
        c->target_layer_ids[i] = (int)json_integer_value(e);
        if (i > 0 && c->target_layer_ids[i] <= c->target_layer_ids[i - 1]) {
            rc = ds_err(err, DS_EFORMAT, "%s: target_layer_ids must be strictly increasing", path);
            goto done;
        }
        if (c->target_layer_ids[i] < -1) { rc = ds_err(err, DS_EFORMAT, "%s: target_layer_ids[%zu] = %d (minimum -1)", path, i, c->target_layer_ids[i]); goto done; }
    }
    c->n_target_layers = (int)json_array_size(ids);
    c->markov_type = MARKOV_NONE;
    if (c->markov_rank > 0) {
        json_t *t = json_object_get(root, "markov_head_type");
        if (!json_is_string(t)) { rc = ds_err(err, DS_EFORMAT, "%s: markov_rank > 0 needs markov_head_type", path); goto done; }
        const char *s = json_string_value(t);
        if (strcasecmp(s, "vanilla") == 0) c->markov_type = MARKOV_VANILLA;
        else if (strcasecmp(s, "gated") == 0) c->markov_type = MARKOV_GATED;
        else if (strcasecmp(s, "rnn") == 0) c->markov_type = MARKOV_RNN;
        else { rc = ds_err(err, DS_EFORMAT, "%s: unknown markov_head_type '%s' (vanilla, gated or rnn)", path, s); goto done; }
    }
    if (c->enable_confidence_head) {
        json_t *w = json_object_get(root, "confidence_head_with_markov");
        if (!json_is_boolean(w)) { rc = ds_err(err, DS_EFORMAT, "%s: enable_confidence_head needs confidence_head_with_markov", path); goto done; }
        c->confidence_head_with_markov = json_is_true(w);
        if (c->confidence_head_with_markov && c->markov_rank == 0) {
            rc = ds_err(err, DS_EFORMAT, "%s: confidence_head_with_markov needs markov_rank > 0", path);
            goto done;
        }
    }
done:
    return rc;
}

ds_status draft_config_validate(const DraftConfig *c, const Qwen3Config *t, const char *path, char *err) {
    const Qwen3Config *d = &c->base;
    if (d->hidden_size != t->hidden_size)
        return ds_err(err, DS_ECKPT, "%s: drafter hidden_size %d differs from the target's %d", path, d->hidden_size, t->hidden_size);
    if (d->vocab_size != t->vocab_size)
        return ds_err(err, DS_ECKPT, "%s: drafter vocab_size %d differs from the target's %d", path, d->vocab_size, t->vocab_size);
    for (int i = 0; i < c->n_target_layers; i++) {
        int id = c->target_layer_ids[i];
        if (id >= t->n_layers)
            return ds_err(err, DS_ECKPT, "%s: target_layer_ids has %d but the target has %d layers", path, id, t->n_layers);
        if (id == t->n_layers - 1)
            return ds_err(err, DS_ECKPT, "%s: target_layer_ids may not include the target's last layer (%d): DeepSpec forbids it", path, id);
    }
    if (c->mask_token_id < 0 || c->mask_token_id >= t->vocab_size)
        return ds_err(err, DS_ECKPT, "%s: mask_token_id %d outside the vocabulary (%d)", path, c->mask_token_id, t->vocab_size);
    if (c->num_target_layers && c->num_target_layers != t->n_layers)
        return ds_err(err, DS_ECKPT, "%s: num_target_layers %d differs from the target's %d layers", path, c->num_target_layers, t->n_layers);
    return DS_OK;
}

ds_status draft_config_save(const DraftConfig *c, const char *target_config_path, const char *path, char *err) {
    json_t *root = NULL;
    if (target_config_path) {
        json_error_t je;
        root = json_load_file(target_config_path, 0, &je);
        if (!root) return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d: %s", target_config_path, je.line, je.text);
    } else {
        root = json_object();
        const Qwen3Config *b = &c->base;
        json_object_set_new(root, "model_type", json_string("qwen3"));
        json_object_set_new(root, "vocab_size", json_integer(b->vocab_size));
        json_object_set_new(root, "hidden_size", json_integer(b->hidden_size));
        json_object_set_new(root, "intermediate_size", json_integer(b->intermediate_size));
        json_object_set_new(root, "num_attention_heads", json_integer(b->n_heads));
        json_object_set_new(root, "num_key_value_heads", json_integer(b->n_kv_heads));
        json_object_set_new(root, "head_dim", json_integer(b->head_dim));
        json_object_set_new(root, "rms_norm_eps", json_real(b->rms_norm_eps));
        json_object_set_new(root, "max_position_embeddings", json_integer(b->max_position_embeddings));
        json_object_set_new(root, "rope_theta", json_real(b->rope_theta));
        json_object_set_new(root, "hidden_act", json_string("silu"));
        json_object_set_new(root, "attention_bias", json_false());
    }
    json_t *arch = json_array();
    json_array_append_new(arch, json_string("Qwen3DSparkModel"));
    json_object_set_new(root, "architectures", arch);
    int tl = json_integer_value(json_object_get(root, "num_hidden_layers"));
    if (c->num_target_layers) tl = c->num_target_layers;
    json_object_set_new(root, "num_target_layers", json_integer(tl));
    json_object_set_new(root, "num_hidden_layers", json_integer(c->base.n_layers));
    json_t *lt = json_array();
    for (int i = 0; i < c->base.n_layers; i++) json_array_append_new(lt, json_string("full_attention"));
    json_object_set_new(root, "layer_types", lt);
    json_object_set_new(root, "block_size", json_integer(c->block_size));
    json_object_set_new(root, "tie_word_embeddings", json_false());
    json_object_set_new(root, "mask_token_id", json_integer(c->mask_token_id));
    json_t *ids = json_array();
    for (int i = 0; i < c->n_target_layers; i++) json_array_append_new(ids, json_integer(c->target_layer_ids[i]));
    json_object_set_new(root, "target_layer_ids", ids);
    json_object_set_new(root, "num_anchors", json_integer(c->num_anchors));
    json_object_set_new(root, "enable_confidence_head", json_boolean(c->enable_confidence_head));
    json_object_del(root, "confidence_head_with_markov");
    if (c->enable_confidence_head) json_object_set_new(root, "confidence_head_with_markov", json_boolean(c->confidence_head_with_markov));
    json_object_set_new(root, "markov_rank", json_integer(c->markov_rank));
    json_object_del(root, "markov_head_type");
    if (c->markov_rank > 0) json_object_set_new(root, "markov_head_type", json_string(markov_type_name(c->markov_type)));
    json_object_set_new(root, "dtype", json_string("bfloat16"));
    json_object_del(root, "torch_dtype");
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text) return ds_err(err, DS_ENOMEM, "out of memory");
    size_t n = strlen(text);
    text[n] = '\n';
    ds_status rc = ds_write_file_atomic(path, text, n + 1, err);
    free(text);
    return rc;
}
