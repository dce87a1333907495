/*
 * store_rollup.c - the rollups of results (schema/008_rollups.sql): summed at
 * ingest in memory per transaction and written by the commit, walked by the
 * whole-run queries (coarsest tier that answers exactly, finer tiers and raw
 * rows only at the edges), rebuilt from raw rows on demand; raw-row
 * retention and the WAL checkpoint.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "schema/store_internal.h"

#define AG_STORE_PATH_MAX 4096

const int64_t ag_rollup_widths[AG_ROLLUP_TIERS] = {AG_ROLLUP_W1, AG_ROLLUP_W2, AG_ROLLUP_W3};

/* ------------------------------------------------------- accumulator */

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static uint64_t key_hash(int64_t t, int64_t f, int64_t w, int64_t b) {
    return mix64((uint64_t)b * 0x9E3779B97F4A7C15ull ^
                 mix64((uint64_t)t << 20 ^ (uint64_t)f << 8 ^ (uint64_t)w));
}

static ag_rollup_acc *slot_in(ag_rollup_acc *tab, size_t cap, int64_t t, int64_t f, int64_t w,
                              int64_t b) {
    size_t i = (size_t)(key_hash(t, f, w, b) & (cap - 1));
    for (;;) {
        ag_rollup_acc *a = &tab[i];
        if (!a->used || (a->tensor_id == t && a->format_id == f && a->width == w && a->bucket == b))
            return a;
        i = (i + 1) & (cap - 1);
    }
}

static int acc_grow(ag_store *st) {
    size_t ncap = st->acc_cap ? st->acc_cap * 2 : 1024;
    ag_rollup_acc *tab = calloc(ncap, sizeof *tab);
    if (!tab) return AG_ENOMEM;
    for (size_t i = 0; i < st->acc_cap; i++) {
        ag_rollup_acc *a = &st->acc[i];
        if (a->used) *slot_in(tab, ncap, a->tensor_id, a->format_id, a->width, a->bucket) = *a;
    }
    free(st->acc);
    st->acc = tab;
    st->acc_cap = ncap;
    memset(st->acc_last, 0, sizeof st->acc_last);
    return AG_OK;
}

void ag_rollup_forget(ag_store *st) {
    if (st->acc_n) memset(st->acc, 0, st->acc_cap * sizeof *st->acc);
    st->acc_n = 0;
    memset(st->acc_last, 0, sizeof st->acc_last);
}

static double finite_or_0(double v) { return isfinite(v) ? v : 0.0; }

int ag_rollup_add(ag_store *st, const ag_store_result_row *r, int flips_unknown, int sign) {
    int64_t step = (int64_t)r->step;
    double amax = finite_or_0(r->amax), scale = finite_or_0(r->scale);
    for (int k = 0; k < AG_ROLLUP_TIERS; k++) {
        if ((st->acc_n + 1) * 2 > st->acc_cap && acc_grow(st)) {
            st->last_rc = SQLITE_NOMEM; /* transient: the writer retries the batch */
            return ag_store_failf(st, AG_ENOMEM, "%s: rollups: out of memory", st->path);
        }
        int64_t w = ag_rollup_widths[k];
        ag_rollup_acc *a = st->acc_last[k];
        if (!a || a->bucket != step / w || a->tensor_id != r->tensor_id ||
            a->format_id != r->format_id)
            a = st->acc_last[k] =
                slot_in(st->acc, st->acc_cap, r->tensor_id, r->format_id, w, step / w);
        if (!a->used) {
            *a = (ag_rollup_acc){.tensor_id = r->tensor_id,
                                 .format_id = r->format_id,
                                 .width = w,
                                 .bucket = step / w,
                                 .first_step = step,
                                 .last_step = step,
                                 .amax_min = amax,
                                 .amax_max = amax,
                                 .amax_last = amax,
                                 .scale_min = scale,
                                 .scale_max = scale,
                                 .scale_last = scale,
                                 .ranks_min = INT64_MAX,
                                 .used = 1};
            st->acc_n++;
        }
        /* A row taken back (sign -1) takes its counts and itself back; min
         * and max keep its values (they can only widen), and the row that
         * replaces it sets last. */
        a->rows += sign;
        a->stalled += sign * (int64_t)r->counts.stalled;
        a->total += sign * (int64_t)r->counts.total;
        a->overflow += sign * (int64_t)r->counts.overflow;
        a->underflow += sign * (int64_t)r->counts.underflow;
        a->nonfinite += sign * (int64_t)r->counts.nonfinite;
        if (r->source) a->device_rows += sign;
        if (r->incomplete) a->incomplete_rows += sign;
        if (flips_unknown)
            a->flips_unknown += sign;
        else
            a->flips += sign * (int64_t)r->flips;
        if (sign < 0) continue;
        /* like amax_min, the fewest ranks only narrows: a row replaced keeps it */
        int64_t ranks = r->ranks ? (int64_t)r->ranks : 1;
        if (ranks < a->ranks_min) a->ranks_min = ranks;
        if (step < a->first_step) a->first_step = step;
        if (step >= a->last_step) {
            a->last_step = step;
            a->amax_last = amax;
            a->scale_last = scale;
        }
        if (amax < a->amax_min) a->amax_min = amax;
        if (amax > a->amax_max) a->amax_max = amax;
        if (scale < a->scale_min) a->scale_min = scale;
        if (scale > a->scale_max) a->scale_max = scale;
    }
    return AG_OK;
}

