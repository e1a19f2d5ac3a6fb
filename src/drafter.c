/* drafter.c - DSpark / DFlash drafter: loading and drafting forward (see drafter.h).
 *
 * Backbone (DeepSpec _forward_backbone, digest §2.2): context features never pass through the
 * residual stream; each draft layer projects ctx = hidden_norm(fc(features)) to its own K/V.
 * Block tokens run through the usual Qwen3 decoder layers with no attention mask.
 * Sequential heads (digest §2.6), with x = the previous token and h the slot's hidden:
 *   vanilla  bias = W2 W1[x]
 *   gated    bias = W2 (sigmoid(G [h ; W1[x]] + b) * W1[x])
 *   rnn      (g, c, o) = J [s ; W1[x] ; h] + b;  bias = W2 tanh(o);  s = sig(g) s + (1-sig(g)) tanh(c)
 * Confidence (digest §2.7): logit = P [h ; W1[x]] + b. */
#include "drafter.h"

#include <stdio.h>
#include <string.h>

static ds_status take(Weight *w, StModel *st, const char *name, int n_dims, int rows, int cols, Backend *be, char *err) {
    const StTensor *t;
    int64_t shape[2] = {rows, cols};
    ds_status rc = n_dims == 1 ? st_take(st, name, 1, &shape[1], &t, err) : st_take(st, name, 2, shape, &t, err);
    if (rc) return rc;
    *w = weight_view(t->data, t->dtype, n_dims == 1 ? 1 : rows, cols);
    return be->upload_weight(be, w, err);
}

/* Claim a [V][d] table; reuse the target's Weight when dtype, shape and bytes are equal. */
static ds_status take_shared(Weight *w, bool *shared, StModel *st, const char *name, const Weight *tw, int rows, int cols,
                             Backend *be, char *err) {
    const StTensor *t;
    int64_t shape[2] = {rows, cols};
    ds_status rc = st_take(st, name, 2, shape, &t, err);
    if (rc) return rc;
    if (tw && tw->host && tw->dtype == t->dtype && tw->rows == rows && tw->cols == cols &&
        (tw->host == t->data || memcmp(tw->host, t->data, t->nbytes) == 0)) {
        *w = *tw;
        *shared = true;
        return DS_OK;
    }
    *shared = false;
    *w = weight_view(t->data, t->dtype, rows, cols);
    return be->upload_weight(be, w, err);
}

ds_status drafter_load(Drafter *d, const char *dir, const Qwen3Model *target, Backend *be, char *err) {
    memset(d, 0, sizeof *d);
    d->be = be;
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    char path[1200];
    if (!ds_dir_exists(dir)) return ds_err(err, DS_EIO, "%s: drafter directory not found", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ds_status rc = draft_config_load(&d->cfg, path, err);
    if (rc) return rc;
    if (target && (rc = draft_config_validate(&d->cfg, &target->cfg, path, err))) return rc;
    if ((rc = st_open(&d->st, dir, err))) return rc;
    const DraftConfig *c = &d->cfg;
    const Qwen3Config *b = &c->base;
    int V = b->vocab_size, D = b->hidden_size, r = c->markov_rank, m = c->n_target_layers;
    d->layers = ds_calloc((size_t)b->n_layers, sizeof(Qwen3Layer));
    if (!d->layers) { rc = ds_err(err, DS_ENOMEM, "out of memory"); goto fail; }
    if ((rc = take_shared(&d->embed, &d->shared_embed, &d->st, "embed_tokens.weight", target ? &target->embed : NULL, V, D, be, err))) goto fail;
    if ((rc = take_shared(&d->lm_head, &d->shared_lm_head, &d->st, "lm_head.weight", target ? &target->lm_head : NULL, V, D, be, err))) goto fail;
    for (int i = 0; i < b->n_layers; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "layers.%d.", i);
        if ((rc = qwen3_layer_load(&d->layers[i], &d->st, b, prefix, be, err))) goto fail;
    }
    if ((rc = take(&d->norm, &d->st, "norm.weight", 1, 1, D, be, err)) ||
        (rc = take(&d->fc, &d->st, "fc.weight", 2, D, m * D, be, err)) ||
        (rc = take(&d->hidden_norm, &d->st, "hidden_norm.weight", 1, 1, D, be, err)))
        goto fail;
    if (r > 0) {
        if ((rc = take(&d->w1, &d->st, "markov_head.markov_w1.weight", 2, V, r, be, err)) ||
            (rc = take(&d->w2, &d->st, "markov_head.markov_w2.weight", 2, V, r, be, err)))
            goto fail;
        if (c->markov_type == MARKOV_GATED &&
            ((rc = take(&d->gate_w, &d->st, "markov_head.gate_proj.weight", 2, r, D + r, be, err)) ||
             (rc = take(&d->gate_b, &d->st, "markov_head.gate_proj.bias", 1, 1, r, be, err))))
            goto fail;
        if (c->markov_type == MARKOV_RNN &&
            ((rc = take(&d->joint_w, &d->st, "markov_head.joint_proj.weight", 2, 3 * r, 2 * r + D, be, err)) ||
             (rc = take(&d->joint_b, &d->st, "markov_head.joint_proj.bias", 1, 1, 3 * r, be, err))))
            goto fail;
    }
    if (c->enable_confidence_head) {
        int in = D + (c->confidence_head_with_markov ? r : 0);
        if ((rc = take(&d->conf_w, &d->st, "confidence_head.proj.weight", 2, 1, in, be, err)) ||
            (rc = take(&d->conf_b, &d->st, "confidence_head.proj.bias", 1, 1, 1, be, err)))
            goto fail;
    }
    if ((rc = st_check_all_taken(&d->st, err))) goto fail;
    return DS_OK;
fail:
    drafter_free(d);
    return rc;
}

