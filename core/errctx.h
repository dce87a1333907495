/*
 * errctx.h - internal: the one channel for an error's detail text, the way
 * sqlite3_errmsg works. An object whose calls can fail embeds an ag_errctx
 * (a decoded message, a store connection, the engine; the client keeps one
 * per thread); the call that fails records its ag_err code and one line of
 * text with ag_errctx_set, and the caller reads the line with
 * ag_errctx_text (the public and layer getters, ag_client_last_error,
 * ag_store_errmsg, ag_engine_why, are this). docs/design.md, "Errors".
 */
#ifndef AG_CORE_ERRCTX_H
#define AG_CORE_ERRCTX_H

#include <stddef.h>

#define AG_ERRCTX_TEXT_MAX 1024 /* bytes of text kept (an r_error's text fits) */

typedef struct ag_errctx {
    int code;                          /* the ag_err recorded last; AG_OK: none */
    char text[AG_ERRCTX_TEXT_MAX + 1]; /* what went wrong, "" when nothing was said */
} ag_errctx;

/* Records a failure in e: code and printf-style text (truncated to
 * AG_ERRCTX_TEXT_MAX bytes; fmt NULL: no text). Returns code, so a failing
 * path can `return ag_errctx_set(...)`. e NULL records nothing. */
__attribute__((format(printf, 3, 4))) int ag_errctx_set(ag_errctx *e, int code, const char *fmt,
                                                        ...);
/* The text recorded last, "" when none (or e is NULL); never NULL. Valid
 * until the next ag_errctx_set or ag_errctx_clear on e. */
const char *ag_errctx_text(const ag_errctx *e);
/* The same for a caller's buffer: printf-style text into buf (len bytes,
 * truncated), returns code. For code that reports errors as text beside a
 * code (configuration, TLS files). */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
int ag_errbuf_set(char *buf, size_t len, int code, const char *fmt, ...);
/* Forgets what was recorded. */
void ag_errctx_clear(ag_errctx *e);

#endif
