/* base.c - see base.h. */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

ds_status ds_err(char *err, ds_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, DS_ERR_LEN, fmt, ap);
        va_end(ap);
        for (char *p = err; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
    }
    return code;
}

void ds_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "%s:%d: assertion '%s' failed\n", file, line, expr);
    abort();
}

static _Atomic uint64_t g_alloc_count;

void *ds_malloc(size_t n) { atomic_fetch_add(&g_alloc_count, 1); return malloc(n ? n : 1); }
void *ds_calloc(size_t n, size_t size) {
    atomic_fetch_add(&g_alloc_count, 1);
    return calloc(n ? n : 1, size ? size : 1);
}
void *ds_realloc(void *p, size_t n) { atomic_fetch_add(&g_alloc_count, 1); return realloc(p, n ? n : 1); }
void ds_free(void *p) { free(p); }
char *ds_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = ds_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
uint64_t ds_alloc_count(void) { return atomic_load(&g_alloc_count); }

void *ds_malloc_aligned(size_t n) {
    atomic_fetch_add(&g_alloc_count, 1);
    void *p = NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) return NULL;
    return p;
}
void ds_free_aligned(void *p) { free(p); }

double ds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

ds_status ds_read_file(const char *path, char **out, size_t *len, char *err) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ds_err(err, DS_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return ds_err(err, DS_EIO, "%s: cannot seek", path); }
    long n = ftell(f);
    if (n < 0) { fclose(f); return ds_err(err, DS_EIO, "%s: not a regular file", path); }
    rewind(f);
    char *buf = ds_malloc((size_t)n + 1);
    if (!buf) { fclose(f); return ds_err(err, DS_ENOMEM, "%s: out of memory reading %ld bytes", path, n); }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        ds_free(buf); fclose(f);
        return ds_err(err, DS_EIO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (len) *len = (size_t)n;
    return DS_OK;
}

ds_status ds_write_file_atomic(const char *path, const void *data, size_t len, char *err) {
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
        return ds_err(err, DS_EARG, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ds_err(err, DS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd); unlink(tmp);
            return ds_err(err, DS_EIO, "%s: write failed: %s", tmp, strerror(e));
        }
        p += w; left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return ds_err(err, DS_EIO, "%s: fsync/close failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return ds_err(err, DS_EIO, "%s: rename failed: %s", path, strerror(e));
    }
    return DS_OK;
}

bool ds_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
bool ds_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

ds_status ds_mkdirs(const char *path, char *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return ds_err(err, DS_EARG, "bad directory path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return ds_err(err, DS_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    if (!ds_dir_exists(path)) return ds_err(err, DS_EIO, "%s: not a directory", path);
    return DS_OK;
}

bool ds_path_join(char *dst, size_t cap, const char *dir, const char *name) {
    int n = snprintf(dst, cap, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < cap;
}

float ds_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    union { uint32_t u; float f; } v; v.u = bits; return v.f;
}

uint16_t ds_f32_to_f16(float f) {
    union { uint32_t u; float f; } v; v.f = f;
    uint32_t x = v.u, sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

static const struct { const char *name; size_t size; } g_dtypes[DS_DTYPE_COUNT] = {
    [DS_F32] = {"F32", 4}, [DS_BF16] = {"BF16", 2}, [DS_F16] = {"F16", 2},
    [DS_I64] = {"I64", 8}, [DS_I32] = {"I32", 4},  [DS_U8] = {"U8", 1}, [DS_BOOL] = {"BOOL", 1},
};
size_t ds_dtype_size(ds_dtype t) { return (unsigned)t < DS_DTYPE_COUNT ? g_dtypes[t].size : 0; }
const char *ds_dtype_name(ds_dtype t) { return (unsigned)t < DS_DTYPE_COUNT ? g_dtypes[t].name : "?"; }
bool ds_dtype_from_name(const char *s, ds_dtype *out) {
    for (int i = 0; i < DS_DTYPE_COUNT; i++)
        if (strcmp(s, g_dtypes[i].name) == 0) { *out = (ds_dtype)i; return true; }
    return false;
}

char *ds_next_nonblank_line(char **cursor, int64_t *line_no) {
    while (*cursor && **cursor) {
        char *line = *cursor, *next = strchr(line, '\n');
        if (next) *next++ = 0;
        *cursor = next;
        ++*line_no;
        line += strspn(line, " \t\r");
        if (*line) return line;
    }
    return NULL;
}
