/* scheduler.c - verification-length policies (see scheduler.h). */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ds_status sched_policy_parse(const char *s, const char *flag, SchedPolicy *p, char *err) {
    memset(p, 0, sizeof *p);
    char name[64];
    size_t k = strlen(s);
    const char *plus = strchr(s, '+');
    if (plus) {
        if (strcmp(plus, "+bypass") != 0) goto bad;
        p->bypass = true;
        k = (size_t)(plus - s);
    }
    if (k == 0 || k >= sizeof name) goto bad;
    memcpy(name, s, k);
    name[k] = 0;
    char *end;
    if (strcmp(name, "full") == 0) p->kind = SCHED_FULL;
    else if (strcmp(name, "alg1") == 0) p->kind = SCHED_ALG1;
    else if (strcmp(name, "async") == 0) p->kind = SCHED_ASYNC;
    else if (strncmp(name, "fixed:", 6) == 0) {
        long v = strtol(name + 6, &end, 10);
        if (*end || end == name + 6 || v < 0 || v > 64) goto bad;
        p->kind = SCHED_FIXED;
        p->fixed_len = (int)v;
    } else if (strncmp(name, "threshold:", 10) == 0) {
        double v = strtod(name + 10, &end);
        if (*end || end == name + 10 || !(v >= 0 && v <= 1)) goto bad;
        p->kind = SCHED_THRESHOLD;
        p->threshold = v;
    } else goto bad;
    return DS_OK;
bad:
    return ds_err(err, DS_EARG, "%s '%s': expected full, fixed:L (0..64), threshold:C (0..1), alg1 or async, optionally +bypass", flag, s);
}

const char *sched_policy_format(const SchedPolicy *p, char *buf, size_t cap) {
    const char *b = p->bypass ? "+bypass" : "";
    switch (p->kind) {
    case SCHED_FIXED: snprintf(buf, cap, "fixed:%d%s", p->fixed_len, b); break;
    case SCHED_THRESHOLD: snprintf(buf, cap, "threshold:%g%s", p->threshold, b); break;
    case SCHED_ALG1: snprintf(buf, cap, "alg1%s", b); break;
    case SCHED_ASYNC: snprintf(buf, cap, "async%s", b); break;
    default: snprintf(buf, cap, "full%s", b); break;
    }
    return buf;
}

bool sched_policy_needs_sps(const SchedPolicy *p) { return p->kind == SCHED_ALG1 || p->kind == SCHED_ASYNC; }

/* ---- the algorithms ----
 * Each request's survivals are non-increasing, so Algorithm 1's global descending order is a
 * merge of the per-request lists: the next candidate is the best head. Taking heads keeps
 * every request's admitted slots a prefix ("never shorten" holds by construction, float ties
 * included) and needs no sort buffer. */

/* request whose next slot comes next in the order (survival desc, position asc, request asc),
 * or -1 when none is left (only survivals > 0 are candidates) */
static int next_candidate(int n_req, const float *const *a, const int *n, const int *cur) {
    int best = -1;
    for (int r = 0; r < n_req; r++) {
        if (cur[r] >= n[r] || !(a[r][cur[r]] > 0)) continue;
        if (best < 0) { best = r; continue; }
        float v = a[r][cur[r]], w = a[best][cur[best]];
        if (v > w || (v == w && cur[r] < cur[best])) best = r;
    }
    return best;
}

int sched_alg1(int n_req, const float *const *a, const int *n, SpsCurve sps, int *len) {
    for (int r = 0; r < n_req; r++) len[r] = 0;
    if (n_req <= 0) return 0;
    int B = n_req, admitted = 0;
    double tau = n_req, best = tau * sps.at(sps.ctx, B);
    for (;;) {
        int r = next_candidate(n_req, a, n, len);
        if (r < 0) break;
        double t = tau + a[r][len[r]], theta = t * sps.at(sps.ctx, B + 1);
        if (!(theta > best)) break; /* causal early stop */
        best = theta;
        tau = t;
        B++;
        len[r]++;
        admitted++;
    }
    return admitted;
}

int sched_top_k(int n_req, const float *const *a, const int *n, int K, int *len) {
    for (int r = 0; r < n_req; r++) len[r] = 0;
    int k = 0;
    for (; k < K; k++) {
        int r = next_candidate(n_req, a, n, len);
        if (r < 0) break;
        len[r]++;
    }
    return k;
}

int sched_search_unconstrained(int n_req, const float *const *a, const int *n, SpsCurve sps, int *len) {
    int cur[1024];
    if (n_req <= 0) return 0;
    if (n_req > 1024) n_req = 1024;
    for (int r = 0; r < n_req; r++) cur[r] = 0;
    int B = n_req, k = 0, best_k = 0;
    double tau = n_req, best = tau * sps.at(sps.ctx, B);
    for (;;) {
        int r = next_candidate(n_req, a, n, cur);
        if (r < 0) break;
        tau += a[r][cur[r]];
        cur[r]++;
        B++;
        k++;
        double theta = tau * sps.at(sps.ctx, B);
        if (theta > best) { best = theta; best_k = k; }
    }
    if (len) sched_top_k(n_req, a, n, best_k, len);
    return best_k;
}

/* ---- the scheduler object ---- */

