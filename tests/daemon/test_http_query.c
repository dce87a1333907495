/*
 * test_http_query.c - what the web server reads of a request itself
 * (daemon/http_query.c), after nng's server has read the head: the method,
 * the request target (origin-form, visible ASCII, strict percent-decoding,
 * bounded), and query parameters by the CLI's rules.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "daemon/http_query.h"

Test(http_query, a_target_splits_into_the_decoded_path_and_the_raw_query) {
    ag_http_request r;
    cr_assert_eq(ag_http_parse_target("/api/a%2Fb?run=x%20y", &r), 0);
    cr_assert_str_eq(r.path, "/api/a/b");
    cr_assert_str_eq(r.query, "run=x%20y");
    cr_assert_eq(ag_http_parse_target("/", &r), 0);
    cr_assert_str_eq(r.path, "/");
    cr_assert_str_eq(r.query, "");
    cr_assert_eq(ag_http_parse_target("/metrics?", &r), 0);
    cr_assert_str_eq(r.path, "/metrics");
    cr_assert_str_eq(r.query, "");
}

Test(http_query, methods_other_than_get_and_head_are_other) {
    cr_assert_eq(ag_http_method_of("GET"), AG_HTTP_GET);
    cr_assert_eq(ag_http_method_of("HEAD"), AG_HTTP_HEAD);
    cr_assert_eq(ag_http_method_of("get"), AG_HTTP_OTHER);
    cr_assert_eq(ag_http_method_of("POST"), AG_HTTP_OTHER);
    cr_assert_eq(ag_http_method_of(""), AG_HTTP_OTHER);
    cr_assert_eq(ag_http_method_of(NULL), AG_HTTP_OTHER);
}

Test(http_query, targets_that_are_not_origin_form_or_not_clean_are_400) {
    ag_http_request r;
    const char *bad[] = {"",          "*",           "http://x/",  "api/runs", "/%zz",
                         "/%00",      "/%4",         "/a\x7f",     "/a b",     "/\x01",
                         "/\xc3\xa9", "/a?run=\x80", "/a?run=x\ty"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(ag_http_parse_target(bad[i], &r), -400, "case %zu", i);
}

Test(http_query, an_oversized_path_or_target_is_414) {
    static char buf[AG_HTTP_TARGET_MAX + 64];
    ag_http_request r;
    memset(buf, 'a', sizeof buf - 1);
    buf[0] = '/';
    buf[AG_HTTP_PATH_MAX + 1] = '\0'; /* a path one byte too long */
    cr_assert_eq(ag_http_parse_target(buf, &r), -414);
    buf[AG_HTTP_PATH_MAX] = '\0'; /* just fits */
    cr_assert_eq(ag_http_parse_target(buf, &r), 0);
    memset(buf, 'a', sizeof buf - 1);
    memcpy(buf, "/?", 2);
    buf[AG_HTTP_TARGET_MAX - 1] = '\0'; /* the longest query */
    cr_assert_eq(ag_http_parse_target(buf, &r), 0);
    cr_assert_eq(strlen(r.query), AG_HTTP_TARGET_MAX - 3);
    buf[AG_HTTP_TARGET_MAX - 1] = 'a';
    buf[AG_HTTP_TARGET_MAX] = '\0';
    cr_assert_eq(ag_http_parse_target(buf, &r), -414);
}

Test(http_query, percent_decoding_is_strict) {
    char out[8];
    cr_assert_eq(ag_http_percent_decode("a%41+", 5, 1, out, sizeof out), AG_OK);
    cr_assert_str_eq(out, "aA ");
    cr_assert_eq(ag_http_percent_decode("%4", 2, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%", 1, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%g0", 3, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%00", 3, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("12345678", 8, 0, out, sizeof out), AG_ETOOBIG);
}

Test(http_query, parameters_follow_the_cli_rules) {
    static const char *const allowed[] = {"run", "from", NULL};
    ag_http_params p;
    char err[128];
    cr_assert_eq(ag_http_parse_params("run=a+b%2Cc&from=3&", allowed, &p, err, sizeof err), AG_OK);
    cr_assert_str_eq(ag_http_param_get(&p, "run"), "a b,c");
    cr_assert_str_eq(ag_http_param_get(&p, "from"), "3");
    cr_assert_null(ag_http_param_get(&p, "to"));
    cr_assert_eq(ag_http_parse_params("to=1", allowed, &p, err, sizeof err), AG_EINVAL);
    cr_assert(strstr(err, "unknown query parameter 'to'"));
    cr_assert_eq(ag_http_parse_params("run=a&run=b", allowed, &p, err, sizeof err), AG_EINVAL);
    cr_assert_eq(ag_http_parse_params("run=%zz", allowed, &p, err, sizeof err), AG_EINVAL);
    char long_value[600] = "run=";
    memset(long_value + 4, 'x', 256);
    cr_assert_eq(ag_http_parse_params(long_value, allowed, &p, err, sizeof err), AG_EINVAL);
    uint64_t v;
    cr_assert_eq(ag_http_parse_u64("18446744073709551615", &v), AG_OK);
    cr_assert_eq(ag_http_parse_u64("18446744073709551616", &v), AG_EINVAL);
    cr_assert_eq(ag_http_parse_u64("-1", &v), AG_EINVAL);
    cr_assert_eq(ag_http_parse_u64("+1", &v), AG_EINVAL);
    cr_assert_eq(ag_http_parse_u64("1k", &v), AG_EINVAL);
    cr_assert_eq(ag_http_parse_u64("", &v), AG_EINVAL);
    cr_assert(ag_http_valid_format("E5M2"));
    cr_assert(!ag_http_valid_format("E5 M2"));
    cr_assert(!ag_http_valid_format("ABCDEFGHIJKLMNOP"));
    cr_assert(!ag_http_valid_name(""));
}
