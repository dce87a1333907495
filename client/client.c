/*
 * client.c - the client handle: options and endpoints, the bounded send
 * queue and the sender thread that drains it into an nng PUSH socket, flush
 * (hand-off, then the daemon's confirmation) and close, which reports what
 * was never confirmed. Logging calls (log.c) only encode and queue under a
 * short lock; the sender is the only thread that ever waits on the transport.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/client_internal.h"
#include "client/tls.h"

#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>

#define DEFAULT_QUEUE_MESSAGES 1024u
#define DEFAULT_QUEUE_BYTES AG_PROTO_MAX_MESSAGE
#define DEFAULT_BATCH_BYTES (64u * 1024u)
#define DEFAULT_FLUSH_MS 10
#define DEFAULT_QUERY_MS 5000
#define DEFAULT_CLOSE_MS 2000
#define DEFAULT_RECONNECT_MS 100
#define SEND_POLL_MS 100 /* how often a blocked send looks up to see if we close */
/* flush asks the daemon again after CONFIRM_POLL_MIN_MS, doubling up to
 * CONFIRM_POLL_MAX_MS: each ask has the daemon commit what it has caught up
 * with (ag_writer_hurry), so a flush returns about when its last message
 * is evaluated, not a batch time (50 ms, a busy stream's up to 1 s) later */
#define CONFIRM_POLL_MIN_MS 1
#define CONFIRM_POLL_MAX_MS 20
#define OPEN_PROBE_MS                                                                              \
    200 /* open's look for a daemon: instant unless a tcp host
                                 * is silent */

/*
 * fork(): a child gets a copy of every handle but none of its threads, and
 * nng panics when used after fork. The generation below is bumped in the
 * child (while it is still single-threaded) and never written elsewhere, so
 * comparing it with the handle's costs a load and no lock. The one piece of
 * global mutable state in the client, and unavoidable: fork is process-wide.
 */
static uint64_t fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
    fork_generation++;
    ag_send_bodies_forked();
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

int ag_client_forked(const ag_client *c) { return c->fork_generation != fork_generation; }

int ag_client_wait_locked(ag_client *c, pthread_cond_t *cv, const struct timespec *deadline) {
    c->callers++;
    int rv =
        deadline ? pthread_cond_timedwait(cv, &c->mu, deadline) : pthread_cond_wait(cv, &c->mu);
    ag_client_leave_locked(c);
    return rv;
}

void ag_client_leave_locked(ag_client *c) {
    if (--c->callers == 0 && c->stopping)
        pthread_cond_broadcast(&c->drained); /* close waits for the last one */
}

uint64_t ag_client_random_u64(void) {
    uint64_t id = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t got = read(fd, &id, sizeof id);
        close(fd);
        if (got == (ssize_t)sizeof id && id != 0) return id;
    }
    /* fallback: mix time, pid and an address (splitmix64 finaliser) */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^
                 (uint64_t)(uintptr_t)&id;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (z ^ (z >> 31)) | 1;
}

static int nng_to_ag(int rv) {
    switch (rv) {
    case 0: return AG_OK;
    case NNG_ENOMEM: return AG_ENOMEM;
    case NNG_ETIMEDOUT: return AG_ETIMEDOUT;
    case NNG_ECLOSED: return AG_ECLOSED;
    case NNG_EAGAIN: return AG_EAGAIN;
    default: return AG_ETRANSPORT;
    }
}

/* A snapshot whose arrays take more than this many bytes is encoded
 * straight into its body, sized by a first pass (a few calls whatever its
 * length): its arrays are copied once. Every other message is encoded once
 * and copied into its body, from the stack when it fits: for those a sizing
 * pass costs as much as the encoding (a small snapshot's fields, each
 * tensor of a counts message). */
#define IN_PLACE_BYTES 2048

/* The large snapshot of ag_client_encode_msg. */
static int encode_in_place(const ag_msg *m, nng_msg **out) {
    size_t len = ag_proto_encoded_size(m);
    if (len == 0) {
        /* encode again into a counting buffer to learn why */
        ag_buf b;
        ag_buf_init_count(&b);
        return ag_proto_encode(&b, m);
    }
    /* A large body is allocated in its size class, so that it can be a
     * kept one (bodies.c): its pages are mapped already and not zeroed, and
     * the encoder writes every byte of the message. */
    size_t cap = ag_send_body_class(len);
    nng_msg *msg;
    if (nng_msg_alloc(&msg, cap) != 0) return AG_ENOMEM;
    ag_buf b;
    ag_buf_init_fixed(&b, nng_msg_body(msg), len);
    int rc = ag_proto_encode(&b, m);
    if (rc) {
        nng_msg_free(msg);
        return rc;
    }
    nng_msg_chop(msg, cap - b.len);
    *out = msg;
    return AG_OK;
}

