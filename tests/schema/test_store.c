/*
 * test_store.c - the SQLite store (schema/): migrations, opening errors,
 * writes read back through every query, downsampling, restore of the engine
 * state, a process killed mid-transaction leaving the file intact, a file
 * of an older schema version migrated with its data, and a status that reads
 * the same from every connection.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"
#include "schema/store_internal.h"
#include "tests/tmpdir.h"
#include "tests/sql_results.h"

static char dir[64];
static char db_path[128];

static void setup(void) {
    strcpy(dir, "/tmp/ag_store_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/t.db", dir);
}

static void teardown(void) { ag_tmpdir_remove(dir); }

TestSuite(store, .init = setup, .fini = teardown);

static ag_store *open_rw(void) {
    ag_store *st = NULL;
    int err = ag_store_open(&st, db_path, AG_STORE_CREATE);
    cr_assert_eq(err, AG_OK, "open: %s", ag_store_errmsg(st));
    return st;
}

/* One run "r1" (id 1) with tensor "fc1.weight" (id 1), format E5M2 (id 1) and
 * E3M4 (id 2), results at steps 1..n with stalled = step, total = 10. */
static void fill(ag_store *st, uint64_t n) {
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1,
                            .name = "r1",
                            .host = "h",
                            .pid = 42,
                            .client_id = 7,
                            .started_ms = 1000,
                            .metadata = "{\"lr\":0.1}",
                            .launch_id = "L1"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    ag_store_client_row client = {
        .client_id = 7, .run_id = 1, .launch_id = "L1", .asked = "r1", .started_ms = 1000};
    cr_assert_eq(ag_store_put_client(st, &client), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "fc1.weight", AG_ROLE_WEIGHT), AG_OK);
    for (uint64_t step = 1; step <= n; step++) {
        ag_store_result_row r = {.tensor_id = 1,
                                 .format_id = 1,
                                 .step = step,
                                 .counts = {.stalled = step, .total = 10, .overflow = 1},
                                 .flips = 2,
                                 .amax = 0.5,
                                 .scale = 0.25 * (double)step};
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
        ag_store_stats_row s = {.tensor_id = 1,
                                .role = AG_ROLE_WEIGHT,
                                .step = step,
                                .amax = (double)step,
                                .numel = 100};
        cr_assert_eq(ag_store_put_stats(st, &s), AG_OK);
    }
    ag_store_run_delta rd = {.run_id = 1, .messages = n, .last_step = n};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    ag_store_client_delta cd = {.client_id = 7, .last_seq = n, .has_drop = 1, .last_drop = 3};
    cr_assert_eq(ag_store_apply_client_delta(st, &cd), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_tensor_delta td = {.tensor_id = 1,
                                .role = AG_ROLE_WEIGHT,
                                .numel = 100,
                                .first_step = 1,
                                .last_step = n,
                                .snapshots = n,
                                .last_amax = (double)n};
    cr_assert_eq(ag_store_apply_tensor_delta(st, &td), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
}

/* A file of this build (schema 12 on) put back to schema 10, row for row:
 * the results in their table again, the rollups in one table; a file as an
 * older altgrad left it. */
static void results_back_to_table(sqlite3 *db) {
    cr_assert_eq(sqlite3_exec(db,
                              "CREATE TABLE results_old (tensor_id INTEGER NOT NULL, format_id"
                              " INTEGER NOT NULL, step INTEGER NOT NULL, stalled INTEGER NOT NULL,"
                              " total INTEGER NOT NULL, flips INTEGER, overflow INTEGER NOT NULL,"
                              " underflow INTEGER NOT NULL, nonfinite INTEGER NOT NULL, amax REAL"
                              " NOT NULL, scale REAL NOT NULL, source INTEGER NOT NULL DEFAULT 0,"
                              " ranks INTEGER NOT NULL DEFAULT 1, complete INTEGER NOT NULL"
                              " DEFAULT 1, mse REAL, sqnr_db REAL, PRIMARY KEY (tensor_id,"
                              " format_id, step)) WITHOUT ROWID;"
                              "INSERT INTO results_old SELECT * FROM results;"
                              "DROP TABLE result_segs;"
                              "ALTER TABLE results_old RENAME TO results;"
                              /* and migration 12's open buckets back in one table */
                              "INSERT INTO rollups_sealed SELECT r.* FROM rollups r WHERE NOT"
                              " EXISTS (SELECT 1 FROM rollups_sealed s WHERE"
                              " s.tensor_id=r.tensor_id AND s.format_id=r.format_id AND"
                              " s.width=r.width AND s.bucket=r.bucket);"
                              "DROP VIEW rollups;"
                              "DROP TABLE rollup_heads;"
                              "ALTER TABLE rollups_sealed RENAME TO rollups;"
                              /* and migration 13's tiers back to 10, 100, 1000 */
                              "DELETE FROM rollups WHERE width=10000;"
                              "INSERT INTO rollups SELECT tensor_id, format_id, 10, step / 10,"
                              " count(*), sum(stalled), sum(total), coalesce(sum(flips), 0),"
                              " count(*) - count(flips), sum(overflow), sum(underflow),"
                              " sum(nonfinite), min(step), max(step), min(amax), max(amax), 0,"
                              " min(scale), max(scale), 0, sum(source), count(*) - sum(complete),"
                              " min(ranks) FROM results GROUP BY tensor_id, format_id, step / 10;"
                              "PRAGMA user_version=10",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
}

Test(store, open_creates_a_missing_file_at_the_newest_schema_version) {
    ag_store *st = open_rw();
    int v = -1;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_assert_eq(v, ag_store_schema_version());
    cr_assert_geq(v, 2);
    ag_store_close(st);
}

Test(store, migrations_run_on_an_existing_empty_file) {
    FILE *f = fopen(db_path, "w");
    cr_assert_not_null(f);
    fclose(f);
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db_path, 0), AG_OK, "%s", ag_store_errmsg(st));
    int v = -1;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_assert_eq(v, ag_store_schema_version());
    cr_assert_eq(ag_store_integrity_check(st), AG_OK);
    ag_store_close(st);
}

Test(store, readonly_open_of_a_missing_file_is_a_clear_error) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db_path, AG_STORE_READONLY), AG_ESTORE);
    cr_assert_not_null(st);
    cr_assert_not_null(strstr(ag_store_errmsg(st), db_path), "%s", ag_store_errmsg(st));
    cr_assert_not_null(strstr(ag_store_errmsg(st), "no such"), "%s", ag_store_errmsg(st));
    ag_store_close(st);
    cr_assert_neq(access(db_path, F_OK), 0, "readonly open must not create the file");
}

Test(store, open_without_create_flag_does_not_create_a_file) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db_path, 0), AG_ESTORE);
    ag_store_close(st);
    cr_assert_neq(access(db_path, F_OK), 0);
}

Test(store, a_file_from_a_newer_altgrad_is_refused) {
    ag_store *st = open_rw();
    ag_store_close(st);
    /* Bump user_version past what this build knows, through SQLite itself. */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "sqlite3 %s 'PRAGMA user_version=999' 2>/dev/null", db_path);
    if (system(cmd) != 0) cr_skip_test("sqlite3 shell not available");
    cr_assert_eq(ag_store_open(&st, db_path, 0), AG_ESTORE);
    cr_assert_not_null(strstr(ag_store_errmsg(st), "newer"), "%s", ag_store_errmsg(st));
    ag_store_close(st);
}

