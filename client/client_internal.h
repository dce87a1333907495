/*
 * client_internal.h - private to client/: the ag_client handle shared by the
 * send queue (client.c), the logging calls (log.c) and the queries (query.c).
 * Every field below `mu` is guarded by it.
 */
#ifndef AG_CLIENT_INTERNAL_H
#define AG_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include <nng/nng.h>

#include "altgrad/altgrad.h"
#include "client/open_quiet.h"
#include "core/clock.h"
#include "proto/proto.h"
#include "proto/shm.h"

/* One query in flight (on its caller's stack), so close can cancel its aio:
 * closing the REQ socket under a thread inside nng_ctx_send is not safe in
 * nng 1.5, so close cancels every registered aio until the queries have left,
 * and only then closes the socket. */
typedef struct ag_query_slot {
    nng_aio *aio;
    struct ag_query_slot *next;
} ag_query_slot;

/* What the daemon said it can do with the segment (r_run's AG_CAP_SHM). */
enum { SHM_UNKNOWN = 0, SHM_CAN, SHM_CANNOT };

/* The shared-memory segment of snapshot arrays (shm.c, proto/shm.h). */
typedef struct ag_client_shm {
    int fd;
    int lease;     /* the connection it was passed on (-1: none; nng's thread) */
    uint8_t *base; /* the mapping; NULL: no segment */
    ag_shm_header *hdr;
    uint64_t size, cap, token;
    /* One producer at a time reserves, writes and queues a record (held
     * before mu), so records are queued in the order of their positions. */
    pthread_mutex_t writer;
    uint64_t head;     /* the next record's position (writer) */
    uint64_t released; /* the daemon's last released seen (writer) */
} ag_client_shm;

/* Create, seal and map a segment of bytes (rounded up to pages). AG_EINVAL
 * for a size out of range, AG_ENOTSUP without memfd, AG_ENOMEM. */
int ag_client_shm_open(ag_client_shm *s, size_t bytes);
void ag_client_shm_close(ag_client_shm *s);
/* Whether the daemon has the segment mapped. */
int ag_client_shm_acked(const ag_client_shm *s);
/* Pass the segment's descriptor to the daemon listening beside the ipc://
 * socket ingest_url (proto/shm.h), which must be the process at the other
 * end of the ingest connection (daemon_pid and daemon_uid, from the kernel
 * through nng): AG_OK once it has mapped it (ack is stored), the connection
 * kept as its lease; else the segment stays offered in messages (an older
 * daemon has no descriptor socket; another process listening there gets
 * nothing). */
int ag_client_shm_pass(ag_client_shm *s, const char *ingest_url, uint64_t daemon_pid,
                       uint64_t daemon_uid);
/* A new connection to the ingest socket: offer the segment again. */
void ag_client_shm_reconnected(ag_client_shm *s);
/* Reserve a record of len bytes (writer held): 1 and its position, or 0
 * when the ring has no room for it now. */
int ag_client_shm_reserve(ag_client_shm *s, size_t len, uint64_t *at);
/* Where the record at position at lies in this process. */
uint8_t *ag_client_shm_record(const ag_client_shm *s, uint64_t at);

struct ag_client {
    /* set at open, read-only afterwards */
    ag_client_opts opts;       /* with defaults filled in; strings point below */
    char run[AG_NAME_MAX + 1]; /* the name asked for */
    char launch[AG_LAUNCH_ID_MAX + 1];
    char host[AG_NAME_MAX + 1];
    char *metadata;
    char *ingest_url;
    char *query_url;
    int ingest_origin; /* ag_url_origin of each URL */
    int query_origin;
    uint64_t client_id;
    nng_socket push;
    nng_socket req;
    _Atomic int req_pipes; /* connections of req (nng's pipe callbacks);
                                 * none: a query checks for a daemon first */
    pthread_t sender;
    int sender_started;
    uint64_t fork_generation; /* the process's fork generation at open */

    /* The run's name as the daemon filed it (identity.c): written once,
     * before run_known is set (release); readers load run_known (acquire). */
    char run_final[AG_NAME_MAX + 1];
    _Atomic int run_known;
    /* The name query: one aio whose callback chain asks q_run until the
     * daemon answers (state and backoff are the chain's alone). */
    nng_aio *name_aio;
    nng_ctx name_ctx;
    int have_name_ctx;
    int name_state;
    unsigned name_backoff_ms;

    pthread_mutex_t mu;
    pthread_cond_t work;    /* sender: a message was queued, or stop */
    pthread_cond_t room;    /* producers: the queue shrank */
    pthread_cond_t drained; /* flushers: a message was sent or discarded */
    pthread_cond_t named;   /* ag_client_start_run: the daemon said the name, or cannot */

