/* tokenizer.c - byte-level BPE from tokenizer.json (see tokenizer.h). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- hash maps: bytes -> id, and (id, id) -> (rank, merged id) ---- */

typedef struct { uint32_t off, len; int32_t id; } StrSlot;   /* off into the key arena; id -1 = empty */
typedef struct { uint64_t key; int32_t rank, merged; } PairSlot;

static uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}
static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

typedef struct { unsigned char *content; uint32_t len; int32_t id; bool special; } AddedToken;

struct Tokenizer {
    /* id -> bytes */
    unsigned char *arena;
    size_t arena_len, arena_cap;
    uint32_t *tok_off, *tok_len;      /* [n_ids]; len UINT32_MAX = no token with this id */
    int n_ids;
    /* bytes -> id (vocab and added tokens) */
    StrSlot *str;
    size_t str_cap;
    PairSlot *pairs;
    size_t pair_cap;
    int32_t byte_id[256];
    AddedToken *added;
    int n_added;
    pcre2_code *re;
    bool nfc;
    char *chat_template;
};

static ds_status arena_put(Tokenizer *t, const unsigned char *p, size_t n, uint32_t *off) {
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap * 2 : 1 << 20;
        while (cap < t->arena_len + n) cap *= 2;
        unsigned char *a = ds_realloc(t->arena, cap);
        if (!a) return DS_ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, p, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return DS_OK;
}

static int32_t str_get(const Tokenizer *t, const unsigned char *p, size_t n) {
    size_t mask = t->str_cap - 1, i = hash_bytes(p, n) & mask;
    for (;; i = (i + 1) & mask) {
        const StrSlot *s = &t->str[i];
        if (s->id < 0) return -1;
        if (s->len == n && memcmp(t->arena + s->off, p, n) == 0) return s->id;
    }
}

static void str_put(Tokenizer *t, uint32_t off, uint32_t len, int32_t id) {
    size_t mask = t->str_cap - 1, i = hash_bytes(t->arena + off, len) & mask;
    for (;; i = (i + 1) & mask) {
        StrSlot *s = &t->str[i];
        if (s->id < 0) { s->off = off; s->len = len; s->id = id; return; }
        if (s->len == len && memcmp(t->arena + s->off, t->arena + off, len) == 0) return; /* first wins */
    }
}

static const PairSlot *pair_get(const Tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->pair_cap - 1, i = hash_u64(key) & mask;
    for (;; i = (i + 1) & mask) {
        const PairSlot *s = &t->pairs[i];
        if (s->rank < 0) return NULL;
        if (s->key == key) return s;
    }
}

static void pair_put(Tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->pair_cap - 1, i = hash_u64(key) & mask;
    for (;; i = (i + 1) & mask) {
        PairSlot *s = &t->pairs[i];
        if (s->rank < 0) { s->key = key; s->rank = rank; s->merged = merged; return; }
        if (s->key == key) return; /* the first (lowest-rank) merge of a pair wins */
    }
}

/* ---- the GPT-2 byte <-> unicode map ---- */

static int g_byte_cp[256];       /* byte -> code point */
static int g_cp_byte[512];       /* code point -> byte, -1 */

static void init_byte_map(void) {
    static int done;
    if (done) return;
    int n = 0;
    for (int i = 0; i < 512; i++) g_cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        g_byte_cp[b] = printable ? b : 256 + n++;
    }
    for (int b = 0; b < 256; b++) g_cp_byte[g_byte_cp[b]] = b;
    done = 1;
}

/* byte-level string (UTF-8 of mapped code points) -> raw bytes; false if a char is unmapped */
static bool bytelevel_decode(const char *s, size_t n, unsigned char *out, size_t *out_n) {
    size_t k = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)n;
    while (left > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t m = utf8proc_iterate(p, left, &cp);
        if (m <= 0 || cp < 0 || cp >= 512 || g_cp_byte[cp] < 0) return false;
        out[k++] = (unsigned char)g_cp_byte[cp];
        p += m;
        left -= m;
    }
    *out_n = k;
    return true;
}

