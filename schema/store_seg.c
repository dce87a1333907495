/*
 * store_seg.c - the results rows of schema 11, packed in segments.
 *
 * Table result_segs holds one row per tensor, format and run of steps: the
 * points (the columns a results row had, less the tensor and format) one
 * after the other in a blob, each a step delta and a flags byte, varints for
 * the counts and 4 or 8 bytes for each real. A tensor's segments of one
 * format cover disjoint step ranges; a segment grows to AG_SEG_BYTES.
 * The writer appends a batch's new points to the newest segment in one
 * rewrite (what made 100,000 snapshots a second reachable: docs/store.md),
 * and edits a segment where a step is stored again or arrives late.
 *
 * SQL sees `results` with the columns it always had through an eponymous
 * virtual table over the segments: it answers range scans on tensor_id,
 * format_id and step from the segments' index, in (tensor, format, step)
 * order, and takes INSERT, UPDATE and DELETE (raw rows only: the rollups
 * are the store's to maintain). ag_store_sql_register puts it on any
 * connection (the tests' own, the sqlite3 shell through the loadable
 * extension).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "schema/store_seg.h"
#ifdef AG_SQLITE_EXTENSION
/* built as the loadable extension altgrad_sqlite (the sqlite3 shell's
 * `.load`): every sqlite3_* call goes through the shell's routines */
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1
#endif

enum {
    PF_FLIPS_NULL = 1,
    PF_MSE = 2,
    PF_SQNR = 4,
    PF_DEVICE = 8,
    PF_INCOMPLETE = 16,
    PF_RANKS = 32,   /* ranks is not 1: a varint follows */
    PF_AMAX32 = 64,  /* amax is exactly a float: 4 bytes, else 8 */
    PF_SCALE32 = 128 /* likewise the scale */
};

/* ------------------------------------------------------------- codec */

