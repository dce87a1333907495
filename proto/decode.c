/*
 * decode.c - msgpack -> message, driven by the tables of spec.c. Two passes:
 * the first finds the version and type (keys may come in any order), the
 * second fills the message. Strings are copied (NUL-terminated) into one bump
 * chain, or into an ag_free-able arena for reply results; tensor payloads are
 * not copied. A failed decode leaves nothing allocated.
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "core/arena.h"
#include "proto/internal.h"

typedef struct dec {
    ag_rd rd;
    int arena;        /* reply: allocate in the result's arena */
    void *root;       /* the arena root (reply) */
    void *bump;       /* bump chain (everything else) */
    const void *data; /* snapshot payload */
    size_t data_len;
    int have_data;
    int have_lr;
    size_t cols;       /* values per reply item */
    size_t count_fmts; /* results per counts item (0: none read yet) */
    uint32_t *repl;    /* counts: replicated item indexes as read (post_check maps them) */
    uint32_t nrepl;
} dec;

/* The failure path, out of line and cold (see read.c's wrong). */
__attribute__((cold, noinline)) static int bad(dec *d, const char *text, int code) {
    ag_errctx_set(d->rd.err, code, "%s", text);
    return code;
}

#define BAD(d, text, code) return bad((d), (text), (code))

static void *d_alloc(dec *d, size_t size) {
    return d->arena ? ag_arena_alloc(d->root, size) : ag_bump_alloc(&d->bump, size);
}

static char *d_strndup(dec *d, const char *s, size_t n) {
    return d->arena ? ag_arena_strndup(d->root, s, n) : ag_bump_strndup(&d->bump, s, n);
}

static int d_string(dec *d, const ag_field *f, const char **out) {
    const char *s;
    size_t n;
    int rc = ag_rd_str(&d->rd, &s, &n);
    if (rc) return rc;
    switch (f->kind) {
    case K_NAME:
        if (n > AG_NAME_MAX) BAD(d, "a name is longer than 255 bytes", AG_ETOOBIG);
        if (!ag_proto_name_ok(s, n)) BAD(d, "a name is empty or holds a NUL byte", AG_EPROTO);
        break;
    case K_FMT:
        if (!ag_proto_format_name_ok(s, n))
            BAD(d, "a format name is not 1..15 of [A-Za-z0-9_-]", AG_EPROTO);
        break;
    case K_LAUNCH:
        if (n > f->aux) BAD(d, "a launch id is longer than 128 bytes", AG_ETOOBIG);
        if (!ag_proto_launch_id_ok(s, n))
            BAD(d, "a launch id is empty or not printable ASCII", AG_EPROTO);
        break;
    case K_JSON:
        if (n > f->aux) BAD(d, "metadata over 64 KiB", AG_ETOOBIG);
        if (!ag_proto_json_object_ok(s, n)) BAD(d, "metadata is not a JSON object", AG_EPROTO);
        break;
    default: /* K_STR */
        if (n > f->aux) BAD(d, "a string is over its limit", AG_ETOOBIG);
        if (memchr(s, '\0', n)) BAD(d, "a string holds a NUL byte", AG_EPROTO);
        break;
    }
    char *copy = d_strndup(d, s, n);
    if (!copy) BAD(d, "out of memory", AG_ENOMEM);
    *out = copy;
    return AG_OK;
}

