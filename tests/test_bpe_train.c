/* test_bpe_train.c - byte-level BPE training: the merge order of a hand-worked example (the
 * Hugging Face course's hug/pug/pun/bun/hugs corpus), a saved tokenizer that our loader reads,
 * round trips, special tokens and the chat template, and errors. */
/* ctest: labels=unit */
#include "test.h"
#include "bpe_train.h"
#include "chat.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void feed_n(BpeTrainer *t, const char *word, int n) {
    char err[DS_ERR_LEN];
    for (int i = 0; i < n; i++) CHECK(bpe_trainer_feed(t, word, strlen(word), err) == DS_OK);
}

static int32_t id_of(const Tokenizer *tk, const char *s) { return tokenizer_token_id(tk, s); }

static void test_merge_order(void) {
    char err[DS_ERR_LEN];
    BpeTrainer *t;
    CHECK(bpe_trainer_new(&t, err) == DS_OK);
    feed_n(t, "hug", 10); feed_n(t, "pug", 5); feed_n(t, "pun", 12); feed_n(t, "bun", 4); feed_n(t, "hugs", 5);
    size_t distinct; uint64_t total;
    bpe_trainer_counts(t, &distinct, &total);
    CHECK(distinct == 5 && total == 36);
    /* counts: ug 20, un 16, then h+ug 15, p+un 12, then a tie of 5 between p+ug and hug+s: the
     * older symbols (p = 112 < hug = 258) win; then nothing occurs twice (min frequency 2)... */
    BpeTrainConfig cfg = {.vocab_size = 256 + 100 + BPE_QWEN3_N_SPECIALS, .min_frequency = 5,
                          .special_tokens = BPE_QWEN3_SPECIALS, .n_special = BPE_QWEN3_N_SPECIALS};
    CHECK(bpe_trainer_train(t, &cfg, NULL, NULL, err) == DS_OK);
    CHECK(bpe_trainer_n_merges(t) == 6); /* ... after hug+s (5), b+un (4) is below min frequency 5 */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/hug", test_tmpdir("bpe"));
    CHECK(bpe_trainer_save(t, dir, err) == DS_OK);
    bpe_trainer_free(t);
    Tokenizer *tk;
    CHECK(tokenizer_load(&tk, dir, err) == DS_OK);
    CHECK(id_of(tk, "ug") == 256 && id_of(tk, "un") == 257 && id_of(tk, "hug") == 258 && id_of(tk, "pun") == 259 &&
          id_of(tk, "pug") == 260 && id_of(tk, "hugs") == 261);
    CHECK(id_of(tk, "bun") < 0);
    CHECK(tokenizer_vocab_size(tk) == 262 + BPE_QWEN3_N_SPECIALS);
    CHECK(id_of(tk, "<|im_end|>") == 264);
    int32_t *ids; int n;
    CHECK(tokenizer_encode(tk, "hugs", 4, &ids, &n, err) == DS_OK);
    CHECK(n == 1 && ids[0] == 261);
    ds_free(ids);
    CHECK(tokenizer_encode(tk, "bun<|im_end|>", 13, &ids, &n, err) == DS_OK);
    CHECK(n == 3 && ids[0] == 'b' && ids[1] == 257 && ids[2] == 264);
    ds_free(ids);
    tokenizer_free(tk);
}

