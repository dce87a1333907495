/*
 * store_query.c - the read queries of the store, returning the result
 * structs of altgrad.h built in one arena (freed with one ag_free). Same
 * semantics and errors as the client queries: an unknown run, tensor or
 * format is AG_ENOTFOUND with the name in ag_store_errmsg().
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "schema/store_internal.h"

#define DEFAULT_FORMAT AG_DEFAULT_FORMAT
#define DEFAULT_TOP_LIMIT AG_TOP_LIMIT_DEFAULT

static uint64_t col_u64(sqlite3_stmt *s, int i) { return (uint64_t)sqlite3_column_int64(s, i); }

static const char *col_text(sqlite3_stmt *s, int i) {
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? t : "";
}

static double rate(uint64_t stalled, uint64_t total) {
    return total ? (double)stalled / (double)total : 0.0;
}

int ag_store_grow(void *root, void **items, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return AG_OK;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *p = ag_arena_grow(root, *items, *cap * elem, ncap * elem);
    if (!p) return AG_ENOMEM;
    *items = p;
    *cap = ncap;
    return AG_OK;
}

static int lookup_id(ag_store *st, ag_stmt_id id, const char *what, const char *name,
                     int64_t *out) {
    sqlite3_stmt *s = ag_store_stmt(st, id);
    if (!s) return AG_ESTORE;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    int err = AG_OK;
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_DONE)
        err = ag_store_failf(st, AG_ENOTFOUND, "no such %s: %s", what, name);
    else
        err = ag_store_fail(st, what, rc);
    sqlite3_reset(s);
    return err;
}

int ag_store_run_id(ag_store *st, const char *name, int64_t *id) {
    return lookup_id(st, AG_ST_RUN_BY_NAME, "run", name, id);
}

int ag_store_format_id(ag_store *st, const char *name, int64_t *id) {
    return lookup_id(st, AG_ST_FORMAT_BY_NAME, "format", name ? name : DEFAULT_FORMAT, id);
}

static int tensor_id(ag_store *st, int64_t run_id, const char *name, int64_t *id) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_TENSOR_BY_NAME);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), err = AG_OK;
    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_DONE)
        err = ag_store_failf(st, AG_ENOTFOUND, "no such tensor: %s", name);
    else
        err = ag_store_fail(st, "tensor", rc);
    sqlite3_reset(s);
    return err;
}

/* The JSON object rank -> dropped of the run's ranks with drops ("{}": none),
 * in the arena of res; at most AG_PROTO-sized text (a run of more ranks with
 * drops than fit lists the first ones). */
#define RANK_DROPS_MAX 65536
static int rank_drops(ag_store *st, void *res, int64_t run_id, const char **out) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_RUN_RANK_DROPS);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, run_id);
    char *text = malloc(RANK_DROPS_MAX + 1);
    if (!text) {
        sqlite3_reset(s);
        return AG_ENOMEM;
    }
    size_t n = 0;
    text[n++] = '{';
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        char item[48];
        int k =
            snprintf(item, sizeof item, "%s\"%lld\":%lld", n > 1 ? "," : "",
                     (long long)sqlite3_column_int64(s, 0), (long long)sqlite3_column_int64(s, 1));
        if (k < 0 || n + (size_t)k + 1 > RANK_DROPS_MAX) break;
        memcpy(text + n, item, (size_t)k);
        n += (size_t)k;
    }
    int err = rc == SQLITE_DONE || rc == SQLITE_ROW ? AG_OK : ag_store_fail(st, "runs", rc);
    sqlite3_reset(s);
    text[n++] = '}';
    text[n] = '\0';
    if (!err && !(*out = ag_arena_strdup(res, text))) err = AG_ENOMEM;
    free(text);
    return err;
}

/* How many (tensor, step)s of the run have incomplete results. */
static int run_incomplete(ag_store *st, int64_t run_id, uint64_t *out) {
    sqlite3_stmt *s =
        ag_store_stmt(st, st->has_rollups ? AG_ST_RUN_INCOMPLETE : AG_ST_RUN_INCOMPLETE_RAW);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, run_id);
    int rc = sqlite3_step(s), err = AG_OK;
    if (rc == SQLITE_ROW)
        *out = col_u64(s, 0);
    else
        err = ag_store_fail(st, "runs", rc);
    sqlite3_reset(s);
    return err;
}

