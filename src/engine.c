/* engine.c - continuous batching (see engine.h). */
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *finish_reason_name(FinishReason r) {
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_ERROR: return "error";
    default: return "none";
    }
}

ds_status engine_init(Engine *e, Qwen3Model *m, const EngineConfig *cfg, char *err) {
    memset(e, 0, sizeof *e);
    e->model = m;
    e->cfg = *cfg;
    if (cfg->n_slots < 1 || cfg->max_ctx < 2 || cfg->max_batch_tokens < cfg->n_slots)
        return ds_err(err, DS_EARG, "engine: need n_slots >= 1, max_ctx >= 2, max_batch_tokens >= n_slots");
    const int *fl = NULL;
    if (cfg->sources) {
        ProposalSource *s0 = cfg->sources[0];
        e->block = s0->block_size < SPEC_MAX_BLOCK ? s0->block_size : SPEC_MAX_BLOCK;
        e->n_features = s0->n_feature_layers;
        fl = s0->feature_layers;
        for (int i = 1; i < cfg->n_slots; i++)
            if (cfg->sources[i]->block_size != s0->block_size || cfg->sources[i]->n_feature_layers != s0->n_feature_layers)
                return ds_err(err, DS_EARG, "engine: proposal sources differ in block size or feature layers");
    }
    (void)fl;
    int T = cfg->max_batch_tokens, V = m->cfg.vocab_size, S = cfg->n_slots, B = e->block;
    ds_status rc = qwen3_state_init(&e->st, m, T, T, e->n_features, S, cfg->max_ctx, err);
    if (rc) return rc;
    e->slots = ds_calloc((size_t)S, sizeof(EngineRequest *));
    e->b_tokens = ds_malloc(sizeof(int32_t) * T);
    e->b_pos = ds_malloc(sizeof(int32_t) * T);
    e->b_slot = ds_malloc(sizeof(int32_t) * T);
    e->b_rows = ds_malloc(sizeof(int32_t) * T);
    e->b_row_req = ds_malloc(sizeof(EngineRequest *) * T);
    e->probs = ds_malloc(sizeof(float) * V);
    e->slot_tokens = ds_malloc(sizeof(int32_t) * (size_t)S * (cfg->max_ctx + B + 1));
    e->slot_q = ds_malloc(sizeof(float) * (size_t)S * (B ? B : 1) * V);
    e->slot_drafts = ds_malloc(sizeof(int32_t) * (size_t)S * (B + 1));
    e->slot_conf = ds_malloc(sizeof(float) * (size_t)S * (B + 1));
    e->slot_avail = ds_calloc((size_t)S, sizeof(int));
    e->slot_len = ds_calloc((size_t)S, sizeof(int));
    e->slot_row0 = ds_calloc((size_t)S, sizeof(int));
    e->slot_prefill_row0 = ds_calloc((size_t)S, sizeof(int));
    e->slot_prefill_n = ds_calloc((size_t)S, sizeof(int));
    e->slot_prefill_pos = ds_calloc((size_t)S, sizeof(int));
    e->slot_src_broken = ds_calloc((size_t)S, sizeof(bool));
    e->conf_ptrs = ds_calloc((size_t)S, sizeof(float *));
    e->pt = ds_malloc(sizeof(float) * (size_t)(B + 1) * V);
    e->resid = ds_malloc(sizeof(float) * V);
    e->slot_gain = ds_calloc((size_t)S, sizeof(float));
    e->slot_vlen = ds_calloc((size_t)S, sizeof(float));
    e->surv_tmp = ds_calloc((size_t)B + 1, sizeof(float));
    e->slot_bypass_run = ds_calloc((size_t)S, sizeof(int));
    if (cfg->calib) e->calib = *cfg->calib; else calib_identity(&e->calib);
    if (e->cfg.bypass_probe_every <= 0) e->cfg.bypass_probe_every = 8;
    if (!e->slots || !e->b_tokens || !e->b_pos || !e->b_slot || !e->b_rows || !e->b_row_req || !e->probs || !e->slot_tokens ||
        !e->slot_q || !e->slot_drafts || !e->slot_conf || !e->slot_avail || !e->slot_len || !e->slot_row0 || !e->slot_prefill_row0 ||
        !e->slot_prefill_n || !e->slot_prefill_pos || !e->slot_src_broken || !e->conf_ptrs || !e->pt || !e->resid ||
        !e->slot_gain || !e->slot_vlen || !e->surv_tmp || !e->slot_bypass_run || sample_scratch_init(&e->scratch, V, err)) {
        engine_free(e);
        return ds_err(err, DS_ENOMEM, "engine: out of memory");
    }
    Backend *be = m->be;
    const char *hs = getenv("DSPARK_ENGINE_HOST_SAMPLING");
    bool host = cfg->host_sampling || (hs && strcmp(hs, "1") == 0);
    if (!host && be->sample_probs && be->draw && be->verify && be->sample_ws_bytes) {
        const int B1 = B + 1, SB = S * (B ? B : 1);
        e->dev = true;
        e->d_q = be->alloc(be, sizeof(float) * (size_t)SB * V);
        e->d_pt = be->alloc(be, sizeof(float) * (size_t)B1 * V);
        e->d_logits = be->alloc(be, sizeof(float) * (size_t)V);
        e->d_ws = be->alloc(be, be->sample_ws_bytes(be, B1, V));
        e->d_tok = be->alloc(be, sizeof(int32_t) * (size_t)S * B1);
        e->d_conf = be->alloc(be, sizeof(float) * (size_t)S * B1);
        e->d_btok = be->alloc(be, sizeof(int32_t) * (size_t)T);
        e->d_res = be->alloc(be, sizeof(int32_t) * (size_t)S * (B + 3));
        e->h_conf = ds_calloc((size_t)S * B1, sizeof(float));
        e->h_res = ds_calloc((size_t)S * (B + 3), sizeof(int32_t));
        e->slot_first = ds_calloc((size_t)S, sizeof(bool));
        if (!e->d_q || !e->d_pt || !e->d_logits || !e->d_ws || !e->d_tok || !e->d_conf || !e->d_btok || !e->d_res || !e->h_conf ||
            !e->h_res || !e->slot_first) {
            engine_free(e);
            return ds_err(err, DS_ENOMEM, "engine: out of memory for the device sampling buffers");
        }
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    return DS_OK;
}

void engine_free(Engine *e) {
    if (e->model && e->st.x) qwen3_state_free(&e->st, e->model);
    ds_free(e->slots);
    ds_free(e->b_tokens); ds_free(e->b_pos); ds_free(e->b_slot); ds_free(e->b_rows); ds_free(e->b_row_req);
    ds_free(e->probs);
    ds_free(e->slot_tokens); ds_free(e->slot_q); ds_free(e->slot_drafts); ds_free(e->slot_conf); ds_free(e->slot_avail);
    ds_free(e->slot_len); ds_free(e->slot_row0); ds_free(e->slot_prefill_row0); ds_free(e->slot_prefill_n);
    ds_free(e->slot_prefill_pos); ds_free(e->slot_src_broken); ds_free(e->conf_ptrs); ds_free(e->pt); ds_free(e->resid);
    ds_free(e->slot_gain); ds_free(e->slot_vlen); ds_free(e->surv_tmp); ds_free(e->slot_bypass_run);
    sample_scratch_free(&e->scratch);
    if (e->model) {
        Backend *be = e->model->be;
        void *dev[] = {e->d_q, e->d_pt, e->d_logits, e->d_ws, e->d_tok, e->d_conf, e->d_btok, e->d_res};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) if (dev[i]) be->free(be, dev[i]);
    }
    ds_free(e->h_conf); ds_free(e->h_res); ds_free(e->slot_first);
    if (e->model) { pthread_mutex_destroy(&e->lock); pthread_cond_destroy(&e->wake); }
    memset(e, 0, sizeof *e);
}

