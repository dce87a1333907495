/*
 * test_segments.c - the results rows of schema 11, packed in segments
 * (schema/store_seg.c): what the store writes reads back exactly through the
 * `results` virtual table, whatever the order the rows come in (new steps,
 * late steps, steps stored again, batches and single rows); the segments
 * keep their invariants (disjoint step ranges per tensor and format, at most
 * AG_SEG_BYTES, fewer than AG_SEG_SPAN steps, n the points they hold); the
 * virtual table answers every constraint as a full scan filtered by SQLite
 * would, takes INSERT, UPDATE, DELETE and their conflict clauses as a table
 * would, and reports a corrupt segment as an error.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"
#include "schema/store_internal.h"
#include "tests/sql_results.h"
#include "tests/tmpdir.h"

static char dir[64], path[160];

static void setup(void) {
    strcpy(dir, "/tmp/ag_segs_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.db", dir);
}

static void teardown(void) { ag_tmpdir_remove(dir); }

TestSuite(segments, .init = setup, .fini = teardown);

#define NT 3
#define NF 2
#define MAXSTEP 4000

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static ag_store *open_store(void) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, path, AG_STORE_CREATE), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    for (int t = 1; t <= NT; t++) {
        char tn[16];
        snprintf(tn, sizeof tn, "t%d", t);
        cr_assert_eq(ag_store_put_tensor(st, t, 1, tn, AG_ROLE_WEIGHT), AG_OK);
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    return st;
}

/* A row with every kind of value a point can hold. */
static ag_store_result_row some_row(int t, int f, uint64_t step) {
    uint64_t h = rnd();
    ag_store_result_row r = {
        .tensor_id = t,
        .format_id = f,
        .step = step,
        .counts = {.stalled = h % 3 == 0 ? ((uint64_t)1 << 48) + h % 5 : h % 1000,
                   .total = 1000 + h % 7,
                   .overflow = h % 11,
                   .underflow = (h >> 8) % 300,
                   .nonfinite = h % 13 == 0 ? 1 : 0},
        .flips = (h >> 16) % 100000,
        .flips_unknown = h % 5 == 0,
        /* exactly a float, or not; non-finite is stored as 0 */
        .amax = h % 4 == 0 ? 0.1 * (double)(h % 97) : (double)(float)(0.5 + (double)(h % 64)),
        .scale = h % 17 == 0 ? NAN
                 : h % 3     ? ldexp(1.0, (int)(h % 40) - 20)
                             : 1.0 / 3.0,
        .source = (uint8_t)(h % 7 == 0),
        .incomplete = (uint8_t)(h % 9 == 0),
        .ranks = h % 6 == 0    ? 3
                 : h % 29 == 0 ? (uint64_t)1 << 40
                               : 0,
        .has_qerr = (uint8_t)(h % 3 != 1),
        .mse = h % 10 == 0 ? NAN : 1e-7 * (double)(h % 1000),
        .sqnr_db = h % 8 == 0 ? INFINITY : 20.0 + (double)(h % 300) / 7.0,
    };
    return r;
}

/* What the row reads back as (the normalisation the rows always had). */
typedef struct want {
    int present;
    ag_store_result_row r;
} want;

static want model[NT + 1][NF + 1][MAXSTEP];

