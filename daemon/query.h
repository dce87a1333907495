/*
 * query.h - the query server: one nng REP socket on --query, served by a few
 * threads, each with its own REP context and its own read-only store
 * connection, so queries run beside ingest and never on the loop.
 */
#ifndef AG_DAEMON_QUERY_H
#define AG_DAEMON_QUERY_H

#include "altgrad/altgrad.h"
#include "daemon/config.h"
#include "daemon/log.h"

#define AG_QUERY_WORKERS 3

typedef struct ag_query ag_query;

/* Fills the live parts of a status reply (counters, queue, uptime); called
 * on a query thread. */
typedef void (*ag_status_fn)(void *ctx, ag_status *st);

/* A client waits for its messages to be stored: it asked how many are
 * (q_delivery); called on a query thread before the answer is read. */
typedef void (*ag_asked_fn)(void *ctx);

/* status and asked (either may be NULL) are called with ctx. */
int ag_query_start(ag_query **out, const ag_config *cfg, ag_logger *lg, ag_status_fn status,
                   ag_asked_fn asked, void *ctx);
/* Close the socket, join the threads, close the connections. */
void ag_query_stop(ag_query *q);

#endif
