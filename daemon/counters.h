/*
 * counters.h - the daemon-wide counters behind the status query: written by
 * the loop, read by query threads, so atomics. Seeded from the database at
 * start so status keeps counting across restarts. Also the shared-memory
 * numbers that only /metrics shows.
 */
#ifndef AG_DAEMON_COUNTERS_H
#define AG_DAEMON_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct ag_counters {
    _Atomic uint64_t messages; /* stream messages accepted */
    _Atomic uint64_t bytes;    /* stream bytes received */
    _Atomic uint64_t rejected; /* malformed / oversized / bad version / out of order */
    _Atomic uint64_t dropped;  /* sequence gaps and client-reported drops */
    _Atomic uint64_t runs;
    _Atomic uint64_t tensors;
} ag_counters;

/* The numbers of the shared-memory segments' table (daemon/shm.c,
 * ag_shm_get_stats) that /metrics shows (docs/daemon.md, Metrics). Not in
 * ag_status, which is public and travels over the query socket; here so
 * that the web server's code needs neither shm.h nor nng. The two counts
 * start at 0 with each daemon. */
typedef struct ag_shm_stats {
    uint64_t segments;  /* mapped now */
    uint64_t passed;    /* of those, passed over the descriptor socket */
    uint64_t snapshots; /* snapshots whose arrays were read from a segment */
    uint64_t refused;   /* segments refused, opened through /proc or passed, logged or not */
} ag_shm_stats;
/* Fills them (for the web server, which calls it on its worker threads). */
typedef void (*ag_shm_stats_fn)(void *ctx, ag_shm_stats *out);

/* The snapshot pool, the engine's memory and the writer's commits, as
 * /metrics shows them (docs/daemon.md, Metrics): what an operator reads to
 * tell whether the daemon keeps up and where its memory goes. Counts start
 * at 0 with each daemon; the loop publishes the gauges as they change. */
typedef struct ag_pool_stats {
    uint64_t threads;        /* snapshot pool threads */
    uint64_t in_flight;      /* snapshots being evaluated now */
    uint64_t evaluated;      /* snapshots whose evaluation ended, since the start */
    uint64_t pipelined;      /* of those, kernels run behind the one before of the tensor */
    uint64_t waits;          /* messages held back until snapshots in flight ended */
    uint64_t state_bytes;    /* the engine's state at rest */
    uint64_t inflight_bytes; /* reserved by the snapshots in flight */
    uint64_t spare_bytes;    /* buffers kept for the next snapshots */
    uint64_t budget_bytes;   /* the most those three may hold together */
    uint64_t commits;        /* the writer's committed batches */
    uint64_t hurried;        /* of those, committed early for a client's flush */
} ag_pool_stats;
typedef void (*ag_pool_stats_fn)(void *ctx, ag_pool_stats *out);

#endif
