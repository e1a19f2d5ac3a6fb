/* server.c - `dspark serve`: an OpenAI-compatible HTTP server over the batched engine.
 *
 * libmicrohttpd, one thread per connection (streaming readers block on their request's
 * condition variable); one engine thread steps the engine. Endpoints: POST /v1/completions,
 * POST /v1/chat/completions (stream true/false, server-sent events ending in `data: [DONE]`),
 * GET /v1/models, GET /health (200 only once the model is loaded), GET /metrics (Prometheus).
 * Malformed requests get a 4xx JSON error; a client that disconnects mid-stream cancels its
 * request, which frees its KV slot; SIGTERM stops accepting, drains, and exits. */
#include "server.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <omp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "engine.h"

#define MAX_STOP_STRINGS 4

typedef struct {
    EngineRequest er;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                  /* the HTTP side and the engine side */
    bool done, client_gone, chat, stream;
    FinishReason why;
    char *text;                /* decoded output so far */
    size_t text_len, text_cap, sent;
    DecodeStream dec;
    char *stop_str[MAX_STOP_STRINGS];
    int n_stop_str;
    size_t max_stop_len;
    int32_t *prompt;
    int completion_tokens;
    char id[40];
    long created;
    bool sent_role, sent_final;
} ServerReq;

typedef struct {
    const char *path;
    char *body;
    size_t len, cap;
    bool too_large;
} Upload;

static struct {
    ServerConfig cfg;
    Engine *engine;
    const Tokenizer *tok;
    volatile int ready, stop;
    uint64_t next_id;
    uint64_t http_requests, http_errors;
    pthread_mutex_t mu;
} S;

/* ---- request lifetime ---- */

static void req_unref(ServerReq *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left) return;
    for (int i = 0; i < r->n_stop_str; i++) free(r->stop_str[i]);
    free(r->text);
    ds_free(r->prompt);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void append_text(ServerReq *r, const char *s, size_t n) {
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = r->text_cap ? r->text_cap * 2 : 256;
        while (cap < r->text_len + n + 1) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) return;
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

/* engine thread: a new token */
static bool on_token(void *user, int32_t token, bool is_stop) {
    ServerReq *r = user;
    pthread_mutex_lock(&r->mu);
    r->completion_tokens++;
    bool keep = !r->client_gone;
    if (!is_stop && S.tok) {
        char buf[4096];
        size_t k = tokenizer_decode_step(S.tok, &r->dec, token, buf, sizeof buf);
        size_t before = r->text_len;
        append_text(r, buf, k);
        /* stop strings: search only where a new match can start */
        size_t from = before > r->max_stop_len ? before - r->max_stop_len : 0;
        for (int i = 0; i < r->n_stop_str; i++) {
            char *hit = r->text ? strstr(r->text + from, r->stop_str[i]) : NULL;
            if (hit) {
                r->text_len = (size_t)(hit - r->text);
                r->text[r->text_len] = 0;
                r->why = FINISH_STOP;
                keep = false;
            }
        }
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return keep;
}

/* engine thread: the request left the engine */
static void on_finish(void *user, FinishReason why) {
    ServerReq *r = user;
    pthread_mutex_lock(&r->mu);
    if (r->why != FINISH_STOP) r->why = why; /* a stop string reports "stop", not "cancelled" */
    if (S.tok && r->why != FINISH_STOP) {
        char buf[8];
        append_text(r, buf, tokenizer_decode_flush(&r->dec, buf, sizeof buf));
    }
    r->done = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    req_unref(r);
}

/* ---- responses ---- */

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *body) {
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *type, const char *msg) {
    pthread_mutex_lock(&S.mu);
    S.http_errors++;
    pthread_mutex_unlock(&S.mu);
    return send_json(c, status, json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", msg, "type", type, "param", "code"));
}

static json_t *usage_json(const ServerReq *r) {
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", r->er.n_prompt, "completion_tokens", r->completion_tokens,
                     "total_tokens", r->er.n_prompt + r->completion_tokens);
}

static const char *finish_name(FinishReason why) {
    return why == FINISH_STOP ? "stop" : why == FINISH_LENGTH ? "length" : why == FINISH_ERROR ? "error" : "stop";
}

