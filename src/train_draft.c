/* train_draft.c - DeepSpec's DSpark/DFlash training forward and backward (see train_draft.h).
 *
 * Shapes: S context positions, A blocks of B slots, N = A*B block rows, d hidden, H/KV heads of
 * hd, qd = H*hd, kd = KV*hd, ff intermediate, r Markov rank, m target layers, V vocabulary.
 * Keys of a layer: rows 0..S-1 = context (k_proj(ctx), RoPE at 0..S-1), rows S+i = block row
 * i (RoPE at p+k). Block row i = n*B+k sees keys [0, p_n) and [S+n*B, S+n*B+B) (DeepSpec's
 * create_dspark_attention_mask); a dummy block sees none and its attention output is 0, as flex
 * attention gives for a fully masked row.
 *
 * The ops (linear, RMSNorm, RoPE, SwiGLU, two-range attention) are train_ops.c's; gradients
 * there accumulate (+=), so the residual stream's gradient d_x flows through each norm's
 * backward by accumulation. */
#include "train_draft.h"
#include "draft_init.h"
#include "train_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parameter layout ---- */

static ds_status add2(ParamSet *p, const char *name, int64_t rows, int64_t cols, bool trainable, char *err) {
    int64_t s[2] = {rows, cols};
    return params_add(p, name, 2, s, trainable, err);
}
static ds_status add1(ParamSet *p, const char *name, int64_t n, bool trainable, char *err) {
    int64_t s[1] = {n};
    return params_add(p, name, 1, s, trainable, err);
}

/* DeepSpec's module registration order (digest §1.3, §1.7); trainable_only for the grads. */
static ds_status build_layout(ParamSet *p, const DraftConfig *c, bool trainable_only, char *err) {
    const Qwen3Config *b = &c->base;
    const int64_t V = b->vocab_size, d = b->hidden_size, qd = (int64_t)b->n_heads * b->head_dim,
                  kd = (int64_t)b->n_kv_heads * b->head_dim, ff = b->intermediate_size, r = c->markov_rank,
                  m = c->n_target_layers;
    ds_status rc;
    char name[PARAM_NAME_LEN];
    if (!trainable_only && (rc = add2(p, "embed_tokens.weight", V, d, false, err))) return rc;
    for (int l = 0; l < b->n_layers; l++) {
#define L2(suffix, rows, cols) do { snprintf(name, sizeof name, "layers.%d.%s", l, suffix); \
        if ((rc = add2(p, name, rows, cols, true, err))) return rc; } while (0)
#define L1(suffix, n) do { snprintf(name, sizeof name, "layers.%d.%s", l, suffix); \
        if ((rc = add1(p, name, n, true, err))) return rc; } while (0)
        L2("self_attn.q_proj.weight", qd, d);
        L2("self_attn.k_proj.weight", kd, d);
        L2("self_attn.v_proj.weight", kd, d);
        L2("self_attn.o_proj.weight", d, qd);
        L1("self_attn.q_norm.weight", b->head_dim);
        L1("self_attn.k_norm.weight", b->head_dim);
        L2("mlp.gate_proj.weight", ff, d);
        L2("mlp.up_proj.weight", ff, d);
        L2("mlp.down_proj.weight", d, ff);
        L1("input_layernorm.weight", d);
        L1("post_attention_layernorm.weight", d);
#undef L2
#undef L1
    }
    if ((rc = add1(p, "norm.weight", d, true, err)) || (rc = add2(p, "fc.weight", d, m * d, true, err)) ||
        (rc = add1(p, "hidden_norm.weight", d, true, err)))
        return rc;
    if (!trainable_only && (rc = add2(p, "lm_head.weight", V, d, false, err))) return rc;
    if (r > 0) {
        if ((rc = add2(p, "markov_head.markov_w1.weight", V, r, true, err)) ||
            (rc = add2(p, "markov_head.markov_w2.weight", V, r, true, err)))
            return rc;
        if (c->markov_type == MARKOV_GATED &&
            ((rc = add2(p, "markov_head.gate_proj.weight", r, d + r, true, err)) ||
             (rc = add1(p, "markov_head.gate_proj.bias", r, true, err))))
            return rc;
        if (c->markov_type == MARKOV_RNN &&
            ((rc = add2(p, "markov_head.joint_proj.weight", 3 * r, 2 * r + d, true, err)) ||
             (rc = add1(p, "markov_head.joint_proj.bias", 3 * r, true, err))))
            return rc;
    }
    if (c->enable_confidence_head) {
        int64_t in = d + (c->confidence_head_with_markov ? r : 0);
        if ((rc = add2(p, "confidence_head.proj.weight", 1, in, true, err)) ||
            (rc = add1(p, "confidence_head.proj.bias", 1, true, err)))
            return rc;
    }
    return DS_OK;
}

