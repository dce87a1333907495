/*
 * identity.c - which run this client is (PROTOCOL.md 3.1): its launch id
 * (the option, torchrun's run id, $ALTGRAD_LAUNCH_ID, or one of its own), and
 * the name the daemon filed its run under. The stream is one-way, so once
 * run_start went out the client asks (q_run on its REQ socket) through one
 * aio whose callback chain sends, receives, and asks again after a pause
 * until the daemon has committed the start; nothing waits on it but
 * ag_client_start_run.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/client_internal.h"

#define NAME_BACKOFF_MIN_MS 10u /* the daemon commits a start within its batch time */
#define NAME_BACKOFF_MAX_MS 1000u

enum { NAME_IDLE, NAME_SEND, NAME_RECV, NAME_SLEEP, NAME_DONE };

/* ---- the launch id -------------------------------------------------------- */

/* 64-bit FNV-1a: an environment value that is not a valid launch id (too
 * long, not printable) still gives every rank of the launch the same id. */
static uint64_t fnv1a64(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void from_env(ag_client *c, const char *value) {
    size_t n = strlen(value);
    if (ag_proto_launch_id_ok(value, n))
        memcpy(c->launch, value, n + 1);
    else
        snprintf(c->launch, sizeof c->launch, "env-%016" PRIx64, fnv1a64(value));
}

int ag_client_resolve_launch(ag_client *c, const char *given) {
    if (given) {
        size_t n = strnlen(given, AG_LAUNCH_ID_MAX + 1);
        if (n > AG_LAUNCH_ID_MAX) return AG_ETOOBIG;
        if (!ag_proto_launch_id_ok(given, n)) return AG_EINVAL;
        memcpy(c->launch, given, n + 1);
        return AG_OK;
    }
    /* torchrun's run id is shared by every rank of one launch; without
     * --rdzv-id (or --standalone) it is the placeholder "none" for every
     * launch, which must not merge two launches' runs. */
    const char *te = getenv("TORCHELASTIC_RUN_ID");
    const char *ae = getenv("ALTGRAD_LAUNCH_ID");
    if (te && *te && strcmp(te, "none") != 0) {
        from_env(c, te);
    } else if (ae && *ae) {
        from_env(c, ae);
    } else if (te && *te) {
        /* "none": the ranks torchrun started on this host share its process */
        snprintf(c->launch, sizeof c->launch, "torchrun:%.64s:%ld", c->host, (long)getppid());
        for (char *p = c->launch; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) *p = '_';
    } else {
        snprintf(c->launch, sizeof c->launch, "%ld-%016" PRIx64, (long)getpid(),
                 ag_client_random_u64());
    }
    return AG_OK;
}

/* ---- rank and world size ----------------------------------------------------- */

/* A decimal integer in [lo, hi], the whole string; -1 when it is not one. */
static long parse_count(const char *s, long lo, long hi) {
    if (!s || *s < '0' || *s > '9') return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (*s - '0');
        if (v > hi) return -1;
    }
    return v < lo ? -1 : v;
}

int ag_client_resolve_rank(ag_client_opts *o) {
    if (o->world_size != 0) {
        if (o->world_size < 1 || o->world_size > AG_WORLD_MAX) {
            ag_client_note_error(NULL, "world_size must be 1..65536 (0: from $WORLD_SIZE)");
            return AG_EINVAL;
        }
        if (o->rank < 0 || o->rank >= o->world_size) {
            ag_client_note_error(NULL, "rank must be 0..world_size-1");
            return AG_EINVAL;
        }
        return AG_OK;
    }
    const char *ws = getenv("WORLD_SIZE"), *rs = getenv("RANK");
    o->rank = 0;
    o->world_size = 1;
    if (!ws || !*ws) return AG_OK;
    char text[192];
    long world = parse_count(ws, 1, AG_WORLD_MAX);
    if (world < 0) {
        snprintf(text, sizeof text, "$WORLD_SIZE is not a number in 1..65536: \"%.64s\"", ws);
        ag_client_note_error(NULL, text);
        return AG_EINVAL;
    }
    long rank = rs && *rs ? parse_count(rs, 0, world - 1) : world == 1 ? 0 : -1;
    if (rank < 0) {
        snprintf(text, sizeof text, "$RANK is not a number in 0..%ld ($WORLD_SIZE - 1): \"%.64s\"",
                 world - 1, rs ? rs : "(unset)");
        ag_client_note_error(NULL, text);
        return AG_EINVAL;
    }
    o->rank = (int)rank;
    o->world_size = (int)world;
    return AG_OK;
}

