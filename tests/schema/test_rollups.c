/*
 * test_rollups.c - the rollups of results (schema/008_rollups.sql): every
 * bucket's sums equal the raw rows' sums after ingest (with steps stored
 * again, gaps, several transactions), after a rollback, after a process
 * killed mid-transaction, after a rebuild and after the migration of an
 * older file; history --every, top and the heatmap read from them answer
 * what the raw rows say; retention removes only raw rows past its limit.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    strcpy(dir, "/tmp/ag_rollups_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/t.db", dir);
}

static void teardown(void) { ag_tmpdir_remove(dir); }

TestSuite(rollups, .init = setup, .fini = teardown);

static ag_store *open_rw(void) {
    ag_store *st = NULL;
    int err = ag_store_open(&st, db_path, AG_STORE_CREATE);
    cr_assert_eq(err, AG_OK, "open: %s", ag_store_errmsg(st));
    return st;
}

#define NTENSORS 3
static const char *const names[NTENSORS] = {"a.weight", "b.weight", "c.weight"};

/* Run "r" (id 1), tensors 1..3, formats E5M2 (1) and E3M4 (2). */
static void setup_run(ag_store *st) {
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    for (int t = 0; t < NTENSORS; t++)
        cr_assert_eq(ag_store_put_tensor(st, t + 1, 1, names[t], AG_ROLE_WEIGHT), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
}

/* A deterministic row of tensor t, format f at step (salt changes it). */
static ag_store_result_row row_at(int t, int f, uint64_t step, unsigned salt) {
    uint64_t h = step * 2654435761u + (uint64_t)t * 97 + (uint64_t)f * 13 + salt * 7919;
    ag_store_result_row r = {.tensor_id = t + 1,
                             .format_id = f + 1,
                             .step = step,
                             .counts = {.stalled = h % 50,
                                        .total = 50,
                                        .overflow = h % 3,
                                        .underflow = h % 5,
                                        .nonfinite = h % 2},
                             .flips = h % 11,
                             .amax = (double)(h % 1000) / 100.0,
                             .scale = (double)(h % 17) + 1.0};
    return r;
}

/* Steps first..last of every tensor and format, every `stride` steps, in
 * transactions of `per_txn` steps; salt changes the values. */
static void ingest(ag_store *st, uint64_t first, uint64_t last, uint64_t stride, uint64_t per_txn,
                   unsigned salt) {
    uint64_t in_txn = 0, last_step = 0;
    cr_assert_eq(ag_store_begin(st), AG_OK);
    for (uint64_t step = first; step <= last; step += stride) {
        for (int t = 0; t < NTENSORS; t++)
            for (int f = 0; f < 2; f++) {
                ag_store_result_row r = row_at(t, f, step, salt);
                cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
            }
        last_step = step;
        if (++in_txn == per_txn) {
            ag_store_run_delta rd = {.run_id = 1, .last_step = last_step};
            cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
            cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
            cr_assert_eq(ag_store_begin(st), AG_OK);
            in_txn = 0;
        }
    }
    ag_store_run_delta rd = {.run_id = 1, .last_step = last_step};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    for (int t = 0; t < NTENSORS; t++) {
        ag_store_tensor_delta td = {.tensor_id = t + 1,
                                    .role = AG_ROLE_WEIGHT,
                                    .first_step = first,
                                    .last_step = last_step,
                                    .snapshots = 1};
        cr_assert_eq(ag_store_apply_tensor_delta(st, &td), AG_OK);
    }
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
}

static long long scalar(ag_store *st, const char *sql) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(st->db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s", sql);
    long long v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* The buckets the raw rows make, as the rollups must hold them (wholly
 * above each tensor's retention horizon: a widest bucket the horizon cuts
 * also counts the rows it removed, see WIDEST_BUCKETS). */
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
/* Every width-10000 bucket as its width-1000 buckets sum (wherever the
 * horizon is), and the other way round. */
#define WIDEST_BUCKETS                                                                             \
    "SELECT tensor_id, format_id, bucket / 10, sum(rows), sum(stalled), sum(total), sum(flips),"   \
    " sum(flips_unknown), sum(overflow), sum(underflow), sum(nonfinite), min(first_step),"         \
    " max(last_step) FROM rollups WHERE width=1000 GROUP BY tensor_id, format_id, bucket / 10"
#define WIDEST_ROWS                                                                                \
    "SELECT tensor_id, format_id, bucket, rows, stalled, total, flips, flips_unknown, overflow,"   \
    " underflow, nonfinite, first_step, last_step FROM rollups WHERE width=10000"

/* Every bucket's counts equal its raw rows' sums, and the other way round. */
static void expect_sums_equal(ag_store *st, const char *when) {
    long long raw = scalar(st, "SELECT count(*) FROM (" RAW_BUCKETS ")");
    cr_assert_gt(raw, 0, "%s: no rows", when);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM (" RAW_BUCKETS " EXCEPT " ROLLUP_BUCKETS ")"), 0,
                 "%s: a raw bucket is missing or differs in the rollups", when);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM (" ROLLUP_BUCKETS " EXCEPT " RAW_BUCKETS ")"), 0,
                 "%s: a rollup bucket is not what its raw rows sum to", when);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM (" WIDEST_BUCKETS " EXCEPT " WIDEST_ROWS ")"), 0,
                 "%s: a widest bucket is missing or is not its finer buckets' sum", when);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM (" WIDEST_ROWS " EXCEPT " WIDEST_BUCKETS ")"), 0,
                 "%s: a widest bucket has no finer buckets to sum", when);
    /* And the last amax and scale are those of the bucket's last row. */
    cr_expect_eq(scalar(st, "SELECT count(*) FROM rollups u JOIN results r ON"
                            " r.tensor_id=u.tensor_id AND r.format_id=u.format_id AND"
                            " r.step=u.last_step WHERE r.amax<>u.amax_last OR"
                            " r.scale<>u.scale_last"),
                 0, "%s: last amax or scale", when);
}