/* One scalar value of kind f->kind into base + f->off. */
static int d_scalar(dec *d, const ag_field *f, char *base) {
    void *at = base + f->off;
    uint64_t u;
    int64_t s;
    double x;
    int rc;
    switch (f->kind) {
    case K_UINT: return ag_rd_uint(&d->rd, at);
    case K_INT: return ag_rd_int(&d->rd, at);
    case K_FLOAT:
    case K_SCALE:
        if (f->kind == K_FLOAT && f->show == S_NAN && d->rd.p < d->rd.end && *d->rd.p == 0xc0) {
            d->rd.p++; /* nil: unknown */
            *(double *)at = NAN;
            return AG_OK;
        }
        if ((rc = ag_rd_float(&d->rd, &x))) return rc;
        if (!isfinite(x)) BAD(d, "a number is not finite", AG_EPROTO);
        if ((f->flags & F_NONNEG) && x < 0) BAD(d, "a number is negative", AG_EPROTO);
        if (f->kind == K_SCALE) {
            if (x <= 0) BAD(d, "scale must be > 0", AG_EPROTO);
            *(int *)(base + f->aux) = 1;
        }
        *(double *)at = x;
        return AG_OK;
    case K_ENUM:
        if ((rc = ag_rd_uint(&d->rd, &u))) return rc;
        if (u > f->aux) BAD(d, "unknown enum value", AG_EPROTO);
        *(int *)at = (int)u;
        return AG_OK;
    case K_CODE:
        if ((rc = ag_rd_int(&d->rd, &s))) return rc;
        if (s >= 0 || s < INT_MIN) BAD(d, "an error code must be a negative int", AG_EPROTO);
        *(int *)at = (int)s;
        return AG_OK;
    default: return d_string(d, f, at);
    }
}

static int d_record(dec *d, ag_stat_record *r) {
    uint32_t n;
    int rc = ag_rd_array(&d->rd, &n);
    if (rc) return rc;
    if (n != 6) BAD(d, "a stats record is not an array of 6", AG_EPROTO);
    for (size_t c = 0; c < 6; c++)
        if ((rc = d_scalar(d, &ag_record_cols[c], (char *)r))) return rc;
    if (r->nonfinite > r->numel) BAD(d, "a record's nonfinite count exceeds numel", AG_EPROTO);
    return AG_OK;
}

/* A uint in 0..max. */
static int d_bounded(dec *d, uint64_t max, uint64_t *v, const char *why) {
    int rc = ag_rd_uint(&d->rd, v);
    if (rc) return rc;
    if (*v > max) BAD(d, why, AG_EPROTO);
    return AG_OK;
}

/* A float or nil (NaN: unknown); a NaN float is refused (nil says unknown). */
static int d_known(dec *d, double *v, const char *why) {
    if (d->rd.p < d->rd.end && *d->rd.p == 0xc0) {
        d->rd.p++;
        *v = NAN;
        return AG_OK;
    }
    int rc = ag_rd_float(&d->rd, v);
    if (rc) return rc;
    if (isnan(*v)) BAD(d, why, AG_EPROTO);
    return AG_OK;
}

/* One result of a counts item: [scale, stalled, total, overflow, underflow,
 * nonfinite, flips | nil] or those and [mse | nil, sqnr_db | nil], bounded
 * by the item's numel (qerr: NaN where unknown). */
static int d_count_result(dec *d, uint64_t numel, uint64_t nonfinite, float *scale, uint64_t *k,
                          int64_t *flips, double *mse, double *sqnr) {
    uint32_t n;
    double x;
    int rc = ag_rd_array(&d->rd, &n);
    if (rc) return rc;
    if (n != 2 + AG_COUNTS_PER_RESULT && n != 4 + AG_COUNTS_PER_RESULT)
        BAD(d, "a counts result is not an array of 7 or 9", AG_EPROTO);
    *mse = NAN;
    *sqnr = NAN;
    if ((rc = ag_rd_float(&d->rd, &x))) return rc;
    if (!(x > 0) || !isfinite(x) || (double)(float)x != x)
        BAD(d, "a scale is not a finite float32 > 0", AG_EPROTO);
    *scale = (float)x;
    for (int j = 0; j < AG_COUNTS_PER_RESULT; j++)
        if ((rc = d_bounded(d, numel, &k[j], "a count exceeds numel"))) return rc;
    if (k[0] > k[1]) BAD(d, "stalled exceeds total", AG_EPROTO);
    if (d->rd.p < d->rd.end && *d->rd.p == 0xc0) { /* nil: unknown */
        d->rd.p++;
        *flips = -1;
    } else {
        uint64_t v;
        if ((rc = d_bounded(d, numel, &v, "flips exceeds numel"))) return rc;
        *flips = (int64_t)v;
    }
    if (n == 2 + AG_COUNTS_PER_RESULT) return AG_OK;
    if ((rc = d_known(d, mse, "mse is NaN (nil says unknown)"))) return rc;
    if ((rc = d_known(d, sqnr, "sqnr_db is NaN (nil says unknown)"))) return rc;
    const char *why = NULL;
    if (ag_proto_qerr_ok(numel, nonfinite, *mse, *sqnr, &why)) BAD(d, why, AG_EPROTO);
    return AG_OK;
}