int ag_store_runs(ag_store *st, ag_run_list **out) {
    if (!st || !out) return AG_EINVAL;
    *out = NULL;
    ag_run_list *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_RUNS);
    int err = s ? AG_OK : AG_ESTORE, rc;
    size_t cap = 0;
    while (!err && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if ((err = ag_store_grow(res, (void **)&res->items, &cap, res->n, sizeof *res->items)))
            break;
        ag_run_info *r = &res->items[res->n];
        r->name = ag_arena_strdup(res, col_text(s, 0));
        r->host = ag_arena_strdup(res, col_text(s, 1));
        r->pid = sqlite3_column_int64(s, 2);
        r->client_id = col_u64(s, 3);
        r->started_ms = sqlite3_column_int64(s, 4);
        r->ended_ms = sqlite3_column_int64(s, 5);
        r->last_step = col_u64(s, 6);
        r->messages = col_u64(s, 7);
        r->dropped = col_u64(s, 8);
        r->metadata = ag_arena_strdup(res, col_text(s, 9));
        r->world_size = col_u64(s, 10);
        r->ranks_seen = col_u64(s, 11);
        if (!r->name || !r->host || !r->metadata) err = AG_ENOMEM;
        /* only runs with drops, or of many ranks, need a look at their rows */
        if (!err && sqlite3_column_int64(s, 13) > 0)
            err = rank_drops(st, res, sqlite3_column_int64(s, 12), &r->rank_drops);
        else if (!err && !(r->rank_drops = ag_arena_strdup(res, "{}")))
            err = AG_ENOMEM;
        if (!err && r->world_size > 1)
            err = run_incomplete(st, sqlite3_column_int64(s, 12), &r->incomplete);
        res->n++;
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "runs", rc);
    if (s) sqlite3_reset(s);
    if (err) goto fail;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

int ag_store_tensors(ag_store *st, const char *run, ag_tensor_list **out) {
    if (!st || !run || !out) return AG_EINVAL;
    *out = NULL;
    int64_t run_id = 0;
    int err = ag_store_run_id(st, run, &run_id), rc = SQLITE_DONE;
    if (err) return err;
    ag_tensor_list *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_TENSORS);
    if (!s)
        err = AG_ESTORE;
    else
        sqlite3_bind_int64(s, 1, run_id);
    size_t cap = 0;
    while (!err && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if ((err = ag_store_grow(res, (void **)&res->items, &cap, res->n, sizeof *res->items)))
            break;
        ag_tensor_info *t = &res->items[res->n++];
        t->name = ag_arena_strdup(res, col_text(s, 0));
        t->role = sqlite3_column_int(s, 1);
        t->numel = col_u64(s, 2);
        t->first_step = col_u64(s, 3);
        t->last_step = col_u64(s, 4);
        t->snapshots = col_u64(s, 5);
        t->last_amax = sqlite3_column_double(s, 6);
        if (!t->name) err = AG_ENOMEM;
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "tensors", rc);
    if (s) sqlite3_reset(s);
    if (err) goto fail;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

/* Fold point p into the bucket b (counts add; step, amax, scale are the last's). */
static void bucket_add(ag_history_point *b, const ag_history_point *p) {
    b->step = p->step;
    b->stalled += p->stalled;
    b->total += p->total;
    b->flips = b->flips == AG_FLIPS_UNKNOWN || p->flips == AG_FLIPS_UNKNOWN ? AG_FLIPS_UNKNOWN
                                                                            : b->flips + p->flips;
    b->overflow += p->overflow;
    b->underflow += p->underflow;
    b->nonfinite += p->nonfinite;
    b->amax = p->amax;
    b->scale = p->scale;
    b->computed = !b->computed || !strcmp(b->computed, p->computed) ? p->computed : "mixed";
    b->ranks = !b->ranks || p->ranks < b->ranks ? p->ranks : b->ranks;
    b->complete = b->complete && p->complete; /* a new bucket starts complete */
    b->mse = p->mse;                          /* the last's, as amax and scale */
    b->sqnr_db = p->sqnr_db;
    b->stall_rate = rate(b->stalled, b->total);
}

/* history with every > 1 over the rollups: points of every rows each. */
typedef struct history_walk {
    ag_store *st;
    const ag_history_query *q;
    ag_history *res;
    size_t cap;
    uint64_t every, in_point;
} history_walk;

static int history_fits(void *ctx, uint64_t rows) {
    history_walk *h = ctx;
    return h->in_point + rows <= h->every;
}

