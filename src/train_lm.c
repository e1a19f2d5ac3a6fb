/* train_lm.c - Qwen3 causal LM training forward/backward (see train_lm.h).
 *
 * Per layer, the forward keeps what its backward needs (names as in the code below):
 *   res[l] -> ln1 (rstd1) -> qlin, klin, v -> q, k (q/k RMSNorm per head, rstd; then RoPE)
 *   -> att (lse) -> mid = res[l] + o_proj(att) -> ln2 (rstd2) -> gate, up -> act
 *   -> res[l+1] = mid + down_proj(act)
 * The backward walks the layers in reverse with one residual-gradient buffer (d_res): the
 * residual adds make it the gradient of mid, then of res[l], in place. */
#include "train_lm.h"
#include "draft_init.h"
#include "train_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGIT_CHUNK 256 /* rows of vocabulary-sized logits at a time */

typedef struct {
    float *res, *ln1, *rstd1, *qlin, *klin, *q, *k, *v, *qrstd, *krstd, *att, *lse, *mid, *ln2, *rstd2, *gate, *up, *act;
} LayerActs;

typedef struct {
    LayerActs *layer;         /* [L] */
    float *res_final, *lnf, *rstdf;
    float *logits, *d_logits; /* [LOGIT_CHUNK][V] */
    float *d_res, *d_tmp, *d_ln, *d_q, *d_k, *d_v, *d_att, *d_klin, *d_gate, *d_up, *d_act, *d_lnf;
} Acts;

/* carve the arena; with base NULL only counts */
static size_t carve(const Qwen3Config *c, int N, float *base, Acts *a, LayerActs *layers) {
    size_t off = 0;
    int d = c->hidden_size, Dq = c->n_heads * c->head_dim, Dk = c->n_kv_heads * c->head_dim, F = c->intermediate_size;
#define TAKE(ptr, n) do { size_t n_ = (size_t)(n); if (base) (ptr) = base + off; off += (n_ + 15) / 16 * 16; } while (0)
    for (int l = 0; l < c->n_layers; l++) {
        LayerActs *x = layers ? &layers[l] : &(LayerActs){0};
        TAKE(x->res, (size_t)N * d); TAKE(x->ln1, (size_t)N * d); TAKE(x->rstd1, N);
        TAKE(x->qlin, (size_t)N * Dq); TAKE(x->klin, (size_t)N * Dk);
        TAKE(x->q, (size_t)N * Dq); TAKE(x->k, (size_t)N * Dk); TAKE(x->v, (size_t)N * Dk);
        TAKE(x->qrstd, (size_t)N * c->n_heads); TAKE(x->krstd, (size_t)N * c->n_kv_heads);
        TAKE(x->att, (size_t)N * Dq); TAKE(x->lse, (size_t)N * c->n_heads);
        TAKE(x->mid, (size_t)N * d); TAKE(x->ln2, (size_t)N * d); TAKE(x->rstd2, N);
        TAKE(x->gate, (size_t)N * F); TAKE(x->up, (size_t)N * F); TAKE(x->act, (size_t)N * F);
    }
    Acts dummy;
    if (!a) a = &dummy;
    TAKE(a->res_final, (size_t)N * d); TAKE(a->lnf, (size_t)N * d); TAKE(a->rstdf, N);
    TAKE(a->logits, (size_t)LOGIT_CHUNK * c->vocab_size); TAKE(a->d_logits, (size_t)LOGIT_CHUNK * c->vocab_size);
    TAKE(a->d_res, (size_t)N * d); TAKE(a->d_tmp, (size_t)N * d); TAKE(a->d_ln, (size_t)N * d);
    TAKE(a->d_q, (size_t)N * Dq); TAKE(a->d_k, (size_t)N * Dk); TAKE(a->d_v, (size_t)N * Dk);
    TAKE(a->d_att, (size_t)N * Dq); TAKE(a->d_klin, (size_t)N * Dk);
    TAKE(a->d_gate, (size_t)N * F); TAKE(a->d_up, (size_t)N * F); TAKE(a->d_act, (size_t)N * F);
    TAKE(a->d_lnf, (size_t)N * d);
#undef TAKE
    return off;
}