/* ---- loading ---- */

static ds_status set_token(Tokenizer *t, int32_t id, const unsigned char *p, size_t n) {
    if (id >= t->n_ids) {
        int cap = t->n_ids ? t->n_ids : 1024;
        while (cap <= id) cap *= 2;
        uint32_t *o = ds_realloc(t->tok_off, sizeof(uint32_t) * cap), *l;
        if (!o) return DS_ENOMEM;
        t->tok_off = o;
        l = ds_realloc(t->tok_len, sizeof(uint32_t) * cap);
        if (!l) return DS_ENOMEM;
        t->tok_len = l;
        for (int i = t->n_ids; i < cap; i++) t->tok_len[i] = UINT32_MAX;
        t->n_ids = cap;
    }
    uint32_t off;
    if (arena_put(t, p, n, &off)) return DS_ENOMEM;
    t->tok_off[id] = off;
    t->tok_len[id] = (uint32_t)n;
    str_put(t, off, (uint32_t)n, id);
    return DS_OK;
}

static ds_status load_pretokenizer(Tokenizer *t, json_t *pt, const char *path, char *err) {
    const char *pattern = NULL;
    if (json_is_object(pt) && json_is_string(json_object_get(pt, "type"))) {
        const char *type = json_string_value(json_object_get(pt, "type"));
        json_t *list = NULL;
        if (strcmp(type, "Sequence") == 0) list = json_object_get(pt, "pretokenizers");
        size_t n = list ? json_array_size(list) : 1;
        for (size_t i = 0; i < n; i++) {
            json_t *p = list ? json_array_get(list, i) : pt;
            const char *ty = json_string_value(json_object_get(p, "type"));
            if (!ty) return ds_err(err, DS_EFORMAT, "%s: pre_tokenizer entry without a type", path);
            if (strcmp(ty, "Split") == 0) {
                json_t *pat = json_object_get(p, "pattern");
                const char *beh = json_string_value(json_object_get(p, "behavior"));
                if (!json_is_string(json_object_get(pat, "Regex")) || (beh && strcmp(beh, "Isolated") != 0) ||
                    json_is_true(json_object_get(p, "invert")))
                    return ds_err(err, DS_EUNSUPPORTED, "%s: only Split pre-tokenizers with a Regex pattern, Isolated, not inverted, are supported", path);
                pattern = json_string_value(json_object_get(pat, "Regex"));
            } else if (strcmp(ty, "ByteLevel") == 0) {
                if (json_is_true(json_object_get(p, "add_prefix_space")))
                    return ds_err(err, DS_EUNSUPPORTED, "%s: ByteLevel add_prefix_space is not supported", path);
                if (json_is_true(json_object_get(p, "use_regex")) && !pattern)
                    pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
            } else {
                return ds_err(err, DS_EUNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported", path, ty);
            }
        }
    }
    if (!pattern) return ds_err(err, DS_EUNSUPPORTED, "%s: no Split regex in pre_tokenizer", path);
    int ecode;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ecode, &eoff, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        return ds_err(err, DS_EFORMAT, "%s: pre_tokenizer regex does not compile at %zu: %s", path, (size_t)eoff, (char *)msg);
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up; fine if unavailable */
    return DS_OK;
}

static int cmp_added_len(const void *a, const void *b) {
    const AddedToken *x = a, *y = b;
    return (int)y->len - (int)x->len; /* longest first */
}

ds_status tokenizer_load(Tokenizer **out, const char *dir, char *err) {
    *out = NULL;
    init_byte_map();
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (!ds_file_exists(path)) return ds_err(err, DS_EIO, "%s: cannot open", path);
        return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    }
    ds_status rc = DS_OK;
    Tokenizer *t = ds_calloc(1, sizeof *t);
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || (mtype && strcmp(mtype, "BPE") != 0) || !json_is_object(vocab) || !json_is_array(merges)) {
        rc = ds_err(err, DS_EFORMAT, "%s: model must be a BPE with a vocab object and a merges list", path);
        goto done;
    }
    json_t *norm = json_object_get(root, "normalizer");
    if (json_is_object(norm)) {
        const char *ty = json_string_value(json_object_get(norm, "type"));
        if (!ty || strcmp(ty, "NFC") != 0) { rc = ds_err(err, DS_EUNSUPPORTED, "%s: normalizer '%s' is not supported (only NFC)", path, ty ? ty : "?"); goto done; }
        t->nfc = true;
    }
    size_t n_entries = json_object_size(vocab) + json_array_size(added) + 16;
    t->str_cap = 1;
    while (t->str_cap < n_entries * 2) t->str_cap <<= 1;
    t->str = ds_malloc(sizeof(StrSlot) * t->str_cap);
    for (size_t i = 0; i < t->str_cap; i++) t->str[i].id = -1;
    t->pair_cap = 1;
    while (t->pair_cap < json_array_size(merges) * 2 + 16) t->pair_cap <<= 1;
    t->pairs = ds_malloc(sizeof(PairSlot) * t->pair_cap);
    for (size_t i = 0; i < t->pair_cap; i++) t->pairs[i].rank = -1;
    unsigned char buf[4096];
    size_t bn;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 24)) {
            rc = ds_err(err, DS_EFORMAT, "%s: vocab entry '%s' has a bad id", path, key);
            goto done;
        }
        size_t kl = strlen(key);
        if (kl >= sizeof buf || !bytelevel_decode(key, kl, buf, &bn)) {
            rc = ds_err(err, DS_EFORMAT, "%s: vocab entry '%s' is not byte-level encoded", path, key);
            goto done;
        }
        if ((rc = set_token(t, (int32_t)json_integer_value(val), buf, bn))) { ds_err(err, rc, "out of memory"); goto done; }
    }
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        t->byte_id[b] = str_get(t, &c, 1);
        if (t->byte_id[b] < 0) { rc = ds_err(err, DS_EFORMAT, "%s: vocab has no token for byte 0x%02x", path, b); goto done; }
    }
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *m = json_array_get(merges, i);
        char a[1024], b[1024];
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp || (size_t)(sp - s) >= sizeof a || strlen(sp + 1) >= sizeof b) { rc = ds_err(err, DS_EFORMAT, "%s: merge %zu is malformed", path, i); goto done; }
            memcpy(a, s, (size_t)(sp - s)); a[sp - s] = 0;
            strcpy(b, sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1)) &&
                   json_string_length(json_array_get(m, 0)) < sizeof a && json_string_length(json_array_get(m, 1)) < sizeof b) {
            strcpy(a, json_string_value(json_array_get(m, 0)));
            strcpy(b, json_string_value(json_array_get(m, 1)));
        } else {
            rc = ds_err(err, DS_EFORMAT, "%s: merge %zu is malformed", path, i);
            goto done;
        }
        unsigned char ab[2048];
        size_t na, nb;
        if (!bytelevel_decode(a, strlen(a), ab, &na) || !bytelevel_decode(b, strlen(b), ab + na, &nb)) {
            rc = ds_err(err, DS_EFORMAT, "%s: merge %zu ('%s' '%s') is not byte-level encoded", path, i, a, b);
            goto done;
        }
        int32_t ia = str_get(t, ab, na), ib = str_get(t, ab + na, nb), im = str_get(t, ab, na + nb);
        if (ia < 0 || ib < 0 || im < 0) { rc = ds_err(err, DS_EFORMAT, "%s: merge %zu ('%s' '%s') refers to tokens missing from the vocab", path, i, a, b); goto done; }
        pair_put(t, ia, ib, (int32_t)i, im);
    }
    if (json_is_array(added)) {
        t->added = ds_calloc(json_array_size(added) + 1, sizeof(AddedToken));
        for (size_t i = 0; i < json_array_size(added); i++) {
            json_t *a = json_array_get(added, i), *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
            if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) || !json_is_string(content) ||
                json_string_length(content) == 0) {
                rc = ds_err(err, DS_EFORMAT, "%s: added_tokens[%zu] needs an id and a non-empty content", path, i);
                goto done;
            }
            AddedToken *at = &t->added[t->n_added++];
            at->len = (uint32_t)json_string_length(content);
            at->content = (unsigned char *)ds_strdup(json_string_value(content));
            at->id = (int32_t)json_integer_value(id);
            at->special = json_is_true(json_object_get(a, "special"));
            if ((rc = set_token(t, at->id, at->content, at->len))) { ds_err(err, rc, "out of memory"); goto done; }
        }
        qsort(t->added, (size_t)t->n_added, sizeof(AddedToken), cmp_added_len);
    }
    if ((rc = load_pretokenizer(t, json_object_get(root, "pre_tokenizer"), path, err))) goto done;
    /* the chat template, when tokenizer_config.json has one */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (ds_file_exists(path)) {
        json_t *cfg = json_load_file(path, 0, &je);
        if (!cfg) { rc = ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d column %d: %s", path, je.line, je.column, je.text); goto done; }
        json_t *tpl = json_object_get(cfg, "chat_template");
        if (json_is_string(tpl)) t->chat_template = ds_strdup(json_string_value(tpl));
        json_decref(cfg);
    }
done:
    json_decref(root);
    if (rc) { tokenizer_free(t); return rc; }
    /* trim the id table to the largest id + 1 */
    while (t->n_ids > 0 && t->tok_len[t->n_ids - 1] == UINT32_MAX) t->n_ids--;
    *out = t;
    return DS_OK;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_added; i++) ds_free(t->added[i].content);
    ds_free(t->added);
    ds_free(t->arena); ds_free(t->tok_off); ds_free(t->tok_len); ds_free(t->str); ds_free(t->pairs);
    if (t->re) pcre2_code_free(t->re);
    ds_free(t->chat_template);
    ds_free(t);
}

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_ids; }
const char *tokenizer_chat_template(const Tokenizer *t) { return t->chat_template; }

