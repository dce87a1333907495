/*
 * store_write.c - the row writes of the store, one prepared statement each.
 * Called by the daemon's writer thread inside ag_store_begin/commit; ids of
 * runs, tensors and formats come from the caller. uint64 steps and counts
 * are stored as SQLite's int64 (values past 2^63 are refused by the codec).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>

#include "schema/store_internal.h"

/* The statement for id, or NULL (st NULL, or prepare failed with errmsg set). */
static sqlite3_stmt *stmt_for(ag_store *st, ag_stmt_id id) {
    return st ? ag_store_stmt(st, id) : NULL;
}

static int64_t i64(uint64_t v) { return (int64_t)v; }

int ag_store_put_format(ag_store *st, int64_t id, const ag_format *fmt) {
    if (!fmt) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_FORMAT);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, fmt->name, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 3, fmt->exponent_bits);
    sqlite3_bind_int(s, 4, fmt->mantissa_bits);
    sqlite3_bind_int(s, 5, fmt->bias);
    sqlite3_bind_int(s, 6, fmt->has_inf);
    sqlite3_bind_int(s, 7, fmt->has_nan);
    return ag_store_exec_stmt(st, s, "put format");
}

int ag_store_put_run(ag_store *st, const ag_store_run_row *r) {
    if (!r || !r->name) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_RUN);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, r->id);
    sqlite3_bind_text(s, 2, r->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, r->host ? r->host : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, r->pid);
    sqlite3_bind_int64(s, 5, i64(r->client_id));
    sqlite3_bind_int64(s, 6, r->started_ms);
    sqlite3_bind_text(s, 7, r->metadata ? r->metadata : "{}", -1, SQLITE_STATIC);
    if (r->launch_id)
        sqlite3_bind_text(s, 8, r->launch_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 8);
    sqlite3_bind_text(s, 9, r->asked ? r->asked : r->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 10, r->world_size ? i64(r->world_size) : 1);
    return ag_store_exec_stmt(st, s, "put run");
}

int ag_store_put_client(ag_store *st, const ag_store_client_row *c) {
    if (!c || !c->asked) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_CLIENT);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, i64(c->client_id));
    sqlite3_bind_int64(s, 2, c->run_id);
    if (c->launch_id)
        sqlite3_bind_text(s, 3, c->launch_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 3);
    sqlite3_bind_text(s, 4, c->asked, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, c->started_ms);
    sqlite3_bind_int64(s, 6, i64(c->rank));
    return ag_store_exec_stmt(st, s, "put client");
}

int ag_store_apply_client_delta(ag_store *st, const ag_store_client_delta *d) {
    if (!d) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_CLIENT_DELTA);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, i64(d->client_id));
    sqlite3_bind_int64(s, 2, i64(d->last_seq));
    sqlite3_bind_int(s, 3, d->has_drop != 0);
    sqlite3_bind_int64(s, 4, i64(d->last_drop));
    sqlite3_bind_int(s, 5, d->ended != 0);
    /* In the transaction of the messages' rows: a client told "stored" is
     * told so only once they are committed. */
    sqlite3_bind_int64(s, 6, i64(d->delivered));
    return ag_store_exec_stmt(st, s, "client delta");
}

int ag_store_put_tensor(ag_store *st, int64_t id, int64_t run_id, const char *name, int role) {
    if (!name) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_TENSOR);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_int64(s, 2, run_id);
    sqlite3_bind_text(s, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, role);
    return ag_store_exec_stmt(st, s, "put tensor");
}

static void bind_stats_at(sqlite3_stmt *s, int o, const ag_store_stats_row *r) {
    sqlite3_bind_int64(s, o + 1, r->tensor_id);
    sqlite3_bind_int(s, o + 2, r->role);
    sqlite3_bind_int64(s, o + 3, i64(r->step));
    if (isfinite(r->amax))
        sqlite3_bind_double(s, o + 4, r->amax);
    else
        sqlite3_bind_null(s, o + 4);
    sqlite3_bind_int64(s, o + 5, i64(r->numel));
    sqlite3_bind_int64(s, o + 6, i64(r->nonfinite));
    sqlite3_bind_int64(s, o + 7, r->ranks ? i64(r->ranks) : 1);
}

int ag_store_put_stats(ag_store *st, const ag_store_stats_row *r) {
    if (!r) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_STATS);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    bind_stats_at(s, 0, r);
    return ag_store_exec_stmt(st, s, "put stats");
}

#define ROW_AT(rows, stride, i) ((const void *)((const char *)(rows) + (i) * (stride)))