    nng_msg **ring; /* the send queue */
    size_t ring_cap;
    size_t head;
    size_t count;
    size_t bytes; /* bytes held by the queue */

    ag_stats_batch batch; /* records not yet queued */
    size_t batch_records;
    int started;  /* run_start queued */
    int ended;    /* run_end queued */
    int stopping; /* close: sender exits, producers stop waiting */

    uint64_t next_seq;
    uint64_t enqueued; /* messages ever queued */
    uint64_t finished; /* messages sent or discarded after queueing */
    uint64_t max_step;
    uint64_t confirmed;     /* the daemon's last answer (flush, close): messages
                                 * of ours it stored ... */
    uint64_t confirmed_seq; /* ... and the highest seq among them */
    ag_client_stats stats;
    uint32_t *ring_records;        /* records carried by each queued message */
    unsigned char *ring_small;     /* each queued message: a snapshot small enough
                                    * for a bundle (set when queued) */
    unsigned callers;              /* threads that will touch the handle again after
                                 * releasing mu (a wait, an encode); close waits
                                 * for them to leave before freeing */
    struct ag_query_slot *queries; /* queries in flight: close cancels their aios */
    int name_asked;                /* the name query was started */
    _Atomic int bundles;           /* the daemon takes bundles (r_run's caps): the sender
                                    * sends queued small snapshots several at a time */
    int name_err;                  /* the daemon cannot say the name: why (an ag_err) */
    int bodies_open;               /* counted in bodies.c's cache (ag_send_bodies_open) */
    ag_client_shm shm;             /* set at open (shm.base NULL: none); its writer
                                    * mutex and head are its own */
    uint64_t shm_frontier;         /* the end of the last record queued or given up:
                                    * a message's mark (ag_msg_shm) */
    _Atomic int shm_offered;       /* a snapshot offering the segment was queued on
                                    * this connection (cleared when it is new) */
    _Atomic int shm_ack_waited;    /* ms waited for the daemon's answer on it */
    _Atomic int shm_caps;          /* what r_run's caps said of shared memory: SHM_* */
};

/* Queue an encoded stream message (takes msg in every case). Caller holds
 * mu. force: ignore the queue limits (run_start / run_end). AG_EAGAIN when
 * dropped under AG_QUEUE_DROP, AG_ECLOSED when closing. */
int ag_client_enqueue_locked(ag_client *c, nng_msg *msg, uint32_t records, int force);
/* The same for a snapshot message (it may travel in a bundle when small:
 * the sender need not read its header again). */
int ag_client_enqueue_snapshot_locked(ag_client *c, nng_msg *msg);
/* Queue the open stats batch, if any. Caller holds mu. force: past the
 * queue limits (only at the end of a run, into the ring's spare slots). */
int ag_client_close_batch_locked(ag_client *c, int force);
/* Queue run_start if the run has not started. Caller holds mu. */
int ag_client_start_run_locked(ag_client *c);
/* Would a message of len bytes fit in the queue now? Caller holds mu. */
int ag_client_has_room_locked(const ag_client *c, size_t len);
/* Encode m (a stream message) into a fresh nng message. */
int ag_client_encode_msg(const ag_msg *m, nng_msg **out);
/* 64 random bits, never 0. */
uint64_t ag_client_random_u64(void);

/* ---- bodies.c: the bodies of large outgoing messages, kept for reuse ------ */

#define AG_SEND_BODY_MIN (128u * 1024u)                /* smaller messages are malloc's business */
#define AG_SEND_BODIES_MAX 32                          /* bodies kept at most ... */
#define AG_SEND_BODIES_MAX_BYTES (64u * 1024u * 1024u) /* ... and bytes */

/* The size to allocate for a message of len bytes: len when it is below
 * AG_SEND_BODY_MIN, else its size class, the smallest (9..16) * 2^e that
 * holds it (at most an eighth more), so near sizes share kept bodies. */
size_t ag_send_body_class(size_t len);
/* A client opened: the first installs the process's cache in nng; it keeps
 * at most min(the largest queue_bytes of the clients open since, 64 MiB). */
void ag_send_bodies_open(size_t queue_bytes);
/* A client closed: the last removes the cache and frees what it kept. */
void ag_send_bodies_close(void);
/* In a fork() child (from the handler of client.c, single-threaded): no
 * client of the child's is open, whatever the parent had. */
