/*
 * test_writer_faults.c - the writer under a failing disk (tests/fault's VFS):
 * a full disk or an I/O error never loses a row silently. The batch is kept
 * and retried, the writer reports itself degraded with SQLite's reason, the
 * queue fills and pushes back, and when the disk recovers every row is
 * committed. A slow disk only slows it; a disk still failing at stop gives
 * the rows up after a bounded wait and counts them.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/writer.h"
#include "schema/store.h"
#include "tests/fault/fault_vfs.h"
#include "tests/sql_results.h"

static char dir[64], db[128];
static ag_logger lg;

static void setup(void) {
    cr_assert_eq(ag_fault_vfs_install(), 0);
    ag_fault_clear();
    strcpy(dir, "/tmp/ag_wfault_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/w.db", dir);
    ag_logger_init(&lg, AG_LOG_ERROR - 1); /* the failures are expected here */
}

static void teardown(void) {
    ag_fault_clear();
    char p[160];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", db, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
    ag_logger_destroy(&lg);
}

TestSuite(writer_faults, .init = setup, .fini = teardown, .timeout = 120);

static const char *db_path_for(const char *name) {
    static char p[200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static void sleep_ms(long ms) { /* a poll interval, not a timing assumption */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static ag_writer *start(size_t high_water) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "t", 0), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_writer *w = NULL;
    ag_writer_opts o = {.batch_rows = 64, .batch_ms = 5, .high_water = high_water};
    cr_assert_eq(ag_writer_start(&w, st, &o, &lg, NULL, NULL), AG_OK);
    return w;
}

static void push_results(ag_writer *w, uint64_t from, uint64_t to) {
    for (uint64_t s = from; s <= to; s++) {
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = 1, .format_id = 1, .step = s};
        it.u.result.counts.stalled = s;
        it.u.result.counts.total = 2 * s;
        cr_assert_eq(ag_writer_push(w, &it), AG_OK);
        ag_writer_boundary(w);
    }
}

/* Points stored, and the sum of their stalled counts (every row intact). */
static size_t points(uint64_t *stalled_sum) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    ag_history_query q = {.run = "r", .tensor = "t"};
    ag_history *h = NULL;
    size_t n = 0;
    uint64_t sum = 0;
    int err = ag_store_history(st, &q, &h);
    if (err == AG_OK) {
        n = h->n;
        for (size_t i = 0; i < n; i++) sum += h->points[i].stalled;
        ag_free(h);
    } else {
        cr_assert_eq(err, AG_ENOTFOUND, "%s", ag_store_errmsg(st));
    }
    ag_store_close(st);
    if (stalled_sum) *stalled_sum = sum;
    return n;
}

static void wait_degraded(ag_writer *w, ag_writer_health_info *h) {
    for (int i = 0; i < 30000 && !ag_writer_health(w, h); i++) sleep_ms(1);
    cr_assert(h->degraded, "the writer never reported the failing disk");
}

static void recovers_after(ag_fault_kind kind, int by_calls, const char *why_has) {
    ag_writer *w = start(1000000);
    if (by_calls)
        ag_fault_writes_after_calls(kind, 3);
    else
        ag_fault_writes_after_bytes(kind, 2000);
    uint64_t refused0 = ag_fault_refused();
    push_results(w, 1, 400);
    ag_writer_health_info h;
    wait_degraded(w, &h);
    cr_expect(strstr(h.why, why_has), "why: %s", h.why);
    cr_expect_gt(ag_fault_refused(), refused0);
    /* While degraded nothing is lost: whatever was committed before the
     * fault, plus what is held and queued, is everything. */
    uint64_t committed = ag_writer_rows_written(w);
    cr_expect_eq(committed + h.held_rows + ag_writer_depth(w), 400,
                 "committed %llu held %llu queued %zu", (unsigned long long)committed,
                 (unsigned long long)h.held_rows, ag_writer_depth(w));
    cr_expect_eq(points(NULL), committed);
    ag_fault_clear(); /* space is back */
    for (int i = 0; i < 30000 && ag_writer_rows_written(w) < 400; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_rows_written(w), 400);
    cr_expect_not(ag_writer_health(w, &h), "still degraded after recovery: %s", h.why);
    cr_expect_eq(h.discarded, 0);
    cr_expect_geq(h.failures, 1);
    push_results(w, 401, 450); /* and it goes on writing */
    ag_writer_stop(w);
    uint64_t sum = 0;
    cr_assert_eq(points(&sum), 450);
    cr_assert_eq(sum, 450ull * 451 / 2, "every row's own values survived the retries");
}

