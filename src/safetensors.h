/* safetensors.h - memory-mapped safetensors files and Hugging Face checkpoint directories.
 *
 * Reads model.safetensors, or model-0000N-of-0000M.safetensors shards listed by
 * model.safetensors.index.json. Tensors are never copied: StTensor.data points into the map.
 * Every inconsistency (bad header, offsets past the end, overlapping data, a tensor listed in
 * the index but absent from its shard) is a one-line error naming the file and the tensor.
 * Model loaders call st_take() for each expected tensor and st_check_all_taken() at the end,
 * so a missing or an extra tensor is reported by name. */
#ifndef DSPARK_SAFETENSORS_H
#define DSPARK_SAFETENSORS_H

#include "base.h"

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    ds_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* into the mmap */
    size_t nbytes;
    int file_index;     /* which StFile holds it */
    bool taken;         /* claimed by a loader (extra-tensor check) */
} StTensor;

typedef struct {
    char *path;
    void *map;
    size_t size;
    bool borrowed;      /* map is the caller's buffer (st_open_buffer), not an mmap */
} StFile;

typedef struct {
    StFile *files;
    int n_files;
    StTensor *tensors;  /* sorted by name */
    int n_tensors;
} StModel;

/* path: a .safetensors file, or a directory holding model.safetensors or an index + shards. */
ds_status st_open(StModel *m, const char *path, char *err);
/* Parse one safetensors file held in memory (data, size stay the caller's and must outlive m;
 * `name` is used in error messages). Same checks as st_open; the fuzz harness's entry. */
ds_status st_open_buffer(StModel *m, const void *data, size_t size, const char *name, char *err);
void st_close(StModel *m);

const StTensor *st_find(const StModel *m, const char *name);
const char *st_file_of(const StModel *m, const StTensor *t);

/* Claim tensor `name` with the expected shape (n_dims entries). Allowed dtypes: F32/BF16/F16
 * when float_only, else any. Errors name the file and the tensor. */
ds_status st_take(StModel *m, const char *name, int n_dims, const int64_t *shape,
                  const StTensor **out, char *err);
/* Error naming the first tensor that no loader claimed. */
ds_status st_check_all_taken(const StModel *m, char *err);

/* ---- writing ---- */
typedef struct {
    const char *name;
    ds_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* nbytes = prod(shape) * dtype size */
} StWriteTensor;

/* Writes one safetensors file atomically (tmp + fsync + rename). metadata_json may be NULL
 * (then {"format":"pt"} as transformers writes). Tensors are written in the given order. */
ds_status st_write(const char *path, const StWriteTensor *tensors, int n, const char *metadata_json,
                   char *err);

#endif