static size_t put_varint(unsigned char *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static int get_varint(ag_seg_reader *rd, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (rd->p >= rd->end) return -1;
        unsigned char b = *rd->p++;
        if (shift == 63 && b > 1) return -1; /* past 64 bits */
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static size_t put_f64(unsigned char *p, double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
    return 8;
}

static size_t put_f32(unsigned char *p, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
    return 4;
}

static int get_real(ag_seg_reader *rd, int f32, double *d) {
    size_t k = f32 ? 4 : 8;
    if ((size_t)(rd->end - rd->p) < k) return -1;
    uint64_t u = 0;
    for (size_t i = 0; i < k; i++) u |= (uint64_t)rd->p[i] << (8 * i);
    rd->p += k;
    if (f32) {
        uint32_t u32 = (uint32_t)u;
        float f;
        memcpy(&f, &u32, sizeof f);
        *d = (double)f;
    } else {
        memcpy(d, &u, sizeof *d);
    }
    return 0;
}

static int fits_f32(double d) { return (double)(float)d == d; }

size_t ag_seg_encode(unsigned char *out, const ag_store_result_row *r, uint64_t prev_step) {
    double amax = isfinite(r->amax) ? r->amax : 0.0, scale = isfinite(r->scale) ? r->scale : 0.0;
    int mse = r->has_qerr && isfinite(r->mse), sqnr = r->has_qerr && isfinite(r->sqnr_db);
    uint64_t ranks = r->ranks ? r->ranks : 1;
    unsigned flags = (r->flips_unknown ? PF_FLIPS_NULL : 0) | (mse ? PF_MSE : 0) |
                     (sqnr ? PF_SQNR : 0) | (r->source ? PF_DEVICE : 0) |
                     (r->incomplete ? PF_INCOMPLETE : 0) | (ranks != 1 ? PF_RANKS : 0) |
                     (fits_f32(amax) ? PF_AMAX32 : 0) | (fits_f32(scale) ? PF_SCALE32 : 0);
    size_t n = put_varint(out, r->step - prev_step);
    out[n++] = (unsigned char)flags;
    n += put_varint(out + n, r->counts.stalled);
    n += put_varint(out + n, r->counts.total);
    if (!r->flips_unknown) n += put_varint(out + n, r->flips);
    n += put_varint(out + n, r->counts.overflow);
    n += put_varint(out + n, r->counts.underflow);
    n += put_varint(out + n, r->counts.nonfinite);
    if (flags & PF_RANKS) n += put_varint(out + n, ranks);
    n += flags & PF_AMAX32 ? put_f32(out + n, (float)amax) : put_f64(out + n, amax);
    n += flags & PF_SCALE32 ? put_f32(out + n, (float)scale) : put_f64(out + n, scale);
    if (mse) n += put_f64(out + n, r->mse);
    if (sqnr) n += put_f64(out + n, r->sqnr_db);
    return n;
}

void ag_seg_reader_init(ag_seg_reader *rd, const void *data, size_t len, uint64_t first_step) {
    rd->p = data;
    rd->end = rd->p ? rd->p + len : NULL;
    rd->step = first_step;
    rd->started = 0;
}

int ag_seg_next(ag_seg_reader *rd, ag_store_result_row *r) {
    if (!rd->p || rd->p >= rd->end) return 0;
    uint64_t delta, flips = 0, ranks = 1;
    if (get_varint(rd, &delta) || rd->p >= rd->end) return -1;
    if ((rd->started && delta == 0) || delta > (uint64_t)INT64_MAX - rd->step) return -1;
    unsigned flags = *rd->p++;
    ag_stall_counts c;
    if (get_varint(rd, &c.stalled) || get_varint(rd, &c.total) ||
        (!(flags & PF_FLIPS_NULL) && get_varint(rd, &flips)) || get_varint(rd, &c.overflow) ||
        get_varint(rd, &c.underflow) || get_varint(rd, &c.nonfinite) ||
        ((flags & PF_RANKS) && get_varint(rd, &ranks)))
        return -1;
    double amax, scale, mse = NAN, sqnr = NAN;
    if (get_real(rd, flags & PF_AMAX32, &amax) || get_real(rd, flags & PF_SCALE32, &scale) ||
        ((flags & PF_MSE) && get_real(rd, 0, &mse)) ||
        ((flags & PF_SQNR) && get_real(rd, 0, &sqnr)))
        return -1;
    /* only what ag_seg_encode writes: finite reals, ranks flagged only past 1 */
    if (!isfinite(amax) || !isfinite(scale) || ((flags & PF_MSE) && !isfinite(mse)) ||
        ((flags & PF_SQNR) && !isfinite(sqnr)) || ((flags & PF_RANKS) && ranks < 2))
        return -1;
    rd->step += delta;
    rd->started = 1;
    r->step = rd->step;
    r->counts = c;
    r->flips = flips;
    r->flips_unknown = (flags & PF_FLIPS_NULL) != 0;
    r->amax = amax;
    r->scale = scale;
    r->source = (flags & PF_DEVICE) != 0;
    r->incomplete = (flags & PF_INCOMPLETE) != 0;
    r->ranks = ranks;
    r->has_qerr = (flags & (PF_MSE | PF_SQNR)) != 0;
    r->mse = mse;
    r->sqnr_db = sqnr;
    return 1;
}

/* -------------------------------------------------------- statements */

#define SEG_COLS "SELECT id,first_step,last_step,n,data,tensor_id,format_id FROM result_segs"

static const char *const seg_sql[AG_SEG_STMT_COUNT] = {
    [AG_SEG_LAST] =
        SEG_COLS " WHERE tensor_id=?1 AND format_id=?2 ORDER BY first_step DESC LIMIT 1",
    [AG_SEG_AT] = SEG_COLS " WHERE tensor_id=?1 AND format_id=?2 AND first_step<=?3"
                           " ORDER BY first_step DESC LIMIT 1",
    [AG_SEG_FIRST] = SEG_COLS " WHERE tensor_id=?1 AND format_id=?2 ORDER BY first_step LIMIT 1",
    [AG_SEG_BY_ID] = SEG_COLS " WHERE id=?1",
    [AG_SEG_INSERT] = ("INSERT INTO result_segs(tensor_id,format_id,first_step,last_step,n,"
                       "data) VALUES(?1,?2,?3,?4,?5,?6)"),
    [AG_SEG_UPDATE] = "UPDATE result_segs SET first_step=?2,last_step=?3,n=?4,data=?5 WHERE id=?1",
    [AG_SEG_DELETE] = "DELETE FROM result_segs WHERE id=?1",
};

static sqlite3_stmt *seg_stmt(ag_seg_ctx *c, ag_seg_stmt_id id, int *rc) {
    sqlite3_stmt *s = c->stmts[id];
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return s;
    }
    *rc = sqlite3_prepare_v3(c->db, seg_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL);
    if (*rc != SQLITE_OK) return NULL;
    return c->stmts[id] = s;
}

static void seg_free(ag_seg *g) {
    free(g->data);
    memset(g, 0, sizeof *g);
}

void ag_seg_ctx_close(ag_seg_ctx *c) {
    for (int i = 0; i < AG_SEG_STMT_COUNT; i++) {
        sqlite3_finalize(c->stmts[i]);
        c->stmts[i] = NULL;
    }
}

static int seg_reserve(ag_seg *g, size_t more) {
    if (g->len + more <= g->cap) return SQLITE_OK;
    size_t cap = g->cap ? g->cap : 512;
    while (cap < g->len + more) cap *= 2;
    unsigned char *d = realloc(g->data, cap);
    if (!d) return SQLITE_NOMEM;
    g->data = d;
    g->cap = cap;
    return SQLITE_OK;
}

/* Copy the current row of a segment select (SEG_COLS) into *g. */
static int seg_row(sqlite3_stmt *s, ag_seg *g) {
    g->id = sqlite3_column_int64(s, 0);
    g->first_step = (uint64_t)sqlite3_column_int64(s, 1);
    g->last_step = (uint64_t)sqlite3_column_int64(s, 2);
    g->n = (uint64_t)sqlite3_column_int64(s, 3);
    g->tensor_id = sqlite3_column_int64(s, 5);
    g->format_id = sqlite3_column_int64(s, 6);
    const void *blob = sqlite3_column_blob(s, 4);
    size_t len = (size_t)sqlite3_column_bytes(s, 4);
    g->len = 0;
    int rc = seg_reserve(g, len ? len : 1);
    if (rc != SQLITE_OK) return rc;
    if (len) memcpy(g->data, blob, len);
    g->len = len;
    return SQLITE_OK;
}

/* Step a segment select (bound by the caller): *found 1 with *g read. */
static int seg_read(sqlite3_stmt *s, ag_seg *g, int *found) {
    *found = 0;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && (rc = seg_row(s, g)) == SQLITE_OK) *found = 1;
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int seg_lookup(ag_seg_ctx *c, ag_seg_stmt_id id, int64_t a, int64_t b, int64_t step,
                      ag_seg *g, int *found) {
    int rc = SQLITE_OK;
    sqlite3_stmt *s = seg_stmt(c, id, &rc);
    if (!s) return rc;
    sqlite3_bind_int64(s, 1, a);
    if (id != AG_SEG_BY_ID) sqlite3_bind_int64(s, 2, b);
    if (id == AG_SEG_AT) sqlite3_bind_int64(s, 3, step);
    return seg_read(s, g, found);
}

/* Write g back: insert (id 0), update, or delete (no points). */
static int seg_write(ag_seg_ctx *c, ag_seg *g) {
    int rc = SQLITE_OK;
    sqlite3_stmt *s;
    if (g->n == 0) {
        if (!g->id) return SQLITE_OK;
        if (!(s = seg_stmt(c, AG_SEG_DELETE, &rc))) return rc;
        sqlite3_bind_int64(s, 1, g->id);
    } else if (!g->id) {
        if (!(s = seg_stmt(c, AG_SEG_INSERT, &rc))) return rc;
        sqlite3_bind_int64(s, 1, g->tensor_id);
        sqlite3_bind_int64(s, 2, g->format_id);
        sqlite3_bind_int64(s, 3, (int64_t)g->first_step);
        sqlite3_bind_int64(s, 4, (int64_t)g->last_step);
        sqlite3_bind_int64(s, 5, (int64_t)g->n);
        sqlite3_bind_blob(s, 6, g->data, (int)g->len, SQLITE_STATIC);
    } else {
        if (!(s = seg_stmt(c, AG_SEG_UPDATE, &rc))) return rc;
        sqlite3_bind_int64(s, 1, g->id);
        sqlite3_bind_int64(s, 2, (int64_t)g->first_step);
        sqlite3_bind_int64(s, 3, (int64_t)g->last_step);
        sqlite3_bind_int64(s, 4, (int64_t)g->n);
        sqlite3_bind_blob(s, 5, g->data, (int)g->len, SQLITE_STATIC);
    }
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return rc;
    if (g->n && !g->id) g->id = sqlite3_last_insert_rowid(c->db);
    return SQLITE_OK;
}

/* Whether a point encoded as len bytes at step may go at the end of g. */
static int seg_takes(const ag_seg *g, size_t len, uint64_t step) {
    return g->n == 0 || (g->len + len <= AG_SEG_BYTES && step - g->first_step < AG_SEG_SPAN);
}

int ag_seg_last_step(ag_seg_ctx *c, int64_t tid, int64_t fid, uint64_t *step, int *has) {
    ag_seg g = {0};
    int rc = seg_lookup(c, AG_SEG_LAST, tid, fid, 0, &g, has);
    *step = *has ? g.last_step : 0;
    seg_free(&g);
    return rc;
}

int ag_seg_append(ag_seg_ctx *c, const void *rows, size_t stride, size_t n) {
    if (n == 0) return SQLITE_OK;
    const ag_store_result_row *r0 = rows;
    ag_seg g = {0};
    int found = 0, rc = seg_lookup(c, AG_SEG_LAST, r0->tensor_id, r0->format_id, 0, &g, &found);
    if (rc != SQLITE_OK) goto out;
    if (!found) g = (ag_seg){.tensor_id = r0->tensor_id, .format_id = r0->format_id};
    unsigned char pt[AG_SEG_POINT_MAX];
    for (size_t i = 0; i < n; i++) {
        const ag_store_result_row *r = (const void *)((const char *)rows + i * stride);
        if (g.n && r->step <= g.last_step) {
            rc = SQLITE_MISUSE; /* not past every stored step */
            goto out;
        }
        size_t len = ag_seg_encode(pt, r, g.n ? g.last_step : r->step);
        if (!seg_takes(&g, len, r->step)) {
            if ((rc = seg_write(c, &g)) != SQLITE_OK) goto out;
            g.id = 0;
            g.n = 0;
            g.len = 0;
            len = ag_seg_encode(pt, r, r->step);
        }
        if (g.n == 0) g.first_step = r->step;
        if ((rc = seg_reserve(&g, len)) != SQLITE_OK) goto out;
        memcpy(g.data + g.len, pt, len);
        g.len += len;
        g.n++;
        g.last_step = r->step;
    }
    rc = seg_write(c, &g);
out:
    seg_free(&g);
    return rc;
}

/* The points of g, decoded (ids from g): *out malloc'd with room for one
 * more. */
static int seg_points(const ag_seg *g, ag_store_result_row **out, size_t *n) {
    /* a point takes at least 12 bytes: a count past the blob's is corrupt
     * (and must not size the array) */
    if (g->n > g->len / 12 + 1) return SQLITE_CORRUPT;
    ag_store_result_row *p = malloc((size_t)(g->n + 1) * sizeof *p);
    if (!p) return SQLITE_NOMEM;
    ag_seg_reader rd;
    ag_seg_reader_init(&rd, g->data, g->len, g->first_step);
    size_t k = 0;
    int got = 0;
    while (k <= g->n) {
        p[k] = (ag_store_result_row){.tensor_id = g->tensor_id, .format_id = g->format_id};
        if ((got = ag_seg_next(&rd, &p[k])) != 1) break;
        k++;
    }
    if (got != 0 || k != g->n) {
        free(p);
        return SQLITE_CORRUPT;
    }
    *out = p;
    *n = k;
    return SQLITE_OK;
}

/* Write pts[0..n) (rising steps) as g (kept id and first_step bound) and as
 * many new segments after it as the caps need. */
static int seg_rewrite(ag_seg_ctx *c, ag_seg *g, const ag_store_result_row *pts, size_t n) {
    unsigned char pt[AG_SEG_POINT_MAX];
    g->n = 0;
    g->len = 0;
    if (n && pts[0].step < g->first_step) g->first_step = pts[0].step;
    int rc;
    for (size_t i = 0; i < n; i++) {
        size_t len = ag_seg_encode(pt, &pts[i], g->n ? g->last_step : g->first_step);
        if (!seg_takes(g, len, pts[i].step)) {
            if ((rc = seg_write(c, g)) != SQLITE_OK) return rc;
            g->id = 0;
            g->n = 0;
            g->len = 0;
            g->first_step = pts[i].step;
            len = ag_seg_encode(pt, &pts[i], pts[i].step);
        }
        if ((rc = seg_reserve(g, len)) != SQLITE_OK) return rc;
        memcpy(g->data + g->len, pt, len);
        g->len += len;
        g->n++;
        g->last_step = pts[i].step;
    }
    return seg_write(c, g);
}

int ag_seg_put(ag_seg_ctx *c, const ag_store_result_row *r, int replace, int *existed,
               ag_store_result_row *old) {
    *existed = 0;
    ag_seg g = {0};
    ag_store_result_row *pts = NULL;
    size_t n = 0;
    int found = 0,
        rc = seg_lookup(c, AG_SEG_AT, r->tensor_id, r->format_id, (int64_t)r->step, &g, &found);
    if (rc == SQLITE_OK && !found)
        rc = seg_lookup(c, AG_SEG_FIRST, r->tensor_id, r->format_id, 0, &g, &found);
    if (rc != SQLITE_OK) goto out;
    if (!found) {
        g = (ag_seg){.tensor_id = r->tensor_id, .format_id = r->format_id, .first_step = r->step};
        rc = seg_rewrite(c, &g, r, 1);
        goto out;
    }
    if ((rc = seg_points(&g, &pts, &n)) != SQLITE_OK) goto out;
    size_t k = 0;
    while (k < n && pts[k].step < r->step) k++;
    if (k < n && pts[k].step == r->step) {
        if (!replace) {
            rc = SQLITE_CONSTRAINT;
            goto out;
        }
        *existed = 1;
        if (old) *old = pts[k];
    } else {
        memmove(pts + k + 1, pts + k, (n - k) * sizeof *pts);
        n++;
    }
    pts[k] = *r;
    rc = seg_rewrite(c, &g, pts, n);
out:
    free(pts);
    seg_free(&g);
    return rc;
}

/* Remove the point of step from segment id (the virtual table's DELETE). */
static int seg_remove(ag_seg_ctx *c, int64_t id, uint64_t off) {
    ag_seg g = {0};
    ag_store_result_row *pts = NULL;
    size_t n = 0;
    int found = 0, rc = seg_lookup(c, AG_SEG_BY_ID, id, 0, 0, &g, &found);
    if (rc != SQLITE_OK || !found) goto out;
    if ((rc = seg_points(&g, &pts, &n)) != SQLITE_OK) goto out;
    uint64_t step = g.first_step + off;
    size_t k = 0;
    while (k < n && pts[k].step != step) k++;
    if (k == n) goto out;
    memmove(pts + k, pts + k + 1, (n - k - 1) * sizeof *pts);
    n--;
    /* first_step stays (the rowids of the other points are offsets from it) */
    rc = seg_rewrite(c, &g, pts, n);
out:
    free(pts);
    seg_free(&g);
    return rc;
}

int ag_seg_prune(ag_seg_ctx *c, int64_t tid, uint64_t cut, uint64_t *removed) {
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(c->db,
                                "SELECT coalesce(sum(n),0) FROM result_segs WHERE tensor_id=?1"
                                " AND last_step<?2",
                                -1, &s, NULL);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, (int64_t)cut);
    if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        *removed += (uint64_t)sqlite3_column_int64(s, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_OK) return rc;
    if ((rc = sqlite3_prepare_v2(c->db,
                                 "DELETE FROM result_segs WHERE tensor_id=?1 AND last_step<?2", -1,
                                 &s, NULL)) != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, (int64_t)cut);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return rc;
    /* at most one segment per format straddles the cut: read them, then
     * rewrite each without its points below it */
    if ((rc = sqlite3_prepare_v2(c->db,
                                 SEG_COLS " WHERE tensor_id=?1 AND first_step<?2 AND last_step>=?2",
                                 -1, &s, NULL)) != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(s, 1, tid);
    sqlite3_bind_int64(s, 2, (int64_t)cut);
    ag_seg *segs = NULL;
    size_t ns = 0;
    while (rc == SQLITE_OK) {
        int step = sqlite3_step(s);
        if (step != SQLITE_ROW) {
            rc = step == SQLITE_DONE ? SQLITE_OK : step;
            break;
        }
        ag_seg *more = realloc(segs, (ns + 1) * sizeof *segs);
        if (!more) {
            rc = SQLITE_NOMEM;
            break;
        }
        segs = more;
        segs[ns] = (ag_seg){0};
        rc = seg_row(s, &segs[ns]);
        ns++; /* freed below even when its copy failed */
    }
    sqlite3_finalize(s);
    for (size_t i = 0; i < ns; i++) {
        ag_store_result_row *pts = NULL;
        size_t n = 0, k = 0;
        if (rc == SQLITE_OK && (rc = seg_points(&segs[i], &pts, &n)) == SQLITE_OK) {
            while (k < n && pts[k].step < cut) k++;
            *removed += k;
            segs[i].first_step = cut;
            rc = seg_rewrite(c, &segs[i], pts + k, n - k);
        }
        free(pts);
        seg_free(&segs[i]);
    }
    free(segs);
    return rc;
}

/* ------------------------------------------------- the results table */

enum {
    COL_TENSOR,
    COL_FORMAT,
    COL_STEP,
    COL_STALLED,
    COL_TOTAL,
    COL_FLIPS,
    COL_OVERFLOW,
    COL_UNDERFLOW,
    COL_NONFINITE,
    COL_AMAX,
    COL_SCALE,
    COL_SOURCE,
    COL_RANKS,
    COL_COMPLETE,
    COL_MSE,
    COL_SQNR,
    COL_COUNT
};

/* idxNum bits: which constraints xFilter's arguments hold, in this order */
enum {
    IX_TENSOR = 1,
    IX_FORMAT = 2,
    IX_STEP_EQ = 4,
    IX_LO = 8,
    IX_LO_GT = 16,
    IX_HI = 32,
    IX_HI_LT = 64
};

enum { PLAN_TF, PLAN_T, PLAN_ALL, PLAN_COUNT };

#define SCAN_COLS "SELECT id,first_step,data,tensor_id,format_id FROM result_segs"
static const char *const scan_sql[PLAN_COUNT] = {
    [PLAN_TF] = SCAN_COLS " WHERE tensor_id=?1 AND format_id=?2 AND first_step>=coalesce((SELECT"
                          " max(first_step) FROM result_segs WHERE tensor_id=?1 AND format_id=?2"
                          " AND first_step<=?3),?3) AND first_step<=?4 ORDER BY first_step",
    [PLAN_T] = SCAN_COLS " WHERE tensor_id=?1 AND last_step>=?3 AND first_step<=?4"
                         " ORDER BY format_id, first_step",
    [PLAN_ALL] = SCAN_COLS " WHERE last_step>=?3 AND first_step<=?4"
                           " ORDER BY tensor_id, format_id, first_step",
};

typedef struct seg_vtab {
    sqlite3_vtab base;
    sqlite3 *db;
    ag_seg_ctx ctx;                 /* for writes */
    sqlite3_stmt *scan[PLAN_COUNT]; /* a free scan statement per plan */
} seg_vtab;

typedef struct seg_cursor {
    sqlite3_vtab_cursor base;
    sqlite3_stmt *s;
    int plan;
    int eof;
    uint64_t lo, hi;
    int64_t fid; /* PLAN_ALL/PLAN_T with a format: the only format; else -1 */
    int by_fid;
    int64_t seg_id;
    uint64_t seg_first;
    ag_seg_reader rd;
    ag_store_result_row row;
} seg_cursor;

static const char results_decl[] =
    "CREATE TABLE x(tensor_id INTEGER, format_id INTEGER, step INTEGER, stalled INTEGER,"
    " total INTEGER, flips INTEGER, overflow INTEGER, underflow INTEGER, nonfinite INTEGER,"
    " amax REAL, scale REAL, source INTEGER, ranks INTEGER, complete INTEGER, mse REAL,"
    " sqnr_db REAL)";

static int vt_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                      char **err) {
    (void)aux;
    (void)argc;
    (void)argv;
    (void)err;
    int rc = sqlite3_declare_vtab(db, results_decl);
    if (rc != SQLITE_OK) return rc;
    sqlite3_vtab_config(db, SQLITE_VTAB_CONSTRAINT_SUPPORT, 1);
    seg_vtab *v = sqlite3_malloc(sizeof *v);
    if (!v) return SQLITE_NOMEM;
    memset(v, 0, sizeof *v);
    v->db = db;
    v->ctx.db = db;
    *out = &v->base;
    return SQLITE_OK;
}

