/*
 * test_encode.c - proto/encode.c refuses to build a message the decoder would
 * reject (bad names, non-finite numbers, unknown enums, limits), and a failed
 * encode leaves the output buffer as it was.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"

static int encode(ag_msg *m) {
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, m);
    if (rc) cr_assert_eq(b.len, 0);
    ag_buf_free(&b);
    return rc;
}

static ag_msg snapshot(const float *w, const float *g) {
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr.run = "r";
    m.u.snapshot =
        (ag_msg_snapshot){.tensor = "w", .dtype = AG_DTYPE_F32, .lr = 0.1, .n = 2, .w = w, .x = g};
    return m;
}

Test(encode, a_valid_snapshot_encodes) {
    float w[2] = {1, 2}, g[2] = {3, 4};
    ag_msg m = snapshot(w, g);
    cr_assert_eq(encode(&m), AG_OK);
}

Test(encode, snapshot_misuse_is_refused_with_a_reason) {
    float w[2] = {1, 2}, g[2] = {3, 4};
    ag_msg m;
    m = snapshot(w, g);
    m.u.snapshot.lr = NAN;
    cr_assert_eq(encode(&m), AG_EINVAL);
    cr_assert(ag_errctx_text(&m.err)[0] != 0);
    m = snapshot(w, g);
    m.u.snapshot.lr = INFINITY;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.dtype = 7;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.form = 2;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.n = 0;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.numel = 1;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.x = NULL;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.has_scale = 1;
    m.u.snapshot.scale = -1;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.tensor = NULL;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.tensor = "";
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.hdr.run = NULL;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.n = (uint64_t)AG_PROTO_MAX_MESSAGE;
    cr_assert_eq(encode(&m), AG_ETOOBIG);
    const char *fmts[1] = {"E5M2!"};
    m = snapshot(w, g);
    m.u.snapshot.nformats = 1;
    m.u.snapshot.formats = fmts;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = snapshot(w, g);
    m.u.snapshot.nformats = 65;
    m.u.snapshot.formats = fmts;
    cr_assert_eq(encode(&m), AG_ETOOBIG);
}

Test(encode, names_longer_than_the_limit_are_too_big) {
    char name[AG_NAME_MAX + 2];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    float w[2] = {1, 2}, g[2] = {3, 4};
    ag_msg m = snapshot(w, g);
    m.u.snapshot.tensor = name;
    cr_assert_eq(encode(&m), AG_ETOOBIG);
    name[AG_NAME_MAX] = '\0';
    cr_assert_eq(encode(&m), AG_OK, "exactly AG_NAME_MAX bytes is fine");
}

Test(encode, stats_misuse_is_refused) {
    ag_stat_record r = {1, "t", AG_ROLE_WEIGHT, 1.0, 10, 0};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr.run = "r";
    m.u.stats.n = 0;
    m.u.stats.records = &r;
    cr_assert_eq(encode(&m), AG_EINVAL);
    m.u.stats.n = 1;
    cr_assert_eq(encode(&m), AG_OK);
    r.amax = -1;
    cr_assert_eq(encode(&m), AG_EINVAL);
    r.amax = NAN;
    cr_assert_eq(encode(&m), AG_EINVAL);
    r.amax = 1;
    r.role = 9;
    cr_assert_eq(encode(&m), AG_EINVAL);
    r.role = 0;
    r.nonfinite = 11;
    cr_assert_eq(encode(&m), AG_EINVAL);
}

Test(encode, metadata_must_be_a_json_object_within_64_kib) {
    ag_msg m = {.type = AG_MSG_RUN_START};
    m.hdr.run = "r";
    m.u.run_start.metadata = "not json";
    cr_assert_eq(encode(&m), AG_EINVAL);
    m.u.run_start.metadata = "{\"a\": [1, 2.5e-3, true, null, \"\\u00e9\"]}";
    cr_assert_eq(encode(&m), AG_OK);
    char *big = malloc(AG_PROTO_MAX_METADATA + 2);
    memset(big, ' ', AG_PROTO_MAX_METADATA + 1);
    big[0] = '{';
    big[AG_PROTO_MAX_METADATA] = '}';
    big[AG_PROTO_MAX_METADATA + 1] = '\0';
    m.u.run_start.metadata = big;
    cr_assert_eq(encode(&m), AG_ETOOBIG);
    free(big);
}

Test(encode, unknown_types_and_null_results_are_refused) {
    ag_msg m = {.type = 99};
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = (ag_msg){.type = AG_MSG_R_RUNS};
    cr_assert_eq(encode(&m), AG_EINVAL);
    m = (ag_msg){.type = AG_MSG_R_ERROR};
    m.u.error.code = 0;
    cr_assert_eq(encode(&m), AG_EINVAL);
    cr_assert_eq(ag_proto_encode(NULL, &m), AG_EINVAL);
}

Test(encode, json_check_follows_rfc_8259) {
    static const char *const good[] = {"{}", " { } ", "{\"a\":{\"b\":[]}}", "{\"n\":-0.5E+3}"};
    static const char *const bad[] = {"",
                                      "{",
                                      "{}}",
                                      "{\"a\"}",
                                      "{\"a\":tru}",
                                      "{\"a\":1,}",
                                      "{\"a\":\"\x01\"}",
                                      "{\"a\":.5}",
                                      "{\"a\":\"\\x\"}"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_assert(ag_proto_json_object_ok(good[i], strlen(good[i])), "%s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_not(ag_proto_json_object_ok(bad[i], strlen(bad[i])), "%s", bad[i]);
    char deep[80];
    memset(deep, '[', sizeof deep);
    deep[0] = '{';
    cr_assert_not(ag_proto_json_object_ok(deep, sizeof deep));
}
