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
    cr_assert_eq(cfg.threads, 0, "one pool thread per core");
    cr_assert_eq(cfg.baseline_interval, 60);
    cr_assert_eq(cfg.state_budget_mib, 4096);
}

Test(config, pool_baseline_and_budget_options_parse_within_their_bounds) {
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--threads",      "8", "--baseline-interval",
                          "0",        "--state-budget", "64"};
    cr_assert_eq(load(&cfg, err, 7, argv), AG_OK, "%s", err);
    cr_expect_eq(cfg.threads, 8);
    cr_expect_eq(cfg.baseline_interval, 0);
    cr_expect_eq(cfg.state_budget_mib, 64);
    const char *bad[][3] = {
        {"altgradd", "--threads", "257"},
        {"altgradd", "--threads", "-1"},
        {"altgradd", "--baseline-interval", "86401"},
        {"altgradd", "--state-budget", "15"},
        {"altgradd", "--state-budget", "1e3"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_expect_eq(load(&cfg, err, 3, bad[i]), AG_EINVAL, "case %zu", i);
        cr_expect_not_null(strstr(err, bad[i][1]), "the message names the option: %s", err);
    }
}

Test(config, ingest_is_repeatable_and_values_parse) {
    ag_config cfg;
    char err[256];
    const char *argv[] = {
        "altgradd",     "--ingest",  "ipc:///tmp/a.sock", "--ingest=tcp://127.0.0.1:5555",
        "--formats",    "E5M2,E3M4", "--history-len",     "32",
        "--scale-mode", "delayed",   "--margin",          "-1.5",
        "--log-level",  "debug"};
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
        {"altgradd", "--history-len", "0"},
        {"altgradd", "--history-len", "12x"},
        {"altgradd", "--scale-mode", "later"},
        {"altgradd", "--formats", "E5M2,E9M9"},
        {"altgradd", "--formats", "E5M2,E5M2"},
        {"altgradd", "--margin", "nan"},
        {"altgradd", "--log-level", "loud"},
        {"altgradd", "--nope", "1"},
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

Test(config, a_defined_format_may_be_named_by_formats_in_either_order) {
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd",        "--formats",      "E5M2,E4M3",
                          "--define-format", "E4M3=4,3,7,nan", "--define-format=E2M5=2,5,1"};
    cr_assert_eq(load(&cfg, err, 6, argv), AG_OK, "%s", err);
    cr_assert_eq(cfg.nfmts, 2);
    const ag_format *f = cfg.fmts[1];
    cr_assert_eq(f, ag_format_get("E4M3"));
    cr_expect_eq(f->exponent_bits, 4);
    cr_expect_eq(f->mantissa_bits, 3);
    cr_expect_eq(f->bias, 7);
    cr_expect_eq(f->has_inf, 0);
    cr_expect_eq(f->has_nan, 1);
    cr_expect_float_eq(f->max_finite, 448.0f, 0); /* OCP E4M3: S.1111.111 is the NaN */
    cr_assert_eq(cfg.ndefined, 2);
    cr_expect_str_eq(cfg.defined[1]->name, "E2M5");
    cr_expect_eq(cfg.defined[1]->bias, 1);
    cr_expect_str_eq(cfg.formats, "E5M2,E4M3");
    /* Loading again (a SIGHUP reload) redefines the same formats: no conflict. */
    cr_assert_eq(load(&cfg, err, 6, argv), AG_OK, "%s", err);
    cr_expect_eq(cfg.fmts[1], f);
    char spec[64];
    ag_config_format_spec(f, spec, sizeof spec);
    cr_expect_str_eq(spec, "E4M3=4,3,7,nan");
    ag_config_format_spec(ag_format_get("E5M2"), spec, sizeof spec);
    cr_expect_str_eq(spec, "E5M2=5,2,15,inf,nan");
}