static const char CORPUS[] =
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    printf(\"hello, world\\n\");\n    return 0;\n}\n"
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.\r\n"
    "def f(x):\n    return x * 2  # doubles x\n\n\n"
    "Caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd 12345 3.14159\t\ttabs\n";

static void test_roundtrip(void) {
    char err[DS_ERR_LEN], dir[512];
    BpeTrainer *t;
    CHECK(bpe_trainer_new(&t, err) == DS_OK);
    for (int i = 0; i < 20; i++) CHECK(bpe_trainer_feed(t, CORPUS, sizeof CORPUS - 1, err) == DS_OK);
    BpeTrainConfig cfg = {.vocab_size = 400, .min_frequency = 2, .special_tokens = BPE_QWEN3_SPECIALS,
                          .n_special = BPE_QWEN3_N_SPECIALS};
    CHECK(bpe_trainer_train(t, &cfg, NULL, NULL, err) == DS_OK);
    CHECK(bpe_trainer_n_merges(t) > 50);
    snprintf(dir, sizeof dir, "%s/rt", test_tmpdir("bpe"));
    CHECK(bpe_trainer_save(t, dir, err) == DS_OK);
    CHECK(bpe_trainer_feed(t, "x", 1, err) != DS_OK); /* fed after training: refused */
    bpe_trainer_free(t);
    Tokenizer *tk;
    CHECK(tokenizer_load(&tk, dir, err) == DS_OK);
    const char *texts[] = {CORPUS, "unseen w\xc3\xb6rds \xe4\xb8\xad\xe6\x96\x87 and <|im_start|>user\nhi<|im_end|>",
                           "bad utf8 \xff\xfe end", ""};
    for (int k = 0; k < 4; k++) {
        int32_t *ids; int n; char *back;
        size_t len = strlen(texts[k]);
        CHECK(tokenizer_encode(tk, texts[k], len, &ids, &n, err) == DS_OK);
        if (k == 0) CHECK(n < (int)len / 3); /* the corpus itself compresses well */
        CHECK(tokenizer_decode(tk, ids, n, &back, err) == DS_OK);
        if (k != 2) CHECK(strcmp(back, texts[k]) == 0); /* NFC-stable inputs come back byte for byte */
        else CHECK(strstr(back, "\xef\xbf\xbd") != NULL); /* invalid bytes decode to U+FFFD */
        ds_free(back);
        ds_free(ids);
    }
    CHECK(chat_has_template(tk));
    ChatMessage m = {"user", "hello"};
    char *r;
    CHECK(chat_render(tk, &m, 1, true, false, &r, err) == DS_OK);
    CHECK(strcmp(r, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n") == 0);
    ds_free(r);
    tokenizer_free(tk);
}

static void test_errors(void) {
    char err[DS_ERR_LEN];
    BpeTrainer *t;
    CHECK(bpe_trainer_new(&t, err) == DS_OK);
    BpeTrainConfig cfg = {.vocab_size = 258, .min_frequency = 2, .special_tokens = BPE_QWEN3_SPECIALS,
                          .n_special = BPE_QWEN3_N_SPECIALS};
    CHECK(bpe_trainer_train(t, &cfg, NULL, NULL, err) != DS_OK);
    CHECK(strstr(err, "smaller than 256 bytes") != NULL);
    CHECK(bpe_trainer_save(t, "/nonexistent-dir/x", err) != DS_OK);
    bpe_trainer_free(t);
}

/* A tokenizer trained by us on the Debian corpus encodes exactly as the `tokenizers` library
 * does with the same tokenizer.json (ids computed there, tests/data/bpe-trained/README.md). */
static void test_hf_parity(void) {
    char err[DS_ERR_LEN];
    Tokenizer *tk;
    CHECK(tokenizer_load(&tk, test_data("bpe-trained"), err) == DS_OK);
    FILE *f = fopen(test_data("bpe-trained/hf_cases.jsonl"), "r");
    CHECK(f != NULL);
    if (!f) { tokenizer_free(tk); return; }
    char *line = NULL;
    size_t cap = 0;
    int n = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        json_error_t je;
        json_t *c = json_loads(line, 0, &je), *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids");
        int32_t *got;
        int m;
        n++;
        if (!c || tokenizer_encode(tk, json_string_value(text), json_string_length(text), &got, &m, err)) { bad++; json_decref(c); continue; }
        bool same = (size_t)m == json_array_size(ids);
        for (int i = 0; same && i < m; i++) same = got[i] == json_integer_value(json_array_get(ids, (size_t)i));
        bad += !same;
        ds_free(got);
        json_decref(c);
    }
    free(line);
    fclose(f);
    CHECK_MSG(bad == 0 && n == 100, "%d of %d cases differ from tokenizers", bad, n);
    tokenizer_free(tk);
}

int main(void) {
    RUN(test_hf_parity);
    RUN(test_merge_order);
    RUN(test_roundtrip);
    RUN(test_errors);
    return test_summary();
}
