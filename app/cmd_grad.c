/* cmd_grad.c - `dspark grad`: one DeepSpec training forward + backward of a drafter on one
 * sequence with fixed anchors, for comparison with DeepSpec (issue 4's test-facing command).
 * Target features come from the target's own forward (rows id+1 of its layer outputs, the
 * final-normed last hidden). Writes DIR/loss.npy (float32 [1]) and DIR/grads.safetensors (F32,
 * every trainable tensor under the checkpoint's names). Loss settings default to DeepSpec's
 * DSpark ones (gamma 4, ce 0.1, tv 0.9, conf 1.0) whatever the drafter type.
 * --compare-grads / --compare-loss check the result against reference files and print the
 * relative error per tensor (exit 1 above --tol): the CLI test's comparison. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "npy.h"
#include "train_draft.h"

static void print_rel(const char *name, double rel, double ref_norm, void *user) {
    double tol = *(const double *)user;
    printf("  %-48s rel %.3g (|ref| %.3g)%s\n", name, rel, ref_norm, rel > tol ? "  <-- over tolerance" : "");
}

/* LIST of ints into out[n]; returns n or -1 */
static int parse_list(const char *flag, const char *s, int32_t **out) {
    int *v;
    int n = args_parse_ids(flag, s, &v);
    if (n < 0) return -1;
    *out = ds_malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) (*out)[i] = v[i];
    ds_free(v);
    return n;
}

