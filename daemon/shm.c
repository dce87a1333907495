/*
 * shm.c - the segments of local clients (daemon/shm.h). A snapshot names its
 * client's segment by token, with the client's descriptor of it; the daemon
 * opens it through /proc/<pid>/fd/<fd> of the process at the other end of
 * the connection (the kernel's word, from the ipc pipe), which only a
 * process of the same user may do, checks it is a memfd sealed against
 * shrinking (so reading it can never fault) and that its header is the one
 * the message describes, maps it and says so in the header (ack).
 *
 * A client of another user cannot be opened that way: it passes its memfd
 * over the descriptor socket beside the ingest socket instead (proto/shm.h,
 * PROTOCOL.md 3.3.2), served by a thread of its own here, which checks and
 * maps it the same way and enters it in the table. That connection is the
 * segment's lease: once the client closes it the segment is unmapped as
 * soon as its records have been read, and never before (the daemon could
 * not open it again).
 *
 * Each message that names a segment is one entry of its queue, in arrival
 * order: a record the daemon has still to read, or a mark alone. Once the
 * entries from the front are done, the newest mark among them is published
 * as `released`: the client may write over everything below it.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/clock.h"
#include "daemon/shm.h"
#include "proto/shm.h"

#define QUEUE_MIN 16
#define OTHER_USER "another user's process"
#define QUEUE_MAX (1u << 16) /* entries waiting in one segment (records in flight) */

typedef struct entry {
    uint64_t mark;
    int done;
} entry;

struct ag_shm_seg {
    uint64_t token, size, cap;
    uint64_t pid;
    uint8_t *base; /* the whole segment, shared */
    ag_shm_header *hdr;
    entry *q; /* a ring of qcap entries; q[qhead] is entry number qbase */
    size_t qcap, qhead, qlen;
    uint64_t qbase;
    uint64_t published; /* the last released written */
    size_t pending;     /* records not yet read */
    uint64_t last_ms;
    int passed;       /* over the descriptor socket: kept until its lease ends */
    int gone;         /* passed, and its lease has ended (under the table's mu) */
    uint64_t gone_ms; /* when */
    /* Once settled: how many messages the inbound queue had taken in
     * (ag_shm_inbound.arrived); the segment goes when that many are resolved */
    int marked;
    uint64_t mark;
};

typedef struct refusal {
    uint64_t token, until_ms;
} refusal;

/* A connection of the descriptor socket: waiting for its request until
 * deadline_ms, or the lease of the segment (token, pid) it passed. */
typedef struct pass_conn {
    int fd;
    int leased;
    uint64_t token, pid, deadline_ms;
} pass_conn;

#define PASS_LISTENERS AG_CONFIG_MAX_INGEST
#define PASS_WAITING 32   /* connections yet to send their request */
#define PASS_WAIT_MS 1000 /* how long one may take to */
#define PASS_LOG_EVERY 10 /* refusals logged per PASS_LOG_MS at most */
#define PASS_LOG_MS 10000

struct ag_shm_table {
    ag_logger *log;
    /* Held by the loop while it looks up, enters or unmaps segments, and by
     * the descriptor thread while it enters a segment (never unmapping
     * one) or ends a lease: segs, n, and a segment's passed and gone. The
     * rest of a segment is the loop's alone. */
    pthread_mutex_t mu;
    ag_shm_seg *segs[AG_SHM_SEGMENTS_MAX];
    size_t n;
    refusal refused[16]; /* recent refusals, so an offer is not tried on every message */
    size_t next_refusal;
    /* the descriptor sockets and their thread's connections */
    int lfd[PASS_LISTENERS];
    char *lpath[PASS_LISTENERS];
    size_t nl;
    int stop[2];
    pthread_t thread;
    int started;
    pass_conn conns[AG_SHM_SEGMENTS_MAX + PASS_WAITING];
    size_t nconns;
    uint64_t log_window_ms; /* refusals logged since then: log_count */
    unsigned log_count;
    /* For /metrics (ag_shm_get_stats), read on other threads: snapshots
     * whose arrays were in a segment, and refusals of either kind (refuse,
     * pass_refused), logged or not. Since the daemon started. */
    _Atomic uint64_t snapshots, refusals;
};

