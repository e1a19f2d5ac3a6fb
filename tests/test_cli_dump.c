/* test_cli_dump.c - `dspark dump` end to end: runs the binary on the fixture ids and compares
 * logits.npy / layers.npy with the transformers references; bad input gives a one-line error.
 * ctest: labels=cli;ref */
#include "test.h"

static int run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_dump_matches_fixture(void) {
    char err[DS_ERR_LEN], cmd[4096], out[4096];
    NpyArray ids;
    CHECK_OK(npy_read(test_data("tiny-qwen3/target_ids.npy"), &ids, err), err);
    char list[1024] = "";
    for (size_t i = 0; i < ids.numel; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), i ? ",%lld" : "%lld", (long long)((int64_t *)ids.data)[i]);
    const char *dir = test_tmpdir("dump");
    snprintf(cmd, sizeof cmd, "%s dump --model %s --ids %s --out %s 2>&1", getenv("DSPARK_BIN"), test_data("tiny-qwen3/target"), list, dir);
    CHECK(run(cmd, out, sizeof out) == 0);
    char path[1200];
    NpyArray got, ref;
    snprintf(path, sizeof path, "%s/logits.npy", dir);
    CHECK_OK(npy_read(path, &got, err), err);
    test_load_f32("tiny-qwen3/target_logits.npy", &ref);
    CHECK(got.numel == ref.numel && got.n_dims == 2 && got.shape[0] == 40);
    if (got.numel == ref.numel) CHECK_CLOSE("dump logits", got.data, ref.data, ref.numel, 1e-4f, 0);
    npy_free(&got); npy_free(&ref);
    snprintf(path, sizeof path, "%s/layers.npy", dir);
    CHECK_OK(npy_read(path, &got, err), err);
    test_load_f32("tiny-qwen3/target_layers.npy", &ref);
    CHECK(got.numel == ref.numel && got.n_dims == 3 && got.shape[0] == 5);
    if (got.numel == ref.numel) CHECK_CLOSE("dump layers", got.data, ref.data, ref.numel, 1e-4f, 0);
    npy_free(&got); npy_free(&ref); npy_free(&ids);
}

static void test_dump_errors(void) {
    char cmd[2048], out[4096];
    const char *bin = getenv("DSPARK_BIN");
    struct { const char *args, *needle; } cases[] = {
        {"dump --model %s --ids 1,2,x --out /tmp/x", "--ids"},
        {"dump --model %s --ids 1,999999 --out /tmp/x", "out of range"},
        {"dump --model %s --ids 1,2 --out /tmp/x --bogus", "unknown flag '--bogus'"},
        {"dump --model %s/nope --ids 1,2 --out /tmp/x", "not found"},
        {"dump --model %s", "required"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[512];
        snprintf(args, sizeof args, cases[i].args, test_data("tiny-qwen3/target"));
        snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin, args);
        int rc = run(cmd, out, sizeof out);
        CHECK_MSG(rc != 0 && strstr(out, cases[i].needle) && strchr(out, '\n') == out + strlen(out) - 1,
                  "'%s' -> rc %d, output '%s'", args, rc, out);
    }
    snprintf(cmd, sizeof cmd, "%s dump --help", bin);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "usage: dspark dump"));
}

int main(void) {
    if (!getenv("DSPARK_BIN")) { fprintf(stderr, "DSPARK_BIN not set\n"); return 2; }
    RUN(test_dump_matches_fixture);
    RUN(test_dump_errors);
    return test_summary();
}
