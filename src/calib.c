/* calib.c - see calib.h. */
#include "calib.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void calib_identity(Calibration *c) {
    memset(c, 0, sizeof *c);
    for (int j = 0; j < CALIB_MAX_BLOCK; j++) c->temperature[j] = 1.0f;
}

ds_status calib_parse(const char *text, size_t len, const char *path, Calibration *c, char *err) {
    calib_identity(c);
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) return ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d: %s", path, je.line, je.text);
    ds_status rc = DS_OK;
    json_t *fmt = json_object_get(root, "format"), *ver = json_object_get(root, "version");
    json_t *bs = json_object_get(root, "block_size"), *temps = json_object_get(root, "temperatures");
    if (!json_is_object(root) || !json_is_string(fmt) || strcmp(json_string_value(fmt), "dspark-calibration") != 0) {
        rc = ds_err(err, DS_EFORMAT, "%s: \"format\" must be \"dspark-calibration\"", path);
    } else if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        rc = ds_err(err, DS_EFORMAT, "%s: unsupported \"version\" (expected 1)", path);
    } else if (!json_is_integer(bs) || json_integer_value(bs) < 1 || json_integer_value(bs) > CALIB_MAX_BLOCK) {
        rc = ds_err(err, DS_EFORMAT, "%s: \"block_size\" must be an integer in [1, %d]", path, CALIB_MAX_BLOCK);
    } else if (!json_is_array(temps) || json_array_size(temps) != (size_t)json_integer_value(bs)) {
        rc = ds_err(err, DS_EFORMAT, "%s: \"temperatures\" must be an array of block_size (%d) numbers", path, (int)json_integer_value(bs));
    } else {
        c->block_size = (int)json_integer_value(bs);
        for (int j = 0; j < c->block_size && !rc; j++) {
            json_t *t = json_array_get(temps, (size_t)j);
            double v = json_is_number(t) ? json_number_value(t) : -1;
            if (!(v > 0 && isfinite(v))) rc = ds_err(err, DS_EFORMAT, "%s: temperatures[%d] must be a positive number", path, j);
            else c->temperature[j] = (float)v;
        }
        c->loaded = !rc;
    }
    json_decref(root);
    if (rc) calib_identity(c);
    return rc;
}

ds_status calib_load(const char *draft_dir, Calibration *c, char *err) {
    calib_identity(c);
    char path[1200];
    if (!ds_path_join(path, sizeof path, draft_dir, "calibration.json")) return ds_err(err, DS_EARG, "%s: path too long", draft_dir);
    if (!ds_file_exists(path)) return DS_OK;
    char *text;
    size_t len;
    ds_status rc = ds_read_file(path, &text, &len, err);
    if (rc) return rc;
    rc = calib_parse(text, len, path, c, err);
    ds_free(text);
    return rc;
}

float calib_confidence(const Calibration *c, int j, float z) {
    float t = j < CALIB_MAX_BLOCK ? c->temperature[j] : 1.0f;
    return 1.0f / (1.0f + expf(-z / t));
}

void calib_survival(const Calibration *c, const float *z, int n, float *out) {
    float a = 1.0f;
    for (int j = 0; j < n; j++) {
        a *= calib_confidence(c, j, z[j]); /* c <= 1, so a never grows, rounding included */
        out[j] = a;
    }
}