static void bind_ptrs(TrainPtrs *P, const ParamSet *s, int n_layers) {
    TrainLayerPtrs *layers = P->layers;
    memset(P, 0, sizeof *P);
    P->layers = layers;
    char name[PARAM_NAME_LEN];
    P->embed = params_get(s, "embed_tokens.weight");
    P->lm_head = params_get(s, "lm_head.weight");
    for (int l = 0; l < n_layers; l++) {
        TrainLayerPtrs *L = &P->layers[l];
#define G(field, suffix) do { snprintf(name, sizeof name, "layers.%d.%s", l, suffix); L->field = params_get(s, name); } while (0)
        G(q_proj, "self_attn.q_proj.weight");
        G(k_proj, "self_attn.k_proj.weight");
        G(v_proj, "self_attn.v_proj.weight");
        G(o_proj, "self_attn.o_proj.weight");
        G(q_norm, "self_attn.q_norm.weight");
        G(k_norm, "self_attn.k_norm.weight");
        G(gate_proj, "mlp.gate_proj.weight");
        G(up_proj, "mlp.up_proj.weight");
        G(down_proj, "mlp.down_proj.weight");
        G(input_norm, "input_layernorm.weight");
        G(post_norm, "post_attention_layernorm.weight");
#undef G
    }
    P->norm = params_get(s, "norm.weight");
    P->fc = params_get(s, "fc.weight");
    P->hidden_norm = params_get(s, "hidden_norm.weight");
    P->w1 = params_get(s, "markov_head.markov_w1.weight");
    P->w2 = params_get(s, "markov_head.markov_w2.weight");
    P->gate_w = params_get(s, "markov_head.gate_proj.weight");
    P->gate_b = params_get(s, "markov_head.gate_proj.bias");
    P->joint_w = params_get(s, "markov_head.joint_proj.weight");
    P->joint_b = params_get(s, "markov_head.joint_proj.bias");
    P->conf_w = params_get(s, "confidence_head.proj.weight");
    P->conf_b = params_get(s, "confidence_head.proj.bias");
}

/* ---- activation arena ---- */

typedef struct {
    float *x_in, *hn, *rstd1;           /* [N][d], [N][d], [N] */
    float *q_raw, *q_rstd, *qr;         /* [N][qd], [N*H], [N][qd] (normed, rotated) */
    float *k_raw, *k_rstd, *K, *V;      /* [S+N][kd], [(S+N)*KV], [S+N][kd] x2 */
    float *att, *lse;                   /* [N][qd], [N][H] */
    float *x_mid, *pn, *rstd2;          /* [N][d], [N][d], [N] */
    float *gate, *up;                   /* [N][ff] */
} LayerActs;

typedef struct {
    LayerActs *L;                       /* [Ld] */
    float *c0, *ctx, *rstd_c;           /* [S][d], [S][d], [S] */
    float *x_last, *rstd_f, *out;       /* [N][d], [N], [N][d] */
    float *heads;                       /* heads_act_floats */
    HeadActs ha;
    /* backward scratch */
    float *d_x, *d_tmp, *d_out, *d_u, *d_conf, *heads_scratch;
    float *act, *d_act, *d_up;          /* [N][ff] */
    float *d_att, *d_qr;                /* [N][qd] */
    float *dK, *dV, *d_kraw;            /* [S+N][kd] */
    float *d_ctx, *d_c0;                /* [S][d] */
    /* vocabulary chunk */
    float *logits_c, *tlogits_c, *dlogits_c, *th_c; /* [R][V] x3, [R][d] */
    /* ints */
    TrainLossParts *parts_c;            /* [chunk_cap] */
    int chunk_cap;                      /* chunk_blocks at init: the chunk buffers' size */
    int32_t *noise_ids, *pos, *r0lo, *r0hi, *r1lo, *r1hi, *prev, *labels, *tgt_row, *anchors; /* pos [S+N] */
    uint8_t *keep;
} Bufs;

#define ALIGN16(n) (((n) + 15) / 16 * 16)

