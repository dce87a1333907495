/*
 * store_internal.h - internal to schema/: the connection struct, its cache of
 * prepared statements (one slot per SQL text of store_sql.h) and helpers
 * shared by the write, query and restore files.
 */
#ifndef AG_SCHEMA_STORE_INTERNAL_H
#define AG_SCHEMA_STORE_INTERNAL_H

#include <sqlite3.h>

#include "core/errctx.h"
#include "schema/store.h"
#include "schema/store_seg.h"

/* Every statement the store runs, prepared once per connection on first use. */
typedef enum ag_stmt_id {
    AG_ST_BEGIN,
    AG_ST_BEGIN_READ,
    AG_ST_COMMIT,
    AG_ST_ROLLBACK,
    AG_ST_PUT_FORMAT,
    AG_ST_PUT_RUN,
    AG_ST_PUT_CLIENT,
    AG_ST_CLIENT_DELTA,
    AG_ST_CLIENT_RUN,
    AG_ST_PUT_TENSOR,
    AG_ST_PUT_STATS,
    AG_ST_PUT_DROP,
    AG_ST_PUT_SCALE,
    AG_ST_PUT_SNAPSHOT,
    AG_ST_RUN_DELTA,
    AG_ST_TENSOR_DELTA,
    AG_ST_ADD_COUNTER,
    AG_ST_PUT_DAEMON_SETTING,
    AG_ST_RUNS,
    AG_ST_RUN_RANK_DROPS,
    AG_ST_RUN_INCOMPLETE,
    AG_ST_RUN_INCOMPLETE_RAW,
    AG_ST_HEAT_SEGS,
    AG_ST_RUN_HORIZON,
    AG_ST_RUN_BY_NAME,
    AG_ST_FORMAT_BY_NAME,
    AG_ST_TENSOR_BY_NAME,
    AG_ST_TENSORS,
    AG_ST_HISTORY,
    AG_ST_SCALES,
    AG_ST_TOP_LAST_STEP,
    AG_ST_COUNTER,
    AG_ST_STATUS_COUNTS,
    AG_ST_FORMATS,
    AG_ST_DAEMON_SETTING,
    AG_ST_ALL_RUNS,
    AG_ST_ALL_LAUNCHES,
    AG_ST_ALL_CLIENTS,
    AG_ST_ALL_TENSORS,
    AG_ST_HISTORY_TAIL,
    AG_ST_ALL_SCALES,
    AG_ST_ALL_SNAPSHOTS,
    AG_ST_LAST_RESULTS,
    AG_ST_MAX_IDS,
    AG_ST_DELIVERY,
    AG_ST_ROLLUP_UPSERT,
    AG_ST_ROLLUP_L1, /* one slot per tier, so a walk can descend while */
    AG_ST_ROLLUP_L2, /* the coarser tier's statement is still stepping */
    AG_ST_ROLLUP_L3,
    AG_ST_HEAD_L1, /* a tier's open bucket, after its sealed ones */
    AG_ST_HEAD_L2,
    AG_ST_HEAD_L3,
    AG_ST_RAW_RANGE,
    AG_ST_RUN_TENSOR_IDS,
    AG_ST_REPORT_SQNR,
    AG_ST_HEAT_TIER,
    AG_ST_HEAT_RAW,
    AG_ST_RUN_SPAN,
    AG_ST_PRUNE_TARGETS,
    AG_ST_PRUNE_STATS,
    AG_ST_HEAD_GET,
    AG_ST_HEAD_PUT,
    AG_ST_SEALED_MAX,
    AG_ST_PUT_HORIZON,
    AG_ST_PUT_STATS_N,
    AG_ST_COUNT
} ag_stmt_id;

/* Rows per multi-row insert (ag_store_put_results / _put_stats_rows). */
#define AG_STORE_CHUNK 16

/* The rollup tiers (rollups.width), finest first; raw rows are tier 0.
 * Schema 13 (013_rollup_tiers.sql) made them 100, 1000 and 10000 steps
 * (10, 100 and 1000 before): a width-10 bucket sealed every ten steps of
 * every tensor and format was half the writer's pages and a quarter of its
 * time (docs/store.md, Rollups); finer buckets read the raw rows. The SQL
 * that names a tier (store.c, the view in 013) uses these. */
#define AG_ROLLUP_TIERS 3
#define AG_ROLLUP_W1 100
#define AG_ROLLUP_W2 1000
#define AG_ROLLUP_W3 10000
#define AG_ROLLUP_STR_(x) #x
#define AG_ROLLUP_STR(x) AG_ROLLUP_STR_(x)
/* the widths as SQL text */
#define AG_ROLLUP_W1_SQL AG_ROLLUP_STR(AG_ROLLUP_W1)
#define AG_ROLLUP_W2_SQL AG_ROLLUP_STR(AG_ROLLUP_W2)
#define AG_ROLLUP_W3_SQL AG_ROLLUP_STR(AG_ROLLUP_W3)
extern const int64_t ag_rollup_widths[AG_ROLLUP_TIERS];

/* A query result's flips when unknown (include/altgrad/altgrad.h gets it
 * from the branch that makes results.flips nullable; same value). */
#ifndef AG_FLIPS_UNKNOWN
#define AG_FLIPS_UNKNOWN UINT64_MAX
#endif

/* One bucket's change within the open transaction (summed at ingest,
 * written to rollups by ag_store_commit). Counts may be negative: a
 * replaced result row takes its old counts back. */
