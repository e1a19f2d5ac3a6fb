/* main.c - `dspark <command>`: dispatch and the global help. Each command lives in its own
 * cmd_*.c file and is listed once in commands.h. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static const Command g_commands[] = {
#define DSPARK_COMMAND(name, fn, summary) {name, fn, summary},
#include "commands.def"
#undef DSPARK_COMMAND
};

static void usage(FILE *f) {
    fprintf(f, "dspark - DSpark speculative decoding and DeepSpec drafter training, in C\n\n"
               "usage: dspark <command> [flags]   (dspark <command> --help for its flags)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        fprintf(f, "  %-14s %s\n", g_commands[i].name, g_commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        if (strcmp(argv[1], g_commands[i].name) == 0) return g_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dspark: unknown command '%s' (see dspark --help)\n", argv[1]);
    return 2;
}