/* Assign every buffer from base (NULL: only count). Returns floats used. */
static size_t layout_arena(TrainDraft *t, Bufs *b, float *base, int32_t *ibase, size_t *ints) {
    const DraftConfig *c = &t->cfg;
    const Qwen3Config *q = &c->base;
    const size_t S = (size_t)t->max_seq, N = (size_t)t->max_anchors * c->block_size, d = (size_t)q->hidden_size,
                 H = (size_t)q->n_heads, KV = (size_t)q->n_kv_heads, qd = H * q->head_dim, kd = KV * q->head_dim,
                 ff = (size_t)q->intermediate_size, V = (size_t)q->vocab_size,
                 R = (size_t)t->chunk_blocks * c->block_size;
    size_t off = 0, ioff = 0;
#define TAKE(p, n) do { (p) = base ? base + off : NULL; off += ALIGN16((size_t)(n)); } while (0)
#define ITAKE(p, n) do { (p) = ibase ? ibase + ioff : NULL; ioff += ALIGN16((size_t)(n)); } while (0)
    for (int l = 0; l < q->n_layers; l++) {
        LayerActs *L = &b->L[l];
        TAKE(L->x_in, N * d); TAKE(L->hn, N * d); TAKE(L->rstd1, N);
        TAKE(L->q_raw, N * qd); TAKE(L->q_rstd, N * H); TAKE(L->qr, N * qd);
        TAKE(L->k_raw, (S + N) * kd); TAKE(L->k_rstd, (S + N) * KV); TAKE(L->K, (S + N) * kd); TAKE(L->V, (S + N) * kd);
        TAKE(L->att, N * qd); TAKE(L->lse, N * H);
        TAKE(L->x_mid, N * d); TAKE(L->pn, N * d); TAKE(L->rstd2, N);
        TAKE(L->gate, N * ff); TAKE(L->up, N * ff);
    }
    TAKE(b->c0, S * d); TAKE(b->ctx, S * d); TAKE(b->rstd_c, S);
    TAKE(b->x_last, N * d); TAKE(b->rstd_f, N); TAKE(b->out, N * d);
    HeadWeights hw = {.type = c->markov_rank > 0 ? c->markov_type : MARKOV_NONE, .V = q->vocab_size, .d = q->hidden_size,
                      .r = c->markov_rank, .B = c->block_size};
    TAKE(b->heads, heads_act_floats(&hw, (int)N));
    TAKE(b->d_x, N * d); TAKE(b->d_tmp, N * d); TAKE(b->d_out, N * d);
    TAKE(b->d_u, N * (size_t)(c->markov_rank > 0 ? c->markov_rank : 1)); TAKE(b->d_conf, N);
    TAKE(b->heads_scratch, heads_bwd_scratch_floats(&hw, (int)N));
    TAKE(b->act, N * ff); TAKE(b->d_act, N * ff); TAKE(b->d_up, N * ff);
    TAKE(b->d_att, N * qd); TAKE(b->d_qr, N * qd);
    TAKE(b->dK, (S + N) * kd); TAKE(b->dV, (S + N) * kd); TAKE(b->d_kraw, (S + N) * kd);
    TAKE(b->d_ctx, S * d); TAKE(b->d_c0, S * d);
    TAKE(b->logits_c, R * V); TAKE(b->tlogits_c, R * V); TAKE(b->dlogits_c, R * V); TAKE(b->th_c, R * d);
    TAKE(t->eval_mask, N); TAKE(t->soft_label, N);
    ITAKE(b->noise_ids, N); ITAKE(b->pos, S + N); ITAKE(b->r0lo, N); ITAKE(b->r0hi, N); ITAKE(b->r1lo, N); ITAKE(b->r1hi, N);
    ITAKE(b->prev, N); ITAKE(b->labels, N); ITAKE(b->tgt_row, N); ITAKE(b->anchors, t->max_anchors);
#undef TAKE
#undef ITAKE
    *ints = ioff;
    return off;
}

/* ---- init / load ---- */

static void widen_rows(float *dst, const Weight *w, size_t n) {
    if (w->dtype == DS_F32) { memcpy(dst, w->host, n * sizeof(float)); return; }
    const uint16_t *s = w->host;
    for (size_t i = 0; i < n; i++) dst[i] = w->dtype == DS_BF16 ? ds_bf16_to_f32(s[i]) : ds_f16_to_f32(s[i]);
}

ds_status train_draft_init(TrainDraft *t, const DraftConfig *cfg, const Qwen3Model *target, int max_seq, int num_anchors,
                           char *err) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    const Qwen3Config *q = &cfg->base;
    if (cfg->block_size < 1 || cfg->block_size > TRAIN_MAX_BLOCK)
        return ds_err(err, DS_EARG, "train_draft: block_size %d outside 1..%d", cfg->block_size, TRAIN_MAX_BLOCK);
    if (max_seq < 2 || num_anchors < 1)
        return ds_err(err, DS_EARG, "train_draft: bad sizes (max_seq %d, num_anchors %d)", max_seq, num_anchors);
    if (cfg->markov_rank > 0 && cfg->markov_type == MARKOV_NONE)
        return ds_err(err, DS_EARG, "train_draft: markov_rank %d without a head type", cfg->markov_rank);
    if (target && (target->cfg.vocab_size != q->vocab_size || target->cfg.hidden_size != q->hidden_size))
        return ds_err(err, DS_EARG, "train_draft: target vocab/hidden %d/%d differ from the drafter's %d/%d",
                      target->cfg.vocab_size, target->cfg.hidden_size, q->vocab_size, q->hidden_size);
    t->max_seq = max_seq;
    t->max_anchors = num_anchors;
    /* vocabulary chunk: about 8M floats per [rows][V] buffer (32 MB), whole blocks */
    int cb = (int)((size_t)(8u << 20) / ((size_t)cfg->block_size * q->vocab_size));
    t->chunk_blocks = cb < 1 ? 1 : cb > num_anchors ? num_anchors : cb;
    ds_status rc;
    if ((rc = build_layout(&t->params, cfg, false, err)) || (rc = params_alloc(&t->params, err)) ||
        (rc = build_layout(&t->grads, cfg, true, err)) || (rc = params_alloc(&t->grads, err)))
        goto fail;
    t->P.layers = ds_calloc((size_t)q->n_layers, sizeof(TrainLayerPtrs));
    t->G.layers = ds_calloc((size_t)q->n_layers, sizeof(TrainLayerPtrs));
    Bufs *b = ds_calloc(1, sizeof(Bufs));
    t->priv = b;
    if (!t->P.layers || !t->G.layers || !b || !(b->L = ds_calloc((size_t)q->n_layers, sizeof(LayerActs)))) {
        rc = ds_err(err, DS_ENOMEM, "train_draft: out of memory");
        goto fail;
    }
    bind_ptrs(&t->P, &t->params, q->n_layers);
    bind_ptrs(&t->G, &t->grads, q->n_layers);
    /* norms start at 1 (Qwen3RMSNorm); the rest stays 0 until init_weights or load */
    for (int i = 0; i < t->params.n; i++) {
        const ParamInfo *pi = &t->params.info[i];
        if (strstr(pi->name, "norm.weight"))
            for (size_t j = 0; j < pi->numel; j++) t->params.data[pi->offset + j] = 1.0f;
    }
    if (target) {
        if (!target->embed.host || !target->lm_head.host) {
            rc = ds_err(err, DS_EARG, "train_draft: the target's embeddings are not in host memory");
            goto fail;
        }
        widen_rows(t->P.embed, &target->embed, (size_t)q->vocab_size * q->hidden_size);
        widen_rows(t->P.lm_head, &target->lm_head, (size_t)q->vocab_size * q->hidden_size);
    }
    size_t ints;
    t->arena_floats = layout_arena(t, b, NULL, NULL, &ints);
    t->arena = ds_malloc_aligned(t->arena_floats * sizeof(float));
    t->iarena = ds_malloc_aligned((ints ? ints : 1) * sizeof(int32_t));
    if (!t->arena || !t->iarena) {
        rc = ds_err(err, DS_ENOMEM, "train_draft: out of memory for %.1f MB of activations",
                    (double)t->arena_floats * 4 / (1 << 20));
        goto fail;
    }
    layout_arena(t, b, t->arena, t->iarena, &ints);
    b->chunk_cap = t->chunk_blocks;
    if (!(b->keep = ds_calloc((size_t)num_anchors, 1)) || !(b->parts_c = ds_calloc((size_t)t->chunk_blocks, sizeof(TrainLossParts)))) {
        rc = ds_err(err, DS_ENOMEM, "train_draft: out of memory");
        goto fail;
    }
    return DS_OK;
