/* spec.c - see spec.h. */
#include "spec.h"

#include <math.h>
#include <string.h>

int spec_len_confidence_threshold(void *ctx, const float *confidence, int n) {
    float t = *(const float *)ctx;
    if (t <= 0) return n;
    for (int j = 0; j < n; j++)
        if (1.0f / (1.0f + expf(-confidence[j])) < t) return j;
    return n;
}

void spec_stats_add(SpecStats *a, const SpecStats *s) {
    a->rounds += s->rounds;
    a->generated += s->generated;
    a->proposed += s->proposed;
    a->drafted += s->drafted;
    a->accepted += s->accepted;
    a->tau_sum += s->tau_sum;
    for (int j = 0; j < SPEC_MAX_BLOCK; j++) { 
        a->accepted_at[j] += s->accepted_at[j];
        a->proposed_at[j] += s->proposed_at[j];
        a->reached_at[j] += s->reached_at[j];
    }
    a->prefill_s += s->prefill_s;
    a->draft_s += s->draft_s;
    a->verify_s += s->verify_s;
    a->total_s += s->total_s;
}

ds_status spec_init(SpecDecoder *s, Qwen3Model *target, ProposalSource *src, int max_ctx, int chunk, char *err) {
    memset(s, 0, sizeof *s);
    s->target = target;
    s->src = src;
    s->max_ctx = max_ctx;
    s->block = src ? src->block_size : 0;
    if (s->block > SPEC_MAX_BLOCK) return ds_err(err, DS_EARG, "block size %d exceeds %d", s->block, SPEC_MAX_BLOCK);
    if (chunk < s->block + 1) chunk = s->block + 1;
    s->chunk = chunk;
    int V = target->cfg.vocab_size, B = s->block > 0 ? s->block : 1;
    int nf = src ? src->n_feature_layers : 0;
    ds_status rc = qwen3_state_init(&s->st, target, chunk, s->block + 1, nf, 1, max_ctx, err);
    if (rc) return rc;
    if ((rc = sample_scratch_init(&s->scratch, V, err))) { spec_free(s); return rc; }
    s->tokens = ds_malloc(sizeof(int32_t) * ((size_t)max_ctx + SPEC_MAX_BLOCK + 1)); /* the last token is never fed */
    s->pos = ds_malloc(sizeof(int32_t) * (size_t)chunk);
    s->rows = ds_malloc(sizeof(int32_t) * (size_t)chunk);
    s->q = ds_malloc(sizeof(float) * (size_t)B * V);
    s->q_ratio = ds_malloc(sizeof(float) * (size_t)B * V);
    s->pt = ds_malloc(sizeof(float) * (size_t)(B + 1) * V);
    s->resid = ds_malloc(sizeof(float) * (size_t)V);
    if (!s->tokens || !s->pos || !s->rows || !s->q || !s->q_ratio || !s->pt || !s->resid) {
        spec_free(s);
        return ds_err(err, DS_ENOMEM, "out of memory for the speculative decoder");
    }
    Backend *be = target->be;
    if (be->sample_probs && be->draw && be->verify && be->sample_ws_bytes) {
        s->dev = true;
        s->d_q = be->alloc(be, sizeof(float) * (size_t)B * V);
        s->d_q_ratio = be->alloc(be, sizeof(float) * (size_t)B * V);
        s->d_pt = be->alloc(be, sizeof(float) * (size_t)(B + 1) * V);
        s->d_logits = be->alloc(be, sizeof(float) * (size_t)V);
        s->d_ws = be->alloc(be, be->sample_ws_bytes(be, B + 1, V));
        s->d_tok = be->alloc(be, sizeof(int32_t) * (size_t)(B + 1));
        s->d_res = be->alloc(be, sizeof(int32_t) * (size_t)(B + 2));
        s->d_conf = be->alloc(be, sizeof(float) * (size_t)B);
        if (!s->d_q || !s->d_q_ratio || !s->d_pt || !s->d_logits || !s->d_ws || !s->d_tok || !s->d_res || !s->d_conf) {
            spec_free(s);
            return ds_err(err, DS_ENOMEM, "out of device memory for the speculative decoder's sampling buffers");
        }
    }
    return DS_OK;
}