static json_t *final_json(const ServerReq *r) {
    json_t *choice;
    if (r->chat)
        choice = json_pack("{s:i,s:{s:s,s:s%},s:s}", "index", 0, "message", "role", "assistant", "content", r->text ? r->text : "",
                           r->text_len, "finish_reason", finish_name(r->why));
    else
        choice = json_pack("{s:i,s:s%,s:n,s:s}", "index", 0, "text", r->text ? r->text : "", r->text_len, "logprobs",
                           "finish_reason", finish_name(r->why));
    return json_pack("{s:s,s:s,s:i,s:s,s:[o],s:o}", "id", r->id, "object", r->chat ? "chat.completion" : "text_completion",
                     "created", (int)r->created, "model", S.cfg.model_name, "choices", choice, "usage", usage_json(r));
}

/* one SSE event with `n` new bytes of text (or the final event when final) */
static char *sse_event(const ServerReq *r, const char *text, size_t n, bool final, bool role) {
    json_t *choice;
    if (r->chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (n || !final) json_object_set_new(delta, "content", json_stringn(text, n));
        choice = json_pack("{s:i,s:o,s:s?}", "index", 0, "delta", delta, "finish_reason", final ? finish_name(r->why) : NULL);
        if (!final) json_object_set_new(choice, "finish_reason", json_null());
    } else {
        choice = json_pack("{s:i,s:s%,s:n}", "index", 0, "text", text, n, "logprobs");
        json_object_set_new(choice, "finish_reason", final ? json_string(finish_name(r->why)) : json_null());
    }
    json_t *ev = json_pack("{s:s,s:s,s:i,s:s,s:[o]}", "id", r->id, "object", r->chat ? "chat.completion.chunk" : "text_completion",
                           "created", (int)r->created, "model", S.cfg.model_name, "choices", choice);
    if (final) json_object_set_new(ev, "usage", usage_json(r));
    char *js = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    return js;
}

/* streaming reader: blocks until there is text to send or the request is done */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    ServerReq *r = cls;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        /* hold back text that may still become a stop string */
        size_t safe = r->text_len;
        if (!r->done && r->max_stop_len > 0) safe = safe > r->max_stop_len - 1 ? safe - (r->max_stop_len - 1) : 0;
        if (safe < r->sent) safe = r->sent;
        if (safe > r->sent || (r->chat && !r->sent_role) || r->done) break;
        /* Nothing to send for a while (tokens without text, or a slow step): send an SSE
         * comment, so a client that went away is noticed (the write fails) and its request
         * is cancelled instead of running to max_tokens. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 500 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0 && !r->done) {
            pthread_mutex_unlock(&r->mu);
            return snprintf(buf, max, ": keep-alive\n\n");
        }
    }
    size_t safe = r->text_len;
    if (!r->done && r->max_stop_len > 0) safe = safe > r->max_stop_len - 1 ? safe - (r->max_stop_len - 1) : 0;
    if (safe < r->sent) safe = r->sent;
    ssize_t out;
    if (r->sent_final) {
        out = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t n = safe - r->sent;
        /* keep each event within the buffer MHD gives us (JSON escaping can grow text 6x) */
        if (n > (max > 256 ? (max - 256) / 6 : 1)) n = max > 256 ? (max - 256) / 6 : 1;
        bool final = r->done && r->sent + n == r->text_len;
        char *js = sse_event(r, r->text ? r->text + r->sent : "", n, final, r->chat && !r->sent_role);
        int len = snprintf(buf, max, "data: %s\n\n%s", js, final ? "data: [DONE]\n\n" : "");
        free(js);
        if (len < 0 || (size_t)len >= max) {
            out = MHD_CONTENT_READER_END_WITH_ERROR;
        } else {
            r->sent += n;
            r->sent_role = true;
            if (final) r->sent_final = true;
            out = len;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return out;
}

/* the connection is gone (finished or the client disconnected) */
static void stream_free(void *cls) {
    ServerReq *r = cls;
    pthread_mutex_lock(&r->mu);
    bool done = r->done;
    r->client_gone = true;
    pthread_mutex_unlock(&r->mu);
    if (!done) engine_cancel(S.engine, &r->er);
    req_unref(r);
}

/* ---- request parsing ---- */