int ag_store_put_stats_rows(ag_store *st, const void *rows, size_t stride, size_t n, size_t *done) {
    if (!st || !done || (n && !rows) || stride < sizeof(ag_store_stats_row)) return AG_EINVAL;
    size_t i = 0;
    *done = 0;
    while (i < n) {
        if (n - i >= AG_STORE_CHUNK) {
            sqlite3_stmt *s = ag_store_stmt(st, AG_ST_PUT_STATS_N);
            if (!s) return AG_ESTORE;
            for (size_t k = 0; k < AG_STORE_CHUNK; k++)
                bind_stats_at(s, (int)k * 7, ROW_AT(rows, stride, i + k));
            if (ag_store_exec_stmt(st, s, "put stats") == AG_OK) {
                i += AG_STORE_CHUNK;
                continue;
            }
            /* the chunk is undone: one by one, so the failure names its row */
        }
        size_t end = n - i >= AG_STORE_CHUNK ? i + AG_STORE_CHUNK : n;
        for (; i < end; i++) {
            int err = ag_store_put_stats(st, ROW_AT(rows, stride, i));
            if (err) {
                *done = i;
                return err;
            }
        }
    }
    *done = n;
    return AG_OK;
}

/* Bind r to the 16 parameters from o + 1 (a multi-row statement binds its
 * k-th row at o = 16 k). */
static void bind_result_at(sqlite3_stmt *s, int o, const ag_store_result_row *r) {
    sqlite3_bind_int64(s, o + 1, r->tensor_id);
    sqlite3_bind_int64(s, o + 2, r->format_id);
    sqlite3_bind_int64(s, o + 3, i64(r->step));
    sqlite3_bind_int64(s, o + 4, i64(r->counts.stalled));
    sqlite3_bind_int64(s, o + 5, i64(r->counts.total));
    if (r->flips_unknown)
        sqlite3_bind_null(s, o + 6);
    else
        sqlite3_bind_int64(s, o + 6, i64(r->flips));
    sqlite3_bind_int64(s, o + 7, i64(r->counts.overflow));
    sqlite3_bind_int64(s, o + 8, i64(r->counts.underflow));
    sqlite3_bind_int64(s, o + 9, i64(r->counts.nonfinite));
    sqlite3_bind_double(s, o + 10, isfinite(r->amax) ? r->amax : 0.0);
    sqlite3_bind_double(s, o + 11, isfinite(r->scale) ? r->scale : 0.0);
    sqlite3_bind_int(s, o + 12, r->source);
    sqlite3_bind_int64(s, o + 13, r->ranks ? i64(r->ranks) : 1);
    sqlite3_bind_int(s, o + 14, !r->incomplete);
    if (r->has_qerr && isfinite(r->mse))
        sqlite3_bind_double(s, o + 15, r->mse);
    else
        sqlite3_bind_null(s, o + 15);
    if (r->has_qerr && isfinite(r->sqnr_db))
        sqlite3_bind_double(s, o + 16, r->sqnr_db);
    else
        sqlite3_bind_null(s, o + 16);
}

static void bind_result(sqlite3_stmt *s, const ag_store_result_row *r) { bind_result_at(s, 0, r); }

/* The step was stored before: take the old row's counts back out of the
 * rollups, then overwrite it. */
static int replace_result(ag_store *st, const ag_store_result_row *r) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_RESULT_OLD);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, r->tensor_id);
    sqlite3_bind_int64(s, 2, r->format_id);
    sqlite3_bind_int64(s, 3, i64(r->step));
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        int err = ag_store_fail(st, "put result", rc == SQLITE_DONE ? SQLITE_CORRUPT : rc);
        sqlite3_reset(s);
        return err;
    }
    ag_store_result_row old = {
        .tensor_id = r->tensor_id,
        .format_id = r->format_id,
        .step = r->step,
        .counts = {.stalled = (uint64_t)sqlite3_column_int64(s, 0),
                   .total = (uint64_t)sqlite3_column_int64(s, 1),
                   .overflow = (uint64_t)sqlite3_column_int64(s, 3),
                   .underflow = (uint64_t)sqlite3_column_int64(s, 4),
                   .nonfinite = (uint64_t)sqlite3_column_int64(s, 5)},
        .flips = (uint64_t)sqlite3_column_int64(s, 2),
        .amax = sqlite3_column_double(s, 6),
        .scale = sqlite3_column_double(s, 7),
        .source = (uint8_t)sqlite3_column_int(s, 8),
        .ranks = (uint64_t)sqlite3_column_int64(s, 9),
        .incomplete = sqlite3_column_int(s, 10) == 0,
    };
    int old_unknown = sqlite3_column_type(s, 2) == SQLITE_NULL;
    sqlite3_reset(s);
    int err = ag_rollup_add(st, &old, old_unknown, -1);
    if (err) return err;
    if (!(s = ag_store_stmt(st, AG_ST_RESULT_UPDATE))) return AG_ESTORE;
    bind_result(s, r);
    return ag_store_exec_stmt(st, s, "put result");
}

