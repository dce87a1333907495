/*
 * test_stray.c - stray and hostile connections on every nng listener of the
 * real daemon (ipc and tcp, ingest and query) must not stop it serving.
 *
 * nng 1.5.2 (Debian 12's) stops accepting on an ipc or tls listener for good
 * once one peer disconnects during the SP handshake (nng #1518): a health
 * check's connect-and-close silently broke altgradd. We build nng with a fix
 * (scripts/build-nng.sh, docs/nng.md); these tests are its regression tests:
 * raw connect-and-close, half handshakes from either side, garbage and wrong-
 * protocol headers, an oversized first frame and a connection left open, on
 * each listener, then a query and a real trainer's snapshots through every
 * listener, and no daemon thread busy while it is idle.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/daemon/harness.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(stray, .init = setup, .fini = teardown, .timeout = 240);

/* SP protocol numbers (nng's pipeline0 PUSH/PULL and reqrep0 REQ/REP). */
#define SP_PUSH 0x50
#define SP_REQ 0x30
#define SP_PAIR 0x10

/* A raw stream connection to an nng URL (ipc://PATH or tcp://127.0.0.1:P),
 * below nng: what a port scanner, a health check or a confused program does. */
static int raw_connect(const char *url) {
    int fd;
    if (strncmp(url, "ipc://", 6) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        cr_assert_lt(strlen(url + 6), sizeof a.sun_path);
        strcpy(a.sun_path, url + 6);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect %s: %s", url,
                     strerror(errno));
    } else {
        const char *colon = strrchr(url, ':');
        cr_assert(strncmp(url, "tcp://127.0.0.1:", 16) == 0 && colon);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)atoi(colon + 1)),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect %s: %s", url,
                     strerror(errno));
    }
    return fd;
}

static void send_all(int fd, const void *buf, size_t n) {
    /* The daemon may already have closed a hostile connection: a short or
     * failed write is part of the attack, not a test failure. */
    (void)!send(fd, buf, n, MSG_NOSIGNAL);
}

static void sp_header(uint8_t h[8], int proto) {
    const uint8_t v[8] = {0, 'S', 'P', 0, (uint8_t)(proto >> 8), (uint8_t)proto, 0, 0};
    memcpy(h, v, 8);
}

/* Read what the daemon sends within a short bounded wait (its SP header). */
static void drain_some(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[64];
    if (poll(&p, 1, 200) == 1) (void)!recv(fd, buf, sizeof buf, MSG_DONTWAIT);
}

/* Every kind of stray connection, against one listener whose SP protocol
 * peer is `proto`. Returns a connection left open for the caller to close
 * after the checks (a client that connected and went quiet). */
static int attack(const char *url, int proto) {
    uint8_t h[8];
    for (int i = 0; i < 8; i++) close(raw_connect(url)); /* connect and close at once */

    int fd = raw_connect(url); /* half a header, then gone */
    send_all(fd, "\0SP", 3);
    close(fd);

    fd = raw_connect(url); /* read the daemon's header, send nothing, close */
    drain_some(fd);
    close(fd);

    fd = raw_connect(url); /* garbage where the header goes */
    send_all(fd, "GET / HTTP/1.1\r\n\r\n", 18);
    drain_some(fd);
    close(fd);

    fd = raw_connect(url); /* a well-formed header of the wrong protocol */
    sp_header(h, SP_PAIR);
    send_all(fd, h, 8);
    drain_some(fd);
    close(fd);

    fd = raw_connect(url); /* the right protocol, then an absurd first frame */
    sp_header(h, proto);
    send_all(fd, h, 8);
    drain_some(fd);
    const uint8_t frame[9] = {1, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (strncmp(url, "ipc://", 6) == 0)
        send_all(fd, frame, 9); /* ipc: type byte + length */
    else
        send_all(fd, frame + 1, 8); /* tcp: length only */
    drain_some(fd);
    close(fd);

    fd = raw_connect(url); /* the right header, then the peer resets */
    sp_header(h, proto);
    send_all(fd, h, 4);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);

    return raw_connect(url); /* connected, silent, kept open */
}

