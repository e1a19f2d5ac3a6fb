/* train_ckpt.c - atomic, verified training checkpoints (see train_ckpt.h). */
#include "train_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const CKPT_FILES[] = {"config.json", "model.safetensors", "master.safetensors", "exp_avg.safetensors",
                                         "exp_avg_sq.safetensors", "train_state.json"};
#define N_CKPT_FILES (int)(sizeof CKPT_FILES / sizeof CKPT_FILES[0])

uint64_t ckpt_hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8); /* little-endian hosts only (x86-64, aarch64) */
        h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Hash a file; its size into *size. Reads in 4 MiB chunks (a multiple of 8, so the word
 * boundaries are those of the whole file). */
static ds_status hash_file(const char *path, uint64_t *hash, int64_t *size, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ds_err(err, DS_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4u << 20;
    unsigned char *buf = ds_malloc(cap);
    if (!buf) { fclose(f); return ds_err(err, DS_ENOMEM, "out of memory"); }
    uint64_t h = CKPT_HASH_INIT;
    int64_t total = 0;
    size_t n;
    while ((n = fread(buf, 1, cap, f)) > 0) { h = ckpt_hash_bytes(h, buf, n); total += (int64_t)n; }
    bool bad = ferror(f);
    fclose(f);
    ds_free(buf);
    if (bad) return ds_err(err, DS_EIO, "%s: read error", path);
    *hash = h;
    *size = total;
    return DS_OK;
}

static ds_status fsync_path(const char *path, char *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ds_err(err, DS_EIO, "%s: cannot open: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? DS_OK : ds_err(err, DS_EIO, "%s: fsync failed: %s", path, strerror(errno));
}

/* Remove a directory of plain files (our step directories have no subdirectories). */
static void remove_flat_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (ds_path_join(p, sizeof p, path, e->d_name)) unlink(p);
    }
    closedir(d);
    rmdir(path);
}

static ds_status write_json(const char *path, json_t *o, char *err) {
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) return ds_err(err, DS_ENOMEM, "out of memory");
    size_t n = strlen(text);
    ds_status s = ds_write_file_atomic(path, text, n, err);
    free(text);
    return s;
}

static int cmp_i64_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* step numbers of DIR/step_N directories, newest first; *n_out entries (ds_free the array) */
static int64_t *list_steps(const char *dir, int *n_out) {
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    int cap = 16, n = 0;
    int64_t *steps = ds_malloc(sizeof *steps * (size_t)cap);
    struct dirent *e;
    while ((e = readdir(d))) {
        long long v;
        int used = 0;
        if (sscanf(e->d_name, "step_%lld%n", &v, &used) != 1 || e->d_name[used] != 0 || v < 0) continue;
        char p[4096];
        if (!ds_path_join(p, sizeof p, dir, e->d_name) || !ds_dir_exists(p)) continue;
        if (n == cap) steps = ds_realloc(steps, sizeof *steps * (size_t)(cap *= 2));
        steps[n++] = v;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_i64_desc);
    *n_out = n;
    return steps;
}

static char *hex64(char *buf, uint64_t v) { snprintf(buf, 17, "%016" PRIx64, v); return buf; }
static bool parse_hex64(json_t *v, uint64_t *out) {
    if (!json_is_string(v)) return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(json_string_value(v), &end, 16);
    if (errno || *end || end == json_string_value(v)) return false;
    *out = x;
    return true;
}