static int vt_disconnect(sqlite3_vtab *base) {
    seg_vtab *v = (seg_vtab *)base;
    ag_seg_ctx_close(&v->ctx);
    for (int i = 0; i < PLAN_COUNT; i++) sqlite3_finalize(v->scan[i]);
    sqlite3_free(v);
    return SQLITE_OK;
}

static int vt_best_index(sqlite3_vtab *base, sqlite3_index_info *ix) {
    (void)base;
    int use[7] = {-1, -1, -1, -1, -1, -1, -1}; /* constraint per bit of IX_* */
    int bits = 0;
    for (int i = 0; i < ix->nConstraint; i++) {
        const struct sqlite3_index_constraint *k = &ix->aConstraint[i];
        if (!k->usable) continue;
        int b = -1;
        if (k->iColumn == COL_TENSOR && k->op == SQLITE_INDEX_CONSTRAINT_EQ)
            b = 0;
        else if (k->iColumn == COL_FORMAT && k->op == SQLITE_INDEX_CONSTRAINT_EQ)
            b = 1;
        else if (k->iColumn == COL_STEP) {
            switch (k->op) {
            case SQLITE_INDEX_CONSTRAINT_EQ: b = 2; break;
            case SQLITE_INDEX_CONSTRAINT_GE: b = 3; break;
            case SQLITE_INDEX_CONSTRAINT_GT: b = 4; break;
            case SQLITE_INDEX_CONSTRAINT_LE: b = 5; break;
            case SQLITE_INDEX_CONSTRAINT_LT: b = 6; break;
            default: break;
            }
        }
        if (b < 0 || use[b] >= 0) continue;
        /* one lower and one upper bound */
        if ((b == 3 && use[4] >= 0) || (b == 4 && use[3] >= 0) || (b == 5 && use[6] >= 0) ||
            (b == 6 && use[5] >= 0))
            continue;
        use[b] = i;
        bits |= 1 << b;
    }
    int arg = 0;
    for (int b = 0; b < 7; b++)
        if (use[b] >= 0) {
            /* SQLite checks every constraint again (omit 0): an argument
             * that is not an integer only widens the scan */
            ix->aConstraintUsage[use[b]].argvIndex = ++arg;
            ix->aConstraintUsage[use[b]].omit = 0;
        }
    /* idxNum: IX_TENSOR, IX_FORMAT, IX_STEP_EQ, then the bound bits: GE is
     * IX_LO, GT IX_LO|IX_LO_GT, LE IX_HI, LT IX_HI|IX_HI_LT */
    int idx = (bits & 1 ? IX_TENSOR : 0) | (bits & 2 ? IX_FORMAT : 0) |
              (bits & 4 ? IX_STEP_EQ : 0) | (bits & 8 ? IX_LO : 0) |
              (bits & 16 ? IX_LO | IX_LO_GT : 0) | (bits & 32 ? IX_HI : 0) |
              (bits & 64 ? IX_HI | IX_HI_LT : 0);
    ix->idxNum = idx;
    double cost = idx & IX_TENSOR ? (idx & IX_FORMAT ? 20.0 : 400.0) : 1e6;
    if (idx & IX_STEP_EQ)
        cost /= 20;
    else if ((idx & IX_LO) && (idx & IX_HI))
        cost /= 4;
    else if (idx & (IX_LO | IX_HI))
        cost /= 2;
    if (!(idx & IX_TENSOR) && (idx & IX_FORMAT)) cost /= 2;
    ix->estimatedCost = cost;
    ix->estimatedRows = (sqlite3_int64)cost;
    /* rows come in (tensor_id, format_id, step) order */
    int order[3] = {COL_TENSOR, COL_FORMAT, COL_STEP}, j = 0, ok = 1;
    for (int i = 0; ok && i < ix->nOrderBy; i++) {
        int col = ix->aOrderBy[i].iColumn;
        if (ix->aOrderBy[i].desc) ok = 0;
        while (ok && j < 3 && order[j] != col &&
               ((order[j] == COL_TENSOR && (idx & IX_TENSOR)) ||
                (order[j] == COL_FORMAT && (idx & IX_FORMAT))))
            j++;
        if (ok && j < 3 && order[j] == col)
            j++;
        else if (!(col == COL_STEP && (idx & IX_STEP_EQ)) &&
                 !(col == COL_TENSOR && (idx & IX_TENSOR)) &&
                 !(col == COL_FORMAT && (idx & IX_FORMAT)))
            ok = 0;
    }
    ix->orderByConsumed = ok;
    return SQLITE_OK;
}