int ag_client_encode_msg(const ag_msg *m, nng_msg **out) {
    size_t esize = m->type == AG_MSG_SNAPSHOT ? ag_proto_dtype_size(m->u.snapshot.dtype) : 0;
    if (esize && !m->u.snapshot.shm.has_at && m->u.snapshot.n > IN_PLACE_BYTES / (2 * esize))
        return encode_in_place(m, out);
    uint8_t small[2 * IN_PLACE_BYTES];
    ag_buf b;
    ag_buf_init_fixed(&b, small, sizeof small);
    int rc = ag_proto_encode(&b, m);
    if (rc == AG_ETOOBIG) { /* many tensors, or long names: on the heap */
        ag_buf_init(&b);
        rc = ag_proto_encode(&b, m);
    }
    nng_msg *msg = NULL;
    if (!rc && nng_msg_alloc(&msg, b.len) != 0) rc = AG_ENOMEM;
    if (!rc) {
        memcpy(nng_msg_body(msg), b.data, b.len);
        *out = msg;
    }
    ag_buf_free(&b); /* frees only a heap buffer */
    return rc;
}

/* ---- the queue (caller holds mu) ---------------------------------------- */

int ag_client_has_room_locked(const ag_client *c, size_t len) {
    if (c->count == 0) return 1; /* anything up to the message limit fits in an empty queue */
    return c->count < c->opts.queue_messages && c->bytes + len <= c->opts.queue_bytes;
}

static int drop_locked(ag_client *c, nng_msg *msg, uint32_t records) {
    nng_msg_free(msg);
    c->stats.dropped++;
    c->stats.records_dropped += records;
    return c->stopping ? AG_ECLOSED : AG_EAGAIN;
}

/* Snapshots this small may travel in a bundle (PROTOCOL.md 3.6). */
#define BUNDLE_ITEM_MAX 4096

static int enqueue(ag_client *c, nng_msg *msg, uint32_t records, int force, int snapshot) {
    size_t len = nng_msg_len(msg);
    for (;;) {
        if (c->stopping) return drop_locked(c, msg, records);
        if (c->count < c->ring_cap && (force || ag_client_has_room_locked(c, len))) break;
        if (c->opts.policy != AG_QUEUE_BLOCK) return drop_locked(c, msg, records);
        ag_client_wait_locked(c, &c->room, NULL);
    }
    /* seq and the cumulative drop count are fixed now, in queue order */
    ag_proto_patch_seq(nng_msg_body(msg), len, c->next_seq++, c->stats.dropped);
    size_t at = (c->head + c->count) % c->ring_cap;
    c->ring[at] = msg;
    c->ring_records[at] = records;
    c->ring_small[at] = (unsigned char)(snapshot && len <= BUNDLE_ITEM_MAX);
    c->count++;
    c->bytes += len;
    c->enqueued++;
    pthread_cond_signal(&c->work);
    return AG_OK;
}

int ag_client_enqueue_locked(ag_client *c, nng_msg *msg, uint32_t records, int force) {
    return enqueue(c, msg, records, force, 0);
}

int ag_client_enqueue_snapshot_locked(ag_client *c, nng_msg *msg) {
    return enqueue(c, msg, 0, 0, 1);
}

int ag_client_close_batch_locked(ag_client *c, int force) {
    if (c->batch_records == 0) return AG_OK;
    uint32_t records = (uint32_t)c->batch_records;
    c->batch_records = 0;
    int rc = ag_stats_batch_end(&c->batch, 0, 0);
    nng_msg *msg = NULL;
    if (!rc && nng_msg_alloc(&msg, c->batch.buf.len) != 0) rc = AG_ENOMEM;
    if (rc) {
        c->stats.dropped++;
        c->stats.records_dropped += records;
        return rc;
    }
    memcpy(nng_msg_body(msg), c->batch.buf.data, c->batch.buf.len);
    ag_buf_reset(&c->batch.buf);
    return ag_client_enqueue_locked(c, msg, records, force);
}

int ag_client_start_run_locked(ag_client *c) {
    if (c->started) return AG_OK;
    ag_msg m = {.type = AG_MSG_RUN_START};
    m.hdr.run = c->run;
    m.hdr.client_id = c->client_id;
    m.u.run_start.host = c->host;
    m.u.run_start.pid = (int64_t)getpid();
    m.u.run_start.time_ms = ag_wall_ms();
    m.u.run_start.metadata = c->metadata;
    m.u.run_start.launch = c->launch;
    m.u.run_start.resume = c->opts.resume != 0;
    if (c->opts.world_size > 1) { /* a world of one sends neither key (PROTOCOL.md 3.1) */
        m.u.run_start.rank = (uint64_t)c->opts.rank;
        m.u.run_start.world = (uint64_t)c->opts.world_size;
    }
    nng_msg *msg;
    int rc = ag_client_encode_msg(&m, &msg);
    if (rc) return rc;
    c->started = 1;
    return ag_client_enqueue_locked(c, msg, 0, 1);
}

