/*
 * query.c - the query calls: encode a request, send it over the handle's
 * REQ socket on a fresh nng context (so several threads can query at once),
 * wait for the reply within the query timeout, decode it into a result the
 * caller frees with ag_free. Error replies become AG_ENOTFOUND / AG_EREMOTE.
 * While the socket has no connection, a query first checks that a daemon is
 * there at all (endpoint.c), so a missing one fails at once, named.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>

#define PROBE_MS 1000 /* the longest a query waits to learn that no daemon is there */

#include "client/client_internal.h"
#include "client/query_any.h"
#include "client/tls.h"
#include "proto/spec.h"

/* The last failure of a query (or of a flush or close that asked the
 * daemon), per thread, and the handle it was on: the client's error context
 * (core/errctx.h), read back by ag_client_last_error. */
static _Thread_local const ag_client *last_client;
static _Thread_local ag_errctx last_error;

static int fail_with(const ag_client *c, int rc, const char *text) {
    last_client = c;
    return ag_errctx_set(&last_error, rc, "%s", text ? text : "");
}

void ag_client_note_error(const ag_client *c, const char *text) {
    if (!c) ag_client_note_open_error(text); /* an open that failed */
    fail_with(c, AG_OK, text);
}

/* Why the last ag_client_open on this thread failed (ag_client_last_error(NULL)). */
static _Thread_local char open_error[AG_PROTO_MAX_ERROR_TEXT + 1];

void ag_client_note_open_error(const char *text) {
    snprintf(open_error, sizeof open_error, "%s", text ? text : "");
}

const char *ag_client_last_error(const ag_client *c) {
    if (!c) return open_error;
    return last_client == c ? ag_errctx_text(&last_error) : "";
}

static int transport_error(const ag_client *c, int rv, const char *what, int timeout_ms) {
    char text[512];
    if (rv == NNG_ETIMEDOUT) {
        if (ag_tls_url(c->query_url) && atomic_load(&c->req_pipes) == 0)
            /* TCP connects (the probe said so) but no session came of it */
            snprintf(text, sizeof text,
                     "no reply from %s within %d ms: no TLS session with the daemon (it "
                     "refused this client's certificate, or its own does not chain to tls_ca "
                     "or does not carry the server name expected)",
                     c->query_url, timeout_ms);
        else
            snprintf(text, sizeof text, "no reply from %s within %d ms", c->query_url, timeout_ms);
        return fail_with(c, AG_ETIMEDOUT, text);
    }
    snprintf(text, sizeof text, "%s %s: %s", what, c->query_url, nng_strerror(rv));
    /* closed or cancelled: the handle is closing (ag_client_close) */
    return fail_with(c,
                     rv == NNG_ENOMEM                           ? AG_ENOMEM
                     : rv == NNG_ECLOSED || rv == NNG_ECANCELED ? AG_ECLOSED
                                                                : AG_ETRANSPORT,
                     text);
}

/* Fail at once when no daemon is at the query URL: only while the socket
 * has no connection (with one, the daemon is there and nng's wait is right). */
static int check_daemon(const ag_client *c, int timeout_ms) {
    if (atomic_load(&c->req_pipes) > 0) return AG_OK;
    char why[768], text[AG_PROTO_MAX_ERROR_TEXT + 1];
    int probe_ms = timeout_ms < PROBE_MS ? timeout_ms : PROBE_MS;
    if (ag_endpoint_probe(c->query_url, probe_ms, 1, why, sizeof why) == AG_OK) return AG_OK;
    ag_endpoint_explain(c->query_url, c->query_origin, 0, why, text, sizeof text);
    return fail_with(c, AG_ETRANSPORT, text);
}

/* Send req, receive and decode the reply of type want into *reply (the
 * caller clears it), all within timeout_ms. */
