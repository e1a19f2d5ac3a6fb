/* draft_init.c - see draft_init.h. */
#include "draft_init.h"

#include <math.h>
#include <string.h>

int draft_init_layer_ids(int Lt, int *ids) {
    if (Lt < 2) return 0; /* one layer: only the last layer exists, and it is forbidden */
    int start = Lt >= 10 ? 1 : 0, last = Lt - 2;
    int m = last - start + 1 < 5 ? last - start + 1 : 5;
    int end = Lt >= 10 ? Lt - 3 : last;
    if (end - start < m - 1) end = start + m - 1;
    for (int i = 0; i < m; i++)
        ids[i] = m == 1 ? start : start + (int)nearbyint((double)i * (end - start) / (m - 1)); /* round half even */
    return m;
}

ds_status draft_init_config(DraftConfig *c, const Qwen3Config *t, bool dspark, int tokenizer_ids, char *err) {
    memset(c, 0, sizeof *c);
    c->base = *t;
    snprintf(c->base.architecture, sizeof c->base.architecture, "Qwen3DSparkModel");
    c->base.tie_word_embeddings = false;
    int Ld = t->n_layers >= 10 ? 5 : t->n_layers / 2;
    c->base.n_layers = Ld < 1 ? 1 : Ld;
    c->block_size = 7;
    c->n_target_layers = draft_init_layer_ids(t->n_layers, c->target_layer_ids);
    if (c->n_target_layers == 0) return ds_err(err, DS_EARG, "draft init: the target needs at least 2 layers (it has %d)", t->n_layers);
    c->num_target_layers = t->n_layers;
    c->num_anchors = 512;
    c->mask_token_id = tokenizer_ids > 0 && tokenizer_ids < t->vocab_size ? tokenizer_ids : t->vocab_size - 1;
    if (dspark) {
        c->markov_rank = t->hidden_size < 256 ? t->hidden_size : 256;
        c->markov_type = MARKOV_VANILLA;
        c->enable_confidence_head = true;
        c->confidence_head_with_markov = true;
    }
    return DS_OK;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void draft_init_weights(ParamSet *p, uint64_t seed, double std) {
    const double two_pi = 6.28318530717958647692;
    uint64_t s = seed;
    double spare = 0;
    bool have_spare = false;
    for (int i = 0; i < p->n; i++) {
        const ParamInfo *t = &p->info[i];
        if (!t->trainable) continue;
        float *w = p->data + t->offset;
        if (ends_with(t->name, "norm.weight")) { for (size_t j = 0; j < t->numel; j++) w[j] = 1.0f; continue; }
        if (ends_with(t->name, ".bias")) { memset(w, 0, t->numel * sizeof *w); continue; }
        for (size_t j = 0; j < t->numel; j++) {
            double z;
            if (have_spare) { z = spare; have_spare = false; }
            else {
                double u1 = ((splitmix64(&s) >> 11) + 1) * 0x1.0p-53;   /* (0, 1]: log is finite */
                double u2 = (splitmix64(&s) >> 11) * 0x1.0p-53;
                double r = sqrt(-2.0 * log(u1));
                z = r * cos(two_pi * u2);
                spare = r * sin(two_pi * u2);
                have_spare = true;
            }
            w[j] = ds_bf16_to_f32(ds_f32_to_bf16((float)(z * std)));
        }
    }
}