/* Bind a bucket's 19 values (rows .. ranks_min) from parameter o + 1. */
static void bind_bucket(sqlite3_stmt *s, int o, const ag_rollup_acc *a) {
    const int64_t v[] = {a->rows,     a->stalled,   a->total,     a->flips,      a->flips_unknown,
                         a->overflow, a->underflow, a->nonfinite, a->first_step, a->last_step};
    for (int k = 0; k < (int)(sizeof v / sizeof v[0]); k++) sqlite3_bind_int64(s, o + k + 1, v[k]);
    sqlite3_bind_double(s, o + 11, a->amax_min);
    sqlite3_bind_double(s, o + 12, a->amax_max);
    sqlite3_bind_double(s, o + 13, a->amax_last);
    sqlite3_bind_double(s, o + 14, a->scale_min);
    sqlite3_bind_double(s, o + 15, a->scale_max);
    sqlite3_bind_double(s, o + 16, a->scale_last);
    sqlite3_bind_int64(s, o + 17, a->device_rows);
    sqlite3_bind_int64(s, o + 18, a->incomplete_rows);
    sqlite3_bind_int64(s, o + 19, a->ranks_min == INT64_MAX ? 1 : a->ranks_min);
}

/* Add a bucket into rollups_sealed (a new row, or summed into the row there). */
static int upsert_sealed(ag_store *st, const ag_rollup_acc *a) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_ROLLUP_UPSERT);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, a->tensor_id);
    sqlite3_bind_int64(s, 2, a->format_id);
    sqlite3_bind_int64(s, 3, a->width);
    sqlite3_bind_int64(s, 4, a->bucket);
    bind_bucket(s, 4, a);
    return ag_store_exec_stmt(st, s, "rollups");
}

/* b += a, as the upsert of rollups_sealed sums a bucket into its row. */
static void merge_bucket(ag_rollup_acc *b, const ag_rollup_acc *a) {
    b->rows += a->rows;
    b->stalled += a->stalled;
    b->total += a->total;
    b->flips += a->flips;
    b->flips_unknown += a->flips_unknown;
    b->overflow += a->overflow;
    b->underflow += a->underflow;
    b->nonfinite += a->nonfinite;
    b->device_rows += a->device_rows;
    b->incomplete_rows += a->incomplete_rows;
    if (a->last_step >= b->last_step) {
        b->amax_last = a->amax_last;
        b->scale_last = a->scale_last;
    }
    if (a->first_step < b->first_step) b->first_step = a->first_step;
    if (a->last_step > b->last_step) b->last_step = a->last_step;
    if (a->amax_min < b->amax_min) b->amax_min = a->amax_min;
    if (a->amax_max > b->amax_max) b->amax_max = a->amax_max;
    if (a->scale_min < b->scale_min) b->scale_min = a->scale_min;
    if (a->scale_max > b->scale_max) b->scale_max = a->scale_max;
    int64_t r = a->ranks_min == INT64_MAX ? 1 : a->ranks_min;
    if (r < b->ranks_min) b->ranks_min = r;
}

