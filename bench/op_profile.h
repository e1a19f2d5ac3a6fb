/* op_profile.h - per-op wall time of a Backend, for benchmarks: op_profile_wrap replaces the
 * backend's op pointers with timing wrappers around the real ops (optionally synchronising
 * before and after each op, so a GPU's queued work lands on the op that queued it).
 * matmul_multi, matmul_norm and matmul_add are counted as matmul. One wrapped backend at a
 * time; header-only, include it from one benchmark file. */
#ifndef DSPARK_BENCH_OP_PROFILE_H
#define DSPARK_BENCH_OP_PROFILE_H

#include <string.h>

#include "backend.h"

enum { OP_EMBED, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_KVW, OP_ATT, OP_SWIGLU, OP_ADD, OP_GATHER, OP_N };
static const char *const op_name[OP_N] = {"embed", "matmul", "rmsnorm", "rope", "kv_write", "attention", "swiglu", "add", "gather"};
static double op_time[OP_N];  /* seconds since op_profile_reset */
static Backend op_inner;      /* the real ops */
static bool op_sync;

#define OP_TIMED(id, call)                                        \
    do {                                                          \
        if (op_sync) op_inner.synchronize(be);                    \
        double t0_ = ds_now();                                    \
        call;                                                     \
        if (op_sync) op_inner.synchronize(be);                    \
        op_time[id] += ds_now() - t0_;                            \
    } while (0)
static inline void op_w_embed(Backend *be, float *o, const Weight *t, const int32_t *ids, int n) { OP_TIMED(OP_EMBED, op_inner.embed(be, o, t, ids, n)); }
static inline void op_w_matmul(Backend *be, float *o, const float *x, const Weight *w, int n) { OP_TIMED(OP_MATMUL, op_inner.matmul(be, o, x, w, n)); }
static inline void op_w_mmulti(Backend *be, float *const *o, const float *x, const Weight *const *w, int c, int n, int a) {
    OP_TIMED(OP_MATMUL, op_inner.matmul_multi(be, o, x, w, c, n, a));
}
static inline void op_w_mnorm(Backend *be, float *const *o, const float *x, const Weight *nw, float e, const Weight *const *w, int c, int n, int a,
                              float *t) {
    OP_TIMED(OP_MATMUL, op_inner.matmul_norm(be, o, x, nw, e, w, c, n, a, t));
}
static inline void op_w_madd(Backend *be, float *o, const float *x, const Weight *w, int n, float *t, const Weight *nn) {
    OP_TIMED(OP_MATMUL, op_inner.matmul_add(be, o, x, w, n, t, nn));
}
static inline void op_w_rmsnorm(Backend *be, float *o, const float *x, const Weight *w, int n, int d, float e) { OP_TIMED(OP_RMSNORM, op_inner.rmsnorm(be, o, x, w, n, d, e)); }
static inline void op_w_rope(Backend *be, float *x, const int32_t *p, int n, int h, int hd, float th) { OP_TIMED(OP_ROPE, op_inner.rope(be, x, p, n, h, hd, th)); }
static inline void op_w_kvw(Backend *be, KvCache *kv, int l, const float *k, const float *v, const int32_t *s, const int32_t *p, int n) {
    OP_TIMED(OP_KVW, op_inner.kv_write(be, kv, l, k, v, s, p, n));
}
static inline void op_w_att(Backend *be, float *o, const float *q, const KvCache *kv, int l, const int32_t *s, const int32_t *kl, int n, int h, int kvh, int hd) {
    OP_TIMED(OP_ATT, op_inner.attention(be, o, q, kv, l, s, kl, n, h, kvh, hd));
}
static inline void op_w_swiglu(Backend *be, float *o, const float *g, const float *u, size_t n) { OP_TIMED(OP_SWIGLU, op_inner.swiglu(be, o, g, u, n)); }
static inline void op_w_add(Backend *be, float *x, const float *y, size_t n) { OP_TIMED(OP_ADD, op_inner.add(be, x, y, n)); }
static inline void op_w_gather(Backend *be, float *d, int ds, const float *s, int ss, const int32_t *r, int n, int c) {
    OP_TIMED(OP_GATHER, op_inner.gather_rows(be, d, ds, s, ss, r, n, c));
}

static inline void op_profile_reset(void) { memset(op_time, 0, sizeof op_time); }
static inline void op_profile_wrap(Backend *be, bool sync) {
    op_inner = *be;
    op_sync = sync;
    be->graph_begin = NULL; /* a synchronised op cannot sit inside a step graph */
    be->graph_end = NULL;
    op_profile_reset();
    be->embed = op_w_embed; be->matmul = op_w_matmul; be->rmsnorm = op_w_rmsnorm; be->rope = op_w_rope; be->kv_write = op_w_kvw;
    be->attention = op_w_att; be->swiglu = op_w_swiglu; be->add = op_w_add; be->gather_rows = op_w_gather;
    if (be->matmul_multi) be->matmul_multi = op_w_mmulti;
    if (be->matmul_norm) be->matmul_norm = op_w_mnorm;
    if (be->matmul_add) be->matmul_add = op_w_madd;
}
static inline void op_profile_unwrap(Backend *be) { *be = op_inner; }