Test(rollups, bucket_sums_equal_raw_sums_after_ingest_with_gaps_and_steps_stored_again) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 2345, 1, 97, 0);
    ingest(st, 2400, 5100, 7, 50, 0); /* gaps */
    ingest(st, 500, 1500, 3, 40, 1);  /* stored again, new values */
    expect_sums_equal(st, "ingest");
    cr_expect_eq(scalar(st, "SELECT sum(rows) FROM rollups WHERE width=1000"),
                 scalar(st, "SELECT count(*) FROM results"));
    /* A transaction rolled back leaves the rollups alone. */
    cr_assert_eq(ag_store_begin(st), AG_OK);
    ag_store_result_row r = row_at(0, 0, 9000, 3);
    cr_assert_eq(ag_store_put_result(st, &r), AG_OK);
    cr_assert_eq(ag_store_rollback(st), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    expect_sums_equal(st, "rollback");
    ag_store_close(st);
}

Test(rollups, a_rebuild_computes_the_same_buckets_again) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 3, 3003, 2, 100, 0);
    cr_assert_eq(sqlite3_exec(st->db,
                              "UPDATE rollups_sealed SET stalled=stalled+1 WHERE bucket % 3 = 0;"
                              "DELETE FROM rollups_sealed WHERE bucket % 5 = 1;"
                              "UPDATE rollup_heads SET stalled1=stalled1+1, total3=0",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    cr_assert_neq(scalar(st, "SELECT count(*) FROM (" RAW_BUCKETS " EXCEPT " ROLLUP_BUCKETS ")"), 0,
                  "the damage shows");
    uint64_t n = 0;
    cr_assert_eq(ag_store_rebuild_rollups(st, &n), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq((long long)n, scalar(st, "SELECT count(*) FROM rollups"));
    expect_sums_equal(st, "rebuild");
    /* every bucket is sealed after a rebuild; the next commits open the
     * heads again past them, and a late row goes into its sealed bucket */
    cr_expect_eq(scalar(st, "SELECT count(*) FROM rollup_heads"), 0);
    ingest(st, 3004, 3500, 1, 7, 0);
    ingest(st, 1500, 1530, 3, 4, 5);
    expect_sums_equal(st, "after a rebuild and more rows");
    /* width 1000's bucket 3 and width 10000's bucket 0 were rebuilt sealed:
     * they stay so until a newer bucket of their tier comes */
    cr_expect_eq(scalar(st, "SELECT count(*) FROM rollup_heads WHERE b1=35 AND b2 IS NULL AND b3"
                            " IS NULL"),
                 NTENSORS * 2);
    ag_store_close(st);
}

Test(rollups, a_version_6_file_gets_its_rollups_at_migration) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (size_t i = 0; i < ag_store_migration_count && ag_store_migration_numbers[i] <= 6; i++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[i], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_exec(db,
                              "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n+1 FROM s"
                              " WHERE n<2499) INSERT INTO results SELECT 1+n%2, 1, n, n%7, 7, n%3,"
                              " 0, 1, 0, n*0.5, 2.0 FROM s; PRAGMA user_version=6",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *st = open_rw();
    int v = 0;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_expect_eq(v, ag_store_schema_version());
    cr_expect_geq(v, 8);
    expect_sums_equal(st, "migration");
    ag_store_close(st);
}

/* The buckets of tiers 10, 100 and 1000 as schema 12 kept them: every
 * bucket from the raw rows, the newest of each tier and key in the heads. */
#define OLD_BUCKETS                                                                                \
    "SELECT tensor_id, format_id, w.width AS width, step / w.width AS bucket, count(*) AS rows,"   \
    " sum(stalled) AS stalled, sum(total) AS total, coalesce(sum(flips),0) AS flips,"              \
    " count(*) - count(flips) AS flips_unknown, sum(overflow) AS overflow, sum(underflow) AS"      \
    " underflow, sum(nonfinite) AS nonfinite, min(step) AS first_step, max(step) AS last_step,"    \
    " min(amax) AS amax_min, max(amax) AS amax_max, 0.0 AS amax_last, min(scale) AS scale_min,"    \
    " max(scale) AS scale_max, 0.0 AS scale_last, sum(source) AS device_rows, count(*) -"          \
    " sum(complete) AS incomplete_rows, min(ranks) AS ranks_min FROM results, (SELECT 10 AS"       \
    " width UNION ALL SELECT 100 UNION ALL SELECT 1000) w GROUP BY tensor_id, format_id,"          \
    " w.width, step / w.width"
#define OLD_HEAD(k, w)                                                                             \
    " LEFT JOIN ob h" #k " ON h" #k ".tensor_id=k.tensor_id AND h" #k ".format_id=k.format_id AND" \
    " h" #k ".width=" #w " AND h" #k ".bucket=(SELECT max(bucket) FROM ob x WHERE"                 \
    " x.tensor_id=k.tensor_id AND x.format_id=k.format_id AND x.width=" #w ")"
#define OLD_COLS(k)                                                                                \
    "h" #k ".bucket, h" #k ".rows, h" #k ".stalled, h" #k ".total, h" #k ".flips, h" #k            \
    ".flips_unknown, h" #k ".overflow, h" #k ".underflow, h" #k ".nonfinite, h" #k ".first_step,"  \
    " h" #k ".last_step, h" #k ".amax_min, h" #k ".amax_max, h" #k ".amax_last, h" #k              \
    ".scale_min, h" #k ".scale_max, h" #k ".scale_last, h" #k ".device_rows, h" #k                 \
    ".incomplete_rows, h" #k ".ranks_min"
#define OLD_VIEW_ARM(k, w)                                                                         \
    " UNION ALL SELECT tensor_id, format_id, " #w ", b" #k ", rows" #k ", stalled" #k ", total" #k \
    ", flips" #k ", flips_unknown" #k ", overflow" #k ", underflow" #k ", nonfinite" #k            \
    ", first_step" #k ", last_step" #k ", amax_min" #k ", amax_max" #k ", amax_last" #k            \
    ", scale_min" #k ", scale_max" #k ", scale_last" #k ", device_rows" #k ", incomplete_rows" #k  \
    ", ranks_min" #k " FROM rollup_heads WHERE b" #k " IS NOT NULL"

Test(rollups, a_version_12_file_gets_its_tiers_at_migration) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 23456, 1, 3000, 0);
    ingest(st, 25000, 27777, 3, 500, 1);
    /* back to schema 12: tiers 10, 100 and 1000, the open buckets in the heads */
    static const char *const back[] = {
        "CREATE TEMP TABLE ob AS " OLD_BUCKETS,
        "UPDATE ob SET amax_last=(SELECT amax FROM results r WHERE r.tensor_id=ob.tensor_id AND"
        " r.format_id=ob.format_id AND r.step=ob.last_step), scale_last=(SELECT scale FROM"
        " results r WHERE r.tensor_id=ob.tensor_id AND r.format_id=ob.format_id AND"
        " r.step=ob.last_step)",
        "DELETE FROM rollups_sealed",
        "DELETE FROM rollup_heads",
        "INSERT INTO rollup_heads SELECT k.tensor_id, k.format_id, " OLD_COLS(1) ", " OLD_COLS(
            2) ", " OLD_COLS(3) " FROM (SELECT DISTINCT tensor_id, format_id FROM "
                                "ob) k" OLD_HEAD(1, 10) OLD_HEAD(2, 100) OLD_HEAD(3, 1000),
        "INSERT INTO rollups_sealed SELECT * FROM ob WHERE bucket < (SELECT max(bucket) FROM ob x"
        " WHERE x.tensor_id=ob.tensor_id AND x.format_id=ob.format_id AND x.width=ob.width)",
        "DROP VIEW rollups",
        "CREATE VIEW rollups AS SELECT * FROM rollups_sealed" OLD_VIEW_ARM(1, 10)
            OLD_VIEW_ARM(2, 100) OLD_VIEW_ARM(3, 1000),
        "PRAGMA user_version=12",
    };
    for (size_t i = 0; i < sizeof back / sizeof back[0]; i++)
        cr_assert_eq(sqlite3_exec(st->db, back[i], NULL, NULL, NULL), SQLITE_OK, "%s: %s", back[i],
                     sqlite3_errmsg(st->db));
    cr_assert_eq(scalar(st, "SELECT count(*) FROM rollup_heads WHERE b1=2777 AND b2=277 AND b3=27"),
                 NTENSORS * 2, "schema 12's heads");
    cr_assert_eq(scalar(st, "SELECT count(*) FROM rollups WHERE width=10"),
                 scalar(st, "SELECT count(*) FROM (SELECT DISTINCT tensor_id, format_id, step / 10"
                            " FROM results)"));
    ag_store_close(st);
    st = open_rw();
    int v = 0;
    cr_assert_eq(ag_store_user_version(st, &v), AG_OK);
    cr_expect_eq(v, ag_store_schema_version());
    cr_expect_eq(scalar(st, "SELECT count(*) FROM rollups WHERE width=10"), 0);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM rollup_heads WHERE b1=277 AND b2=27 AND b3 IS"
                            " NULL"),
                 NTENSORS * 2, "the heads shifted a tier");
    expect_sums_equal(st, "migration from schema 12");
    /* the next commits go on from the migrated buckets */
    ingest(st, 27778, 31234, 1, 700, 2);
    ingest(st, 9990, 10010, 1, 5, 3); /* stored again, in a migrated sealed bucket */
    expect_sums_equal(st, "after more rows");
    ag_store_close(st);
}

