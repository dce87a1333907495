/*
 * answer.c - how the store answers each query: the "answer" column of
 * proto/queries.h expanded into one switch, plus the two answers (q_run,
 * q_delivery) that need a step more than a store call.
 */
#define _POSIX_C_SOURCE 200809L
#include "present/answer.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "proto/spec.h"

/* A count the wire carries as uint64 and the store takes as size_t. */
#define SIZE_ARG(v) ((v) > SIZE_MAX ? SIZE_MAX : (size_t)(v))

/* The run client_id's messages are filed under, as committed: a client asks
 * again (AG_ENOTFOUND) until its start is in the file, a batch away. */
static int answer_client_run(ag_store *st, uint64_t client_id, ag_run_ident **out) {
    char run[AG_NAME_MAX + 1], launch[AG_LAUNCH_ID_MAX + 1];
    int rc = ag_store_client_run(st, client_id, run, sizeof run, launch, sizeof launch);
    if (rc) return rc;
    ag_run_ident *id = ag_arena_new(sizeof *id);
    if (!id) return AG_ENOMEM;
    id->run = ag_arena_strdup(id, run);
    id->launch = ag_arena_strdup(id, launch);
    id->caps = AG_CAPS;
    if (!id->run || !id->launch) {
        ag_free(id);
        return AG_ENOMEM;
    }
    *out = id;
    return AG_OK;
}

/* From the store: "stored" means committed. */
static int answer_delivery(ag_store *st, const ag_msg *req, ag_msg *out) {
    out->u.delivery.client_id = req->u.delivery.client_id;
    return ag_store_delivery(st, req->u.delivery.client_id, &out->u.delivery.messages,
                             &out->u.delivery.seq);
}

/* A required name parameter the request lacks (a request built in the
 * process may; a decoded one cannot). */
static int missing_argument(const ag_msg *req) {
    size_t n;
    const ag_field *p = ag_query_params(req->type, &n);
    for (size_t i = 0; i < n; i++)
        if ((p[i].flags & F_REQ) && p[i].kind == K_NAME &&
            !*(const char *const *)(const void *)((const char *)&req->u + p[i].off))
            return 1;
    return 0;
}

int ag_answer(ag_store *st, const ag_msg *req, ag_msg *out) {
    const ag_msg_query *a = &req->u.query;
    const ag_query_def *def = ag_query_by_type(req->type);
    int version = out->version; /* the caller's */
    memset(out, 0, sizeof *out);
    out->version = version;
    if (!def) return AG_EPROTO;
    if (missing_argument(req)) return AG_EINVAL;
    out->type = def->r;
    int rc;
    switch (req->type) {
#define ANSWER_(NAME, name, q, result, flags, answer)                                              \
    case q: rc = (answer); break;
        AG_QUERY_LIST(ANSWER_)
#undef ANSWER_
    default: rc = AG_EPROTO; break;
    }
    (void)a;
    if (rc) ag_answer_free(out);
    return rc;
}

void ag_answer_free(ag_msg *reply) {
    ag_free(ag_msg_result(reply));
    memset(&reply->u, 0, sizeof reply->u);
}

void ag_answer_describe(const ag_msg *req, char *buf, size_t cap) {
    size_t n, len = 0;
    const ag_field *p = ag_query_params(req->type, &n);
    if (cap) buf[0] = '\0';
    for (size_t i = 0; i < n && len < cap; i++) {
        if (!p[i].doc || (p[i].kind != K_NAME && p[i].kind != K_FMT)) continue;
        const char *v = *(const char *const *)(const void *)((const char *)&req->u + p[i].off);
        int w = snprintf(buf + len, cap - len, "%s%s '%s'", len ? ", " : "", p[i].doc, v ? v : "");
        if (w < 0) break;
        len += (size_t)w;
    }
}
