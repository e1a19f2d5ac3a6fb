/* profile.c - the SPS profile (see profile.h). */
#include "profile.h"

#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "sample.h"
#include "svgplot.h"

#define PROFILE_SLOTS 4  /* requests the measured tokens are spread over */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

/* "path|config-hash|weights size:mtime ..." of a model directory */
static void describe_dir(char *out, size_t cap, const char *dir) {
    char real[PATH_MAX], path[PATH_MAX + 32];
    if (!realpath(dir, real)) snprintf(real, sizeof real, "%s", dir);
    size_t k = (size_t)snprintf(out, cap, "%s", real);
    snprintf(path, sizeof path, "%s/config.json", real);
    char *text = NULL, err[DS_ERR_LEN];
    size_t len = 0;
    uint64_t h = 14695981039346656037ull;
    if (ds_read_file(path, &text, &len, err) == DS_OK) { h = fnv1a(h, text, len); ds_free(text); }
    if (k < cap) k += (size_t)snprintf(out + k, cap - k, "|config %016llx", (unsigned long long)h);
    DIR *d = opendir(real);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0) continue;
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", real, e->d_name) >= (int)sizeof path) continue;
        if (stat(path, &st) == 0 && k < cap)
            k += (size_t)snprintf(out + k, cap - k, "|%s %lld:%lld", e->d_name, (long long)st.st_size, (long long)st.st_mtime);
    }
    if (d) closedir(d);
}

static void cpu_model(char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *c = strchr(line, ':');
        if (c) { snprintf(out, cap, "%s", c + 2); out[strcspn(out, "\n")] = 0; }
        break;
    }
    fclose(f);
}

static void rebuild_dense(SpsProfile *p) {
    int lo = 0;
    for (int b = 1; b <= p->max_tokens; b++) {
        if (p->step_s[b] > 0) { p->dense_s[b] = p->step_s[b]; lo = b; continue; }
        int hi = b + 1;
        while (hi <= p->max_tokens && !(p->step_s[hi] > 0)) hi++;
        if (lo && hi <= p->max_tokens) p->dense_s[b] = p->step_s[lo] + (p->step_s[hi] - p->step_s[lo]) * (b - lo) / (hi - lo);
        else if (lo) p->dense_s[b] = p->step_s[lo] * b / lo;  /* past the largest measured: proportional */
        else if (hi <= p->max_tokens) p->dense_s[b] = p->step_s[hi];
        else p->dense_s[b] = 1e-3 * b;                       /* nothing measured (never used by callers) */
    }
    /* a larger batch never runs faster: a smaller batch measured slower than a larger one met
     * interference (the machine is shared), so step time is made non-decreasing */
    for (int b = p->max_tokens - 1; b >= 1; b--)
        if (p->dense_s[b] > p->dense_s[b + 1]) p->dense_s[b] = p->dense_s[b + 1];
    p->n_measured = 0;
    for (int b = 1; b <= p->max_tokens; b++) p->n_measured += p->step_s[b] > 0;
}