static const char *parse_common(json_t *body, ServerReq *r, bool chat) {
    json_t *v;
    r->er.max_new = 16;
    if (chat) r->er.max_new = S.cfg.default_max_tokens;
    if ((v = json_object_get(body, chat ? "max_completion_tokens" : "max_tokens")) || (v = json_object_get(body, "max_tokens"))) {
        if (json_is_null(v)) r->er.max_new = S.cfg.default_max_tokens;
        else if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24)) return "max_tokens must be a positive integer";
        else r->er.max_new = (int)json_integer_value(v);
    }
    r->er.sampler = S.cfg.sampler;
    if ((v = json_object_get(body, "temperature")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2) return "temperature must be a number in [0, 2]";
        r->er.sampler.temperature = (float)json_number_value(v);
    }
    if ((v = json_object_get(body, "top_p")) && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) || json_number_value(v) > 1) return "top_p must be a number in (0, 1]";
        r->er.sampler.top_p = (float)json_number_value(v);
    }
    if ((v = json_object_get(body, "top_k")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < -1) return "top_k must be an integer >= -1";
        r->er.sampler.top_k = json_integer_value(v) < 0 ? 0 : (int)json_integer_value(v);
    }
    r->er.seed = 0;
    if ((v = json_object_get(body, "seed")) && !json_is_null(v)) {
        if (!json_is_integer(v)) return "seed must be an integer";
        r->er.seed = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(body, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) return "stream must be true or false";
        r->stream = json_is_true(v);
    }
    if ((v = json_object_get(body, "n")) && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1)) return "only n = 1 is supported";
    if ((v = json_object_get(body, "stop")) && !json_is_null(v)) {
        if (json_is_string(v)) {
            r->stop_str[r->n_stop_str++] = strdup(json_string_value(v));
        } else if (json_is_array(v)) {
            if (json_array_size(v) > MAX_STOP_STRINGS) return "at most 4 stop strings";
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_string(e)) return "stop must be a string or a list of strings";
                r->stop_str[r->n_stop_str++] = strdup(json_string_value(e));
            }
        } else return "stop must be a string or a list of strings";
        for (int i = 0; i < r->n_stop_str; i++) {
            size_t n = strlen(r->stop_str[i]);
            if (n == 0) return "stop strings must not be empty";
            if (n > r->max_stop_len) r->max_stop_len = n;
        }
    }
    return NULL;
}

/* prompt -> token ids; returns an error message or NULL */
static const char *build_prompt(json_t *body, ServerReq *r, bool chat, char *err) {
    if (chat) {
        json_t *msgs = json_object_get(body, "messages");
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) return "messages must be a non-empty array";
        if (!S.tok || !chat_has_template(S.tok)) return "this model has no chat template; use /v1/completions";
        size_t n = json_array_size(msgs);
        if (n > 256) return "too many messages";
        ChatMessage cm[256];
        for (size_t i = 0; i < n; i++) {
            json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
            if (!json_is_string(role) || !json_is_string(content)) return "each message needs string role and content";
            const char *ro = json_string_value(role);
            if (strcmp(ro, "system") && strcmp(ro, "user") && strcmp(ro, "assistant")) return "message role must be system, user or assistant";
            cm[i].role = ro;
            cm[i].content = json_string_value(content);
        }
        char *text = NULL;
        if (chat_render(S.tok, cm, (int)n, true, false, &text, err)) return err;
        ds_status rc = tokenizer_encode(S.tok, text, strlen(text), &r->prompt, &r->er.n_prompt, err);
        ds_free(text);
        return rc ? err : NULL;
    }
    json_t *p = json_object_get(body, "prompt");
    if (json_is_string(p)) {
        if (!S.tok) return "this model has no tokenizer; send prompt as a list of token ids";
        if (tokenizer_encode(S.tok, json_string_value(p), json_string_length(p), &r->prompt, &r->er.n_prompt, err)) return err;
        return NULL;
    }
    if (json_is_array(p) && json_array_size(p) == 1 && (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); /* a batch of one */
    if (json_is_string(p)) {
        if (!S.tok) return "this model has no tokenizer; send prompt as a list of token ids";
        if (tokenizer_encode(S.tok, json_string_value(p), json_string_length(p), &r->prompt, &r->er.n_prompt, err)) return err;
        return NULL;
    }
    if (json_is_array(p)) {
        size_t n = json_array_size(p);
        if (n == 0) return "prompt is empty";
        r->prompt = ds_malloc(sizeof(int32_t) * n);
        r->er.n_prompt = (int)n;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(p, i);
            if (!json_is_integer(e)) return "prompt must be a string or a list of token ids (one prompt only)";
            r->prompt[i] = (int32_t)json_integer_value(e);
        }
        return NULL;
    }
    return "prompt must be a string or a list of token ids";
}