Test(store, written_rows_come_back_through_every_query) {
    ag_store *st = open_rw();
    fill(st, 5);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_scale(st, 1, 1, AG_ROLE_WEIGHT, 5, 4.0, 0.5), AG_OK);
    cr_assert_eq(ag_store_put_drop(st, 1, 7, 2000, 3, 2, "gap"), AG_OK);
    ag_store_run_delta rd = {.run_id = 1, .dropped = 2};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    cr_assert_eq(ag_store_add_counter(st, "bytes", 1234), AG_OK);
    cr_assert_eq(ag_store_add_counter(st, "bytes", 1), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);

    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(ro, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_assert_str_eq(runs->items[0].name, "r1");
    cr_assert_str_eq(runs->items[0].host, "h");
    cr_assert_eq(runs->items[0].pid, 42);
    cr_assert_eq(runs->items[0].client_id, 7);
    cr_assert_eq(runs->items[0].last_step, 5);
    cr_assert_eq(runs->items[0].messages, 5);
    cr_assert_eq(runs->items[0].dropped, 2);
    cr_assert_str_eq(runs->items[0].metadata, "{\"lr\":0.1}");
    ag_free(runs);

    ag_tensor_list *ts = NULL;
    cr_assert_eq(ag_store_tensors(ro, "r1", &ts), AG_OK);
    cr_assert_eq(ts->n, 1);
    cr_assert_str_eq(ts->items[0].name, "fc1.weight");
    cr_assert_eq(ts->items[0].first_step, 1);
    cr_assert_eq(ts->items[0].last_step, 5);
    cr_assert_eq(ts->items[0].snapshots, 5);
    cr_assert_eq(ts->items[0].numel, 100);
    ag_free(ts);

    ag_history_query q = {.run = "r1", .tensor = "fc1.weight"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(ro, &q, &h), AG_OK);
    cr_assert_str_eq(h->format, "E5M2");
    cr_assert_eq(h->n, 5);
    for (size_t i = 0; i < 5; i++) {
        cr_assert_eq(h->points[i].step, i + 1);
        cr_assert_eq(h->points[i].stalled, i + 1);
        cr_assert_eq(h->points[i].total, 10);
        cr_assert_float_eq(h->points[i].stall_rate, (double)(i + 1) / 10, 1e-12);
        cr_assert_eq(h->points[i].flips, 2);
        cr_assert_eq(h->points[i].overflow, 1);
        cr_assert_float_eq(h->points[i].scale, 0.25 * (double)(i + 1), 1e-12);
    }
    ag_free(h);

    ag_scale_list *sc = NULL;
    cr_assert_eq(ag_store_scales(ro, "r1", "E5M2", &sc), AG_OK);
    cr_assert_eq(sc->n, 1);
    cr_assert_str_eq(sc->items[0].tensor, "fc1.weight");
    cr_assert_eq(sc->items[0].step, 5);
    cr_assert_float_eq(sc->items[0].scale, 0.5, 1e-12);
    ag_free(sc);

    ag_top_list *top = NULL;
    cr_assert_eq(ag_store_top(ro, "r1", NULL, 2, 0, &top), AG_OK);
    cr_assert_eq(top->from_step, 4);
    cr_assert_eq(top->to_step, 5);
    cr_assert_eq(top->n, 1);
    cr_assert_eq(top->items[0].stalled, 9);
    cr_assert_eq(top->items[0].total, 20);
    cr_assert_eq(top->items[0].steps, 2);
    ag_free(top);

    ag_status *status = NULL;
    cr_assert_eq(ag_store_status(ro, &status), AG_OK);
    cr_assert_eq(status->runs, 1);
    cr_assert_eq(status->tensors, 1);
    cr_assert_eq(status->bytes, 1235);
    cr_assert_eq(status->dropped, 2);
    cr_assert_str_eq(status->formats, "E5M2,E3M4");
    cr_assert_float_eq(status->uptime_s, 0.0, 0.0);
    ag_free(status);
    ag_store_close(ro);
    ag_store_close(st);
}

Test(store, history_downsampling_sums_counts_over_buckets) {
    ag_store *st = open_rw();
    fill(st, 7);
    ag_history_query q = {.run = "r1",
                          .tensor = "fc1.weight",
                          .format = "E5M2",
                          .from_step = 2,
                          .to_step = 6,
                          .every = 2};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 3); /* {2,3} {4,5} {6} */
    cr_assert_eq(h->points[0].step, 3);
    cr_assert_eq(h->points[0].stalled, 5);
    cr_assert_eq(h->points[0].total, 20);
    cr_assert_float_eq(h->points[0].stall_rate, 0.25, 1e-12);
    cr_assert_eq(h->points[1].step, 5);
    cr_assert_eq(h->points[1].stalled, 9);
    cr_assert_eq(h->points[2].step, 6);
    cr_assert_eq(h->points[2].total, 10);
    cr_assert_float_eq(h->points[2].scale, 1.5, 1e-12);
    ag_free(h);
    ag_store_close(st);
}

Test(store, unknown_run_tensor_or_format_is_not_found) {
    ag_store *st = open_rw();
    fill(st, 1);
    ag_tensor_list *ts = NULL;
    cr_assert_eq(ag_store_tensors(st, "nope", &ts), AG_ENOTFOUND);
    cr_assert_null(ts);
    cr_assert_not_null(strstr(ag_store_errmsg(st), "nope"));
    ag_history *h = NULL;
    ag_history_query q = {.run = "r1", .tensor = "missing"};
    cr_assert_eq(ag_store_history(st, &q, &h), AG_ENOTFOUND);
    q.tensor = "fc1.weight";
    q.format = "E4M3";
    cr_assert_eq(ag_store_history(st, &q, &h), AG_ENOTFOUND);
    ag_scale_list *sc = NULL;
    cr_assert_eq(ag_store_scales(st, "r1", "E9M9", &sc), AG_ENOTFOUND);
    ag_top_list *top = NULL;
    cr_assert_eq(ag_store_top(st, "zz", NULL, 0, 0, &top), AG_ENOTFOUND);
    ag_store_close(st);
}

Test(store, rollback_discards_the_open_transaction) {
    ag_store *st = open_rw();
    fill(st, 3);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_result_row r = {.tensor_id = 1, .format_id = 1, .step = 99};
    cr_assert_eq(ag_store_put_result(st, &r), AG_OK);
    cr_assert_eq(ag_store_rollback(st), AG_OK);
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 3);
    ag_free(h);
    ag_store_close(st);
}

Test(store, a_process_killed_mid_transaction_leaves_the_file_intact) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ag_store *st = NULL;
        if (ag_store_open(&st, db_path, AG_STORE_CREATE)) _exit(2);
        fill(st, 100);
        if (ag_store_begin(st)) _exit(3);
        for (uint64_t step = 101; step <= 5000; step++) {
            ag_store_result_row r = {.tensor_id = 1, .format_id = 1, .step = step};
            if (ag_store_put_result(st, &r)) _exit(4);
        }
        raise(SIGKILL); /* no commit, no close */
        _exit(5);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);

    ag_store *st = open_rw();
    cr_assert_eq(ag_store_integrity_check(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 100);
    cr_assert_eq(h->points[99].step, 100);
    ag_free(h);
    /* And the file takes new writes. */
    fill(st, 101);
    ag_store_close(st);
}