static int vt_open(sqlite3_vtab *base, sqlite3_vtab_cursor **out) {
    (void)base;
    seg_cursor *c = sqlite3_malloc(sizeof *c);
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    c->eof = 1;
    c->plan = -1;
    *out = &c->base;
    return SQLITE_OK;
}

/* Give the cursor's statement back to the table (or finalize it). */
static void cursor_release(seg_cursor *c) {
    if (!c->s) return;
    seg_vtab *v = (seg_vtab *)c->base.pVtab;
    sqlite3_reset(c->s);
    if (c->plan >= 0 && !v->scan[c->plan]) {
        sqlite3_clear_bindings(c->s);
        v->scan[c->plan] = c->s;
    } else {
        sqlite3_finalize(c->s);
    }
    c->s = NULL;
}

static int vt_close(sqlite3_vtab_cursor *cur) {
    seg_cursor *c = (seg_cursor *)cur;
    cursor_release(c);
    sqlite3_free(c);
    return SQLITE_OK;
}

/* The integer an argument holds: 0 when it is not one (no bound then). */
static int arg_int(sqlite3_value *v, int64_t *out) {
    switch (sqlite3_value_numeric_type(v)) {
    case SQLITE_INTEGER: *out = sqlite3_value_int64(v); return 1;
    case SQLITE_FLOAT: {
        double d = sqlite3_value_double(v);
        if (d >= -9.2e18 && d <= 9.2e18 && d == floor(d)) {
            *out = (int64_t)d;
            return 1;
        }
        return 0;
    }
    default: return 0;
    }
}

