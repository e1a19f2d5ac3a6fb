/* server.h - the OpenAI-compatible HTTP server (server.c, libmicrohttpd). */
#ifndef DSPARK_SERVER_H
#define DSPARK_SERVER_H

#include "engine.h"
#include "sample.h"
#include "tokenizer.h"

typedef struct {
    const char *host;          /* loopback by default */
    int port;
    const char *model_name;    /* what /v1/models reports */
    size_t max_body_bytes;
    int max_connections;
    int default_max_tokens;    /* chat completions without max_tokens */
    double drain_seconds;      /* after SIGTERM, running requests get this long to finish */
    SamplerParams sampler;     /* defaults when a request gives none */
    int32_t stop_ids[16];
    int n_stop;
    /* optional: called on the engine thread while no request is running (e.g. refining the
     * SPS profile one size at a time); keep each call short */
    void (*on_idle)(void *ctx);
    void *idle_ctx;
    const char *policy_name;   /* what /metrics reports as dspark_policy_info (NULL: none) */
} ServerConfig;

/* Loads the model after the socket is open (so /health can answer 503 meanwhile). Returns 0
 * and the engine + tokenizer (tokenizer may be NULL), or non-zero after printing an error. */
typedef int (*ServerLoadFn)(void *ctx, Engine **engine, const Tokenizer **tok);

/* Runs until SIGTERM/SIGINT, then stops accepting, drains running requests, and returns 0. */
int server_run(const ServerConfig *cfg, ServerLoadFn load, void *load_ctx);

#endif
