/* cmd_generate.c - `dspark generate`: plain or speculative (--draft) decoding of one prompt.
 *
 * Prompts are token ids (--prompt-ids) until the tokenizer lands; output is the generated ids,
 * one line per sample. With --draft the end-of-run statistics (stderr) give rounds, tau
 * (accepted drafts + bonus per round), DeepSpec's accept_rate@k, the paper's conditional
 * acceptance per position, draft / verify time and tokens/s; --compare also runs plain
 * decoding with the same samples and prints the speedup. --num-samples N draws N continuations
 * (sample i seeded from a hash of (seed, i)); --print-ids prints exactly one line per sample. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "gen_spec.h"

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *draft = NULL, *ids_s = NULL, *stop_s = NULL, *device = "cpu";
    int max_new = 128, top_k = 0, threads = 0, num_samples = 1, ctx = 0, seed = 0;
    double temp = 1.0, top_p = 1.0, conf_thr = 0.0;
    bool print_ids = false, compare = false, quiet = false;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory (Hugging Face Qwen3)", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "DSpark/DFlash drafter checkpoint: speculative decoding", 0, -1},
        {"--prompt-ids", ARG_STR, &ids_s, "1,2,3", "prompt token ids, comma-separated", 0, -1},
        {"--max-new|-n", ARG_INT, &max_new, "N", "tokens to generate (default 128)", 1, 1 << 30},
        {"--temp", ARG_FLOAT, &temp, "T", "temperature, 0 = greedy (default 1.0, DeepSpec's)", 0, 100},
        {"--top-k", ARG_INT, &top_k, "K", "top-k, 0 = off", 0, 1 << 30},
        {"--top-p", ARG_FLOAT, &top_p, "P", "top-p, 1 = off", 1e-6, 1},
        {"--seed", ARG_INT, &seed, "S", "RNG seed (default 0)", 0, 2147483647.0},
        {"--num-samples", ARG_INT, &num_samples, "N", "independent continuations of the prompt", 1, 1 << 24},
        {"--print-ids", ARG_FLAG, &print_ids, NULL, "print exactly one line of ids per sample", 0, -1},
        {"--compare", ARG_FLAG, &compare, NULL, "with --draft: also run plain decoding and print the speedup", 0, -1},
        {"--confidence-threshold", ARG_FLOAT, &conf_thr, "C", "verify up to the first slot with sigmoid(confidence) < C (0 = full block)", 0, 1},
        {"--stop-ids", ARG_STR, &stop_s, "LIST", "stop token ids (default: the target's eos_token_id)", 0, -1},
        {"--ctx", ARG_INT, &ctx, "N", "context positions (default: prompt + max-new + block)", 2, 1 << 24},
        {"--quiet|-q", ARG_FLAG, &quiet, NULL, "no statistics on stderr", 0, -1},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("generate", "--model DIR [--draft DIR] --prompt-ids LIST [options]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !ids_s) { fprintf(stderr, "dspark generate: --model and --prompt-ids are required (see --help)\n"); return 2; }
    if (compare && !draft) { fprintf(stderr, "dspark generate: --compare needs --draft\n"); return 2; }
    int *ids = NULL, *stops = NULL, n_stop = -1;
    int n_prompt = args_parse_ids("--prompt-ids", ids_s, &ids);
    if (n_prompt < 0) return 2;
    if (n_prompt == 0) { fprintf(stderr, "dspark generate: --prompt-ids is empty\n"); ds_free(ids); return 2; }
    if (stop_s && (n_stop = args_parse_ids("--stop-ids", stop_s, &stops)) < 0) { ds_free(ids); return 2; }
    if (n_stop > SPEC_MAX_STOP) { fprintf(stderr, "dspark generate: --stop-ids: at most %d ids\n", SPEC_MAX_STOP); return 2; }

    char err[DS_ERR_LEN];
    int status = 1;
    Backend *be = NULL;
    Qwen3Model m = {0};
    Drafter d = {0};
    DrafterSource ds = {0};
    SpecDecoder sd = {0}, plain = {0};
    int32_t *prompt = ds_malloc(sizeof(int32_t) * (size_t)n_prompt);
    for (int i = 0; i < n_prompt; i++) prompt[i] = ids[i];
    if (backend_create(device, threads, &be, err)) goto fail;
    if (qwen3_load(&m, model, be, err)) goto fail;
    int block = 0;
    if (draft) {
        if (drafter_load(&d, draft, &m, be, err)) goto fail;
        block = d.cfg.block_size;
    }
    if (!ctx) ctx = n_prompt + max_new + block + 1;
    if (ctx > m.cfg.max_position_embeddings) ctx = m.cfg.max_position_embeddings;
    if (n_prompt >= ctx) { ds_err(err, DS_EARG, "--prompt-ids: %d tokens do not fit the context (%d)", n_prompt, ctx); goto fail; }
    GenSpecOptions o = {.sampler = {(float)temp, top_k, (float)top_p}, .seed = (uint64_t)seed, .max_new = max_new,
                        .num_samples = num_samples, .confidence_threshold = (float)conf_thr, .print_ids = true, .ctx = ctx};
    if (n_stop >= 0) { for (int i = 0; i < n_stop; i++) o.stop_ids[i] = stops[i]; o.n_stop = n_stop; }
    else { for (int i = 0; i < m.cfg.n_eos && i < SPEC_MAX_STOP; i++) o.stop_ids[i] = m.cfg.eos_token_ids[i]; o.n_stop = m.cfg.n_eos; }
    if (sampler_params_check(&o.sampler, err)) goto fail;
    int chunk = n_prompt < 512 ? n_prompt : 512;
    if (draft) {
        if (spec_drafter_source_init(&ds, &d, ctx + block + 1, chunk > block + 1 ? chunk : block + 1, err)) goto fail;
        if (spec_init(&sd, &m, &ds.src, ctx, chunk, err)) goto fail;
    } else if (spec_init(&sd, &m, NULL, ctx, chunk, err)) {
        goto fail;
    }
    SpecStats st = {0}, st_plain = {0};
    (void)print_ids; /* ids are the only output until the tokenizer lands: always one line per sample */
    if (gen_spec_run(&sd, prompt, n_prompt, &o, stdout, &st, err)) goto fail;
    if (!quiet) gen_spec_print_stats(stderr, draft ? "spec" : "plain", &st, block);
    if (compare) {
        if (spec_init(&plain, &m, NULL, ctx, chunk, err)) goto fail;
        o.print_ids = false;
        if (gen_spec_run(&plain, prompt, n_prompt, &o, NULL, &st_plain, err)) goto fail;
        gen_spec_print_stats(stderr, "plain", &st_plain, 0);
        double a = st.total_s > 0 ? st.generated / st.total_s : 0, b = st_plain.total_s > 0 ? st_plain.generated / st_plain.total_s : 0;
        fprintf(stderr, "[compare] speedup %.2fx (%.1f vs %.1f tokens/s)\n", b > 0 ? a / b : 0, a, b);
    }
    status = 0;
fail:
    if (status) fprintf(stderr, "dspark generate: %s\n", err);
    if (plain.target) spec_free(&plain);
    if (sd.target) spec_free(&sd);
    if (ds.d) spec_drafter_source_free(&ds);
    if (d.layers) drafter_free(&d);
    if (m.layers) qwen3_free(&m);
    if (be) be->destroy(be);
    ds_free(prompt); ds_free(ids); ds_free(stops);
    return status;
}
