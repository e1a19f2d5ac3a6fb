/* cmd_serve.c - `dspark serve`: flags, model loading, then server_run (server.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "gen_common.h"
#ifdef DSPARK_HAVE_SERVER
#include "profile.h"
#include "scheduler.h"
#include "server.h"

typedef struct {
    const char *model, *device, *draft, *policy;
    int threads, slots, ctx, batch_tokens;
    Backend *be;
    Qwen3Model m;
    Tokenizer *tok;
    Engine engine;
    ServerConfig *cfg;
    Drafter drafter;
    bool have_drafter;
    DrafterSource *sources;
    ProposalSource **src_ptrs;
    int n_sources;
    /* verification policy (src/scheduler.h), calibration, SPS profile */
    SchedPolicy pol;
    Calibration cal;
    Scheduler sched;
    bool have_sched;
    SpsProfile prof;
    bool have_prof, refine_done;
    int refined;
    uint64_t idle_steps;   /* engine steps seen when the idle spell began */
    double idle_since;
} ServeCtx;

/* idle engine thread: refine the SPS profile one size at a time, save when complete */
static void on_idle(void *p) {
    ServeCtx *x = p;
    if (!x->have_prof || x->refine_done) return;
    uint64_t steps = engine_stats(&x->engine).steps;
    if (steps != x->idle_steps || x->idle_since == 0) { x->idle_steps = steps; x->idle_since = ds_now(); }
    if (ds_now() - x->idle_since < 1.0) return; /* only after a second without requests */
    char err[DS_ERR_LEN];
    ds_status rc;
    bool more = profile_refine_one(&x->prof, err, &rc);
    if (more) x->refined++;
    if (rc) { fprintf(stderr, "dspark serve: SPS refine: %s\n", err); x->refine_done = true; return; }
    if (!more || x->refined % 32 == 0) {
        if (profile_save_cache(&x->prof, err)) fprintf(stderr, "dspark serve: SPS profile: %s\n", err);
    }
    if (!more) {
        x->refine_done = true;
        profile_release_runner(&x->prof);
        if (x->refined) fprintf(stderr, "dspark serve: SPS profile refined while idle: %d sizes measured, saved to %s\n", x->prof.n_measured, x->prof.path);
    }
}

static int load(void *p, Engine **engine, const Tokenizer **tok) {
    ServeCtx *x = p;
    char err[DS_ERR_LEN];
    if (backend_create(x->device, x->threads, &x->be, err) || qwen3_load(&x->m, x->model, x->be, err)) goto fail;
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", x->model);
    if (ds_file_exists(path) && tokenizer_load(&x->tok, x->model, err)) goto fail;
    GenDefaults gd;
    if (gen_defaults_load(&gd, x->model, &x->m.cfg, x->tok, err)) goto fail;
    x->cfg->sampler = gd.sampler;
    x->cfg->n_stop = 0;
    for (int i = 0; i < gd.n_stop && i < 16; i++) x->cfg->stop_ids[x->cfg->n_stop++] = gd.stop_ids[i];
    int ctx = x->ctx < x->m.cfg.max_position_embeddings ? x->ctx : x->m.cfg.max_position_embeddings;
    EngineConfig ec = {.n_slots = x->slots, .max_ctx = ctx, .max_batch_tokens = x->batch_tokens};
    if (x->draft) {
        if (drafter_load(&x->drafter, x->draft, &x->m, x->be, err)) goto fail;
        x->have_drafter = true;
        x->sources = ds_calloc((size_t)x->slots, sizeof(DrafterSource));
        x->src_ptrs = ds_calloc((size_t)x->slots, sizeof(ProposalSource *));
        for (int i = 0; i < x->slots; i++) {
            if (spec_drafter_source_init(&x->sources[i], &x->drafter, ctx, x->batch_tokens, err)) goto fail;
            x->n_sources++;
            x->src_ptrs[i] = &x->sources[i].src;
        }
        ec.sources = x->src_ptrs;
        if (calib_load(x->draft, &x->cal, err)) goto fail;
        if (x->cal.loaded) fprintf(stderr, "dspark serve: calibrated confidences from %s/calibration.json\n", x->draft);
        ec.calib = &x->cal;
        if (x->pol.bypass && !x->drafter.cfg.enable_confidence_head) {
            fprintf(stderr, "dspark serve: note: the drafter has no confidence head: draft bypass off\n");
            x->pol.bypass = false;
        }
        if (sched_policy_needs_sps(&x->pol) || x->pol.bypass) {
            int pctx = ctx - x->batch_tokens - 2 < 256 ? ctx - x->batch_tokens - 2 : 256;
            if (pctx < 0) pctx = 0;
            if (profile_init(&x->prof, &x->m, &x->drafter, x->batch_tokens, pctx, err)) goto fail;
            x->have_prof = true;
            if (profile_get(&x->prof, 15, stderr, err)) goto fail;
            x->cfg->on_idle = on_idle;
            x->cfg->idle_ctx = x;
        }
        if (x->pol.kind != SCHED_FULL) {
            SpsCurve sps = x->have_prof ? profile_curve(&x->prof) : (SpsCurve){0};
            if (sched_init(&x->sched, &x->pol, &x->cal, sps, x->slots, x->drafter.cfg.block_size, err)) goto fail;
            x->have_sched = true;
            if (x->have_prof) x->sched.draft_s = x->prof.draft_s; /* the step drafts too: part of its time */
            ec.sched = (EngineScheduler){sched_choose, &x->sched};
        }
        if (x->pol.bypass) {
            ec.bypass_draft_s = x->prof.draft_s;
            ec.sps = profile_curve(&x->prof);
            fprintf(stderr, "dspark serve: draft bypass on: drafting one request costs %.3f ms\n", x->prof.draft_s * 1e3);
        }
        if (ec.max_batch_tokens < x->slots * (x->drafter.cfg.block_size + 1))
            fprintf(stderr, "dspark serve: note: --batch-tokens %d < slots x (block + 1) = %d: some requests verify fewer drafts\n",
                    ec.max_batch_tokens, x->slots * (x->drafter.cfg.block_size + 1));
    }
    if (engine_init(&x->engine, &x->m, &ec, err)) goto fail;
    *engine = &x->engine;
    *tok = x->tok;
    return 0;
fail:
    fprintf(stderr, "dspark serve: %s\n", err);
    return 1;
}
#endif

