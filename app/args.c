/* args.c - see args.h. */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

static unsigned char g_given[128];

static bool name_matches(const char *names, const char *arg, size_t arg_len) {
    const char *p = names;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == arg_len && strncmp(p, arg, len) == 0) return true;
        if (!bar) break;
        p = bar + 1;
    }
    return false;
}

static void print_help(const char *command, const char *synopsis, const ArgSpec *specs, int n) {
    printf("usage: dspark %s %s\n\n", command, synopsis);
    for (int i = 0; i < n; i++) {
        char left[96];
        snprintf(left, sizeof left, "%s%s%s", specs[i].names, specs[i].metavar ? " " : "", specs[i].metavar ? specs[i].metavar : "");
        printf("  %-28s %s\n", left, specs[i].help);
    }
    printf("  %-28s %s\n", "--help|-h", "show this help");
}

int args_parse(const char *command, const char *synopsis, const ArgSpec *specs, int n_specs, int argc, char **argv) {
    memset(g_given, 0, sizeof g_given);
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_help(command, synopsis, specs, n_specs);
            return 1;
        }
        const char *eq = strchr(arg, '=');
        size_t name_len = (eq && arg[0] == '-') ? (size_t)(eq - arg) : strlen(arg);
        int found = -1;
        for (int i = 0; i < n_specs && found < 0; i++)
            if (arg[0] == '-' && name_matches(specs[i].names, arg, name_len)) found = i;
        if (found < 0) {
            if (arg[0] == '-') fprintf(stderr, "dspark %s: unknown flag '%.*s' (see dspark %s --help)\n", command, (int)name_len, arg, command);
            else fprintf(stderr, "dspark %s: unexpected argument '%s' (see dspark %s --help)\n", command, arg, command);
            return 2;
        }
        const ArgSpec *s = &specs[found];
        if (found < (int)sizeof g_given) g_given[found] = 1;
        if (s->type == ARG_FLAG) {
            if (eq) { fprintf(stderr, "dspark %s: flag '%.*s' takes no value\n", command, (int)name_len, arg); return 2; }
            *(bool *)s->dst = true;
            continue;
        }
        const char *val = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!val) { fprintf(stderr, "dspark %s: flag '%s' needs a value (%s)\n", command, arg, s->metavar ? s->metavar : "value"); return 2; }
        char *end;
        errno = 0;
        switch (s->type) {
        case ARG_STR: *(const char **)s->dst = val; break;
        case ARG_LIST: {
            ArgList *l = s->dst;
            if (l->n >= ARG_MAX_LIST) { fprintf(stderr, "dspark %s: too many '%.*s' flags\n", command, (int)name_len, arg); return 2; }
            l->items[l->n++] = val;
            break;
        }
        case ARG_INT: {
            long long v = strtoll(val, &end, 10);
            if (*val == 0 || *end || errno) { fprintf(stderr, "dspark %s: flag '%.*s' needs an integer, got '%s'\n", command, (int)name_len, arg, val); return 2; }
            if (s->min <= s->max && (v < s->min || v > s->max)) {
                fprintf(stderr, "dspark %s: flag '%.*s' = %lld is out of range [%g, %g]\n", command, (int)name_len, arg, v, s->min, s->max);
                return 2;
            }
            *(int *)s->dst = (int)v;
            break;
        }
        case ARG_FLOAT: {
            double v = strtod(val, &end);
            if (*val == 0 || *end || errno || !isfinite(v)) { fprintf(stderr, "dspark %s: flag '%.*s' needs a number, got '%s'\n", command, (int)name_len, arg, val); return 2; }
            if (s->min <= s->max && (v < s->min || v > s->max)) {
                fprintf(stderr, "dspark %s: flag '%.*s' = %g is out of range [%g, %g]\n", command, (int)name_len, arg, v, s->min, s->max);
                return 2;
            }
            *(double *)s->dst = v;
            break;
        }
        default: break;
        }
    }
    return 0;
}

bool args_given(const ArgSpec *specs, int n_specs, const char *name) {
    for (int i = 0; i < n_specs && i < (int)sizeof g_given; i++)
        if (name_matches(specs[i].names, name, strlen(name))) return g_given[i];
    return false;
}

int args_parse_ids(const char *flag, const char *s, int **out) {
    int cap = 16, n = 0;
    int *ids = ds_malloc(sizeof(int) * cap);
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 0x7fffffff) {
            fprintf(stderr, "dspark: %s: bad token id list at '%s' (expected comma-separated non-negative integers)\n", flag, p);
            ds_free(ids);
            return -1;
        }
        if (n == cap) ids = ds_realloc(ids, sizeof(int) * (cap *= 2));
        ids[n++] = (int)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p) {
            fprintf(stderr, "dspark: %s: bad token id list at '%s'\n", flag, p);
            ds_free(ids);
            return -1;
        }
    }
    *out = ids;
    return n;
}
