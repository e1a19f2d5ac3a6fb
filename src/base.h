/* base.h - status codes, one-line errors, counted allocation, timing, small file helpers.
 *
 * Rule (docs/style): bugs abort through DS_ASSERT; everything a user can cause returns a
 * ds_status and writes ONE line into the caller's error buffer (char err[DS_ERR_LEN]).
 * Only app/ turns that line into stderr text and an exit code; nothing in src/ calls exit(). */
#ifndef DSPARK_BASE_H
#define DSPARK_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define DS_ERR_LEN 512

typedef enum {
    DS_OK = 0,
    DS_EIO = 1,        /* file cannot be opened/read/written */
    DS_EFORMAT = 2,    /* malformed file: bad JSON, truncated safetensors, ... */
    DS_ECKPT = 3,      /* checkpoint inconsistent with its config: missing/extra tensor, shape, dtype */
    DS_EARG = 4,       /* bad user argument */
    DS_ENOMEM = 5,
    DS_EUNSUPPORTED = 6,
    DS_EDEVICE = 7,    /* backend/device failure */
} ds_status;

/* Fill err with a formatted one-line message (newlines replaced) and return code. */
ds_status ds_err(char *err, ds_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DS_ASSERT(cond) \
    do { if (!(cond)) ds_assert_fail(__FILE__, __LINE__, #cond); } while (0)
void ds_assert_fail(const char *file, int line, const char *expr) __attribute__((noreturn));

/* Counted allocation: every heap allocation of the engine goes through these, so tests can
 * assert that the token loop allocates nothing (ds_alloc_count() unchanged across a step). */
void *ds_malloc(size_t n);
void *ds_calloc(size_t n, size_t size);
void *ds_realloc(void *p, size_t n);
void  ds_free(void *p);
char *ds_strdup(const char *s);
uint64_t ds_alloc_count(void);
/* 64-byte aligned, counted; free with ds_free_aligned. */
void *ds_malloc_aligned(size_t n);
void  ds_free_aligned(void *p);

double ds_now(void); /* monotonic seconds */

/* Whole file into a NUL-terminated heap buffer (ds_free it). */
ds_status ds_read_file(const char *path, char **out, size_t *len, char *err);
/* The next non-blank line of a NUL-terminated buffer (JSONL readers), cut in place and with
 * its leading blanks skipped; NULL at the end. *line_no counts every line passed, blank ones
 * included, so errors can say file:line. */
char *ds_next_nonblank_line(char **cursor, int64_t *line_no);
/* Atomic write: path.tmp, fsync, rename. Nothing the user had is lost on failure. */
ds_status ds_write_file_atomic(const char *path, const void *data, size_t len, char *err);
bool ds_file_exists(const char *path);
bool ds_dir_exists(const char *path);
/* mkdir -p */
ds_status ds_mkdirs(const char *path, char *err);
/* snprintf into dst with "dir/name", returns false if truncated */
bool ds_path_join(char *dst, size_t cap, const char *dir, const char *name);

/* bf16 / f16 <-> f32 (round-to-nearest-even for bf16) */
static inline float ds_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f;
}
static inline uint16_t ds_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v; v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}
float ds_f16_to_f32(uint16_t h);
uint16_t ds_f32_to_f16(float f);

/* Element types shared by safetensors, npy and the backends. */
typedef enum { DS_F32 = 0, DS_BF16, DS_F16, DS_I64, DS_I32, DS_U8, DS_BOOL, DS_DTYPE_COUNT } ds_dtype;
size_t ds_dtype_size(ds_dtype t);
const char *ds_dtype_name(ds_dtype t);           /* safetensors spelling: "F32", "BF16", ... */
bool ds_dtype_from_name(const char *s, ds_dtype *out);

#endif
