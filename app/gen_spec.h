/* gen_spec.h - the speculative half of `dspark generate` (and what `dspark eval` reuses):
 * run N samples of one prompt, plain or with a drafter, collect SpecStats, print the
 * end-of-run statistics. Kept apart from cmd_generate.c so the plain/text front end and the
 * speculative back end can evolve separately. */
#ifndef DSPARK_GEN_SPEC_H
#define DSPARK_GEN_SPEC_H

#include <stdio.h>

#include "spec.h"

typedef struct {
    SamplerParams sampler;
    uint64_t seed;
    int max_new;
    int num_samples;            /* sample i seeded with ds_hash64(seed, i) (i = 0 uses seed itself when N == 1) */
    float confidence_threshold; /* 0: verify the full block */
    VerifyLenPolicy policy;     /* when choose != NULL: the verification length (`--policy`), over the threshold */
    int32_t stop_ids[SPEC_MAX_STOP];
    int n_stop;
    /* called once per sample with its generated ids (NULL: nothing) */
    void (*on_sample)(void *user, int i, const int32_t *ids, int n);
    /* called for every token as it is committed (streaming); return false to stop */
    bool (*on_token)(void *user, int32_t token);
    void *user;
} GenSpecOptions;

/* Runs all samples through sd (its source decides plain vs speculative), accumulating into
 * *total. Sample i uses seed ds_hash64(seed, i), or seed itself when there is one sample (so
 * one plain sample reproduces plain `dspark generate --seed`). */
ds_status gen_spec_run(SpecDecoder *sd, const int32_t *prompt, int n_prompt, const GenSpecOptions *o, SpecStats *total, char *err);
/* rounds, tau, per-position acceptance (prefix survival and conditional), times, tokens/s */
void gen_spec_print_stats(FILE *f, const char *label, const SpecStats *s, int block);

#endif
