/* svgplot.c - see svgplot.h. Fixed 720x450 canvas, nice ticks, a palette of 8 colours. */
#include "svgplot.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

typedef struct { char *buf; size_t len, cap; } Sb;
static void sb_printf(Sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(Sb *s, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (s->buf && s->len + (size_t)n < s->cap) { s->len += (size_t)n; return; }
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->len + (size_t)n + 1) cap *= 2;
        char *b = ds_realloc(s->buf, cap);
        if (!b) return;
        s->buf = b;
        s->cap = cap;
    }
}

static void xml_escape(Sb *s, const char *t) {
    for (; t && *t; t++) {
        switch (*t) {
        case '<': sb_printf(s, "&lt;"); break;
        case '>': sb_printf(s, "&gt;"); break;
        case '&': sb_printf(s, "&amp;"); break;
        default: sb_printf(s, "%c", *t);
        }
    }
}

static double nice_step(double range) {
    double raw = range / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

ds_status svg_plot(const char *path, const PlotSpec *spec, const PlotSeries *series, int n_series, char *err) {
    const double W = 720, H = 450, L = 70, R = 170, T = 40, B = 55;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int s = 0; s < n_series; s++)
        for (int i = 0; i < series[s].n; i++) {
            double x = series[s].x[i], y = series[s].y[i];
            if (!isfinite(x) || !isfinite(y) || (spec->log_x && x <= 0)) continue;
            if (spec->log_x) x = log10(x);
            x0 = fmin(x0, x); x1 = fmax(x1, x); y0 = fmin(y0, y); y1 = fmax(y1, y);
        }
    if (!(x0 <= x1)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    if (spec->x_from_zero && !spec->log_x) x0 = fmin(x0, 0);
    if (spec->y_from_zero) y0 = fmin(y0, 0);
    if (x1 - x0 < 1e-12) { x0 -= 0.5; x1 += 0.5; }
    if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
    y1 += (y1 - y0) * 0.05;
    double pw = W - L - R, ph = H - T - B;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (T + ph - ((v) - y0) / (y1 - y0) * ph)
    Sb s = {0};
    sb_printf(&s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    sb_printf(&s, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">", L + pw / 2);
    xml_escape(&s, spec->title);
    sb_printf(&s, "</text>\n<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n", L, T, pw, ph);
    double ys = nice_step(y1 - y0);
    for (double v = ceil(y0 / ys) * ys; v <= y1 + 1e-9; v += ys)
        sb_printf(&s, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                  L, L + pw, PY(v), PY(v), L - 6, PY(v) + 4, fabs(v) < ys * 1e-6 ? 0.0 : v);
    if (spec->log_x) {
        for (double e = floor(x0); e <= ceil(x1); e += 1)
            for (int m = 1; m < 10; m++) {
                double v = e + log10(m);
                if (v < x0 - 1e-9 || v > x1 + 1e-9) continue;
                sb_printf(&s, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"%s\"/>", PX(v), PX(v), T, T + ph, m == 1 ? "#ccc" : "#f0f0f0");
                if (m == 1 || m == 2 || m == 5) sb_printf(&s, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n", PX(v), T + ph + 16, pow(10, v));
            }
    } else {
        double xs = nice_step(x1 - x0);
        for (double v = ceil(x0 / xs) * xs; v <= x1 + 1e-9; v += xs)
            sb_printf(&s, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n",
                      PX(v), PX(v), T, T + ph, PX(v), T + ph + 16, fabs(v) < xs * 1e-6 ? 0.0 : v);
    }
    sb_printf(&s, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">", L + pw / 2, H - 14);
    xml_escape(&s, spec->xlabel);
    sb_printf(&s, "</text>\n<text transform=\"translate(18,%.0f) rotate(-90)\" text-anchor=\"middle\">", T + ph / 2);
    xml_escape(&s, spec->ylabel);
    sb_printf(&s, "</text>\n");
    for (int k = 0; k < n_series; k++) {
        const PlotSeries *se = &series[k];
        const char *col = g_colors[k % 8];
        sb_printf(&s, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", col, se->dashed ? " stroke-dasharray=\"6,4\"" : "");
        for (int i = 0; i < se->n; i++) {
            double x = spec->log_x ? log10(se->x[i]) : se->x[i];
            if (isfinite(x) && isfinite(se->y[i])) sb_printf(&s, "%.1f,%.1f ", PX(x), PY(se->y[i]));
        }
        sb_printf(&s, "\"/>\n");
        for (int i = 0; i < se->n; i++) {
            double x = spec->log_x ? log10(se->x[i]) : se->x[i];
            if (isfinite(x) && isfinite(se->y[i])) sb_printf(&s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>", PX(x), PY(se->y[i]), col);
        }
        sb_printf(&s, "\n<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"2\"/><text x=\"%.0f\" y=\"%.0f\">",
                  W - R + 15, W - R + 40, T + 14 + 20.0 * k, T + 14 + 20.0 * k, col, W - R + 46, T + 18 + 20.0 * k);
        xml_escape(&s, se->label);
        sb_printf(&s, "</text>\n");
    }
    sb_printf(&s, "</svg>\n");
#undef PX
#undef PY
    ds_status rc = s.buf ? ds_write_file_atomic(path, s.buf, s.len, err) : ds_err(err, DS_ENOMEM, "out of memory");
    ds_free(s.buf);
    return rc;
}
