/*
 * test_args.c - client/cli/args.c: options before and after positionals,
 * per-command option checks, strict numbers, one-line usage errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <string.h>

#include "client/cli/args.h"
#include "proto/spec.h"

#define ARGV(...) ((char *[]){"altgrad", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"altgrad", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(a, err, ...)                                                                         \
    ag_cli_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (a), (err), sizeof(err))

Test(args, options_may_stand_before_the_command) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "--json", "--db", "x.db", "history", "r1", "fc1.weight"), 0, "%s",
                 err);
    cr_assert_eq(a.cmd, AG_CMD_HISTORY);
    cr_assert_eq(a.mode, AG_CLI_JSON);
    cr_assert_str_eq(a.db_path, "x.db");
    cr_assert_str_eq(a.run, "r1");
    cr_assert_str_eq(a.tensor, "fc1.weight");
    cr_assert_null(a.format);
}

Test(args, options_may_stand_after_and_between_the_arguments) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "history", "r1", "--format", "E3M4", "fc1.weight", "--from=5",
                       "--to", "9", "--every", "2", "--csv"),
                 0, "%s", err);
    cr_assert_eq(a.cmd, AG_CMD_HISTORY);
    cr_assert_str_eq(a.run, "r1");
    cr_assert_str_eq(a.tensor, "fc1.weight");
    cr_assert_str_eq(a.format, "E3M4");
    cr_assert_eq(a.from_step, 5);
    cr_assert_eq(a.to_step, 9);
    cr_assert_eq(a.every, 2);
    cr_assert_eq(a.mode, AG_CLI_CSV);
}

Test(args, top_takes_window_and_limit) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "top", "r1", "--window", "50", "--limit", "3", "--query",
                       "ipc:///tmp/q.sock"),
                 0, "%s", err);
    cr_assert_eq(a.cmd, AG_CMD_TOP);
    cr_assert_eq(a.window, 50);
    cr_assert_eq(a.limit, 3);
    cr_assert_str_eq(a.query_url, "ipc:///tmp/q.sock");
}

Test(args, double_dash_makes_the_rest_positional) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "tensors", "--", "--weird-run"), 0, "%s", err);
    cr_assert_str_eq(a.run, "--weird-run");
}

Test(args, help_and_version_need_no_command) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "--help"), 0);
    cr_assert(a.help);
    cr_assert_eq(PARSE(&a, err, "-V"), 0);
    cr_assert(a.version);
    cr_assert_eq(PARSE(&a, err, "history", "--help"), 0);
    cr_assert(a.help);
}

Test(args, report_accepts_a_list_of_formats_and_a_width) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "report", "r1", "--format", "E5M2,E3M4", "--width", "20"), 0, "%s",
                 err);
    cr_assert_str_eq(a.format, "E5M2,E3M4");
    cr_assert_eq(a.width, 20);
}

/* Every usage error is one line: no newline inside, something said. */
static void expect_usage_error(int rc, const char *err, const char *needle) {
    cr_assert_neq(rc, 0, "expected a usage error");
    cr_assert_gt(strlen(err), 0);
    cr_assert_null(strchr(err, '\n'), "error must be one line: %s", err);
    cr_assert_not_null(strstr(err, needle), "'%s' does not mention '%s'", err, needle);
}

Test(args, unknown_command_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "frobnicate"), err, "frobnicate");
}

Test(args, missing_command_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "--json"), err, "no command");
}

Test(args, wrong_number_of_arguments_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "history", "r1"), err, "history RUN TENSOR");
    expect_usage_error(PARSE(&a, err, "runs", "extra"), err, "runs");
    expect_usage_error(PARSE(&a, err, "tensors"), err, "tensors RUN");
}

Test(args, unknown_option_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "runs", "--bogus"), err, "--bogus");
    expect_usage_error(PARSE(&a, err, "runs", "-x"), err, "-x");
}

Test(args, option_of_another_command_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "scales", "r1", "--every", "3"), err, "--every");
    expect_usage_error(PARSE(&a, err, "runs", "--format", "E5M2"), err, "--format");
}

Test(args, numbers_must_be_plain_non_negative_integers) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "history", "r", "t", "--from", "-1"), err, "-1");
    expect_usage_error(PARSE(&a, err, "history", "r", "t", "--every", "3x"), err, "3x");
    expect_usage_error(PARSE(&a, err, "history", "r", "t", "--to", ""), err, "--to");
    expect_usage_error(PARSE(&a, err, "top", "r", "--window", "99999999999999999999999"), err,
                       "--window");
}

Test(args, missing_option_value_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "top", "r1", "--limit"), err, "--limit");
}

Test(args, from_after_to_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "history", "r", "t", "--from", "9", "--to", "3"), err,
                       "--from");
}