static int history_add(void *ctx, const ag_rollup_agg *b) {
    history_walk *h = ctx;
    ag_history *res = h->res;
    if (h->in_point == 0) {
        if (res->n == AG_STORE_MAX_POINTS)
            return ag_store_failf(h->st, AG_ETOOBIG,
                                  "history of %s in %s has more than %u points: ask for "
                                  "fewer with every (--every) or a step range",
                                  h->q->tensor, res->format, AG_STORE_MAX_POINTS);
        int err = ag_store_grow(res, (void **)&res->points, &h->cap, res->n, sizeof *res->points);
        if (err) return err;
        memset(&res->points[res->n++], 0, sizeof *res->points);
    }
    ag_history_point *p = &res->points[res->n - 1];
    p->step = b->last_step;
    p->stalled += b->stalled;
    p->total += b->total;
    /* A point's flips are unknown when any of its rows' are. */
    if (b->flips_unknown)
        p->flips = AG_FLIPS_UNKNOWN;
    else if (p->flips != AG_FLIPS_UNKNOWN)
        p->flips += b->flips;
    p->overflow += b->overflow;
    p->underflow += b->underflow;
    p->nonfinite += b->nonfinite;
    p->amax = b->amax_last;
    p->scale = b->scale_last;
    p->stall_rate = rate(p->stalled, p->total);
    /* where the piece was computed; a point of both is "mixed" */
    const char *where = b->device_rows == 0         ? "daemon"
                        : b->device_rows == b->rows ? "device"
                                                    : "mixed";
    p->computed = !p->computed || !strcmp(p->computed, where) ? where : "mixed";
    /* a point's ranks: the fewest of its rows; complete when all of its rows are */
    uint64_t ranks = b->ranks_min ? b->ranks_min : 1;
    int first = h->in_point == 0;
    p->ranks = first || ranks < p->ranks ? ranks : p->ranks;
    p->complete = (first || p->complete) && b->incomplete_rows == 0;
    p->mse = NAN; /* rollups keep no quantization error */
    p->sqnr_db = NAN;
    h->in_point += b->rows;
    if (h->in_point >= h->every) h->in_point = 0;
    return AG_OK;
}

static int history_q(ag_store *st, const ag_history_query *q, ag_history **out) {
    if (!st || !q || !q->run || !q->tensor || !out) return AG_EINVAL;
    *out = NULL;
    if (q->to_step && q->to_step < q->from_step) return AG_ERANGE;
    int64_t run_id = 0, tid = 0, fid = 0;
    int err, rc = SQLITE_DONE;
    if ((err = ag_store_run_id(st, q->run, &run_id)) ||
        (err = tensor_id(st, run_id, q->tensor, &tid)) ||
        (err = ag_store_format_id(st, q->format, &fid)))
        return err;
    ag_history *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    res->run = ag_arena_strdup(res, q->run);
    res->tensor = ag_arena_strdup(res, q->tensor);
    res->format = ag_arena_strdup(res, q->format ? q->format : DEFAULT_FORMAT);
    if (!res->run || !res->tensor || !res->format) {
        err = AG_ENOMEM;
        goto fail;
    }
    uint64_t every = q->every > 1 ? q->every : 1, in_bucket = 0;
    if (every > 1) {
        /* Downsampled: whole rollup buckets where they fall inside one point. */
        history_walk hw = {.st = st, .q = q, .res = res, .every = every};
        ag_rollup_visitor v = {.ctx = &hw, .fits = history_fits, .add = history_add};
        uint64_t to = q->to_step ? q->to_step : UINT64_MAX;
        /* A bucket of a tier wider than every steps holds more than every
         * rows when steps are dense: start at the widest that may fit. */
        if ((err = ag_rollup_walk(st, tid, fid, q->from_step, to, every, &v))) goto fail;
        *out = res;
        return AG_OK;
    }
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_HISTORY);
    if (!s) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, fid);
    /* Steps are int64 in the file (none is above INT64_MAX): a bound past that
     * must not wrap to a negative number. A from past it matches nothing. */
    uint64_t to = q->to_step && q->to_step < (uint64_t)INT64_MAX ? q->to_step : INT64_MAX;
    sqlite3_bind_int64(s, 3, q->from_step > (uint64_t)INT64_MAX ? 1 : (int64_t)q->from_step);
    sqlite3_bind_int64(s, 4, q->from_step > (uint64_t)INT64_MAX ? 0 : (int64_t)to);
    size_t cap = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        ag_history_point p = {
            .step = col_u64(s, 0),
            .stalled = col_u64(s, 1),
            .total = col_u64(s, 2),
            .flips = sqlite3_column_type(s, 3) == SQLITE_NULL ? AG_FLIPS_UNKNOWN : col_u64(s, 3),
            .overflow = col_u64(s, 4),
            .underflow = col_u64(s, 5),
            .nonfinite = col_u64(s, 6),
            .amax = sqlite3_column_double(s, 7),
            .scale = sqlite3_column_double(s, 8),
            .computed = sqlite3_column_int(s, 9) ? "device" : "daemon",
            .ranks = col_u64(s, 10),
            .complete = col_u64(s, 11) != 0,
            .mse = sqlite3_column_type(s, 12) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 12),
            .sqnr_db =
                sqlite3_column_type(s, 13) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 13),
        };
        if (in_bucket == 0) {
            if (res->n == AG_STORE_MAX_POINTS) {
                err = ag_store_failf(st, AG_ETOOBIG,
                                     "history of %s in %s has more than %u points: ask for "
                                     "fewer with every (--every) or a step range",
                                     q->tensor, res->format, AG_STORE_MAX_POINTS);
                break;
            }
            if ((err =
                     ag_store_grow(res, (void **)&res->points, &cap, res->n, sizeof *res->points)))
                break;
            memset(&res->points[res->n], 0, sizeof *res->points);
            res->points[res->n++].complete = 1;
        }
        bucket_add(&res->points[res->n - 1], &p);
        if (++in_bucket == every) in_bucket = 0;
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "history", rc);
    sqlite3_reset(s);
    if (err) goto fail;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