static void expect_row(sqlite3_stmt *s, const ag_store_result_row *r, const char *when) {
    uint64_t step = r->step;
    cr_expect_eq(sqlite3_column_int64(s, 3), (int64_t)r->counts.stalled, "%s: stalled at %llu",
                 when, (unsigned long long)step);
    cr_expect_eq(sqlite3_column_int64(s, 4), (int64_t)r->counts.total, "%s", when);
    if (r->flips_unknown)
        cr_expect_eq(sqlite3_column_type(s, 5), SQLITE_NULL, "%s: flips NULL at %llu", when,
                     (unsigned long long)step);
    else
        cr_expect_eq(sqlite3_column_int64(s, 5), (int64_t)r->flips, "%s", when);
    cr_expect_eq(sqlite3_column_int64(s, 6), (int64_t)r->counts.overflow, "%s", when);
    cr_expect_eq(sqlite3_column_int64(s, 7), (int64_t)r->counts.underflow, "%s", when);
    cr_expect_eq(sqlite3_column_int64(s, 8), (int64_t)r->counts.nonfinite, "%s", when);
    cr_expect_eq(sqlite3_column_double(s, 9), isfinite(r->amax) ? r->amax : 0.0, "%s", when);
    cr_expect_eq(sqlite3_column_double(s, 10), isfinite(r->scale) ? r->scale : 0.0, "%s", when);
    cr_expect_eq(sqlite3_column_int(s, 11), r->source, "%s", when);
    cr_expect_eq(sqlite3_column_int64(s, 12), r->ranks ? (int64_t)r->ranks : 1, "%s", when);
    cr_expect_eq(sqlite3_column_int(s, 13), !r->incomplete, "%s", when);
    int mse = r->has_qerr && isfinite(r->mse), sqnr = r->has_qerr && isfinite(r->sqnr_db);
    if (mse)
        cr_expect_eq(sqlite3_column_double(s, 14), r->mse, "%s", when);
    else
        cr_expect_eq(sqlite3_column_type(s, 14), SQLITE_NULL, "%s", when);
    if (sqnr)
        cr_expect_eq(sqlite3_column_double(s, 15), r->sqnr_db, "%s", when);
    else
        cr_expect_eq(sqlite3_column_type(s, 15), SQLITE_NULL, "%s", when);
}

/* Every row of the file equals the model, in key order. */
static void expect_model(sqlite3 *db, const char *when) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT * FROM results ORDER BY tensor_id, format_id, step",
                                    -1, &s, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    int rc = sqlite3_step(s);
    for (int t = 1; t <= NT; t++)
        for (int f = 1; f <= NF; f++)
            for (int k = 0; k < MAXSTEP; k++) {
                if (!model[t][f][k].present) continue;
                cr_assert_eq(rc, SQLITE_ROW, "%s: row (%d, %d, %d) missing: %s", when, t, f, k,
                             sqlite3_errmsg(db));
                cr_assert_eq(sqlite3_column_int64(s, 0), t, "%s", when);
                cr_assert_eq(sqlite3_column_int64(s, 1), f, "%s", when);
                cr_assert_eq(sqlite3_column_int64(s, 2), k, "%s: step", when);
                expect_row(s, &model[t][f][k].r, when);
                rc = sqlite3_step(s);
            }
    cr_expect_eq(rc, SQLITE_DONE, "%s: more rows than stored", when);
    sqlite3_finalize(s);
}

static long long scalar(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s: %s", sql, sqlite3_errmsg(db));
    long long v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* Disjoint ranges per key, within the caps, n what the blob holds. */
static void expect_invariants(sqlite3 *db) {
    cr_expect_eq(scalar(db, "SELECT count(*) FROM result_segs a JOIN result_segs b ON"
                            " a.tensor_id=b.tensor_id AND a.format_id=b.format_id AND a.id<>b.id"
                            " AND a.first_step<=b.last_step AND b.first_step<=a.last_step"),
                 0, "segments overlap");
    cr_expect_leq(scalar(db, "SELECT coalesce(max(length(data)),0) FROM result_segs"),
                  AG_SEG_BYTES);
    cr_expect_lt(scalar(db, "SELECT coalesce(max(last_step-first_step),0) FROM result_segs"),
                 (long long)AG_SEG_SPAN);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM result_segs WHERE n<1 OR first_step>last_step"),
                 0);
    cr_expect_eq(scalar(db, "SELECT coalesce(sum(n),0) FROM result_segs"),
                 scalar(db, "SELECT count(*) FROM results"));
    cr_expect_eq(scalar(db, "SELECT count(*) FROM result_segs g WHERE last_step <> (SELECT"
                            " max(step) FROM results r WHERE r.tensor_id=g.tensor_id AND"
                            " r.format_id=g.format_id AND r.step BETWEEN g.first_step AND"
                            " g.last_step)"),
                 0, "last_step is the last point's step");
}

