/* cmd_bench_serve.c - `dspark bench-serve`: a closed-loop load benchmark of `dspark serve`.
 *
 * For each verification policy it starts `dspark serve` on a loopback port, then for each
 * concurrency level runs that many client threads, each sending one chat request after
 * another (closed loop) for --requests requests. Reports aggregate throughput (generated
 * tokens/s), per-user speed (tokens/s of one request, mean) and the mean verification length
 * per round (from /metrics), as a table, JSON, and the two plots of the paper's Figures 7
 * (throughput vs per-user speed) and 8 (verification budget vs concurrency). */
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "scheduler.h"
#include "svgplot.h"

#ifdef DSPARK_HAVE_CURL
#include <curl/curl.h>
#include <pthread.h>

extern char **environ;

typedef struct { char *buf; size_t len; } Buf;

static size_t on_data(char *p, size_t size, size_t n, void *u) {
    Buf *b = u;
    size_t k = size * n;
    char *nb = realloc(b->buf, b->len + k + 1);
    if (!nb) return 0;
    memcpy(nb + b->len, p, k);
    b->buf = nb;
    b->len += k;
    b->buf[b->len] = 0;
    return k;
}

/* GET or POST; returns the HTTP status (or -1) and the body in *out (free it) */
static long http(const char *url, const char *body, char **out, double timeout_s) {
    CURL *c = curl_easy_init();
    Buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    struct curl_slist *h = NULL;
    if (body) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out) *out = b.buf; else free(b.buf);
    return status;
}

static double metric(const char *base, const char *name) {
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "%s/metrics", base);
    double v = 0;
    if (http(url, NULL, &body, 10) == 200 && body) {
        char *p = strstr(body, name); /* the sample line: at a line start, then a space (not "# TYPE name") */
        while (p && (p[strlen(name)] != ' ' || (p != body && p[-1] != '\n'))) p = strstr(p + 1, name);
        if (p) v = atof(p + strlen(name) + 1);
    }
    free(body);
    return v;
}

typedef struct {
    const char *base;
    const char **prompts;
    int n_prompts, first, n_requests, max_tokens;
    double temp;
    long tokens;
    double busy_s, speed_sum;
    int errors, done;
} Client;

static void *client_main(void *arg) {
    Client *c = arg;
    char url[256];
    snprintf(url, sizeof url, "%s/v1/chat/completions", c->base);
    for (int i = 0; i < c->n_requests; i++) {
        const char *p = c->prompts[(c->first + i) % c->n_prompts];
        json_t *req = json_pack("{s:s,s:[{s:s,s:s}],s:i,s:f,s:i}", "model", "bench", "messages", "role", "user", "content", p,
                                "max_tokens", c->max_tokens, "temperature", c->temp, "seed", c->first * 1000 + i);
        char *body = json_dumps(req, JSON_COMPACT), *resp = NULL;
        json_decref(req);
        double t0 = ds_now();
        long st = http(url, body, &resp, 3600);
        double dt = ds_now() - t0;
        free(body);
        json_t *r = st == 200 && resp ? json_loads(resp, JSON_ALLOW_NUL, NULL) : NULL; /* the text may hold U+0000 */
        json_t *u = r ? json_object_get(json_object_get(r, "usage"), "completion_tokens") : NULL;
        if (json_is_integer(u)) {
            long k = (long)json_integer_value(u);
            c->tokens += k;
            c->busy_s += dt;
            c->speed_sum += k / (dt > 0 ? dt : 1e-9);
            c->done++;
        } else {
            if (!c->errors++) fprintf(stderr, "dspark bench-serve: a request failed: HTTP %ld: %.200s\n", st, resp ? resp : "(no body)");
        }
        json_decref(r);
        free(resp);
    }
    return NULL;
}

static void read_loadavg(char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fgets(out, (int)cap, f)) out[strcspn(out, "\n")] = 0;
    if (f) fclose(f);
}

