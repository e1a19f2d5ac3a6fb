/* qwen3.c - Qwen3 target: config, loading, forward (see qwen3.h).
 *
 * Decoder layer (transformers Qwen3DecoderLayer):
 *   h = rmsnorm(x); q,k,v = h Wq, h Wk, h Wv; q,k = per-head rmsnorm; rope(q,k);
 *   x += attn(q, K, V) Wo;  x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x)))
 * Final: logits = rmsnorm(x) lm_head^T, only for the rows asked for. */
#include "qwen3.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- config ---- */

static ds_status get_int(json_t *root, const char *key, int *out, bool required, const char *path, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return ds_err(err, DS_EFORMAT, "%s: missing key '%s'", path, key);
        return DS_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return ds_err(err, DS_EFORMAT, "%s: key '%s' must be a non-negative integer", path, key);
    *out = (int)json_integer_value(v);
    return DS_OK;
}

static ds_status get_num(json_t *root, const char *key, float *out, const char *path, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return ds_err(err, DS_EFORMAT, "%s: missing key '%s'", path, key);
    if (!json_is_number(v)) return ds_err(err, DS_EFORMAT, "%s: key '%s' must be a number", path, key);
    *out = (float)json_number_value(v);
    return DS_OK;
}

/* a token id: an integer in [0, 2^30] (bigger ones would not survive the int conversion) */
static bool is_token_id(json_t *v) {
    return json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= (1 << 30);
}

ds_status qwen3_config_parse(Qwen3Config *c, json_t *root, const char *path, char *err) {
    memset(c, 0, sizeof *c);
    ds_status rc;
    if (!json_is_object(root)) return ds_err(err, DS_EFORMAT, "%s: not a JSON object", path);
    json_t *arch = json_object_get(root, "architectures");
    if (json_is_array(arch) && json_is_string(json_array_get(arch, 0)))
        snprintf(c->architecture, sizeof c->architecture, "%s", json_string_value(json_array_get(arch, 0)));
    if ((rc = get_int(root, "vocab_size", &c->vocab_size, true, path, err)) ||
        (rc = get_int(root, "hidden_size", &c->hidden_size, true, path, err)) ||
        (rc = get_int(root, "intermediate_size", &c->intermediate_size, true, path, err)) ||
        (rc = get_int(root, "num_hidden_layers", &c->n_layers, true, path, err)) ||
        (rc = get_int(root, "num_attention_heads", &c->n_heads, true, path, err)) ||
        (rc = get_int(root, "num_key_value_heads", &c->n_kv_heads, true, path, err)))
        return rc;
    c->head_dim = c->n_heads ? c->hidden_size / c->n_heads : 0; /* transformers' default */
    if ((rc = get_int(root, "head_dim", &c->head_dim, false, path, err))) return rc;
    if ((rc = get_num(root, "rms_norm_eps", &c->rms_norm_eps, path, err))) return rc;
    c->max_position_embeddings = 40960;
    if ((rc = get_int(root, "max_position_embeddings", &c->max_position_embeddings, false, path, err))) return rc;
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie)) return ds_err(err, DS_EFORMAT, "%s: key 'tie_word_embeddings' must be a boolean", path);
    c->tie_word_embeddings = tie ? json_is_true(tie) : true; /* Qwen3Config's default */
    json_t *rp = json_object_get(root, "rope_parameters");
    if (json_object_get(root, "rope_theta")) {
        if ((rc = get_num(root, "rope_theta", &c->rope_theta, path, err))) return rc;
    } else if (json_is_object(rp) && json_object_get(rp, "rope_theta")) {
        if ((rc = get_num(rp, "rope_theta", &c->rope_theta, path, err))) return rc;
        json_t *rt = json_object_get(rp, "rope_type");
        if (json_is_string(rt) && strcmp(json_string_value(rt), "default") != 0)
            return ds_err(err, DS_EUNSUPPORTED, "%s: rope_type '%s' is not supported (only default)", path, json_string_value(rt));
    } else {
        c->rope_theta = 1000000.0f; /* Qwen3Config's default */
    }
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) return ds_err(err, DS_EUNSUPPORTED, "%s: rope_scaling is not supported", path);
    c->bos_token_id = -1;
    json_t *bos = json_object_get(root, "bos_token_id");
    if (is_token_id(bos)) c->bos_token_id = (int)json_integer_value(bos);
    json_t *eos = json_object_get(root, "eos_token_id");
    if (is_token_id(eos)) c->eos_token_ids[c->n_eos++] = (int)json_integer_value(eos);
    else if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e) if (is_token_id(e) && c->n_eos < QWEN3_MAX_EOS) c->eos_token_ids[c->n_eos++] = (int)json_integer_value(e);
    }
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->head_dim % 2 || c->head_dim > 512)
        return ds_err(err, DS_EFORMAT, "%s: sizes must be positive (and head_dim even, <= 512)", path);
    if (c->n_heads % c->n_kv_heads)
        return ds_err(err, DS_EFORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads,
                      c->n_kv_heads);
    /* the model code forms these products as int */
    if ((int64_t)c->n_heads * c->head_dim > (1 << 30) || (int64_t)c->hidden_size * c->n_heads > (1 << 30))
        return ds_err(err, DS_EFORMAT, "%s: num_attention_heads * head_dim is too large", path);
    /* a JSON number beyond float range (1e39) would become inf */
    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 0) || !isfinite(c->rms_norm_eps) || !isfinite(c->rope_theta))
        return ds_err(err, DS_EFORMAT, "%s: rms_norm_eps and rope theta must be finite and > 0", path);
    return DS_OK;
}