typedef struct restored {
    int formats, runs, launches, clients, tensors, scales, snapshots;
    double hist[32];
    size_t hist_n;
    float w[4];
    uint64_t snap_step;
    double scale;
} restored;

static int on_format(void *ctx, int64_t id, const char *name, int e, int m, int b, int inf,
                     int nan) {
    (void)id, (void)name, (void)e, (void)m, (void)b, (void)inf, (void)nan;
    ((restored *)ctx)->formats++;
    return 0;
}
static int on_run(void *ctx, int64_t id, const char *name, const char *asked, const char *launch,
                  uint64_t step, int64_t ended) {
    cr_expect_eq(id, 1);
    cr_expect_str_eq(name, "r1");
    cr_expect_str_eq(asked, "r1", "a run made with no asked name was asked for its own");
    cr_assert_not_null(launch);
    cr_expect_str_eq(launch, "L1");
    cr_expect_eq(step, 20);
    cr_expect_eq(ended, 0);
    ((restored *)ctx)->runs++;
    return 0;
}
static int on_launch(void *ctx, const char *launch, const char *asked, int64_t run_id) {
    cr_expect_str_eq(launch, "L1");
    cr_expect_str_eq(asked, "r1");
    cr_expect_eq(run_id, 1);
    ((restored *)ctx)->launches++;
    return 0;
}
static int on_client(void *ctx, uint64_t cid, int64_t run_id, uint64_t seq, uint64_t drop,
                     int has_drop) {
    cr_expect_eq(cid, 7);
    cr_expect_eq(run_id, 1);
    cr_expect_eq(seq, 20);
    cr_expect(has_drop);
    cr_expect_eq(drop, 3);
    ((restored *)ctx)->clients++;
    return 0;
}
static int on_tensor(void *ctx, int64_t id, int64_t run_id, const char *name, int role) {
    (void)id, (void)run_id, (void)name, (void)role;
    ((restored *)ctx)->tensors++;
    return 0;
}
static int on_history(void *ctx, int64_t tid, int role, const double *v, size_t n) {
    restored *r = ctx;
    cr_expect_eq(tid, 1);
    cr_expect_eq(role, AG_ROLE_WEIGHT);
    memcpy(r->hist, v, n * sizeof *v);
    r->hist_n = n;
    return 0;
}
static int on_scale(void *ctx, int64_t tid, int64_t fid, int role, uint64_t step, double amax,
                    double scale) {
    (void)tid, (void)fid, (void)role, (void)step, (void)amax;
    ((restored *)ctx)->scales++;
    ((restored *)ctx)->scale = scale;
    return 0;
}
static int on_snapshot(void *ctx, int64_t tid, uint64_t step, const float *w, size_t n) {
    restored *r = ctx;
    (void)tid;
    cr_expect_eq(n, 4);
    memcpy(r->w, w, sizeof r->w);
    r->snap_step = step;
    r->snapshots++;
    return 0;
}

Test(store, restore_returns_the_newest_history_oldest_first_and_engine_state) {
    ag_store *st = open_rw();
    fill(st, 20);
    float w[4] = {1, -2, 3.5f, 0};
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_scale(st, 1, 1, AG_ROLE_WEIGHT, 20, 20.0, 20.0 / 57344), AG_OK);
    cr_assert_eq(ag_store_put_snapshot(st, 1, 19, w, 4), AG_OK);
    cr_assert_eq(ag_store_put_snapshot(st, 1, 20, w, 4), AG_OK);
    /* A record with no finite element is not part of the history. */
    ag_store_stats_row bad = {
        .tensor_id = 1, .role = AG_ROLE_WEIGHT, .step = 21, .amax = 0, .numel = 4, .nonfinite = 4};
    cr_assert_eq(ag_store_put_stats(st, &bad), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);

    restored r = {0};
    ag_store_restore_cb cb = {.ctx = &r,
                              .format = on_format,
                              .run = on_run,
                              .launch = on_launch,
                              .client = on_client,
                              .tensor = on_tensor,
                              .history = on_history,
                              .scale = on_scale,
                              .snapshot = on_snapshot};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(r.formats, 2);
    cr_assert_eq(r.runs, 1);
    cr_assert_eq(r.launches, 1);
    cr_assert_eq(r.clients, 1);
    cr_assert_eq(r.tensors, 1);
    cr_assert_eq(r.hist_n, 3, "got %zu", r.hist_n); /* LIMIT 4 minus the skipped row */
    cr_assert_float_eq(r.hist[0], 18.0, 0);
    cr_assert_float_eq(r.hist[2], 20.0, 0);
    cr_assert_eq(r.scales, 1);
    cr_assert_float_eq(r.scale, 20.0 / 57344, 1e-15);
    cr_assert_eq(r.snapshots, 1);
    cr_assert_eq(r.snap_step, 20);
    cr_assert_float_eq(r.w[2], 3.5f, 0);
    int64_t rid, tid, fid;
    cr_assert_eq(ag_store_max_ids(st, &rid, &tid, &fid), AG_OK);
    cr_assert_eq(rid, 1);
    cr_assert_eq(tid, 1);
    cr_assert_eq(fid, 2);
    ag_store_close(st);
}

Test(store, a_reopened_run_keeps_its_counters) {
    ag_store *st = open_rw();
    fill(st, 3);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r1", .host = "h2", .pid = 43, .client_id = 8};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_assert_str_eq(runs->items[0].host, "h2");
    cr_assert_eq(runs->items[0].client_id, 8);
    cr_assert_eq(runs->items[0].messages, 3);
    cr_assert_str_eq(runs->items[0].metadata, "{}");
    ag_free(runs);
    ag_store_close(st);
}