ag_shm_table *ag_shm_table_new(ag_logger *log) {
    ag_shm_table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return NULL;
    }
    t->log = log;
    t->stop[0] = t->stop[1] = -1;
    return t;
}

static void seg_free(ag_shm_seg *s) {
    if (s->base) munmap(s->base, s->size);
    free(s->q);
    free(s);
}

static void pass_stop(ag_shm_table *t);

void ag_shm_table_free(ag_shm_table *t) {
    if (!t) return;
    pass_stop(t);
    for (size_t i = 0; i < t->n; i++) seg_free(t->segs[i]);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static void drop_at(ag_shm_table *t, size_t i) {
    seg_free(t->segs[i]);
    t->segs[i] = t->segs[--t->n];
}

/* Whether segment s may be unmapped now (the table's mu held): nothing of
 * it in use, and its client gone (passed) or idle long enough (opened
 * through /proc, which can be done again). A client's messages may still
 * be on their way when its lease ends: in the socket, or in the inbound
 * queue, not yet resolved (so not in pending). Those it sent before it
 * closed the lease have been read off the socket once receiving has run
 * AG_SHM_SETTLE_MS since (a full queue holds the socket back), so they are
 * among the messages queued by then (the mark), and counted once that many
 * have been resolved: the queue is taken in order. A busy queue need not
 * ever be empty for this. */
static int droppable(ag_shm_seg *s, uint64_t now_ms, const ag_shm_inbound *in) {
    if (s->pending) return 0;
    if (!s->passed) return now_ms - s->last_ms > AG_SHM_IDLE_MS;
    if (!s->gone) return 0;
    uint64_t from = s->gone_ms > in->since_ms ? s->gone_ms : in->since_ms;
    if (!s->marked && in->receiving && now_ms >= from + AG_SHM_SETTLE_MS) {
        s->marked = 1;
        s->mark = in->arrived;
    }
    return (s->marked && in->resolved >= s->mark) || now_ms >= s->gone_ms + AG_SHM_GONE_MAX_MS;
}

void ag_shm_sweep(ag_shm_table *t, uint64_t now_ms, const ag_shm_inbound *in) {
    pthread_mutex_lock(&t->mu);
    for (size_t i = t->n; i-- > 0;)
        if (droppable(t->segs[i], now_ms, in)) {
            ag_log(t->log, AG_LOG_INFO, "ingest: unmapped the %s segment of process %llu",
                   t->segs[i]->passed ? "released" : "idle", (unsigned long long)t->segs[i]->pid);
            drop_at(t, i);
        }
    pthread_mutex_unlock(&t->mu);
}

void ag_shm_get_stats(ag_shm_table *t, ag_shm_stats *out) {
    out->snapshots = atomic_load_explicit(&t->snapshots, memory_order_relaxed);
    out->refused = atomic_load_explicit(&t->refusals, memory_order_relaxed);
    pthread_mutex_lock(&t->mu);
    out->segments = t->n;
    out->passed = 0;
    for (size_t i = 0; i < t->n; i++) out->passed += t->segs[i]->passed != 0;
    pthread_mutex_unlock(&t->mu);
}

/* ---- the queue of a segment ---------------------------------------------- */

static entry *entry_at(ag_shm_seg *s, uint64_t number) {
    return &s->q[(s->qhead + (size_t)(number - s->qbase)) % s->qcap];
}

/* Publish the newest mark of the done entries at the front. */
static void advance(ag_shm_seg *s) {
    uint64_t rel = s->published;
    while (s->qlen && s->q[s->qhead].done) {
        if (s->q[s->qhead].mark > rel) rel = s->q[s->qhead].mark;
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qlen--;
        s->qbase++;
    }
    if (rel != s->published) {
        s->published = rel;
        ag_shm_store(&s->hdr->released, rel);
        ag_shm_wake(s->hdr);
    }
}

/* Queue an entry; its number, or UINT64_MAX when the queue is full. */
static uint64_t push(ag_shm_seg *s, uint64_t mark, int done) {
    if (done && s->qlen && entry_at(s, s->qbase + s->qlen - 1)->done) {
        entry *tail = entry_at(s, s->qbase + s->qlen - 1); /* marks alone merge */
        if (mark > tail->mark) tail->mark = mark;
        advance(s);
        return s->qbase + s->qlen - 1;
    }
    if (s->qlen == s->qcap) {
        if (s->qcap >= QUEUE_MAX) return UINT64_MAX;
        size_t cap = s->qcap ? 2 * s->qcap : QUEUE_MIN;
        entry *q = malloc(cap * sizeof *q);
        if (!q) return UINT64_MAX;
        for (size_t i = 0; i < s->qlen; i++) q[i] = s->q[(s->qhead + i) % s->qcap];
        free(s->q);
        s->q = q;
        s->qcap = cap;
        s->qhead = 0;
    }
    uint64_t number = s->qbase + s->qlen++;
    *entry_at(s, number) = (entry){mark, done};
    advance(s);
    return number;
}

void ag_shm_release(ag_shm_ref *ref) {
    ag_shm_seg *s = ref->seg;
    if (!s) return;
    ref->seg = NULL;
    if (ref->entry >= s->qbase && ref->entry < s->qbase + s->qlen)
        entry_at(s, ref->entry)->done = 1;
    s->pending--;
    advance(s);
}

/* ---- mapping --------------------------------------------------------------- */

static int refused_recently(ag_shm_table *t, uint64_t token, uint64_t now) {
    for (size_t i = 0; i < sizeof t->refused / sizeof t->refused[0]; i++)
        if (t->refused[i].token == token && now < t->refused[i].until_ms) return 1;
    return 0;
}

static int refuse(ag_shm_table *t, const ag_msg_shm *h, uint64_t pid, uint64_t now, ag_errctx *err,
                  const char *why) {
    atomic_fetch_add_explicit(&t->refusals, 1, memory_order_relaxed);
    t->refused[t->next_refusal] = (refusal){h->token, now + AG_SHM_RETRY_MS};
    t->next_refusal = (t->next_refusal + 1) % (sizeof t->refused / sizeof t->refused[0]);
    /* Another user's trainer is the usual case under the system service
     * (docs/service.md): said at info; anything else at notice. */
    ag_log(t->log, strcmp(why, OTHER_USER) == 0 ? AG_LOG_INFO : AG_LOG_NOTICE,
           "ingest: not mapping the shared memory of process %llu (%s); its snapshots go "
           "through the socket",
           (unsigned long long)pid, why);
    return ag_errctx_set(err, AG_EPROTO, "shared memory refused: %s", why);
}

/* The sender of nm, from its connection: 1 with pid and uid (ipc), -1 for
 * a connection that has no such thing (tcp, tls), 0 when it is gone. */
static int peer_of(nng_msg *nm, uint64_t *pid, uint64_t *uid) {
    nng_pipe p = nng_msg_get_pipe(nm);
    if (nng_pipe_id(p) <= 0) return 0;
    int rv = nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, pid);
    if (rv == NNG_ENOTSUP) return -1;
    return rv == 0 && nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_UID, uid) == 0;
}