void spec_free(SpecDecoder *s) {
    if (s->target && s->st.x) qwen3_state_free(&s->st, s->target);
    sample_scratch_free(&s->scratch);
    ds_free(s->tokens); ds_free(s->pos); ds_free(s->rows);
    ds_free(s->q); ds_free(s->q_ratio); ds_free(s->pt); ds_free(s->resid);
    if (s->target) {
        Backend *be = s->target->be;
        void *dev[] = {s->d_q, s->d_q_ratio, s->d_pt, s->d_logits, s->d_ws, s->d_tok, s->d_res, s->d_conf};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) if (dev[i]) be->free(be, dev[i]);
    }
    memset(s, 0, sizeof *s);
}

static bool is_stop(const SpecParams *p, int32_t t) {
    for (int i = 0; i < p->n_stop; i++) if (p->stop_ids[i] == t) return true;
    return false;
}

/* Test-only broken verifier: the distribution DeepSpec's bf16 path would give, softmax of
 * bf16(bf16(logits) / T) with bf16 outputs, where the token was drawn from float32 q. */
static void bf16_dist(const SamplerParams *sp, const float *logits, int V, float *out, float *tmp, SampleScratch *sc) {
    for (int i = 0; i < V; i++) {
        float l = ds_bf16_to_f32(ds_f32_to_bf16(logits[i]));
        tmp[i] = ds_bf16_to_f32(ds_f32_to_bf16(l / sp->temperature)) * sp->temperature;
    }
    sample_dist(sp, tmp, V, out, sc);
    for (int i = 0; i < V; i++) out[i] = ds_bf16_to_f32(ds_f32_to_bf16(out[i]));
}

/* ---- device path (backend.h's sampling ops) ---- */

static void dev_probs(SpecDecoder *s, const SamplerParams *sp, float *probs, const float *logits, int n) {
    Backend *be = s->target->be;
    be->sample_probs(be, probs, logits, n, s->target->cfg.vocab_size, sp->temperature, sp->top_k, sp->top_p, s->d_ws);
}

/* Draft *avail slots on the device: slot j's logits -> q_j (s->d_q) -> draft j drawn into
 * s->d_tok[1 + j], which the next slot reads as its previous token. Confidences are read back
 * only when the policy or on_round wants them (per slot for a causal policy, else once). */
static ds_status draft_dev(SpecDecoder *s, const SpecParams *p, Rng *rng, int32_t anchor, int *avail, char *err) {
    ProposalSource *src = s->src;
    Backend *be = s->target->be;
    const int V = s->target->cfg.vocab_size;
    const bool greedy = sampler_is_greedy(&p->sampler), causal = p->policy.choose && p->policy.causal;
    const bool want_conf = p->policy.choose || p->on_round;
    ds_status rc;
    for (int j = 0; j < *avail; j++) {
        const float *logits;
        if (src->slot_dev) {
            if ((rc = src->slot_dev(src->self, j, s->d_tok + j, &logits, s->d_conf + j, err))) return rc;
            if (causal) be->to_host(be, &s->conf[j], s->d_conf + j, sizeof(float));
        } else { /* a host source: its logits go up, the drafted token comes back */
            const int32_t prev = j > 0 ? s->drafts[j - 1] : anchor;
            const float *hl;
            if ((rc = src->slot(src->self, j, prev, &hl, &s->conf[j], err))) return rc;
            be->to_device(be, s->d_logits, hl, sizeof(float) * (size_t)V);
            logits = s->d_logits;
        }
        float *qj = s->d_q + (size_t)j * V;
        dev_probs(s, &p->sampler, qj, logits, 1);
        if (p->bug == VERIFY_BUG_RATIO_Q && !greedy) { /* test only: through the host */
            be->to_host(be, s->pt, logits, sizeof(float) * (size_t)V);
            bf16_dist(&p->sampler, s->pt, V, s->q_ratio, s->resid, &s->scratch);
            be->to_device(be, s->d_q_ratio + (size_t)j * V, s->q_ratio, sizeof(float) * (size_t)V);
        }
        be->draw(be, s->d_tok + 1 + j, qj, V, greedy ? 0.5 : rng_uniform(rng));
        if (!src->slot_dev) be->to_host(be, &s->drafts[j], s->d_tok + 1 + j, sizeof(int32_t));
        if (causal && j + 1 < *avail && p->policy.choose(p->policy.ctx, s->conf, j + 1) < j + 1) {
            *avail = j + 1; /* causal early stop: later slots would not be verified */
            break;
        }
    }
    if (src->slot_dev && want_conf && !causal && *avail > 0) be->to_host(be, s->conf, s->d_conf, sizeof(float) * (size_t)*avail);
    return DS_OK;
}

