/* cmd_generate.c - `dspark generate`: plain decoding of one prompt, streaming text (or ids).
 *
 * stdout carries only the generated text (or, with --print-ids, only the new ids on one line,
 * ending with the stop token when one ended generation); a stats line goes to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "gen_common.h"
#include "gen_spec.h"
#include "profile.h"
#include "scheduler.h"

#define PREFILL_CHUNK 256

typedef struct {
    const char *model, *prompt, *chat, *prompt_ids, *prompts, *device, *stop;
    int max_new, top_k, seed, threads;
    double temp, top_p;
    bool print_ids, think;
    /* speculative decoding and repeated sampling (issue 3) */
    const char *draft;
    int num_samples;
    bool compare;
    double confidence_threshold;
    const char *policy;         /* --policy (src/scheduler.h) */
} GenArgs;

/* ---- --draft / --num-samples / --compare: through the speculative loop (src/spec.h) ---- */

typedef struct { const Tokenizer *tok; bool print_ids; DecodeStream ds; const GenDefaults *gd; } SampleOut;

/* one sample in text mode: stream the text as tokens are accepted (stop token not printed) */
static bool stream_token(void *user, int32_t t) {
    SampleOut *so = user;
    char text[4096];
    if (!gen_is_stop(so->gd, t)) fwrite(text, 1, tokenizer_decode_step(so->tok, &so->ds, t, text, sizeof text), stdout);
    fflush(stdout);
    return true;
}

static void finish_stream(void *user, int i, const int32_t *ids, int n) {
    SampleOut *so = user;
    char text[4096];
    (void)i; (void)ids; (void)n;
    fwrite(text, 1, tokenizer_decode_flush(&so->ds, text, sizeof text), stdout);
    fflush(stdout);
}

/* ids[0..n) decoded to stdout */
static void write_text(const Tokenizer *tok, const int32_t *ids, int n) {
    DecodeStream ds = {0};
    char text[4096];
    for (int k = 0; k < n; k++) fwrite(text, 1, tokenizer_decode_step(tok, &ds, ids[k], text, sizeof text), stdout);
    fwrite(text, 1, tokenizer_decode_flush(&ds, text, sizeof text), stdout);
}

/* one line per sample: the ids (empty line if none), or the decoded text */
static void print_sample(void *user, int i, const int32_t *ids, int n) {
    SampleOut *so = user;
    (void)i;
    if (so->print_ids || !so->tok) {
        for (int k = 0; k < n; k++) printf(k ? " %d" : "%d", ids[k]);
    } else {
        write_text(so->tok, ids, n);
    }
    putchar('\n');
    fflush(stdout);
}

static double median3(const double *v) {
    double a = v[0], b = v[1], c = v[2];
    return a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
}

/* prompts[0..n_prompts): one after the other; with several (--prompts), each is printed before
 * its continuation and the statistics (and --compare's runs) cover all of them together */
static ds_status run_all(SpecDecoder *sd, const GenPrompt *prompts, int n_prompts, GenSpecOptions *o, SampleOut *so,
                         SpecStats *st, char *err) {
    for (int i = 0; i < n_prompts; i++) {
        if (n_prompts > 1 && so) {
            printf("%s### prompt %d of %d\n", i ? "\n" : "", i + 1, n_prompts);
            write_text(so->tok, prompts[i].ids, prompts[i].n);
            printf("### continuation\n");
            fflush(stdout);
            so->ds = (DecodeStream){0};
        }
        ds_status rc = gen_spec_run(sd, prompts[i].ids, prompts[i].n, o, st, err);
        if (rc) return rc;
        if (n_prompts > 1 && so) { printf("\n"); fflush(stdout); }
    }
    return DS_OK;
}

/* Statistics on stderr: rounds, tau, accept_rate@k, conditional acceptance, times, tokens/s;
 * --compare runs plain decoding on the same samples and prints the speedup. */
