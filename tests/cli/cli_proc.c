/*
 * cli_proc.c - subprocesses and the real daemon for the CLI's end-to-end
 * tests (see cli_proc.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli_proc.h"

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

extern char **environ;

#define DAEMON_ARGS_MAX 32

void cli_pause(void) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

char *cli_slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    if (f == NULL) return strdup("");
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

/* Spawns argv with stdout/stderr to the files named; returns the pid. */
static pid_t spawn(char *const argv[], const char *out_path, const char *err_path) {
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

static int wait_exit(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0) cr_assert_eq(errno, EINTR);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int cli_run(const cli_env *e, char *const argv[], char **out, char **err) {
    char op[128], ep[128];
    int code;
    snprintf(op, sizeof op, "%s/out.txt", e->dir);
    snprintf(ep, sizeof ep, "%s/err.txt", e->dir);
    code = wait_exit(spawn(argv, op, ep));
    *out = cli_slurp(op);
    *err = cli_slurp(ep);
    return code;
}

void cli_assert_one_error_line(const char *err) {
    size_t n = strlen(err);
    cr_assert_eq(strncmp(err, "altgrad: ", 9), 0, "stderr: %s", err);
    cr_assert(n > 9 && err[n - 1] == '\n', "stderr: %s", err);
    cr_assert_null(memchr(err, '\n', n - 1), "more than one line: %s", err);
}

void cli_start_daemon(cli_env *e, const char *const *extra) {
    char log[128], out[128];
    /* No HTTP: parallel test daemons must not race for port 8787. */
    char *argv[DAEMON_ARGS_MAX] = {e->daemon_bin, "--ingest", e->ingest, "--query", e->query,
                                   "--db",        e->db,      "--http",  "off"};
    size_t n = 9, i;
    for (i = 0; extra != NULL && extra[i] != NULL; i++) {
        cr_assert_lt(n + 1, DAEMON_ARGS_MAX, "too many daemon arguments");
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    snprintf(out, sizeof out, "%s/daemon.out", e->dir);
    snprintf(log, sizeof log, "%s/daemon.log", e->dir);
    e->daemon_pid = spawn(argv, out, log);
    for (i = 0; i < CLI_POLL_TRIES; i++) {
        char *o, *er;
        char *st[] = {e->cli, "--query", e->query, "--timeout", "500", "status", NULL};
        int code, status;
        cr_assert_eq(waitpid(e->daemon_pid, &status, WNOHANG), 0, "altgradd exited early: %s",
                     cli_slurp(log));
        code = cli_run(e, st, &o, &er);
        free(o);
        free(er);
        if (code == 0) return;
        cli_pause();
    }
    cr_assert_fail("altgradd never answered on %s", e->query);
}

int cli_stop_daemon(cli_env *e) {
    int code;
    if (e->daemon_pid <= 0) return -1;
    kill(e->daemon_pid, SIGTERM);
    code = wait_exit(e->daemon_pid);
    e->daemon_pid = -1;
    return code;
}

void cli_env_init(cli_env *e) {
    const char *build = getenv("AG_BUILD_DIR");
    memset(e, 0, sizeof *e);
    e->daemon_pid = -1;
    cr_assert_not_null(build, "AG_BUILD_DIR is not set (run through ctest)");
    snprintf(e->dir, sizeof e->dir, "/tmp/ag-cli-XXXXXX");
    cr_assert_not_null(mkdtemp(e->dir));
    snprintf(e->ingest, sizeof e->ingest, "ipc://%s/ingest.sock", e->dir);
    snprintf(e->query, sizeof e->query, "ipc://%s/query.sock", e->dir);
    snprintf(e->db, sizeof e->db, "%s/altgrad.db", e->dir);
    snprintf(e->cli, sizeof e->cli, "%s/client/cli/altgrad", build);
    snprintf(e->daemon_bin, sizeof e->daemon_bin, "%s/daemon/altgradd", build);
    snprintf(e->trainer, sizeof e->trainer, "%s/examples/ag_mlp_train", build);
}

void cli_env_fini(cli_env *e) {
    char cmd[128];
    if (e->daemon_pid > 0) {
        kill(e->daemon_pid, SIGKILL);
        waitpid(e->daemon_pid, NULL, 0);
        e->daemon_pid = -1;
    }
    if (e->dir[0] != '\0') {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", e->dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", e->dir);
    }
}