static const char *LAYER_TENSORS[] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                      "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
                                      "self_attn.k_norm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                                      "mlp.up_proj.weight", "mlp.down_proj.weight"};
enum { T_IN_NORM, T_Q, T_K, T_V, T_O, T_QN, T_KN, T_POST_NORM, T_GATE, T_UP, T_DOWN, T_COUNT };

ds_status train_lm_layout(ParamSet *p, const Qwen3Config *c, char *err) {
    int64_t d = c->hidden_size, Dq = (int64_t)c->n_heads * c->head_dim, Dk = (int64_t)c->n_kv_heads * c->head_dim,
            F = c->intermediate_size, hd = c->head_dim, V = c->vocab_size;
    int64_t emb[2] = {V, d};
    ds_status s = params_add(p, "model.embed_tokens.weight", 2, emb, true, err);
    for (int l = 0; l < c->n_layers && !s; l++) {
        int64_t shapes[T_COUNT][2] = {{d, 0}, {Dq, d}, {Dk, d}, {Dk, d}, {d, Dq}, {hd, 0}, {hd, 0}, {d, 0}, {F, d}, {F, d}, {d, F}};
        for (int t = 0; t < T_COUNT && !s; t++) {
            char name[PARAM_NAME_LEN];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, LAYER_TENSORS[t]);
            s = params_add(p, name, shapes[t][1] ? 2 : 1, shapes[t], true, err);
        }
    }
    int64_t nd[1] = {d};
    if (!s) s = params_add(p, "model.norm.weight", 1, nd, true, err);
    if (!s && !c->tie_word_embeddings) s = params_add(p, "lm_head.weight", 2, emb, true, err);
    return s;
}

ds_status train_lm_init(TrainLM *m, const Qwen3Config *c, int B, int T, char *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    m->B = B;
    m->T = T;
    if (B < 1 || T < 1) return ds_err(err, DS_EARG, "pretrain: batch %d x %d tokens is empty", B, T);
    if (T > c->max_position_embeddings) return ds_err(err, DS_EARG, "pretrain: sequence length %d exceeds max_position_embeddings %d", T, c->max_position_embeddings);
    ds_status s = train_lm_layout(&m->params, c, err);
    if (!s) s = params_alloc(&m->params, err);
    if (!s) s = params_like(&m->grads, &m->params, err);
    if (s) { train_lm_free(m); return s; }
    int N = B * T;
    m->arena_floats = carve(c, N, NULL, NULL, NULL);
    m->arena = ds_malloc_aligned(m->arena_floats * sizeof(float));
    m->r0_lo = ds_malloc(sizeof(int32_t) * (size_t)N * 7);
    if (!m->arena || !m->r0_lo) { train_lm_free(m); return ds_err(err, DS_ENOMEM, "pretrain: out of memory for %zu MB of activations", m->arena_floats * 4 >> 20); }
    m->r0_hi = m->r0_lo + N; m->r1_lo = m->r0_hi + N; m->r1_hi = m->r1_lo + N; m->pos = m->r1_hi + N; m->ids = m->pos + N; m->targets = m->ids + N;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) { /* causal within each sequence */
            int i = b * T + t;
            m->r0_lo[i] = b * T; m->r0_hi[i] = i + 1; m->r1_lo[i] = m->r1_hi[i] = 0; m->pos[i] = t;
        }
    return DS_OK;
}

void train_lm_free(TrainLM *m) {
    params_free(&m->params);
    params_free(&m->grads);
    if (m->arena) ds_free_aligned(m->arena);
    ds_free(m->r0_lo);
    memset(m, 0, sizeof *m);
}

void train_lm_init_weights(TrainLM *m, float std, uint64_t seed) { draft_init_weights(&m->params, seed, std); }

static float *W(const ParamSet *p, int layer, int t) {
    char name[PARAM_NAME_LEN];
    snprintf(name, sizeof name, "model.layers.%d.%s", layer, LAYER_TENSORS[t]);
    return params_get(p, name);
}

