/*
 * test_http_parse.c - the web server's request reader (daemon/http_parse.c)
 * on well-formed and hostile input: incomplete heads, oversized lines and
 * heads, control and NUL bytes, bad percent-encoding, parameter rules.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "daemon/http_parse.h"

static long parse(const char *s, ag_http_request *r) { return ag_http_parse_head(s, strlen(s), r); }

Test(http_parse, complete_get_returns_head_length_and_decoded_path) {
    ag_http_request r;
    const char *s = "GET /api/a%2Fb?run=x%20y HTTP/1.1\r\nHost: h\r\n\r\nBODY";
    cr_assert_eq(parse(s, &r), (long)(strlen(s) - 4));
    cr_assert_eq(r.method, AG_HTTP_GET);
    cr_assert_str_eq(r.path, "/api/a/b");
    cr_assert_str_eq(r.query, "run=x%20y");
    cr_assert_eq(r.minor, 1);
}

Test(http_parse, bare_lf_line_ends_are_accepted) {
    ag_http_request r;
    cr_assert_gt(parse("HEAD / HTTP/1.0\n\n", &r), 0);
    cr_assert_eq(r.method, AG_HTTP_HEAD);
}

Test(http_parse, incomplete_head_asks_for_more) {
    ag_http_request r;
    cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: x\r\n", &r), 0);
    cr_assert_eq(parse("GET / HT", &r), 0);
}

Test(http_parse, other_methods_parse_as_other) {
    ag_http_request r;
    cr_assert_gt(parse("POST / HTTP/1.1\r\n\r\n", &r), 0);
    cr_assert_eq(r.method, AG_HTTP_OTHER);
}

Test(http_parse, malformed_request_lines_are_400) {
    ag_http_request r;
    const char *bad[] = {"GET\r\n\r\n",
                         "GET / \r\n\r\n",
                         "GET  / HTTP/1.1\r\n\r\n",
                         "GET http://x/ HTTP/1.1\r\n\r\n",
                         "GET / HTTP/1.1x\r\n\r\n",
                         "G(T / HTTP/1.1\r\n\r\n",
                         "\x01\x02garbage\r\n\r\n",
                         "GET /%zz HTTP/1.1\r\n\r\n",
                         "GET /%00 HTTP/1.1\r\n\r\n",
                         "GET /a\x7f HTTP/1.1\r\n\r\n",
                         "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                         "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
                         "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(parse(bad[i], &r), -400, "case %zu", i);
}

Test(http_parse, nul_bytes_are_400) {
    ag_http_request r;
    const char s[] = "GET /\0 HTTP/1.1\r\n\r\n";
    cr_assert_eq(ag_http_parse_head(s, sizeof s - 1, &r), -400);
}

Test(http_parse, other_http_versions_are_505) {
    ag_http_request r;
    cr_assert_eq(parse("GET / HTTP/2.0\r\n\r\n", &r), -505);
}

Test(http_parse, oversized_request_line_is_414_and_oversized_head_431) {
    static char buf[AG_HTTP_HEAD_MAX + 64];
    ag_http_request r;
    memset(buf, 'a', sizeof buf);
    memcpy(buf, "GET /", 5);
    cr_assert_eq(ag_http_parse_head(buf, sizeof buf, &r), -414);
    memcpy(buf, "GET / HTTP/1.1\r\nX: ", 19);
    cr_assert_eq(ag_http_parse_head(buf, sizeof buf, &r), -431);
}

Test(http_parse, too_many_headers_are_431) {
    static char buf[AG_HTTP_HEAD_MAX];
    ag_http_request r;
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= AG_HTTP_HEADERS_MAX; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "A: b\r\n");
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    cr_assert_eq(ag_http_parse_head(buf, n, &r), -431);
}

Test(http_parse, percent_decoding_is_strict) {
    char out[8];
    cr_assert_eq(ag_http_percent_decode("a%41+", 5, 1, out, sizeof out), AG_OK);
    cr_assert_str_eq(out, "aA ");
    cr_assert_eq(ag_http_percent_decode("%4", 2, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%", 1, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%g0", 3, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("%00", 3, 0, out, sizeof out), AG_EINVAL);
    cr_assert_eq(ag_http_percent_decode("12345678", 8, 0, out, sizeof out), AG_ETOOBIG);
}

Test(http_parse, parameters_follow_the_cli_rules) {
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
