/* safetensors.c - see safetensors.h. Format: u64 little-endian header length N, N bytes of
 * JSON {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}, then data. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static ds_status map_file(StFile *f, const char *path, char *err) {
    memset(f, 0, sizeof *f);
    f->path = ds_strdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ds_err(err, DS_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ds_err(err, DS_EIO, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) { close(fd); return ds_err(err, DS_EFORMAT, "%s: truncated (%zu bytes, no header)", path, f->size); }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) { f->map = NULL; return ds_err(err, DS_EIO, "%s: mmap failed: %s", path, strerror(errno)); }
    return DS_OK;
}

static int cmp_data(const void *a, const void *b) {
    const char *x = (*(const StTensor *const *)a)->data, *y = (*(const StTensor *const *)b)->data;
    return x < y ? -1 : x > y;
}

/* Two tensors of one file must not share bytes (the reference implementation rejects it too):
 * a writer bug that would otherwise alias two weights silently. */
static ds_status check_no_overlap(const StModel *m, int first, const char *path, char *err) {
    int n = m->n_tensors - first;
    if (n < 2) return DS_OK;
    const StTensor **by = ds_malloc(sizeof *by * (size_t)n);
    if (!by) return ds_err(err, DS_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) by[i] = &m->tensors[first + i];
    qsort(by, (size_t)n, sizeof *by, cmp_data);
    ds_status rc = DS_OK;
    const StTensor *prev = NULL;
    for (int i = 0; i < n && !rc; i++) {
        if (!by[i]->nbytes) continue;
        if (prev && (const char *)by[i]->data < (const char *)prev->data + prev->nbytes)
            rc = ds_err(err, DS_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data section", path, prev->name, by[i]->name);
        prev = by[i];
    }
    ds_free(by);
    return rc;
}

/* Parse one file's header, appending its tensors to m->tensors. f->map holds f->size >= 8
 * bytes (a mapping, or the caller's buffer for st_open_buffer). */
static ds_status parse_file(StModel *m, int fi, char *err) {
    StFile *f = &m->files[fi];
    const unsigned char *p = f->map;
    if (f->size < 8) return ds_err(err, DS_EFORMAT, "%s: truncated (%zu bytes, no header)", f->path, f->size);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > f->size - 8)
        return ds_err(err, DS_EFORMAT, "%s: header length %llu is larger than the file (%zu bytes)",
                      f->path, (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return ds_err(err, DS_EFORMAT, "%s: header length %llu exceeds 100 MB", f->path, (unsigned long long)hlen);
    json_error_t je;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) return ds_err(err, DS_EFORMAT, "%s: bad header JSON at byte %d: %s", f->path, je.position, je.text);
    if (!json_is_object(root)) { json_decref(root); return ds_err(err, DS_EFORMAT, "%s: header is not a JSON object", f->path); }
    size_t data_start = 8 + (size_t)hlen, data_size = f->size - data_start;
    size_t count = json_object_size(root);
    int first = m->n_tensors;
    StTensor *grown = ds_realloc(m->tensors, (size_t)(m->n_tensors + (int)count + 1) * sizeof(StTensor));
    if (!grown) { json_decref(root); return ds_err(err, DS_ENOMEM, "%s: out of memory", f->path); }
    m->tensors = grown;
    const char *key;
    json_t *val;
    ds_status rc = DS_OK;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        StTensor *t = &m->tensors[m->n_tensors];
        memset(t, 0, sizeof *t);
        t->file_index = fi;
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
            json_array_size(jo) != 2) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': header entry needs dtype, shape and data_offsets[2]", f->path, key);
            break;
        }
        if (!ds_dtype_from_name(json_string_value(jd), &t->dtype)) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': unsupported dtype '%s'", f->path, key, json_string_value(jd));
            break;
        }
        if (json_array_size(js) > ST_MAX_DIMS) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': %zu dims (max %d)", f->path, key, json_array_size(js), ST_MAX_DIMS);
            break;
        }
        t->n_dims = (int)json_array_size(js);
        uint64_t numel = 1;
        bool bad = false;
        for (int d = 0; d < t->n_dims; d++) {
            json_t *e = json_array_get(js, (size_t)d);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > (1LL << 40)) { bad = true; break; }
            t->shape[d] = json_integer_value(e);
            if (t->shape[d] && numel > (UINT64_MAX >> 4) / (uint64_t)t->shape[d]) { bad = true; break; }
            numel *= (uint64_t)t->shape[d];
        }
        if (bad) { rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': bad shape", f->path, key); break; }
        json_t *b0 = json_array_get(jo, 0), *b1 = json_array_get(jo, 1);
        if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) < 0 ||
            json_integer_value(b1) < json_integer_value(b0)) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': bad data_offsets", f->path, key);
            break;
        }
        uint64_t begin = (uint64_t)json_integer_value(b0), end = (uint64_t)json_integer_value(b1);
        if (end > data_size) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': data ends at byte %llu but the file holds %zu data bytes (truncated?)",
                        f->path, key, (unsigned long long)end, data_size);
            break;
        }
        if (end - begin != numel * ds_dtype_size(t->dtype)) {
            rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': %llu data bytes do not match shape and dtype (%llu expected)",
                        f->path, key, (unsigned long long)(end - begin), (unsigned long long)(numel * ds_dtype_size(t->dtype)));
            break;
        }
        t->data = (const char *)f->map + data_start + begin;
        t->nbytes = (size_t)(end - begin);
        t->name = ds_strdup(key);
        m->n_tensors++;
    }
    json_decref(root);
    if (!rc) rc = check_no_overlap(m, first, f->path, err);
    return rc;
}