typedef struct ag_rollup_acc {
    int64_t tensor_id, format_id, width, bucket;
    int64_t rows, stalled, total, flips, flips_unknown, overflow, underflow, nonfinite;
    int64_t first_step, last_step;
    double amax_min, amax_max, amax_last, scale_min, scale_max, scale_last;
    int64_t device_rows;     /* rows computed on the trainer's device (source 1) */
    int64_t incomplete_rows; /* rows of steps not every rank reported (complete 0) */
    int64_t ranks_min;       /* the fewest ranks of any row added */
    int used;
} ag_rollup_acc;

struct ag_store {
    sqlite3 *db;
    char *path;
    int readonly;
    int in_txn;
    int has_rollups; /* the file has rollups of this build's tiers (schema 13 on) */
    int has_segs;    /* results are packed in result_segs (schema 11 on) */
    ag_errctx err;   /* the last failure's text (ag_store_errmsg) */
    int last_rc;     /* SQLite result code of the last failure, 0 if none */
    sqlite3_stmt *stmts[AG_ST_COUNT];
    ag_seg_ctx seg; /* the results segments' statements (store_seg.c) */
    /* Rollup changes of the open transaction: open addressing on the key. */
    ag_rollup_acc *acc;
    size_t acc_cap, acc_n;
    /* Per tier, the entry the last row went to (NULL: none): rows come
     * sorted by tensor, format and step (the writer sorts its batch), so
     * most fall in the same bucket as the one before. */
    ag_rollup_acc *acc_last[AG_ROLLUP_TIERS];
};

/* Generated from schema/NNN_*.sql (embed_sql.cmake). */
extern const char *const ag_store_migrations[];
extern const int ag_store_migration_numbers[]; /* rising, gaps allowed */
extern const size_t ag_store_migration_count;

/* Rollups (store_rollup.c): add a result row's counts (sign +1) or take
 * them back (-1) in the open transaction's accumulator; write it out
 * (ag_store_commit, before COMMIT); forget it (begin, rollback). */
int ag_rollup_add(ag_store *st, const ag_store_result_row *r, int flips_unknown, int sign);
int ag_rollup_flush(ag_store *st);

/* One bucket (or one raw row: rows 1) as the walk hands it over. */
typedef struct ag_rollup_agg {
    uint64_t rows, stalled, total, flips, flips_unknown, overflow, underflow, nonfinite;
    uint64_t first_step, last_step;
    double amax_last, scale_last;
    uint64_t device_rows;     /* of rows, those computed on the trainer's device */
    uint64_t incomplete_rows; /* of rows, incomplete steps (results.complete 0) */
    uint64_t ranks_min;       /* the fewest ranks of any of its rows */
} ag_rollup_agg;

typedef struct ag_rollup_visitor {
    void *ctx;
    /* 1: a bucket of rows rows may be taken whole; 0: go finer. */
    int (*fits)(void *ctx, uint64_t rows);
    /* Take a bucket; nonzero stops the walk and is returned. */
    int (*add)(void *ctx, const ag_rollup_agg *b);
} ag_rollup_visitor;

/* Every result row of one tensor and format with a step in [from, to], in
 * step order, as whole buckets of the coarsest tier that lies inside the
 * range and that v->fits, finer tiers and raw rows where not. Tiers wider
 * than max_width steps (0: no limit) are not tried: a caller that knows
 * their buckets will not fit saves the descent into each. */
int ag_rollup_walk(ag_store *st, int64_t tid, int64_t fid, uint64_t from, uint64_t to,
                   uint64_t max_width, const ag_rollup_visitor *v);
/* Visitor parts for a walk that sums a range: fits takes every bucket whole,
 * add sums rows, stalled and total into the ag_rollup_agg ctx. */
int ag_rollup_fits_all(void *ctx, uint64_t rows);
int ag_rollup_sum_add(void *ctx, const ag_rollup_agg *b);
void ag_rollup_forget(ag_store *st);

/* The cached, reset statement for id; NULL with errmsg set on failure. */
sqlite3_stmt *ag_store_stmt(ag_store *st, ag_stmt_id id);
/* Record sqlite's message for rc with a context word; returns AG_ESTORE
 * (AG_ENOMEM for SQLITE_NOMEM). */
int ag_store_fail(ag_store *st, const char *what, int rc);
/* Record a message of our own; returns err. */
int ag_store_failf(ag_store *st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Step a write statement to SQLITE_DONE and reset it. */
int ag_store_exec_stmt(ag_store *st, sqlite3_stmt *s, const char *what);
/* Id of the run named name, AG_ENOTFOUND with a message when absent. */
int ag_store_run_id(ag_store *st, const char *name, int64_t *id);
/* Id of the format named name (NULL: "E5M2"). */
int ag_store_format_id(ag_store *st, const char *name, int64_t *id);
/* Grow *items (of elem bytes, *cap slots) inside the arena root to hold
 * n + 1 items. */
int ag_store_grow(void *root, void **items, size_t *cap, size_t n, size_t elem);
/* The formats evaluated by default, comma-separated, into root: those the
 * daemon recorded at its start, else every format the file knows (id order). */
int ag_store_default_formats(ag_store *st, void *root, const char **out);
/* One read transaction around a query of many statements (store_query.c):
 * read_begin returns whether it began one, which read_end takes. */
int ag_store_read_begin(ag_store *st);
void ag_store_read_end(ag_store *st, int began);

#endif
