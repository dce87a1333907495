/*
 * log.h - the daemon's one logging function: levels with syslog numbers,
 * written to stderr as "<N>text" lines that journald reads as priorities,
 * and rate-limited per message template so a flood of bad messages cannot
 * flood the journal. Thread-safe (the loop, the writer and query threads).
 */
#ifndef AG_DAEMON_LOG_H
#define AG_DAEMON_LOG_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

typedef enum ag_log_level {
    AG_LOG_ERROR = 3,
    AG_LOG_WARNING = 4,
    AG_LOG_NOTICE = 5,
    AG_LOG_INFO = 6,
    AG_LOG_DEBUG = 7
} ag_log_level;

#define AG_LOG_SLOTS 32       /* templates tracked for rate limiting */
#define AG_LOG_BURST 10       /* lines per template per window */
#define AG_LOG_WINDOW_MS 5000 /* the rate-limit window */

typedef struct ag_log_slot {
    const char *fmt; /* the template (its address is the key) */
    int64_t window_start_ms;
    unsigned lines;
    unsigned suppressed;
} ag_log_slot;

typedef struct ag_logger {
    pthread_mutex_t lock;
    FILE *out; /* stderr */
    int level; /* lines above this level are skipped */
    ag_log_slot slots[AG_LOG_SLOTS];
} ag_logger;

void ag_logger_init(ag_logger *lg, int level);
void ag_logger_destroy(ag_logger *lg);
void ag_logger_set_level(ag_logger *lg, int level);
/* SIGHUP: flush; stderr belongs to whoever started us, so nothing to reopen. */
void ag_logger_reopen(ag_logger *lg);

/* Log one line at level. Repeats of one fmt beyond AG_LOG_BURST within
 * AG_LOG_WINDOW_MS are counted and reported once the window closes. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void ag_log(ag_logger *lg, int level, const char *fmt, ...);

/* "error", "warning", "notice", "info", "debug" -> level, or -1. */
int ag_log_level_parse(const char *s);
const char *ag_log_level_name(int level);

#endif