Test(store, a_clients_delivery_counts_its_committed_messages_only) {
    ag_store *st = open_rw();
    fill(st, 3);
    const uint64_t cid = 0xfedcba9876543210ull; /* past INT64_MAX: stored as int64 */
    uint64_t messages = 99, seq = 99;
    cr_assert_eq(ag_store_delivery(st, cid, &messages, &seq), AG_OK);
    cr_assert_eq(messages, 0, "a client never seen");
    cr_assert_eq(seq, 0);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_client_row row = {.client_id = cid, .run_id = 1, .asked = "r1"};
    cr_assert_eq(ag_store_put_client(st, &row), AG_OK, "%s", ag_store_errmsg(st));
    for (uint64_t q = 0; q < 5; q++) {
        ag_store_client_delta d = {.client_id = cid, .last_seq = q, .delivered = 1};
        cr_assert_eq(ag_store_apply_client_delta(st, &d), AG_OK, "%s", ag_store_errmsg(st));
    }
    /* a delta that carries no message (a refused one's) counts nothing */
    ag_store_client_delta none = {.client_id = cid, .last_seq = 9};
    cr_assert_eq(ag_store_apply_client_delta(st, &none), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_assert_eq(ag_store_delivery(st, cid, &messages, &seq), AG_OK);
    cr_assert_eq(messages, 5);
    cr_assert_eq(seq, 4);

    /* rolled back: not stored, so not counted */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_client_delta later = {.client_id = cid, .last_seq = 10, .delivered = 1};
    cr_assert_eq(ag_store_apply_client_delta(st, &later), AG_OK);
    cr_assert_eq(ag_store_rollback(st), AG_OK);
    cr_assert_eq(ag_store_delivery(st, cid, &messages, &seq), AG_OK);
    cr_assert_eq(messages, 5);
    cr_assert_eq(seq, 4);

    /* the client starting anew clears its sequence state, not what it
     * delivered: the count covers the client id's life, the seq only grows */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_client(st, &row), AG_OK);
    ag_store_client_delta again = {.client_id = cid, .last_seq = 2, .delivered = 1};
    cr_assert_eq(ag_store_apply_client_delta(st, &again), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_assert_eq(ag_store_delivery(st, cid, &messages, &seq), AG_OK);
    cr_assert_eq(messages, 6);
    cr_assert_eq(seq, 4);
    cr_assert_eq(ag_store_delivery(st, cid + 1, &messages, &seq), AG_OK);
    cr_assert_eq(messages, 0, "another client");
    cr_assert_eq(ag_store_delivery(NULL, cid, &messages, &seq), AG_EINVAL);
    ag_store_close(st);
}

Test(store, history_steps_past_int64_bound_the_range_instead_of_wrapping) {
    ag_store *st = open_rw();
    fill(st, 5);
    ag_history *h = NULL;
    /* from beyond every storable step: nothing, not everything. */
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight", .from_step = UINT64_MAX};
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_expect_eq(h->n, 0);
    ag_free(h);
    q.from_step = (uint64_t)INT64_MAX + 1;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_expect_eq(h->n, 0);
    ag_free(h);
    /* to beyond every storable step: open ended, not empty. */
    q = (ag_history_query){
        .run = "r1", .tensor = "fc1.weight", .from_step = 2, .to_step = UINT64_MAX};
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_expect_eq(h->n, 4);
    ag_free(h);
    ag_store_close(st);
}

Test(store, a_file_another_writer_keeps_locked_is_refused_at_open, .timeout = 60) {
    ag_store *holder = open_rw();
    cr_assert_eq(ag_store_begin(holder), AG_OK); /* holds the write lock */
    ag_store *st = NULL;
    cr_expect_eq(ag_store_open(&st, db_path, AG_STORE_CREATE), AG_ESTORE);
    cr_expect_not_null(strstr(ag_store_errmsg(st), "locked"), "%s", ag_store_errmsg(st));
    ag_store_close(st);
    cr_assert_eq(ag_store_rollback(holder), AG_OK);
    ag_store_close(holder);
    st = open_rw(); /* free again */
    ag_store_close(st);
}

/* Root may write to any file, so as root the check runs in a child that
 * drops to the nobody user (65534) first, in a folder it may write to. */
Test(store, a_write_protected_file_is_refused_for_writing) {
    ag_store_close(open_rw());
    cr_assert_eq(chmod(db_path, 0444), 0);
    pid_t pid = geteuid() == 0 ? fork() : 0;
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int as_child = geteuid() == 0;
        if (as_child) {
            char dir_of_db[128];
            snprintf(dir_of_db, sizeof dir_of_db, "%s", db_path);
            *strrchr(dir_of_db, '/') = '\0';
            if (chmod(dir_of_db, 0777) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
        }
        ag_store *st = NULL;
        int rc = ag_store_open(&st, db_path, AG_STORE_CREATE);
        /* "read-only" is the store's own refusal; SQLite alone would open the
         * file read-only without a word and fail at the first commit */
        int ok = rc == AG_ESTORE && strstr(ag_store_errmsg(st), "read-only") != NULL;
        if (!as_child) cr_expect(ok, "rc %d: %s", rc, ag_store_errmsg(st));
        if (as_child && !ok) fprintf(stderr, "as nobody: rc %d: %s\n", rc, ag_store_errmsg(st));
        ag_store_close(st);
        if (as_child) _exit(ok ? 0 : 1);
    } else {
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "as nobody, opening a 0444 database for writing was not refused (status %d)",
                  status);
    }
    chmod(db_path, 0644);
}

/* ------------------------------------------------- defined formats */

typedef struct format_seen {
    int n;
    char name[16];
    int e, m, bias, inf, nan;
} format_seen;

static int keep_format(void *ctx, int64_t id, const char *name, int e, int m, int b, int inf,
                       int nan) {
    format_seen *s = ctx;
    (void)id;
    s->n++;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->e = e, s->m = m, s->bias = b, s->inf = inf, s->nan = nan;
    return 0;
}

Test(store, a_defined_format_is_stored_with_its_whole_definition) {
    const ag_format *f = NULL;
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &f), AG_OK);
    ag_store *st = open_rw();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 9, f), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_store_close(st);
    /* Reopened (as a daemon that was not told about E4M3 would), the file
     * says everything needed to define the format again. */
    st = open_rw();
    format_seen seen = {0};
    ag_store_restore_cb cb = {.ctx = &seen, .format = keep_format};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(seen.n, 1);
    cr_expect_str_eq(seen.name, "E4M3");
    cr_expect_eq(seen.e, 4);
    cr_expect_eq(seen.m, 3);
    cr_expect_eq(seen.bias, 7);
    cr_expect_eq(seen.inf, 0);
    cr_expect_eq(seen.nan, 1);
    ag_status *status = NULL;
    cr_assert_eq(ag_store_status(st, &status), AG_OK);
    cr_expect_str_eq(status->formats, "E4M3");
    ag_free(status);
    ag_store_close(st);
}

/* A client's sequence state as restore reports it. */
typedef struct client_seq {
    int clients, has_drop;
    uint64_t cid, seq, drop;
    int64_t run_id;
} client_seq;

static int keep_client(void *ctx, uint64_t cid, int64_t run_id, uint64_t seq, uint64_t drop,
                       int has_drop) {
    client_seq *c = ctx;
    *c = (client_seq){c->clients + 1, has_drop, cid, seq, drop, run_id};
    return 0;
}

typedef struct run_seen {
    int runs;
    char asked[64];
    int has_launch;
    uint64_t step;
} run_seen;

static int keep_run(void *ctx, int64_t id, const char *name, const char *asked, const char *launch,
                    uint64_t step, int64_t ended) {
    (void)id, (void)name, (void)ended;
    run_seen *r = ctx;
    r->runs++;
    snprintf(r->asked, sizeof r->asked, "%s", asked);
    r->has_launch = launch != NULL;
    r->step = step;
    return 0;
}

