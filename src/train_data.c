/* train_data.c - DATA.jsonl reading, writing and resuming (see train_data.h). */
#include "train_data.h"
#include "train_ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

void train_data_free(TrainData *d) {
    ds_free(d->offset);
    ds_free(d->line_len);
    ds_free(d->len);
    ds_free(d->line_id);
    if (d->map && d->map_len) munmap((void *)d->map, d->map_len);
    memset(d, 0, sizeof *d);
}

/* Parse one line into ids/mask (cap entries, truncated beyond). *n_full = its length before
 * truncation capped at cap, *n_loss = masked tokens kept, *id = its "id" (or -1). */
static ds_status parse_line(const char *line, size_t len, const char *path, int64_t line_no, int vocab, int cap, int32_t *ids,
                            uint8_t *mask, int *n_out, int *n_loss, int64_t *id, char *err) {
    json_error_t je;
    json_t *row = json_loadb(line, len, 0, &je);
    json_t *a = json_object_get(row, "input_ids"), *m = json_object_get(row, "loss_mask"), *jid = json_object_get(row, "id");
    size_t n = json_array_size(a);
    ds_status rc = DS_OK;
    if (!json_is_array(a) || !json_is_array(m) || json_array_size(m) != n || n == 0) {
        rc = ds_err(err, DS_EFORMAT, "%s:%lld: needs \"input_ids\" and \"loss_mask\" lists of one non-zero length%s%s", path,
                    (long long)line_no, row ? "" : ": ", row ? "" : je.text);
        json_decref(row);
        return rc;
    }
    if (cap > 0 && n > (size_t)cap) n = (size_t)cap;
    int loss = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *v = json_array_get(a, i), *w = json_array_get(m, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
            rc = ds_err(err, DS_EFORMAT, "%s:%lld: input_ids[%zu] is not a token id in [0, %d)", path, (long long)line_no, i, vocab);
        else if (!json_is_integer(w) || (json_integer_value(w) != 0 && json_integer_value(w) != 1))
            rc = ds_err(err, DS_EFORMAT, "%s:%lld: loss_mask[%zu] is not 0 or 1", path, (long long)line_no, i);
        else {
            if (ids) ids[i] = (int32_t)json_integer_value(v);
            if (mask) mask[i] = (uint8_t)json_integer_value(w);
            loss += json_integer_value(w) != 0;
        }
    }
    *n_out = (int)n;
    *n_loss = loss;
    *id = json_is_integer(jid) ? json_integer_value(jid) : -1;
    json_decref(row);
    return rc;
}

ds_status train_data_load(TrainData *d, const char *path, int vocab, int max_len, int min_loss_tokens, char *err) {
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", path);
    d->vocab = vocab;
    d->max_len_cap = max_len;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ds_err(err, DS_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return ds_err(err, DS_EIO, "%s: cannot stat", path); }
    d->map_len = (size_t)st.st_size;
    if (d->map_len) {
        void *p = mmap(NULL, d->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { close(fd); d->map_len = 0; return ds_err(err, DS_EIO, "%s: cannot map: %s", path, strerror(errno)); }
        d->map = p;
        madvise(p, d->map_len, MADV_SEQUENTIAL);
    }
    close(fd);
    d->hash = ckpt_hash_bytes(CKPT_HASH_INIT, d->map, d->map_len);
    ds_status rc = DS_OK;
    int64_t cap = 0, line_no = 0;
    for (size_t pos = 0; pos < d->map_len && !rc;) {
        const char *line = d->map + pos, *nl = memchr(line, '\n', d->map_len - pos);
        size_t len = nl ? (size_t)(nl - line) : d->map_len - pos;
        int64_t off = (int64_t)pos;
        pos += len + 1;
        line_no++;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == len) continue;
        if (len > INT32_MAX) { rc = ds_err(err, DS_EFORMAT, "%s:%lld: line too long", path, (long long)line_no); break; }
        int n, n_loss;
        int64_t id;
        if ((rc = parse_line(line, len, path, line_no, vocab, max_len, NULL, NULL, &n, &n_loss, &id, err))) break;
        if (n_loss < min_loss_tokens) { d->dropped++; continue; }
        if (d->n == cap) {
            cap = cap ? cap * 2 : 1024;
            d->offset = ds_realloc(d->offset, sizeof *d->offset * (size_t)cap);
            d->line_len = ds_realloc(d->line_len, sizeof *d->line_len * (size_t)cap);
            d->len = ds_realloc(d->len, sizeof *d->len * (size_t)cap);
            d->line_id = ds_realloc(d->line_id, sizeof *d->line_id * (size_t)cap);
        }
        d->offset[d->n] = off;
        d->line_len[d->n] = (int32_t)len;
        d->len[d->n] = n;
        d->line_id[d->n] = id >= 0 ? id : line_no - 1;
        d->n++;
        d->tokens += n;
        d->loss_tokens += n_loss;
        if (n > d->max_len) d->max_len = n;
    }
    if (!rc && d->map) madvise((void *)d->map, d->map_len, MADV_RANDOM); /* training reads samples in shuffled order */
    if (rc) train_data_free(d);
    else if (d->n == 0) {
        rc = ds_err(err, DS_EFORMAT, "%s: no sample with at least %d loss tokens (%lld dropped)", path, min_loss_tokens, (long long)d->dropped);
        train_data_free(d);
    }
    return rc;
}

ds_status train_data_sample(const TrainData *d, int64_t i, int32_t *ids, uint8_t *mask, int *n, char *err) {
    if (i < 0 || i >= d->n) return ds_err(err, DS_EARG, "%s: sample %lld out of range", d->path, (long long)i);
    int n_loss;
    int64_t id;
    ds_status rc = parse_line(d->map + d->offset[i], (size_t)d->line_len[i], d->path, -1, d->vocab, d->max_len_cap, ids, mask, n, &n_loss,
                              &id, err);
    if (!rc && *n != d->len[i]) rc = ds_err(err, DS_EFORMAT, "%s: sample %lld changed since it was indexed", d->path, (long long)i);
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