static void add_into(float *dst, const float *a, const float *b, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

double train_lm_step(TrainLM *m, const int32_t *tokens, int n_seq, float grad_scale, bool grads_wanted) {
    const Qwen3Config *c = &m->cfg;
    DS_ASSERT(n_seq >= 1 && n_seq <= m->B);
    int T = m->T, N = n_seq * T, d = c->hidden_size, hd = c->head_dim, Hq = c->n_heads, Hk = c->n_kv_heads;
    int Dq = Hq * hd, Dk = Hk * hd, F = c->intermediate_size, V = c->vocab_size;
    LayerActs layers[c->n_layers > 0 ? c->n_layers : 1];
    Acts a;
    carve(c, m->B * T, m->arena, &a, layers); /* the arena's layout is fixed by B; a shorter batch uses a prefix of each buffer */
    const ParamSet *P = &m->params;
    ParamSet *G = &m->grads;
    float *embed = params_get(P, "model.embed_tokens.weight");
    float *lm_head = c->tie_word_embeddings ? embed : params_get(P, "lm_head.weight");
    /* ---- forward ---- */
    int32_t *ids = m->ids, *targets = m->targets;
    for (int b = 0; b < n_seq; b++)
        for (int t = 0; t < T; t++) {
            ids[b * T + t] = tokens[(size_t)b * (T + 1) + t];
            targets[b * T + t] = tokens[(size_t)b * (T + 1) + t + 1];
        }
    top_embedding_fwd(layers[0].res, embed, ids, N, d);
    for (int l = 0; l < c->n_layers; l++) {
        LayerActs *x = &layers[l];
        float *res_out = l + 1 < c->n_layers ? layers[l + 1].res : a.res_final;
        top_rmsnorm_fwd(x->ln1, x->rstd1, x->res, W(P, l, T_IN_NORM), N, d, c->rms_norm_eps);
        top_linear_fwd(x->qlin, x->ln1, W(P, l, T_Q), NULL, N, d, Dq);
        top_linear_fwd(x->klin, x->ln1, W(P, l, T_K), NULL, N, d, Dk);
        top_linear_fwd(x->v, x->ln1, W(P, l, T_V), NULL, N, d, Dk);
        top_rmsnorm_fwd(x->q, x->qrstd, x->qlin, W(P, l, T_QN), N * Hq, hd, c->rms_norm_eps);
        top_rmsnorm_fwd(x->k, x->krstd, x->klin, W(P, l, T_KN), N * Hk, hd, c->rms_norm_eps);
        top_rope_fwd(x->q, m->pos, N, Hq, hd, c->rope_theta);
        top_rope_fwd(x->k, m->pos, N, Hk, hd, c->rope_theta);
        top_attention_fwd(x->att, x->lse, x->q, x->k, x->v, m->r0_lo, m->r0_hi, m->r1_lo, m->r1_hi, N, N, Hq, Hk, hd);
        top_linear_fwd(a.d_tmp, x->att, W(P, l, T_O), NULL, N, Dq, d);
        add_into(x->mid, x->res, a.d_tmp, (size_t)N * d);
        top_rmsnorm_fwd(x->ln2, x->rstd2, x->mid, W(P, l, T_POST_NORM), N, d, c->rms_norm_eps);
        top_linear_fwd(x->gate, x->ln2, W(P, l, T_GATE), NULL, N, d, F);
        top_linear_fwd(x->up, x->ln2, W(P, l, T_UP), NULL, N, d, F);
        top_swiglu_fwd(x->act, x->gate, x->up, (size_t)N * F);
        top_linear_fwd(a.d_tmp, x->act, W(P, l, T_DOWN), NULL, N, F, d);
        add_into(res_out, x->mid, a.d_tmp, (size_t)N * d);
    }
    top_rmsnorm_fwd(a.lnf, a.rstdf, a.res_final, params_get(P, "model.norm.weight"), N, d, c->rms_norm_eps);
    /* ---- loss (and its gradient) in chunks of rows: mean over all N predictions ---- */
    double loss = 0;
    if (grads_wanted) memset(a.d_lnf, 0, sizeof(float) * (size_t)N * d);
    float *g_head = grads_wanted ? (c->tie_word_embeddings ? params_get(G, "model.embed_tokens.weight") : params_get(G, "lm_head.weight")) : NULL;
    for (int r0 = 0; r0 < N; r0 += LOGIT_CHUNK) {
        int rows = N - r0 < LOGIT_CHUNK ? N - r0 : LOGIT_CHUNK;
        top_linear_fwd(a.logits, a.lnf + (size_t)r0 * d, lm_head, NULL, rows, d, V);
        double row_loss[LOGIT_CHUNK];
        /* rows in parallel, each in one fixed order; e = exp(z - max) lands in d_logits */
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            const float *z = a.logits + (size_t)i * V;
            float *e = a.d_logits + (size_t)i * V, mx = z[0];
            #pragma omp simd reduction(max : mx)
            for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
            double sum = 0;
            #pragma omp simd reduction(+ : sum)
            for (int v = 0; v < V; v++) {
                e[v] = top_expf(z[v] - mx);
                sum += e[v];
            }
            int y = targets[r0 + i];
            row_loss[i] = log(sum) + mx - z[y];
            if (grads_wanted) {
                double scale = (double)grad_scale / N;
                float f = (float)(scale / sum);
                #pragma omp simd
                for (int v = 0; v < V; v++) e[v] *= f;
                e[y] -= (float)scale;
            }
        }
        for (int i = 0; i < rows; i++) loss += row_loss[i];
        if (grads_wanted)
            top_linear_bwd(a.d_lnf + (size_t)r0 * d, g_head, NULL, a.d_logits, a.lnf + (size_t)r0 * d, lm_head, rows, d, V);
    }
    loss /= N;
    if (!grads_wanted) return loss;
    /* ---- backward ---- */
    memset(a.d_res, 0, sizeof(float) * (size_t)N * d);
    top_rmsnorm_bwd(a.d_res, params_get(G, "model.norm.weight"), a.d_lnf, a.res_final, params_get(P, "model.norm.weight"), a.rstdf, N, d);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        LayerActs *x = &layers[l];
        /* MLP: d_res is d res[l+1]; it is also d mid through the residual */
        memset(a.d_act, 0, sizeof(float) * (size_t)N * F);
        top_linear_bwd(a.d_act, W(G, l, T_DOWN), NULL, a.d_res, x->act, W(P, l, T_DOWN), N, F, d);
        memset(a.d_gate, 0, sizeof(float) * (size_t)N * F);
        memset(a.d_up, 0, sizeof(float) * (size_t)N * F);
        top_swiglu_bwd(a.d_gate, a.d_up, a.d_act, x->gate, x->up, (size_t)N * F);
        memset(a.d_ln, 0, sizeof(float) * (size_t)N * d);
        top_linear_bwd(a.d_ln, W(G, l, T_GATE), NULL, a.d_gate, x->ln2, W(P, l, T_GATE), N, d, F);
        top_linear_bwd(a.d_ln, W(G, l, T_UP), NULL, a.d_up, x->ln2, W(P, l, T_UP), N, d, F);
        top_rmsnorm_bwd(a.d_res, W(G, l, T_POST_NORM), a.d_ln, x->mid, W(P, l, T_POST_NORM), x->rstd2, N, d);
        /* attention: d_res is now d mid, also d res[l] through the residual */
        memset(a.d_att, 0, sizeof(float) * (size_t)N * Dq);
        top_linear_bwd(a.d_att, W(G, l, T_O), NULL, a.d_res, x->att, W(P, l, T_O), N, Dq, d);
        memset(a.d_q, 0, sizeof(float) * (size_t)N * Dq);
        memset(a.d_k, 0, sizeof(float) * (size_t)N * Dk);
        memset(a.d_v, 0, sizeof(float) * (size_t)N * Dk);
        top_attention_bwd(a.d_q, a.d_k, a.d_v, a.d_att, x->att, x->lse, x->q, x->k, x->v, m->r0_lo, m->r0_hi, m->r1_lo, m->r1_hi,
                          N, N, Hq, Hk, hd);
        top_rope_bwd(a.d_q, m->pos, N, Hq, hd, c->rope_theta);
        top_rope_bwd(a.d_k, m->pos, N, Hk, hd, c->rope_theta);
        float *d_qlin = a.d_att; /* free again */
        memset(d_qlin, 0, sizeof(float) * (size_t)N * Dq);
        memset(a.d_klin, 0, sizeof(float) * (size_t)N * Dk);
        top_rmsnorm_bwd(d_qlin, W(G, l, T_QN), a.d_q, x->qlin, W(P, l, T_QN), x->qrstd, N * Hq, hd);
        top_rmsnorm_bwd(a.d_klin, W(G, l, T_KN), a.d_k, x->klin, W(P, l, T_KN), x->krstd, N * Hk, hd);
        memset(a.d_ln, 0, sizeof(float) * (size_t)N * d);
        top_linear_bwd(a.d_ln, W(G, l, T_Q), NULL, d_qlin, x->ln1, W(P, l, T_Q), N, d, Dq);
        top_linear_bwd(a.d_ln, W(G, l, T_K), NULL, a.d_klin, x->ln1, W(P, l, T_K), N, d, Dk);
        top_linear_bwd(a.d_ln, W(G, l, T_V), NULL, a.d_v, x->ln1, W(P, l, T_V), N, d, Dk);
        top_rmsnorm_bwd(a.d_res, W(G, l, T_IN_NORM), a.d_ln, x->res, W(P, l, T_IN_NORM), x->rstd1, N, d);
    }
    /* embedding rows: in token order (deterministic) */
    float *g_embed = params_get(G, "model.embed_tokens.weight");
    for (int i = 0; i < N; i++) {
        float *dst = g_embed + (size_t)ids[i] * d;
        const float *src = a.d_res + (size_t)i * d;
        for (int j = 0; j < d; j++) dst[j] += src[j];
    }
    return loss;
}

