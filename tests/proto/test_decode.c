/*
 * test_decode.c - proto/decode.c and proto/read.c reject every malformed
 * message with an error and leave nothing allocated (run under ASan):
 * truncation, wrong types, missing or duplicate keys, oversize strings and
 * counts, wrong versions, counts that disagree with byte lengths, deep nesting.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"

static void key(msgpack_packer *pk, const char *k) { msgpack_pack_str_with_body(pk, k, strlen(k)); }

static void str(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* The keys every stream message needs, for a map of nkeys entries in all. */
static void stream_head(msgpack_packer *pk, size_t nkeys, int type) {
    msgpack_pack_map(pk, nkeys);
    key(pk, "v");
    msgpack_pack_uint8(pk, 1);
    key(pk, "t");
    msgpack_pack_uint8(pk, (uint8_t)type);
    key(pk, "run");
    str(pk, "r");
    key(pk, "cid");
    msgpack_pack_uint64(pk, 1);
    key(pk, "seq");
    msgpack_pack_uint64(pk, 2);
    key(pk, "drop");
    msgpack_pack_uint64(pk, 0);
}

static int decode_sb(const msgpack_sbuffer *sb, ag_msg *m) {
    return ag_proto_decode(sb->data, sb->size, m);
}

/* A valid snapshot of n float32 elements with data_len payload bytes. */
static void snapshot(msgpack_sbuffer *sb, uint64_t n, size_t data_len, int dtype) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    stream_head(&pk, 6 + 7, AG_MSG_SNAPSHOT);
    key(&pk, "step");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "tensor");
    str(&pk, "w");
    key(&pk, "dtype");
    msgpack_pack_int(&pk, dtype);
    key(&pk, "form");
    msgpack_pack_uint8(&pk, 0);
    key(&pk, "lr");
    msgpack_pack_double(&pk, 0.1);
    key(&pk, "n");
    msgpack_pack_uint64(&pk, n);
    key(&pk, "data");
    char *zeros = calloc(1, data_len + 1);
    msgpack_pack_bin_with_body(&pk, zeros, data_len);
    free(zeros);
}

Test(decode, a_valid_hand_built_snapshot_decodes) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    snapshot(&sb, 4, 32, AG_DTYPE_F32);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    cr_assert_eq(m.u.snapshot.n, 4);
    ag_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, snapshot_data_that_disagrees_with_n_is_rejected) {
    static const struct {
        uint64_t n;
        size_t len;
        int dtype;
    } cases[] = {
        {4, 31, AG_DTYPE_F32},
        {4, 33, AG_DTYPE_F32},
        {4, 16, AG_DTYPE_F32},
        {4, 32, AG_DTYPE_BF16},
        {0, 0, AG_DTYPE_F32},
        {UINT64_MAX / 2, 8, AG_DTYPE_F32},
        {(UINT64_MAX / 8) + 1, 0, AG_DTYPE_F32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        snapshot(&sb, cases[i].n, cases[i].len, cases[i].dtype);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "case %zu", i);
        cr_assert(ag_errctx_text(&m.err)[0] != 0);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, an_unknown_dtype_is_rejected) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    snapshot(&sb, 4, 32, 3);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, every_truncation_of_a_valid_message_is_rejected) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    snapshot(&sb, 4, 32, AG_DTYPE_F32);
    for (size_t len = 0; len < sb.size; len++) {
        /* a copy of exactly len bytes, so ASan sees any over-read */
        char *p = malloc(len ? len : 1);
        memcpy(p, sb.data, len);
        ag_msg m;
        int rc = ag_proto_decode(p, len, &m);
        cr_assert_neq(rc, AG_OK, "a prefix of %zu bytes decoded", len);
        free(p);
    }
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, trailing_bytes_are_rejected) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    snapshot(&sb, 1, 8, AG_DTYPE_F32);
    msgpack_sbuffer_write(&sb, "\xc0", 1);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, a_wrong_version_is_its_own_error) {
    static const int versions[] = {0, AG_PROTO_VERSION + 1};
    for (size_t i = 0; i < 2; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 2);
        key(&pk, "t");
        msgpack_pack_uint8(&pk, AG_MSG_Q_RUNS);
        key(&pk, "v");
        msgpack_pack_uint8(&pk, (uint8_t)versions[i]);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EVERSION, "version %d", versions[i]);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* A run_start carrying launch value l (a str) and resume value r (an int). */