Test(store, a_version_2_file_migrates_its_runs_client_and_learns_the_drop_counter) {
    /* A file as schema version 2 left it, with one run. */
    cr_assert_geq(ag_store_migration_count, 4);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (int v = 0; v < 2; v++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[v], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO runs(id,name,host,pid,client_id,started_ms,last_step,"
                              "last_seq,messages,dropped) VALUES(1,'old','h',9,7,1000,40,41,42,5);"
                              "PRAGMA user_version=2",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);

    ag_store *st = open_rw();
    int v = -1;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_assert_eq(v, ag_store_schema_version());
    cr_assert_eq(ag_store_integrity_check(st), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(runs->n, 1);
    cr_expect_str_eq(runs->items[0].name, "old");
    cr_expect_eq(runs->items[0].client_id, 7);
    cr_expect_eq(runs->items[0].last_step, 40);
    cr_expect_eq(runs->items[0].messages, 42);
    cr_expect_eq(runs->items[0].dropped, 5);
    ag_free(runs);
    /* The old run was asked for by its own name, by no launch; its client
     * carries its sequence state but no drop counter yet. */
    run_seen rs = {0};
    ag_store_restore_cb rcb = {.ctx = &rs, .run = keep_run};
    cr_assert_eq(ag_store_restore(st, 4, &rcb), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(rs.runs, 1);
    cr_expect_str_eq(rs.asked, "old");
    cr_expect(!rs.has_launch);
    cr_expect_eq(rs.step, 40);
    client_seq c = {0};
    ag_store_restore_cb cb = {.ctx = &c, .client = keep_client};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(c.clients, 1);
    cr_expect_eq(c.cid, 7);
    cr_expect_eq(c.run_id, 1);
    cr_expect_eq(c.seq, 41);
    cr_expect(!c.has_drop);
    char name[AG_NAME_MAX + 1], launch[AG_LAUNCH_ID_MAX + 1];
    cr_assert_eq(ag_store_client_run(st, 7, name, sizeof name, launch, sizeof launch), AG_OK);
    cr_expect_str_eq(name, "old");
    cr_expect_str_eq(launch, "");
    /* Written with the sequence state, it comes back. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_client_delta cd = {.client_id = 7, .last_seq = 42, .has_drop = 1, .last_drop = 11};
    cr_assert_eq(ag_store_apply_client_delta(st, &cd), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_commit(st), AG_OK);
    c = (client_seq){0};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect(c.has_drop);
    cr_expect_eq(c.drop, 11);
    cr_expect_eq(c.seq, 42);
    /* A delta without it leaves it alone. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cd = (ag_store_client_delta){.client_id = 7, .last_seq = 43};
    cr_assert_eq(ag_store_apply_client_delta(st, &cd), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    c = (client_seq){0};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(c.drop, 11);
    cr_expect_eq(c.seq, 43);
    ag_store_close(st);
}

Test(store, the_clients_of_a_version_5_file_start_with_nothing_delivered) {
    /* A file as schema version 5 left it: one run, one client mid-run. */
    cr_assert_geq(ag_store_migration_count, 6);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (int v = 0; v < 5; v++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[v], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO runs(id,name,client_id,asked) VALUES(1,'r',7,'r');"
                              "INSERT INTO clients(client_id,run_id,asked,last_seq,last_drop)"
                              " VALUES(7,1,'r',30,0);"
                              "PRAGMA user_version=5",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *st = open_rw();
    int v = -1;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_assert_eq(v, ag_store_schema_version());
    uint64_t messages = 99, seq = 99;
    cr_assert_eq(ag_store_delivery(st, 7, &messages, &seq), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(messages, 0, "what came before the count is not claimed");
    cr_expect_eq(seq, 0);
    /* its next message counts, with its seq */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_client_delta cd = {.client_id = 7, .last_seq = 31, .has_drop = 1, .delivered = 1};
    cr_assert_eq(ag_store_apply_client_delta(st, &cd), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_assert_eq(ag_store_delivery(st, 7, &messages, &seq), AG_OK);
    cr_expect_eq(messages, 1);
    cr_expect_eq(seq, 31);
    ag_store_close(st);
}

Test(store, an_ended_run_of_a_version_3_file_leaves_no_client_to_restore) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (int v = 0; v < 3; v++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[v], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO runs(id,name,client_id,ended_ms,last_drop)"
                              " VALUES(1,'done',5,99,2),(2,'live',6,0,3);"
                              "PRAGMA user_version=3",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *st = open_rw();
    client_seq c = {0};
    ag_store_restore_cb cb = {.ctx = &c, .client = keep_client};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(c.clients, 1, "only the client of the run that did not end");
    cr_expect_eq(c.cid, 6);
    cr_expect(c.has_drop);
    cr_expect_eq(c.drop, 3);
    /* Both still say which run they went to. */
    char name[AG_NAME_MAX + 1], launch[AG_LAUNCH_ID_MAX + 1];
    cr_assert_eq(ag_store_client_run(st, 5, name, sizeof name, launch, sizeof launch), AG_OK);
    cr_expect_str_eq(name, "done");
    ag_store_close(st);
}

Test(store, a_client_row_says_which_run_its_messages_go_to) {
    ag_store *st = open_rw();
    fill(st, 2);
    char name[AG_NAME_MAX + 1], launch[AG_LAUNCH_ID_MAX + 1];
    cr_assert_eq(ag_store_client_run(st, 8, name, sizeof name, launch, sizeof launch),
                 AG_ENOTFOUND);
    cr_expect_not_null(strstr(ag_store_errmsg(st), "0000000000000008"), "%s", ag_store_errmsg(st));
    /* A second run, r1.2, asked for as r1 by another launch; client 8 joins it
     * and then ends, client 9 is a client of unknown launch. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_run_row run = {.id = 2, .name = "r1.2", .asked = "r1", .launch_id = "L2"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    ag_store_client_row c8 = {.client_id = 8, .run_id = 2, .launch_id = "L2", .asked = "r1"};
    ag_store_client_row c9 = {.client_id = UINT64_MAX, .run_id = 2, .asked = "r1.2"};
    cr_assert_eq(ag_store_put_client(st, &c8), AG_OK);
    cr_assert_eq(ag_store_put_client(st, &c9), AG_OK);
    ag_store_client_delta end8 = {.client_id = 8, .last_seq = 3, .ended = 1};
    cr_assert_eq(ag_store_apply_client_delta(st, &end8), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_assert_eq(ag_store_client_run(st, 8, name, sizeof name, launch, sizeof launch), AG_OK);
    cr_expect_str_eq(name, "r1.2");
    cr_expect_str_eq(launch, "L2");
    cr_assert_eq(ag_store_client_run(st, UINT64_MAX, name, sizeof name, launch, sizeof launch),
                 AG_OK, "a client id past int64 is stored as its bits");
    cr_expect_str_eq(name, "r1.2");
    cr_expect_str_eq(launch, "");
    cr_expect_eq(ag_store_client_run(st, 8, name, 4, launch, sizeof launch), AG_ERANGE);
    /* Restore: the launches each client named, and only the clients that
     * have not ended. */
    client_seq c = {0};
    ag_store_restore_cb cb = {.ctx = &c, .client = keep_client};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(c.clients, 2, "7 and UINT64_MAX; 8 ended");
    /* Starting a known client anew clears its state. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    c8.run_id = 1;
    cr_assert_eq(ag_store_put_client(st, &c8), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_assert_eq(ag_store_client_run(st, 8, name, sizeof name, launch, sizeof launch), AG_OK);
    cr_expect_str_eq(name, "r1");
    c = (client_seq){0};
    cr_assert_eq(ag_store_restore(st, 4, &cb), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(c.clients, 3);
    ag_store_close(st);
}

/* Status is what the file holds, whoever opens it and by whatever path:
 * the daemon's recorded version and formats, the committed counters, and
 * the file's canonical path. */
Test(store, status_reads_the_recorded_daemon_settings_and_counters_from_any_path) {
    ag_store *st = open_rw();
    fill(st, 3);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "version", "9.8.7"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "formats", "E3M4,E5M2,E4M3"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "formats", "E5M2,E3M4"), AG_OK); /* replaced */
    cr_assert_eq(ag_store_put_daemon_setting(st, "history_len", "24"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "amax_mode", "most_recent"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "scale_mode", "delayed"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "margin", "-1.5"), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "scale_min", "1e-10"), AG_OK);
    cr_assert_eq(ag_store_add_counter(st, "rows_written", 40), AG_OK);
    cr_assert_eq(ag_store_add_counter(st, "rows_written", 2), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);

    char twisted[256];
    snprintf(twisted, sizeof twisted, "%s/./../%s/t.db", dir, strrchr(dir, '/') + 1);
    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, twisted, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    ag_status *a = NULL, *b = NULL;
    cr_assert_eq(ag_store_status(st, &a), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_status(ro, &b), AG_OK, "%s", ag_store_errmsg(ro));
    cr_assert_str_eq(a->version, "9.8.7");
    cr_assert_str_eq(a->formats, "E5M2,E3M4");
    cr_assert_eq(a->rows_written, 42);
    cr_assert_eq(a->messages, 3);
    cr_assert_str_eq(a->db_path, db_path);
    cr_assert_str_eq(b->db_path, db_path, "opened as %s", twisted);
    cr_assert_str_eq(b->version, a->version);
    cr_assert_str_eq(b->formats, a->formats);
    cr_assert_eq(b->rows_written, a->rows_written);
    cr_assert_eq(b->history_len, 24);
    cr_assert_str_eq(b->amax_mode, "most_recent");
    cr_assert_str_eq(b->scale_mode, "delayed");
    cr_assert_eq(b->margin, -1.5);
    cr_assert_eq(b->scale_min, 1e-10);
    ag_free(a);
    ag_free(b);
    ag_store_close(ro);
    ag_store_close(st);
}

/* A file no daemon recorded settings in (or one from before schema version
 * 4, read without migrating): no version, the formats the file knows. */
Test(store, status_without_recorded_settings_has_no_version_and_the_known_formats) {
    ag_store *st = open_rw();
    fill(st, 2);
    ag_status *s = NULL;
    cr_assert_eq(ag_store_status(st, &s), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_null(s->version);
    cr_expect_str_eq(s->formats, "E5M2,E3M4");
    cr_expect_eq(s->rows_written, 0);
    cr_expect_eq(s->history_len, 0, "the scale rule is unknown");
    cr_expect_null(s->amax_mode);
    cr_expect_null(s->scale_mode);
    ag_free(s);
    ag_store_close(st);

    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    cr_assert_eq(
        sqlite3_exec(db, "DROP TABLE daemon_settings; PRAGMA user_version=3", NULL, NULL, NULL),
        SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    cr_assert_eq(ag_store_status(ro, &s), AG_OK, "%s", ag_store_errmsg(ro));
    cr_expect_null(s->version);
    cr_expect_str_eq(s->formats, "E5M2,E3M4");
    ag_free(s);
    ag_store_close(ro);
}

/* A history longer than one query reply may carry is refused the same way
 * the daemon would have to refuse it; with every or a range it answers. */
Test(store, a_history_past_the_reply_limit_is_too_big_unless_downsampled) {
    ag_store *st = open_rw();
    fill(st, 1);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    for (uint64_t step = 2; step <= AG_STORE_MAX_POINTS + 1; step++) {
        ag_store_result_row r = {.tensor_id = 1,
                                 .format_id = 1,
                                 .step = step,
                                 .counts = {.stalled = 1, .total = 2},
                                 .amax = 1,
                                 .scale = 1};
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight", .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_ETOOBIG);
    cr_assert_null(h);
    cr_assert_not_null(strstr(ag_store_errmsg(st), "--every"), "%s", ag_store_errmsg(st));
    q.every = 2;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(h->n, AG_STORE_MAX_POINTS / 2 + 1);
    ag_free(h);
    q.every = 0;
    q.to_step = AG_STORE_MAX_POINTS;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(h->n, AG_STORE_MAX_POINTS);
    ag_free(h);
    ag_store_close(st);
}

/* Results whose flips are unknown (counts from a trainer's device) store
 * NULL: history says AG_FLIPS_UNKNOWN, and so does a bucket holding one. */
Test(store, unknown_flips_read_back_as_unknown_and_make_their_bucket_unknown) {
    ag_store *st = open_rw();
    fill(st, 4);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_result_row r = {.tensor_id = 1,
                             .format_id = 1,
                             .step = 3,
                             .counts = {.stalled = 1, .total = 10},
                             .flips = 5,
                             .flips_unknown = 1,
                             .source = 1,
                             .amax = 0.5,
                             .scale = 1.0};
    cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight", .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 4);
    cr_expect_eq(h->points[1].flips, 2);
    cr_expect_eq(h->points[2].flips, AG_FLIPS_UNKNOWN, "NULL, not the 5 the row carried");
    cr_expect_str_eq(h->points[2].computed, "device");
    cr_expect_str_eq(h->points[1].computed, "daemon");
    cr_expect_eq(h->points[2].stalled, 1);
    ag_free(h);
    q.every = 2; /* {1,2} {3,4} */
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[0].flips, 4);
    cr_expect_eq(h->points[1].flips, AG_FLIPS_UNKNOWN);
    cr_expect_eq(h->points[1].stalled, 1 + 4);
    cr_expect_str_eq(h->points[0].computed, "daemon");
    cr_expect_str_eq(h->points[1].computed, "mixed", "step 3 device, step 4 daemon");
    ag_free(h);
    ag_store_close(st);
}

Test(store, a_version_6_file_keeps_its_results_as_computed_by_the_daemon) {
    cr_assert_geq(ag_store_migration_count, 7);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (int v = 0; v < 6; v++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[v], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO runs(id,name,client_id,asked) VALUES(1,'r',7,'r');"
                              "INSERT INTO tensors(id,run_id,name,role) VALUES(1,1,'w',0);"
                              "INSERT INTO formats VALUES(1,'E5M2',5,2,15,1,1);"
                              "INSERT INTO results VALUES(1,1,4,3,10,6,1,2,0,0.5,0.25);"
                              "PRAGMA user_version=6",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *st = open_rw();
    int v = -1;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_assert_eq(v, ag_store_schema_version());
    ag_history_query q = {.run = "r", .tensor = "w", .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(h->n, 1);
    cr_expect_eq(h->points[0].step, 4);
    cr_expect_eq(h->points[0].stalled, 3);
    cr_expect_eq(h->points[0].flips, 6);
    cr_expect_eq(h->points[0].underflow, 2);
    cr_expect_float_eq(h->points[0].scale, 0.25, 1e-15);
    cr_expect_str_eq(h->points[0].computed, "daemon");
    ag_free(h);
    ag_store_close(st);
}

/* A file of schema version 8 (before runs of many ranks): read without
 * migrating, every row is one rank's and whole, raw and through the
 * rollups; migrated, the same. */
static void expect_one_rank(ag_store *st, const char *when) {
    ag_history_query q = {.run = "r", .tensor = "w", .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s: %s", when, ag_store_errmsg(st));
    cr_assert_eq(h->n, 2, "%s", when);
    for (size_t i = 0; i < 2; i++) {
        cr_expect_eq(h->points[i].ranks, 1, "%s", when);
        cr_expect_eq(h->points[i].complete, 1, "%s", when);
        cr_expect(isnan(h->points[i].mse) && isnan(h->points[i].sqnr_db), "%s: no error known",
                  when);
    }
    ag_free(h);
    q.every = 10; /* through the rollups */
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s: %s", when, ag_store_errmsg(st));
    cr_assert_eq(h->n, 1, "%s", when);
    cr_expect_eq(h->points[0].total, 20, "%s", when);
    cr_expect_eq(h->points[0].ranks, 1, "%s", when);
    cr_expect_eq(h->points[0].complete, 1, "%s", when);
    ag_free(h);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK, "%s: %s", when, ag_store_errmsg(st));
    cr_assert_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].world_size, 1, "%s", when);
    cr_expect_eq(runs->items[0].ranks_seen, 1, "%s", when);
    cr_expect_eq(runs->items[0].incomplete, 0, "%s", when);
    cr_expect_str_eq(runs->items[0].rank_drops, "{\"0\":2}", "%s", when);
    ag_free(runs);
}

Test(store, a_version_8_file_reads_as_one_rank_before_and_after_migrating) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (size_t i = 0; i < ag_store_migration_count && ag_store_migration_numbers[i] <= 8; i++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[i], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO runs(id,name,client_id,asked) VALUES(1,'r',7,'r');"
                              "INSERT INTO clients(client_id,run_id,asked) VALUES(7,1,'r');"
                              "INSERT INTO drops VALUES(1,7,0,3,2,'sequence gap');"
                              "INSERT INTO tensors(id,run_id,name,role) VALUES(1,1,'w',0);"
                              "INSERT INTO formats VALUES(1,'E5M2',5,2,15,1,1);"
                              "INSERT INTO results VALUES(1,1,4,3,10,6,1,2,0,0.5,0.25,0);"
                              "INSERT INTO results VALUES(1,1,5,3,10,6,1,2,0,0.5,0.25,0);"
                              "INSERT INTO rollups SELECT 1,1,w,0,2,6,20,12,0,2,4,0,4,5,0.5,0.5,"
                              "0.5,0.25,0.25,0.25,0 FROM (SELECT 10 AS w UNION ALL SELECT 100"
                              " UNION ALL SELECT 1000);"
                              "PRAGMA user_version=8",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    expect_one_rank(ro, "read-only, schema 8");
    int v = -1;
    cr_assert_eq(ag_store_user_version(ro, &v), AG_OK);
    cr_expect_eq(v, 8, "a reader does not migrate");
    ag_store_close(ro);
    ag_store *st = open_rw();
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_expect_eq(v, ag_store_schema_version());
    expect_one_rank(st, "migrated");
    ag_store_close(st);
}

/* A file of schema version 9 (before the quantization error): read without
 * migrating, its results have mse and sqnr_db unknown (history and the
 * report's last_sqnr_db) and keep their ranks; migrated, the same, and a
 * new row stores its error. */
static void expect_no_error_known(ag_store *st, const char *when) {
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight", .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s: %s", when, ag_store_errmsg(st));
    cr_assert_eq(h->n, 3, "%s", when);
    for (size_t i = 0; i < h->n; i++) {
        cr_expect(isnan(h->points[i].mse) && isnan(h->points[i].sqnr_db), "%s", when);
        cr_expect_eq(h->points[i].ranks, 2, "%s", when);
        cr_expect_eq(h->points[i].complete, i != 1, "%s", when);
    }
    ag_free(h);
    ag_report *rep = NULL;
    cr_assert_eq(ag_store_report(st, "r1", "E5M2", 0, &rep), AG_OK, "%s: %s", when,
                 ag_store_errmsg(st));
    cr_assert_eq(rep->n, 1, "%s", when);
    cr_expect(isnan(rep->items[0].last_sqnr_db), "%s", when);
    ag_free(rep);
}

Test(store, a_version_9_file_reads_without_quantization_error_before_and_after_migrating) {
    ag_store *st = open_rw();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r1", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "fc1.weight", AG_ROLE_WEIGHT), AG_OK);
    for (uint64_t step = 1; step <= 3; step++) {
        ag_store_result_row r = {.tensor_id = 1,
                                 .format_id = 1,
                                 .step = step,
                                 .counts = {.stalled = step, .total = 10},
                                 .amax = 0.5,
                                 .scale = 0.25,
                                 .ranks = 2,
                                 .incomplete = step == 2};
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
    }
    ag_store_tensor_delta td = {
        .tensor_id = 1, .role = AG_ROLE_WEIGHT, .numel = 4, .last_step = 3, .snapshots = 3};
    cr_assert_eq(ag_store_apply_tensor_delta(st, &td), AG_OK);
    ag_store_run_delta rd = {.run_id = 1, .last_step = 4};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_close(st);
    /* back to version 9: the results table again, then the columns
     * migration 10 added taken out */
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    results_back_to_table(db);
    cr_assert_eq(sqlite3_exec(db,
                              "ALTER TABLE results DROP COLUMN mse;"
                              "ALTER TABLE results DROP COLUMN sqnr_db;"
                              "PRAGMA user_version=9",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    expect_no_error_known(ro, "read-only, schema 9");
    int v = -1;
    cr_assert_eq(ag_store_user_version(ro, &v), AG_OK);
    cr_expect_eq(v, 9, "a reader does not migrate");
    ag_store_close(ro);
    st = open_rw();
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_expect_eq(v, ag_store_schema_version());
    expect_no_error_known(st, "migrated");
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_result_row r4 = {.tensor_id = 1,
                              .format_id = 1,
                              .step = 4,
                              .counts = {.stalled = 1, .total = 10},
                              .amax = 0.5,
                              .scale = 0.25,
                              .ranks = 2,
                              .has_qerr = 1,
                              .mse = 0.125,
                              .sqnr_db = 31.5};
    cr_assert_eq(ag_store_put_result(st, &r4), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_history_query q = {.run = "r1", .tensor = "fc1.weight", .format = "E5M2", .from_step = 4};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(h->n, 1);
    cr_expect_eq(h->points[0].mse, 0.125);
    cr_expect_eq(h->points[0].sqnr_db, 31.5);
    cr_expect_eq(h->points[0].ranks, 2);
    ag_free(h);
    ag_report *rep = NULL;
    cr_assert_eq(ag_store_report(st, "r1", "E5M2", 0, &rep), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(rep->items[0].last_sqnr_db, 31.5);
    ag_free(rep);
    ag_store_close(st);
}

/* Every results row as text, in key order (exact: quote() of a real gives
 * what reads back as the same double). malloc'd. */
static char *results_text(sqlite3 *db) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(
                     db,
                     "SELECT group_concat(x, ';') FROM (SELECT tensor_id||','||format_id||','||"
                     "step||','||stalled||','||total||','||quote(flips)||','||overflow||','||"
                     "underflow||','||nonfinite||','||quote(amax)||','||quote(scale)||','||source"
                     "||','||ranks||','||complete||','||quote(mse)||','||quote(sqnr_db) AS x FROM"
                     " results ORDER BY tensor_id, format_id, step)",
                     -1, &s, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s", sqlite3_errmsg(db));
    char *t = strdup((const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return t;
}

Test(store, a_version_10_file_gets_its_results_packed_at_migration) {
    ag_store *st = open_rw();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r1", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "a", AG_ROLE_WEIGHT), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 2, 1, "b", AG_ROLE_WEIGHT), AG_OK);
    /* 300 points a key, then a few past 2^23 and 2^24 (a segment spans
     * fewer than 2^24 steps), every kind of value */
    for (int t = 1; t <= 2; t++)
        for (int f = 1; f <= 2; f++)
            for (uint64_t k = 0; k < 306; k++) {
                uint64_t step = k < 300 ? k * 7 : ((uint64_t)1 << 23) * (k - 299) + k;
                ag_store_result_row r = {.tensor_id = t,
                                         .format_id = f,
                                         .step = step,
                                         .counts = {.stalled = k % 13,
                                                    .total = 100,
                                                    .overflow = k % 3,
                                                    .underflow = k % 5,
                                                    .nonfinite = k % 7 == 0},
                                         .flips = k * 3,
                                         .flips_unknown = k % 4 == 0,
                                         .amax = 0.1 * (double)k,
                                         .scale = ldexp(1.0, (int)(k % 9)),
                                         .source = k % 5 == 0,
                                         .incomplete = k % 11 == 0,
                                         .ranks = k % 6 == 0 ? 4 : 1,
                                         .has_qerr = k % 2 == 0,
                                         .mse = 1e-9 * (double)k,
                                         .sqnr_db = k % 8 == 0 ? NAN : 30.0 + (double)k / 3.0};
                cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
            }
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_close(st);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    char *before = results_text(db);
    results_back_to_table(db);
    char *as_table = results_text(db);
    cr_expect_str_eq(as_table, before, "the old table holds the same rows");
    sqlite3_close(db);
    /* a reader of the version 10 file reads the table; a writer migrates */
    ag_store *ro = NULL;
    cr_assert_eq(ag_store_open(&ro, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(ro));
    ag_history_query q = {.run = "r1", .tensor = "b", .format = "E3M4"};
    ag_history *h10 = NULL, *h11 = NULL;
    cr_assert_eq(ag_store_history(ro, &q, &h10), AG_OK, "%s", ag_store_errmsg(ro));
    ag_store_close(ro);
    st = open_rw();
    int v = 0;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_expect_eq(v, ag_store_schema_version());
    cr_assert_eq(ag_store_history(st, &q, &h11), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(h11->n, h10->n);
    cr_expect_eq(h11->n, 306);
    cr_expect_eq(memcmp(h11->points, h10->points, h10->n * sizeof *h10->points), 0);
    ag_free(h10);
    ag_free(h11);
    ag_store_close(st);
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    char *after = results_text(db);
    cr_expect_str_eq(after, before, "the segments hold the same rows");
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT count(*), max(n), max(last_step-first_step),"
                                    " (SELECT count(*) FROM sqlite_master WHERE name='results')"
                                    " FROM result_segs",
                                    -1, &s, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
    /* per key: 300 points in 5 segments of 64 or fewer, then one segment
     * per 2^23-aligned stretch of the steps past it */
    cr_expect_geq(sqlite3_column_int64(s, 0), 4 * 10);
    cr_expect_leq(sqlite3_column_int64(s, 1), 64);
    cr_expect_lt(sqlite3_column_int64(s, 2), (long long)1 << 23);
    cr_expect_eq(sqlite3_column_int64(s, 3), 0, "the old table is gone");
    sqlite3_finalize(s);
    sqlite3_close(db);
    free(before);
    free(as_table);
    free(after);
}

/* What a reader answers from the rollups, it answers the same from the raw
 * rows when the file's rollups are not this build's tiers (a file before
 * schema 13 opened read-only, here a schema-13 file that says 12): a run's
 * incomplete steps, whole-run top and a heatmap finer and coarser than the
 * finest tier. */
Test(store, a_reader_without_rollups_answers_from_raw_rows_what_rollups_give) {
    ag_store *st = open_rw();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r1", .host = "h", .world_size = 2};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "a.weight", AG_ROLE_WEIGHT), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 2, 1, "b.weight", AG_ROLE_WEIGHT), AG_OK);
    for (uint64_t step = 0; step < 2500; step++)
        for (int t = 1; t <= 2; t++)
            for (int f = 1; f <= 2; f++) {
                ag_store_result_row r = {
                    .tensor_id = t,
                    .format_id = f,
                    .step = step,
                    .counts = {.stalled = (step * 7 + (uint64_t)t) % 13, .total = 13},
                    .amax = 0.5,
                    .scale = 0.25,
                    .ranks = 2,
                    .incomplete = (step + (uint64_t)(t * f)) % 17 == 0};
                cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
            }
    for (int t = 1; t <= 2; t++) {
        ag_store_tensor_delta td = {.tensor_id = t,
                                    .role = AG_ROLE_WEIGHT,
                                    .numel = 13,
                                    .first_step = 0,
                                    .last_step = 2499,
                                    .snapshots = 2500};
        cr_assert_eq(ag_store_apply_tensor_delta(st, &td), AG_OK);
    }
    ag_store_run_delta rd = {.run_id = 1, .last_step = 2499};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_store *stores[2] = {st, NULL};
    ag_run_list *runs[2] = {NULL, NULL};
    ag_top_list *top[2] = {NULL, NULL};
    ag_store_heat *fine[2] = {NULL, NULL}, *coarse[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        if (k == 1) {
            ag_store_close(st);
            sqlite3 *db = NULL;
            cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
            cr_assert_eq(sqlite3_exec(db, "PRAGMA user_version=12", NULL, NULL, NULL), SQLITE_OK);
            sqlite3_close(db);
            cr_assert_eq(ag_store_open(&stores[1], db_path, AG_STORE_READONLY), AG_OK, "%s",
                         ag_store_errmsg(stores[1]));
        }
        cr_assert_eq(ag_store_runs(stores[k], &runs[k]), AG_OK, "%s", ag_store_errmsg(stores[k]));
        cr_assert_eq(ag_store_top(stores[k], "r1", "E3M4", 0, 0, &top[k]), AG_OK);
        cr_assert_eq(ag_store_heatmap(stores[k], "r1", "E3M4", 500, &fine[k]), AG_OK);
        cr_assert_eq(ag_store_heatmap(stores[k], "r1", "E3M4", 5, &coarse[k]), AG_OK);
    }
    cr_assert_eq(runs[0]->n, 1);
    cr_assert_eq(runs[1]->n, 1);
    cr_expect_gt(runs[0]->items[0].incomplete, 0);
    cr_expect_eq(runs[1]->items[0].incomplete, runs[0]->items[0].incomplete);
    cr_assert_eq(top[1]->n, top[0]->n);
    for (size_t i = 0; i < top[0]->n; i++) {
        cr_expect_str_eq(top[1]->items[i].tensor, top[0]->items[i].tensor);
        cr_expect_eq(top[1]->items[i].stalled, top[0]->items[i].stalled);
        cr_expect_eq(top[1]->items[i].total, top[0]->items[i].total);
    }
    ag_store_heat *const *maps[2] = {fine, coarse};
    for (int m = 0; m < 2; m++) {
        const ag_store_heat *a = maps[m][0], *b = maps[m][1];
        cr_assert_eq(b->width, a->width);
        cr_assert_eq(b->nbuckets, a->nbuckets);
        cr_assert_eq(b->ntensors, a->ntensors);
        for (size_t c = 0; c < a->ntensors * a->nbuckets; c++) {
            cr_expect_eq(b->stalled[c], a->stalled[c], "map %d cell %zu", m, c);
            cr_expect_eq(b->total[c], a->total[c], "map %d cell %zu", m, c);
            cr_expect_eq(b->rows[c], a->rows[c], "map %d cell %zu", m, c);
        }
    }
    cr_expect_eq(coarse[0]->width % 100, 0, "the coarse map reads a tier");
    cr_expect_lt(fine[0]->width, 100, "the fine map reads the raw rows");
    for (int k = 0; k < 2; k++) {
        ag_free(runs[k]);
        ag_free(top[k]);
        ag_free(fine[k]);
        ag_free(coarse[k]);
    }
    ag_store_close(stores[1]);
}
