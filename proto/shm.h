/*
 * shm.h - the shared-memory segment a local client may write snapshot
 * arrays into instead of its messages (PROTOCOL.md 3.3.1, docs/daemon.md
 * "Snapshots through shared memory"). The client creates it (a sealed
 * memfd), the daemon maps it; both agree on this header in its first page.
 * The records are a ring behind the header: positions are byte counts that
 * only grow, a record at position p lies at offset p mod cap of the ring,
 * never across its end.
 *
 * Who writes what:
 *  - the client: everything but `ack` and `released`, and the records, each
 *    only while the daemon has released it;
 *  - the daemon: `ack` (the token, once it has the segment mapped) and
 *    `released` (every record ending at or below it has been read; it only
 *    grows). Both with release stores, read with acquire loads; then, when
 *    the client's `waiting` is set, `wake` is bumped and the client woken
 *    (a futex on the shared page, shm.c).
 */
#ifndef AG_PROTO_SHM_H
#define AG_PROTO_SHM_H

#include <stdint.h>

#define AG_SHM_MAGIC 0x31676d6873676c61ULL /* "algshmg1", little-endian */
#define AG_SHM_HEADER 4096u                /* bytes before the ring */
#define AG_SHM_ALIGN 64u                   /* records start at multiples of this */
#define AG_SHM_MIN_SIZE (AG_SHM_HEADER + 64u * 1024u)
#define AG_SHM_MAX_SIZE (16ull << 30) /* 16 GiB: what a daemon maps at most per segment */

typedef struct ag_shm_header {
    uint64_t magic; /* AG_SHM_MAGIC */
    uint64_t token; /* the client's, never 0: messages name the segment by it */
    uint64_t size;  /* the segment's bytes, header included */
    uint64_t pad0[5];
    /* the daemon's, on a line of their own */
    uint64_t ack;      /* == token: the daemon has the segment mapped */
    uint64_t released; /* records ending at or below this position were read */
    /* A futex word: the daemon adds one after it stores ack or released
     * while `waiting` is set, and wakes the client's waiter. */
    uint32_t wake;
    uint32_t waiting; /* the client's: nonzero while a thread waits on wake */
    uint64_t pad1[5];
} ag_shm_header;

_Static_assert(sizeof(ag_shm_header) == 128, "two cache lines");
_Static_assert(sizeof(ag_shm_header) <= AG_SHM_HEADER, "the header fits its page");

static inline uint64_t ag_shm_load(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void ag_shm_store(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/*
 * The descriptor socket (PROTOCOL.md 3.3.2): beside an ingest socket at
 * ipc://PATH the daemon listens on the unix seqpacket socket PATH.shm. A
 * client connects, sends one request with its memfd attached (SCM_RIGHTS)
 * and reads one reply; status 0: the daemon has mapped the segment (and
 * stored ack). The connection is the segment's lease: the client keeps it
 * open while the segment is in use, and the daemon unmaps the segment once
 * it is closed and every record named has been read. Native byte order:
 * both ends are on one machine.
 */
#define AG_SHM_PASS_SUFFIX ".shm"
#define AG_SHM_PASS_MAGIC 0x31737361706d6873ULL  /* "shmpass1" */
#define AG_SHM_REPLY_MAGIC 0x31796c7065726873ULL /* "shreply1" */

typedef struct ag_shm_pass_request {
    uint64_t magic; /* AG_SHM_PASS_MAGIC */
    uint64_t token; /* the segment's header's */
    uint64_t size;  /* the segment's bytes, as its header says */
    uint64_t flags; /* 0 */
} ag_shm_pass_request;

typedef struct ag_shm_pass_reply {
    uint64_t magic; /* AG_SHM_REPLY_MAGIC */
    int32_t status; /* 0: mapped; else an AG_E* code */
    uint32_t pad;
    char why[112]; /* the refusal's reason, NUL-terminated */
} ag_shm_pass_reply;

_Static_assert(sizeof(ag_shm_pass_request) == 32, "four words");
_Static_assert(sizeof(ag_shm_pass_reply) == 128, "two cache lines");

/* The daemon, after storing ack or released: wake a waiting client. */
void ag_shm_wake(ag_shm_header *h);
/* The client: wait at most timeout_ms for a wake after `seen` (the value
 * of wake read before checking what it waits for). */
void ag_shm_wait(ag_shm_header *h, uint32_t seen, int timeout_ms);

#endif