ds_status profile_init(SpsProfile *p, Qwen3Model *m, Drafter *d, int max_tokens, int ctx_len, char *err) {
    memset(p, 0, sizeof *p);
    if (max_tokens < 1 || max_tokens > PROFILE_MAX_TOKENS) return ds_err(err, DS_EARG, "profile: --max-tokens must be in [1, %d]", PROFILE_MAX_TOKENS);
    if (ctx_len < 0 || ctx_len + max_tokens >= m->cfg.max_position_embeddings)
        return ds_err(err, DS_EARG, "profile: context %d + %d tokens exceeds the model's %d positions", ctx_len, max_tokens,
                      m->cfg.max_position_embeddings);
    p->m = m;
    p->d = d;
    p->max_tokens = max_tokens;
    p->ctx_len = ctx_len;
    p->step_s = ds_calloc((size_t)max_tokens + 1, sizeof(double));
    p->dense_s = ds_calloc((size_t)max_tokens + 1, sizeof(double));
    if (!p->step_s || !p->dense_s) { profile_free(p); return ds_err(err, DS_ENOMEM, "profile: out of memory"); }
    char md[1500], dd[1500] = "none", cpu[256];
    describe_dir(md, sizeof md, m->dir);
    if (d) describe_dir(dd, sizeof dd, d->dir);
    cpu_model(cpu, sizeof cpu);
    int threads = m->be->n_threads > 0 ? m->be->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (snprintf(p->key, sizeof p->key, "model=%s;draft=%s;cpu=%s;threads=%d;kernels=%s;backend=%s;ctx=%d;max=%d", md, dd, cpu, threads,
                 kern_path_name(), m->be->name, ctx_len, max_tokens) >= (int)sizeof p->key) {
        profile_free(p);
        return ds_err(err, DS_EARG, "profile: model path too long for the cache key");
    }
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[1100];
    if (xdg && *xdg) snprintf(dir, sizeof dir, "%s/dspark", xdg);
    else snprintf(dir, sizeof dir, "%s/.cache/dspark", home && *home ? home : "/tmp");
    snprintf(p->path, sizeof p->path, "%s/sps-%016llx.json", dir,
             (unsigned long long)fnv1a(14695981039346656037ull, p->key, strlen(p->key)));
    rebuild_dense(p);
    return DS_OK;
}

void profile_release_runner(SpsProfile *p) {
    if (p->have_st) qwen3_state_free(&p->st, p->m);
    if (p->have_ds) draft_state_free(&p->ds, p->d);
    p->have_st = p->have_ds = false;
    ds_free(p->tok); ds_free(p->pos); ds_free(p->slot); ds_free(p->rows);
    p->tok = p->pos = p->slot = p->rows = NULL;
}

void profile_free(SpsProfile *p) {
    profile_release_runner(p);
    ds_free(p->step_s); ds_free(p->dense_s);
    memset(p, 0, sizeof *p);
}

bool profile_load_cache(SpsProfile *p) {
    json_t *root = json_load_file(p->path, 0, NULL);
    bool ok = false;
    json_t *key = json_object_get(root, "key"), *sizes = json_object_get(root, "sizes"), *steps = json_object_get(root, "step_s");
    if (json_is_string(key) && strcmp(json_string_value(key), p->key) == 0 && json_is_array(sizes) && json_is_array(steps) &&
        json_array_size(sizes) == json_array_size(steps) && json_array_size(sizes) > 0) {
        ok = true;
        for (size_t i = 0; i < json_array_size(sizes) && ok; i++) {
            json_t *b = json_array_get(sizes, i), *t = json_array_get(steps, i);
            ok = json_is_integer(b) && json_integer_value(b) >= 1 && json_integer_value(b) <= p->max_tokens && json_is_number(t) &&
                 json_number_value(t) > 0;
            if (ok) p->step_s[json_integer_value(b)] = json_number_value(t);
        }
        json_t *ds = json_object_get(root, "draft_s");
        if (ok && json_is_number(ds)) p->draft_s = json_number_value(ds);
        json_t *db = json_object_get(root, "draft_block");
        if (ok && json_is_integer(db)) p->draft_block = (int)json_integer_value(db);
        if (!ok) memset(p->step_s, 0, sizeof(double) * ((size_t)p->max_tokens + 1));
    }
    json_decref(root);
    rebuild_dense(p);
    p->from_cache = ok;
    return ok;
}