int ag_store_put_result(ag_store *st, const ag_store_result_row *r) {
    if (!r) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_RESULT);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    bind_result(s, r);
    int err = ag_store_exec_stmt(st, s, "put result");
    if (err) return err;
    if (sqlite3_changes(st->db) == 0 && (err = replace_result(st, r))) return err;
    return ag_rollup_add(st, r, r->flips_unknown, +1);
}

/* The newest step stored of (tensor, format) in the open transaction:
 * *has 0 when there is none. */
static int max_step(ag_store *st, int64_t tid, int64_t fid, int64_t *step, int *has) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_RESULT_MAX_STEP);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, fid);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        int err = ag_store_fail(st, "put result", rc);
        sqlite3_reset(s);
        return err;
    }
    *has = sqlite3_column_type(s, 0) != SQLITE_NULL;
    *step = *has ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return AG_OK;
}

int ag_store_put_results(ag_store *st, const void *rows, size_t stride, size_t n, size_t *done) {
    if (!st || !done || (n && !rows) || stride < sizeof(ag_store_result_row)) return AG_EINVAL;
    int64_t tid = 0, fid = 0, last = 0;
    int known = 0, has = 0; /* known: (tid, fid) has been looked up */
    size_t i = 0;
    *done = 0;
    while (i < n) {
        const ag_store_result_row *r = ROW_AT(rows, stride, i);
        if (!known || r->tensor_id != tid || r->format_id != fid) {
            tid = r->tensor_id;
            fid = r->format_id;
            int err = max_step(st, tid, fid, &last, &has);
            if (err) {
                *done = i;
                return err;
            }
            known = 1;
        }
        /* Rows of this key, each past the newest stored step, in rising
         * steps, go 16, 8, 4, 2 or 1 a statement; any other row alone
         * through ag_store_put_result (a step stored again replaces its row
         * and takes its counts back out of the rollups). */
        size_t k = 0;
        int64_t prev = has ? last : -1;
        while (k < AG_STORE_CHUNK && i + k < n) {
            const ag_store_result_row *q = ROW_AT(rows, stride, i + k);
            if (q->tensor_id != tid || q->format_id != fid || (int64_t)q->step <= prev) break;
            prev = (int64_t)q->step;
            k++;
        }
        if (k > 0) {
            static const ag_stmt_id by_size[] = {AG_ST_PUT_RESULT_N1, AG_ST_PUT_RESULT_N2,
                                                 AG_ST_PUT_RESULT_N4, AG_ST_PUT_RESULT_N8,
                                                 AG_ST_PUT_RESULT_N};
            int lg = k >= 16 ? 4 : k >= 8 ? 3 : k >= 4 ? 2 : k >= 2 ? 1 : 0;
            size_t c = (size_t)1 << lg;
            sqlite3_stmt *s = ag_store_stmt(st, by_size[lg]);
            if (!s) {
                *done = i;
                return AG_ESTORE;
            }
            for (size_t j = 0; j < c; j++)
                bind_result_at(s, (int)j * 16, ROW_AT(rows, stride, i + j));
            if (ag_store_exec_stmt(st, s, "put result") == AG_OK) {
                for (size_t j = 0; j < c; j++) {
                    const ag_store_result_row *q = ROW_AT(rows, stride, i + j);
                    int err = ag_rollup_add(st, q, q->flips_unknown, +1);
                    if (err) {
                        *done = i + j; /* written, but its rollups are not: retry the batch */
                        return err;
                    }
                }
                i += c;
                last = (int64_t)((const ag_store_result_row *)ROW_AT(rows, stride, i - 1))->step;
                has = 1;
                continue;
            }
            /* undone whole (a row existed after all?): one by one below */
            k = c;
        }
        size_t end = i + (k ? k : 1);
        for (; i < end; i++) {
            const ag_store_result_row *q = ROW_AT(rows, stride, i);
            int err = ag_store_put_result(st, q);
            if (err) {
                *done = i;
                return err;
            }
            if (!has || (int64_t)q->step > last) last = (int64_t)q->step;
            has = 1;
        }
    }
    *done = n;
    return AG_OK;
}

int ag_store_put_drop(ag_store *st, int64_t run_id, uint64_t client_id, int64_t at_ms,
                      uint64_t first_seq, uint64_t count, const char *reason) {
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_DROP);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_int64(s, 2, i64(client_id));
    sqlite3_bind_int64(s, 3, at_ms);
    sqlite3_bind_int64(s, 4, i64(first_seq));
    sqlite3_bind_int64(s, 5, i64(count));
    sqlite3_bind_text(s, 6, reason ? reason : "", -1, SQLITE_STATIC);
    return ag_store_exec_stmt(st, s, "put drop");
}

