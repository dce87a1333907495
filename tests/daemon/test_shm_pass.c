/*
 * test_shm_pass.c - the descriptor socket beside the ingest socket
 * (proto/shm.h, PROTOCOL.md 3.3.2) against the real daemon: a trainer of
 * another user passes its segment and its snapshots go through shared
 * memory with the results they have through the socket; hostile requests
 * are refused, leak no descriptor and do not stop the socket serving; a
 * passed segment stays mapped while its lease lasts and goes after; the
 * daemon's /metrics counts segments, snapshots read from them and refusals.
 */
#define _GNU_SOURCE

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/shm.h"
#include "tests/daemon/harness.h"
#include "tests/sql_results.h"
#include "tests/daemon/results_dump.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(shm_pass, .init = setup, .fini = teardown, .timeout = 120);

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define NOBODY 65534

/* ------------------------------------------------------------- helpers */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The address of the descriptor socket beside the harness's ingest socket. */
static struct sockaddr_un side_addr(void) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(H.ingest + 6);
    cr_assert_lt(n + sizeof AG_SHM_PASS_SUFFIX, sizeof sa.sun_path);
    memcpy(sa.sun_path, H.ingest + 6, n);
    memcpy(sa.sun_path + n, AG_SHM_PASS_SUFFIX, sizeof AG_SHM_PASS_SUFFIX);
    return sa;
}

/* A connection to the descriptor socket. */
static int pass_connect(void) {
    struct sockaddr_un sa = side_addr();
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s", sa.sun_path,
                 strerror(errno));
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Send len bytes of data with nfds descriptors attached. */
static void send_with(int sock, const void *data, size_t len, const int *fds, int nfds) {
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(4 * sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {(void *)data, len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
        ch->cmsg_level = SOL_SOCKET;
        ch->cmsg_type = SCM_RIGHTS;
        ch->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(ch), fds, (size_t)nfds * sizeof(int));
    }
    cr_assert_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len, "sendmsg: %s", strerror(errno));
}

/* The daemon's reply on sock (fails the test without one). */
static ag_shm_pass_reply reply_of(int sock) {
    ag_shm_pass_reply rp;
    memset(&rp, 0, sizeof rp);
    ssize_t got = recv(sock, &rp, sizeof rp, 0);
    cr_assert_eq(got, (ssize_t)sizeof rp, "reply: %zd (%s)", got, got < 0 ? strerror(errno) : "");
    cr_assert_eq(rp.magic, AG_SHM_REPLY_MAGIC);
    rp.why[sizeof rp.why - 1] = 0;
    return rp;
}

/* A memfd of size bytes (sealed with seals unless 0) whose header says
 * magic, token and hsize. */
static int make_segment(int seals, uint64_t size, uint64_t magic, uint64_t token, uint64_t hsize) {
    int fd = memfd_create("passed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq(p, MAP_FAILED);
    ag_shm_header *h = (ag_shm_header *)(void *)p;
    h->magic = magic;
    h->token = token;
    h->size = hsize;
    munmap(p, size);
    if (seals) cr_assert_eq(fcntl(fd, F_ADD_SEALS, seals), 0, "%s", strerror(errno));
    return fd;
}

/* Pass segment fd (token, size) on a new connection: the reply; *conn: the
 * connection (the lease when status is 0). */
static ag_shm_pass_reply pass(int fd, uint64_t token, uint64_t size, int *conn) {
    ag_shm_pass_request rq = {AG_SHM_PASS_MAGIC, token, size, 0};
    *conn = pass_connect();
    send_with(*conn, &rq, sizeof rq, &fd, 1);
    return reply_of(*conn);
}

/* The segment's ack word, read through a mapping of our own. */
static uint64_t ack_of(int fd) {
    uint8_t *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    cr_assert_neq(p, MAP_FAILED);
    uint64_t ack = ag_shm_load(&((ag_shm_header *)(void *)p)->ack);
    munmap(p, 4096);
    return ack;
}

/* Descriptors the daemon holds open on files whose name holds name (a
 * memfd passed to it, a file of the test's), and its mappings of them. */
static int daemon_fds(const char *name) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)H.pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d, "%s: %s", path, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char link[320], target[512];
        if (e->d_name[0] == '.') continue;
        snprintf(link, sizeof link, "%s/%s", path, e->d_name);
        ssize_t k = readlink(link, target, sizeof target - 1);
        if (k <= 0) continue;
        target[k] = 0;
        n += strstr(target, name) != NULL;
    }
    closedir(d);
    return n;
}

