/* fuzz_targets.c - see fuzz_targets.h. */
#include "fuzz_targets.h"

#include <jansson.h>
#include <string.h>

#include "draft_config.h"
#include "npy.h"
#include "qwen3.h"
#include "safetensors.h"

int fuzz_safetensors(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    StModel m;
    if (st_open_buffer(&m, data, size, "fuzz.safetensors", err) != DS_OK) {
        DS_ASSERT(err[0] && !strchr(err, '\n')); /* an error is one non-empty line */
        return 0;
    }
    /* claim each tensor with its own shape (exercises st_find / st_take / alignment), then
     * touch its first and last byte so ASan sees any offset past the buffer */
    volatile uint8_t sink = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        const StTensor *t = &m.tensors[i], *got = NULL;
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (st_take(&m, t->name, t->n_dims, shape, &got, err) == DS_OK) DS_ASSERT(got == t);
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    (void)sink;
    st_check_all_taken(&m, err);
    st_close(&m);
    return 0;
}

int fuzz_config(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    json_error_t je;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!root) return 0;
    Qwen3Config q;
    ds_status rq = qwen3_config_parse(&q, root, "config.json", err);
    DraftConfig d;
    ds_status rd = draft_config_parse(&d, root, "config.json", err);
    if (rq == DS_OK && rd == DS_OK) draft_config_validate(&d, &q, "config.json", err);
    if (rq == DS_OK) DS_ASSERT(q.n_heads > 0 && q.n_kv_heads > 0 && q.n_heads % q.n_kv_heads == 0 && q.head_dim > 0);
    json_decref(root);
    return 0;
}

int fuzz_npy(const uint8_t *data, size_t size) {
    char err[DS_ERR_LEN];
    NpyArray a;
    if (npy_parse(data, size, "fuzz.npy", &a, err) != DS_OK) {
        DS_ASSERT(err[0] && !strchr(err, '\n'));
        return 0;
    }
    size_t numel = 1;
    for (int d = 0; d < a.n_dims; d++) numel *= (size_t)a.shape[d];
    DS_ASSERT(numel == a.numel);
    /* every byte the shape promises must be there (ASan checks the allocation) */
    volatile uint8_t sink = 0;
    size_t nb = a.numel * ds_dtype_size(a.dtype);
    if (nb) sink ^= ((const uint8_t *)a.data)[0] ^ ((const uint8_t *)a.data)[nb - 1];
    (void)sink;
    npy_free(&a);
    return 0;
}