Test(config, define_format_is_repeatable_in_the_file_and_the_command_line_adds_to_it) {
    char path[] = "/tmp/ag_config_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "define-format = E4M3=4,3,7,nan\ndefine-format = E5M2FNUZ=5,2,16\n"
               "formats = E4M3,E5M2FNUZ\n");
    fclose(f);
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--config", path, "--define-format", "E2M5=2,5,1"};
    cr_assert_eq(load(&cfg, err, 5, argv), AG_OK, "%s", err);
    cr_expect_eq(cfg.ndefined, 3);
    cr_assert_eq(cfg.nfmts, 2);
    cr_expect_str_eq(cfg.fmts[1]->name, "E5M2FNUZ");
    cr_expect_eq(cfg.fmts[1]->bias, 16);
    /* The command line's --formats may name a format the file defines. */
    const char *argv2[] = {"altgradd", "--config", path, "--formats", "E5M2FNUZ,E3M4"};
    cr_assert_eq(load(&cfg, err, 5, argv2), AG_OK, "%s", err);
    cr_expect_str_eq(cfg.fmts[0]->name, "E5M2FNUZ");
    /* A bad definition in the file names its line. */
    f = fopen(path, "w");
    fprintf(f, "formats = E5M2\ndefine-format = E8M8=8,8,7\n");
    fclose(f);
    cr_expect_eq(load(&cfg, err, 3, argv), AG_EFORMAT);
    cr_expect_not_null(strstr(err, ":2: --define-format"), "%s", err);
    unlink(path);
}

Test(config, bad_or_conflicting_definitions_are_one_line_saying_what_is_wrong) {
    static const struct {
        const char *spec;
        int code;
        const char *says;
    } cases[] = {
        {"E4M3", AG_EINVAL, "expected NAME=E,M,BIAS"},
        {"=4,3,7", AG_EINVAL, "expected NAME=E,M,BIAS"},
        {"E4M3=4,3", AG_EINVAL, "expected NAME=E,M,BIAS"},
        {"E4M3=4,x,7", AG_EINVAL, "M is not"},
        {"E4M3=4,3,7,nan,nan", AG_EINVAL, "unexpected 'nan'"},
        {"E4M3=4,3,7,fn", AG_EINVAL, "unexpected 'fn'"},
        {"E4M3=-4,11,7", AG_EINVAL, "E is not"},
        {"ThisNameIsTooLong=4,3,7", AG_EINVAL, "longer than 15"},
        {"E4 M3=4,3,7", AG_EFORMAT, "[A-Za-z0-9_-]"},
        {"E8M8=8,8,7", AG_EFORMAT, "E + M must be 3..15"},
        {"E1M1=1,1,0", AG_EFORMAT, "E + M must be 3..15"},
        {"X-unscaled=4,3,7", AG_EFORMAT, "unscaled twin"},
        {"E4M3=4,3,7,inf", AG_EFORMAT, "inf needs nan"},
        {"E7M0X=7,0,63,inf,nan", AG_EFORMAT, "inf needs mantissa bits"},
        {"Q7=0,7,1", AG_EFORMAT, "fixed-point"},
        {"E4M3=4,3,500", AG_EFORMAT, "-200..200"},
        {"E4M3=4,3,190", AG_EFORMAT, "float32"},
        {"E5M2=5,2,16,inf,nan", AG_EEXIST, "it is E5M2=5,2,15,inf,nan"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ag_config cfg;
        char err[256] = "";
        const char *argv[] = {"altgradd", "--define-format", cases[i].spec};
        int rc = load(&cfg, err, 3, argv);
        cr_expect_eq(rc, cases[i].code, "%s: %d (%s)", cases[i].spec, rc, err);
        cr_expect_not_null(strstr(err, cases[i].says), "%s: %s", cases[i].spec, err);
        cr_expect_not_null(strstr(err, "--define-format"), "%s", err);
        cr_expect_null(strchr(err, '\n'), "one line: %s", err);
        if (cases[i].code != AG_EINVAL)
            cr_expect_not_null(strstr(err, ag_strerror(cases[i].code)), "%s", err);
    }
    /* A name taken by a different user-defined format. */
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--define-format", "E4M3=4,3,7,nan", "--define-format",
                          "E4M3=4,3,8,nan"};
    cr_expect_eq(load(&cfg, err, 5, argv), AG_EEXIST);
    cr_expect_not_null(strstr(err, "it is E4M3=4,3,7,nan"), "%s", err);
    /* An undefined name in --formats points at --define-format. */
    const char *argv2[] = {"altgradd", "--formats", "E5M2,E4M3X"};
    cr_expect_eq(load(&cfg, err, 3, argv2), AG_EINVAL);
    cr_expect_not_null(strstr(err, "unknown format 'E4M3X'"), "%s", err);
    cr_expect_not_null(strstr(err, "--define-format"), "%s", err);
    /* Block-scaled formats are evaluated beside per-tensor ones; they have
     * no unscaled twin. */
    const char *argv3[] = {"altgradd", "--formats", "E5M2,MXFP4,NVFP4,MXFP8_E4M3"};
    cr_expect_eq(load(&cfg, err, 3, argv3), AG_OK, "%s", err);
    cr_expect_eq(cfg.nfmts, 4);
    cr_expect_eq(cfg.fmts[1], ag_format_get("MXFP4"));
    cr_expect_str_eq(cfg.formats, "E5M2,MXFP4,NVFP4,MXFP8_E4M3");
    const char *argv4[] = {"altgradd", "--formats", "E5M2,MXFP4:unscaled"};
    cr_expect_eq(load(&cfg, err, 3, argv4), AG_EINVAL);
    cr_expect_not_null(strstr(err, "'MXFP4' is block-scaled"), "%s", err);
    cr_expect_not_null(strstr(err, "no unscaled twin"), "%s", err);
}