/* ---- the sender thread --------------------------------------------------- */

/* How many queued messages from the head go out in one bundle (1: the head
 * alone): consecutive small snapshots already queued, within batch_bytes.
 * Nothing waits for more, so a bundle adds no latency. Lock held. */
static size_t bundle_count(ag_client *c, size_t *bytes) {
    nng_msg *msg = c->ring[c->head];
    size_t k = 1;
    *bytes = nng_msg_len(msg);
    if (!atomic_load(&c->bundles) || c->count < 2 || !c->ring_small[c->head]) return 1;
    while (k < c->count && k < AG_PROTO_MAX_BUNDLE) {
        size_t at = (c->head + k) % c->ring_cap;
        size_t len = nng_msg_len(c->ring[at]);
        if (!c->ring_small[at] ||
            ag_bundle_size((uint32_t)k + 1, *bytes + len) > c->opts.batch_bytes)
            break;
        *bytes += len;
        k++;
    }
    return k;
}

/* The bundle of the k queued messages from the head; NULL without memory
 * (they then go one by one). Lock not held: only this thread removes from
 * the queue, and producers only append after it. */
static nng_msg *bundle_of(ag_client *c, size_t k, size_t bytes) {
    nng_msg *out = NULL;
    size_t cap = ag_bundle_size((uint32_t)k, bytes);
    if (nng_msg_alloc(&out, cap) != 0) return NULL;
    ag_buf b;
    ag_buf_init_fixed(&b, nng_msg_body(out), cap);
    int rc = ag_bundle_begin(&b, (uint32_t)k);
    for (size_t i = 0; !rc && i < k; i++) {
        nng_msg *m = c->ring[(c->head + i) % c->ring_cap];
        rc = ag_bundle_add(&b, nng_msg_body(m), nng_msg_len(m));
    }
    if (rc) {
        nng_msg_free(out);
        return NULL;
    }
    nng_msg_chop(out, cap - b.len);
    return out;
}

static void *sender_main(void *arg) {
    ag_client *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->count == 0) {
            if (c->stopping) break;
            struct timespec ts;
            ag_deadline_after_ms(&ts, c->opts.flush_interval_ms);
            /* a partial batch goes out once nothing else was queued for a
             * flush interval: full batches and snapshots wake us earlier */
            if (pthread_cond_timedwait(&c->work, &c->mu, &ts) == ETIMEDOUT && c->count == 0 &&
                c->batch_records)
                ag_client_close_batch_locked(c, 0);
            continue;
        }
        if (c->stopping) break;
        /* only this thread removes from the queue, so the head stays put */
        nng_msg *msg = c->ring[c->head];
        size_t len, k = bundle_count(c, &len);
        pthread_mutex_unlock(&c->mu);
        nng_msg *bundle = k > 1 ? bundle_of(c, k, len) : NULL;
        if (!bundle) k = 1, len = nng_msg_len(msg);
        size_t wire = bundle ? nng_msg_len(bundle) : len; /* nng owns it once sent */
        int rv = nng_sendmsg(c->push, bundle ? bundle : msg, 0);
        if (rv != 0 && bundle) nng_msg_free(bundle); /* nng keeps only what it sent */
        pthread_mutex_lock(&c->mu);
        if (rv == NNG_ETIMEDOUT || rv == NNG_EAGAIN)
            continue; /* no daemon yet: keep it, look at stopping, try again */
        for (size_t i = 0; i < k; i++) {
            nng_msg *m = c->ring[c->head];
            if (rv != 0) {
                nng_msg_free(m); /* the socket is unusable: count and move on */
                c->stats.dropped++;
                c->stats.records_dropped += c->ring_records[c->head];
            } else {
                if (bundle) nng_msg_free(m); /* sent inside the bundle */
                c->stats.sent++;
            }
            c->head = (c->head + 1) % c->ring_cap;
        }
        if (rv == 0) c->stats.bytes_sent += wire;
        c->count -= k;
        c->bytes -= len;
        c->finished += k;
        pthread_cond_broadcast(&c->room);
        pthread_cond_broadcast(&c->drained);
        /* The first message is run_start: once it went out, ask the daemon
         * which run it filed it under (identity.c). */
        if (!c->name_asked && !c->stopping) {
            c->name_asked = 1;
            c->callers++; /* close stops the name query only after we left */
            pthread_mutex_unlock(&c->mu);
            ag_client_name_ask(c);
            pthread_mutex_lock(&c->mu);
            ag_client_leave_locked(c);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- open / flush / close ------------------------------------------------ */

/* nng's pipe callbacks (its threads): count the connections of a socket. A
 * removal nng reports without an addition only costs a needless probe. */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg) {
    _Atomic int *pipes = arg;
    (void)p;
    if (ev == NNG_PIPE_EV_ADD_POST)
        atomic_fetch_add(pipes, 1);
    else if (ev == NNG_PIPE_EV_REM_POST)
        atomic_fetch_sub(pipes, 1);
}