int ag_client_rank(const ag_client *c) { return c ? c->opts.rank : -1; }

int ag_client_world_size(const ag_client *c) { return c ? c->opts.world_size : -1; }

/* ---- asking the daemon for the run's name --------------------------------- */

static int closing(ag_client *c) {
    pthread_mutex_lock(&c->mu);
    int stopping = c->stopping;
    pthread_mutex_unlock(&c->mu);
    return stopping;
}

/* The chain ends: the name is known (err AG_OK) or the daemon cannot say. */
static void name_done(ag_client *c, int err, const char *name) {
    c->name_state = NAME_DONE;
    pthread_mutex_lock(&c->mu);
    if (err == AG_OK) {
        snprintf(c->run_final, sizeof c->run_final, "%s", name);
        atomic_store_explicit(&c->run_known, 1, memory_order_release);
    } else {
        c->name_err = err;
        atomic_store(&c->shm_caps, SHM_CANNOT); /* no answer to wait for */
    }
    pthread_cond_broadcast(&c->named);
    pthread_mutex_unlock(&c->mu);
}

static void name_send(ag_client *c) {
    ag_msg req = {.type = AG_MSG_Q_RUN};
    req.u.query.client_id = c->client_id;
    nng_msg *msg = NULL;
    int rc = ag_client_encode_msg(&req, &msg);
    if (rc) {
        name_done(c, rc, NULL);
        return;
    }
    c->name_state = NAME_SEND;
    nng_aio_set_msg(c->name_aio, msg);
    nng_aio_set_timeout(c->name_aio, c->opts.query_timeout_ms);
    nng_ctx_send(c->name_ctx, c->name_aio);
}

/* Ask again after a pause that doubles up to NAME_BACKOFF_MAX_MS. */
static void name_pause(ag_client *c) {
    unsigned ms = c->name_backoff_ms;
    c->name_backoff_ms = ms * 2 > NAME_BACKOFF_MAX_MS ? NAME_BACKOFF_MAX_MS : ms * 2;
    c->name_state = NAME_SLEEP;
    nng_sleep_aio((nng_duration)ms, c->name_aio);
}

/* Read one reply: AG_OK with the name stored, AG_ENOTFOUND (not committed
 * yet: ask again), or why the daemon cannot say. */
static int name_reply(ag_client *c, nng_msg *msg) {
    ag_msg reply;
    int rc = ag_proto_decode(nng_msg_body(msg), nng_msg_len(msg), &reply);
    if (rc) return AG_EPROTO;
    if (reply.type == AG_MSG_R_RUN) {
        atomic_store(&c->bundles, (reply.u.ident->caps & AG_CAP_BUNDLE) != 0);
        atomic_store(&c->shm_caps, reply.u.ident->caps & AG_CAP_SHM ? SHM_CAN : SHM_CANNOT);
        name_done(c, AG_OK, reply.u.ident->run);
    } else if (reply.type == AG_MSG_R_ERROR) {
        int code = reply.u.error.code;
        rc = code == AG_ENOTFOUND || code == AG_EVERSION ? code : AG_EREMOTE;
    } else {
        rc = AG_EPROTO;
    }
    ag_msg_clear(&reply);
    return rc;
}

static void name_cb(void *arg) {
    ag_client *c = arg;
    int rv = nng_aio_result(c->name_aio);
    nng_msg *got = NULL;
    if (c->name_state == NAME_SEND && rv != 0)
        nng_msg_free(nng_aio_get_msg(c->name_aio)); /* not sent: still ours */
    if (c->name_state == NAME_RECV && rv == 0) got = nng_aio_get_msg(c->name_aio);
    if (rv == NNG_ECANCELED || rv == NNG_ECLOSED || closing(c)) {
        if (got) nng_msg_free(got);
        return; /* close stops the chain */
    }
    switch (c->name_state) {
    case NAME_SLEEP: name_send(c); return;
    case NAME_SEND:
        if (rv) {
            name_pause(c);
            return;
        }
        c->name_state = NAME_RECV;
        nng_aio_set_timeout(c->name_aio, c->opts.query_timeout_ms);
        nng_ctx_recv(c->name_ctx, c->name_aio);
        return;
    case NAME_RECV: {
        if (rv) { /* no answer within the query timeout: ask again */
            name_pause(c);
            return;
        }
        int rc = name_reply(c, got);
        nng_msg_free(got);
        if (rc == AG_ENOTFOUND)
            name_pause(c);
        else if (rc != AG_OK)
            name_done(c, rc, NULL);
        return;
    }
    default: return;
    }
}

