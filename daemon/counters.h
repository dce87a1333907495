/*
 * counters.h - the daemon-wide counters behind the status query: written by
 * the loop, read by query threads, so atomics. Seeded from the database at
 * start so status keeps counting across restarts.
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

#endif