void drafter_free(Drafter *d) {
    Backend *be = d->be;
    if (be) {
        if (d->layers)
            for (int i = 0; i < d->cfg.base.n_layers; i++) qwen3_layer_release(&d->layers[i], be);
        if (!d->shared_embed) be->release_weight(be, &d->embed);
        if (!d->shared_lm_head) be->release_weight(be, &d->lm_head);
        Weight *ws[] = {&d->norm, &d->fc, &d->hidden_norm, &d->w1, &d->w2, &d->gate_w, &d->gate_b,
                        &d->joint_w, &d->joint_b, &d->conf_w, &d->conf_b};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) if (ws[i]->host) be->release_weight(be, ws[i]);
    }
    ds_free(d->layers);
    st_close(&d->st);
    memset(d, 0, sizeof *d);
}

/* ---- state ---- */

ds_status draft_state_init(DraftState *s, const Drafter *d, int max_ctx, int max_chunk, char *err) {
    memset(s, 0, sizeof *s);
    Backend *be = d->be;
    const DraftConfig *c = &d->cfg;
    const Qwen3Config *b = &c->base;
    int B = c->block_size, D = b->hidden_size, V = b->vocab_size, r = c->markov_rank > 0 ? c->markov_rank : 1;
    size_t qd = (size_t)b->n_heads * b->head_dim, kd = (size_t)b->n_kv_heads * b->head_dim, ff = (size_t)b->intermediate_size;
    if (max_ctx < B + 1 || max_chunk < 1) return ds_err(err, DS_EARG, "draft_state_init: bad sizes (ctx %d, chunk %d)", max_ctx, max_chunk);
    s->max_ctx = max_ctx;
    s->max_chunk = max_chunk;
    int rows = max_chunk > B ? max_chunk : B;
    s->kv = (KvCache){NULL, NULL, b->n_layers, 1, max_ctx, (int)kd};
    size_t kv_bytes = sizeof(float) * (size_t)b->n_layers * (size_t)max_ctx * kd;
    s->kv.k = be->alloc(be, kv_bytes);
    s->kv.v = be->alloc(be, kv_bytes);
    s->ctx = be->alloc(be, sizeof(float) * (size_t)max_chunk * D);
    s->kbuf = be->alloc(be, sizeof(float) * (size_t)rows * kd);
    s->vbuf = be->alloc(be, sizeof(float) * (size_t)rows * kd);
    s->x = be->alloc(be, sizeof(float) * (size_t)B * D);
    s->h = be->alloc(be, sizeof(float) * (size_t)B * D);
    s->q = be->alloc(be, sizeof(float) * (size_t)B * qd);
    s->att = be->alloc(be, sizeof(float) * (size_t)B * qd);
    s->gate = be->alloc(be, sizeof(float) * (size_t)B * ff);
    s->up = be->alloc(be, sizeof(float) * (size_t)B * ff);
    s->hidden = be->alloc(be, sizeof(float) * (size_t)B * D);
    s->base_logits = be->alloc(be, sizeof(float) * (size_t)B * V);
    s->logits = be->alloc(be, sizeof(float) * (size_t)V);
    s->w1x = be->alloc(be, sizeof(float) * (size_t)r);
    s->cat = be->alloc(be, sizeof(float) * (size_t)(2 * r + D));
    s->pre = be->alloc(be, sizeof(float) * (size_t)3 * r);
    s->state = be->alloc(be, sizeof(float) * (size_t)r);
    s->tmp = be->alloc(be, sizeof(float) * (size_t)r);
    s->conf = be->alloc(be, sizeof(float) * 2);
    s->bias = be->alloc(be, sizeof(float) * (size_t)V);
    s->zeros = be->alloc(be, sizeof(float) * (size_t)r);
    s->d_ids = be->alloc(be, sizeof(int32_t) * (size_t)rows);
    s->d_pos = be->alloc(be, sizeof(int32_t) * (size_t)rows);
    s->d_slot = be->alloc(be, sizeof(int32_t) * (size_t)rows);
    s->d_kvlen = be->alloc(be, sizeof(int32_t) * (size_t)rows);
    s->logits_host = be->host_memory ? s->logits : ds_malloc(sizeof(float) * (size_t)V);
    s->h_pos = ds_malloc(sizeof(int32_t) * (size_t)rows);
    s->h_zero = ds_calloc((size_t)rows, sizeof(int32_t));
    s->h_kvlen = ds_malloc(sizeof(int32_t) * (size_t)rows);
    if (!s->kv.k || !s->kv.v || !s->ctx || !s->kbuf || !s->vbuf || !s->x || !s->h || !s->q || !s->att || !s->gate || !s->up ||
        !s->hidden || !s->base_logits || !s->logits || !s->w1x || !s->cat || !s->pre || !s->state || !s->tmp || !s->conf || !s->bias || !s->zeros ||
        !s->d_ids || !s->d_pos || !s->d_slot || !s->d_kvlen || !s->logits_host || !s->h_pos || !s->h_zero || !s->h_kvlen) {
        draft_state_free(s, d);
        return ds_err(err, DS_ENOMEM, "out of memory for the drafter state (%d positions)", max_ctx);
    }
    be->to_device(be, s->d_slot, s->h_zero, sizeof(int32_t) * (size_t)rows);
    return DS_OK;
}

