/*
 * test_diskfull.c - the real daemon with its database on a small filesystem
 * (a 1 MiB tmpfs) that fills during ingest. The daemon must stay up and keep
 * answering, tell the service manager its store is degraded and why, push
 * back on the trainers, and once space returns commit everything it kept:
 * a lossless (blocking) trainer's run is complete, and a dropping trainer's
 * run is complete or shows its loss in `dropped`.
 *
 * Needs root (mount). Without it the test is skipped and says why.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/daemon/harness.h"

static ag_harness H;
static char fsdir[200];
static int mounted;

static void setup(void) { harness_init(&H); }
static void teardown(void) {
    harness_fini(&H); /* stops the daemon first */
    if (mounted) umount2(fsdir, MNT_DETACH);
    rmdir(fsdir);
    rmdir(H.dir);
}

TestSuite(diskfull, .init = setup, .fini = teardown, .timeout = 240);

#define TENSORS 160
#define ELEMS 2048
#define STEPS 12

typedef struct trainer {
    ag_client *c;
    const char *prefix;
    int logged_ok; /* calls that returned AG_OK */
} trainer;

static void *train(void *arg) {
    trainer *t = arg;
    float *w = malloc(ELEMS * sizeof *w), *g = malloc(ELEMS * sizeof *g);
    cr_assert(w && g);
    char name[64];
    for (uint64_t s = 1; s <= STEPS; s++) {
        for (int k = 0; k < TENSORS; k++) {
            for (int i = 0; i < ELEMS; i++) {
                w[i] = 0.5f + 0.001f * (float)((i * 7 + k + (int)s) % 997);
                g[i] = 1e-3f * (float)((i + k) % 13);
            }
            snprintf(name, sizeof name, "%s.%d", t->prefix, k);
            if (ag_client_log_sgd(t->c, s, name, w, g, ELEMS, 0.01f) == AG_OK) t->logged_ok++;
        }
    }
    free(w);
    free(g);
    return NULL;
}

/* Wait (bounded) for a notify datagram containing `what`. */
static int wait_notify(const char *what, int limit_ms, char *seen, size_t seen_len) {
    for (int waited = 0; waited < limit_ms; waited += 100) {
        struct pollfd p = {.fd = H.notify_fd, .events = POLLIN};
        if (poll(&p, 1, 100) != 1) continue;
        char buf[1024];
        ssize_t n = recv(H.notify_fd, buf, sizeof buf - 1, 0);
        if (n <= 0) continue;
        buf[n] = '\0';
        if (strstr(buf, what)) {
            snprintf(seen, seen_len, "%s", buf);
            return 1;
        }
    }
    return 0;
}

static ag_run_info *find_run(ag_run_list *runs, const char *name) {
    for (size_t i = 0; i < runs->n; i++)
        if (strcmp(runs->items[i].name, name) == 0) return &runs->items[i];
    return NULL;
}

Test(diskfull, a_full_disk_degrades_then_everything_kept_is_committed) {
    if (geteuid() != 0) cr_skip_test("needs root to mount a small tmpfs for the database");
    snprintf(fsdir, sizeof fsdir, "%s/fs", H.dir);
    cr_assert_eq(mkdir(fsdir, 0700), 0);
    if (mount("ag-diskfull", fsdir, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0)
        cr_skip_test("cannot mount a tmpfs here (%s)", strerror(errno));
    mounted = 1;
    char db[256];
    snprintf(db, sizeof db, "%s/a.db", fsdir);
    const char *extra[] = {"--db", db, NULL};
    harness_start(&H, extra);

    ag_client *lossless = harness_client(&H, "lossless", AG_QUEUE_BLOCK);
    ag_client *dropping = harness_client(&H, "dropping", AG_QUEUE_DROP);
    trainer a = {.c = lossless, .prefix = "a"}, b = {.c = dropping, .prefix = "b"};
    pthread_t ta, tb;
    cr_assert_eq(pthread_create(&ta, NULL, train, &a), 0);
    cr_assert_eq(pthread_create(&tb, NULL, train, &b), 0);

    char seen[1024] = "";
    cr_assert(wait_notify("STATUS=store degraded", 120000, seen, sizeof seen),
              "the daemon never reported its store degraded (1 MiB for ~%d MB of snapshots)",
              2 * STEPS * TENSORS * ELEMS * 4 / 1000000);
    cr_expect(strstr(seen, "full"), "the reason names the full disk: %s", seen);

    /* Still up and answering while degraded. */
    cr_assert_eq(kill(H.pid, 0), 0, "the daemon died on a full disk");
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(lossless, &st), AG_OK, "%s", ag_client_last_error(lossless));
    cr_assert_not_null(st->store);
    cr_expect(strncmp(st->store, "degraded: ", 10) == 0 && strstr(st->store, "full"),
              "status says the store is %s", st->store);
    ag_free(st);

    /* Space returns. */
    cr_assert_eq(mount(NULL, fsdir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, "size=512m"), 0,
                 "remount: %s", strerror(errno));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(ag_client_flush(lossless, 120000), AG_OK);
    ag_client_flush(dropping, 120000);
    cr_assert(wait_notify("STATUS=ready", 120000, seen, sizeof seen),
              "the daemon never reported the store healthy again");

    st = NULL;
    cr_assert_eq(ag_client_status(lossless, &st), AG_OK);
    cr_expect_str_eq(st->store, "ok");
    cr_expect_eq(st->discarded, 0, "nothing was given up");
    ag_free(st);

    /* Every step of every tensor of the lossless run is there. */
    for (int k = 0; k < TENSORS; k += 9) {
        char name[64];
        snprintf(name, sizeof name, "a.%d", k);
        ag_history *h = harness_wait_history(lossless, "lossless", name, "E5M2", STEPS);
        cr_expect_eq(h->n, STEPS, "%s", name);
        ag_free(h);
    }
    ag_client_close(lossless);
    ag_client_close(dropping);

    /* The dropping run: complete, or its loss is counted. */
    ag_client *q = harness_client(&H, NULL, AG_QUEUE_DROP);
    ag_run_list *runs = NULL;
    for (int i = 0; i < 3000; i++) { /* until both runs ended (committed) */
        cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
        ag_run_info *ra = find_run(runs, "lossless"), *rb = find_run(runs, "dropping");
        if (ra && rb && ra->ended_ms && rb->ended_ms) break;
        ag_free(runs);
        runs = NULL;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_not_null(runs, "both runs must be stored and ended");
    ag_run_info *ra = find_run(runs, "lossless"), *rb = find_run(runs, "dropping");
    cr_expect_eq(ra->dropped, 0);
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(q, "dropping", &tl), AG_OK);
    uint64_t snaps = 0;
    for (size_t i = 0; i < tl->n; i++) snaps += tl->items[i].snapshots;
    cr_expect(snaps == (uint64_t)STEPS * TENSORS || rb->dropped > 0,
              "the dropping run stored %llu of %d snapshots and says dropped %llu",
              (unsigned long long)snaps, STEPS * TENSORS, (unsigned long long)rb->dropped);
    ag_free(tl);
    ag_free(runs);
    ag_client_close(q);
    cr_expect_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}