static int acc_order(const void *x, const void *y) {
    const ag_rollup_acc *a = *(const ag_rollup_acc *const *)x,
                        *b = *(const ag_rollup_acc *const *)y;
    if (a->tensor_id != b->tensor_id) return a->tensor_id < b->tensor_id ? -1 : 1;
    if (a->format_id != b->format_id) return a->format_id < b->format_id ? -1 : 1;
    if (a->width != b->width) return a->width < b->width ? -1 : 1;
    return a->bucket < b->bucket ? -1 : a->bucket > b->bucket;
}

static int tier_of(int64_t width) {
    for (int k = 0; k < AG_ROLLUP_TIERS; k++)
        if (ag_rollup_widths[k] == width) return k;
    return -1;
}

/* One tensor and format's buckets of this transaction (sorted by width and
 * bucket): the open bucket of each tier (its newest) stays in the heads
 * row, which is written once; a bucket a newer one follows is sealed
 * (rollups_sealed) once; a late or replaced row's bucket is summed into
 * its sealed row. */
static int flush_key(ag_store *st, ag_rollup_acc *const *accs, size_t n) {
    int64_t tid = accs[0]->tensor_id, fid = accs[0]->format_id;
    ag_rollup_acc head[AG_ROLLUP_TIERS];
    int has[AG_ROLLUP_TIERS] = {0}, dirty = 0, rc;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_HEAD_GET);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, fid);
    if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        for (int k = 0; k < AG_ROLLUP_TIERS; k++) {
            int o = k * 20;
            if (sqlite3_column_type(s, o) == SQLITE_NULL) continue;
            has[k] = 1;
            head[k] = (ag_rollup_acc){.tensor_id = tid,
                                      .format_id = fid,
                                      .width = ag_rollup_widths[k],
                                      .bucket = sqlite3_column_int64(s, o),
                                      .rows = sqlite3_column_int64(s, o + 1),
                                      .stalled = sqlite3_column_int64(s, o + 2),
                                      .total = sqlite3_column_int64(s, o + 3),
                                      .flips = sqlite3_column_int64(s, o + 4),
                                      .flips_unknown = sqlite3_column_int64(s, o + 5),
                                      .overflow = sqlite3_column_int64(s, o + 6),
                                      .underflow = sqlite3_column_int64(s, o + 7),
                                      .nonfinite = sqlite3_column_int64(s, o + 8),
                                      .first_step = sqlite3_column_int64(s, o + 9),
                                      .last_step = sqlite3_column_int64(s, o + 10),
                                      .amax_min = sqlite3_column_double(s, o + 11),
                                      .amax_max = sqlite3_column_double(s, o + 12),
                                      .amax_last = sqlite3_column_double(s, o + 13),
                                      .scale_min = sqlite3_column_double(s, o + 14),
                                      .scale_max = sqlite3_column_double(s, o + 15),
                                      .scale_last = sqlite3_column_double(s, o + 16),
                                      .device_rows = sqlite3_column_int64(s, o + 17),
                                      .incomplete_rows = sqlite3_column_int64(s, o + 18),
                                      .ranks_min = sqlite3_column_int64(s, o + 19),
                                      .used = 1};
        }
    } else if (rc != SQLITE_DONE) {
        int err = ag_store_fail(st, "rollups", rc);
        sqlite3_reset(s);
        return err;
    }
    sqlite3_reset(s);
    int64_t sealed_max[AG_ROLLUP_TIERS];
    int sealed_known[AG_ROLLUP_TIERS] = {0};
    int err = AG_OK;
    for (size_t i = 0; !err && i < n; i++) {
        const ag_rollup_acc *a = accs[i];
        int k = tier_of(a->width);
        if (k < 0) continue;
        if (has[k] && a->bucket == head[k].bucket) {
            merge_bucket(&head[k], a);
            dirty = 1;
            continue;
        }
        int newer = has[k] && a->bucket > head[k].bucket;
        if (!has[k]) {
            /* no open bucket (a file of schema 11 or rebuilt rollups): the
             * bucket opens one only past every sealed bucket of the tier */
            if (!sealed_known[k]) {
                if (!(s = ag_store_stmt(st, AG_ST_SEALED_MAX))) return AG_ESTORE;
                sqlite3_bind_int64(s, 1, tid);
                sqlite3_bind_int64(s, 2, fid);
                sqlite3_bind_int64(s, 3, a->width);
                rc = sqlite3_step(s);
                if (rc != SQLITE_ROW) {
                    err = ag_store_fail(st, "rollups", rc);
                    sqlite3_reset(s);
                    break;
                }
                sealed_max[k] = sqlite3_column_type(s, 0) == SQLITE_NULL
                                    ? INT64_MIN
                                    : sqlite3_column_int64(s, 0);
                sqlite3_reset(s);
                sealed_known[k] = 1;
            }
            newer = a->bucket > sealed_max[k];
        }
        if (!newer) {
            err = upsert_sealed(st, a); /* a late or replaced row's bucket */
            continue;
        }
        if (has[k] && (err = upsert_sealed(st, &head[k]))) break; /* a newer bucket follows it */
        head[k] = *a;
        if (head[k].ranks_min == INT64_MAX) head[k].ranks_min = 1;
        has[k] = 1;
        dirty = 1;
    }
    if (err || !dirty) return err;
    if (!(s = ag_store_stmt(st, AG_ST_HEAD_PUT))) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, fid);
    for (int k = 0; k < AG_ROLLUP_TIERS; k++) {
        int o = 2 + k * 20;
        if (!has[k]) continue; /* all NULL */
        sqlite3_bind_int64(s, o + 1, head[k].bucket);
        bind_bucket(s, o + 1, &head[k]);
    }
    return ag_store_exec_stmt(st, s, "rollups");
}

