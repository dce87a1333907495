/*
 * test_output.c - client/cli/output.c: JSON escaping and validity, CSV
 * quoting, table alignment, number formatting of the CLI's documents.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli/output.h"
#include "json_mini.h"

/* Captures what fn writes into a FILE as a malloc'd string. */
typedef struct capture {
    char *text;
    size_t len;
    FILE *f;
} capture;

static void cap_open(capture *c) {
    c->text = NULL;
    c->len = 0;
    c->f = open_memstream(&c->text, &c->len);
    cr_assert_not_null(c->f);
}

static char *cap_close(capture *c) {
    fclose(c->f);
    return c->text;
}

static char *json_of(const char *s) {
    capture c;
    cap_open(&c);
    ag_cli_json_string(c.f, s);
    return cap_close(&c);
}

static char *csv_of(const char *s) {
    capture c;
    cap_open(&c);
    ag_cli_csv_field(c.f, s);
    return cap_close(&c);
}

static char *render(const ag_cli_doc *d, ag_cli_mode mode) {
    capture c;
    cap_open(&c);
    cr_assert_eq(ag_cli_render(c.f, d, mode), 0);
    return cap_close(&c);
}

Test(output, json_string_escapes_quotes_backslashes_and_controls) {
    char *s = json_of("a\"b\\c\nd\te\r\x01\x1f\x7f");
    cr_assert_str_eq(s, "\"a\\\"b\\\\c\\nd\\te\\r\\u0001\\u001f\\u007f\"");
    free(s);
}

Test(output, json_string_keeps_valid_utf8_and_replaces_invalid_bytes) {
    char *s = json_of("\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80");
    cr_assert_str_eq(s, "\"\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80\"");
    free(s);
    s = json_of("x\xff"
                "y\xc3"
                "z\xed\xa0\x80"); /* stray byte, cut sequence, surrogate */
    cr_assert_str_eq(s, "\"x\\ufffdy\\ufffdz\\ufffd\\ufffd\\ufffd\"");
    free(s);
}

Test(output, json_string_of_null_is_the_empty_string) {
    char *s = json_of(NULL);
    cr_assert_str_eq(s, "\"\"");
    free(s);
}

Test(output, json_string_round_trips_through_a_strict_parser) {
    const char *raw = "tab\there \"quoted\" back\\slash \x02 caf\xc3\xa9";
    char *s = json_of(raw);
    jm_value *v = jm_parse(s);
    cr_assert_not_null(v, "not valid JSON: %s", s);
    cr_assert_eq(v->type, JM_STRING);
    cr_assert_str_eq(v->string, raw);
    jm_free(v);
    free(s);
}

Test(output, csv_field_is_bare_when_nothing_needs_quoting) {
    char *s = csv_of("fc1.weight");
    cr_assert_str_eq(s, "fc1.weight");
    free(s);
}

Test(output, csv_field_quotes_commas_quotes_and_line_breaks_doubling_quotes) {
    char *s = csv_of("a,b");
    cr_assert_str_eq(s, "\"a,b\"");
    free(s);
    s = csv_of("say \"hi\"");
    cr_assert_str_eq(s, "\"say \"\"hi\"\"\"");
    free(s);
    s = csv_of("two\nlines");
    cr_assert_str_eq(s, "\"two\nlines\"");
    free(s);
    s = csv_of("cr\r");
    cr_assert_str_eq(s, "\"cr\r\"");
    free(s);
    s = csv_of(" padded ");
    cr_assert_str_eq(s, "\" padded \"");
    free(s);
}

Test(output, format_double_is_shortest_round_trip) {
    char buf[64];
    ag_cli_format_double(buf, sizeof buf, 0.1);
    cr_assert_str_eq(buf, "0.1");
    ag_cli_format_double(buf, sizeof buf, 1.0 / 3.0);
    cr_assert_eq(strtod(buf, NULL), 1.0 / 3.0);
    ag_cli_format_double(buf, sizeof buf, 57344.0);
    cr_assert_str_eq(buf, "57344");
    ag_cli_format_double(buf, sizeof buf, 1e-10);
    cr_assert_str_eq(buf, "1e-10");
}

