/* engine.c - continuous batching (see engine.h). */
#include "engine.h"

#include <errno.h>
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
    int T = cfg->max_batch_tokens;
    ds_status rc = qwen3_state_init(&e->st, m, T, cfg->n_slots, 0, cfg->n_slots, cfg->max_ctx, err);
    if (rc) return rc;
    e->slots = ds_calloc((size_t)cfg->n_slots, sizeof(EngineRequest *));
    e->b_tokens = ds_malloc(sizeof(int32_t) * T);
    e->b_pos = ds_malloc(sizeof(int32_t) * T);
    e->b_slot = ds_malloc(sizeof(int32_t) * T);
    e->b_rows = ds_malloc(sizeof(int32_t) * T);
    e->b_row_req = ds_malloc(sizeof(EngineRequest *) * T);
    e->probs = ds_malloc(sizeof(float) * m->cfg.vocab_size);
    if (!e->slots || !e->b_tokens || !e->b_pos || !e->b_slot || !e->b_rows || !e->b_row_req || !e->probs ||
        sample_scratch_init(&e->scratch, m->cfg.vocab_size, err)) {
        engine_free(e);
        return ds_err(err, DS_ENOMEM, "engine: out of memory");
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
    sample_scratch_free(&e->scratch);
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
    r->n_prefilled = r->n_generated = 0;
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
    while (cancelled) {
        EngineRequest *r = cancelled;
        cancelled = r->next;
        finish(e, r, FINISH_CANCELLED);
    }
}

int engine_step(Engine *e, char *err) {
    admit(e);
    const int T = e->cfg.max_batch_tokens, V = e->model->cfg.vocab_size;
    int n = 0, n_rows = 0, n_decode = 0;
    /* decoding requests first (one token each: latency), then prompt chunks in slot order */
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < e->cfg.n_slots && n < T; s++) {
            EngineRequest *r = e->slots[s];
            if (!r) continue;
            if (pass == 0 && __atomic_load_n(&r->cancel, __ATOMIC_SEQ_CST)) { finish(e, r, FINISH_CANCELLED); continue; }
            bool decoding = r->n_prefilled == r->n_prompt;
            if (pass == 0 && decoding) {
                e->b_tokens[n] = r->pending;
                e->b_pos[n] = r->n_prompt + r->n_generated - 1;
                e->b_slot[n] = s;
                e->b_rows[n_rows] = n;
                e->b_row_req[n_rows++] = r;
                n++;
                n_decode++;
            } else if (pass == 1 && !decoding) {
                int k = r->n_prompt - r->n_prefilled;
                if (k > T - n) k = T - n;
                for (int i = 0; i < k; i++) {
                    e->b_tokens[n + i] = r->prompt[r->n_prefilled + i];
                    e->b_pos[n + i] = r->n_prefilled + i;
                    e->b_slot[n + i] = s;
                }
                r->n_prefilled += k;
                n += k;
                if (r->n_prefilled == r->n_prompt) {
                    e->b_rows[n_rows] = n - 1;
                    e->b_row_req[n_rows++] = r;
                }
            }
        }
    }
    if (n == 0) return 0;
    double t0 = ds_now();
    Qwen3Batch b = {.n = n, .tokens = e->b_tokens, .pos = e->b_pos, .slot = e->b_slot, .logit_rows = e->b_rows, .n_logits = n_rows};
    ds_status rc = qwen3_forward(e->model, &e->st, &b, err);
    if (rc) {
        /* a forward failure fails the requests in this batch, not the engine */
        for (int s = 0; s < e->cfg.n_slots; s++) if (e->slots[s]) finish(e, e->slots[s], FINISH_ERROR);
        return -1;
    }
    for (int i = 0; i < n_rows; i++) {
        EngineRequest *r = e->b_row_req[i];
        sample_dist(&r->sampler, e->st.logits_host + (size_t)i * V, V, e->probs, &e->scratch);
        int32_t tok = sample_from(e->probs, V, rng_uniform(&r->rng));
        r->pending = tok;
        r->n_generated++;
        if (r->n_generated == 1) r->t_first_token = ds_now();
        bool stop = false;
        for (int k = 0; k < r->n_stop; k++) stop |= r->stop_ids[k] == tok;
        bool keep = r->on_token ? r->on_token(r->user, tok, stop) : true;
        if (stop) finish(e, r, FINISH_STOP);
        else if (!keep) finish(e, r, FINISH_CANCELLED);
        else if (r->n_generated >= r->max_new) finish(e, r, FINISH_LENGTH);
    }
    pthread_mutex_lock(&e->lock);
    e->stats.tokens_generated += (uint64_t)n_rows;
    e->stats.rounds += (uint64_t)n_rows;
    e->stats.prompt_tokens += (uint64_t)(n - n_decode);
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
