/*
 * test_shm.c - a snapshot's shared-memory key (PROTOCOL.md 3.3.1,
 * ag_msg_shm): [token, fd, size, mark, at-or-nil]. Round trips of an offer
 * (at nil, the arrays in data) and of a record (at set, no data); the decoder
 * refuses a token of 0, a descriptor over INT32_MAX, a segment size out of
 * [AG_SHM_MIN_SIZE, AG_SHM_MAX_SIZE], an array of another length, data and at
 * together, neither of them, and a record past the end of the ring; the
 * encoder refuses the same values.
 */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"
#include "proto/shm.h"

#define CAP ((uint64_t)AG_SHM_MIN_SIZE - AG_SHM_HEADER) /* the ring of the smallest segment */

static ag_msg snapshot_msg(const float *w, const float *x, uint64_t n) {
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){"run-shm", 0x1122334455667788ULL, 5, 0};
    m.u.snapshot = (ag_msg_snapshot){.step = 3,
                                     .tensor = "layer.1.weight",
                                     .dtype = AG_DTYPE_F32,
                                     .form = AG_FORM_SGD,
                                     .lr = 0.01,
                                     .n = n,
                                     .w = w,
                                     .x = x};
    return m;
}

/* Whether the encoded message's top map has key k. */
static int has_key(const ag_buf *b, const char *k) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, (const char *)b->data, b->len, &off),
                 MSGPACK_UNPACK_SUCCESS);
    cr_assert_eq(u.data.type, MSGPACK_OBJECT_MAP);
    int found = 0;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object *key = &u.data.via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
            memcmp(key->via.str.ptr, k, key->via.str.size) == 0)
            found = 1;
    }
    msgpack_unpacked_destroy(&u);
    return found;
}