/* Sort by name (st_find bisects) and reject a name that two shards both hold. */
static ds_status sort_and_check_unique(StModel *m, char *err) {
    if (m->n_tensors) qsort(m->tensors, (size_t)m->n_tensors, sizeof(StTensor), cmp_tensor);
    for (int i = 1; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i - 1].name, m->tensors[i].name) == 0)
            return ds_err(err, DS_ECKPT, "%s: tensor '%s' appears twice", m->files[m->tensors[i].file_index].path, m->tensors[i].name);
    return DS_OK;
}

static ds_status add_file(StModel *m, const char *path, char *err) {
    StFile *grown = ds_realloc(m->files, (size_t)(m->n_files + 1) * sizeof(StFile));
    if (!grown) return ds_err(err, DS_ENOMEM, "out of memory");
    m->files = grown;
    int fi = m->n_files++;
    ds_status rc = map_file(&m->files[fi], path, err);
    if (rc) return rc;
    return parse_file(m, fi, err);
}

ds_status st_open(StModel *m, const char *path, char *err) {
    memset(m, 0, sizeof *m);
    ds_status rc = DS_OK;
    char buf[4096];
    if (!ds_dir_exists(path)) {
        if (!ds_file_exists(path)) return ds_err(err, DS_EIO, "%s: no such file or directory", path);
        rc = add_file(m, path, err);
    } else if (ds_path_join(buf, sizeof buf, path, "model.safetensors") && ds_file_exists(buf)) {
        rc = add_file(m, buf, err);
    } else {
        char index_path[4096];
        if (!ds_path_join(index_path, sizeof index_path, path, "model.safetensors.index.json") || !ds_file_exists(index_path))
            return ds_err(err, DS_EIO, "%s: no model.safetensors or model.safetensors.index.json", path);
        json_error_t je;
        json_t *root = json_load_file(index_path, 0, &je);
        if (!root) return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d: %s", index_path, je.line, je.text);
        json_t *wm = json_object_get(root, "weight_map");
        if (!json_is_object(wm)) {
            json_decref(root);
            return ds_err(err, DS_EFORMAT, "%s: missing object 'weight_map'", index_path);
        }
        /* open each distinct shard once, in first-seen order */
        const char *key;
        json_t *val;
        json_object_foreach(wm, key, val) {
            if (!json_is_string(val) || strchr(json_string_value(val), '/')) {
                rc = ds_err(err, DS_EFORMAT, "%s: tensor '%s': bad shard file name", index_path, key);
                break;
            }
            bool seen = false;
            if (!ds_path_join(buf, sizeof buf, path, json_string_value(val))) { rc = ds_err(err, DS_EARG, "path too long"); break; }
            for (int i = 0; i < m->n_files; i++) if (strcmp(m->files[i].path, buf) == 0) seen = true;
            if (!seen && !ds_file_exists(buf)) {
                rc = ds_err(err, DS_EIO, "%s: tensor '%s': shard %s does not exist", index_path, key, buf);
                break;
            }
            if (!seen && (rc = add_file(m, buf, err))) break;
        }
        if (!rc && m->n_tensors) qsort(m->tensors, (size_t)m->n_tensors, sizeof(StTensor), cmp_tensor);
        /* every tensor the index names must be in the shard it names, and vice versa */
        if (!rc) json_object_foreach(wm, key, val) {
            const StTensor *t = st_find(m, key);
            ds_path_join(buf, sizeof buf, path, json_string_value(val));
            if (!t) { rc = ds_err(err, DS_ECKPT, "%s: tensor '%s' is listed in the index but missing from the shard", buf, key); break; }
            if (strcmp(m->files[t->file_index].path, buf) != 0) {
                rc = ds_err(err, DS_ECKPT, "%s: tensor '%s' is in %s, not in %s as the index says", index_path, key,
                            m->files[t->file_index].path, buf);
                break;
            }
        }
        if (!rc && (size_t)m->n_tensors != json_object_size(wm)) {
            for (int i = 0; i < m->n_tensors && !rc; i++)
                if (!json_object_get(wm, m->tensors[i].name))
                    rc = ds_err(err, DS_ECKPT, "%s: tensor '%s' is not listed in %s", m->files[m->tensors[i].file_index].path,
                                m->tensors[i].name, index_path);
        }
        json_decref(root);
    }
    if (!rc) rc = sort_and_check_unique(m, err);
    if (rc) st_close(m);
    return rc;
}