/* A new connection of the ingest socket (nng's thread), before any message
 * goes over it: the daemon may be a new one, so the segment is passed to it
 * (or offered in messages, when it takes no descriptor). */
static void shm_pipe_adding(nng_pipe p, nng_pipe_ev ev, void *arg) {
    ag_client *c = arg;
    if (ev != NNG_PIPE_EV_ADD_PRE) return;
    ag_client_shm_reconnected(&c->shm);
    atomic_store(&c->shm_offered, 0);
    atomic_store(&c->shm_ack_waited, 0);
    uint64_t pid, uid;
    if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, &pid) == 0 &&
        nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_UID, &uid) == 0)
        ag_client_shm_pass(&c->shm, c->ingest_url, pid, uid);
}

/* The shared-memory segment, for a daemon on this machine (an ipc:// ingest
 * URL) unless turned off; made before the ingest socket dials, so every
 * connection passes it (shm_pipe_adding). Without one (no memfd, no
 * memory) snapshots go through the socket as they always could: nothing
 * fails. */
static void open_shm(ag_client *c) {
    if (c->opts.shm_bytes == AG_SHM_OFF || strncmp(c->ingest_url, "ipc://", 6) != 0) return;
    ag_client_shm_open(&c->shm, c->opts.shm_bytes);
}

/* pipes: when not NULL, kept equal to the socket's connection count. tls:
 * the dialer's TLS settings for a tls+tcp:// URL (the dialer holds its own
 * reference), else NULL. */
static int open_socket(nng_socket *s, int (*opener)(nng_socket *), const char *url,
                       const ag_client_opts *o, int receives, _Atomic int *pipes,
                       nng_tls_config *tls, nng_pipe_cb adding, void *adding_arg) {
    int rv = opener(s);
    if (rv) return nng_to_ag(rv);
    if ((pipes && ((rv = nng_pipe_notify(*s, NNG_PIPE_EV_ADD_POST, pipe_event, pipes)) ||
                   (rv = nng_pipe_notify(*s, NNG_PIPE_EV_REM_POST, pipe_event, pipes)))) ||
        (adding && (rv = nng_pipe_notify(*s, NNG_PIPE_EV_ADD_PRE, adding, adding_arg)))) {
        nng_close(*s);
        return nng_to_ag(rv);
    }
    nng_duration rmin = o->reconnect_ms;
    nng_duration rmax = rmin * 10 > 2000 ? rmin * 10 : 2000;
    nng_dialer d;
    if ((rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMINT, rmin)) ||
        (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMAXT, rmax)) ||
        (rv = nng_socket_set_ms(*s, NNG_OPT_SENDTIMEO, SEND_POLL_MS)) ||
        (receives && (rv = nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, AG_PROTO_MAX_MESSAGE))) ||
        (rv = nng_dialer_create(&d, *s, url)) ||
        (tls && (rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls))) ||
        (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK))) {
        nng_close(*s);
        return rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP ? AG_EINVAL : nng_to_ag(rv);
    }
    return AG_OK;
}

/* The TLS settings for the tls+tcp:// URL url (opts and environment), or
 * NULL in *out for another URL. A failure says why (ag_client_last_error(NULL)). */
static int tls_settings(const ag_client_opts *o, const char *url, nng_tls_config **out) {
    *out = NULL;
    if (!ag_tls_url(url)) return AG_OK;
    ag_tls_files f = {.cert = o->tls_cert,
                      .key = o->tls_key,
                      .ca = o->tls_ca,
                      .server_name = o->tls_server_name,
                      .cert_opt = o->tls_cert ? "tls_cert" : "$ALTGRAD_TLS_CERT",
                      .key_opt = o->tls_key ? "tls_key" : "$ALTGRAD_TLS_KEY",
                      .ca_opt = o->tls_ca ? "tls_ca" : "$ALTGRAD_TLS_CA"};
    const char *env;
    if (!f.cert && (env = getenv("ALTGRAD_TLS_CERT")) && *env) f.cert = env;
    if (!f.key && (env = getenv("ALTGRAD_TLS_KEY")) && *env) f.key = env;
    if (!f.ca && (env = getenv("ALTGRAD_TLS_CA")) && *env) f.ca = env;
    if (!f.server_name && (env = getenv("ALTGRAD_TLS_SERVER_NAME")) && *env) f.server_name = env;
    if (!f.ca) f.ca_opt = "tls_ca (or $ALTGRAD_TLS_CA)";
    char err[600], line[700];
    int rc = ag_tls_config_new(out, 0, NNG_TLS_AUTH_MODE_REQUIRED, &f, err, sizeof err);
    if (rc) {
        snprintf(line, sizeof line, "%s: %s", url, err);
        ag_client_note_open_error(line);
    }
    return rc;
}