void draft_state_free(DraftState *s, const Drafter *d) {
    Backend *be = d->be;
    void *dev[] = {s->kv.k, s->kv.v, s->ctx, s->kbuf, s->vbuf, s->x, s->h, s->q, s->att, s->gate, s->up, s->hidden,
                   s->base_logits, s->logits, s->w1x, s->cat, s->pre, s->state, s->tmp, s->conf, s->bias, s->zeros,
                   s->d_ids, s->d_pos, s->d_slot, s->d_kvlen};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) if (dev[i]) be->free(be, dev[i]);
    if (!be->host_memory) ds_free(s->logits_host);
    ds_free(s->h_pos);
    ds_free(s->h_zero);
    ds_free(s->h_kvlen);
    memset(s, 0, sizeof *s);
}

/* ---- forward ---- */

#define LOGITS_FIRST 4 /* lm_head rows computed with the block (drafter_block) */

/* k = k_norm(k_proj(src)), RoPE at d_pos; v = v_proj(src); written at d_pos (n rows). */
static void write_kv(Drafter *d, DraftState *s, int layer, const float *src, int n) {
    Backend *be = d->be;
    const Qwen3Config *b = &d->cfg.base;
    const Qwen3Layer *L = &d->layers[layer];
    be->matmul(be, s->kbuf, src, &L->k_proj, n);
    be->matmul(be, s->vbuf, src, &L->v_proj, n);
    be->rmsnorm(be, s->kbuf, s->kbuf, &L->k_norm, n * b->n_kv_heads, b->head_dim, b->rms_norm_eps);
    be->rope(be, s->kbuf, s->d_pos, n, b->n_kv_heads, b->head_dim, b->rope_theta);
    be->kv_write(be, &s->kv, layer, s->kbuf, s->vbuf, s->d_slot, s->d_pos, n);
}

