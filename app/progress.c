/* progress.c - see progress.h */
#include "progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_time(char *buf, size_t cap, double s) {
    if (s < 0 || s > 1e7) { snprintf(buf, cap, "--:--"); return; }
    int t = (int)(s + 0.5); /* < 1e7 s */
    if (t >= 3600) snprintf(buf, cap, "%d:%02d:%02d", t / 3600 % 10000, t / 60 % 60, t % 60);
    else snprintf(buf, cap, "%02d:%02d", t / 60 % 60, t % 60);
}

void progress_start(Progress *p, const char *label, int64_t total) {
    p->label = label;
    p->total = total;
    p->t0 = p->last = now_s();
    p->tty = isatty(2);
    p->finished = false;
}

static void draw(Progress *p, int64_t done, const char *extra, bool final) {
    double el = now_s() - p->t0;
    double frac = p->total > 0 ? (double)done / (double)p->total : 0;
    if (frac > 1) frac = 1;
    char bar[26], e[32], r[32];
    int fill = (int)(frac * 24 + 0.5);
    for (int i = 0; i < 24; i++) bar[i] = i < fill ? '#' : '.';
    bar[24] = 0;
    fmt_time(e, sizeof e, el);
    fmt_time(r, sizeof r, done > 0 && p->total > 0 ? el * (double)(p->total - done) / (double)done : -1);
    fprintf(stderr, "%s%s [%s] %lld/%lld %3.0f%%  %s elapsed  ETA %s%s%s%s%s", p->tty ? "\r" : "", p->label, bar,
            (long long)done, (long long)p->total, 100 * frac, e, r, extra ? "  " : "", extra ? extra : "",
            p->tty ? "\033[K" : "", final || !p->tty ? "\n" : "");
    fflush(stderr);
}

void progress_update(Progress *p, int64_t done, const char *extra) {
    double t = now_s();
    if (t - p->last < (p->tty ? 0.1 : 10.0)) return;
    p->last = t;
    draw(p, done, extra, false);
}

void progress_finish(Progress *p, int64_t done, const char *extra) {
    if (p->finished) return;
    p->finished = true;
    draw(p, done, extra, true);
}
