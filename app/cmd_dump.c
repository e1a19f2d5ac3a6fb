/* cmd_dump.c - `dspark dump`: one causal forward over given ids, written as .npy files for
 * comparison with other implementations: logits.npy [n, vocab], layers.npy [L+1, n, hidden]
 * (row 0 = embedding output, row i+1 = residual stream after decoder layer i). */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "npy.h"
#include "qwen3.h"

int dump_draft(Qwen3Model *m, const char *draft_dir, const int *ids, int n, int P, const char *out, char *err);

int cmd_dump(int argc, char **argv) {
    const char *model = NULL, *ids_s = NULL, *out = NULL, *device = "cpu", *draft = NULL;
    int threads = 0, prompt = 0;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory (Hugging Face format)", 0, -1},
        {"--ids", ARG_STR, &ids_s, "1,2,3", "token ids, comma-separated", 0, -1},
        {"--out", ARG_STR, &out, "DIR", "output directory (created)", 0, -1},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default) or cuda", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "also dump a DSpark/DFlash drafter's block (draft_*.npy)", 0, -1},
        {"--prompt", ARG_INT, &prompt, "P", "with --draft: context = ids[:P], anchor = ids[P]", 1, 1 << 30},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("dump", "--model DIR --ids LIST --out DIR", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !ids_s || !out) { fprintf(stderr, "dspark dump: --model, --ids and --out are required (see --help)\n"); return 2; }
    if (draft && !prompt) { fprintf(stderr, "dspark dump: --draft needs --prompt P (see --help)\n"); return 2; }
    int *ids;
    int n = args_parse_ids("--ids", ids_s, &ids);
    if (n < 0) return 2;
    if (n == 0) { fprintf(stderr, "dspark dump: --ids is empty\n"); return 2; }
    char err[DS_ERR_LEN];
    Backend *be;
    Qwen3Model m;
    Qwen3State st;
    if (backend_create(device, threads, &be, err)) { fprintf(stderr, "dspark dump: %s\n", err); ds_free(ids); return 1; }
    if (qwen3_load(&m, model, be, err)) { fprintf(stderr, "dspark dump: %s\n", err); be->destroy(be); ds_free(ids); return 1; }
    const Qwen3Config *c = &m.cfg;
    int nf = c->n_layers + 1, d = c->hidden_size, status = 1;
    int32_t *tok = ds_malloc(sizeof(int32_t) * n), *pos = ds_malloc(sizeof(int32_t) * n);
    int *feat = ds_malloc(sizeof(int) * nf);
    float *layers = ds_malloc(sizeof(float) * (size_t)nf * n * d), *feats_host = ds_malloc(sizeof(float) * (size_t)nf * n * d);
    for (int i = 0; i < n; i++) { tok[i] = ids[i]; pos[i] = i; }
    for (int l = -1; l < c->n_layers; l++) feat[l + 1] = l;
    if (qwen3_state_init(&st, &m, n, n, nf, 1, n, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto done; }
    Qwen3Batch b = {.n = n, .tokens = tok, .pos = pos, .logit_rows = tok /* replaced below */, .n_logits = n,
                    .feature_layers = feat, .n_feature_layers = nf};
    b.logit_rows = pos; /* rows 0..n-1 */
    if (qwen3_forward(&m, &st, &b, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto free_state; }
    be->to_host(be, feats_host, st.features, sizeof(float) * (size_t)nf * n * d);
    for (int f = 0; f < nf; f++)
        for (int i = 0; i < n; i++) memcpy(layers + ((size_t)f * n + i) * d, feats_host + ((size_t)i * nf + f) * d, sizeof(float) * d);
    char path[2048];
    if (ds_mkdirs(out, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto free_state; }
    int64_t lshape[2] = {n, c->vocab_size}, hshape[3] = {nf, n, d};
    snprintf(path, sizeof path, "%s/logits.npy", out);
    if (npy_write(path, DS_F32, 2, lshape, st.logits_host, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto free_state; }
    snprintf(path, sizeof path, "%s/layers.npy", out);
    if (npy_write(path, DS_F32, 3, hshape, layers, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto free_state; }
    if (draft && dump_draft(&m, draft, ids, n, prompt, out, err)) { fprintf(stderr, "dspark dump: %s\n", err); goto free_state; }
    status = 0;
free_state:
    qwen3_state_free(&st, &m);
done:
    ds_free(tok); ds_free(pos); ds_free(feat); ds_free(layers); ds_free(feats_host); ds_free(ids);
    qwen3_free(&m);
    be->destroy(be);
    return status;
}
