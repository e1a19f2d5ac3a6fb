/* test.h - a tiny harness. Each test file: static void test_x(void) {...} and
 *   int main(void) { RUN(test_x); ...; return test_summary(); }
 * Prints one line per failed check and ends with "N passed, N failed". */
#ifndef DSPARK_TEST_H
#define DSPARK_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "npy.h"

static int g_checks_passed, g_checks_failed;
static int g_expect_failure; /* set around a check that must fail: no FAIL line printed */
static const char *g_current_test = "";

#define CHECK(cond) do { \
    if (cond) g_checks_passed++; \
    else { g_checks_failed++; fprintf(stderr, "FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, g_current_test, #cond); } \
} while (0)

#define CHECK_MSG(cond, ...) do { \
    if (cond) g_checks_passed++; \
    else { g_checks_failed++; fprintf(stderr, "FAIL %s:%d [%s]: ", __FILE__, __LINE__, g_current_test); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

/* status must be DS_OK; prints the error line otherwise */
#define CHECK_OK(expr, err) do { \
    ds_status _rc = (expr); \
    CHECK_MSG(_rc == DS_OK, "%s -> %d: %s", #expr, (int)_rc, (err)); \
} while (0)

/* Compare n floats: |got-ref| <= atol + rtol*|ref| everywhere. Reports the worst element. */
static inline int check_close(const char *name, const float *got, const float *ref, size_t n, float atol, float rtol,
                              const char *file, int line) {
    double max_abs = 0; size_t worst = 0, first_bad = 0; int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= atol + rtol * fabs((double)ref[i]))) { if (!bad) first_bad = i; bad = 1; }
        if (d > max_abs || isnan(d)) { max_abs = isnan(d) ? INFINITY : d; worst = i; }
    }
    if (bad && g_expect_failure) return 0;
    if (bad) {
        g_checks_failed++;
        fprintf(stderr, "FAIL %s:%d [%s]: %s: max|err| %.3g at %zu (got %.7g ref %.7g), first outside at %zu (got %.7g ref %.7g), atol %.1g rtol %.1g\n",
                file, line, g_current_test, name, max_abs, worst, got[worst], ref[worst], first_bad, got[first_bad], ref[first_bad], atol, rtol);
    } else {
        g_checks_passed++;
        if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  %s: max|err| %.3g over %zu\n", name, max_abs, n);
    }
    return !bad;
}
#define CHECK_CLOSE(name, got, ref, n, atol, rtol) check_close(name, got, ref, n, atol, rtol, __FILE__, __LINE__)

#define RUN(fn) do { g_current_test = #fn; int _f = g_checks_failed; fn(); \
    fprintf(stderr, "%s %s\n", g_checks_failed == _f ? "ok  " : "FAIL", #fn); } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", g_checks_passed, g_checks_failed);
    return g_checks_failed ? 1 : 0;
}

/* $DSPARK_TEST_DATA/rel (tests/data), in a static rotating buffer */
static inline const char *test_data(const char *rel) {
    static char bufs[8][1024];
    static int k;
    const char *root = getenv("DSPARK_TEST_DATA");
    char *b = bufs[k++ & 7];
    snprintf(b, 1024, "%s/%s", root ? root : "tests/data", rel);
    return b;
}

/* a fresh scratch directory under $DSPARK_TEST_TMP (build/tests/tmp) */
static inline const char *test_tmpdir(const char *name) {
    static char bufs[4][1024];
    static int k;
    const char *root = getenv("DSPARK_TEST_TMP");
    char *b = bufs[k++ & 3];
    snprintf(b, 1024, "%s/%s", root ? root : "/tmp/dspark-test", name);
    char cmd[1200], err[DS_ERR_LEN];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", b);
    if (system(cmd) != 0) fprintf(stderr, "warning: %s failed\n", cmd);
    if (ds_mkdirs(b, err) != DS_OK) fprintf(stderr, "warning: %s\n", err);
    return b;
}

static inline float *test_load_f32(const char *rel, NpyArray *a) {
    char err[DS_ERR_LEN];
    if (npy_read(test_data(rel), a, err) != DS_OK) { fprintf(stderr, "cannot load %s: %s\n", rel, err); exit(2); }
    return (float *)a->data;
}

#ifdef DSPARK_SANITIZED
#define TEST_SANITIZED 1
#else
#define TEST_SANITIZED 0
#endif

#endif
