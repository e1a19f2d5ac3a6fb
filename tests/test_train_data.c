/* test_train_data.c - DATA.jsonl: write/read round trip, DeepSpec's max_length truncation and
 * min_loss_tokens filter, bad lines rejected with one line naming file:line, resume cuts a
 * partial last line and refuses ids out of order. */
#include <unistd.h>

#include "train_data.h"
#include "test.h"

static void path_of(char *buf, size_t cap, const char *name) {
    const char *root = getenv("DSPARK_TEST_TMP") ? getenv("DSPARK_TEST_TMP") : "/tmp";
    char err[DS_ERR_LEN];
    ds_mkdirs(root, err);
    snprintf(buf, cap, "%s/train_data_%s_%d.jsonl", root, name, (int)getpid());
    unlink(buf);
}

static void test_round_trip_and_filters(void) {
    char err[DS_ERR_LEN], p[1024];
    path_of(p, sizeof p, "rt");
    FILE *f = fopen(p, "wb");
    int32_t ids[40];
    uint8_t mask[40];
    for (int i = 0; i < 40; i++) { ids[i] = i * 7 % 100; mask[i] = i >= 10; }
    CHECK_OK(train_data_write_line(f, p, 0, ids, mask, 40, err), err);      /* 30 loss tokens */
    CHECK_OK(train_data_write_line(f, p, 1, ids, mask, 20, err), err);      /* 10: dropped (< 14) */
    CHECK_OK(train_data_write_line(f, p, 2, ids + 5, mask + 5, 30, err), err);
    fclose(f);
    TrainData d;
    CHECK_OK(train_data_load(&d, p, 100, 32, 14, err), err);
    CHECK(d.n == 2 && d.dropped == 1 && d.len[0] == 32 && d.len[1] == 30 && d.line_id[1] == 2 && d.max_len == 32);
    CHECK(memcmp(d.ids[0], ids, 32 * sizeof(int32_t)) == 0 && memcmp(d.mask[1], mask + 5, 30) == 0);
    CHECK(d.loss_tokens == 22 + 25 && d.tokens == 62);
    uint64_t h = d.hash;
    train_data_free(&d);
    int64_t next;
    CHECK_OK(train_data_resume(p, &next, err), err);
    CHECK(next == 3);
    /* a partial last line is cut, the rest kept */
    f = fopen(p, "ab");
    fputs("{\"id\": 3, \"input_ids\": [1, 2", f);
    fclose(f);
    CHECK_OK(train_data_resume(p, &next, err), err);
    CHECK(next == 3);
    CHECK_OK(train_data_load(&d, p, 100, 32, 14, err), err);
    CHECK(d.hash == h); /* byte-identical to before the partial write */
    train_data_free(&d);
    /* must fail: a token outside the vocabulary, named by file:line */
    CHECK(train_data_load(&d, p, 50, 32, 14, err) == DS_EFORMAT && strstr(err, ":1: input_ids[") && !strchr(err, '\n'));
    /* must fail: nothing left after the filter */
    CHECK(train_data_load(&d, p, 100, 32, 1000, err) == DS_EFORMAT && strstr(err, "no sample"));
    unlink(p);
}

static void test_resume_refuses_out_of_order(void) {
    char err[DS_ERR_LEN], p[1024];
    path_of(p, sizeof p, "order");
    const char *text = "{\"id\": 0, \"input_ids\": [1], \"loss_mask\": [1]}\n{\"id\": 2, \"input_ids\": [1], \"loss_mask\": [1]}\n";
    CHECK_OK(ds_write_file_atomic(p, text, strlen(text), err), err);
    int64_t next;
    CHECK(train_data_resume(p, &next, err) == DS_EFORMAT && strstr(err, "line 2"));
    unlink(p);
    CHECK_OK(train_data_resume(p, &next, err), err); /* missing file: start at 0 */
    CHECK(next == 0);
}

int main(void) {
    RUN(test_round_trip_and_filters);
    RUN(test_resume_refuses_out_of_order);
    return test_summary();
}