static int generate_spec(const GenArgs *a, Qwen3Model *m, const GenDefaults *gd, const SamplerParams *sp, const GenPrompt *prompts,
                         int n_prompts, int max_new, const Tokenizer *tok, char *err) {
    Drafter d = {0};
    DrafterSource ds = {0};
    SpecDecoder sd = {0}, plain = {0};
    SpsProfile prof = {0};
    Scheduler sched = {0};
    Calibration cal;
    int status = 1, block = 0;
    if (a->draft) {
        if (drafter_load(&d, a->draft, m, m->be, err)) goto done;
        block = d.cfg.block_size;
    }
    if (a->policy) { /* one request: Algorithm 1 with R = 1 weighs each slot against SPS(1 + L) */
        SchedPolicy pol;
        if (sched_policy_parse(a->policy, "--policy", &pol, err) || calib_load(a->draft, &cal, err)) goto done;
        if (pol.bypass) { ds_err(err, DS_EARG, "--policy %s: the draft bypass is for many requests (dspark serve)", a->policy); goto done; }
        SpsCurve sps = {0};
        if (sched_policy_needs_sps(&pol)) {
            if (profile_init(&prof, m, &d, block + 1, 256 < m->cfg.max_position_embeddings - block - 2 ? 256 : 0, err) ||
                profile_get(&prof, 15, stderr, err))
                goto done;
            sps = profile_curve(&prof);
        }
        if (sched_init(&sched, &pol, &cal, sps, 1, block, err)) goto done;
        sched.draft_s = prof.draft_s; /* each round drafts: part of the step's time */
    }
    int n_prompt = 0; /* the longest */
    for (int i = 0; i < n_prompts; i++) n_prompt = prompts[i].n > n_prompt ? prompts[i].n : n_prompt;
    int ctx = n_prompt + max_new + block + 1;
    if (ctx > m->cfg.max_position_embeddings) ctx = m->cfg.max_position_embeddings;
    int chunk = n_prompt < PREFILL_CHUNK ? n_prompt : PREFILL_CHUNK;
    if (chunk < block + 1) chunk = block + 1;
    if (a->draft && (spec_drafter_source_init(&ds, &d, ctx + block + 1, chunk, err) || spec_init(&sd, m, &ds.src, ctx, chunk, err)))
        goto done;
    if (!a->draft && spec_init(&sd, m, NULL, ctx, chunk, err)) goto done;
    SampleOut so = {.tok = tok, .print_ids = a->print_ids, .gd = gd};
    GenSpecOptions o = {.sampler = *sp, .seed = (uint64_t)a->seed, .max_new = max_new, .num_samples = a->num_samples,
                        .confidence_threshold = (float)a->confidence_threshold, .on_sample = print_sample, .user = &so};
    if (sched.max_req) o.policy = (VerifyLenPolicy){sched_choose_one, &sched, sched.pol.kind != SCHED_ASYNC};
    bool streaming = a->num_samples == 1 && !a->print_ids && tok;
    if (streaming) { /* like plain generate: the text as it comes */
        o.on_token = stream_token;
        o.on_sample = finish_stream;
    }
    for (int i = 0; i < gd->n_stop && o.n_stop < SPEC_MAX_STOP; i++) o.stop_ids[o.n_stop++] = gd->stop_ids[i];
    SpecStats st = {0}, st_plain = {0};
    if (run_all(&sd, prompts, n_prompts, &o, streaming ? &so : NULL, &st, err)) goto done;
    gen_spec_print_stats(stderr, a->draft ? "spec" : "plain", &st, block);
    if (a->compare) {
        /* speedup against the same binary without the drafter, same threads: three runs of
         * each, interleaved (spec, plain, spec, plain, ...), median tokens/s of each */
        if (spec_init(&plain, m, NULL, ctx, chunk, err)) goto done;
        o.on_sample = NULL;
        o.on_token = NULL;
        double xs[3], ys[3];
        xs[0] = st.total_s > 0 ? st.generated / st.total_s : 0;
        for (int rep = 0; rep < 3; rep++) {
            SpecStats sp2 = {0};
            st_plain = (SpecStats){0};
            if (run_all(&plain, prompts, n_prompts, &o, NULL, &st_plain, err)) goto done;
            ys[rep] = st_plain.total_s > 0 ? st_plain.generated / st_plain.total_s : 0;
            if (rep < 2) {
                if (run_all(&sd, prompts, n_prompts, &o, NULL, &sp2, err)) goto done;
                xs[rep + 1] = sp2.total_s > 0 ? sp2.generated / sp2.total_s : 0;
            }
        }
        gen_spec_print_stats(stderr, "plain", &st_plain, 0);
        double x = median3(xs), y = median3(ys);
        fprintf(stderr, "[compare] speedup %.2fx (median of 3 interleaved runs: %.1f vs %.1f tokens/s)\n", y > 0 ? x / y : 0, x, y);
        fprintf(stderr, "tau %.2f  speedup %.2fx\n", st.rounds ? (double)st.tau_sum / st.rounds : 0.0, y > 0 ? x / y : 0);
    }
    status = 0;
done:
    if (sched.max_req) sched_free(&sched);
    if (prof.step_s) profile_free(&prof);
    if (plain.target) spec_free(&plain);
    if (sd.target) spec_free(&sd);
    if (ds.d) spec_drafter_source_free(&ds);
    if (d.layers) drafter_free(&d);
    return status;
}