int ag_store_scales(ag_store *st, const char *run, const char *format, ag_scale_list **out) {
    if (!st || !run || !out) return AG_EINVAL;
    *out = NULL;
    int64_t run_id = 0, fid = 0;
    int err, rc = SQLITE_DONE;
    if ((err = ag_store_run_id(st, run, &run_id)) || (err = ag_store_format_id(st, format, &fid)))
        return err;
    ag_scale_list *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    res->format = ag_arena_strdup(res, format ? format : DEFAULT_FORMAT);
    if (!res->format) {
        err = AG_ENOMEM;
        goto fail;
    }
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_SCALES);
    if (!s) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_int64(s, 2, fid);
    size_t cap = 0;
    /* Rows come by name, newest step first: keep the first row of each name. */
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *name = col_text(s, 0);
        if (res->n && strcmp(res->items[res->n - 1].tensor, name) == 0) continue;
        if ((err = ag_store_grow(res, (void **)&res->items, &cap, res->n, sizeof *res->items)))
            break;
        ag_scale_info *i = &res->items[res->n++];
        i->tensor = ag_arena_strdup(res, name);
        i->step = col_u64(s, 1);
        i->amax = sqlite3_column_double(s, 2);
        i->scale = sqlite3_column_double(s, 3);
        if (!i->tensor) {
            err = AG_ENOMEM;
            break;
        }
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "scales", rc);
    sqlite3_reset(s);
    if (err) goto fail;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

/* top: one tensor's sums over the window. */
int ag_rollup_fits_all(void *ctx, uint64_t rows) {
    (void)ctx, (void)rows;
    return 1;
}

int ag_rollup_sum_add(void *ctx, const ag_rollup_agg *b) {
    ag_rollup_agg *sum = ctx;
    sum->rows += b->rows;
    sum->stalled += b->stalled;
    sum->total += b->total;
    return AG_OK;
}

static int top_order(const void *a, const void *b) {
    const ag_top_entry *x = a, *y = b;
    if (x->stall_rate != y->stall_rate) return x->stall_rate > y->stall_rate ? -1 : 1;
    return strcmp(x->tensor, y->tensor);
}

static int top_q(ag_store *st, const char *run, const char *format, uint64_t window, size_t limit,
                 ag_top_list **out) {
    if (!st || !run || !out) return AG_EINVAL;
    *out = NULL;
    int64_t run_id = 0, fid = 0;
    int err, rc = SQLITE_DONE;
    if ((err = ag_store_run_id(st, run, &run_id)) || (err = ag_store_format_id(st, format, &fid)))
        return err;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_TOP_LAST_STEP);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, run_id);
    rc = sqlite3_step(s);
    uint64_t last = rc == SQLITE_ROW ? col_u64(s, 0) : 0;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW) return ag_store_fail(st, "top", rc);

    ag_top_list *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    res->format = ag_arena_strdup(res, format ? format : DEFAULT_FORMAT);
    res->to_step = last;
    res->from_step = (window == 0 || window > last) ? 0 : last - window + 1;
    if (!res->format) {
        err = AG_ENOMEM;
        goto fail;
    }
    size_t max = limit == 0                       ? DEFAULT_TOP_LIMIT
                 : limit > AG_STORE_TOP_LIMIT_MAX ? AG_STORE_TOP_LIMIT_MAX
                                                  : limit;
    if (!(s = ag_store_stmt(st, AG_ST_RUN_TENSOR_IDS))) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, run_id);
    size_t cap = 0;
    /* Each tensor summed from the coarsest rollups inside the window. */
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        ag_rollup_agg sum = {0};
        ag_rollup_visitor v = {.ctx = &sum, .fits = ag_rollup_fits_all, .add = ag_rollup_sum_add};
        if ((err = ag_rollup_walk(st, sqlite3_column_int64(s, 0), fid, res->from_step, res->to_step,
                                  0, &v)))
            break;
        if (sum.rows == 0) continue;
        if ((err = ag_store_grow(res, (void **)&res->items, &cap, res->n, sizeof *res->items)))
            break;
        ag_top_entry *e = &res->items[res->n++];
        e->tensor = ag_arena_strdup(res, col_text(s, 1));
        e->stalled = sum.stalled;
        e->total = sum.total;
        e->stall_rate = rate(e->stalled, e->total);
        e->steps = sum.rows;
        if (!e->tensor) {
            err = AG_ENOMEM;
            break;
        }
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "top", rc);
    sqlite3_reset(s);
    if (err) goto fail;
    if (res->n > 1) qsort(res->items, res->n, sizeof *res->items, top_order);
    if (res->n > max) res->n = max;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