static int fill_options(ag_client *c, const ag_client_opts *in) {
    ag_client_opts o;
    memset(&o, 0, sizeof o);
    if (in) o = *in;
    if (o.policy != AG_QUEUE_DROP && o.policy != AG_QUEUE_BLOCK) return AG_EINVAL;
    if (o.flush_interval_ms < 0 || o.query_timeout_ms < 0 || o.close_timeout_ms < 0 ||
        o.reconnect_ms < 0)
        return AG_EINVAL;
    if (!o.queue_messages) o.queue_messages = DEFAULT_QUEUE_MESSAGES;
    if (!o.queue_bytes || o.queue_bytes > DEFAULT_QUEUE_BYTES) o.queue_bytes = DEFAULT_QUEUE_BYTES;
    if (!o.batch_bytes) o.batch_bytes = DEFAULT_BATCH_BYTES;
    if (o.batch_bytes > (16u << 20)) o.batch_bytes = 16u << 20;
    if (!o.flush_interval_ms) o.flush_interval_ms = DEFAULT_FLUSH_MS;
    if (!o.query_timeout_ms) o.query_timeout_ms = DEFAULT_QUERY_MS;
    if (!o.close_timeout_ms) o.close_timeout_ms = DEFAULT_CLOSE_MS;
    if (!o.reconnect_ms) o.reconnect_ms = DEFAULT_RECONNECT_MS;
    if (o.queue_messages > (1u << 24)) return AG_EINVAL;
    o.resume = o.resume != 0;
    if (!o.shm_bytes) o.shm_bytes = AG_SHM_DEFAULT;
    if (o.shm_bytes != AG_SHM_OFF &&
        (o.shm_bytes < AG_SHM_MIN_SIZE || o.shm_bytes > AG_SHM_MAX_SIZE))
        return AG_EINVAL;

    if (gethostname(c->host, sizeof c->host - 1) != 0) snprintf(c->host, sizeof c->host, "unknown");
    c->host[sizeof c->host - 1] = '\0';
    if (o.run) {
        size_t n = strlen(o.run);
        if (n > AG_NAME_MAX) return AG_ETOOBIG;
        if (!ag_proto_name_ok(o.run, n)) return AG_EINVAL;
        memcpy(c->run, o.run, n + 1);
    } else {
        snprintf(c->run, sizeof c->run, "run-%.64s-%ld-%lld", c->host, (long)getpid(),
                 (long long)(ag_wall_ms() / 1000));
    }
    int rc = ag_client_resolve_launch(c, o.launch_id);
    if (rc) return rc;
    if ((rc = ag_client_resolve_rank(&o))) return rc;
    o.launch_id = c->launch;
    const char *meta = o.metadata ? o.metadata : "{}";
    size_t mn = strlen(meta);
    if (mn > AG_PROTO_MAX_METADATA) return AG_ETOOBIG;
    if (!ag_proto_json_object_ok(meta, mn)) return AG_EINVAL;
    if (!(c->metadata = malloc(mn + 1))) return AG_ENOMEM;
    memcpy(c->metadata, meta, mn + 1);
    c->ingest_url = ag_endpoint_resolve(o.ingest_url, 1, &c->ingest_origin);
    c->query_url = ag_endpoint_resolve(o.query_url, 0, &c->query_origin);
    if (!c->ingest_url || !c->query_url) return AG_ENOMEM;
    o.run = c->run;
    o.metadata = c->metadata;
    o.ingest_url = c->ingest_url;
    o.query_url = c->query_url;
    c->opts = o;
    return AG_OK;
}

static void free_client(ag_client *c) {
    ag_client_shm_close(&c->shm);
    free(c->ring);
    free(c->ring_records);
    free(c->ring_small);
    ag_buf_free(&c->batch.buf);
    free(c->metadata);
    free(c->ingest_url);
    free(c->query_url);
    free(c);
}

/* One line on stderr when no daemon is found at open: a trainer started in
 * the wrong folder would otherwise queue into nothing without a word. The
 * ingest URL first (what a trainer streams to), then the query URL. */
static void notice_missing_daemon(const ag_client *c) {
    char why[768], line[1536];
    int ingest = 1;
    if (ag_endpoint_probe(c->ingest_url, OPEN_PROBE_MS, 0, why, sizeof why) == AG_OK) {
        ingest = 0;
        if (ag_endpoint_probe(c->query_url, OPEN_PROBE_MS, 0, why, sizeof why) == AG_OK) return;
    }
    ag_endpoint_explain(ingest ? c->ingest_url : c->query_url,
                        ingest ? c->ingest_origin : c->query_origin, ingest, why, line,
                        sizeof line);
    fprintf(stderr,
            "altgrad: %s; logged messages wait in the queue for it, and close "
            "reports those never delivered\n",
            line);
}

int ag_client_open(ag_client **out, const ag_client_opts *opts) {
    return ag_client_open_quiet(out, opts, 0);
}