static int run_start_with(const char *l, size_t ln, int64_t r) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    stream_head(&pk, 11, AG_MSG_RUN_START);
    key(&pk, "host");
    str(&pk, "h");
    key(&pk, "pid");
    msgpack_pack_int(&pk, 1);
    key(&pk, "time");
    msgpack_pack_int(&pk, 1);
    key(&pk, "launch");
    msgpack_pack_str_with_body(&pk, l, ln);
    key(&pk, "resume");
    msgpack_pack_int64(&pk, r);
    ag_msg m;
    int rc = decode_sb(&sb, &m);
    if (rc == AG_OK) {
        cr_assert_eq(m.u.run_start.resume, r);
        cr_assert_eq(strlen(m.u.run_start.launch), ln);
    }
    ag_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

Test(decode, a_launch_id_from_the_network_is_bounded_and_printable) {
    char id[AG_LAUNCH_ID_MAX + 1];
    memset(id, 'a', sizeof id);
    cr_assert_eq(run_start_with("job-42", 6, 1), AG_OK);
    cr_assert_eq(run_start_with(id, AG_LAUNCH_ID_MAX, 0), AG_OK);
    cr_assert_eq(run_start_with(id, AG_LAUNCH_ID_MAX + 1, 0), AG_ETOOBIG);
    cr_assert_eq(run_start_with("", 0, 0), AG_EPROTO);
    cr_assert_eq(run_start_with("a\0b", 3, 0), AG_EPROTO);
    cr_assert_eq(run_start_with("a\nb", 3, 0), AG_EPROTO);
    cr_assert_eq(run_start_with("\xff\xfe", 2, 0), AG_EPROTO);
    cr_assert_eq(run_start_with("job", 3, 2), AG_EPROTO, "resume is 0 or 1");
    cr_assert_eq(run_start_with("job", 3, -1), AG_EPROTO);
}

Test(decode, missing_version_or_type_or_unknown_type_is_rejected) {
    static const int with_v[] = {1, 0, 1};
    static const int types[] = {-1, AG_MSG_Q_RUNS, 99};
    for (int i = 0; i < 3; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, (size_t)with_v[i] + (types[i] >= 0));
        if (with_v[i]) {
            key(&pk, "v");
            msgpack_pack_uint8(&pk, 1);
        }
        if (types[i] >= 0) {
            key(&pk, "t");
            msgpack_pack_uint8(&pk, (uint8_t)types[i]);
        }
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "case %d", i);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, a_top_level_value_that_is_not_a_map_is_rejected) {
    static const char *const blobs[] = {"\x90", "\xc0", "\x01", "\xa1v", "\xc1", "\xd4\x01\x02"};
    for (size_t i = 0; i < sizeof blobs / sizeof blobs[0]; i++) {
        ag_msg m;
        cr_assert_neq(ag_proto_decode(blobs[i], strlen(blobs[i]) ? strlen(blobs[i]) : 1, &m),
                      AG_OK);
    }
    ag_msg m;
    cr_assert_eq(ag_proto_decode("", 0, &m), AG_EPROTO);
    cr_assert_eq(ag_proto_decode(NULL, 0, &m), AG_EINVAL);
}

