/* calib_fit.h - confidence calibration math (paper §3.2.1, Sequential Temperature Scaling):
 * binned expected calibration error, ROC-AUC, and the left-to-right per-position temperature
 * fit. Pure functions over recorded rounds; `dspark calibrate` records, fits and reports.
 *
 * Data layout (rounds x positions, row-major): z[r*B + j] is round r's pre-sigmoid confidence
 * logit of drafted slot j, valid[r*B + j] = 1 when slot j was verified, y[r*B + j] = 1 when
 * slots 0..j were all accepted. A row counts at position j only when slots 0..j are all valid
 * (verification is a prefix, so this is the verified part of the block).
 * The prediction at position j is the survival prod_{i<=j} sigmoid(z_i / T_i). */
#ifndef DSPARK_CALIB_FIT_H
#define DSPARK_CALIB_FIT_H

#include <stdint.h>

#define CALIB_BINS 20      /* ECE bins (DeepSpec's recorder: 20 equal-width) */
#define CALIB_MAX_BINS 256
#define CALIB_GRID 64      /* temperatures, log-spaced over [CALIB_T_MIN, CALIB_T_MAX] */
#define CALIB_T_MIN 0.25
#define CALIB_T_MAX 4.0

/* ECE = sum_b n_b |mean pred_b - mean y_b| / n over `bins` equal-width bins of [0, 1]
 * (bin = clamp(floor(pred * bins), 0, bins - 1)). NaN when n == 0 or bins is not in
 * [1, CALIB_MAX_BINS]. */
double calib_ece(const double *pred, const uint8_t *y, int n, int bins);

/* Per-bin reliability: count[b], mean prediction mean_pred[b] and mean label mean_y[b]
 * (both NaN for an empty bin). Arrays of `bins`. */
void calib_reliability(const double *pred, const uint8_t *y, int n, int bins, int *count, double *mean_pred, double *mean_y);

/* ROC-AUC = P(pred of a random positive > pred of a random negative), ties counted 1/2
 * (Mann-Whitney with average ranks), O(n log n). NaN when either class is empty. */
double calib_roc_auc(const double *pred, const uint8_t *y, int n);

/* The grid: t[k] = t_min * (t_max / t_min)^(k / (n - 1)), k = 0..n-1 (n >= 2). */
void calib_grid(double *t, int n, double t_min, double t_max);

/* Position j's predictions and labels under temperatures temps[0..j] for the rows that count
 * there, packed into pred/label (capacity rounds); returns how many. */
int calib_predictions(const float *z, const uint8_t *valid, const uint8_t *y, int rounds, int B, const double *temps, int j,
                      double *pred, uint8_t *label);

/* Sequential Temperature Scaling: for j = 0..B-1 in order, with temps[0..j-1] fixed, choose
 * temps[j] from the grid (n_grid values over [t_min, t_max]) or 1 (the grid need not hold 1;
 * so a fit never makes position 0 worse on its own data) minimising the `bins`-bin ECE of
 * position j's predictions; an exact tie goes to the value nearest 1 (smallest |log T|). A
 * position with no rows keeps T = 1. counts (may be NULL): rows per position [B]. */
void calib_sts_fit(const float *z, const uint8_t *valid, const uint8_t *y, int rounds, int B, int n_grid, double t_min,
                   double t_max, int bins, double *temps, int *counts);

#endif