ds_status drafter_append_context(Drafter *d, DraftState *s, const float *features, int n, int pos0, char *err) {
    Backend *be = d->be;
    const Qwen3Config *b = &d->cfg.base;
    if (pos0 != s->cache_len) return ds_err(err, DS_EARG, "drafter: context appended at %d but the cache holds %d", pos0, s->cache_len);
    if (n < 0 || pos0 + n > s->max_ctx) return ds_err(err, DS_EARG, "drafter: context of %d positions exceeds the draft cache (%d)", pos0 + n, s->max_ctx);
    for (int done = 0; done < n;) {
        int k = n - done < s->max_chunk ? n - done : s->max_chunk;
        for (int i = 0; i < k; i++) s->h_pos[i] = pos0 + done + i;
        be->to_device(be, s->d_pos, s->h_pos, sizeof(int32_t) * (size_t)k);
        be->matmul(be, s->ctx, features + (size_t)done * d->fc.cols, &d->fc, k);
        be->rmsnorm(be, s->ctx, s->ctx, &d->hidden_norm, k, b->hidden_size, b->rms_norm_eps);
        for (int l = 0; l < b->n_layers; l++) write_kv(d, s, l, s->ctx, k);
        done += k;
    }
    s->cache_len = pos0 + n;
    return DS_OK;
}

void drafter_crop(DraftState *s, int len) {
    DS_ASSERT(len >= 0 && len <= s->cache_len);
    s->cache_len = len;
}

/* run ops(d, s, arg) as one step of the backend's step graphs under `key` (backend.h: the ops
 * again while graph_end says false, at most 3 times); eagerly on a backend without them.
 * Inputs are uploaded before and results read after; ops change no host state (a try may
 * only log them). */
typedef void (*DraftOps)(Drafter *d, DraftState *s, const void *arg);
static void draft_step(Drafter *d, DraftState *s, int key, DraftOps ops, const void *arg) {
    Backend *be = d->be;
    if (!be->graph_begin) {
        ops(d, s, arg);
        return;
    }
    bool done = false;
    for (int tries = 0; tries < 3 && !done; tries++) {
        be->graph_begin(be, key);
        ops(d, s, arg);
        done = be->graph_end(be);
    }
    DS_ASSERT(done);
}

/* the block's ops after its ids, positions and kv lengths are on the device */
static void block_ops(Drafter *d, DraftState *s, const void *arg) {
    (void)arg;
    Backend *be = d->be;
    const DraftConfig *c = &d->cfg;
    const Qwen3Config *b = &c->base;
    const int B = c->block_size, D = b->hidden_size, H = b->n_heads, KV = b->n_kv_heads, hd = b->head_dim;
    be->embed(be, s->x, &d->embed, s->d_ids, B);
    /* a backend that folds the norms and residual adds into the products runs the target's
     * folded layer (6 ops a layer instead of 17; the same values within rounding: backend.h).
     * The block's K/V go past cache_len: attended now, never kept. */
    const Qwen3LayerIo io = {s->x, s->h, s->q, s->kbuf, s->vbuf, s->att, s->gate, s->up, &s->kv, s->d_slot, s->d_pos, s->d_kvlen};
    if (qwen3_folds(be))
        for (int l = 0; l < b->n_layers; l++)
            qwen3_layer_folded(be, b, &d->layers[l], l, l + 1 < b->n_layers ? &d->layers[l + 1].input_norm : NULL, &io, B);
    else
        for (int l = 0; l < b->n_layers; l++) {
            const Qwen3Layer *L = &d->layers[l];
            be->rmsnorm(be, s->h, s->x, &L->input_norm, B, D, b->rms_norm_eps);
            be->matmul(be, s->q, s->h, &L->q_proj, B);
            be->rmsnorm(be, s->q, s->q, &L->q_norm, B * H, hd, b->rms_norm_eps);
            be->rope(be, s->q, s->d_pos, B, H, hd, b->rope_theta);
            write_kv(d, s, l, s->h, B); /* block K/V past cache_len: attended now, never kept */
            be->attention(be, s->att, s->q, &s->kv, l, s->d_slot, s->d_kvlen, B, H, KV, hd);
            be->matmul(be, s->h, s->att, &L->o_proj, B);
            be->add(be, s->x, s->h, (size_t)B * D);
            be->rmsnorm(be, s->h, s->x, &L->post_norm, B, D, b->rms_norm_eps);
            be->matmul(be, s->gate, s->h, &L->gate_proj, B);
            be->matmul(be, s->up, s->h, &L->up_proj, B);
            be->swiglu(be, s->gate, s->gate, s->up, (size_t)B * b->intermediate_size);
            be->matmul(be, s->h, s->gate, &L->down_proj, B);
            be->add(be, s->x, s->h, (size_t)B * D);
        }
    be->rmsnorm(be, s->hidden, s->x, &d->norm, B, D, b->rms_norm_eps);
    be->matmul(be, s->base_logits, s->hidden, &d->lm_head, s->logits_ready);
    /* the RNN state starts at 0 in every block (s->zeros is never written) */
    if (c->markov_type == MARKOV_RNN) be->copy(be, s->state, s->zeros, sizeof(float) * (size_t)c->markov_rank);
}

