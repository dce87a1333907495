/*
 * shm.c - the segments of local clients (daemon/shm.h). A snapshot names its
 * client's segment by token, with the client's descriptor of it; the daemon
 * opens it through /proc/<pid>/fd/<fd> of the process at the other end of
 * the connection (the kernel's word, from the ipc pipe), which only a
 * process of the same user may do, checks it is a memfd sealed against
 * shrinking (so reading it can never fault) and that its header is the one
 * the message describes, maps it and says so in the header (ack).
 *
 * Each message that names a segment is one entry of its queue, in arrival
 * order: a record the daemon has still to read, or a mark alone. Once the
 * entries from the front are done, the newest mark among them is published
 * as `released`: the client may write over everything below it.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
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
};

typedef struct refusal {
    uint64_t token, until_ms;
} refusal;

struct ag_shm_table {
    ag_logger *log;
    ag_shm_seg *segs[AG_SHM_SEGMENTS_MAX];
    size_t n;
    refusal refused[16]; /* recent refusals, so an offer is not tried on every message */
    size_t next_refusal;
};

ag_shm_table *ag_shm_table_new(ag_logger *log) {
    ag_shm_table *t = calloc(1, sizeof *t);
    if (t) t->log = log;
    return t;
}

static void seg_free(ag_shm_seg *s) {
    if (s->base) munmap(s->base, s->size);
    free(s->q);
    free(s);
}

void ag_shm_table_free(ag_shm_table *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) seg_free(t->segs[i]);
    free(t);
}

static void drop_at(ag_shm_table *t, size_t i) {
    seg_free(t->segs[i]);
    t->segs[i] = t->segs[--t->n];
}

void ag_shm_sweep(ag_shm_table *t, uint64_t now_ms) {
    for (size_t i = t->n; i-- > 0;)
        if (t->segs[i]->pending == 0 && now_ms - t->segs[i]->last_ms > AG_SHM_IDLE_MS) {
            ag_log(t->log, AG_LOG_INFO, "ingest: unmapped the idle segment of process %llu",
                   (unsigned long long)t->segs[i]->pid);
            drop_at(t, i);
        }
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

static int attach(ag_shm_table *t, const ag_msg_shm *h, uint64_t pid, uint64_t uid, uint64_t now,
                  ag_shm_seg **out, ag_errctx *err) {
    char why[160];
    if (uid != (uint64_t)geteuid()) return refuse(t, h, pid, now, err, OTHER_USER);
    if (t->n == AG_SHM_SEGMENTS_MAX) { /* make room: the idlest without records in use */
        size_t k = t->n;
        for (size_t i = 0; i < t->n; i++)
            if (t->segs[i]->pending == 0 &&
                (k == t->n || t->segs[i]->last_ms < t->segs[k]->last_ms))
                k = i;
        if (k == t->n) return refuse(t, h, pid, now, err, "256 segments in use");
        drop_at(t, k);
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%llu/fd/%llu", (unsigned long long)pid,
             (unsigned long long)h->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot open its descriptor %llu: %s", (unsigned long long)h->fd,
                 strerror(errno));
        return refuse(t, h, pid, now, err, why);
    }
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    const char *bad = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ? "not a file"
                      : seals < 0                                 ? "not a memfd"
                      : !(seals & F_SEAL_SHRINK)                  ? "not sealed against shrinking"
                      : (uint64_t)st.st_size < h->size            ? "smaller than it says"
                                                                  : NULL;
    void *base = MAP_FAILED;
    if (!bad) {
        base = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) bad = "it cannot be mapped";
    }
    close(fd); /* the mapping keeps it */
    if (bad) return refuse(t, h, pid, now, err, bad);
    ag_shm_header *hdr = base;
    if (hdr->magic != AG_SHM_MAGIC || hdr->token != h->token || hdr->size != h->size) {
        munmap(base, h->size);
        return refuse(t, h, pid, now, err, "its header is not the one its message names");
    }
    ag_shm_seg *s = calloc(1, sizeof *s);
    if (!s) {
        munmap(base, h->size);
        return ag_errctx_set(err, AG_ENOMEM, "out of memory");
    }
    *s = (ag_shm_seg){.token = h->token,
                      .size = h->size,
                      .cap = h->size - AG_SHM_HEADER,
                      .pid = pid,
                      .base = base,
                      .hdr = hdr,
                      .last_ms = now};
    /* What the client had released before (an earlier daemon): never less. */
    s->published = ag_shm_load(&hdr->released);
    t->segs[t->n++] = s;
    ag_log(t->log, AG_LOG_INFO, "ingest: mapped %llu bytes of shared memory of process %llu",
           (unsigned long long)h->size, (unsigned long long)pid);
    *out = s;
    return AG_OK;
}

int ag_shm_resolve(ag_shm_table *t, nng_msg *nm, ag_msg *m, ag_shm_ref *ref, ag_errctx *err) {
    ref->seg = NULL;
    if (m->type != AG_MSG_SNAPSHOT || !m->u.snapshot.shm.token) return AG_OK;
    ag_msg_snapshot *sn = &m->u.snapshot;
    const ag_msg_shm *h = &sn->shm;
    uint64_t now = (uint64_t)ag_mono_ms(), pid = 0, uid = 0;
    int known = peer_of(nm, &pid, &uid);
    if (known < 0) /* not from this machine: nothing to map, no segment to name */
        return h->has_at ? ag_errctx_set(err, AG_EPROTO, "shared memory over a remote connection")
                         : AG_OK;
    ag_shm_seg *s = NULL;
    for (size_t i = 0; i < t->n && !s; i++)
        if (t->segs[i]->token == h->token) s = t->segs[i];
    if (s && known && s->pid != pid)
        return ag_errctx_set(err, AG_EPROTO, "a shared-memory token of another process");
    if (s && s->size != h->size)
        return ag_errctx_set(err, AG_EPROTO, "a shared-memory segment of another size");
    if (!s) {
        int rc;
        if (!known)
            rc = h->has_at ? ag_errctx_set(err, AG_EPROTO,
                                           "shared memory from a connection that is not a local "
                                           "process's (or is gone)")
                           : AG_EPROTO; /* an offer over tcp: nothing to map, nothing to say */
        else if (refused_recently(t, h->token, now))
            rc = ag_errctx_set(err, AG_EPROTO, "shared memory refused");
        else
            rc = attach(t, h, pid, uid, now, &s, err);
        /* An offer with the arrays in the message is filed all the same. */
        if (rc) return h->has_at ? rc : AG_OK;
    }
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
    *ref = (ag_shm_ref){s, number};
    return AG_OK;
}
