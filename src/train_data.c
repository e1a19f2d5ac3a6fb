/* train_data.c - DATA.jsonl reading, writing and resuming (see train_data.h). */
#include "train_data.h"
#include "train_ckpt.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

void train_data_free(TrainData *d) {
    for (int64_t i = 0; i < d->n; i++) { ds_free(d->ids[i]); ds_free(d->mask[i]); }
    ds_free(d->ids);
    ds_free(d->mask);
    ds_free(d->len);
    ds_free(d->line_id);
    memset(d, 0, sizeof *d);
}

ds_status train_data_load(TrainData *d, const char *path, int vocab, int max_len, int min_loss_tokens, char *err) {
    memset(d, 0, sizeof *d);
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    d->hash = ckpt_hash_bytes(CKPT_HASH_INIT, text, len);
    int64_t cap = 0, line_no = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        char *s = line;
        while (*s == ' ' || *s == '\t' || *s == '\r') s++;
        if (!*s) continue;
        json_error_t je;
        json_t *row = json_loads(s, 0, &je);
        json_t *ids = json_object_get(row, "input_ids"), *mask = json_object_get(row, "loss_mask"), *id = json_object_get(row, "id");
        size_t n = json_array_size(ids);
        if (!json_is_array(ids) || !json_is_array(mask) || json_array_size(mask) != n || n == 0) {
            rc = ds_err(err, DS_EFORMAT, "%s:%lld: needs \"input_ids\" and \"loss_mask\" lists of one non-zero length%s%s", path,
                        (long long)line_no, row ? "" : ": ", row ? "" : je.text);
            json_decref(row);
            break;
        }
        if (max_len > 0 && n > (size_t)max_len) n = (size_t)max_len;
        int32_t *a = ds_malloc(sizeof *a * n);
        uint8_t *m = ds_malloc(n);
        int n_loss = 0;
        for (size_t i = 0; i < n && !rc; i++) {
            json_t *v = json_array_get(ids, i), *w = json_array_get(mask, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
                rc = ds_err(err, DS_EFORMAT, "%s:%lld: input_ids[%zu] is not a token id in [0, %d)", path, (long long)line_no, i, vocab);
            else if (!json_is_integer(w) || (json_integer_value(w) != 0 && json_integer_value(w) != 1))
                rc = ds_err(err, DS_EFORMAT, "%s:%lld: loss_mask[%zu] is not 0 or 1", path, (long long)line_no, i);
            else { a[i] = (int32_t)json_integer_value(v); m[i] = (uint8_t)json_integer_value(w); n_loss += m[i]; }
        }
        if (rc || n_loss < min_loss_tokens) {
            ds_free(a);
            ds_free(m);
            json_decref(row);
            if (rc) break;
            d->dropped++;
            continue;
        }
        if (d->n == cap) {
            cap = cap ? cap * 2 : 256;
            d->ids = ds_realloc(d->ids, sizeof *d->ids * (size_t)cap);
            d->mask = ds_realloc(d->mask, sizeof *d->mask * (size_t)cap);
            d->len = ds_realloc(d->len, sizeof *d->len * (size_t)cap);
            d->line_id = ds_realloc(d->line_id, sizeof *d->line_id * (size_t)cap);
        }
        d->ids[d->n] = a;
        d->mask[d->n] = m;
        d->len[d->n] = (int)n;
        d->line_id[d->n] = json_is_integer(id) ? json_integer_value(id) : line_no - 1;
        d->n++;
        d->tokens += (int64_t)n;
        d->loss_tokens += n_loss;
        if ((int)n > d->max_len) d->max_len = (int)n;
        json_decref(row);
    }
    ds_free(text);
    if (rc) train_data_free(d);
    else if (d->n == 0) rc = ds_err(err, DS_EFORMAT, "%s: no sample with at least %d loss tokens (%lld dropped)", path, min_loss_tokens,
                                    (long long)d->dropped);
    return rc;
}

ds_status train_data_write_line(FILE *f, const char *path, int64_t id, const int32_t *ids, const uint8_t *mask, int n, char *err) {
    size_t cap = 64 + (size_t)n * 14, k = 0;
    char *buf = ds_malloc(cap);
    if (!buf) return ds_err(err, DS_ENOMEM, "out of memory");
    k += (size_t)snprintf(buf + k, cap - k, "{\"id\": %lld, \"input_ids\": [", (long long)id);
    for (int i = 0; i < n; i++) k += (size_t)snprintf(buf + k, cap - k, i ? ", %d" : "%d", ids[i]);
    k += (size_t)snprintf(buf + k, cap - k, "], \"loss_mask\": [");
    for (int i = 0; i < n; i++) k += (size_t)snprintf(buf + k, cap - k, i ? ", %d" : "%d", mask[i]);
    k += (size_t)snprintf(buf + k, cap - k, "]}\n");
    bool ok = fwrite(buf, 1, k, f) == k && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ds_free(buf);
    return ok ? DS_OK : ds_err(err, DS_EIO, "%s: write failed: %s", path, strerror(errno));
}

ds_status train_data_resume(const char *path, int64_t *next_id, char *err) {
    *next_id = 0;
    if (!ds_file_exists(path)) return DS_OK;
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    size_t keep = len;
    while (keep > 0 && text[keep - 1] != '\n') keep--; /* a partial last line: the crash cut it */
    int64_t expect = 0;
    for (size_t pos = 0; pos < keep;) {
        char *nl = memchr(text + pos, '\n', keep - pos);
        long long id;
        if (sscanf(text + pos, "{\"id\": %lld", &id) != 1 || id != expect) {
            rc = ds_err(err, DS_EFORMAT, "%s: line %lld has id %s, expected %lld: not a gen-data file written in order", path,
                        (long long)expect + 1, sscanf(text + pos, "{\"id\": %lld", &id) == 1 ? "out of order" : "missing",
                        (long long)expect);
            break;
        }
        expect++;
        pos = (size_t)(nl - text) + 1;
    }
    ds_free(text);
    if (rc) return rc;
    if (keep < len && truncate(path, (off_t)keep) != 0) return ds_err(err, DS_EIO, "%s: cannot truncate: %s", path, strerror(errno));
    *next_id = expect;
    return DS_OK;
}

const char *train_data_row_prompt(json_t *row, const char *path, int64_t line_no, char *err) {
    json_t *t = json_object_get(row, "turns"), *p = json_object_get(row, "prompt"), *c = json_object_get(row, "conversations");
    if (json_is_array(t) && json_is_string(json_array_get(t, 0))) return json_string_value(json_array_get(t, 0));
    if (json_is_string(p)) return json_string_value(p);
    if (json_is_array(c)) {
        size_t i;
        json_t *m;
        json_array_foreach(c, i, m) {
            const char *role = json_string_value(json_object_get(m, "role"));
            if (!role) role = json_string_value(json_object_get(m, "from"));
            json_t *content = json_object_get(m, "content");
            if (!content) content = json_object_get(m, "value");
            if (role && (strcmp(role, "user") == 0 || strcmp(role, "human") == 0) && json_is_string(content)) return json_string_value(content);
        }
    }
    ds_err(err, DS_EFORMAT, "%s:%lld: needs \"turns\" (list of strings), \"prompt\" (string) or \"conversations\" with a user message", path,
           (long long)line_no);
    return NULL;
}
