/* args.h - a small typed flag parser shared by every command.
 * Flags: --name VALUE or --name=VALUE; aliases separated by '|' ("--max-new|-n").
 * Numbers are range-checked; an unknown flag, a missing value or an out-of-range number is
 * one line on stderr naming the flag and pointing at --help. Nothing is silently fixed. */
#ifndef DSPARK_ARGS_H
#define DSPARK_ARGS_H

#include <stdbool.h>

typedef enum { ARG_STR, ARG_INT, ARG_FLOAT, ARG_FLAG, ARG_LIST } ArgType;

typedef struct {
    const char *names;     /* "--temp" or "--max-new|-n" */
    ArgType type;
    void *dst;             /* const char **, int *, double *, bool *, or ArgList * */
    const char *metavar;   /* shown in --help ("T", "DIR"); NULL for flags */
    const char *help;
    double min, max;       /* for ARG_INT / ARG_FLOAT; min > max means unchecked */
} ArgSpec;

#define ARG_MAX_LIST 64
typedef struct { const char *items[ARG_MAX_LIST]; int n; } ArgList; /* repeatable flag */

/* Returns 0: parsed; 1: --help printed (exit 0); 2: error printed (exit 2). */
int args_parse(const char *command, const char *synopsis, const ArgSpec *specs, int n_specs, int argc, char **argv);
bool args_given(const ArgSpec *specs, int n_specs, const char *name); /* was the flag on the command line */

/* "1,2,3" -> ids; returns count or -1 (with a message on stderr naming the flag). */
int args_parse_ids(const char *flag, const char *s, int **out);

#endif