ds_status profile_save_cache(const SpsProfile *p, char *err) {
    char dir[1200];
    snprintf(dir, sizeof dir, "%s", p->path);
    *strrchr(dir, '/') = 0;
    ds_status rc = ds_mkdirs(dir, err);
    if (rc) return rc;
    json_t *sizes = json_array(), *steps = json_array();
    for (int b = 1; b <= p->max_tokens; b++)
        if (p->step_s[b] > 0) { json_array_append_new(sizes, json_integer(b)); json_array_append_new(steps, json_real(p->step_s[b])); }
    json_t *root = json_pack("{s:s,s:i,s:s,s:i,s:i,s:f,s:i,s:o,s:o}", "format", "dspark-sps-profile", "version", 1, "key", p->key,
                             "ctx_len", p->ctx_len, "max_tokens", p->max_tokens, "draft_s", p->draft_s, "draft_block", p->draft_block,
                             "sizes", sizes, "step_s", steps);
    char *text = json_dumps(root, JSON_INDENT(1));
    json_decref(root);
    rc = ds_write_file_atomic(p->path, text, strlen(text), err);
    free(text);
    return rc;
}

/* ---- measuring ---- */

static ds_status ensure_runner(SpsProfile *p, char *err) {
    if (p->have_st) return DS_OK;
    int T = p->max_tokens, S = PROFILE_SLOTS;
    int nfl = p->d ? p->d->cfg.n_target_layers : 0;
    int max_ctx = p->ctx_len + (T + S - 1) / S + 2;
    if (p->d && max_ctx < p->ctx_len + p->d->cfg.block_size + 2) max_ctx = p->ctx_len + p->d->cfg.block_size + 2;
    ds_status rc = qwen3_state_init(&p->st, p->m, T, T, nfl, S, max_ctx, err);
    if (rc) return rc;
    p->have_st = true;
    p->n_slots = S;
    p->tok = ds_malloc(sizeof(int32_t) * T);
    p->pos = ds_malloc(sizeof(int32_t) * T);
    p->slot = ds_malloc(sizeof(int32_t) * T);
    p->rows = ds_malloc(sizeof(int32_t) * T);
    if (!p->tok || !p->pos || !p->slot || !p->rows) return ds_err(err, DS_ENOMEM, "profile: out of memory");
    for (int i = 0; i < T; i++) p->tok[i] = (int32_t)((i * 7919u + 13u) % (unsigned)p->m->cfg.vocab_size);
    return DS_OK;
}

static ds_status measure_size(SpsProfile *p, int B, double min_time, char *err) {
    ds_status rc = ensure_runner(p, err);
    if (rc) return rc;
    int S = B < p->n_slots ? B : p->n_slots;
    for (int i = 0; i < B; i++) {
        p->slot[i] = i % S;
        p->pos[i] = p->ctx_len + i / S;
        p->rows[i] = i;
    }
    Qwen3Batch b = {.n = B, .tokens = p->tok, .pos = p->pos, .slot = p->slot, .logit_rows = p->rows, .n_logits = B,
                    .feature_layers = p->d ? p->d->cfg.target_layer_ids : NULL, .n_feature_layers = p->d ? p->d->cfg.n_target_layers : 0};
    if ((rc = qwen3_forward(p->m, &p->st, &b, err))) return rc; /* warm-up */
    double best = 1e30, t_all = ds_now();
    for (int rep = 0; rep < 50 && (rep < 3 || ds_now() - t_all < min_time); rep++) {
        double t0 = ds_now();
        if ((rc = qwen3_forward(p->m, &p->st, &b, err))) return rc;
        double dt = ds_now() - t0;
        if (dt < best) best = dt; /* the minimum: the machine is shared, interference only adds */
    }
    p->step_s[B] = best > 1e-9 ? best : 1e-9;
    rebuild_dense(p);
    return DS_OK;
}

/* One drafting round of one request (block forward + every slot's head + argmax), with a
 * context of ctx_len positions of real target features. */
