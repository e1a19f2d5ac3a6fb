/* train_loop.c - see train_loop.h. */
#include "train_loop.h"

#include <string.h>

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int64_t train_total_steps(const TrainLoopCfg *c) {
    if (c->max_steps > 0) return c->max_steps;
    return (int64_t)c->epochs * (c->n_samples / c->global_batch);
}

int64_t train_sample_at(const TrainLoopCfg *c, int64_t pos, int64_t *perm, int64_t *perm_epoch) {
    int64_t per_epoch = c->n_samples / c->global_batch * c->global_batch;
    if (per_epoch <= 0) per_epoch = c->n_samples; /* fewer samples than one batch (max_steps runs) */
    int64_t e = pos / per_epoch;
    if (e != *perm_epoch) {
        uint64_t s = c->seed + (uint64_t)e;
        for (int64_t i = 0; i < c->n_samples; i++) perm[i] = i;
        for (int64_t i = c->n_samples - 1; i > 0; i--) {
            int64_t j = (int64_t)(splitmix64(&s) % (uint64_t)(i + 1));
            int64_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        }
        *perm_epoch = e;
    }
    return perm[pos % per_epoch];
}

static uint64_t loop_hash(const TrainLoopCfg *c) {
    uint64_t h = ckpt_hash_bytes(CKPT_HASH_INIT, &c->extra_hash, sizeof c->extra_hash);
    int64_t ints[] = {c->n_samples, c->global_batch, c->epochs, c->max_steps, (int64_t)c->seed};
    double reals[] = {c->lr, c->warmup_ratio, c->max_grad_norm, c->adam.beta1, c->adam.beta2, c->adam.eps, c->adam.weight_decay};
    h = ckpt_hash_bytes(h, ints, sizeof ints);
    return ckpt_hash_bytes(h, reals, sizeof reals);
}

ds_status train_loop_run(const TrainLoopCfg *c, ParamSet *params, ParamSet *grads, bool resume, int64_t *resumed_from,
                         char *warn, char *err) {
    warn[0] = 0;
    if (resumed_from) *resumed_from = 0;
    if (c->n_samples <= 0 || c->global_batch <= 0) return ds_err(err, DS_EARG, "train: no samples or a global batch of 0");
    int64_t T = train_total_steps(c);
    if (T <= 0)
        return ds_err(err, DS_EARG, "train: %lld samples make no step of global batch %d (lower global_batch or set max_steps)",
                      (long long)c->n_samples, c->global_batch);
    AdamW opt;
    ds_status s = adamw_init(&opt, params, grads, &c->adam, err);
    if (s) return s;
    TrainState st = {.config_hash = loop_hash(c), .rng = c->seed ^ 0x5851f42d4c957f2dull};
    if (resume) {
        char step_dir[4096], why[DS_ERR_LEN];
        if (ckpt_find(c->out_dir, step_dir, sizeof step_dir, warn, why) == DS_OK) {
            TrainState got;
            if ((s = ckpt_load(step_dir, &got, params, &opt, err))) goto done;
            json_decref(got.extra);
            if (got.config_hash != st.config_hash) {
                s = ds_err(err, DS_EARG, "%s: written by a run with other settings (config hash differs); use another --out", step_dir);
                goto done;
            }
            st = got;
            st.extra = NULL;
            if (resumed_from) *resumed_from = st.step;
        }
    }
    int64_t *perm = ds_malloc(sizeof *perm * (size_t)c->n_samples), perm_epoch = -1;
    if (!perm) { s = ds_err(err, DS_ENOMEM, "train: out of memory"); goto done; }
    const float scale = 1.0f / (float)c->global_batch;
    while (st.step < T) {
        double t0 = ds_now();
        TrainStepLog log = {.step = st.step + 1, .total_steps = T, .samples = c->global_batch};
        params_zero(grads);
        for (int b = 0; b < c->global_batch; b++) {
            int64_t idx = train_sample_at(c, st.samples + b, perm, &perm_epoch);
            TrainSampleStats one = {0};
            if ((s = c->sample_fn(c->model_ctx, idx, params, grads, scale, &st.rng, &one, err))) break;
            log.sum.loss += one.loss; log.sum.ce += one.ce; log.sum.l1 += one.l1; log.sum.conf += one.conf;
            log.sum.tau_sum += one.tau_sum; log.sum.tau_blocks += one.tau_blocks; log.sum.tokens += one.tokens;
        }
        if (s) break;
        log.grad_norm = grad_clip(grads, c->max_grad_norm);
        log.lr = lr_schedule(c->lr, c->warmup_ratio, T, log.step);
        adamw_step(&opt, params, grads, log.lr);
        st.step++;
        st.samples += c->global_batch;
        bool stop = c->stop_after > 0 && st.step >= c->stop_after;
        if ((c->ckpt_every > 0 && st.step % c->ckpt_every == 0) || st.step == T || stop) {
            if ((s = ckpt_save(c->out_dir, &st, params, &opt, c->write_config, c->config_ctx, c->keep_last, err))) break;
            log.checkpointed = true;
        }
        log.seconds = ds_now() - t0;
        if (c->on_step) c->on_step(c->log_ctx, &log);
        if (stop) break;
    }
    ds_free(perm);
done:
    adamw_free(&opt);
    return s;
}