ds_status drafter_block(Drafter *d, DraftState *s, int32_t anchor, int start, char *err) {
    Backend *be = d->be;
    const DraftConfig *c = &d->cfg;
    const Qwen3Config *b = &c->base;
    const int B = c->block_size;
    if (start != s->cache_len) return ds_err(err, DS_EARG, "drafter: block at %d but the context ends at %d", start, s->cache_len);
    if (start + B > s->max_ctx) return ds_err(err, DS_EARG, "drafter: block at %d exceeds the draft cache (%d)", start, s->max_ctx);
    if (anchor < 0 || anchor >= b->vocab_size) return ds_err(err, DS_EARG, "drafter: anchor token %d out of range", anchor);
    int32_t ids[64];
    for (int i = 0; i < B; i++) {
        ids[i] = i == 0 ? anchor : c->mask_token_id;
        s->h_pos[i] = start + i;
        s->h_kvlen[i] = start + B;
    }
    be->to_device(be, s->d_ids, ids, sizeof(int32_t) * (size_t)B);
    be->to_device(be, s->d_pos, s->h_pos, sizeof(int32_t) * (size_t)B);
    be->to_device(be, s->d_kvlen, s->h_kvlen, sizeof(int32_t) * (size_t)B);
    /* lm_head rows on demand, the first LOGITS_FIRST now: a causal verification policy often
     * stops drafting early, and the later rows would be wasted (rows are independent: the
     * same bits as one product over all B) */
    s->logits_ready = B < LOGITS_FIRST ? B : LOGITS_FIRST;
    draft_step(d, s, GRAPH_KEY_DRAFT, block_ops, NULL);
    return DS_OK;
}

/* lm_head rows logits_ready..B-1 (s->logits_ready is the caller's to advance) */
static void rest_logits_ops(Drafter *d, DraftState *s) {
    const int B = d->cfg.block_size, D = d->cfg.base.hidden_size, V = d->cfg.base.vocab_size, r0 = s->logits_ready;
    if (r0 < B) d->be->matmul(d->be, s->base_logits + (size_t)r0 * V, s->hidden + (size_t)r0 * D, &d->lm_head, B - r0);
}

void drafter_all_logits(Drafter *d, DraftState *s) {
    rest_logits_ops(d, s);
    s->logits_ready = d->cfg.block_size;
}

typedef struct {
    int j;
    const int32_t *prev_id; /* the previous token, in backend memory */
    bool conf;              /* the confidence logit into s->conf ... */
    float *conf_dev;        /* ... and copied here (NULL: not) */
} HeadArgs;

/* slot j's logits into s->logits and, when a->conf and there is a confidence head, its
 * confidence logit into s->conf; first the block's later lm_head rows when slot j needs them */
