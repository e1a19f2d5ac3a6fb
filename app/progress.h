/* progress.h - a one-line progress bar with rate and ETA on stderr for long jobs (training,
 * data generation, tokenizer training). On a terminal it redraws in place at most 10 times a
 * second; otherwise (logs, CI) it prints a plain line every 10 seconds and at the end. */
#ifndef DSPARK_PROGRESS_H
#define DSPARK_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const char *label;
    int64_t total;
    double t0, last;
    bool tty, finished;
} Progress;

void progress_start(Progress *p, const char *label, int64_t total);
/* done of total; extra (may be NULL) is appended, e.g. "loss 2.31  812 tok/s". */
void progress_update(Progress *p, int64_t done, const char *extra);
void progress_finish(Progress *p, int64_t done, const char *extra);

#endif
