/*
 * http_query.h - what of an HTTP request altgradd reads itself, after nng's
 * server has read the request head: the method, the request target split into
 * a validated percent-decoded path and its query string, and the query's
 * parameters checked like the CLI's arguments. Kept apart from the sockets
 * so every hostile input can be unit-tested and fuzzed (fuzz/fuzz_http_query.c).
 */
#ifndef AG_DAEMON_HTTP_QUERY_H
#define AG_DAEMON_HTTP_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"

#define AG_HTTP_TARGET_MAX 8192 /* request target as sent, bytes (nng's head is 8 KiB) */
#define AG_HTTP_PATH_MAX 256    /* decoded path, bytes */
#define AG_HTTP_PARAMS_MAX 8    /* query parameters */
#define AG_HTTP_PARAM_NAME_MAX 16

typedef enum ag_http_method {
    AG_HTTP_GET = 0,
    AG_HTTP_HEAD = 1,
    AG_HTTP_OTHER = 2 /* a method we do not serve: 405 */
} ag_http_method;

typedef struct ag_http_request {
    int method;                      /* ag_http_method */
    char path[AG_HTTP_PATH_MAX + 1]; /* percent-decoded, starts with '/' */
    char query[AG_HTTP_TARGET_MAX];  /* raw text after '?', "" if none */
} ag_http_request;

/* GET, HEAD, or AG_HTTP_OTHER for any other method (NULL included). */
int ag_http_method_of(const char *method);

/*
 * Split a request target as sent (origin-form: "/path?query") into req->path,
 * percent-decoded, and req->query, raw. 0, or minus an HTTP status: 400 (not
 * origin-form, a byte outside visible ASCII, bad percent-encoding, a decoded
 * NUL), 414 (a path over AG_HTTP_PATH_MAX bytes decoded, a target over
 * AG_HTTP_TARGET_MAX - 1 bytes). req->method is left alone.
 */
int ag_http_parse_target(const char *target, ag_http_request *req);

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