static void head_ops(Drafter *d, DraftState *s, const void *arg) {
    const HeadArgs *a = arg;
    Backend *be = d->be;
    const DraftConfig *c = &d->cfg;
    const int D = c->base.hidden_size, V = c->base.vocab_size, r = c->markov_rank, j = a->j;
    const float *h = s->hidden + (size_t)j * D;
    if (j >= s->logits_ready) rest_logits_ops(d, s);
    be->copy(be, s->logits, s->base_logits + (size_t)j * V, sizeof(float) * (size_t)V);
    if (r > 0) {
        be->embed(be, s->w1x, &d->w1, a->prev_id, 1);
        const float *u = s->w1x; /* what W2 reads */
        if (c->markov_type == MARKOV_GATED) {
            be->gather_rows(be, s->cat, 0, h, 0, NULL, 1, D);
            be->gather_rows(be, s->cat + D, 0, s->w1x, 0, NULL, 1, r);
            be->matmul(be, s->pre, s->cat, &d->gate_w, 1);
            be->bias_act(be, s->pre, &d->gate_b, 1, r, ACT_SIGMOID);
            be->ew(be, EW_MUL, s->tmp, s->pre, s->w1x, NULL, (size_t)r);
            u = s->tmp;
        } else if (c->markov_type == MARKOV_RNN) {
            be->gather_rows(be, s->cat, 0, s->state, 0, NULL, 1, r);
            be->gather_rows(be, s->cat + r, 0, s->w1x, 0, NULL, 1, r);
            be->gather_rows(be, s->cat + 2 * r, 0, h, 0, NULL, 1, D);
            be->matmul(be, s->pre, s->cat, &d->joint_w, 1);
            be->bias_act(be, s->pre, &d->joint_b, 1, 3 * r, ACT_NONE);
            be->bias_act(be, s->pre, NULL, 1, r, ACT_SIGMOID);          /* g */
            be->bias_act(be, s->pre + r, NULL, 1, 2 * r, ACT_TANH);     /* tanh(cand), tanh(out) */
            be->ew(be, EW_LERP, s->state, s->state, s->pre + r, s->pre, (size_t)r);
            u = s->pre + 2 * r;
        }
        if (be->matmul_add) be->matmul_add(be, s->logits, u, &d->w2, 1, s->bias, NULL); /* (the add in the product's store) */
        else {
            be->matmul(be, s->bias, u, &d->w2, 1);
            be->add(be, s->logits, s->bias, (size_t)V);
        }
    }
    if (a->conf && c->enable_confidence_head) {
        int in = d->conf_w.cols;
        be->gather_rows(be, s->cat, 0, h, 0, NULL, 1, D);
        if (in > D) be->gather_rows(be, s->cat + D, 0, s->w1x, 0, NULL, 1, r);
        be->matmul(be, s->conf, s->cat, &d->conf_w, 1);
        be->bias_act(be, s->conf, &d->conf_b, 1, 1, ACT_NONE);
        if (a->conf_dev) be->copy(be, a->conf_dev, s->conf, sizeof(float));
    }
}

/* slot j as one step (its own graph key: each slot reads other rows, so has its own record) */
static void head_step(Drafter *d, DraftState *s, const HeadArgs *a) {
    draft_step(d, s, GRAPH_KEY_DRAFT + 1 + a->j, head_ops, a);
    if (a->j >= s->logits_ready) s->logits_ready = d->cfg.block_size;
}

ds_status drafter_head(Drafter *d, DraftState *s, int j, int32_t prev, float *confidence, char *err) {
    Backend *be = d->be;
    const DraftConfig *c = &d->cfg;
    const int V = c->base.vocab_size;
    if (j < 0 || j >= c->block_size) return ds_err(err, DS_EARG, "drafter: slot %d out of range", j);
    if (prev < 0 || prev >= V) return ds_err(err, DS_EARG, "drafter: previous token %d out of range", prev);
    if (c->markov_rank > 0) be->to_device(be, s->d_ids, &prev, sizeof(int32_t));
    const HeadArgs a = {j, s->d_ids, confidence != NULL, NULL};
    head_step(d, s, &a);
    if (confidence) {
        *confidence = 0.0f;
        if (c->enable_confidence_head) be->to_host(be, confidence, s->conf, sizeof(float));
    }
    if (!be->host_memory) be->to_host(be, s->logits_host, s->logits, sizeof(float) * (size_t)V);
    return DS_OK;
}

ds_status drafter_head_dev(Drafter *d, DraftState *s, int j, const int32_t *prev_dev, float *confidence_dev, char *err) {
    if (j < 0 || j >= d->cfg.block_size) return ds_err(err, DS_EARG, "drafter: slot %d out of range", j);
    const HeadArgs a = {j, prev_dev, confidence_dev != NULL, confidence_dev};
    head_step(d, s, &a);
    return DS_OK;
}
