/*
 * test_counts.c - the counts message (t = 5, PROTOCOL.md 3.5) through
 * proto/encode.c, proto/decode.c and ag_proto_counts_check: round trips with
 * known and unknown flips, keys in any order, results of 7 values and of 9
 * (with the quantization error), and every hostile value the decoder must
 * refuse (run under ASan: nothing leaks on a refusal).
 */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"

static const char *const fmts[2] = {"E5M2", "E3M4"};
static const char *const tensors[2] = {"fc1.weight", "fc2.weight"};
static const uint64_t numel[2] = {100, 7}, nonfinite[2] = {0, 1};
static const double amax[2] = {0.5, 3};
static const float scales[4] = {0.25f, 1.0f / 3, 0.5f, 2};
static const uint64_t counts[4 * 5] = {3, 10, 0, 1, 0, 0, 0, 0, 0, 0, 1, 6, 1, 0, 1, 6, 6, 0, 0, 1};
static const int64_t flips[4] = {2, -1, 0, 7};

static ag_msg counts_msg(void) {
    ag_msg m = {.type = AG_MSG_COUNTS, .hdr = {"run-1", 0xfeedULL, 5, 1}};
    m.u.counts = (ag_msg_counts){.step = 12,
                                 .form = AG_FORM_SGD,
                                 .nformats = 2,
                                 .formats = fmts,
                                 .n = 2,
                                 .tensors = tensors,
                                 .numel = numel,
                                 .amax = amax,
                                 .nonfinite = nonfinite,
                                 .scales = scales,
                                 .counts = counts,
                                 .flips = flips};
    return m;
}

static int encode(const ag_msg *m, ag_buf *b) {
    ag_buf_init(b);
    return ag_proto_encode(b, m);
}

Test(counts, a_counts_message_round_trips_every_value_and_unknown_flips) {
    ag_msg m = counts_msg();
    ag_buf b;
    cr_assert_eq(encode(&m, &b), AG_OK, "%s", ag_errctx_text(&m.err));
    ag_msg d;
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK, "%s", ag_errctx_text(&d.err));
    cr_assert_eq(d.type, AG_MSG_COUNTS);
    cr_assert_eq(d.version, 2);
    cr_assert_eq(d.hdr.seq, 5);
    const ag_msg_counts *c = &d.u.counts;
    cr_assert_eq(c->step, 12);
    cr_assert_eq(c->form, AG_FORM_SGD);
    cr_assert_eq(c->nformats, 2);
    cr_assert_str_eq(c->formats[1], "E3M4");
    cr_assert_eq(c->n, 2);
    for (size_t i = 0; i < 2; i++) {
        cr_assert_str_eq(c->tensors[i], tensors[i]);
        cr_assert_eq(c->numel[i], numel[i]);
        cr_assert_eq(c->amax[i], amax[i]);
        cr_assert_eq(c->nonfinite[i], nonfinite[i]);
    }
    cr_assert_arr_eq(c->scales, scales, sizeof scales, "scales travel as exact float32");
    cr_assert_arr_eq(c->counts, counts, sizeof counts);
    cr_assert_arr_eq(c->flips, flips, sizeof flips, "-1 (nil on the wire) stays unknown");
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m.u.counts.flips = NULL; /* all unknown */
    cr_assert_eq(encode(&m, &b), AG_OK);
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    for (size_t r = 0; r < 4; r++) cr_expect_eq(d.u.counts.flips[r], -1);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

/* The wire form is compact: a result of small counts is about a dozen bytes. */
Test(counts, a_result_takes_a_dozen_bytes_when_its_counts_are_small) {
    ag_msg m = counts_msg();
    size_t two = ag_proto_encoded_size(&m);
    m.u.counts.n = 1;
    size_t one = ag_proto_encoded_size(&m);
    cr_assert_gt(one, 0);
    /* tensor 2: a name of 10 bytes + 1, numel 1, amax 9, nonfinite 1, array headers 2,
     * two results of 1 + 5 + 5 + 1 bytes */
    cr_expect_eq(two - one, 11 + 1 + 9 + 1 + 2 + 2 * 12);
}

