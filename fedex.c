/* fedex.c: the command line (one function per subcommand) and the federated orchestration (server,
 * forked clients, shared memory). The numeric work lives in the library files; this file parses
 * arguments, wires modules together and reports. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * inspect
 * ============================================================================================ */

static int cmd_inspect(int argc, char **argv) {
    (void)argc; (void)argv;
    fx_die("inspect: not implemented yet");
}

/* ============================================================================================
 * tokenize
 * ============================================================================================ */

static int cmd_tokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fx_die("tokenize: not implemented yet");
}

/* ============================================================================================
 * init, eval
 * ============================================================================================ */

static int cmd_init(int argc, char **argv) {
    (void)argc; (void)argv;
    fx_die("init: not implemented yet");
}

static int cmd_eval(int argc, char **argv) {
    (void)argc; (void)argv;
    fx_die("eval: not implemented yet");
}

/* ============================================================================================
 * main
 * ============================================================================================ */

typedef struct { const char *name; int (*fn)(int, char **); const char *summary; } command;

static const command commands[] = {
    {"inspect", cmd_inspect, "list the tensors of a safetensors file"},
    {"tokenize", cmd_tokenize, "print token ids of a text pair or of every row of a GLUE file"},
    {"init", cmd_init, "write a randomly initialised model of a config's shapes"},
    {"eval", cmd_eval, "evaluate a model (and adapter) on a GLUE dev split"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: fedex COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`fedex help COMMAND` describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        if (argc > 2) {
            char *hv[] = {argv[2], "--help", NULL};
            for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
                if (!strcmp(argv[2], commands[i].name)) return commands[i].fn(2, hv);
            fprintf(stderr, "fedex: no command '%s'\n", argv[2]);
            return 2;
        }
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "fedex: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
