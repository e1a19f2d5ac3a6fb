/* npy.c - see npy.h. Header: "\x93NUMPY", major, minor, u16 (v1) or u32 (v2) length, then a
 * Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (a, b), }. */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *descr; ds_dtype t; } g_descr[] = {
    {"<f4", DS_F32}, {"<i8", DS_I64}, {"<i4", DS_I32}, {"|u1", DS_U8}, {"|b1", DS_BOOL}, {"<f2", DS_F16},
};

/* the value after 'key' in the header dict: skips spaces and one ':'; NULL if absent */
static const char *dict_value(const char *hdr, const char *key) {
    const char *p = strstr(hdr, key);
    if (!p) return NULL;
    p += strlen(key);
    p += strspn(p, " ");
    if (*p != ':') return NULL;
    p++;
    return p + strspn(p, " ");
}

ds_status npy_parse(const void *data, size_t len, const char *name, NpyArray *out, char *err) {
    memset(out, 0, sizeof *out);
    const unsigned char *u = data;
    if (len < 10 || memcmp(u, "\x93NUMPY", 6) != 0) return ds_err(err, DS_EFORMAT, "%s: not a .npy file", name);
    size_t hlen, hstart;
    if (u[6] == 1) { hlen = (size_t)u[8] | ((size_t)u[9] << 8); hstart = 10; }
    else if (len >= 12) { hlen = (size_t)u[8] | ((size_t)u[9] << 8) | ((size_t)u[10] << 16) | ((size_t)u[11] << 24); hstart = 12; }
    else return ds_err(err, DS_EFORMAT, "%s: truncated header", name);
    if (hlen > len - hstart) return ds_err(err, DS_EFORMAT, "%s: truncated header", name);
    char hdr[1024];
    if (hlen >= sizeof hdr) return ds_err(err, DS_EFORMAT, "%s: header too long", name);
    memcpy(hdr, u + hstart, hlen);
    hdr[hlen] = 0;
    for (size_t i = 0; i < hlen; i++) if (hdr[i] == '\n' || hdr[i] == '\r' || !hdr[i]) hdr[i] = ' '; /* one-line errors */
    const char *d = dict_value(hdr, "'descr'"), *f = dict_value(hdr, "'fortran_order'"), *s = dict_value(hdr, "'shape'");
    if (!d || !f || !s) return ds_err(err, DS_EFORMAT, "%s: bad header", name);
    bool found = false;
    for (size_t i = 0; i < sizeof g_descr / sizeof g_descr[0]; i++) {
        size_t n = strlen(g_descr[i].descr);
        if (d[0] == '\'' && strncmp(d + 1, g_descr[i].descr, n) == 0 && d[1 + n] == '\'') {
            out->dtype = g_descr[i].t;
            found = true;
            break;
        }
    }
    if (!found) return ds_err(err, DS_EFORMAT, "%s: unsupported dtype in '%s'", name, hdr);
    if (strncmp(f, "False", 5) != 0) return ds_err(err, DS_EFORMAT, "%s: fortran_order arrays are not supported", name);
    if (*s != '(') return ds_err(err, DS_EFORMAT, "%s: bad shape", name);
    const char *p = s + 1;
    out->numel = 1;
    size_t elem = ds_dtype_size(out->dtype);
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        /* numel * elem must fit in size_t: no wrap-around to a small allocation */
        if (end == p || v < 0 || out->n_dims >= 8 || (v && out->numel > SIZE_MAX / elem / (unsigned long long)v))
            return ds_err(err, DS_EFORMAT, "%s: bad shape", name);
        out->shape[out->n_dims++] = v;
        out->numel *= (size_t)v;
        p = end;
    }
    if (*p != ')') return ds_err(err, DS_EFORMAT, "%s: bad shape", name);
    size_t nb = out->numel * elem, off = hstart + hlen;
    if (nb > len - off) return ds_err(err, DS_EFORMAT, "%s: truncated data (%zu bytes for %zu elements)", name, len - off, out->numel);
    out->data = ds_malloc(nb ? nb : 1);
    if (!out->data) return ds_err(err, DS_ENOMEM, "%s: out of memory", name);
    if (nb) memcpy(out->data, u + off, nb);
    return DS_OK;
}

ds_status npy_read(const char *path, NpyArray *out, char *err) {
    memset(out, 0, sizeof *out);
    char *buf;
    size_t len;
    ds_status rc = ds_read_file(path, &buf, &len, err);
    if (rc) return rc;
    rc = npy_parse(buf, len, path, out, err);
    ds_free(buf);
    return rc;
}

void npy_free(NpyArray *a) { ds_free(a->data); memset(a, 0, sizeof *a); }

ds_status npy_write(const char *path, ds_dtype dtype, int n_dims, const int64_t *shape, const void *data, char *err) {
    const char *descr = NULL;
    for (size_t i = 0; i < sizeof g_descr / sizeof g_descr[0]; i++) if (g_descr[i].t == dtype) descr = g_descr[i].descr;
    if (!descr) return ds_err(err, DS_EARG, "%s: unsupported dtype", path);
    char dict[512];
    int o = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    size_t numel = 1;
    for (int i = 0; i < n_dims; i++) {
        o += snprintf(dict + o, sizeof dict - (size_t)o, "%lld,%s", (long long)shape[i], (i + 1 < n_dims) ? " " : "");
        numel *= (size_t)shape[i];
    }
    if (n_dims > 1) o--; /* numpy writes (a, b) but (a,) */
    o += snprintf(dict + o, sizeof dict - (size_t)o, "), }");
    size_t total_hdr = 10 + (size_t)o + 1;
    size_t pad = (64 - total_hdr % 64) % 64;
    size_t hlen = (size_t)o + pad + 1;
    size_t nb = numel * ds_dtype_size(dtype);
    unsigned char *buf = ds_malloc(10 + hlen + nb);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)o);
    memset(buf + 10 + o, ' ', pad);
    buf[10 + hlen - 1] = '\n';
    if (nb) memcpy(buf + 10 + hlen, data, nb);
    ds_status rc = ds_write_file_atomic(path, buf, 10 + hlen + nb, err);
    ds_free(buf);
    return rc;
}
