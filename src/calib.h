/* calib.h - the drafter's calibration (Sequential Temperature Scaling, paper §3.2.1), read
 * from DRAFT_DIR/calibration.json, which `dspark calibrate` writes:
 *   {"format": "dspark-calibration", "version": 1, "block_size": B,
 *    "temperatures": [T_0, ..., T_{B-1}], ... other keys ignored}
 * Position j's calibrated confidence is sigmoid(z_j / T_j); a prefix survives with the
 * product of its positions' confidences. No file = identity temperatures (T_j = 1). */
#ifndef DSPARK_CALIB_H
#define DSPARK_CALIB_H

#include "base.h"

#define CALIB_MAX_BLOCK 64

typedef struct {
    int block_size;                      /* 0 when no file was found (identity) */
    float temperature[CALIB_MAX_BLOCK];  /* > 0 */
    bool loaded;                         /* a calibration.json was read */
} Calibration;

/* Identity temperatures for every position. */
void calib_identity(Calibration *c);
/* Reads draft_dir/calibration.json; identity when the file is absent. A malformed file is a
 * one-line error naming it. */
ds_status calib_load(const char *draft_dir, Calibration *c, char *err);
/* Parses the JSON text of a calibration file; `path` only names it in errors. */
ds_status calib_parse(const char *text, size_t len, const char *path, Calibration *c, char *err);
/* out[j] = prod_{i<=j} sigmoid(z_i / T_i), j < n (positions past the file's block size use
 * T = 1). Non-increasing in j, also in float32 rounding. */
void calib_survival(const Calibration *c, const float *z, int n, float *out);
/* Position j's calibrated confidence sigmoid(z / T_j). */
float calib_confidence(const Calibration *c, int j, float z);

#endif