int ag_rollup_flush(ag_store *st) {
    if (!st->acc_n) return AG_OK;
    ag_rollup_acc **accs = malloc(st->acc_n * sizeof *accs);
    if (!accs) {
        st->last_rc = SQLITE_NOMEM; /* transient: the writer retries the batch */
        return ag_store_failf(st, AG_ENOMEM, "%s: rollups: out of memory", st->path);
    }
    size_t n = 0;
    for (size_t i = 0; i < st->acc_cap && n < st->acc_n; i++)
        if (st->acc[i].used) accs[n++] = &st->acc[i];
    qsort(accs, n, sizeof *accs, acc_order);
    int err = AG_OK;
    for (size_t i = 0; !err && i < n;) {
        size_t j = i + 1;
        while (j < n && accs[j]->tensor_id == accs[i]->tensor_id &&
               accs[j]->format_id == accs[i]->format_id)
            j++;
        err = flush_key(st, accs + i, j - i);
        i = j;
    }
    free(accs);
    if (err) return err;
    ag_rollup_forget(st);
    return AG_OK;
}

/* ---------------------------------------------------------------- walk */

/* The rows of [from, to] of one tensor and format at level (0 raw, k tier
 * k), each bucket whole where it lies inside the range and v->fits it,
 * else through the next finer level. */