static int exchange(ag_client *c, const ag_msg *req, int want, int timeout_ms, ag_msg *reply) {
    nng_msg *msg = NULL;
    nng_aio *aio = NULL;
    nng_ctx ctx;
    int have_ctx = 0;
    ag_query_slot slot = {NULL, NULL};
    memset(reply, 0, sizeof *reply);
    if (ag_client_forked(c))
        return fail_with(c, AG_ECLOSED, "this handle belongs to the parent process (fork)");
    /* counted in callers: close waits for us (closing the socket first, so
     * we fail at once instead of at the timeout) */
    pthread_mutex_lock(&c->mu);
    int closing = c->stopping;
    if (!closing) c->callers++;
    pthread_mutex_unlock(&c->mu);
    if (closing) return fail_with(c, AG_ECLOSED, "the client is closing");
    int rc = ag_client_encode_msg(req, &msg);
    if (rc) {
        const char *said = ag_errctx_text(&req->err);
        rc = fail_with(c, rc, *said ? said : ag_strerror(rc));
        goto fail;
    }
    if ((rc = check_daemon(c, timeout_ms))) goto fail;
    int rv = nng_aio_alloc(&aio, NULL, NULL);
    if (!rv && !(rv = nng_ctx_open(&ctx, c->req))) have_ctx = 1;
    if (rv) {
        rc = transport_error(c, rv, "cannot query", timeout_ms);
        goto fail;
    }
    slot.aio = aio;
    pthread_mutex_lock(&c->mu);
    slot.next = c->queries;
    c->queries = &slot;
    pthread_mutex_unlock(&c->mu);
    int64_t deadline = ag_mono_ms() + timeout_ms;
    nng_aio_set_timeout(aio, timeout_ms);
    nng_aio_set_msg(aio, msg);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) {
        rc = transport_error(c, rv, "cannot send to", timeout_ms);
        goto fail; /* msg is still ours */
    }
    msg = NULL; /* the socket owns it now */
    int64_t left = deadline - ag_mono_ms();
    nng_aio_set_timeout(aio, left > 0 ? (nng_duration)left : 1);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) {
        rc = transport_error(c, rv, "no reply from", timeout_ms);
        goto fail;
    }
    msg = nng_aio_get_msg(aio);
    rc = ag_proto_decode(nng_msg_body(msg), nng_msg_len(msg), reply);
    if (rc) {
        char text[256];
        snprintf(text, sizeof text, "malformed reply from %s: %s", c->query_url,
                 ag_errctx_text(&reply->err));
        rc = fail_with(c, rc, text);
        goto fail;
    }
    if (reply->type == AG_MSG_R_ERROR) {
        rc = reply->u.error.code == AG_ENOTFOUND ? AG_ENOTFOUND : AG_EREMOTE;
        fail_with(c, rc, reply->u.error.text);
        goto fail;
    }
    if (reply->type != want) {
        rc = fail_with(c, AG_EPROTO, "the daemon answered with another reply type");
        goto fail;
    }
    rc = AG_OK;
fail:
    if (rc) ag_msg_clear(reply);
    if (msg) nng_msg_free(msg);
    pthread_mutex_lock(&c->mu);
    for (ag_query_slot **q = &c->queries; *q; q = &(*q)->next)
        if (*q == &slot) {
            *q = slot.next;
            break;
        }
    pthread_mutex_unlock(&c->mu);
    if (have_ctx) nng_ctx_close(ctx);
    if (aio) nng_aio_free(aio);
    pthread_mutex_lock(&c->mu);
    ag_client_leave_locked(c);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ag_client_query_delivery(ag_client *c, int timeout_ms, ag_msg_delivery *out) {
    ag_msg req = {.type = AG_MSG_Q_DELIVERY}, reply;
    req.u.delivery.client_id = c->client_id;
    int rc = exchange(c, &req, AG_MSG_R_DELIVERY, timeout_ms > 0 ? timeout_ms : 1, &reply);
    if (rc == AG_OK) {
        *out = reply.u.delivery;
        ag_msg_clear(&reply);
        if (out->client_id != c->client_id)
            rc = fail_with(c, AG_EPROTO, "the daemon answered about another client");
    }
    return rc;
}