void ag_send_bodies_forked(void);
/* What the cache holds now (for tests and benchmarks). */
typedef struct ag_send_bodies_stats {
    size_t bytes, count; /* kept now */
    size_t limit;        /* bytes kept at most (0: no client open) */
    uint64_t reused;     /* bodies handed out again since the process started */
} ag_send_bodies_stats;
void ag_send_bodies_get(ag_send_bodies_stats *out);

/* identity.c */
/* Fill c->launch from the option, else the environment, else generate one
 * (c->host must be set). AG_EINVAL / AG_ETOOBIG for a bad option. */
int ag_client_resolve_launch(ag_client *c, const char *given);
/* Fill o->rank and o->world_size: validate the given ones, or (world_size
 * 0) read $WORLD_SIZE / $RANK, else 0 and 1. AG_EINVAL with the reason in
 * ag_client_last_error(NULL) for a value out of range or not a number. */
int ag_client_resolve_rank(ag_client_opts *o);
/* Allocate the name query's aio and context on c->req. */
int ag_client_name_init(ag_client *c);
/* Start asking the daemon for the run's name (once run_start went out).
 * Called without mu, counted in callers. */
void ag_client_name_ask(ag_client *c);
/* Stop the name query and free it; close calls it without mu, before the
 * REQ socket closes. Safe when ag_client_name_init failed or never ran. */
void ag_client_name_fini(ag_client *c);
/* Whether c was opened in another process, i.e. we are a fork() child of the
 * process that opened it. Such a child owns none of the handle's threads or
 * sockets (nng aborts if used after fork), and mu may have been held by a
 * thread that does not exist here, so every call refuses (AG_ECLOSED) without
 * touching the lock, and close frees nothing. Checked before locking. */
int ag_client_forked(const ag_client *c);
/* Wait on cv (until the deadline when it is not NULL), counted in callers so
 * that close does not free the handle under a waiting thread. Caller holds
 * mu; returns pthread_cond_(timed)wait's result. */
int ag_client_wait_locked(ag_client *c, pthread_cond_t *cv, const struct timespec *deadline);
/* Leave a region counted in callers (close may be waiting for it). */
void ag_client_leave_locked(ag_client *c);

/* Set what ag_client_last_error says on this thread for c. */
void ag_client_note_error(const ag_client *c, const char *text);
/* Set what ag_client_last_error(NULL) says on this thread: why open failed. */
void ag_client_note_open_error(const char *text);

/* Ask the daemon how many of this client's messages it stored (q_delivery),
 * waiting at most timeout_ms; the query errors of query.c, and AG_EPROTO for
 * an answer about another client. Takes and releases mu itself. */
int ag_client_query_delivery(ag_client *c, int timeout_ms, ag_msg_delivery *out);

/* ---- endpoint.c: where the daemon is looked for ------------------------- */

/* How a URL was chosen. */
typedef enum ag_url_origin {
    AG_URL_GIVEN,   /* ag_client_opts */
    AG_URL_ENV,     /* $ALTGRAD_INGEST / $ALTGRAD_QUERY */
    AG_URL_LOCAL,   /* default: ./var/ingest.sock exists */
    AG_URL_SYSTEM,  /* default: /run/altgrad/ingest.sock exists */
    AG_URL_FALLBACK /* default: neither exists, so the ./var/ one */
} ag_url_origin;

/* The URL to use (malloc'd; NULL when out of memory): given, else $env, else
 * the source-tree default when ./var/ingest.sock exists, else the systemd one
 * when /run/altgrad/ingest.sock exists, else the source-tree default.
 * ingest: the stream URL, else the query URL. *origin says which. */
char *ag_endpoint_resolve(const char *given, int ingest, int *origin);
/* Is a daemon listening at url? A connect that hangs up at once, no SP
 * handshake (the nng we link survives that: docs/nng.md). AG_OK when the
 * connection is accepted, or the listener's backlog is full, or the transport
 * cannot be probed (not ipc or tcp), or (pending_fails 0) a tcp connect is
 * still pending after timeout_ms. AG_ETRANSPORT otherwise, with one line in
 * why naming the socket or address and the reason (not found, not a socket,
 * connection refused, permission denied, no answer to a connect within
 * timeout_ms). Never waits longer than timeout_ms (name resolution aside). */
int ag_endpoint_probe(const char *url, int timeout_ms, int pending_fails, char *why, size_t cap);
/* "no daemon at URL: WHY (HINT)", the hint saying where else it looked. */
void ag_endpoint_explain(const char *url, int origin, int ingest, const char *why, char *out,
                         size_t cap);

#endif