/* The items of a counts message. The formats may come after the items (keys
 * in any order), so the first item's result count fixes how many every item
 * has, and post_check matches it with fmts. Arrays are allocated once that
 * count is known, after checking that the bytes left can hold them (each
 * result takes at least 8). */
static int d_counts(dec *d, ag_msg_counts *c) {
    uint32_t n;
    int rc = ag_rd_array(&d->rd, &n);
    if (rc) return rc;
    if (n == 0) BAD(d, "a counts message has no items", AG_EPROTO);
    if (n > AG_PROTO_MAX_COUNT_ITEMS) BAD(d, "more than 4096 counts items", AG_ETOOBIG);
    const char **tensors = d_alloc(d, n * sizeof *tensors);
    uint64_t *numel = d_alloc(d, n * sizeof *numel);
    double *amax = d_alloc(d, n * sizeof *amax);
    uint64_t *nonfinite = d_alloc(d, n * sizeof *nonfinite);
    if (!tensors || !numel || !amax || !nonfinite) BAD(d, "out of memory", AG_ENOMEM);
    float *scales = NULL;
    uint64_t *counts = NULL;
    int64_t *flips = NULL;
    double *mse = NULL, *sqnr = NULL;
    const ag_field name = {"tensor", K_NAME, F_REQ, 0, 0, NULL, 0};
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len, nr;
        if ((rc = ag_rd_array(&d->rd, &len))) return rc;
        if (len != 5) BAD(d, "a counts item is not an array of 5", AG_EPROTO);
        if ((rc = d_string(d, &name, &tensors[i]))) return rc;
        if ((rc = d_bounded(d, INT64_MAX, &numel[i], "numel is over 2^63-1"))) return rc;
        if (numel[i] == 0) BAD(d, "numel is 0", AG_EPROTO);
        if ((rc = ag_rd_float(&d->rd, &amax[i]))) return rc;
        if (!isfinite(amax[i]) || amax[i] < 0) BAD(d, "amax is not finite and >= 0", AG_EPROTO);
        if ((rc = d_bounded(d, numel[i], &nonfinite[i], "nonfinite exceeds numel"))) return rc;
        if ((rc = ag_rd_array(&d->rd, &nr))) return rc;
        if (i == 0) {
            if (nr == 0 || nr > AG_PROTO_MAX_FORMATS)
                BAD(d, "a counts item needs 1..64 results", AG_EPROTO);
            if ((uint64_t)n * nr * 8 > (uint64_t)(d->rd.end - d->rd.p))
                BAD(d, "counts items exceed the bytes that follow", AG_EPROTO);
            d->count_fmts = nr;
            scales = d_alloc(d, (size_t)n * nr * sizeof *scales);
            counts = d_alloc(d, (size_t)n * nr * AG_COUNTS_PER_RESULT * sizeof *counts);
            flips = d_alloc(d, (size_t)n * nr * sizeof *flips);
            mse = d_alloc(d, (size_t)n * nr * sizeof *mse);
            sqnr = d_alloc(d, (size_t)n * nr * sizeof *sqnr);
            if (!scales || !counts || !flips || !mse || !sqnr) BAD(d, "out of memory", AG_ENOMEM);
        } else if (nr != d->count_fmts) {
            BAD(d, "counts items differ in their number of results", AG_EPROTO);
        }
        for (uint32_t f = 0; f < nr; f++) {
            size_t r = (size_t)i * nr + f;
            if ((rc = d_count_result(d, numel[i], nonfinite[i], &scales[r],
                                     &counts[r * AG_COUNTS_PER_RESULT], &flips[r], &mse[r],
                                     &sqnr[r])))
                return rc;
        }
    }
    c->n = n;
    c->tensors = tensors;
    c->numel = numel;
    c->amax = amax;
    c->nonfinite = nonfinite;
    c->scales = scales;
    c->counts = counts;
    c->flips = flips;
    c->mse = mse;
    c->sqnr_db = sqnr;
    return AG_OK;
}

