/* dump_draft.c - the drafter half of `dspark dump --draft D --prompt P` (issue 3 item 5):
 * context = target features of ids[:P], anchor = ids[P]; writes draft_hidden.npy [B][d],
 * draft_base_logits.npy [B][V], draft_logits.npy [B][V] (sequential head teacher-forced with
 * previous tokens ids[P..P+B-1]), draft_confidence.npy [B] (pre-sigmoid; only with a
 * confidence head) and draft_greedy.npy [B] (int64: the block proposed at temperature 0). */
#include <stdio.h>
#include <string.h>

#include "drafter.h"
#include "npy.h"
#include "sample.h"

int dump_draft(Qwen3Model *m, const char *draft_dir, const int *ids, int n, int P, const char *out, char *err);

static ds_status write_f32(const char *out, const char *name, int n_dims, const int64_t *shape, const void *data, ds_dtype t, char *err) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", out, name);
    return npy_write(path, t, n_dims, shape, data, err);
}

/* returns a ds_status; err filled */
int dump_draft(Qwen3Model *m, const char *draft_dir, const int *ids, int n, int P, const char *out, char *err) {
    Backend *be = m->be;
    Drafter d;
    ds_status rc = drafter_load(&d, draft_dir, m, be, err);
    if (rc) return rc;
    const int B = d.cfg.block_size, D = d.cfg.base.hidden_size, V = d.cfg.base.vocab_size, nf = d.cfg.n_target_layers;
    if (P < 1 || P + B > n) {
        drafter_free(&d);
        return ds_err(err, DS_EARG, "--prompt %d: need 1 <= P and P + block_size (%d) <= number of ids (%d)", P, B, n);
    }
    Qwen3State st;
    DraftState s;
    int32_t *tok = ds_malloc(sizeof(int32_t) * (size_t)P), *pos = ds_malloc(sizeof(int32_t) * (size_t)P);
    float *hidden = ds_malloc(sizeof(float) * (size_t)B * D), *base = ds_malloc(sizeof(float) * (size_t)B * V),
          *logits = ds_malloc(sizeof(float) * (size_t)B * V), conf[64];
    int64_t greedy[64];
    for (int i = 0; i < P; i++) { tok[i] = ids[i]; pos[i] = i; }
    if ((rc = qwen3_state_init(&st, m, P, 1, nf, 1, P + 1, err))) goto done;
    if ((rc = draft_state_init(&s, &d, P + B + 1, P, err))) { qwen3_state_free(&st, m); goto done; }
    int32_t last = P - 1;
    Qwen3Batch b = {.n = P, .tokens = tok, .pos = pos, .logit_rows = &last, .n_logits = 1,
                    .feature_layers = d.cfg.target_layer_ids, .n_feature_layers = nf};
    if ((rc = qwen3_forward(m, &st, &b, err)) || (rc = drafter_append_context(&d, &s, st.features, P, 0, err)) ||
        (rc = drafter_block(&d, &s, ids[P], P, err)))
        goto free_states;
    be->to_host(be, hidden, s.hidden, sizeof(float) * (size_t)B * D);
    drafter_all_logits(&d, &s);
    be->to_host(be, base, s.base_logits, sizeof(float) * (size_t)B * V);
    for (int j = 0; j < B; j++) {
        if ((rc = drafter_head(&d, &s, j, ids[P + j], &conf[j], err))) goto free_states;
        memcpy(logits + (size_t)j * V, s.logits_host, sizeof(float) * (size_t)V);
    }
    if ((rc = drafter_block(&d, &s, ids[P], P, err))) goto free_states;
    int32_t prev = ids[P];
    for (int j = 0; j < B; j++) {
        if ((rc = drafter_head(&d, &s, j, prev, NULL, err))) goto free_states;
        prev = argmax_f32(s.logits_host, V);
        greedy[j] = prev;
    }
    int64_t sh2[2] = {B, D}, shv[2] = {B, V}, sh1[1] = {B};
    if ((rc = ds_mkdirs(out, err)) || (rc = write_f32(out, "draft_hidden.npy", 2, sh2, hidden, DS_F32, err)) ||
        (rc = write_f32(out, "draft_base_logits.npy", 2, shv, base, DS_F32, err)) ||
        (rc = write_f32(out, "draft_logits.npy", 2, shv, logits, DS_F32, err)) ||
        (d.cfg.enable_confidence_head && (rc = write_f32(out, "draft_confidence.npy", 1, sh1, conf, DS_F32, err))) ||
        (rc = write_f32(out, "draft_greedy.npy", 1, sh1, greedy, DS_I64, err)))
        goto free_states;
free_states:
    draft_state_free(&s, &d);
    qwen3_state_free(&st, m);
done:
    ds_free(tok); ds_free(pos); ds_free(hidden); ds_free(base); ds_free(logits);
    drafter_free(&d);
    return rc;
}
