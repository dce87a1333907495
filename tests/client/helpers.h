/*
 * helpers.h - test-only: temporary ipc endpoints under mkdtemp and a test
 * receiver (an nng PULL socket) that decodes what the client sends. Receive
 * timeouts are generous bounds against hangs, never timing assertions.
 */
#ifndef AG_TESTS_CLIENT_HELPERS_H
#define AG_TESTS_CLIENT_HELPERS_H

#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/reqrep0/rep.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"
#include "tests/tmpdir.h"

#define RECV_BOUND_MS 10000 /* a bound against hanging, not a timing check */

typedef struct tmp_endpoints {
    char dir[64];
    char ingest[128];
    char query[128];
} tmp_endpoints;

static inline void tmp_endpoints_make(tmp_endpoints *t) {
    snprintf(t->dir, sizeof t->dir, "/tmp/ag-client-XXXXXX");
    cr_assert_not_null(mkdtemp(t->dir));
    snprintf(t->ingest, sizeof t->ingest, "ipc://%s/ingest.sock", t->dir);
    snprintf(t->query, sizeof t->query, "ipc://%s/query.sock", t->dir);
}

static inline void tmp_endpoints_remove(tmp_endpoints *t) { ag_tmpdir_remove(t->dir); }

static inline nng_socket receiver_open(const char *url) {
    nng_socket s;
    cr_assert_eq(nng_pull0_open(&s), 0);
    cr_assert_eq(nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, AG_PROTO_MAX_MESSAGE), 0);
    cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, RECV_BOUND_MS), 0);
    int rv = nng_listen(s, url, NULL, 0);
    cr_assert_eq(rv, 0, "listen %s: %s", url, nng_strerror(rv));
    return s;
}

/* Receive and decode one message; the nng message is kept in *keep so the
 * decoded payload pointers stay valid (free both with received_free). */
static inline int receive(nng_socket s, ag_msg *m, nng_msg **keep) {
    nng_msg *msg;
    int rv = nng_recvmsg(s, &msg, 0);
    if (rv) return rv;
    int rc = ag_proto_decode(nng_msg_body(msg), nng_msg_len(msg), m);
    cr_assert_eq(rc, AG_OK, "the client sent a message we cannot decode: %s",
                 ag_errctx_text(&m->err));
    *keep = msg;
    return 0;
}

static inline void received_free(ag_msg *m, nng_msg *keep) {
    ag_msg_clear(m);
    nng_msg_free(keep);
}

static inline void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The test receiver is no daemon: nothing confirms delivery, so a flush
 * cannot succeed against it. Instead hand everything logged so far to the
 * transport: flush(0) queues the open batch (when there is room) and the
 * queue is watched until it is empty right after such a call (bounded). */
static inline void wait_handed_off(ag_client *c) {
    for (int i = 0; i < RECV_BOUND_MS; i++) {
        ag_client_flush(c, 0);
        ag_client_stats st;
        cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
        if (st.queued == 0) return;
        sleep_ms(1);
    }
    cr_assert_fail("the send queue never drained into the receiver");
}

#endif