int32_t tokenizer_token_id(const Tokenizer *t, const char *token) {
    for (int i = 0; i < t->n_added; i++)
        if (strcmp((const char *)t->added[i].content, token) == 0) return t->added[i].id;
    unsigned char buf[1024];
    size_t n;
    if (strlen(token) < sizeof buf && bytelevel_decode(token, strlen(token), buf, &n)) return str_get(t, buf, n);
    return -1;
}

/* ---- encoding ---- */

typedef struct { int32_t *ids; int n, cap; } IdVec;

static bool idvec_push(IdVec *v, int32_t id) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 256;
        int32_t *p = ds_realloc(v->ids, sizeof(int32_t) * cap);
        if (!p) return false;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return true;
}

typedef struct { int32_t rank, left; int32_t a, b; } HeapItem;

static bool heap_less(const HeapItem *x, const HeapItem *y) { return x->rank != y->rank ? x->rank < y->rank : x->left < y->left; }
static void heap_push(HeapItem *h, int *n, HeapItem it) {
    int i = (*n)++;
    h[i] = it;
    while (i > 0 && heap_less(&h[i], &h[(i - 1) / 2])) { HeapItem tmp = h[i]; h[i] = h[(i - 1) / 2]; h[(i - 1) / 2] = tmp; i = (i - 1) / 2; }
}
static HeapItem heap_pop(HeapItem *h, int *n) {
    HeapItem top = h[0];
    h[0] = h[--(*n)];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && heap_less(&h[l], &h[m])) m = l;
        if (r < *n && heap_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        HeapItem tmp = h[i]; h[i] = h[m]; h[m] = tmp;
        i = m;
    }
    return top;
}