/* Decode n_new tokens after the prompt; returns the number generated or -1. Stops on a stop
 * token (kept in out_ids) or when n_new or the context is reached. */
static int generate_plain(Qwen3Model *m, Qwen3State *st, const GenDefaults *gd, const SamplerParams *sp, Rng *rng,
                          const int32_t *prompt, int n_prompt, int n_new, const Tokenizer *tok, bool print_ids,
                          int32_t *out_ids, double *t_prefill, double *t_decode, char *err) {
    const int V = m->cfg.vocab_size;
    SampleScratch sc;
    float *probs = ds_malloc(sizeof(float) * V);
    if (!probs || sample_scratch_init(&sc, V, err)) { ds_free(probs); return -1; }
    int32_t pos[PREFILL_CHUNK];
    double t0 = ds_now();
    for (int off = 0; off < n_prompt; off += PREFILL_CHUNK) {
        int n = n_prompt - off < PREFILL_CHUNK ? n_prompt - off : PREFILL_CHUNK;
        for (int i = 0; i < n; i++) pos[i] = off + i;
        int32_t last = n - 1;
        bool final = off + n == n_prompt;
        Qwen3Batch b = {.n = n, .tokens = prompt + off, .pos = pos, .logit_rows = &last, .n_logits = final ? 1 : 0};
        if (qwen3_forward(m, st, &b, err)) { ds_free(probs); sample_scratch_free(&sc); return -1; }
    }
    double t1 = ds_now();
    *t_prefill = t1 - t0;
    DecodeStream ds = {0};
    char text[4096];
    int n_out = 0;
    for (; n_out < n_new; n_out++) {
        sample_dist(sp, st->logits_host, V, probs, &sc);
        int32_t tok_id = sample_from(probs, V, rng_uniform(rng));
        out_ids[n_out] = tok_id;
        bool stop = gen_is_stop(gd, tok_id);
        if (print_ids) {
            printf(n_out ? " %d" : "%d", tok_id);
        } else if (!stop && tok) {
            size_t k = tokenizer_decode_step(tok, &ds, tok_id, text, sizeof text);
            fwrite(text, 1, k, stdout);
            fflush(stdout);
        }
        if (stop) { n_out++; break; }
        int32_t p = n_prompt + n_out, row = 0;
        if (n_out + 1 == n_new || p >= st->kv.max_ctx) { n_out++; break; }
        Qwen3Batch b = {.n = 1, .tokens = &tok_id, .pos = &p, .logit_rows = &row, .n_logits = 1};
        if (qwen3_forward(m, st, &b, err)) { ds_free(probs); sample_scratch_free(&sc); return -1; }
    }
    *t_decode = ds_now() - t1;
    if (!print_ids && tok) fwrite(text, 1, tokenizer_decode_flush(&ds, text, sizeof text), stdout);
    if (print_ids) printf("\n"); /* text mode prints exactly the generated text, nothing more */
    fflush(stdout);
    ds_free(probs);
    sample_scratch_free(&sc);
    return n_out;
}