ds_status qwen3_config_load(Qwen3Config *c, const char *path, char *err) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (!ds_file_exists(path)) return ds_err(err, DS_EIO, "%s: cannot open", path);
        return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    }
    ds_status rc = qwen3_config_parse(c, root, path, err);
    json_decref(root);
    return rc;
}

/* ---- weights ---- */

ds_status qwen3_take_weight(Weight *w, StModel *st, const char *name, int rows, int cols, Backend *be, char *err) {
    const StTensor *t;
    int64_t shape[2] = {rows, cols};
    ds_status rc = rows == 1 ? st_take(st, name, 1, &shape[1], &t, err) : st_take(st, name, 2, shape, &t, err);
    if (rc) return rc;
    *w = weight_view(t->data, t->dtype, rows, cols);
    return be->upload_weight(be, w, err);
}

ds_status qwen3_layer_load(Qwen3Layer *l, StModel *st, const Qwen3Config *c, const char *prefix, Backend *be, char *err) {
    char name[256];
    int d = c->hidden_size, qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    struct { Weight *w; const char *suffix; int rows, cols; } spec[] = {
        {&l->input_norm, "input_layernorm.weight", 1, d},
        {&l->q_proj, "self_attn.q_proj.weight", qd, d},
        {&l->k_proj, "self_attn.k_proj.weight", kd, d},
        {&l->v_proj, "self_attn.v_proj.weight", kd, d},
        {&l->o_proj, "self_attn.o_proj.weight", d, qd},
        {&l->q_norm, "self_attn.q_norm.weight", 1, c->head_dim},
        {&l->k_norm, "self_attn.k_norm.weight", 1, c->head_dim},
        {&l->post_norm, "post_attention_layernorm.weight", 1, d},
        {&l->gate_proj, "mlp.gate_proj.weight", ff, d},
        {&l->up_proj, "mlp.up_proj.weight", ff, d},
        {&l->down_proj, "mlp.down_proj.weight", d, ff},
    };
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, spec[i].suffix);
        ds_status rc = qwen3_take_weight(spec[i].w, st, name, spec[i].rows, spec[i].cols, be, err);
        if (rc) return rc;
    }
    return DS_OK;
}

void qwen3_layer_release(Qwen3Layer *l, Backend *be) {
    Weight *ws[] = {&l->input_norm, &l->q_proj, &l->k_proj, &l->v_proj, &l->o_proj, &l->q_norm,
                    &l->k_norm, &l->post_norm, &l->gate_proj, &l->up_proj, &l->down_proj};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) be->release_weight(be, ws[i]);
}