static ds_status measure_draft(SpsProfile *p, char *err) {
    ds_status rc = ensure_runner(p, err);
    if (rc) return rc;
    Drafter *d = p->d;
    int ctx = p->ctx_len > 0 ? p->ctx_len : 1, chunk = p->max_tokens;
    if (!p->have_ds) {
        if ((rc = draft_state_init(&p->ds, d, ctx + d->cfg.block_size + 2, chunk, err))) return rc;
        p->have_ds = true;
    }
    draft_state_reset(&p->ds);
    for (int at = 0; at < ctx; at += chunk) {
        int n = ctx - at < chunk ? ctx - at : chunk;
        for (int i = 0; i < n; i++) { p->pos[i] = at + i; p->slot[i] = 0; p->rows[i] = i; }
        Qwen3Batch b = {.n = n, .tokens = p->tok, .pos = p->pos, .slot = p->slot, .logit_rows = p->rows, .n_logits = 1,
                        .feature_layers = d->cfg.target_layer_ids, .n_feature_layers = d->cfg.n_target_layers};
        if ((rc = qwen3_forward(p->m, &p->st, &b, err))) return rc;
        if ((rc = drafter_append_context(d, &p->ds, p->st.features, n, at, err))) return rc;
    }
    double best = 1e30, t_all = ds_now();
    const int V = p->m->cfg.vocab_size;
    for (int rep = 0; rep < 50 && (rep < 5 || ds_now() - t_all < 0.05); rep++) {
        double t0 = ds_now();
        if ((rc = drafter_block(d, &p->ds, p->tok[0], ctx, err))) return rc;
        int32_t prev = p->tok[0];
        for (int j = 0; j < d->cfg.block_size; j++) {
            float conf;
            if ((rc = drafter_head(d, &p->ds, j, prev, &conf, err))) return rc;
            prev = argmax_f32(p->ds.logits_host, V);
        }
        double dt = ds_now() - t0;
        if (dt < best) best = dt;
    }
    p->draft_s = best;
    p->draft_block = d->cfg.block_size;
    return DS_OK;
}

ds_status profile_measure_coarse(SpsProfile *p, double budget_s, char *err) {
    double t0 = ds_now();
    int order[64], n = 0;
    order[n++] = 1;
    if (p->max_tokens > 1) order[n++] = p->max_tokens;
    for (int b = 2; b < p->max_tokens && n < 64; b *= 2) order[n++] = b;
    for (int b = 3; b < p->max_tokens && n < 64; b *= 2) order[n++] = b;
    ds_status rc;
    for (int i = 0; i < n; i++) {
        if (i >= 2 && ds_now() - t0 > budget_s) break;
        if (p->step_s[order[i]] > 0) continue;
        if ((rc = measure_size(p, order[i], 0.02, err))) return rc;
        if (i == 1 && p->d && !(p->draft_s > 0) && (rc = measure_draft(p, err))) return rc;
    }
    if (p->d && !(p->draft_s > 0) && (rc = measure_draft(p, err))) return rc;
    return DS_OK;
}

bool profile_refine_one(SpsProfile *p, char *err, ds_status *rc) {
    *rc = DS_OK;
    int best_lo = 0, best_gap = 0, lo = 0;
    for (int b = 1; b <= p->max_tokens + 1; b++) {
        if (b <= p->max_tokens && !(p->step_s[b] > 0)) continue;
        int gap = b - lo; /* unmeasured sizes lo+1 .. b-1 */
        if (gap > best_gap + 0 && gap >= 2) { best_gap = gap; best_lo = lo; }
        lo = b;
    }
    if (best_gap < 2) return false;
    int mid = best_lo + best_gap / 2;
    if (mid < 1) mid = 1;
    if (mid > p->max_tokens) mid = p->max_tokens;
    *rc = measure_size(p, mid, 0.03, err);
    return *rc == DS_OK;
}

double profile_step_s(const SpsProfile *p, int tokens) {
    if (tokens < 1) tokens = 1;
    if (tokens <= p->max_tokens) return p->dense_s[tokens];
    return p->dense_s[p->max_tokens] * tokens / p->max_tokens;
}

double profile_sps(void *p, int tokens) { return 1.0 / profile_step_s(p, tokens); }

