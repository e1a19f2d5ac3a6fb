/* json_report.h - a benchmark's JSON report, built in memory and written to a temporary file
 * renamed over the path at the end (ds_write_file_atomic), so an interrupted or failing run
 * never leaves a half-written or emptied report. Header-only, for the bench_*.c programs. */
#ifndef DSPARK_BENCH_JSON_REPORT_H
#define DSPARK_BENCH_JSON_REPORT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"

typedef struct {
    FILE *f; /* fprintf the report here; NULL when no report was asked for */
    char *buf;
    size_t len;
    const char *path;
} JsonReport;

/* false (with a one-line error) when the report's folder is not writable: checked before
 * minutes of measuring */
static inline bool json_report_check(const char *prog, const char *path) {
    if (!path) return true;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    else snprintf(dir, sizeof dir, ".");
    if (access(dir, W_OK) == 0) return true;
    fprintf(stderr, "%s: --json %s: folder %s is not writable\n", prog, path, dir);
    return false;
}

/* path NULL: no report (r->f stays NULL) */
static inline void json_report_open(JsonReport *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    if (path) r->f = open_memstream(&r->buf, &r->len);
}

/* writes the report; 0, or 1 after a one-line error */
static inline int json_report_close(JsonReport *r, const char *prog) {
    if (!r->path) return 0;
    char err[DS_ERR_LEN];
    int rc = 0;
    if (!r->f || fclose(r->f) != 0) {
        fprintf(stderr, "%s: out of memory building the JSON report\n", prog);
        rc = 1;
    } else if (ds_write_file_atomic(r->path, r->buf, r->len, err)) {
        fprintf(stderr, "%s: %s\n", prog, err);
        rc = 1;
    }
    free(r->buf);
    memset(r, 0, sizeof *r);
    return rc;
}

#endif
