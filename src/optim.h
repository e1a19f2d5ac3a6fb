/* optim.h - DeepSpec's optimiser step (digest §5.7): torch.optim.AdamW on F32 master weights
 * with F32 moments, global-norm gradient clipping, and CosineAnnealingWarmupLR.
 *
 * Layouts: `params` holds every tensor of the model (frozen ones included, trainable flag set
 * per tensor); `grads` holds the trainable tensors (the same names and shapes; it may have the
 * same layout as params or only the trainable ones, as train_draft.h's grads do). The moments
 * have grads' layout. Tensors are matched by name once, at adamw_init.
 *
 * AdamW, as torch's single-tensor implementation with foreach/fused off (F32 tensors, Python
 * float scalars):
 *   p  *= 1 - lr*wd                                   (decoupled weight decay)
 *   m  += (g - m) * (1 - b1)                          (exp_avg.lerp_)
 *   v   = v*b2 + (1 - b2)*g*g                         (exp_avg_sq.mul_.addcmul_)
 *   bc1 = 1 - b1^t, bc2 = 1 - b2^t                    (double, t = 1-based step)
 *   p  -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)    (addcdiv_)
 * Scalars are computed in double (Python floats) and applied as float (torch's opmath for F32). */
#ifndef DSPARK_OPTIM_H
#define DSPARK_OPTIM_H

#include "params.h"

typedef struct {
    double beta1, beta2, eps, weight_decay;   /* torch defaults 0.9, 0.999, 1e-8; DeepSpec wd 0 */
} AdamWCfg;

AdamWCfg adamw_default(void);

typedef struct {
    AdamWCfg cfg;
    ParamSet m, v;          /* exp_avg, exp_avg_sq: grads' layout, zeroed at init */
    int64_t t;              /* optimizer steps taken (torch's state['step']) */
    size_t *param_off;      /* [grads.n] offset of each grad tensor in params */
    int n;
} AdamW;

/* Moments for grads' layout; every grad tensor must exist in params with the same shape. */
ds_status adamw_init(AdamW *o, const ParamSet *params, const ParamSet *grads, const AdamWCfg *cfg, char *err);
void adamw_free(AdamW *o);
/* One step at learning rate lr (o->t is incremented first, as torch does). Tensors of grads
 * whose params entry is frozen are skipped. */
void adamw_step(AdamW *o, ParamSet *params, const ParamSet *grads, double lr);

/* Global L2 norm over every tensor of grads (double accumulation). */
double grad_global_norm(const ParamSet *grads);
/* torch.nn.utils.clip_grad_norm_: coef = max_norm/(norm + 1e-6); when coef < 1 every gradient
 * is multiplied by (float)coef. Returns the norm before clipping. max_norm <= 0: no clipping. */
double grad_clip(ParamSet *grads, double max_norm);

/* DeepSpec's CosineAnnealingWarmupLR for 1-based optimizer step s of T (eta_min 0):
 *   W = int(warmup_ratio*T); s <= W: base*s/W; else base*(1 + cos(pi*(s-W-1)/(T-W)))/2. */
double lr_schedule(double base, double warmup_ratio, int64_t T, int64_t s);

#endif
