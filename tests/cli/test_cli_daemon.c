/*
 * test_cli_daemon.c - end to end: the real altgradd on temporary sockets and
 * database, the demo trainer ag_mlp_train streaming into it, and the altgrad
 * CLI run as a subprocess against the daemon and against the database file
 * (--db), its JSON parsed and checked. Needs $AG_BUILD_DIR (set by ctest).
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json_mini.h"

extern char **environ;

#define STEPS 6
#define POLL_TRIES 300 /* x 50 ms: a bound on waiting, not a timing assertion */

static char dir[64];
static char ingest_url[128], query_url[128], db_path[128];
static char cli[512], daemon_bin[512], trainer[512];
static pid_t daemon_pid = -1;

static void pause_briefly(void)
{
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    if (f == NULL)
        return strdup("");
    do {
        if (len + 4096 + 1 > cap) {
            char *g;
            cap = cap ? cap * 2 : 8192;
            g = realloc(buf, cap);
            cr_assert_not_null(g);
            buf = g;
        }
        got = fread(buf + len, 1, 4096, f);
        len += got;
    } while (got > 0);
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* Spawns argv with stdout/stderr to files in dir; returns the pid. */
static pid_t spawn(char *const argv[], const char *out_path, const char *err_path)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int rc;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "cannot start %s: %s", argv[0], strerror(rc));
    return pid;
}

static int wait_exit(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        cr_assert_eq(errno, EINTR);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* Runs argv to completion; *out and *err get its output (free them). */
static int run(char *const argv[], char **out, char **err)
{
    char op[128], ep[128];
    int code;
    snprintf(op, sizeof op, "%s/out.txt", dir);
    snprintf(ep, sizeof ep, "%s/err.txt", dir);
    code = wait_exit(spawn(argv, op, ep));
    *out = slurp(op);
    *err = slurp(ep);
    return code;
}

/* Exactly one line, prefixed as the CLI promises. */
static void assert_one_error_line(const char *err)
{
    size_t n = strlen(err);
    cr_assert_eq(strncmp(err, "altgrad: ", 9), 0, "stderr: %s", err);
    cr_assert(n > 9 && err[n - 1] == '\n', "stderr: %s", err);
    cr_assert_null(memchr(err, '\n', n - 1), "more than one line: %s", err);
}

static void start_daemon(void)
{
    char log[128], out[128];
    /* No HTTP: parallel test daemons must not race for port 8787. */
    char *argv[] = {daemon_bin, "--ingest", ingest_url, "--query", query_url,
                    "--db", db_path, "--http", "off", NULL};
    int i;
    snprintf(out, sizeof out, "%s/daemon.out", dir);
    snprintf(log, sizeof log, "%s/daemon.log", dir);
    daemon_pid = spawn(argv, out, log);
    for (i = 0; i < POLL_TRIES; i++) {
        char *o, *e;
        char *st[] = {cli, "--query", query_url, "--timeout", "500", "status", NULL};
        int code, status;
        cr_assert_eq(waitpid(daemon_pid, &status, WNOHANG), 0, "altgradd exited early: %s",
                     slurp(log));
        code = run(st, &o, &e);
        free(o);
        free(e);
        if (code == 0)
            return;
        pause_briefly();
    }
    cr_assert_fail("altgradd never answered on %s", query_url);
}

static int stop_daemon(void)
{
    int code;
    if (daemon_pid <= 0)
        return -1;
    kill(daemon_pid, SIGTERM);
    code = wait_exit(daemon_pid);
    daemon_pid = -1;
    return code;
}

static void setup(void)
{
    const char *build = getenv("AG_BUILD_DIR");
    cr_assert_not_null(build, "AG_BUILD_DIR is not set (run through ctest)");
    snprintf(dir, sizeof dir, "/tmp/ag-cli-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(ingest_url, sizeof ingest_url, "ipc://%s/ingest.sock", dir);
    snprintf(query_url, sizeof query_url, "ipc://%s/query.sock", dir);
    snprintf(db_path, sizeof db_path, "%s/altgrad.db", dir);
    snprintf(cli, sizeof cli, "%s/client/cli/altgrad", build);
    snprintf(daemon_bin, sizeof daemon_bin, "%s/daemon/altgradd", build);
    snprintf(trainer, sizeof trainer, "%s/examples/ag_mlp_train", build);
}

static void teardown(void)
{
    char cmd[128];
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = -1;
    }
    if (dir[0] != '\0') {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    }
}

static void check_point_keys(const jm_value *p)
{
    static const char *const keys[] = {"step", "stalled", "total", "stall_rate", "flips",
                                       "overflow", "underflow", "amax", "scale"};
    size_t i;
    cr_assert_eq(p->type, JM_OBJECT);
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const jm_value *v = jm_get(p, keys[i]);
        cr_assert_not_null(v, "point lacks '%s'", keys[i]);
        cr_assert_eq(v->type, JM_NUMBER, "'%s' is not a number", keys[i]);
    }
}

/* `altgrad history` of fc1.weight until all STEPS points are committed. */
static char *history_json(const char *source_flag, const char *source)
{
    char *argv[] = {cli, (char *)source_flag, (char *)source, "history", "t1", "fc1.weight",
                    "--json", NULL};
    int i;
    for (i = 0; i < POLL_TRIES; i++) {
        char *out, *err;
        int code = run(argv, &out, &err);
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
        pause_briefly();
    }
    cr_assert_fail("history of fc1.weight never reached %d points", STEPS);
    return NULL;
}

