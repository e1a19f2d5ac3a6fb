/* fuzz_targets.c - see fuzz_targets.h. */
#include "fuzz_targets.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>
#include <string.h>

#include "chat.h"
#include "draft_config.h"
#include "npy.h"
#include "qwen3.h"
#include "safetensors.h"
#include "tokenizer.h"

int fuzz_safetensors(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    StModel m;
    if (st_open_buffer(&m, data, size, "fuzz.safetensors", err) != DS_OK) {
        DS_ASSERT(err[0] && !strchr(err, '\n')); /* an error is one non-empty line */
        return 0;
    }
    /* claim each tensor with its own shape (exercises st_find / st_take / alignment), then
     * touch its first and last byte so ASan sees any offset past the buffer */
    volatile uint8_t sink = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        const StTensor *t = &m.tensors[i], *got = NULL;
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (st_take(&m, t->name, t->n_dims, shape, &got, err) == DS_OK) DS_ASSERT(got == t);
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    (void)sink;
    st_check_all_taken(&m, err);
    st_close(&m);
    return 0;
}

int fuzz_config(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    json_error_t je;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!root) return 0;
    Qwen3Config q;
    ds_status rq = qwen3_config_parse(&q, root, "config.json", err);
    DraftConfig d;
    ds_status rd = draft_config_parse(&d, root, "config.json", err);
    if (rq == DS_OK && rd == DS_OK) draft_config_validate(&d, &q, "config.json", err);
    if (rq == DS_OK) DS_ASSERT(q.n_heads > 0 && q.n_kv_heads > 0 && q.n_heads % q.n_kv_heads == 0 && q.head_dim > 0);
    json_decref(root);
    return 0;
}

int fuzz_npy(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    NpyArray a;
    if (npy_parse(data, size, "fuzz.npy", &a, err) != DS_OK) {
        DS_ASSERT(err[0] && !strchr(err, '\n'));
        return 0;
    }
    size_t numel = 1;
    for (int d = 0; d < a.n_dims; d++) numel *= (size_t)a.shape[d];
    DS_ASSERT(numel == a.numel);
    /* every byte the shape promises must be there (ASan checks the allocation) */
    volatile uint8_t sink = 0;
    size_t nb = a.numel * ds_dtype_size(a.dtype);
    if (nb) sink ^= ((const uint8_t *)a.data)[0] ^ ((const uint8_t *)a.data)[nb - 1];
    (void)sink;
    npy_free(&a);
    return 0;
}

/* ---- tokenizer ---- */

static Tokenizer *g_tok;

static const Tokenizer *tok(void) {
    if (g_tok) return g_tok;
    const char *root = getenv("DSPARK_TEST_DATA");
    if (!root) root = getenv("DSPARK_FUZZ_DATA");
    if (!root) root = "tests/data";
    char dir[1024], err[DS_ERR_LEN];
    snprintf(dir, sizeof dir, "%s/qwen3-tokenizer", root);
    if (tokenizer_load(&g_tok, dir, err) != DS_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort(); /* a setup error, not a finding */
    }
    return g_tok;
}

void fuzz_tokenizer_cleanup(void) {
    if (g_tok) tokenizer_free(g_tok);
    g_tok = NULL;
}

static bool valid_utf8(const char *s, size_t n) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)n;
    while (left > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t m = utf8proc_iterate(p, left, &cp);
        if (m <= 0) return false;
        p += m;
        left -= m;
    }
    return true;
}

static void fuzz_encode(const Tokenizer *t, const char *text, size_t len) {
    char err[DS_ERR_LEN];
    int32_t *ids = NULL;
    int n = 0;
    if (tokenizer_encode(t, text, len, &ids, &n, err) != DS_OK) return;
    int V = tokenizer_vocab_size(t);
    for (int i = 0; i < n; i++) DS_ASSERT(ids[i] >= 0 && ids[i] < V);
    char *back = NULL;
    DS_ASSERT(tokenizer_decode(t, ids, n, &back, err) == DS_OK);
    size_t blen = strlen(back);
    DS_ASSERT(valid_utf8(back, blen));
    if (valid_utf8(text, len) && !memchr(text, 0, len)) {
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r >= 0) DS_ASSERT((size_t)r == blen && memcmp(nfc, back, blen) == 0);
        free(nfc);
    }
    ds_free(back);
    ds_free(ids);
}

static void fuzz_decode(const Tokenizer *t, const uint8_t *d, size_t size) {
    char err[DS_ERR_LEN];
    int n = (int)(size / 3);
    int32_t *ids = ds_malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) /* -4 .. ~160000: both ends of the vocabulary (151669) and past it */
        ids[i] = (int32_t)(((uint32_t)d[3 * i] | (uint32_t)d[3 * i + 1] << 8 | (uint32_t)d[3 * i + 2] << 16) % 160004u) - 4;
    char *whole = NULL;
    DS_ASSERT(tokenizer_decode(t, ids, n, &whole, err) == DS_OK);
    size_t wl = strlen(whole);
    DS_ASSERT(valid_utf8(whole, wl));
    /* streaming, one id at a time, must give the same bytes. tokenizer_decode returns a C
     * string, so a decoded NUL byte (the byte-level token for 0x00) ends it early: compare up
     * to strlen and expect that NUL in the stream there. */
    DecodeStream s = {0};
    /* a token's bytes can triple (U+FFFD per byte); tokens are far shorter than 512 bytes, and
     * the API asks for at least 1024 bytes of room per step */
    size_t cap = (size_t)n * 3 * 512 + 1024;
    char *stream = ds_malloc(cap);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        o += tokenizer_decode_step(t, &s, ids[i], stream + o, cap - o);
    }
    o += tokenizer_decode_flush(&s, stream + o, cap - o);
    DS_ASSERT(valid_utf8(stream, o));
    bool same = o >= wl && memcmp(whole, stream, wl) == 0 && (o == wl || stream[wl] == 0);
    ds_free(stream);
    DS_ASSERT(same);
    ds_free(whole);
    ds_free(ids);
}

static void fuzz_chat(const Tokenizer *t, const uint8_t *d, size_t size) {
    static const char *roles[] = {"system", "user", "assistant", "tool"};
    char *copy = ds_malloc(size + 1), err[DS_ERR_LEN];
    memcpy(copy, d, size);
    copy[size] = 0;
    ChatMessage msgs[8];
    int n = 0;
    char *p = copy;
    while (n < 8 && *p) { /* each message: a role byte, then content up to 0xFF */
        const char *role = roles[(unsigned char)*p % 4];
        p++;
        char *end = strchr(p, '\xff');
        if (end) *end = 0;
        msgs[n++] = (ChatMessage){role, p};
        if (!end) break;
        p = end + 1;
    }
    char *text = NULL;
    if (chat_render(t, msgs, n, size & 1, (size >> 1) & 1, &text, err) == DS_OK) {
        fuzz_encode(t, text, strlen(text));
        ds_free(text);
    }
    ds_free(copy);
}

int fuzz_tokenizer(const uint8_t *data, size_t size) {
    const Tokenizer *t = tok();
    if (size == 0) return 0;
    switch (data[0] % 3) {
    case 0: fuzz_encode(t, (const char *)data + 1, size - 1); break;
    case 1: fuzz_decode(t, data + 1, size - 1); break;
    default: fuzz_chat(t, data + 1, size - 1); break;
    }
    return 0;
}
