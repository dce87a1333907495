/*
 * query.c - REP workers (see query.h). Every request gets exactly one reply:
 * a result, or an error with an ag_err code and text (AG_EPROTO for what
 * cannot be parsed, AG_EVERSION for another protocol version).
 */
#define _POSIX_C_SOURCE 200809L
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/ingest.h"
#include "daemon/query.h"
#include "daemon/secure.h"
#include "present/answer.h"
#include "proto/proto.h"
#include "schema/store.h"

_Static_assert(AG_STORE_MAX_POINTS == AG_PROTO_MAX_ITEMS,
               "a history the store answers must fit one reply");

typedef struct worker {
    struct ag_query *q;
    pthread_t thread;
    int started;
    nng_ctx ctx;
    nng_aio *aio;
    ag_store *store;
} worker;

struct ag_query {
    nng_socket sock;
    int open;
    const ag_config *cfg;
    ag_logger *log;
    ag_status_fn status;
    ag_asked_fn asked;
    void *status_ctx;
    worker workers[AG_QUERY_WORKERS];
};

/* Answer one decoded query into reply (proto/queries.h, present/answer.c);
 * returns the error code when the answer is an error, with text in err. */
static int answer(worker *w, const ag_msg *req, ag_msg *reply, int local, char *err,
                  size_t errlen) {
    const ag_query_def *def = ag_query_by_type(req->type);
    /* the waiting client's rows need not wait out the writer's batch time */
    if (req->type == AG_MSG_Q_DELIVERY && w->q->asked) w->q->asked(w->q->status_ctx);
    int rc = ag_answer(w->store, req, reply);
    /* A client of this daemon's user on its machine: its segment can be
     * mapped (daemon/shm.c), so its snapshots may wait for that. */
    if (!rc && req->type == AG_MSG_Q_RUN && local) reply->u.ident->caps |= AG_CAP_SHM;
    if (req->type == AG_MSG_Q_HISTORY || req->type == AG_MSG_Q_RUNS)
        reply->cols = ag_proto_reply_cols(reply->type, req->u.query.cols);
    if (!rc && (def->flags & AG_Q_LIVE)) w->q->status(w->q->status_ctx, reply->u.status);
    if (rc)
        snprintf(err, errlen, "%s",
                 rc == AG_EINVAL ? "missing argument" : ag_store_errmsg(w->store));
    return rc;
}

/* Build the reply bytes for one request message into out, in the version of
 * the request (so an older client can read it; the current one when the
 * request's version is unknown). */
static void serve(worker *w, const void *data, size_t len, int local, ag_buf *out) {
    ag_msg req = {0}, reply = {0};
    char err[AG_PROTO_MAX_ERROR_TEXT];
    int version = 0, type = 0;
    if (ag_proto_peek(data, len, &version, &type) || version < AG_PROTO_VERSION_MIN ||
        version > AG_PROTO_VERSION)
        version = 0;
    reply.version = version;
    int rc = ag_proto_decode(data, len, &req);
    if (rc) {
        snprintf(err, sizeof err, "bad request: %s", ag_errctx_text(&req.err));
        if (rc != AG_EVERSION && rc != AG_ETOOBIG) rc = AG_EPROTO;
    } else if (!ag_query_by_type(req.type)) {
        snprintf(err, sizeof err, "not a query: %s", ag_proto_type_name(req.type));
        rc = AG_EPROTO;
    } else {
        rc = answer(w, &req, &reply, local, err, sizeof err);
    }
    if (!rc) {
        rc = ag_proto_encode(out, &reply);
        if (rc) snprintf(err, sizeof err, "reply not encodable: %s", ag_errctx_text(&reply.err));
    }
    ag_answer_free(&reply);
    if (rc) {
        ag_msg e = {.type = AG_MSG_R_ERROR, .version = version};
        e.u.error.code = rc;
        e.u.error.text = err;
        ag_buf_reset(out);
        if (ag_proto_encode(out, &e))
            ag_log(w->q->log, AG_LOG_ERROR, "query: error reply not encodable");
        ag_log(w->q->log, rc == AG_ENOTFOUND ? AG_LOG_DEBUG : AG_LOG_INFO, "query: %s", err);
    }
    ag_msg_clear(&req);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    ag_buf out;
    ag_buf_init(&out);
    for (;;) {
        nng_ctx_recv(w->ctx, w->aio);
        nng_aio_wait(w->aio);
        int rv = nng_aio_result(w->aio);
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) break;
        if (rv) continue;
        nng_msg *m = nng_aio_get_msg(w->aio);
        ag_buf_reset(&out);
        uint64_t uid;
        int local = nng_pipe_get_uint64(nng_msg_get_pipe(m), NNG_OPT_IPC_PEER_UID, &uid) == 0 &&
                    uid == (uint64_t)geteuid();
        serve(w, nng_msg_body(m), nng_msg_len(m), local, &out);
        nng_msg_clear(m);
        if (out.err || nng_msg_append(m, out.data, out.len)) {
            nng_msg_free(m);
            continue; /* the client times out; nothing else we can do */
        }
        nng_aio_set_msg(w->aio, m);
        nng_ctx_send(w->ctx, w->aio);
        nng_aio_wait(w->aio);
        rv = nng_aio_result(w->aio);
        if (rv) nng_msg_free(nng_aio_get_msg(w->aio));
        if (rv == NNG_ECLOSED) break;
    }
    ag_buf_free(&out);
    return NULL;
}

