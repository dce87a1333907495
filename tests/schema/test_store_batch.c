/*
 * test_store_batch.c - ag_store_put_results and ag_store_put_stats_rows (many
 * rows a call, 16 a statement where they are new) leave exactly the file
 * that one call per row leaves: the same results, stats and rollups rows,
 * with steps stored again (in the batch and from an earlier transaction),
 * steps out of order, gaps, NULL flips, and a rolled-back batch.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
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

static void setup(void) {
    strcpy(dir, "/tmp/ag_batch_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void) { ag_tmpdir_remove(dir); }

TestSuite(store_batch, .init = setup, .fini = teardown);

static ag_store *open_rw(const char *name) {
    char path[160];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ag_store *st = NULL;
    int err = ag_store_open(&st, path, AG_STORE_CREATE);
    cr_assert_eq(err, AG_OK, "open: %s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    for (int t = 1; t <= 3; t++) {
        char tn[16];
        snprintf(tn, sizeof tn, "t%d", t);
        cr_assert_eq(ag_store_put_tensor(st, t, 1, tn, AG_ROLE_WEIGHT), AG_OK);
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    return st;
}

static ag_store_result_row result(int t, int f, uint64_t step, unsigned salt) {
    uint64_t h = step * 2654435761u + (uint64_t)t * 97 + (uint64_t)f * 13 + salt * 7919;
    ag_store_result_row r = {.tensor_id = t,
                             .format_id = f,
                             .step = step,
                             .counts = {.stalled = h % 50,
                                        .total = 50,
                                        .overflow = h % 3,
                                        .underflow = h % 5,
                                        .nonfinite = h % 2},
                             .flips = h % 11,
                             .flips_unknown = h % 7 == 0,
                             .amax = (double)(h % 1000) / 100.0,
                             .scale = (double)(h % 17) + 1.0,
                             .source = (uint8_t)(h % 4 == 0),
                             .ranks = 1 + h % 3,
                             .incomplete = h % 9 == 0,
                             .has_qerr = h % 5 != 0,
                             .mse = (double)(h % 100) * 1e-6,
                             .sqnr_db = (double)(h % 40)};
    return r;
}

/* Sorted by (tensor, format, step), arrival order kept among equal keys, as
 * the writer sorts its batch. */
typedef struct held {
    ag_store_result_row row;
    size_t order;
} held;

static int held_cmp(const void *x, const void *y) {
    const held *a = x, *b = y;
    if (a->row.tensor_id != b->row.tensor_id) return a->row.tensor_id < b->row.tensor_id ? -1 : 1;
    if (a->row.format_id != b->row.format_id) return a->row.format_id < b->row.format_id ? -1 : 1;
    if (a->row.step != b->row.step) return a->row.step < b->row.step ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* The same rows into a one by one and into b in one call (b's array as the
 * writer holds it: a struct that begins with the row). */
static void put_both(ag_store *a, ag_store *b, held *rows, size_t n, int sort) {
    for (size_t i = 0; i < n; i++) rows[i].order = i;
    if (sort) qsort(rows, n, sizeof *rows, held_cmp);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ag_store_put_result(a, &rows[i].row), AG_OK, "%s", ag_store_errmsg(a));
    size_t done = 0;
    cr_assert_eq(ag_store_put_results(b, rows, sizeof *rows, n, &done), AG_OK, "%s",
                 ag_store_errmsg(b));
    cr_assert_eq(done, n);
}

/* Every row of sql (ordered) as text with each value's type. */
static char *dump(ag_store *st, const char *sql) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL), SQLITE_OK, "%s",
                 sqlite3_errmsg(st->db));
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    out[0] = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        for (int c = 0; c < sqlite3_column_count(s); c++) {
            char cell[96];
            int type = sqlite3_column_type(s, c);
            if (type == SQLITE_FLOAT)
                snprintf(cell, sizeof cell, "f%.17g,", sqlite3_column_double(s, c));
            else if (type == SQLITE_NULL)
                snprintf(cell, sizeof cell, "null,");
            else
                snprintf(cell, sizeof cell, "i%lld,", (long long)sqlite3_column_int64(s, c));
            size_t k = strlen(cell);
            if (len + k + 2 > cap) out = realloc(out, cap *= 2);
            memcpy(out + len, cell, k + 1);
            len += k;
        }
        out[len++] = '\n';
        out[len] = 0;
    }
    sqlite3_finalize(s);
    return out;
}