static enum MHD_Result handle_completion(struct MHD_Connection *c, const char *body, size_t len, bool chat) {
    char err[DS_ERR_LEN];
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!root) {
        snprintf(err, sizeof err, "malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
        return send_error(c, 400, "invalid_request_error", err);
    }
    if (!json_is_object(root)) { json_decref(root); return send_error(c, 400, "invalid_request_error", "the body must be a JSON object"); }
    ServerReq *r = calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->chat = chat;
    const char *msg = parse_common(root, r, chat);
    if (!msg) msg = build_prompt(root, r, chat, err);
    json_decref(root);
    if (msg) {
        enum MHD_Result ret = send_error(c, 400, "invalid_request_error", msg);
        req_unref(r);
        return ret;
    }
    pthread_mutex_lock(&S.mu);
    snprintf(r->id, sizeof r->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)++S.next_id);
    pthread_mutex_unlock(&S.mu);
    r->created = (long)time(NULL);
    r->er.prompt = r->prompt;
    for (int i = 0; i < S.cfg.n_stop && i < ENGINE_MAX_STOP; i++) r->er.stop_ids[r->er.n_stop++] = S.cfg.stop_ids[i];
    r->er.on_token = on_token;
    r->er.on_finish = on_finish;
    r->er.user = r;
    r->refs = 2; /* HTTP side + engine side */
    if (engine_submit(S.engine, &r->er, err)) {
        r->refs = 1;
        enum MHD_Result ret = send_error(c, 400, "invalid_request_error", err);
        req_unref(r);
        return ret;
    }
    if (r->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, stream_free);
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->done) pthread_cond_wait(&r->cv, &r->mu);
    json_t *out = final_json(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r);
    return send_json(c, 200, out);
}

static enum MHD_Result handle_metrics(struct MHD_Connection *c) {
    EngineStats st = engine_stats(S.engine);
    char buf[4096];
    int n = snprintf(buf, sizeof buf,
                     "# TYPE dspark_requests_total counter\ndspark_requests_total %llu\n"
                     "# TYPE dspark_http_requests_total counter\ndspark_http_requests_total %llu\n"
                     "# TYPE dspark_http_errors_total counter\ndspark_http_errors_total %llu\n"
                     "# TYPE dspark_generated_tokens_total counter\ndspark_generated_tokens_total %llu\n"
                     "# TYPE dspark_prompt_tokens_total counter\ndspark_prompt_tokens_total %llu\n"
                     "# TYPE dspark_engine_steps_total counter\ndspark_engine_steps_total %llu\n"
                     "# TYPE dspark_step_seconds_total counter\ndspark_step_seconds_total %.6f\n"
                     "# TYPE dspark_requests_running gauge\ndspark_requests_running %d\n"
                     "# TYPE dspark_requests_waiting gauge\ndspark_requests_waiting %d\n"
                     "# TYPE dspark_rounds_total counter\ndspark_rounds_total %llu\n"
                     "# TYPE dspark_drafts_verified_total counter\ndspark_drafts_verified_total %llu\n"
                     "# TYPE dspark_tau gauge\ndspark_tau %.4f\n"
                     "# TYPE dspark_verify_len_mean gauge\ndspark_verify_len_mean %.4f\n"
                     "# TYPE dspark_rounds_bypassed_total counter\ndspark_rounds_bypassed_total %llu\n"
                     "# TYPE dspark_policy_info gauge\ndspark_policy_info{policy=\"%s\"} 1\n",
                     (unsigned long long)st.requests_finished, (unsigned long long)S.http_requests, (unsigned long long)S.http_errors,
                     (unsigned long long)st.tokens_generated, (unsigned long long)st.prompt_tokens, (unsigned long long)st.steps,
                     st.step_seconds_total, st.active, st.waiting, (unsigned long long)st.rounds,
                     (unsigned long long)st.drafts_verified, st.rounds ? (double)st.tokens_generated / st.rounds : 0.0,
                     st.rounds ? (double)st.drafts_verified / st.rounds : 0.0, (unsigned long long)st.rounds_bypassed,
                     S.cfg.policy_name ? S.cfg.policy_name : "none");
    if (n < 0 || n >= (int)sizeof buf) n = (int)sizeof buf - 1;
    struct MHD_Response *resp = MHD_create_response_from_buffer((size_t)n, buf, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)cls; (void)version;
    Upload *up = *con_cls;
    if (!up) {
        up = calloc(1, sizeof *up);
        *con_cls = up;
        pthread_mutex_lock(&S.mu);
        S.http_requests++;
        pthread_mutex_unlock(&S.mu);
        return MHD_YES;
    }
    if (*upload_size) {
        if (up->len + *upload_size > S.cfg.max_body_bytes) up->too_large = true;
        else {
            if (up->len + *upload_size + 1 > up->cap) {
                size_t cap = up->cap ? up->cap : 4096;
                while (cap < up->len + *upload_size + 1) cap *= 2;
                up->body = realloc(up->body, cap);
                up->cap = cap;
            }
            memcpy(up->body + up->len, upload_data, *upload_size);
            up->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/health") == 0) {
        if (!get) return send_error(c, 405, "invalid_request_error", "use GET");
        if (!S.ready) return send_json(c, 503, json_pack("{s:s}", "status", "loading"));
        return send_json(c, S.stop ? 503 : 200, json_pack("{s:s}", "status", S.stop ? "draining" : "ok"));
    }
    if (!S.ready) return send_error(c, 503, "server_error", "the model is still loading");
    if (strcmp(url, "/v1/models") == 0) {
        if (!get) return send_error(c, 405, "invalid_request_error", "use GET");
        return send_json(c, 200, json_pack("{s:s,s:[{s:s,s:s,s:i,s:s}]}", "object", "list", "data", "id", S.cfg.model_name, "object",
                                           "model", "created", 0, "owned_by", "dspark"));
    }
    if (strcmp(url, "/metrics") == 0) return get ? handle_metrics(c) : send_error(c, 405, "invalid_request_error", "use GET");
    bool is_chat = strcmp(url, "/v1/chat/completions") == 0, is_cmpl = strcmp(url, "/v1/completions") == 0;
    if (!is_chat && !is_cmpl) return send_error(c, 404, "invalid_request_error", "unknown endpoint");
    if (!post) return send_error(c, 405, "invalid_request_error", "use POST");
    if (up->too_large) return send_error(c, 413, "invalid_request_error", "request body too large");
    if (S.stop) return send_error(c, 503, "server_error", "the server is shutting down");
    return handle_completion(c, up->body ? up->body : "", up->len, is_chat);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)c; (void)toe;
    Upload *up = *con_cls;
    if (up) { free(up->body); free(up); }
    *con_cls = NULL;
}