Test(output, display_width_counts_code_points_not_bytes) {
    cr_assert_eq(ag_cli_display_width("abc"), 3);
    cr_assert_eq(ag_cli_display_width("\xe2\x96\x81\xe2\x96\x88"), 2);
    cr_assert_eq(ag_cli_display_width(""), 0);
    cr_assert_eq(ag_cli_display_width(NULL), 0);
}

static void sample_doc(ag_cli_doc *d) {
    ag_cli_cell row[4];
    ag_cli_doc_init(d, "points");
    cr_assert_eq(ag_cli_doc_meta(d, "run", ag_cli_str("r\"1")), 0);
    cr_assert_eq(ag_cli_doc_meta(d, "steps", ag_cli_u64(2)), 0);
    cr_assert_eq(ag_cli_doc_col(d, "name"), 0);
    cr_assert_eq(ag_cli_doc_col(d, "count"), 0);
    cr_assert_eq(ag_cli_doc_col(d, "rate"), 0);
    cr_assert_eq(ag_cli_doc_col(d, "amax"), 0);
    row[0] = ag_cli_str("fc1.weight");
    row[1] = ag_cli_u64(7);
    row[2] = ag_cli_rate(0.5);
    row[3] = ag_cli_f64(NAN);
    cr_assert_eq(ag_cli_doc_row(d, row), 0);
    row[0] = ag_cli_str("b,2");
    row[1] = ag_cli_u64(12345);
    row[2] = ag_cli_rate(1.0);
    row[3] = ag_cli_f64(-INFINITY);
    cr_assert_eq(ag_cli_doc_row(d, row), 0);
}