static int name_arg(const ag_client *c, const char *s) {
    if (!s) return fail_with(c, AG_EINVAL, "a run or tensor name is NULL");
    size_t n = strnlen(s, AG_NAME_MAX + 1);
    if (n > AG_NAME_MAX) return fail_with(c, AG_ETOOBIG, "a name is longer than 255 bytes");
    if (n == 0) return fail_with(c, AG_EINVAL, "a name is empty");
    return AG_OK;
}

static int format_arg(const ag_client *c, const char *s) {
    if (s && !ag_proto_format_name_ok(s, strlen(s)))
        return fail_with(c, AG_EINVAL, "a format name is not 1..15 of [A-Za-z0-9_-]");
    return AG_OK;
}

/* The parameters of req by its table (proto/spec.c): a required name must
 * be there, any name and format given must be valid. */
static int check_params(const ag_client *c, const ag_msg *req) {
    size_t n;
    const ag_field *p = ag_query_params(req->type, &n);
    for (size_t i = 0; i < n; i++) {
        const char *v = NULL;
        if (p[i].kind == K_NAME || p[i].kind == K_FMT)
            memcpy(&v, (const char *)&req->u + p[i].off, sizeof v);
        int rc = p[i].kind == K_FMT                                 ? format_arg(c, v)
                 : p[i].kind == K_NAME && (v || p[i].flags & F_REQ) ? name_arg(c, v)
                                                                    : AG_OK;
        if (rc) return rc;
    }
    return AG_OK;
}

int ag_client_ask(ag_client *c, const ag_msg *req, ag_msg *reply) {
    const ag_query_def *def = ag_query_by_type(req->type);
    memset(reply, 0, sizeof *reply);
    if (!def) return fail_with(c, AG_EINVAL, "not a query");
    int rc = check_params(c, req);
    if (rc) return rc;
    if ((req->type == AG_MSG_Q_HISTORY || req->type == AG_MSG_Q_RUNS) && req->u.query.cols == 0) {
        /* libaltgrad reads every column it knows: ask for them all */
        ag_msg all = *req;
        all.u.query.cols = ag_proto_reply_cols(def->r, UINT64_MAX);
        return exchange(c, &all, def->r, c->opts.query_timeout_ms, reply);
    }
    return exchange(c, req, def->r, c->opts.query_timeout_ms, reply);
}

/* A query whose reply carries an ag_free-able result, into *result. */
static int query(ag_client *c, const ag_msg *req, void **result) {
    ag_msg reply;
    int rc = ag_client_ask(c, req, &reply);
    if (rc == AG_OK) {
        *result = ag_msg_take_result(&reply);
        ag_msg_clear(&reply);
    }
    return rc;
}

/* The public queries of altgrad.h: each fills its request and asks. */
int ag_client_runs(ag_client *c, ag_run_list **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_RUNS};
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_tensors(ag_client *c, const char *run, ag_tensor_list **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_TENSORS};
    req.u.query.run = run;
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_history(ag_client *c, const ag_history_query *q, ag_history **out) {
    if (!c || !q || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_HISTORY};
    req.u.query.run = q->run;
    req.u.query.tensor = q->tensor;
    req.u.query.format = q->format;
    req.u.query.from_step = q->from_step;
    req.u.query.to_step = q->to_step;
    req.u.query.every = q->every; /* ag_client_ask asks for every column */
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_scales(ag_client *c, const char *run, const char *format, ag_scale_list **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_SCALES};
    req.u.query.run = run;
    req.u.query.format = format;
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_top(ag_client *c, const char *run, const char *format, uint64_t window, size_t limit,
                  ag_top_list **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_TOP};
    req.u.query.run = run;
    req.u.query.format = format;
    req.u.query.window = window;
    req.u.query.limit = limit;
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_report(ag_client *c, const char *run, const char *formats, size_t width,
                     ag_report **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_REPORT};
    req.u.query.run = run;
    req.u.query.formats = formats;
    req.u.query.width = width;
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}

int ag_client_status(ag_client *c, ag_status **out) {
    if (!c || !out) return AG_EINVAL;
    ag_msg req = {.type = AG_MSG_Q_STATUS};
    void *res = NULL;
    int rc = query(c, &req, &res);
    *out = res;
    return rc;
}
