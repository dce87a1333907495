/*
 * shm.c - the wake-up of proto/shm.h: a futex on the segment's header,
 * which both processes map (a shared futex, keyed by the page, not by the
 * process).
 */
#define _GNU_SOURCE

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proto/shm.h"

void ag_shm_wake(ag_shm_header *h) {
    /* the store of ack or released before, the load of waiting after: a
     * client that set waiting before reading them is seen here */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&h->waiting, __ATOMIC_SEQ_CST)) return;
    __atomic_fetch_add(&h->wake, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &h->wake, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void ag_shm_wait(ag_shm_header *h, uint32_t seen, int timeout_ms) {
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    syscall(SYS_futex, &h->wake, FUTEX_WAIT, seen, &ts, NULL, 0);
}
