/* svgplot.h - small line/scatter plots as standalone SVG files (benchmarks and reports:
 * throughput vs per-user speed, SPS curves, reliability diagrams). */
#ifndef DSPARK_SVGPLOT_H
#define DSPARK_SVGPLOT_H

#include "base.h"

typedef struct {
    const char *label;
    const double *x, *y;
    int n;
    bool dashed;
} PlotSeries;

typedef struct {
    const char *title, *xlabel, *ylabel;
    bool log_x;
    bool x_from_zero, y_from_zero;
} PlotSpec;

/* Writes the plot atomically. Series are drawn as lines with point markers and a legend. */
ds_status svg_plot(const char *path, const PlotSpec *spec, const PlotSeries *series, int n_series, char *err);

#endif