int ag_client_open_quiet(ag_client **out, const ag_client_opts *opts, int quiet) {
    if (!out) return AG_EINVAL;
    *out = NULL;
    int rc;
    int have_push = 0, have_req = 0, have_sync = 0;
    nng_tls_config *tls = NULL;
    ag_client_note_open_error("");
    ag_client *c = calloc(1, sizeof(*c));
    if (!c) return AG_ENOMEM;
    ag_buf_init(&c->batch.buf);
    pthread_once(&atfork_once, register_atfork);
    c->fork_generation = fork_generation;
    if ((rc = fill_options(c, opts))) goto fail;
    ag_send_bodies_open(c->opts.queue_bytes);
    c->bodies_open = 1;
    c->client_id = ag_client_random_u64();
    /* spare slots: run_start, the last batch and run_end are always queued */
    c->ring_cap = c->opts.queue_messages + 3;
    c->ring = calloc(c->ring_cap, sizeof(*c->ring));
    c->ring_records = calloc(c->ring_cap, sizeof(*c->ring_records));
    c->ring_small = calloc(c->ring_cap, sizeof(*c->ring_small));
    if (!c->ring || !c->ring_records || !c->ring_small) {
        rc = AG_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        rc = AG_ENOMEM;
        goto fail;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->work, &ca);
    pthread_cond_init(&c->room, &ca);
    pthread_cond_init(&c->drained, &ca);
    pthread_cond_init(&c->named, &ca);
    pthread_condattr_destroy(&ca);
    have_sync = 1;
    open_shm(c);
    if ((rc = tls_settings(&c->opts, c->ingest_url, &tls)) ||
        (rc = open_socket(&c->push, nng_push0_open, c->ingest_url, &c->opts, 0, NULL, tls,
                          c->shm.base ? shm_pipe_adding : NULL, c)))
        goto fail;
    have_push = 1;
    if (tls) nng_tls_config_free(tls);
    tls = NULL;
    if ((rc = tls_settings(&c->opts, c->query_url, &tls)) ||
        (rc = open_socket(&c->req, nng_req0_open, c->query_url, &c->opts, 1, &c->req_pipes, tls,
                          NULL, NULL)))
        goto fail;
    have_req = 1;
    if (tls) nng_tls_config_free(tls);
    tls = NULL;
    /* the caller's strings, read at open only */
    c->opts.tls_cert = c->opts.tls_key = c->opts.tls_ca = c->opts.tls_server_name = NULL;
    if ((rc = ag_client_name_init(c))) goto fail;
    if (pthread_create(&c->sender, NULL, sender_main, c) != 0) {
        rc = AG_ENOMEM;
        goto fail;
    }
    c->sender_started = 1;
    if (!quiet) notice_missing_daemon(c);
    *out = c;
    return AG_OK;
fail:
    if (tls) nng_tls_config_free(tls);
    if (!quiet && *ag_client_last_error(NULL))
        fprintf(stderr, "altgrad: %s\n", ag_client_last_error(NULL));
    ag_client_name_fini(c);
    if (have_req) nng_close(c->req);
    if (have_push) nng_close(c->push);
    if (have_sync) {
        pthread_cond_destroy(&c->work);
        pthread_cond_destroy(&c->room);
        pthread_cond_destroy(&c->drained);
        pthread_cond_destroy(&c->named);
        pthread_mutex_destroy(&c->mu);
    }
    if (c->bodies_open) ag_send_bodies_close();
    free_client(c);
    return rc;
}

/* ---- delivery ------------------------------------------------------------ */

