/*
 * http_query.c - the request target, percent-decoding and query parameters
 * of the daemon's web server (http_query.h). Everything here reads bytes from
 * the network (nng hands over the request line's target as sent): lengths are
 * checked before every copy.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http_query.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int ag_http_percent_decode(const char *src, size_t len, int plus_space, char *out, size_t cap) {
    size_t o = 0;
    if (cap == 0) return AG_ETOOBIG;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len) return AG_EINVAL;
            hi = hexval((unsigned char)src[i + 1]);
            lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0) return AG_EINVAL;
            c = (unsigned char)(hi * 16 + lo);
            if (c == 0) return AG_EINVAL;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        } else if (c == 0) {
            return AG_EINVAL;
        }
        if (o + 1 >= cap) return AG_ETOOBIG;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return AG_OK;
}

int ag_http_method_of(const char *method) {
    if (method && strcmp(method, "GET") == 0) return AG_HTTP_GET;
    if (method && strcmp(method, "HEAD") == 0) return AG_HTTP_HEAD;
    return AG_HTTP_OTHER;
}

int ag_http_parse_target(const char *target, ag_http_request *req) {
    size_t len = strnlen(target, AG_HTTP_TARGET_MAX);
    if (len == AG_HTTP_TARGET_MAX) return -414;
    if (len == 0 || target[0] != '/') return -400; /* origin-form only */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c <= 0x20 || c >= 0x7F) return -400; /* visible ASCII only */
    }
    const char *q = memchr(target, '?', len);
    size_t plen = q ? (size_t)(q - target) : len;
    int rc = ag_http_percent_decode(target, plen, 0, req->path, sizeof req->path);
    if (rc == AG_ETOOBIG) return -414;
    if (rc) return -400;
    size_t qlen = q ? len - plen - 1 : 0;
    memcpy(req->query, q ? q + 1 : "", qlen);
    req->query[qlen] = '\0';
    return 0;
}

/* ------------------------------------------------------------ parameters */

int ag_http_parse_params(const char *query, const char *const *allowed, ag_http_params *out,
                         char *err, size_t errlen) {
    const char *p = query;
    out->n = 0;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t nlen = eq ? (size_t)(eq - p) : plen;
        if (plen == 0) { /* "a=1&&b=2" or a trailing '&': tolerated */
            p += amp ? 1 : 0;
            if (!amp) break;
            continue;
        }
        if (out->n == AG_HTTP_PARAMS_MAX) {
            snprintf(err, errlen, "too many query parameters (at most %d)", AG_HTTP_PARAMS_MAX);
            return AG_EINVAL;
        }
        ag_http_param *it = &out->items[out->n];
        int rc = ag_http_percent_decode(p, nlen, 1, it->name, sizeof it->name);
        if (rc || it->name[0] == '\0') {
            snprintf(err, errlen, "bad query parameter name");
            return AG_EINVAL;
        }
        int known = 0;
        for (size_t i = 0; allowed && allowed[i]; i++)
            if (strcmp(allowed[i], it->name) == 0) known = 1;
        if (!known) {
            snprintf(err, errlen, "unknown query parameter '%s'", it->name);
            return AG_EINVAL;
        }
        if (ag_http_param_get(out, it->name)) {
            snprintf(err, errlen, "query parameter '%s' given twice", it->name);
            return AG_EINVAL;
        }
        rc = eq ? ag_http_percent_decode(eq + 1, plen - nlen - 1, 1, it->value, sizeof it->value)
                : (it->value[0] = '\0', AG_OK);
        if (rc == AG_ETOOBIG) {
            snprintf(err, errlen, "query parameter '%s' longer than %d bytes", it->name,
                     AG_NAME_MAX);
            return AG_EINVAL;
        }
        if (rc) {
            snprintf(err, errlen, "bad percent-encoding in query parameter '%s'", it->name);
            return AG_EINVAL;
        }
        out->n++;
        if (!amp) break;
        p = amp + 1;
    }
    return AG_OK;
}

const char *ag_http_param_get(const ag_http_params *p, const char *name) {
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->items[i].name, name) == 0) return p->items[i].value;
    return NULL;
}

int ag_http_parse_u64(const char *s, uint64_t *out) {
    char *end;
    if (s == NULL || *s < '0' || *s > '9') return AG_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') return AG_EINVAL;
    *out = (uint64_t)v;
    return AG_OK;
}

int ag_http_valid_format(const char *s) {
    size_t len = 0;
    if (s == NULL || *s == '\0') return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
        if (++len > AG_FORMAT_NAME_MAX) return 0;
    }
    return 1;
}

int ag_http_valid_name(const char *s) {
    return s != NULL && *s != '\0' && strlen(s) <= AG_NAME_MAX;
}
