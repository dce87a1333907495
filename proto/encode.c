/*
 * encode.c - message -> msgpack, driven by the tables of spec.c. Every value
 * is checked against the limits the decoder enforces, so we never send what
 * a receiver would reject. Also the incremental stats batch used by the
 * client's hot path and the in-place seq/dropped patch of its send queue.
 */
#include <math.h>
#include <string.h>

#include "proto/internal.h"

#define FAIL(text, code)                                                                           \
    do {                                                                                           \
        *why = (text);                                                                             \
        return (code);                                                                             \
    } while (0)

static void put_key(msgpack_packer *pk, const char *key) {
    size_t n = strlen(key);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, key, n);
}

static void put_str(msgpack_packer *pk, const char *s, size_t n) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void put_u32_be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Check and write one scalar value of kind f->kind found at base + f->off. */
static int put_scalar(msgpack_packer *pk, const ag_field *f, const char *base, const char **why) {
    const void *at = base + f->off;
    const char *s;
    size_t n;
    double d;
    int i;
    switch (f->kind) {
    case K_UINT: msgpack_pack_uint64(pk, *(const uint64_t *)at); return AG_OK;
    case K_INT: msgpack_pack_int64(pk, *(const int64_t *)at); return AG_OK;
    case K_FLOAT:
        d = *(const double *)at;
        if (f->show == S_NAN && isnan(d)) { /* unknown */
            msgpack_pack_nil(pk);
            return AG_OK;
        }
        if (!isfinite(d) || ((f->flags & F_NONNEG) && d < 0))
            FAIL("a number is not finite or out of range", AG_EINVAL);
        msgpack_pack_double(pk, d);
        return AG_OK;
    case K_SCALE:
        d = *(const double *)at;
        if (!isfinite(d) || d <= 0) FAIL("scale must be finite and > 0", AG_EINVAL);
        msgpack_pack_double(pk, d);
        return AG_OK;
    case K_ENUM:
        i = *(const int *)at;
        if (i < 0 || (size_t)i > f->aux) FAIL("an enum value is out of range", AG_EINVAL);
        msgpack_pack_uint32(pk, (uint32_t)i);
        return AG_OK;
    case K_CODE:
        i = *(const int *)at;
        if (i >= 0) FAIL("an error code must be negative", AG_EINVAL);
        msgpack_pack_int32(pk, i);
        return AG_OK;
    case K_NAME:
        s = *(const char *const *)at;
        if (!s) FAIL("a name is NULL", AG_EINVAL);
        n = strlen(s);
        if (n > AG_NAME_MAX) FAIL("a name is longer than AG_NAME_MAX", AG_ETOOBIG);
        if (!ag_proto_name_ok(s, n)) FAIL("a name is empty", AG_EINVAL);
        put_str(pk, s, n);
        return AG_OK;
    case K_FMT:
        s = *(const char *const *)at;
        n = s ? strlen(s) : 0;
        if (!ag_proto_format_name_ok(s, n))
            FAIL("a format name is not 1..15 of [A-Za-z0-9_-]", AG_EINVAL);
        put_str(pk, s, n);
        return AG_OK;
    case K_STR:
        s = *(const char *const *)at;
        if (!s) s = "";
        n = strlen(s);
        if (n > f->aux) FAIL("a string is over its limit", AG_ETOOBIG);
        put_str(pk, s, n);
        return AG_OK;
    case K_LAUNCH:
        s = *(const char *const *)at;
        n = s ? strlen(s) : 0;
        if (n > f->aux) FAIL("a launch id is longer than 128 bytes", AG_ETOOBIG);
        if (!ag_proto_launch_id_ok(s, n))
            FAIL("a launch id is empty or not printable ASCII", AG_EINVAL);
        put_str(pk, s, n);
        return AG_OK;
    case K_JSON:
        s = *(const char *const *)at;
        if (!s) s = "{}";
        n = strlen(s);
        if (n > f->aux) FAIL("metadata is over 64 KiB", AG_ETOOBIG);
        if (!ag_proto_json_object_ok(s, n)) FAIL("metadata is not a JSON object", AG_EINVAL);
        put_str(pk, s, n);
        return AG_OK;
    default: FAIL("internal: not a scalar kind", AG_EINVAL);
    }
}

