/*
 * http_parse.c - request head, percent-decoding and query parameters of the
 * daemon's web server (http_parse.h). Everything here reads bytes from the
 * network: lengths are checked before every copy and nothing is trusted to
 * be NUL-terminated.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http_parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RFC 9110 tchar. */
static int is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* The index of the first '\n' in buf[start..len), or -1. */
static long line_end(const char *buf, size_t start, size_t len) {
    const char *nl = memchr(buf + start, '\n', len - start);
    return nl ? (long)(nl - buf) : -1;
}

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

/* The request line buf[0..end) (end excludes CR LF). */
static long parse_request_line(const char *buf, size_t end, ag_http_request *req) {
    size_t i = 0, m0, t0, t1;
    while (i < end && is_tchar((unsigned char)buf[i])) i++;
    if (i == 0 || i >= end || buf[i] != ' ') return -400;
    m0 = i;
    if (m0 == 3 && memcmp(buf, "GET", 3) == 0)
        req->method = AG_HTTP_GET;
    else if (m0 == 4 && memcmp(buf, "HEAD", 4) == 0)
        req->method = AG_HTTP_HEAD;
    else
        req->method = AG_HTTP_OTHER;
    t0 = ++i;
    while (i < end && buf[i] != ' ') {
        unsigned char c = (unsigned char)buf[i];
        if (c <= 0x20 || c >= 0x7F) return -400; /* visible ASCII only */
        i++;
    }
    t1 = i;
    if (t1 == t0 || i >= end) return -400;
    if (buf[t0] != '/') return -400; /* origin-form only */
    i++;
    if (end - i != 8 || memcmp(buf + i, "HTTP/", 5) != 0) return -400;
    if (buf[i + 5] < '0' || buf[i + 5] > '9' || buf[i + 6] != '.' || buf[i + 7] < '0' ||
        buf[i + 7] > '9')
        return -400;
    if (buf[i + 5] != '1') return -505;
    req->minor = buf[i + 7] - '0';

    const char *q = memchr(buf + t0, '?', t1 - t0);
    size_t plen = q ? (size_t)(q - (buf + t0)) : t1 - t0;
    int rc = ag_http_percent_decode(buf + t0, plen, 0, req->path, sizeof req->path);
    if (rc == AG_ETOOBIG) return -414;
    if (rc) return -400;
    if (q) {
        size_t qlen = (size_t)(buf + t1 - (q + 1));
        if (qlen >= sizeof req->query) return -414;
        memcpy(req->query, q + 1, qlen);
        req->query[qlen] = '\0';
    } else {
        req->query[0] = '\0';
    }
    return 0;
}

/* One header line buf[s..e) (CR removed): name ":" OWS value OWS. */
static int valid_header(const char *buf, size_t s, size_t e) {
    size_t i = s;
    if (s < e && (buf[s] == ' ' || buf[s] == '\t')) return 0; /* obs-fold */
    while (i < e && is_tchar((unsigned char)buf[i])) i++;
    if (i == s || i >= e || buf[i] != ':') return 0;
    for (i++; i < e; i++) {
        unsigned char c = (unsigned char)buf[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F) return 0;
    }
    return 1;
}

long ag_http_parse_head(const char *buf, size_t len, ag_http_request *req) {
    size_t scan = len < AG_HTTP_HEAD_MAX ? len : AG_HTTP_HEAD_MAX;
    memset(req, 0, sizeof *req);
    if (memchr(buf, '\0', scan) != NULL) return -400;
    long nl = line_end(buf, 0, scan);
    if (nl < 0) return len >= AG_HTTP_HEAD_MAX ? -414 : 0;
    size_t end = (size_t)nl;
    if (end > 0 && buf[end - 1] == '\r') end--;
    for (size_t i = 0; i < end; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7F) return -400;
    long rc = parse_request_line(buf, end, req);
    if (rc) return rc;

    size_t pos = (size_t)nl + 1;
    int headers = 0;
    for (;;) {
        long e = line_end(buf, pos, scan);
        if (e < 0) return len >= AG_HTTP_HEAD_MAX ? -431 : 0;
        size_t le = (size_t)e;
        if (le > pos && buf[le - 1] == '\r') le--;
        if (le == pos) return e + 1; /* blank line: the head is complete */
        if (++headers > AG_HTTP_HEADERS_MAX) return -431;
        if (!valid_header(buf, pos, le)) return -400;
        pos = (size_t)e + 1;
    }
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