/* ------------------------------------------------------------- heatmap */

typedef struct id_index {
    int64_t id;
    size_t index;
} id_index;

static int by_id(const void *a, const void *b) {
    const id_index *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Round a bucket width up so it is a multiple of a rollup tier width. */
static uint64_t nice_width(uint64_t w) {
    for (int k = AG_ROLLUP_TIERS - 1; k >= 0; k--) {
        uint64_t t = (uint64_t)ag_rollup_widths[k];
        if (w >= t) return (w + t - 1) / t * t;
    }
    return w ? w : 1;
}

/* The heatmap's cells from the raw rows of [start, last], read from the
 * result segments whole (tier 1 of a file of schema 11 on). */
static int heat_from_segments(ag_store *st, ag_store_heat *res, int64_t run_id, int64_t fid,
                              const id_index *ids, uint64_t start, uint64_t last) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_HEAT_SEGS);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_int64(s, 2, fid);
    sqlite3_bind_int64(s, 3, (int64_t)start);
    sqlite3_bind_int64(s, 4, (int64_t)last);
    int rc, err = AG_OK;
    while (!err && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        id_index key = {sqlite3_column_int64(s, 0), 0};
        const id_index *hit = bsearch(&key, ids, res->ntensors, sizeof *ids, by_id);
        if (!hit) continue;
        ag_seg_reader rd;
        ag_seg_reader_init(&rd, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2),
                           col_u64(s, 1));
        ag_store_result_row r;
        int more;
        while ((more = ag_seg_next(&rd, &r)) == 1 && r.step <= last) {
            if (r.step < start) continue;
            size_t cell = hit->index * res->nbuckets + (size_t)((r.step - start) / res->width);
            res->stalled[cell] += r.counts.stalled;
            res->total[cell] += r.counts.total;
            res->rows[cell]++;
        }
        if (more < 0)
            err = ag_store_failf(st, AG_ESTORE,
                                 "%s: heatmap: a results segment of tensor %lld is"
                                 " corrupt",
                                 st->path, (long long)key.id);
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "heatmap", rc);
    sqlite3_reset(s);
    return err;
}