/* Check that fd is a memfd sealed against shrinking, at least size bytes
 * long, whose header names token and size, and map it: its mapping, or NULL
 * with the reason in why. The descriptor stays the caller's. */
static void *map_checked(int fd, uint64_t token, uint64_t size, char *why, size_t why_size) {
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    const char *bad = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ? "not a file"
                      : seals < 0                                 ? "not a memfd"
                      : !(seals & F_SEAL_SHRINK)                  ? "not sealed against shrinking"
                      : (uint64_t)st.st_size < size               ? "smaller than it says"
                                                                  : NULL;
    void *base = MAP_FAILED;
    if (!bad) {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) bad = "it cannot be mapped";
    }
    if (!bad) {
        const ag_shm_header *hdr = base;
        if (hdr->magic != AG_SHM_MAGIC || hdr->token != token || hdr->size != size) {
            munmap(base, size);
            bad = "its header is not the one its message names";
        }
    }
    if (!bad) return base;
    snprintf(why, why_size, "%s", bad);
    return NULL;
}

/* A new entry of the table for a mapped segment (mu held, room made): the
 * segment, or NULL without memory (the mapping is then undone). */
static ag_shm_seg *enter(ag_shm_table *t, void *base, uint64_t token, uint64_t size, uint64_t pid,
                         uint64_t now, int passed) {
    ag_shm_seg *s = calloc(1, sizeof *s);
    if (!s) {
        munmap(base, size);
        return NULL;
    }
    ag_shm_header *hdr = base;
    *s = (ag_shm_seg){.token = token,
                      .size = size,
                      .cap = size - AG_SHM_HEADER,
                      .pid = pid,
                      .base = base,
                      .hdr = hdr,
                      .last_ms = now,
                      .passed = passed};
    /* What the client had released before (an earlier daemon): never less. */
    s->published = ag_shm_load(&hdr->released);
    t->segs[t->n++] = s;
    return s;
}

