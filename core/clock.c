/*
 * clock.c - see clock.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "clock.h"

#include <time.h>

static int64_t clock_ms(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ag_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
int64_t ag_wall_ms(void) { return clock_ms(CLOCK_REALTIME); }

void ag_deadline_after_ms(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