Test(rollups, a_reader_of_a_version_6_file_answers_from_the_raw_rows) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (size_t i = 0; i < ag_store_migration_count && ag_store_migration_numbers[i] <= 6; i++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[i], NULL, NULL, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db,
                              "INSERT INTO formats VALUES(1,'E5M2',5,2,15,1,1);"
                              "INSERT INTO runs(id,name,last_step) VALUES(1,'r',1999);"
                              "INSERT INTO tensors(id,run_id,name,first_step,last_step,snapshots)"
                              " VALUES(1,1,'a.weight',0,1999,2000);"
                              "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n+1 FROM s"
                              " WHERE n<1999) INSERT INTO results SELECT 1, 1, n, n%7, 7, 1,"
                              " 0, 0, 0, 1.0, 2.0 FROM s; PRAGMA user_version=6",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db_path, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(st));
    ag_top_list *top = NULL;
    cr_assert_eq(ag_store_top(st, "r", "E5M2", 0, 0, &top), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(top->n, 1);
    cr_expect_eq(top->items[0].steps, 2000);
    cr_expect_eq(top->items[0].total, 14000);
    ag_free(top);
    ag_history_query q = {.run = "r", .tensor = "a.weight", .every = 100};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(h->n, 20);
    cr_expect_eq(h->points[0].total, 700);
    ag_free(h);
    ag_store_heat *heat = NULL;
    cr_assert_eq(ag_store_heatmap(st, "r", "E5M2", 200, &heat), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(heat->nbuckets, 200);
    cr_expect_eq(heat->total[0], 70);
    ag_free(heat);
    ag_store_close(st);
}

Test(rollups, the_migration_runner_accepts_a_gap_in_the_numbers) {
    /* The numbers rise; the file's version is the newest one applied. */
    for (size_t i = 1; i < ag_store_migration_count; i++)
        cr_expect_gt(ag_store_migration_numbers[i], ag_store_migration_numbers[i - 1]);
    cr_expect_eq(ag_store_schema_version(),
                 ag_store_migration_numbers[ag_store_migration_count - 1]);
    /* A file at version 6 opened by this build runs only what is above 6. */
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    for (size_t i = 0; i < ag_store_migration_count && ag_store_migration_numbers[i] <= 6; i++)
        cr_assert_eq(sqlite3_exec(db, ag_store_migrations[i], NULL, NULL, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "PRAGMA user_version=6", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    ag_store *st = open_rw();
    cr_expect_eq(scalar(st, "SELECT count(*) FROM sqlite_master WHERE name='rollups'"), 1);
    ag_store_close(st);
}

Test(rollups, sums_hold_after_a_process_killed_mid_transaction) {
    ag_store *st = open_rw();
    setup_run(st);
    ag_store_close(st);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ag_store *c = NULL;
        if (ag_store_open(&c, db_path, AG_STORE_CREATE)) _exit(2);
        for (uint64_t step = 0; step < 3000; step++) {
            if (step % 100 == 0 && (step ? ag_store_commit(c) : 0)) _exit(3);
            if (step % 100 == 0 && ag_store_begin(c)) _exit(4);
            ag_store_result_row r = row_at(0, 0, step, 0);
            if (ag_store_put_result(c, &r)) _exit(5);
            /* Mid-transaction, with rollups summed in memory. */
            if (step == 2950) raise(SIGKILL);
        }
        _exit(6);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    st = open_rw();
    cr_expect_eq(scalar(st, "SELECT count(*) FROM results"), 2900);
    expect_sums_equal(st, "kill -9");
    ag_store_close(st);
}

/* The raw rows' history with every k, computed here. */
static void raw_every(ag_store *st, const char *tensor, uint64_t from, uint64_t to, uint64_t k) {
    ag_history_query q = {.run = "r", .tensor = tensor, .from_step = from, .to_step = to};
    ag_history *raw = NULL, *fast = NULL;
    cr_assert_eq(ag_store_history(st, &q, &raw), AG_OK, "%s", ag_store_errmsg(st));
    q.every = k;
    cr_assert_eq(ag_store_history(st, &q, &fast), AG_OK, "%s", ag_store_errmsg(st));
    size_t want = (raw->n + k - 1) / k;
    cr_assert_eq(fast->n, want, "every %llu from %llu: %zu points, want %zu", (unsigned long long)k,
                 (unsigned long long)from, fast->n, want);
    for (size_t i = 0; i < fast->n; i++) {
        ag_history_point sum = {0};
        for (size_t j = i * k; j < raw->n && j < (i + 1) * k; j++) {
            sum.stalled += raw->points[j].stalled;
            sum.total += raw->points[j].total;
            sum.flips += raw->points[j].flips;
            sum.overflow += raw->points[j].overflow;
            sum.underflow += raw->points[j].underflow;
            sum.nonfinite += raw->points[j].nonfinite;
            sum.step = raw->points[j].step;
            sum.amax = raw->points[j].amax;
            sum.scale = raw->points[j].scale;
        }
        const ag_history_point *p = &fast->points[i];
        cr_assert_eq(p->step, sum.step, "every %llu point %zu", (unsigned long long)k, i);
        cr_assert_eq(p->stalled, sum.stalled);
        cr_assert_eq(p->total, sum.total);
        cr_assert_eq(p->flips, sum.flips);
        cr_assert_eq(p->overflow, sum.overflow);
        cr_assert_eq(p->underflow, sum.underflow);
        cr_assert_eq(p->nonfinite, sum.nonfinite);
        cr_assert_eq(p->amax, sum.amax);
        cr_assert_eq(p->scale, sum.scale);
    }
    ag_free(raw);
    ag_free(fast);
}

Test(rollups, history_every_k_from_rollups_equals_the_raw_rows) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 4999, 1, 500, 0);
    ingest(st, 5003, 7000, 3, 500, 0);
    const uint64_t ks[] = {2, 7, 10, 100, 125, 1000, 1001, 3000};
    const uint64_t from[] = {0, 1, 250, 4990};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
        for (size_t j = 0; j < sizeof from / sizeof from[0]; j++) {
            raw_every(st, "a.weight", from[j], 0, ks[i]);
            raw_every(st, "b.weight", from[j], 6543, ks[i]);
        }
    ag_store_close(st);
}

Test(rollups, top_from_rollups_equals_the_raw_rows_for_any_window) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 1, 4321, 1, 500, 0);
    const uint64_t windows[] = {0, 1, 50, 999, 1000, 1234, 4321, 99999};
    for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) {
        ag_top_list *top = NULL;
        cr_assert_eq(ag_store_top(st, "r", "E3M4", windows[i], 0, &top), AG_OK, "%s",
                     ag_store_errmsg(st));
        cr_assert_eq(top->n, NTENSORS);
        for (size_t e = 0; e < top->n; e++) {
            char sql[512];
            snprintf(sql, sizeof sql,
                     "SELECT sum(stalled)*1000000000 + sum(total)*1000 + count(*) FROM results r"
                     " JOIN tensors t ON t.id=r.tensor_id WHERE t.name='%s' AND format_id=2 AND"
                     " step BETWEEN %llu AND %llu",
                     top->items[e].tensor, (unsigned long long)top->from_step,
                     (unsigned long long)top->to_step);
            long long want = scalar(st, sql);
            cr_expect_eq((long long)(top->items[e].stalled * 1000000000 +
                                     top->items[e].total * 1000 + top->items[e].steps),
                         want, "window %llu tensor %s", (unsigned long long)windows[i],
                         top->items[e].tensor);
            if (e) cr_expect_geq(top->items[e - 1].stall_rate, top->items[e].stall_rate);
        }
        ag_free(top);
    }
    ag_top_list *one = NULL;
    cr_assert_eq(ag_store_top(st, "r", "E3M4", 0, 1, &one), AG_OK);
    cr_expect_eq(one->n, 1, "the limit holds");
    ag_free(one);
    ag_store_close(st);
}