/* Move to the next point in [lo, hi] (and of the format asked, where the
 * plan does not select it). */
/* The cursor's segment is corrupt: an error for the statement. */
static int cursor_corrupt(seg_cursor *c) {
    sqlite3_free(c->base.pVtab->zErrMsg);
    c->base.pVtab->zErrMsg =
        sqlite3_mprintf("results: segment %lld of result_segs is corrupt", (long long)c->seg_id);
    /* not SQLITE_CORRUPT: that would leave the connection read-only to the
     * end of its transaction (the writer's batch with it) */
    return SQLITE_ERROR;
}

static int cursor_advance(seg_cursor *c) {
    for (;;) {
        int got = ag_seg_next(&c->rd, &c->row);
        if (got < 0) return cursor_corrupt(c);
        if (got > 0) {
            /* a point as far from first_step as the writer never puts one
             * would have no rowid (id * AG_SEG_SPAN + offset) */
            if (c->row.step - c->seg_first >= AG_SEG_SPAN) return cursor_corrupt(c);
            if (c->row.step < c->lo) continue;
            if (c->row.step <= c->hi) return SQLITE_OK;
            /* past hi in this segment: the next segments of the same key
             * are past it too, but another key's may not be (PLAN_T/ALL) */
            c->rd.p = c->rd.end;
            continue;
        }
        int rc = sqlite3_step(c->s);
        if (rc == SQLITE_DONE) {
            c->eof = 1;
            return SQLITE_OK;
        }
        if (rc != SQLITE_ROW) return rc;
        int64_t fid = sqlite3_column_int64(c->s, 4);
        if (c->by_fid && fid != c->fid) {
            ag_seg_reader_init(&c->rd, NULL, 0, 0);
            continue;
        }
        c->seg_id = sqlite3_column_int64(c->s, 0);
        c->seg_first = (uint64_t)sqlite3_column_int64(c->s, 1);
        if (c->seg_id < 0 || c->seg_id >= INT64_MAX / (int64_t)AG_SEG_SPAN ||
            sqlite3_column_int64(c->s, 1) < 0)
            return cursor_corrupt(c);
        c->row.tensor_id = sqlite3_column_int64(c->s, 3);
        c->row.format_id = fid;
        ag_seg_reader_init(&c->rd, sqlite3_column_blob(c->s, 2),
                           (size_t)sqlite3_column_bytes(c->s, 2), c->seg_first);
    }
}

