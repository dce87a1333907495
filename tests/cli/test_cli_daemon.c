/*
 * test_cli_daemon.c - end to end: the real altgradd on temporary sockets and
 * database, the demo trainer ag_mlp_train streaming into it, and the altgrad
 * CLI run as a subprocess against the daemon and against the database file
 * (--db), its JSON parsed and checked. Needs $AG_BUILD_DIR (set by ctest).
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_proc.h"
#include "json_mini.h"

#define STEPS 6

static cli_env E;

static void setup(void) { cli_env_init(&E); }

static void teardown(void) { cli_env_fini(&E); }

static void check_point_keys(const jm_value *p) {
    static const char *const keys[] = {"step",     "stalled",   "total", "stall_rate", "flips",
                                       "overflow", "underflow", "amax",  "scale"};
    size_t i;
    cr_assert_eq(p->type, JM_OBJECT);
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const jm_value *v = jm_get(p, keys[i]);
        cr_assert_not_null(v, "point lacks '%s'", keys[i]);
        cr_assert_eq(v->type, JM_NUMBER, "'%s' is not a number", keys[i]);
    }
}

/* `altgrad history` of fc1.weight until all STEPS points are committed. */
static char *history_json(const char *source_flag, const char *source) {
    char *argv[] = {E.cli, (char *)source_flag, (char *)source, "history",
                    "t1",  "fc1.weight",        "--json",       NULL};
    int i;
    for (i = 0; i < CLI_POLL_TRIES; i++) {
        char *out, *err;
        int code = cli_run(&E, argv, &out, &err);
        if (code == 0) {
            jm_value *v = jm_parse(out);
            const jm_value *pts = jm_get(v, "points");
            size_t n = pts && pts->type == JM_ARRAY ? pts->n : 0;
            jm_free(v);
            if (n == STEPS) {
                free(err);
                return out;
            }
        }
        free(out);
        free(err);
        cli_pause();
    }
    cr_assert_fail("history of fc1.weight never reached %d points", STEPS);
    return NULL;
}

