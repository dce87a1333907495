/*
 * test_writer.c - the writer thread (daemon/writer.c): rows reach the file,
 * a message's rows are committed together (never split at a commit), stop
 * drains everything queued, and the high-water mark reports fullness.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/writer.h"
#include "schema/store.h"

static char dir[64], db[128];
static ag_logger lg;

static void setup(void) {
    strcpy(dir, "/tmp/ag_writer_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/w.db", dir);
    ag_logger_init(&lg, AG_LOG_ERROR);
}

static void teardown(void) {
    char p[160];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", db, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
    ag_logger_destroy(&lg);
}

TestSuite(writer, .init = setup, .fini = teardown);

static void sleep_ms(long ms) { /* a poll interval, not a timing assumption */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static ag_writer *start(size_t batch_rows, unsigned batch_ms, size_t high_water,
                        void (*space)(void *)) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_CREATE), AG_OK);
    /* A run, a tensor and a format for the result rows to refer to. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "t", 0), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_writer *w = NULL;
    ag_writer_opts o = {.batch_rows = batch_rows, .batch_ms = batch_ms, .high_water = high_water};
    cr_assert_eq(ag_writer_start(&w, st, &o, &lg, space, NULL), AG_OK);
    return w;
}

static void push_result(ag_writer *w, uint64_t step) {
    ag_write_item it = {.kind = AG_W_RESULT};
    it.u.result = (ag_store_result_row){.tensor_id = 1, .format_id = 1, .step = step};
    cr_assert_eq(ag_writer_push(w, &it), AG_OK);
}

static size_t points(void) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    ag_history_query q = {.run = "r", .tensor = "t"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    size_t n = h->n;
    ag_free(h);
    ag_store_close(st);
    return n;
}

/* points(), polled (bounded) until it reaches want. */
static size_t wait_points(size_t want) {
    size_t n = 0;
    for (int i = 0; i < 30000 && (n = points()) < want; i++) sleep_ms(1);
    return n;
}

/* The writer has taken everything queued (bounded wait). */
static void wait_taken(ag_writer *w) {
    for (int i = 0; i < 30000 && ag_writer_depth(w) > 0; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_depth(w), 0, "the writer took the rows");
}

Test(writer, stop_commits_everything_queued) {
    ag_writer *w = start(7, 1000, 1000000, NULL);
    for (uint64_t s = 1; s <= 1000; s++) {
        push_result(w, s);
        ag_writer_boundary(w);
    }
    ag_writer_stop(w);
    cr_assert_eq(points(), 1000);
}

/* A busy batch (2,000 rows or more) collects for up to its batch time, but
 * commits once the stream pauses (no message for 200 ms): here a minute's
 * batch time, and the rows are visible long before it. */
Test(writer, a_busy_batch_commits_when_its_stream_pauses) {
    ag_writer *w = start(1000000, 60000, 1000000, NULL);
    for (uint64_t s = 1; s <= 2500; s++) {
        push_result(w, s);
        ag_writer_boundary(w);
    }
    size_t n = 0;
    for (int i = 0; i < 300 && (n = points()) < 2500; i++) sleep_ms(100);
    cr_assert_eq(n, 2500, "committed %zu of 2500 rows 30 s after the stream paused", n);
    ag_writer_stop(w);
}

/* A client waiting for its rows (ag_writer_hurry_wait): with a minute's
 * batch time, the batch commits once the writer has caught up, and the
 * call returns after that commit; the rows are not committed before a
 * client asks. */
Test(writer, a_waiting_client_has_the_batch_committed_before_its_batch_time) {
    ag_writer *w = start(1000000, 60000, 1000000, NULL);
    for (uint64_t s = 1; s <= 3; s++) {
        push_result(w, s);
        ag_writer_boundary(w);
    }
    wait_taken(w);
    sleep_ms(100);
    cr_assert_eq(points(), 0, "a batch waits out its batch time unless asked");
    cr_assert_eq(ag_writer_hurried(w), 0);
    /* asked: the wait returns when the batch has ended (a minute's bound
     * here; the point is that it does not take the batch time) */
    cr_assert_eq(ag_writer_hurry_wait(w, 30000), 1, "the hurried batch ended");
    cr_assert_eq(points(), 3, "the rows are committed when the wait returns");
    cr_assert_eq(ag_writer_hurried(w), 1);
    /* nothing open: the wait returns at once with 0, and the next batch
     * (asked for now) commits early too */
    cr_assert_eq(ag_writer_hurry_wait(w, 30000), 0);
    push_result(w, 4);
    ag_writer_boundary(w);
    cr_assert_eq(wait_points(4), 4, "a request made before the batch opened hurries it");
    ag_writer_stop(w);
}

