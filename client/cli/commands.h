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

/*
 * The stall rates of points as a sparkline of at most width columns of the
 * block characters U+2581..U+2588 (rate 0 the lowest, 1 the full block);
 * each column covers an equal share of the points and shows the pooled rate
 * sum(stalled) / sum(total) over them. Writes a NUL-terminated UTF-8 string
 * (3 bytes a column) into buf; returns the columns written, 0 for no points
 * or when cap < 3 * columns + 1.
 */
size_t ag_cli_sparkline(const ag_history_point *points, size_t n, size_t width, char *buf,
                        size_t cap);

/* The report command (commands.c calls it; report.c holds it). */
int ag_cli_report(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap);

#endif