Test(writer_faults, a_full_disk_keeps_the_batch_and_commits_it_when_space_returns) {
    recovers_after(AG_FAULT_FULL, 0, "full");
}

Test(writer_faults, an_io_error_mid_batch_is_retried_without_loss) {
    recovers_after(AG_FAULT_EIO, 1, "I/O");
}

Test(writer_faults, a_failing_disk_fills_the_queue_and_pushes_back) {
    ag_writer *w = start(50);
    ag_fault_writes_after_bytes(AG_FAULT_FULL, 0);
    push_results(w, 1, 200);
    ag_writer_health_info h;
    wait_degraded(w, &h);
    cr_assert(ag_writer_full(w), "depth %zu over high water 50 must report full",
              ag_writer_depth(w));
    ag_fault_clear();
    for (int i = 0; i < 30000 && ag_writer_full(w); i++) sleep_ms(1);
    cr_assert_not(ag_writer_full(w));
    ag_writer_stop(w);
    cr_assert_eq(points(NULL), 200);
}

Test(writer_faults, a_slow_disk_loses_nothing) {
    ag_writer *w = start(1000000);
    ag_fault_write_delay_us(300);
    push_results(w, 1, 300);
    ag_writer_stop(w); /* drains everything queued, slowly */
    ag_fault_clear();
    cr_assert_eq(points(NULL), 300);
}

Test(writer_faults, a_disk_still_failing_at_stop_gives_up_in_bounded_time_and_counts) {
    ag_writer *w = start(1000000);
    push_results(w, 1, 20);
    for (int i = 0; i < 30000 && ag_writer_rows_written(w) < 20; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_rows_written(w), 20);
    ag_fault_writes_after_bytes(AG_FAULT_FULL, 0);
    push_results(w, 21, 120);
    ag_writer_health_info h;
    wait_degraded(w, &h);
    /* stop must return (the suite's timeout catches a hang) and what it
     * could not write is counted, not silently gone */
    ag_writer_stop(w);
    ag_fault_clear();
    cr_assert_eq(points(NULL), 20);
}

/* The VFS's own fsync fault, seen by a plain SQLite connection in
 * synchronous=FULL rollback-journal mode (each commit syncs): the commit
 * fails with an I/O error and the file keeps its last committed state. */
Test(writer_faults, the_fault_vfs_fails_fsync_when_asked) {
    sqlite3 *conn = NULL;
    cr_assert_eq(sqlite3_open(db_path_for("sync.db"), &conn), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(conn,
                              "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;"
                              "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    uint64_t refused0 = ag_fault_refused();
    ag_fault_fsync(1);
    int rc = sqlite3_exec(conn, "INSERT INTO t VALUES (2);", NULL, NULL, NULL);
    ag_fault_fsync(0);
    cr_expect_eq(rc & 0xff, SQLITE_IOERR, "commit with a failing fsync: %d %s", rc,
                 sqlite3_errmsg(conn));
    cr_expect_gt(ag_fault_refused(), refused0);
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(conn, "SELECT count(*) FROM t", -1, &s, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
    cr_expect_eq(sqlite3_column_int(s, 0), 1, "the failed commit left nothing");
    sqlite3_finalize(s);
    sqlite3_close(conn);
    unlink(db_path_for("sync.db"));
    unlink(db_path_for("sync.db-journal"));
}
