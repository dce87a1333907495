/*
 * http.h - altgradd's web server: nng's HTTP server (keep-alive, request
 * heads read and bounded by nng, docs/nng.md) with one handler for every
 * path; answers are computed by http_api.c, those that read the store on the
 * server's own worker threads, each with its own read-only store connection,
 * so neither the loop nor nng's threads ever wait on SQLite.
 */
#ifndef AG_DAEMON_HTTP_H
#define AG_DAEMON_HTTP_H

#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/log.h"
#include "daemon/query.h"

#define AG_HTTP_CONNECTIONS_MAX 64 /* more are accepted and closed at once */
#define AG_HTTP_TIMEOUT_MS 10000   /* to receive a head (idle keep-alive too), to send an answer */
#define AG_HTTP_WORKERS 2          /* answers read from the store at once (threads, stores) */
#define AG_HTTP_QUEUE_MAX 64       /* answers waiting for a worker; more are 503 */

typedef struct ag_http ag_http;

/*
 * Listen on cfg->http_host:cfg->http_port. AG_EIO (logged as one warning
 * line) when the address cannot be bound (busy port, no such address): the
 * caller goes on without HTTP, and *out is NULL. cfg, lg and ctx must
 * outlive the server; status, shm_stats and pool_stats are called with ctx
 * on the worker threads.
 */
int ag_http_start(ag_http **out, const ag_config *cfg, ag_logger *lg, ag_status_fn status,
                  ag_shm_stats_fn shm_stats, ag_pool_stats_fn pool_stats, void *ctx);
/* "HOST:PORT" as bound (the port chosen when 0 was asked); NULL when h is
 * NULL or closed. */
const char *ag_http_bound(const ag_http *h);
/* Stop serving: close every connection, answer nothing more, and wait for
 * the workers (an answer being computed finishes and is dropped). Any thread;
 * NULL and a second call are no-ops. */
void ag_http_close(ag_http *h);
/* Close if not closed, then free everything. NULL is a no-op. */
void ag_http_free(ag_http *h);

#endif
