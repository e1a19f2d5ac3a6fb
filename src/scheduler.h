/* scheduler.h - (not sched.h: that name is the C library's <sched.h>, which pthread.h includes)
 * how many drafted slots each request verifies this step (paper §3.2.2, §5.2).
 *
 * Policies (`--policy NAME`, optionally `NAME+bypass`, see engine.h for the bypass):
 *   full          verify every drafted slot
 *   fixed:L       at most L slots (fixed:1 is the MTP-1-like baseline)
 *   threshold:C   DeepSpec's static rule: stop at the first slot whose (calibrated)
 *                 confidence is below C
 *   alg1          Algorithm 1, the hardware-aware prefix scheduler: prefix survivals
 *                 a_{r,j} = prod_{i<=j} c_{r,i} (calibrated), admitted in descending a
 *                 (ties: position, then request, ascending) while the expected throughput
 *                 (R + sum of admitted a) * SPS(R + admitted) keeps improving; the first
 *                 admission that does not improve it stops the search (causal early stop:
 *                 the decision for a slot never looks at the candidates after it, which is
 *                 what keeps verification lossless, Appendix A)
 *   async         the production variant: the capacity K (drafts verified in all) comes from
 *                 an unconstrained search (no early stop) over the survivals of two steps
 *                 earlier; then the K candidates of highest current survival are verified
 * The throughput objective uses the step rate of the whole step: the profiled forward time
 * 1/SPS(B) plus the drafting time of the step (Scheduler.draft_s per drafted request, also
 * profiled), which is what a step costs when the drafter runs in series with the target.
 * Every policy chooses per request a prefix length; nothing here sees a slot's token before
 * deciding whether that slot is verified, except through its own earlier slots.
 *
 * Allocation: sched_init sizes everything; choosing allocates nothing. */
#ifndef DSPARK_SCHED_H
#define DSPARK_SCHED_H

#include "calib.h"

typedef enum { SCHED_FULL = 0, SCHED_FIXED, SCHED_THRESHOLD, SCHED_ALG1, SCHED_ASYNC } SchedKind;

typedef struct {
    SchedKind kind;
    int fixed_len;       /* fixed:L */
    double threshold;    /* threshold:C */
    bool bypass;         /* "+bypass": skip drafting requests whose expected gain is below the drafting cost */
} SchedPolicy;

/* "full", "fixed:L" (0..64), "threshold:C" (0..1), "alg1", "async", each optionally followed
 * by "+bypass". A bad name is one line naming `flag`. */
ds_status sched_policy_parse(const char *s, const char *flag, SchedPolicy *p, char *err);
/* canonical spelling into buf */
const char *sched_policy_format(const SchedPolicy *p, char *buf, size_t cap);
/* Does the policy need the SPS curve (alg1, async)? */
bool sched_policy_needs_sps(const SchedPolicy *p);

/* Steps per second of one target forward over `tokens` tokens. */
typedef struct {
    double (*at)(void *ctx, int tokens);
    void *ctx;
} SpsCurve;

/* ---- the algorithms on survivals, for the scheduler below and for tests ----
 * a[r][0..n[r]-1]: non-increasing prefix survivals of request r (slot j = verify length j+1).
 * len[r] receives the chosen length. */
/* Algorithm 1 with its early stop. Returns the number of admitted drafts. */
int sched_alg1(int n_req, const float *const *a, const int *n, SpsCurve sps, int *len);
/* Algorithm 1's search WITHOUT the early stop (the retrospective global maximum; not
 * lossless when used on the current step's survivals, Appendix A; the async scheduler uses it
 * on survivals two steps old). Returns the admitted count K at the maximum and, when len is
 * not NULL, the lengths. */
int sched_search_unconstrained(int n_req, const float *const *a, const int *n, SpsCurve sps, int *len);
/* The K candidates of highest survival (same order as Algorithm 1). Returns the count admitted. */
int sched_top_k(int n_req, const float *const *a, const int *n, int K, int *len);

/* ---- the scheduler object: an EngineScheduler / VerifyLenPolicy ---- */
typedef struct {
    SchedPolicy pol;
    Calibration cal;
    SpsCurve sps;
    int max_req, block;
    float *surv;          /* [max_req][block] current survivals */
    const float **rows;   /* [max_req] */
    int *n;               /* [max_req] */
    /* async: survivals of the last two steps (ring of 2) */
    float *hist;          /* [2][max_req][block] */
    const float **hist_rows; /* [2][max_req] */
    int *hist_n;          /* [2][max_req] */
    int hist_req[2];
    uint64_t calls;
    /* the engine's step also drafts every drafted request (on the CPU, in series with the
     * forward): step time = 1 / SPS(B) + draft_s x (requests drafted this step); 0 = none */
    double draft_s;
    int hist_drafted[2];
    /* what the last call did */
    int last_capacity, last_admitted;
} Scheduler;

/* sps may have at == NULL for policies that do not need it. cal NULL = identity. */
ds_status sched_init(Scheduler *s, const SchedPolicy *pol, const Calibration *cal, SpsCurve sps, int max_req, int block, char *err);
void sched_free(Scheduler *s);
/* EngineScheduler.choose: ctx = Scheduler*. conf = pre-sigmoid confidence logits. */
void sched_choose(void *ctx, int n_req, const float *const *conf, const int *n_drafted, int *len);
/* VerifyLenPolicy.choose (one request): ctx = Scheduler*. */
int sched_choose_one(void *ctx, const float *conf, int n);

#endif