int cmd_generate(int argc, char **argv) {
    GenArgs a = {.device = "cpu", .max_new = 128, .seed = 0, .temp = -1, .top_p = -1, .top_k = -1, .num_samples = 1};
    ArgSpec specs[] = {
        {"--model", ARG_STR, &a.model, "DIR", "target model directory (Hugging Face Qwen3)", 0, -1},
        {"--prompt", ARG_STR, &a.prompt, "TEXT", "raw prompt text", 0, -1},
        {"--chat", ARG_STR, &a.chat, "TEXT", "one user turn, rendered with the chat template", 0, -1},
        {"--prompt-ids", ARG_STR, &a.prompt_ids, "1,2,3", "prompt token ids (no tokenizer needed)", 0, -1},
        {"--prompts", ARG_STR, &a.prompts, "FILE.jsonl", "several prompts, one per line ({\"turns\": [TEXT]}, {\"prompt\": TEXT} or {\"prompt_ids\": [...]}; "
         "chat template when the tokenizer has one), each printed before its continuation; statistics over all", 0, -1},
        {"--max-new|-n", ARG_INT, &a.max_new, "N", "new tokens at most (default 128)", 1, 1 << 24},
        {"--temp", ARG_FLOAT, &a.temp, "T", "temperature, 0 = greedy (default: generation_config.json, else 1.0)", 0, 100},
        {"--top-k", ARG_INT, &a.top_k, "K", "top-k, 0 = off (default: generation_config.json, else off)", 0, 1 << 30},
        {"--top-p", ARG_FLOAT, &a.top_p, "P", "top-p in (0,1] (default: generation_config.json, else 1)", 1e-9, 1},
        {"--seed", ARG_INT, &a.seed, "S", "random seed (default 0)", 0, 2147483647},
        {"--threads", ARG_INT, &a.threads, "N", "CPU threads (default: all cores)", 1, 1024},
        {"--print-ids", ARG_FLAG, &a.print_ids, NULL, "print only the new token ids, space-separated, on one line", 0, -1},
        {"--think", ARG_FLAG, &a.think, NULL, "with --chat: enable the thinking block", 0, -1},
        {"--stop", ARG_STR, &a.stop, "1,2", "extra stop token ids", 0, -1},
        {"--device", ARG_STR, &a.device, "DEV", "cpu (default) or cuda", 0, -1},
        {"--draft", ARG_STR, &a.draft, "DIR", "DSpark/DFlash drafter: speculative decoding, statistics on stderr", 0, -1},
        {"--num-samples", ARG_INT, &a.num_samples, "N", "N independent continuations (sample i seeded from hash(seed, i)), one line each", 1, 1 << 24},
        {"--compare", ARG_FLAG, &a.compare, NULL, "with --draft: also run plain decoding and print the speedup", 0, -1},
        {"--confidence-threshold", ARG_FLOAT, &a.confidence_threshold, "C",
         "with --draft: verify up to the first slot with sigmoid(confidence) < C (0 = full block)", 0, 1},
        {"--policy", ARG_STR, &a.policy, "P", "with --draft: verification length full, fixed:L, threshold:C (calibrated) or alg1 / async (SPS profile)", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("generate", "--model DIR (--prompt TEXT | --chat TEXT | --prompt-ids LIST | --prompts FILE.jsonl) [flags]", specs,
                        n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!a.model) { fprintf(stderr, "dspark generate: --model is required (see --help)\n"); return 2; }
    if ((a.compare || a.confidence_threshold > 0 || a.policy) && !a.draft) {
        fprintf(stderr, "dspark generate: --compare, --confidence-threshold and --policy need --draft\n");
        return 2;
    }
    if (a.policy) {
        SchedPolicy pol;
        char perr[DS_ERR_LEN];
        if (sched_policy_parse(a.policy, "--policy", &pol, perr)) { fprintf(stderr, "dspark generate: %s\n", perr); return 2; }
        if (pol.bypass) { fprintf(stderr, "dspark generate: --policy %s: the draft bypass is for many requests (dspark serve)\n", a.policy); return 2; }
    }
    if (!!a.prompt + !!a.chat + !!a.prompt_ids + !!a.prompts != 1) {
        fprintf(stderr, "dspark generate: give exactly one of --prompt, --chat, --prompt-ids, --prompts\n");
        return 2;
    }
    char err[DS_ERR_LEN];
    int status = 1;
    Backend *be = NULL;
    Tokenizer *tok = NULL;
    Qwen3Model m;
    Qwen3State st;
    memset(&m, 0, sizeof m);
    memset(&st, 0, sizeof st);
    int32_t *prompt = NULL, *out_ids = NULL;
    int n_prompt = 0, n_many = 0;
    GenPrompt *many = NULL; /* --prompts */
    bool have_state = false;
    if (backend_create_for(a.device, a.threads, BACKEND_ONE_STREAM, &be, err)) goto fail; /* (one sequence at a time) */
    if (qwen3_load(&m, a.model, be, err)) goto fail;
    /* the tokenizer is loaded only when text is involved */
    if (!(a.prompt_ids && a.print_ids) && gen_load_tokenizer(a.model, &tok, err)) goto fail;
    GenDefaults gd;
    if (gen_defaults_load(&gd, a.model, &m.cfg, tok, err)) goto fail;
    if (a.stop) {
        int *ids, n = args_parse_ids("--stop", a.stop, &ids);
        if (n < 0) { status = 2; goto done; }
        for (int i = 0; i < n; i++) gen_add_stop(&gd, ids[i]);
        ds_free(ids);
    }
    SamplerParams sp = gd.sampler;
    if (a.temp >= 0) sp.temperature = (float)a.temp;
    if (a.top_k >= 0) sp.top_k = a.top_k;
    if (a.top_p > 0) sp.top_p = (float)a.top_p;
    if (a.prompt_ids) {
        int *ids;
        n_prompt = args_parse_ids("--prompt-ids", a.prompt_ids, &ids);
        if (n_prompt < 0) { status = 2; goto done; }
        prompt = ds_malloc(sizeof(int32_t) * (n_prompt ? n_prompt : 1));
        for (int i = 0; i < n_prompt; i++) {
            if (ids[i] >= m.cfg.vocab_size) {
                fprintf(stderr, "dspark generate: --prompt-ids: id %d out of range [0, %d)\n", ids[i], m.cfg.vocab_size);
                ds_free(ids);
                status = 2;
                goto done;
            }
            prompt[i] = ids[i];
        }
        ds_free(ids);
    } else if (a.prompts) {
        if (gen_read_prompts(a.prompts, m.cfg.vocab_size, tok, &many, &n_many, err)) goto fail;
        for (int i = 0; i < n_many; i++) {
            if (many[i].n == 0 || many[i].n >= m.cfg.max_position_embeddings) {
                fprintf(stderr, "dspark generate: %s: prompt %d has %d tokens (the context holds %d)\n", a.prompts, i + 1, many[i].n,
                        m.cfg.max_position_embeddings);
                status = 2;
                goto done;
            }
            n_prompt = many[i].n > n_prompt ? many[i].n : n_prompt; /* the longest decides max_new */
        }
    } else if (gen_prompt_ids(tok, a.prompt ? a.prompt : a.chat, a.chat != NULL, a.think, &prompt, &n_prompt, err)) {
        goto fail;
    }
    if (n_prompt == 0) { fprintf(stderr, "dspark generate: the prompt is empty\n"); status = 2; goto done; }
    int ctx = m.cfg.max_position_embeddings;
    if (n_prompt >= ctx) {
        fprintf(stderr, "dspark generate: prompt of %d tokens does not fit the context (%d)\n", n_prompt, ctx);
        status = 2;
        goto done;
    }
    int max_new = a.max_new < ctx - n_prompt ? a.max_new : ctx - n_prompt;
    /* a backend that samples on the device (CUDA: backend.h's verify) decodes plainly through
     * spec_generate too, whose plain path keeps the logits there (one read per token) */
    if (a.draft || a.num_samples > 1 || many || be->verify) {
        GenPrompt one = {.ids = prompt, .n = n_prompt};
        status = many ? generate_spec(&a, &m, &gd, &sp, many, n_many, max_new, tok, err)
                      : generate_spec(&a, &m, &gd, &sp, &one, 1, max_new, tok, err);
        if (status) goto fail;
        goto done;
    }
    if (qwen3_state_init(&st, &m, PREFILL_CHUNK, 1, 0, 1, n_prompt + max_new, err)) goto fail;
    have_state = true;
    out_ids = ds_malloc(sizeof(int32_t) * max_new);
    Rng rng;
    rng_seed(&rng, (uint64_t)a.seed, 0);
    double t_pre = 0, t_dec = 0;
    int n_out = generate_plain(&m, &st, &gd, &sp, &rng, prompt, n_prompt, max_new, tok, a.print_ids, out_ids, &t_pre, &t_dec, err);
    if (n_out < 0) goto fail;
    fprintf(stderr, "prompt %d tokens, generated %d tokens, prefill %.1f tok/s, decode %.2f tok/s (%s, %d threads, T %.2f top-k %d top-p %.2f)\n",
            n_prompt, n_out, n_prompt / (t_pre > 0 ? t_pre : 1e-9), n_out > 1 ? (n_out - 1) / (t_dec > 0 ? t_dec : 1e-9) : 0.0,
            be->name, be->n_threads, sp.temperature, sp.top_k, sp.top_p);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "dspark generate: %s\n", err);
done:
    if (have_state) qwen3_state_free(&st, &m);
    ds_free(prompt);
    ds_free(out_ids);
    if (many) gen_free_prompts(many, n_many);
    if (tok) tokenizer_free(tok);
    if (m.layers) qwen3_free(&m);
    if (be) be->destroy(be);
    return status;
}
