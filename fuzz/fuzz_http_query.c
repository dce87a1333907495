/*
 * fuzz_http_query.c - libFuzzer target for what the daemon's web server
 * parses itself after nng has read the request head (daemon/http_query.c):
 * the request target, percent-decoding, query parameters, and the routing
 * and parameter tables of daemon/http_api.c that fill a query's request
 * struct from them. The input is a request target as sent. Anything must be
 * refused cleanly or come out within bounds; no store is opened (answers
 * that would read one are 500 here). Seeds: fuzz/corpus/fuzz_http_query/.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http_api.h"
#include "daemon/http_query.h"

/* The page is embedded by the daemon's build; a stand-in does here. */
const char ag_http_page[] = "<!DOCTYPE html><html></html>\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_params(const char *query) {
    static const char *const allowed[] = {"run",   "tensor", "format", "from",    "to",
                                          "every", "window", "limit",  "buckets", NULL};
    ag_http_params p;
    char err[160];
    if (ag_http_parse_params(query, allowed, &p, err, sizeof err) != AG_OK) {
        if (strnlen(err, sizeof err) == sizeof err || err[0] == '\0') abort();
        return;
    }
    if (p.n > AG_HTTP_PARAMS_MAX) abort();
    for (size_t i = 0; i < p.n; i++) {
        int known = 0;
        for (size_t k = 0; allowed[k]; k++) known |= strcmp(allowed[k], p.items[i].name) == 0;
        if (!known || strlen(p.items[i].value) > AG_NAME_MAX) abort();
        if (ag_http_param_get(&p, p.items[i].name) == NULL) abort();
        uint64_t v;
        (void)ag_http_parse_u64(p.items[i].value, &v);
        (void)ag_http_valid_format(p.items[i].value);
        (void)ag_http_valid_name(p.items[i].value);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char target[AG_HTTP_TARGET_MAX + 64];
    static ag_http_request req;
    if (size >= sizeof target) return 0;
    memcpy(target, data, size);
    target[size] = '\0'; /* nng hands over a C string: a NUL ends it */

    char out[64];
    (void)ag_http_percent_decode(target, strlen(target), size & 1, out, sizeof out);

    int rc = ag_http_parse_target(target, &req);
    if (rc != 0) {
        if (rc != -400 && rc != -414) abort();
        return 0;
    }
    size_t plen = strnlen(req.path, sizeof req.path);
    if (plen == sizeof req.path || req.path[0] != '/') abort();
    if (strnlen(req.query, sizeof req.query) == sizeof req.query) abort();
    check_params(req.query);

    /* Routing and each endpoint's parameter table, as the daemon runs them
     * (for every method), with no store: a 2xx, 4xx or 500, always a body. */
    static const ag_http_env env = {0};
    for (int m = AG_HTTP_GET; m <= AG_HTTP_OTHER; m++) {
        ag_http_response res;
        req.method = m;
        (void)ag_http_needs_store(&req);
        ag_http_answer(&env, NULL, &req, &res);
        if (res.status < 200 || res.status > 599 || !res.body || res.len == 0) abort();
        if (m == AG_HTTP_OTHER && res.status != 405) abort();
        ag_http_response_clear(&res);
    }
    return 0;
}
