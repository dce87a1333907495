/*
 * store_restore.c - reading the daemon engine's state back at start: formats,
 * runs, launches, clients, tensors, amax histories (rebuilt from the newest stats rows), the
 * latest scales, snapshot weights and the newest result of each tensor and
 * format (whether a weights row is still current). Runs on the write connection before
 * the writer thread starts.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "schema/store_internal.h"

static uint64_t col_u64(sqlite3_stmt *s, int i) { return (uint64_t)sqlite3_column_int64(s, i); }

static const char *col_text(sqlite3_stmt *s, int i) {
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? t : "";
}

/* Step s to the end, calling row(s) on each row; stops on a nonzero result. */
static int each_row(ag_store *st, sqlite3_stmt *s, const char *what,
                    int (*row)(sqlite3_stmt *, const ag_store_restore_cb *, void *),
                    const ag_store_restore_cb *cb, void *extra) {
    if (!s) return AG_ESTORE;
    int rc, err = AG_OK;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        if ((err = row(s, cb, extra))) break;
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, what, rc);
    sqlite3_reset(s);
    return err;
}

static int format_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->format) return 0;
    return cb->format(cb->ctx, sqlite3_column_int64(s, 0), col_text(s, 1), sqlite3_column_int(s, 2),
                      sqlite3_column_int(s, 3), sqlite3_column_int(s, 4), sqlite3_column_int(s, 5),
                      sqlite3_column_int(s, 6));
}

/* A text column that may be NULL. */
static const char *col_text_or_null(sqlite3_stmt *s, int i) {
    return sqlite3_column_type(s, i) == SQLITE_NULL ? NULL : col_text(s, i);
}

static int run_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->run) return 0;
    int err = cb->run(cb->ctx, sqlite3_column_int64(s, 0), col_text(s, 1), col_text(s, 2),
                      col_text_or_null(s, 3), col_u64(s, 4), sqlite3_column_int64(s, 5));
    if (err || !cb->run_world) return err;
    return cb->run_world(cb->ctx, sqlite3_column_int64(s, 0), col_u64(s, 6));
}

static int launch_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->launch) return 0;
    return cb->launch(cb->ctx, col_text(s, 0), col_text(s, 1), sqlite3_column_int64(s, 2));
}

static int client_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->client) return 0;
    int has_drop = sqlite3_column_type(s, 3) != SQLITE_NULL;
    int err = cb->client(cb->ctx, col_u64(s, 0), sqlite3_column_int64(s, 1), col_u64(s, 2),
                         has_drop ? col_u64(s, 3) : 0, has_drop);
    if (err || !cb->client_rank) return err;
    return cb->client_rank(cb->ctx, col_u64(s, 0), col_u64(s, 4));
}

typedef struct tensor_ref {
    int64_t id;
    int64_t run_id;
} tensor_ref;
typedef struct tensor_refs {
    tensor_ref *items;
    size_t n, cap;
} tensor_refs;

static int tensor_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    tensor_refs *refs = extra;
    if (refs->n == refs->cap) {
        size_t ncap = refs->cap ? refs->cap * 2 : 64;
        tensor_ref *p = realloc(refs->items, ncap * sizeof *p);
        if (!p) return AG_ENOMEM;
        refs->items = p;
        refs->cap = ncap;
    }
    refs->items[refs->n++] = (tensor_ref){sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1)};
    if (!cb->tensor) return 0;
    return cb->tensor(cb->ctx, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
                      col_text(s, 2), sqlite3_column_int(s, 3));
}

static int scale_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->scale) return 0;
    return cb->scale(cb->ctx, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
                     sqlite3_column_int(s, 2), col_u64(s, 3), sqlite3_column_double(s, 4),
                     sqlite3_column_double(s, 5));
}

static int snapshot_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->snapshot) return 0;
    uint64_t numel = col_u64(s, 2);
    const void *blob = sqlite3_column_blob(s, 3);
    size_t bytes = (size_t)sqlite3_column_bytes(s, 3);
    /* A blob that does not match its element count is skipped, not trusted. */
    if (!blob || numel == 0 || bytes != numel * sizeof(float)) return 0;
    float *w = malloc(bytes);
    if (!w) return AG_ENOMEM;
    memcpy(w, blob, bytes); /* blobs carry no alignment promise */
    int rc = cb->snapshot(cb->ctx, sqlite3_column_int64(s, 0), col_u64(s, 1), w, numel);
    free(w);
    return rc;
}

