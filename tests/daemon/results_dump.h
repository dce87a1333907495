/*
 * tests/daemon/results_dump.h - every results row of a store's file, in key
 * order, as one text: two runs that must give the same numbers compare as
 * strings (test_pool: one and many pool threads; test_shm: shared memory
 * and the socket). Include after tests/sql_results.h.
 */
#ifndef AG_TESTS_RESULTS_DUMP_H
#define AG_TESTS_RESULTS_DUMP_H

#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows "tensor format step stalled total flips overflow underflow nonfinite
 * amax scale mse sqnr_db" (NULL flips as "null", doubles to 17 digits);
 * malloc'd; *rows_out (when not NULL) the number of rows. */
static inline char *results_dump(const char *db_path, size_t *rows_out) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT t.name, f.name, r.step, r.stalled, r.total,"
                                    " coalesce(r.flips, 'null'), r.overflow, r.underflow,"
                                    " r.nonfinite, r.amax, r.scale, quote(r.mse),"
                                    " quote(r.sqnr_db) FROM results r"
                                    " JOIN tensors t ON t.id = r.tensor_id"
                                    " JOIN formats f ON f.id = r.format_id"
                                    " ORDER BY t.name, f.name, r.step",
                                    -1, &q, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    size_t cap = 1 << 16, len = 0, rows = 0;
    char *out = malloc(cap);
    cr_assert_not_null(out);
    out[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW) {
        char line[512];
        int k = snprintf(
            line, sizeof line, "%s %s %lld %lld %lld %s %lld %lld %lld %.17g %.17g %s %s\n",
            sqlite3_column_text(q, 0), sqlite3_column_text(q, 1), sqlite3_column_int64(q, 2),
            sqlite3_column_int64(q, 3), sqlite3_column_int64(q, 4), sqlite3_column_text(q, 5),
            sqlite3_column_int64(q, 6), sqlite3_column_int64(q, 7), sqlite3_column_int64(q, 8),
            sqlite3_column_double(q, 9), sqlite3_column_double(q, 10), sqlite3_column_text(q, 11),
            sqlite3_column_text(q, 12));
        while (len + (size_t)k + 1 > cap) {
            cap *= 2;
            out = realloc(out, cap);
            cr_assert_not_null(out);
        }
        memcpy(out + len, line, (size_t)k + 1);
        len += (size_t)k;
        rows++;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    if (rows_out) *rows_out = rows;
    return out;
}

#endif