static int daemon_maps(const char *name) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)H.pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, name) != NULL;
    fclose(f);
    return n;
}

/* Whether the daemon's log holds text. */
static int log_has(const char *text) {
    FILE *f = fopen(H.log, "r");
    if (!f) return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

/* ------------------------------------- a trainer of another user */

#define XN 20000
#define XSTEPS 6
static const char *const XTENSORS[] = {"x.a", "x.b", "x.c"};

/* Log XSTEPS steps of the three tensors through a client with shm_bytes;
 * its stats in *st. Returns 0, or the failing call's number. */
static int log_steps(size_t shm_bytes, ag_client_stats *st) {
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "pass",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000,
                        .shm_bytes = shm_bytes};
    ag_client *c = NULL;
    if (ag_client_open(&c, &o) != AG_OK) return 1;
    static float w[XN], g[XN];
    int rc = 0;
    for (uint64_t s = 1; s <= XSTEPS && !rc; s++) {
        for (size_t t = 0; t < 3 && !rc; t++) {
            float amp = 1.0f + 0.5f * (float)s + (float)t;
            for (size_t i = 0; i < XN; i++) {
                w[i] = amp * sinf((float)i * 0.21f + (float)(s + t));
                g[i] = 1e-3f * cosf((float)i * 0.7f + (float)s) * (float)(1 + i % 5);
            }
            if (ag_client_log_sgd(c, s, XTENSORS[t], w, g, XN, 0.01f) != AG_OK) rc = 2;
        }
        if (!rc && ag_client_flush(c, 60000) != AG_OK) rc = 3;
    }
    if (!rc && ag_client_get_stats(c, st) != AG_OK) rc = 4;
    ag_client_close(c);
    return rc;
}

/* Wait for every tensor's history, stop the daemon, dump its results. */
static char *finish_run(void) {
    ag_client *obs = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    for (size_t t = 0; t < 3; t++)
        ag_free(harness_wait_history(obs, "pass", XTENSORS[t], "E5M2", XSTEPS));
    ag_client_close(obs);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    size_t rows = 0;
    char *out = results_dump(H.db, &rows);
    cr_assert_eq(rows, 3 * 5 * XSTEPS, "rows %zu", rows);
    char side[200];
    remove(H.db);
    snprintf(side, sizeof side, "%s-wal", H.db);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", H.db);
    remove(side);
    return out;
}

Test(shm_pass, a_trainer_of_another_user_passes_its_segment_and_gets_the_same_results) {
    if (geteuid() != 0) cr_skip_test("needs root, to run a trainer as another user");
    /* The trainer: user nobody, in group root (the sockets' group, as a
     * trainer of the service is in group altgrad). */
    cr_assert_eq(chmod(H.dir, 0750), 0);
    static const char *const info[] = {"--log-level", "info", NULL};
    harness_start(&H, info);
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        gid_t groups[1] = {0};
        if (setgroups(1, groups) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0) _exit(20);
        ag_client_stats st = {0};
        int rc = log_steps(0, &st);
        ssize_t wr = write(pfd[1], &st, sizeof st);
        _exit(rc ? rc : wr == (ssize_t)sizeof st ? 0 : 21);
    }
    close(pfd[1]);
    ag_client_stats st = {0};
    ssize_t got = read(pfd[0], &st, sizeof st);
    close(pfd[0]);
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "trainer exit status %d", status);
    cr_assert_eq(got, (ssize_t)sizeof st);
    cr_expect_eq(st.snapshots, 3 * XSTEPS);
    /* Passed at connect (a snapshot logged before the connection was up
     * goes in its message, as with a daemon of the trainer's own user):
     * after the first step's, every one went through the ring. */
    cr_expect_geq(st.shm_snapshots, 3 * (XSTEPS - 1), "shm_snapshots %llu of %d",
                  (unsigned long long)st.shm_snapshots, 3 * XSTEPS);
    char *passed = finish_run();
    cr_expect(log_has("passed by process"), "the daemon logged no passed segment");
    cr_expect(!log_has("not mapping"), "the daemon refused a segment");

    /* The same steps through the socket, by root. */
    harness_start(&H, NULL);
    ag_client_stats st2 = {0};
    cr_assert_eq(log_steps(AG_SHM_OFF, &st2), 0);
    cr_expect_eq(st2.shm_snapshots, 0);
    char *inline_ = finish_run();
    cr_expect_str_eq(passed, inline_, "results differ between shared memory and the socket");
    free(passed);
    free(inline_);
}