ds_status qwen3_load(Qwen3Model *m, const char *dir, Backend *be, char *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    char path[1200];
    if (!ds_dir_exists(dir)) return ds_err(err, DS_EIO, "%s: model directory not found", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ds_status rc = qwen3_config_load(&m->cfg, path, err);
    if (rc) return rc;
    if (strcmp(m->cfg.architecture, "Qwen3ForCausalLM") != 0)
        return ds_err(err, DS_EUNSUPPORTED, "%s: unknown architecture '%s' (expected Qwen3ForCausalLM)", path,
                      m->cfg.architecture[0] ? m->cfg.architecture : "(none)");
    if ((rc = st_open(&m->st, dir, err))) return rc;
    const Qwen3Config *c = &m->cfg;
    m->layers = ds_calloc((size_t)c->n_layers, sizeof(Qwen3Layer));
    if ((rc = qwen3_take_weight(&m->embed, &m->st, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, be, err))) goto fail;
    if ((rc = qwen3_take_weight(&m->final_norm, &m->st, "model.norm.weight", 1, c->hidden_size, be, err))) goto fail;
    for (int i = 0; i < c->n_layers; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "model.layers.%d.", i);
        if ((rc = qwen3_layer_load(&m->layers[i], &m->st, c, prefix, be, err))) goto fail;
    }
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
        /* transformers ignores a stored lm_head when tied; accept it if it is there */
        const StTensor *t = st_find(&m->st, "lm_head.weight");
        if (t) ((StTensor *)t)->taken = true;
    } else if ((rc = qwen3_take_weight(&m->lm_head, &m->st, "lm_head.weight", c->vocab_size, c->hidden_size, be, err))) {
        goto fail;
    }
    if ((rc = st_check_all_taken(&m->st, err))) goto fail;
    return DS_OK;
fail:
    qwen3_free(m);
    return rc;
}

void qwen3_free(Qwen3Model *m) {
    if (m->be) {
        if (m->layers)
            for (int i = 0; i < m->cfg.n_layers; i++) qwen3_layer_release(&m->layers[i], m->be);
        m->be->release_weight(m->be, &m->embed);
        m->be->release_weight(m->be, &m->final_norm);
        if (!m->cfg.tie_word_embeddings) m->be->release_weight(m->be, &m->lm_head);
    }
    ds_free(m->layers);
    st_close(&m->st);
    memset(m, 0, sizeof *m);
}

/* ---- state ---- */

ds_status qwen3_state_init(Qwen3State *s, const Qwen3Model *m, int max_tokens, int max_logits, int max_feature_layers,
                           int n_slots, int max_ctx, char *err) {
    memset(s, 0, sizeof *s);
    Backend *be = m->be;
    const Qwen3Config *c = &m->cfg;
    if (max_tokens < 1 || max_logits < 1 || max_logits > max_tokens || n_slots < 1 || max_ctx < 1)
        return ds_err(err, DS_EARG, "qwen3_state_init: bad sizes");
    s->max_tokens = max_tokens;
    s->max_logits = max_logits;
    s->max_feature_layers = max_feature_layers;
    size_t T = (size_t)max_tokens, d = (size_t)c->hidden_size, qd = (size_t)c->n_heads * c->head_dim,
           kd = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)c->intermediate_size;
    s->kv = (KvCache){NULL, NULL, c->n_layers, n_slots, max_ctx, (int)kd};
    size_t kv_bytes = sizeof(float) * (size_t)c->n_layers * n_slots * (size_t)max_ctx * kd;
    s->kv.k = be->alloc(be, kv_bytes);
    s->kv.v = be->alloc(be, kv_bytes);
    s->x = be->alloc(be, sizeof(float) * T * d);
    s->h = be->alloc(be, sizeof(float) * T * d);
    s->q = be->alloc(be, sizeof(float) * T * qd);
    s->k = be->alloc(be, sizeof(float) * T * kd);
    s->v = be->alloc(be, sizeof(float) * T * kd);
    s->att = be->alloc(be, sizeof(float) * T * qd);
    s->gate = be->alloc(be, sizeof(float) * T * ff);
    s->up = be->alloc(be, sizeof(float) * T * ff);
    s->rows_tmp = be->alloc(be, sizeof(float) * (size_t)max_logits * d);
    s->d_tokens = be->alloc(be, sizeof(int32_t) * T);
    s->d_pos = be->alloc(be, sizeof(int32_t) * T);
    s->d_slot = be->alloc(be, sizeof(int32_t) * T);
    s->d_kv_len = be->alloc(be, sizeof(int32_t) * T);
    s->d_rows = be->alloc(be, sizeof(int32_t) * (size_t)max_logits);
    s->logits = be->alloc(be, sizeof(float) * (size_t)max_logits * c->vocab_size);
    s->features = be->alloc(be, sizeof(float) * T * d * (size_t)(max_feature_layers > 0 ? max_feature_layers : 1));
    s->logits_host = be->host_memory ? s->logits : ds_malloc(sizeof(float) * (size_t)max_logits * c->vocab_size);
    s->h_slot = ds_malloc(sizeof(int32_t) * T);
    s->h_kv_len = ds_malloc(sizeof(int32_t) * T);
    if (!s->kv.k || !s->kv.v || !s->x || !s->h || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up ||
        !s->rows_tmp || !s->d_tokens || !s->d_pos || !s->d_slot || !s->d_kv_len || !s->d_rows || !s->logits ||
        !s->features || !s->logits_host || !s->h_slot || !s->h_kv_len) {
        qwen3_state_free(s, m);
        return ds_err(err, DS_ENOMEM, "out of memory for the activation arena (%d tokens, KV %d x %d positions, %.1f MB)",
                      max_tokens, n_slots, max_ctx, 2.0 * (double)kv_bytes / 1e6);
    }
    return DS_OK;
}