Test(cli_daemon, trainer_data_reads_the_same_through_the_daemon_and_the_db_file,
     .init = setup, .fini = teardown, .timeout = 240)
{
    char *out, *err, *via_daemon, *via_db;
    char *train[] = {trainer, "--ingest", ingest_url, "--query", query_url, "--run", "t1",
                     "--steps", "6", "--hidden", "8", "--batch", "16", NULL};
    jm_value *doc;
    const jm_value *pts;
    size_t i;
    int code;

    start_daemon();
    code = run(train, &out, &err);
    cr_assert_eq(code, 0, "trainer failed: %s", err);
    cr_assert_not_null(strstr(out, "loss"), "trainer printed no loss: %s", out);
    free(out);
    free(err);

    via_daemon = history_json("--query", query_url);
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
    via_db = history_json("--db", db_path);
    cr_assert_str_eq(via_db, via_daemon);

    /* the other commands answer, in every mode */
    {
        char *tensors[] = {cli, "tensors", "t1", "--query", query_url, "--json", NULL};
        const jm_value *list;
        int found = 0;
        code = run(tensors, &out, &err);
        cr_assert_eq(code, 0, "tensors: %s", err);
        doc = jm_parse(out);
        cr_assert_not_null(doc, "tensors --json: %s", out);
        list = jm_get(doc, "tensors");
        cr_assert_not_null(list);
        for (i = 0; i < list->n; i++)
            if (strcmp(jm_get(&list->items[i], "name")->string, "fc3.bias") == 0)
                found = 1;
        cr_assert(found, "fc3.bias missing from %s", out);
        jm_free(doc);
        free(out);
        free(err);
    }
    {
        char *runs[] = {cli, "--csv", "--db", db_path, "runs", NULL};
        code = run(runs, &out, &err);
        cr_assert_eq(code, 0, "runs: %s", err);
        cr_assert_eq(strncmp(out, "name,host,pid,", 14), 0, "csv header: %s", out);
        cr_assert_not_null(strstr(out, "\nt1,"), "run t1 missing: %s", out);
        free(out);
        free(err);
    }
    {
        char *top[] = {cli, "--query", query_url, "top", "t1", "--format", "E3M4", "--json",
                       NULL};
        code = run(top, &out, &err);
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
        char *report[] = {cli, "--query", query_url, "report", "t1", NULL};
        code = run(report, &out, &err);
        cr_assert_eq(code, 0, "report: %s", err);
        cr_assert_not_null(strstr(out, "fc2.weight"), "report: %s", out);
        cr_assert_not_null(strstr(out, "\xe2\x96"), "report has no sparkline: %s", out);
        free(out);
        free(err);
    }
    {
        char *unknown[] = {cli, "--query", query_url, "tensors", "no-such-run", NULL};
        code = run(unknown, &out, &err);
        cr_assert_eq(code, 1, "unknown run must exit 1, got %d", code);
        assert_one_error_line(err);
        free(out);
        free(err);
    }

    cr_assert_eq(stop_daemon(), 0, "altgradd did not exit cleanly on SIGTERM");

    /* with the daemon gone: the file still answers, the socket does not */
    free(via_db);
    via_db = history_json("--db", db_path);
    cr_assert_str_eq(via_db, via_daemon);
    {
        /* no daemon: the answer comes at once, naming the socket, though the
         * timeout would allow a minute (a wait would outlast the test) */
        char *status[] = {cli, "--query", query_url, "--timeout", "60000", "status", NULL};
        code = run(status, &out, &err);
        cr_assert_eq(code, 1, "no daemon must exit 1, got %d", code);
        assert_one_error_line(err);
        cr_assert_not_null(strstr(err, query_url + strlen("ipc://")),
                           "the error does not name the socket: %s", err);
        cr_assert(strstr(err, "not found") || strstr(err, "connection refused"),
                  "the error does not say why: %s", err);
        free(out);
        free(err);
    }
    free(via_db);
    free(via_daemon);
}

Test(cli_daemon, usage_errors_exit_2_with_one_line, .init = setup, .fini = teardown)
{
    char *cases[][8] = {
        {cli, "history", "t1", NULL},
        {cli, "frobnicate", NULL},
        {cli, "top", "t1", "--window", "-3", NULL},
        {cli, "--db", "x.db", "--query", "ipc:///nowhere", "runs", NULL},
        {cli, NULL},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out, *err;
        int code = run(cases[i], &out, &err);
        cr_assert_eq(code, 2, "case %zu: exit %d", i, code);
        assert_one_error_line(err);
        cr_assert_str_eq(out, "", "case %zu printed to stdout", i);
        free(out);
        free(err);
    }
}

Test(cli_daemon, missing_database_file_is_one_error_line, .init = setup, .fini = teardown)
{
    char path[128], *out, *err;
    char *argv[] = {cli, "--db", path, "runs", NULL};
    int code;
    snprintf(path, sizeof path, "%s/none.db", dir);
    code = run(argv, &out, &err);
    cr_assert_eq(code, 1, "exit %d", code);
    assert_one_error_line(err);
    free(out);
    free(err);
}
