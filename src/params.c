/* params.c - named F32 tensor sets (see params.h). */
#include "params.h"
#include "safetensors.h"

#include <stdio.h>
#include <string.h>

#define PARAM_ALIGN 16 /* floats: 64 bytes, so every tensor starts on a cache line */

ds_status params_add(ParamSet *p, const char *name, int n_dims, const int64_t *shape, bool trainable, char *err) {
    if (p->data) return ds_err(err, DS_EARG, "params: cannot add '%s' after params_alloc", name);
    if (strlen(name) >= PARAM_NAME_LEN) return ds_err(err, DS_EARG, "params: name too long: %.40s...", name);
    if (n_dims < 0 || n_dims > PARAM_MAX_DIMS) return ds_err(err, DS_EARG, "params: '%s' has %d dims", name, n_dims);
    if (params_find(p, name)) return ds_err(err, DS_EARG, "params: duplicate tensor '%s'", name);
    size_t numel = 1;
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] <= 0) return ds_err(err, DS_EARG, "params: '%s' has a non-positive dimension", name);
        numel *= (size_t)shape[i];
    }
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 32;
        ParamInfo *info = ds_realloc(p->info, (size_t)cap * sizeof *info);
        if (!info) return ds_err(err, DS_ENOMEM, "params: out of memory");
        p->info = info;
        p->cap = cap;
    }
    ParamInfo *t = &p->info[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->numel = numel;
    t->offset = p->numel;
    t->trainable = trainable;
    p->numel += (numel + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    return DS_OK;
}

ds_status params_alloc(ParamSet *p, char *err) {
    if (p->data) return ds_err(err, DS_EARG, "params: already allocated");
    p->data = ds_malloc_aligned((p->numel ? p->numel : 1) * sizeof(float));
    if (!p->data) return ds_err(err, DS_ENOMEM, "params: out of memory for %zu floats", p->numel);
    memset(p->data, 0, (p->numel ? p->numel : 1) * sizeof(float));
    return DS_OK;
}

ds_status params_like(ParamSet *dst, const ParamSet *src, char *err) {
    memset(dst, 0, sizeof *dst);
    for (int i = 0; i < src->n; i++) {
        const ParamInfo *t = &src->info[i];
        if (params_add(dst, t->name, t->n_dims, t->shape, t->trainable, err)) { params_free(dst); return DS_EARG; }
    }
    if (params_alloc(dst, err)) { params_free(dst); return DS_ENOMEM; }
    return DS_OK;
}

void params_free(ParamSet *p) {
    ds_free(p->info);
    if (p->data) ds_free_aligned(p->data);
    memset(p, 0, sizeof *p);
}

void params_zero(ParamSet *p) {
    if (p->data) memset(p->data, 0, p->numel * sizeof(float));
}

const ParamInfo *params_find(const ParamSet *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->info[i].name, name) == 0) return &p->info[i];
    return NULL;
}

float *params_get(const ParamSet *p, const char *name) {
    const ParamInfo *t = params_find(p, name);
    return t && p->data ? p->data + t->offset : NULL;
}

ds_status params_load(ParamSet *p, const char *path, bool skip_frozen, char *err) {
    if (!p->data) return ds_err(err, DS_EARG, "params: load before params_alloc");
    StModel st;
    ds_status s = st_open(&st, path, err);
    if (s) return s;
    for (int i = 0; i < p->n && !s; i++) {
        const ParamInfo *t = &p->info[i];
        const StTensor *x = st_find(&st, t->name);
        if (!x) {
            if (skip_frozen && !t->trainable) continue;
            s = ds_err(err, DS_ECKPT, "%s: missing tensor '%s'", path, t->name);
            break;
        }
        bool same = x->n_dims == t->n_dims;
        for (int d = 0; same && d < t->n_dims; d++) same = x->shape[d] == t->shape[d];
        if (!same) { s = ds_err(err, DS_ECKPT, "%s: tensor '%s' has the wrong shape", st_file_of(&st, x), t->name); break; }
        float *dst = p->data + t->offset;
        if (x->dtype == DS_F32) memcpy(dst, x->data, t->numel * sizeof(float));
        else if (x->dtype == DS_BF16) { const uint16_t *h = x->data; for (size_t j = 0; j < t->numel; j++) dst[j] = ds_bf16_to_f32(h[j]); }
        else if (x->dtype == DS_F16) { const uint16_t *h = x->data; for (size_t j = 0; j < t->numel; j++) dst[j] = ds_f16_to_f32(h[j]); }
        else s = ds_err(err, DS_ECKPT, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16", st_file_of(&st, x), t->name, ds_dtype_name(x->dtype));
    }
    st_close(&st);
    return s;
}

ds_status params_save(const ParamSet *p, const char *path, ds_dtype dtype, bool trainable_only,
                      const char *metadata_json, char *err) {
    if (dtype != DS_F32 && dtype != DS_BF16) return ds_err(err, DS_EARG, "params: save dtype must be F32 or BF16");
    if (!p->data) return ds_err(err, DS_EARG, "params: save before params_alloc");
    StWriteTensor *w = ds_calloc((size_t)(p->n ? p->n : 1), sizeof *w);
    uint16_t *half = NULL;
    if (!w) return ds_err(err, DS_ENOMEM, "params: out of memory");
    if (dtype == DS_BF16) {
        half = ds_malloc((p->numel ? p->numel : 1) * sizeof *half);
        if (!half) { ds_free(w); return ds_err(err, DS_ENOMEM, "params: out of memory"); }
        for (size_t j = 0; j < p->numel; j++) half[j] = ds_f32_to_bf16(p->data[j]);
    }
    int n = 0;
    for (int i = 0; i < p->n; i++) {
        const ParamInfo *t = &p->info[i];
        if (trainable_only && !t->trainable) continue;
        w[n].name = t->name;
        w[n].dtype = dtype;
        w[n].n_dims = t->n_dims;
        for (int d = 0; d < t->n_dims; d++) w[n].shape[d] = t->shape[d];
        w[n].data = dtype == DS_BF16 ? (const void *)(half + t->offset) : (const void *)(p->data + t->offset);
        n++;
    }
    ds_status s = st_write(path, w, n, metadata_json, err);
    ds_free(half);
    ds_free(w);
    return s;
}
