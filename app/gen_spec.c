/* gen_spec.c - see gen_spec.h. */
#include "gen_spec.h"

#include <string.h>

uint64_t gen_spec_sample_seed(uint64_t seed, int i, int n);
uint64_t gen_spec_sample_seed(uint64_t seed, int i, int n) { return n == 1 ? seed : ds_hash64(seed, (uint64_t)i); }

ds_status gen_spec_run(SpecDecoder *sd, const int32_t *prompt, int n_prompt, const GenSpecOptions *o, SpecStats *total, char *err) {
    int32_t *buf = ds_malloc(sizeof(int32_t) * (size_t)(o->max_new > 0 ? o->max_new : 1));
    if (!buf) return ds_err(err, DS_ENOMEM, "out of memory");
    float thr = o->confidence_threshold;
    for (int i = 0; i < o->num_samples; i++) {
        SpecParams p = {.sampler = o->sampler, .seed = gen_spec_sample_seed(o->seed, i, o->num_samples), .max_new = o->max_new};
        memcpy(p.stop_ids, o->stop_ids, sizeof p.stop_ids);
        p.n_stop = o->n_stop;
        p.on_token = o->on_token;
        p.user = o->user;
        if (thr > 0) p.policy = (VerifyLenPolicy){spec_len_confidence_threshold, &thr, true};
        if (o->policy.choose) p.policy = o->policy;
        int n = 0;
        SpecStats st;
        ds_status rc = spec_generate(sd, prompt, n_prompt, &p, buf, &n, &st, err);
        if (rc) { ds_free(buf); return rc; }
        spec_stats_add(total, &st);
        if (o->on_sample) o->on_sample(o->user, i, buf, n);
    }
    ds_free(buf);
    return DS_OK;
}

void gen_spec_print_stats(FILE *f, const char *label, const SpecStats *s, int block) {
    double tps = s->total_s > 0 ? s->generated / s->total_s : 0;
    fprintf(f, "[%s] tokens %d, rounds %d, %.1f tokens/s (prefill %.3fs, draft %.3fs, verify %.3fs, total %.3fs)\n", label,
            s->generated, s->rounds, tps, s->prefill_s, s->draft_s, s->verify_s, s->total_s);
    if (block <= 0 || s->rounds == 0) return;
    fprintf(f, "[%s] tau (accepted drafts + bonus per round) %.3f, proposal length %.2f (drafted %.2f), acceptance %.3f\n", label,
            (double)s->tau_sum / s->rounds, (double)s->proposed / s->rounds, (double)s->drafted / s->rounds,
            s->proposed ? (double)s->accepted / s->proposed : 0.0);
    fprintf(f, "[%s] position:          ", label);
    for (int j = 0; j < block; j++) fprintf(f, " %6d", j + 1);
    fprintf(f, "\n[%s] accept_rate@k:     ", label);
    for (int j = 0; j < block; j++)
        s->proposed_at[j] ? fprintf(f, " %6.3f", (double)s->accepted_at[j] / s->proposed_at[j]) : fprintf(f, "      -");
    fprintf(f, "\n[%s] cond. acceptance:  ", label);
    for (int j = 0; j < block; j++) {
        int den = s->reached_at[j]; /* slot j verified with every earlier draft accepted (paper Fig. 2) */
        den ? fprintf(f, " %6.3f", (double)s->accepted_at[j] / den) : fprintf(f, "      -");
    }
    fputc('\n', f);
}