static int d_composite(dec *d, const ag_field *f, char *base, const ag_spec *spec) {
    uint32_t n;
    int rc;
    if (f->kind == K_DATA) {
        if ((rc = ag_rd_bin(&d->rd, &d->data, &d->data_len))) return rc;
        d->have_data = 1;
        return AG_OK;
    }
    if (f->kind == K_COUNTS) return d_counts(d, (ag_msg_counts *)(void *)(base + f->off));
    if ((rc = ag_rd_array(&d->rd, &n))) return rc;
    if (f->kind == K_SHM) {
        ag_msg_shm *h = (ag_msg_shm *)(void *)(base + f->off);
        if (n != 5) BAD(d, "shm is not [token, fd, size, mark, at]", AG_EPROTO);
        if ((rc = ag_rd_uint(&d->rd, &h->token)) || (rc = ag_rd_uint(&d->rd, &h->fd)) ||
            (rc = ag_rd_uint(&d->rd, &h->size)) || (rc = ag_rd_uint(&d->rd, &h->mark)))
            return rc;
        if (d->rd.p < d->rd.end && *d->rd.p == 0xc0) {
            d->rd.p++; /* nil: the arrays are in data */
        } else {
            if ((rc = ag_rd_uint(&d->rd, &h->at))) return rc;
            h->has_at = 1;
        }
        if (h->token == 0) BAD(d, "a shared-memory token of 0", AG_EPROTO);
        if (h->fd > INT32_MAX) BAD(d, "a shared-memory descriptor over INT32_MAX", AG_EPROTO);
        if (h->size < AG_SHM_MIN_SIZE || h->size > AG_SHM_MAX_SIZE)
            BAD(d, "a shared-memory segment of a size out of range", AG_EPROTO);
        return AG_OK;
    }
    if (f->kind == K_REPL) { /* indexes, strictly ascending; post_check bounds them by n */
        if (n > AG_PROTO_MAX_COUNT_ITEMS) BAD(d, "more than 4096 replicated items", AG_ETOOBIG);
        d->repl = d_alloc(d, (n ? n : 1) * sizeof *d->repl);
        if (!d->repl) BAD(d, "out of memory", AG_ENOMEM);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t v;
            if ((rc = d_bounded(d, AG_PROTO_MAX_COUNT_ITEMS - 1, &v,
                                "a replicated item index is out of range")))
                return rc;
            if (i > 0 && v <= d->repl[i - 1])
                BAD(d, "replicated item indexes are not strictly ascending", AG_EPROTO);
            d->repl[i] = (uint32_t)v;
        }
        d->nrepl = n;
        return AG_OK;
    }
    if (f->kind == K_RECS) {
        ag_msg_stats *st = (ag_msg_stats *)(base + f->off);
        if (n == 0) BAD(d, "a stats batch has no records", AG_EPROTO);
        if (n > AG_PROTO_MAX_RECORDS) BAD(d, "more than 65536 records", AG_ETOOBIG);
        ag_stat_record *recs = d_alloc(d, (size_t)n * sizeof(*recs));
        if (!recs) BAD(d, "out of memory", AG_ENOMEM);
        for (uint32_t i = 0; i < n; i++)
            if ((rc = d_record(d, &recs[i]))) return rc;
        st->n = n;
        st->records = recs;
        return AG_OK;
    }
    if (f->kind == K_FMTS) {
        if (n > AG_PROTO_MAX_FORMATS) BAD(d, "more than 64 formats", AG_ETOOBIG);
        const char **names = d_alloc(d, (n ? n : 1) * sizeof(*names));
        if (!names) BAD(d, "out of memory", AG_ENOMEM);
        const ag_field ff = {"fmt", K_FMT, F_REQ, 0, 0, NULL, 0};
        for (uint32_t i = 0; i < n; i++)
            if ((rc = d_string(d, &ff, &names[i]))) return rc;
        size_t count = n;
        memcpy(base + f->off, &count, sizeof count);
        memcpy(base + f->off + sizeof count, &names, sizeof names);
        return AG_OK;
    }
    /* K_ITEMS */
    if (n > AG_PROTO_MAX_ITEMS) BAD(d, "more than 1048576 items", AG_ETOOBIG);
    char *items = d_alloc(d, (n ? n : 1) * spec->item_size);
    if (!items) BAD(d, "out of memory", AG_ENOMEM);
    /* An item has at least the columns every receiver reads; columns it
     * lacks stay 0 / NULL, and values past those we know are skipped (a
     * newer sender's columns). */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t ncols;
        if ((rc = ag_rd_array(&d->rd, &ncols))) return rc;
        if (ncols < spec->ncols_base || (i > 0 && ncols != d->cols))
            BAD(d, "a reply item has the wrong number of values", AG_EPROTO);
        d->cols = ncols;
        for (size_t c = ncols; c < spec->ncols; c++) { /* not sent: unknown, not 0 */
            const ag_field *cf = ag_spec_wire_col(spec, c);
            if (cf->kind == K_FLOAT && cf->show == S_NAN)
                *(double *)(items + i * spec->item_size + cf->off) = NAN;
        }
        for (size_t c = 0; c < ncols; c++)
            if ((rc = c < spec->ncols
                          ? d_scalar(d, ag_spec_wire_col(spec, c), items + i * spec->item_size)
                          : ag_rd_skip(&d->rd, 1)))
                return rc;
    }
    size_t count = n;
    memcpy(base + spec->count_off, &count, sizeof count);
    memcpy(base + spec->items_off, &items, sizeof items);
    return AG_OK;
}