Test(cli_daemon, trainer_data_reads_the_same_through_the_daemon_and_the_db_file, .init = setup,
     .fini = teardown, .timeout = 240) {
    char *out, *err, *via_daemon, *via_db;
    char *train[] = {E.trainer, "--ingest", E.ingest,   "--query", E.query,   "--run", "t1",
                     "--steps", "6",        "--hidden", "8",       "--batch", "16",    NULL};
    jm_value *doc;
    const jm_value *pts;
    size_t i;
    int code;

    cli_start_daemon(&E, NULL);
    code = cli_run(&E, train, &out, &err);
    cr_assert_eq(code, 0, "trainer failed: %s", err);
    cr_assert_not_null(strstr(out, "loss"), "trainer printed no loss: %s", out);
    free(out);
    free(err);

    via_daemon = history_json("--query", E.query);
    doc = jm_parse(via_daemon);
    cr_assert_not_null(doc, "history --json is not valid JSON: %s", via_daemon);
    cr_assert_str_eq(jm_get(doc, "run")->string, "t1");
    cr_assert_str_eq(jm_get(doc, "tensor")->string, "fc1.weight");
    cr_assert_str_eq(jm_get(doc, "format")->string, "E5M2");
    pts = jm_get(doc, "points");
    for (i = 0; i < pts->n; i++) {
        const jm_value *p = &pts->items[i];
        double stalled, total;
        check_point_keys(p);
        cr_assert_eq(jm_get(p, "step")->number, (double)(i + 1), "steps must be 1..%d", STEPS);
        stalled = jm_get(p, "stalled")->number;
        total = jm_get(p, "total")->number;
        cr_assert_gt(total, 0, "fc1.weight has gradients at every step");
        cr_assert_leq(total, 8.0 * 8.0, "at most numel elements move");
        cr_assert_leq(stalled, total);
        cr_assert_float_eq(jm_get(p, "stall_rate")->number, stalled / total, 1e-12);
        cr_assert_gt(jm_get(p, "scale")->number, 0);
        cr_assert_gt(jm_get(p, "amax")->number, 0);
    }
    jm_free(doc);

    /* the database file, read while the daemon runs, says the same */
    via_db = history_json("--db", E.db);
    cr_assert_str_eq(via_db, via_daemon);

    /* the other commands answer, in every mode */
    {
        char *tensors[] = {E.cli, "tensors", "t1", "--query", E.query, "--json", NULL};
        const jm_value *list;
        int found = 0;
        code = cli_run(&E, tensors, &out, &err);
        cr_assert_eq(code, 0, "tensors: %s", err);
        doc = jm_parse(out);
        cr_assert_not_null(doc, "tensors --json: %s", out);
        list = jm_get(doc, "tensors");
        cr_assert_not_null(list);
        for (i = 0; i < list->n; i++)
            if (strcmp(jm_get(&list->items[i], "name")->string, "fc3.bias") == 0) found = 1;
        cr_assert(found, "fc3.bias missing from %s", out);
        jm_free(doc);
        free(out);
        free(err);
    }
    {
        char *runs[] = {E.cli, "--csv", "--db", E.db, "runs", NULL};
        code = cli_run(&E, runs, &out, &err);
        cr_assert_eq(code, 0, "runs: %s", err);
        cr_assert_eq(strncmp(out, "name,host,pid,", 14), 0, "csv header: %s", out);
        cr_assert_not_null(strstr(out, "\nt1,"), "run t1 missing: %s", out);
        free(out);
        free(err);
    }
    {
        char *top[] = {E.cli, "--query", E.query, "top", "t1", "--format", "E3M4", "--json", NULL};
        code = cli_run(&E, top, &out, &err);
        cr_assert_eq(code, 0, "top: %s", err);
        doc = jm_parse(out);
        cr_assert_not_null(doc, "top --json: %s", out);
        cr_assert_str_eq(jm_get(doc, "format")->string, "E3M4");
        cr_assert_gt(jm_get(doc, "tensors")->n, 0);
        jm_free(doc);
        free(out);
        free(err);
    }
    {
        char *report[] = {E.cli, "--query", E.query, "report", "t1", NULL};
        code = cli_run(&E, report, &out, &err);
        cr_assert_eq(code, 0, "report: %s", err);
        cr_assert_not_null(strstr(out, "fc2.weight"), "report: %s", out);
        cr_assert_not_null(strstr(out, "\xe2\x96"), "report has no sparkline: %s", out);
        free(out);
        free(err);
    }
    {
        char *unknown[] = {E.cli, "--query", E.query, "tensors", "no-such-run", NULL};
        code = cli_run(&E, unknown, &out, &err);
        cr_assert_eq(code, 1, "unknown run must exit 1, got %d", code);
        cli_assert_one_error_line(err);
        free(out);
        free(err);
    }

    cr_assert_eq(cli_stop_daemon(&E), 0, "altgradd did not exit cleanly on SIGTERM");

    /* with the daemon gone: the file still answers, the socket does not */
    free(via_db);
    via_db = history_json("--db", E.db);
    cr_assert_str_eq(via_db, via_daemon);
    {
        /* no daemon: the answer comes at once, naming the socket, though the
         * timeout would allow a minute (a wait would outlast the test) */
        char *status[] = {E.cli, "--query", E.query, "--timeout", "60000", "status", NULL};
        code = cli_run(&E, status, &out, &err);
        cr_assert_eq(code, 1, "no daemon must exit 1, got %d", code);
        cli_assert_one_error_line(err);
        cr_assert_not_null(strstr(err, E.query + strlen("ipc://")),
                           "the error does not name the socket: %s", err);
        cr_assert(strstr(err, "not found") || strstr(err, "connection refused"),
                  "the error does not say why: %s", err);
        free(out);
        free(err);
    }
    free(via_db);
    free(via_daemon);
}

Test(cli_daemon, usage_errors_exit_2_with_one_line, .init = setup, .fini = teardown) {
    char *cases[][8] = {
        {E.cli, "history", "t1", NULL},
        {E.cli, "frobnicate", NULL},
        {E.cli, "top", "t1", "--window", "-3", NULL},
        {E.cli, "--db", "x.db", "--query", "ipc:///nowhere", "runs", NULL},
        {E.cli, NULL},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out, *err;
        int code = cli_run(&E, cases[i], &out, &err);
        cr_assert_eq(code, 2, "case %zu: exit %d", i, code);
        cli_assert_one_error_line(err);
        cr_assert_str_eq(out, "", "case %zu printed to stdout", i);
        free(out);
        free(err);
    }
}

Test(cli_daemon, missing_database_file_is_one_error_line, .init = setup, .fini = teardown) {
    char path[128], *out, *err;
    char *argv[] = {E.cli, "--db", path, "runs", NULL};
    int code;
    snprintf(path, sizeof path, "%s/none.db", E.dir);
    code = cli_run(&E, argv, &out, &err);
    cr_assert_eq(code, 1, "exit %d", code);
    cli_assert_one_error_line(err);
    free(out);
    free(err);
}

/* Block-scaled formats read like per-tensor ones in every command: report
 * shows them beside E4M3 (their rows and sparklines), history gives their
 * points (NVFP4's scale its FP32 tensor scale, MX's 1), top and scales
 * answer, the file says the same once the daemon stopped. */
