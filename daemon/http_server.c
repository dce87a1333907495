/*
 * http_server.c - the web server (http.h) on nng's HTTP server: one tree
 * handler at "/" takes every method and path, so routing, 404 and 405 stay
 * in http_api.c. The handler runs on an nng thread; what needs no store
 * (the page, refusals) is answered there at once, the rest is queued
 * (bounded) for AG_HTTP_WORKERS threads that each own a read-only store
 * connection and finish the request's aio with the answer.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http_api.h"
#include "daemon/http_query.h"
#include "schema/store.h"

/* One request waiting for, or being answered by, a worker. */
typedef struct job {
    nng_aio *aio; /* the handler's; finished with the answer */
    struct job *next;
    ag_http_request req;
} job;

typedef struct worker {
    struct ag_http *h;
    pthread_t thread;
    int started;
    ag_store *store; /* read-only, opened on first need; this thread's only */
} worker;

struct ag_http {
    nng_http_server *server;
    ag_logger *log;
    ag_http_env env;
    char bound[80];
    int closed;
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t work;
    job *qhead, *qtail;
    size_t queued;
    int closing;  /* answer 503 from now on */
    int stopping; /* workers leave once the queue is empty */
    worker workers[AG_HTTP_WORKERS];
};

/* ------------------------------------------------------------- answering */

/* Hand r to nng as the request's response (nng writes it, drops the body for
 * HEAD, keeps the connection unless the client or HTTP/1.0 says otherwise)
 * and free the job. Any thread. */