void qwen3_state_free(Qwen3State *s, const Qwen3Model *m) {
    Backend *be = m->be;
    void *dev[] = {s->kv.k, s->kv.v, s->x, s->h, s->q, s->k, s->v, s->att, s->gate, s->up, s->rows_tmp,
                   s->d_tokens, s->d_pos, s->d_slot, s->d_kv_len, s->d_rows, s->logits, s->features};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) if (dev[i]) be->free(be, dev[i]);
    if (!be->host_memory) ds_free(s->logits_host);
    ds_free(s->h_slot);
    ds_free(s->h_kv_len);
    memset(s, 0, sizeof *s);
}

/* ---- forward ---- */

static void keep_feature(Backend *be, Qwen3State *s, const Qwen3Batch *b, const float *src, int layer_id, int dim) {
    for (int f = 0; f < b->n_feature_layers; f++)
        if (b->feature_layers[f] == layer_id)
            be->gather_rows(be, s->features + (size_t)f * dim, b->n_feature_layers * dim, src, dim, NULL, b->n, dim);
}

/* q, k, v of layer l -> att: the q/k norms, rope, the KV write and attention */
static void layer_attention(Backend *be, const Qwen3Config *c, const Qwen3Layer *L, int l, const Qwen3LayerIo *io, int n) {
    const int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    const float eps = c->rms_norm_eps;
    if (be->qk_norm_rope_kv) {
        be->qk_norm_rope_kv(be, io->q, io->k, io->v, &L->q_norm, &L->k_norm, eps, io->kv, l, io->slot, io->pos, n, H, KV, hd, c->rope_theta);
    } else {
        be->rmsnorm(be, io->q, io->q, &L->q_norm, n * H, hd, eps);
        be->rmsnorm(be, io->k, io->k, &L->k_norm, n * KV, hd, eps);
        be->rope(be, io->q, io->pos, n, H, hd, c->rope_theta);
        be->rope(be, io->k, io->pos, n, KV, hd, c->rope_theta);
        be->kv_write(be, io->kv, l, io->k, io->v, io->slot, io->pos, n);
    }
    be->attention(be, io->att, io->q, io->kv, l, io->slot, io->kv_len, n, H, KV, hd);
}
static Qwen3LayerIo state_io(Qwen3State *s) {
    return (Qwen3LayerIo){s->x, s->h, s->q, s->k, s->v, s->att, s->gate, s->up, &s->kv, s->d_slot, s->d_pos, s->d_kv_len};
}

/* 6 ops; h is only the backend's scratch. The next_norm hints let the residual adds prepare
 * the next matmul_norm's input (backend.h). */