static int walk_level(ag_store *st, int64_t tid, int64_t fid, int level, uint64_t from, uint64_t to,
                      const ag_rollup_visitor *v) {
    static const ag_stmt_id ids[] = {AG_ST_RAW_RANGE, AG_ST_ROLLUP_L1, AG_ST_ROLLUP_L2,
                                     AG_ST_ROLLUP_L3};
    static const ag_stmt_id heads[] = {AG_ST_COUNT, AG_ST_HEAD_L1, AG_ST_HEAD_L2, AG_ST_HEAD_L3};
    uint64_t w = level ? (uint64_t)ag_rollup_widths[level - 1] : 1;
    int err = AG_OK;
    /* the tier's sealed buckets, then its open bucket (the newest) */
    for (int part = 0; !err && part < (level ? 2 : 1); part++) {
        sqlite3_stmt *s = ag_store_stmt(st, part ? heads[level] : ids[level]);
        if (!s) return AG_ESTORE;
        sqlite3_bind_int64(s, 1, tid);
        sqlite3_bind_int64(s, 2, fid);
        sqlite3_bind_int64(s, 3, (int64_t)w);
        sqlite3_bind_int64(s, 4, (int64_t)(from / w));
        sqlite3_bind_int64(s, 5, (int64_t)(to / w));
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            ag_rollup_agg b = {
                .rows = (uint64_t)sqlite3_column_int64(s, 1),
                .stalled = (uint64_t)sqlite3_column_int64(s, 2),
                .total = (uint64_t)sqlite3_column_int64(s, 3),
                .flips = (uint64_t)sqlite3_column_int64(s, 4),
                .flips_unknown = (uint64_t)sqlite3_column_int64(s, 5),
                .overflow = (uint64_t)sqlite3_column_int64(s, 6),
                .underflow = (uint64_t)sqlite3_column_int64(s, 7),
                .nonfinite = (uint64_t)sqlite3_column_int64(s, 8),
                .first_step = (uint64_t)sqlite3_column_int64(s, 9),
                .last_step = (uint64_t)sqlite3_column_int64(s, 10),
                .amax_last = sqlite3_column_double(s, 11),
                .scale_last = sqlite3_column_double(s, 12),
                .device_rows = (uint64_t)sqlite3_column_int64(s, 13),
                .incomplete_rows = (uint64_t)sqlite3_column_int64(s, 14),
                .ranks_min = (uint64_t)sqlite3_column_int64(s, 15),
            };
            if (level == 0 ||
                (b.first_step >= from && b.last_step <= to && v->fits(v->ctx, b.rows))) {
                err = v->add(v->ctx, &b);
            } else {
                uint64_t lo = (uint64_t)sqlite3_column_int64(s, 0) * w, hi = lo + w - 1;
                err = walk_level(st, tid, fid, level - 1, lo > from ? lo : from, hi < to ? hi : to,
                                 v);
            }
            if (err) break;
        }
        if (!err && rc != SQLITE_DONE && rc != SQLITE_ROW) err = ag_store_fail(st, "rollups", rc);
        sqlite3_reset(s);
    }
    return err;
}

int ag_rollup_walk(ag_store *st, int64_t tid, int64_t fid, uint64_t from, uint64_t to,
                   uint64_t max_width, const ag_rollup_visitor *v) {
    if (to > (uint64_t)INT64_MAX) to = (uint64_t)INT64_MAX;
    if (from > to) return AG_OK;
    int level = st->has_rollups ? AG_ROLLUP_TIERS : 0;
    while (max_width && level > 0 && (uint64_t)ag_rollup_widths[level - 1] > max_width) level--;
    return walk_level(st, tid, fid, level, from, to, v);
}

/* ------------------------------------------------------------ rebuild */

static int exec_sql(ag_store *st, const char *sql, const char *what) {
    char *msg = NULL;
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK) return AG_OK;
    st->last_rc = rc;
    ag_store_failf(st, (rc & 0xff) == SQLITE_NOMEM ? AG_ENOMEM : AG_ESTORE, "%s: %s: %s", st->path,
                   what, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return (rc & 0xff) == SQLITE_NOMEM ? AG_ENOMEM : AG_ESTORE;
}

/* Every bucket of the two finer tiers not wholly below its tensor's raw
 * horizon is computed again from the raw rows (buckets below it have no raw
 * rows left to count; retention cuts at a multiple of the middle tier's
 * width), then every bucket of the widest tier from the middle tier's: so a
 * widest bucket the horizon cuts keeps the counts of its pruned rows. */
#define W1 AG_ROLLUP_W1_SQL
#define W2 AG_ROLLUP_W2_SQL
#define W3 AG_ROLLUP_W3_SQL
#define PER " (" W3 "/" W2 ") " /* middle-tier buckets a widest one holds */
/* a row's tensor's raw horizon (0: none): of rollups_sealed, of results r */
#define HORIZON_SEALED                                                                             \
    "coalesce((SELECT step FROM raw_horizon h WHERE h.tensor_id=rollups_sealed.tensor_id),0)"