ds_status engine_submit(Engine *e, EngineRequest *r, char *err) {
    const Qwen3Config *c = &e->model->cfg;
    if (r->n_prompt < 1) return ds_err(err, DS_EARG, "the prompt is empty");
    if (r->n_prompt >= e->cfg.max_ctx)
        return ds_err(err, DS_EARG, "prompt of %d tokens does not fit the context (%d)", r->n_prompt, e->cfg.max_ctx);
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= c->vocab_size)
            return ds_err(err, DS_EARG, "prompt token %d out of range [0, %d)", r->prompt[i], c->vocab_size);
    if (r->max_new < 1) return ds_err(err, DS_EARG, "max_tokens must be >= 1");
    if (r->max_new > e->cfg.max_ctx - r->n_prompt) r->max_new = e->cfg.max_ctx - r->n_prompt;
    ds_status rc = sampler_params_check(&r->sampler, err);
    if (rc) return rc;
    r->slot = -1;
    r->n_prefilled = r->n_generated = r->n_committed = 0;
    r->pending = -1;
    r->cancel = 0;
    r->next = NULL;
    r->t_submit = ds_now();
    r->t_first_token = 0;
    rng_seed(&r->rng, r->seed, 0);
    pthread_mutex_lock(&e->lock);
    if (e->wait_tail) e->wait_tail->next = r; else e->wait_head = r;
    e->wait_tail = r;
    e->stats.waiting++;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    return DS_OK;
}

