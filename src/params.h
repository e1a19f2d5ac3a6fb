/* params.h - a named set of F32 tensors in one allocation: a model's trainable weights, and
 * with the same layout its gradients and the optimiser's moments (llm.c's ParameterTensors,
 * but named, so checkpoints and fixtures are matched by the names DeepSpec writes).
 *
 * Build a layout with params_add() for each tensor, then params_alloc(). params_like() makes
 * another set with the same layout (zeroed). Offsets are 16-float aligned. */
#ifndef DSPARK_PARAMS_H
#define DSPARK_PARAMS_H

#include "base.h"

#define PARAM_MAX_DIMS 4
#define PARAM_NAME_LEN 128

typedef struct {
    char name[PARAM_NAME_LEN];
    int n_dims;
    int64_t shape[PARAM_MAX_DIMS];
    size_t numel;
    size_t offset;        /* in floats, into ParamSet.data */
    bool trainable;       /* frozen tensors (embeddings, lm_head) have no gradient / moments use */
} ParamInfo;

typedef struct {
    ParamInfo *info;      /* [n] in insertion order (the order checkpoints are written in) */
    int n, cap;
    float *data;          /* [numel] after params_alloc, zeroed */
    size_t numel;         /* total floats including alignment padding */
} ParamSet;

/* Layout. A duplicate name or a bad shape is an error. */
ds_status params_add(ParamSet *p, const char *name, int n_dims, const int64_t *shape, bool trainable, char *err);
ds_status params_alloc(ParamSet *p, char *err);
/* dst = same layout as src, zeroed data. */
ds_status params_like(ParamSet *dst, const ParamSet *src, char *err);
void params_free(ParamSet *p);
void params_zero(ParamSet *p);

const ParamInfo *params_find(const ParamSet *p, const char *name);
/* The tensor's data, or NULL when absent. */
float *params_get(const ParamSet *p, const char *name);

/* Fill every tensor of p from the safetensors file or checkpoint directory at path (F32, BF16
 * or F16, widened to F32), checking shapes; a tensor of p missing from the file is an error
 * unless skip_frozen and it is frozen (then it is left as is). Tensors in the file that p
 * lacks are ignored. */
ds_status params_load(ParamSet *p, const char *path, bool skip_frozen, char *err);
/* Write p (all tensors, or only trainable ones) as one safetensors file, atomically, in dtype
 * DS_F32 or DS_BF16 (round to nearest even). metadata_json may be NULL. */
ds_status params_save(const ParamSet *p, const char *path, ds_dtype dtype, bool trainable_only,
                      const char *metadata_json, char *err);

#endif
