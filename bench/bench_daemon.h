/*
 * bench_daemon.h - for the benchmarks: find a build product and run the real
 * altgradd on a temporary folder's sockets and database, waiting for its
 * READY=1 on a notify socket as systemd would.
 */
#ifndef AG_BENCH_DAEMON_H
#define AG_BENCH_DAEMON_H

#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct bench_daemon {
    char dir[64], ingest[128], query[128], db[128];
    pid_t pid;
} bench_daemon;

/* $AG_BUILD_DIR/rel, else rel in the build folder above this binary. */
static inline void bench_build_path(char *out, size_t len, const char *rel) {
    const char *b = getenv("AG_BUILD_DIR");
    if (b) {
        snprintf(out, len, "%s/%s", b, rel);
        return;
    }
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    snprintf(out, len, "%s/../%s", dirname(exe), rel);
}

/* Fill d's sockets and database path inside d->dir (made by the caller). */
static inline void bench_daemon_paths(bench_daemon *d) {
    snprintf(d->ingest, sizeof d->ingest, "ipc://%s/in.sock", d->dir);
    snprintf(d->query, sizeof d->query, "ipc://%s/q.sock", d->dir);
    snprintf(d->db, sizeof d->db, "%s/a.db", d->dir);
}

/* Start altgradd on d's paths with HTTP off and the options in extra
 * (NULL-terminated, at most 16), and wait up to a minute for READY=1.
 * 0 when it runs; -1 (said on stderr, as who) when it did not start. */
static inline int bench_daemon_start(bench_daemon *d, const char *const *extra, const char *who) {
    char notify[128], path[600];
    const char *argv[32];
    size_t k = 0;
    snprintf(notify, sizeof notify, "%s/notify.sock", d->dir);
    unlink(notify);
    bench_build_path(path, sizeof path, "daemon/altgradd");
    argv[k++] = path;
    const char *fixed[] = {"--ingest", d->ingest, "--query", d->query,
                           "--db",     d->db,     "--http",  "off"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) argv[k++] = fixed[i];
    for (size_t i = 0; extra && extra[i] && i < 16; i++) argv[k++] = extra[i];
    argv[k] = NULL;
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, notify);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    d->pid = fork();
    if (d->pid == 0) {
        setenv("NOTIFY_SOCKET", notify, 1);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; d->pid > 0 && i < 600; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char buf[256];
        if (poll(&p, 1, 100) == 1) {
            ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
            if (n > 0 && (buf[n] = '\0', strstr(buf, "READY=1"))) {
                close(fd);
                return 0;
            }
        }
    }
    close(fd);
    fprintf(stderr, "%s: %s did not start\n", who, path);
    return -1;
}

/* SIGTERM, and wait for it to exit. */
static inline void bench_daemon_stop(bench_daemon *d) {
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
}

#endif