static int key_is(const char *k, size_t n, const char *want) {
    return strlen(want) == n && memcmp(k, want, n) == 0;
}

/* Pass 1: version and type. */
static int peek(ag_rd *r, int *version, int *type) {
    uint32_t n;
    int rc = ag_rd_map(r, &n);
    if (rc) return rc;
    uint64_t v = 0, t = 0;
    int have_v = 0, have_t = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        size_t kn;
        if ((rc = ag_rd_str(r, &k, &kn))) return rc;
        if (key_is(k, kn, "v") || key_is(k, kn, "t")) {
            int *have = k[0] == 'v' ? &have_v : &have_t;
            if (*have) return ag_errctx_set(r->err, AG_EPROTO, "a key appears twice");
            *have = 1;
            if ((rc = ag_rd_uint(r, k[0] == 'v' ? &v : &t))) return rc;
        } else if ((rc = ag_rd_skip(r, 1))) {
            return rc;
        }
    }
    if (r->p != r->end) return ag_errctx_set(r->err, AG_EPROTO, "bytes after the message");
    if (!have_v || !have_t) return ag_errctx_set(r->err, AG_EPROTO, "no version or type");
    *version = v > INT_MAX ? INT_MAX : (int)v;
    *type = t > INT_MAX ? INT_MAX : (int)t;
    return AG_OK;
}

int ag_proto_peek(const void *data, size_t len, int *version, int *type) {
    if (!data || !version || !type) return AG_EINVAL;
    if (len > AG_PROTO_MAX_MESSAGE) return AG_ETOOBIG;
    ag_rd r = {data, (const uint8_t *)data + len, NULL};
    return peek(&r, version, type);
}