ds_status st_open_buffer(StModel *m, const void *data, size_t size, const char *name, char *err) {
    memset(m, 0, sizeof *m);
    m->files = ds_calloc(1, sizeof(StFile));
    if (!m->files) return ds_err(err, DS_ENOMEM, "%s: out of memory", name);
    m->n_files = 1;
    m->files[0].path = ds_strdup(name);
    m->files[0].map = (void *)data; /* borrowed: st_close leaves it alone (borrowed = true) */
    m->files[0].size = size;
    m->files[0].borrowed = true;
    ds_status rc = parse_file(m, 0, err);
    if (!rc) rc = sort_and_check_unique(m, err);
    if (rc) st_close(m);
    return rc;
}

void st_close(StModel *m) {
    for (int i = 0; i < m->n_tensors; i++) ds_free(m->tensors[i].name);
    ds_free(m->tensors);
    for (int i = 0; i < m->n_files; i++) {
        if (m->files[i].map && !m->files[i].borrowed) munmap(m->files[i].map, m->files[i].size);
        ds_free(m->files[i].path);
    }
    ds_free(m->files);
    memset(m, 0, sizeof *m);
}

const StTensor *st_find(const StModel *m, const char *name) {
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(m->tensors[mid].name, name);
        if (c == 0) return &m->tensors[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const char *st_file_of(const StModel *m, const StTensor *t) { return m->files[t->file_index].path; }

static void shape_str(char *buf, size_t cap, int n, const int64_t *s) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < n && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, i ? ",%lld" : "%lld", (long long)s[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

ds_status st_take(StModel *m, const char *name, int n_dims, const int64_t *shape, const StTensor **out, char *err) {
    const StTensor *t = st_find(m, name);
    const char *where = m->n_files == 1 ? m->files[0].path : "checkpoint";
    if (!t) return ds_err(err, DS_ECKPT, "%s: missing tensor '%s'", where, name);
    StTensor *mt = (StTensor *)t;
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[128], want[128];
        shape_str(got, sizeof got, t->n_dims, t->shape);
        shape_str(want, sizeof want, n_dims, shape);
        return ds_err(err, DS_ECKPT, "%s: tensor '%s' has shape %s, expected %s", st_file_of(m, t), name, got, want);
    }
    if (t->dtype != DS_F32 && t->dtype != DS_BF16 && t->dtype != DS_F16)
        return ds_err(err, DS_ECKPT, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16", st_file_of(m, t), name,
                      ds_dtype_name(t->dtype));
    /* the kernels read the data as float / uint16_t arrays: a misaligned offset would be UB */
    if ((uintptr_t)t->data % ds_dtype_size(t->dtype))
        return ds_err(err, DS_ECKPT, "%s: tensor '%s' data is not aligned to %zu bytes", st_file_of(m, t), name,
                      ds_dtype_size(t->dtype));
    mt->taken = true;
    if (out) *out = t;
    return DS_OK;
}

ds_status st_check_all_taken(const StModel *m, char *err) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].taken)
            return ds_err(err, DS_ECKPT, "%s: unexpected tensor '%s'", st_file_of(m, &m->tensors[i]), m->tensors[i].name);
    return DS_OK;
}

ds_status st_write(const char *path, const StWriteTensor *tensors, int n, const char *metadata_json, char *err) {
    json_t *root = json_object();
    json_error_t je;
    json_t *meta = json_loads(metadata_json ? metadata_json : "{\"format\":\"pt\"}", 0, &je);
    if (!meta) { json_decref(root); return ds_err(err, DS_EARG, "st_write: bad metadata JSON: %s", je.text); }
    json_object_set_new(root, "__metadata__", meta);
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        const StWriteTensor *t = &tensors[i];
        size_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < t->n_dims; d++) { numel *= (size_t)t->shape[d]; json_array_append_new(shape, json_integer(t->shape[d])); }
        size_t nb = numel * ds_dtype_size(t->dtype);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(ds_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)offset));
        json_array_append_new(offs, json_integer((json_int_t)(offset + nb)));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(root, t->name, e);
        offset += nb;
    }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!hdr) return ds_err(err, DS_ENOMEM, "st_write: out of memory");
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7; /* align data to 8 bytes */
    size_t total = 8 + padded + offset;
    unsigned char *buf = ds_malloc(total);
    if (!buf) { free(hdr); return ds_err(err, DS_ENOMEM, "st_write: out of memory (%zu bytes)", total); }
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, hdr, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    free(hdr);
    size_t o = 8 + padded;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].n_dims; d++) numel *= (size_t)tensors[i].shape[d];
        size_t nb = numel * ds_dtype_size(tensors[i].dtype);
        if (nb) memcpy(buf + o, tensors[i].data, nb);
        o += nb;
    }
    ds_status rc = ds_write_file_atomic(path, buf, total, err);
    ds_free(buf);
    return rc;
}
