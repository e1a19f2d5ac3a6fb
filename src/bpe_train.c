/* bpe_train.c - byte-level BPE training (see bpe_train.h). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "bpe_train.h"
#include "qwen3_chat_template.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

const char *const BPE_QWEN3_SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
const int BPE_QWEN3_N_SPECIALS = 5;

/* Qwen3's pre-tokenizer regex (tokenizer.json of Qwen/Qwen3-*). */
static const char QWEN3_SPLIT[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- distinct pieces: open-addressing hash of byte strings ---- */
typedef struct {
    size_t off;      /* into bytes */
    int32_t len;
    int64_t count;
    int32_t *sym;    /* symbols after training starts */
    int32_t n_sym;
    int32_t stamp;   /* last merge that visited it */
} Piece;

/* ---- pairs ---- */
typedef struct {
    int32_t a, b;    /* a < 0: empty slot */
    int64_t count;
    int32_t *pieces; /* pieces that held the pair at some point (may be stale or repeated) */
    int32_t n_pieces, cap_pieces;
} Pair;

typedef struct { int64_t count; int32_t a, b; } HeapEntry;

struct BpeTrainer {
    pcre2_code *re;
    pcre2_match_data *md;
    char *bytes; size_t n_bytes, cap_bytes;
    Piece *pieces; int32_t n_pieces, cap_pieces;
    int32_t *slots; size_t n_slots;          /* piece hash: index+1, 0 = empty */
    uint64_t total;
    /* training */
    Pair *pairs; size_t n_pairs_slots, n_pairs_used;
    HeapEntry *heap; size_t n_heap, cap_heap;
    char **tok; int32_t *tok_len; int32_t n_tok;  /* symbol id -> bytes */
    int32_t (*merges)[2]; int n_merges;
    const char *const *specials; int n_special;
    bool trained;
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h;
}
static uint64_t hash_pair(int32_t a, int32_t b) {
    uint64_t x = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

ds_status bpe_trainer_new(BpeTrainer **out, char *err) {
    BpeTrainer *t = ds_calloc(1, sizeof *t);
    if (!t) return ds_err(err, DS_ENOMEM, "bpe: out of memory");
    int ecode; PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)QWEN3_SPLIT, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ecode, &eoff, NULL);
    if (t->re) pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* the interpreter is quadratic on long texts */
    t->md = t->re ? pcre2_match_data_create_from_pattern(t->re, NULL) : NULL;
    t->n_slots = 1 << 16;
    t->slots = ds_calloc(t->n_slots, sizeof *t->slots);
    if (!t->re || !t->md || !t->slots) { bpe_trainer_free(t); return ds_err(err, DS_ENOMEM, "bpe: cannot set up the splitter"); }
    *out = t;
    return DS_OK;
}

void bpe_trainer_free(BpeTrainer *t) {
    if (!t) return;
    if (t->md) pcre2_match_data_free(t->md);
    if (t->re) pcre2_code_free(t->re);
    for (int32_t i = 0; i < t->n_pieces; i++) ds_free(t->pieces[i].sym);
    ds_free(t->pieces); ds_free(t->bytes); ds_free(t->slots);
    for (size_t i = 0; i < t->n_pairs_slots; i++) ds_free(t->pairs[i].pieces);
    ds_free(t->pairs); ds_free(t->heap);
    for (int32_t i = 0; i < t->n_tok; i++) ds_free(t->tok[i]);
    ds_free(t->tok); ds_free(t->tok_len); ds_free(t->merges);
    ds_free(t);
}

static bool piece_grow_slots(BpeTrainer *t) {
    size_t n = t->n_slots * 2;
    int32_t *s = ds_calloc(n, sizeof *s);
    if (!s) return false;
    for (int32_t i = 0; i < t->n_pieces; i++) {
        const Piece *p = &t->pieces[i];
        size_t h = hash_bytes(t->bytes + p->off, (size_t)p->len) & (n - 1);
        while (s[h]) h = (h + 1) & (n - 1);
        s[h] = i + 1;
    }
    ds_free(t->slots);
    t->slots = s;
    t->n_slots = n;
    return true;
}

