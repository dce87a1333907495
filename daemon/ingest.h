/*
 * ingest.h - the stream side: one nng PULL socket listening on every
 * --ingest URL. nng receives on its own threads (aio callback) into a
 * mutex-protected inbound queue and wakes the libuv loop with uv_async; the
 * loop pops messages and hands them to the engine. When the inbound queue
 * is full, receiving pauses (nng then pushes back on the trainers).
 */
#ifndef AG_DAEMON_INGEST_H
#define AG_DAEMON_INGEST_H

#include <nng/nng.h>
#include <stddef.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/log.h"

#define AG_INGEST_QUEUE_MSGS 1024
/* Bytes received and not yet taken, and kept bodies (below), together: this,
 * or an eighth of --state-budget when smaller (docs/daemon.md, Memory).
 * Receiving pauses when the queue holds three quarters of it. */
#define AG_INGEST_QUEUE_BYTES (256u * 1024u * 1024u)
size_t ag_ingest_queue_bytes(const ag_config *cfg);

/* Bodies of received messages of AG_INGEST_BODY_MIN bytes or more are kept
 * when freed (at most AG_INGEST_BODIES, and with the messages queued within
 * ag_ingest_queue_bytes) for the next message of exactly that size, so its
 * pages are already mapped (docs/daemon.md, Memory). */
#define AG_INGEST_BODY_MIN ((size_t)1 << 20)
#define AG_INGEST_BODIES 32

typedef struct ag_ingest ag_ingest;

/* Listen on cfg's ingest URLs; on_ready(ctx) runs on the loop whenever
 * messages wait. Errors: AG_ETRANSPORT with the reason logged. */
int ag_ingest_start(ag_ingest **out, uv_loop_t *loop, const ag_config *cfg, ag_logger *lg,
                    void (*on_ready)(void *ctx), void *ctx);
/* Pop the oldest message (the caller frees it with nng_msg_free), or NULL. */
nng_msg *ag_ingest_pop(ag_ingest *in);
/* Messages received since the last call (for idle detection while draining). */
size_t ag_ingest_take_received(ag_ingest *in);
size_t ag_ingest_depth(ag_ingest *in);
/* How far the queue has come: messages queued and taken, ever (a message
 * queued before another is taken before it), whether receiving is on (not
 * paused by a full queue), and when it last resumed after a pause
 * (ag_mono_ms; 0: never paused). */
typedef struct ag_ingest_counts {
    uint64_t pushed, popped;
    int receiving;
    int64_t resumed_ms;
} ag_ingest_counts;
void ag_ingest_progress(ag_ingest *in, ag_ingest_counts *out);
/* Free every kept message body (the daemon is idle). Any thread. */
void ag_ingest_trim(ag_ingest *in);
/* Bytes of message bodies kept for reuse. */
size_t ag_ingest_cached_bytes(ag_ingest *in);
/* Stop receiving and close the socket; queued messages stay poppable. */
void ag_ingest_close(ag_ingest *in);
/* Free everything (after close; closes the uv handle, so before the loop ends). */
void ag_ingest_free(ag_ingest *in);

/* For an ipc:// URL, create the socket's directory when missing (one level). */
int ag_ipc_prepare(const char *url, ag_logger *lg);

#endif
