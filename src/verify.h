/* verify.h - exact verification of a drafted block (speculative sampling, Leviathan et al.
 * 2023 / Chen et al. 2023; DeepSpec verify_draft_tokens, digest §3.2).
 *
 * Inputs are DISTRIBUTIONS, already transformed by sample_dist() with the same sampler
 * parameters for the target and the drafter (temperature, top-k, top-p identical on both):
 *   pt [k+1][V]  target distribution at the anchor and after each draft
 *   q  [k][V]    the float32 draft distribution each draft token was DRAWN from
 * Draft j is accepted with probability min(1, pt_j(x)/q_j(x)) (one uniform per tested draft);
 * at the first rejection the next token is drawn from normalize(max(0, pt_j - q_j)), or from
 * pt_j when that residual mass is <= 1e-8 (DeepSpec's fallback); when all k are accepted the
 * bonus token is drawn from pt_k. Greedy (temperature 0): accept while the draft equals the
 * target argmax, the next token is the target argmax; no random numbers are used.
 * The output distribution is then exactly the target's. Allocates nothing. */
#ifndef DSPARK_VERIFY_H
#define DSPARK_VERIFY_H

#include "sample.h"

/* Deliberately broken verifiers, for tests that must prove their statistical power only. */
typedef enum {
    VERIFY_EXACT = 0,
    VERIFY_BUG_RATIO_Q,      /* the ratio uses q_ratio (e.g. bf16 draft probabilities), not the q drawn from */
    VERIFY_BUG_RESIDUAL_PT,  /* on rejection the next token is drawn from pt instead of the residual */
} VerifyBug;

typedef struct {
    int n_accepted;   /* a in [0, k] */
    int32_t next;     /* correction token (a < k) or bonus token (a == k) */
} VerifyResult;

/* resid: [V] scratch. q_ratio: only read by VERIFY_BUG_RATIO_Q (NULL otherwise). */
VerifyResult verify_block(const float *pt, const float *q, const int32_t *drafts, int k, int V, bool greedy, Rng *rng,
                          float *resid, VerifyBug bug, const float *q_ratio);

/* For a verifier that takes its uniforms up front (the GPU's backend verify op): u[0..L] are
 * the uniforms verify_block would draw, in its order, peeked from a copy of rng (none when
 * greedy); after the result is known, verify_consume advances rng by exactly as many as
 * verify_block used (a + 2 on a rejection at a < L, L + 1 when all L are accepted), so the
 * stream continues as on the host path. */
void verify_peek_uniforms(const Rng *rng, int L, bool greedy, double *u);
void verify_consume_uniforms(Rng *rng, int L, bool greedy, int n_accepted);

#endif