static void *engine_thread(void *arg) {
    (void)arg;
    char err[DS_ERR_LEN];
    /* OpenMP's thread count is per calling thread: without this the engine thread ignores
     * --threads and runs a team of every core (on a shared 2-core machine: 10-100x slower) */
    if (S.engine->model->be->n_threads > 0) omp_set_num_threads(S.engine->model->be->n_threads);
    double drain_start = 0;
    for (;;) {
        EngineStats st = engine_stats(S.engine);
        if (S.stop && !st.active && !st.waiting) break;
        if (S.stop && drain_start == 0) drain_start = ds_now();
        if (S.stop && ds_now() - drain_start > S.cfg.drain_seconds) {
            fprintf(stderr, "dspark serve: drain took over %.0f s: cancelling %d running, %d waiting\n", S.cfg.drain_seconds, st.active, st.waiting);
            engine_cancel_all(S.engine);
            drain_start = ds_now();
        }
        engine_wait_work(S.engine, 0.05);
        int progressed = engine_step(S.engine, err);
        if (progressed < 0) fprintf(stderr, "dspark serve: engine: %s\n", err);
        if (progressed == 0 && !S.stop && S.cfg.on_idle) S.cfg.on_idle(S.cfg.idle_ctx);
    }
    return NULL;
}

static void on_signal(int sig) { (void)sig; S.stop = 1; }

int server_run(const ServerConfig *cfg, ServerLoadFn load, void *load_ctx) {
    memset(&S, 0, sizeof S);
    S.cfg = *cfg;
    pthread_mutex_init(&S.mu, NULL);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1) {
        fprintf(stderr, "dspark serve: --host '%s' is not an IPv4 address\n", cfg->host);
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC,
                                            0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_CONNECTION_LIMIT,
                                            (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "dspark serve: cannot listen on %s:%d (in use?)\n", cfg->host, cfg->port);
        return 1;
    }
    fprintf(stderr, "dspark serve: listening on http://%s:%d (loading the model...)\n", cfg->host, cfg->port);
    Engine *engine = NULL;
    const Tokenizer *tok = NULL;
    if (load(load_ctx, &engine, &tok) != 0) { MHD_stop_daemon(d); return 1; }
    S.cfg = *cfg; /* load() filled in the model's sampling defaults and stop tokens */
    S.engine = engine;
    S.tok = tok;
    S.ready = 1;
    fprintf(stderr, "dspark serve: ready (model '%s')\n", cfg->model_name);
    pthread_t et;
    pthread_create(&et, NULL, engine_thread, NULL);
    while (!S.stop) usleep(50 * 1000);
    fprintf(stderr, "dspark serve: draining\n");
    MHD_quiesce_daemon(d);
    pthread_join(et, NULL);
    MHD_stop_daemon(d);
    fprintf(stderr, "dspark serve: stopped\n");
    return 0;
}
