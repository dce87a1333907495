/*
 * test_rollups_daemon.c - the rollups through the real altgradd: after a
 * kill -9 mid-ingest and a restart every bucket still sums its raw rows;
 * `altgradd --rebuild-rollups` mends damaged rollups and exits; with
 * --keep-raw-steps the writer removes only raw rows past the limit while
 * the rollups keep counting them.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "schema/store.h"
#include "tests/daemon/harness.h"
#include "tests/sql_results.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(rollups_daemon, .init = setup, .fini = teardown, .timeout = 240);

#define N 16
#define TENSORS 8

/* One 16-element SGD snapshot of tensor t at step; the client's answer. */
static int send_snapshot(ag_client *c, uint64_t step, int t) {
    float w[N], g[N];
    char name[32];
    for (int i = 0; i < N; i++) {
        w[i] = (float)(i + 1) * 0.01f * (float)(t + 1) + (float)step * 1e-4f;
        g[i] = 1e-3f * (float)((i + t + (int)step) % 7);
    }
    snprintf(name, sizeof name, "t%d.weight", t);
    return ag_client_log_sgd(c, step, name, w, g, N, 0.01f);
}

static void snapshot(ag_client *c, uint64_t step, int t) {
    cr_assert_eq(send_snapshot(c, step, t), AG_OK);
}

static long long scalar(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s", sql);
    long long v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* Buckets wholly above each tensor's retention horizon (a widest bucket
 * the horizon cuts also counts the rows it removed). */
#define HORIZON_R "coalesce((SELECT step FROM raw_horizon h WHERE h.tensor_id=r.tensor_id),0)"
#define HORIZON_ROLLUPS                                                                            \
    "coalesce((SELECT step FROM raw_horizon h WHERE h.tensor_id=rollups.tensor_id),0)"
#define RAW_BUCKETS                                                                                \
    "SELECT r.tensor_id, r.format_id, w.width, r.step / w.width, count(*), sum(r.stalled),"        \
    " sum(r.total), coalesce(sum(r.flips),0), count(*) - count(r.flips), sum(r.overflow),"         \
    " sum(r.underflow), sum(r.nonfinite), min(r.step), max(r.step) FROM results r,"                \
    " (SELECT 100 AS width UNION ALL SELECT 1000 UNION ALL SELECT 10000) w"                        \
    " WHERE r.step / w.width * w.width >= " HORIZON_R                                              \
    " GROUP BY r.tensor_id, r.format_id, w.width, r.step / w.width"
#define ROLLUP_BUCKETS                                                                             \
    "SELECT tensor_id, format_id, width, bucket, rows, stalled, total, flips, flips_unknown,"      \
    " overflow, underflow, nonfinite, first_step, last_step FROM rollups WHERE bucket*width"       \
    " >= " HORIZON_ROLLUPS

/* Every width-10000 bucket as its width-1000 buckets sum, wherever the
 * horizon is (and the other way round). */
#define WIDEST_BUCKETS                                                                             \
    "SELECT tensor_id, format_id, bucket / 10, sum(rows), sum(stalled), sum(total), sum(flips),"   \
    " sum(flips_unknown), min(first_step), max(last_step) FROM rollups WHERE width=1000"           \
    " GROUP BY tensor_id, format_id, bucket / 10"
#define WIDEST_ROWS                                                                                \
    "SELECT tensor_id, format_id, bucket, rows, stalled, total, flips, flips_unknown, first_step," \
    " last_step FROM rollups WHERE width=10000"

static void expect_sums_equal(const char *when) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_gt(scalar(db, "SELECT count(*) FROM results"), 0, "%s: no rows", when);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM (" RAW_BUCKETS " EXCEPT " ROLLUP_BUCKETS ")"), 0,
                 "%s: a raw bucket is missing or differs in the rollups", when);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM (" ROLLUP_BUCKETS " EXCEPT " RAW_BUCKETS ")"), 0,
                 "%s: a rollup bucket is not what its raw rows sum to", when);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM (" WIDEST_BUCKETS " EXCEPT " WIDEST_ROWS ")"), 0,
                 "%s: a widest bucket is missing or is not its finer buckets' sum", when);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM (" WIDEST_ROWS " EXCEPT " WIDEST_BUCKETS ")"), 0,
                 "%s: a widest bucket has no finer buckets to sum", when);
    sqlite3_close(db);
}

typedef struct pump_args {
    ag_client *c;
    volatile int stop;
    uint64_t steps;
} pump_args;

static void *pump(void *arg) {
    pump_args *a = arg;
    for (uint64_t s = 1; !a->stop && s < 100000; s++) {
        /* A full queue drops (policy DROP): the rows filed are what counts. */
        for (int t = 0; t < TENSORS; t++) (void)send_snapshot(a->c, s, t);
        a->steps = s;
    }
    return NULL;
}