/* A hurried batch still never commits in the middle of a message. */
Test(writer, a_hurried_batch_still_waits_for_the_end_of_its_message) {
    ag_writer *w = start(1000000, 60000, 1000000, NULL);
    push_result(w, 1);
    ag_writer_boundary(w);
    push_result(w, 2); /* a message not ended */
    wait_taken(w);
    cr_assert_eq(ag_writer_hurry_wait(w, 200), 0, "no commit while a message is open");
    cr_assert_eq(points(), 0);
    ag_writer_boundary(w);
    cr_assert_eq(wait_points(2), 2, "the message's end lets the asked-for commit through");
    ag_writer_stop(w);
}

Test(writer, a_message_without_its_boundary_is_never_committed_half) {
    ag_writer *w = start(1, 1, 1000000, NULL);
    push_result(w, 1);
    ag_writer_boundary(w);
    for (uint64_t s = 2; s <= 50; s++) push_result(w, s); /* one message, not ended */
    /* Wait (bounded) until the first message is visible: the writer ran. */
    size_t n = 0;
    for (int i = 0; i < 2000 && (n = points()) < 1; i++) sleep_ms(1);
    cr_assert_eq(n, 1, "only the ended message may be committed, got %zu", n);
    ag_writer_boundary(w);
    ag_writer_stop(w);
    cr_assert_eq(points(), 50);
}

Test(writer, a_boundary_marked_after_the_writer_took_the_last_item_still_commits) {
    /* A long batch: the writer takes rows as they come and commits only at
     * a message's end once 300 ms have passed. */
    ag_writer *w = start(1000, 300, 1000000, NULL);
    push_result(w, 1);
    ag_writer_boundary(w); /* message A, whole: the writer opens a batch */
    push_result(w, 2);     /* message B's only row, its end not yet marked */
    for (int i = 0; i < 30000 && ag_writer_depth(w) > 0; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_depth(w), 0, "the writer took B's row");
    cr_assert_eq(points(), 0, "a batch is not committed in the middle of a message");
    ag_writer_boundary(w); /* nothing queued to carry the mark */
    size_t n = 0;
    for (int i = 0; i < 30000 && (n = points()) < 2; i++) sleep_ms(1);
    cr_assert_eq(n, 2, "the ended message must commit without waiting for another");
    ag_writer_stop(w);
}

static atomic_int space_calls;
static void on_space(void *ctx) {
    (void)ctx;
    atomic_fetch_add(&space_calls, 1);
}

/* Let the writer through (the blocker's transaction ends), then expect the
 * queue to drop below its high-water mark and announce room exactly once;
 * stops the writer. */
static void release_and_expect_room(ag_writer *w, ag_store *blocker) {
    cr_assert_eq(ag_store_rollback(blocker), AG_OK);
    ag_store_close(blocker);
    for (int i = 0; i < 5000 && ag_writer_full(w); i++) sleep_ms(1);
    cr_assert_not(ag_writer_full(w));
    for (int i = 0; i < 5000 && atomic_load(&space_calls) == 0; i++) sleep_ms(1);
    cr_assert_eq(atomic_load(&space_calls), 1);
    ag_writer_stop(w);
}

/* With another connection holding the write lock: a message whose row is
 * written at once (a format's) stops the writer at the start of its
 * transaction, where it takes nothing more; what follows stays queued until
 * the lock is released (a batch only collecting would go on taking). */
static void stall_writer(ag_writer *w) {
    ag_write_item it = {.kind = AG_W_FORMAT};
    it.u.format.id = 7;
    cr_assert_not_null(it.u.format.fmt = ag_format_get("E3M4"));
    cr_assert_eq(ag_writer_push(w, &it), AG_OK);
    ag_writer_boundary(w);
    for (int i = 0; i < 30000 && ag_writer_depth(w) > 0; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_depth(w), 0);
}