Test(counts, the_encoder_refuses_what_the_daemon_would_refuse) {
    struct {
        const char *what;
        int rc;
    } cases[] = {{"stalled > total", AG_EINVAL}, {"total > numel", AG_EINVAL},
                 {"flips > numel", AG_EINVAL},   {"flips < -1", AG_EINVAL},
                 {"numel 0", AG_EINVAL},         {"nonfinite > numel", AG_EINVAL},
                 {"amax NaN", AG_EINVAL},        {"scale 0", AG_EINVAL},
                 {"scale inf", AG_EINVAL},       {"no formats", AG_EINVAL},
                 {"bad format name", AG_EINVAL}, {"4097 tensors", AG_ETOOBIG},
                 {"form 2", AG_EINVAL},          {"version 1", AG_EINVAL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ag_msg m = counts_msg();
        uint64_t kk[20], nn[2] = {100, 7}, nf[2] = {0, 1};
        int64_t fl[4];
        float sc[4];
        double am[2] = {0.5, 3};
        const char *bad_fmts[2] = {"E5M2", "E5 M2"};
        memcpy(kk, counts, sizeof kk);
        memcpy(fl, flips, sizeof fl);
        memcpy(sc, scales, sizeof sc);
        m.u.counts.counts = kk;
        m.u.counts.flips = fl;
        m.u.counts.scales = sc;
        m.u.counts.numel = nn;
        m.u.counts.nonfinite = nf;
        m.u.counts.amax = am;
        switch (k) {
        case 0: kk[0] = 11; break;
        case 1: kk[1] = 101; break;
        case 2: fl[3] = 8; break;
        case 3: fl[0] = -2; break;
        case 4: nn[0] = 0; break;
        case 5: nf[1] = 8; break;
        case 6: am[0] = NAN; break;
        case 7: sc[2] = 0; break;
        case 8: sc[2] = INFINITY; break;
        case 9: m.u.counts.nformats = 0; break;
        case 10: m.u.counts.formats = bad_fmts; break;
        case 11: m.u.counts.n = 4097; break;
        case 12: m.u.counts.form = 2; break;
        case 13: m.version = 1; break;
        }
        ag_buf b;
        cr_expect_eq(encode(&m, &b), cases[k].rc, "%s", cases[k].what);
        cr_expect_eq(b.len, 0, "%s: nothing written", cases[k].what);
        ag_buf_free(&b);
    }
}

/* ---- the decoder, fed by hand -------------------------------------------- */

typedef struct item {
    const char *tensor;
    uint64_t numel;
    double amax;
    uint64_t nonfinite;
    size_t nresults;
    double scale;  /* of every result */
    uint64_t k[5]; /* of every result */
    int flips_nil; /* else flips */
    uint64_t flips;
    int scale_as_f64; /* write the scale as float 64 */
    int nvals;        /* values in each result: 0 means 7; 9 adds mse and sqnr_db */
    double mse;       /* NaN: nil */
    double sqnr;      /* NaN: nil */
    int mse_as_str;   /* write mse as a string */
} item;

static void key(msgpack_packer *pk, const char *k) { msgpack_pack_str_with_body(pk, k, strlen(k)); }

/* A counts message with nfmts format names (items first when items_first). */
static void build(msgpack_sbuffer *sb, int version, size_t nfmts, const item *items, size_t n,
                  int items_first) {
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10);
    key(&pk, "v");
    msgpack_pack_uint8(&pk, (uint8_t)version);
    key(&pk, "t");
    msgpack_pack_uint8(&pk, AG_MSG_COUNTS);
    key(&pk, "run");
    key(&pk, "r");
    key(&pk, "cid");
    msgpack_pack_uint64(&pk, 9);
    for (int part = 0; part < 2; part++) {
        if ((part == 0) == (items_first != 0)) {
            key(&pk, "items");
            msgpack_pack_array(&pk, n);
            for (size_t i = 0; i < n; i++) {
                const item *it = &items[i];
                msgpack_pack_array(&pk, 5);
                key(&pk, it->tensor);
                msgpack_pack_uint64(&pk, it->numel);
                msgpack_pack_double(&pk, it->amax);
                msgpack_pack_uint64(&pk, it->nonfinite);
                msgpack_pack_array(&pk, it->nresults);
                for (size_t r = 0; r < it->nresults; r++) {
                    int nv = it->nvals ? it->nvals : 7;
                    msgpack_pack_array(&pk, (size_t)nv);
                    if (it->scale_as_f64)
                        msgpack_pack_double(&pk, it->scale);
                    else
                        msgpack_pack_float(&pk, (float)it->scale);
                    for (int j = 0; j < 5; j++) msgpack_pack_uint64(&pk, it->k[j]);
                    if (it->flips_nil)
                        msgpack_pack_nil(&pk);
                    else
                        msgpack_pack_uint64(&pk, it->flips);
                    for (int j = 7; j < nv; j++) {
                        double v = j == 7 ? it->mse : it->sqnr;
                        if (j == 7 && it->mse_as_str)
                            key(&pk, "0.5");
                        else if (isnan(v) && !signbit(v))
                            msgpack_pack_nil(&pk);
                        else
                            msgpack_pack_double(&pk, v); /* -NaN: a NaN float, not nil */
                    }
                }
            }
        } else {
            key(&pk, "fmts");
            msgpack_pack_array(&pk, nfmts);
            for (size_t f = 0; f < nfmts; f++) key(&pk, f % 2 ? "E3M4" : "E5M2");
        }
    }
    key(&pk, "step");
    msgpack_pack_uint8(&pk, 3);
    key(&pk, "form");
    msgpack_pack_uint8(&pk, 1);
    key(&pk, "seq");
    msgpack_pack_uint64(&pk, 1);
    key(&pk, "drop");
    msgpack_pack_uint64(&pk, 0);
}

