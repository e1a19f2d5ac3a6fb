/* bench_cuda.c - step times of the CUDA backend on a Qwen3-4B-shaped target (36 layers, hidden
 * 2560, 32/8 heads, head_dim 128, FFN 9728, vocab 151936, tied) with random BF16 weights made
 * in memory by this program, against the memory floor measured in the same process:
 * floor = weight bytes read per step / device-to-device copy bandwidth (bytes read + written
 * per second, so a step that only reads its weights could reach it).
 *
 *   bench_cuda [--ctx 512] [--reps 20] [--layers 36] [--batch 256] [--json OUT] [--profile] [--ablate] [--one-stream]
 *
 * --one-stream: the backend as `dspark generate` and `eval` create it (backend.h's
 * BACKEND_ONE_STREAM: one sequence at a time; the default is the batched backend of serve).
 *
 * --ablate: the graphed 1- and 8-token steps again with op classes left out (attention, the
 * q/k norm + rope + KV write, the norms, swiglu, all but the products, the products): where
 * the step's time beyond the floor goes, launch gaps included (timing only).
 *
 * Rows: the batch-1 decode step (one token at position ctx, logits to the host), the verify
 * curve (n = 1..16 tokens of one sequence in one forward), larger flat batches, and prefill.
 * Each step is timed with the backend's step graphs (CUDA graphs, the default) and again with
 * them off (graph_begin/graph_end set to NULL, as DSPARK_CUDA_GRAPHS=0 would).
 *
 * Then (issue 7): the batched decode step (one token for each of R = 1, 2, 4, .. --batch
 * requests in one forward, each request in its own KV slot holding a context of ctx tokens,
 * copied from the single-sequence prefill), with logits of all R rows to the host as the
 * engine takes them and with one row (the compute alone); the drafting time of a
 * DeepSpec-shaped DSpark drafter on this target (draft_init_config: 5 layers, block 7,
 * markov rank 256 vanilla, confidence head; random BF16 weights, embed/lm_head shared with
 * the target; context of ctx positions appended first): drafter_block + 7 slots as the spec
 * loop drafts them (below; the block and each slot's head are step graphs of their own,
 * --draft-eager runs them op by op); and a synthetic speculative round at fixed acceptance: the
 * calls spec_generate makes in one round (draft, verify forward of 8 tokens with the drafter's
 * 5 feature layers, sampling + verification, drafter_append_context of tau positions),
 * timed back to back, for tau = 2..5 tokens per round, against plain decoding's step +
 * sampling. Random weights accept nothing, so tau is fixed by construction, not measured.
 * The drafting, the round and plain decoding sample as spec_generate and the engine do on this
 * backend: on the device when it has backend.h's sampling ops (drafter_head_dev, sample_probs,
 * draw, the verify forward reading the drafts from device memory with its logits left there,
 * verify, one read of the result per round); --host-sampling (or a backend without them) times
 * the host path instead (each row downloaded, sample_dist, argmax, verify_block). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "draft_init.h"
#include "json_report.h"
#include "drafter.h"
#include "op_profile.h"
#include "qwen3.h"
#include "sample.h"
#include "verify.h"
#ifdef DSPARK_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

static uint64_t g_s = 88172645463325252ull;
static uint16_t rand_bf16(float scale) {
    g_s ^= g_s << 13; g_s ^= g_s >> 7; g_s ^= g_s << 17;
    float u = (float)((g_s >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; /* uniform [-1, 1) */
    return ds_f32_to_bf16(u * scale);
}

/* --profile: each op of one decode step timed between two synchronize() calls (so launch
 * gaps and the sync itself are included: small ops read high; matmul's share is the signal) */
/* median seconds of `reps` forwards of batch b (two warm-ups; synchronised) */
static double time_batch(Qwen3Model *m, Qwen3State *st, const Qwen3Batch *b, int reps, char *err, int *fail) {
    double t[64];
    if (reps > 64) reps = 64;
    for (int r = -2; r < reps; r++) { /* two warm-up runs */
        double t0 = ds_now();
        if (qwen3_forward(m, st, b, err)) { *fail = 1; return 0; }
        m->be->synchronize(m->be);
        if (r >= 0) t[r] = ds_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    return t[reps / 2];
}

/* median seconds of `reps` forwards of n tokens at positions pos0.. (n_logits rows to the host,
 * or left on the device as the engine's device sampling leaves them: on_device) */
static double time_forward_at(Qwen3Model *m, Qwen3State *st, int n, int pos0, int n_logits, bool on_device, int reps, char *err, int *fail) {
    int32_t tok[256], pos[256], rows[256];
    for (int i = 0; i < n; i++) { tok[i] = (i * 7919 + 13) % m->cfg.vocab_size; pos[i] = pos0 + i; rows[i] = n - n_logits + i; }
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = n_logits, .logits_on_device = on_device};
    return time_batch(m, st, &b, reps, err, fail);
}
static double time_forward(Qwen3Model *m, Qwen3State *st, int n, int pos0, int n_logits, int reps, char *err, int *fail) {
    return time_forward_at(m, st, n, pos0, n_logits, false, reps, err, fail);
}

/* median seconds of a decode step of R requests: token i at position pos in slot i (kv_len
 * pos + 1), logits of the first n_logits rows to the host */
static double time_decode_batch(Qwen3Model *m, Qwen3State *st, int R, int pos, int n_logits, int reps, char *err, int *fail) {
    int32_t tok[256], posv[256], slot[256], rows[256];
    for (int i = 0; i < R; i++) { tok[i] = (i * 7919 + 13) % m->cfg.vocab_size; posv[i] = pos; slot[i] = i; rows[i] = i; }
    Qwen3Batch b = {.n = R, .tokens = tok, .pos = posv, .slot = slot, .logit_rows = rows, .n_logits = n_logits};
    return time_batch(m, st, &b, reps, err, fail);
}

/* positions 0..ctx-1 of slot 0 of src into every slot of dst (layout [layer][slot][pos][kv_dim]):
 * one prefill serves all requests; attention reads the same bytes whatever their values */
static void copy_context(Backend *be, KvCache *dst, const KvCache *src, int ctx) {
    const size_t bytes = sizeof(float) * (size_t)ctx * src->kv_dim;
    for (int l = 0; l < dst->n_layers; l++) {
        const size_t os = (size_t)l * src->n_slots * src->max_ctx * src->kv_dim;
        for (int s = 0; s < dst->n_slots; s++) {
            const size_t od = ((size_t)l * dst->n_slots + s) * dst->max_ctx * dst->kv_dim;
            be->copy(be, dst->k + od, src->k + os, bytes);
            be->copy(be, dst->v + od, src->v + os, bytes);
        }
    }
    be->synchronize(be);
}