/* BPE of one piece: merge the lowest-rank adjacent pair (leftmost on ties) until none is
 * left, with a heap of candidate pairs and a linked list of symbols: O(n log n). */
static bool bpe_piece(const Tokenizer *t, const unsigned char *p, int n, IdVec *out) {
    if (n == 1) return idvec_push(out, t->byte_id[p[0]]);
    int32_t *sym = ds_malloc(sizeof(int32_t) * n), *next = ds_malloc(sizeof(int32_t) * n), *prev = ds_malloc(sizeof(int32_t) * n);
    HeapItem *heap = ds_malloc(sizeof(HeapItem) * (size_t)(2 * n + 2));
    if (!sym || !next || !prev || !heap) { ds_free(sym); ds_free(next); ds_free(prev); ds_free(heap); return false; }
    int hn = 0;
    for (int i = 0; i < n; i++) { sym[i] = t->byte_id[p[i]]; next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; }
    for (int i = 0; i + 1 < n; i++) {
        const PairSlot *ps = pair_get(t, sym[i], sym[i + 1]);
        if (ps) heap_push(heap, &hn, (HeapItem){ps->rank, i, sym[i], sym[i + 1]});
    }
    while (hn > 0) {
        HeapItem it = heap_pop(heap, &hn);
        int l = it.left, r = next[l];
        if (sym[l] != it.a || r < 0 || sym[r] != it.b) continue; /* stale */
        const PairSlot *ps = pair_get(t, it.a, it.b);
        sym[l] = ps->merged;
        sym[r] = -1;
        next[l] = next[r];
        if (next[r] >= 0) prev[next[r]] = l;
        if (prev[l] >= 0) {
            const PairSlot *q = pair_get(t, sym[prev[l]], sym[l]);
            if (q) heap_push(heap, &hn, (HeapItem){q->rank, prev[l], sym[prev[l]], sym[l]});
        }
        if (next[l] >= 0) {
            const PairSlot *q = pair_get(t, sym[l], sym[next[l]]);
            if (q) heap_push(heap, &hn, (HeapItem){q->rank, l, sym[l], sym[next[l]]});
        }
    }
    bool ok = true;
    for (int i = 0; i >= 0 && ok; i = next[i]) ok = idvec_push(out, sym[i]);
    ds_free(sym); ds_free(next); ds_free(prev); ds_free(heap);
    return ok;
}