/* Is an optional field present (to be written)? */
static int present(const ag_field *f, const char *base, int type) {
    const void *at = base + f->off;
    if (f->kind == K_SCALE) return *(const int *)(base + f->aux) != 0;
    if (f->kind == K_SHM) return ((const ag_msg_shm *)(const void *)at)->token != 0;
    if (f->kind == K_DATA) return !((const ag_msg_snapshot *)(const void *)at)->shm.has_at;
    if (type == AG_MSG_SNAPSHOT && strcmp(f->key, "lr") == 0) {
        const ag_msg_snapshot *s = (const ag_msg_snapshot *)base;
        return s->form == AG_FORM_SGD || s->lr != 0;
    }
    if (f->flags & F_REQ) return 1;
    if (f->kind == K_REPL) {
        const ag_msg_counts *c = (const ag_msg_counts *)(const void *)at;
        for (size_t i = 0; c->replicated && i < c->n; i++)
            if (c->replicated[i]) return 1;
        return 0;
    }
    switch (f->kind) {
    case K_UINT: return *(const uint64_t *)at != 0;
    case K_INT: return *(const int64_t *)at != 0;
    case K_FLOAT: return *(const double *)at != 0;
    case K_ENUM:
    case K_CODE: return *(const int *)at != 0;
    case K_FMTS: return *(const size_t *)at != 0;
    default: return *(const char *const *)at != NULL;
    }
}

static int put_record(msgpack_packer *pk, const ag_stat_record *r, const char **why) {
    if (r->nonfinite > r->numel) FAIL("a record's nonfinite count exceeds numel", AG_EINVAL);
    msgpack_pack_array(pk, 6);
    for (size_t c = 0; c < 6; c++) {
        int rc = put_scalar(pk, &ag_record_cols[c], (const char *)r, why);
        if (rc) return rc;
    }
    return AG_OK;
}

/* A double that may be unknown (NaN): nil then. */
static void put_known(msgpack_packer *pk, const double *a, size_t r) {
    if (a && !isnan(a[r]))
        msgpack_pack_double(pk, a[r]);
    else
        msgpack_pack_nil(pk);
}

/* The items of a counts message (checked by ag_proto_counts_check):
 * [tensor, numel, amax, nonfinite, [[scale, stalled, total, overflow,
 * underflow, nonfinite, flips | nil (, mse | nil, sqnr_db | nil)] per
 * format]]: 9 values a result when the message carries quantization error,
 * else the 7 that every version-2 daemon reads. Scales go as float 32. */
static void put_counts(msgpack_packer *pk, const ag_msg_counts *c) {
    const int qerr = c->mse != NULL || c->sqnr_db != NULL;
    msgpack_pack_array(pk, c->n);
    for (size_t i = 0; i < c->n; i++) {
        msgpack_pack_array(pk, 5);
        put_str(pk, c->tensors[i], strlen(c->tensors[i]));
        msgpack_pack_uint64(pk, c->numel[i]);
        msgpack_pack_double(pk, c->amax[i]);
        msgpack_pack_uint64(pk, c->nonfinite[i]);
        msgpack_pack_array(pk, c->nformats);
        for (size_t f = 0; f < c->nformats; f++) {
            size_t r = i * c->nformats + f;
            const uint64_t *k = c->counts + r * AG_COUNTS_PER_RESULT;
            msgpack_pack_array(pk, 2 + AG_COUNTS_PER_RESULT + (qerr ? 2 : 0));
            msgpack_pack_float(pk, c->scales[r]);
            for (int j = 0; j < AG_COUNTS_PER_RESULT; j++) msgpack_pack_uint64(pk, k[j]);
            if (c->flips && c->flips[r] >= 0)
                msgpack_pack_uint64(pk, (uint64_t)c->flips[r]);
            else
                msgpack_pack_nil(pk);
            if (qerr) {
                put_known(pk, c->mse, r);
                put_known(pk, c->sqnr_db, r);
            }
        }
    }
}