#define HORIZON_R "coalesce((SELECT step FROM raw_horizon h WHERE h.tensor_id=r.tensor_id),0)"
#define LAST_OF(col)                                                                               \
    " " col "=(SELECT r." col " FROM rollups_sealed r WHERE r.tensor_id=rollups_sealed.tensor_id"  \
    " AND r.format_id=rollups_sealed.format_id AND r.width=" W2 " AND r.bucket BETWEEN"            \
    " rollups_sealed.bucket*" PER " AND rollups_sealed.bucket*" PER "+" PER "-1"                   \
    " ORDER BY r.last_step DESC LIMIT 1)"
static const char rebuild_sql[] =
    "DELETE FROM rollups_sealed WHERE width=" W3 " OR (bucket+1)*width > " HORIZON_SEALED ";"
    /* the open buckets are newer than any horizon: all computed again,
     * sealed (the next commit of each key opens its heads again) */
    "DELETE FROM rollup_heads;"
    "INSERT INTO rollups_sealed"
    " SELECT r.tensor_id, r.format_id, w.width, r.step / w.width, count(*), sum(r.stalled),"
    " sum(r.total), coalesce(sum(r.flips),0), count(*) - count(r.flips), sum(r.overflow),"
    " sum(r.underflow), sum(r.nonfinite), min(r.step), max(r.step), min(r.amax), max(r.amax), 0,"
    " min(r.scale), max(r.scale), 0, sum(r.source), count(*) - sum(r.complete), min(r.ranks)"
    " FROM results r, (SELECT " W1 " AS width UNION ALL SELECT " W2 ") w"
    " WHERE r.step >= " HORIZON_R " GROUP BY r.tensor_id, r.format_id, w.width, r.step / w.width;"
    "UPDATE rollups_sealed SET"
    " amax_last=(SELECT amax FROM results r WHERE r.tensor_id=rollups_sealed.tensor_id"
    " AND r.format_id=rollups_sealed.format_id AND r.step=rollups_sealed.last_step),"
    " scale_last=(SELECT scale FROM results r WHERE r.tensor_id=rollups_sealed.tensor_id"
    " AND r.format_id=rollups_sealed.format_id AND r.step=rollups_sealed.last_step)"
    " WHERE (bucket+1)*width > " HORIZON_SEALED ";";
static const char rebuild_widest_sql[] =
    "INSERT INTO rollups_sealed"
    " SELECT tensor_id, format_id, " W3 ", bucket /" PER ", sum(rows), sum(stalled), sum(total),"
    " sum(flips), sum(flips_unknown), sum(overflow), sum(underflow), sum(nonfinite),"
    " min(first_step), max(last_step), min(amax_min), max(amax_max), 0, min(scale_min),"
    " max(scale_max), 0, sum(device_rows), sum(incomplete_rows), min(ranks_min)"
    " FROM rollups_sealed WHERE width=" W2 " GROUP BY tensor_id, format_id, bucket /" PER ";"
    "UPDATE rollups_sealed SET" LAST_OF("amax_last") "," LAST_OF("scale_last") " WHERE width=" W3
                                                                               ";";
#undef LAST_OF
#undef HORIZON_R
#undef HORIZON_SEALED
#undef PER
#undef W3
#undef W2
#undef W1

int ag_store_rebuild_rollups(ag_store *st, uint64_t *buckets) {
    if (!st || st->readonly || st->in_txn) return AG_EINVAL;
    int err = ag_store_begin(st);
    if (err) return err;
    uint64_t n = 0;
    if (!(err = exec_sql(st, rebuild_sql, "rebuild rollups"))) {
        n = (uint64_t)sqlite3_changes(st->db);
        if (!(err = exec_sql(st, rebuild_widest_sql, "rebuild rollups")))
            n += (uint64_t)sqlite3_changes(st->db);
    }
    if (err) {
        ag_store_rollback(st);
        return err;
    }
    if (buckets) *buckets = n;
    if ((err = ag_store_commit(st))) ag_store_rollback(st);
    return err;
}

/* ----------------------------------------------------------- retention */