static int heatmap_q(ag_store *st, const char *run, const char *format, size_t buckets,
                     ag_store_heat **out) {
    if (!st || !run || !out) return AG_EINVAL;
    *out = NULL;
    if (buckets == 0 || buckets > AG_STORE_HEATMAP_MAX_BUCKETS)
        return ag_store_failf(st, AG_ERANGE, "buckets must be 1..%u", AG_STORE_HEATMAP_MAX_BUCKETS);
    int64_t run_id = 0, fid = 0;
    int err, rc = SQLITE_DONE;
    if ((err = ag_store_run_id(st, run, &run_id)) || (err = ag_store_format_id(st, format, &fid)))
        return err;
    ag_store_heat *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    id_index *ids = NULL;
    res->run = ag_arena_strdup(res, run);
    res->format = ag_arena_strdup(res, format ? format : DEFAULT_FORMAT);
    if (!res->run || !res->format) {
        err = AG_ENOMEM;
        goto fail;
    }
    /* The run's span: the first step of its evaluated tensors to its last. */
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_RUN_SPAN);
    if (!s) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, run_id);
    rc = sqlite3_step(s);
    int empty = rc != SQLITE_ROW || sqlite3_column_type(s, 0) == SQLITE_NULL;
    uint64_t first = rc == SQLITE_ROW ? col_u64(s, 0) : 0,
             last = rc == SQLITE_ROW ? col_u64(s, 1) : 0;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        err = ag_store_fail(st, "heatmap", rc);
        goto fail;
    }
    if (empty || last < first) {
        *out = res;
        return AG_OK;
    }
    uint64_t span = last - first + 1;
    uint64_t w = nice_width(span / buckets + (span % buckets != 0));
    /* Buckets finer than every tier read raw rows: where retention removed
     * some in the span, as fine as the finest tier instead. */
    if (st->has_rollups && w < (uint64_t)ag_rollup_widths[0]) {
        if (!(s = ag_store_stmt(st, AG_ST_RUN_HORIZON))) {
            err = AG_ESTORE;
            goto fail;
        }
        sqlite3_bind_int64(s, 1, run_id);
        rc = sqlite3_step(s);
        uint64_t horizon = rc == SQLITE_ROW ? col_u64(s, 0) : 0;
        sqlite3_reset(s);
        if (rc != SQLITE_ROW) {
            err = ag_store_fail(st, "heatmap", rc);
            goto fail;
        }
        if (horizon > first) w = (uint64_t)ag_rollup_widths[0];
    }
    uint64_t start = first / w * w;
    while ((last - start) / w + 1 > buckets) {
        w = nice_width(w + 1);
        start = first / w * w;
    }
    res->width = w;
    res->from_step = start;
    res->to_step = last;
    res->nbuckets = (size_t)((last - start) / w + 1);
    /* The tensors, by name, and their ids for the rows. */
    if (!(s = ag_store_stmt(st, AG_ST_RUN_TENSOR_IDS))) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, run_id);
    size_t cap = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_int64(s, 2) == 0) continue; /* statistics only */
        if ((err = ag_store_grow(res, (void **)&res->tensors, &cap, res->ntensors,
                                 sizeof *res->tensors)))
            break;
        id_index *more = realloc(ids, cap * sizeof *ids);
        if (!more) {
            err = AG_ENOMEM;
            break;
        }
        ids = more;
        ids[res->ntensors] = (id_index){sqlite3_column_int64(s, 0), res->ntensors};
        if (!(res->tensors[res->ntensors++] = ag_arena_strdup(res, col_text(s, 1)))) {
            err = AG_ENOMEM;
            break;
        }
    }
    if (!err && rc != SQLITE_DONE) err = ag_store_fail(st, "heatmap", rc);
    sqlite3_reset(s);
    if (err) goto fail;
    if (res->ntensors && res->nbuckets > AG_STORE_HEATMAP_MAX_CELLS / res->ntensors) {
        err = ag_store_failf(st, AG_ETOOBIG, "heatmap of %zu tensors x %zu buckets: too many cells",
                             res->ntensors, res->nbuckets);
        goto fail;
    }
    size_t cells = res->ntensors * res->nbuckets;
    res->stalled = ag_arena_alloc(res, cells * sizeof *res->stalled + 1);
    res->total = ag_arena_alloc(res, cells * sizeof *res->total + 1);
    res->rows = ag_arena_alloc(res, cells * sizeof *res->rows + 1);
    if (!res->stalled || !res->total || !res->rows) {
        err = AG_ENOMEM;
        goto fail;
    }
    memset(res->stalled, 0, cells * sizeof *res->stalled);
    memset(res->total, 0, cells * sizeof *res->total);
    memset(res->rows, 0, cells * sizeof *res->rows);
    if (res->ntensors) qsort(ids, res->ntensors, sizeof *ids, by_id);
    /* The coarsest tier whose buckets nest in the heatmap's (raw rows when
     * none does), read in one pass over the run's tensors. */
    uint64_t tier = 1;
    for (int k = 0; st->has_rollups && k < AG_ROLLUP_TIERS; k++)
        if (w % (uint64_t)ag_rollup_widths[k] == 0) tier = (uint64_t)ag_rollup_widths[k];
    if (tier == 1 && st->has_segs) {
        if ((err = heat_from_segments(st, res, run_id, fid, ids, start, last))) goto fail;
        free(ids);
        *out = res;
        return AG_OK;
    }
    if (!(s = ag_store_stmt(st, tier == 1 ? AG_ST_HEAT_RAW : AG_ST_HEAT_TIER))) {
        err = AG_ESTORE;
        goto fail;
    }
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_int64(s, 2, fid);
    sqlite3_bind_int64(s, 3, (int64_t)tier);
    sqlite3_bind_int64(s, 4, (int64_t)(start / tier));
    sqlite3_bind_int64(s, 5, (int64_t)(last / tier));
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        id_index key = {sqlite3_column_int64(s, 0), 0};
        const id_index *hit = bsearch(&key, ids, res->ntensors, sizeof *ids, by_id);
        if (!hit) continue;
        uint64_t step = col_u64(s, 1) * tier;
        if (step < start) continue;
        size_t b = (size_t)((step - start) / w);
        if (b >= res->nbuckets) continue;
        size_t cell = hit->index * res->nbuckets + b;
        res->stalled[cell] += col_u64(s, 2);
        res->total[cell] += col_u64(s, 3);
        res->rows[cell] += col_u64(s, 4);
    }
    if (rc != SQLITE_DONE) err = ag_store_fail(st, "heatmap", rc);
    sqlite3_reset(s);
    if (err) goto fail;
    free(ids);
    *out = res;
    return AG_OK;
