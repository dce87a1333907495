/*
 * error.c - error names, the library version, role names, and the error
 * context (errctx.h) that carries a failure's detail text in every layer.
 * Small lookup tables shared by every layer of libaltgrad.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "errctx.h"

AG_EXTERN const char *ag_strerror(int err) {
    switch (err) {
#define AG_ERR_TEXT_(name, value, text)                                                            \
    case value: return text;
        AG_ERRNO_MAP(AG_ERR_TEXT_)
#undef AG_ERR_TEXT_
    default: return "unknown error";
    }
}

AG_EXTERN const char *ag_err_name(int err) {
    switch (err) {
#define AG_ERR_NAME_(name, value, text)                                                            \
    case value: return #name;
        AG_ERRNO_MAP(AG_ERR_NAME_)
#undef AG_ERR_NAME_
    default: return NULL;
    }
}

AG_EXTERN const char *ag_version(void) { return AG_VERSION_STRING; }

static const char *const role_names[] = {"weight", "gradient", "activation", "update"};

AG_EXTERN const char *ag_role_name(int role) {
    if (role < 0 || role >= (int)(sizeof role_names / sizeof role_names[0])) return NULL;
    return role_names[role];
}

AG_EXTERN int ag_role_parse(const char *s) {
    if (s == NULL) return -1;
    for (int i = 0; i < (int)(sizeof role_names / sizeof role_names[0]); i++)
        if (strcmp(s, role_names[i]) == 0) return i;
    return -1;
}

int ag_errctx_set(ag_errctx *e, int code, const char *fmt, ...) {
    if (!e) return code;
    e->code = code;
    e->text[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->text, sizeof e->text, fmt, ap);
        va_end(ap);
    }
    return code;
}

int ag_errbuf_set(char *buf, size_t len, int code, const char *fmt, ...) {
    if (buf && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *ag_errctx_text(const ag_errctx *e) { return e ? e->text : ""; }

void ag_errctx_clear(ag_errctx *e) {
    if (!e) return;
    e->code = AG_OK;
    e->text[0] = '\0';
}