/* ---- ablation: timing a step with some op classes left out (its values are meaningless) ----
 * op_ablate_wrap(be, mask) replaces the ops of the classes in mask with no-ops (AB_SWIGLU
 * also drops the swiglu inside matmul_multi); the step graphs stay on, so the step's time
 * with and without a class is that class's cost in the graphed step, launch gaps included. */
enum { AB_MATMUL = 1, AB_ATT = 2, AB_QKNORM = 4, AB_NORM = 8, AB_SWIGLU = 16, AB_OTHER = 32 };
static int ab_mask;
static inline void ab_matmul(Backend *be, float *o, const float *x, const Weight *w, int n) {
    if (!(ab_mask & AB_MATMUL)) op_inner.matmul(be, o, x, w, n);
}
static inline void ab_mmulti(Backend *be, float *const *o, const float *x, const Weight *const *w, int c, int n, int a) {
    if (!(ab_mask & AB_MATMUL)) op_inner.matmul_multi(be, o, x, w, c, n, ab_mask & AB_SWIGLU ? 0 : a);
    else if (a && !(ab_mask & AB_SWIGLU)) op_inner.swiglu(be, o[0], o[0], o[1], (size_t)n * w[0]->rows);
}
/* the folded norms and adds: AB_MATMUL leaves the whole op out, AB_NORM the norm or add in it */
static inline void ab_mnorm(Backend *be, float *const *o, const float *x, const Weight *nw, float e, const Weight *const *w, int c, int n, int a,
                            float *t) {
    if (ab_mask & AB_MATMUL) {
        if (a && !(ab_mask & AB_SWIGLU)) op_inner.swiglu(be, o[0], o[0], o[1], (size_t)n * w[0]->rows);
        return;
    }
    if (ab_mask & AB_NORM) op_inner.matmul_multi(be, o, x, w, c, n, ab_mask & AB_SWIGLU ? 0 : a);
    else op_inner.matmul_norm(be, o, x, nw, e, w, c, n, ab_mask & AB_SWIGLU ? 0 : a, t);
}
static inline void ab_madd(Backend *be, float *o, const float *x, const Weight *w, int n, float *t, const Weight *nn) {
    if (ab_mask & AB_MATMUL) return;
    if (ab_mask & AB_NORM) op_inner.matmul(be, o, x, w, n);
    else op_inner.matmul_add(be, o, x, w, n, t, nn);
}
static inline void ab_att(Backend *be, float *o, const float *q, const KvCache *kv, int l, const int32_t *s, const int32_t *kl, int n, int h,
                          int kvh, int hd) {
    if (!(ab_mask & AB_ATT)) op_inner.attention(be, o, q, kv, l, s, kl, n, h, kvh, hd);
}
static inline void ab_qk(Backend *be, float *q, float *k, const float *v, const Weight *qn, const Weight *kn, float eps, KvCache *kv, int l,
                         const int32_t *s, const int32_t *p, int n, int h, int kvh, int hd, float th) {
    if (!(ab_mask & AB_QKNORM)) op_inner.qk_norm_rope_kv(be, q, k, v, qn, kn, eps, kv, l, s, p, n, h, kvh, hd, th);
}
static inline void ab_addnorm(Backend *be, float *x, const float *y, float *o, const Weight *w, int n, int d, float e) {
    if (!(ab_mask & AB_NORM)) op_inner.add_rmsnorm(be, x, y, o, w, n, d, e);
}
static inline void ab_rmsnorm(Backend *be, float *o, const float *x, const Weight *w, int n, int d, float e) {
    if (!(ab_mask & AB_NORM)) op_inner.rmsnorm(be, o, x, w, n, d, e);
}
static inline void ab_swiglu(Backend *be, float *o, const float *g, const float *u, size_t n) {
    if (!(ab_mask & AB_SWIGLU)) op_inner.swiglu(be, o, g, u, n);
}
static inline void ab_embed(Backend *be, float *o, const Weight *t, const int32_t *ids, int n) {
    if (!(ab_mask & AB_OTHER)) op_inner.embed(be, o, t, ids, n);
}
static inline void op_ablate_wrap(Backend *be, int mask) {
    op_inner = *be;
    ab_mask = mask;
    be->matmul = ab_matmul;
    if (be->matmul_multi) be->matmul_multi = ab_mmulti;
    be->attention = ab_att;
    if (be->qk_norm_rope_kv) be->qk_norm_rope_kv = ab_qk;
    if (be->add_rmsnorm) be->add_rmsnorm = ab_addnorm;
    if (be->matmul_norm) be->matmul_norm = ab_mnorm;
    if (be->matmul_add) be->matmul_add = ab_madd;
    be->rmsnorm = ab_rmsnorm;
    be->swiglu = ab_swiglu;
    be->embed = ab_embed;
}

#endif