/* Make room for one more segment (the loop, mu held): unmap the idlest one
 * that may go. 0, or -1 when every one is in use. */
static int make_room(ag_shm_table *t) {
    if (t->n < AG_SHM_SEGMENTS_MAX) return 0;
    size_t k = t->n;
    for (size_t i = 0; i < t->n; i++) {
        const ag_shm_seg *s = t->segs[i];
        if (s->pending || (s->passed && !s->gone)) continue;
        if (k == t->n || s->last_ms < t->segs[k]->last_ms) k = i;
    }
    if (k == t->n) return -1;
    drop_at(t, k);
    return 0;
}

static int attach(ag_shm_table *t, const ag_msg_shm *h, uint64_t pid, uint64_t uid, uint64_t now,
                  ag_shm_seg **out, ag_errctx *err) {
    char why[160];
    if (uid != (uint64_t)geteuid()) return refuse(t, h, pid, now, err, OTHER_USER);
    if (make_room(t)) return refuse(t, h, pid, now, err, "256 segments in use");
    char path[64];
    snprintf(path, sizeof path, "/proc/%llu/fd/%llu", (unsigned long long)pid,
             (unsigned long long)h->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot open its descriptor %llu: %s", (unsigned long long)h->fd,
                 strerror(errno));
        return refuse(t, h, pid, now, err, why);
    }
    void *base = map_checked(fd, h->token, h->size, why, sizeof why);
    close(fd); /* the mapping keeps it */
    if (!base) return refuse(t, h, pid, now, err, why);
    ag_shm_seg *s = enter(t, base, h->token, h->size, pid, now, 0);
    if (!s) return ag_errctx_set(err, AG_ENOMEM, "out of memory");
    ag_log(t->log, AG_LOG_INFO, "ingest: mapped %llu bytes of shared memory of process %llu",
           (unsigned long long)h->size, (unsigned long long)pid);
    *out = s;
    return AG_OK;
}

/* Whether two pids the kernel gave may be one process: equal, or either
 * unknown (0: outside this daemon's pid namespace, as from inside a
 * sandbox). Then the token alone, a random 64-bit number only the client
 * and its segment hold, names the segment. */
static int same_process(uint64_t a, uint64_t b) { return a == b || a == 0 || b == 0; }

/* The segment a snapshot names (mu held), mapped now if need be: AG_OK
 * with *out, else why not (AG_EPROTO with nothing in err: nothing to say). */
