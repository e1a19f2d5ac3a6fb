/* train_loss.h - DeepSpec's DSpark training loss (compute_dspark_loss, digest §5.5) and its
 * gradient with respect to the draft logits and the confidence logits.
 *
 * Per supervised slot i (= block n, slot k) with weight w_i = eval_mask[n,k] * exp(-k/gamma):
 *   ce_i   = -log softmax(z_i)[label_i]
 *   l1_i   = sum_v |q_v - p_v|,  q = softmax(z_i), p = softmax(target_i)   (full L1 = 2 TV)
 *   c*_i   = clamp(1 - l1_i/2, 0, 1)                                      (detached)
 *   bce_i  = BCEWithLogits(conf_i, c*_i)
 * total = a_ce*S(ce)/(D+1e-6) + a_tv*S(l1)/(D+1e-6) + a_conf*S(bce)/(D+1e-6), S(x) = sum w x,
 * D = sum w (one rank, world size 1). Terms with alpha 0 are skipped (as DeepSpec does). */
#ifndef DSPARK_TRAIN_LOSS_H
#define DSPARK_TRAIN_LOSS_H

#include <stdint.h>

typedef struct {
    float gamma;      /* loss_decay_gamma; <= 0: weights = eval mask */
    float ce_alpha, tv_alpha, conf_alpha;
} TrainLossCfg;

typedef struct {
    double total;
    double ce, l1, conf;   /* weight-normalised terms before the alphas */
    double den;            /* sum of weights */
} TrainLossParts;

/* Defaults of the DSpark configs: gamma 4, ce 0.1, tv 0.9, conf 1.0. */
TrainLossCfg train_loss_default(void);

/* n_blocks blocks of B slots, vocabulary V.
 * logits  [n_blocks*B, V] draft logits (Markov bias included)
 * target  [n_blocks*B, V] aligned target logits (frozen)
 * labels  [n_blocks*B]    ground-truth next tokens
 * eval_mask [n_blocks*B]  0/1 (already cumulative-product'ed)
 * conf    [n_blocks*B]    confidence logits, or NULL when there is no confidence head
 * d_logits [n_blocks*B, V] (out, may be NULL) dLoss/dlogits, overwritten
 * d_conf   [n_blocks*B]    (out, may be NULL) dLoss/dconf, overwritten
 * soft_label [n_blocks*B]  (out, may be NULL) c* per slot */
TrainLossParts train_loss(const TrainLossCfg *cfg, int n_blocks, int B, int V, const float *logits,
                          const float *target, const int32_t *labels, const float *eval_mask, const float *conf,
                          float *d_logits, float *d_conf, float *soft_label);

#endif
