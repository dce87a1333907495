/*
 * commands.h - internal to the altgrad CLI: each command asks its source for
 * one altgrad.h result, turns it into an ag_cli_doc and renders it.
 */
#ifndef AG_CLI_COMMANDS_H
#define AG_CLI_COMMANDS_H

#include <stddef.h>
#include <stdio.h>

#include "altgrad/altgrad.h"
#include "args.h"
#include "source.h"

/* Runs a->cmd against src, writing the result to out. On failure returns an
 * ag_err and leaves one line (no prefix, no newline) in err. */
int ag_cli_execute(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap);

#endif