/* --------------------------------------------- hostile requests */

Test(shm_pass, hostile_requests_are_refused_leak_nothing_and_do_not_stop_the_socket) {
    harness_start(&H, NULL);
    const uint64_t SZ = AG_SHM_MIN_SIZE, TOKEN = 0x5eed5eed5eed0001ull;
    /* A good pass first, so the daemon's own descriptors have settled. */
    int warm_fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, TOKEN + 100, SZ), warm;
    cr_assert_eq(pass(warm_fd, TOKEN + 100, SZ, &warm).status, 0);

    /* A connection that says nothing: refused after its time, and it does
     * not hold up the others meanwhile. */
    int silent = pass_connect();
    int good_fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, TOKEN, SZ), lease;
    ag_shm_pass_reply rp = pass(good_fd, TOKEN, SZ, &lease);
    cr_assert_eq(rp.status, 0, "a good pass refused: %s", rp.why);
    cr_expect_eq(ack_of(good_fd), TOKEN, "mapped but not acknowledged");
    /* served while the silent one still waited (a daemon serving one
     * connection at a time would have given up on the silent one first) */
    char c;
    errno = 0;
    cr_expect(recv(silent, &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN,
              "the good pass was served only after the silent connection was dropped");
    cr_expect_eq(recv(silent, &c, 1, 0), 0, "the silent connection was not closed");
    close(silent);

    struct {
        const char *what;
        int nfds, kind; /* kind: 0 the good memfd, 1 a plain file, 2 unsealed, 3 wrong token,
                           4 too small, 5 sealed against growing only */
        ag_shm_pass_request rq;
        size_t len;
    } cases[] = {
        {"short", 1, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 8},
        {"no descriptor", 0, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"two descriptors", 2, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"bad magic", 1, 0, {AG_SHM_REPLY_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"flags", 1, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 1}, 32},
        {"token 0", 1, 0, {AG_SHM_PASS_MAGIC, 0, SZ, 0}, 32},
        {"size too small", 1, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, 4096, 0}, 32},
        {"size not pages", 1, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ + 8, 0}, 32},
        {"size too large", 1, 0, {AG_SHM_PASS_MAGIC, TOKEN + 1, AG_SHM_MAX_SIZE + 4096, 0}, 32},
        {"plain file", 1, 1, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"unsealed", 1, 2, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"header of another token", 1, 3, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
        {"smaller than it says", 1, 4, {AG_SHM_PASS_MAGIC, TOKEN + 1, 2 * SZ, 0}, 32},
        {"sealed against growing only", 1, 5, {AG_SHM_PASS_MAGIC, TOKEN + 1, SZ, 0}, 32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fd;
        uint64_t tok = cases[i].rq.token ? cases[i].rq.token : TOKEN + 1;
        switch (cases[i].kind) {
        case 1: {
            char path[200];
            snprintf(path, sizeof path, "%s/plain.XXXXXX", H.dir);
            fd = mkostemp(path, O_CLOEXEC);
            cr_assert_geq(fd, 0);
            unlink(path);
            cr_assert_eq(ftruncate(fd, (off_t)SZ), 0);
            break;
        }
        case 2: fd = make_segment(0, SZ, AG_SHM_MAGIC, tok, SZ); break;
        case 3: fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, tok + 1, SZ); break;
        case 4: fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, tok, 2 * SZ); break;
        case 5: fd = make_segment(F_SEAL_GROW, SZ, AG_SHM_MAGIC, tok, SZ); break;
        default: fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, tok, SZ); break;
        }
        int two[2] = {fd, fd}, conn = pass_connect();
        send_with(conn, &cases[i].rq, cases[i].len, two, cases[i].nfds);
        ag_shm_pass_reply r = reply_of(conn);
        cr_expect_neq(r.status, 0, "%s: accepted", cases[i].what);
        cr_expect_neq(r.why[0], 0, "%s: no reason given", cases[i].what);
        cr_expect_eq(recv(conn, &c, 1, 0), 0, "%s: the connection stays open", cases[i].what);
        cr_expect_eq(ack_of(fd), 0, "%s: acknowledged", cases[i].what);
        close(conn);
        close(fd);
    }

    /* Our token passed by another process: refused. */
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        int conn = pass_connect(), fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, TOKEN, SZ);
        ag_shm_pass_request rq = {AG_SHM_PASS_MAGIC, TOKEN, SZ, 0};
        send_with(conn, &rq, sizeof rq, &fd, 1);
        ag_shm_pass_reply r;
        _exit(recv(conn, &r, sizeof r, 0) == (ssize_t)sizeof r && r.status != 0 ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "another process's pass of our token was not refused");

    /* More connections than the daemon waits on at once. */
    enum { MANY = 100 };
    int many[MANY];
    for (int i = 0; i < MANY; i++) {
        struct sockaddr_un sa = side_addr();
        many[i] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        cr_assert_geq(many[i], 0);
        int rc = connect(many[i], (struct sockaddr *)&sa, sizeof sa);
        cr_assert(rc == 0 || errno == EAGAIN, "connect: %s", strerror(errno));
    }
    for (int i = 0; i < MANY; i++) close(many[i]);

    /* Still serving: a new segment passed. */
    int again_fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, TOKEN + 2, SZ), again;
    for (int tries = 0;; tries++) {
        rp = pass(again_fd, TOKEN + 2, SZ, &again);
        if (rp.status == 0 || tries > 50) break;
        close(again);
        sleep_ms(100);
    }
    cr_assert_eq(rp.status, 0, "no pass after the flood: %s", rp.why);
    /* Every descriptor that came with a request was closed: the daemon
     * holds its segments by their mappings alone. */
    cr_expect_eq(daemon_fds("memfd:"), 0, "the daemon keeps passed memfds open");
    cr_expect_eq(daemon_fds("plain."), 0, "the daemon keeps a passed plain file open");
    cr_expect_eq(daemon_maps("memfd:passed"), 3, "mapped: the three segments passed");
    cr_expect(log_has("not one descriptor"), "refusals are logged with their reason");
    close(lease);
    close(again);
    close(warm);
    close(good_fd);
    close(again_fd);
    close(warm_fd);
    status = harness_stop(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    struct sockaddr_un side = side_addr();
    cr_expect_neq(access(side.sun_path, F_OK), 0, "the descriptor socket's file is left behind");
}