/* A forward of b tokens never costs more than b forwards of one token (it could run them one
 * by one), so a size measured above 1.5 b one-token steps met a busy machine: on 2 cores an
 * OpenMP barrier then waits for a scheduler tick, and a cached curve like that would make
 * Algorithm 1 verify nothing for good. Returns the first such size, 0 when there is none. */
static int profile_implausible(const SpsProfile *p) {
    const double one = p->step_s[1];
    if (!(one > 0)) return 0;
    for (int b = 2; b <= p->max_tokens; b++)
        if (p->step_s[b] > 1.5 * b * one) return b;
    return 0;
}

static void profile_clear(SpsProfile *p) {
    memset(p->step_s, 0, sizeof(double) * ((size_t)p->max_tokens + 1));
    p->draft_s = 0;
    rebuild_dense(p);
}

ds_status profile_get(SpsProfile *p, double budget_s, void *log_file, char *err) {
    FILE *log = log_file;
    if (profile_load_cache(p) && (!p->d || p->draft_s > 0)) {
        int bad = profile_implausible(p);
        if (!bad) {
            if (log) fprintf(log, "SPS profile: %d of %d sizes from %s\n", p->n_measured, p->max_tokens, p->path);
            return DS_OK;
        }
        if (log) fprintf(log, "SPS profile: %s: its %d-token step (%.3g ms) costs more than 1.5 x %d one-token steps (%.3g ms); measuring again\n",
                         p->path, bad, 1e3 * p->step_s[bad], bad, 1e3 * p->step_s[1]);
        profile_clear(p);
    }
    double t0 = ds_now();
    ds_status rc = profile_measure_coarse(p, budget_s, err);
    if (rc) return rc;
    for (int attempt = 0; attempt < 2 && profile_implausible(p); attempt++) { /* a busy moment: once more, then give up */
        profile_clear(p);
        if ((rc = profile_measure_coarse(p, budget_s, err))) return rc;
    }
    int bad = profile_implausible(p);
    if (bad) { /* still busy: cap each size at b one-token steps, use it for this run only */
        if (log) fprintf(log, "SPS profile: the machine is busy (%d tokens at %.3g ms, one token at %.3g ms); capped, not cached\n", bad,
                         1e3 * p->step_s[bad], 1e3 * p->step_s[1]);
        for (int b = 2; b <= p->max_tokens; b++)
            if (p->step_s[b] > b * p->step_s[1]) p->step_s[b] = b * p->step_s[1];
        rebuild_dense(p);
        return DS_OK;
    }
    if (log) fprintf(log, "SPS profile: measured %d of %d sizes in %.1fs (coarse; `dspark profile` refines), cached in %s\n",
                     p->n_measured, p->max_tokens, ds_now() - t0, p->path);
    char e2[DS_ERR_LEN];
    if (profile_save_cache(p, e2) && log) fprintf(log, "SPS profile: not cached: %s\n", e2);
    return DS_OK;
}

ds_status profile_plot(const SpsProfile *p, const char *path, char *err) {
    int n = p->max_tokens;
    double *buf = ds_malloc(sizeof(double) * (size_t)n * 4);
    if (!buf) return ds_err(err, DS_ENOMEM, "profile: out of memory");
    double *x = buf, *sps = buf + n, *mx = buf + 2 * n, *my = buf + 3 * n;
    int k = 0;
    for (int b = 1; b <= n; b++) {
        x[b - 1] = b;
        sps[b - 1] = 1.0 / p->dense_s[b];
        if (p->step_s[b] > 0) { mx[k] = b; my[k++] = 1.0 / p->step_s[b]; }
    }
    PlotSeries s[2] = {{"interpolated", x, sps, n, true}, {"measured", mx, my, k, false}};
    PlotSpec spec = {"SPS profile: target forward steps per second vs batch size", "verification batch (tokens)", "steps per second",
                     true, false, true};
    ds_status rc = svg_plot(path, &spec, s, 2, err);
    ds_free(buf);
    return rc;
}