int ag_client_name_init(ag_client *c) {
    int rv = nng_aio_alloc(&c->name_aio, name_cb, c);
    if (rv) return AG_ENOMEM;
    if ((rv = nng_ctx_open(&c->name_ctx, c->req))) {
        nng_aio_free(c->name_aio);
        c->name_aio = NULL;
        return rv == NNG_ENOMEM ? AG_ENOMEM : AG_ETRANSPORT;
    }
    c->have_name_ctx = 1;
    c->name_state = NAME_IDLE;
    c->name_backoff_ms = NAME_BACKOFF_MIN_MS;
    return AG_OK;
}

void ag_client_name_ask(ag_client *c) {
    /* The first question waits no more than the start takes to commit. */
    c->name_state = NAME_SLEEP;
    nng_sleep_aio(0, c->name_aio);
}

void ag_client_name_fini(ag_client *c) {
    if (c->name_aio) nng_aio_stop(c->name_aio); /* waits for a callback in progress */
    if (c->have_name_ctx) nng_ctx_close(c->name_ctx);
    if (c->name_aio) nng_aio_free(c->name_aio);
    c->name_aio = NULL;
    c->have_name_ctx = 0;
}

/* ---- the public calls ----------------------------------------------------- */

int ag_client_start_run(ag_client *c, int timeout_ms) {
    if (!c) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    struct timespec ts;
    if (timeout_ms >= 0) ag_deadline_after_ms(&ts, timeout_ms);
    /* query_url is fixed at open: probe it before taking the lock. */
    int no_daemon = 0;
    if (!atomic_load_explicit(&c->run_known, memory_order_acquire)) {
        char why[768];
        if (ag_endpoint_probe(c->query_url, 200, 0, why, sizeof why) != AG_OK) {
            char text[AG_PROTO_MAX_ERROR_TEXT + 1];
            ag_endpoint_explain(c->query_url, c->query_origin, 0, why, text, sizeof text);
            ag_client_note_error(c, text);
            no_daemon = 1;
        }
    }
    pthread_mutex_lock(&c->mu);
    int rc = AG_OK;
    if (c->stopping || (!c->started && c->ended))
        rc = AG_ECLOSED;
    else if (!c->started)
        rc = ag_client_start_run_locked(c);
    /* No daemon where the name would come from: say so now rather than after
     * the whole timeout (run_start stays queued for a daemon that comes). */
    if (!rc && no_daemon) {
        pthread_mutex_unlock(&c->mu);
        return AG_ETRANSPORT;
    }
    while (!rc && !atomic_load_explicit(&c->run_known, memory_order_acquire) && !c->name_err) {
        if (c->stopping) {
            rc = AG_ECLOSED;
            break;
        }
        if (ag_client_wait_locked(c, &c->named, timeout_ms < 0 ? NULL : &ts) == ETIMEDOUT &&
            !atomic_load_explicit(&c->run_known, memory_order_acquire) && !c->name_err)
            rc = AG_ETIMEDOUT;
    }
    if (!rc && !atomic_load_explicit(&c->run_known, memory_order_acquire)) rc = c->name_err;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

const char *ag_client_run(const ag_client *c) {
    if (!c) return NULL;
    /* run_final is written once, before run_known is set */
    if (atomic_load_explicit((_Atomic int *)&c->run_known, memory_order_acquire))
        return c->run_final;
    return c->run;
}

const char *ag_client_launch_id(const ag_client *c) { return c ? c->launch : NULL; }

const char *ag_client_ingest_url(const ag_client *c) { return c ? c->ingest_url : NULL; }

const char *ag_client_query_url(const ag_client *c) { return c ? c->query_url : NULL; }
