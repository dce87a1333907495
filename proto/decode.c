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

static int d_composite(dec *d, const ag_field *f, char *base, const ag_spec *spec) {
    uint32_t n;
    int rc;
    if (f->kind == K_DATA) {
        if ((rc = ag_rd_bin(&d->rd, &d->data, &d->data_len))) return rc;
        d->have_data = 1;
        return AG_OK;
    }
    if ((rc = ag_rd_array(&d->rd, &n))) return rc;
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
        ag_msg_snapshot *s = (ag_msg_snapshot *)(base + f->off);
        if (n > AG_PROTO_MAX_FORMATS) BAD(d, "more than 64 formats", AG_ETOOBIG);
        const char **names = d_alloc(d, (n ? n : 1) * sizeof(*names));
        if (!names) BAD(d, "out of memory", AG_ENOMEM);
        const ag_field ff = {"fmt", K_FMT, F_REQ, 0, 0, NULL, 0};
        for (uint32_t i = 0; i < n; i++)
            if ((rc = d_string(d, &ff, &names[i]))) return rc;
        s->nformats = n;
        s->formats = names;
        return AG_OK;
    }
    /* K_ITEMS */
    if (n > AG_PROTO_MAX_ITEMS) BAD(d, "more than 1048576 items", AG_ETOOBIG);
    char *items = d_alloc(d, (n ? n : 1) * spec->item_size);
    if (!items) BAD(d, "out of memory", AG_ENOMEM);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t ncols;
        if ((rc = ag_rd_array(&d->rd, &ncols))) return rc;
        if (ncols != spec->ncols) BAD(d, "a reply item has the wrong number of values", AG_EPROTO);
        for (size_t c = 0; c < ncols; c++)
            if ((rc = d_scalar(d, ag_spec_wire_col(spec, c), items + i * spec->item_size)))
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

static int post_check(dec *d, ag_msg *m, uint32_t seen_hdr) {
    if (ag_proto_is_stream(m->type) && seen_hdr != 0xf)
        BAD(d, "a stream message lacks run, cid, seq or drop", AG_EPROTO);
    if (m->type != AG_MSG_SNAPSHOT) return AG_OK;
    ag_msg_snapshot *s = &m->u.snapshot;
    size_t size = ag_proto_dtype_size(s->dtype);
    if (s->n == 0) BAD(d, "a snapshot needs n >= 1", AG_EPROTO);
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
        if ((spec->fields[j].flags & F_REQ) && !(seen & (1u << j)))
            BAD(d, "a required key is missing", AG_EPROTO);
    if ((rc = post_check(d, m, seen_hdr))) return rc;
    if (m->type == AG_MSG_RUN_START && !m->u.run_start.metadata) m->u.run_start.metadata = "{}";
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
    if (!spec) return ag_errctx_set(&out->err, AG_EPROTO, "unknown message type");
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