/* a DeepSpec-shaped DSpark drafter for target m (draft_init_config), weights views of the
 * random buffer, embed/lm_head the target's (DeepSpec freezes and shares them) */
static ds_status build_drafter(Drafter *dr, const Qwen3Model *m, const uint16_t *buf, const uint16_t *ones, size_t *bytes, char *err) {
    memset(dr, 0, sizeof *dr);
    dr->be = m->be;
    ds_status rc = draft_init_config(&dr->cfg, &m->cfg, true, 0, err);
    if (rc) return rc;
    const Qwen3Config *b = &dr->cfg.base;
    const int D = b->hidden_size, V = b->vocab_size, hd = b->head_dim, H = b->n_heads, KV = b->n_kv_heads, ff = b->intermediate_size;
    const int r = dr->cfg.markov_rank, mt = dr->cfg.n_target_layers;
    dr->embed = m->embed;
    dr->lm_head = m->lm_head;
    dr->shared_embed = dr->shared_lm_head = true;
    dr->layers = ds_calloc((size_t)b->n_layers, sizeof(Qwen3Layer));
    if (!dr->layers) return ds_err(err, DS_ENOMEM, "out of memory");
    *bytes = 0;
    Backend *be = m->be;
#define UPD(w, host, rr, cc) do { w = weight_view(host, DS_BF16, rr, cc); *bytes += (size_t)(rr) * (cc) * 2; \
        if ((rc = be->upload_weight(be, &w, err))) return rc; } while (0)
    for (int l = 0; l < b->n_layers; l++) {
        Qwen3Layer *y = &dr->layers[l];
        UPD(y->input_norm, ones, 1, D); UPD(y->post_norm, ones, 1, D); UPD(y->q_norm, ones, 1, hd); UPD(y->k_norm, ones, 1, hd);
        UPD(y->q_proj, buf + 7, H * hd, D); UPD(y->k_proj, buf + 8, KV * hd, D); UPD(y->v_proj, buf + 9, KV * hd, D);
        UPD(y->o_proj, buf + 10, D, H * hd); UPD(y->gate_proj, buf + 11, ff, D); UPD(y->up_proj, buf + 12, ff, D); UPD(y->down_proj, buf + 13, D, ff);
    }
    UPD(dr->norm, ones, 1, D);
    UPD(dr->fc, buf + 14, D, mt * D);
    UPD(dr->hidden_norm, ones, 1, D);
    UPD(dr->w1, buf + 15, V, r);
    UPD(dr->w2, buf + 16, V, r);
    UPD(dr->conf_w, buf + 17, 1, D + (dr->cfg.confidence_head_with_markov ? r : 0));
    UPD(dr->conf_b, buf + 18, 1, 1);
#undef UPD
    return DS_OK;
}

/* host side of the spec loop: probabilities, and the greedy pick */
typedef struct {
    SamplerParams sp;
    SampleScratch sc;
    float *q, *pt, *resid; /* [8][V], [8][V], [V] */
    int V;
} HostSampler;

/* one drafting round as spec_generate runs it: block at `start` (the draft cache cropped back to
 * it), then each of the B slots: drafter_head, sample_dist, argmax. *t_block = the block alone. */
static ds_status draft_round(Drafter *dr, DraftState *ds, HostSampler *hs, int start, int32_t anchor, int32_t *drafts, float *conf,
                             double *t_block, char *err) {
    drafter_crop(ds, start);
    const double t0 = ds_now();
    ds_status rc = drafter_block(dr, ds, anchor, start, err);
    if (rc) return rc;
    dr->be->synchronize(dr->be);
    *t_block = ds_now() - t0;
    int32_t prev = anchor;
    for (int j = 0; j < dr->cfg.block_size; j++) {
        if ((rc = drafter_head(dr, ds, j, prev, &conf[j], err))) return rc;
        float *qj = hs->q + (size_t)j * hs->V;
        sample_dist(&hs->sp, ds->logits_host, hs->V, qj, &hs->sc);
        prev = drafts[j] = argmax_f32(qj, hs->V);
    }
    return DS_OK;
}

/* the device side of the spec loop (backend.h's sampling ops), as spec.c's device path */
typedef struct {
    bool on;
    int32_t *tok, *res;    /* [8]: the anchor, then the drafts as drawn; [9]: verify's output */
    float *q, *pt, *conf;  /* [7][V], [8][V], [7] */
    void *ws;              /* sample_probs scratch for 8 rows */
} DevSampler;

/* draft_round on the device: slot j reads its previous token from tok[j], its q_j and draft
 * j (into tok[1 + j]) stay on the device; nothing is read back. t_block != NULL: the block is
 * synchronised and timed alone (the drafting bench), else nothing waits (the spec round). */
static ds_status draft_round_dev(Drafter *dr, DraftState *ds, DevSampler *dv, const SamplerParams *sp, int start, int32_t anchor,
                                 double *t_block, char *err) {
    Backend *be = dr->be;
    const int V = dr->cfg.base.vocab_size;
    drafter_crop(ds, start);
    const double t0 = ds_now();
    ds_status rc = drafter_block(dr, ds, anchor, start, err);
    if (rc) return rc;
    if (t_block) {
        be->synchronize(be);
        *t_block = ds_now() - t0;
    }
    be->to_device(be, dv->tok, &anchor, sizeof(int32_t));
    for (int j = 0; j < dr->cfg.block_size; j++) {
        if ((rc = drafter_head_dev(dr, ds, j, dv->tok + j, dv->conf + j, err))) return rc;
        float *qj = dv->q + (size_t)j * V;
        be->sample_probs(be, qj, ds->logits, 1, V, sp->temperature, sp->top_k, sp->top_p, dv->ws);
        be->draw(be, dv->tok + 1 + j, qj, V, 0.5); /* greedy: the one-hot's token */
    }
    return DS_OK;
}

/* --draft-eager: the drafter's brackets (keys from GRAPH_KEY_DRAFT) pass through, so its ops
 * run as called while the target's steps stay graphs (the drafting before step graphs) */
static void (*g_graph_begin)(Backend *, int);
static bool (*g_graph_end)(Backend *);
static bool g_in_draft_step;
static void eager_draft_begin(Backend *be, int key) {
    g_in_draft_step = key >= GRAPH_KEY_DRAFT;
    if (!g_in_draft_step) g_graph_begin(be, key);
}
static bool eager_draft_end(Backend *be) {
    if (g_in_draft_step) {
        g_in_draft_step = false;
        return true;
    }
    return g_graph_end(be);
}