static int64_t ms_until(const struct timespec *deadline) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(deadline->tv_sec - now.tv_sec) * 1000 +
           (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/* Take the daemon's answer (validated: it is about us, and about messages we
 * queued). Caller holds mu. */
static int note_delivery_locked(ag_client *c, const ag_msg_delivery *d) {
    if (d->client_id != c->client_id || d->messages > c->next_seq ||
        (d->messages && (d->seq >= c->next_seq || d->messages - 1 > d->seq)))
        return AG_EPROTO;
    if (d->messages > c->confirmed) {
        c->confirmed = d->messages;
        c->confirmed_seq = d->seq;
    }
    return AG_OK;
}

/* Is the fate of every message below seq target known? *rc gets AG_OK when
 * all of them were stored, AG_ELOST when the daemon stored a later message
 * but not all of these (a stream connection delivers in order and the daemon
 * refuses what comes out of order, so the missing ones never will be). */
static int confirmed_final(const ag_client *c, uint64_t target, int *rc) {
    if (target == 0) {
        *rc = AG_OK;
        return 1;
    }
    if (c->confirmed == 0 || c->confirmed_seq + 1 < target) return 0;
    *rc = c->confirmed == c->confirmed_seq + 1 ? AG_OK : AG_ELOST;
    return 1;
}

/*
 * Ask the daemon until it accounts for every message below seq target, the
 * deadline passes (NULL: none) or the client closes. Caller holds mu; it is
 * released around each query and each pause, with this thread counted in
 * callers so that close waits for it. No daemon (AG_ETRANSPORT) or a slow
 * one (AG_ETIMEDOUT): ask again until the deadline; an answer we cannot use
 * (an error reply, a malformed one): give up at once with its code.
 */
static int confirm_locked(ag_client *c, uint64_t target, const struct timespec *deadline) {
    int rc = AG_OK;
    if (confirmed_final(c, target, &rc)) return rc;
    int pause_ms = CONFIRM_POLL_MIN_MS, answered = 0;
    c->callers++;
    for (;;) {
        if (c->stopping) {
            rc = AG_ECLOSED;
            break;
        }
        int ask_ms = c->opts.query_timeout_ms;
        if (deadline) {
            int64_t left = ms_until(deadline);
            if (left <= 0) {
                rc = AG_ETIMEDOUT;
                break;
            }
            if (left < ask_ms) ask_ms = (int)left;
        }
        pthread_mutex_unlock(&c->mu);
        ag_msg_delivery d;
        int q = ag_client_query_delivery(c, ask_ms, &d);
        pthread_mutex_lock(&c->mu);
        if (q == AG_OK) q = note_delivery_locked(c, &d);
        if (q == AG_OK && confirmed_final(c, target, &rc)) break;
        answered = q == AG_OK;
        if (q != AG_OK && q != AG_ETRANSPORT && q != AG_ETIMEDOUT) {
            rc = q;
            break;
        }
        struct timespec until;
        ag_deadline_after_ms(&until, pause_ms);
        if (deadline && (until.tv_sec > deadline->tv_sec ||
                         (until.tv_sec == deadline->tv_sec && until.tv_nsec > deadline->tv_nsec)))
            until = *deadline;
        if (!c->stopping) pthread_cond_timedwait(&c->drained, &c->mu, &until); /* close wakes us */
        pause_ms = pause_ms * 2 > CONFIRM_POLL_MAX_MS ? CONFIRM_POLL_MAX_MS : pause_ms * 2;
    }
    /* for ag_client_last_error (a failed ask has left its own reason) */
    char text[256];
    if (rc == AG_ELOST)
        snprintf(text, sizeof text,
                 "the daemon at %s stored %llu messages up to seq %llu: "
                 "%llu below it were lost on the way",
                 c->query_url, (unsigned long long)c->confirmed,
                 (unsigned long long)c->confirmed_seq,
                 (unsigned long long)(c->confirmed_seq + 1 - c->confirmed));
    else if (rc == AG_ETIMEDOUT && answered)
        snprintf(text, sizeof text, "the daemon at %s confirmed %llu of %llu messages in time",
                 c->query_url, (unsigned long long)c->confirmed, (unsigned long long)target);
    if (rc == AG_ELOST || (rc == AG_ETIMEDOUT && answered)) ag_client_note_error(c, text);
    ag_client_leave_locked(c);
    return rc;
}

/* A flush that timed out with messages still queued: say why, for
 * ag_client_last_error (no daemon at the ingest URL, or one not taking them).
 * Called without mu, counted in callers. */
static void explain_stuck_queue(const ag_client *c, size_t waiting) {
    char why[768], text[AG_PROTO_MAX_ERROR_TEXT + 1];
    if (ag_endpoint_probe(c->ingest_url, OPEN_PROBE_MS, 0, why, sizeof why) != AG_OK)
        ag_endpoint_explain(c->ingest_url, c->ingest_origin, 1, why, text, sizeof text);
    else
        snprintf(text, sizeof text,
                 "%zu messages still queued: the daemon at %s did not "
                 "take them in time",
                 waiting, c->ingest_url);
    ag_client_note_error(c, text);
}

int ag_client_flush(ag_client *c, int timeout_ms) {
    if (!c) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    struct timespec ts;
    if (timeout_ms >= 0) ag_deadline_after_ms(&ts, timeout_ms);
    /* With no daemon to deliver to (no socket, connection refused), nothing
     * can be confirmed: fail at once and say where we looked, instead of
     * waiting out the timeout. ingest_url is fixed at open. */
    char why[768];
    int absent = ag_endpoint_probe(c->ingest_url, OPEN_PROBE_MS, 0, why, sizeof why) != AG_OK;
    pthread_mutex_lock(&c->mu);
    int rc = AG_OK;
    /* The open batch needs room first; under the blocking policy that wait
     * must respect the deadline too (close relies on flush being bounded). */
    while (c->opts.policy == AG_QUEUE_BLOCK && c->batch_records && !c->stopping &&
           !ag_client_has_room_locked(c, c->batch.buf.len)) {
        if (ag_client_wait_locked(c, &c->room, timeout_ms < 0 ? NULL : &ts) == ETIMEDOUT) {
            pthread_mutex_unlock(&c->mu);
            return AG_ETIMEDOUT;
        }
    }
    ag_client_close_batch_locked(c, 0);
    uint64_t target = c->enqueued;
    if (absent && !c->stopping && (c->finished < target || c->confirmed < target)) {
        pthread_mutex_unlock(&c->mu);
        char text[AG_PROTO_MAX_ERROR_TEXT + 1];
        ag_endpoint_explain(c->ingest_url, c->ingest_origin, 1, why, text, sizeof text);
        ag_client_note_error(c, text);
        return AG_ETRANSPORT;
    }
    while (c->finished < target) {
        if (c->stopping) {
            rc = AG_ECLOSED;
            break;
        }
        if (ag_client_wait_locked(c, &c->drained, timeout_ms < 0 ? NULL : &ts) == ETIMEDOUT) {
            rc = c->finished < target ? AG_ETIMEDOUT : AG_OK;
            break;
        }
    }
    if (rc == AG_OK) rc = confirm_locked(c, target, timeout_ms < 0 ? NULL : &ts);
    size_t waiting = c->count;
    int explain = rc == AG_ETIMEDOUT && waiting && !c->stopping;
    if (explain) c->callers++; /* close waits for us to leave */
    pthread_mutex_unlock(&c->mu);
    if (explain) {
        explain_stuck_queue(c, waiting);
        pthread_mutex_lock(&c->mu);
        ag_client_leave_locked(c);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

static int queue_run_end_locked(ag_client *c, int force) {
    if (c->ended) return AG_OK;
    c->ended = 1;
    if (!c->started) return AG_OK; /* nothing was logged: no run to end */
    ag_client_close_batch_locked(c, force);
    ag_msg m = {.type = AG_MSG_RUN_END};
    m.hdr.run = c->run;
    m.hdr.client_id = c->client_id;
    m.u.run_end.step = c->max_step;
    m.u.run_end.time_ms = ag_wall_ms();
    nng_msg *msg;
    int rc = ag_client_encode_msg(&m, &msg);
    if (rc) return rc;
    return ag_client_enqueue_locked(c, msg, 0, 1);
}

int ag_client_end_run(ag_client *c) {
    if (!c) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    pthread_mutex_lock(&c->mu);
    int rc = c->ended ? AG_ECLOSED : queue_run_end_locked(c, 0);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int64_t ag_client_close(ag_client *c) {
    if (!c) return 0;
    if (ag_client_forked(c))
        return 0; /* the parent's: its threads and sockets are not ours to stop */
    pthread_mutex_lock(&c->mu);
    queue_run_end_locked(c, 1); /* never waits: close must be bounded */
    pthread_mutex_unlock(&c->mu);
    ag_client_flush(c, c->opts.close_timeout_ms);

    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_broadcast(&c->work);
    pthread_cond_broadcast(&c->room);
    pthread_cond_broadcast(&c->drained);
    pthread_cond_broadcast(&c->named);
    pthread_mutex_unlock(&c->mu);
    /* Threads blocked in a logging call or a flush, encoding a snapshot or
     * querying leave with AG_ECLOSED; only then may the handle go. A query in
     * flight fails at once instead of at its timeout: its aio is cancelled,
     * again every few milliseconds in case it was between two operations,
     * and the socket is closed only when no query uses it any more. */
    pthread_mutex_lock(&c->mu);
    while (c->callers) {
        for (ag_query_slot *q = c->queries; q; q = q->next) nng_aio_cancel(q->aio);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until); /* the conds run on CLOCK_MONOTONIC */
        until.tv_nsec += 10 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->drained, &c->mu, &until);
    }
    pthread_mutex_unlock(&c->mu);
    ag_client_name_fini(c); /* before the socket its context lives on */
    nng_close(c->req);
    if (c->sender_started) pthread_join(c->sender, NULL);
    /* what the daemon never took is dropped, and counted */
    while (c->count) {
        nng_msg_free(c->ring[c->head]);
        c->stats.dropped++;
        c->stats.records_dropped += c->ring_records[c->head];
        c->head = (c->head + 1) % c->ring_cap;
        c->count--;
    }
    nng_close(c->push);
    /* every queued message took a seq; those the daemon did not confirm are
     * lost as far as we can tell, whatever the reason */
    int64_t undelivered = (int64_t)(c->next_seq - c->confirmed);
    pthread_cond_destroy(&c->work);
    pthread_cond_destroy(&c->room);
    pthread_cond_destroy(&c->drained);
    pthread_cond_destroy(&c->named);
    pthread_mutex_destroy(&c->mu);
    ag_send_bodies_close(); /* after our last message was freed */
    free_client(c);
    return undelivered;
}

int ag_client_get_stats(ag_client *c, ag_client_stats *out) {
    if (!c || !out) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    out->queued = c->count;
    out->delivered = c->confirmed;
    out->undelivered = c->next_seq - c->confirmed;
    pthread_mutex_unlock(&c->mu);
    return AG_OK;
}

uint64_t ag_client_id(const ag_client *c) { return c ? c->client_id : 0; }