/* normalise, split by the regex, BPE each piece */
static ds_status encode_segment(const Tokenizer *t, const char *s, size_t n, IdVec *out, char *err) {
    if (n == 0) return DS_OK;
    utf8proc_uint8_t *norm = NULL;
    const char *text = s;
    size_t len = n;
    if (t->nfc) {
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r >= 0) { text = (const char *)norm; len = (size_t)r; } /* invalid UTF-8: left as it is */
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    ds_status rc = DS_OK;
    size_t pos = 0;
    while (pos < len) {
        int m = pcre2_match(t->re, (PCRE2_SPTR)text, len, pos, 0, md, NULL);
        size_t ms, me;
        if (m >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            ms = ov[0];
            me = ov[1];
            if (me == ms) { /* empty match: treat the next character as a gap */
                me = ms = ms < len ? ms : len;
                if (ms == pos) { ms = len; me = len; }
            }
        } else if (m == PCRE2_ERROR_NOMATCH) {
            ms = me = len;
        } else {
            rc = ds_err(err, DS_EFORMAT, "tokenizer: regex match failed (%d)", m);
            break;
        }
        if (ms > pos && !bpe_piece(t, (const unsigned char *)text + pos, (int)(ms - pos), out)) { rc = ds_err(err, DS_ENOMEM, "out of memory"); break; }
        if (me > ms && !bpe_piece(t, (const unsigned char *)text + ms, (int)(me - ms), out)) { rc = ds_err(err, DS_ENOMEM, "out of memory"); break; }
        pos = me;
    }
    pcre2_match_data_free(md);
    free(norm);
    return rc;
}