static bool piece_add(BpeTrainer *t, const char *s, size_t n) {
    if (n == 0) return true;
    if (n > (1u << 20)) n = 1u << 20; /* a pathological piece (megabytes of spaces) is counted by its prefix */
    t->total++;
    size_t h = hash_bytes(s, n) & (t->n_slots - 1);
    while (t->slots[h]) {
        Piece *p = &t->pieces[t->slots[h] - 1];
        if ((size_t)p->len == n && memcmp(t->bytes + p->off, s, n) == 0) { p->count++; return true; }
        h = (h + 1) & (t->n_slots - 1);
    }
    if (t->n_pieces == t->cap_pieces) {
        int32_t cap = t->cap_pieces ? t->cap_pieces * 2 : 4096;
        Piece *np = ds_realloc(t->pieces, (size_t)cap * sizeof *np);
        if (!np) return false;
        t->pieces = np; t->cap_pieces = cap;
    }
    if (t->n_bytes + n > t->cap_bytes) {
        size_t cap = t->cap_bytes ? t->cap_bytes * 2 : 1 << 20;
        while (cap < t->n_bytes + n) cap *= 2;
        char *nb = ds_realloc(t->bytes, cap);
        if (!nb) return false;
        t->bytes = nb; t->cap_bytes = cap;
    }
    memcpy(t->bytes + t->n_bytes, s, n);
    t->pieces[t->n_pieces] = (Piece){.off = t->n_bytes, .len = (int32_t)n, .count = 1, .stamp = -1};
    t->n_bytes += n;
    t->slots[h] = ++t->n_pieces;
    if ((size_t)t->n_pieces * 2 > t->n_slots) return piece_grow_slots(t);
    return true;
}

ds_status bpe_trainer_feed(BpeTrainer *t, const char *text, size_t len, char *err) {
    if (t->trained) return ds_err(err, DS_EARG, "bpe: feed after training");
    utf8proc_uint8_t *norm = NULL;
    if (len) {
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r >= 0) { text = (const char *)norm; len = (size_t)r; } /* invalid UTF-8: as the encoder, left as it is */
    }
    ds_status rc = DS_OK;
    size_t pos = 0;
    while (pos < len) { /* "Isolated": matches and the gaps between them are both pieces (as tokenizer.c) */
        int m = pcre2_match(t->re, (PCRE2_SPTR)text, len, pos, 0, t->md, NULL);
        size_t ms = len, me = len;
        if (m >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            ms = ov[0]; me = ov[1];
            if (me == ms) { ms = me = ms < len ? ms : len; if (ms == pos) ms = me = len; }
        } else if (m != PCRE2_ERROR_NOMATCH) { rc = ds_err(err, DS_EFORMAT, "bpe: regex match failed (%d)", m); break; }
        if ((ms > pos && !piece_add(t, text + pos, ms - pos)) || (me > ms && !piece_add(t, text + ms, me - ms))) {
            rc = ds_err(err, DS_ENOMEM, "bpe: out of memory counting pieces");
            break;
        }
        pos = me;
    }
    free(norm);
    return rc;
}

void bpe_trainer_counts(const BpeTrainer *t, size_t *distinct, uint64_t *total) {
    *distinct = (size_t)t->n_pieces;
    *total = t->total;
}

int bpe_trainer_n_merges(const BpeTrainer *t) { return t->n_merges; }

/* ---- pair table ---- */
static Pair *pair_slot(BpeTrainer *t, int32_t a, int32_t b) {
    size_t h = hash_pair(a, b) & (t->n_pairs_slots - 1);
    while (t->pairs[h].a >= 0 && !(t->pairs[h].a == a && t->pairs[h].b == b)) h = (h + 1) & (t->n_pairs_slots - 1);
    return &t->pairs[h];
}

