/* commands.h - the command table. To add a command: write cmd_<name>.c with
 * int cmd_<name>(int argc, char **argv) and add one line to commands.def. */
#ifndef DSPARK_COMMANDS_H
#define DSPARK_COMMANDS_H

typedef int (*command_fn)(int argc, char **argv);
typedef struct { const char *name; command_fn fn; const char *summary; } Command;

#define DSPARK_COMMAND(name, fn, summary) int fn(int argc, char **argv);
#include "commands.def"
#undef DSPARK_COMMAND

#endif