ds_status tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids, int *n_ids, char *err) {
    IdVec v = {0};
    ds_status rc = DS_OK;
    size_t seg = 0, i = 0;
    while (i < len && !rc) {
        const AddedToken *hit = NULL;
        for (int k = 0; k < t->n_added; k++) { /* longest first */
            const AddedToken *a = &t->added[k];
            if (a->len <= len - i && a->content[0] == (unsigned char)text[i] && memcmp(a->content, text + i, a->len) == 0) { hit = a; break; }
        }
        if (!hit) { i++; continue; }
        rc = encode_segment(t, text + seg, i - seg, &v, err);
        if (!rc && !idvec_push(&v, hit->id)) rc = ds_err(err, DS_ENOMEM, "out of memory");
        i += hit->len;
        seg = i;
    }
    if (!rc) rc = encode_segment(t, text + seg, len - seg, &v, err);
    if (rc) { ds_free(v.ids); return rc; }
    *ids = v.ids ? v.ids : ds_malloc(sizeof(int32_t));
    *n_ids = v.n;
    return DS_OK;
}

/* ---- decoding ---- */

/* length of the UTF-8 character starting with byte c (0 = not a start byte) */
static int utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* valid second byte for a lead byte (no overlongs, surrogates or code points > U+10FFFF) */
static bool second_ok(unsigned char lead, unsigned char c) {
    if ((c & 0xC0) != 0x80) return false;
    if (lead == 0xE0) return c >= 0xA0;
    if (lead == 0xED) return c < 0xA0;
    if (lead == 0xF0) return c >= 0x90;
    if (lead == 0xF4) return c < 0x90;
    return true;
}

static void put_bytes(char *out, size_t cap, size_t *o, const void *p, size_t n) {
    if (*o + n <= cap) { memcpy(out + *o, p, n); *o += n; }
}
#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD, as Python's errors="replace" */

/* Feed one byte through the UTF-8 validator of s, writing completed characters (or U+FFFD for
 * an invalid sequence, one per maximal invalid subsequence) to out. */
static void feed_byte(DecodeStream *s, unsigned char c, char *out, size_t cap, size_t *o) {
    if (s->n_pending > 0) {
        bool ok = s->n_pending == 1 ? second_ok(s->pending[0], c) : (c & 0xC0) == 0x80;
        if (ok) {
            s->pending[s->n_pending++] = c;
            if (s->n_pending == utf8_len(s->pending[0])) { put_bytes(out, cap, o, s->pending, (size_t)s->n_pending); s->n_pending = 0; }
            return;
        }
        put_bytes(out, cap, o, REPLACEMENT, 3); /* the pending character was cut short */
        s->n_pending = 0;
    }
    int need = utf8_len(c);
    if (need == 1) put_bytes(out, cap, o, &c, 1);
    else if (need == 0) put_bytes(out, cap, o, REPLACEMENT, 3);
    else { s->pending[0] = c; s->n_pending = 1; }
}

size_t tokenizer_decode_step(const Tokenizer *t, DecodeStream *s, int32_t id, char *out, size_t cap) {
    size_t o = 0;
    if (id < 0 || id >= t->n_ids || t->tok_len[id] == UINT32_MAX) return 0;
    const unsigned char *p = t->arena + t->tok_off[id];
    for (uint32_t i = 0; i < t->tok_len[id]; i++) feed_byte(s, p[i], out, cap, &o);
    return o;
}

size_t tokenizer_decode_flush(DecodeStream *s, char *out, size_t cap) {
    size_t o = 0;
    if (s->n_pending) put_bytes(out, cap, &o, REPLACEMENT, 3);
    s->n_pending = 0;
    return o;
}

ds_status tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, char **text, char *err) {
    size_t total = 4;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n_ids && t->tok_len[ids[i]] != UINT32_MAX) total += 3 * (size_t)t->tok_len[ids[i]];
    char *s = ds_malloc(total);
    if (!s) return ds_err(err, DS_ENOMEM, "out of memory");
    DecodeStream ds = {0};
    size_t o = 0;
    for (int i = 0; i < n; i++) o += tokenizer_decode_step(t, &ds, ids[i], s + o, total - 1 - o);
    o += tokenizer_decode_flush(&ds, s + o, total - 1 - o);
    s[o] = 0;
    *text = s;
    return DS_OK;
}