static int snapshot_check(const ag_msg_snapshot *s, const char **why) {
    size_t size = ag_proto_dtype_size(s->dtype);
    if (size == 0) FAIL("unknown dtype", AG_EINVAL);
    if (s->n == 0) FAIL("a snapshot needs n >= 1", AG_EINVAL);
    if (s->n > AG_PROTO_MAX_MESSAGE / (2 * size))
        FAIL("snapshot data over the message limit", AG_ETOOBIG);
    if (s->numel != 0 && s->numel < s->n) FAIL("numel is smaller than n", AG_EINVAL);
    if (!isfinite(s->lr)) FAIL("lr is not finite", AG_EINVAL);
    if (s->nformats > AG_PROTO_MAX_FORMATS) FAIL("more than 64 formats", AG_ETOOBIG);
    if (s->nformats && !s->formats) FAIL("formats is NULL", AG_EINVAL);
    const ag_msg_shm *h = &s->shm;
    if (h->has_at && !h->token) FAIL("shared-memory arrays need the segment's token", AG_EINVAL);
    if (h->token) {
        if (h->fd > INT32_MAX) FAIL("a descriptor over INT32_MAX", AG_EINVAL);
        if (h->size < AG_SHM_MIN_SIZE || h->size > AG_SHM_MAX_SIZE)
            FAIL("a shared-memory segment of a size out of range", AG_EINVAL);
        uint64_t cap = h->size - AG_SHM_HEADER, len = 2 * (uint64_t)s->n * size;
        if (h->has_at && (len > cap || h->at % cap > cap - len))
            FAIL("a record past the end of its segment's ring", AG_EINVAL);
    }
    if (!h->has_at && (!s->w || !s->x)) FAIL("snapshot arrays are NULL", AG_EINVAL);
    return AG_OK;
}

/* Write the composite field f of a message. */
static int put_composite(msgpack_packer *pk, ag_buf *b, size_t start, const ag_field *f,
                         const char *base, const ag_spec *spec, size_t cols, const char **why) {
    int rc;
    if (f->kind == K_RECS) {
        const ag_msg_stats *st = (const ag_msg_stats *)(base + f->off);
        if (st->n == 0 || !st->records) FAIL("a stats batch needs at least one record", AG_EINVAL);
        if (st->n > AG_PROTO_MAX_RECORDS) FAIL("more than 65536 records", AG_ETOOBIG);
        msgpack_pack_array(pk, st->n);
        for (size_t i = 0; i < st->n; i++)
            if ((rc = put_record(pk, &st->records[i], why))) return rc;
        return AG_OK;
    }
    if (f->kind == K_FMTS) {
        size_t n = *(const size_t *)(const void *)(base + f->off);
        const char *const *names;
        memcpy(&names, base + f->off + sizeof(size_t), sizeof names);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
            ag_field ff = {"fmt", K_FMT, F_REQ, 0, 0, NULL, 0};
            if ((rc = put_scalar(pk, &ff, (const char *)&names[i], why))) return rc;
        }
        return AG_OK;
    }
    if (f->kind == K_COUNTS) {
        put_counts(pk, (const ag_msg_counts *)(const void *)(base + f->off));
        return AG_OK;
    }
    if (f->kind == K_REPL) { /* present() saw at least one */
        const ag_msg_counts *c = (const ag_msg_counts *)(const void *)(base + f->off);
        uint32_t k = 0;
        for (size_t i = 0; i < c->n; i++) k += c->replicated[i] != 0;
        msgpack_pack_array(pk, k);
        for (size_t i = 0; i < c->n; i++)
            if (c->replicated[i]) msgpack_pack_uint64(pk, i);
        return AG_OK;
    }
    if (f->kind == K_SHM) {
        const ag_msg_shm *h = (const ag_msg_shm *)(const void *)(base + f->off);
        msgpack_pack_array(pk, 5);
        msgpack_pack_uint64(pk, h->token);
        msgpack_pack_uint64(pk, h->fd);
        msgpack_pack_uint64(pk, h->size);
        msgpack_pack_uint64(pk, h->mark);
        if (h->has_at)
            msgpack_pack_uint64(pk, h->at);
        else
            msgpack_pack_nil(pk);
        return AG_OK;
    }
    if (f->kind == K_DATA) {
        const ag_msg_snapshot *s = (const ag_msg_snapshot *)(base + f->off);
        size_t half = (size_t)s->n * ag_proto_dtype_size(s->dtype);
        size_t payload_at = b->len - start + 4 + 2 + 5 + 5;
        size_t k = (8 - payload_at % 8) % 8;
        uint8_t pad[8 + 2] = {0xc4, (uint8_t)k};
        put_key(pk, "pad");
        ag_buf_put(b, pad, 2 + k);
        put_key(pk, "data");
        uint8_t hdr[5] = {0xc6};
        put_u32_be(hdr + 1, (uint32_t)(2 * half));
        ag_buf_put(b, hdr, 5);
        ag_buf_put(b, s->w, half);
        ag_buf_put(b, s->x, half);
        return AG_OK;
    }
    if (f->kind == K_ITEMS) {
        size_t n;
        const char *items;
        memcpy(&n, base + spec->count_off, sizeof n);
        memcpy(&items, base + spec->items_off, sizeof items);
        if (n > AG_PROTO_MAX_ITEMS) FAIL("more than 1048576 items", AG_ETOOBIG);
        if (n && !items) FAIL("items is NULL", AG_EINVAL);
        size_t ncols = cols && cols < spec->ncols ? cols : spec->ncols;
        if (ncols < spec->ncols_base)
            FAIL("fewer item columns than every receiver reads", AG_EINVAL);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
            msgpack_pack_array(pk, ncols);
            for (size_t c = 0; c < ncols; c++)
                if ((rc = put_scalar(pk, ag_spec_wire_col(spec, c), items + i * spec->item_size,
                                     why)))
                    return rc;
        }
        return AG_OK;
    }
    FAIL("internal: unknown kind", AG_EINVAL);
}

