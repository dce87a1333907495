/*
 * http.c - the web server's sockets (http.h): accept on the loop, read one
 * bounded request head per connection under a timer, compute the answer on
 * the libuv thread pool (at most AG_HTTP_POOL_JOBS at once, the rest wait in
 * a FIFO, so snapshot jobs keep their threads), write it, close.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http_api.h"
#include "daemon/http_parse.h"
#include "schema/store.h"

enum conn_state { C_READING, C_QUEUED, C_WORKING, C_WRITING, C_LINGER, C_CLOSING };

/* After our answer and FIN, how long we read and discard what the client
 * still sends before closing: closing with unread bytes would reset the
 * connection and could destroy the answer on its way (a refused oversized
 * request is the usual case). */
#define LINGER_MS 2000

typedef struct conn {
    struct ag_http *h;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int open_handles; /* freed when both handles have closed */
    int state;
    struct conn *prev, *next; /* all connections */
    struct conn *qnext;       /* waiting for a pool slot */
    char buf[AG_HTTP_HEAD_MAX];
    size_t len;
    ag_http_request req;
    ag_http_response res;
    uv_work_t work;
    uv_write_t wr;
    uv_shutdown_t sd;
    char head[768];
} conn;

struct ag_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int listening, closing;
    ag_logger *log;
    ag_http_env env;
    char bound[80];
    conn *conns;
    size_t nconns;
    conn *qhead, *qtail;
    int jobs; /* pool jobs in flight */
    /* read-only store connections, one per pool job at most */
    pthread_mutex_t lock;
    ag_store *stores[AG_HTTP_POOL_JOBS];
    size_t nstores;
};

static void start_job(conn *c);

/* ------------------------------------------------------------- closing */

static void on_handle_closed(uv_handle_t *hd) {
    conn *c = hd->data;
    if (--c->open_handles > 0) return;
    ag_http_response_clear(&c->res);
    free(c);
}

/* Unlink and close both handles; a connection whose answer is being
 * computed is closed when the job comes back. */
static void conn_close(conn *c) {
    ag_http *h = c->h;
    if (c->state == C_CLOSING) return;
    if (c->state == C_WORKING) {
        c->state = C_CLOSING; /* after_job sees it */
        return;
    }
    if (c->state == C_QUEUED) { /* take it out of the FIFO */
        conn **pp = &h->qhead, *last = NULL;
        while (*pp && *pp != c) {
            last = *pp;
            pp = &(*pp)->qnext;
        }
        if (*pp) {
            *pp = c->qnext;
            if (h->qtail == c) h->qtail = last;
        }
    }
    c->state = C_CLOSING;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    h->nconns--;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_timeout(uv_timer_t *t) {
    conn *c = t->data;
    ag_log(c->h->log, AG_LOG_DEBUG, "http: connection timed out");
    conn_close(c);
}

/* ------------------------------------------------------------- writing */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_shutdown(uv_shutdown_t *sd, int status) {
    conn *c = sd->data;
    if (c->state != C_WRITING) return;
    c->state = C_LINGER;
    c->len = 0;
    if (status != 0 || uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, LINGER_MS, 0);
}

static void on_written(uv_write_t *wr, int status) {
    conn *c = wr->data;
    if (c->state != C_WRITING) return; /* closed meanwhile (timeout) */
    if (status == 0 && uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) == 0) return;
    conn_close(c);
}

/* Send c->res (head only for HEAD) and close after it. */
static void respond(conn *c) {
    ag_http_response *r = &c->res;
    int n = snprintf(c->head, sizeof c->head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "%s%s\r\n",
                     r->status, ag_http_reason(r->status),
                     r->content_type ? r->content_type : "application/json", r->len,
                     r->status == 405 ? "Allow: GET, HEAD\r\n" : "",
                     strncmp(r->content_type ? r->content_type : "", "text/html", 9) == 0
                         ? "Content-Security-Policy: default-src 'none'; "
                           "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src data:\r\n"
                         : "");
    uv_buf_t bufs[2];
    unsigned nbufs = 1;
    bufs[0] = uv_buf_init(c->head, (unsigned)(n < (int)sizeof c->head ? n : 0));
    if (r->len > 0 && c->req.method != AG_HTTP_HEAD) {
        bufs[1] = uv_buf_init(r->body, (unsigned)r->len);
        nbufs = 2;
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->state = C_WRITING;
    c->wr.data = c;
    c->sd.data = c;
    uv_timer_start(&c->timer, on_timeout, AG_HTTP_TIMEOUT_MS, 0);
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, nbufs, on_written) != 0) conn_close(c);
}