int cmd_serve(int argc, char **argv) {
#ifndef DSPARK_HAVE_SERVER
    (void)argc; (void)argv;
    fprintf(stderr, "dspark serve: this build has no HTTP server (built with DSPARK_CPU_LIBS=OFF or without libmicrohttpd)\n");
    return 1;
#else
    ServerConfig cfg = {.host = "127.0.0.1", .port = 8000, .max_body_bytes = 1 << 20, .max_connections = 256, .default_max_tokens = 256, .drain_seconds = 30};
    ServeCtx x = {.device = "cpu", .slots = 8, .ctx = 4096, .batch_tokens = 256, .cfg = &cfg, .policy = "full"};
    const char *name = NULL;
    int max_body_kb = 1024;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &x.model, "DIR", "target model directory", 0, -1},
        {"--draft", ARG_STR, &x.draft, "DIR", "DSpark/DFlash drafter (speculative decoding)", 0, -1},
        {"--policy", ARG_STR, &x.policy, "P", "verification length: full, fixed:L, threshold:C, alg1, async; +bypass skips drafting hopeless requests (default full)", 0, -1},
        {"--host", ARG_STR, &cfg.host, "ADDR", "IPv4 address to bind (default 127.0.0.1: loopback only)", 0, -1},
        {"--port", ARG_INT, &cfg.port, "N", "TCP port (default 8000)", 1, 65535},
        {"--model-name", ARG_STR, &name, "NAME", "model id reported by /v1/models (default: the directory name)", 0, -1},
        {"--slots", ARG_INT, &x.slots, "N", "concurrent requests / KV slots (default 8)", 1, 4096},
        {"--ctx", ARG_INT, &x.ctx, "N", "context positions per slot (default 4096)", 2, 1 << 20},
        {"--batch-tokens", ARG_INT, &x.batch_tokens, "N", "tokens per engine step (default 256)", 1, 1 << 16},
        {"--max-body-kb", ARG_INT, &max_body_kb, "KB", "largest request body (default 1024)", 1, 1 << 20},
        {"--max-tokens", ARG_INT, &cfg.default_max_tokens, "N", "default max_tokens of chat requests (default 256)", 1, 1 << 24},
        {"--drain-seconds", ARG_FLOAT, &cfg.drain_seconds, "S", "after SIGTERM, time running requests get to finish (default 30)", 0, 86400},
        {"--threads", ARG_INT, &x.threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &x.device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("serve", "--model DIR [--port N] [flags]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!x.model) { fprintf(stderr, "dspark serve: --model is required (see --help)\n"); return 2; }
    if (x.batch_tokens < x.slots) { fprintf(stderr, "dspark serve: --batch-tokens must be >= --slots\n"); return 2; }
    char perr[DS_ERR_LEN], pname[64];
    if (sched_policy_parse(x.policy, "--policy", &x.pol, perr)) { fprintf(stderr, "dspark serve: %s\n", perr); return 2; }
    cfg.policy_name = sched_policy_format(&x.pol, pname, sizeof pname);
    if (!x.draft && strcmp(x.policy, "full") != 0) { fprintf(stderr, "dspark serve: --policy needs --draft\n"); return 2; }
    if (!name) {
        const char *slash = strrchr(x.model, '/');
        name = slash && slash[1] ? slash + 1 : x.model;
    }
    cfg.model_name = name;
    cfg.max_body_bytes = (size_t)max_body_kb * 1024;
    int status = server_run(&cfg, load, &x);
    if (x.engine.model) engine_free(&x.engine);
    if (x.have_sched) sched_free(&x.sched);
    if (x.have_prof) profile_free(&x.prof);
    for (int i = 0; i < x.n_sources; i++) spec_drafter_source_free(&x.sources[i]);
    ds_free(x.sources);
    ds_free(x.src_ptrs);
    if (x.have_drafter) drafter_free(&x.drafter);
    if (x.tok) tokenizer_free(x.tok);
    if (x.m.layers) qwen3_free(&x.m);
    if (x.be) x.be->destroy(x.be);
    return status;
#endif
}
