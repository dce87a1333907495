/*
 * clock.h - internal: the library's clocks, in milliseconds. One place for
 * what every layer needs: a monotonic clock for intervals and deadlines, and
 * the wall clock for timestamps that are stored or sent.
 */
#ifndef AG_CORE_CLOCK_H
#define AG_CORE_CLOCK_H

#include <stdint.h>

/* Milliseconds of CLOCK_MONOTONIC: for intervals, timeouts, rate limits. */
int64_t ag_mono_ms(void);
/* Unix time in milliseconds (CLOCK_REALTIME): for timestamps. */
int64_t ag_wall_ms(void);

struct timespec;
/* *ts = CLOCK_MONOTONIC now + ms: an absolute deadline for condition
 * variables created with pthread_condattr_setclock(CLOCK_MONOTONIC). */
void ag_deadline_after_ms(struct timespec *ts, int ms);

#endif