Test(rollups, heatmap_cells_equal_the_raw_rows_of_their_steps) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 7, 5006, 1, 1000, 0);
    const size_t asks[] = {1, 3, 50, 500, 700, 2000};
    for (size_t i = 0; i < sizeof asks / sizeof asks[0]; i++) {
        ag_store_heat *h = NULL;
        cr_assert_eq(ag_store_heatmap(st, "r", "E5M2", asks[i], &h), AG_OK, "%s",
                     ag_store_errmsg(st));
        cr_assert_eq(h->ntensors, NTENSORS);
        cr_assert_leq(h->nbuckets, asks[i]);
        cr_assert_geq(h->nbuckets, 1);
        cr_expect_leq(h->from_step, 7);
        cr_expect_eq(h->from_step % h->width, 0);
        cr_expect_geq(h->from_step + h->nbuckets * h->width - 1, 5006, "covers the run");
        for (size_t t = 0; t < h->ntensors; t++)
            for (size_t b = 0; b < h->nbuckets; b += 1 + h->nbuckets / 17) {
                char sql[512];
                uint64_t lo = h->from_step + b * h->width, hi = lo + h->width - 1;
                snprintf(sql, sizeof sql,
                         "SELECT coalesce(sum(stalled),0)*1000000 + coalesce(sum(total),0)"
                         " FROM results r JOIN tensors t ON t.id=r.tensor_id WHERE t.name='%s'"
                         " AND format_id=1 AND step BETWEEN %llu AND %llu",
                         h->tensors[t], (unsigned long long)lo, (unsigned long long)hi);
                size_t c = t * h->nbuckets + b;
                cr_expect_eq((long long)(h->stalled[c] * 1000000 + h->total[c]), scalar(st, sql),
                             "%zu buckets: cell %zu,%zu", asks[i], t, b);
            }
        ag_free(h);
    }
    /* Raw rows removed in the span: buckets finer than the finest tier
     * would show them empty; the heatmap is as fine as that tier instead,
     * each cell what the raw rows of its steps summed before. */
    enum { B100 = 5006 / 100 + 1 };
    long long want[NTENSORS][B100];
    for (int t = 0; t < NTENSORS; t++)
        for (int b = 0; b < B100; b++) {
            char sql[512];
            snprintf(sql, sizeof sql,
                     "SELECT coalesce(sum(stalled),0)*1000000 + coalesce(sum(total),0)"
                     " FROM results WHERE tensor_id=%d AND format_id=1 AND step BETWEEN %d AND %d",
                     t + 1, b * 100, b * 100 + 99);
            want[t][b] = scalar(st, sql);
        }
    uint64_t removed = 0;
    cr_assert_eq(ag_store_prune_raw(st, 1700, 1000000, &removed), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_gt(removed, 0);
    ag_store_heat *after = NULL;
    cr_assert_eq(ag_store_heatmap(st, "r", "E5M2", 500, &after), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(after->width, 100);
    cr_assert_eq(after->from_step, 0);
    cr_assert_eq(after->nbuckets, B100);
    cr_assert_eq(after->ntensors, NTENSORS);
    for (size_t t = 0; t < after->ntensors; t++) {
        int id = after->tensors[t][0] - 'a'; /* names[id], tensor id + 1 */
        for (size_t b = 0; b < after->nbuckets; b++) {
            size_t c = t * after->nbuckets + b;
            cr_expect_eq((long long)(after->stalled[c] * 1000000 + after->total[c]), want[id][b],
                         "cell %zu,%zu", t, b);
        }
    }
    ag_free(after);
    ag_store_heat *h = NULL;
    cr_expect_eq(ag_store_heatmap(st, "r", "E5M2", 0, &h), AG_ERANGE);
    cr_expect_eq(ag_store_heatmap(st, "r", "E5M2", AG_STORE_HEATMAP_MAX_BUCKETS + 1, &h),
                 AG_ERANGE);
    cr_expect_eq(ag_store_heatmap(st, "nope", "E5M2", 10, &h), AG_ENOTFOUND);
    cr_expect_eq(ag_store_heatmap(st, "r", "NOPE", 10, &h), AG_ENOTFOUND);
    ag_store_close(st);
}

Test(rollups, retention_removes_only_raw_rows_past_the_limit_and_rollups_keep_them) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 4499, 1, 500, 0);
    cr_assert_eq(
        sqlite3_exec(st->db,
                     "INSERT INTO stats SELECT tensor_id, 0, step, 1.0, 10, 0, 1 FROM results"
                     " WHERE format_id=1",
                     NULL, NULL, NULL),
        SQLITE_OK);
    long long before = scalar(st, "SELECT sum(stalled) FROM rollups WHERE width=1000");
    long long raw_before = scalar(st, "SELECT count(*) FROM results");
    uint64_t removed = 0, keep = 1700;
    /* Newest 1700 steps of 0..4499 are 2800..4499: whole 1000s below 2800 go. */
    cr_assert_eq(ag_store_prune_raw(st, keep, 1000000, &removed), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(scalar(st, "SELECT min(step) FROM results"), 2000);
    cr_expect_eq(scalar(st, "SELECT min(step) FROM stats"), 2000);
    cr_expect_eq(scalar(st, "SELECT count(*) FROM results WHERE step >= 2800"),
                 (4500 - 2800) * NTENSORS * 2, "nothing within the limit went");
    cr_expect_eq((long long)removed, 2000 * NTENSORS * 2 + 2000 * NTENSORS,
                 "results and stats rows below 2000");
    cr_expect_eq(scalar(st, "SELECT count(*) FROM results"), raw_before - 2000 * NTENSORS * 2);
    cr_expect_eq(scalar(st, "SELECT sum(stalled) FROM rollups WHERE width=1000"), before,
                 "the rollups still count the removed rows");
    expect_sums_equal(st, "retention");
    /* Again: nothing more to do. */
    cr_assert_eq(ag_store_prune_raw(st, keep, 1000000, &removed), AG_OK);
    cr_expect_eq(removed, 0);
    /* A rebuild keeps the buckets whose raw rows are gone. */
    cr_assert_eq(ag_store_rebuild_rollups(st, NULL), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(scalar(st, "SELECT sum(stalled) FROM rollups WHERE width=1000"), before);
    cr_expect_eq(scalar(st, "SELECT sum(stalled) FROM rollups WHERE width=10000"), before,
                 "the widest bucket the horizon cuts keeps the removed rows' counts");
    expect_sums_equal(st, "rebuild after retention");
    /* Whole-run top still counts every step. */
    ag_top_list *top = NULL;
    cr_assert_eq(ag_store_top(st, "r", "E5M2", 0, 0, &top), AG_OK);
    cr_assert_eq(top->n, NTENSORS);
    cr_expect_eq(top->items[0].steps, 4500);
    ag_free(top);
    ag_store_close(st);
}

Test(rollups, no_retention_by_default_and_bounded_batches) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 2999, 1, 500, 0);
    uint64_t removed = 0;
    cr_expect_eq(ag_store_prune_raw(st, 0, 100, &removed), AG_EINVAL, "0 is no retention");
    /* A small budget stops after the first tensor that reaches it. */
    cr_assert_eq(ag_store_prune_raw(st, 1, 100, &removed), AG_OK);
    cr_expect_eq(removed, 2000 * 2, "one tensor's two formats");
    cr_assert_eq(ag_store_prune_raw(st, 1, 1000000, &removed), AG_OK);
    cr_expect_eq(removed, 2000 * 2 * (NTENSORS - 1));
    cr_expect_eq(scalar(st, "SELECT min(step) FROM results"), 2000);
    ag_store_close(st);
}

Test(rollups, a_checkpoint_empties_the_wal) {
    ag_store *st = open_rw();
    setup_run(st);
    ingest(st, 0, 2999, 1, 3000, 0);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", db_path);
    FILE *f = fopen(wal, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    cr_expect_gt(ftell(f), 0);
    fclose(f);
    int busy = 1;
    cr_assert_eq(ag_store_checkpoint(st, 1, 0, &busy), AG_OK, "%s", ag_store_errmsg(st));
    cr_expect_eq(busy, 0);
    f = fopen(wal, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    cr_expect_eq(ftell(f), 0);
    fclose(f);
    cr_expect_eq(ag_store_wal_bytes(st), 0);
    ag_store_close(st);
}