static int find(ag_shm_table *t, const ag_msg_shm *h, int known, uint64_t pid, uint64_t uid,
                uint64_t now, ag_shm_seg **out, ag_errctx *err) {
    ag_shm_seg *s = NULL;
    for (size_t i = 0; i < t->n && !s; i++)
        if (t->segs[i]->token == h->token) s = t->segs[i];
    if (s && known && !same_process(s->pid, pid))
        return ag_errctx_set(err, AG_EPROTO, "a shared-memory token of another process");
    if (s && s->size != h->size)
        return ag_errctx_set(err, AG_EPROTO, "a shared-memory segment of another size");
    if (s) {
        *out = s;
        return AG_OK;
    }
    if (!known)
        return h->has_at ? ag_errctx_set(err, AG_EPROTO,
                                         "shared memory from a connection that is not a local "
                                         "process's (or is gone)")
                         : AG_EPROTO; /* an offer over tcp: nothing to map, nothing to say */
    if (refused_recently(t, h->token, now))
        return ag_errctx_set(err, AG_EPROTO, "shared memory refused");
    return attach(t, h, pid, uid, now, out, err);
}

int ag_shm_resolve(ag_shm_table *t, nng_msg *nm, ag_msg *m, ag_shm_ref *ref, ag_errctx *err) {
    ref->seg = NULL;
    if (m->type != AG_MSG_SNAPSHOT || !m->u.snapshot.shm.token) return AG_OK;
    ag_msg_snapshot *sn = &m->u.snapshot;
    const ag_msg_shm *h = &sn->shm;
    ag_shm_seg *s = NULL;
    uint64_t now = (uint64_t)ag_mono_ms(), pid = 0, uid = 0;
    int known = peer_of(nm, &pid, &uid);
    if (known < 0) /* not from this machine: nothing to map, no segment to name */
        return h->has_at ? ag_errctx_set(err, AG_EPROTO, "shared memory over a remote connection")
                         : AG_OK;
    pthread_mutex_lock(&t->mu);
    int rc = find(t, h, known, pid, uid, now, &s, err);
    pthread_mutex_unlock(&t->mu);
    /* An offer with the arrays in the message is filed all the same. */
    if (rc) return h->has_at ? rc : AG_OK;
    s->last_ms = now;
    /* Acknowledged on every message naming it: a client that connected
     * again asks again (proto/shm.h). */
    if (ag_shm_load(&s->hdr->ack) != s->token) {
        ag_shm_store(&s->hdr->ack, s->token);
        ag_shm_wake(s->hdr);
    }
    if (!h->has_at) {
        push(s, h->mark, 1);
        return AG_OK;
    }
    uint64_t number = push(s, h->mark, 0);
    if (number == UINT64_MAX)
        return ag_errctx_set(err, AG_ENOMEM, "too many shared-memory records in flight");
    s->pending++;
    /* proto checked the record lies inside the ring */
    const uint8_t *w = s->base + AG_SHM_HEADER + h->at % s->cap;
    sn->w = w;
    sn->x = w + (size_t)sn->n * ag_proto_dtype_size(sn->dtype);
    sn->remote = 1;
    atomic_fetch_add_explicit(&t->snapshots, 1, memory_order_relaxed);
    *ref = (ag_shm_ref){s, number};
    return AG_OK;
}

/* ---- the descriptor socket --------------------------------------------------- */

/* A refusal of the descriptor socket, logged at notice at most
 * PASS_LOG_EVERY times per PASS_LOG_MS (a local process may try often). */