static void put_trailer(msgpack_packer *pk, uint64_t seq, uint64_t dropped) {
    put_key(pk, "seq");
    msgpack_pack_fix_uint64(pk, seq);
    put_key(pk, "drop");
    msgpack_pack_fix_uint64(pk, dropped);
}

static int encode(ag_buf *b, const ag_msg *m, const char **why) {
    const ag_spec *spec = ag_spec_for(m->type);
    if (!spec) FAIL("unknown message type", AG_EINVAL);
    int stream = ag_proto_is_stream(m->type);
    const char *base = (const char *)&m->u;
    if (spec->root_size) {
        memcpy(&base, &m->u, sizeof base);
        if (!base) FAIL("reply result is NULL", AG_EINVAL);
    }
    if (m->type == AG_MSG_SNAPSHOT) {
        int rc = snapshot_check(&m->u.snapshot, why);
        if (rc) return rc;
    }
    if (m->type == AG_MSG_RUN_START) {
        const ag_msg_run_start *r = &m->u.run_start;
        if (r->world > AG_PROTO_MAX_WORLD) FAIL("world is over 65536 ranks", AG_EINVAL);
        if (r->rank >= (r->world ? r->world : 1)) FAIL("rank is not below world", AG_EINVAL);
    }
    int version = m->version ? m->version : AG_PROTO_VERSION;
    if (version < AG_PROTO_VERSION_MIN || version > AG_PROTO_VERSION)
        FAIL("a protocol version this codec does not speak", AG_EINVAL);
    if (m->type == AG_MSG_COUNTS) {
        if (m->u.counts.n > AG_PROTO_MAX_COUNT_ITEMS) FAIL("more than 4096 tensors", AG_ETOOBIG);
        int rc = ag_proto_counts_check(&m->u.counts, why);
        if (rc) return rc;
        if (version < 2) FAIL("counts need protocol version 2", AG_EINVAL);
    }
    size_t nkeys = 2 + (stream ? 4 : 0);
    for (size_t i = 0; i < spec->nfields; i++)
        nkeys += (size_t)present(&spec->fields[i], base, m->type);
    if (m->type == AG_MSG_SNAPSHOT && !m->u.snapshot.shm.has_at) nkeys++; /* pad */

    msgpack_packer pk;
    ag_packer_init(&pk, b);
    size_t start = b->len;
    msgpack_pack_map(&pk, nkeys);
    put_key(&pk, "v");
    msgpack_pack_uint32(&pk, (uint32_t)version);
    put_key(&pk, "t");
    msgpack_pack_uint32(&pk, (uint32_t)m->type);
    if (stream) {
        ag_field run = {"run", K_NAME, F_REQ, offsetof(ag_stream_hdr, run), 0, NULL, 0};
        put_key(&pk, "run");
        int rc = put_scalar(&pk, &run, (const char *)&m->hdr, why);
        if (rc) return rc;
        put_key(&pk, "cid");
        msgpack_pack_uint64(&pk, m->hdr.client_id);
    }
    for (size_t i = 0; i < spec->nfields; i++) {
        const ag_field *f = &spec->fields[i];
        if (!present(f, base, m->type)) continue;
        if (f->kind != K_DATA) /* K_DATA writes "pad" before its key */
            put_key(&pk, f->key);
        int rc = f->kind >= K_RECS ? put_composite(&pk, b, start, f, base, spec, m->cols, why)
                                   : put_scalar(&pk, f, base, why);
        if (rc) return rc;
    }
    if (stream) put_trailer(&pk, m->hdr.seq, m->hdr.dropped);
    if (b->err) FAIL(b->err == AG_ENOMEM ? "out of memory" : "message over its size limit", b->err);
    return AG_OK;
}