/* ------------------------------------------------------- the lease */

Test(shm_pass, a_passed_segment_stays_mapped_while_its_lease_lasts_and_goes_after) {
    harness_start(&H, NULL);
    const uint64_t SZ = AG_SHM_MIN_SIZE, TOKEN = 0x1ea5e0001ull;
    int fd = make_segment(SEALS, SZ, AG_SHM_MAGIC, TOKEN, SZ), lease;
    ag_shm_pass_reply rp = pass(fd, TOKEN, SZ, &lease);
    cr_assert_eq(rp.status, 0, "%s", rp.why);
    cr_assert_eq(daemon_maps("memfd:passed"), 1, "not mapped once");

    /* Passed again on a new connection (a client that reconnected): one
     * mapping, and the old connection is closed by the daemon. */
    int lease2;
    rp = pass(fd, TOKEN, SZ, &lease2);
    cr_assert_eq(rp.status, 0, "%s", rp.why);
    char c;
    cr_expect_eq(recv(lease, &c, 1, 0), 0, "the first lease is still open");
    close(lease);
    sleep_ms(2500); /* several of the daemon's sweeps */
    cr_expect_eq(daemon_maps("memfd:passed"), 1, "unmapped while its lease lasts");

    /* The lease ends: unmapped at the next sweep. */
    close(lease2);
    int maps = 1;
    for (int tries = 0; maps && tries < 100; tries++) {
        sleep_ms(100);
        maps = daemon_maps("memfd:passed");
    }
    cr_expect_eq(maps, 0, "still mapped after its lease ended");
    close(fd);
    int status = harness_stop(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* A client that closes, its lease with it, while the daemon is behind
 * (stopped here): the messages it sent before still find their records,
 * however the daemon's threads resume (its descriptor thread may see the
 * lease end before its loop has taken them off the socket). */
Test(shm_pass, records_sent_before_the_lease_ended_are_read_after_it) {
    harness_start(&H, NULL);
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "late",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000,
                        .close_timeout_ms = 300};
    enum { STEPS = 9, N = 4096 };
    static float w[STEPS][N], g[STEPS][N];
    for (size_t s = 0; s < STEPS; s++)
        for (size_t i = 0; i < N; i++) {
            w[s][i] = (1.0f + (float)s) * sinf((float)i * 0.7f);
            g[s][i] = 1e-3f * cosf((float)i + (float)s);
        }
    for (int round = 0; round < 3; round++) {
        char run[16];
        snprintf(run, sizeof run, "late%d", round);
        o.run = run;
        ag_client *c = NULL;
        cr_assert_eq(ag_client_open(&c, &o), AG_OK);
        cr_assert_eq(ag_client_log_sgd(c, 1, "w", w[0], g[0], N, 0.01f), AG_OK);
        cr_assert_eq(ag_client_flush(c, 10000), AG_OK);
        ag_free(harness_wait_history(c, run, "w", "E5M2", 1)); /* its segment is mapped */
        cr_assert_eq(kill(H.pid, SIGSTOP), 0);
        for (uint64_t s = 2; s <= STEPS; s++)
            cr_assert_eq(ag_client_log_sgd(c, s, "w", w[s - 1], g[s - 1], N, 0.01f), AG_OK);
        /* sent (into the socket: flush would wait for the daemon's word) */
        ag_client_stats st = {0};
        for (int tries = 0; tries < 500; tries++) {
            cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
            if (st.queued == 0) break;
            sleep_ms(10);
        }
        cr_assert_eq(st.queued, 0, "not sent");
        cr_assert_geq(st.shm_snapshots, STEPS - 1, "steps 2.. not through shared memory");
        ag_client_close(c); /* unconfirmed: the daemon is stopped; the lease ends */
        cr_assert_eq(kill(H.pid, SIGCONT), 0);
        ag_client *q = harness_client(&H, "probe", AG_QUEUE_BLOCK);
        ag_history *h = harness_wait_history(q, run, "w", "E5M2", STEPS);
        cr_expect_eq(h->n, STEPS, "round %d: %zu of %d snapshots stored", round, h->n, STEPS);
        ag_free(h);
        ag_client_close(q);
    }
    int status = harness_stop(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* A trainer that keeps the daemon behind: 8 MiB snapshots through the
 * socket, back to back, until stop is set. */
typedef struct busy_trainer {
    atomic_int stop;
    int rc;
    size_t sent;
} busy_trainer;

static void *busy_main(void *arg) {
    busy_trainer *b = arg;
    enum { BN = 1 << 20 };
    float *w = malloc(BN * sizeof *w), *g = malloc(BN * sizeof *g);
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "busy",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000,
                        .close_timeout_ms = 1,
                        .shm_bytes = AG_SHM_OFF};
    ag_client *c = NULL;
    b->rc = !w || !g || ag_client_open(&c, &o) != AG_OK;
    for (size_t i = 0; !b->rc && i < BN; i++) {
        w[i] = sinf((float)i * 0.01f);
        g[i] = 1e-3f * cosf((float)i);
    }
    for (uint64_t s = 1; !b->rc && !atomic_load(&b->stop); s++, b->sent++)
        b->rc = ag_client_log_sgd(c, s, "busy.w", w, g, BN, 0.01f) != AG_OK;
    ag_client_close(c);
    free(w);
    free(g);
    return NULL;
}

/* While another trainer keeps the inbound queue from ever being empty, a
 * client's segment still goes soon after its lease ends, once the
 * messages queued by then are taken (the daemon used to wait for an empty
 * queue, or a minute). */
Test(shm_pass, a_segment_goes_after_its_lease_ends_while_the_queue_stays_busy) {
    const char *const extra[] = {"--threads", "1", NULL};
    harness_start(&H, extra);
    busy_trainer b = {0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, busy_main, &b), 0);
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "short",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000};
    enum { N = 4096 };
    static float w[N], g[N];
    for (size_t i = 0; i < N; i++) {
        w[i] = sinf((float)i * 0.3f);
        g[i] = 1e-3f * cosf((float)i);
    }
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    for (uint64_t s = 1; s <= 3; s++)
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, N, 0.01f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_client_stats st = {0};
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_geq(st.shm_snapshots, 2, "steps 2.. not through shared memory");
    cr_assert_eq(daemon_maps("altgrad-snapshots"), 1, "the segment is mapped");
    size_t sent_before = b.sent;
    ag_client_close(c); /* the lease ends */
    int maps = 1;
    for (int tries = 0; maps && tries < 200; tries++) {
        sleep_ms(100);
        maps = daemon_maps("altgrad-snapshots");
    }
    size_t sent_during = b.sent - sent_before;
    atomic_store(&b.stop, 1);
    pthread_join(th, NULL);
    cr_assert_eq(b.rc, 0, "the busy trainer failed");
    cr_expect_eq(maps, 0, "still mapped 20 s after its lease ended");
    cr_expect_gt(sent_during, 0, "the other trainer kept sending meanwhile");
    int status = harness_stop(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* ------------------------------------------- a file in the socket's place */

Test(shm_pass, a_file_where_the_descriptor_socket_goes_is_left_alone) {
    struct sockaddr_un side = side_addr();
    FILE *f = fopen(side.sun_path, "w");
    cr_assert_not_null(f);
    fputs("not a socket\n", f);
    fclose(f);
    harness_start(&H, NULL);
    /* the daemon serves without it: this user's trainer maps from /proc */
    ag_client_stats st = {0};
    cr_assert_eq(log_steps(0, &st), 0);
    cr_expect_geq(st.shm_snapshots, 3 * (XSTEPS - 1), "shm_snapshots %llu",
                  (unsigned long long)st.shm_snapshots);
    char *out = finish_run();
    free(out);
    cr_expect(log_has("is not a socket"), "the daemon did not say why it has no descriptor socket");
    f = fopen(side.sun_path, "r");
    cr_assert_not_null(f, "the file was removed");
    char line[64] = "";
    cr_expect_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "not a socket\n");
    fclose(f);
}