void engine_cancel(Engine *e, EngineRequest *r) {
    (void)e;
    __atomic_store_n(&r->cancel, 1, __ATOMIC_SEQ_CST);
}

void engine_cancel_all(Engine *e) {
    for (int s = 0; s < e->cfg.n_slots; s++)
        if (e->slots[s]) __atomic_store_n(&e->slots[s]->cancel, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&e->lock);
    for (EngineRequest *r = e->wait_head; r; r = r->next) __atomic_store_n(&r->cancel, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&e->lock);
}

static void finish(Engine *e, EngineRequest *r, FinishReason why) {
    bool was_active = r->slot >= 0;
    if (was_active) e->slots[r->slot] = NULL;
    r->slot = -1;
    pthread_mutex_lock(&e->lock);
    e->stats.requests_finished++;
    if (was_active) e->stats.active--;
    pthread_mutex_unlock(&e->lock);
    if (r->on_finish) r->on_finish(r->user, why);
}

/* Move waiting requests into free slots (FIFO); finish cancelled waiting ones. */
static void admit(Engine *e) {
    EngineRequest *cancelled = NULL;
    pthread_mutex_lock(&e->lock);
    for (int s = 0; s < e->cfg.n_slots && e->wait_head; s++) {
        if (e->slots[s]) continue;
        EngineRequest *r = e->wait_head;
        e->wait_head = r->next;
        if (!e->wait_head) e->wait_tail = NULL;
        e->stats.waiting--;
        if (__atomic_load_n(&r->cancel, __ATOMIC_SEQ_CST)) { r->next = cancelled; cancelled = r; s--; continue; }
        r->slot = s;
        e->slots[s] = r;
        e->stats.active++;
    }
    pthread_mutex_unlock(&e->lock);
    for (int s = 0; s < e->cfg.n_slots; s++) {
        EngineRequest *r = e->slots[s];
        if (!r || r->n_committed) continue; /* newly admitted: n_committed is 0 until now */
        memcpy(e->slot_tokens + (size_t)s * (e->cfg.max_ctx + e->block + 1), r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
        r->n_committed = r->n_prompt;
        e->slot_src_broken[s] = false;
        e->slot_gain[s] = e->slot_vlen[s] = (float)e->block; /* optimistic until measured: a new request drafts */
        e->slot_bypass_run[s] = 0;
        if (e->cfg.sources) e->cfg.sources[s]->reset(e->cfg.sources[s]->self);
    }
    while (cancelled) {
        EngineRequest *r = cancelled;
        cancelled = r->next;
        finish(e, r, FINISH_CANCELLED);
    }
}

static bool is_stop(const EngineRequest *r, int32_t t) {
    for (int k = 0; k < r->n_stop; k++) if (r->stop_ids[k] == t) return true;
    return false;
}

/* Commit one token to r; returns false when r finished (and was retired). */
static bool commit(Engine *e, EngineRequest *r, int32_t tok) {
    int s = r->slot;
    e->slot_tokens[(size_t)s * (e->cfg.max_ctx + e->block + 1) + r->n_committed++] = tok;
    r->pending = tok;
    r->n_generated++;
    if (r->n_generated == 1) r->t_first_token = ds_now();
    bool stop = is_stop(r, tok);
    bool keep = r->on_token ? r->on_token(r->user, tok, stop) : true;
    if (stop) finish(e, r, FINISH_STOP);
    else if (!keep) finish(e, r, FINISH_CANCELLED);
    else if (r->n_generated >= r->max_new || r->n_committed >= e->cfg.max_ctx) finish(e, r, FINISH_LENGTH);
    else return true;
    return false;
}

/* Commits a verified round of request r in slot s: the accepted drafts, then the correction
 * or bonus token, until one ends the request; the drafter's context then grows by the anchor
 * and the accepted drafts (features of the round's rows). Returns the tokens committed. */
static uint64_t commit_round(Engine *e, EngineRequest *r, int s, const VerifyResult *vr, const int32_t *drafts, int feat_stride,
                             char *err) {
    const int start = r->n_committed - 1, row0 = e->slot_row0[s];
    uint64_t committed = 0;
    bool alive = true;
    for (int j = 0; j < vr->n_accepted && alive; j++) { alive = commit(e, r, drafts[j]); committed++; }
    if (alive) { alive = commit(e, r, vr->next); committed++; }
    if (alive && e->cfg.sources && !e->slot_src_broken[s]) {
        ProposalSource *src = e->cfg.sources[s];
        if (src->context(src->self, e->st.features + (size_t)row0 * feat_stride, vr->n_accepted + 1, start, err))
            e->slot_src_broken[s] = true;
    }
    return committed;
}

/* The start of a draft: the source's block for request r in slot s, *avail slots (at most
 * the engine's block; 0 once the source has broken off for this request). */
static ds_status draft_begin(Engine *e, EngineRequest *r, int s, int *avail, char *err) {
    ProposalSource *src = e->cfg.sources[s];
    const int32_t *tokens = e->slot_tokens + (size_t)s * (e->cfg.max_ctx + e->block + 1);
    *avail = 0;
    e->slot_avail[s] = 0;
    if (e->slot_src_broken[s]) return DS_OK;
    ds_status rc = src->begin(src->self, tokens, r->n_committed - 1, avail, err);
    if (rc) return rc;
    if (*avail > e->block) *avail = e->block;
    return DS_OK;
}

/* Draft a block for decoding request r in slot s (same RNG order as spec_generate). */
static ds_status draft(Engine *e, EngineRequest *r, int s, char *err) {
    const int V = e->model->cfg.vocab_size;
    ProposalSource *src = e->cfg.sources[s];
    int32_t *tokens = e->slot_tokens + (size_t)s * (e->cfg.max_ctx + e->block + 1);
    const int start = r->n_committed - 1;
    int avail;
    ds_status rc = draft_begin(e, r, s, &avail, err);
    if (rc) return rc;
    bool greedy = sampler_is_greedy(&r->sampler);
    int32_t prev = tokens[start];
    for (int j = 0; j < avail; j++) {
        const float *logits;
        if ((rc = src->slot(src->self, j, prev, &logits, &e->slot_conf[(size_t)s * (e->block + 1) + j], err))) return rc;
        float *qj = e->slot_q + ((size_t)s * e->block + j) * V;
        sample_dist(&r->sampler, logits, V, qj, &e->scratch);
        prev = greedy ? argmax_f32(qj, V) : sample_from(qj, V, rng_uniform(&r->rng));
        e->slot_drafts[(size_t)s * (e->block + 1) + j] = prev;
    }
    e->slot_avail[s] = avail;
    return DS_OK;
}

/* draft() on the device path (spec.c's draft_dev): slot j's logits -> q_j (d_q) -> draft j
 * drawn into d_tok[s][1 + j], which the next slot reads as its previous token. A host
 * source's logits go up and each drawn token comes back (its next slot needs it); a device
 * source's confidences stay in d_conf until engine_step reads them (when it needs them). */
static ds_status draft_dev(Engine *e, EngineRequest *r, int s, char *err) {
    Backend *be = e->model->be;
    const int V = e->model->cfg.vocab_size, B1 = e->block + 1;
    const SamplerParams *sp = &r->sampler;
    ProposalSource *src = e->cfg.sources[s];
    int32_t *tokens = e->slot_tokens + (size_t)s * (e->cfg.max_ctx + e->block + 1), *dt = e->d_tok + (size_t)s * B1;
    const int start = r->n_committed - 1;
    int avail;
    ds_status rc = draft_begin(e, r, s, &avail, err);
    if (rc) return rc;
    bool greedy = sampler_is_greedy(sp);
    if (avail > 0) be->to_device(be, dt, &tokens[start], sizeof(int32_t)); /* the anchor: slot 0's previous token */
    for (int j = 0; j < avail; j++) {
        const float *logits;
        if (src->slot_dev) {
            if ((rc = src->slot_dev(src->self, j, dt + j, &logits, e->d_conf + (size_t)s * B1 + j, err))) return rc;
        } else {
            const int32_t prev = j ? e->slot_drafts[(size_t)s * B1 + j - 1] : tokens[start];
            const float *hl;
            if ((rc = src->slot(src->self, j, prev, &hl, &e->slot_conf[(size_t)s * B1 + j], err))) return rc;
            be->to_device(be, e->d_logits, hl, sizeof(float) * (size_t)V);
            logits = e->d_logits;
        }
        float *qj = e->d_q + ((size_t)s * e->block + j) * V;
        be->sample_probs(be, qj, logits, 1, V, sp->temperature, sp->top_k, sp->top_p, e->d_ws);
        be->draw(be, dt + 1 + j, qj, V, greedy ? 0.5 : rng_uniform(&r->rng));
        if (!src->slot_dev) be->to_host(be, &e->slot_drafts[(size_t)s * B1 + j], dt + 1 + j, sizeof(int32_t));
    }
    e->slot_avail[s] = avail;
    return DS_OK;
}

/* Draft bypass: is request s's expected gain worth less than drafting it (engine.h)? */
static bool bypass_round(Engine *e, int s, double t_plain, double t_verify) {
    if (!(e->cfg.bypass_draft_s > 0) || !e->cfg.sps.at || e->slot_src_broken[s]) return false;
    if (e->slot_bypass_run[s] >= e->cfg.bypass_probe_every) return false; /* re-probe */
    return e->slot_gain[s] * t_plain < e->cfg.bypass_draft_s + e->slot_vlen[s] * t_verify;
}

/* forward seconds per plain-decoded token and per extra verified token, from the profile */
static void bypass_prices(const Engine *e, int n_dec, double *t_plain, double *t_verify) {
    *t_plain = *t_verify = 0;
    if (!(e->cfg.bypass_draft_s > 0) || !e->cfg.sps.at || n_dec < 1) return;
    double base = 1.0 / e->cfg.sps.at(e->cfg.sps.ctx, n_dec), span = (double)n_dec * (e->block > 0 ? e->block : 1);
    *t_plain = base / n_dec;
    *t_verify = (1.0 / e->cfg.sps.at(e->cfg.sps.ctx, n_dec + (int)span) - base) / span;
    if (*t_verify < 0) *t_verify = 0;
}

int engine_step(Engine *e, char *err) {
    Backend *be = e->model->be;
    admit(e);
    const int T = e->cfg.max_batch_tokens, V = e->model->cfg.vocab_size, S = e->cfg.n_slots;
    const int stride = e->cfg.max_ctx + e->block + 1, feat_stride = e->n_features * e->model->cfg.hidden_size;
    int n = 0, n_rows = 0, n_decode = 0, n_prefill_tok = 0;
    for (int s = 0; s < S; s++) {
        EngineRequest *r = e->slots[s];
        if (r && __atomic_load_n(&r->cancel, __ATOMIC_SEQ_CST)) finish(e, r, FINISH_CANCELLED);
    }
    /* 1. drafts for every decoding request, then the verification lengths */
    int n_req = 0, req_slot[1024], req_avail[1024], req_len[1024];
    uint64_t bypassed = 0;
    double t_plain = 0, t_verify = 0;
    if (e->cfg.sources && e->cfg.bypass_draft_s > 0) {
        int n_dec = 0;
        for (int s = 0; s < S; s++) n_dec += e->slots[s] && e->slots[s]->n_prefilled == e->slots[s]->n_prompt;
        bypass_prices(e, n_dec, &t_plain, &t_verify);
    }
    for (int s = 0; s < S; s++) {
        EngineRequest *r = e->slots[s];
        e->slot_len[s] = -1; /* not verified this step */
        if (!r || r->n_prefilled < r->n_prompt) continue;
        if (e->cfg.sources && bypass_round(e, s, t_plain, t_verify)) {
            e->slot_avail[s] = 0; /* plain decoding step: exact, and the anchor still feeds the drafter */
            e->slot_bypass_run[s]++;
            bypassed++;
        } else if (e->cfg.sources && (e->dev ? draft_dev(e, r, s, err) : draft(e, r, s, err))) {
            /* a failing drafter must not fail the request: continue it without drafts */
            e->slot_src_broken[s] = true;
            e->slot_avail[s] = 0;
        }
        if (n_req < 1024) {
            req_slot[n_req] = s;
            req_avail[n_req] = e->cfg.sources ? e->slot_avail[s] : 0;
            e->conf_ptrs[n_req] = e->slot_conf + (size_t)s * (e->block + 1);
            n_req++;
        }
    }
    /* device path: the confidences of device sources' slots, in one read, when the scheduler
     * or the bypass's gain uses them (else the gain is not updated: only the bypass reads it) */
    const bool dev_conf = e->dev && e->cfg.sources && (e->cfg.sched.choose || e->cfg.bypass_draft_s > 0);
    if (dev_conf) {
        bool any = false;
        for (int i = 0; i < n_req; i++) any |= req_avail[i] > 0 && e->cfg.sources[req_slot[i]]->slot_dev;
        if (any) {
            const size_t B1 = (size_t)e->block + 1;
            be->to_host(be, e->h_conf, e->d_conf, sizeof(float) * (size_t)S * B1);
            for (int i = 0; i < n_req; i++) {
                int s = req_slot[i];
                if (req_avail[i] > 0 && e->cfg.sources[s]->slot_dev)
                    memcpy(e->slot_conf + s * B1, e->h_conf + s * B1, sizeof(float) * (size_t)req_avail[i]);
            }
        }
    }
    for (int i = 0; i < n_req; i++) req_len[i] = req_avail[i];
    if (n_req && e->cfg.sched.choose) e->cfg.sched.choose(e->cfg.sched.ctx, n_req, e->conf_ptrs, req_avail, req_len);
    /* 2. the batch: each decoding request's [anchor, drafts...], then prompt chunks */
    for (int i = 0; i < n_req && n < T; i++) {
        int s = req_slot[i];
        EngineRequest *r = e->slots[s];
        int L = req_len[i] < 0 ? 0 : req_len[i] > req_avail[i] ? req_avail[i] : req_len[i];
        /* never verify past the budget, the context or the step's token budget */
        if (L > r->max_new - r->n_generated - 1) L = r->max_new - r->n_generated - 1;
        if (L > e->cfg.max_ctx - r->n_committed) L = e->cfg.max_ctx - r->n_committed;
        if (L > T - n - 1) L = T - n - 1;
        if (L < 0) L = 0;
        if (req_avail[i] > 0 && (!e->dev || dev_conf || !e->cfg.sources[s]->slot_dev)) {
            /* drafted: update the expected gain from the verified slots' survivals */
            calib_survival(&e->calib, e->conf_ptrs[i], L, e->surv_tmp);
            float g = 0;
            for (int j = 0; j < L; j++) g += e->surv_tmp[j];
            e->slot_gain[s] = 0.7f * e->slot_gain[s] + 0.3f * g;
            e->slot_vlen[s] = 0.7f * e->slot_vlen[s] + 0.3f * (float)L;
            e->slot_bypass_run[s] = 0;
        }
        const int start = r->n_committed - 1;
        const int32_t *tokens = e->slot_tokens + (size_t)s * stride;
        e->slot_len[s] = L;
        e->slot_row0[s] = n;
        for (int j = 0; j <= L; j++) {
            /* device path: the drafts are copied from d_tok below (a placeholder here) */
            e->b_tokens[n + j] = j ? (e->dev ? 0 : e->slot_drafts[(size_t)s * (e->block + 1) + j - 1]) : tokens[start];
            e->b_pos[n + j] = start + j;
            e->b_slot[n + j] = s;
            e->b_rows[n_rows] = n + j;
            e->b_row_req[n_rows++] = r;
        }
        n += L + 1;
        n_decode += L + 1;
    }
    for (int s = 0; s < S && n < T; s++) {
        EngineRequest *r = e->slots[s];
        e->slot_prefill_n[s] = 0;
        if (!r || r->n_prefilled == r->n_prompt) continue;
        int k = r->n_prompt - r->n_prefilled;
        if (k > T - n) k = T - n;
        for (int i = 0; i < k; i++) {
            e->b_tokens[n + i] = r->prompt[r->n_prefilled + i];
            e->b_pos[n + i] = r->n_prefilled + i;
            e->b_slot[n + i] = s;
        }
        e->slot_prefill_row0[s] = n;
        e->slot_prefill_n[s] = k;
        e->slot_prefill_pos[s] = r->n_prefilled;
        r->n_prefilled += k;
        n += k;
        n_prefill_tok += k;
        if (r->n_prefilled == r->n_prompt) {
            e->b_rows[n_rows] = n - 1;
            e->b_row_req[n_rows++] = r;
        }
    }
    if (n == 0) return 0;
    double t0 = ds_now();
    Qwen3Batch b = {.n = n, .tokens = e->b_tokens, .pos = e->b_pos, .slot = e->b_slot, .logit_rows = e->b_rows, .n_logits = n_rows,
                    .feature_layers = e->cfg.sources ? e->cfg.sources[0]->feature_layers : NULL, .n_feature_layers = e->n_features};
    if (e->dev) { /* the batch's tokens in backend memory: anchors and prompts from the host, drafts from d_tok */
        be->to_device(be, e->d_btok, e->b_tokens, sizeof(int32_t) * (size_t)n);
        for (int i = 0; i < n_req; i++) {
            int s = req_slot[i], L = e->slot_len[s];
            if (L > 0) be->copy(be, e->d_btok + e->slot_row0[s] + 1, e->d_tok + (size_t)s * (e->block + 1) + 1, sizeof(int32_t) * (size_t)L);
        }
        b.dev_tokens = e->d_btok;
        b.logits_on_device = true;
    }
    ds_status rc = qwen3_forward(e->model, &e->st, &b, err);
    if (rc) {
        /* a forward failure fails the requests in this batch, not the engine */
        for (int s = 0; s < S; s++) if (e->slots[s]) finish(e, e->slots[s], FINISH_ERROR);
        return -1;
    }
    /* 3. prompt chunks: their features feed the drafters; a finished prompt samples token 1 */
    uint64_t committed = 0, rounds = 0, drafts_verified = 0;
    int row = n_decode; /* logit rows: decode rows first, in batch order */
    bool launched = false; /* device path: results to read */
    for (int s = 0; s < S; s++) {
        EngineRequest *r = e->slots[s];
        if (e->dev) e->slot_first[s] = false;
        if (!r || !e->slot_prefill_n[s]) continue;
        if (e->cfg.sources && !e->slot_src_broken[s]) {
            ProposalSource *src = e->cfg.sources[s];
            if (src->context(src->self, e->st.features + (size_t)e->slot_prefill_row0[s] * feat_stride, e->slot_prefill_n[s],
                             e->slot_prefill_pos[s], err))
                e->slot_src_broken[s] = true;
        }
        if (r->n_prefilled == r->n_prompt && e->dev) { /* drawn on the device, committed after the step's one read */
            const SamplerParams *sp = &r->sampler;
            be->sample_probs(be, e->d_pt, e->st.logits + (size_t)row * V, 1, V, sp->temperature, sp->top_k, sp->top_p, e->d_ws);
            be->draw(be, e->d_res + (size_t)S * (e->block + 2) + s, e->d_pt, V, sampler_is_greedy(sp) ? 0.5 : rng_uniform(&r->rng));
            e->slot_first[s] = true;
            row++;
            launched = true;
        } else if (r->n_prefilled == r->n_prompt) {
            sample_dist(&r->sampler, e->st.logits_host + (size_t)row * V, V, e->probs, &e->scratch);
            int32_t tok = sampler_is_greedy(&r->sampler) ? argmax_f32(e->probs, V) : sample_from(e->probs, V, rng_uniform(&r->rng));
            row++;
            committed++;
            commit(e, r, tok);
        }
    }
    /* 4. verification of every decoding request */
    if (e->dev) { /* device path: launch every request's verification, read all results at once, then commit */
        const int R = e->block + 2;
        row = 0;
        for (int i = 0; i < n_req; i++) {
            int s = req_slot[i];
            EngineRequest *r = e->slots[s];
            if (!r) continue;
            int L = e->slot_len[s];
            if (L < 0) continue;
            const SamplerParams *sp = &r->sampler;
            const bool greedy = sampler_is_greedy(sp);
            be->sample_probs(be, e->d_pt, e->st.logits + (size_t)row * V, L + 1, V, sp->temperature, sp->top_k, sp->top_p, e->d_ws);
            double u[SPEC_MAX_BLOCK + 1]; /* verify_block's uniforms, consumed after the read */
            verify_peek_uniforms(&r->rng, L, greedy, u);
            be->verify(be, e->d_res + (size_t)s * R, e->d_pt, e->d_q + (size_t)s * (e->block ? e->block : 1) * V,
                       e->d_tok + (size_t)s * (e->block + 1) + 1, L, V, greedy, u, VERIFY_EXACT, NULL);
            row += L + 1;
            launched = true;
        }
        if (launched) be->to_host(be, e->h_res, e->d_res, sizeof(int32_t) * (size_t)S * (e->block + 3));
        for (int s = 0; s < S; s++) { /* step 3's first tokens, in its order */
            EngineRequest *r = e->slots[s];
            if (!r || !e->slot_first[s]) continue;
            int32_t tok = e->h_res[(size_t)S * R + s];
            DS_ASSERT(tok >= 0 && tok < V);
            committed++;
            commit(e, r, tok);
        }
        for (int i = 0; i < n_req; i++) {
            int s = req_slot[i];
            EngineRequest *r = e->slots[s];
            if (!r) continue;
            int L = e->slot_len[s];
            if (L < 0) continue;
            const int32_t *res = e->h_res + (size_t)s * R, *drafts = res + 2;
            VerifyResult vr = {res[0], res[1]};
            DS_ASSERT(vr.n_accepted >= 0 && vr.n_accepted <= L && vr.next >= 0 && vr.next < V);
            verify_consume_uniforms(&r->rng, L, sampler_is_greedy(&r->sampler), vr.n_accepted);
            committed += commit_round(e, r, s, &vr, drafts, feat_stride, err);
            rounds++;
            drafts_verified += (uint64_t)L;
        }
        n_req = 0; /* the host loop below has nothing left */
    }
    row = 0;
    for (int i = 0; i < n_req; i++) {
        int s = req_slot[i];
        EngineRequest *r = e->slots[s];
        if (!r) continue;
        int L = e->slot_len[s];
        if (L < 0) continue; /* left out of this step by the token budget: drafts again next step */
        for (int j = 0; j <= L; j++) sample_dist(&r->sampler, e->st.logits_host + (size_t)(row + j) * V, V, e->pt + (size_t)j * V, &e->scratch);
        const int32_t *drafts = e->slot_drafts + (size_t)s * (e->block + 1);
        VerifyResult vr = verify_block(e->pt, e->slot_q + (size_t)s * e->block * V, drafts, L, V, sampler_is_greedy(&r->sampler),
                                       &r->rng, e->resid, VERIFY_EXACT, NULL);
        committed += commit_round(e, r, s, &vr, drafts, feat_stride, err);
        rounds++;
        drafts_verified += (uint64_t)L;
        row += L + 1;
    }
    pthread_mutex_lock(&e->lock);
    e->stats.tokens_generated += committed;
    e->stats.rounds += rounds;
    e->stats.drafts_verified += drafts_verified;
    e->stats.rounds_bypassed += bypassed;
    e->stats.prompt_tokens += (uint64_t)n_prefill_tok;
    e->stats.steps++;
    e->stats.step_seconds_total += ds_now() - t0;
    pthread_mutex_unlock(&e->lock);
    return n_rows > 0 ? n_rows : 1;
}

void engine_wait_work(Engine *e, double timeout_s) {
    bool active = false; /* slots are only touched by the stepping thread, which is the caller */
    for (int s = 0; s < e->cfg.n_slots; s++) active |= e->slots[s] != NULL;
    pthread_mutex_lock(&e->lock);
    if (!active && !e->wait_head && !e->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (long)(timeout_s * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&e->wake, &e->lock, &ts);
    }
    pthread_mutex_unlock(&e->lock);
}

EngineStats engine_stats(Engine *e) {
    pthread_mutex_lock(&e->lock);
    EngineStats s = e->stats;
    pthread_mutex_unlock(&e->lock);
    return s;
}