static void expect_same(ag_store *a, ag_store *b) {
    static const char *const sql[] = {
        "SELECT * FROM results ORDER BY tensor_id, format_id, step",
        "SELECT * FROM stats ORDER BY tensor_id, role, step",
        "SELECT * FROM rollups ORDER BY tensor_id, format_id, width, bucket",
    };
    for (size_t k = 0; k < sizeof sql / sizeof sql[0]; k++) {
        char *x = dump(a, sql[k]), *y = dump(b, sql[k]);
        if (k != 1) cr_expect(strlen(x) > 0, "%s: no rows", sql[k]);
        cr_expect_str_eq(x, y, "%s differs", sql[k]);
        free(x);
        free(y);
    }
}

Test(store_batch, results_equal_one_by_one) {
    ag_store *a = open_rw("a.db"), *b = open_rw("b.db");
    held *rows = calloc(4096, sizeof *rows);
    /* 1: new rows, 3 tensors x 2 formats x 45 steps (chunks and remainders) */
    size_t n = 0;
    for (uint64_t s = 0; s < 45; s++)
        for (int t = 1; t <= 3; t++)
            for (int f = 1; f <= 2; f++) rows[n++].row = result(t, f, s, 0);
    cr_assert_eq(ag_store_begin(a), AG_OK);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    put_both(a, b, rows, n, 1);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    cr_assert_eq(ag_store_commit(b), AG_OK);
    expect_same(a, b);

    /* 2: steps stored again (from 1 and within the batch), gaps, new steps
     * past them, a tensor only partly past its newest step */
    n = 0;
    for (uint64_t s = 30; s < 120; s += (s % 3 ? 1 : 2))
        for (int t = 1; t <= 3; t++)
            for (int f = 1; f <= 2; f++) rows[n++].row = result(t, f, s, 1);
    for (uint64_t s = 100; s < 110; s++) rows[n++].row = result(2, 1, s, 2); /* again */
    rows[n++].row = result(3, 2, 5, 3);
    cr_assert_eq(ag_store_begin(a), AG_OK);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    put_both(a, b, rows, n, 1);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    cr_assert_eq(ag_store_commit(b), AG_OK);
    expect_same(a, b);

    /* 3: unsorted (steps falling within a key): one by one, the same */
    n = 0;
    for (uint64_t s = 200; s > 150; s--) rows[n++].row = result(1, 2, s, 4);
    for (uint64_t s = 150; s < 190; s++) rows[n++].row = result(1, 2, s, 5);
    cr_assert_eq(ag_store_begin(a), AG_OK);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    put_both(a, b, rows, n, 0);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    cr_assert_eq(ag_store_commit(b), AG_OK);
    expect_same(a, b);

    /* 4: every raw row of a tensor and format gone (as retention can leave
     * it) but its rollups kept: rows into those buckets again add to them
     * (the batch's new buckets meet existing rollups rows: the upsert) */
    for (int k = 0; k < 2; k++)
        cr_assert_eq(sqlite3_exec((k ? b : a)->db,
                                  "DELETE FROM results WHERE tensor_id=3 AND format_id=1", NULL,
                                  NULL, NULL),
                     SQLITE_OK);
    n = 0;
    for (uint64_t s = 0; s < 200; s++) rows[n++].row = result(3, 1, s, 7);
    cr_assert_eq(ag_store_begin(a), AG_OK);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    put_both(a, b, rows, n, 1);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    cr_assert_eq(ag_store_commit(b), AG_OK, "%s", ag_store_errmsg(b));
    expect_same(a, b);

    /* 5: a batch rolled back leaves nothing, in rows or rollups */
    n = 0;
    for (uint64_t s = 300; s < 340; s++) rows[n++].row = result(2, 2, s, 6);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    size_t done = 0;
    cr_assert_eq(ag_store_put_results(b, rows, sizeof *rows, n, &done), AG_OK);
    cr_assert_eq(ag_store_rollback(b), AG_OK);
    expect_same(a, b);
    free(rows);
    ag_store_close(a);
    ag_store_close(b);
}

