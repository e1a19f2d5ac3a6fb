/* calib_fit.c - see calib_fit.h. Everything in double precision. */
#include "calib_fit.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "base.h"

static int bin_of(double p, int bins) {
    int b = (int)floor(p * bins);
    return b < 0 ? 0 : b >= bins ? bins - 1 : b;
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

void calib_reliability(const double *pred, const uint8_t *y, int n, int bins, int *count, double *mean_pred, double *mean_y) {
    for (int b = 0; b < bins; b++) count[b] = 0, mean_pred[b] = 0, mean_y[b] = 0;
    for (int i = 0; i < n; i++) {
        int b = bin_of(pred[i], bins);
        count[b]++;
        mean_pred[b] += pred[i];
        mean_y[b] += y[i];
    }
    for (int b = 0; b < bins; b++) {
        mean_pred[b] = count[b] ? mean_pred[b] / count[b] : NAN;
        mean_y[b] = count[b] ? mean_y[b] / count[b] : NAN;
    }
}

double calib_ece(const double *pred, const uint8_t *y, int n, int bins) {
    if (n <= 0 || bins <= 0 || bins > CALIB_MAX_BINS) return NAN;
    double sp[CALIB_MAX_BINS] = {0}, sy[CALIB_MAX_BINS] = {0}; /* n_b |mean p - mean y| = |sum p - sum y| */
    for (int i = 0; i < n; i++) {
        int b = bin_of(pred[i], bins);
        sp[b] += pred[i];
        sy[b] += y[i];
    }
    double e = 0;
    for (int b = 0; b < bins; b++) e += fabs(sp[b] - sy[b]);
    return e / n;
}

typedef struct { double p; uint8_t y; } Scored;

static int cmp_scored(const void *a, const void *b) {
    double x = ((const Scored *)a)->p, w = ((const Scored *)b)->p;
    return (x > w) - (x < w);
}

double calib_roc_auc(const double *pred, const uint8_t *y, int n) {
    int64_t pos = 0;
    for (int i = 0; i < n; i++) pos += y[i] != 0;
    int64_t neg = n - pos;
    if (pos == 0 || neg == 0) return NAN;
    Scored *s = ds_malloc(sizeof(Scored) * (size_t)n);
    for (int i = 0; i < n; i++) s[i] = (Scored){pred[i], y[i] != 0};
    qsort(s, (size_t)n, sizeof(Scored), cmp_scored);
    double rank_sum = 0; /* 1-based ranks of the positives, ties sharing their average rank */
    for (int i = 0; i < n;) {
        int k = i;
        int64_t pos_in = 0;
        while (k < n && s[k].p == s[i].p) pos_in += s[k++].y;
        rank_sum += (double)pos_in * 0.5 * ((double)(i + 1) + (double)k);
        i = k;
    }
    ds_free(s);
    return (rank_sum - 0.5 * (double)pos * (double)(pos + 1)) / ((double)pos * (double)neg);
}

void calib_grid(double *t, int n, double t_min, double t_max) {
    for (int k = 0; k < n; k++) t[k] = t_min * pow(t_max / t_min, n > 1 ? (double)k / (n - 1) : 0);
}

/* does row r count at position j: slots 0..j verified */
static bool row_counts(const uint8_t *valid, int B, int r, int j) {
    for (int i = 0; i <= j; i++)
        if (!valid[(size_t)r * B + i]) return false;
    return true;
}

int calib_predictions(const float *z, const uint8_t *valid, const uint8_t *y, int rounds, int B, const double *temps, int j,
                      double *pred, uint8_t *label) {
    int n = 0;
    for (int r = 0; r < rounds; r++) {
        if (!row_counts(valid, B, r, j)) continue;
        double p = 1;
        for (int i = 0; i <= j; i++) p *= sigmoid(z[(size_t)r * B + i] / temps[i]);
        pred[n] = p;
        label[n++] = y[(size_t)r * B + j] != 0;
    }
    return n;
}

void calib_sts_fit(const float *z, const uint8_t *valid, const uint8_t *y, int rounds, int B, int n_grid, double t_min,
                   double t_max, int bins, double *temps, int *counts) {
    double *grid = ds_malloc(sizeof(double) * (size_t)n_grid);
    calib_grid(grid, n_grid, t_min, t_max);
    /* prefix[r]: survival over positions < j under the fitted temperatures; < 0 once the row
     * stops counting */
    double *prefix = ds_malloc(sizeof(double) * (size_t)(rounds ? rounds : 1));
    double *base = ds_malloc(sizeof(double) * (size_t)(rounds ? rounds : 1));
    double *pred = ds_malloc(sizeof(double) * (size_t)(rounds ? rounds : 1));
    float *zj = ds_malloc(sizeof(float) * (size_t)(rounds ? rounds : 1));
    int *row = ds_malloc(sizeof(int) * (size_t)(rounds ? rounds : 1));
    uint8_t *label = ds_malloc((size_t)(rounds ? rounds : 1));
    for (int r = 0; r < rounds; r++) prefix[r] = 1;
    for (int j = 0; j < B; j++) {
        int n = 0;
        for (int r = 0; r < rounds; r++) {
            if (prefix[r] < 0) continue;
            if (!valid[(size_t)r * B + j]) { prefix[r] = -1; continue; }
            base[n] = prefix[r];
            zj[n] = z[(size_t)r * B + j];
            label[n] = y[(size_t)r * B + j] != 0;
            row[n++] = r;
        }
        if (counts) counts[j] = n;
        temps[j] = 1;
        if (n > 0) {
            double best = INFINITY;
            for (int k = -1; k < n_grid; k++) { /* k = -1: T = 1, the uncalibrated head */
                double t = k < 0 ? 1.0 : grid[k];
                for (int i = 0; i < n; i++) pred[i] = base[i] * sigmoid(zj[i] / t);
                double e = calib_ece(pred, label, n, bins);
                if (e < best || (e == best && fabs(log(t)) < fabs(log(temps[j])))) {
                    best = e;
                    temps[j] = t;
                }
            }
        }
        for (int i = 0; i < n; i++) prefix[row[i]] = base[i] * sigmoid(zj[i] / temps[j]);
    }
    ds_free(grid); ds_free(prefix); ds_free(base); ds_free(pred); ds_free(zj); ds_free(row); ds_free(label);
}