Test(rollups_daemon, sums_equal_raw_sums_after_kill_9_mid_ingest_and_a_restart) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "k", AG_QUEUE_DROP);
    ag_client *q = harness_client(&H, "observer", AG_QUEUE_DROP);
    pump_args a = {.c = c};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, pump, &a), 0);
    ag_free(harness_wait_history(q, "k", "t3.weight", "E5M2", 300));
    int status = harness_stop(&H, SIGKILL);
    cr_assert(WIFSIGNALED(status), "status %d", status);
    a.stop = 1;
    pthread_join(t, NULL);
    ag_client_close(c);
    ag_client_close(q);
    expect_sums_equal("after kill -9");

    /* The restarted daemon goes on adding to the same buckets. */
    harness_start(&H, NULL);
    c = harness_client_as(&H, "k", AG_QUEUE_BLOCK, 1, NULL);
    for (uint64_t s = a.steps + 1; s <= a.steps + 300; s++)
        for (int k = 0; k < TENSORS; k++) snapshot(c, s, k);
    /* And steps stored again replace their rows. */
    for (uint64_t s = 5; s <= 40; s++) snapshot(c, s, 1);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK);
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
    expect_sums_equal("after restart");
}

static int run_altgradd(const char *const *args) {
    char path[512];
    const char *b = getenv("AG_BUILD_DIR");
    snprintf(path, sizeof path, "%s/daemon/altgradd", b ? b : ".");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char *argv[16] = {path};
        int n = 1;
        for (; args[n - 1] && n < 15; n++) argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) dup2(devnull, 1);
        execv(path, argv);
        _exit(127);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(rollups_daemon, rebuild_rollups_mends_them_from_the_raw_rows_and_exits) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "r", AG_QUEUE_BLOCK);
    for (uint64_t s = 0; s < 1200; s++)
        for (int t = 0; t < 3; t++) snapshot(c, s, t);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK);
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
    expect_sums_equal("ingest");

    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(H.db, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db,
                              "UPDATE rollups_sealed SET total=total+5 WHERE bucket % 2 = 0;"
                              "DELETE FROM rollups_sealed WHERE width=100;"
                              "UPDATE rollup_heads SET total2=total2+5, rows1=0",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    cr_assert_neq(scalar(db, "SELECT count(*) FROM (" RAW_BUCKETS " EXCEPT " ROLLUP_BUCKETS ")"),
                  0);
    sqlite3_close(db);
    const char *const args[] = {"--db", H.db, "--rebuild-rollups", NULL};
    cr_assert_eq(run_altgradd(args), 0);
    expect_sums_equal("rebuild");
    char missing[256];
    snprintf(missing, sizeof missing, "%s/nope.db", H.dir);
    const char *const bad[] = {"--db", missing, "--rebuild-rollups", NULL};
    cr_expect_eq(run_altgradd(bad), 1, "a missing file is an error, not a new file");
    cr_expect_neq(access(missing, F_OK), 0);
}

Test(rollups_daemon, keep_raw_steps_removes_only_raw_rows_past_the_limit) {
    const char *const extra[] = {"--keep-raw-steps", "700", NULL};
    harness_start(&H, extra);
    ag_client *c = harness_client(&H, "ret", AG_QUEUE_BLOCK);
    for (uint64_t s = 0; s < 2500; s++)
        for (int t = 0; t < 2; t++) snapshot(c, s, t);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK);
    /* Steps 0..2499: the newest 700 are 1800..2499, so 0..999 may go. The
     * writer removes them between batches: wait for it (bounded). */
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    long long low = 0;
    for (int i = 0;
         i < 300 && (low = scalar(db, "SELECT coalesce(min(step),0) FROM results")) < 1000; i++) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(low, 1000, "raw rows below step 1000 removed");
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE step >= 1800"), 700 * 2 * 5,
                 "every row of the newest 700 steps is kept");
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results"), 1500 * 2 * 5,
                 "and the rest of the current top-tier bucket");
    cr_expect_eq(scalar(db, "SELECT sum(rows) FROM rollups WHERE width=1000"), 2500 * 2 * 5,
                 "the rollups still count every step");
    sqlite3_close(db);
    /* Whole-run top, through the daemon, still counts them. */
    ag_top_list *top = NULL;
    cr_assert_eq(ag_client_top(c, "ret", "E5M2", 0, 0, &top), AG_OK);
    cr_assert_eq(top->n, 2);
    cr_expect_eq(top->items[0].steps, 2500);
    ag_free(top);
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
    expect_sums_equal("retention");
}

Test(rollups_daemon, bad_retention_values_exit_2) {
    const char *const args[][4] = {{"--keep-raw-steps", "-1", NULL},
                                   {"--keep-raw-steps", "lots", NULL},
                                   {"--keep-raw-steps", "99999999999999999999", NULL}};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        cr_expect_eq(run_altgradd(args[i]), 2, "%s %s", args[i][0], args[i][1]);
}