static int post_check(dec *d, ag_msg *m, uint32_t seen, uint32_t seen_hdr) {
    if (ag_proto_is_stream(m->type) && seen_hdr != 0xf)
        BAD(d, "a stream message lacks run, cid, seq or drop", AG_EPROTO);
    if (m->type == AG_MSG_RUN_START) {
        ag_msg_run_start *r = &m->u.run_start;
        if ((seen & (1u << RUN_START_WORLD)) && r->world == 0) BAD(d, "world is 0", AG_EPROTO);
        if (r->world == 0) r->world = 1;
        if (r->world > AG_PROTO_MAX_WORLD) BAD(d, "world is over 65536 ranks", AG_EPROTO);
        if (r->rank >= r->world) BAD(d, "rank is not below world", AG_EPROTO);
        return AG_OK;
    }
    if (m->type == AG_MSG_COUNTS) {
        ag_msg_counts *c = &m->u.counts;
        if (c->nformats != d->count_fmts)
            BAD(d, "counts items do not have one result per format", AG_EPROTO);
        if (d->nrepl) {
            uint8_t *flags = d_alloc(d, c->n);
            if (!flags) BAD(d, "out of memory", AG_ENOMEM);
            memset(flags, 0, c->n);
            for (uint32_t i = 0; i < d->nrepl; i++) {
                if (d->repl[i] >= c->n)
                    BAD(d, "a replicated item index is past the items", AG_EPROTO);
                flags[d->repl[i]] = 1;
            }
            c->replicated = flags;
        }
        return AG_OK;
    }
    if (m->type != AG_MSG_SNAPSHOT) return AG_OK;
    ag_msg_snapshot *s = &m->u.snapshot;
    size_t size = ag_proto_dtype_size(s->dtype);
    if (s->n == 0) BAD(d, "a snapshot needs n >= 1", AG_EPROTO);
    if (s->shm.has_at) {
        /* the arrays are in the sender's segment: a record inside its ring */
        if (d->have_data) BAD(d, "a snapshot with both data and shared-memory arrays", AG_EPROTO);
        uint64_t cap = s->shm.size - AG_SHM_HEADER;
        if (s->n > AG_PROTO_MAX_MESSAGE / (2 * size) || 2 * size * s->n > cap ||
            s->shm.at % cap > cap - 2 * size * s->n)
            BAD(d, "a shared-memory record past the end of its segment's ring", AG_EPROTO);
        if (s->numel == 0) s->numel = s->n;
        if (s->numel < s->n) BAD(d, "numel is smaller than n", AG_EPROTO);
        if (s->form == AG_FORM_SGD && !d->have_lr) BAD(d, "an SGD snapshot needs lr", AG_EPROTO);
        s->w = s->x = NULL; /* the receiver points them into the segment */
        return AG_OK;
    }
    if (!d->have_data) BAD(d, "a required key is missing", AG_EPROTO);
    if (s->n > d->data_len / (2 * size) || d->data_len != 2 * size * (size_t)s->n)
        BAD(d, "snapshot data length is not 2 * n * dtype size", AG_EPROTO);
    if (s->numel == 0) s->numel = s->n;
    if (s->numel < s->n) BAD(d, "numel is smaller than n", AG_EPROTO);
    if (s->form == AG_FORM_SGD && !d->have_lr) BAD(d, "an SGD snapshot needs lr", AG_EPROTO);
    s->w = d->data;
    s->x = (const uint8_t *)d->data + size * (size_t)s->n;
    return AG_OK;
}

static int decode(dec *d, ag_msg *m, const ag_spec *spec) {
    uint32_t n;
    int rc = ag_rd_map(&d->rd, &n);
    if (rc) return rc;
    char *base = (char *)&m->u;
    if (spec->root_size) {
        d->arena = 1;
        d->root = ag_arena_new(spec->root_size);
        if (!d->root) BAD(d, "out of memory", AG_ENOMEM);
        base = d->root;
    }
    int stream = ag_proto_is_stream(m->type);
    uint32_t seen = 0, seen_hdr = 0;
    static const char *const hdr_keys[4] = {"run", "cid", "seq", "drop"};
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        size_t kn;
        if ((rc = ag_rd_str(&d->rd, &k, &kn))) return rc;
        if (key_is(k, kn, "v") || key_is(k, kn, "t")) {
            if ((rc = ag_rd_skip(&d->rd, 1))) return rc;
            continue;
        }
        int done = 0;
        for (int h = 0; stream && h < 4 && !done; h++) {
            if (!key_is(k, kn, hdr_keys[h])) continue;
            if (seen_hdr & (1u << h)) BAD(d, "a key appears twice", AG_EPROTO);
            seen_hdr |= 1u << h;
            if (h == 0) {
                const ag_field f = {"run", K_NAME, F_REQ, 0, 0, NULL, 0};
                rc = d_string(d, &f, &m->hdr.run);
            } else {
                uint64_t *dst = h == 1 ? &m->hdr.client_id : h == 2 ? &m->hdr.seq : &m->hdr.dropped;
                rc = ag_rd_uint(&d->rd, dst);
            }
            if (rc) return rc;
            done = 1;
        }
        for (size_t j = 0; j < spec->nfields && !done; j++) {
            const ag_field *f = &spec->fields[j];
            if (!key_is(k, kn, f->key)) continue;
            if (seen & (1u << j)) BAD(d, "a key appears twice", AG_EPROTO);
            seen |= 1u << j;
            rc = f->kind >= K_RECS ? d_composite(d, f, base, spec) : d_scalar(d, f, base);
            if (rc) return rc;
            if (m->type == AG_MSG_SNAPSHOT && f->off == offsetof(ag_msg_snapshot, lr))
                d->have_lr = 1;
            done = 1;
        }
        if (!done && (rc = ag_rd_skip(&d->rd, 1)))
            return rc; /* unknown key: skipped (forward compatibility) */
    }
    for (size_t j = 0; j < spec->nfields; j++)
        if ((spec->fields[j].flags & F_REQ) && !(seen & (1u << j)) &&
            spec->fields[j].kind != K_DATA) /* post_check: data, or shared memory */
            BAD(d, "a required key is missing", AG_EPROTO);
    if ((rc = post_check(d, m, seen, seen_hdr))) return rc;
    if (m->type == AG_MSG_RUN_START && !m->u.run_start.metadata) m->u.run_start.metadata = "{}";
    m->cols = d->cols < spec->ncols ? d->cols : spec->ncols;
    if (spec->root_size) {
        memcpy(&m->u, &d->root, sizeof d->root);
        m->owned = d->root;
    } else {
        m->owned = d->bump;
    }
    return AG_OK;
}

