/* npy.h - NumPy .npy arrays (version 1.0/2.0, little-endian, C order): float32, int64, int32,
 * bool/uint8. Used for fixtures and for `dspark dump` outputs. */
#ifndef DSPARK_NPY_H
#define DSPARK_NPY_H

#include "base.h"

typedef struct {
    ds_dtype dtype;     /* DS_F32, DS_I64, DS_I32, DS_U8/DS_BOOL, DS_F16 */
    int n_dims;
    int64_t shape[8];
    size_t numel;
    void *data;         /* ds_malloc'ed */
} NpyArray;

ds_status npy_read(const char *path, NpyArray *out, char *err);
/* The same from memory (`name` only names it in errors); the fuzz harness's entry. */
ds_status npy_parse(const void *data, size_t len, const char *name, NpyArray *out, char *err);
void npy_free(NpyArray *a);
/* Atomic write of a float32 / int64 array. */
ds_status npy_write(const char *path, ds_dtype dtype, int n_dims, const int64_t *shape, const void *data, char *err);

#endif
