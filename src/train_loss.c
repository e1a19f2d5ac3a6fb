/* train_loss.c - see train_loss.h. Softmaxes and sums in double so that the loss and its
 * gradient are limited by the F32 inputs, not by accumulation over V. */
#include "train_loss.h"

#include <math.h>
#include <stddef.h>

#include "base.h"

TrainLossCfg train_loss_default(void) {
    TrainLossCfg c = {4.0f, 0.1f, 0.9f, 1.0f};
    return c;
}

/* softmax of x[V] into q[V] (double); returns log-sum-exp */
static double softmax_d(const float *x, int V, double *q) {
    double m = -INFINITY;
    for (int v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    double s = 0;
    for (int v = 0; v < V; v++) { q[v] = exp((double)x[v] - m); s += q[v]; }
    for (int v = 0; v < V; v++) q[v] /= s;
    return m + log(s);
}

TrainLossParts train_loss(const TrainLossCfg *cfg, int n_blocks, int B, int V, const float *logits,
                          const float *target, const int32_t *labels, const float *eval_mask, const float *conf,
                          float *d_logits, float *d_conf, float *soft_label) {
    TrainLossParts r = {0, 0, 0, 0, 0};
    int n = n_blocks * B;
    double *q = ds_malloc(sizeof(double) * (size_t)V * 2);
    double *p = q + V;
    double s_ce = 0, s_l1 = 0, s_bce = 0, den = 0;
    for (int i = 0; i < n; i++) {
        int k = i % B;
        double w = eval_mask[i] * (cfg->gamma > 0 ? exp(-(double)k / cfg->gamma) : 1.0);
        den += w;
    }
    double inv = 1.0 / (den + 1e-6);
    double a_ce = cfg->ce_alpha, a_l1 = cfg->tv_alpha, a_cf = conf ? cfg->conf_alpha : 0.0;
    for (int i = 0; i < n; i++) {
        int k = i % B;
        double w = eval_mask[i] * (cfg->gamma > 0 ? exp(-(double)k / cfg->gamma) : 1.0);
        const float *z = logits + (size_t)i * V;
        double lse = softmax_d(z, V, q);
        softmax_d(target + (size_t)i * V, V, p);
        int lab = labels[i];
        DS_ASSERT(lab >= 0 && lab < V);
        double ce = lse - z[lab];
        double l1 = 0, sq = 0; /* sq = sum_v sign(q_v - p_v) q_v */
        for (int v = 0; v < V; v++) {
            double d = q[v] - p[v];
            l1 += fabs(d);
            sq += (double)((d > 0) - (d < 0)) * q[v];
        }
        double cs = 1.0 - 0.5 * l1;
        cs = cs < 0 ? 0 : cs > 1 ? 1 : cs;
        if (soft_label) soft_label[i] = (float)cs;
        double bce = 0, sig = 0;
        if (conf) {
            double zc = conf[i];
            bce = (zc > 0 ? zc : 0) - zc * cs + log1p(exp(-fabs(zc)));
            sig = 1.0 / (1.0 + exp(-zc));
        }
        s_ce += w * ce; s_l1 += w * l1; s_bce += w * bce;
        if (d_logits) {
            /* d ce/dz = q - onehot; d l1/dz_j = q_j (s_j - sum_v s_v q_v), s = sign(q - p) */
            double gce = a_ce * w * inv, gl1 = a_l1 * w * inv;
            float *g = d_logits + (size_t)i * V;
            for (int v = 0; v < V; v++) {
                double d = q[v] - p[v];
                double s = (double)((d > 0) - (d < 0));
                g[v] = (float)(gce * (q[v] - (v == lab)) + gl1 * q[v] * (s - sq));
            }
        }
        if (d_conf) d_conf[i] = conf ? (float)(a_cf * w * inv * (sig - cs)) : 0.0f;
    }
    ds_free(q);
    r.den = den;
    r.ce = s_ce * inv; r.l1 = s_l1 * inv; r.conf = conf ? s_bce * inv : 0.0;
    r.total = a_ce * r.ce + (a_l1 != 0 ? a_l1 * r.l1 : 0.0) + a_cf * r.conf;
    return r;
}
