/* spec_testing.h - shared by test_spec.c and test_spec_stat.c: the tiny fixture target
 * (g_t, g_be), a test-only ProposalSource (the target's own logits, each slot corrupted with
 * probability `rate`), and an independent token-by-token greedy decoder. */
#ifndef DSPARK_SPEC_TESTING_H
#define DSPARK_SPEC_TESTING_H

#include <math.h>

#include "spec.h"
#include "test.h"

#define CTX 160

static Qwen3Model g_t;
static Backend *g_be;

/* ---- the test-only proposal source ---- */
typedef struct {
    Qwen3State st;      /* its own target state and KV cache */
    int cache_len;      /* committed positions in st's cache */
    int start;
    int block;
    float rate, sigma;
    float sharpen;      /* corrupted slots: sharpen * logits + N(0, sigma^2) noise */
    float offset;       /* added to every logit: softmax-invariant in float32, but real LLM
                           logits are 20-40 in size, where bf16 spacing is 0.125-0.25 */
    Rng rng;
    float *logits;      /* [V] */
    ProposalSource src;
} NoisySource;

static void ns_reset(void *self) { NoisySource *ns = self; ns->cache_len = 0; }
static ds_status ns_context(void *self, const float *f, int n, int pos0, char *err) { (void)self; (void)f; (void)n; (void)pos0; (void)err; return DS_OK; }

static ds_status ns_forward(NoisySource *ns, const int32_t *tok, int n, int pos0, char *err) {
    int32_t pos[CTX], row = n - 1;
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = &row, .n_logits = 1};
    return qwen3_forward(&g_t, &ns->st, &b, err);
}

static double gauss(Rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

static void ns_noise(NoisySource *ns) {
    int V = g_t.cfg.vocab_size;
    bool corrupt = rng_uniform(&ns->rng) < ns->rate;
    for (int i = 0; i < V; i++) {
        float l = ns->st.logits_host[i];
        if (corrupt) l = ns->sharpen * l + (float)(ns->sigma * gauss(&ns->rng));
        ns->logits[i] = l + ns->offset;
    }
}

static ds_status ns_begin(void *self, const int32_t *tokens, int start, int *n_slots, char *err) {
    NoisySource *ns = self;
    ds_status rc = ns_forward(ns, tokens + ns->cache_len, start + 1 - ns->cache_len, ns->cache_len, err);
    if (rc) return rc;
    ns->cache_len = start + 1;
    ns->start = start;
    *n_slots = start + 1 + ns->block <= CTX ? ns->block : 0;
    return DS_OK;
}

static ds_status ns_slot(void *self, int j, int32_t prev, const float **logits, float *conf, char *err) {
    NoisySource *ns = self;
    if (j > 0) { /* the target after the previous draft token (written past cache_len, overwritten later) */
        ds_status rc = ns_forward(ns, &prev, 1, ns->start + j, err);
        if (rc) return rc;
    }
    ns_noise(ns);
    *logits = ns->logits;
    *conf = 0;
    return DS_OK;
}

static void ns_init(NoisySource *ns, int block, float rate, float sigma, uint64_t seed) {
    char err[DS_ERR_LEN];
    memset(ns, 0, sizeof *ns);
    CHECK_OK(qwen3_state_init(&ns->st, &g_t, CTX, 1, 0, 1, CTX, err), err);
    ns->block = block;
    ns->rate = rate;
    ns->sigma = sigma;
    ns->sharpen = 1.0f;
    rng_seed(&ns->rng, seed, 99);
    ns->logits = ds_malloc(sizeof(float) * g_t.cfg.vocab_size);
    ns->src = (ProposalSource){.block_size = block, .self = ns, .reset = ns_reset, .context = ns_context, .begin = ns_begin, .slot = ns_slot};
}
static void ns_free(NoisySource *ns) { qwen3_state_free(&ns->st, &g_t); ds_free(ns->logits); }

/* ---- independent plain decoding: one token per forward, full recompute of nothing ---- */
static inline int plain_greedy(const int32_t *prompt, int n_prompt, int max_new, const int32_t *stop, int n_stop, int32_t *out) {
    char err[DS_ERR_LEN];
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_t, CTX, 1, 0, 1, CTX, err), err);
    int32_t pos[CTX], seq[CTX], row;
    memcpy(seq, prompt, sizeof(int32_t) * n_prompt);
    for (int i = 0; i < CTX; i++) pos[i] = i;
    int n = 0, len = n_prompt, fed = 0;
    while (n < max_new) {
        row = len - fed - 1;
        Qwen3Batch b = {.n = len - fed, .tokens = seq + fed, .pos = pos + fed, .logit_rows = &row, .n_logits = 1};
        CHECK_OK(qwen3_forward(&g_t, &st, &b, err), err);
        fed = len;
        int32_t t = argmax_f32(st.logits_host, g_t.cfg.vocab_size);
        out[n++] = t;
        seq[len++] = t;
        bool s = false;
        for (int k = 0; k < n_stop; k++) s |= stop[k] == t;
        if (s || len >= CTX) break;
    }
    qwen3_state_free(&st, &g_t);
    return n;
}

static inline void random_prompt(Rng *r, int32_t *p, int n) {
    for (int i = 0; i < n; i++) p[i] = (int32_t)(rng_next(r) % (uint64_t)(g_t.cfg.vocab_size - 1));
}

static inline SpecParams greedy_params(int max_new) {
    SpecParams p = {.sampler = {0.0f, 0, 1.0f}, .seed = 1, .max_new = max_new};
    return p;
}


static void spec_testing_load(void) {
    char err[DS_ERR_LEN];
    g_be = backend_cpu_create(1); /* tiny model: threads only add overhead */
    if (qwen3_load(&g_t, test_data("tiny-qwen3/target"), g_be, err)) { fprintf(stderr, "%s\n", err); exit(2); }
}

static void spec_testing_free(void) {
    qwen3_free(&g_t);
    g_be->destroy(g_be);
}

#endif