char *qwen3_config_json(const Qwen3Config *c) {
    json_t *eos = json_array();
    for (int i = 0; i < c->n_eos; i++) json_array_append_new(eos, json_integer(c->eos_token_ids[i]));
    json_t *root = json_pack("{s:[s],s:b,s:f,s:i,s:o,s:i,s:s,s:i,s:f,s:i,s:i,s:s,s:i,s:i,s:i,s:i,s:f,s:n,s:f,s:b,s:s,s:s,s:b,s:b,s:i}",
                             "architectures", "Qwen3ForCausalLM", "attention_bias", 0, "attention_dropout", 0.0,
                             "bos_token_id", c->bos_token_id, "eos_token_id", c->n_eos == 1 ? json_integer(c->eos_token_ids[0]) : json_incref(eos),
                             "head_dim", c->head_dim, "hidden_act", "silu", "hidden_size", c->hidden_size, "initializer_range", 0.02,
                             "intermediate_size", c->intermediate_size, "max_position_embeddings", c->max_position_embeddings,
                             "model_type", "qwen3", "num_attention_heads", c->n_heads, "num_hidden_layers", c->n_layers,
                             "num_key_value_heads", c->n_kv_heads, "max_window_layers", c->n_layers, "rms_norm_eps", (double)c->rms_norm_eps,
                             "rope_scaling", "rope_theta", (double)c->rope_theta, "tie_word_embeddings", c->tie_word_embeddings,
                             "torch_dtype", "bfloat16", "transformers_version", "4.51.0", "use_cache", 1, "use_sliding_window", 0,
                             "vocab_size", c->vocab_size);
    json_decref(eos);
    if (!root) return NULL;
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

ds_status train_lm_save(const TrainLM *m, const char *dir, ds_dtype dtype, char *err) {
    ds_status s = ds_mkdirs(dir, err);
    if (s) return s;
    char path[1024];
    char *cfg = qwen3_config_json(&m->cfg);
    if (!cfg) return ds_err(err, DS_ENOMEM, "pretrain: cannot write config.json");
    if (!ds_path_join(path, sizeof path, dir, "config.json")) s = ds_err(err, DS_EARG, "pretrain: path too long: %s", dir);
    if (!s) s = ds_write_file_atomic(path, cfg, strlen(cfg), err);
    free(cfg);
    if (!s && !ds_path_join(path, sizeof path, dir, "model.safetensors")) s = ds_err(err, DS_EARG, "pretrain: path too long: %s", dir);
    if (!s) s = params_save(&m->params, path, dtype, false, NULL, err);
    return s;
}