static int vt_filter(sqlite3_vtab_cursor *cur, int idx, const char *idx_str, int argc,
                     sqlite3_value **argv) {
    (void)idx_str;
    seg_cursor *c = (seg_cursor *)cur;
    seg_vtab *v = (seg_vtab *)cur->pVtab;
    int64_t tid = 0, fid = 0, x;
    int has_t = 0, has_f = 0, a = 0, empty = 0;
    c->lo = 0;
    c->hi = (uint64_t)INT64_MAX;
    if ((idx & IX_TENSOR) && a < argc) has_t = arg_int(argv[a++], &tid);
    if ((idx & IX_FORMAT) && a < argc) has_f = arg_int(argv[a++], &fid);
    if ((idx & IX_STEP_EQ) && a < argc && arg_int(argv[a++], &x)) {
        if (x < 0)
            empty = 1;
        else
            c->lo = c->hi = (uint64_t)x;
    }
    if ((idx & IX_LO) && a < argc && arg_int(argv[a++], &x)) {
        if ((idx & IX_LO_GT) && x == INT64_MAX)
            empty = 1;
        else if (idx & IX_LO_GT)
            x++;
        if (x > 0 && (uint64_t)x > c->lo) c->lo = (uint64_t)x;
    }
    if ((idx & IX_HI) && a < argc && arg_int(argv[a++], &x)) {
        if ((idx & IX_HI_LT) && x <= 0)
            empty = 1;
        else if (idx & IX_HI_LT)
            x--;
        if (x < 0)
            empty = 1;
        else if ((uint64_t)x < c->hi)
            c->hi = (uint64_t)x;
    }
    if (c->lo > c->hi) empty = 1;
    int plan = has_t && has_f ? PLAN_TF : has_t ? PLAN_T : PLAN_ALL;
    if (c->s && c->plan != plan) cursor_release(c);
    if (!c->s) {
        c->plan = plan;
        if (v->scan[plan]) {
            c->s = v->scan[plan];
            v->scan[plan] = NULL;
        } else {
            int rc = sqlite3_prepare_v3(v->db, scan_sql[plan], -1, SQLITE_PREPARE_PERSISTENT, &c->s,
                                        NULL);
            if (rc != SQLITE_OK) {
                sqlite3_free(cur->pVtab->zErrMsg);
                cur->pVtab->zErrMsg = sqlite3_mprintf("results: %s", sqlite3_errmsg(v->db));
                return rc;
            }
        }
    }
    sqlite3_reset(c->s);
    c->by_fid = has_f && plan != PLAN_TF;
    c->fid = fid;
    if (has_t) sqlite3_bind_int64(c->s, 1, tid);
    if (plan == PLAN_TF) sqlite3_bind_int64(c->s, 2, fid);
    sqlite3_bind_int64(c->s, 3, (int64_t)c->lo);
    sqlite3_bind_int64(c->s, 4, (int64_t)c->hi);
    ag_seg_reader_init(&c->rd, NULL, 0, 0);
    c->eof = 0;
    if (empty) {
        c->eof = 1;
        return SQLITE_OK;
    }
    return cursor_advance(c);
}

static int vt_next(sqlite3_vtab_cursor *cur) { return cursor_advance((seg_cursor *)cur); }

static int vt_eof(sqlite3_vtab_cursor *cur) { return ((seg_cursor *)cur)->eof; }