fail:
    free(ids);
    ag_free(res);
    return err;
}

static int counter(ag_store *st, const char *name, uint64_t *v) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_COUNTER);
    if (!s) return AG_ESTORE;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), err = AG_OK;
    *v = rc == SQLITE_ROW ? col_u64(s, 0) : 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) err = ag_store_fail(st, "counter", rc);
    sqlite3_reset(s);
    return err;
}

/* The schema version that added daemon_settings (004_daemon_settings.sql). */
#define SCHEMA_DAEMON_SETTINGS 4

/* daemon_settings[name] copied into res's arena as *value; NULL when the file
 * has no such setting or predates the table (a read-only connection cannot
 * migrate an older file). */
static int daemon_setting(ag_store *st, void *res, const char *name, const char **value) {
    *value = NULL;
    int version = 0, err = ag_store_user_version(st, &version);
    if (err || version < SCHEMA_DAEMON_SETTINGS) return err;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_DAEMON_SETTING);
    if (!s) return AG_ESTORE;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *value = ag_arena_strdup(res, col_text(s, 0));
        if (!*value) err = AG_ENOMEM;
    } else if (rc != SQLITE_DONE) {
        err = ag_store_fail(st, "daemon setting", rc);
    }
    sqlite3_reset(s);
    return err;
}

/* The scale rule the daemon recorded (history_len, amax_mode, scale_mode,
 * margin, scale_min); left 0 / NULL where the file does not say. */
static int scale_rule(ag_store *st, ag_status *res) {
    const char *len = NULL, *margin = NULL, *scale_min = NULL;
    int err;
    if ((err = daemon_setting(st, res, "history_len", &len)) ||
        (err = daemon_setting(st, res, "amax_mode", &res->amax_mode)) ||
        (err = daemon_setting(st, res, "scale_mode", &res->scale_mode)) ||
        (err = daemon_setting(st, res, "margin", &margin)) ||
        (err = daemon_setting(st, res, "scale_min", &scale_min)))
        return err;
    if (len) res->history_len = strtoull(len, NULL, 10);
    if (margin) res->margin = strtod(margin, NULL);
    if (scale_min) res->scale_min = strtod(scale_min, NULL);
    if (!isfinite(res->margin)) res->margin = 0;
    if (!isfinite(res->scale_min) || res->scale_min < 0) res->scale_min = 0;
    return AG_OK;
}

/* The formats the file knows, comma-separated, in id order (arena of res). */
static int known_formats(ag_store *st, void *res, const char **out) {
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_FORMATS);
    if (!s) return AG_ESTORE;
    size_t len = 0, cap = 64;
    char *fmts = ag_arena_alloc(res, cap);
    int rc = SQLITE_DONE, err = AG_OK;
    if (fmts) fmts[0] = '\0';
    while (fmts && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *name = col_text(s, 1);
        size_t add = strlen(name) + 1;
        if (len + add + 1 > cap) {
            char *bigger = ag_arena_grow(res, fmts, cap, (len + add + 1) * 2);
            if (!bigger) {
                fmts = NULL;
                break;
            }
            fmts = bigger;
            cap = (len + add + 1) * 2;
        }
        if (len) fmts[len++] = ',';
        memcpy(fmts + len, name, add - 1);
        len += add - 1;
        fmts[len] = '\0';
    }
    if (!fmts)
        err = AG_ENOMEM;
    else if (rc != SQLITE_DONE)
        err = ag_store_fail(st, "formats", rc);
    sqlite3_reset(s);
    *out = fmts;
    return err;
}

/* The file's canonical absolute path, so the daemon (which may have been
 * given a relative path in another folder) and a reader name it alike. */
static const char *canonical_path(void *res, const char *path) {
    char *real = realpath(path, NULL);
    const char *copy = ag_arena_strdup(res, real ? real : path);
    free(real);
    return copy;
}

int ag_store_default_formats(ag_store *st, void *root, const char **out) {
    int err = daemon_setting(st, root, "formats", out);
    if (!err && !*out) err = known_formats(st, root, out);
    return err;
}