int ag_store_put_scale(ag_store *st, int64_t tensor_id, int64_t format_id, int role, uint64_t step,
                       double amax, double scale) {
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_SCALE);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, tensor_id);
    sqlite3_bind_int64(s, 2, format_id);
    sqlite3_bind_int(s, 3, role);
    sqlite3_bind_int64(s, 4, i64(step));
    sqlite3_bind_double(s, 5, isfinite(amax) ? amax : 0.0);
    sqlite3_bind_double(s, 6, isfinite(scale) ? scale : 0.0);
    return ag_store_exec_stmt(st, s, "put scale");
}

/* Overwrite the tensor's snapshot row where it exists: SQLite then writes
 * the new weights over the blob's overflow pages, where INSERT OR REPLACE
 * frees the old chain and builds a new one (twice the work for a 4 MB blob).
 * *done is 0 when there was no row to update. Prepared per call: next to
 * writing megabytes, preparing is noise. */
static int update_snapshot(ag_store *st, int64_t tensor_id, uint64_t step, const float *w, size_t n,
                           int *done) {
    static const char sql[] =
        "UPDATE snapshots SET step=?2, numel=?3, weights=?4 WHERE tensor_id=?1";
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return ag_store_fail(st, "update snapshot", rc);
    sqlite3_bind_int64(s, 1, tensor_id);
    sqlite3_bind_int64(s, 2, i64(step));
    sqlite3_bind_int64(s, 3, (int64_t)n);
    sqlite3_bind_blob(s, 4, w, (int)(n * sizeof(float)), SQLITE_STATIC);
    rc = sqlite3_step(s);
    int err = rc == SQLITE_DONE ? AG_OK : ag_store_fail(st, "update snapshot", rc);
    *done = err == AG_OK && sqlite3_changes(st->db) > 0;
    sqlite3_finalize(s);
    return err;
}

int ag_store_put_snapshot(ag_store *st, int64_t tensor_id, uint64_t step, const float *w,
                          size_t n) {
    if (!w || n == 0 || n > (size_t)INT32_MAX / sizeof(float)) return AG_EINVAL;
    if (!st) return AG_EINVAL;
    int done = 0, err = update_snapshot(st, tensor_id, step, w, n, &done);
    if (err || done) return err;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_SNAPSHOT);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, tensor_id);
    sqlite3_bind_int64(s, 2, i64(step));
    sqlite3_bind_int64(s, 3, (int64_t)n);
    sqlite3_bind_blob(s, 4, w, (int)(n * sizeof(float)), SQLITE_STATIC);
    return ag_store_exec_stmt(st, s, "put snapshot");
}

int ag_store_apply_run_delta(ag_store *st, const ag_store_run_delta *d) {
    if (!d) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_RUN_DELTA);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, d->run_id);
    sqlite3_bind_int64(s, 2, i64(d->messages));
    sqlite3_bind_int64(s, 3, i64(d->dropped));
    sqlite3_bind_int64(s, 4, i64(d->last_step));
    sqlite3_bind_int64(s, 5, d->ended_ms);
    return ag_store_exec_stmt(st, s, "run delta");
}

int ag_store_apply_tensor_delta(ag_store *st, const ag_store_tensor_delta *d) {
    if (!d) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_TENSOR_DELTA);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_int64(s, 1, d->tensor_id);
    sqlite3_bind_int(s, 2, d->role);
    sqlite3_bind_int64(s, 3, i64(d->numel));
    sqlite3_bind_int64(s, 4, i64(d->first_step));
    sqlite3_bind_int64(s, 5, i64(d->last_step));
    sqlite3_bind_int64(s, 6, i64(d->snapshots));
    sqlite3_bind_double(s, 7, isfinite(d->last_amax) ? d->last_amax : 0.0);
    return ag_store_exec_stmt(st, s, "tensor delta");
}

int ag_store_add_counter(ag_store *st, const char *name, uint64_t delta) {
    if (!name) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_ADD_COUNTER);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, i64(delta));
    return ag_store_exec_stmt(st, s, "add counter");
}

int ag_store_put_daemon_setting(ag_store *st, const char *name, const char *value) {
    if (!name || !value) return AG_EINVAL;
    sqlite3_stmt *s = stmt_for(st, AG_ST_PUT_DAEMON_SETTING);
    if (!s) return st ? AG_ESTORE : AG_EINVAL;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
    return ag_store_exec_stmt(st, s, "put daemon setting");
}