Test(store_batch, stats_equal_one_by_one) {
    ag_store *a = open_rw("a.db"), *b = open_rw("b.db");
    ag_store_stats_row rows[100];
    size_t n = 0;
    for (uint64_t s = 0; s < 40; s++)
        rows[n++] = (ag_store_stats_row){.tensor_id = 1 + (int64_t)(s % 2),
                                         .role = AG_ROLE_WEIGHT,
                                         .step = s / 2,
                                         .amax = s == 7 ? 1.0 / 0.0 : 0.25 * (double)s,
                                         .numel = 16,
                                         .nonfinite = s % 3,
                                         .ranks = 1 + s % 2};
    /* the same keys again inside one chunk: the later replaces the earlier */
    for (uint64_t s = 0; s < 20; s++)
        rows[n++] = (ag_store_stats_row){
            .tensor_id = 1, .role = AG_ROLE_WEIGHT, .step = s % 5, .amax = (double)s, .numel = 8};
    cr_assert_eq(ag_store_begin(a), AG_OK);
    cr_assert_eq(ag_store_begin(b), AG_OK);
    for (size_t i = 0; i < n; i++) cr_assert_eq(ag_store_put_stats(a, &rows[i]), AG_OK);
    size_t done = 0;
    cr_assert_eq(ag_store_put_stats_rows(b, rows, sizeof *rows, n, &done), AG_OK, "%s",
                 ag_store_errmsg(b));
    cr_assert_eq(done, n);
    /* something in results and rollups too, so expect_same compares rows */
    ag_store_result_row r = result(1, 1, 1, 0);
    cr_assert_eq(ag_store_put_result(a, &r), AG_OK);
    cr_assert_eq(ag_store_put_result(b, &r), AG_OK);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    cr_assert_eq(ag_store_commit(b), AG_OK);
    expect_same(a, b);
    ag_store_close(a);
    ag_store_close(b);
}

static long long scalar(ag_store *st, const char *sql) {
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL), SQLITE_OK, "%s", sql);
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW, "%s", sql);
    long long v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* Steps [from, to) of tensors 1..3, formats 1..2, sorted as the writer
 * sorts them, into rows (returns how many). */
static size_t batch_rows(held *rows, uint64_t from, uint64_t to) {
    size_t n = 0;
    for (int t = 1; t <= 3; t++)
        for (int f = 1; f <= 2; f++)
            for (uint64_t s = from; s < to; s++) rows[n++].row = result(t, f, s, 0);
    return n;
}

Test(store_batch, a_process_killed_mid_batch_keeps_the_committed_rows_only) {
    held *rows = calloc(3 * 2 * 100, sizeof *rows);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ag_store *st = open_rw("k.db");
        size_t done = 0, n = batch_rows(rows, 0, 100);
        if (ag_store_begin(st) || ag_store_put_results(st, rows, sizeof *rows, n, &done) ||
            ag_store_commit(st))
            _exit(3);
        /* the next batch, written but never committed */
        n = batch_rows(rows, 100, 200);
        if (ag_store_begin(st) || ag_store_put_results(st, rows, sizeof *rows, n, &done)) _exit(4);
        raise(SIGKILL);
        _exit(5);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    /* What one call per row commits for the first batch, beside it. */
    char path[160];
    snprintf(path, sizeof path, "%s/k.db", dir);
    ag_store *k = NULL;
    cr_assert_eq(ag_store_open(&k, path, AG_STORE_CREATE), AG_OK, "%s", ag_store_errmsg(k));
    cr_expect_eq(scalar(k, "SELECT count(*) FROM results"), 3 * 2 * 100);
    cr_expect_eq(scalar(k, "SELECT max(step) FROM results"), 99);
    cr_expect_eq(scalar(k, "SELECT sum(rows) FROM rollups WHERE width=1000"), 3 * 2 * 100);
    ag_store *a = open_rw("a.db");
    size_t n = batch_rows(rows, 0, 100);
    cr_assert_eq(ag_store_begin(a), AG_OK);
    for (size_t i = 0; i < n; i++) cr_assert_eq(ag_store_put_result(a, &rows[i].row), AG_OK);
    cr_assert_eq(ag_store_commit(a), AG_OK);
    expect_same(a, k);
    /* and the file takes the lost batch again, as new rows */
    n = batch_rows(rows, 100, 200);
    size_t done = 0;
    cr_assert_eq(ag_store_begin(k), AG_OK);
    cr_assert_eq(ag_store_put_results(k, rows, sizeof *rows, n, &done), AG_OK, "%s",
                 ag_store_errmsg(k));
    cr_assert_eq(ag_store_commit(k), AG_OK);
    cr_expect_eq(scalar(k, "SELECT count(*) FROM results"), 3 * 2 * 200);
    cr_expect_eq(scalar(k, "SELECT sum(rows) FROM rollups WHERE width=1000"), 3 * 2 * 200);
    free(rows);
    ag_store_close(a);
    ag_store_close(k);
}