static void respond_error(conn *c, int status, const char *text) {
    ag_http_error(&c->res, status, text);
    respond(c);
}

/* ---------------------------------------------------------------- pool */

static ag_store *store_get(ag_http *h) {
    ag_store *st = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->nstores > 0) st = h->stores[--h->nstores];
    pthread_mutex_unlock(&h->lock);
    if (st) return st;
    if (ag_store_open(&st, h->env.cfg->db, AG_STORE_READONLY)) {
        ag_log(h->log, AG_LOG_ERROR, "http: %s", st ? ag_store_errmsg(st) : "out of memory");
        ag_store_close(st);
        return NULL;
    }
    return st;
}

static void store_put(ag_http *h, ag_store *st) {
    if (!st) return;
    pthread_mutex_lock(&h->lock);
    if (h->nstores < AG_HTTP_POOL_JOBS) {
        h->stores[h->nstores++] = st;
        st = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    ag_store_close(st);
}

/* Pool thread: the request and response belong to this job until after_job. */
static void job_run(uv_work_t *w) {
    conn *c = w->data;
    ag_http *h = c->h;
    ag_store *st = ag_http_needs_store(&c->req) ? store_get(h) : NULL;
    ag_http_answer(&h->env, st, &c->req, &c->res);
    store_put(h, st);
}

static void after_job(uv_work_t *w, int status) {
    conn *c = w->data;
    ag_http *h = c->h;
    h->jobs--;
    if (c->state == C_CLOSING || h->closing) {
        c->state = C_READING; /* so conn_close does the closing now */
        conn_close(c);
    } else if (status != 0) {
        respond_error(c, 500, "cancelled");
    } else {
        respond(c);
    }
    while (h->qhead && h->jobs < AG_HTTP_POOL_JOBS && !h->closing) {
        conn *next = h->qhead;
        h->qhead = next->qnext;
        if (!h->qhead) h->qtail = NULL;
        start_job(next);
    }
}

static void start_job(conn *c) {
    ag_http *h = c->h;
    if (h->jobs >= AG_HTTP_POOL_JOBS) {
        c->state = C_QUEUED;
        c->qnext = NULL;
        if (h->qtail)
            h->qtail->qnext = c;
        else
            h->qhead = c;
        h->qtail = c;
        return;
    }
    c->state = C_WORKING;
    c->work.data = c;
    if (uv_queue_work(h->loop, &c->work, job_run, after_job) != 0) {
        c->state = C_READING;
        respond_error(c, 503, "busy");
        return;
    }
    h->jobs++;
}

/* ------------------------------------------------------------- reading */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf) {
    conn *c = hd->data;
    (void)suggested;
    if (c->state == C_LINGER) c->len = 0; /* discarding */
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof c->buf - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    conn *c = s->data;
    (void)buf;
    if (c->state == C_LINGER && nread < 0) conn_close(c); /* the client is done */
    if (c->state != C_READING) return;
    if (nread < 0) {
        conn_close(c); /* EOF or error before a whole head */
        return;
    }
    c->len += (size_t)nread;
    long rc = ag_http_parse_head(c->buf, c->len, &c->req);
    if (rc == 0 && c->len < sizeof c->buf) return; /* more to come */
    if (rc == 0) rc = -431;
    uv_timer_stop(&c->timer);
    if (rc < 0) {
        const char *why = rc == -414   ? "request line too long"
                          : rc == -431 ? "request head too large"
                          : rc == -505 ? "only HTTP/1.x is served"
                                       : "malformed request";
        ag_log(c->h->log, AG_LOG_DEBUG, "http: refused a request: %s", why);
        c->req.method = AG_HTTP_GET; /* send the error body */
        respond_error(c, (int)-rc, why);
        return;
    }
    if (c->req.method == AG_HTTP_OTHER) {
        respond_error(c, 405, "only GET and HEAD are served");
        return;
    }
    if (!ag_http_needs_store(&c->req)) { /* the page, 404s, 400s: no SQLite */
        ag_http_answer(&c->h->env, NULL, &c->req, &c->res);
        respond(c);
        return;
    }
    uv_read_stop(s);
    start_job(c);
}