Test(output, json_document_is_valid_with_meta_keys_and_a_row_array) {
    ag_cli_doc d;
    char *s;
    jm_value *v;
    const jm_value *pts;
    sample_doc(&d);
    s = render(&d, AG_CLI_JSON);
    v = jm_parse(s);
    cr_assert_not_null(v, "not valid JSON: %s", s);
    cr_assert_str_eq(jm_get(v, "run")->string, "r\"1");
    cr_assert_eq(jm_get(v, "steps")->number, 2);
    pts = jm_get(v, "points");
    cr_assert_not_null(pts);
    cr_assert_eq(pts->type, JM_ARRAY);
    cr_assert_eq(pts->n, 2);
    cr_assert_str_eq(jm_get(&pts->items[0], "name")->string, "fc1.weight");
    cr_assert_eq(jm_get(&pts->items[0], "count")->number, 7);
    cr_assert_eq(jm_get(&pts->items[0], "rate")->number, 0.5);
    cr_assert_eq(jm_get(&pts->items[0], "amax")->type, JM_NULL, "NaN must be null");
    cr_assert_eq(jm_get(&pts->items[1], "amax")->type, JM_NULL, "-inf must be null");
    cr_assert_eq(jm_get(&pts->items[1], "count")->number, 12345);
    jm_free(v);
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, json_document_with_no_rows_has_an_empty_array) {
    ag_cli_doc d;
    char *s;
    jm_value *v;
    ag_cli_doc_init(&d, "runs");
    cr_assert_eq(ag_cli_doc_col(&d, "name"), 0);
    s = render(&d, AG_CLI_JSON);
    cr_assert_str_eq(s, "{\"runs\":[]}\n");
    v = jm_parse(s);
    cr_assert_not_null(v);
    jm_free(v);
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, record_document_renders_as_one_object_and_one_csv_row) {
    ag_cli_doc d;
    char *s;
    jm_value *v;
    ag_cli_doc_init(&d, NULL);
    cr_assert_eq(ag_cli_doc_meta(&d, "version", ag_cli_str("0.1.0")), 0);
    cr_assert_eq(ag_cli_doc_meta(&d, "uptime_s", ag_cli_f64(1.5)), 0);
    cr_assert_eq(ag_cli_doc_meta(&d, "formats", ag_cli_str("E5M2,E3M4")), 0);
    s = render(&d, AG_CLI_JSON);
    v = jm_parse(s);
    cr_assert_not_null(v, "not valid JSON: %s", s);
    cr_assert_eq(jm_get(v, "uptime_s")->number, 1.5);
    jm_free(v);
    free(s);
    s = render(&d, AG_CLI_CSV);
    cr_assert_str_eq(s, "version,uptime_s,formats\n0.1.0,1.5,\"E5M2,E3M4\"\n");
    free(s);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "version:  0.1.0\nuptime_s: 1.5\nformats:  E5M2,E3M4\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, csv_document_has_a_header_and_quoted_fields) {
    ag_cli_doc d;
    char *s;
    sample_doc(&d);
    s = render(&d, AG_CLI_CSV);
    cr_assert_str_eq(s, "name,count,rate,amax\n"
                        "fc1.weight,7,0.5,nan\n"
                        "\"b,2\",12345,1,-inf\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, table_aligns_text_left_and_numbers_right) {
    ag_cli_doc d;
    char *s;
    sample_doc(&d);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "run:   r\"1\n"
                        "steps: 2\n"
                        "\n"
                        "name        count    rate  amax\n"
                        "fc1.weight      7  0.5000   nan\n"
                        "b,2         12345  1.0000  -inf\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, table_aligns_multibyte_text_by_code_points) {
    ag_cli_doc d;
    ag_cli_cell row[2];
    char *s;
    ag_cli_doc_init(&d, "rows");
    cr_assert_eq(ag_cli_doc_col(&d, "spark"), 0);
    cr_assert_eq(ag_cli_doc_col(&d, "n"), 0);
    row[0] = ag_cli_str("\xe2\x96\x81\xe2\x96\x88");
    row[1] = ag_cli_u64(1);
    cr_assert_eq(ag_cli_doc_row(&d, row), 0);
    row[0] = ag_cli_str("abcdefg");
    row[1] = ag_cli_u64(22);
    cr_assert_eq(ag_cli_doc_row(&d, row), 0);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "spark     n\n"
                        "\xe2\x96\x81\xe2\x96\x88        1\n"
                        "abcdefg  22\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, table_replaces_control_characters_and_marks_empty_tables) {
    ag_cli_doc d;
    ag_cli_cell row[1];
    char *s;
    ag_cli_doc_init(&d, "rows");
    cr_assert_eq(ag_cli_doc_col(&d, "name"), 0);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "name\n(none)\n");
    free(s);
    row[0] = ag_cli_str("a\nb\x1b");
    cr_assert_eq(ag_cli_doc_row(&d, row), 0);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "name\na?b?\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, table_shows_times_in_utc_and_zero_time_as_a_dash) {
    ag_cli_doc d;
    char *s;
    ag_cli_doc_init(&d, NULL);
    cr_assert_eq(ag_cli_doc_meta(&d, "started", ag_cli_time_ms(86400000)), 0);
    cr_assert_eq(ag_cli_doc_meta(&d, "ended", ag_cli_time_ms(0)), 0);
    s = render(&d, AG_CLI_TABLE);
    cr_assert_str_eq(s, "started: 1970-01-02 00:00:00Z\nended:   -\n");
    free(s);
    s = render(&d, AG_CLI_JSON);
    cr_assert_str_eq(s, "{\"started\":86400000,\"ended\":0}\n");
    free(s);
    ag_cli_doc_free(&d);
}

Test(output, doc_refuses_more_columns_than_it_holds) {
    ag_cli_doc d;
    size_t i;
    ag_cli_doc_init(&d, "rows");
    for (i = 0; i < AG_CLI_COLS_MAX; i++) cr_assert_eq(ag_cli_doc_col(&d, "c"), 0);
    cr_assert_neq(ag_cli_doc_col(&d, "c"), 0);
    ag_cli_doc_free(&d);
}