ds_status spec_generate(SpecDecoder *s, const int32_t *prompt, int n_prompt, const SpecParams *p, int32_t *out, int *n_out,
                        SpecStats *stats, char *err) {
    Qwen3Model *m = s->target;
    Backend *be = m->be;
    ProposalSource *src = s->src;
    const int V = m->cfg.vocab_size;
    const bool greedy = sampler_is_greedy(&p->sampler);
    ds_status rc;
    double t_all = ds_now();
    memset(stats, 0, sizeof *stats);
    *n_out = 0;
    if ((rc = sampler_params_check(&p->sampler, err))) return rc;
    if (n_prompt < 1) return ds_err(err, DS_EARG, "the prompt is empty");
    if (n_prompt >= s->max_ctx) return ds_err(err, DS_EARG, "prompt of %d tokens does not fit the context (%d)", n_prompt, s->max_ctx);
    if (p->max_new < 1) return DS_OK;
    Rng rng;
    rng_seed(&rng, p->seed, 0);
    memcpy(s->tokens, prompt, sizeof(int32_t) * (size_t)n_prompt);
    const int *fl = src ? src->feature_layers : NULL;
    const int nfl = src ? src->n_feature_layers : 0;
    if (src) src->reset(src->self);

    /* ---- prefill, in chunks; the drafter gets the prompt's features ---- */
    double t0 = ds_now();
    for (int done = 0; done < n_prompt;) {
        int k = n_prompt - done < s->chunk ? n_prompt - done : s->chunk;
        for (int i = 0; i < k; i++) s->pos[i] = done + i;
        int32_t last = k - 1;
        bool final = done + k == n_prompt;
        Qwen3Batch b = {.n = k, .tokens = s->tokens + done, .pos = s->pos, .logit_rows = &last, .n_logits = final ? 1 : 0,
                        .feature_layers = fl, .n_feature_layers = nfl, .logits_on_device = s->dev};
        if ((rc = qwen3_forward(m, &s->st, &b, err))) return rc;
        if (src && (rc = src->context(src->self, s->st.features, k, done, err))) return rc;
        done += k;
    }
    int32_t t;
    if (s->dev) {
        dev_probs(s, &p->sampler, s->d_pt, s->st.logits, 1);
        be->draw(be, s->d_res, s->d_pt, V, greedy ? 0.5 : rng_uniform(&rng));
        be->to_host(be, &t, s->d_res, sizeof(int32_t));
    } else {
        sample_dist(&p->sampler, s->st.logits_host, V, s->pt, &s->scratch);
        t = greedy ? argmax_f32(s->pt, V) : sample_from(s->pt, V, rng_uniform(&rng));
    }
    stats->prefill_s = ds_now() - t0;
    int n = n_prompt; /* committed tokens */
    s->tokens[n++] = t;
    out[(*n_out)++] = t;
    bool done = is_stop(p, t) || (p->on_token && !p->on_token(p->user, t));
    stats->stopped = is_stop(p, t);

    /* ---- rounds ---- */
    while (!done && *n_out < p->max_new) {
        const int start = n - 1; /* the anchor: committed, not yet in the target cache */
        if (start >= s->max_ctx) break; /* the context is full */
        int L = 0, avail = 0;
        t0 = ds_now();
        if (s->dev) be->to_device(be, s->d_tok, &s->tokens[start], sizeof(int32_t)); /* the anchor: slot 0's previous token */
        if (src) {
            if ((rc = src->begin(src->self, s->tokens, start, &avail, err))) return rc;
            if (avail > s->block) avail = s->block;
            if (s->dev && (rc = draft_dev(s, p, &rng, s->tokens[start], &avail, err))) return rc;
            int32_t prev = s->tokens[start];
            for (int j = 0; j < avail && !s->dev; j++) {
                const float *logits;
                if ((rc = src->slot(src->self, j, prev, &logits, &s->conf[j], err))) return rc;
                float *qj = s->q + (size_t)j * V;
                sample_dist(&p->sampler, logits, V, qj, &s->scratch);
                if (p->bug == VERIFY_BUG_RATIO_Q && !greedy)
                    bf16_dist(&p->sampler, logits, V, s->q_ratio + (size_t)j * V, s->resid, &s->scratch);
                prev = greedy ? argmax_f32(qj, V) : sample_from(qj, V, rng_uniform(&rng));
                s->drafts[j] = prev;
                if (p->policy.choose && p->policy.causal && j + 1 < avail && p->policy.choose(p->policy.ctx, s->conf, j + 1) < j + 1) {
                    avail = j + 1; /* causal early stop: later slots would not be verified */
                    break;
                }
            }
            stats->drafted += avail;
            L = p->policy.choose ? p->policy.choose(p->policy.ctx, s->conf, avail) : avail;
            if (L < 0) L = 0;
            if (L > avail) L = avail;
        }
        /* a round yields at most L+1 tokens; never verify past the budget or the context */
        if (L > p->max_new - *n_out - 1) L = p->max_new - *n_out - 1;
        if (L > s->max_ctx - 1 - start) L = s->max_ctx - 1 - start;
        double t1 = ds_now();
        stats->draft_s += t1 - t0;
        if (L < 0) break; /* the anchor itself does not fit: context full */
        for (int i = 0; i <= L; i++) {
            s->pos[i] = start + i;
            s->rows[i] = i;
        }
        VerifyResult vr;
        if (s->dev) {
            /* verify input [anchor, d_0..d_{L-1}] as drawn (s->d_tok); the host reads the result once */
            Qwen3Batch b = {.n = L + 1, .pos = s->pos, .logit_rows = s->rows, .n_logits = L + 1, .feature_layers = fl,
                            .n_feature_layers = nfl, .dev_tokens = s->d_tok, .logits_on_device = true};
            if ((rc = qwen3_forward(m, &s->st, &b, err))) return rc;
            dev_probs(s, &p->sampler, s->d_pt, s->st.logits, L + 1);
            double u[SPEC_MAX_BLOCK + 1]; /* verify_block's uniforms, consumed after the read */
            verify_peek_uniforms(&rng, L, greedy, u);
            be->verify(be, s->d_res, s->d_pt, s->d_q, s->d_tok + 1, L, V, greedy, u, (int)p->bug, s->d_q_ratio);
            be->to_host(be, s->res, s->d_res, sizeof(int32_t) * (size_t)(L + 2));
            vr.n_accepted = s->res[0];
            vr.next = s->res[1];
            DS_ASSERT(vr.n_accepted >= 0 && vr.n_accepted <= L && vr.next >= 0 && vr.next < V);
            for (int j = 0; j < L; j++) s->drafts[j] = s->res[2 + j];
            verify_consume_uniforms(&rng, L, greedy, vr.n_accepted);
        } else {
            /* verify input [anchor, d_0..d_{L-1}]: drafts go in tokens past n, uncommitted */
            for (int j = 0; j < L; j++) s->tokens[start + 1 + j] = s->drafts[j];
            Qwen3Batch b = {.n = L + 1, .tokens = s->tokens + start, .pos = s->pos, .logit_rows = s->rows, .n_logits = L + 1,
                            .feature_layers = fl, .n_feature_layers = nfl};
            if ((rc = qwen3_forward(m, &s->st, &b, err))) return rc;
            for (int j = 0; j <= L; j++) sample_dist(&p->sampler, s->st.logits_host + (size_t)j * V, V, s->pt + (size_t)j * V, &s->scratch);
            vr = verify_block(s->pt, s->q, s->drafts, L, V, greedy, &rng, s->resid, p->bug, s->q_ratio);
        }
        /* commit: accepted drafts (an accepted stop token ends generation there), then the
         * correction / bonus token; the target cache is rolled back by simply continuing at
         * position start + a + 1 (entries past it are overwritten next round) */
        int a = vr.n_accepted, tau = 0;
        if (p->on_round) p->on_round(p->user, s->conf, avail, L, a);
        stats->rounds++;
        stats->proposed += L;
        for (int j = 0; j < L && j < SPEC_MAX_BLOCK; j++) {
            stats->proposed_at[j]++;
            if (j <= a) stats->reached_at[j]++;
        }
        for (int j = 0; j < a && !done; j++) {
            int32_t x = s->drafts[j];
            s->tokens[n++] = x;
            out[(*n_out)++] = x;
            tau++;
            stats->accepted++;
            stats->accepted_at[j]++;
            if (is_stop(p, x)) { done = true; stats->stopped = true; }
            if (p->on_token && !p->on_token(p->user, x)) done = true;
        }
        if (!done) {
            s->tokens[n++] = vr.next;
            out[(*n_out)++] = vr.next;
            tau++;
            if (is_stop(p, vr.next)) { done = true; stats->stopped = true; }
            if (p->on_token && !p->on_token(p->user, vr.next)) done = true;
        }
        stats->tau_sum += tau;
        /* the drafter's context grows by the anchor and the accepted drafts */
        if (!done && src && (rc = src->context(src->self, s->st.features, a + 1, start, err))) return rc;
        stats->verify_s += ds_now() - t1;
    }
    stats->generated = *n_out;
    stats->total_s = ds_now() - t_all;
    return DS_OK;
}