int ag_proto_encode(ag_buf *b, const ag_msg *m) {
    if (!b || !m) return AG_EINVAL;
    const char *why = NULL;
    size_t len0 = b->len;
    int err0 = b->err;
    if (err0) return err0;
    int rc = encode(b, m, &why);
    if (rc) {
        b->len = len0;
        b->err = 0;
        ag_errctx_set((ag_errctx *)&m->err, rc, "%s", why ? why : ag_strerror(rc));
    }
    return rc;
}

size_t ag_proto_encoded_size(const ag_msg *m) {
    ag_buf b;
    ag_buf_init_count(&b);
    if (ag_proto_encode(&b, m)) return 0;
    return b.len;
}

int ag_proto_patch_seq(void *data, size_t len, uint64_t seq, uint64_t dropped) {
    static const uint8_t seq_key[4] = {0xa3, 's', 'e', 'q'};
    static const uint8_t drop_key[5] = {0xa4, 'd', 'r', 'o', 'p'};
    if (!data || len < AG_PROTO_TRAILER_LEN) return AG_EPROTO;
    uint8_t *t = (uint8_t *)data + len - AG_PROTO_TRAILER_LEN;
    if (memcmp(t, seq_key, 4) != 0 || t[4] != 0xcf || memcmp(t + 13, drop_key, 5) != 0 ||
        t[18] != 0xcf)
        return AG_EPROTO;
    for (int i = 0; i < 8; i++) {
        t[5 + i] = (uint8_t)(seq >> (56 - 8 * i));
        t[19 + i] = (uint8_t)(dropped >> (56 - 8 * i));
    }
    return AG_OK;
}

/* ---- incremental stats batches ------------------------------------------ */

int ag_stats_batch_begin(ag_stats_batch *sb, const char *run, uint64_t client_id) {
    if (!sb || !ag_proto_name_ok(run, run ? strlen(run) : 0)) return AG_EINVAL;
    ag_buf *b = &sb->buf;
    ag_buf_reset(b);
    sb->n = 0;
    msgpack_packer pk;
    ag_packer_init(&pk, b);
    msgpack_pack_map(&pk, 7); /* v t run cid recs seq drop */
    put_key(&pk, "v");
    msgpack_pack_uint32(&pk, AG_PROTO_VERSION);
    put_key(&pk, "t");
    msgpack_pack_uint32(&pk, AG_MSG_STATS);
    put_key(&pk, "run");
    put_str(&pk, run, strlen(run));
    put_key(&pk, "cid");
    msgpack_pack_uint64(&pk, client_id);
    put_key(&pk, "recs");
    sb->count_at = b->len;
    uint8_t hdr[5] = {0xdd, 0, 0, 0, 0};
    ag_buf_put(b, hdr, 5);
    if (b->err) {
        int rc = b->err;
        ag_buf_reset(b);
        return rc;
    }
    return AG_OK;
}

int ag_stats_batch_add(ag_stats_batch *sb, const ag_stat_record *r) {
    if (!sb || !r || sb->count_at == 0) return AG_EINVAL;
    if (sb->n >= AG_PROTO_MAX_RECORDS) return AG_ETOOBIG;
    ag_buf *b = &sb->buf;
    size_t len0 = b->len;
    const char *why = NULL;
    msgpack_packer pk;
    ag_packer_init(&pk, b);
    int rc = put_record(&pk, r, &why);
    if (!rc && b->len + AG_PROTO_TRAILER_LEN > AG_PROTO_MAX_MESSAGE) rc = AG_ETOOBIG;
    if (!rc) rc = b->err;
    if (rc) {
        b->len = len0;
        b->err = 0;
        return rc;
    }
    sb->n++;
    return AG_OK;
}

int ag_stats_batch_end(ag_stats_batch *sb, uint64_t seq, uint64_t dropped) {
    if (!sb || sb->n == 0 || sb->count_at == 0 || sb->buf.mode == 2) return AG_EINVAL;
    put_u32_be(sb->buf.data + sb->count_at + 1, sb->n);
    msgpack_packer pk;
    ag_packer_init(&pk, &sb->buf);
    put_trailer(&pk, seq, dropped);
    return sb->buf.err;
}