static void pass_refused(ag_shm_table *t, uint64_t pid, uint64_t uid, const char *why) {
    atomic_fetch_add_explicit(&t->refusals, 1, memory_order_relaxed);
    uint64_t now = (uint64_t)ag_mono_ms();
    if (now - t->log_window_ms > PASS_LOG_MS) {
        t->log_window_ms = now;
        t->log_count = 0;
    }
    if (t->log_count++ >= PASS_LOG_EVERY) return;
    ag_log(t->log, AG_LOG_NOTICE,
           "ingest: not mapping the shared memory passed by process %llu (user %llu): %s; its "
           "snapshots go through the socket%s",
           (unsigned long long)pid, (unsigned long long)uid, why,
           t->log_count == PASS_LOG_EVERY ? " (further refusals not logged for a while)" : "");
}

static void conn_close(pass_conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* The lease of (token, pid) has ended: its segment may go once read. */
static void lease_ended(ag_shm_table *t, const pass_conn *c) {
    uint64_t now = (uint64_t)ag_mono_ms();
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n; i++)
        if (t->segs[i]->passed && t->segs[i]->token == c->token && t->segs[i]->pid == c->pid) {
            t->segs[i]->gone = 1;
            t->segs[i]->gone_ms = now;
        }
    pthread_mutex_unlock(&t->mu);
}

/* Enter the segment passed by process pid (mapped at base) in the table and
 * acknowledge it. 0 and the lease conn takes it on, else the reason in why
 * (base unmapped). */
static int pass_enter(ag_shm_table *t, pass_conn *conn, void *base, const ag_shm_pass_request *rq,
                      uint64_t pid, char *why, size_t why_size) {
    uint64_t now = (uint64_t)ag_mono_ms();
    pthread_mutex_lock(&t->mu);
    ag_shm_seg *s = NULL;
    for (size_t i = 0; i < t->n && !s; i++)
        if (t->segs[i]->token == rq->token) s = t->segs[i];
    const char *bad = NULL;
    if (s && (!same_process(s->pid, pid) || s->size != rq->size))
        bad = "its token names another process's segment";
    else if (s) {
        /* Passed again (a new connection to this daemon, the same memfd):
         * the mapping in the table serves, under the new lease. */
        munmap(base, rq->size);
        base = NULL;
        s->passed = 1;
        s->gone = 0;
        s->marked = 0;
    } else if (t->n == AG_SHM_SEGMENTS_MAX) /* only the loop unmaps (it reads them) */
        bad = "256 segments in use";
    else if (!(s = enter(t, base, rq->token, rq->size, pid, now, 1))) {
        base = NULL; /* enter unmapped it */
        bad = "out of memory";
    }
    if (!bad && ag_shm_load(&s->hdr->ack) != rq->token) {
        /* mapped: the client may write records from now on */
        ag_shm_store(&s->hdr->ack, rq->token);
        ag_shm_wake(s->hdr);
    }
    pthread_mutex_unlock(&t->mu);
    if (bad) {
        if (base) munmap(base, rq->size);
        snprintf(why, why_size, "%s", bad);
        return -1;
    }
    /* An earlier lease of the same segment ends without releasing it. */
    for (size_t i = 0; i < t->nconns; i++)
        if (&t->conns[i] != conn && t->conns[i].leased && t->conns[i].token == rq->token &&
            t->conns[i].pid == pid)
            conn_close(&t->conns[i]);
    conn->leased = 1;
    conn->token = rq->token;
    conn->pid = pid;
    return 0;
}

/* A waiting connection is readable: read its request and its descriptor,
 * map the segment and reply. The connection becomes the segment's lease,
 * or is closed. */
