/* test_optim.c - AdamW against hand-computed values, DeepSpec's LR schedule, gradient clipping. */
#include "optim.h"
#include "test.h"

static void make_set(ParamSet *p, const char *name, int n, bool trainable) {
    char err[DS_ERR_LEN];
    int64_t shape[1] = {n};
    CHECK_OK(params_add(p, name, 1, shape, trainable, err), err);
}

/* Two AdamW steps on one scalar, lr 0.1, weight decay 0.01, p0 = 1, g1 = 0.5, g2 = -0.25.
 * By hand (Python doubles, the torch formula in optim.h):
 *   t=1: p = 0.999, m = 0.05, v = 0.00025, bc1 = 0.1, bc2 = 0.001
 *        p = 0.999 - 1.0 * 0.05 / (sqrt(0.00025)/sqrt(0.001) + 1e-8) = 0.899000002
 *   t=2: p = 0.899000002 * 0.999, m = 0.02, v = 0.00031225, bc1 = 0.19, bc2 = 0.001999
 *        p = 0.8714672987058462
 * F32 arithmetic: tolerance 2e-7 absolute (a few ulps at 0.9). A frozen tensor must not move. */
static void test_adamw_hand(void) {
    char err[DS_ERR_LEN];
    ParamSet p = {0}, g = {0};
    make_set(&p, "w", 1, true);
    make_set(&p, "frozen", 1, false);
    CHECK_OK(params_alloc(&p, err), err);
    make_set(&g, "w", 1, true);
    CHECK_OK(params_alloc(&g, err), err);
    params_get(&p, "w")[0] = 1.0f;
    params_get(&p, "frozen")[0] = 3.0f;
    AdamW o;
    AdamWCfg c = adamw_default();
    c.weight_decay = 0.01;
    CHECK_OK(adamw_init(&o, &p, &g, &c, err), err);
    params_get(&g, "w")[0] = 0.5f;
    adamw_step(&o, &p, &g, 0.1);
    float got = params_get(&p, "w")[0], want = 0.899000002f;
    CHECK_CLOSE("adamw t=1", &got, &want, 1, 2e-7f, 0);
    CHECK_CLOSE("m t=1", o.m.data, &(float){0.05f}, 1, 1e-9f, 1e-6f);
    CHECK_CLOSE("v t=1", o.v.data, &(float){0.00025f}, 1, 0, 1e-6f);
    params_get(&g, "w")[0] = -0.25f;
    adamw_step(&o, &p, &g, 0.1);
    got = params_get(&p, "w")[0];
    want = 0.8714672987058462f;
    CHECK_CLOSE("adamw t=2", &got, &want, 1, 2e-7f, 0);
    CHECK(o.t == 2);
    CHECK(params_get(&p, "frozen")[0] == 3.0f);
    adamw_free(&o);
    /* must fail: a gradient with no parameter of that name */
    ParamSet bad = {0};
    make_set(&bad, "nope", 1, true);
    CHECK_OK(params_alloc(&bad, err), err);
    CHECK(adamw_init(&o, &p, &bad, &c, err) == DS_EARG && strstr(err, "nope"));
    params_free(&bad);
    params_free(&p);
    params_free(&g);
}

/* The first step of Adam moves every weight by about lr against the gradient's sign, whatever
 * its size (m_hat = g, sqrt(v_hat) = |g|, so the step is lr*g/(|g| + eps)): an invariant over
 * many values, to 1e-9 (F32 rounding of a 1e-3 step). */
static void test_adamw_first_step_sign(void) {
    char err[DS_ERR_LEN];
    ParamSet p = {0};
    make_set(&p, "w", 100, true);
    CHECK_OK(params_alloc(&p, err), err);
    ParamSet g;
    CHECK_OK(params_like(&g, &p, err), err);
    for (int i = 0; i < 100; i++) g.data[i] = (float)((i - 50) * 0.37 + 0.01) * (i % 3 ? 1e-3f : 10.0f);
    AdamW o;
    AdamWCfg c = adamw_default();
    CHECK_OK(adamw_init(&o, &p, &g, &c, err), err);
    adamw_step(&o, &p, &g, 1e-3);
    int ok = 1;
    for (int i = 0; i < 100; i++) ok &= fabs(p.data[i] + 1e-3 * g.data[i] / (fabs(g.data[i]) + 1e-8)) < 1e-9;
    CHECK(ok);
    adamw_free(&o);
    params_free(&g);
    params_free(&p);
}

/* DeepSpec's schedule, T = 100, W = int(0.04*100) = 4, base 6e-4 (values from the formula in
 * Python): s=1 1.5e-4, s=4 6e-4 (peak), s=5 6e-4 (cos 0), s=6 5.998393762429097e-4,
 * s=52 3.0981572484653285e-4, s=100 1.6062375709029463e-7 (never 0). */
static void test_schedule(void) {
    const int64_t s[] = {1, 4, 5, 6, 52, 100};
    const double want[] = {1.5e-4, 6e-4, 6e-4, 5.998393762429097e-4, 3.0981572484653285e-4, 1.6062375709029463e-7};
    for (int i = 0; i < 6; i++) CHECK_MSG(fabs(lr_schedule(6e-4, 0.04, 100, s[i]) - want[i]) < 1e-15, "step %d", (int)s[i]);
    /* W = 0 (T < 25): pure cosine from the base */
    CHECK(fabs(lr_schedule(1.0, 0.04, 10, 1) - 1.0) < 1e-15);
    CHECK(lr_schedule(1.0, 0.04, 10, 10) > 0);
}

/* Clipping: grads (3, 4) have norm 5; max 1 scales by 1/(5 + 1e-6) -> (0.6, 0.8) to 1e-6;
 * a norm below the maximum leaves the gradients bit for bit. */
static void test_clip(void) {
    char err[DS_ERR_LEN];
    ParamSet g = {0};
    make_set(&g, "a", 1, true);
    make_set(&g, "b", 1, true);
    CHECK_OK(params_alloc(&g, err), err);
    params_get(&g, "a")[0] = 3;
    params_get(&g, "b")[0] = 4;
    double n = grad_clip(&g, 1.0);
    CHECK(fabs(n - 5.0) < 1e-12);
    float got[2] = {params_get(&g, "a")[0], params_get(&g, "b")[0]}, want[2] = {0.6f, 0.8f};
    CHECK_CLOSE("clipped", got, want, 2, 1e-6f, 0);
    CHECK(fabs(grad_global_norm(&g) - 1.0) < 1e-6);
    params_get(&g, "a")[0] = 0.3f;
    params_get(&g, "b")[0] = 0.4f;
    grad_clip(&g, 1.0);
    CHECK(params_get(&g, "a")[0] == 0.3f && params_get(&g, "b")[0] == 0.4f);
    params_free(&g);
}

int main(void) {
    RUN(test_adamw_hand);
    RUN(test_adamw_first_step_sign);
    RUN(test_schedule);
    RUN(test_clip);
    return test_summary();
}
