/* test_fuzz_replay.c - replays the minimised libFuzzer corpora (tests/data/fuzz/<target>/,
 * regressions for every crash found included) through the same entry functions the harnesses
 * call (fuzz/fuzz_targets.c), compiled by the normal compiler: under ASan + UBSan in the
 * sanitized build, so a reintroduced overflow or leak fails here without clang or libFuzzer.
 * ctest: labels=unit */
#include <dirent.h>

#include "fuzz_targets.h"
#include "test.h"

/* every regular file of tests/data/fuzz/<target>; returns how many were replayed */
static int replay_dir(const char *target, int (*fn)(const uint8_t *, size_t)) {
    char dir[1100], path[1400], err[DS_ERR_LEN];
    snprintf(dir, sizeof dir, "%s", test_data("fuzz"));
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", target);
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "no corpus directory %s", dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *buf;
        size_t len;
        if (ds_read_file(path, &buf, &len, err) != DS_OK) { CHECK_MSG(0, "%s", err); continue; }
        /* an exact-size heap copy, so ASan catches a read one byte past the input */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        ds_free(buf);
        CHECK_MSG(fn(exact, len) == 0, "%s", path);
        free(exact);
        n++;
    }
    closedir(d);
    return n;
}

static void test_safetensors_corpus(void) {
    int n = replay_dir("safetensors", fuzz_safetensors);
    fprintf(stderr, "  safetensors: %d inputs\n", n);
    CHECK(n >= 10);
}

static void test_config_corpus(void) {
    int n = replay_dir("config", fuzz_config);
    fprintf(stderr, "  config: %d inputs\n", n);
    CHECK(n >= 10);
}

static void test_npy_corpus(void) {
    int n = replay_dir("npy", fuzz_npy);
    fprintf(stderr, "  npy: %d inputs\n", n);
    CHECK(n >= 10);
}

/* encode / decode / chat render with the real Qwen3 tokenizer (loaded once, ~1 s) */
static void test_tokenizer_corpus(void) {
    int n = replay_dir("tokenizer", fuzz_tokenizer);
    fprintf(stderr, "  tokenizer: %d inputs\n", n);
    CHECK(n >= 10);
    fuzz_tokenizer_cleanup();
}

/* a few inputs written here, not found by the fuzzer: edge sizes */
static void test_edge_inputs(void) {
    static const uint8_t zero8[8] = {0}, one[1] = {'{'};
    CHECK(fuzz_safetensors(NULL, 0) == 0);
    CHECK(fuzz_safetensors(one, 1) == 0);
    CHECK(fuzz_safetensors(zero8, 8) == 0);
    CHECK(fuzz_config(NULL, 0) == 0);
    CHECK(fuzz_config(one, 1) == 0);
    CHECK(fuzz_npy(NULL, 0) == 0);
    CHECK(fuzz_npy(zero8, 8) == 0);
}

int main(void) {
    RUN(test_edge_inputs);
    RUN(test_safetensors_corpus);
    RUN(test_config_corpus);
    RUN(test_npy_corpus);
    RUN(test_tokenizer_corpus);
    return test_summary();
}
