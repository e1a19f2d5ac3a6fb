/* sample.h - token sampling: temperature, top-k, top-p, greedy, and a seeded counter-based
 * RNG so every run reproduces.
 *
 * sample_dist() turns logits into the exact float32 distribution that is sampled from. The
 * speculative verifier calls the SAME function for the target and the drafter, so
 * temperature / top-k / top-p are applied identically to both (issue 3: exactness). Order as
 * transformers' warpers: temperature, then top-k, then top-p. Temperature < 1e-5 = greedy
 * (a one-hot at the argmax, lowest index on ties). */
#ifndef DSPARK_SAMPLE_H
#define DSPARK_SAMPLE_H

#include "base.h"

typedef struct {
    float temperature;  /* 0 = greedy */
    int top_k;          /* 0 = off */
    float top_p;        /* 1 = off */
} SamplerParams;

/* splitmix64-based generator; a stream is (seed, stream id). */
typedef struct { uint64_t state; } Rng;
void rng_seed(Rng *r, uint64_t seed, uint64_t stream);
uint64_t rng_next(Rng *r);
double rng_uniform(Rng *r);          /* [0, 1), 53 bits */
uint64_t ds_hash64(uint64_t a, uint64_t b);

static inline bool sampler_is_greedy(const SamplerParams *p) { return p->temperature < 1e-5f; }

/* Scratch for sample_dist: vocab-sized buffers, so sampling allocates nothing per token. */
typedef struct {
    int32_t *idx;
    float *vals;
    int vocab;
} SampleScratch;
ds_status sample_scratch_init(SampleScratch *s, int vocab, char *err);
void sample_scratch_free(SampleScratch *s);

/* probs[V] = the sampling distribution of logits[V] (zeros outside top-k/top-p). */
void sample_dist(const SamplerParams *p, const float *logits, int vocab, float *probs, SampleScratch *scratch);
/* Inverse CDF over probs in index order with uniform u in [0,1); never returns a zero-prob id. */
int32_t sample_from(const float *probs, int vocab, double u);
int32_t argmax_f32(const float *x, int n);

/* ParseSamplerParams ranges: temperature [0, 100], top_k >= 0, top_p (0, 1]. */
ds_status sampler_params_check(const SamplerParams *p, char *err);

#endif