static void on_connection(uv_stream_t *server, int status) {
    ag_http *h = server->data;
    if (status < 0 || h->closing) return;
    conn *c = calloc(1, sizeof *c);
    if (!c) return;
    c->h = h;
    uv_tcp_init(h->loop, &c->tcp);
    c->tcp.data = c;
    c->open_handles = 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || h->nconns >= AG_HTTP_CONNECTIONS_MAX) {
        if (h->nconns >= AG_HTTP_CONNECTIONS_MAX)
            ag_log(h->log, AG_LOG_WARNING, "http: %d connections open; closing a new one",
                   AG_HTTP_CONNECTIONS_MAX);
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    uv_timer_init(h->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->state = C_READING;
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    uv_timer_start(&c->timer, on_timeout, AG_HTTP_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* ----------------------------------------------------------- lifecycle */

int ag_http_start(ag_http **out, uv_loop_t *loop, const ag_config *cfg, ag_logger *lg,
                  ag_status_fn status, void *ctx) {
    *out = NULL;
    ag_http *h = calloc(1, sizeof *h);
    if (!h) return AG_ENOMEM;
    h->loop = loop;
    h->log = lg;
    h->env.cfg = cfg;
    h->env.status = status;
    h->env.status_ctx = ctx;
    pthread_mutex_init(&h->lock, NULL);
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } addr;
    int v6 = strchr(cfg->http_host, ':') != NULL, rv;
    rv = v6 ? uv_ip6_addr(cfg->http_host, cfg->http_port, &addr.in6)
            : uv_ip4_addr(cfg->http_host, cfg->http_port, &addr.in4);
    if (rv == 0) rv = uv_tcp_init(loop, &h->listener);
    if (rv) goto fail;
    h->listener.data = h;
    h->listening = 1;
    if ((rv = uv_tcp_bind(&h->listener, &addr.sa, 0)) ||
        (rv = uv_listen((uv_stream_t *)&h->listener, 128, on_connection)))
        goto fail;
    int alen = sizeof addr;
    char host[64] = "?";
    int port = 0;
    if (uv_tcp_getsockname(&h->listener, &addr.sa, &alen) == 0) {
        if (addr.sa.sa_family == AF_INET6) {
            uv_ip6_name(&addr.in6, host, sizeof host);
            port = ntohs(addr.in6.sin6_port);
        } else {
            uv_ip4_name(&addr.in4, host, sizeof host);
            port = ntohs(addr.in4.sin_port);
        }
    }
    snprintf(h->bound, sizeof h->bound, v6 ? "[%s]:%d" : "%s:%d", host, port);
    snprintf(h->env.address, sizeof h->env.address, "http://%s", h->bound);
    *out = h;
    return AG_OK;
fail:
    ag_log(lg, AG_LOG_WARNING, "http: cannot listen on %s: %s; going on without HTTP", cfg->http,
           uv_strerror(rv));
    if (h->listening) {
        h->closing = 1;
        uv_close((uv_handle_t *)&h->listener, NULL);
        /* the handle is closed on the next loop turn; keep h until free */
        *out = h;
        h->bound[0] = '\0';
        return AG_EIO;
    }
    pthread_mutex_destroy(&h->lock);
    free(h);
    return AG_EIO;
}

const char *ag_http_bound(const ag_http *h) { return h && !h->closing ? h->bound : NULL; }

void ag_http_close(ag_http *h) {
    if (!h || h->closing) return;
    h->closing = 1;
    uv_close((uv_handle_t *)&h->listener, NULL);
    while (h->qhead) {
        conn *c = h->qhead;
        h->qhead = c->qnext;
        c->state = C_READING;
        conn_close(c);
    }
    h->qtail = NULL;
    conn *c = h->conns;
    while (c) {
        conn *next = c->next;
        conn_close(c); /* a working one closes when its job returns */
        c = next;
    }
}

void ag_http_free(ag_http *h) {
    if (!h) return;
    for (size_t i = 0; i < h->nstores; i++) ag_store_close(h->stores[i]);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