static void pass_serve(ag_shm_table *t, pass_conn *conn) {
    ag_shm_pass_request rq;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(4 * sizeof(int))];
    } ctl;
    struct iovec iov = {&rq, sizeof rq};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t got = recvmsg(conn->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
    /* every descriptor that came with it, kept or not */
    int fds[4], nfds = 0;
    for (struct cmsghdr *ch = got >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; ch; ch = CMSG_NXTHDR(&mh, ch))
        if (ch->cmsg_level == SOL_SOCKET && ch->cmsg_type == SCM_RIGHTS)
            for (size_t k = 0; k < (ch->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfds < 4; k++)
                memcpy(&fds[nfds++], CMSG_DATA(ch) + k * sizeof(int), sizeof(int));
    struct ucred cr = {0, 0, 0};
    socklen_t crlen = sizeof cr;
    /* pid 0: a process outside this daemon's pid namespace (a sandbox's) */
    int credited = getsockopt(conn->fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) == 0;
    char why[112] = "";
    const char *bad = got <= 0    ? "no request"
                      : !credited ? "no credentials"
                      : (size_t)got != sizeof rq || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
                          ? "a request of another size"
                      : rq.magic != AG_SHM_PASS_MAGIC || rq.flags != 0 ? "not a request"
                      : nfds != 1                                      ? "not one descriptor"
                      : rq.token == 0 || rq.size < AG_SHM_MIN_SIZE || rq.size > AG_SHM_MAX_SIZE ||
                              rq.size % 4096 != 0
                          ? "a token or size out of range"
                          : NULL;
    void *base = NULL;
    if (!bad && !(base = map_checked(fds[0], rq.token, rq.size, why, sizeof why))) bad = why;
    for (int k = 0; k < nfds; k++) close(fds[k]); /* a mapping keeps what it needs */
    if (!bad && pass_enter(t, conn, base, &rq, (uint64_t)cr.pid, why, sizeof why)) bad = why;
    if (got <= 0) { /* gone, or nothing to answer */
        conn_close(conn);
        return;
    }
    ag_shm_pass_reply rp = {.magic = AG_SHM_REPLY_MAGIC, .status = bad ? AG_EPROTO : AG_OK};
    if (bad) snprintf(rp.why, sizeof rp.why, "%s", bad);
    if (!bad) {
        ag_log(t->log, AG_LOG_INFO,
               "ingest: mapped %llu bytes of shared memory passed by process %llu (user %llu)",
               (unsigned long long)rq.size, (unsigned long long)cr.pid, (unsigned long long)cr.uid);
    } else {
        pass_refused(t, (uint64_t)cr.pid, (uint64_t)cr.uid, bad);
    }
    if (send(conn->fd, &rp, sizeof rp, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)sizeof rp && !bad) {
        /* the client cannot know: its lease ends here */
        lease_ended(t, conn);
        conn_close(conn);
    }
    if (bad) conn_close(conn);
}

static void *pass_main(void *arg) {
    ag_shm_table *t = arg;
    enum { MAXFDS = 1 + PASS_LISTENERS + AG_SHM_SEGMENTS_MAX + PASS_WAITING };
    struct pollfd pf[MAXFDS];
    for (;;) {
        uint64_t now = (uint64_t)ag_mono_ms();
        size_t waiting = 0, k = 0;
        int timeout = -1;
        pf[k++] = (struct pollfd){t->stop[0], POLLIN, 0};
        for (size_t i = 0; i < t->nconns; i++) {
            if (!t->conns[i].leased) {
                waiting++;
                uint64_t left = t->conns[i].deadline_ms > now ? t->conns[i].deadline_ms - now : 0;
                if (timeout < 0 || left < (uint64_t)timeout) timeout = (int)left;
            }
            pf[k++] = (struct pollfd){t->conns[i].fd, POLLIN, 0};
        }
        int room = waiting < PASS_WAITING && t->nconns < sizeof t->conns / sizeof t->conns[0];
        for (size_t l = 0; l < t->nl; l++)
            pf[k++] = (struct pollfd){t->lfd[l], (short)(room ? POLLIN : 0), 0};
        if (poll(pf, (nfds_t)k, timeout) < 0 && errno != EINTR) break;
        if (pf[0].revents) break;
        now = (uint64_t)ag_mono_ms();
        size_t nconns = t->nconns; /* those polled; accepted ones come after */
        for (size_t i = 0; i < nconns; i++) {
            pass_conn *c = &t->conns[i];
            short ev = pf[1 + i].revents;
            if (c->fd < 0) continue; /* closed above: a lease passed again */
            if (!c->leased) {
                if (ev)
                    pass_serve(t, c);
                else if (now >= c->deadline_ms)
                    conn_close(c); /* sent nothing in time */
            } else if (ev) {
                /* A lease ends when its client closes it (or sends anything). */
                lease_ended(t, c);
                conn_close(c);
            }
        }
        for (size_t l = 0; l < t->nl; l++) {
            if (!(pf[1 + nconns + l].revents & POLLIN)) continue;
            while (waiting < PASS_WAITING && t->nconns < sizeof t->conns / sizeof t->conns[0]) {
                int fd = accept4(t->lfd[l], NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break;
                t->conns[t->nconns++] = (pass_conn){fd, 0, 0, 0, now + PASS_WAIT_MS};
                waiting++;
            }
        }
        size_t j = 0; /* closed connections out */
        for (size_t i = 0; i < t->nconns; i++)
            if (t->conns[i].fd >= 0) t->conns[j++] = t->conns[i];
        t->nconns = j;
    }
    return NULL;
}

/* Listen beside the ipc:// socket url (path PATH: on PATH.shm). A socket
 * that cannot be made is logged and done without. */
static void pass_listen(ag_shm_table *t, const char *url) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *path = url + 6;
    if (strlen(path) + sizeof AG_SHM_PASS_SUFFIX > sizeof sa.sun_path) {
        ag_log(t->log, AG_LOG_NOTICE,
               "ingest: no descriptor socket beside %s (its path is too long): only clients of "
               "this daemon's user can use shared memory",
               url);
        return;
    }
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s%s", path, AG_SHM_PASS_SUFFIX);
    /* The ingest socket beside it is this daemon's: a socket left here is
     * stale. Anything else is somebody's file, and stays. */
    struct stat st;
    if (lstat(sa.sun_path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        ag_log(t->log, AG_LOG_WARNING,
               "ingest: %s exists and is not a socket: no descriptor socket, so only clients "
               "of this daemon's user can use shared memory",
               sa.sun_path);
        return;
    }
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) unlink(sa.sun_path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        chmod(sa.sun_path, 0660) != 0 || listen(fd, 64) != 0) {
        ag_log(t->log, AG_LOG_WARNING,
               "ingest: cannot listen on %s: %s; only clients of this daemon's user can use "
               "shared memory",
               sa.sun_path, strerror(errno));
        if (fd >= 0) close(fd);
        return;
    }
    t->lpath[t->nl] = strdup(sa.sun_path);
    t->lfd[t->nl++] = fd;
}

int ag_shm_listen(ag_shm_table *t, const ag_config *cfg) {
    for (size_t i = 0; i < cfg->ningest && t->nl < PASS_LISTENERS; i++)
        if (strncmp(cfg->ingest[i], "ipc://", 6) == 0) pass_listen(t, cfg->ingest[i]);
    if (!t->nl) return AG_OK;
    if (pipe2(t->stop, O_CLOEXEC) != 0) return AG_EIO;
    if (pthread_create(&t->thread, NULL, pass_main, t) != 0) return AG_ENOMEM;
    t->started = 1;
    return AG_OK;
}

static void pass_stop(ag_shm_table *t) {
    if (t->started) {
        ssize_t w = write(t->stop[1], "x", 1);
        (void)w;
        pthread_join(t->thread, NULL);
        t->started = 0;
    }
    for (size_t i = 0; i < t->nconns; i++) conn_close(&t->conns[i]);
    t->nconns = 0;
    for (size_t l = 0; l < t->nl; l++) {
        close(t->lfd[l]);
        if (t->lpath[l]) unlink(t->lpath[l]);
        free(t->lpath[l]);
    }
    t->nl = 0;
    for (int k = 0; k < 2; k++)
        if (t->stop[k] >= 0) close(t->stop[k]);
    t->stop[0] = t->stop[1] = -1;
}