Test(segments, rows_in_any_order_read_back_exactly) {
    ag_store *st = open_store();
    memset(model, 0, sizeof model);
    /* rounds: new steps in batches, late steps, steps stored again, single
     * rows; some rounds rolled back */
    uint64_t next = 0;
    for (int round = 0; round < 40; round++) {
        size_t n = 1 + rnd() % 400, cap = n;
        ag_store_result_row *rows = malloc(cap * sizeof *rows);
        for (size_t i = 0; i < n; i++) {
            int t = 1 + (int)(rnd() % NT), f = 1 + (int)(rnd() % NF);
            uint64_t step;
            switch (rnd() % 4) {
            case 0: step = next < MAXSTEP ? next : rnd() % MAXSTEP; break; /* new */
            case 1: step = rnd() % MAXSTEP; break;                         /* anywhere */
            default: step = next + rnd() % 40 < MAXSTEP ? next + rnd() % 40 : rnd() % MAXSTEP;
            }
            if (step >= next && step < MAXSTEP) next = step + 1;
            rows[i] = some_row(t, f, step);
        }
        /* the writer's order: sorted by key, arrival order kept within */
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0; j--) {
                ag_store_result_row *a = &rows[j - 1], *b = &rows[j];
                if (a->tensor_id < b->tensor_id ||
                    (a->tensor_id == b->tensor_id &&
                     (a->format_id < b->format_id ||
                      (a->format_id == b->format_id && a->step <= b->step))))
                    break;
                ag_store_result_row x = *a;
                *a = *b;
                *b = x;
            }
        int rollback = round % 9 == 4, single = round % 5 == 3;
        cr_assert_eq(ag_store_begin(st), AG_OK);
        if (single) {
            for (size_t i = 0; i < n; i++)
                cr_assert_eq(ag_store_put_result(st, &rows[i]), AG_OK, "%s", ag_store_errmsg(st));
        } else {
            size_t done = 0;
            cr_assert_eq(ag_store_put_results(st, rows, sizeof *rows, n, &done), AG_OK, "%s",
                         ag_store_errmsg(st));
            cr_assert_eq(done, n);
        }
        if (rollback) {
            cr_assert_eq(ag_store_rollback(st), AG_OK);
        } else {
            cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
            for (size_t i = 0; i < n; i++)
                model[rows[i].tensor_id][rows[i].format_id][rows[i].step] = (want){1, rows[i]};
        }
        free(rows);
    }
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    expect_model(db, "after 40 rounds");
    expect_invariants(db);
    cr_expect_gt(scalar(db, "SELECT count(*) FROM result_segs"), NT * NF,
                 "segments split at the byte cap");
    sqlite3_close(db);
    /* the store's own connection and a read-only one answer alike */
    expect_model(st->db, "through the store's connection");
    ag_store_close(st);
}

/* Every constraint through the virtual table gives what the same filter
 * gives on a plain copy of all its rows. */
