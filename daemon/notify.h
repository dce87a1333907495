/*
 * notify.h - systemd readiness protocol without libsystemd: datagrams to
 * $NOTIFY_SOCKET ("READY=1", "STATUS=...", "STOPPING=1", "RELOADING=1",
 * "WATCHDOG=1"), and the watchdog interval from $WATCHDOG_USEC.
 */
#ifndef AG_DAEMON_NOTIFY_H
#define AG_DAEMON_NOTIFY_H

#include <stdint.h>

/* Send state to $NOTIFY_SOCKET. 0 when sent or when the variable is unset
 * (not under systemd); AG_EIO / AG_EINVAL otherwise. */
int ag_notify(const char *state);
/* Watchdog interval in microseconds when systemd asked for one for this
 * process ($WATCHDOG_USEC, and $WATCHDOG_PID unset or ours), else 0. */
uint64_t ag_notify_watchdog_usec(void);

#endif