static char **load_prompts(const char *path, int *n) {
    static const char *builtin[] = {
        "Write a Python function that returns the n-th Fibonacci number.",
        "Explain what a hash table is in two paragraphs.",
        "Write a C function that reverses a string in place.",
        "Summarise the rules of chess briefly.",
        "What is the difference between a process and a thread?",
        "Write a haiku about the sea.",
        "List five uses of the Linux command grep with examples.",
        "Describe how a compiler turns source code into machine code.",
    };
    char **out = NULL;
    *n = 0;
    if (!path) {
        out = malloc(sizeof builtin);
        for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++) out[(*n)++] = strdup(builtin[i]);
        return out;
    }
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *t = json_array_get(json_object_get(j, "turns"), 0);
        if (!json_is_string(t)) t = json_object_get(j, "prompt");
        if (json_is_string(t)) {
            out = realloc(out, sizeof(char *) * (*n + 1));
            out[(*n)++] = strdup(json_string_value(t));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return out;
}

int cmd_bench_serve(int argc, char **argv) {
    const char *model = NULL, *draft = NULL, *conc_s = "1,2,4,8", *policy_s = "full", *prompts_path = NULL, *json_out = NULL,
               *plot_prefix = NULL;
    int requests = 4, max_tokens = 64, port = 18765, threads = 0;
    double temp = 1.0;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "drafter directory (speculative decoding)", 0, -1},
        {"--concurrency", ARG_STR, &conc_s, "LIST", "concurrent users, e.g. 1,4,16 (default 1,2,4,8)", 0, -1},
        {"--policy", ARG_STR, &policy_s, "LIST", "verification policies: full, fixed:L, threshold:C, alg1, async, each optionally +bypass (default full)", 0, -1},
        {"--prompts", ARG_STR, &prompts_path, "FILE", "JSONL with {\"turns\": [...]} or {\"prompt\": ...} lines", 0, -1},
        {"--requests", ARG_INT, &requests, "N", "requests per user and level (default 4)", 1, 100000},
        {"--max-tokens", ARG_INT, &max_tokens, "N", "max_tokens per request (default 64)", 1, 1 << 20},
        {"--temp", ARG_FLOAT, &temp, "T", "temperature (default 1.0)", 0, 2},
        {"--port", ARG_INT, &port, "N", "loopback port for the servers (default 18765)", 1024, 65535},
        {"--threads", ARG_INT, &threads, "N", "server CPU threads", 1, 1024},
        {"--json", ARG_STR, &json_out, "FILE", "write the results as JSON", 0, -1},
        {"--plot", ARG_STR, &plot_prefix, "PREFIX", "write PREFIX-throughput.svg and PREFIX-verify.svg", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("bench-serve", "--model DIR [--draft DIR] [--concurrency LIST] [--policy LIST] [flags]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model) { fprintf(stderr, "dspark bench-serve: --model is required\n"); return 2; }
    int *conc, n_conc = args_parse_ids("--concurrency", conc_s, &conc);
    if (n_conc <= 0) return 2;
    int max_conc = 1;
    for (int i = 0; i < n_conc; i++) {
        if (conc[i] < 1) { fprintf(stderr, "dspark bench-serve: --concurrency values must be >= 1\n"); return 2; }
        max_conc = conc[i] > max_conc ? conc[i] : max_conc;
    }
    char policies[16][64];
    int n_pol = 0;
    for (const char *p = policy_s; *p && n_pol < 16;) {
        size_t k = strcspn(p, ",");
        snprintf(policies[n_pol++], sizeof policies[0], "%.*s", (int)k, p);
        p += k + (p[k] == ',');
    }
    for (int i = 0; i < n_pol; i++) {
        SchedPolicy sp;
        char perr[DS_ERR_LEN];
        if (sched_policy_parse(policies[i], "--policy", &sp, perr)) { fprintf(stderr, "dspark bench-serve: %s\n", perr); return 2; }
    }
    int n_prompts;
    char **prompts = load_prompts(prompts_path, &n_prompts);
    if (!prompts || !n_prompts) { fprintf(stderr, "dspark bench-serve: no prompts in %s\n", prompts_path ? prompts_path : "(builtin)"); return 2; }
    curl_global_init(CURL_GLOBAL_ALL);
    char load0[64], load1[64]; /* the machine may be shared: the load average goes into the JSON */
    read_loadavg(load0, sizeof load0);
    json_t *results = json_array();
    double tput[16][64], speed[16][64], vlen[16][64], xconc[64], byp[16][64];
    for (int i = 0; i < n_conc; i++) xconc[i] = conc[i];
    int status = 0;
    printf("%-14s %6s %12s %14s %10s %6s %9s %8s\n", "policy", "users", "tokens/s", "user tok/s", "verify_len", "tau", "bypassed", "errors");
    for (int pi = 0; pi < n_pol && !status; pi++) {
        char port_s[16], slots_s[16], threads_s[16], base[64];
        snprintf(port_s, sizeof port_s, "%d", port + pi);
        snprintf(slots_s, sizeof slots_s, "%d", max_conc);
        snprintf(threads_s, sizeof threads_s, "%d", threads);
        snprintf(base, sizeof base, "http://127.0.0.1:%d", port + pi);
        const char *av[24];
        int ac = 0;
        av[ac++] = "/proc/self/exe";
        av[ac++] = "serve"; av[ac++] = "--model"; av[ac++] = model; av[ac++] = "--port"; av[ac++] = port_s;
        av[ac++] = "--slots"; av[ac++] = slots_s;
        if (threads) { av[ac++] = "--threads"; av[ac++] = threads_s; }
        if (draft) { av[ac++] = "--draft"; av[ac++] = draft; av[ac++] = "--policy"; av[ac++] = policies[pi]; }
        av[ac] = NULL;
        char exe[4096];
        ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (el <= 0) { fprintf(stderr, "dspark bench-serve: cannot find my own binary\n"); status = 1; break; }
        exe[el] = 0;
        av[0] = exe;
        pid_t pid;
        if (posix_spawn(&pid, exe, NULL, NULL, (char *const *)av, environ) != 0) { fprintf(stderr, "dspark bench-serve: cannot start the server\n"); status = 1; break; }
        char url[128];
        snprintf(url, sizeof url, "%s/health", base);
        int up = 0;
        for (int t = 0; t < 600 && !up; t++) {
            up = http(url, NULL, NULL, 1) == 200;
            if (!up) usleep(100000);
            if (waitpid(pid, NULL, WNOHANG) == pid) break;
        }
        if (!up) { fprintf(stderr, "dspark bench-serve: the server for policy '%s' did not come up\n", policies[pi]); kill(pid, SIGKILL); waitpid(pid, NULL, 0); status = 1; break; }
        for (int ci = 0; ci < n_conc; ci++) {
            int users = conc[ci];
            Client *cl = calloc((size_t)users, sizeof *cl);
            pthread_t *th = calloc((size_t)users, sizeof *th);
            double r0 = metric(base, "dspark_rounds_total"), d0 = metric(base, "dspark_drafts_verified_total");
            double b0 = metric(base, "dspark_rounds_bypassed_total"), g0 = metric(base, "dspark_generated_tokens_total");
            double t0 = ds_now();
            for (int u = 0; u < users; u++) {
                cl[u] = (Client){.base = base, .prompts = (const char **)prompts, .n_prompts = n_prompts, .first = u * requests,
                                 .n_requests = requests, .max_tokens = max_tokens, .temp = temp};
                pthread_create(&th[u], NULL, client_main, &cl[u]);
            }
            long tokens = 0;
            int errors = 0, done = 0;
            double speed_sum = 0;
            for (int u = 0; u < users; u++) {
                pthread_join(th[u], NULL);
                tokens += cl[u].tokens; errors += cl[u].errors; done += cl[u].done; speed_sum += cl[u].speed_sum;
            }
            double wall = ds_now() - t0;
            double r1 = metric(base, "dspark_rounds_total"), d1 = metric(base, "dspark_drafts_verified_total");
            double b1 = metric(base, "dspark_rounds_bypassed_total"), g1 = metric(base, "dspark_generated_tokens_total");
            double tau = r1 > r0 ? (g1 - g0) / (r1 - r0) : 0;
            byp[pi][ci] = r1 > r0 ? (b1 - b0) / (r1 - r0) : 0;
            tput[pi][ci] = tokens / (wall > 0 ? wall : 1e-9);
            speed[pi][ci] = done ? speed_sum / done : 0;
            vlen[pi][ci] = r1 > r0 ? (d1 - d0) / (r1 - r0) : 0;
            printf("%-14s %6d %12.2f %14.2f %10.3f %6.2f %8.1f%% %8d\n", policies[pi], users, tput[pi][ci], speed[pi][ci], vlen[pi][ci], tau,
                   100 * byp[pi][ci], errors);
            fflush(stdout);
            json_array_append_new(results, json_pack("{s:s,s:i,s:f,s:f,s:f,s:I,s:i,s:f,s:f,s:f}", "policy", policies[pi], "concurrency", users,
                                                     "tokens_per_s", tput[pi][ci], "user_tokens_per_s", speed[pi][ci],
                                                     "verify_len_mean", vlen[pi][ci], "tokens", (json_int_t)tokens, "errors", errors,
                                                     "wall_s", wall, "tau", tau, "bypassed_fraction", byp[pi][ci]));
            free(cl);
            free(th);
        }
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    char err[DS_ERR_LEN];
    read_loadavg(load1, sizeof load1);
    if (!status && json_out) {
        json_t *root = json_pack("{s:{s:s,s:s?,s:i,s:i,s:f,s:s?,s:i,s:s,s:s},s:o}", "config", "model", model, "draft", draft,
                                 "requests_per_user", requests, "max_tokens", max_tokens, "temperature", temp, "prompts", prompts_path,
                                 "threads", threads, "loadavg_start", load0, "loadavg_end", load1, "results", results);
        char *text = json_dumps(root, JSON_INDENT(2));
        json_decref(root);
        if (ds_write_file_atomic(json_out, text, strlen(text), err)) { fprintf(stderr, "dspark bench-serve: %s\n", err); status = 1; }
        free(text);
    } else {
        json_decref(results);
    }
    if (!status && plot_prefix) {
        PlotSeries s1[16], s2[16];
        for (int pi = 0; pi < n_pol; pi++) {
            s1[pi] = (PlotSeries){policies[pi], speed[pi], tput[pi], n_conc, false};
            s2[pi] = (PlotSeries){policies[pi], xconc, vlen[pi], n_conc, false};
        }
        char path[1024];
        PlotSpec p1 = {"Throughput vs per-user speed (points: concurrency)", "per-user tokens/s", "aggregate tokens/s", false, true, true};
        PlotSpec p2 = {"Verification budget vs concurrency", "concurrent users", "mean verified drafts per round", true, false, true};
        snprintf(path, sizeof path, "%s-throughput.svg", plot_prefix);
        if (svg_plot(path, &p1, s1, n_pol, err)) { fprintf(stderr, "dspark bench-serve: %s\n", err); status = 1; }
        snprintf(path, sizeof path, "%s-verify.svg", plot_prefix);
        if (!status && svg_plot(path, &p2, s2, n_pol, err)) { fprintf(stderr, "dspark bench-serve: %s\n", err); status = 1; }
    }
    for (int i = 0; i < n_prompts; i++) free(prompts[i]);
    free(prompts);
    ds_free(conc);
    curl_global_cleanup();
    return status;
}
#else
int cmd_bench_serve(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "dspark bench-serve: this build has no HTTP client (libcurl missing or DSPARK_CPU_LIBS=OFF)\n");
    return 1;
}
#endif