Test(shm, an_offer_round_trips_with_its_arrays_in_data) {
    float w[6] = {1, -2, 3.5f, 4, 5, 6}, g[6] = {0.5f, 0, -1, 1e-3f, 2, 7};
    ag_msg m = snapshot_msg(w, g, 6);
    m.u.snapshot.shm = (ag_msg_shm){.token = 0xdeadbeefcafef00dULL,
                                    .fd = 17,
                                    .size = AG_SHM_MIN_SIZE + 8192,
                                    .mark = 123456789,
                                    .at = 999, /* not sent: has_at is 0 */
                                    .has_at = 0};
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, &m);
    cr_assert_eq(rc, AG_OK, "%s (%s)", ag_strerror(rc), ag_errctx_text(&m.err));
    cr_assert_eq(ag_proto_encoded_size(&m), b.len);
    cr_assert(has_key(&b, "shm"));
    cr_assert(has_key(&b, "data"));
    ag_msg d;
    rc = ag_proto_decode(b.data, b.len, &d);
    cr_assert_eq(rc, AG_OK, "%s (%s)", ag_strerror(rc), ag_errctx_text(&d.err));
    const ag_msg_snapshot *o = &d.u.snapshot;
    cr_assert_eq(o->shm.token, 0xdeadbeefcafef00dULL);
    cr_assert_eq(o->shm.fd, 17);
    cr_assert_eq(o->shm.size, AG_SHM_MIN_SIZE + 8192);
    cr_assert_eq(o->shm.mark, 123456789);
    cr_assert_eq(o->shm.has_at, 0);
    cr_assert_eq(o->remote, 0);
    cr_assert_eq(o->n, 6);
    cr_assert_not_null(o->w);
    cr_assert_not_null(o->x);
    cr_assert_arr_eq(o->w, w, sizeof w);
    cr_assert_arr_eq(o->x, g, sizeof g);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(shm, a_record_round_trips_without_data) {
    ag_msg m = snapshot_msg(NULL, NULL, 1000); /* the arrays are in the segment */
    m.u.snapshot.numel = 5000;
    m.u.snapshot.shm = (ag_msg_shm){.token = 42,
                                    .fd = INT32_MAX,
                                    .size = AG_SHM_MAX_SIZE,
                                    .mark = 7 * CAP + 8000,
                                    .at = 7 * CAP, /* the ring's start, seven laps on */
                                    .has_at = 1};
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, &m);
    cr_assert_eq(rc, AG_OK, "%s (%s)", ag_strerror(rc), ag_errctx_text(&m.err));
    cr_assert_eq(ag_proto_encoded_size(&m), b.len);
    cr_assert(has_key(&b, "shm"));
    cr_assert_not(has_key(&b, "data"));
    cr_assert_lt(b.len, 200, "no payload: %zu bytes", b.len);
    ag_msg d;
    rc = ag_proto_decode(b.data, b.len, &d);
    cr_assert_eq(rc, AG_OK, "%s (%s)", ag_strerror(rc), ag_errctx_text(&d.err));
    const ag_msg_snapshot *o = &d.u.snapshot;
    cr_assert_eq(o->shm.token, 42);
    cr_assert_eq(o->shm.fd, INT32_MAX);
    cr_assert_eq(o->shm.size, AG_SHM_MAX_SIZE);
    cr_assert_eq(o->shm.mark, 7 * CAP + 8000);
    cr_assert_eq(o->shm.at, 7 * CAP);
    cr_assert_eq(o->shm.has_at, 1);
    cr_assert_null(o->w);
    cr_assert_null(o->x);
    cr_assert_eq(o->n, 1000);
    cr_assert_eq(o->numel, 5000);
    cr_assert_str_eq(o->tensor, "layer.1.weight");
    cr_assert_eq(o->step, 3);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    /* The last record that fits before the ring's end, in bfloat16. */
    m.u.snapshot.dtype = AG_DTYPE_BF16;
    m.u.snapshot.shm.size = AG_SHM_MIN_SIZE;
    m.u.snapshot.shm.at = 3 * CAP + CAP - 4000;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    rc = ag_proto_decode(b.data, b.len, &d);
    cr_assert_eq(rc, AG_OK, "%s (%s)", ag_strerror(rc), ag_errctx_text(&d.err));
    cr_assert_eq(d.u.snapshot.shm.at, 4 * CAP - 4000);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(shm, a_snapshot_without_the_key_round_trips_without_it) {
    float w[2] = {1, 2}, g[2] = {3, 4};
    ag_msg m = snapshot_msg(w, g, 2);
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    cr_assert_not(has_key(&b, "shm"));
    ag_msg d;
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    cr_assert_eq(d.u.snapshot.shm.token, 0);
    cr_assert_eq(d.u.snapshot.shm.has_at, 0);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

/* ---- the decoder, on hand-built messages ------------------------------ */

static void key(msgpack_packer *pk, const char *k) { msgpack_pack_str_with_body(pk, k, strlen(k)); }

/* The shm array: len elements, vals[i] each, element 4 nil when at_nil. */
typedef struct shm_arr {
    int len;
    uint64_t vals[6];
    int at_nil;
} shm_arr;

/* A float32 SGD snapshot of n elements with the shm key a (NULL: none) and
 * data (2 * n * 4 zero bytes) when with_data. */
static void hand_built(msgpack_sbuffer *sb, uint64_t n, const shm_arr *a, int with_data) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6 + 6 + (a != NULL) + (with_data != 0));
    key(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "t");
    msgpack_pack_uint8(&pk, (uint8_t)AG_MSG_SNAPSHOT);
    key(&pk, "run");
    msgpack_pack_str_with_body(&pk, "r", 1);
    key(&pk, "cid");
    msgpack_pack_uint64(&pk, 1);
    key(&pk, "seq");
    msgpack_pack_uint64(&pk, 2);
    key(&pk, "drop");
    msgpack_pack_uint64(&pk, 0);
    key(&pk, "step");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "tensor");
    msgpack_pack_str_with_body(&pk, "w", 1);
    key(&pk, "dtype");
    msgpack_pack_int(&pk, AG_DTYPE_F32);
    key(&pk, "form");
    msgpack_pack_uint8(&pk, AG_FORM_SGD);
    key(&pk, "lr");
    msgpack_pack_double(&pk, 0.1);
    key(&pk, "n");
    msgpack_pack_uint64(&pk, n);
    if (a) {
        key(&pk, "shm");
        msgpack_pack_array(&pk, (size_t)a->len);
        for (int i = 0; i < a->len; i++) {
            if (i == 4 && a->at_nil)
                msgpack_pack_nil(&pk);
            else
                msgpack_pack_uint64(&pk, a->vals[i]);
        }
    }
    if (with_data) {
        size_t len = (size_t)(2 * n * 4);
        char *zeros = calloc(1, len + 1);
        cr_assert_not_null(zeros);
        key(&pk, "data");
        msgpack_pack_bin_with_body(&pk, zeros, len);
        free(zeros);
    }
}