Test(segments, constraints_answer_as_a_filtered_full_scan) {
    ag_store *st = open_store();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    for (uint64_t step = 0; step < 3000; step += 1 + step % 3) {
        ag_store_result_row rows[NT * NF];
        size_t n = 0;
        for (int t = 1; t <= NT; t++)
            for (int f = 1; f <= NF; f++) rows[n++] = some_row(t, f, step);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(ag_store_put_result(st, &rows[i]), AG_OK, "%s", ag_store_errmsg(st));
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    static const char *const where[] = {
        "tensor_id=2",
        "tensor_id=2 AND format_id=1",
        "format_id=2",
        "tensor_id=3 AND format_id=2 AND step=1500",
        "tensor_id=1 AND format_id=1 AND step BETWEEN 100 AND 2000",
        "tensor_id=1 AND step > 2990",
        "step >= 2500 AND step < 2600",
        "step < 0",
        "step > 9223372036854775806",
        "step <= 5",
        "tensor_id=1 AND format_id=2 AND step > 2.5 AND step < 40.5",
        "tensor_id='2' AND format_id=1",
        "tensor_id=2.5",
        "tensor_id IN (1,3) AND format_id=2 AND step<300",
        "tensor_id=1 AND format_id=1 AND step=7 AND step=8",
        "tensor_id=NULL",
        "step > 100 AND step > 200 AND step <= 250",
    };
    for (size_t i = 0; i < sizeof where / sizeof *where; i++) {
        char a[512], b[512];
        snprintf(a, sizeof a,
                 "SELECT count(*) || ':' || coalesce(sum(stalled %% 1000),0) || ':' ||"
                 " coalesce(sum(step),0) FROM results WHERE %s",
                 where[i]);
        /* the reference: the full scan into a temp table, then the filter */
        snprintf(b, sizeof b,
                 "SELECT count(*) || ':' || coalesce(sum(stalled %% 1000),0) || ':' ||"
                 " coalesce(sum(step),0) FROM allrows WHERE %s",
                 where[i]);
        sqlite3 *db = st->db;
        cr_assert_eq(sqlite3_exec(db,
                                  "CREATE TEMP TABLE IF NOT EXISTS allrows AS SELECT * FROM"
                                  " results",
                                  NULL, NULL, NULL),
                     SQLITE_OK, "%s", sqlite3_errmsg(db));
        sqlite3_stmt *x = NULL, *y = NULL;
        cr_assert_eq(sqlite3_prepare_v2(db, a, -1, &x, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
        cr_assert_eq(sqlite3_prepare_v2(db, b, -1, &y, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
        cr_assert_eq(sqlite3_step(x), SQLITE_ROW, "%s: %s", where[i], sqlite3_errmsg(db));
        cr_assert_eq(sqlite3_step(y), SQLITE_ROW);
        cr_expect_str_eq((const char *)sqlite3_column_text(x, 0),
                         (const char *)sqlite3_column_text(y, 0), "WHERE %s", where[i]);
        sqlite3_finalize(x);
        sqlite3_finalize(y);
    }
    /* ordered output needs no sort and is in key order */
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM (SELECT step, lag(step) OVER () AS p FROM"
                                " results WHERE tensor_id=2 AND format_id=1 ORDER BY step)"
                                " WHERE p >= step"),
                 0);
    ag_store_close(st);
}

Test(segments, sql_writes_behave_as_on_a_table) {
    ag_store *st = open_store();
    sqlite3 *db = st->db;
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(db,
                              "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n+1 FROM s"
                              " WHERE n<999) INSERT INTO results(tensor_id,format_id,step,stalled,"
                              "total,flips,overflow,underflow,nonfinite,amax,scale) SELECT 1, 1,"
                              " n*3, n%7, 7, n%3, 0, 1, 0, n*0.5, 2.0 FROM s",
                              NULL, NULL, &msg),
                 SQLITE_OK, "%s", msg);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results"), 1000);
    /* defaults as the old columns had them */
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE source=0 AND ranks=1 AND"
                            " complete=1 AND mse IS NULL AND sqnr_db IS NULL"),
                 1000);
    /* a duplicate key */
    cr_expect_neq(sqlite3_exec(db,
                               "INSERT INTO results(tensor_id,format_id,step,stalled,total,flips,"
                               "overflow,underflow,nonfinite,amax,scale) VALUES(1,1,30,5,7,1,0,0,"
                               "0,1,1)",
                               NULL, NULL, NULL),
                  SQLITE_OK);
    cr_expect(strstr(sqlite3_errmsg(db), "UNIQUE") != NULL, "%s", sqlite3_errmsg(db));
    cr_expect_eq(scalar(db, "SELECT stalled FROM results WHERE tensor_id=1 AND format_id=1 AND"
                            " step=30"),
                 3);
    cr_expect_eq(
        sqlite3_exec(db,
                     "INSERT OR IGNORE INTO results(tensor_id,format_id,step,stalled,total,"
                     "flips,overflow,underflow,nonfinite,amax,scale) VALUES(1,1,30,5,7,1,"
                     "0,0,0,1,1)",
                     NULL, NULL, NULL),
        SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_expect_eq(scalar(db, "SELECT stalled FROM results WHERE tensor_id=1 AND step=30"), 3);
    cr_expect_eq(sqlite3_exec(db,
                              "INSERT OR REPLACE INTO results(tensor_id,format_id,step,stalled,"
                              "total,flips,overflow,underflow,nonfinite,amax,scale) VALUES(1,1,30,"
                              "5,7,NULL,0,0,0,1,1)",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_expect_eq(scalar(db, "SELECT stalled FROM results WHERE tensor_id=1 AND step=30"), 5);
    cr_expect_eq(scalar(db, "SELECT flips IS NULL FROM results WHERE tensor_id=1 AND step=30"), 1);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results"), 1000);
    /* a NULL where the old table said NOT NULL */
    cr_expect_neq(sqlite3_exec(db,
                               "INSERT INTO results(tensor_id,format_id,step,stalled,total) VALUES"
                               "(1,1,5000,1,1)",
                               NULL, NULL, NULL),
                  SQLITE_OK);
    /* UPDATE of a column, and of the key */
    cr_expect_eq(
        sqlite3_exec(db, "UPDATE results SET stalled=stalled+100 WHERE step<300", NULL, NULL, NULL),
        SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE stalled>=100"), 100);
    cr_expect_eq(
        sqlite3_exec(db, "UPDATE results SET step=step+1 WHERE step=2997", NULL, NULL, NULL),
        SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE step=2998"), 1);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE step=2997"), 0);
    /* DELETE: every third row, first rows of segments among them */
    cr_expect_eq(sqlite3_exec(db, "DELETE FROM results WHERE step % 9 = 0", NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    /* steps 3n with n % 3 == 0, but 2997 moved to 2998 */
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results"), 1000 - 333);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM results WHERE step % 9 = 0"), 0);
    cr_expect_eq(scalar(db, "SELECT sum(n) FROM result_segs"), 1000 - 333);
    cr_expect_eq(sqlite3_exec(db, "DELETE FROM results", NULL, NULL, NULL), SQLITE_OK);
    cr_expect_eq(scalar(db, "SELECT count(*) FROM result_segs"), 0, "empty segments go");
    ag_store_close(st);
}

Test(segments, a_corrupt_segment_is_an_error_not_a_crash) {
    ag_store *st = open_store();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    for (uint64_t step = 0; step < 50; step++) {
        ag_store_result_row r = some_row(1, 1, step);
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    static const char *const bad[] = {
        "UPDATE result_segs SET data=x'ff'",                         /* a varint cut short */
        "UPDATE result_segs SET data=substr(data,1,length(data)-3)", /* a point cut short */
        "UPDATE result_segs SET data=x'00ffffffffffffffffffff7f'",   /* a varint past 64 bits */
        "UPDATE result_segs SET data=data||data",                    /* steps not rising */
        "UPDATE result_segs SET n=n+1",                              /* fewer points than n */
        "UPDATE result_segs SET n=4611686018427387904",              /* n past any array */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(sqlite3_exec(st->db, "SAVEPOINT c", NULL, NULL, NULL), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(st->db, bad[i], NULL, NULL, NULL), SQLITE_OK);
        sqlite3_stmt *s = NULL;
        cr_assert_eq(sqlite3_prepare_v2(st->db, "SELECT count(*) FROM results", -1, &s, NULL),
                     SQLITE_OK);
        int rc = sqlite3_step(s);
        if (i < 4) {
            cr_expect_eq(rc, SQLITE_ERROR, "%s: %d", bad[i], rc);
            cr_expect(strstr(sqlite3_errmsg(st->db), "is corrupt") != NULL, "%s",
                      sqlite3_errmsg(st->db));
        }
        sqlite3_finalize(s);
        /* the store refuses to edit it (a late step decodes the segment) */
        ag_store_result_row r = some_row(1, 1, 10);
        cr_expect_neq(ag_store_put_result(st, &r), AG_OK, "%s", bad[i]);
        cr_assert_eq(sqlite3_exec(st->db, "ROLLBACK TO c; RELEASE c", NULL, NULL, NULL), SQLITE_OK,
                     "%s", sqlite3_errmsg(st->db));
    }
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM results"), 50);
    /* segments whose rows would have no rowid (id * 2^24 + the step's
     * offset past int64): a negative first_step, an id too large, a point
     * 2^24 steps or more past first_step (found by fuzz_segment) */
    static const char *const norowid[] = {
        "UPDATE result_segs SET first_step=-5",
        "UPDATE result_segs SET id=9223372036854775000",
        "UPDATE result_segs SET data=x'8080808001'||substr(data,2)",
    };
    for (size_t i = 0; i < sizeof norowid / sizeof *norowid; i++) {
        cr_assert_eq(sqlite3_exec(st->db, "SAVEPOINT c", NULL, NULL, NULL), SQLITE_OK);
        cr_assert_eq(sqlite3_exec(st->db, norowid[i], NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(st->db));
        sqlite3_stmt *s = NULL;
        cr_assert_eq(sqlite3_prepare_v2(st->db, "SELECT rowid, step FROM results", -1, &s, NULL),
                     SQLITE_OK);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {}
        cr_expect_eq(rc, SQLITE_ERROR, "%s: %d", norowid[i], rc);
        cr_expect(strstr(sqlite3_errmsg(st->db), "is corrupt") != NULL, "%s: %s", norowid[i],
                  sqlite3_errmsg(st->db));
        sqlite3_finalize(s);
        cr_assert_eq(sqlite3_exec(st->db, "ROLLBACK TO c; RELEASE c", NULL, NULL, NULL), SQLITE_OK,
                     "%s", sqlite3_errmsg(st->db));
    }
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM results"), 50);
    ag_store_close(st);
}

Test(segments, huge_step_gaps_split_segments_at_the_span) {
    ag_store *st = open_store();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    static const uint64_t steps[] = {0,
                                     1,
                                     AG_SEG_SPAN - 1,
                                     AG_SEG_SPAN,
                                     3 * AG_SEG_SPAN + 5,
                                     (uint64_t)INT64_MAX - 1,
                                     (uint64_t)INT64_MAX};
    ag_store_result_row rows[7];
    for (int i = 0; i < 7; i++) rows[i] = some_row(2, 2, steps[i]);
    size_t done = 0;
    cr_assert_eq(ag_store_put_results(st, rows, sizeof *rows, 7, &done), AG_OK, "%s",
                 ag_store_errmsg(st));
    /* a late one between them, and one past 2^63 - 1 refused */
    ag_store_result_row late = some_row(2, 2, 2 * AG_SEG_SPAN);
    cr_assert_eq(ag_store_put_result(st, &late), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_result_row past = some_row(2, 2, (uint64_t)INT64_MAX + 1);
    cr_expect_eq(ag_store_put_result(st, &past), AG_EINVAL);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM results"), 8);
    cr_expect_eq(scalar(st->db, "SELECT max(step) FROM results"), INT64_MAX);
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM results WHERE step > 9223372036854775806"),
                 1);
    expect_invariants(st->db);
    /* rowids stay distinct across the split segments: DELETE finds each */
    cr_expect_eq(sqlite3_exec(st->db, "DELETE FROM results WHERE step % 2 = 1", NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(st->db));
    cr_expect_eq(scalar(st->db, "SELECT count(*) FROM results"), 4);
    ag_store_close(st);
}

#ifdef AG_SQLITE_EXT
/* What the sqlite3 shell prints for sql (no double quotes in it) on the
 * file, with the extension loaded or not (then with its error). */
static void shell(const char *sql, int load, char *out, size_t len) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sqlite3 -readonly -bail '%s' %s%s%s \"%s\" 2>&1", path,
             load ? "'.load " : "", load ? AG_SQLITE_EXT : "", load ? "'" : "", sql);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    pclose(p);
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = 0;
}

Test(segments, the_sqlite3_shell_reads_results_through_the_extension) {
    ag_store *st = open_store();
    cr_assert_eq(ag_store_begin(st), AG_OK);
    for (uint64_t step = 0; step < 700; step++)
        for (int t = 1; t <= NT; t++) {
            ag_store_result_row r = some_row(t, 1 + (int)(step % 2), step);
            cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
        }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    const char *sql = "SELECT count(*) || '|' || sum(stalled % 1000) || '|' || sum(step) FROM"
                      " results WHERE tensor_id=2 AND step BETWEEN 100 AND 600";
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
    char expected[128], got[512];
    snprintf(expected, sizeof expected, "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    ag_store_close(st);
    shell(sql, 1, got, sizeof got);
    cr_expect_str_eq(got, expected);
    shell(sql, 0, got, sizeof got);
    cr_expect(strstr(got, "no such table: results") != NULL, "%s", got);
}
#endif