static bool pairs_grow(BpeTrainer *t) {
    size_t n = t->n_pairs_slots ? t->n_pairs_slots * 2 : 1 << 16;
    Pair *old = t->pairs;
    size_t n_old = t->n_pairs_slots;
    t->pairs = ds_malloc(n * sizeof *t->pairs);
    if (!t->pairs) { t->pairs = old; return false; }
    for (size_t i = 0; i < n; i++) t->pairs[i] = (Pair){.a = -1};
    t->n_pairs_slots = n;
    for (size_t i = 0; i < n_old; i++)
        if (old[i].a >= 0) *pair_slot(t, old[i].a, old[i].b) = old[i];
    ds_free(old);
    return true;
}

static Pair *pair_get_or_add(BpeTrainer *t, int32_t a, int32_t b) {
    if ((t->n_pairs_used + 1) * 2 > t->n_pairs_slots && !pairs_grow(t)) return NULL;
    Pair *p = pair_slot(t, a, b);
    if (p->a < 0) { *p = (Pair){.a = a, .b = b}; t->n_pairs_used++; }
    return p;
}

/* max-heap: larger count first; ties: smaller (a, b) first */
static bool heap_less(const HeapEntry *x, const HeapEntry *y) { /* x below y */
    if (x->count != y->count) return x->count < y->count;
    if (x->a != y->a) return x->a > y->a;
    return x->b > y->b;
}
static bool heap_push(BpeTrainer *t, int64_t count, int32_t a, int32_t b) {
    if (t->n_heap == t->cap_heap) {
        size_t cap = t->cap_heap ? t->cap_heap * 2 : 1 << 16;
        HeapEntry *h = ds_realloc(t->heap, cap * sizeof *h);
        if (!h) return false;
        t->heap = h; t->cap_heap = cap;
    }
    size_t i = t->n_heap++;
    t->heap[i] = (HeapEntry){count, a, b};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&t->heap[p], &t->heap[i])) break;
        HeapEntry tmp = t->heap[p]; t->heap[p] = t->heap[i]; t->heap[i] = tmp;
        i = p;
    }
    return true;
}
static HeapEntry heap_pop(BpeTrainer *t) {
    HeapEntry top = t->heap[0];
    t->heap[0] = t->heap[--t->n_heap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < t->n_heap && heap_less(&t->heap[m], &t->heap[l])) m = l;
        if (r < t->n_heap && heap_less(&t->heap[m], &t->heap[r])) m = r;
        if (m == i) break;
        HeapEntry tmp = t->heap[m]; t->heap[m] = t->heap[i]; t->heap[i] = tmp;
        i = m;
    }
    return top;
}

/* count += delta for (a, b); records the piece when asked (a pair it newly holds) */
static bool pair_add(BpeTrainer *t, int32_t a, int32_t b, int64_t delta, int32_t piece) {
    Pair *p = pair_get_or_add(t, a, b);
    if (!p) return false;
    p->count += delta;
    if (piece >= 0) {
        if (p->n_pieces == p->cap_pieces) {
            int32_t cap = p->cap_pieces ? p->cap_pieces * 2 : 4;
            int32_t *np = ds_realloc(p->pieces, (size_t)cap * sizeof *np);
            if (!np) return false;
            p->pieces = np; p->cap_pieces = cap;
        }
        p->pieces[p->n_pieces++] = piece;
    }
    return true;
}

static bool add_token(BpeTrainer *t, const char *bytes, int32_t len) {
    char *s = ds_malloc((size_t)len + 1);
    if (!s) return false;
    memcpy(s, bytes, (size_t)len);
    s[len] = 0;
    t->tok[t->n_tok] = s;
    t->tok_len[t->n_tok++] = len;
    return true;
}