typedef struct {
    double block_ms, round_ms, head_ms;  /* drafter_block alone; block + heads + sampling; per head */
    double append_ms[9];                 /* drafter_append_context of k = 1..8 positions */
    double spec_round_ms[6];             /* tau = 2..5 */
    double plain_ms;                     /* plain decoding: 1-token forward + host sampling */
    double verify_ms;                    /* the verify forward alone (B + 1 tokens, logits, features) */
    double host_row_ms;                  /* sample_dist + argmax of one row */
    size_t draft_bytes;
    int layers, block, rank;
    bool dev_sampling;                   /* the round and plain decoding sampled on the device */
} DraftBench;

static int cmp_median(double *t, int n) { qsort(t, (size_t)n, sizeof(double), cmp_d); return n / 2; }

/* drafting and synthetic speculative rounds; vst: a 1-slot target state with 5 feature layers
 * and ctx positions of context */
static ds_status bench_draft(Qwen3Model *m, Qwen3State *vst, const uint16_t *buf, const uint16_t *ones, int ctx, int reps, bool host_sampling,
                             DraftBench *o, char *err) {
    Backend *be = m->be;
    const int V = m->cfg.vocab_size;
    Drafter dr;
    ds_status rc = build_drafter(&dr, m, buf, ones, &o->draft_bytes, err);
    DraftState ds;
    memset(&ds, 0, sizeof ds);
    DevSampler dv;
    memset(&dv, 0, sizeof dv);
    dv.on = !host_sampling && be->sample_probs && be->draw && be->verify && be->sample_ws_bytes;
    o->dev_sampling = dv.on;
    if (!rc && dv.on) {
        dv.tok = be->alloc(be, sizeof(int32_t) * 8);
        dv.res = be->alloc(be, sizeof(int32_t) * 9);
        dv.q = be->alloc(be, sizeof(float) * 7 * (size_t)V);
        dv.pt = be->alloc(be, sizeof(float) * 8 * (size_t)V);
        dv.conf = be->alloc(be, sizeof(float) * 7);
        dv.ws = be->alloc(be, be->sample_ws_bytes(be, 8, V));
        if (!dv.tok || !dv.res || !dv.q || !dv.pt || !dv.conf || !dv.ws) rc = ds_err(err, DS_ENOMEM, "out of device memory for the sampling buffers");
    }
    if (!rc && dr.cfg.block_size > 7) rc = ds_err(err, DS_EARG, "drafter block %d: the buffers hold 7 slots", dr.cfg.block_size);
    HostSampler hs = {.sp = {0.0f, 0, 1.0f}, .V = V};
    hs.q = malloc(sizeof(float) * 8 * (size_t)V);
    hs.pt = malloc(sizeof(float) * 8 * (size_t)V);
    hs.resid = malloc(sizeof(float) * (size_t)V);
    const int B = dr.cfg.block_size, mt = dr.cfg.n_target_layers, D = m->cfg.hidden_size;
    o->layers = dr.cfg.base.n_layers;
    o->block = B;
    o->rank = dr.cfg.markov_rank;
    float *feat_h = malloc(sizeof(float) * (size_t)ctx * mt * D), *feat = NULL;
    if (!rc && (!hs.q || !hs.pt || !hs.resid || !feat_h)) rc = ds_err(err, DS_ENOMEM, "out of memory");
    if (!rc) rc = sample_scratch_init(&hs.sc, V, err);
    if (!rc) rc = draft_state_init(&ds, &dr, ctx + 64, 16, err); /* the spec loop's chunk of 16 */
    if (!rc && !(feat = be->alloc(be, sizeof(float) * (size_t)ctx * mt * D))) rc = ds_err(err, DS_ENOMEM, "out of device memory");
    if (rc) goto done;
    printf("\ndrafter: DSpark, %d layers, block %d, markov rank %d (%s), confidence head%s, target layers", dr.cfg.base.n_layers, B,
           dr.cfg.markov_rank, markov_type_name(dr.cfg.markov_type), dr.cfg.confidence_head_with_markov ? " with Markov features" : "");
    for (int i = 0; i < mt; i++) printf(" %d", dr.cfg.target_layer_ids[i]);
    printf("; %.2f GB of its own BF16 weights (embed/lm_head shared)\n", o->draft_bytes / 1e9);
    /* context: random target features (values do not change the work), appended in chunks */
    for (size_t i = 0; i < (size_t)ctx * mt * D; i++) feat_h[i] = ds_bf16_to_f32(rand_bf16(1.0f));
    be->to_device(be, feat, feat_h, sizeof(float) * (size_t)ctx * mt * D);
    if ((rc = drafter_append_context(&dr, &ds, feat, ctx, 0, err))) goto done;
    be->synchronize(be);
    if (reps > 64) reps = 64;
    int32_t drafts[64], anchor = 4242 % V;
    float conf[64];
    double tb[64], tr[64];
    /* device path as spec.c's: drafter_head_dev + sample_probs + draw per slot, the drafts and
     * confidences read once at the end; host path: drafter_head + sample_dist + argmax per slot */
    for (int r = -2; r < reps; r++) {
        double t_block, t0 = ds_now();
        if (dv.on) {
            if ((rc = draft_round_dev(&dr, &ds, &dv, &hs.sp, ctx, anchor, &t_block, err))) goto done;
            be->to_host(be, drafts, dv.tok + 1, sizeof(int32_t) * (size_t)B);
            be->to_host(be, conf, dv.conf, sizeof(float) * (size_t)B);
        } else if ((rc = draft_round(&dr, &ds, &hs, ctx, anchor, drafts, conf, &t_block, err))) {
            goto done;
        }
        if (r >= 0) { tr[r] = ds_now() - t0; tb[r] = t_block; }
    }
    o->block_ms = tb[cmp_median(tb, reps)] * 1e3;
    o->round_ms = tr[cmp_median(tr, reps)] * 1e3;
    o->head_ms = (o->round_ms - o->block_ms) / B;
    /* the host share: sample_dist + argmax of one row */
    if (!be->host_memory) be->to_host(be, ds.logits_host, ds.logits, sizeof(float) * (size_t)V);
    {
        double th[32];
        for (int r = 0; r < 32; r++) {
            double t0 = ds_now();
            sample_dist(&hs.sp, ds.logits_host, V, hs.q, &hs.sc);
            drafts[0] = argmax_f32(hs.q, V);
            th[r] = ds_now() - t0;
        }
        o->host_row_ms = th[cmp_median(th, 32)] * 1e3;
    }
    /* context appends of k positions at ctx (cropped back each time) */
    for (int k = 1; k <= 8; k++) {
        double ta[64];
        for (int r = -1; r < reps; r++) {
            drafter_crop(&ds, ctx);
            double t0 = ds_now();
            if ((rc = drafter_append_context(&dr, &ds, feat, k, ctx, err))) goto done;
            be->synchronize(be);
            if (r >= 0) ta[r] = ds_now() - t0;
        }
        o->append_ms[k] = ta[cmp_median(ta, reps)] * 1e3;
    }
    /* plain decoding as the spec loop runs it without a source: 1-token forward, sample the row
     * (device: the anchor goes up, verify of 0 drafts on the device, its 2 ints read back) */
    {
        int32_t tok = anchor, pos = ctx, row = 0, res[9];
        double u[8] = {0};
        Qwen3Batch pb = {.n = 1, .tokens = &tok, .pos = &pos, .logit_rows = &row, .n_logits = 1};
        if (dv.on) { pb.dev_tokens = dv.tok; pb.logits_on_device = true; }
        double tp[64];
        for (int r = -2; r < reps; r++) {
            double t0 = ds_now();
            if (dv.on) {
                be->to_device(be, dv.tok, &anchor, sizeof(int32_t));
                if ((rc = qwen3_forward(m, vst, &pb, err))) goto done;
                be->sample_probs(be, dv.pt, vst->logits, 1, V, hs.sp.temperature, hs.sp.top_k, hs.sp.top_p, dv.ws);
                be->verify(be, dv.res, dv.pt, dv.q, dv.tok + 1, 0, V, true, u, 0, NULL);
                be->to_host(be, res, dv.res, sizeof(int32_t) * 2);
            } else {
                if ((rc = qwen3_forward(m, vst, &pb, err))) goto done;
                sample_dist(&hs.sp, vst->logits_host, V, hs.pt, &hs.sc);
                tok = argmax_f32(hs.pt, V);
                tok = anchor; /* the same step every time (graph replay) */
            }
            if (r >= 0) tp[r] = ds_now() - t0;
        }
        o->plain_ms = tp[cmp_median(tp, reps)] * 1e3;
    }
    /* device path: the verify forward alone (logits left on the device), synchronised here so
     * the rounds below stay free of extra waits */
    if (dv.on) {
        int32_t tok[64], pos[64], rows[64];
        for (int i = 0; i <= B; i++) { tok[i] = anchor; pos[i] = ctx + i; rows[i] = i; }
        Qwen3Batch vb = {.n = B + 1, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = B + 1,
                         .feature_layers = dr.cfg.target_layer_ids, .n_feature_layers = mt, .logits_on_device = true};
        double tv[64];
        for (int r = -2; r < reps; r++) {
            double t0 = ds_now();
            if ((rc = qwen3_forward(m, vst, &vb, err))) goto done;
            be->synchronize(be);
            if (r >= 0) tv[r] = ds_now() - t0;
        }
        o->verify_ms = tv[cmp_median(tv, reps)] * 1e3;
    }
    /* synthetic speculative rounds: draft B slots, verify all (anchor + B drafts, B + 1 logit rows,
     * the drafter's feature layers), sample + verify_block, append tau positions */
    for (int tau = 2; tau <= 5; tau++) {
        int32_t tok[64], pos[64], rows[64];
        double ts[64], tvs[64];
        Rng rng;
        rng_seed(&rng, 1, 0);
        for (int r = -2; r < reps && dv.on; r++) { /* the device path: one read per round */
            int32_t res[9];
            double u[8];
            const double t0 = ds_now();
            if ((rc = draft_round_dev(&dr, &ds, &dv, &hs.sp, ctx, anchor, NULL, err))) goto done;
            for (int i = 0; i <= B; i++) { pos[i] = ctx + i; rows[i] = i; tok[i] = anchor; }
            Qwen3Batch vb = {.n = B + 1, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = B + 1,
                             .feature_layers = dr.cfg.target_layer_ids, .n_feature_layers = mt, .dev_tokens = dv.tok, .logits_on_device = true};
            if ((rc = qwen3_forward(m, vst, &vb, err))) goto done;
            be->sample_probs(be, dv.pt, vst->logits, B + 1, V, hs.sp.temperature, hs.sp.top_k, hs.sp.top_p, dv.ws);
            for (int i = 0; i <= B; i++) u[i] = rng_uniform(&rng); /* unused when greedy; what a sampled round prepares */
            be->verify(be, dv.res, dv.pt, dv.q, dv.tok + 1, B, V, true, u, 0, NULL);
            be->to_host(be, res, dv.res, sizeof(int32_t) * (size_t)(B + 2));
            /* random weights: the acceptance is fixed at tau below, not taken from res */
            if ((rc = drafter_append_context(&dr, &ds, vst->features, tau, ctx, err))) goto done;
            be->synchronize(be);
            if (r >= 0) ts[r] = ds_now() - t0;
        }
        for (int r = -2; r < reps && !dv.on; r++) {
            double t_block, t0 = ds_now();
            if ((rc = draft_round(&dr, &ds, &hs, ctx, anchor, drafts, conf, &t_block, err))) goto done;
            tok[0] = anchor;
            for (int i = 0; i <= B; i++) { if (i) tok[i] = drafts[i - 1]; pos[i] = ctx + i; rows[i] = i; }
            Qwen3Batch vb = {.n = B + 1, .tokens = tok, .pos = pos, .logit_rows = rows, .n_logits = B + 1,
                             .feature_layers = dr.cfg.target_layer_ids, .n_feature_layers = mt};
            double tv0 = ds_now();
            if ((rc = qwen3_forward(m, vst, &vb, err))) goto done;
            if (r >= 0) tvs[r] = ds_now() - tv0; /* qwen3_forward ends with the logits' copy to the host: synchronised */
            for (int j = 0; j <= B; j++) sample_dist(&hs.sp, vst->logits_host + (size_t)j * V, V, hs.pt + (size_t)j * V, &hs.sc);
            VerifyResult vr = verify_block(hs.pt, hs.q, drafts, B, V, true, &rng, hs.resid, VERIFY_EXACT, NULL);
            (void)vr; /* random weights: the acceptance is fixed at tau below, not taken from vr */
            if ((rc = drafter_append_context(&dr, &ds, vst->features, tau, ctx, err))) goto done;
            be->synchronize(be);
            if (r >= 0) ts[r] = ds_now() - t0;
        }
        o->spec_round_ms[tau] = ts[cmp_median(ts, reps)] * 1e3;
        if (tau == 2 && !dv.on) o->verify_ms = tvs[cmp_median(tvs, reps)] * 1e3;
    }
done:
    {
        void *dp[] = {dv.tok, dv.res, dv.q, dv.pt, dv.conf, dv.ws};
        for (size_t i = 0; i < sizeof dp / sizeof dp[0]; i++) if (dp[i]) be->free(be, dp[i]);
    }
    if (feat) be->free(be, feat);
    if (ds.kv.k) draft_state_free(&ds, &dr);
    sample_scratch_free(&hs.sc);
    free(hs.q);
    free(hs.pt);
    free(hs.resid);
    free(feat_h);
    drafter_free(&dr);
    return rc;
}

