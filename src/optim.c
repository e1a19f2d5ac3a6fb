/* optim.c - AdamW, clipping and the LR schedule (see optim.h). */
#include "optim.h"

#include <math.h>
#include <string.h>

AdamWCfg adamw_default(void) { return (AdamWCfg){0.9, 0.999, 1e-8, 0.0}; }

ds_status adamw_init(AdamW *o, const ParamSet *params, const ParamSet *grads, const AdamWCfg *cfg, char *err) {
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->n = grads->n;
    o->param_off = ds_calloc((size_t)(grads->n ? grads->n : 1), sizeof *o->param_off);
    if (!o->param_off) return ds_err(err, DS_ENOMEM, "adamw: out of memory");
    for (int i = 0; i < grads->n; i++) {
        const ParamInfo *g = &grads->info[i], *p = params_find(params, g->name);
        if (!p || p->numel != g->numel) {
            adamw_free(o);
            return ds_err(err, DS_EARG, "adamw: gradient '%s' has no parameter of the same size", g->name);
        }
        o->param_off[i] = p->trainable ? p->offset : (size_t)-1;
    }
    ds_status s = params_like(&o->m, grads, err);
    if (!s) s = params_like(&o->v, grads, err);
    if (s) adamw_free(o);
    return s;
}

void adamw_free(AdamW *o) {
    params_free(&o->m);
    params_free(&o->v);
    ds_free(o->param_off);
    memset(o, 0, sizeof *o);
}

void adamw_step(AdamW *o, ParamSet *params, const ParamSet *grads, double lr) {
    const AdamWCfg *c = &o->cfg;
    o->t++;
    double bc1 = 1.0 - pow(c->beta1, (double)o->t), bc2 = 1.0 - pow(c->beta2, (double)o->t);
    const float decay = (float)(1.0 - lr * c->weight_decay);
    const float w1 = (float)(1.0 - c->beta1), b2 = (float)c->beta2, w2 = (float)(1.0 - c->beta2);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)c->eps;
    for (int i = 0; i < grads->n; i++) {
        if (o->param_off[i] == (size_t)-1) continue;
        const ParamInfo *gi = &grads->info[i];
        float *p = params->data + o->param_off[i];
        const float *g = grads->data + gi->offset;
        float *m = o->m.data + gi->offset, *v = o->v.data + gi->offset;
        for (size_t j = 0; j < gi->numel; j++) {
            if (c->weight_decay != 0) p[j] *= decay;
            m[j] += (g[j] - m[j]) * w1;       /* lerp with weight < 0.5: self + w*(end - self) */
            v[j] = v[j] * b2 + w2 * g[j] * g[j];
            float denom = sqrtf(v[j]) / bc2_sqrt + eps;
            p[j] += -step_size * m[j] / denom; /* addcdiv_: self + value*t1/t2 */
        }
    }
}

double grad_global_norm(const ParamSet *grads) {
    double ss = 0;
    for (int i = 0; i < grads->n; i++) {
        const float *g = grads->data + grads->info[i].offset;
        for (size_t j = 0; j < grads->info[i].numel; j++) ss += (double)g[j] * g[j];
    }
    return sqrt(ss);
}

double grad_clip(ParamSet *grads, double max_norm) {
    double norm = grad_global_norm(grads);
    if (max_norm <= 0) return norm;
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        float f = (float)coef;
        for (int i = 0; i < grads->n; i++) {
            float *g = grads->data + grads->info[i].offset;
            for (size_t j = 0; j < grads->info[i].numel; j++) g[j] *= f;
        }
    }
    return norm;
}

double lr_schedule(double base, double warmup_ratio, int64_t T, int64_t s) {
    const double pi = 3.14159265358979323846;
    int64_t W = (int64_t)(warmup_ratio * (double)T);
    if (s <= W) return base * (double)s / (double)W;
    if (T <= W) return base;
    return base * (1.0 + cos(pi * (double)(s - W - 1) / (double)(T - W))) / 2.0;
}
