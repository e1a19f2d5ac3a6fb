/* chat.c - Qwen3's chat template (see chat.h). Template logic mirrored (tools aside):
 *   - a leading system message: <|im_start|>system\n{content}<|im_end|>\n
 *   - last_query_index: the last user message (scanning back) that is not a tool response
 *   - user (and non-leading system): <|im_start|>{role}\n{content}<|im_end|>\n
 *   - assistant: reasoning is split off at </think>; after the last query, the final turn (or
 *     one with reasoning) is written as <think>\n{reasoning}\n</think>\n\n{content}; earlier
 *     turns lose their reasoning. Then <|im_end|>\n.
 *   - add_generation_prompt: <|im_start|>assistant\n, plus <think>\n\n</think>\n\n when
 *     enable_thinking is false. */
#include "chat.h"

#include <stdio.h>
#include <string.h>

bool chat_has_template(const Tokenizer *t) {
    const char *tpl = t ? tokenizer_chat_template(t) : NULL;
    return tpl && strstr(tpl, "<|im_start|>") && strstr(tpl, "enable_thinking") && strstr(tpl, "reasoning_content") &&
           strstr(tpl, "last_query_index");
}

typedef struct { char *s; size_t n, cap; bool oom; } Str;

static void put(Str *b, const char *p, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *s = ds_realloc(b->s, cap);
        if (!s) { b->oom = true; return; }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void puts_(Str *b, const char *p) { put(b, p, strlen(p)); }

/* strip characters c from the left / right of [*p, *p + *n) */
static void lstrip(const char **p, size_t *n, char c) { while (*n && **p == c) { (*p)++; (*n)--; } }
static void rstrip(const char **p, size_t *n, char c) { while (*n && (*p)[*n - 1] == c) (*n)--; }

static bool starts_with(const char *s, const char *pre) { return strncmp(s, pre, strlen(pre)) == 0; }
static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* last occurrence of needle in [s, s+n) */
static const char *rfind(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, k) == 0) return s + i;
    return NULL;
}

ds_status chat_render(const Tokenizer *t, const ChatMessage *msgs, int n, bool add_generation_prompt, bool enable_thinking,
                      char **out, char *err) {
    *out = NULL;
    if (!chat_has_template(t)) return ds_err(err, DS_EUNSUPPORTED, "the tokenizer has no Qwen3 chat template");
    if (n < 1) return ds_err(err, DS_EARG, "chat: no messages");
    for (int i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) return ds_err(err, DS_EARG, "chat: message %d needs a role and a content", i);
        if (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") && strcmp(msgs[i].role, "assistant"))
            return ds_err(err, DS_EUNSUPPORTED, "chat: message %d has role '%s' (supported: system, user, assistant)", i, msgs[i].role);
    }
    Str b = {0};
    if (strcmp(msgs[0].role, "system") == 0) {
        puts_(&b, "<|im_start|>system\n");
        puts_(&b, msgs[0].content);
        puts_(&b, "<|im_end|>\n");
    }
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--)
        if (strcmp(msgs[i].role, "user") == 0 &&
            !(starts_with(msgs[i].content, "<tool_response>") && ends_with(msgs[i].content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role;
        if (strcmp(role, "user") == 0 || (strcmp(role, "system") == 0 && i > 0)) {
            puts_(&b, "<|im_start|>");
            puts_(&b, role);
            puts_(&b, "\n");
            puts_(&b, msgs[i].content);
            puts_(&b, "<|im_end|>\n");
        } else if (strcmp(role, "assistant") == 0) {
            const char *content = msgs[i].content, *reason = "";
            size_t cn = strlen(content), rn = 0;
            const char *end_think = rfind(content, cn, "</think>");
            if (strstr(content, "</think>")) {
                /* content.split('</think>')[-1].lstrip('\n') */
                const char *tail = end_think + 8;
                size_t tn = cn - (size_t)(tail - content);
                /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                const char *first_end = strstr(content, "</think>");
                size_t hn = (size_t)(first_end - content);
                const char *h = content;
                rstrip(&h, &hn, '\n');
                const char *open = rfind(h, hn, "<think>");
                if (open) { hn -= (size_t)(open + 7 - h); h = open + 7; }
                lstrip(&h, &hn, '\n');
                reason = h;
                rn = hn;
                lstrip(&tail, &tn, '\n');
                content = tail;
                cn = tn;
            }
            puts_(&b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || rn > 0)) {
                const char *r = reason;
                size_t k = rn;
                lstrip(&r, &k, '\n');
                rstrip(&r, &k, '\n');
                puts_(&b, "<think>\n");
                put(&b, r, k);
                puts_(&b, "\n</think>\n\n");
                lstrip(&content, &cn, '\n');
            }
            put(&b, content, cn);
            puts_(&b, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) {
        puts_(&b, "<|im_start|>assistant\n");
        if (!enable_thinking) puts_(&b, "<think>\n\n</think>\n\n");
    }
    if (b.oom || !b.s) { ds_free(b.s); return ds_err(err, DS_ENOMEM, "out of memory"); }
    *out = b.s;
    return DS_OK;
}