Test(decode, wrong_value_types_are_rejected) {
    /* run_start with pid as a string, then host as an int, then time as a float */
    for (int variant = 0; variant < 3; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 9, AG_MSG_RUN_START);
        key(&pk, "host");
        if (variant == 1)
            msgpack_pack_int(&pk, 5);
        else
            str(&pk, "h");
        key(&pk, "pid");
        if (variant == 0)
            str(&pk, "12");
        else
            msgpack_pack_int(&pk, 12);
        key(&pk, "time");
        if (variant == 2)
            msgpack_pack_double(&pk, 1.5);
        else
            msgpack_pack_int(&pk, 1);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, duplicate_and_missing_keys_are_rejected) {
    for (int variant = 0; variant < 3; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, variant == 1 ? 7 : 8, AG_MSG_RUN_END);
        key(&pk, "step");
        msgpack_pack_uint8(&pk, 1);
        if (variant != 1) {
            key(&pk, variant == 0 ? "step" : variant == 2 ? "seq" : "time");
            msgpack_pack_uint8(&pk, 1);
        }
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, unknown_keys_are_skipped_but_their_nesting_is_bounded) {
    for (int depth = 1; depth <= 40; depth += 39) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 3);
        key(&pk, "v");
        msgpack_pack_uint8(&pk, 1);
        key(&pk, "t");
        msgpack_pack_uint8(&pk, AG_MSG_Q_STATUS);
        key(&pk, "future");
        for (int i = 0; i < depth; i++) msgpack_pack_array(&pk, 1);
        msgpack_pack_nil(&pk);
        ag_msg m;
        int rc = decode_sb(&sb, &m);
        cr_assert_eq(rc, depth == 1 ? AG_OK : AG_EPROTO, "depth %d", depth);
        ag_msg_clear(&m);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, huge_declared_counts_are_rejected_without_allocating) {
    /* a map, an array and a string that claim 2^32-1 entries/bytes */
    static const unsigned char map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
    static const unsigned char head[] = {0x83, 0xa1, 'v', 0x01, 0xa1, 't',  0x02, 0xa4, 'r',
                                         'e',  'c',  's', 0xdd, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char s32[] = {0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, 'v'};
    ag_msg m;
    cr_assert_eq(ag_proto_decode(map, sizeof map, &m), AG_EPROTO);
    cr_assert_eq(ag_proto_decode(head, sizeof head, &m), AG_EPROTO);
    cr_assert_eq(ag_proto_decode(s32, sizeof s32, &m), AG_EPROTO);
}

Test(decode, oversize_names_and_metadata_are_too_big) {
    char name[AG_NAME_MAX + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char *meta = malloc(AG_PROTO_MAX_METADATA + 16);
    memset(meta, ' ', AG_PROTO_MAX_METADATA + 15);
    meta[0] = '{';
    meta[AG_PROTO_MAX_METADATA + 14] = '}';
    meta[AG_PROTO_MAX_METADATA + 15] = '\0';
    for (int variant = 0; variant < 2; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 10, AG_MSG_RUN_START);
        key(&pk, "host");
        str(&pk, variant == 0 ? name : "h");
        key(&pk, "pid");
        msgpack_pack_int(&pk, 1);
        key(&pk, "time");
        msgpack_pack_int(&pk, 1);
        key(&pk, "meta");
        str(&pk, variant == 1 ? meta : "{}");
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_ETOOBIG, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
    free(meta);
}

Test(decode, bad_metadata_names_and_formats_are_rejected) {
    static const char *const metas[] = {"[]", "{", "{\"a\":}", "{} x", "{'a':1}", "{\"a\":01}"};
    for (size_t i = 0; i < sizeof metas / sizeof metas[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 10, AG_MSG_RUN_START);
        key(&pk, "host");
        str(&pk, "h");
        key(&pk, "pid");
        msgpack_pack_int(&pk, 1);
        key(&pk, "time");
        msgpack_pack_int(&pk, 1);
        key(&pk, "meta");
        str(&pk, metas[i]);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "metadata %s", metas[i]);
        msgpack_sbuffer_destroy(&sb);
    }
    /* empty run name; format name with a dot */
    for (int variant = 0; variant < 2; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 4);
        key(&pk, "v");
        msgpack_pack_uint8(&pk, 1);
        key(&pk, "t");
        msgpack_pack_uint8(&pk, AG_MSG_Q_SCALES);
        key(&pk, "run");
        str(&pk, variant == 0 ? "" : "r");
        key(&pk, "fmt");
        str(&pk, variant == 1 ? "E5.M2" : "E5M2");
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, stats_records_of_the_wrong_shape_or_values_are_rejected) {
    /* 0: 5 values; 1: role 4; 2: negative amax; 3: NaN amax; 4: nonfinite > numel;
     * 5: no records */
    for (int variant = 0; variant < 6; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 7, AG_MSG_STATS);
        key(&pk, "recs");
        msgpack_pack_array(&pk, variant == 5 ? 0 : 1);
        if (variant != 5) {
            msgpack_pack_array(&pk, variant == 0 ? 5 : 6);
            msgpack_pack_uint8(&pk, 1);
            str(&pk, "t");
            msgpack_pack_uint8(&pk, variant == 1 ? 4 : 0);
            msgpack_pack_double(&pk, variant == 2 ? -1.0 : variant == 3 ? NAN : 1.0);
            msgpack_pack_uint8(&pk, 10);
            if (variant != 0) msgpack_pack_uint8(&pk, variant == 4 ? 11 : 0);
        }
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, an_sgd_snapshot_without_lr_or_with_infinite_lr_is_rejected) {
    for (int variant = 0; variant < 3; variant++) {
        float data[2] = {1, 2};
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 6 + (variant == 0 ? 6 : 7), AG_MSG_SNAPSHOT);
        key(&pk, "step");
        msgpack_pack_uint8(&pk, 1);
        key(&pk, "tensor");
        str(&pk, "w");
        key(&pk, "dtype");
        msgpack_pack_uint8(&pk, 0);
        key(&pk, "form");
        msgpack_pack_uint8(&pk, 0);
        if (variant == 1) {
            key(&pk, "lr");
            msgpack_pack_double(&pk, INFINITY);
        } else if (variant == 2) {
            key(&pk, "scale");
            msgpack_pack_double(&pk, 0.0);
        }
        key(&pk, "n");
        msgpack_pack_uint8(&pk, 1);
        key(&pk, "data");
        msgpack_pack_bin_with_body(&pk, data, sizeof data);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO, "variant %d", variant);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, too_many_formats_are_too_big) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    float data[2] = {1, 2};
    stream_head(&pk, 6 + 8, AG_MSG_SNAPSHOT);
    key(&pk, "step");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "tensor");
    str(&pk, "w");
    key(&pk, "dtype");
    msgpack_pack_uint8(&pk, 0);
    key(&pk, "form");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "n");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "fmts");
    msgpack_pack_array(&pk, 65);
    for (int i = 0; i < 65; i++) str(&pk, "E5M2");
    key(&pk, "pad");
    msgpack_pack_bin_with_body(&pk, "", 0);
    key(&pk, "data");
    msgpack_pack_bin_with_body(&pk, data, sizeof data);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_ETOOBIG);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, a_reply_item_of_the_wrong_width_is_rejected_and_freed) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    key(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "t");
    msgpack_pack_uint8(&pk, AG_MSG_R_SCALES);
    key(&pk, "fmt");
    str(&pk, "E5M2");
    key(&pk, "items");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, 4);
    str(&pk, "w");
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_double(&pk, 1);
    msgpack_pack_double(&pk, 1);
    msgpack_pack_array(&pk, 3);
    str(&pk, "w");
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_double(&pk, 1);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, an_error_reply_needs_a_negative_code) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    key(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "t");
    msgpack_pack_uint8(&pk, AG_MSG_R_ERROR);
    key(&pk, "code");
    msgpack_pack_int(&pk, 3);
    key(&pk, "msg");
    str(&pk, "x");
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, integers_of_every_width_are_read_with_their_sign) {
    static const int64_t values[] = {
        0,     1,      127,    -1,    -32,           -33,          -128,      -129,     255,
        65535, -32768, -32769, 70000, -2147483648LL, 4294967295LL, INT64_MIN, INT64_MAX};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        stream_head(&pk, 8, AG_MSG_RUN_END);
        key(&pk, "step");
        msgpack_pack_uint8(&pk, 1);
        key(&pk, "time");
        msgpack_pack_int64(&pk, values[i]);
        ag_msg m;
        cr_assert_eq(decode_sb(&sb, &m), AG_OK);
        cr_assert_eq(m.u.run_end.time_ms, values[i]);
        ag_msg_clear(&m);
        msgpack_sbuffer_destroy(&sb);
    }
}