fail:
    train_draft_free(t);
    return rc;
}

void train_draft_free(TrainDraft *t) {
    params_free(&t->params);
    params_free(&t->grads);
    ds_free(t->P.layers);
    ds_free(t->G.layers);
    Bufs *b = t->priv;
    if (b) { ds_free(b->L); ds_free(b->keep); ds_free(b->parts_c); }
    ds_free(b);
    if (t->arena) ds_free_aligned(t->arena);
    if (t->iarena) ds_free_aligned(t->iarena);
    memset(t, 0, sizeof *t);
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [0, 1) with 53 bits */
static double rng_uniform(uint64_t *s) { return (double)(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0); }

void train_draft_init_weights(TrainDraft *t, uint64_t seed) {
    draft_init_weights(&t->params, seed, 0.02); /* initializer_range of every Qwen3 config */
}

ds_status train_draft_load(TrainDraft *t, const char *draft_dir, char *err) {
    /* frozen tensors may be absent (then they keep the target's copy) */
    return params_load(&t->params, draft_dir, true, err);
}

/* ---- anchors ---- */

int train_sample_anchors(const uint8_t *loss_mask, int S, int A, uint64_t *rng, int32_t *anchors, uint8_t *keep) {
    /* DeepSpec draws random keys for the candidates and keeps the A smallest, i.e. a uniform
     * subset without replacement, then sorts it. Selection sampling (Knuth's algorithm S) draws
     * the same distribution in one pass, already sorted, with no extra memory. */
    int nc = 0;
    for (int p = 0; p + 1 < S; p++) nc += loss_mask[p] && loss_mask[p + 1];
    int k = nc < A ? nc : A;
    int chosen = 0, seen = 0;
    for (int p = 0; p + 1 < S && chosen < k; p++) {
        if (!(loss_mask[p] && loss_mask[p + 1])) continue;
        if ((double)(nc - seen) * rng_uniform(rng) < (double)(k - chosen)) anchors[chosen++] = p;
        seen++;
    }
    DS_ASSERT(chosen == k);
    for (int i = 0; i < A; i++) {
        keep[i] = i < k;
        if (i >= k) anchors[i] = 0;
    }
    return nc;
}

/* ---- the step ---- */

static HeadWeights head_weights(const TrainDraft *t) {
    const DraftConfig *c = &t->cfg;
    HeadWeights w = {.type = c->markov_rank > 0 ? c->markov_type : MARKOV_NONE, .V = c->base.vocab_size,
                     .d = c->base.hidden_size, .r = c->markov_rank, .B = c->block_size,
                     .conf_in = c->enable_confidence_head ? c->base.hidden_size + (c->confidence_head_with_markov ? c->markov_rank : 0) : 0,
                     .w1 = t->P.w1, .w2 = t->P.w2, .gate_w = t->P.gate_w, .gate_b = t->P.gate_b, .joint_w = t->P.joint_w,
                     .joint_b = t->P.joint_b, .conf_w = t->P.conf_w, .conf_b = t->P.conf_b};
    return w;
}

ds_status train_draft_step(TrainDraft *t, const int32_t *ids, const uint8_t *loss_mask, int S, const float *features,
                           const float *last_hidden, const int32_t *anchors, const uint8_t *keep, int n_anchors,
                           uint64_t *rng, const TrainLossCfg *loss, float grad_scale, TrainDraftStats *out, char *err) {
    const DraftConfig *c = &t->cfg;
    const Qwen3Config *q = &c->base;
    Bufs *b = t->priv;
    const int B = c->block_size, d = q->hidden_size, H = q->n_heads, KV = q->n_kv_heads, hd = q->head_dim,
              qd = H * hd, kd = KV * hd, ff = q->intermediate_size, V = q->vocab_size, r = c->markov_rank,
              m = c->n_target_layers;
    const float eps = q->rms_norm_eps, theta = q->rope_theta;
    if (S < 2 || S > t->max_seq) return ds_err(err, DS_EARG, "train_draft: sequence of %d tokens (2..%d)", S, t->max_seq);
    if (n_anchors < 1 || n_anchors > t->max_anchors)
        return ds_err(err, DS_EARG, "train_draft: %d anchors (1..%d)", n_anchors, t->max_anchors);
    for (int i = 0; i < S; i++)
        if (ids[i] < 0 || ids[i] >= V) return ds_err(err, DS_EARG, "train_draft: token %d at position %d outside the vocabulary (%d)", ids[i], i, V);
    if (t->chunk_blocks < 1 || t->chunk_blocks > b->chunk_cap)
        return ds_err(err, DS_EARG, "train_draft: chunk_blocks %d outside 1..%d (it may only be lowered)", t->chunk_blocks, b->chunk_cap);
    if (!anchors && !rng) return ds_err(err, DS_EARG, "train_draft: no anchors and no rng to sample them");
    int n_cand = 0;
    for (int p = 0; p + 1 < S; p++) n_cand += loss_mask[p] && loss_mask[p + 1];
    int n_blocks;
    if (anchors) {
        for (int n = 0; n < n_anchors; n++) {
            if (anchors[n] < 0 || anchors[n] >= S)
                return ds_err(err, DS_EARG, "train_draft: anchor %d at position %d outside the sequence [0, %d)", n, anchors[n], S);
            b->anchors[n] = anchors[n];
            b->keep[n] = keep ? keep[n] != 0 : 1;
        }
        n_blocks = n_anchors;
    } else {
        train_sample_anchors(loss_mask, S, n_anchors, rng, b->anchors, b->keep);
        n_blocks = n_cand < n_anchors ? n_cand : n_anchors; /* dummies carry no loss: not computed */
    }
    int n_kept = 0;
    for (int n = 0; n < n_blocks; n++) n_kept += b->keep[n];
    const int N = n_blocks * B, NK = S + N;
    t->last_n_blocks = n_blocks;
    if (out) {
        memset(out, 0, sizeof *out);
        out->n_candidates = n_cand;
        out->n_kept = n_kept;
        out->block_size = B;
    }
    if (n_blocks == 0) return DS_OK; /* no valid anchor: no loss, no gradient (DeepSpec: all dummies) */

    /* ---- blocks (Qwen3DSparkModel.forward, digest §5.3) ---- */
    for (int i = 0; i < S; i++) b->pos[i] = i;
    for (int n = 0; n < n_blocks; n++) {
        int p = b->anchors[n], kp = b->keep[n];
        for (int k = 0; k < B; k++) {
            int i = n * B + k, li = p + k + 1;
            int safe = kp ? (li < S ? li : S - 1) : 0;
            b->noise_ids[i] = k == 0 && kp ? ids[p] : c->mask_token_id;
            b->pos[S + i] = p + k;
            b->labels[i] = ids[safe];
            b->tgt_row[i] = safe > 0 ? safe - 1 : 0;
            b->prev[i] = k == 0 ? ids[p] : b->labels[i - 1];
            int valid = kp && li < S && loss_mask[safe];
            t->eval_mask[i] = valid && (k == 0 || t->eval_mask[i - 1] > 0) ? 1.0f : 0.0f;
            b->r0lo[i] = 0;
            b->r0hi[i] = kp ? p : 0;
            b->r1lo[i] = kp ? S + n * B : 0;
            b->r1hi[i] = kp ? S + n * B + B : 0;
        }
    }

    /* ---- backbone forward ---- */
    top_linear_fwd(b->c0, features, t->P.fc, NULL, S, m * d, d);
    top_rmsnorm_fwd(b->ctx, b->rstd_c, b->c0, t->P.hidden_norm, S, d, eps);
    top_embedding_fwd(b->L[0].x_in, t->P.embed, b->noise_ids, N, d);
    for (int l = 0; l < q->n_layers; l++) {
        LayerActs *A = &b->L[l];
        const TrainLayerPtrs *W = &t->P.layers[l];
        float *x_out = l + 1 < q->n_layers ? b->L[l + 1].x_in : b->x_last;
        top_rmsnorm_fwd(A->hn, A->rstd1, A->x_in, W->input_norm, N, d, eps);
        top_linear_fwd(A->q_raw, A->hn, W->q_proj, NULL, N, d, qd);
        top_rmsnorm_fwd(A->qr, A->q_rstd, A->q_raw, W->q_norm, N * H, hd, eps);
        top_rope_fwd(A->qr, b->pos + S, N, H, hd, theta);
        top_linear_fwd(A->k_raw, b->ctx, W->k_proj, NULL, S, d, kd);
        top_linear_fwd(A->k_raw + (size_t)S * kd, A->hn, W->k_proj, NULL, N, d, kd);
        top_linear_fwd(A->V, b->ctx, W->v_proj, NULL, S, d, kd);
        top_linear_fwd(A->V + (size_t)S * kd, A->hn, W->v_proj, NULL, N, d, kd);
        top_rmsnorm_fwd(A->K, A->k_rstd, A->k_raw, W->k_norm, NK * KV, hd, eps);
        top_rope_fwd(A->K, b->pos, NK, KV, hd, theta);
        top_attention_fwd(A->att, A->lse, A->qr, A->K, A->V, b->r0lo, b->r0hi, b->r1lo, b->r1hi, N, NK, H, KV, hd);
        top_linear_fwd(b->d_tmp, A->att, W->o_proj, NULL, N, qd, d);
        for (size_t j = 0; j < (size_t)N * d; j++) A->x_mid[j] = A->x_in[j] + b->d_tmp[j];
        top_rmsnorm_fwd(A->pn, A->rstd2, A->x_mid, W->post_norm, N, d, eps);
        top_linear_fwd(A->gate, A->pn, W->gate_proj, NULL, N, d, ff);
        top_linear_fwd(A->up, A->pn, W->up_proj, NULL, N, d, ff);
        top_swiglu_fwd(b->act, A->gate, A->up, (size_t)N * ff);
        top_linear_fwd(b->d_tmp, b->act, W->down_proj, NULL, N, ff, d);
        for (size_t j = 0; j < (size_t)N * d; j++) x_out[j] = A->x_mid[j] + b->d_tmp[j];
    }
    top_rmsnorm_fwd(b->out, b->rstd_f, b->x_last, t->P.norm, N, d, eps);

    /* ---- heads ---- */
    HeadWeights hw = head_weights(t);
    heads_acts_bind(&b->ha, &hw, N, b->heads);
    heads_fwd(&hw, &b->ha, b->out, b->prev, n_blocks);
    const bool has_conf = hw.conf_in > 0;
    t->conf = has_conf ? b->ha.conf : NULL;

    /* ---- loss in vocabulary chunks, normalised by the TOTAL weight (digest §5.5) ---- */
    double D = 0;
    for (int i = 0; i < N; i++) D += t->eval_mask[i] * (loss->gamma > 0 ? exp(-(double)(i % B) / loss->gamma) : 1.0);
    double s_ce = 0, s_l1 = 0, s_bce = 0;
    memset(b->d_out, 0, sizeof(float) * (size_t)N * d);
    if (r > 0) memset(b->d_u, 0, sizeof(float) * (size_t)N * r);
    for (int n0 = 0; n0 < n_blocks; n0 += t->chunk_blocks) {
        int nb = n_blocks - n0 < t->chunk_blocks ? n_blocks - n0 : t->chunk_blocks, R = nb * B, i0 = n0 * B;
        const float *out_c = b->out + (size_t)i0 * d;
        top_linear_fwd(b->logits_c, out_c, t->P.lm_head, NULL, R, d, V);
        if (r > 0) /* + Markov bias W2 u (the same linear, accumulated into the logits) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, r, 1.0f, b->ha.u + (size_t)i0 * r, r, t->P.w2, r, 1.0f,
                        b->logits_c, V);
        if (t->dbg_logits) memcpy(t->dbg_logits + (size_t)i0 * V, b->logits_c, sizeof(float) * (size_t)R * V);
        for (int j = 0; j < R; j++)
            memcpy(b->th_c + (size_t)j * d, last_hidden + (size_t)b->tgt_row[i0 + j] * d, sizeof(float) * d);
        top_linear_fwd(b->tlogits_c, b->th_c, t->P.lm_head, NULL, R, d, V);
        /* one train_loss call per block, in parallel (its softmaxes over V dominate this
         * loop). Each call normalises by its own block's weight den_n; folding
         * grad_scale * (den_n + 1e-6) / (D + 1e-6) into the alphas makes its gradient the
         * total loss's. Per-block calls: the result does not depend on the thread count. */
        #pragma omp parallel for schedule(dynamic, 1)
        for (int n = 0; n < nb; n++) {
            size_t io = (size_t)(i0 + n * B);
            double den = 0;
            for (int k = 0; k < B; k++) den += t->eval_mask[io + k] * (loss->gamma > 0 ? exp(-(double)k / loss->gamma) : 1.0);
            double f = (double)grad_scale * (den + 1e-6) / (D + 1e-6);
            TrainLossCfg lf = *loss;
            lf.ce_alpha = (float)(loss->ce_alpha * f);
            lf.tv_alpha = (float)(loss->tv_alpha * f);
            lf.conf_alpha = (float)(loss->conf_alpha * f);
            b->parts_c[n] = train_loss(&lf, 1, B, V, b->logits_c + (size_t)n * B * V, b->tlogits_c + (size_t)n * B * V,
                                       b->labels + io, t->eval_mask + io, has_conf ? b->ha.conf + io : NULL,
                                       b->dlogits_c + (size_t)n * B * V, b->d_conf + io, t->soft_label + io);
        }
        for (int n = 0; n < nb; n++) { /* numerators, in block order */
            const TrainLossParts *lp = &b->parts_c[n];
            double cden = lp->den + 1e-6;
            s_ce += lp->ce * cden; s_l1 += lp->l1 * cden; s_bce += lp->conf * cden;
        }
        top_linear_bwd(b->d_out + (size_t)i0 * d, NULL, NULL, b->dlogits_c, out_c, t->P.lm_head, R, d, V);
        if (r > 0) top_linear_bwd(b->d_u + (size_t)i0 * r, t->G.w2, NULL, b->dlogits_c, b->ha.u + (size_t)i0 * r, t->P.w2, R, r, V);
    }
    double inv = 1.0 / (D + 1e-6);
    TrainLossParts parts = {0, s_ce * inv, s_l1 * inv, has_conf ? s_bce * inv : 0.0, D};
    parts.total = loss->ce_alpha * parts.ce + (loss->tv_alpha != 0 ? loss->tv_alpha * parts.l1 : 0.0) +
                  (has_conf ? loss->conf_alpha * parts.conf : 0.0);

    /* ---- backward ---- */
    HeadGrads hg = {t->G.w1, t->G.w2, t->G.gate_w, t->G.gate_b, t->G.joint_w, t->G.joint_b, t->G.conf_w, t->G.conf_b};
    heads_bwd(&hw, &b->ha, &hg, b->d_out, b->d_u, has_conf ? b->d_conf : NULL, b->out, b->prev, n_blocks, b->heads_scratch);
    memset(b->d_x, 0, sizeof(float) * (size_t)N * d);
    top_rmsnorm_bwd(b->d_x, t->G.norm, b->d_out, b->x_last, t->P.norm, b->rstd_f, N, d);
    memset(b->d_ctx, 0, sizeof(float) * (size_t)S * d);
    for (int l = q->n_layers - 1; l >= 0; l--) {
        const LayerActs *A = &b->L[l];
        const TrainLayerPtrs *W = &t->P.layers[l], *Gw = &t->G.layers[l];
        /* MLP: x_out = x_mid + down(silu(gate) * up), d_x holds dL/dx_out */
        top_swiglu_fwd(b->act, A->gate, A->up, (size_t)N * ff); /* recomputed, not stored */
        memset(b->d_act, 0, sizeof(float) * (size_t)N * ff);
        top_linear_bwd(b->d_act, Gw->down_proj, NULL, b->d_x, b->act, W->down_proj, N, ff, d);
        float *d_gate = b->act; /* act is dead now */
        memset(d_gate, 0, sizeof(float) * (size_t)N * ff);
        memset(b->d_up, 0, sizeof(float) * (size_t)N * ff);
        top_swiglu_bwd(d_gate, b->d_up, b->d_act, A->gate, A->up, (size_t)N * ff);
        memset(b->d_tmp, 0, sizeof(float) * (size_t)N * d);
        top_linear_bwd(b->d_tmp, Gw->gate_proj, NULL, d_gate, A->pn, W->gate_proj, N, d, ff);
        top_linear_bwd(b->d_tmp, Gw->up_proj, NULL, b->d_up, A->pn, W->up_proj, N, d, ff);
        top_rmsnorm_bwd(b->d_x, Gw->post_norm, b->d_tmp, A->x_mid, W->post_norm, A->rstd2, N, d); /* d_x: dL/dx_mid */
        /* attention: x_mid = x_in + o_proj(att) */
        memset(b->d_att, 0, sizeof(float) * (size_t)N * qd);
        top_linear_bwd(b->d_att, Gw->o_proj, NULL, b->d_x, A->att, W->o_proj, N, qd, d);
        memset(b->d_qr, 0, sizeof(float) * (size_t)N * qd);
        memset(b->dK, 0, sizeof(float) * (size_t)NK * kd);
        memset(b->dV, 0, sizeof(float) * (size_t)NK * kd);
        top_attention_bwd(b->d_qr, b->dK, b->dV, b->d_att, A->att, A->lse, A->qr, A->K, A->V, b->r0lo, b->r0hi, b->r1lo,
                          b->r1hi, N, NK, H, KV, hd);
        top_rope_bwd(b->d_qr, b->pos + S, N, H, hd, theta);
        top_rope_bwd(b->dK, b->pos, NK, KV, hd, theta);
        float *d_qraw = b->d_att; /* d_att is dead now */
        memset(d_qraw, 0, sizeof(float) * (size_t)N * qd);
        top_rmsnorm_bwd(d_qraw, Gw->q_norm, b->d_qr, A->q_raw, W->q_norm, A->q_rstd, N * H, hd);
        memset(b->d_kraw, 0, sizeof(float) * (size_t)NK * kd);
        top_rmsnorm_bwd(b->d_kraw, Gw->k_norm, b->dK, A->k_raw, W->k_norm, A->k_rstd, NK * KV, hd);
        memset(b->d_tmp, 0, sizeof(float) * (size_t)N * d);
        top_linear_bwd(b->d_tmp, Gw->q_proj, NULL, d_qraw, A->hn, W->q_proj, N, d, qd);
        top_linear_bwd(b->d_tmp, Gw->k_proj, NULL, b->d_kraw + (size_t)S * kd, A->hn, W->k_proj, N, d, kd);
        top_linear_bwd(b->d_tmp, Gw->v_proj, NULL, b->dV + (size_t)S * kd, A->hn, W->v_proj, N, d, kd);
        /* the context path: every layer's k/v projections of ctx */
        top_linear_bwd(b->d_ctx, Gw->k_proj, NULL, b->d_kraw, b->ctx, W->k_proj, S, d, kd);
        top_linear_bwd(b->d_ctx, Gw->v_proj, NULL, b->dV, b->ctx, W->v_proj, S, d, kd);
        top_rmsnorm_bwd(b->d_x, Gw->input_norm, b->d_tmp, A->x_in, W->input_norm, A->rstd1, N, d); /* d_x: dL/dx_in */
    }
    /* ctx = hidden_norm(fc(features)); the embeddings are frozen, so d_x stops here */
    memset(b->d_c0, 0, sizeof(float) * (size_t)S * d);
    top_rmsnorm_bwd(b->d_c0, t->G.hidden_norm, b->d_ctx, b->c0, t->P.hidden_norm, b->rstd_c, S, d);
    top_linear_bwd(NULL, t->G.fc, NULL, b->d_c0, features, t->P.fc, S, m * d, d);

    /* ---- DeepSpec's metrics (loss.py _compute_local_probabilistic_stats) ---- */
    if (out) {
        out->parts = parts;
        for (int n = 0; n < n_blocks; n++) {
            double cum = 1.0, acc = 0.0;
            bool any = false;
            for (int k = 0; k < B; k++) {
                int i = n * B + k;
                double em = t->eval_mask[i], cs = t->soft_label[i] * em;
                out->accept_sum[k] += cs;
                out->accept_count[k] += em;
                out->supervised += em;
                cum *= cs;
                acc += cum;
                any |= em > 0;
            }
            if (b->keep[n] && any) { out->tau_sum += 1.0 + acc; out->tau_blocks += 1.0; }
            if (has_conf) {
                double cp = 1.0, ct = 1.0;
                for (int k = 0; k < B; k++) {
                    int i = n * B + k;
                    double em = t->eval_mask[i], w = em * (loss->gamma > 0 ? exp(-(double)k / loss->gamma) : 1.0);
                    double sig = 1.0 / (1.0 + exp(-(double)b->ha.conf[i])), e = sig - t->soft_label[i];
                    cp *= sig * em;
                    ct *= t->soft_label[i] * em;
                    out->conf_abs_err_sum += fabs(e) * w;
                    out->conf_bias_sum += e * w;
                    out->conf_cumprod_bias_sum += (cp - ct) * w;
                }
            }
        }
    }
    return DS_OK;
}

/* ---- target features ---- */

ds_status train_draft_features(Qwen3Model *target, const DraftConfig *cfg, const int32_t *ids, int S, float *features,
                               float *last_hidden, char *err) {
    const int m = cfg->n_target_layers, d = target->cfg.hidden_size, nf = m + 1;
    if (S < 1) return ds_err(err, DS_EARG, "train_draft_features: empty sequence");
    int layers[DRAFT_MAX_TARGET_LAYERS + 1];
    for (int i = 0; i < m; i++) layers[i] = cfg->target_layer_ids[i];
    layers[m] = QWEN3_FINAL_NORM;
    Qwen3State st;
    ds_status rc = qwen3_state_init(&st, target, S, 1, nf, 1, S, err);
    if (rc) return rc;
    int32_t *pos = ds_malloc(sizeof(int32_t) * (size_t)S);
    float *host = ds_malloc(sizeof(float) * (size_t)S * nf * d);
    if (!pos || !host) { rc = ds_err(err, DS_ENOMEM, "train_draft_features: out of memory"); goto done; }
    for (int i = 0; i < S; i++) pos[i] = i;
    Qwen3Batch bt = {.n = S, .tokens = ids, .pos = pos, .n_logits = 0, .feature_layers = layers, .n_feature_layers = nf};
    if ((rc = qwen3_forward(target, &st, &bt, err))) goto done;
    target->be->to_host(target->be, host, st.features, sizeof(float) * (size_t)S * nf * d);
    for (int i = 0; i < S; i++) {
        memcpy(features + (size_t)i * m * d, host + (size_t)i * nf * d, sizeof(float) * (size_t)m * d);
        memcpy(last_hidden + (size_t)i * d, host + ((size_t)i * nf + m) * d, sizeof(float) * d);
    }
done:
    ds_free(pos);
    ds_free(host);
    qwen3_state_free(&st, target);
    return rc;
}

/* ---- comparison with reference gradients ---- */

ds_status train_grads_compare(const ParamSet *grads, const char *ref_path, TrainGradReport report, void *user, double *worst,
                              char *err) {
    ParamSet ref;
    ds_status rc = params_like(&ref, grads, err);
    if (rc) return rc;
    if ((rc = params_load(&ref, ref_path, false, err))) { params_free(&ref); return rc; }
    double w = 0;
    for (int i = 0; i < grads->n; i++) {
        const ParamInfo *pi = &grads->info[i];
        const float *g = grads->data + pi->offset, *r = ref.data + pi->offset;
        double num = 0, den = 0;
        for (size_t j = 0; j < pi->numel; j++) {
            double e = (double)g[j] - (double)r[j];
            num += e * e;
            den += (double)r[j] * r[j];
        }
        /* a zero reference: the absolute norm of ours (should be 0 too) */
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(rel <= w) ) w = isnan(rel) ? INFINITY : (rel > w ? rel : w);
        if (report) report(pi->name, rel, sqrt(den), user);
    }
    params_free(&ref);
    *worst = w;
    return DS_OK;
}