int main(int argc, char **argv) {
    int ctx = 512, reps = 20, L = 36, batch_max = 256;
    const char *json_out = NULL;
    bool profile = false, tiny = false, mm_only = false, host_sampling = false, draft_eager = false, ablate = false, one_stream = false;
    const char *device = "cuda";
    setvbuf(stdout, NULL, _IOLBF, 0); /* a run cut short by a time limit keeps its finished rows */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) L = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch_max = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_out = argv[++i];
        else if (!strcmp(argv[i], "--profile")) profile = true;
        else if (!strcmp(argv[i], "--mm")) mm_only = true; /* the product table, then exit */
        else if (!strcmp(argv[i], "--ablate")) ablate = true; /* step times with op classes left out */
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i]; /* cpu: a logic check with --tiny */
        else if (!strcmp(argv[i], "--tiny")) tiny = true; /* small sizes: checks the program, measures nothing */
        else if (!strcmp(argv[i], "--host-sampling")) host_sampling = true; /* drafting and the synthetic round sample on the host */
        else if (!strcmp(argv[i], "--draft-eager")) draft_eager = true;
        else if (!strcmp(argv[i], "--one-stream")) one_stream = true; /* the backend as generate and eval make it (backend.h's BackendUse) */
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_cuda [--ctx N] [--reps N] [--layers N] [--batch MAX_REQUESTS] [--json OUT] [--profile] [--ablate] [--mm] "
                   "[--host-sampling] [--draft-eager] [--one-stream] [--device cpu --tiny]\n(see the comment at the top of bench/bench_cuda.c)\n");
            return 0;
        } else {
            fprintf(stderr, "bench_cuda: unknown flag or missing value: %s (--help for usage)\n", argv[i]);
            return 2;
        }
    }
    if (ctx < 256 || ctx > 32768 || reps < 1 || L < 1 || L > 64 || batch_max < 0 || batch_max > 256) { fprintf(stderr, "bench_cuda: bad arguments\n"); return 2; }
    if (!json_report_check("bench_cuda", json_out)) return 2;
    char err[DS_ERR_LEN];
    Backend *be;
    if (backend_create_for(device, 2, one_stream ? BACKEND_ONE_STREAM : BACKEND_BATCHED, &be, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    const int V = tiny ? 4096 : 151936, d = tiny ? 256 : 2560, H = tiny ? 4 : 32, KV = tiny ? 2 : 8, hd = tiny ? 64 : 128,
              ff = tiny ? 512 : 9728;
    /* one random BF16 buffer as large as the largest tensor; every weight is a view of it */
    size_t big = (size_t)V * d + 64; /* + 64: views start at small offsets */
    uint16_t *buf = malloc(big * 2), *ones = malloc((size_t)d * 2);
    if (!buf || !ones) { fprintf(stderr, "bench_cuda: out of memory\n"); return 1; }
    for (size_t i = 0; i < big; i++) buf[i] = rand_bf16(0.03f);
    for (int i = 0; i < d; i++) ones[i] = ds_f32_to_bf16(1.0f);
    Qwen3Model m;
    memset(&m, 0, sizeof m);
    m.be = be;
    m.cfg = (Qwen3Config){.architecture = "Qwen3ForCausalLM", .vocab_size = V, .hidden_size = d, .intermediate_size = ff, .n_layers = L,
                          .n_heads = H, .n_kv_heads = KV, .head_dim = hd, .rms_norm_eps = 1e-6f, .rope_theta = 1e6f,
                          .tie_word_embeddings = true, .max_position_embeddings = 40960};
    m.layers = calloc((size_t)L, sizeof(Qwen3Layer));
    size_t bytes = 0;
#define UP(w, host, r, c) do { w = weight_view(host, DS_BF16, r, c); bytes += (size_t)(r) * (c) * 2; \
        if (be->upload_weight(be, &w, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; } } while (0)
    double t0 = ds_now();
    UP(m.embed, buf, V, d);
    UP(m.final_norm, ones, 1, d);
    m.lm_head = m.embed;
    for (int l = 0; l < L; l++) {
        Qwen3Layer *y = &m.layers[l];
        UP(y->input_norm, ones, 1, d); UP(y->post_norm, ones, 1, d); UP(y->q_norm, ones, 1, hd); UP(y->k_norm, ones, 1, hd);
        UP(y->q_proj, buf, H * hd, d); UP(y->k_proj, buf + 1, KV * hd, d); UP(y->v_proj, buf + 2, KV * hd, d);
        UP(y->o_proj, buf + 3, d, H * hd); UP(y->gate_proj, buf + 4, ff, d); UP(y->up_proj, buf + 5, ff, d); UP(y->down_proj, buf + 6, d, ff);
    }
    be->synchronize(be);
    /* bytes one decode step reads: every layer, the final norm, lm_head once (the embedding
     * row is negligible) */
    const char *dev_info = be->name; /* the GPU's name and the product settings on CUDA */
#ifdef DSPARK_HAVE_CUDA
    if (!strcmp(be->name, "cuda")) dev_info = backend_cuda_info(be);
#endif
    printf("bench_cuda: %s\nbench_cuda: %d layers, %.2f GB of BF16 weights uploaded in %.1f s\n", dev_info, L, bytes / 1e9, ds_now() - t0);
    /* copy bandwidth: 1 GB device to device */
    const size_t cb = (size_t)1 << 30;
    void *a = be->alloc(be, cb), *b2 = be->alloc(be, cb);
    double bw = 0;
    if (a && b2) {
        double ct[10];
        for (int r = -1; r < 10; r++) {
            be->synchronize(be);
            double c0 = ds_now();
            be->copy(be, b2, a, cb);
            be->synchronize(be);
            if (r >= 0) ct[r] = ds_now() - c0;
        }
        qsort(ct, 10, sizeof(double), cmp_d);
        bw = 2.0 * cb / ct[5]; /* bytes read + written (the convention of our measured GPU anchors) */
    }
    if (a) be->free(be, a);
    if (b2) be->free(be, b2);
    const double floor_s = bytes / bw;
    printf("device-to-device copy %.0f GB/s (read + written) -> memory floor %.3f ms per step\n", bw / 1e9, floor_s * 1e3);
    /* the product kernel alone at 1 row: bytes of the weight / time, against the copy bandwidth */
    {
        float *x = be->alloc(be, sizeof(float) * ff), *o = be->alloc(be, sizeof(float) * V);
        const Weight *ws[3] = {&m.embed, &m.layers[0].gate_proj, &m.layers[0].down_proj};
        const char *wn[3] = {"lm_head 151936x2560", "gate_proj 9728x2560", "down_proj 2560x9728"};
        for (int k = 0; k < 3 && x && o; k++) {
            double mt[21];
            for (int r = -1; r < 21; r++) {
                be->synchronize(be);
                double c0 = ds_now();
                be->matmul(be, o, x, ws[k], 1);
                be->synchronize(be);
                if (r >= 0) mt[r] = ds_now() - c0;
            }
            qsort(mt, 21, sizeof(double), cmp_d);
            double wb = (double)ws[k]->rows * ws[k]->cols * 2;
            printf("matmul 1 row, %-22s %8.1f us  %6.0f GB/s  (%.2f of copy bandwidth)\n", wn[k], mt[10] * 1e6, wb / mt[10] / 1e9,
                   wb / mt[10] / bw);
        }
        if (x) be->free(be, x);
        if (o) be->free(be, o);
    }
    if (mm_only) { /* --mm: each product of a layer (as the model calls them) and lm_head at 1..64 rows */
        float *x = be->alloc(be, sizeof(float) * 64 * ff), *o = be->alloc(be, sizeof(float) * 64 * (size_t)V),
              *o2 = be->alloc(be, sizeof(float) * 64 * (size_t)ff), *o3 = be->alloc(be, sizeof(float) * 64 * (size_t)ff);
        /* and the matmul_norm calls (the norm folded in, pieces made by the call), as the model makes them */
        const char *pn[8] = {"q/k/v (multi)", "o_proj", "gate/up (multi)", "down_proj", "lm_head", "q/k/v (norm)", "gate/up (norm+act)", "lm_head (norm)"};
        const double pb[8] = {2.0 * d * (H + 2 * KV) * hd, 2.0 * H * hd * d, 4.0 * d * ff, 2.0 * ff * d, 2.0 * V * d, 2.0 * d * (H + 2 * KV) * hd, 4.0 * d * ff, 2.0 * V * d};
        const int rows[7] = {1, 2, 4, 8, 16, 32, 64};
        printf("\nproducts, us per call (20 back to back, layer i %% %d), and the share of the copy bandwidth:\n%-18s", L, "rows");
        for (int r = 0; r < 7; r++) printf(" %14d", rows[r]);
        printf("\n");
        double tot[7] = {0};
        for (int k = 0; k < (be->matmul_norm ? 8 : 5) && x && o && o2 && o3; k++) {
            printf("%-18s", pn[k]);
            for (int r = 0; r < 7; r++) {
                const int n = rows[r];
                double best = 1e9;
                for (int rep = 0; rep < 3; rep++) {
                    be->synchronize(be);
                    double c0 = ds_now();
                    for (int it = 0; it < 20; it++) {
                        /* each call another layer's weights (as in a step; L2 holds a whole small product) */
                        const Qwen3Layer *y = &m.layers[it % L];
                        if (k >= 5) {
                            float *outs[3] = {k == 6 ? o2 : o, k == 6 ? o3 : o2, o3};
                            const Weight *wq[3] = {&y->q_proj, &y->k_proj, &y->v_proj}, *wg[2] = {&y->gate_proj, &y->up_proj}, *wl[1] = {&m.embed};
                            be->matmul_norm(be, outs, x, &y->input_norm, 1e-6f, k == 5 ? wq : k == 6 ? wg : wl, k == 5 ? 3 : k == 6 ? 2 : 1, n,
                                            k == 6, x);
                        } else if (k == 0 && be->matmul_multi) {
                            float *outs[3] = {o, o2, o3};
                            const Weight *ws[3] = {&y->q_proj, &y->k_proj, &y->v_proj};
                            be->matmul_multi(be, outs, x, ws, 3, n, 0);
                        } else if (k == 0) {
                            be->matmul(be, o, x, &y->q_proj, n); be->matmul(be, o2, x, &y->k_proj, n); be->matmul(be, o3, x, &y->v_proj, n);
                        } else if (k == 2 && be->matmul_multi) {
                            float *outs[2] = {o2, o3};
                            const Weight *ws[2] = {&y->gate_proj, &y->up_proj};
                            be->matmul_multi(be, outs, x, ws, 2, n, 0);
                        } else if (k == 2) {
                            be->matmul(be, o2, x, &y->gate_proj, n); be->matmul(be, o3, x, &y->up_proj, n);
                        } else be->matmul(be, o, x, k == 1 ? &y->o_proj : k == 3 ? &y->down_proj : &m.embed, n);
                    }
                    be->synchronize(be);
                    const double tt = (ds_now() - c0) / 20;
                    best = tt < best ? tt : best;
                }
                if (k < 5) tot[r] += k == 4 ? best : best * L;
                printf(" %7.1f (%.2f)", best * 1e6, pb[k] / best / bw);
            }
            printf("\n");
        }
        printf("%-18s", "sum of a step, ms"); /* (the plain products) */
        for (int r = 0; r < 7; r++) printf(" %14.3f", tot[r] * 1e3);
        printf("\n");
        return 0;
    }
    Qwen3State st;
    if (qwen3_state_init(&st, &m, 256, 256, 0, 1, ctx + 300, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    int fail = 0;
    double prefill = time_forward(&m, &st, 256, 0, 1, 3, err, &fail);
    for (int p = 256; p < ctx && !fail; p += 256) time_forward(&m, &st, ctx - p < 256 ? ctx - p : 256, p, 1, 1, err, &fail);
    const int ns[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    double t[9], tn[9], td[9] = {0}; /* with the step graphs, without; logits left on the device (1..16 tokens) */
    for (int i = 0; i < 9 && !fail; i++) t[i] = time_forward(&m, &st, ns[i], ctx, ns[i] <= 16 ? ns[i] : 1, ns[i] <= 64 ? reps : 3, err, &fail);
    /* the engine's verify (device sampling) reads its logits where they are: without the copy
     * of n x vocab floats to pageable host memory, which at 8 rows (4.9 MB) is ~0.4 ms of the row above */
    const bool dev_logits = !be->host_memory;
    for (int i = 0; i < 5 && !fail && dev_logits; i++) td[i] = time_forward_at(&m, &st, ns[i], ctx, ns[i], true, reps, err, &fail);
    long caps = 0, reps_g = 0, miss = 0;
#ifdef DSPARK_HAVE_CUDA
    if (!strcmp(be->name, "cuda")) backend_cuda_graph_stats(be, &caps, &reps_g, &miss);
#endif
    const bool graphs = be->graph_begin != NULL;
    void (*gb)(Backend *, int) = be->graph_begin;
    bool (*ge)(Backend *) = be->graph_end;
    be->graph_begin = NULL;
    be->graph_end = NULL;
    for (int i = 0; i < 9 && !fail; i++)
        tn[i] = graphs ? time_forward(&m, &st, ns[i], ctx, ns[i] <= 16 ? ns[i] : 1, ns[i] <= 64 ? reps : 3, err, &fail) : t[i];
    be->graph_begin = gb;
    be->graph_end = ge;
    if (fail) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    char head[64];
    snprintf(head, sizeof head, "step (context %d)", ctx);
    printf("\nstep graphs: %s (%ld recorded, %ld replayed, %ld checks without a record)\n", graphs ? "on" : "off (DSPARK_CUDA_GRAPHS=0)",
           caps, reps_g, miss);
    printf("%-34s %10s %10s %10s %12s %16s %10s\n", head, "ms", "x floor", "x 1 token", "no graphs ms", "dev logits ms", "x 1 token");
    for (int i = 0; i < 9; i++) {
        char lab[64];
        if (i == 0) snprintf(lab, sizeof lab, "decode, 1 token");
        else snprintf(lab, sizeof lab, "%d tokens in one forward%s", ns[i], ns[i] > 64 ? " (cuBLAS)" : "");
        printf("%-34s %10.3f %10.2f %10.2f %12.3f", lab, t[i] * 1e3, t[i] / floor_s, t[i] / t[0], tn[i] * 1e3);
        if (td[i] > 0) printf(" %16.3f %10.2f", td[i] * 1e3, td[i] / td[0]);
        printf("\n");
    }
    if (dev_logits) printf("(dev logits: the logit rows left on the device, as the engine's device sampling and verify read them)\n");
    printf("%-34s %10.3f   (%.0f tokens/s)\n", "prefill 256 tokens", prefill * 1e3, 256 / prefill);
    if (profile) { /* one decode step, every op synchronised */
        op_profile_wrap(be, true);
        double step = time_forward(&m, &st, 1, ctx, 1, 5, err, &fail) * 1e3, sum = 0;
        op_profile_unwrap(be);
        printf("\nprofile of a synchronised decode step (%.3f ms; 7 steps, per step):", step);
        for (int i = 0; i < OP_N; i++) {
            sum += op_time[i] / 7 * 1e3;
            if (op_time[i] > 0) printf(" %s %.3f ms", op_name[i], op_time[i] / 7 * 1e3);
        }
        printf("; rest %.3f ms\n", step - sum);
    }
    /* --ablate: the graphed decode and 8-token steps with op classes left out */
    enum { N_AB = 7 };
    static const int ab_masks[N_AB] = {0, AB_ATT, AB_QKNORM, AB_NORM, AB_SWIGLU, AB_ATT | AB_QKNORM | AB_NORM | AB_SWIGLU | AB_OTHER, AB_MATMUL};
    static const char *const ab_names[N_AB] = {"every op", "without attention", "without qk_norm_rope_kv", "without the norms",
                                               "without swiglu", "products alone", "without the products"};
    double ab_ms[N_AB][2] = {{0}};
    if (ablate) {
        printf("\nablation (timing only: a step with op classes left out computes nothing meaningful)\n%-26s %12s %12s\n", "",
               "1 token ms", "8 tokens ms");
        for (int k = 0; k < N_AB && !fail; k++) {
            op_ablate_wrap(be, ab_masks[k]);
            ab_ms[k][0] = time_forward(&m, &st, 1, ctx, 1, reps, err, &fail) * 1e3;
            ab_ms[k][1] = time_forward(&m, &st, 8, ctx, 8, reps, err, &fail) * 1e3;
            op_profile_unwrap(be);
            printf("%-26s %12.3f %12.3f\n", ab_names[k], ab_ms[k][0], ab_ms[k][1]);
        }
        if (fail) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
    }
    /* batched decode: R requests, one token each, each in its own slot with ctx positions */
    int nb = 0, rs[9];
    double tb_all[9], tb_one[9];
    size_t bkv = 0;
    if (batch_max > 0) {
        Qwen3State bst;
        while (qwen3_state_init(&bst, &m, batch_max, batch_max, 0, batch_max, ctx + 1, err)) {
            fprintf(stderr, "bench_cuda: %d requests: %s\n", batch_max, err);
            batch_max /= 2;
            if (!batch_max) break;
        }
        if (batch_max) {
            bkv = 2 * sizeof(float) * (size_t)L * batch_max * (ctx + 1) * bst.kv.kv_dim;
            copy_context(be, &bst.kv, &st.kv, ctx);
            for (int R = 1; R <= batch_max && !fail; R *= 2, nb++) {
                const int rr = R <= 16 ? reps : (reps < 6 ? reps : 6);
                rs[nb] = R;
                tb_all[nb] = time_decode_batch(&m, &bst, R, ctx, R, rr, err, &fail);
                if (!fail) tb_one[nb] = time_decode_batch(&m, &bst, R, ctx, 1, rr, err, &fail);
            }
            qwen3_state_free(&bst, &m);
            if (fail) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
            printf("\nbatched decode: one token for each of R requests (own KV slot, context %d; KV cache of %d slots %.1f GB)\n", ctx,
                   batch_max, bkv / 1e9);
            printf("%-12s %10s %12s %12s %14s %10s\n", "requests", "ms/step", "tokens/s", "x 1 request", "1 logit row ms", "x floor");
            for (int i = 0; i < nb; i++)
                printf("%-12d %10.3f %12.0f %12.2f %14.3f %10.2f\n", rs[i], tb_all[i] * 1e3, rs[i] / tb_all[i], tb_all[i] / tb_all[0],
                       tb_one[i] * 1e3, tb_all[i] / floor_s);
        }
    }
    /* drafting and synthetic speculative rounds on a 1-slot state with the drafter's features */
    DraftBench db;
    memset(&db, 0, sizeof db);
    bool have_draft = false;
    {
        Qwen3State vst;
        if (qwen3_state_init(&vst, &m, 16, 16, 5, 1, ctx + 64, err)) { fprintf(stderr, "bench_cuda: %s\n", err); return 1; }
        copy_context(be, &vst.kv, &st.kv, ctx);
        if (draft_eager && be->graph_begin) {
            g_graph_begin = be->graph_begin;
            g_graph_end = be->graph_end;
            be->graph_begin = eager_draft_begin;
            be->graph_end = eager_draft_end;
        }
        ds_status rc = bench_draft(&m, &vst, buf, ones, ctx, reps, host_sampling, &db, err);
        if (g_graph_begin) {
            be->graph_begin = g_graph_begin;
            be->graph_end = g_graph_end;
        }
        qwen3_state_free(&vst, &m);
        if (rc) fprintf(stderr, "bench_cuda: drafter: %s\n", err);
        have_draft = !rc;
    }
    if (have_draft) {
        printf("drafter steps: %s\n", !be->graph_begin ? "op by op (no step graphs)" : draft_eager ? "op by op (--draft-eager)" : "step graphs");
        printf("drafting at context %d: drafter_block %.3f ms; block + 7 x (%s) %.3f ms "
               "(%.3f ms per slot; host sample_dist/argmax %.3f ms per row)\n", ctx, db.block_ms,
               db.dev_sampling ? "drafter_head_dev + sample_probs + draw, one read" : "drafter_head + host sample_dist/argmax",
               db.round_ms, db.head_ms, db.host_row_ms);
        printf("drafter_append_context of k positions (ms):");
        for (int k = 1; k <= 8; k++) printf(" %d: %.3f", k, db.append_ms[k]);
        printf("\n\nSYNTHETIC end-to-end (random weights, acceptance FIXED at tau tokens per round, not measured): one round =\n"
               "draft 7 slots + verify forward of 8 tokens (8 logit rows, 5 feature layers) + %s + append tau positions\n",
               db.dev_sampling ? "device sampling and verification (sample_probs/draw/verify, one read per round)"
                               : "host sampling (rows downloaded, sample_dist, verify_block)");
        printf("(verify forward of 8 tokens with logits%s and features alone: %.3f ms)\n", db.dev_sampling ? " left on the device" : " to the host",
               db.verify_ms);
        printf("%-30s %10s %10s %10s\n", "", "ms/round", "tokens/s", "x plain");
        printf("%-30s %10.3f %10.1f %10.2f\n", "plain (1-token step + sample)", db.plain_ms, 1e3 / db.plain_ms, 1.0);
        for (int tau = 2; tau <= 5; tau++) {
            char lab[48];
            snprintf(lab, sizeof lab, "speculative, tau = %d", tau);
            printf("%-30s %10.3f %10.1f %10.2f\n", lab, db.spec_round_ms[tau], tau * 1e3 / db.spec_round_ms[tau],
                   tau * db.plain_ms / db.spec_round_ms[tau]);
        }
    }
    JsonReport rep;
    json_report_open(&rep, json_out);
    {
        FILE *f = rep.f;
        if (f) {
            fputs("{\"device\": \"", f);
            for (const char *p = dev_info; *p; p++) /* a JSON string: the info has no control characters */
                fprintf(f, *p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
            fprintf(f, "\", \"layers\": %d, \"weight_bytes\": %zu, \"copy_gbps\": %.1f, \"floor_ms\": %.4f, \"ctx\": %d, \"prefill256_ms\": %.3f, \"graphs\": %s, \"steps\": [",
                    L, bytes, bw / 1e9, floor_s * 1e3, ctx, prefill * 1e3, graphs ? "true" : "false");
            for (int i = 0; i < 9; i++) {
                fprintf(f, "%s{\"tokens\": %d, \"ms\": %.4f, \"ms_no_graphs\": %.4f", i ? ", " : "", ns[i], t[i] * 1e3, tn[i] * 1e3);
                if (td[i] > 0) fprintf(f, ", \"ms_logits_on_device\": %.4f", td[i] * 1e3);
                fprintf(f, "}");
            }
            fprintf(f, "], \"batch_kv_bytes\": %zu, \"batch\": [", bkv);
            for (int i = 0; i < nb; i++)
                fprintf(f, "%s{\"requests\": %d, \"ms\": %.4f, \"tokens_per_s\": %.1f, \"ms_one_logit\": %.4f}", i ? ", " : "", rs[i],
                        tb_all[i] * 1e3, rs[i] / tb_all[i], tb_one[i] * 1e3);
            fprintf(f, "]");
            if (have_draft) {
                fprintf(f, ", \"draft\": {\"layers\": %d, \"block_size\": %d, \"markov_rank\": %d, \"weight_bytes\": %zu, \"block_ms\": %.4f, "
                           "\"round_ms\": %.4f, \"head_ms\": %.4f, \"host_row_ms\": %.4f, \"sampling\": \"%s\", \"append_ms\": [",
                        db.layers, db.block, db.rank, db.draft_bytes, db.block_ms, db.round_ms, db.head_ms, db.host_row_ms,
                        db.dev_sampling ? "device" : "host");
                for (int k = 1; k <= 8; k++) fprintf(f, "%s%.4f", k > 1 ? ", " : "", db.append_ms[k]);
                fprintf(f, "]}, \"synthetic_e2e\": {\"sampling\": \"%s\", \"plain_ms\": %.4f, \"plain_tokens_per_s\": %.1f, \"verify8_ms\": %.4f, \"spec\": [",
                        db.dev_sampling ? "device" : "host", db.plain_ms, 1e3 / db.plain_ms, db.verify_ms);
                for (int tau = 2; tau <= 5; tau++)
                    fprintf(f, "%s{\"tau\": %d, \"round_ms\": %.4f, \"tokens_per_s\": %.1f, \"speedup\": %.3f}", tau > 2 ? ", " : "", tau,
                            db.spec_round_ms[tau], tau * 1e3 / db.spec_round_ms[tau], tau * db.plain_ms / db.spec_round_ms[tau]);
                fprintf(f, "]}");
            }
            if (ablate) {
                fprintf(f, ", \"ablation\": [");
                for (int k = 0; k < N_AB; k++)
                    fprintf(f, "%s{\"step\": \"%s\", \"ms_1_token\": %.4f, \"ms_8_tokens\": %.4f}", k ? ", " : "", ab_names[k], ab_ms[k][0],
                            ab_ms[k][1]);
                fprintf(f, "]");
            }
            fprintf(f, "}\n");
        }
    }
    const int rc = json_report_close(&rep, "bench_cuda");
    qwen3_state_free(&st, &m);
    for (int l = 0; l < L; l++) qwen3_layer_release(&m.layers[l], be);
    be->release_weight(be, &m.embed);
    be->release_weight(be, &m.final_norm);
    free(m.layers);
    free(buf);
    free(ones);
    be->destroy(be);
    return rc;
}