ds_status bpe_trainer_train(BpeTrainer *t, const BpeTrainConfig *cfg, void (*progress)(void *, int, int), void *ctx,
                            char *err) {
    if (t->trained) return ds_err(err, DS_EARG, "bpe: already trained");
    int want = cfg->vocab_size - 256 - cfg->n_special;
    if (want < 0) return ds_err(err, DS_EARG, "bpe: vocab size %d is smaller than 256 bytes + %d special tokens", cfg->vocab_size, cfg->n_special);
    if (cfg->min_frequency < 1) return ds_err(err, DS_EARG, "bpe: min frequency must be at least 1");
    t->tok = ds_calloc((size_t)cfg->vocab_size, sizeof *t->tok);
    t->tok_len = ds_calloc((size_t)cfg->vocab_size, sizeof *t->tok_len);
    t->merges = ds_calloc((size_t)(want ? want : 1), sizeof *t->merges);
    if (!t->tok || !t->tok_len || !t->merges || !pairs_grow(t)) return ds_err(err, DS_ENOMEM, "bpe: out of memory");
    for (int b = 0; b < 256; b++) { char c = (char)b; if (!add_token(t, &c, 1)) return ds_err(err, DS_ENOMEM, "bpe: out of memory"); }
    t->specials = cfg->special_tokens;
    t->n_special = cfg->n_special;
    t->trained = true;
    /* initial symbols and pair counts */
    for (int32_t i = 0; i < t->n_pieces; i++) {
        Piece *p = &t->pieces[i];
        p->sym = ds_malloc(sizeof(int32_t) * (size_t)p->len);
        if (!p->sym) return ds_err(err, DS_ENOMEM, "bpe: out of memory");
        for (int32_t k = 0; k < p->len; k++) p->sym[k] = (unsigned char)t->bytes[p->off + k];
        p->n_sym = p->len;
        for (int32_t k = 0; k + 1 < p->n_sym; k++)
            if (!pair_add(t, p->sym[k], p->sym[k + 1], p->count, i)) return ds_err(err, DS_ENOMEM, "bpe: out of memory");
    }
    for (size_t i = 0; i < t->n_pairs_slots; i++)
        if (t->pairs[i].a >= 0 && t->pairs[i].count > 0 && !heap_push(t, t->pairs[i].count, t->pairs[i].a, t->pairs[i].b))
            return ds_err(err, DS_ENOMEM, "bpe: out of memory");
    int32_t *tmp = NULL;
    size_t cap_tmp = 0;
    while (t->n_merges < want && t->n_heap > 0) {
        HeapEntry e = heap_pop(t);
        Pair *pr = pair_slot(t, e.a, e.b);
        if (pr->a < 0 || pr->count != e.count) { /* stale: requeue at its current count */
            if (pr->a >= 0 && pr->count > 0 && !heap_push(t, pr->count, e.a, e.b)) goto oom;
            continue;
        }
        if (e.count < cfg->min_frequency) break;
        int32_t a = e.a, b = e.b, id = t->n_tok;
        char buf[1024];
        int32_t la = t->tok_len[a], lb = t->tok_len[b];
        char *joined = la + lb <= (int32_t)sizeof buf ? buf : ds_malloc((size_t)(la + lb));
        if (!joined) goto oom;
        memcpy(joined, t->tok[a], (size_t)la);
        memcpy(joined + la, t->tok[b], (size_t)lb);
        bool ok = add_token(t, joined, la + lb);
        if (joined != buf) ds_free(joined);
        if (!ok) goto oom;
        t->merges[t->n_merges][0] = a;
        t->merges[t->n_merges][1] = b;
        int stamp = t->n_merges++;
        /* the pair table may move while we add pairs: copy the piece list first */
        int32_t n_list = pr->n_pieces;
        if ((size_t)n_list > cap_tmp) {
            int32_t *nt = ds_realloc(tmp, (size_t)n_list * sizeof *nt);
            if (!nt) goto oom;
            tmp = nt; cap_tmp = (size_t)n_list;
        }
        memcpy(tmp, pr->pieces, (size_t)n_list * sizeof *tmp);
        for (int32_t li = 0; li < n_list; li++) {
            Piece *p = &t->pieces[tmp[li]];
            if (p->stamp == stamp) continue;
            p->stamp = stamp;
            bool has = false;
            for (int32_t k = 0; k + 1 < p->n_sym && !has; k++) has = p->sym[k] == a && p->sym[k + 1] == b;
            if (!has) continue;
            /* old pairs out, merge left to right, new pairs in (only pairs with the new id can grow) */
            for (int32_t k = 0; k + 1 < p->n_sym; k++)
                if (!pair_add(t, p->sym[k], p->sym[k + 1], -p->count, -1)) goto oom;
            int32_t w = 0;
            for (int32_t k = 0; k < p->n_sym; k++) {
                if (k + 1 < p->n_sym && p->sym[k] == a && p->sym[k + 1] == b) { p->sym[w++] = id; k++; }
                else p->sym[w++] = p->sym[k];
            }
            p->n_sym = w;
            for (int32_t k = 0; k + 1 < p->n_sym; k++) {
                bool fresh = p->sym[k] == id || p->sym[k + 1] == id;
                if (!pair_add(t, p->sym[k], p->sym[k + 1], p->count, fresh ? tmp[li] : -1)) goto oom;
            }
        }
        /* push the pairs holding the new symbol at their final counts */
        for (int32_t li = 0; li < n_list; li++) {
            Piece *p = &t->pieces[tmp[li]];
            if (p->stamp != stamp) continue;
            p->stamp = -2 - stamp; /* visited for pushing */
            for (int32_t k = 0; k + 1 < p->n_sym; k++) {
                if (p->sym[k] != id && p->sym[k + 1] != id) continue;
                Pair *q = pair_slot(t, p->sym[k], p->sym[k + 1]);
                if (q->count > 0 && !heap_push(t, q->count, q->a, q->b)) goto oom;
            }
        }
        if (progress && (t->n_merges % 256 == 0 || t->n_merges == want)) progress(ctx, t->n_merges, want);
    }
    ds_free(tmp);
    for (int i = 0; i < cfg->n_special; i++)
        if (!add_token(t, cfg->special_tokens[i], (int32_t)strlen(cfg->special_tokens[i]))) return ds_err(err, DS_ENOMEM, "bpe: out of memory");
    return DS_OK;
oom:
    ds_free(tmp);
    return ds_err(err, DS_ENOMEM, "bpe: out of memory while merging");
}