/* ------------------------------------------------------- /metrics */

Test(shm_pass,
     metrics_and_status_count_the_segments_the_snapshots_read_from_them_and_the_refusals) {
    static const char *const http[] = {"--http", "127.0.0.1:0", NULL};
    harness_start(&H, http);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_segments"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_segments_passed"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_snapshots_total"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_refused_total"), 0.0);

    /* A trainer of the daemon's user: it passes its segment at connect;
     * the snapshots logged once the daemon has mapped it go through it. */
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "metered",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    enum { STEPS = 8, N = 4096 };
    static float w[N], g[N];
    for (uint64_t s = 1; s <= STEPS; s++) {
        for (size_t i = 0; i < N; i++) {
            w[i] = (1.0f + (float)s) * sinf((float)i * 0.3f);
            g[i] = 1e-3f * cosf((float)i + (float)s);
        }
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, N, 0.01f), AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK);
    ag_free(harness_wait_history(c, "metered", "w", "E5M2", STEPS)); /* all read */
    ag_client_stats st = {0};
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_gt(st.shm_snapshots, 0, "no snapshot through shared memory");
    cr_expect_eq(harness_metric(&H, "altgrad_shm_snapshots_total"), (double)st.shm_snapshots);
    cr_expect_geq(harness_metric(&H, "altgrad_shm_segments"), 1.0);
    cr_expect_geq(harness_metric(&H, "altgrad_shm_segments_passed"), 1.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_refused_total"), 0.0);
    /* the status reply (altgrad status) says the same */
    ag_status *ss = NULL;
    cr_assert_eq(ag_client_status(c, &ss), AG_OK);
    cr_expect_eq(ss->shm_snapshots, st.shm_snapshots);
    cr_expect_eq((double)ss->shm_segments, harness_metric(&H, "altgrad_shm_segments"));
    cr_expect_geq(ss->shm_passed, 1);
    cr_expect_eq(ss->shm_refused, 0);
    ag_free(ss);

    /* A request without its descriptor: one refusal, nothing mapped. */
    double mapped = harness_metric(&H, "altgrad_shm_segments");
    ag_shm_pass_request rq = {AG_SHM_PASS_MAGIC, 0x3e7e2ed0001ull, AG_SHM_MIN_SIZE, 0};
    int conn = pass_connect();
    send_with(conn, &rq, sizeof rq, NULL, 0);
    cr_expect_neq(reply_of(conn).status, 0, "a request without a descriptor accepted");
    close(conn);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_refused_total"), 1.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_segments"), mapped);

    /* The trainer gone, its lease ends and the segment is unmapped (at a
     * sweep of the loop); the counts stay. */
    ag_client_close(c);
    double segments = 1;
    for (int tries = 0; segments != 0 && tries < 100; tries++) {
        sleep_ms(100);
        segments = harness_metric(&H, "altgrad_shm_segments");
    }
    cr_expect_eq(segments, 0.0, "a segment still mapped after its client closed");
    cr_expect_eq(harness_metric(&H, "altgrad_shm_segments_passed"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_snapshots_total"), (double)st.shm_snapshots);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_refused_total"), 1.0);
    int status = harness_stop(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* ------------------------------------- a listener that is not the daemon */

typedef struct squatter {
    int listener, connections, descriptors;
} squatter;

/* Accept what comes for up to 3 s, counting the descriptors received. */
static void *squat_main(void *arg) {
    squatter *sq = arg;
    for (int rounds = 0; rounds < 30; rounds++) {
        struct pollfd pf = {sq->listener, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) continue;
        int c = accept4(sq->listener, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        sq->connections++;
        char buf[64];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(4 * sizeof(int))];
        } ctl;
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
        struct pollfd cp = {c, POLLIN, 0};
        if (poll(&cp, 1, 2000) > 0 && recvmsg(c, &mh, MSG_CMSG_CLOEXEC) > 0)
            for (struct cmsghdr *ch = CMSG_FIRSTHDR(&mh); ch; ch = CMSG_NXTHDR(&mh, ch))
                if (ch->cmsg_type == SCM_RIGHTS) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(ch), sizeof fd);
                    sq->descriptors++;
                    close(fd);
                }
        close(c);
    }
    return NULL;
}

Test(shm_pass, a_client_passes_its_segment_only_to_the_daemon) {
    harness_start(&H, NULL);
    /* Another process takes the descriptor socket's path (as another user
     * could in a shared /tmp, before a daemon that then does without). */
    struct sockaddr_un sa = side_addr();
    cr_assert_eq(unlink(sa.sun_path), 0);
    squatter sq = {socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), 0, 0};
    cr_assert_geq(sq.listener, 0);
    cr_assert_eq(bind(sq.listener, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(sq.listener, 8), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, squat_main, &sq), 0);
    ag_client_stats st = {0};
    cr_assert_eq(log_steps(0, &st), 0);
    pthread_join(th, NULL);
    close(sq.listener);
    cr_expect_eq(sq.connections, 1, "the client did not try the descriptor socket");
    cr_expect_eq(sq.descriptors, 0,
                 "the client gave its segment to a process that is not the "
                 "daemon");
    /* the daemon, of this user, still maps it from /proc */
    cr_expect_geq(st.shm_snapshots, 3 * (XSTEPS - 1), "shm_snapshots %llu",
                  (unsigned long long)st.shm_snapshots);
    free(finish_run());
}
