/*
 * http_parse.h - the HTTP/1.1 request reader of altgradd's web server, kept
 * apart from the sockets so every hostile input can be unit-tested: a
 * bounded request head, strict request line and header syntax, validated
 * percent-decoding, and query parameters checked like the CLI's arguments.
 */
#ifndef AG_DAEMON_HTTP_PARSE_H
#define AG_DAEMON_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"

#define AG_HTTP_HEAD_MAX 8192  /* request line + headers, bytes */
#define AG_HTTP_HEADERS_MAX 64 /* header lines */
#define AG_HTTP_PATH_MAX 256   /* decoded path, bytes */
#define AG_HTTP_PARAMS_MAX 8   /* query parameters */
#define AG_HTTP_PARAM_NAME_MAX 16

typedef enum ag_http_method {
    AG_HTTP_GET = 0,
    AG_HTTP_HEAD = 1,
    AG_HTTP_OTHER = 2 /* a valid token we do not serve: 405 */
} ag_http_method;

typedef struct ag_http_request {
    int method;                      /* ag_http_method */
    int minor;                       /* HTTP/1.minor */
    char path[AG_HTTP_PATH_MAX + 1]; /* percent-decoded, starts with '/' */
    char query[AG_HTTP_HEAD_MAX];    /* raw text after '?', "" if none */
} ag_http_request;

/*
 * Read the request head at buf[0..len). Returns 0 while the head is not
 * complete (read more), the head's length in bytes when it is (req filled),
 * or minus an HTTP status when the request must be refused: 400 (syntax, NUL
 * or control bytes, bad percent-encoding, not origin-form), 414 (request
 * line over AG_HTTP_HEAD_MAX), 431 (head over AG_HTTP_HEAD_MAX or too many
 * headers), 505 (not HTTP/1.x). Lines end in CRLF or a bare LF.
 */
long ag_http_parse_head(const char *buf, size_t len, ag_http_request *req);

/* Percent-decode src[0..len) into out (cap bytes, NUL-terminated). plus_space
 * turns '+' into ' ' (query strings). AG_EINVAL for a bad %XX or a decoded
 * NUL, AG_ETOOBIG when it does not fit. */
int ag_http_percent_decode(const char *src, size_t len, int plus_space, char *out, size_t cap);

typedef struct ag_http_param {
    char name[AG_HTTP_PARAM_NAME_MAX + 1];
    char value[AG_NAME_MAX + 1];
} ag_http_param;

typedef struct ag_http_params {
    size_t n;
    ag_http_param items[AG_HTTP_PARAMS_MAX];
} ag_http_params;

/*
 * Split a query string into decoded name=value pairs. Refuses (AG_EINVAL,
 * one line in err) a name not in allowed (NULL-terminated), a name given
 * twice, a bad encoding, an empty name, a value over AG_NAME_MAX bytes, more
 * than AG_HTTP_PARAMS_MAX pairs.
 */
int ag_http_parse_params(const char *query, const char *const *allowed, ag_http_params *out,
                         char *err, size_t errlen);
/* The value of name, or NULL when absent. */
const char *ag_http_param_get(const ag_http_params *p, const char *name);

/* The CLI's rules: a plain non-negative decimal (no sign, no suffix, no
 * overflow); a format name of 1..AG_FORMAT_NAME_MAX of [A-Za-z0-9_-]; a run
 * or tensor name of 1..AG_NAME_MAX bytes. */
int ag_http_parse_u64(const char *s, uint64_t *out);
int ag_http_valid_format(const char *s);
int ag_http_valid_name(const char *s);

#endif