/* ---- drafter source ---- */

static void ds_reset(void *self) {
    DrafterSource *ds = self;
    draft_state_reset(&ds->s);
    ds->broken = false;
}

static ds_status ds_context(void *self, const float *features, int n, int pos0, char *err) {
    DrafterSource *ds = self;
    if (ds->broken) return DS_OK;
    /* the draft cache must hold the context and one block after it; past that the request
     * continues as plain decoding (still exact) */
    if (pos0 + n + ds->d->cfg.block_size > ds->s.max_ctx || pos0 != ds->s.cache_len) {
        ds->broken = true;
        return DS_OK;
    }
    return drafter_append_context(ds->d, &ds->s, features, n, pos0, err);
}

static ds_status ds_begin(void *self, const int32_t *tokens, int start, int *n_slots, char *err) {
    DrafterSource *ds = self;
    *n_slots = 0;
    if (ds->broken || ds->s.cache_len != start || start + ds->d->cfg.block_size > ds->s.max_ctx) return DS_OK;
    ds_status rc = drafter_block(ds->d, &ds->s, tokens[start], start, err);
    if (rc) return rc;
    *n_slots = ds->d->cfg.block_size;
    return DS_OK;
}

static ds_status ds_slot(void *self, int j, int32_t prev, const float **logits, float *confidence, char *err) {
    DrafterSource *ds = self;
    ds_status rc = drafter_head(ds->d, &ds->s, j, prev, confidence, err);
    *logits = ds->s.logits_host;
    return rc;
}

static ds_status ds_slot_dev(void *self, int j, const int32_t *prev_dev, const float **logits_dev, float *conf_dev, char *err) {
    DrafterSource *ds = self;
    ds_status rc = drafter_head_dev(ds->d, &ds->s, j, prev_dev, conf_dev, err);
    *logits_dev = ds->s.logits;
    return rc;
}

ds_status spec_drafter_source_init(DrafterSource *ds, Drafter *d, int max_ctx, int chunk, char *err) {
    memset(ds, 0, sizeof *ds);
    ds->d = d;
    ds_status rc = draft_state_init(&ds->s, d, max_ctx, chunk, err);
    if (rc) return rc;
    ds->src = (ProposalSource){.block_size = d->cfg.block_size, .feature_layers = d->cfg.target_layer_ids,
                               .n_feature_layers = d->cfg.n_target_layers, .self = ds, .reset = ds_reset,
                               .context = ds_context, .begin = ds_begin, .slot = ds_slot,
                               .slot_dev = ds_slot_dev};
    return DS_OK;
}

void spec_drafter_source_free(DrafterSource *ds) {
    if (ds->d) draft_state_free(&ds->s, ds->d);
    memset(ds, 0, sizeof *ds);
}
