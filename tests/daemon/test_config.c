/*
 * test_config.c - the daemon's option table (daemon/config.c): defaults,
 * command line, config file, precedence and the errors bad values give.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/log.h"

static int load(ag_config *cfg, char *err, int argc, const char **argv) {
    return ag_config_load(cfg, argc, (char **)argv, err, 256);
}

Test(config, no_arguments_give_the_source_tree_defaults) {
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd"};
    cr_assert_eq(load(&cfg, err, 1, argv), AG_OK, "%s", err);
    cr_assert_eq(cfg.ningest, 1);
    cr_assert_str_eq(cfg.ingest[0], AG_DEFAULT_INGEST_URL);
    cr_assert_str_eq(cfg.query, AG_DEFAULT_QUERY_URL);
    cr_assert_str_eq(cfg.db, AG_DEFAULT_DB_PATH);
    cr_assert_eq(cfg.nfmts, 5);
    cr_assert_str_eq(cfg.fmts[3]->name, "E5M2");
    cr_assert_eq(cfg.history_len, 16);
    cr_assert_eq(cfg.scale_mode, AG_SCALE_CURRENT);
    cr_assert_eq(cfg.amax_mode, AG_AMAX_MAX);
    cr_assert_float_eq(cfg.margin, 0.0, 0);
    cr_assert_eq(cfg.log_level, AG_LOG_INFO);
}

Test(config, ingest_is_repeatable_and_values_parse) {
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--ingest", "ipc:///tmp/a.sock", "--ingest=tcp://127.0.0.1:5555",
                          "--formats", "E5M2,E3M4", "--history-len", "32", "--scale-mode",
                          "delayed", "--margin", "-1.5", "--log-level", "debug"};
    cr_assert_eq(load(&cfg, err, 14, argv), AG_OK, "%s", err);
    cr_assert_eq(cfg.ningest, 2);
    cr_assert_str_eq(cfg.ingest[1], "tcp://127.0.0.1:5555");
    cr_assert_eq(cfg.nfmts, 2);
    cr_assert_str_eq(cfg.fmts[1]->name, "E3M4");
    cr_assert_eq(cfg.history_len, 32);
    cr_assert_eq(cfg.scale_mode, AG_SCALE_DELAYED);
    cr_assert_float_eq(cfg.margin, -1.5, 0);
    cr_assert_eq(cfg.log_level, AG_LOG_DEBUG);
}

Test(config, bad_values_are_one_clear_error) {
    ag_config cfg;
    char err[256];
    const char *cases[][3] = {
        {"altgradd", "--history-len", "0"},     {"altgradd", "--history-len", "12x"},
        {"altgradd", "--scale-mode", "later"},  {"altgradd", "--formats", "E5M2,E9M9"},
        {"altgradd", "--formats", "E5M2,E5M2"}, {"altgradd", "--margin", "nan"},
        {"altgradd", "--log-level", "loud"},    {"altgradd", "--nope", "1"},
        {"altgradd", "stray", "x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        cr_expect_eq(load(&cfg, err, 3, cases[i]), AG_EINVAL, "case %zu", i);
        cr_expect_neq(err[0], '\0', "case %zu has no message", i);
        cr_expect_null(strchr(err, '\n'), "one line: %s", err);
    }
    const char *missing[] = {"altgradd", "--db"};
    cr_expect_eq(load(&cfg, err, 2, missing), AG_EINVAL);
    cr_expect_not_null(strstr(err, "--db"));
}

Test(config, the_file_sets_options_and_the_command_line_wins) {
    char path[] = "/tmp/ag_config_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# altgradd.conf\n\ndb = /tmp/from-file.db\nhistory-len = 8\n"
               "ingest = ipc:///tmp/f1.sock\ningest = ipc:///tmp/f2.sock\nmargin = 2\n");
    fclose(f);
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--history-len", "4", "--config", path};
    int rc = load(&cfg, err, 5, argv);
    cr_assert_eq(rc, AG_OK, "%s", err);
    cr_expect_str_eq(cfg.db, "/tmp/from-file.db");
    cr_expect_eq(cfg.history_len, 4);
    cr_expect_eq(cfg.ningest, 2);
    cr_expect_float_eq(cfg.margin, 2.0, 0);
    const char *argv2[] = {"altgradd", "--config", path, "--ingest", "ipc:///tmp/cli.sock"};
    cr_assert_eq(load(&cfg, err, 5, argv2), AG_OK, "%s", err);
    cr_expect_eq(cfg.ningest, 1);
    cr_expect_str_eq(cfg.ingest[0], "ipc:///tmp/cli.sock");
    f = fopen(path, "w");
    fprintf(f, "bogus = 1\n");
    fclose(f);
    cr_expect_eq(load(&cfg, err, 3, argv2), AG_EINVAL);
    cr_expect_not_null(strstr(err, ":1:"), "%s", err);
    unlink(path);
    const char *argv3[] = {"altgradd", "--config", "/nonexistent/altgradd.conf"};
    cr_expect_eq(load(&cfg, err, 3, argv3), AG_EIO);
}

/* Write bytes (len of them, NULs included) to a new temporary file. */
static void write_file(char *path, const char *bytes, size_t len) {
    strcpy(path, "/tmp/ag_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, bytes, len), (ssize_t)len);
    close(fd);
}

/* A comment of pad bytes whose tail looks like an option, as a file. */
static void long_comment(char *path, size_t pad) {
    char *text = malloc(pad + 64);
    text[0] = '#';
    memset(text + 1, 'x', pad);
    strcpy(text + 1 + pad, " db = /tmp/injected.db\n");
    write_file(path, text, strlen(text));
    free(text);
}

Test(config, a_long_comment_stays_one_line_and_an_overlong_line_is_refused) {
    ag_config cfg;
    char err[256], path[32];
    const char *argv[] = {"altgradd", "--config", path};
    /* Longer than a 2 KiB line buffer: its tail must not become an option. */
    long_comment(path, 2046);
    cr_expect_eq(load(&cfg, err, 3, argv), AG_OK, "%s", err);
    cr_expect_str_eq(cfg.db, AG_DEFAULT_DB_PATH);
    unlink(path);
    long_comment(path, 5000);
    cr_expect_eq(load(&cfg, err, 3, argv), AG_EINVAL);
    cr_expect_not_null(strstr(err, ":1: line longer"), "%s", err);
    unlink(path);
}

Test(config, a_nul_byte_in_a_config_line_is_refused) {
    static const char text[] = "db = /tmp/a.db\0/../../etc/evil\nmargin = 1\n";
    char path[32];
    write_file(path, text, sizeof text - 1);
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--config", path};
    cr_expect_eq(load(&cfg, err, 3, argv), AG_EINVAL);
    cr_expect_not_null(strstr(err, ":1: NUL"), "%s", err);
    unlink(path);
}

Test(config, a_last_line_without_newline_counts_and_a_repeated_key_takes_the_last) {
    static const char text[] = "margin = 1\r\nmargin = 3";
    char path[32];
    write_file(path, text, sizeof text - 1);
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--config", path};
    cr_assert_eq(load(&cfg, err, 3, argv), AG_OK, "%s", err);
    cr_expect_float_eq(cfg.margin, 3.0, 0);
    unlink(path);
}