ds_status ckpt_save(const char *dir, const TrainState *st, const ParamSet *params, const AdamW *opt,
                    CkptConfigWriter write_config, void *config_ctx, int keep_last, char *err) {
    char tmp[4096], final[4096], name[64], p[4096], hx[17];
    ds_status s = ds_mkdirs(dir, err);
    if (s) return s;
    snprintf(name, sizeof name, ".tmp-step_%lld", (long long)st->step);
    if (!ds_path_join(tmp, sizeof tmp, dir, name)) return ds_err(err, DS_EARG, "%s: path too long", dir);
    snprintf(name, sizeof name, "step_%lld", (long long)st->step);
    ds_path_join(final, sizeof final, dir, name);
    remove_flat_dir(tmp); /* a previous save that died half way */
    if (mkdir(tmp, 0755) != 0) return ds_err(err, DS_EIO, "%s: cannot create directory: %s", tmp, strerror(errno));
    bool has_config = write_config != NULL;
    json_t *state = NULL, *manifest = NULL;
    if (has_config && (ds_path_join(p, sizeof p, tmp, "config.json"), (s = write_config(config_ctx, p, err)))) goto fail;
    ds_path_join(p, sizeof p, tmp, "model.safetensors");
    if ((s = params_save(params, p, DS_BF16, false, "{\"format\": \"pt\"}", err))) goto fail;
    ds_path_join(p, sizeof p, tmp, "master.safetensors");
    if ((s = params_save(params, p, DS_F32, true, NULL, err))) goto fail;
    ds_path_join(p, sizeof p, tmp, "exp_avg.safetensors");
    if ((s = params_save(&opt->m, p, DS_F32, false, NULL, err))) goto fail;
    ds_path_join(p, sizeof p, tmp, "exp_avg_sq.safetensors");
    if ((s = params_save(&opt->v, p, DS_F32, false, NULL, err))) goto fail;
    state = json_object();
    json_object_set_new(state, "step", json_integer(st->step));
    json_object_set_new(state, "samples", json_integer(st->samples));
    json_object_set_new(state, "rng", json_string(hex64(hx, st->rng)));
    json_object_set_new(state, "config_hash", json_string(hex64(hx, st->config_hash)));
    json_object_set_new(state, "adam_step", json_integer(opt->t));
    if (st->extra) json_object_set(state, "extra", st->extra);
    ds_path_join(p, sizeof p, tmp, "train_state.json");
    if ((s = write_json(p, state, err))) goto fail;
    manifest = json_object();
    json_t *files = json_object();
    json_object_set_new(manifest, "format", json_string("dspark-train-ckpt-1"));
    json_object_set_new(manifest, "checksum", json_string("fnv1a64-words"));
    json_object_set_new(manifest, "files", files);
    for (int i = has_config ? 0 : 1; i < N_CKPT_FILES; i++) {
        uint64_t h;
        int64_t size;
        ds_path_join(p, sizeof p, tmp, CKPT_FILES[i]);
        if ((s = hash_file(p, &h, &size, err))) goto fail;
        json_t *o = json_object();
        json_object_set_new(o, "bytes", json_integer(size));
        json_object_set_new(o, "fnv1a64", json_string(hex64(hx, h)));
        json_object_set_new(files, CKPT_FILES[i], o);
    }
    ds_path_join(p, sizeof p, tmp, "manifest.json");
    if ((s = write_json(p, manifest, err)) || (s = fsync_path(tmp, err))) goto fail;
    remove_flat_dir(final); /* re-saving a step (a resumed run that saves the same step again) */
    if (rename(tmp, final) != 0) { s = ds_err(err, DS_EIO, "%s: rename failed: %s", final, strerror(errno)); goto fail; }
    if ((s = fsync_path(dir, err))) goto done;
    ds_path_join(p, sizeof p, dir, "latest");
    snprintf(name, sizeof name, "step_%lld\n", (long long)st->step);
    if ((s = ds_write_file_atomic(p, name, strlen(name), err))) goto done;
    {   /* temporary directories of saves that died (another step's) */
        DIR *dd = opendir(dir);
        struct dirent *e;
        while (dd && (e = readdir(dd)))
            if (strncmp(e->d_name, ".tmp-step_", 10) == 0 && ds_path_join(p, sizeof p, dir, e->d_name)) remove_flat_dir(p);
        if (dd) closedir(dd);
    }
    if (keep_last > 0) {
        int n;
        int64_t *steps = list_steps(dir, &n);
        for (int i = keep_last; i < n; i++) {
            if (steps[i] == st->step) continue;
            snprintf(name, sizeof name, "step_%lld", (long long)steps[i]);
            ds_path_join(p, sizeof p, dir, name);
            remove_flat_dir(p);
        }
        ds_free(steps);
    }
    goto done;
fail:
    remove_flat_dir(tmp);
done:
    json_decref(state);
    json_decref(manifest);
    return s;
}