static int decode_built(uint64_t n, const shm_arr *a, int with_data, ag_msg *m) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    hand_built(&sb, n, a, with_data);
    int rc = ag_proto_decode(sb.data, sb.size, m);
    if (rc == AG_OK) {
        cr_assert_eq(m->u.snapshot.shm.token, a ? a->vals[0] : 0);
        ag_msg_clear(m);
    } else {
        cr_assert(ag_errctx_text(&m->err)[0] != 0, "a rejection says why");
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

Test(shm, hand_built_offers_and_records_decode) {
    ag_msg m;
    /* an offer: at nil, data */
    shm_arr offer = {5, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 1};
    cr_assert_eq(decode_built(4, &offer, 1, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    /* a record: at set, no data; the smallest and the largest segment */
    shm_arr rec = {5, {9, 3, AG_SHM_MIN_SIZE, 64, 0, 0}, 0};
    cr_assert_eq(decode_built(4, &rec, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    rec.vals[2] = AG_SHM_MAX_SIZE;
    rec.vals[4] = AG_SHM_MAX_SIZE - AG_SHM_HEADER - 32; /* the last 32 bytes of the ring */
    cr_assert_eq(decode_built(4, &rec, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    /* a record exactly as long as the ring, at the ring's start */
    rec.vals[2] = AG_SHM_MIN_SIZE;
    rec.vals[4] = 5 * CAP;
    cr_assert_eq(decode_built(CAP / 8, &rec, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    /* a record ending exactly at the ring's end, some laps on */
    rec.vals[4] = 2 * CAP + CAP - 32;
    cr_assert_eq(decode_built(4, &rec, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    /* descriptor INT32_MAX is still one */
    rec.vals[1] = INT32_MAX;
    cr_assert_eq(decode_built(4, &rec, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
}

Test(shm, the_decoder_refuses_bad_keys) {
    static const struct {
        const char *what;
        uint64_t n;
        shm_arr a;
        int with_data;
    } cases[] = {
        {"token 0 (offer)", 4, {5, {0, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 1}, 1},
        {"token 0 (record)", 4, {5, {0, 3, AG_SHM_MIN_SIZE, 0, 64, 0}, 0}, 0},
        {"fd over INT32_MAX", 4, {5, {9, (uint64_t)INT32_MAX + 1, AG_SHM_MIN_SIZE, 0, 0, 0}, 1}, 1},
        {"fd UINT64_MAX", 4, {5, {9, UINT64_MAX, AG_SHM_MIN_SIZE, 0, 0, 0}, 0}, 0},
        {"size below the minimum", 4, {5, {9, 3, AG_SHM_MIN_SIZE - 1, 0, 0, 0}, 1}, 1},
        {"size 0", 4, {5, {9, 3, 0, 0, 0, 0}, 0}, 0},
        {"size under the header", 4, {5, {9, 3, AG_SHM_HEADER, 0, 0, 0}, 0}, 0},
        {"size above the maximum", 4, {5, {9, 3, AG_SHM_MAX_SIZE + 1, 0, 0, 0}, 1}, 1},
        {"size UINT64_MAX", 4, {5, {9, 3, UINT64_MAX, 0, 0, 0}, 0}, 0},
        {"4 elements", 4, {4, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 0}, 1},
        {"6 elements", 4, {6, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 0}, 0},
        {"6 elements, at nil", 4, {6, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 1}, 1},
        {"0 elements", 4, {0, {0}, 0}, 1},
        {"both data and at", 4, {5, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 0}, 1},
        {"neither data nor at", 4, {5, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 1}, 0},
        {"a record 1 byte past the ring end",
         4,
         {5, {9, 3, AG_SHM_MIN_SIZE, 0, CAP - 31, 0}, 0},
         0},
        {"a record past the end, laps on",
         4,
         {5, {9, 3, AG_SHM_MIN_SIZE, 0, 9 * CAP - 16, 0}, 0},
         0},
        {"a record longer than the ring", CAP / 8 + 1, {5, {9, 3, AG_SHM_MIN_SIZE, 0, 0, 0}, 0}, 0},
        {"a record of 2^61 elements", 1ull << 61, {5, {9, 3, AG_SHM_MAX_SIZE, 0, 0, 0}, 0}, 0},
        {"at UINT64_MAX", 4, {5, {9, 3, AG_SHM_MIN_SIZE, 0, UINT64_MAX, 0}, 0}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ag_msg m;
        int rc = decode_built(cases[i].n, &cases[i].a, cases[i].with_data, &m);
        cr_expect_eq(rc, AG_EPROTO, "%s: decoded (rc %d)", cases[i].what, rc);
    }
}

Test(shm, a_shm_key_that_is_not_an_array_of_integers_is_refused) {
    static const uint8_t bodies[][8] = {
        {0xc0},                                    /* nil */
        {0x05},                                    /* an integer */
        {0x95, 0x01, 0x02, 0xc0, 0x00, 0xc0},      /* size nil */
        {0x95, 0xff, 0x02, 0x03, 0x00, 0xc0},      /* a negative token */
        {0x95, 0x01, 0x02, 0x03, 0x00, 0xa1, 'x'}, /* at a string */
    };
    static const size_t lens[] = {1, 1, 6, 6, 7};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        hand_built(&sb, 4, NULL, 1);
        /* the map grows by one key: its fixmap header is the first byte */
        cr_assert_eq((uint8_t)sb.data[0], 0x80 | 13);
        sb.data[0] = (char)(0x80 | 14);
        msgpack_sbuffer_write(&sb, "\xa3shm", 4);
        msgpack_sbuffer_write(&sb, (const char *)bodies[i], lens[i]);
        ag_msg m;
        int rc = ag_proto_decode(sb.data, sb.size, &m);
        cr_expect_neq(rc, AG_OK, "case %zu decoded", i);
        if (rc == AG_OK) ag_msg_clear(&m);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* An array of 4 followed by a nil, or of 6 whose last element is a key: a
 * reader that took 5 elements whatever the array's length would find a
 * well-formed message. */
Test(shm, the_array_length_is_checked_not_just_its_elements) {
    for (int six = 0; six <= 1; six++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        hand_built(&sb, 4, NULL, 1);
        cr_assert_eq((uint8_t)sb.data[0], 0x80 | 13);
        sb.data[0] = (char)(0x80 | (six ? 15 : 14));
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        key(&pk, "shm");
        msgpack_pack_array(&pk, six ? 6 : 4);
        msgpack_pack_uint64(&pk, 9);
        msgpack_pack_uint64(&pk, 3);
        msgpack_pack_uint64(&pk, AG_SHM_MIN_SIZE);
        msgpack_pack_uint64(&pk, 0);
        msgpack_pack_nil(&pk); /* the 5th: outside the array of 4 */
        if (six) {
            key(&pk, "zz"); /* the 6th, an unknown key to a reader of 5 */
            msgpack_pack_uint8(&pk, 0);
        }
        ag_msg m;
        int rc = ag_proto_decode(sb.data, sb.size, &m);
        cr_expect_eq(rc, AG_EPROTO, "an array of %d decoded (rc %d)", six ? 6 : 4, rc);
        if (rc == AG_OK) ag_msg_clear(&m);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* ---- the encoder ------------------------------------------------------ */

static int encode_rc(ag_msg *m) {
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, m);
    if (rc) {
        cr_assert_eq(b.len, 0, "a failed encode writes nothing");
        cr_assert(ag_errctx_text(&m->err)[0] != 0, "a refusal says why");
    }
    ag_buf_free(&b);
    return rc;
}

Test(shm, the_encoder_refuses_bad_keys) {
    float w[4] = {1, 2, 3, 4}, g[4] = {0};
    static const struct {
        const char *what;
        uint64_t n;
        int arrays;
        ag_msg_shm shm;
    } cases[] = {
        {"a record without a token",
         4,
         0,
         {.token = 0, .fd = 3, .size = AG_SHM_MIN_SIZE, .has_at = 1}},
        {"fd over INT32_MAX",
         4,
         1,
         {.token = 9, .fd = (uint64_t)INT32_MAX + 1, .size = AG_SHM_MIN_SIZE}},
        {"fd over INT32_MAX (record)",
         4,
         0,
         {.token = 9, .fd = UINT64_MAX, .size = AG_SHM_MIN_SIZE, .has_at = 1}},
        {"size below the minimum", 4, 1, {.token = 9, .fd = 3, .size = AG_SHM_MIN_SIZE - 1}},
        {"size 0 (record)", 4, 0, {.token = 9, .fd = 3, .size = 0, .has_at = 1}},
        {"size above the maximum", 4, 1, {.token = 9, .fd = 3, .size = AG_SHM_MAX_SIZE + 1}},
        {"a record past the ring end",
         4,
         0,
         {.token = 9, .fd = 3, .size = AG_SHM_MIN_SIZE, .at = CAP - 31, .has_at = 1}},
        {"a record past the ring end, laps on",
         4,
         0,
         {.token = 9, .fd = 3, .size = AG_SHM_MIN_SIZE, .at = 4 * CAP - 1, .has_at = 1}},
        {"a record longer than the ring",
         CAP / 8 + 1,
         0,
         {.token = 9, .fd = 3, .size = AG_SHM_MIN_SIZE, .has_at = 1}},
        {"an offer without arrays", 4, 0, {.token = 9, .fd = 3, .size = AG_SHM_MIN_SIZE}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ag_msg m = snapshot_msg(cases[i].arrays ? w : NULL, cases[i].arrays ? g : NULL, cases[i].n);
        m.u.snapshot.shm = cases[i].shm;
        cr_expect_neq(encode_rc(&m), AG_OK, "%s: encoded", cases[i].what);
    }
    /* and their good neighbours encode */
    ag_msg m = snapshot_msg(NULL, NULL, 4);
    m.u.snapshot.shm = (ag_msg_shm){
        .token = 9, .fd = INT32_MAX, .size = AG_SHM_MIN_SIZE, .at = CAP - 32, .has_at = 1};
    cr_expect_eq(encode_rc(&m), AG_OK, "%s", ag_errctx_text(&m.err));
    m = snapshot_msg(w, g, 4);
    m.u.snapshot.shm = (ag_msg_shm){.token = 9, .fd = 0, .size = AG_SHM_MAX_SIZE};
    cr_expect_eq(encode_rc(&m), AG_OK, "%s", ag_errctx_text(&m.err));
}
