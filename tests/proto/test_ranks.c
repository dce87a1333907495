/*
 * test_ranks.c - the protocol's keys for distributed runs (PROTOCOL.md 3.1,
 * 3.3, 3.5): run_start's rank and world, a snapshot's repl flag and a counts
 * message's repl index list round trip; a world of 0, a rank outside its
 * world and replicated indexes out of order or past the items are refused.
 */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"

static ag_buf encode_ok(const ag_msg *m) {
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, m), AG_OK, "%s", ag_errctx_text(&m->err));
    return b;
}

/* Overwrite the byte after the first occurrence of key (a msgpack fixstr
 * key as bytes) with v. */
static void patch_after(ag_buf *b, const char *key, size_t keylen, size_t skip, uint8_t v) {
    uint8_t *p = memmem(b->data, b->len, key, keylen);
    cr_assert_not_null(p, "key not found");
    p[keylen + skip] = v;
}

static ag_msg run_start(uint64_t rank, uint64_t world) {
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = {"r", 7, 0, 0}};
    m.u.run_start.host = "h";
    m.u.run_start.rank = rank;
    m.u.run_start.world = world;
    return m;
}

Test(ranks, run_start_carries_rank_and_world_and_absent_means_rank_0_of_1) {
    ag_msg m = run_start(1, 2);
    ag_buf b = encode_ok(&m);
    ag_msg d;
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK, "%s", ag_errctx_text(&d.err));
    cr_assert_eq(d.u.run_start.rank, 1);
    cr_assert_eq(d.u.run_start.world, 2);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m = run_start(0, 0);
    b = encode_ok(&m);
    cr_assert_null(memmem(b.data, b.len, "\xa5world", 6), "a world of one sends no key");
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    cr_assert_eq(d.u.run_start.rank, 0);
    cr_assert_eq(d.u.run_start.world, 1);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m = run_start(AG_WORLD_MAX - 1, AG_WORLD_MAX);
    b = encode_ok(&m);
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    cr_assert_eq(d.u.run_start.rank, AG_WORLD_MAX - 1);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(ranks, the_encoder_refuses_a_rank_outside_its_world) {
    ag_buf b;
    ag_buf_init(&b);
    ag_msg m = run_start(2, 2);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_EINVAL);
    m = run_start(1, 0);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_EINVAL, "rank 1 of the default world of one");
    m = run_start(0, AG_WORLD_MAX + 1);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_EINVAL);
    cr_assert_eq(b.len, 0);
    ag_buf_free(&b);
}

Test(ranks, the_decoder_refuses_world_0_and_a_rank_outside_the_world) {
    ag_msg m = run_start(1, 2), d;
    ag_buf b = encode_ok(&m);
    patch_after(&b, "\xa5world", 6, 0, 0x00); /* world: 0 */
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_EPROTO);
    cr_assert_str_eq(ag_errctx_text(&d.err), "world is 0");
    ag_buf_free(&b);

    b = encode_ok(&m);
    patch_after(&b, "\xa4rank", 5, 0, 0x02); /* rank 2 of 2 */
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_EPROTO);
    cr_assert_str_eq(ag_errctx_text(&d.err), "rank is not below world");
    ag_buf_free(&b);
}

Test(ranks, a_snapshot_carries_its_replicated_flag) {
    float data[4] = {1, 2, 3, 4};
    ag_msg m = {.type = AG_MSG_SNAPSHOT, .hdr = {"r", 7, 1, 0}};
    m.u.snapshot = (ag_msg_snapshot){.step = 3,
                                     .tensor = "fc",
                                     .dtype = AG_DTYPE_F32,
                                     .form = AG_FORM_UPDATE,
                                     .n = 2,
                                     .replicated = 1,
                                     .w = data,
                                     .x = data + 2};
    ag_buf b = encode_ok(&m);
    ag_msg d;
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK, "%s", ag_errctx_text(&d.err));
    cr_assert_eq(d.u.snapshot.replicated, 1);
    ag_msg_clear(&d);
    patch_after(&b, "\xa4repl", 5, 0, 0x02); /* repl is 0 or 1 */
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_EPROTO);
    ag_buf_free(&b);

    m.u.snapshot.replicated = 0;
    b = encode_ok(&m);
    cr_assert_null(memmem(b.data, b.len, "\xa4repl", 5), "a shard sends no repl key");
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    cr_assert_eq(d.u.snapshot.replicated, 0);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

static const char *const fmts[1] = {"E5M2"};
static const char *const tensors[3] = {"a", "b", "c"};
static const uint64_t numel[3] = {10, 10, 10}, nonfinite[3] = {0, 0, 0};
static const double amax[3] = {1, 1, 1};
static const float scales[3] = {1, 1, 1};
static const uint64_t counts[3 * 5] = {0};

static ag_msg counts_msg(const uint8_t *replicated) {
    ag_msg m = {.type = AG_MSG_COUNTS, .hdr = {"r", 7, 2, 0}};
    m.u.counts = (ag_msg_counts){.step = 4,
                                 .form = AG_FORM_SGD,
                                 .nformats = 1,
                                 .formats = fmts,
                                 .n = 3,
                                 .tensors = tensors,
                                 .numel = numel,
                                 .amax = amax,
                                 .nonfinite = nonfinite,
                                 .scales = scales,
                                 .counts = counts,
                                 .replicated = replicated};
    return m;
}

Test(ranks, counts_carry_the_indexes_of_replicated_items) {
    static const uint8_t repl[3] = {0, 1, 1};
    ag_msg m = counts_msg(repl), d;
    ag_buf b = encode_ok(&m);
    cr_assert_not_null(memmem(b.data, b.len, "\xa4repl\x92\x01\x02", 8), "indexes 1 and 2");
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK, "%s", ag_errctx_text(&d.err));
    cr_assert_not_null(d.u.counts.replicated);
    cr_assert_arr_eq(d.u.counts.replicated, repl, 3);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    static const uint8_t none[3] = {0, 0, 0};
    m = counts_msg(none);
    b = encode_ok(&m);
    cr_assert_null(memmem(b.data, b.len, "\xa4repl", 5), "no replicated item, no key");
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    cr_assert_null(d.u.counts.replicated);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(ranks, replicated_indexes_out_of_order_or_past_the_items_are_refused) {
    static const uint8_t repl[3] = {0, 1, 1};
    ag_msg m = counts_msg(repl), d;
    ag_buf b = encode_ok(&m);
    patch_after(&b, "\xa4repl\x92", 6, 0, 0x02); /* [2, 2] */
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_EPROTO);
    cr_assert_str_eq(ag_errctx_text(&d.err), "replicated item indexes are not strictly ascending");
    ag_buf_free(&b);

    b = encode_ok(&m);
    patch_after(&b, "\xa4repl\x92", 6, 1, 0x03); /* [1, 3] of 3 items */
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_EPROTO);
    cr_assert_str_eq(ag_errctx_text(&d.err), "a replicated item index is past the items");
    ag_buf_free(&b);
}