ds_status ckpt_verify(const char *step_dir, char *err) {
    char p[4096];
    ds_path_join(p, sizeof p, step_dir, "manifest.json");
    json_error_t je;
    json_t *m = json_load_file(p, 0, &je);
    if (!m) return ds_err(err, DS_EFORMAT, "%s: missing or unreadable manifest (%s)", step_dir, je.text);
    ds_status s = DS_OK;
    json_t *files = json_object_get(m, "files");
    if (!json_is_object(files) || !json_object_get(files, "master.safetensors") || !json_object_get(files, "train_state.json")) {
        s = ds_err(err, DS_EFORMAT, "%s: manifest lists no checkpoint files", step_dir);
        goto done;
    }
    const char *key;
    json_t *o;
    json_object_foreach(files, key, o) {
        uint64_t want_h, h;
        int64_t size;
        json_t *b = json_object_get(o, "bytes");
        if (!json_is_integer(b) || !parse_hex64(json_object_get(o, "fnv1a64"), &want_h) || strchr(key, '/')) {
            s = ds_err(err, DS_EFORMAT, "%s: manifest entry '%s' is malformed", step_dir, key);
            break;
        }
        ds_path_join(p, sizeof p, step_dir, key);
        if ((s = hash_file(p, &h, &size, err))) break;
        if (size != json_integer_value(b)) {
            s = ds_err(err, DS_EFORMAT, "%s: %s has %lld bytes, the manifest says %lld (truncated?)", step_dir, key, (long long)size,
                       (long long)json_integer_value(b));
            break;
        }
        if (h != want_h) { s = ds_err(err, DS_EFORMAT, "%s: %s checksum mismatch (corrupt)", step_dir, key); break; }
    }
done:
    json_decref(m);
    return s;
}

ds_status ckpt_find(const char *dir, char *step_dir, size_t cap, char *warn, char *err) {
    warn[0] = 0;
    char p[4096], name[256] = "", why[DS_ERR_LEN];
    ds_path_join(p, sizeof p, dir, "latest");
    FILE *f = fopen(p, "r");
    if (f) {
        if (!fgets(name, sizeof name, f)) name[0] = 0;
        fclose(f);
        name[strcspn(name, "\r\n")] = 0;
        if (name[0] && !strchr(name, '/') && ds_path_join(p, sizeof p, dir, name) && ckpt_verify(p, why) == DS_OK) {
            if (!ds_path_join(step_dir, cap, dir, name)) return ds_err(err, DS_EARG, "%s: path too long", dir);
            return DS_OK;
        }
        if (name[0]) snprintf(warn, DS_ERR_LEN, "%s", ds_dir_exists(p) ? why : "latest names a missing checkpoint");
    }
    int n;
    int64_t *steps = list_steps(dir, &n);
    ds_status s = ds_err(err, DS_EIO, "%s: no valid checkpoint%s%s", dir, warn[0] ? ": " : "", warn);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "step_%lld", (long long)steps[i]);
        ds_path_join(p, sizeof p, dir, name);
        if (ckpt_verify(p, why) == DS_OK) {
            s = ds_path_join(step_dir, cap, dir, name) ? DS_OK : ds_err(err, DS_EARG, "%s: path too long", dir);
            break;
        }
        if (!warn[0]) snprintf(warn, DS_ERR_LEN, "%s", why);
    }
    ds_free(steps);
    return s;
}

ds_status ckpt_load(const char *step_dir, TrainState *st, ParamSet *params, AdamW *opt, char *err) {
    char p[4096];
    memset(st, 0, sizeof *st);
    ds_path_join(p, sizeof p, step_dir, "master.safetensors");
    ds_status s = params_load(params, p, true, err);
    if (s) return s;
    ds_path_join(p, sizeof p, step_dir, "exp_avg.safetensors");
    if ((s = params_load(&opt->m, p, false, err))) return s;
    ds_path_join(p, sizeof p, step_dir, "exp_avg_sq.safetensors");
    if ((s = params_load(&opt->v, p, false, err))) return s;
    ds_path_join(p, sizeof p, step_dir, "train_state.json");
    json_error_t je;
    json_t *o = json_load_file(p, 0, &je);
    if (!o) return ds_err(err, DS_EFORMAT, "%s: bad JSON: %s", p, je.text);
    json_t *step = json_object_get(o, "step"), *samples = json_object_get(o, "samples"), *t = json_object_get(o, "adam_step");
    if (!json_is_integer(step) || !json_is_integer(samples) || !json_is_integer(t) || !parse_hex64(json_object_get(o, "rng"), &st->rng) ||
        !parse_hex64(json_object_get(o, "config_hash"), &st->config_hash)) {
        json_decref(o);
        return ds_err(err, DS_EFORMAT, "%s: needs step, samples, adam_step, rng and config_hash", p);
    }
    st->step = json_integer_value(step);
    st->samples = json_integer_value(samples);
    opt->t = json_integer_value(t);
    st->extra = json_incref(json_object_get(o, "extra"));
    json_decref(o);
    return DS_OK;
}
