/*
 * store_report.c - the report query (`altgrad report`, GET /api/report): for
 * every weight tensor of a run and each format, its stall rates over the run
 * and a sparkline, in one read transaction over the rollups (and the SQNR of
 * the series' last result row, one indexed read). Each series is
 * read as history --every K would read it (K a multiple of a rollup tier
 * once the series is longer than the sparkline), so a 1 M-snapshot run costs
 * a few rollup rows per tensor and format, not its raw rows.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "schema/store_internal.h"

size_t ag_store_sparkline(const ag_history_point *points, size_t n, size_t width, char *buf,
                          size_t cap) {
    size_t cols, c, len = 0;
    if (buf != NULL && cap > 0) buf[0] = '\0';
    if (points == NULL || n == 0 || width == 0 || buf == NULL) return 0;
    cols = n < width ? n : width;
    if (cap < 3 * cols + 1) return 0;
    for (c = 0; c < cols; c++) {
        size_t lo = c * n / cols, hi = (c + 1) * n / cols, i;
        double stalled = 0, total = 0, rate;
        unsigned level;
        for (i = lo; i < hi; i++) {
            stalled += (double)points[i].stalled;
            total += (double)points[i].total;
        }
        rate = total > 0 ? stalled / total : 0.0;
        if (!(rate >= 0.0)) rate = 0.0;
        if (rate > 1.0) rate = 1.0;
        level = (unsigned)lround(rate * 7.0); /* 0..7 -> U+2581..U+2588 */
        buf[len++] = (char)0xE2;
        buf[len++] = (char)0x96;
        buf[len++] = (char)(0x81 + level);
    }
    buf[len] = '\0';
    return cols;
}

/* Points asked for so a series of n fits width columns: 1 while it fits,
 * else n/width rounded up to a multiple of a rollup tier's width (100, 1000
 * or 10000), the largest not above it, so a dense series is read as whole
 * rollup buckets. */
static uint64_t every_for(uint64_t n, size_t width) {
    if (width == 0 || n <= width) return 1;
    uint64_t k = (n + width - 1) / width;
    for (int i = AG_ROLLUP_TIERS - 1; i >= 0; i--) {
        uint64_t tier = (uint64_t)ag_rollup_widths[i];
        if (k >= tier) return (k + tier - 1) / tier * tier;
    }
    return k;
}

static double rate(uint64_t stalled, uint64_t total) {
    return total ? (double)stalled / (double)total : 0.0;
}

/* ---- walks over one tensor and format (ag_rollup_walk visitors) ---- */

/* The series downsampled to points of `every` rows each (the last may hold
 * fewer), as history --every builds them; only the counts are kept. */
typedef struct series {
    ag_history_point *points;
    size_t n, cap;
    uint64_t every, in_point;
} series;

static int series_fits(void *ctx, uint64_t rows) {
    series *s = ctx;
    return s->in_point + rows <= s->every;
}

static int series_add(void *ctx, const ag_rollup_agg *b) {
    series *s = ctx;
    if (s->in_point == 0) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 64;
            ag_history_point *p = realloc(s->points, cap * sizeof *p);
            if (!p) return AG_ENOMEM;
            s->points = p;
            s->cap = cap;
        }
        memset(&s->points[s->n++], 0, sizeof *s->points);
    }
    ag_history_point *p = &s->points[s->n - 1];
    p->step = b->last_step;
    p->stalled += b->stalled;
    p->total += b->total;
    p->stall_rate = rate(p->stalled, p->total);
    s->in_point += b->rows;
    if (s->in_point >= s->every) s->in_point = 0;
    return AG_OK;
}

/* The SQNR of the result row of tensor tid in format fid at step (the
 * series' last): NaN when unknown (NULL: counts from a trainer, a row from
 * before schema 10, an exact or all-zero tensor) or when the row is gone. */
static int last_sqnr(ag_store *st, int64_t tid, int64_t fid, uint64_t step, double *out) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_REPORT_SQNR);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, fid);
    sqlite3_bind_int64(s, 3, step > INT64_MAX ? INT64_MAX : (int64_t)step);
    int rc = sqlite3_step(s);
    *out = rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL
               ? sqlite3_column_double(s, 0)
               : NAN;
    int err = rc == SQLITE_ROW || rc == SQLITE_DONE ? AG_OK : ag_store_fail(st, "report", rc);
    sqlite3_reset(s);
    return err;
}

static int walk_sum(ag_store *st, int64_t tid, int64_t fid, uint64_t from, uint64_t to,
                    ag_rollup_agg *sum) {
    ag_rollup_visitor v = {.ctx = sum, .fits = ag_rollup_fits_all, .add = ag_rollup_sum_add};
    memset(sum, 0, sizeof *sum);
    return ag_rollup_walk(st, tid, fid, from, to, 0, &v);
}

/* ---- the query ---- */

typedef struct report_format {
    const char *name; /* in the arena */
    int64_t id;
} report_format;

/* The formats of the request (comma-separated, spaces before a name and
 * empty names skipped, as the CLI splits them) or, for NULL, the defaults:
 * unknown ones are AG_ENOTFOUND when named, left out when defaulted. */
static int report_formats(ag_store *st, void *root, const char *formats, report_format *out,
                          size_t *n) {
    static const char seed[] = AG_DEFAULT_FORMATS;
    const char *list = formats;
    char *copy, *save = NULL, *tok;
    int err = AG_OK;
    *n = 0;
    if (!list) {
        if ((err = ag_store_default_formats(st, root, &list))) return err;
        if (!list || !*list) list = seed;
    }
    if (!(copy = ag_arena_strdup(root, list))) return AG_ENOMEM;
    for (tok = strtok_r(copy, ",", &save); tok && !err; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (*tok == '\0') continue;
        if (*n == AG_FORMATS_MAX)
            return ag_store_failf(st, AG_EINVAL, "more than %d formats", AG_FORMATS_MAX);
        int64_t id = 0;
        err = ag_store_format_id(st, tok, &id);
        if (err == AG_ENOTFOUND && !formats) {
            err = AG_OK; /* a default format the file does not know: no rows in it */
            continue;
        }
        out[*n].name = tok;
        out[(*n)++].id = id;
    }
    return err;
}

