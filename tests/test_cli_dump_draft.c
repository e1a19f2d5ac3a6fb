/* test_cli_dump_draft.c - `dspark dump --draft D --prompt 24` end to end for the four fixture
 * drafters: draft_*.npy against DeepSpec's outputs; missing --prompt is a usage error.
 * ctest: labels=cli;ref */
#include "test.h"

static int run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void cmp(const char *dir, const char *file, const char *ref_rel, float tol) {
    char path[1200], err[DS_ERR_LEN];
    NpyArray got, ref;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    CHECK_OK(npy_read(path, &got, err), err);
    CHECK_OK(npy_read(test_data(ref_rel), &ref, err), err);
    CHECK(got.numel == ref.numel && got.dtype == ref.dtype);
    if (got.numel == ref.numel && got.dtype == DS_F32) CHECK_CLOSE(file, got.data, ref.data, ref.numel, tol, 0);
    if (got.numel == ref.numel && got.dtype == DS_I64) CHECK(memcmp(got.data, ref.data, 8 * ref.numel) == 0);
    npy_free(&got);
    npy_free(&ref);
}

static void test_dump_draft(void) {
    char err[DS_ERR_LEN], cmd[4096], list[1024] = "", rel[256];
    NpyArray ids;
    CHECK_OK(npy_read(test_data("tiny-qwen3/target_ids.npy"), &ids, err), err);
    for (size_t i = 0; i < 28; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), i ? ",%lld" : "%lld", (long long)((int64_t *)ids.data)[i]);
    npy_free(&ids);
    const char *heads[] = {"vanilla", "gated", "rnn", "dflash"};
    for (int h = 0; h < 4; h++) {
        const char *dir = test_tmpdir(heads[h]);
        snprintf(rel, sizeof rel, "tiny-qwen3/draft-%s", heads[h]);
        snprintf(cmd, sizeof cmd, "%s dump --model %s --draft %s --prompt 24 --ids %s --out %s", getenv("DSPARK_BIN"),
                 test_data("tiny-qwen3/target"), test_data(rel), list, dir);
        CHECK(run(cmd) == 0);
        const char *files[][2] = {{"draft_hidden.npy", "r1_hidden"}, {"draft_base_logits.npy", "r1_base_logits"},
                                  {"draft_logits.npy", "r1_logits"}, {"draft_greedy.npy", "r1_greedy_draft"},
                                  {"draft_confidence.npy", "r1_confidence_logits"}};
        for (int f = 0; f < (h == 3 ? 4 : 5); f++) {
            snprintf(rel, sizeof rel, "tiny-qwen3/%s_%s.npy", heads[h], files[f][1]);
            cmp(dir, files[f][0], rel, 1e-4f);
        }
        if (h == 3) {
            char path[1200];
            snprintf(path, sizeof path, "%s/draft_confidence.npy", dir);
            CHECK(!ds_file_exists(path)); /* DFlash has no confidence head */
        }
    }
    /* must fail: --draft without --prompt; a prompt leaving no room for the block */
    snprintf(cmd, sizeof cmd, "%s dump --model %s --draft %s --ids %s --out %s 2>/dev/null", getenv("DSPARK_BIN"),
             test_data("tiny-qwen3/target"), test_data("tiny-qwen3/draft-rnn"), list, test_tmpdir("bad"));
    CHECK(run(cmd) == 2);
    snprintf(cmd, sizeof cmd, "%s dump --model %s --draft %s --prompt 26 --ids %s --out %s 2>/dev/null", getenv("DSPARK_BIN"),
             test_data("tiny-qwen3/target"), test_data("tiny-qwen3/draft-rnn"), list, test_tmpdir("bad"));
    CHECK(run(cmd) == 1);
}

int main(void) {
    RUN(test_dump_draft);
    return test_summary();
}
