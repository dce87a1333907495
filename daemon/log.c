/*
 * log.c - leveled, rate-limited logging to stderr with journald "<N>"
 * priority prefixes (see log.h). A suppressed burst is summarised by the
 * first line of the same template after its window ends.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"

#include "core/clock.h"

static const char *const level_names[] = {
    [AG_LOG_ERROR] = "error", [AG_LOG_WARNING] = "warning", [AG_LOG_NOTICE] = "notice",
    [AG_LOG_INFO] = "info",   [AG_LOG_DEBUG] = "debug",
};

void ag_logger_init(ag_logger *lg, int level) {
    memset(lg, 0, sizeof *lg);
    pthread_mutex_init(&lg->lock, NULL);
    lg->out = stderr;
    lg->level = level;
}

void ag_logger_destroy(ag_logger *lg) { pthread_mutex_destroy(&lg->lock); }

void ag_logger_set_level(ag_logger *lg, int level) {
    pthread_mutex_lock(&lg->lock);
    lg->level = level;
    pthread_mutex_unlock(&lg->lock);
}

void ag_logger_reopen(ag_logger *lg) {
    pthread_mutex_lock(&lg->lock);
    fflush(lg->out);
    pthread_mutex_unlock(&lg->lock);
}

int ag_log_level_parse(const char *s) {
    for (int l = AG_LOG_ERROR; l <= AG_LOG_DEBUG; l++)
        if (s && strcmp(s, level_names[l]) == 0) return l;
    return -1;
}

const char *ag_log_level_name(int level) {
    return level >= AG_LOG_ERROR && level <= AG_LOG_DEBUG ? level_names[level] : "?";
}

/* The slot of fmt, taking the oldest one when all are in use. Lock held. */
static ag_log_slot *slot_for(ag_logger *lg, const char *fmt) {
    ag_log_slot *oldest = &lg->slots[0];
    for (int i = 0; i < AG_LOG_SLOTS; i++) {
        if (lg->slots[i].fmt == fmt) return &lg->slots[i];
        if (lg->slots[i].window_start_ms < oldest->window_start_ms) oldest = &lg->slots[i];
    }
    memset(oldest, 0, sizeof *oldest);
    oldest->fmt = fmt;
    return oldest;
}

void ag_log(ag_logger *lg, int level, const char *fmt, ...) {
    if (level < AG_LOG_ERROR) level = AG_LOG_ERROR;
    if (level > AG_LOG_DEBUG) level = AG_LOG_DEBUG;
    pthread_mutex_lock(&lg->lock);
    if (level > lg->level) goto out;
    int64_t now = ag_mono_ms();
    ag_log_slot *s = slot_for(lg, fmt);
    if (now - s->window_start_ms >= AG_LOG_WINDOW_MS) {
        if (s->suppressed)
            fprintf(lg->out, "<%d>%u similar messages suppressed\n", level, s->suppressed);
        s->window_start_ms = now;
        s->lines = 0;
        s->suppressed = 0;
    }
    if (s->lines >= AG_LOG_BURST) {
        s->suppressed++;
        goto out;
    }
    s->lines++;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One line per record: journald splits on newlines. */
    for (char *p = line; *p; p++)
        if (*p == '\n') *p = ' ';
    fprintf(lg->out, "<%d>%s\n", level, line);
    fflush(lg->out);
out:
    pthread_mutex_unlock(&lg->lock);
}
