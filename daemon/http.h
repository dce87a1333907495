/*
 * http.h - altgradd's small web server on the libuv loop: GET/HEAD only,
 * one request per connection (Connection: close), bounded heads, connections
 * and time; answers (http_api.c) are computed on the libuv thread pool over
 * read-only store connections, so the loop never waits on SQLite.
 */
#ifndef AG_DAEMON_HTTP_H
#define AG_DAEMON_HTTP_H

#include <uv.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/query.h"

#define AG_HTTP_CONNECTIONS_MAX 64 /* more are accepted and closed at once */
#define AG_HTTP_TIMEOUT_MS 10000   /* to receive the head, and again to send the answer */
#define AG_HTTP_POOL_JOBS 2        /* answers computed at once (thread pool, stores) */

typedef struct ag_http ag_http;

/*
 * Listen on cfg->http_host:cfg->http_port on loop. AG_EIO (logged as one
 * warning line) when the address cannot be bound (busy port, no such
 * address): the caller goes on without HTTP. Either way call ag_http_free
 * on *out after the loop has ended (it may hold a handle being closed).
 * cfg, lg and ctx must outlive the server; status is called on pool threads.
 */
int ag_http_start(ag_http **out, uv_loop_t *loop, const ag_config *cfg, ag_logger *lg,
                  ag_status_fn status, void *ctx);
/* "HOST:PORT" as bound (the port chosen when 0 was asked). */
const char *ag_http_bound(const ag_http *h);
/* On the loop: stop listening and close every connection; answers being
 * computed finish and are dropped. The loop then runs dry of our handles. */
void ag_http_close(ag_http *h);
/* After the loop has ended: free everything. NULL is a no-op. */
void ag_http_free(ag_http *h);

#endif