Test(writer, a_full_queue_is_reported_and_room_is_announced_once_it_drains) {
    ag_writer *w = start(1000, 1, 10, on_space);
    /* Another connection holds the write lock: the writer cannot begin. */
    ag_store *blocker = NULL;
    cr_assert_eq(ag_store_open(&blocker, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(blocker), AG_OK);
    stall_writer(w);
    for (uint64_t s = 1; s <= 30; s++) {
        push_result(w, s);
        ag_writer_boundary(w);
    }
    cr_assert(ag_writer_full(w), "depth %zu", ag_writer_depth(w));
    release_and_expect_room(w, blocker);
    cr_assert_eq(points(), 30);
}
static void push_snapshot(ag_writer *w, uint64_t step, size_t n) {
    ag_write_item it = {.kind = AG_W_SNAPSHOT};
    it.u.snapshot.tensor_id = 1;
    it.u.snapshot.step = step;
    it.u.snapshot.n = n;
    cr_assert_not_null(it.u.snapshot.w = malloc(n * sizeof(float)));
    for (size_t i = 0; i < n; i++) it.u.snapshot.w[i] = (float)step;
    cr_assert_eq(ag_writer_push(w, &it), AG_OK);
}

typedef struct stored_snapshot {
    uint64_t step;
    float first;
    size_t n, count;
} stored_snapshot;

static int on_snapshot(void *ctx, int64_t tensor_id, uint64_t step, const float *w, size_t n) {
    stored_snapshot *s = ctx;
    cr_assert_eq(tensor_id, 1);
    s->step = step;
    s->first = w[0];
    s->n = n;
    s->count++;
    return 0;
}

static stored_snapshot stored(void) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, 0), AG_OK);
    stored_snapshot s = {0};
    ag_store_restore_cb cb = {.ctx = &s, .snapshot = on_snapshot};
    cr_assert_eq(ag_store_restore(st, 16, &cb), AG_OK);
    ag_store_close(st);
    return s;
}