/* ---- saving ---- */
/* GPT-2's byte -> printable code point map used by the ByteLevel pre-tokenizer. */
static void byte_level_map(int cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[b] = printable ? b : 256 + n++;
    }
}

static char *byte_level_string(const char *s, int32_t len, const int cp[256]) {
    char *out = ds_malloc((size_t)len * 2 + 1), *o = out;
    if (!out) return NULL;
    for (int32_t i = 0; i < len; i++) o += utf8proc_encode_char(cp[(unsigned char)s[i]], (utf8proc_uint8_t *)o);
    *o = 0;
    return out;
}

static ds_status save_json(json_t *root, const char *dir, const char *name, char *err) {
    char path[1024];
    if (!ds_path_join(path, sizeof path, dir, name)) { json_decref(root); return ds_err(err, DS_EARG, "bpe: path too long: %s", dir); }
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) return ds_err(err, DS_ENOMEM, "bpe: cannot serialise %s", name);
    ds_status rc = ds_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

ds_status bpe_trainer_save(const BpeTrainer *t, const char *dir, char *err) {
    if (!t->trained) return ds_err(err, DS_EARG, "bpe: save before training");
    ds_status rc = ds_mkdirs(dir, err);
    if (rc) return rc;
    int cp[256];
    byte_level_map(cp);
    int32_t n_bpe = t->n_tok - t->n_special;
    json_t *root = json_object(), *vocab = json_object(), *merges = json_array(), *added = json_array();
    bool ok = root && vocab && merges && added;
    char **str = ds_calloc((size_t)(n_bpe ? n_bpe : 1), sizeof *str);
    ok = ok && str;
    for (int32_t i = 0; ok && i < n_bpe; i++) {
        str[i] = byte_level_string(t->tok[i], t->tok_len[i], cp);
        ok = str[i] && json_object_set_new(vocab, str[i], json_integer(i)) == 0;
    }
    for (int i = 0; ok && i < t->n_merges; i++)
        ok = json_array_append_new(merges, json_pack("[ss]", str[t->merges[i][0]], str[t->merges[i][1]])) == 0;
    for (int i = 0; ok && i < t->n_special; i++)
        ok = json_array_append_new(added, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (int)(n_bpe + i), "content", t->specials[i],
                                                   "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1)) == 0;
    if (str) for (int32_t i = 0; i < n_bpe; i++) ds_free(str[i]);
    ds_free(str);
    if (!ok) { json_decref(root); json_decref(vocab); json_decref(merges); json_decref(added); return ds_err(err, DS_ENOMEM, "bpe: out of memory writing the vocabulary"); }
    json_t *bl = json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0);
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", added);
    json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC"));
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},O]}", "type", "Sequence", "pretokenizers", "type", "Split", "pattern",
                                  "Regex", QWEN3_SPLIT, "behavior", "Isolated", "invert", 0, bl));
    json_object_set_new(root, "post_processor", json_deep_copy(bl));
    json_object_set_new(root, "decoder", bl);
    json_object_set_new(root, "model", json_pack("{s:s,s:n,s:n,s:s,s:s,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout", "unk_token",
                                                 "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0,
                                                 "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges", merges));
    if ((rc = save_json(root, dir, "tokenizer.json", err))) return rc;

    json_t *cfg = json_object(), *dec = json_object();
    for (int i = 0; i < t->n_special; i++) {
        char key[32];
        snprintf(key, sizeof key, "%d", (int)(n_bpe + i));
        json_object_set_new(dec, key, json_pack("{s:s,s:b,s:b,s:b,s:b,s:b}", "content", t->specials[i], "lstrip", 0, "normalized", 0,
                                                "rstrip", 0, "single_word", 0, "special", 1));
    }
    bool has_im_end = false, has_eot = false;
    for (int i = 0; i < t->n_special; i++) {
        has_im_end |= strcmp(t->specials[i], "<|im_end|>") == 0;
        has_eot |= strcmp(t->specials[i], "<|endoftext|>") == 0;
    }
    json_object_set_new(cfg, "add_bos_token", json_false());
    json_object_set_new(cfg, "add_prefix_space", json_false());
    json_object_set_new(cfg, "added_tokens_decoder", dec);
    json_object_set_new(cfg, "bos_token", json_null());
    if (has_im_end) json_object_set_new(cfg, "chat_template", json_string(QWEN3_CHAT_TEMPLATE));
    json_object_set_new(cfg, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(cfg, "eos_token", has_im_end ? json_string("<|im_end|>") : json_null());
    json_object_set_new(cfg, "errors", json_string("replace"));
    json_object_set_new(cfg, "model_max_length", json_integer(131072));
    json_object_set_new(cfg, "pad_token", has_eot ? json_string("<|endoftext|>") : json_null());
    json_object_set_new(cfg, "split_special_tokens", json_false());
    json_object_set_new(cfg, "tokenizer_class", json_string("Qwen2Tokenizer"));
    json_object_set_new(cfg, "unk_token", json_null());
    return save_json(cfg, dir, "tokenizer_config.json", err);
}
