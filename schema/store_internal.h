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

/* Every statement the store runs, prepared once per connection on first use. */
typedef enum ag_stmt_id {
    AG_ST_BEGIN,
    AG_ST_COMMIT,
    AG_ST_ROLLBACK,
    AG_ST_PUT_FORMAT,
    AG_ST_PUT_RUN,
    AG_ST_PUT_CLIENT,
    AG_ST_CLIENT_DELTA,
    AG_ST_CLIENT_RUN,
    AG_ST_PUT_TENSOR,
    AG_ST_PUT_STATS,
    AG_ST_PUT_RESULT,
    AG_ST_PUT_DROP,
    AG_ST_PUT_SCALE,
    AG_ST_PUT_SNAPSHOT,
    AG_ST_RUN_DELTA,
    AG_ST_TENSOR_DELTA,
    AG_ST_ADD_COUNTER,
    AG_ST_PUT_DAEMON_SETTING,
    AG_ST_RUNS,
    AG_ST_RUN_BY_NAME,
    AG_ST_FORMAT_BY_NAME,
    AG_ST_TENSOR_BY_NAME,
    AG_ST_TENSORS,
    AG_ST_HISTORY,
    AG_ST_SCALES,
    AG_ST_TOP_LAST_STEP,
    AG_ST_TOP,
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
    AG_ST_COUNT
} ag_stmt_id;

struct ag_store {
    sqlite3 *db;
    char *path;
    int readonly;
    int in_txn;
    ag_errctx err; /* the last failure's text (ag_store_errmsg) */
    int last_rc;   /* SQLite result code of the last failure, 0 if none */
    sqlite3_stmt *stmts[AG_ST_COUNT];
};

/* Generated from schema/NNN_*.sql (embed_sql.cmake). */
extern const char *const ag_store_migrations[];
extern const size_t ag_store_migration_count;

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

#endif