Test(args, conflicting_sources_or_modes_are_usage_errors) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "runs", "--db", "a.db", "--query", "ipc://x"), err, "--db");
    expect_usage_error(PARSE(&a, err, "runs", "--json", "--csv"), err, "--json");
}

Test(args, bad_format_names_are_usage_errors) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "scales", "r", "--format", "E5 M2"), err, "format");
    expect_usage_error(PARSE(&a, err, "scales", "r", "--format", "E5M2,E3M4"), err, "format");
    expect_usage_error(PARSE(&a, err, "report", "r", "--format", "E5M2,"), err, "format");
    expect_usage_error(PARSE(&a, err, "scales", "r", "--format", "ABCDEFGHIJKLMNOP"), err,
                       "format");
}

Test(args, value_given_to_a_flag_is_a_usage_error) {
    ag_cli_args a;
    char err[256];
    expect_usage_error(PARSE(&a, err, "runs", "--json=yes"), err, "--json");
}

Test(args, command_names_are_known) {
    cr_assert_str_eq(ag_cli_cmd_name(AG_CMD_HISTORY), "history");
    cr_assert_null(ag_cli_cmd_name(AG_CMD_NONE));
    cr_assert_not_null(strstr(ag_cli_usage(), "history RUN TENSOR"));
}

Test(args, timeout_is_milliseconds_for_the_daemon_only) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "status", "--timeout", "250"), 0, "%s", err);
    cr_assert_eq(a.timeout_ms, 250);
    expect_usage_error(PARSE(&a, err, "status", "--timeout", "0"), err, "--timeout");
    expect_usage_error(PARSE(&a, err, "status", "--db", "x.db", "--timeout", "9"), err,
                       "--timeout");
}

/* Every public query of proto/queries.h is a command of its name, walked
 * from the list: its required parameters are its positionals, in order, and
 * its request carries them and the default format. */
Test(args, every_public_query_is_a_command_with_its_parameters) {
    size_t seen = 0;
    for (size_t i = 0; ag_query_at(i); i++) {
        const ag_query_def *q = ag_query_at(i);
        char *argv[8] = {"altgrad", (char *)q->name};
        int argc = 2;
        size_t n;
        const ag_field *p = ag_query_params(q->q, &n);
        for (size_t k = 0; k < n; k++)
            if (p[k].doc && (p[k].flags & F_REQ)) argv[argc++] = (char *)p[k].doc;
        ag_cli_args a;
        char err[256];
        int rc = ag_cli_parse(argc, argv, &a, err, sizeof err);
        if (!(q->flags & AG_Q_PUBLIC)) {
            cr_assert_neq(rc, 0, "%s is internal, no command", q->name);
            continue;
        }
        cr_assert_eq(rc, 0, "%s: %s", q->name, err);
        cr_assert_eq((int)a.cmd, q->q);
        cr_assert_str_eq(ag_cli_cmd_name(a.cmd), q->name);
        ag_msg req;
        cr_assert_eq(ag_cli_request(&a, &req), AG_OK);
        cr_assert_eq(req.type, q->q);
        for (size_t k = 0; k < n; k++) {
            const char *v;
            if (p[k].kind != K_NAME && p[k].kind != K_FMT) continue;
            memcpy(&v, (const char *)&req.u + p[k].off, sizeof v);
            cr_assert_str_eq(v, p[k].kind == K_FMT ? AG_DEFAULT_FORMAT : p[k].doc, "%s %s", q->name,
                             p[k].doc);
        }
        /* one positional short is a usage error naming them all */
        if (argc > 2) {
            rc = ag_cli_parse(argc - 1, argv, &a, err, sizeof err);
            cr_assert_neq(rc, 0);
            cr_assert_not_null(strstr(err, q->name), "%s", err);
        }
        seen++;
    }
    cr_assert_geq(seen, 6);
}

Test(args, tls_options_are_global_and_take_a_value) {
    ag_cli_args a;
    char err[256];
    cr_assert_eq(PARSE(&a, err, "--query", "tls+tcp://collector:7462", "runs", "--tls-cert",
                       "n.pem", "--tls-key=n.key", "--tls-ca", "ca.pem", "--tls-server-name",
                       "collector.example"),
                 0, "%s", err);
    cr_assert_eq(a.cmd, AG_CMD_RUNS);
    cr_assert_str_eq(a.tls_cert, "n.pem");
    cr_assert_str_eq(a.tls_key, "n.key");
    cr_assert_str_eq(a.tls_ca, "ca.pem");
    cr_assert_str_eq(a.tls_server_name, "collector.example");
    cr_assert_neq(PARSE(&a, err, "runs", "--tls-ca"), 0);
    cr_assert_neq(PARSE(&a, err, "runs", "--tls-ca="), 0);
    cr_assert(strstr(err, "--tls-ca"), "%s", err);
}
