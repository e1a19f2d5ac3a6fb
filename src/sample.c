/* sample.c - see sample.h. */
#include "sample.h"

#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t ds_hash64(uint64_t a, uint64_t b) {
    uint64_t x = a ^ (b * 0xd6e8feb86659fd93ull);
    splitmix64(&x);
    return splitmix64(&x);
}

void rng_seed(Rng *r, uint64_t seed, uint64_t stream) { r->state = ds_hash64(seed, stream); }
uint64_t rng_next(Rng *r) { return splitmix64(&r->state); }
double rng_uniform(Rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

ds_status sample_scratch_init(SampleScratch *s, int vocab, char *err) {
    s->vocab = vocab;
    s->idx = ds_malloc(sizeof(int32_t) * (size_t)vocab);
    s->vals = ds_malloc(sizeof(float) * (size_t)vocab);
    return s->idx && s->vals ? DS_OK : ds_err(err, DS_ENOMEM, "out of memory for the sampler");
}
void sample_scratch_free(SampleScratch *s) { ds_free(s->idx); ds_free(s->vals); s->idx = NULL; s->vals = NULL; }

int32_t argmax_f32(const float *x, int n) { return kern_argmax_f32(x, n); }

ds_status sampler_params_check(const SamplerParams *p, char *err) {
    if (!(p->temperature >= 0 && p->temperature <= 100)) return ds_err(err, DS_EARG, "temperature %g out of range [0, 100]", p->temperature);
    if (p->top_k < 0) return ds_err(err, DS_EARG, "top-k %d must be >= 0", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1)) return ds_err(err, DS_EARG, "top-p %g out of range (0, 1]", p->top_p);
    return DS_OK;
}

/* descending by prob, then ascending index: a total order, so results never depend on qsort */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *probs = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float pi = probs[i], pj = probs[j];
    if (pi != pj) return pi > pj ? -1 : 1;
    return i < j ? -1 : (i > j);
}

/* Move the k largest (by cmp_desc order) to idx[0..k) and sort them: a bounded
 * insertion into a sorted prefix, O(V k) worst case but O(V) for typical k <= 64. */
static int top_candidates(const float *probs, int vocab, int k, int32_t *idx) {
    int n = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (n == k) {
            int32_t last = idx[k - 1];
            if (!(probs[i] > probs[last])) continue; /* ties keep the lower index */
            n--;
        }
        int pos = n;
        while (pos > 0 && probs[i] > probs[idx[pos - 1]]) { idx[pos] = idx[pos - 1]; pos--; }
        idx[pos] = i;
        n++;
    }
    return n;
}

void sample_dist(const SamplerParams *p, const float *logits, int vocab, float *probs, SampleScratch *scratch) {
    if (sampler_is_greedy(p)) {
        memset(probs, 0, sizeof(float) * (size_t)vocab);
        probs[argmax_f32(logits, vocab)] = 1.0f;
        return;
    }
    /* softmax(logits / T) in float32, max-subtracted; sum in index order */
    float mx = logits[0];
    for (int i = 1; i < vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    float inv_t = 1.0f / p->temperature;
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        probs[i] = expf((logits[i] - mx) * inv_t);
        sum += probs[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < vocab; i++) probs[i] *= inv;
    bool use_k = p->top_k > 0 && p->top_k < vocab, use_p = p->top_p < 1.0f;
    if (!use_k && !use_p) return;
    int32_t *idx = scratch->idx;
    int n;
    if (use_k) {
        n = top_candidates(probs, vocab, p->top_k, idx);
    } else {
        /* Sort only a prefix of the sorted order: all tokens with p >= t form such a prefix,
         * and once its mass reaches top_p the top-p cut lies inside it. Lower t until it does. */
        float pmax = 0;
        for (int i = 0; i < vocab; i++) pmax = probs[i] > pmax ? probs[i] : pmax;
        for (float t = pmax * 1e-3f;; t *= 1e-3f) {
            double mass = 0;
            n = 0;
            for (int i = 0; i < vocab; i++)
                if (probs[i] >= t) { idx[n++] = i; mass += probs[i]; }
            if (mass >= p->top_p || t == 0.0f || n == vocab) break;
            if (t < 1e-30f) t = 0.0f;
        }
        qsort_r(idx, (size_t)n, sizeof(int32_t), cmp_desc, (void *)probs);
    }
    /* renormalise over the kept set (top-k), then top-p: keep the smallest prefix whose mass
     * reaches top_p (transformers: drop tokens whose preceding cumulative mass >= top_p) */
    double kept = 0; /* mass the top-p fractions refer to: the top-k set, or everything */
    if (use_k) for (int i = 0; i < n; i++) kept += probs[idx[i]];
    else for (int i = 0; i < vocab; i++) kept += probs[i];
    int keep = n;
    if (use_p) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            if (cum / kept >= p->top_p && i > 0) { keep = i; break; }
            cum += probs[idx[i]];
        }
    }
    double mass = 0;
    for (int i = 0; i < keep; i++) mass += probs[idx[i]];
    float scale = (float)(1.0 / mass);
    float *kept_vals = scratch->vals;
    for (int i = 0; i < keep; i++) kept_vals[i] = probs[idx[i]] * scale;
    memset(probs, 0, sizeof(float) * (size_t)vocab);
    for (int i = 0; i < keep; i++) probs[idx[i]] = kept_vals[i];
}

int32_t sample_from(const float *probs, int vocab, double u) {
    double cum = 0;
    int32_t last = -1;
    for (int32_t i = 0; i < vocab; i++) {
        if (probs[i] <= 0) continue;
        cum += probs[i];
        last = i;
        if (u < cum) return i;
    }
    return last >= 0 ? last : 0; /* rounding: u beyond the summed mass */
}