int ag_proto_decode(const void *data, size_t len, ag_msg *out) {
    if (!out) return AG_EINVAL;
    memset(out, 0, offsetof(ag_msg, err));
    ag_errctx_clear(&out->err);
    if (!data) return ag_errctx_set(&out->err, AG_EINVAL, "no data");
    if (len > AG_PROTO_MAX_MESSAGE)
        return ag_errctx_set(&out->err, AG_ETOOBIG, "message over 256 MiB");
    dec d;
    memset(&d, 0, sizeof d);
    d.rd.p = data;
    d.rd.end = (const uint8_t *)data + len;
    d.rd.err = &out->err;
    int version = 0, type = 0;
    int rc = peek(&d.rd, &version, &type);
    if (rc) return out->err.text[0] ? rc : ag_errctx_set(&out->err, rc, "malformed message");
    if (version < AG_PROTO_VERSION_MIN || version > AG_PROTO_VERSION)
        return ag_errctx_set(&out->err, AG_EVERSION, "unsupported protocol version");
    const ag_spec *spec = ag_spec_for(type);
    if (!spec || (type == AG_MSG_COUNTS && version < 2))
        return ag_errctx_set(&out->err, AG_EPROTO, "unknown message type");
    out->type = type;
    d.rd.p = data;
    rc = decode(&d, out, spec);
    if (rc) {
        if (d.root) ag_free(d.root);
        ag_bump_free(d.bump);
        memset(out, 0, offsetof(ag_msg, err)); /* what was wrong stays said */
        if (!out->err.text[0]) ag_errctx_set(&out->err, rc, "malformed message");
        return rc;
    }
    out->version = version;
    return AG_OK;
}

/* A reply whose result is an ag_free-able root (its table has a root size). */
static int is_reply_result(int type) {
    const ag_spec *s = ag_spec_for(type);
    return s && s->root_size != 0;
}

void ag_msg_clear(ag_msg *m) {
    if (!m) return;
    if (m->owned) {
        if (is_reply_result(m->type))
            ag_free(m->owned);
        else
            ag_bump_free(m->owned);
    }
    memset(m, 0, offsetof(ag_msg, err)); /* the error context: two stores, not 1 KiB */
    ag_errctx_clear(&m->err);
}

void *ag_msg_take_result(ag_msg *m) {
    if (!m || !is_reply_result(m->type)) return NULL;
    void *r = m->owned;
    m->owned = NULL;
    return r;
}

void *ag_msg_result(const ag_msg *m) {
    void *r = NULL;
    if (m && is_reply_result(m->type)) memcpy(&r, &m->u, sizeof r);
    return r;
}