Test(decode, a_negative_number_for_an_unsigned_field_is_rejected) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    stream_head(&pk, 8, AG_MSG_RUN_END);
    key(&pk, "step");
    msgpack_pack_int8(&pk, -1);
    key(&pk, "time");
    msgpack_pack_int8(&pk, 1);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_EPROTO);
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, a_message_over_256_mib_is_too_big) {
    ag_msg m;
    static const char byte = (char)0x80;
    cr_assert_eq(ag_proto_decode(&byte, (size_t)AG_PROTO_MAX_MESSAGE + 1, &m), AG_ETOOBIG);
}

/* Reply items travel as arrays, so their positions are the protocol: the
 * spec tables are in document order (top's stall_rate second), yet a top
 * item on the wire stays [tensor, stalled, total, stall_rate, steps], as
 * every daemon and client so far sends and reads it. */
Test(decode, a_top_item_keeps_its_wire_positions) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    key(&pk, "v");
    msgpack_pack_uint8(&pk, AG_PROTO_VERSION);
    key(&pk, "t");
    msgpack_pack_uint8(&pk, AG_MSG_R_TOP);
    key(&pk, "fmt");
    str(&pk, "E5M2");
    key(&pk, "from");
    msgpack_pack_uint64(&pk, 4);
    key(&pk, "to");
    msgpack_pack_uint64(&pk, 9);
    key(&pk, "items");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5);
    str(&pk, "w");
    msgpack_pack_uint64(&pk, 5);
    msgpack_pack_uint64(&pk, 10);
    msgpack_pack_double(&pk, 0.5);
    msgpack_pack_uint64(&pk, 3);
    ag_msg m;
    cr_assert_eq(decode_sb(&sb, &m), AG_OK);
    cr_assert_eq(m.u.top->n, 1);
    cr_assert_str_eq(m.u.top->items[0].tensor, "w");
    cr_assert_eq(m.u.top->items[0].stalled, 5);
    cr_assert_eq(m.u.top->items[0].total, 10);
    cr_assert_eq(m.u.top->items[0].stall_rate, 0.5);
    cr_assert_eq(m.u.top->items[0].steps, 3);

    /* and the encoder writes the same bytes back */
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    cr_assert_eq(b.len, sb.size);
    cr_assert_arr_eq(b.data, sb.data, sb.size);
    ag_buf_free(&b);
    ag_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
}
