/*
 * fuzz_segment.c - libFuzzer target for the results segments of schema 11
 * (schema/store_seg.c), what a hostile or damaged database file hands the
 * store. The input is a segment: 8 bytes of first_step (little-endian, kept
 * below 2^62), 2 bytes of the point count n it claims, then its blob. It
 * must decode or be refused as corrupt without reading past the blob; every
 * point decoded encodes again to the same point (the decoder takes only what
 * the encoder writes); and the same segment in a
 * result_segs table read through the `results` virtual table, then edited
 * (a late point put into it, one deleted through SQL), must answer rows or
 * a clean error. No crash, leak or undefined behaviour.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "schema/store_seg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_point(const ag_store_result_row *a, const ag_store_result_row *b) {
    /* NaN-free after decoding: mse/sqnr are NaN only where absent */
    int qa = a->has_qerr, qb = b->has_qerr;
    return a->step == b->step && !memcmp(&a->counts, &b->counts, sizeof a->counts) &&
           a->flips_unknown == b->flips_unknown && (a->flips_unknown || a->flips == b->flips) &&
           a->source == b->source && a->incomplete == b->incomplete && a->ranks == b->ranks &&
           !memcmp(&a->amax, &b->amax, sizeof a->amax) &&
           !memcmp(&a->scale, &b->scale, sizeof a->scale) && qa == qb &&
           (isnan(a->mse) ? isnan(b->mse) : !memcmp(&a->mse, &b->mse, sizeof a->mse)) &&
           (isnan(a->sqnr_db) ? isnan(b->sqnr_db)
                              : !memcmp(&a->sqnr_db, &b->sqnr_db, sizeof a->sqnr_db));
}

static void codec(uint64_t first, const uint8_t *blob, size_t len) {
    ag_seg_reader rd;
    ag_seg_reader_init(&rd, blob, len, first);
    ag_store_result_row r, back;
    uint64_t prev = first;
    int got;
    while ((got = ag_seg_next(&rd, &r)) == 1) {
        if (rd.p > rd.end || r.step < prev || r.step > (uint64_t)INT64_MAX) abort();
        unsigned char out[AG_SEG_POINT_MAX];
        size_t n = ag_seg_encode(out, &r, prev);
        if (n == 0 || n > AG_SEG_POINT_MAX) abort();
        ag_seg_reader again;
        ag_seg_reader_init(&again, out, n, prev);
        if (ag_seg_next(&again, &back) != 1 || again.p != again.end) abort();
        if (!same_point(&r, &back)) abort(); /* the decoder takes only canonical points */
        prev = r.step;
    }
    if (got != 0 && got != -1) abort();
}

static void through_sql(uint64_t first, unsigned n, const uint8_t *blob, size_t len) {
    sqlite3 *db = NULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) abort();
    if (ag_seg_register(db) != SQLITE_OK) abort();
    if (sqlite3_exec(db,
                     "CREATE TABLE result_segs (id INTEGER PRIMARY KEY, tensor_id INTEGER NOT"
                     " NULL, format_id INTEGER NOT NULL, first_step INTEGER NOT NULL, last_step"
                     " INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);"
                     "CREATE UNIQUE INDEX result_segs_by_key ON result_segs (tensor_id,"
                     " format_id, first_step)",
                     NULL, NULL, NULL) != SQLITE_OK)
        abort();
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO result_segs VALUES(1,1,1,?1,?2,?3,?4)", -1, &s, NULL) !=
        SQLITE_OK)
        abort();
    sqlite3_bind_int64(s, 1, (int64_t)first);
    sqlite3_bind_int64(s, 2, (int64_t)(first + 1000));
    sqlite3_bind_int64(s, 3, n);
    sqlite3_bind_blob(s, 4, blob, (int)len, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) abort();
    sqlite3_finalize(s);
    /* reads: whole, a range, a point; errors are fine, crashes are not */
    sqlite3_exec(db, "SELECT * FROM results", NULL, NULL, NULL);
    sqlite3_exec(db,
                 "SELECT sum(stalled) FROM results WHERE tensor_id=1 AND format_id=1 AND"
                 " step BETWEEN 10 AND 500",
                 NULL, NULL, NULL);
    /* edits: a late point into the segment, a point's deletion */
    ag_seg_ctx c = {.db = db};
    ag_store_result_row late = {
        .tensor_id = 1, .format_id = 1, .step = first + 3, .amax = 1, .scale = 1};
    int existed = 0;
    ag_seg_put(&c, &late, 1, &existed, NULL);
    ag_seg_ctx_close(&c);
    sqlite3_exec(db, "DELETE FROM results WHERE step % 2 = 0", NULL, NULL, NULL);
    sqlite3_exec(db, "SELECT count(*) FROM results", NULL, NULL, NULL);
    sqlite3_close(db);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 10) return 0;
    uint64_t first = 0;
    for (int i = 0; i < 8; i++) first |= (uint64_t)data[i] << (8 * i);
    first &= ((uint64_t)1 << 62) - 1;
    unsigned n = (unsigned)data[8] | (unsigned)data[9] << 8;
    codec(first, data + 10, size - 10);
    through_sql(first, n, data + 10, size - 10);
    return 0;
}