static const item good = {"w", 10, 1.5, 0, 2, 0.125, {2, 4, 1, 1, 0}, 0, 3, 0, 0, NAN, NAN, 0};

static int decode_items(const item *items, size_t n, size_t nfmts, int version, int items_first,
                        ag_msg *m) {
    msgpack_sbuffer sb;
    build(&sb, version, nfmts, items, n, items_first);
    int rc = ag_proto_decode(sb.data, sb.size, m);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

Test(counts, items_may_come_before_the_formats_they_answer) {
    item two[2] = {good, good};
    two[1].tensor = "v";
    two[1].flips_nil = 1;
    two[1].scale = 0.1; /* not a float32: sent as float 32, so exact */
    ag_msg m;
    cr_assert_eq(decode_items(two, 2, 2, 2, 1, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    cr_expect_eq(m.u.counts.n, 2);
    cr_expect_eq(m.u.counts.flips[1], 3);
    cr_expect_eq(m.u.counts.flips[3], -1);
    cr_expect_eq(m.u.counts.scales[2], 0.1f);
    cr_expect_eq(m.u.counts.form, AG_FORM_UPDATE);
    ag_msg_clear(&m);
    cr_assert_eq(decode_items(two, 2, 2, 2, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    ag_msg_clear(&m);
}

Test(counts, the_decoder_refuses_every_hostile_value) {
    static const char *const what[] = {
        "stalled > total",    "total > numel",    "overflow > numel", "flips > numel",
        "nonfinite > numel",  "numel 0",          "numel > 2^63-1",   "amax < 0",
        "amax inf",           "scale 0",          "scale < 0",        "scale not float32",
        "results != formats", "items differ",     "no results",       "version 1",
        "no items",           "empty tensor name"};
    for (size_t k = 0; k < sizeof what / sizeof what[0]; k++) {
        item its[2] = {good, good};
        size_t n = 2, nfmts = 2;
        int version = 2;
        switch (k) {
        case 0: its[1].k[0] = 5; break;
        case 1: its[1].k[1] = 11; break;
        case 2: its[0].k[2] = 11; break;
        case 3: its[1].flips = 11; break;
        case 4: its[0].nonfinite = 11; break;
        case 5: its[0].numel = 0; break;
        case 6: its[0].numel = (uint64_t)INT64_MAX + 1; break;
        case 7: its[0].amax = -1; break;
        case 8: its[0].amax = INFINITY; break;
        case 9: its[0].scale = 0; break;
        case 10: its[0].scale = -1; break;
        case 11: its[0].scale = 0.1, its[0].scale_as_f64 = 1; break;
        case 12: nfmts = 3; break;
        case 13: its[1].nresults = 1; break;
        case 14: its[0].nresults = its[1].nresults = 0, nfmts = 0; break;
        case 15: version = 1; break;
        case 16: n = 0; break;
        case 17: its[0].tensor = ""; break;
        }
        ag_msg m;
        int rc = decode_items(its, n, nfmts, version, (int)(k % 2), &m);
        cr_expect_eq(rc, AG_EPROTO, "%s: %s", what[k], ag_strerror(rc));
        cr_expect(m.err.code != 0 && ag_errctx_text(&m.err)[0], "%s", what[k]);
        ag_msg_clear(&m);
    }
}

/* A hostile item count cannot make the decoder allocate past what the
 * message's bytes could hold. */
Test(counts, a_count_the_bytes_cannot_hold_is_refused_before_allocating) {
    item its[1] = {good};
    its[0].nresults = 64;
    msgpack_sbuffer sb;
    build(&sb, 2, 64, its, 1, 1);
    /* claim 4096 items where one follows */
    char *p = memmem(sb.data, sb.size, "\xa5items\x91", 7);
    cr_assert_not_null(p);
    size_t at = (size_t)(p - sb.data) + 6;
    char *big = malloc(sb.size + 2);
    memcpy(big, sb.data, at);
    big[at] = (char)0xdc; /* array 16: 4096 */
    big[at + 1] = 0x10;
    big[at + 2] = 0x00;
    memcpy(big + at + 3, sb.data + at + 1, sb.size - at - 1);
    ag_msg m;
    int rc = ag_proto_decode(big, sb.size + 2, &m);
    cr_expect_eq(rc, AG_EPROTO, "%s", ag_strerror(rc));
    cr_expect(m.err.code != 0 && ag_errctx_text(&m.err)[0]);
    free(big);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- the quantization error (results of 9 values) ------------------------ */

Test(counts, a_result_carries_mse_and_sqnr_as_two_more_values_or_nil) {
    ag_msg m = counts_msg();
    const double mse[4] = {0.5, NAN, 0.0, 1e-9};
    const double sqnr[4] = {-3.5, NAN, NAN, 42.25};
    m.u.counts.mse = mse;
    m.u.counts.sqnr_db = sqnr;
    ag_buf b;
    cr_assert_eq(encode(&m, &b), AG_OK, "%s", ag_errctx_text(&m.err));
    size_t with = b.len;
    ag_msg d;
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK, "%s", ag_errctx_text(&d.err));
    for (size_t r = 0; r < 4; r++) {
        cr_expect(isnan(mse[r]) ? isnan(d.u.counts.mse[r]) : d.u.counts.mse[r] == mse[r]);
        cr_expect(isnan(sqnr[r]) ? isnan(d.u.counts.sqnr_db[r]) : d.u.counts.sqnr_db[r] == sqnr[r]);
    }
    cr_assert_arr_eq(d.u.counts.counts, counts, sizeof counts);
    cr_assert_arr_eq(d.u.counts.flips, flips, sizeof flips);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    /* only mse: sqnr_db goes as nil; neither: the 7 values of before */
    m.u.counts.sqnr_db = NULL;
    cr_assert_eq(encode(&m, &b), AG_OK);
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    for (size_t r = 0; r < 4; r++) cr_expect(isnan(d.u.counts.sqnr_db[r]));
    cr_expect_eq(d.u.counts.mse[0], 0.5);
    ag_msg_clear(&d);
    ag_buf_free(&b);
    m.u.counts.mse = NULL;
    cr_assert_eq(encode(&m, &b), AG_OK);
    cr_expect_lt(b.len, with);
    cr_assert_eq(ag_proto_decode(b.data, b.len, &d), AG_OK);
    for (size_t r = 0; r < 4; r++)
        cr_expect(isnan(d.u.counts.mse[r]) && isnan(d.u.counts.sqnr_db[r]), "7 values: unknown");
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(counts, the_encoder_refuses_an_impossible_quantization_error) {
    static const char *const what[] = {"mse < 0",
                                       "mse inf",
                                       "sqnr_db inf",
                                       "sqnr_db -inf",
                                       "sqnr_db, mse nil",
                                       "sqnr_db, mse 0",
                                       "mse of a tensor with no finite element"};
    for (size_t k = 0; k < sizeof what / sizeof what[0]; k++) {
        ag_msg m = counts_msg();
        double mse[4] = {0.5, 0.25, 0.125, 1}, sqnr[4] = {10, 20, 30, 40};
        uint64_t nf[2] = {0, 1};
        m.u.counts.mse = mse;
        m.u.counts.sqnr_db = sqnr;
        m.u.counts.nonfinite = nf;
        switch (k) {
        case 0: mse[1] = -1e-30; break;
        case 1: mse[2] = INFINITY; break;
        case 2: sqnr[3] = INFINITY; break;
        case 3: sqnr[0] = -INFINITY; break;
        case 4: mse[0] = NAN; break;
        case 5: mse[0] = 0; break;
        case 6: nf[1] = 7; break;
        }
        ag_buf b;
        cr_expect_eq(encode(&m, &b), AG_EINVAL, "%s", what[k]);
        cr_expect_eq(b.len, 0, "%s: nothing written", what[k]);
        ag_buf_free(&b);
    }
}

Test(counts, the_decoder_refuses_every_hostile_quantization_error) {
    static const char *const what[] = {
        "8 values",    "10 values",      "6 values",         "mse < 0",
        "mse NaN",     "mse inf",        "mse a string",     "sqnr_db NaN",
        "sqnr_db inf", "sqnr_db, mse 0", "sqnr_db, mse nil", "mse, no finite element"};
    for (size_t k = 0; k < sizeof what / sizeof what[0]; k++) {
        item its[2] = {good, good};
        its[0].nvals = its[1].nvals = 9;
        its[1].mse = 0.25;
        its[1].sqnr = 7.5;
        item *it = &its[k % 2 ? 0 : 1];
        switch (k) {
        case 0: it->nvals = 8; break;
        case 1: it->nvals = 10; break;
        case 2: it->nvals = 6; break;
        case 3: it->mse = -0.5; break;
        case 4: it->mse = -NAN; break;
        case 5: it->mse = INFINITY; break;
        case 6: it->mse_as_str = 1; break;
        case 7: it->mse = 1, it->sqnr = -NAN; break;
        case 8: it->mse = 1, it->sqnr = INFINITY; break;
        case 9: it->mse = 0, it->sqnr = 3; break;
        case 10: it->mse = NAN, it->sqnr = 3; break;
        case 11: it->mse = 1, it->sqnr = NAN, it->nonfinite = it->numel = 4; break;
        }
        ag_msg m;
        int rc = decode_items(its, 2, 2, 2, (int)(k % 2), &m);
        cr_expect_eq(rc, AG_EPROTO, "%s: %s", what[k], ag_strerror(rc));
        cr_expect(m.err.code != 0 && ag_errctx_text(&m.err)[0], "%s", what[k]);
        ag_msg_clear(&m);
    }
    /* and what is fine: 9 values with nil, mixed with 7 */
    item its[2] = {good, good};
    its[0].nvals = 9;
    its[0].mse = 0.5;
    ag_msg m;
    cr_assert_eq(decode_items(its, 2, 2, 2, 0, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    cr_expect_eq(m.u.counts.mse[0], 0.5);
    cr_expect(isnan(m.u.counts.sqnr_db[0]) && isnan(m.u.counts.mse[2]));
    ag_msg_clear(&m);
}
