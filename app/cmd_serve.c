/* cmd_serve.c - `dspark serve`: flags, model loading, then server_run (server.c). */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "gen_common.h"
#ifdef DSPARK_HAVE_SERVER
#include "server.h"

typedef struct {
    const char *model, *device;
    int threads, slots, ctx, batch_tokens;
    Backend *be;
    Qwen3Model m;
    Tokenizer *tok;
    Engine engine;
    ServerConfig *cfg;
} ServeCtx;

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
    ServeCtx x = {.device = "cpu", .slots = 8, .ctx = 4096, .batch_tokens = 256, .cfg = &cfg};
    const char *name = NULL;
    int max_body_kb = 1024;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &x.model, "DIR", "target model directory", 0, -1},
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
    if (!name) {
        const char *slash = strrchr(x.model, '/');
        name = slash && slash[1] ? slash + 1 : x.model;
    }
    cfg.model_name = name;
    cfg.max_body_bytes = (size_t)max_body_kb * 1024;
    int status = server_run(&cfg, load, &x);
    if (x.engine.model) engine_free(&x.engine);
    if (x.tok) tokenizer_free(x.tok);
    if (x.m.layers) qwen3_free(&x.m);
    if (x.be) x.be->destroy(x.be);
    return status;
#endif
}
