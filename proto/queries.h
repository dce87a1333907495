/*
 * queries.h - internal: every query described once. AG_QUERY_LIST holds
 * one entry per query; the wire types, the type names, the daemon's
 * dispatch, the HTTP routes, the CLI's commands and the client's request
 * all come from it, and the query's field tables in proto/spec.c (request:
 * its parameters; reply: its result) say the rest. docs/design.md, "Where a
 * query is described", says who takes what and walks through adding one.
 */
#ifndef AG_PROTO_QUERIES_H
#define AG_PROTO_QUERIES_H

#include <stddef.h>

/*
 * X(NAME, name, q, result, flags, answer):
 *   NAME    AG_MSG_Q_NAME is the request type, AG_MSG_R_NAME its reply
 *   name    "q_name" / "r_name"; with AG_Q_PUBLIC also the CLI command
 *           `altgrad name` and the HTTP route GET /api/name
 *   q       the request's wire type; the reply's is q + 16
 *   result  the ag_result its keys are listed under (ag_result_key), -1: none
 *   flags   AG_Q_* below
 *   answer  how the store answers it: an expression of type int (an ag_err)
 *           evaluated in present/answer.c, where st (ag_store *), a (const
 *           ag_msg_query *: the request's arguments), req (const ag_msg *)
 *           and out (ag_msg *: the reply, whose result it sets) are in scope.
 *           Only present/answer.c expands this column, so proto/ itself
 *           never calls the store.
 * The parameters (wire key, kind, required or not, CLI and HTTP name) are
 * the request's field table in spec.c; the result's fields its reply table.
 */
#define AG_QUERY_LIST(X)                                                                           \
    X(RUNS, runs, 16, AG_RESULT_RUNS, AG_Q_PUBLIC, ag_store_runs(st, &out->u.runs))                \
    X(TENSORS, tensors, 17, AG_RESULT_TENSORS, AG_Q_PUBLIC,                                        \
      ag_store_tensors(st, a->run, &out->u.tensors))                                               \
    X(HISTORY, history, 18, AG_RESULT_HISTORY, AG_Q_PUBLIC,                                        \
      ag_store_history(                                                                            \
          st,                                                                                      \
          &(ag_history_query){a->run, a->tensor, a->format, a->from_step, a->to_step, a->every},   \
          &out->u.history))                                                                        \
    X(SCALES, scales, 19, AG_RESULT_SCALES, AG_Q_PUBLIC,                                           \
      ag_store_scales(st, a->run, a->format, &out->u.scales))                                      \
    X(TOP, top, 20, AG_RESULT_TOP, AG_Q_PUBLIC,                                                    \
      ag_store_top(st, a->run, a->format, a->window, SIZE_ARG(a->limit), &out->u.top))             \
    X(STATUS, status, 21, AG_RESULT_STATUS, AG_Q_PUBLIC | AG_Q_LIVE,                               \
      ag_store_status(st, &out->u.status))                                                         \
    X(RUN, run, 22, -1, 0, answer_client_run(st, a->client_id, &out->u.ident))                     \
    X(DELIVERY, delivery, 23, -1, 0, answer_delivery(st, req, out))                                \
    X(REPORT, report, 24, AG_RESULT_REPORT, AG_Q_PUBLIC,                                           \
      ag_store_report(st, a->run, a->formats, SIZE_ARG(a->width), &out->u.report))

/* Query flags. */
#define AG_Q_PUBLIC 1u /* a CLI command and an HTTP route of the same name */
#define AG_Q_LIVE                                                                                  \
    2u /* status: whoever answers for a running daemon adds its
                        * live counters to the stored ones, and the document
                        * starts with the "source" and "address" it came from */

/* A query as data, for code that walks the list at run time. */
typedef struct ag_query_def {
    const char *name; /* "history" */
    int q, r;         /* request and reply types */
    int result;       /* ag_result, -1 for none */
    unsigned flags;   /* AG_Q_* */
} ag_query_def;

/* The query with request type q, or NULL. */
const ag_query_def *ag_query_by_type(int q);
/* The query named name (public or not), or NULL. */
const ag_query_def *ag_query_by_name(const char *name);
/* The i-th query in list order, NULL past the last. */
const ag_query_def *ag_query_at(size_t i);

#endif