static int vt_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col) {
    const ag_store_result_row *r = &((seg_cursor *)cur)->row;
    switch (col) {
    case COL_TENSOR: sqlite3_result_int64(ctx, r->tensor_id); break;
    case COL_FORMAT: sqlite3_result_int64(ctx, r->format_id); break;
    case COL_STEP: sqlite3_result_int64(ctx, (int64_t)r->step); break;
    case COL_STALLED: sqlite3_result_int64(ctx, (int64_t)r->counts.stalled); break;
    case COL_TOTAL: sqlite3_result_int64(ctx, (int64_t)r->counts.total); break;
    case COL_FLIPS:
        if (r->flips_unknown)
            sqlite3_result_null(ctx);
        else
            sqlite3_result_int64(ctx, (int64_t)r->flips);
        break;
    case COL_OVERFLOW: sqlite3_result_int64(ctx, (int64_t)r->counts.overflow); break;
    case COL_UNDERFLOW: sqlite3_result_int64(ctx, (int64_t)r->counts.underflow); break;
    case COL_NONFINITE: sqlite3_result_int64(ctx, (int64_t)r->counts.nonfinite); break;
    case COL_AMAX: sqlite3_result_double(ctx, r->amax); break;
    case COL_SCALE: sqlite3_result_double(ctx, r->scale); break;
    case COL_SOURCE: sqlite3_result_int(ctx, r->source); break;
    case COL_RANKS: sqlite3_result_int64(ctx, (int64_t)r->ranks); break;
    case COL_COMPLETE: sqlite3_result_int(ctx, !r->incomplete); break;
    case COL_MSE:
        if (r->has_qerr && isfinite(r->mse))
            sqlite3_result_double(ctx, r->mse);
        else
            sqlite3_result_null(ctx);
        break;
    case COL_SQNR:
        if (r->has_qerr && isfinite(r->sqnr_db))
            sqlite3_result_double(ctx, r->sqnr_db);
        else
            sqlite3_result_null(ctx);
        break;
    default: sqlite3_result_null(ctx); break;
    }
    return SQLITE_OK;
}

static int vt_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
    const seg_cursor *c = (const seg_cursor *)cur;
    *rowid = c->seg_id * (int64_t)AG_SEG_SPAN + (int64_t)(c->row.step - c->seg_first);
    return SQLITE_OK;
}

static int vt_error(sqlite3_vtab *base, int rc, const char *what) {
    sqlite3_free(base->zErrMsg);
    base->zErrMsg = sqlite3_mprintf("%s", what);
    return rc;
}

/* A row from INSERT's or UPDATE's values (argv[2..]): NULL counts are 0 as
 * nowhere else; source, ranks and complete default as the old columns did. */
static int row_from_values(sqlite3_vtab *base, sqlite3_value **val, ag_store_result_row *r) {
    int64_t x[COL_COUNT];
    int have[COL_COUNT];
    for (int i = 0; i < COL_COUNT; i++) {
        have[i] = sqlite3_value_type(val[i]) != SQLITE_NULL;
        x[i] = 0;
        if (have[i] && i != COL_AMAX && i != COL_SCALE && i != COL_MSE && i != COL_SQNR &&
            !arg_int(val[i], &x[i]))
            return vt_error(base, SQLITE_MISMATCH,
                            "results: an integer column holds a non-integer");
    }
    static const int required[] = {COL_TENSOR, COL_FORMAT,   COL_STEP,      COL_STALLED,
                                   COL_TOTAL,  COL_OVERFLOW, COL_UNDERFLOW, COL_NONFINITE,
                                   COL_AMAX,   COL_SCALE};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!have[required[i]])
            return vt_error(base, SQLITE_CONSTRAINT_NOTNULL,
                            "NOT NULL constraint failed: a results column");
    for (int i = COL_STEP; i <= COL_NONFINITE; i++)
        if (x[i] < 0) return vt_error(base, SQLITE_CONSTRAINT, "results: a negative step or count");
    *r = (ag_store_result_row){
        .tensor_id = x[COL_TENSOR],
        .format_id = x[COL_FORMAT],
        .step = (uint64_t)x[COL_STEP],
        .counts = {.stalled = (uint64_t)x[COL_STALLED],
                   .total = (uint64_t)x[COL_TOTAL],
                   .overflow = (uint64_t)x[COL_OVERFLOW],
                   .underflow = (uint64_t)x[COL_UNDERFLOW],
                   .nonfinite = (uint64_t)x[COL_NONFINITE]},
        .flips = (uint64_t)x[COL_FLIPS],
        .flips_unknown = !have[COL_FLIPS],
        .amax = sqlite3_value_double(val[COL_AMAX]),
        .scale = sqlite3_value_double(val[COL_SCALE]),
        .source = (uint8_t)(have[COL_SOURCE] && x[COL_SOURCE] != 0),
        .ranks = have[COL_RANKS] && x[COL_RANKS] > 0 ? (uint64_t)x[COL_RANKS] : 1,
        .incomplete = (uint8_t)(have[COL_COMPLETE] && x[COL_COMPLETE] == 0),
        .has_qerr = (uint8_t)(have[COL_MSE] || have[COL_SQNR]),
        .mse = have[COL_MSE] ? sqlite3_value_double(val[COL_MSE]) : NAN,
        .sqnr_db = have[COL_SQNR] ? sqlite3_value_double(val[COL_SQNR]) : NAN,
    };
    if (x[COL_FLIPS] < 0) return vt_error(base, SQLITE_CONSTRAINT, "results: negative flips");
    return SQLITE_OK;
}

static int vt_update(sqlite3_vtab *base, int argc, sqlite3_value **argv, sqlite3_int64 *rowid) {
    (void)rowid;
    seg_vtab *v = (seg_vtab *)base;
    int rc = SQLITE_OK;
    if (sqlite3_value_type(argv[0]) != SQLITE_NULL) { /* DELETE, or the old row of UPDATE */
        int64_t old = sqlite3_value_int64(argv[0]);
        if (argc > 1 && sqlite3_value_type(argv[1]) != SQLITE_NULL &&
            sqlite3_value_int64(argv[1]) != old)
            return vt_error(base, SQLITE_CONSTRAINT, "results: rowids are not writable");
        rc =
            seg_remove(&v->ctx, old / (int64_t)AG_SEG_SPAN, (uint64_t)(old % (int64_t)AG_SEG_SPAN));
        if (rc != SQLITE_OK || argc == 1) return rc;
    }
    if (argc < 2 + COL_COUNT) return SQLITE_MISUSE;
    ag_store_result_row r;
    if ((rc = row_from_values(base, argv + 2, &r)) != SQLITE_OK) return rc;
    int conflict = sqlite3_vtab_on_conflict(v->db), existed = 0;
    rc = ag_seg_put(&v->ctx, &r, conflict == SQLITE_REPLACE, &existed, NULL);
    if (rc == SQLITE_CONSTRAINT) {
        if (conflict == SQLITE_IGNORE) return SQLITE_OK;
        return vt_error(base, SQLITE_CONSTRAINT_PRIMARYKEY,
                        "UNIQUE constraint failed: results.tensor_id, results.format_id,"
                        " results.step");
    }
    return rc;
}