int ag_store_status(ag_store *st, ag_status **out) {
    if (!st || !out) return AG_EINVAL;
    *out = NULL;
    int err = AG_OK, rc;
    ag_status *res = ag_arena_new(sizeof *res);
    if (!res) return AG_ENOMEM;
    if (!(res->db_path = canonical_path(res, st->path))) {
        err = AG_ENOMEM;
        goto fail;
    }
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_STATUS_COUNTS);
    if (!s) {
        err = AG_ESTORE;
        goto fail;
    }
    if ((rc = sqlite3_step(s)) != SQLITE_ROW) {
        err = ag_store_fail(st, "status", rc);
        sqlite3_reset(s);
        goto fail;
    }
    res->runs = col_u64(s, 0);
    res->tensors = col_u64(s, 1);
    res->messages = col_u64(s, 2);
    res->dropped = col_u64(s, 3);
    sqlite3_reset(s);
    if ((err = counter(st, "bytes", &res->bytes)) ||
        (err = counter(st, "rejected", &res->rejected)) ||
        (err = counter(st, "rows_written", &res->rows_written)) ||
        (err = counter(st, "discarded", &res->discarded)) ||
        (err = daemon_setting(st, res, "version", &res->version)) ||
        (err = daemon_setting(st, res, "formats", &res->formats)))
        goto fail;
    if (!res->formats && (err = known_formats(st, res, &res->formats))) goto fail;
    if ((err = scale_rule(st, res))) goto fail;
    *out = res;
    return AG_OK;
fail:
    ag_free(res);
    return err;
}

int ag_store_delivery(ag_store *st, uint64_t client_id, uint64_t *messages, uint64_t *last_seq) {
    if (!st || !messages || !last_seq) return AG_EINVAL;
    *messages = *last_seq = 0;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_DELIVERY);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, (int64_t)client_id);
    int rc = sqlite3_step(s), err = AG_OK;
    if (rc == SQLITE_ROW) {
        *messages = col_u64(s, 0);
        *last_seq = col_u64(s, 1);
    } else if (rc != SQLITE_DONE) {
        err = ag_store_fail(st, "delivery", rc);
    }
    sqlite3_reset(s);
    return err;
}

int ag_store_client_run(ag_store *st, uint64_t client_id, char *run, size_t run_cap, char *launch,
                        size_t launch_cap) {
    if (!st || !run || !launch || !run_cap || !launch_cap) return AG_EINVAL;
    run[0] = launch[0] = '\0';
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_CLIENT_RUN);
    if (!s) return AG_ESTORE;
    sqlite3_bind_int64(s, 1, (int64_t)client_id);
    int rc = sqlite3_step(s), err = AG_OK;
    if (rc == SQLITE_ROW) {
        const char *name = col_text(s, 0), *l = col_text(s, 1);
        size_t n = strlen(name), ln = strlen(l);
        if (n >= run_cap || ln >= launch_cap) {
            err = ag_store_failf(st, AG_ERANGE, "client %016llx: a name is too long",
                                 (unsigned long long)client_id);
        } else {
            memcpy(run, name, n + 1);
            memcpy(launch, l, ln + 1);
        }
    } else if (rc == SQLITE_DONE) {
        err = ag_store_failf(st, AG_ENOTFOUND, "no run start of client %016llx filed yet",
                             (unsigned long long)client_id);
    } else {
        err = ag_store_fail(st, "client run", rc);
    }
    sqlite3_reset(s);
    return err;
}

/* ------------------------------------------------ one read transaction
 * A query of many statements runs in one read transaction (one snapshot,
 * one lock, instead of one per statement), unless the connection is inside
 * a transaction of its own. */
int ag_store_read_begin(ag_store *st) {
    if (!st || st->in_txn || !sqlite3_get_autocommit(st->db)) return 0;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_BEGIN_READ);
    return s && sqlite3_step(s) == SQLITE_DONE && (sqlite3_reset(s), 1);
}

void ag_store_read_end(ag_store *st, int began) {
    if (!began) return;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_COMMIT);
    if (s) {
        sqlite3_step(s);
        sqlite3_reset(s);
    }
}

int ag_store_history(ag_store *st, const ag_history_query *q, ag_history **out) {
    int began = ag_store_read_begin(st), err = history_q(st, q, out);
    ag_store_read_end(st, began);
    return err;
}

int ag_store_top(ag_store *st, const char *run, const char *format, uint64_t window, size_t limit,
                 ag_top_list **out) {
    int began = ag_store_read_begin(st), err = top_q(st, run, format, window, limit, out);
    ag_store_read_end(st, began);
    return err;
}

int ag_store_heatmap(ag_store *st, const char *run, const char *format, size_t buckets,
                     ag_store_heat **out) {
    int began = ag_store_read_begin(st), err = heatmap_q(st, run, format, buckets, out);
    ag_store_read_end(st, began);
    return err;
}
