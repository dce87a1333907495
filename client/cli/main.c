/*
 * main.c - the `altgrad` command-line tool: parse the command line, open the
 * daemon or the database file, run one command. Exit 0 on success, 1 on an
 * error (no daemon, unknown run...), 2 on a usage error; every error is one
 * line on stderr starting with "altgrad: ".
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "altgrad/altgrad.h"
#include "args.h"
#include "commands.h"
#include "source.h"

#define EXIT_USAGE 2

int main(int argc, char **argv) {
    ag_cli_args args;
    ag_cli_source src;
    char err[1024];
    int rc;

    if (ag_cli_parse(argc, argv, &args, err, sizeof err) != AG_OK) {
        fprintf(stderr, "altgrad: %s\n", err);
        return EXIT_USAGE;
    }
    if (args.help) {
        fputs(ag_cli_usage(), stdout);
        return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
    }
    if (args.version) {
        printf("altgrad %s\n", ag_version());
        return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
    }
    if (ag_cli_source_open(&src, &args, err, sizeof err) != AG_OK) {
        fprintf(stderr, "altgrad: %s\n", err);
        return EXIT_FAILURE;
    }
    rc = ag_cli_execute(&src, &args, stdout, err, sizeof err);
    ag_cli_source_close(&src);
    if (rc != AG_OK) {
        fprintf(stderr, "altgrad: %s\n", err);
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