int cmd_grad(int argc, char **argv) {
    const char *model = NULL, *draft = NULL, *ids_s = NULL, *mask_s = NULL, *anchors_s = NULL, *keep_s = NULL, *out = NULL;
    const char *cmp_grads = NULL, *cmp_loss = NULL;
    double gamma = 4.0, ce = 0.1, tv = 0.9, conf = 1.0, tol = 1e-4;
    int threads = 0;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory (Hugging Face format)", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "DeepSpec drafter checkpoint (config.json + model.safetensors)", 0, -1},
        {"--ids", ARG_STR, &ids_s, "LIST", "token ids of the sequence, comma-separated", 0, -1},
        {"--loss-mask", ARG_STR, &mask_s, "LIST", "0/1 per token (1 = assistant token)", 0, -1},
        {"--anchors", ARG_STR, &anchors_s, "LIST", "anchor positions, one block each", 0, -1},
        {"--keep", ARG_STR, &keep_s, "LIST", "0/1 per anchor (0 = dummy block; default all 1)", 0, -1},
        {"--out", ARG_STR, &out, "DIR", "output directory (created): loss.npy, grads.safetensors", 0, -1},
        {"--gamma", ARG_FLOAT, &gamma, "G", "loss_decay_gamma (default 4; <= 0: no decay)", -1e9, 1e9},
        {"--ce-alpha", ARG_FLOAT, &ce, "A", "cross-entropy weight (default 0.1)", 0, 1e9},
        {"--tv-alpha", ARG_FLOAT, &tv, "B", "L1 (total variation) weight (default 0.9)", 0, 1e9},
        {"--conf-alpha", ARG_FLOAT, &conf, "C", "confidence BCE weight (default 1.0)", 0, 1e9},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--compare-grads", ARG_STR, &cmp_grads, "FILE", "reference gradients (.safetensors): print rel errors", 0, -1},
        {"--compare-loss", ARG_STR, &cmp_loss, "FILE", "reference loss (.npy float32 [1])", 0, -1},
        {"--tol", ARG_FLOAT, &tol, "T", "relative tolerance of the comparisons (default 1e-4)", 0, 1e9},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("grad", "--model DIR --draft DIR --ids LIST --loss-mask LIST --anchors LIST [--keep LIST] --out DIR",
                        specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !draft || !ids_s || !mask_s || !anchors_s || !out) {
        fprintf(stderr, "dspark grad: --model, --draft, --ids, --loss-mask, --anchors and --out are required (see --help)\n");
        return 2;
    }
    int32_t *ids = NULL, *mask = NULL, *anchors = NULL, *keep = NULL;
    int S = parse_list("--ids", ids_s, &ids), nm = S < 0 ? -1 : parse_list("--loss-mask", mask_s, &mask);
    int A = nm < 0 ? -1 : parse_list("--anchors", anchors_s, &anchors);
    int nk = A < 0 ? -1 : keep_s ? parse_list("--keep", keep_s, &keep) : A;
    int status = 2;
    uint8_t *mask8 = NULL, *keep8 = NULL;
    if (S < 0 || nm < 0 || A < 0 || nk < 0) goto free_lists;
    if (S < 2) { fprintf(stderr, "dspark grad: --ids needs at least 2 tokens\n"); goto free_lists; }
    if (nm != S) { fprintf(stderr, "dspark grad: --loss-mask has %d entries, --ids %d\n", nm, S); goto free_lists; }
    if (A < 1) { fprintf(stderr, "dspark grad: --anchors is empty\n"); goto free_lists; }
    if (nk != A) { fprintf(stderr, "dspark grad: --keep has %d entries, --anchors %d\n", nk, A); goto free_lists; }
    mask8 = ds_malloc((size_t)S);
    keep8 = ds_malloc((size_t)A);
    for (int i = 0; i < S; i++) {
        if (mask[i] != 0 && mask[i] != 1) { fprintf(stderr, "dspark grad: --loss-mask entry %d is %d, expected 0 or 1\n", i, mask[i]); goto free_lists; }
        mask8[i] = (uint8_t)mask[i];
    }
    for (int i = 0; i < A; i++) {
        int k = keep ? keep[i] : 1;
        if (k != 0 && k != 1) { fprintf(stderr, "dspark grad: --keep entry %d is %d, expected 0 or 1\n", i, k); goto free_lists; }
        keep8[i] = (uint8_t)k;
    }
    status = 1;
    char err[DS_ERR_LEN], path[2048];
    Backend *be;
    Qwen3Model m;
    DraftConfig cfg;
    TrainDraft t;
    float *feat = NULL, *last = NULL;
    if (backend_create("cpu", threads, &be, err)) { fprintf(stderr, "dspark grad: %s\n", err); goto free_lists; }
    if (qwen3_load(&m, model, be, err)) { fprintf(stderr, "dspark grad: %s\n", err); be->destroy(be); goto free_lists; }
    snprintf(path, sizeof path, "%s/config.json", draft);
    if (draft_config_load(&cfg, path, err) || draft_config_validate(&cfg, &m.cfg, path, err) ||
        train_draft_init(&t, &cfg, &m, S, A, err)) {
        fprintf(stderr, "dspark grad: %s\n", err);
        goto free_model;
    }
    for (int i = 0; i < S; i++)
        if (ids[i] < 0 || ids[i] >= m.cfg.vocab_size) {
            fprintf(stderr, "dspark grad: --ids entry %d is %d, outside the vocabulary (%d)\n", i, ids[i], m.cfg.vocab_size);
            goto free_train;
        }
    feat = ds_malloc(sizeof(float) * (size_t)S * cfg.n_target_layers * cfg.base.hidden_size);
    last = ds_malloc(sizeof(float) * (size_t)S * cfg.base.hidden_size);
    TrainLossCfg lc = {(float)gamma, (float)ce, (float)tv, (float)conf};
    TrainDraftStats st;
    if (train_draft_load(&t, draft, err) || train_draft_features(&m, &cfg, ids, S, feat, last, err) ||
        train_draft_step(&t, ids, mask8, S, feat, last, anchors, keep8, A, NULL, &lc, 1.0f, &st, err)) {
        fprintf(stderr, "dspark grad: %s\n", err);
        goto free_train;
    }
    float loss = (float)st.parts.total;
    int64_t one = 1;
    if (ds_mkdirs(out, err)) { fprintf(stderr, "dspark grad: %s\n", err); goto free_train; }
    snprintf(path, sizeof path, "%s/loss.npy", out);
    if (npy_write(path, DS_F32, 1, &one, &loss, err)) { fprintf(stderr, "dspark grad: %s\n", err); goto free_train; }
    snprintf(path, sizeof path, "%s/grads.safetensors", out);
    if (params_save(&t.grads, path, DS_F32, true, NULL, err)) { fprintf(stderr, "dspark grad: %s\n", err); goto free_train; }
    printf("loss %.7f  (ce %.6f  l1 %.6f  conf %.6f  weight %.4f)  %d blocks kept of %d\n", loss, st.parts.ce, st.parts.l1,
           st.parts.conf, st.parts.den, st.n_kept, A);
    status = 0;
    if (cmp_loss) {
        NpyArray ref;
        if (npy_read(cmp_loss, &ref, err)) { fprintf(stderr, "dspark grad: %s\n", err); status = 1; goto free_train; }
        if (ref.dtype != DS_F32 || ref.numel != 1) {
            fprintf(stderr, "dspark grad: %s: expected one float32\n", cmp_loss);
            status = 1;
        } else {
            double r = ((float *)ref.data)[0], e = fabs(loss - r) / (fabs(r) > 0 ? fabs(r) : 1.0);
            printf("loss vs %s: %.7f ref %.7f rel %.3g\n", cmp_loss, loss, r, e);
            if (!(e <= tol)) status = 1;
        }
        npy_free(&ref);
    }
    if (cmp_grads) {
        double worst;
        printf("gradients vs %s:\n", cmp_grads);
        if (train_grads_compare(&t.grads, cmp_grads, print_rel, &tol, &worst, err)) {
            fprintf(stderr, "dspark grad: %s\n", err);
            status = 1;
        } else {
            printf("worst gradient rel err %.3g (tolerance %.3g)\n", worst, tol);
            if (!(worst <= tol)) status = 1;
        }
    }
free_train:
    ds_free(feat);
    ds_free(last);
    train_draft_free(&t);
free_model:
    qwen3_free(&m);
    be->destroy(be);
free_lists:
    ds_free(ids); ds_free(mask); ds_free(anchors); ds_free(keep); ds_free(mask8); ds_free(keep8);
    return status;
}
