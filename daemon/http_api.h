/*
 * http_api.h - what altgradd's web server answers: the page, the JSON API
 * (the CLI's --json documents, present/json.h) and /metrics. Answers that
 * read the store run on one of the web server's worker threads, each with its
 * own read-only store connection (http_server.c); never on the loop.
 */
#ifndef AG_DAEMON_HTTP_API_H
#define AG_DAEMON_HTTP_API_H

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/http_query.h"
#include "daemon/query.h"
#include "schema/store.h"

/* /metrics exports per-tensor gauges for at most this many tensors (those of
 * the most recently started runs first), so a huge store cannot make a
 * scrape unbounded. */
#define AG_HTTP_METRICS_TENSORS_MAX 1000

typedef struct ag_http_env {
    const ag_config *cfg;
    ag_status_fn status;         /* the live counters; thread-safe */
    ag_shm_stats_fn shm_stats;   /* thread-safe; NULL: the families show 0 */
    ag_pool_stats_fn pool_stats; /* the same */
    void *status_ctx;            /* the three functions' */
    char address[96];            /* "http://HOST:PORT", as bound */
} ag_http_env;

typedef struct ag_http_response {
    int status; /* 200, 400, 404, 405, 500 ... */
    const char *content_type;
    char *body; /* malloc'ed, or static when !owned */
    size_t len;
    int owned;
} ag_http_response;

/* Whether answering the request needs a store connection. */
int ag_http_needs_store(const ag_http_request *req);
/* Answer req into res (always filled: errors are JSON {"error": "..."}).
 * st may be NULL when the request needs none or the store cannot be opened
 * (then 500). Free the body with ag_http_response_clear. */
void ag_http_answer(const ag_http_env *env, ag_store *st, const ag_http_request *req,
                    ag_http_response *res);
/* A JSON error response: {"error": text}. */
void ag_http_error(ag_http_response *res, int status, const char *text);
void ag_http_response_clear(ag_http_response *res);

/* The page (http_page.c): one self-contained HTML document. */
extern const char ag_http_page[];

#endif