typedef struct prune_target {
    int64_t tensor_id;
    uint64_t cut;
} prune_target;

int ag_store_prune_raw(ag_store *st, uint64_t keep_steps, uint64_t max_rows, uint64_t *removed) {
    if (removed) *removed = 0;
    if (!st || st->readonly || st->in_txn || keep_steps == 0) return AG_EINVAL;
    /* the middle tier: the rebuild sums the widest from it (rebuild_sql) */
    const uint64_t align = (uint64_t)ag_rollup_widths[1];
    prune_target *targets = NULL;
    size_t n = 0, cap = 0;
    int err = AG_OK, rc;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_PRUNE_TARGETS);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, 0);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        uint64_t last = (uint64_t)sqlite3_column_int64(s, 1);
        uint64_t horizon = (uint64_t)sqlite3_column_int64(s, 2);
        if (last + 1 <= keep_steps) continue;
        /* Steps below cut go: whole middle-tier buckets, all older than
         * the newest keep_steps steps of the run. */
        uint64_t cut = (last + 1 - keep_steps) / align * align;
        if (cut <= horizon) continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            prune_target *t = realloc(targets, ncap * sizeof *t);
            if (!t) {
                err = AG_ENOMEM;
                break;
            }
            targets = t;
            cap = ncap;
        }
        targets[n++] = (prune_target){sqlite3_column_int64(s, 0), cut};
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "retention", rc);
    sqlite3_reset(s);
    if (err || n == 0) {
        free(targets);
        return err;
    }
    if ((err = ag_store_begin(st))) {
        free(targets);
        return err;
    }
    uint64_t gone = 0;
    for (size_t i = 0; !err && i < n && gone < max_rows; i++) {
        /* the results points below the cut, then the stats rows */
        int prc = ag_seg_prune(&st->seg, targets[i].tensor_id, targets[i].cut, &gone);
        if (prc != SQLITE_OK) {
            err = ag_store_fail(st, "retention", prc);
            break;
        }
        static const ag_stmt_id ids[] = {AG_ST_PRUNE_STATS, AG_ST_PUT_HORIZON};
        for (int k = 0; !err && k < 2; k++) {
            if (!(s = ag_store_stmt(st, ids[k]))) {
                err = AG_ESTORE;
                break;
            }
            sqlite3_bind_int64(s, 1, targets[i].tensor_id);
            sqlite3_bind_int64(s, 2, (int64_t)targets[i].cut);
            if (!(err = ag_store_exec_stmt(st, s, "retention")) && k < 1)
                gone += (uint64_t)sqlite3_changes(st->db);
        }
    }
    free(targets);
    if (!err) err = ag_store_commit(st);
    if (err) {
        ag_store_rollback(st);
        return err;
    }
    if (removed) *removed = gone;
    return AG_OK;
}

/* ---------------------------------------------------------- checkpoint */

int ag_store_checkpoint(ag_store *st, int truncate, int wait_ms, int *busy) {
    if (busy) *busy = 0;
    if (!st || st->readonly || st->in_txn) return AG_EINVAL;
    int log = 0, done = 0;
    /* Wait for readers at most wait_ms: one they hold up is tried again later. */
    sqlite3_busy_timeout(st->db, wait_ms > 0 ? wait_ms : 0);
    int rc = sqlite3_wal_checkpoint_v2(
        st->db, NULL, truncate ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_PASSIVE, &log,
        &done);
    sqlite3_busy_timeout(st->db, 5000);
    if ((rc & 0xff) == SQLITE_BUSY || (rc == SQLITE_OK && log > done)) {
        if (busy) *busy = 1;
        return AG_OK;
    }
    return rc == SQLITE_OK ? AG_OK : ag_store_fail(st, "checkpoint", rc);
}

long long ag_store_wal_bytes(ag_store *st) {
    char wal[AG_STORE_PATH_MAX + 8];
    struct stat sb;
    if (!st || snprintf(wal, sizeof wal, "%s-wal", st->path) >= (int)sizeof wal) return 0;
    return stat(wal, &sb) == 0 ? (long long)sb.st_size : 0;
}