static sqlite3_module results_module = {
    .iVersion = 0,
    .xCreate = NULL, /* eponymous only: `results` exists on every connection that has it */
    .xConnect = vt_connect,
    .xBestIndex = vt_best_index,
    .xDisconnect = vt_disconnect,
    .xDestroy = vt_disconnect,
    .xOpen = vt_open,
    .xClose = vt_close,
    .xFilter = vt_filter,
    .xNext = vt_next,
    .xEof = vt_eof,
    .xColumn = vt_column,
    .xRowid = vt_rowid,
    .xUpdate = vt_update,
};

/* ------------------------------------------------ ag_seg_pack(...) */

/* The aggregate the migration to schema 11 packs each run of old rows with:
 * ag_seg_pack(step, stalled, total, flips, overflow, underflow, nonfinite,
 * amax, scale, source, ranks, complete, mse, sqnr_db) is the blob of those
 * rows sorted by step, the first point at its own step (first_step is
 * min(step)). */
typedef struct pack_acc {
    ag_store_result_row *rows;
    size_t n, cap;
    int bad;
} pack_acc;

static void pack_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    pack_acc *a = sqlite3_aggregate_context(ctx, sizeof *a);
    if (!a || a->bad) return;
    if (argc != 14) {
        a->bad = 1;
        return;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        ag_store_result_row *p = sqlite3_realloc64(a->rows, cap * sizeof *p);
        if (!p) {
            a->bad = 2;
            return;
        }
        a->rows = p;
        a->cap = cap;
    }
    ag_store_result_row *r = &a->rows[a->n++];
    sqlite3_int64 v[12];
    for (int i = 0; i < 12; i++) v[i] = sqlite3_value_int64(argv[i]);
    *r = (ag_store_result_row){
        .step = (uint64_t)v[0],
        .counts = {.stalled = (uint64_t)v[1],
                   .total = (uint64_t)v[2],
                   .overflow = (uint64_t)v[4],
                   .underflow = (uint64_t)v[5],
                   .nonfinite = (uint64_t)v[6]},
        .flips = (uint64_t)v[3],
        .flips_unknown = sqlite3_value_type(argv[3]) == SQLITE_NULL,
        .amax = sqlite3_value_double(argv[7]),
        .scale = sqlite3_value_double(argv[8]),
        .source = (uint8_t)(v[9] != 0),
        .ranks = v[10] > 0 ? (uint64_t)v[10] : 1,
        .incomplete = (uint8_t)(sqlite3_value_type(argv[11]) != SQLITE_NULL && v[11] == 0),
        .has_qerr = (uint8_t)(sqlite3_value_type(argv[12]) != SQLITE_NULL ||
                              sqlite3_value_type(argv[13]) != SQLITE_NULL),
        .mse = sqlite3_value_type(argv[12]) != SQLITE_NULL ? sqlite3_value_double(argv[12]) : NAN,
        .sqnr_db =
            sqlite3_value_type(argv[13]) != SQLITE_NULL ? sqlite3_value_double(argv[13]) : NAN,
    };
    if (v[0] < 0) a->bad = 1;
}

static int by_step(const void *a, const void *b) {
    uint64_t x = ((const ag_store_result_row *)a)->step, y = ((const ag_store_result_row *)b)->step;
    return x < y ? -1 : x > y;
}

static void pack_final(sqlite3_context *ctx) {
    pack_acc *a = sqlite3_aggregate_context(ctx, 0);
    if (!a || a->n == 0) {
        sqlite3_result_null(ctx);
        return;
    }
    if (a->bad) {
        if (a->bad == 2)
            sqlite3_result_error_nomem(ctx);
        else
            sqlite3_result_error(ctx, "ag_seg_pack: a negative step or wrong arguments", -1);
        sqlite3_free(a->rows);
        return;
    }
    qsort(a->rows, a->n, sizeof *a->rows, by_step);
    unsigned char *out = sqlite3_malloc64((sqlite3_uint64)a->n * AG_SEG_POINT_MAX);
    if (!out) {
        sqlite3_free(a->rows);
        sqlite3_result_error_nomem(ctx);
        return;
    }
    size_t len = 0;
    uint64_t prev = a->rows[0].step;
    for (size_t i = 0; i < a->n; i++) {
        if (i && a->rows[i].step == prev) { /* the old key made steps unique */
            sqlite3_free(out);
            sqlite3_free(a->rows);
            sqlite3_result_error(ctx, "ag_seg_pack: a step twice", -1);
            return;
        }
        len += ag_seg_encode(out + len, &a->rows[i], prev);
        prev = a->rows[i].step;
    }
    sqlite3_free(a->rows);
    sqlite3_result_blob64(ctx, out, len, sqlite3_free);
}

int ag_seg_register(sqlite3 *db) {
    int rc = sqlite3_create_module_v2(db, "results", &results_module, NULL, NULL);
    if (rc != SQLITE_OK) return rc;
    return sqlite3_create_function_v2(db, "ag_seg_pack", 14, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                      NULL, NULL, pack_step, pack_final, NULL);
}

#ifdef AG_SQLITE_EXTENSION
/* `.load libaltgrad_sqlite` finds this by the file's name */
int sqlite3_altgradsqlite_init(sqlite3 *db, char **err, const sqlite3_api_routines *api);
__attribute__((visibility("default"))) int
sqlite3_altgradsqlite_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    return ag_seg_register(db);
}
#else
int ag_store_sql_register(sqlite3 *db) { return ag_seg_register(db); }

int ag_store_sql_entry(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)err;
    (void)api;
    return ag_seg_register(db);
}
#endif