static int last_result_row(sqlite3_stmt *s, const ag_store_restore_cb *cb, void *extra) {
    (void)extra;
    if (!cb->last_result) return 0;
    int has_scale = sqlite3_column_type(s, 3) != SQLITE_NULL;
    return cb->last_result(cb->ctx, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
                           col_u64(s, 2), has_scale, has_scale ? sqlite3_column_double(s, 3) : 0);
}

/* The newest history_len pushable amax values of (tensor, role), oldest first.
 * Rows with no finite element were never pushed, so they are skipped here too. */
static int history_of(ag_store *st, int64_t tid, int role, size_t history_len, double *vals,
                      const ag_store_restore_cb *cb) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_HISTORY_TAIL);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int(s, 2, role);
    sqlite3_bind_int64(s, 3, (int64_t)history_len);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL) continue;
        uint64_t numel = col_u64(s, 1), nonfinite = col_u64(s, 2);
        if (numel > 0 && nonfinite >= numel) continue;
        double a = sqlite3_column_double(s, 0);
        if (!isfinite(a) || a < 0) continue;
        vals[n++] = a;
    }
    int err = rc == SQLITE_DONE ? AG_OK : ag_store_fail(st, "restore history", rc);
    sqlite3_reset(s);
    if (err || n == 0 || !cb->history) return err;
    for (size_t i = 0; i < n / 2; i++) { /* newest-first rows -> oldest first */
        double t = vals[i];
        vals[i] = vals[n - 1 - i];
        vals[n - 1 - i] = t;
    }
    return cb->history(cb->ctx, tid, role, vals, n);
}

int ag_store_restore(ag_store *st, size_t history_len, const ag_store_restore_cb *cb) {
    if (!st || !cb || history_len == 0 || history_len > AG_AMAX_HISTORY_MAX_LEN) return AG_EINVAL;
    tensor_refs refs = {0};
    double *vals = NULL;
    int err;
    if ((err = each_row(st, ag_store_stmt(st, AG_ST_FORMATS), "restore formats", format_row, cb,
                        NULL)) ||
        (err =
             each_row(st, ag_store_stmt(st, AG_ST_ALL_RUNS), "restore runs", run_row, cb, NULL)) ||
        (err = each_row(st, ag_store_stmt(st, AG_ST_ALL_LAUNCHES), "restore launches", launch_row,
                        cb, NULL)) ||
        (err = each_row(st, ag_store_stmt(st, AG_ST_ALL_CLIENTS), "restore clients", client_row, cb,
                        NULL)) ||
        (err = each_row(st, ag_store_stmt(st, AG_ST_ALL_TENSORS), "restore tensors", tensor_row, cb,
                        &refs)))
        goto fail;
    vals = malloc(history_len * sizeof *vals);
    if (!vals) {
        err = AG_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < refs.n; i++)
        for (int role = AG_ROLE_WEIGHT; role <= AG_ROLE_UPDATE; role++)
            if ((err = history_of(st, refs.items[i].id, role, history_len, vals, cb))) goto fail;
    if ((err = each_row(st, ag_store_stmt(st, AG_ST_ALL_SCALES), "restore scales", scale_row, cb,
                        NULL)) ||
        (err = each_row(st, ag_store_stmt(st, AG_ST_LAST_RESULTS), "restore last results",
                        last_result_row, cb, NULL)) ||
        (err = each_row(st, ag_store_stmt(st, AG_ST_ALL_SNAPSHOTS), "restore snapshots",
                        snapshot_row, cb, NULL)))
        goto fail;
fail:
    free(vals);
    free(refs.items);
    return err;
}

int ag_store_max_ids(ag_store *st, int64_t *run_id, int64_t *tensor_id, int64_t *format_id) {
    if (!st || !run_id || !tensor_id || !format_id) return AG_EINVAL;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_MAX_IDS);
    if (!s) return AG_ESTORE;
    int rc = sqlite3_step(s), err = AG_OK;
    if (rc == SQLITE_ROW) {
        *run_id = sqlite3_column_int64(s, 0);
        *tensor_id = sqlite3_column_int64(s, 1);
        *format_id = sqlite3_column_int64(s, 2);
    } else {
        err = ag_store_fail(st, "max ids", rc);
    }
    sqlite3_reset(s);
    return err;
}
