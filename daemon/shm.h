/*
 * shm.h - the daemon's side of snapshots through shared memory
 * (proto/shm.h, docs/daemon.md "Snapshots through shared memory"): the
 * segments of local clients it has mapped, found by the token a snapshot
 * names, and which of their records it has read. Runs on the loop, but for
 * the descriptor socket's thread (ag_shm_listen) and ag_shm_get_stats.
 */
#ifndef AG_DAEMON_SHM_H
#define AG_DAEMON_SHM_H

#include <stdint.h>

#include <nng/nng.h>

#include "core/errctx.h"
#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/log.h"
#include "proto/proto.h"

#define AG_SHM_SEGMENTS_MAX 256     /* segments mapped at once */
#define AG_SHM_IDLE_MS (300 * 1000) /* an idle segment is unmapped after this */
/* A passed segment whose lease has ended stays mapped until every message
 * its client sent before has been taken from the daemon's inbound queue and
 * its records counted as pending: those have been read off the socket once
 * receiving has run AG_SHM_SETTLE_MS since the lease ended, so the segment
 * notes how many messages had been queued by then and goes once that many
 * have been taken (ag_shm_sweep); or once AG_SHM_GONE_MAX_MS have passed. */
#define AG_SHM_SETTLE_MS 200
#define AG_SHM_GONE_MAX_MS (60 * 1000)
#define AG_SHM_RETRY_MS 10000 /* a segment refused is not tried again before this */

typedef struct ag_shm_table ag_shm_table;
typedef struct ag_shm_seg ag_shm_seg;

/* A record the daemon reads: its segment (NULL: none) and its place in the
 * segment's queue of records and marks. */
typedef struct ag_shm_ref {
    ag_shm_seg *seg;
    uint64_t entry;
} ag_shm_ref;

ag_shm_table *ag_shm_table_new(ag_logger *log);
/* Unmap everything (no reference may be left). */
void ag_shm_table_free(ag_shm_table *t);

/*
 * m: a decoded snapshot that came in nm (its pipe says who sent it). When it
 * names a segment: map it if it is not (the sender must be a process of this
 * daemon's user on this machine, the segment a memfd sealed against
 * shrinking whose header carries the token), note the message's mark, and
 * when the arrays are in the segment point m's w and x at them (remote = 1)
 * and set *ref, to be released once they have been read. AG_OK also when
 * there is nothing to do; else the reason (the message must be rejected):
 * AG_EPROTO with the text in err.
 */
int ag_shm_resolve(ag_shm_table *t, nng_msg *nm, ag_msg *m, ag_shm_ref *ref, ag_errctx *err);
/* The record of ref has been read (or will not be): its space may go back
 * to the client once every earlier one has. Idempotent; clears ref. */
void ag_shm_release(ag_shm_ref *ref);
/* Serve the descriptor socket beside each ipc:// ingest socket of cfg
 * (proto/shm.h), on a thread of its own until ag_shm_table_free, which
 * removes the sockets' files. AG_OK also when there is none to serve. */
int ag_shm_listen(ag_shm_table *t, const ag_config *cfg);
/* Unmap the segments that may go with no record in use: idle since now_ms -
 * AG_SHM_IDLE_MS, or passed over the descriptor socket, their lease ended
 * and every message queued by AG_SHM_SETTLE_MS after that resolved.
 * arrived: messages queued in the inbound queue, ever; resolved: how many
 * of the first ones are resolved (ag_shm_resolve, their records counted as
 * pending); receiving: the queue is taking messages off the socket, and
 * has been since since_ms (ag_ingest_progress). */
typedef struct ag_shm_inbound {
    uint64_t arrived, resolved;
    int receiving;
    uint64_t since_ms;
} ag_shm_inbound;
void ag_shm_sweep(ag_shm_table *t, uint64_t now_ms, const ag_shm_inbound *in);
/* Any thread: the table's numbers now. Holds the table's mutex for one pass
 * over the segments mapped (at most AG_SHM_SEGMENTS_MAX). */
void ag_shm_get_stats(ag_shm_table *t, ag_shm_stats *out);

#endif