/* One row of tensor tid in format f, or nothing when it has no rows. */
static int report_row(ag_store *st, ag_report *res, size_t *cap, series *s, const char *tensor,
                      int64_t tid, const report_format *f, uint64_t last, size_t width) {
    ag_rollup_agg whole, final;
    int err;
    /* steps: the rows over the run (top --window 0) */
    if ((err = walk_sum(st, tid, f->id, 0, last, &whole))) return err;
    if (whole.rows == 0) return AG_OK;
    s->n = 0;
    s->in_point = 0;
    s->every = every_for(whole.rows, width);
    ag_rollup_visitor v = {.ctx = s, .fits = series_fits, .add = series_add};
    if ((err = ag_rollup_walk(st, tid, f->id, 0, UINT64_MAX, s->every, &v))) return err;
    if (s->n == 0) return AG_OK;
    /* last: over the run's last step (top --window 1), else the series' last
     * row alone */
    double last_rate = s->points[s->n - 1].stall_rate;
    if ((err = walk_sum(st, tid, f->id, last, last, &final))) return err;
    if (final.rows > 0) {
        last_rate = rate(final.stalled, final.total);
    } else if (s->every > 1) {
        uint64_t step = s->points[s->n - 1].step;
        if ((err = walk_sum(st, tid, f->id, step, step, &final))) return err;
        if (final.rows > 0) last_rate = rate(final.stalled, final.total);
    }
    double sqnr = NAN;
    if ((err = last_sqnr(st, tid, f->id, s->points[s->n - 1].step, &sqnr))) return err;
    double stalled = 0, total = 0, max_rate = 0;
    for (size_t i = 0; i < s->n; i++) {
        stalled += (double)s->points[i].stalled;
        total += (double)s->points[i].total;
        if (s->points[i].stall_rate > max_rate) max_rate = s->points[i].stall_rate;
    }
    if (res->n == AG_STORE_MAX_POINTS || (res->n + 1) * width > AG_STORE_REPORT_MAX_CELLS)
        return ag_store_failf(st, AG_ETOOBIG,
                              "the report has more than %u rows or %u sparkline columns: ask "
                              "for fewer formats or a smaller width",
                              AG_STORE_MAX_POINTS, AG_STORE_REPORT_MAX_CELLS);
    if ((err = ag_store_grow(res, (void **)&res->items, cap, res->n, sizeof *res->items)))
        return err;
    ag_report_row *r = &res->items[res->n];
    size_t spark_cap = 3 * (s->n < width ? s->n : width) + 1;
    char *spark = ag_arena_alloc(res, spark_cap);
    r->tensor = ag_arena_strdup(res, tensor);
    r->format = f->name;
    if (!spark || !r->tensor) return AG_ENOMEM;
    ag_store_sparkline(s->points, s->n, width, spark, spark_cap);
    r->sparkline = spark;
    r->steps = whole.rows;
    r->last_rate = last_rate;
    r->mean_rate = total > 0 ? stalled / total : 0.0;
    r->max_rate = max_rate;
    r->last_sqnr_db = sqnr;
    res->n++;
    return AG_OK;
}

static int report_q(ag_store *st, const char *run, const char *formats, size_t width,
                    ag_report **out) {
    if (!st || !run || !out) return AG_EINVAL;
    *out = NULL;
    if (width == 0) width = AG_REPORT_WIDTH_DEFAULT;
    if (width > AG_REPORT_WIDTH_MAX)
        return ag_store_failf(st, AG_ERANGE, "width must be 1..%d", AG_REPORT_WIDTH_MAX);
    int64_t run_id = 0;
    int err = ag_store_run_id(st, run, &run_id), rc = SQLITE_DONE;
    if (err) return err;
    ag_report *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    report_format fmts[AG_FORMATS_MAX];
    size_t nfmt = 0, cap = 0;
    series s = {0};
    if ((err = report_formats(st, res, formats, fmts, &nfmt))) goto fail;
    sqlite3_stmt *q = ag_store_stmt(st, AG_ST_TOP_LAST_STEP);
    if (!q) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(q, 1, run_id);
    rc = sqlite3_step(q);
    uint64_t last = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(q, 0) : 0;
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) {
        err = ag_store_fail(st, "report", rc);
        goto fail;
    }
    if (!(q = ag_store_stmt(st, AG_ST_RUN_TENSOR_IDS))) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(q, 1, run_id);
    /* Tensors by name; those without snapshots (activations and gradients:
     * statistics only) have no stall rate. */
    while (!err && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (sqlite3_column_int64(q, 2) == 0) continue;
        int64_t tid = sqlite3_column_int64(q, 0);
        const char *name = (const char *)sqlite3_column_text(q, 1);
        for (size_t f = 0; f < nfmt && !err; f++)
            err = report_row(st, res, &cap, &s, name ? name : "", tid, &fmts[f], last, width);
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "report", rc);
    sqlite3_reset(q);
    if (err) goto fail;
    free(s.points);
    *out = res;
    return AG_OK;
fail:
    free(s.points);
    ag_free(res);
    return err;
}

int ag_store_report(ag_store *st, const char *run, const char *formats, size_t width,
                    ag_report **out) {
    int began = ag_store_read_begin(st), err = report_q(st, run, formats, width, out);
    ag_store_read_end(st, began);
    return err;
}