int ag_query_start(ag_query **out, const ag_config *cfg, ag_logger *lg, ag_status_fn status,
                   ag_asked_fn asked, void *ctx) {
    ag_query *q = calloc(1, sizeof *q);
    if (!q) return AG_ENOMEM;
    *out = q;
    q->cfg = cfg;
    q->log = lg;
    q->status = status;
    q->asked = asked;
    q->status_ctx = ctx;
    int rv;
    if ((rv = nng_rep0_open(&q->sock))) goto fail;
    q->open = 1;
    nng_socket_set_size(q->sock, NNG_OPT_RECVMAXSZ, 1024 * 1024);
    for (int i = 0; i < AG_QUERY_WORKERS; i++) {
        worker *w = &q->workers[i];
        w->q = q;
        int err = ag_store_open(&w->store, cfg->db, AG_STORE_READONLY);
        if (err) {
            ag_log(lg, AG_LOG_ERROR, "query: %s", ag_store_errmsg(w->store));
            return err;
        }
        if ((rv = nng_ctx_open(&w->ctx, q->sock)) || (rv = nng_aio_alloc(&w->aio, NULL, NULL)))
            goto fail;
    }
    if (ag_ipc_prepare(cfg->query, lg)) return AG_EIO;
    nng_listener l;
    if ((rv = nng_listener_create(&l, q->sock, cfg->query))) {
        ag_log(lg, AG_LOG_ERROR, "query: bad URL %s: %s", cfg->query, nng_strerror(rv));
        return AG_ETRANSPORT;
    }
    if (strncmp(cfg->query, "ipc://", 6) == 0)
        nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0660);
    if (ag_secure_listener(l, cfg->query, lg)) return AG_ETRANSPORT;
    if ((rv = nng_listener_start(l, 0))) {
        ag_log(lg, AG_LOG_ERROR, "query: cannot listen on %s: %s", cfg->query, nng_strerror(rv));
        return AG_ETRANSPORT;
    }
    for (int i = 0; i < AG_QUERY_WORKERS; i++) {
        worker *w = &q->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return AG_ENOMEM;
        w->started = 1;
    }
    return AG_OK;
fail:
    ag_log(lg, AG_LOG_ERROR, "query: %s", nng_strerror(rv));
    return AG_ETRANSPORT;
}

void ag_query_stop(ag_query *q) {
    if (!q) return;
    if (q->open) nng_close(q->sock);
    for (int i = 0; i < AG_QUERY_WORKERS; i++) {
        worker *w = &q->workers[i];
        if (w->started) pthread_join(w->thread, NULL);
        if (w->aio) nng_aio_free(w->aio);
        ag_store_close(w->store);
    }
    free(q);
}
