/*
 * source.h - internal to the altgrad CLI: where answers come from. Either the
 * daemon, through the client library's queries, or a database file read
 * directly through the store (--db). Both give the same altgrad.h results, so
 * the commands do not care which one is behind them.
 */
#ifndef AG_CLI_SOURCE_H
#define AG_CLI_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"
#include "args.h"
#include "proto/proto.h"

struct ag_store;

typedef struct ag_cli_source {
    ag_client *client;      /* daemon mode */
    struct ag_store *store; /* --db mode */
    char where[512];        /* the URL or the file, for error lines */
} ag_cli_source;

/* Opens the source the arguments name. On failure returns an ag_err, leaves
 * one line in err and nothing open. */
int ag_cli_source_open(ag_cli_source *s, const ag_cli_args *a, char *err, size_t cap);
void ag_cli_source_close(ag_cli_source *s);

/* Any query: req (ag_cli_request) answered into reply, whose result
 * ag_answer_free frees (present/answer.h), whichever source answered.
 * The typed calls below are the four report.c asks. */
int ag_cli_source_ask(ag_cli_source *s, const ag_msg *req, ag_msg *reply);
int ag_cli_source_tensors(ag_cli_source *s, const char *run, ag_tensor_list **out);
int ag_cli_source_history(ag_cli_source *s, const ag_history_query *q, ag_history **out);
int ag_cli_source_top(ag_cli_source *s, const char *run, const char *format, uint64_t window,
                      size_t limit, ag_top_list **out);
int ag_cli_source_status(ag_cli_source *s, ag_status **out);

/* One line (no newline) in err explaining the failure rc of the last call;
 * what_fmt and its arguments (printf-style; NULL for none) name the object
 * asked for ("run '%s'"), used when the source says nothing. Returns rc. */
__attribute__((format(printf, 5, 6))) int ag_cli_source_explain(const ag_cli_source *s, int rc,
                                                                char *err, size_t cap,
                                                                const char *what_fmt, ...);

/* The query URL the client library will use when none is given. */
const char *ag_cli_default_query_url(void);

#endif
