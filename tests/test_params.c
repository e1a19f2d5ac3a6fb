/* test_params.c - named tensor sets: layout, save/load round trip (F32 exact, BF16 rounding),
 * errors (duplicate, missing tensor, wrong shape). */
/* ctest: labels=unit */
#include "test.h"
#include "params.h"

#include <stdio.h>
#include <string.h>

static void test_roundtrip(void) {
    char err[DS_ERR_LEN], path[512];
    ParamSet p = {0};
    int64_t s1[2] = {3, 5}, s2[1] = {7};
    CHECK(params_add(&p, "a.weight", 2, s1, true, err) == DS_OK);
    CHECK(params_add(&p, "b", 1, s2, false, err) == DS_OK);
    CHECK(params_add(&p, "b", 1, s2, false, err) != DS_OK);
    CHECK(strstr(err, "duplicate") != NULL);
    CHECK(params_alloc(&p, err) == DS_OK);
    CHECK(params_find(&p, "b")->offset % 16 == 0);
    float *a = params_get(&p, "a.weight"), *b = params_get(&p, "b");
    for (int i = 0; i < 15; i++) a[i] = 0.1f * (float)i - 0.7f;
    for (int i = 0; i < 7; i++) b[i] = 1.0f + (float)i / 3.0f;
    snprintf(path, sizeof path, "%s/params_rt.safetensors", test_tmpdir("params"));
    CHECK(params_save(&p, path, DS_F32, false, NULL, err) == DS_OK);
    ParamSet q = {0};
    CHECK(params_like(&q, &p, err) == DS_OK);
    CHECK(params_load(&q, path, false, err) == DS_OK);
    CHECK(memcmp(params_get(&q, "a.weight"), a, 15 * sizeof(float)) == 0);
    CHECK(memcmp(params_get(&q, "b"), b, 7 * sizeof(float)) == 0);
    /* BF16, trainable only: the frozen tensor is absent, so loading needs skip_frozen */
    CHECK(params_save(&p, path, DS_BF16, true, NULL, err) == DS_OK);
    params_zero(&q);
    CHECK(params_load(&q, path, false, err) != DS_OK);
    CHECK(strstr(err, "'b'") != NULL);
    CHECK(params_load(&q, path, true, err) == DS_OK);
    for (int i = 0; i < 15; i++) CHECK(params_get(&q, "a.weight")[i] == ds_bf16_to_f32(ds_f32_to_bf16(a[i])));
    /* wrong shape */
    ParamSet r = {0};
    int64_t s3[2] = {5, 3};
    CHECK(params_add(&r, "a.weight", 2, s3, true, err) == DS_OK);
    CHECK(params_alloc(&r, err) == DS_OK);
    CHECK(params_load(&r, path, false, err) != DS_OK);
    CHECK(strstr(err, "wrong shape") != NULL && strstr(err, "a.weight") != NULL);
    params_free(&p);
    params_free(&q);
    params_free(&r);
}

int main(void) {
    RUN(test_roundtrip);
    return test_summary();
}