Test(config, loopback_hosts_and_url_reach) {
    const char *loop[] = {"127.0.0.1", "127.3.2.1", "::1", "localhost", "::ffff:127.0.0.1"};
    for (size_t i = 0; i < sizeof loop / sizeof loop[0]; i++)
        cr_expect(ag_config_host_loopback(loop[i]), "%s", loop[i]);
    const char *remote[] = {"0.0.0.0", "10.0.0.1", "::", "", "*", "example.org", "128.0.0.1"};
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
        cr_expect(!ag_config_host_loopback(remote[i]), "%s", remote[i]);
    struct {
        const char *url;
        ag_url_reach want;
    } cases[] = {
        {"ipc://var/ingest.sock", AG_REACH_LOCAL},   {"inproc://x", AG_REACH_LOCAL},
        {"tcp://127.0.0.1:7461", AG_REACH_LOOPBACK}, {"tcp://[::1]:7461", AG_REACH_LOOPBACK},
        {"tcp://localhost:7461", AG_REACH_LOOPBACK}, {"tcp4://127.0.0.1:1", AG_REACH_LOOPBACK},
        {"ws://127.0.0.1:1/x", AG_REACH_LOOPBACK},   {"tcp://0.0.0.0:7461", AG_REACH_NETWORK},
        {"tcp://:7461", AG_REACH_NETWORK},           {"tcp://[::]:7461", AG_REACH_NETWORK},
        {"tcp6://[fe80::1]:1", AG_REACH_NETWORK},    {"ws://0.0.0.0:1/x", AG_REACH_NETWORK},
        {"tcp://host.example:1", AG_REACH_NETWORK},  {"tcp://127.0.0.1", AG_REACH_NETWORK},
        {"tls+tcp://0.0.0.0:7461", AG_REACH_TLS},    {"tls+tcp6://[::]:1", AG_REACH_TLS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_eq(ag_config_url_reach(cases[i].url), cases[i].want, "%s", cases[i].url);
}

Test(config, remote_plain_tcp_needs_allow_remote_tcp_and_tls_needs_its_files) {
    ag_config cfg;
    char err[256];
    const char *remote[] = {"altgradd", "--ingest", "tcp://0.0.0.0:7461"};
    cr_assert_eq(load(&cfg, err, 3, remote), AG_EINVAL);
    cr_expect(strstr(err, "--allow-remote-tcp") && strstr(err, "tls+tcp://"), "%s", err);
    const char *insist[] = {"altgradd", "--ingest", "tcp://0.0.0.0:7461", "--allow-remote-tcp"};
    cr_assert_eq(load(&cfg, err, 4, insist), AG_OK, "%s", err);
    cr_expect(cfg.allow_remote_tcp);
    const char *http[] = {"altgradd", "--http", "10.1.2.3:8787"};
    cr_assert_eq(load(&cfg, err, 3, http), AG_EINVAL);
    cr_expect(strstr(err, "--http 10.1.2.3:8787") && strstr(err, "--allow-remote-tcp"), "%s", err);
    const char *query[] = {"altgradd", "--query", "tcp://[::]:7462"};
    cr_assert_eq(load(&cfg, err, 3, query), AG_EINVAL);
    cr_expect(strstr(err, "--query"), "%s", err);
    const char *tls[] = {"altgradd", "--ingest", "tls+tcp://0.0.0.0:7461"};
    cr_assert_eq(load(&cfg, err, 3, tls), AG_EINVAL);
    cr_expect(strstr(err, "--tls-cert"), "%s", err);
    const char *noca[] = {"altgradd",  "--ingest", "tls+tcp://0.0.0.0:7461", "--tls-cert", "c.pem",
                          "--tls-key", "k.pem"};
    cr_assert_eq(load(&cfg, err, 7, noca), AG_EINVAL);
    cr_expect(strstr(err, "--tls-ca"), "%s", err);
    const char *ok[] = {"altgradd",   "--ingest", "tls+tcp://0.0.0.0:7461",
                        "--tls-cert", "c.pem",    "--tls-key",
                        "k.pem",      "--tls-ca", "ca.pem"};
    cr_assert_eq(load(&cfg, err, 9, ok), AG_OK, "%s", err);
    cr_expect_eq(cfg.tls_auth, AG_TLS_AUTH_REQUIRED, "client certificates required by default");
    cr_expect_str_eq(cfg.tls_ca, "ca.pem");
    const char *none[] = {"altgradd",   "--ingest",   "tls+tcp://0.0.0.0:7461",
                          "--tls-cert", "c.pem",      "--tls-key",
                          "k.pem",      "--tls-auth", "none"};
    cr_assert_eq(load(&cfg, err, 9, none), AG_OK, "%s", err);
    cr_expect_eq(cfg.tls_auth, AG_TLS_AUTH_NONE);
    const char *optional[] = {"altgradd", "--tls-auth", "optional"};
    cr_expect_eq(load(&cfg, err, 3, optional), AG_EINVAL, "no 'optional': it would check nothing");
    const char *valued[] = {"altgradd", "--allow-remote-tcp=yes"};
    cr_expect_eq(load(&cfg, err, 2, valued), AG_EINVAL, "a flag on the command line");
}

Test(config, tls_and_allow_remote_tcp_keys_in_the_file) {
    char path[] = "/tmp/ag_config_tls_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *text = "ingest = tcp://0.0.0.0:7461\n"
                       "ingest = tls+tcp://0.0.0.0:7463\n"
                       "allow-remote-tcp = true\n"
                       "tls-cert = /etc/altgrad/daemon.pem\n"
                       "tls-key = /etc/altgrad/daemon.key\n"
                       "tls-ca = /etc/altgrad/ca.pem\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    ag_config cfg;
    char err[256];
    const char *argv[] = {"altgradd", "--config", path};
    int rc = load(&cfg, err, 3, argv);
    cr_assert_eq(rc, AG_OK, "%s", err);
    cr_expect(cfg.allow_remote_tcp);
    cr_expect_eq(cfg.ningest, 2);
    cr_expect_str_eq(cfg.tls_key, "/etc/altgrad/daemon.key");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("allow-remote-tcp = maybe\n", f);
    fclose(f);
    cr_expect_eq(load(&cfg, err, 3, argv), AG_EINVAL);
    cr_expect(strstr(err, "true or false"), "%s", err);
    unlink(path);
}

Test(config, formats_take_the_new_built_ins_and_unscaled_twins) {
    ag_config cfg;
    char err[256] = "";
    const char *argv[] = {"altgradd", "--formats", "E5M2,E4M3,BF16:unscaled,FP16-unscaled,E2M1"};
    cr_assert_eq(load(&cfg, err, 3, argv), AG_OK, "%s", err);
    cr_assert_eq(cfg.nfmts, 5);
    cr_expect_str_eq(cfg.fmts[1]->name, "E4M3");
    cr_expect_str_eq(cfg.fmts[2]->name, "BF16-unscaled");
    cr_expect(cfg.fmts[2]->unscaled && cfg.fmts[3]->unscaled && !cfg.fmts[0]->unscaled);
    cr_expect_str_eq(cfg.fmts[3]->name, "FP16-unscaled");
    /* the list as the registry names it: what status reports */
    cr_expect_str_eq(cfg.formats, "E5M2,E4M3,BF16-unscaled,FP16-unscaled,E2M1");
    const char *twice[] = {"altgradd", "--formats", "BF16:unscaled,BF16-unscaled"};
    cr_expect_eq(load(&cfg, err, 3, twice), AG_EINVAL);
    cr_expect_not_null(strstr(err, "given twice"), "%s", err);
    const char *unknown[] = {"altgradd", "--formats", "NOPE:unscaled"};
    cr_expect_eq(load(&cfg, err, 3, unknown), AG_EINVAL);
    cr_expect_not_null(strstr(err, "unknown format 'NOPE'"), "%s", err);
    const char *longname[] = {"altgradd", "--define-format", "E5M10long=5,10,15,inf,nan",
                              "--formats", "E5M10long:unscaled"};
    cr_expect_eq(load(&cfg, err, 5, longname), AG_EINVAL);
    cr_expect_not_null(strstr(err, "must fit 15"), "%s", err);
}
