/*
 * bundle.c - the bundle message (t = 6, PROTOCOL.md 3.6): several complete
 * stream messages carried in one transport message, so a trainer that logs
 * many small snapshots pays the transport's per-message cost once per
 * bundle instead of once per snapshot. The client builds bundles from its
 * send queue; the daemon splits one back into its messages, which it then
 * handles exactly as if they had arrived one by one.
 */
#include <string.h>

#include "proto/internal.h"

/* {"v": 2, "t": 6, "msgs": [bin, ...]}: the map and array headers. */
int ag_bundle_begin(ag_buf *b, uint32_t count) {
    if (!b || count == 0 || count > AG_PROTO_MAX_BUNDLE) return AG_EINVAL;
    size_t start = b->len;
    msgpack_packer pk;
    ag_packer_init(&pk, b);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint32(&pk, AG_PROTO_VERSION);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_uint32(&pk, AG_MSG_BUNDLE);
    msgpack_pack_str_with_body(&pk, "msgs", 4);
    msgpack_pack_array(&pk, count);
    if (b->err) {
        int err = b->err;
        b->len = start;
        return err;
    }
    return AG_OK;
}

int ag_bundle_add(ag_buf *b, const void *msg, size_t len) {
    if (!b || !msg || len == 0 || len > UINT32_MAX) return AG_EINVAL;
    size_t start = b->len;
    msgpack_packer pk;
    ag_packer_init(&pk, b);
    msgpack_pack_bin_with_body(&pk, msg, len);
    if (b->err) {
        int err = b->err;
        b->len = start;
        return err;
    }
    return AG_OK;
}

size_t ag_bundle_size(uint32_t count, size_t bytes) {
    /* map, "v" 2, "t" 6, "msgs" and the array header (at most 5 bytes);
     * each entry's bin header (at most 5 bytes) */
    return 1 + 2 + 1 + 2 + 1 + 5 + 5 + (size_t)count * 5 + bytes;
}

static int key_is(const char *k, size_t n, const char *want) {
    return strlen(want) == n && memcmp(k, want, n) == 0;
}

int ag_proto_bundle_split(const void *data, size_t len, ag_bundle_entry *out, size_t max, size_t *n,
                          ag_errctx *err) {
    if (!data || !out || !n) return AG_EINVAL;
    *n = 0;
    if (len > AG_PROTO_MAX_MESSAGE) return ag_errctx_set(err, AG_ETOOBIG, "bundle too long");
    ag_rd r = {data, (const uint8_t *)data + len, err};
    uint32_t keys, count = 0;
    int rc = ag_rd_map(&r, &keys), have_v = 0, have_t = 0, have_msgs = 0;
    for (uint32_t i = 0; !rc && i < keys; i++) {
        const char *k;
        size_t kn;
        uint64_t v;
        if ((rc = ag_rd_str(&r, &k, &kn))) break;
        if (key_is(k, kn, "v") || key_is(k, kn, "t")) {
            int *have = k[0] == 'v' ? &have_v : &have_t;
            if (*have) return ag_errctx_set(err, AG_EPROTO, "a key appears twice");
            *have = 1;
            if ((rc = ag_rd_uint(&r, &v))) break;
            if (k[0] == 'v' && (v < 2 || v > AG_PROTO_VERSION))
                return ag_errctx_set(err, AG_EVERSION, "bundles need protocol version 2");
            if (k[0] == 't' && v != AG_MSG_BUNDLE)
                return ag_errctx_set(err, AG_EPROTO, "not a bundle");
        } else if (key_is(k, kn, "msgs")) {
            if (have_msgs) return ag_errctx_set(err, AG_EPROTO, "a key appears twice");
            have_msgs = 1;
            if ((rc = ag_rd_array(&r, &count))) break;
            if (count == 0) return ag_errctx_set(err, AG_EPROTO, "an empty bundle");
            if (count > AG_PROTO_MAX_BUNDLE || count > max)
                return ag_errctx_set(err, AG_ETOOBIG, "more than 4096 messages in a bundle");
            for (uint32_t e = 0; e < count; e++) {
                const void *b;
                size_t bl;
                if ((rc = ag_rd_bin(&r, &b, &bl))) break;
                if (bl == 0) return ag_errctx_set(err, AG_EPROTO, "an empty message in a bundle");
                out[e] = (ag_bundle_entry){b, bl};
            }
        } else {
            rc = ag_rd_skip(&r, 1);
        }
    }
    if (rc) return rc;
    if (r.p != r.end) return ag_errctx_set(err, AG_EPROTO, "bytes after the bundle");
    if (!have_v || !have_t || !have_msgs)
        return ag_errctx_set(err, AG_EPROTO, "a bundle needs v, t and msgs");
    *n = count;
    return AG_OK;
}