static void reply(job *j, ag_http_response *r) {
    const char *type = r->content_type ? r->content_type : "application/json";
    nng_http_res *res = NULL;
    int rv = nng_http_res_alloc(&res);
    if (!rv) rv = nng_http_res_set_status(res, (uint16_t)r->status);
    if (!rv) rv = nng_http_res_set_header(res, "Content-Type", type);
    if (!rv) rv = nng_http_res_set_header(res, "Cache-Control", "no-store");
    if (!rv) rv = nng_http_res_set_header(res, "X-Content-Type-Options", "nosniff");
    if (!rv && r->status == 405) rv = nng_http_res_set_header(res, "Allow", "GET, HEAD");
    if (!rv && strncmp(type, "text/html", 9) == 0)
        rv = nng_http_res_set_header(res, "Content-Security-Policy",
                                     "default-src 'none'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; connect-src 'self'; "
                                     "img-src data:");
    if (!rv) /* a static body (the page) is lent, a computed one copied */
        rv = r->owned ? nng_http_res_copy_data(res, r->body, r->len)
                      : nng_http_res_set_data(res, r->body, r->len);
    if (rv) {
        nng_http_res_free(res);
        nng_aio_finish(j->aio, rv); /* nng closes the connection */
    } else {
        nng_aio_set_output(j->aio, 0, res);
        nng_aio_finish(j->aio, 0);
    }
    ag_http_response_clear(r);
    free(j);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    ag_http *h = w->h;
    pthread_mutex_lock(&h->lock);
    for (;;) {
        while (!h->qhead && !h->stopping) pthread_cond_wait(&h->work, &h->lock);
        job *j = h->qhead;
        if (!j) break; /* stopping, nothing left */
        h->qhead = j->next;
        if (!h->qhead) h->qtail = NULL;
        h->queued--;
        int closing = h->closing;
        pthread_mutex_unlock(&h->lock);
        ag_http_response res = {0};
        if (closing) {
            ag_http_error(&res, 503, "the daemon is stopping");
        } else {
            if (!w->store && ag_store_open(&w->store, h->env.cfg->db, AG_STORE_READONLY)) {
                ag_log(h->log, AG_LOG_ERROR, "http: %s",
                       w->store ? ag_store_errmsg(w->store) : "out of memory");
                ag_store_close(w->store);
                w->store = NULL; /* 500 now, another try next time */
            }
            ag_http_answer(&h->env, w->store, &j->req, &res);
        }
        reply(j, &res);
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    ag_store_close(w->store);
    w->store = NULL;
    return NULL;
}

/* nng's handler callback, on an nng thread, for every request of every
 * connection (nng has read and bounded the head). Never blocks but on the
 * queue's mutex. */
static void on_request(nng_aio *aio) {
    nng_http_req *hreq = nng_aio_get_input(aio, 0);
    nng_http_handler *hd = nng_aio_get_input(aio, 1);
    ag_http *h = nng_http_handler_get_data(hd);
    ag_http_response res = {0};
    job *j = malloc(sizeof *j);
    if (!j) {
        nng_aio_finish(aio, NNG_ENOMEM);
        return;
    }
    j->aio = aio;
    j->next = NULL;
    j->req.method = ag_http_method_of(nng_http_req_get_method(hreq));
    int rc = ag_http_parse_target(nng_http_req_get_uri(hreq), &j->req);
    if (rc) {
        ag_log(h->log, AG_LOG_DEBUG, "http: refused a request target (%d)", -rc);
        ag_http_error(&res, -rc,
                      rc == -414 ? "request target too long" : "malformed request target");
        reply(j, &res);
        return;
    }
    if (!ag_http_needs_store(&j->req)) { /* the page, 404s, 405s: no SQLite */
        ag_http_answer(&h->env, NULL, &j->req, &res);
        reply(j, &res);
        return;
    }
    pthread_mutex_lock(&h->lock);
    if (h->closing || h->queued >= AG_HTTP_QUEUE_MAX) {
        int closing = h->closing;
        pthread_mutex_unlock(&h->lock);
        ag_http_error(&res, 503, closing ? "the daemon is stopping" : "busy, try again");
        reply(j, &res);
        return;
    }
    if (h->qtail)
        h->qtail->next = j;
    else
        h->qhead = j;
    h->qtail = j;
    h->queued++;
    pthread_cond_signal(&h->work);
    pthread_mutex_unlock(&h->lock);
}

/* ------------------------------------------------------------- lifecycle */

static void stop_workers(ag_http *h) {
    pthread_mutex_lock(&h->lock);
    h->closing = 1;
    h->stopping = 1;
    pthread_cond_broadcast(&h->work);
    pthread_mutex_unlock(&h->lock);
    for (int i = 0; i < AG_HTTP_WORKERS; i++)
        if (h->workers[i].started) pthread_join(h->workers[i].thread, NULL);
}

/* "HOST:PORT" of the bound listener into h->bound. */
static void name_bound(ag_http *h, int v6) {
    nng_sockaddr sa;
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (nng_http_server_get_addr(h->server, &sa) == 0) {
        if (sa.s_family == NNG_AF_INET6) {
            inet_ntop(AF_INET6, sa.s_in6.sa_addr, host, sizeof host);
            port = ntohs(sa.s_in6.sa_port);
        } else if (sa.s_family == NNG_AF_INET) {
            inet_ntop(AF_INET, &sa.s_in.sa_addr, host, sizeof host);
            port = ntohs(sa.s_in.sa_port);
        }
    }
    snprintf(h->bound, sizeof h->bound, v6 ? "[%s]:%u" : "%s:%u", host, port);
    snprintf(h->env.address, sizeof h->env.address, "http://%s", h->bound);
}

int ag_http_start(ag_http **out, const ag_config *cfg, ag_logger *lg, ag_status_fn status,
                  ag_shm_stats_fn shm_stats, ag_pool_stats_fn pool_stats, void *ctx) {
    *out = NULL;
    ag_http *h = calloc(1, sizeof *h);
    if (!h) return AG_ENOMEM;
    h->log = lg;
    h->env.cfg = cfg;
    h->env.status = status;
    h->env.shm_stats = shm_stats;
    h->env.pool_stats = pool_stats;
    h->env.status_ctx = ctx;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->work, NULL);
    int v6 = strchr(cfg->http_host, ':') != NULL;
    char url[160];
    snprintf(url, sizeof url, v6 ? "http://[%s]:%d/" : "http://%s:%d/", cfg->http_host,
             cfg->http_port);
    nng_url *u = NULL;
    nng_http_handler *hd = NULL;
    int rv = nng_url_parse(&u, url);
    if (!rv) rv = nng_http_server_hold(&h->server, u);
    nng_url_free(u);
    if (!rv)
        rv = nng_http_server_set_limits(h->server, AG_HTTP_CONNECTIONS_MAX, AG_HTTP_TIMEOUT_MS);
    /* every method (405 is ours) and every path below "/" (404 is ours); a
     * request with a body is refused by nng (400): we serve GET and HEAD */
    if (!rv) rv = nng_http_handler_alloc(&hd, "/", on_request);
    if (!rv) rv = nng_http_handler_set_method(hd, NULL);
    if (!rv) rv = nng_http_handler_set_tree(hd);
    if (!rv) rv = nng_http_handler_collect_body(hd, true, 0);
    if (!rv) rv = nng_http_handler_set_data(hd, h, NULL);
    if (!rv) rv = nng_http_server_add_handler(h->server, hd);
    if (rv && hd) nng_http_handler_free(hd);
    for (int i = 0; i < AG_HTTP_WORKERS && !rv; i++) {
        h->workers[i].h = h;
        if (pthread_create(&h->workers[i].thread, NULL, worker_main, &h->workers[i]) != 0)
            rv = NNG_ENOMEM;
        else
            h->workers[i].started = 1;
    }
    if (!rv) rv = nng_http_server_start(h->server);
    if (rv) {
        ag_log(lg, AG_LOG_WARNING, "http: cannot listen on %s: %s; going on without HTTP",
               cfg->http, nng_strerror(rv));
        stop_workers(h);
        if (h->server) nng_http_server_release(h->server);
        pthread_cond_destroy(&h->work);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return AG_EIO;
    }
    name_bound(h, v6);
    *out = h;
    return AG_OK;
}

const char *ag_http_bound(const ag_http *h) { return h && !h->closed ? h->bound : NULL; }

void ag_http_close(ag_http *h) {
    if (!h || h->closed) return;
    h->closed = 1;
    pthread_mutex_lock(&h->lock);
    h->closing = 1; /* queued requests are answered 503 at once */
    pthread_cond_broadcast(&h->work);
    pthread_mutex_unlock(&h->lock);
    /* Closes every connection and returns once each is gone, which waits for
     * the aio of any request still with us: the workers must run until then. */
    nng_http_server_stop(h->server);
    nng_http_server_release(h->server);
    h->server = NULL;
    stop_workers(h);
}

void ag_http_free(ag_http *h) {
    if (!h) return;
    ag_http_close(h);
    pthread_cond_destroy(&h->work);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