/* SPS of a step that also drafts: 1 / (1/SPS(B) + overhead) */
typedef struct { SpsCurve inner; double overhead_s; } StepCurve;
static double step_at(void *ctx, int B) {
    const StepCurve *c = ctx;
    return 1.0 / (1.0 / c->inner.at(c->inner.ctx, B) + c->overhead_s);
}

ds_status sched_init(Scheduler *s, const SchedPolicy *pol, const Calibration *cal, SpsCurve sps, int max_req, int block, char *err) {
    memset(s, 0, sizeof *s);
    s->pol = *pol;
    if (cal) s->cal = *cal; else calib_identity(&s->cal);
    s->sps = sps;
    if (max_req < 1 || max_req > 1024 || block < 1 || block > CALIB_MAX_BLOCK)
        return ds_err(err, DS_EARG, "scheduler: need 1..1024 requests and block size 1..%d", CALIB_MAX_BLOCK);
    if (sched_policy_needs_sps(pol) && !sps.at) return ds_err(err, DS_EARG, "scheduler: policy needs an SPS profile");
    s->max_req = max_req;
    s->block = block;
    size_t rb = (size_t)max_req * block;
    s->surv = ds_malloc(sizeof(float) * rb);
    s->rows = ds_malloc(sizeof(float *) * max_req);
    s->n = ds_malloc(sizeof(int) * max_req);
    s->hist = ds_calloc(2 * rb, sizeof(float));
    s->hist_rows = ds_malloc(sizeof(float *) * 2 * max_req);
    s->hist_n = ds_calloc(2 * (size_t)max_req, sizeof(int));
    if (!s->surv || !s->rows || !s->n || !s->hist || !s->hist_rows || !s->hist_n) {
        sched_free(s);
        return ds_err(err, DS_ENOMEM, "scheduler: out of memory");
    }
    for (int r = 0; r < max_req; r++) {
        s->rows[r] = s->surv + (size_t)r * block;
        for (int h = 0; h < 2; h++) s->hist_rows[h * max_req + r] = s->hist + ((size_t)h * max_req + r) * block;
    }
    return DS_OK;
}

void sched_free(Scheduler *s) {
    ds_free(s->surv); ds_free(s->rows); ds_free(s->n); ds_free(s->hist); ds_free(s->hist_rows); ds_free(s->hist_n);
    memset(s, 0, sizeof *s);
}

void sched_choose(void *ctx, int n_req, const float *const *conf, const int *n_drafted, int *len) {
    Scheduler *s = ctx;
    if (n_req > s->max_req) { /* more requests than sized for: the extra ones verify nothing */
        for (int r = s->max_req; r < n_req; r++) len[r] = 0;
        n_req = s->max_req;
    }
    for (int r = 0; r < n_req; r++) {
        s->n[r] = n_drafted[r] < s->block ? n_drafted[r] : s->block;
        calib_survival(&s->cal, conf[r], s->n[r], s->surv + (size_t)r * s->block);
    }
    int admitted = 0, drafted = 0;
    for (int r = 0; r < n_req; r++) drafted += s->n[r] > 0;
    s->last_capacity = -1;
    StepCurve cur = {s->sps, s->draft_s * drafted};
    SpsCurve sps = {step_at, &cur};
    switch (s->pol.kind) {
    case SCHED_FULL:
        for (int r = 0; r < n_req; r++) admitted += len[r] = s->n[r];
        break;
    case SCHED_FIXED:
        for (int r = 0; r < n_req; r++) admitted += len[r] = s->n[r] < s->pol.fixed_len ? s->n[r] : s->pol.fixed_len;
        break;
    case SCHED_THRESHOLD:
        for (int r = 0; r < n_req; r++) {
            int L = s->n[r];
            for (int j = 0; j < L; j++)
                if (calib_confidence(&s->cal, j, conf[r][j]) < s->pol.threshold) { L = j; break; }
            admitted += len[r] = L;
        }
        break;
    case SCHED_ALG1:
        admitted = sched_alg1(n_req, s->rows, s->n, sps, len);
        break;
    case SCHED_ASYNC: {
        int K;
        if (s->calls >= 2) { /* capacity from the survivals two steps ago; they cannot see this step's tokens */
            int h = (int)(s->calls % 2);
            StepCurve old = {s->sps, s->draft_s * s->hist_drafted[h]};
            K = sched_search_unconstrained(s->hist_req[h], s->hist_rows + (size_t)h * s->max_req, s->hist_n + (size_t)h * s->max_req,
                                           (SpsCurve){step_at, &old}, NULL);
        } else { /* no history yet: the causal Algorithm 1 */
            K = sched_alg1(n_req, s->rows, s->n, sps, len);
        }
        s->last_capacity = K;
        admitted = sched_top_k(n_req, s->rows, s->n, K, len);
        int h = (int)(s->calls % 2); /* the slot two steps old was just used: overwrite it */
        s->hist_req[h] = n_req;
        s->hist_drafted[h] = drafted;
        for (int r = 0; r < n_req; r++) {
            s->hist_n[(size_t)h * s->max_req + r] = s->n[r];
            memcpy(s->hist + ((size_t)h * s->max_req + r) * s->block, s->rows[r], sizeof(float) * (size_t)s->n[r]);
        }
        break;
    }
    }
    s->calls++;
    s->last_admitted = admitted;
}

int sched_choose_one(void *ctx, const float *conf, int n) {
    int len = 0;
    sched_choose(ctx, 1, &conf, &n, &len);
    return len;
}
