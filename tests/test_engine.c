/* test_engine.c - continuous batching: every request's tokens equal the same request run
 * alone (greedy and seeded sampling), with fewer slots than requests (some wait) and a token
 * budget that splits prompts across steps; cancellation frees a slot; no allocation per step.
 * ctest: labels=unit */
#include "engine.h"
#include "test.h"

#define N_REQ 6
#define MAX_NEW 12

static Qwen3Model g_m;

typedef struct { int32_t out[64]; int n; FinishReason why; int finished; } Sink;

static bool on_token(void *u, int32_t t, bool is_stop) { Sink *s = u; (void)is_stop; s->out[s->n++] = t; return true; }
static void on_finish(void *u, FinishReason r) { Sink *s = u; s->why = r; s->finished++; }

static void prompt_of(int i, int32_t *p, int *n) {
    *n = 5 + 7 * i; /* 5..40 tokens */
    for (int k = 0; k < *n; k++) p[k] = (int32_t)((k * 37 + i * 101 + 3) % 500);
}

static void run(Engine *e, EngineRequest *req, Sink *sink, int first, int count, float temp) {
    char err[DS_ERR_LEN];
    static int32_t prompts[N_REQ][64];
    for (int i = first; i < first + count; i++) {
        int n;
        prompt_of(i, prompts[i], &n);
        memset(&req[i], 0, sizeof req[i]);
        memset(&sink[i], 0, sizeof sink[i]);
        req[i].prompt = prompts[i];
        req[i].n_prompt = n;
        req[i].max_new = MAX_NEW;
        req[i].sampler = (SamplerParams){temp, 0, 1.0f};
        req[i].seed = 1000 + i;
        req[i].stop_ids[0] = 1; /* the fixture's eos */
        req[i].n_stop = 1;
        req[i].on_token = on_token;
        req[i].on_finish = on_finish;
        req[i].user = &sink[i];
        CHECK_OK(engine_submit(e, &req[i], err), err);
    }
    int guard = 0;
    for (;;) {
        int done = 1;
        for (int i = first; i < first + count; i++) done &= sink[i].finished == 1;
        if (done || guard++ > 1000) break;
        CHECK(engine_step(e, err) >= 0);
    }
}

static void test_batched_equals_alone(void) {
    char err[DS_ERR_LEN];
    for (int t = 0; t < 2; t++) {
        float temp = t ? 0.8f : 0.0f;
        EngineRequest req[N_REQ];
        Sink batched[N_REQ], alone[N_REQ];
        Engine e;
        EngineConfig cfg = {.n_slots = 3, .max_ctx = 64, .max_batch_tokens = 16};
        CHECK_OK(engine_init(&e, &g_m, &cfg, err), err);
        run(&e, req, batched, 0, N_REQ, temp);
        engine_free(&e);
        EngineConfig one = {.n_slots = 1, .max_ctx = 64, .max_batch_tokens = 64};
        CHECK_OK(engine_init(&e, &g_m, &one, err), err);
        for (int i = 0; i < N_REQ; i++) run(&e, req, alone, i, 1, temp);
        engine_free(&e);
        for (int i = 0; i < N_REQ; i++) {
            CHECK(batched[i].finished == 1 && alone[i].finished == 1);
            CHECK_MSG(batched[i].n == alone[i].n && memcmp(batched[i].out, alone[i].out, sizeof(int32_t) * alone[i].n) == 0,
                      "request %d (T %.1f): batched tokens differ from alone", i, temp);
            CHECK(batched[i].why == FINISH_STOP || (batched[i].why == FINISH_LENGTH && batched[i].n == MAX_NEW));
        }
    }
}

static void test_cancel_and_no_alloc(void) {
    char err[DS_ERR_LEN];
    Engine e;
    EngineConfig cfg = {.n_slots = 2, .max_ctx = 64, .max_batch_tokens = 64};
    CHECK_OK(engine_init(&e, &g_m, &cfg, err), err);
    EngineRequest req[N_REQ];
    Sink sink[N_REQ];
    static int32_t p[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    for (int i = 0; i < 3; i++) {
        memset(&req[i], 0, sizeof req[i]);
        memset(&sink[i], 0, sizeof sink[i]);
        req[i] = (EngineRequest){.prompt = p, .n_prompt = 8, .max_new = 40, .sampler = {0, 0, 1}, .on_token = on_token,
                                 .on_finish = on_finish, .user = &sink[i]};
        CHECK_OK(engine_submit(&e, &req[i], err), err);
    }
    CHECK(engine_step(&e, err) > 0); /* two admitted, one waits */
    CHECK(req[2].slot == -1);
    uint64_t allocs = ds_alloc_count();
    engine_cancel(&e, &req[0]);
    CHECK(engine_step(&e, err) > 0);
    CHECK(sink[0].finished == 1 && sink[0].why == FINISH_CANCELLED);
    CHECK(engine_step(&e, err) > 0);
    CHECK(req[2].slot >= 0); /* took the freed slot */
    for (int k = 0; k < 5; k++) engine_step(&e, err);
    CHECK_MSG(ds_alloc_count() == allocs, "engine steps allocated %llu times", (unsigned long long)(ds_alloc_count() - allocs));
    /* must fail: a prompt longer than the context is refused with a clear message */
    static int32_t longp[80];
    EngineRequest big = {.prompt = longp, .n_prompt = 80, .max_new = 1, .sampler = {0, 0, 1}};
    CHECK(engine_submit(&e, &big, err) == DS_EARG && strstr(err, "does not fit"));
    engine_cancel(&e, &req[1]);
    engine_cancel(&e, &req[2]);
    for (int k = 0; k < 3; k++) engine_step(&e, err);
    engine_free(&e);
}

int main(void) {
    char err[DS_ERR_LEN];
    Backend *be = backend_cpu_create(0);
    if (qwen3_load(&g_m, test_data("tiny-qwen3/target"), be, err)) { fprintf(stderr, "%s\n", err); return 2; }
    RUN(test_batched_equals_alone);
    RUN(test_cancel_and_no_alloc);
    qwen3_free(&g_m);
    be->destroy(be);
    return test_summary();
}