void qwen3_layer_folded(Backend *be, const Qwen3Config *c, const Qwen3Layer *L, int layer, const Weight *next_norm, const Qwen3LayerIo *io,
                        int n) {
    const float eps = c->rms_norm_eps;
    float *qkv[3] = {io->q, io->k, io->v}, *gu[2] = {io->gate, io->up};
    const Weight *wqkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj}, *wgu[2] = {&L->gate_proj, &L->up_proj};
    be->matmul_norm(be, qkv, io->x, &L->input_norm, eps, wqkv, 3, n, 0, io->h);
    layer_attention(be, c, L, layer, io, n);
    be->matmul_add(be, io->x, io->att, &L->o_proj, n, io->h, &L->post_norm);
    be->matmul_norm(be, gu, io->x, &L->post_norm, eps, wgu, 2, n, 1, io->h); /* + swiglu into gate */
    be->matmul_add(be, io->x, io->gate, &L->down_proj, n, io->h, next_norm);
}

/* after the layers: the final norm's features, the logit rows through the final norm and lm_head */
static void forward_head(Qwen3Model *m, Qwen3State *s, const Qwen3Batch *b) {
    Backend *be = m->be;
    const int n = b->n, d = m->cfg.hidden_size;
    const float eps = m->cfg.rms_norm_eps;
    bool want_final = false;
    for (int f = 0; f < b->n_feature_layers; f++) want_final |= b->feature_layers[f] == QWEN3_FINAL_NORM;
    if (want_final) {
        be->rmsnorm(be, s->h, s->x, &m->final_norm, n, d, eps);
        keep_feature(be, s, b, s->h, QWEN3_FINAL_NORM, d);
    }
    if (!b->n_logits) return;
    be->gather_rows(be, s->rows_tmp, d, s->x, d, s->d_rows, b->n_logits, d);
    if (qwen3_folds(be)) {
        const Weight *ws[1] = {&m->lm_head};
        float *outs[1] = {s->logits};
        be->matmul_norm(be, outs, s->rows_tmp, &m->final_norm, eps, ws, 1, b->n_logits, 0, s->rows_tmp);
        return;
    }
    be->rmsnorm(be, s->rows_tmp, s->rows_tmp, &m->final_norm, b->n_logits, d, eps);
    be->matmul(be, s->logits, s->rows_tmp, &m->lm_head, b->n_logits);
}

/* the layers with the norms and residual adds folded into the products (matmul_norm,
 * matmul_add): x stays the residual stream */
static void forward_layers_folded(Qwen3Model *m, Qwen3State *s, const Qwen3Batch *b) {
    const Qwen3Config *c = &m->cfg;
    const Qwen3LayerIo io = state_io(s);
    for (int l = 0; l < c->n_layers; l++) {
        qwen3_layer_folded(m->be, c, &m->layers[l], l, l + 1 < c->n_layers ? &m->layers[l + 1].input_norm : NULL, &io, b->n);
        keep_feature(m->be, s, b, s->x, l, c->hidden_size);
    }
    forward_head(m, s, b);
}