Test(writer, snapshots_replaced_while_queued_are_skipped_and_the_newest_is_stored) {
    ag_writer *w = start(1000, 1, 1000000, NULL);
    ag_store *blocker = NULL; /* holds the write lock */
    cr_assert_eq(ag_store_open(&blocker, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(blocker), AG_OK);
    stall_writer(w);
    for (uint64_t s = 1; s <= 10; s++) {
        push_result(w, s);
        push_snapshot(w, s, 3000);
        ag_writer_boundary(w);
    }
    cr_assert_eq(ag_store_rollback(blocker), AG_OK);
    ag_store_close(blocker);
    for (int i = 0; i < 5000 && ag_writer_rows_written(w) < 12; i++) sleep_ms(1);
    cr_assert_eq(points(), 10);
    /* a format row, 10 results and one snapshot: the nine replaced
     * snapshots were not written */
    cr_assert_eq(ag_writer_rows_written(w), 12);
    ag_writer_stop(w);
    /* The rows are counted in the file, in the transactions that wrote them. */
    ag_store *st = NULL;
    ag_status *status = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    cr_assert_eq(ag_store_status(st, &status), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(status->rows_written, 12);
    ag_free(status);
    ag_store_close(st);
    stored_snapshot s = stored();
    cr_assert_eq(s.count, 1);
    cr_assert_eq(s.step, 10);
    cr_assert_eq(s.n, 3000);
    cr_assert_eq(s.first, 10.0f);
}

/* A batch begins its transaction at its first write, at the batch's end
 * for results and snapshots: while it collects, the file's write lock is
 * free (another connection may write, and a checkpoint that finishes
 * meanwhile lets the WAL start over when the batch begins). */
Test(writer, a_batch_still_collecting_holds_no_write_lock) {
    ag_writer *w = start(1000, 60000, 1000000, NULL);
    for (uint64_t s = 1; s <= 5; s++) push_result(w, s);
    push_snapshot(w, 5, 64);
    /* one message: the writer takes it (its end wakes the writer) and, with
     * a minute to go before the batch is due, waits for more */
    ag_writer_boundary(w);
    for (int i = 0; i < 30000 && ag_writer_depth(w) > 0; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_depth(w), 0, "the writer took the message's rows");
    ag_store *other = NULL;
    cr_assert_eq(ag_store_open(&other, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(other), AG_OK, "%s", ag_store_errmsg(other));
    cr_assert_eq(ag_store_rollback(other), AG_OK);
    ag_store_close(other);
    ag_writer_stop(w);
    cr_assert_eq(points(), 5);
    stored_snapshot s = stored();
    cr_assert_eq(s.count, 1);
    cr_assert_eq(s.step, 5);
    cr_assert_eq(s.first, 5.0f);
}

/* A backlog's buffers (the ring grown past its first 1024 rows, the batch's
 * held rows) are freed once the writer has been idle a while, so RSS comes
 * down when the trainers pause. */
Test(writer, a_backlogs_buffers_are_freed_once_the_writer_is_idle) {
    ag_writer *w = start(100000, 50, 1000000, NULL);
    ag_store *blocker = NULL; /* the rows queue up behind it */
    cr_assert_eq(ag_store_open(&blocker, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(blocker), AG_OK);
    stall_writer(w);
    for (uint64_t s = 1; s <= 20000; s++) push_result(w, s);
    ag_writer_boundary(w);
    size_t big = ag_writer_buffer_bytes(w);
    cr_assert_geq(big, 20000 * sizeof(ag_write_item), "%zu", big);
    cr_assert_eq(ag_store_rollback(blocker), AG_OK);
    ag_store_close(blocker);
    size_t n = 0;
    for (int i = 0; i < 300 && (n = points()) < 20000; i++) sleep_ms(100);
    cr_assert_eq(n, 20000);
    size_t now = 0;
    for (int i = 0; i < 300 && (now = ag_writer_buffer_bytes(w)) > 1024 * sizeof(ag_write_item);
         i++)
        sleep_ms(100);
    cr_assert_leq(now, 1024 * sizeof(ag_write_item), "still %zu bytes after 30 s idle", now);
    ag_writer_stop(w);
}

Test(writer, every_snapshot_is_written_when_none_waits_behind_it) {
    ag_writer *w = start(1, 1, 1000000, NULL);
    push_snapshot(w, 1, 100);
    ag_writer_boundary(w);
    for (int i = 0; i < 5000 && ag_writer_rows_written(w) < 1; i++) sleep_ms(1);
    cr_assert_eq(ag_writer_rows_written(w), 1);
    push_snapshot(w, 2, 100);
    ag_writer_boundary(w);
    ag_writer_stop(w);
    stored_snapshot s = stored();
    cr_assert_eq(s.step, 2);
    cr_assert_eq(s.first, 2.0f);
}

Test(writer, queued_snapshot_bytes_above_their_mark_report_full) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_CREATE), AG_OK);
    ag_writer *w = NULL;
    ag_writer_opts o = {
        .batch_rows = 1000, .batch_ms = 1, .high_water = 1000000, .high_bytes = 4000};
    atomic_store(&space_calls, 0);
    cr_assert_eq(ag_writer_start(&w, st, &o, &lg, on_space, NULL), AG_OK);
    ag_store *blocker = NULL;
    cr_assert_eq(ag_store_open(&blocker, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(blocker), AG_OK);
    stall_writer(w);
    push_snapshot(w, 1, 2000); /* 8000 bytes */
    ag_writer_boundary(w);
    cr_assert(ag_writer_full(w));
    release_and_expect_room(w, blocker);
}

/* A second connection to the file, which adds format 2 (E3M4) and tensor
 * 2 ("u") beside start()'s and stays open (a caller may hold the writer
 * back with a transaction on it). */
static ag_store *second_tensor(void) {
    ag_store *side = NULL;
    cr_assert_eq(ag_store_open(&side, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(side), AG_OK);
    cr_assert_eq(ag_store_put_format(side, 2, ag_format_get("E3M4")), AG_OK);
    cr_assert_eq(ag_store_put_tensor(side, 2, 1, "u", 0), AG_OK);
    cr_assert_eq(ag_store_commit(side), AG_OK);
    return side;
}

/* The writer holds a batch's results and stats rows and writes them sorted
 * by key: rows arriving step after step across tensors, with a key stored
 * twice in one batch, leave what writing them one by one leaves (the later
 * row of a key wins) and rollups that equal the raw rows' sums. */
Test(writer, rows_written_sorted_leave_what_arrival_order_leaves) {
    ag_writer *w = start(100000, 1000, 1000000, NULL);
    ag_store *side = second_tensor();
    ag_store_close(side);
    for (uint64_t s = 30; s-- > 0;) /* descending steps, all in one batch */
        for (int64_t t = 2; t >= 1; t--)
            for (int64_t f = 2; f >= 1; f--) {
                ag_write_item it = {.kind = AG_W_RESULT};
                it.u.result = (ag_store_result_row){.tensor_id = t,
                                                    .format_id = f,
                                                    .step = s,
                                                    .counts = {.stalled = s % 3, .total = 4},
                                                    .amax = 1,
                                                    .scale = 1};
                cr_assert_eq(ag_writer_push(w, &it), AG_OK);
                ag_write_item st = {.kind = AG_W_STATS};
                st.u.stats = (ag_store_stats_row){t, 0, s, (double)s, 4, 0, 1};
                cr_assert_eq(ag_writer_push(w, &st), AG_OK);
                ag_writer_boundary(w);
            }
    /* step 7 of t/E5M2 and its stats row again: these replace the first */
    ag_write_item again = {.kind = AG_W_RESULT};
    again.u.result = (ag_store_result_row){
        .tensor_id = 1, .format_id = 1, .step = 7, .counts = {.stalled = 4, .total = 4}};
    cr_assert_eq(ag_writer_push(w, &again), AG_OK);
    ag_write_item rd = {.kind = AG_W_RUN_DELTA};
    rd.u.run_delta = (ag_store_run_delta){.run_id = 1, .last_step = 29};
    cr_assert_eq(ag_writer_push(w, &rd), AG_OK);
    ag_writer_boundary(w);
    ag_writer_stop(w);

    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    ag_history_query q = {.run = "r", .tensor = "t"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 30);
    uint64_t stalled = 0;
    for (size_t i = 0; i < h->n; i++) {
        cr_assert_eq(h->points[i].step, i);
        cr_assert_eq(h->points[i].stalled, i == 7 ? 4 : i % 3, "step %zu", i);
        stalled += h->points[i].stalled;
    }
    ag_free(h);
    /* the whole-run top reads the rollups: their sums are the rows' */
    ag_top_list *top = NULL;
    cr_assert_eq(ag_store_top(st, "r", "E5M2", 0, 10, &top), AG_OK);
    for (size_t i = 0; i < top->n; i++)
        if (strcmp(top->items[i].tensor, "t") == 0) {
            cr_assert_eq(top->items[i].stalled, stalled);
            cr_assert_eq(top->items[i].steps, 30);
        }
    ag_free(top);
    ag_store_close(st);
}

/* ---------------------------------------------------- batched pushes */

/* One message of the stream below: msg's rows (results of two tensors and
 * two formats, their stats rows, a run delta, a counter and every 7th
 * message a snapshot), in the daemon's order: steps rising across messages,
 * tensors and formats in turn within each. Message 40 repeats a result of
 * an earlier step (the later row of a key wins). */
static size_t message_rows(int msg, ag_write_item *out) {
    size_t n = 0;
    uint64_t step = (uint64_t)msg / 2;
    int64_t t = 1 + msg % 2;
    for (int64_t f = 1; f <= 2; f++) {
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = t,
                                            .format_id = f,
                                            .step = msg == 40 ? 3 : step,
                                            .counts = {.stalled = (uint64_t)msg % 5, .total = 8},
                                            .flips = (uint64_t)msg % 3,
                                            .amax = 1.0 + msg,
                                            .scale = 1};
        out[n++] = it;
    }
    ag_write_item st = {.kind = AG_W_STATS};
    st.u.stats = (ag_store_stats_row){t, 0, step, (double)msg, 8, 0, 1};
    out[n++] = st;
    if (msg % 7 == 0) {
        ag_write_item sn = {.kind = AG_W_SNAPSHOT};
        sn.u.snapshot.tensor_id = 1;
        sn.u.snapshot.step = step;
        sn.u.snapshot.n = 4;
        cr_assert_not_null(sn.u.snapshot.w = malloc(4 * sizeof(float)));
        for (int i = 0; i < 4; i++) sn.u.snapshot.w[i] = (float)msg;
        out[n++] = sn;
    }
    ag_write_item rd = {.kind = AG_W_RUN_DELTA};
    rd.u.run_delta = (ag_store_run_delta){.run_id = 1, .messages = 1, .last_step = step};
    out[n++] = rd;
    ag_write_item c = {.kind = AG_W_COUNTER};
    c.u.counter.name = "bytes";
    c.u.counter.delta = 100;
    out[n++] = c;
    return n;
}

#define STREAM_MSGS 60

/* What the file holds: every point of both tensors in both formats, the
 * whole-run top (rollups), the counters and the stored snapshot. */
typedef struct file_view {
    ag_history_point pts[2][2][STREAM_MSGS];
    size_t npts[2][2];
    uint64_t top_stalled[2], top_steps[2];
    uint64_t rows_written, bytes, messages;
    stored_snapshot snap;
} file_view;

static void view_file(file_view *v) {
    memset(v, 0, sizeof *v);
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    const char *tn[2] = {"t", "u"}, *fn[2] = {"E5M2", "E3M4"};
    for (int t = 0; t < 2; t++)
        for (int f = 0; f < 2; f++) {
            ag_history_query q = {.run = "r", .tensor = tn[t], .format = fn[f]};
            ag_history *h = NULL;
            cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
            cr_assert_leq(h->n, STREAM_MSGS);
            v->npts[t][f] = h->n;
            for (size_t i = 0; i < h->n; i++) {
                v->pts[t][f][i] = h->points[i];
                v->pts[t][f][i].computed = NULL; /* a pointer into h */
            }
            ag_free(h);
        }
    for (int f = 0; f < 2; f++) {
        ag_top_list *top = NULL;
        cr_assert_eq(ag_store_top(st, "r", fn[f], 0, 10, &top), AG_OK);
        for (size_t i = 0; i < top->n; i++) {
            v->top_stalled[f] += top->items[i].stalled;
            v->top_steps[f] += top->items[i].steps;
        }
        ag_free(top);
    }
    ag_status *s = NULL;
    cr_assert_eq(ag_store_status(st, &s), AG_OK);
    v->rows_written = s->rows_written;
    v->bytes = s->bytes;
    v->messages = s->messages;
    ag_free(s);
    ag_store_close(st);
    v->snap = stored();
}

/* The stream above through a fresh writer and file: each message's rows one
 * ag_writer_push at a time then ag_writer_boundary, or in one
 * ag_writer_push_batch (boundary set), with the writer held back (by
 * another connection's write lock) for the first half so batches span many
 * messages and superseded snapshots. */
static void write_stream(int batched, file_view *v) {
    ag_writer *w = start(100000, 1000, 1000000, NULL);
    ag_store *side = second_tensor();
    cr_assert_eq(ag_store_begin(side), AG_OK); /* the writer waits behind it */
    for (int msg = 0; msg < STREAM_MSGS; msg++) {
        if (msg == STREAM_MSGS / 2) {
            cr_assert_eq(ag_store_rollback(side), AG_OK);
            ag_store_close(side);
            side = NULL;
        }
        ag_write_item rows[8];
        size_t n = message_rows(msg, rows);
        if (batched) {
            cr_assert_eq(ag_writer_push_batch(w, rows, n, 1), AG_OK);
        } else {
            for (size_t i = 0; i < n; i++) cr_assert_eq(ag_writer_push(w, &rows[i]), AG_OK);
            ag_writer_boundary(w);
        }
    }
    ag_writer_stop(w);
    view_file(v);
    teardown();
    setup();
}

Test(writer, rows_pushed_as_a_batch_commit_exactly_as_pushed_one_by_one) {
    static file_view one, batch;
    write_stream(0, &one);
    write_stream(1, &batch);
    /* what the stream should leave, whichever way it was pushed */
    cr_assert_eq(one.npts[0][0], STREAM_MSGS / 2 - 1, "step 20 never came (message 40)");
    cr_assert_eq(one.pts[0][0][3].stalled, 40 % 5, "message 40's row replaced step 3's");
    cr_assert_eq(one.snap.count, 1);
    cr_assert_eq(one.snap.step, (STREAM_MSGS - 4) / 2, "the newest snapshot (message 56)");
    cr_assert_eq(one.messages, STREAM_MSGS);
    cr_assert_eq(one.bytes, 100 * STREAM_MSGS);
    for (int t = 0; t < 2; t++)
        for (int f = 0; f < 2; f++) {
            cr_assert_eq(batch.npts[t][f], one.npts[t][f]);
            for (size_t i = 0; i < one.npts[t][f]; i++) {
                const ag_history_point *a = &one.pts[t][f][i], *b = &batch.pts[t][f][i];
                cr_assert_eq(a->step, b->step);
                cr_assert_eq(a->stalled, b->stalled, "tensor %d format %d point %zu", t, f, i);
                cr_assert_eq(a->total, b->total);
                cr_assert_eq(a->flips, b->flips);
                cr_assert_eq(a->amax, b->amax);
            }
        }
    for (int f = 0; f < 2; f++) {
        cr_assert_eq(batch.top_stalled[f], one.top_stalled[f]);
        cr_assert_eq(batch.top_steps[f], one.top_steps[f]);
    }
    /* rows_written is not compared: a snapshot superseded while queued is
     * skipped only when the newer one arrived before the writer took it, so
     * it counts once or not at all, as the threads' timing falls (the
     * stored snapshot, checked below, is the newest either way) */
    cr_assert_eq(batch.bytes, one.bytes);
    cr_assert_eq(batch.messages, one.messages);
    cr_assert_eq(batch.snap.count, one.snap.count);
    cr_assert_eq(batch.snap.step, one.snap.step);
    cr_assert_eq(batch.snap.first, one.snap.first);
}

/* The daemon's loop pushes a message's rows whatever the depth and then
 * stops taking messages while ag_writer_full (the clients' blocking policy
 * waits meanwhile): a batch is taken whole above the high-water mark, the
 * queue reports full, and room is announced once when it drains. */
Test(writer, a_batch_above_the_high_water_mark_is_taken_whole_and_reports_full) {
    atomic_store(&space_calls, 0);
    ag_writer *w = start(1000, 1, 10, on_space);
    ag_store *blocker = NULL;
    cr_assert_eq(ag_store_open(&blocker, db, 0), AG_OK);
    cr_assert_eq(ag_store_begin(blocker), AG_OK);
    stall_writer(w);
    ag_write_item rows[50];
    for (uint64_t s = 0; s < 50; s++) {
        rows[s] = (ag_write_item){.kind = AG_W_RESULT};
        rows[s].u.result = (ag_store_result_row){.tensor_id = 1, .format_id = 1, .step = s + 1};
    }
    cr_assert_not(ag_writer_full(w));
    cr_assert_eq(ag_writer_push_batch(w, rows, 30, 1), AG_OK);
    cr_assert(ag_writer_full(w), "depth %zu", ag_writer_depth(w));
    cr_assert_eq(ag_writer_depth(w), 30);
    /* the ring grows to take a batch larger than its room, in one piece */
    cr_assert_eq(ag_writer_push_batch(w, rows + 30, 20, 1), AG_OK);
    cr_assert_eq(ag_writer_push_batch(w, NULL, 0, 1), AG_OK); /* a boundary alone */
    release_and_expect_room(w, blocker);
    cr_assert_eq(points(), 50);
}

static long long file_bytes(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long long n = ftell(f);
    fclose(f);
    return n;
}

/* Commits keep coming, each writing megabytes (a 4 MiB snapshot rewritten),
 * 120 MiB of WAL frames in all: the WAL file must start over rather than
 * grow with them. The writer's commits leave checkpoints to the
 * checkpointer; past AG_WRITER_WAL_MAX the writer waits for the one its last
 * commit asked for, so its next transaction restarts the WAL. */
Test(writer, the_wal_starts_over_under_a_steady_stream_of_commits) {
    ag_writer *w = start(1, 1, 1000000, NULL);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", db);
    const size_t n = 1 << 20;
    long long most = 0;
    uint64_t rows = 0;
    for (uint64_t step = 1; step <= 30; step++) {
        push_snapshot(w, step, n);
        ag_writer_boundary(w);
        /* committed before the next: none is skipped as superseded */
        for (int i = 0; i < 20000 && ag_writer_rows_written(w) == rows; i++) sleep_ms(1);
        cr_assert_gt(ag_writer_rows_written(w), rows, "snapshot %llu not committed",
                     (unsigned long long)step);
        rows = ag_writer_rows_written(w);
        long long b = file_bytes(wal);
        if (b > most) most = b;
    }
    ag_writer_stop(w);
    cr_expect_lt(most, 64LL << 20, "the WAL grew to %lld bytes", most);
    stored_snapshot s = stored();
    cr_expect_eq(s.step, 30);
    cr_expect_eq(s.n, n);
}
