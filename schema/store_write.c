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

/* A results row is a point of the tensor and format's segments
 * (store_seg.c): SQLite failures of the segment calls are reported as the
 * row's. */
static int seg_fail(ag_store *st, int rc) {
    return ag_store_fail(st, "put result", rc == SQLITE_MISUSE ? SQLITE_CORRUPT : rc);
}

/* One row anywhere: a step stored again replaces its point and takes the
 * old counts back out of the rollups. */
static int put_one(ag_store *st, const ag_store_result_row *r) {
    ag_store_result_row old;
    int existed = 0, rc = ag_seg_put(&st->seg, r, 1, &existed, &old);
    if (rc != SQLITE_OK) return seg_fail(st, rc);
    int err = existed ? ag_rollup_add(st, &old, old.flips_unknown, -1) : AG_OK;
    return err ? err : ag_rollup_add(st, r, r->flips_unknown, +1);
}

int ag_store_put_result(ag_store *st, const ag_store_result_row *r) {
    if (!r || !st) return AG_EINVAL;
    size_t done = 0;
    return ag_store_put_results(st, r, sizeof *r, 1, &done);
}

int ag_store_put_results(ag_store *st, const void *rows, size_t stride, size_t n, size_t *done) {
    if (!st || !done || (n && !rows) || stride < sizeof(ag_store_result_row)) return AG_EINVAL;
    int64_t tid = 0, fid = 0;
    uint64_t last = 0;
    int known = 0, has = 0; /* known: the newest step of (tid, fid) is */
    size_t i = 0;
    *done = 0;
    while (i < n) {
        const ag_store_result_row *r = ROW_AT(rows, stride, i);
        if (r->step > (uint64_t)INT64_MAX) {
            *done = i;
            return AG_EINVAL;
        }
        if (!known || r->tensor_id != tid || r->format_id != fid) {
            tid = r->tensor_id;
            fid = r->format_id;
            int rc = ag_seg_last_step(&st->seg, tid, fid, &last, &has);
            if (rc != SQLITE_OK) {
                *done = i;
                return seg_fail(st, rc);
            }
            known = 1;
        }
        /* The rows of this key past the newest stored step, in rising
         * steps, go to the end of its segments in one write; any other row
         * alone (a step stored again, or a late one). */
        size_t k = 0;
        uint64_t prev = last;
        int any = has;
        while (i + k < n) {
            const ag_store_result_row *q = ROW_AT(rows, stride, i + k);
            if (q->tensor_id != tid || q->format_id != fid || (any && q->step <= prev) ||
                q->step > (uint64_t)INT64_MAX)
                break;
            prev = q->step;
            any = 1;
            k++;
        }
        if (k > 0) {
            int rc = ag_seg_append(&st->seg, ROW_AT(rows, stride, i), stride, k);
            if (rc != SQLITE_OK) {
                *done = i;
                return seg_fail(st, rc);
            }
            for (size_t j = 0; j < k; j++) {
                const ag_store_result_row *q = ROW_AT(rows, stride, i + j);
                int err = ag_rollup_add(st, q, q->flips_unknown, +1);
                if (err) {
                    *done = i + j; /* written, but its rollups are not: retry the batch */
                    return err;
                }
            }
            i += k;
            last = prev;
            has = 1;
            continue;
        }
        int err = put_one(st, r);
        if (err) {
            *done = i;
            return err;
        }
        if (!has || r->step > last) last = r->step;
        has = 1;
        i++;
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
