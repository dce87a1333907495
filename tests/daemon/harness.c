/*
 * harness.c - the real-daemon harness of the integration tests (harness.h).
 * Readiness comes from the daemon's own sd_notify datagram, so no test
 * sleeps for timing; waits for data are polls with a generous deadline.
 */
#define _GNU_SOURCE /* tgkill by syscall, for the watchdog */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/daemon/harness.h"
#include "tests/tmpdir.h"

void harness_init(ag_harness *h) {
    memset(h, 0, sizeof *h);
    h->notify_fd = -1;
    strcpy(h->dir, "/tmp/ag_daemon_XXXXXX");
    cr_assert_not_null(mkdtemp(h->dir));
    snprintf(h->ingest, sizeof h->ingest, "ipc://%s/ingest.sock", h->dir);
    snprintf(h->query, sizeof h->query, "ipc://%s/query.sock", h->dir);
    snprintf(h->db, sizeof h->db, "%s/altgrad.db", h->dir);
    snprintf(h->notify, sizeof h->notify, "%s/notify.sock", h->dir);
    snprintf(h->log, sizeof h->log, "%s/altgradd.log", h->dir);
    h->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(h->notify_fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, h->notify);
    cr_assert_eq(bind(h->notify_fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static const char *daemon_path(void) {
    static char path[512];
    const char *b = getenv("AG_BUILD_DIR");
    snprintf(path, sizeof path, "%s/daemon/altgradd", b ? b : ".");
    return path;
}

/* ---- watchdog: a test still running near Criterion's --timeout (120 s)
 * prints every thread's stack to stderr before it is killed, so a rare
 * hang leaves a trace in the CI log (-rdynamic gives the names). */

#define WATCHDOG_S 100

static void watchdog_trace(int sig) {
    (void)sig;
    void *frames[64];
    char line[64];
    int n = backtrace(frames, 64);
    int len = snprintf(line, sizeof line, "---- thread %ld:\n", (long)syscall(SYS_gettid));
    if (len > 0 && write(2, line, (size_t)len) < 0) return;
    backtrace_symbols_fd(frames, n, 2);
}

static void *watchdog_main(void *arg) {
    (void)arg;
    struct timespec left = {WATCHDOG_S, 0};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {}
    char line[160];
    int len = snprintf(line, sizeof line,
                       "harness: test process %d still running after %d s; every thread's "
                       "stack:\n",
                       (int)getpid(), WATCHDOG_S);
    if (len > 0 && write(2, line, (size_t)len) < 0) return NULL;
    DIR *dir = opendir("/proc/self/task");
    struct dirent *de;
    long self = (long)syscall(SYS_gettid);
    while (dir && (de = readdir(dir))) {
        long tid = atol(de->d_name);
        if (tid <= 0 || tid == self) continue;
        syscall(SYS_tgkill, (long)getpid(), tid, SIGUSR2);
        struct timespec pause = {0, 100 * 1000000L}; /* one thread's trace at a time */
        nanosleep(&pause, NULL);
    }
    if (dir) closedir(dir);
    return NULL;
}

/* Once per test process (Criterion runs each test in its own). */
static void watchdog_start(void) {
    static int started;
    if (started) return;
    started = 1;
    void *warm[2];
    backtrace(warm, 2); /* loads libgcc now, not in the handler */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watchdog_trace;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog_main, NULL) == 0) pthread_detach(t);
}

void harness_start(ag_harness *h, const char *const *extra) {
    watchdog_start();
    /* No HTTP unless a test asks for it (extra comes later and wins), so
     * parallel test daemons never race for the default port 8787. */
    const char *argv[32] = {daemon_path(), "--ingest",    h->ingest, "--query", h->query, "--db",
                            h->db,         "--log-level", "notice",  "--http",  "off"};
    size_t argc = 11;
    for (size_t i = 0; extra && extra[i] && argc < 31; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) dup2(fd, 2);
        setenv("NOTIFY_SOCKET", h->notify, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    h->pid = pid;
    /* READY=1 (or the daemon's death) within 30 s. */
    for (int waited = 0; waited < 30000; waited += 100) {
        struct pollfd p = {.fd = h->notify_fd, .events = POLLIN};
        if (poll(&p, 1, 100) == 1) {
            char buf[512];
            ssize_t n = recv(h->notify_fd, buf, sizeof buf - 1, 0);
            if (n > 0) {
                buf[n] = '\0';
                if (strstr(buf, "READY=1")) return;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            h->pid = 0;
            cr_assert_fail("altgradd exited during startup (status %d); see %s", st, h->log);
        }
    }
    cr_assert_fail("altgradd not ready within 30 s");
}

int harness_stop(ag_harness *h, int sig) {
    if (!h->pid) return -1;
    kill(h->pid, sig);
    int st = 0;
    while (waitpid(h->pid, &st, 0) < 0 && errno == EINTR) {}
    h->pid = 0;
    return st;
}

void harness_fini(ag_harness *h) {
    if (h->pid) harness_stop(h, SIGKILL);
    if (h->notify_fd >= 0) close(h->notify_fd);
    ag_tmpdir_remove(h->dir);
}

ag_client *harness_client(ag_harness *h, const char *run, int policy) {
    return harness_client_as(h, run, policy, 0, NULL);
}

ag_client *harness_client_as(ag_harness *h, const char *run, int policy, int resume,
                             const char *launch_id) {
    ag_client_opts o = {.ingest_url = h->ingest,
                        .query_url = h->query,
                        .run = run,
                        .policy = policy,
                        .query_timeout_ms = 10000,
                        .resume = resume,
                        .launch_id = launch_id};
    ag_client *c = NULL;
    int err = ag_client_open(&c, &o);
    cr_assert_eq(err, AG_OK, "client open: %s", ag_strerror(err));
    return c;
}

ag_history *harness_wait_history(ag_client *c, const char *run, const char *tensor,
                                 const char *format, size_t n) {
    ag_history_query q = {.run = run, .tensor = tensor, .format = format};
    for (int i = 0; i < 3000; i++) {
        ag_history *hist = NULL;
        int err = ag_client_history(c, &q, &hist);
        if (err == AG_OK && hist->n >= n) return hist;
        if (err == AG_OK)
            ag_free(hist);
        else if (err != AG_ENOTFOUND)
            cr_assert_fail("history query: %s (%s)", ag_strerror(err), ag_client_last_error(c));
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL); /* poll interval, not a timing assumption */
    }
    cr_assert_fail("history of %s/%s never reached %zu points", run, tensor, n);
    return NULL;
}

int harness_free_tcp_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

int harness_http_port(const ag_harness *h) {
    FILE *f = fopen(h->log, "r");
    cr_assert_not_null(f);
    char line[512];
    int port = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "on http://127.0.0.1:");
        if (p) port = atoi(p + strlen("on http://127.0.0.1:"));
    }
    fclose(f);
    cr_assert_gt(port, 0, "no http line in %s", h->log);
    return port;
}

char *harness_http_get(ag_harness *h, const char *target) {
    int port = harness_http_port(h);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     target);
    cr_assert_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    size_t cap = 1 << 16, got = 0;
    char *raw = malloc(cap);
    cr_assert_not_null(raw);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 30000), 1, "no answer within 30 s");
        if (got + 1 == cap) {
            raw = realloc(raw, cap *= 2);
            cr_assert_not_null(raw);
        }
        ssize_t k = recv(fd, raw + got, cap - got - 1, 0);
        if (k <= 0) break;
        got += (size_t)k;
    }
    raw[got] = '\0';
    close(fd);
    cr_assert(strncmp(raw, "HTTP/1.1 200 ", 13) == 0, "GET %s: %.200s", target, raw);
    const char *body = strstr(raw, "\r\n\r\n");
    cr_assert_not_null(body);
    memmove(raw, body + 4, strlen(body + 4) + 1);
    return raw;
}

double harness_metric(ag_harness *h, const char *name) {
    char *body = harness_http_get(h, "/metrics");
    size_t n = strlen(name);
    double v = NAN;
    for (const char *p = body; (p = strstr(p, name)); p += n)
        if ((p == body || p[-1] == '\n') && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    free(body);
    return v;
}
