/*
 * store_seg.h - internal: the results rows of schema 11, packed in segments
 * (table result_segs: one row per tensor, format and run of steps, the
 * points varint-encoded in a blob; docs/store.md, "Result segments").
 * The `results` table that SQL sees is a virtual table over them
 * (store_seg.c), registered on every connection the store opens and by
 * ag_store_sql_register for any other.
 */
#ifndef AG_SCHEMA_STORE_SEG_H
#define AG_SCHEMA_STORE_SEG_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "schema/store.h"

/* A segment grows to at most this many bytes of points (one page's worth:
 * a rewrite touches one leaf) and spans fewer than AG_SEG_SPAN steps (the
 * virtual table's rowid is the segment's id times AG_SEG_SPAN plus the
 * step's offset in it). */
#define AG_SEG_BYTES 3000
#define AG_SEG_SPAN ((uint64_t)1 << 24)
/* The most bytes one encoded point takes. */
#define AG_SEG_POINT_MAX 120

typedef enum ag_seg_stmt_id {
    AG_SEG_LAST,   /* the (tensor, format)'s newest segment */
    AG_SEG_AT,     /* the segment a step falls in or after */
    AG_SEG_FIRST,  /* the (tensor, format)'s oldest segment */
    AG_SEG_BY_ID,  /* a segment by id */
    AG_SEG_INSERT, /* a new segment */
    AG_SEG_UPDATE, /* a segment rewritten */
    AG_SEG_DELETE, /* a segment gone */
    AG_SEG_STMT_COUNT
} ag_seg_stmt_id;

/* The segment statements of one connection (the store's, or a virtual
 * table's on a connection of its own). */
typedef struct ag_seg_ctx {
    sqlite3 *db;
    sqlite3_stmt *stmts[AG_SEG_STMT_COUNT];
} ag_seg_ctx;

void ag_seg_ctx_close(ag_seg_ctx *c);

/* One segment in memory, to read or edit. */
typedef struct ag_seg {
    int64_t id; /* 0: not stored yet */
    int64_t tensor_id, format_id;
    uint64_t first_step, last_step; /* bounds: every point's step is within */
    uint64_t n;                     /* points */
    unsigned char *data;
    size_t len, cap;
} ag_seg;

/* Encode r (normalised as the rows always were: a non-finite amax or scale
 * is 0, mse and sqnr_db are kept only with has_qerr and finite, ranks 0 is
 * 1) as the point after prev_step (the segment's first_step for its first
 * point; r->step >= prev_step). Returns the bytes written (<=
 * AG_SEG_POINT_MAX). */
size_t ag_seg_encode(unsigned char *out, const ag_store_result_row *r, uint64_t prev_step);

/* Walks a segment's points. */
typedef struct ag_seg_reader {
    const unsigned char *p, *end;
    uint64_t step; /* the previous point's step (first_step at the start) */
    int started;
} ag_seg_reader;

void ag_seg_reader_init(ag_seg_reader *rd, const void *data, size_t len, uint64_t first_step);
/* 1: *r is the next point (tensor and format ids left as they are); 0: no
 * more; -1: the blob is corrupt (truncated, a varint too long, steps not
 * rising, a step past 2^63 - 1). */
int ag_seg_next(ag_seg_reader *rd, ag_store_result_row *r);

/* Put rows (one tensor and format, tensor_id/format_id from rows[0]; strictly
 * rising steps, every one past every step stored for the key) at the end of
 * its segments. SQLite result code. */
int ag_seg_append(ag_seg_ctx *c, const void *rows, size_t stride, size_t n);
/* Put one row anywhere. replace: an existing point of the step is replaced
 * (*old set, *existed 1); else an existing point is SQLITE_CONSTRAINT.
 * SQLite result code. */
int ag_seg_put(ag_seg_ctx *c, const ag_store_result_row *r, int replace, int *existed,
               ag_store_result_row *old);
/* The newest step stored for (tensor, format): *has 0 when none. */
int ag_seg_last_step(ag_seg_ctx *c, int64_t tid, int64_t fid, uint64_t *step, int *has);
/* Remove every point of (tensor, any format) below cut; *removed += points.
 * SQLite result code. */
int ag_seg_prune(ag_seg_ctx *c, int64_t tid, uint64_t cut, uint64_t *removed);

/* Registers the `results` virtual table and the ag_seg_pack aggregate on db
 * (the migration to schema 11 packs the old rows with it). SQLite code. */
int ag_seg_register(sqlite3 *db);

#endif