Test(cli_daemon, block_scaled_formats_read_beside_per_tensor_ones, .init = setup, .fini = teardown,
     .timeout = 240) {
    static const char *const extra[] = {"--formats", "E5M2,E4M3,MXFP8_E4M3,NVFP4", NULL};
    char *train[] = {E.trainer, "--ingest", E.ingest,   "--query", E.query,   "--run", "b1",
                     "--steps", "6",        "--hidden", "8",       "--batch", "16",    NULL};
    char *out, *err;
    cli_start_daemon(&E, extra);
    int code = cli_run(&E, train, &out, &err);
    cr_assert_eq(code, 0, "trainer failed: %s", err);
    free(out);
    free(err);
    /* history in each block format, until its STEPS points are committed */
    static const char *const bf[2] = {"MXFP8_E4M3", "NVFP4"};
    for (int f = 0; f < 2; f++) {
        jm_value *doc = NULL;
        const jm_value *pts = NULL;
        for (int i = 0; i < CLI_POLL_TRIES; i++) {
            char *argv[] = {E.cli,        "--query",  E.query,       "history", "b1",
                            "fc1.weight", "--format", (char *)bf[f], "--json",  NULL};
            code = cli_run(&E, argv, &out, &err);
            free(err);
            doc = code == 0 ? jm_parse(out) : NULL;
            free(out);
            pts = doc ? jm_get(doc, "points") : NULL;
            if (pts && pts->type == JM_ARRAY && pts->n == STEPS) break;
            jm_free(doc);
            doc = NULL;
            cli_pause();
        }
        cr_assert_not_null(doc, "history of fc1.weight in %s never reached %d points", bf[f],
                           STEPS);
        cr_assert_str_eq(jm_get(doc, "format")->string, bf[f]);
        for (size_t i = 0; i < pts->n; i++) {
            const jm_value *p = &pts->items[i];
            check_point_keys(p);
            double scale = jm_get(p, "scale")->number, amax = jm_get(p, "amax")->number;
            if (f == 0)
                cr_expect_eq(scale, 1.0, "MX has no tensor scale: %g", scale);
            else
                cr_expect(scale >= amax / (448.0 * 6.0) * 0.9999 &&
                              scale <= amax / (448.0 * 6.0) * 2.0,
                          "NVFP4's tensor scale is the history amax / (448 * 6): %g, amax %g",
                          scale, amax);
            cr_expect_gt(jm_get(p, "total")->number, 0);
            cr_expect_eq(jm_get(p, "mse")->type, JM_NUMBER, "mse of a daemon point is known");
        }
        jm_free(doc);
    }
    char *report[] = {
        E.cli,   "--query", E.query, "report", "b1", "--format", "E4M3,MXFP8_E4M3,NVFP4",
        "--csv", NULL};
    code = cli_run(&E, report, &out, &err);
    cr_assert_eq(code, 0, "report: %s", err);
    cr_expect_not_null(strstr(out, "\nfc2.weight,E4M3,6,"), "report: %s", out);
    cr_expect_not_null(strstr(out, "\nfc2.weight,MXFP8_E4M3,6,"), "report: %s", out);
    cr_expect_not_null(strstr(out, "\nfc2.weight,NVFP4,6,"), "report: %s", out);
    char *via_daemon = out;
    free(err);
    char *top[] = {E.cli, "--query", E.query, "top", "b1", "--format", "NVFP4", "--json", NULL};
    code = cli_run(&E, top, &out, &err);
    cr_assert_eq(code, 0, "top: %s", err);
    jm_value *doc = jm_parse(out);
    cr_assert_not_null(doc, "top --json: %s", out);
    cr_expect_str_eq(jm_get(doc, "format")->string, "NVFP4");
    cr_expect_gt(jm_get(doc, "tensors")->n, 0);
    jm_free(doc);
    free(out);
    free(err);
    char *scales[] = {E.cli,      "--query",    E.query, "scales", "b1",
                      "--format", "MXFP8_E4M3", "--csv", NULL};
    code = cli_run(&E, scales, &out, &err);
    cr_assert_eq(code, 0, "scales: %s", err);
    cr_expect_not_null(strstr(out, "\nfc1.weight,6,"), "scales: %s", out);
    free(out);
    free(err);
    char *status[] = {E.cli, "--query", E.query, "status", "--json", NULL};
    code = cli_run(&E, status, &out, &err);
    cr_assert_eq(code, 0, "status: %s", err);
    cr_expect_not_null(strstr(out, "\"formats\":\"E5M2,E4M3,MXFP8_E4M3,NVFP4\""), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(cli_stop_daemon(&E), 0, "altgradd did not exit cleanly on SIGTERM");
    char *report_db[] = {E.cli,   "--db", E.db, "report", "b1", "--format", "E4M3,MXFP8_E4M3,NVFP4",
                         "--csv", NULL};
    code = cli_run(&E, report_db, &out, &err);
    cr_assert_eq(code, 0, "report --db: %s", err);
    cr_expect_str_eq(out, via_daemon);
    free(out);
    free(err);
    free(via_daemon);
}