/* the ops of one forward, after its inputs are on the device (a step graph's content) */
static void forward_ops(Qwen3Model *m, Qwen3State *s, const Qwen3Batch *b) {
    Backend *be = m->be;
    const Qwen3Config *c = &m->cfg;
    const int n = b->n, d = c->hidden_size, ff = c->intermediate_size;
    be->embed(be, s->x, &m->embed, s->d_tokens, n);
    keep_feature(be, s, b, s->x, -1, d);
    const float eps = c->rms_norm_eps;
    if (qwen3_folds(be)) {
        forward_layers_folded(m, s, b);
        return;
    }
    const Qwen3LayerIo io = state_io(s);
    for (int l = 0; l < c->n_layers; l++) {
        const Qwen3Layer *L = &m->layers[l];
        /* with add_rmsnorm the previous layer's last add already normalised x into h */
        if (l == 0 || !be->add_rmsnorm) be->rmsnorm(be, s->h, s->x, &L->input_norm, n, d, eps);
        if (be->matmul_multi) {
            float *outs[3] = {s->q, s->k, s->v};
            const Weight *ws[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
            be->matmul_multi(be, outs, s->h, ws, 3, n, 0);
        } else {
            be->matmul(be, s->q, s->h, &L->q_proj, n);
            be->matmul(be, s->k, s->h, &L->k_proj, n);
            be->matmul(be, s->v, s->h, &L->v_proj, n);
        }
        layer_attention(be, c, L, l, &io, n);
        be->matmul(be, s->h, s->att, &L->o_proj, n);
        if (be->add_rmsnorm) {
            be->add_rmsnorm(be, s->x, s->h, s->h, &L->post_norm, n, d, eps);
        } else {
            be->add(be, s->x, s->h, (size_t)n * d);
            be->rmsnorm(be, s->h, s->x, &L->post_norm, n, d, eps);
        }
        if (be->matmul_multi) {
            float *outs[2] = {s->gate, s->up};
            const Weight *ws[2] = {&L->gate_proj, &L->up_proj};
            be->matmul_multi(be, outs, s->h, ws, 2, n, 1); /* + swiglu into gate */
        } else {
            be->matmul(be, s->gate, s->h, &L->gate_proj, n);
            be->matmul(be, s->up, s->h, &L->up_proj, n);
            be->swiglu(be, s->gate, s->gate, s->up, (size_t)n * ff);
        }
        be->matmul(be, s->h, s->gate, &L->down_proj, n);
        if (be->add_rmsnorm && l + 1 < c->n_layers) be->add_rmsnorm(be, s->x, s->h, s->h, &m->layers[l + 1].input_norm, n, d, eps);
        else be->add(be, s->x, s->h, (size_t)n * d);
        keep_feature(be, s, b, s->x, l, d);
    }
    forward_head(m, s, b);
}

ds_status qwen3_forward(Qwen3Model *m, Qwen3State *s, const Qwen3Batch *b, char *err) {
    Backend *be = m->be;
    const Qwen3Config *c = &m->cfg;
    const int n = b->n;
    if (n < 1 || n > s->max_tokens) return ds_err(err, DS_EARG, "forward: %d tokens (max %d per call)", n, s->max_tokens);
    if (b->n_logits < 0 || b->n_logits > s->max_logits) return ds_err(err, DS_EARG, "forward: %d logit rows (max %d)", b->n_logits, s->max_logits);
    if (b->n_feature_layers > s->max_feature_layers) return ds_err(err, DS_EARG, "forward: %d feature layers (max %d)", b->n_feature_layers, s->max_feature_layers);
    for (int i = 0; i < n; i++) {
        int slot = b->slot ? b->slot[i] : 0;
        int kvl = b->kv_len ? b->kv_len[i] : b->pos[i] + 1;
        if (!b->dev_tokens && (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size))
            return ds_err(err, DS_EARG, "forward: token id %d out of range [0, %d)", b->tokens[i], c->vocab_size);
        if (slot < 0 || slot >= s->kv.n_slots) return ds_err(err, DS_EARG, "forward: slot %d out of range", slot);
        if (b->pos[i] < 0 || b->pos[i] >= s->kv.max_ctx || kvl < 1 || kvl > s->kv.max_ctx)
            return ds_err(err, DS_EARG, "forward: position %d exceeds the context (%d)", b->pos[i], s->kv.max_ctx);
        s->h_slot[i] = slot;
        s->h_kv_len[i] = kvl;
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= n) return ds_err(err, DS_EARG, "forward: logit row %d out of range", b->logit_rows[i]);
    if (b->dev_tokens) be->copy(be, s->d_tokens, b->dev_tokens, sizeof(int32_t) * n);
    else be->to_device(be, s->d_tokens, b->tokens, sizeof(int32_t) * n);
    be->to_device(be, s->d_pos, b->pos, sizeof(int32_t) * n);
    be->to_device(be, s->d_slot, s->h_slot, sizeof(int32_t) * n);
    be->to_device(be, s->d_kv_len, s->h_kv_len, sizeof(int32_t) * n);
    if (b->n_logits) be->to_device(be, s->d_rows, b->logit_rows, sizeof(int32_t) * b->n_logits);

    if (!be->graph_begin) {
        forward_ops(m, s, b);
    } else { /* recorded once per argument list, replayed after (backend.h) */
        bool done = false;
        for (int tries = 0; tries < 3 && !done; tries++) {
            be->graph_begin(be, n);
            forward_ops(m, s, b);
            done = be->graph_end(be);
        }
        DS_ASSERT(done);
    }
    if (b->n_logits && !b->logits_on_device) {
        if (!be->host_memory) be->to_host(be, s->logits_host, s->logits, sizeof(float) * (size_t)b->n_logits * c->vocab_size);
    }
    s->n_logits = b->n_logits;
    s->n_features = b->n_feature_layers;
    return DS_OK;
}