/* CPU time (ticks) the daemon's threads used so far. */
static unsigned long long daemon_ticks(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* fields after the command name */
    cr_assert_not_null(p);
    unsigned long long utime = 0, stime = 0;
    /* ") S ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime" */
    cr_assert_eq(
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime), 2);
    return utime + stime;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* An idle daemon uses (almost) no CPU: a thread spinning in nng after a bad
 * handshake would use a whole core. Measured over 2 s of idling, a bound of
 * a quarter of a core separates the two by far on any machine. */
static void expect_idle(void) {
    long hz = sysconf(_SC_CLK_TCK);
    unsigned long long t0 = daemon_ticks(H.pid);
    sleep_ms(2000);
    unsigned long long used = daemon_ticks(H.pid) - t0;
    cr_expect_lt(used, (unsigned long long)(hz * 2 / 4),
                 "idle daemon used %llu ticks of CPU in 2 s (%ld ticks/s): a thread spins", used,
                 hz);
}

/* A query answers, and a trainer's snapshots arrive through `ingest`. */
static void expect_serving(const char *ingest, const char *query, const char *run) {
    ag_client_opts o = {.ingest_url = ingest,
                        .query_url = query,
                        .run = run,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    ag_status *st = NULL;
    int err = ag_client_status(c, &st);
    cr_assert_eq(err, AG_OK, "status through %s after stray connections: %s (%s)", query,
                 ag_strerror(err), ag_client_last_error(c));
    ag_free(st);
    float w[64], g[64];
    for (int i = 0; i < 64; i++) {
        w[i] = 0.5f + 0.01f * (float)i;
        g[i] = 1e-3f * (float)(i % 5);
    }
    for (uint64_t s = 1; s <= 3; s++)
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, 64, 0.01f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 10000), AG_OK);
    ag_history *hist = harness_wait_history(c, run, "w", "E5M2", 3);
    cr_expect_eq(hist->n, 3);
    ag_free(hist);
    ag_client_close(c);
}

static void run_attacks(const char *const *ingest, size_t ningest, const char *query) {
    int open_fds[8];
    size_t nopen = 0;
    /* Twice over, so a listener that survives one round but not a second
     * (state left behind by the first) is caught too. */
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < ningest; i++) {
            int fd = attack(ingest[i], SP_PUSH);
            if (round == 0)
                open_fds[nopen++] = fd;
            else
                close(fd);
        }
        int fd = attack(query, SP_REQ);
        if (round == 0)
            open_fds[nopen++] = fd;
        else
            close(fd);
    }
    for (size_t i = 0; i < ningest; i++) {
        char run[48];
        snprintf(run, sizeof run, "after-stray-%zu", i);
        expect_serving(ingest[i], query, run);
    }
    expect_idle();
    for (size_t i = 0; i < nopen; i++) close(open_fds[i]);
    /* And once more after the silent connections went away. */
    expect_serving(ingest[0], query, "after-close");
}

Test(stray, ipc_and_tcp_ingest_ipc_query) {
    char tcp_ingest[64];
    snprintf(tcp_ingest, sizeof tcp_ingest, "tcp://127.0.0.1:%d", harness_free_tcp_port());
    const char *extra[] = {"--ingest", tcp_ingest, NULL};
    harness_start(&H, extra);
    const char *ingest[] = {H.ingest, tcp_ingest};
    run_attacks(ingest, 2, H.query);
    cr_expect_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

Test(stray, tcp_query) {
    char tcp_query[64];
    snprintf(tcp_query, sizeof tcp_query, "tcp://127.0.0.1:%d", harness_free_tcp_port());
    const char *extra[] = {"--query", tcp_query, NULL};
    harness_start(&H, extra);
    const char *ingest[] = {H.ingest};
    run_attacks(ingest, 1, tcp_query);
    cr_expect_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}
