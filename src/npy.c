/* npy.c - see npy.h. Header: "\x93NUMPY", major, minor, u16 (v1) or u32 (v2) length, then a
 * Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (a, b), }. */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *descr; ds_dtype t; } g_descr[] = {
    {"<f4", DS_F32}, {"<i8", DS_I64}, {"<i4", DS_I32}, {"|u1", DS_U8}, {"|b1", DS_BOOL}, {"<f2", DS_F16},
};

ds_status npy_read(const char *path, NpyArray *out, char *err) {
    memset(out, 0, sizeof *out);
    char *buf;
    size_t len;
    ds_status rc = ds_read_file(path, &buf, &len, err);
    if (rc) return rc;
    const unsigned char *u = (const unsigned char *)buf;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: not a .npy file", path); }
    size_t hlen, hstart;
    if (u[6] == 1) { hlen = (size_t)u[8] | ((size_t)u[9] << 8); hstart = 10; }
    else if (len >= 12) { hlen = (size_t)u[8] | ((size_t)u[9] << 8) | ((size_t)u[10] << 16) | ((size_t)u[11] << 24); hstart = 12; }
    else { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: truncated header", path); }
    if (hstart + hlen > len) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: truncated header", path); }
    char hdr[1024];
    if (hlen >= sizeof hdr) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: header too long", path); }
    memcpy(hdr, buf + hstart, hlen);
    hdr[hlen] = 0;
    const char *d = strstr(hdr, "'descr'");
    const char *f = strstr(hdr, "'fortran_order'");
    const char *s = strstr(hdr, "'shape'");
    if (!d || !f || !s) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: bad header", path); }
    bool found = false;
    for (size_t i = 0; i < sizeof g_descr / sizeof g_descr[0]; i++)
        if (strstr(d, g_descr[i].descr) == strchr(d + 7, '\'') + 1) { out->dtype = g_descr[i].t; found = true; break; }
    if (!found) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: unsupported dtype in '%s'", path, hdr); }
    if (strncmp(strchr(f, ':') + 1 + strspn(strchr(f, ':') + 1, " "), "False", 5) != 0) {
        ds_free(buf);
        return ds_err(err, DS_EFORMAT, "%s: fortran_order arrays are not supported", path);
    }
    const char *p = strchr(s, '(');
    if (!p) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: bad shape", path); }
    p++;
    out->numel = 1;
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || out->n_dims >= 8) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: bad shape", path); }
        out->shape[out->n_dims++] = v;
        out->numel *= (size_t)v;
        p = end;
    }
    size_t nb = out->numel * ds_dtype_size(out->dtype), off = hstart + hlen;
    if (off + nb > len) { ds_free(buf); return ds_err(err, DS_EFORMAT, "%s: truncated data", path); }
    out->data = ds_malloc(nb);
    memcpy(out->data, buf + off, nb);
    ds_free(buf);
    return DS_OK;
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
