/*
 * test_codec.c - round trips of every message type through proto/encode.c
 * and proto/decode.c, the zero-copy payload contract, the incremental stats
 * batch and the seq/dropped patch used by the client's send queue.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/arena.h"
#include "proto/proto.h"
#include "proto/spec.h"

static ag_buf encode_ok(ag_msg *m) {
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, m);
    cr_assert_eq(rc, AG_OK, "encode: %s (%s)", ag_strerror(rc), ag_errctx_text(&m->err));
    cr_assert_eq(ag_proto_encoded_size(m), b.len);
    return b;
}

static void decode_ok(const ag_buf *b, ag_msg *out) {
    int rc = ag_proto_decode(b->data, b->len, out);
    cr_assert_eq(rc, AG_OK, "decode: %s (%s)", ag_strerror(rc), ag_errctx_text(&out->err));
}

static ag_stream_hdr hdr(void) {
    ag_stream_hdr h = {"run-1", 0x0123456789abcdefULL, 42, 7};
    return h;
}

Test(codec, run_start_round_trips_with_metadata) {
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = hdr()};
    m.u.run_start.host = "node7";
    m.u.run_start.pid = 4242;
    m.u.run_start.time_ms = 1700000000123LL;
    m.u.run_start.metadata = "{\"lr\": 0.01, \"tags\": [\"a\", {\"b\": null}]}";
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.type, AG_MSG_RUN_START);
    cr_assert_str_eq(d.hdr.run, "run-1");
    cr_assert_eq(d.hdr.client_id, 0x0123456789abcdefULL);
    cr_assert_eq(d.hdr.seq, 42);
    cr_assert_eq(d.hdr.dropped, 7);
    cr_assert_str_eq(d.u.run_start.host, "node7");
    cr_assert_eq(d.u.run_start.pid, 4242);
    cr_assert_eq(d.u.run_start.time_ms, 1700000000123LL);
    cr_assert_str_eq(d.u.run_start.metadata, m.u.run_start.metadata);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, run_start_round_trips_its_launch_and_resume) {
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = hdr()};
    m.u.run_start.host = "h";
    m.u.run_start.launch = "3f2a9c1e-torchelastic id";
    m.u.run_start.resume = 1;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.version, AG_PROTO_VERSION);
    cr_assert_str_eq(d.u.run_start.launch, "3f2a9c1e-torchelastic id");
    cr_assert_eq(d.u.run_start.resume, 1);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    /* Both are optional: absent, no launch and no resume. */
    m.u.run_start.launch = NULL;
    m.u.run_start.resume = 0;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_null(d.u.run_start.launch);
    cr_assert_eq(d.u.run_start.resume, 0);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, a_launch_id_must_be_printable_ascii_within_128_bytes) {
    char long_id[AG_LAUNCH_ID_MAX + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    static const char *const bad[] = {"", "tab\there", "caf\xc3\xa9", "del\x7f"};
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = hdr()};
    m.u.run_start.host = "h";
    m.u.run_start.launch = long_id;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_ETOOBIG);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m.u.run_start.launch = bad[i];
        cr_assert_eq(ag_proto_encode(&b, &m), AG_EINVAL, "'%s' was accepted", bad[i]);
    }
    long_id[AG_LAUNCH_ID_MAX] = '\0'; /* exactly the limit */
    m.u.run_start.launch = long_id;
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    ag_buf_free(&b);
    cr_assert(ag_proto_launch_id_ok(" ~", 2));
    cr_assert(!ag_proto_launch_id_ok(NULL, 0));
}

Test(codec, the_run_query_and_its_reply_round_trip) {
    ag_msg m = {.type = AG_MSG_Q_RUN};
    m.u.query.client_id = UINT64_MAX - 5;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.type, AG_MSG_Q_RUN);
    cr_assert_eq(d.u.query.client_id, UINT64_MAX - 5);
    cr_assert_str_eq(ag_proto_type_name(d.type), "q_run");
    ag_msg_clear(&d);
    ag_buf_free(&b);

    ag_run_ident id = {"first-run.2", "launch-7", AG_CAPS};
    m = (ag_msg){.type = AG_MSG_R_RUN};
    m.u.ident = &id;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_eq(d.type, AG_MSG_R_RUN);
    cr_assert_str_eq(d.u.ident->run, "first-run.2");
    cr_assert_str_eq(d.u.ident->launch, "launch-7");
    cr_assert_eq(d.u.ident->caps, AG_CAP_BUNDLE | AG_CAP_QERR,
                 "the daemon says it takes bundles and counts with their error");
    ag_run_ident *taken = ag_msg_take_result(&d);
    cr_assert_not_null(taken);
    ag_msg_clear(&d);
    cr_assert_str_eq(taken->run, "first-run.2", "the result outlives the message");
    ag_free(taken);
    ag_buf_free(&b);
}

Test(codec, a_version_1_message_is_read_and_a_reply_can_be_written_in_version_1) {
    ag_msg m = {.type = AG_MSG_R_ERROR, .version = 1};
    m.u.error.code = AG_ENOTFOUND;
    m.u.error.text = "no such run: x";
    ag_buf b = encode_ok(&m);
    int v = 0, t = 0;
    cr_assert_eq(ag_proto_peek(b.data, b.len, &v, &t), AG_OK);
    cr_assert_eq(v, 1);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.version, 1);
    cr_assert_eq(d.u.error.code, AG_ENOTFOUND);
    ag_msg_clear(&d);
    ag_buf_free(&b);
    m.version = AG_PROTO_VERSION + 1;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_EINVAL, "a version we do not speak");
    ag_buf_free(&b);
}

Test(codec, run_start_without_metadata_decodes_as_empty_object) {
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = hdr()};
    m.u.run_start.host = "";
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_str_eq(d.u.run_start.metadata, "{}");
    cr_assert_str_eq(d.u.run_start.host, "");
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, stats_batch_round_trips_every_record) {
    ag_stat_record recs[3] = {
        {1, "fc1.weight", AG_ROLE_WEIGHT, 0.5, 100, 0},
        {1, "fc1.act", AG_ROLE_ACTIVATION, 123.25, 4096, 3},
        {UINT64_MAX, "x", AG_ROLE_UPDATE, 0.0, 0, 0},
    };
    ag_msg m = {.type = AG_MSG_STATS, .hdr = hdr()};
    m.u.stats.n = 3;
    m.u.stats.records = recs;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.stats.n, 3);
    for (size_t i = 0; i < 3; i++) {
        const ag_stat_record *r = &d.u.stats.records[i];
        cr_assert_eq(r->step, recs[i].step);
        cr_assert_str_eq(r->tensor, recs[i].tensor);
        cr_assert_eq(r->role, recs[i].role);
        cr_assert_eq(r->amax, recs[i].amax);
        cr_assert_eq(r->numel, recs[i].numel);
        cr_assert_eq(r->nonfinite, recs[i].nonfinite);
    }
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, snapshot_payload_is_not_copied_and_is_aligned) {
    float w[5] = {1, 2, 3, 4, 5};
    float g[5] = {-1, 0.5f, 0, 1e-4f, 2};
    const char *fmts[2] = {"E5M2", "E3M4"};
    ag_msg m = {.type = AG_MSG_SNAPSHOT, .hdr = hdr()};
    ag_msg_snapshot *s = &m.u.snapshot;
    s->step = 9;
    s->tensor = "layer.0.weight";
    s->dtype = AG_DTYPE_F32;
    s->form = AG_FORM_SGD;
    s->lr = 0.01;
    s->n = 5;
    s->numel = 50;
    s->has_scale = 1;
    s->scale = 0.25;
    s->nformats = 2;
    s->formats = fmts;
    s->w = w;
    s->x = g;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    const ag_msg_snapshot *o = &d.u.snapshot;
    cr_assert_eq(o->step, 9);
    cr_assert_str_eq(o->tensor, "layer.0.weight");
    cr_assert_eq(o->dtype, AG_DTYPE_F32);
    cr_assert_eq(o->form, AG_FORM_SGD);
    cr_assert_eq(o->lr, 0.01);
    cr_assert_eq(o->n, 5);
    cr_assert_eq(o->numel, 50);
    cr_assert(o->has_scale);
    cr_assert_eq(o->scale, 0.25);
    cr_assert_eq(o->nformats, 2);
    cr_assert_str_eq(o->formats[0], "E5M2");
    cr_assert_str_eq(o->formats[1], "E3M4");
    /* zero copy: the arrays live inside the encoded buffer */
    cr_assert((const uint8_t *)o->w >= b.data && (const uint8_t *)o->w < b.data + b.len);
    cr_assert_eq((const uint8_t *)o->x, (const uint8_t *)o->w + sizeof w);
    cr_assert(ag_proto_aligned(o->w, 8));
    cr_assert_arr_eq(o->w, w, sizeof w);
    cr_assert_arr_eq(o->x, g, sizeof g);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, snapshot_update_form_in_bfloat16_needs_no_lr) {
    uint16_t w[3] = {0x3f80, 0x4000, 0x0000};
    uint16_t u[3] = {0x3c00, 0x0001, 0x8000};
    ag_msg m = {.type = AG_MSG_SNAPSHOT, .hdr = hdr()};
    ag_msg_snapshot *s = &m.u.snapshot;
    s->tensor = "t";
    s->dtype = AG_DTYPE_BF16;
    s->form = AG_FORM_UPDATE;
    s->n = 3;
    s->w = w;
    s->x = u;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.snapshot.form, AG_FORM_UPDATE);
    cr_assert_eq(d.u.snapshot.dtype, AG_DTYPE_BF16);
    cr_assert_eq(d.u.snapshot.numel, 3, "absent numel means n");
    cr_assert_not(d.u.snapshot.has_scale);
    cr_assert_eq(d.u.snapshot.nformats, 0);
    cr_assert_arr_eq(d.u.snapshot.w, w, sizeof w);
    cr_assert_arr_eq(d.u.snapshot.x, u, sizeof u);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, snapshot_payload_stays_aligned_for_every_name_length) {
    float w[2] = {1, 2}, g[2] = {3, 4};
    char name[40];
    for (size_t len = 1; len < sizeof name; len++) {
        memset(name, 'a', len);
        name[len] = '\0';
        ag_msg m = {.type = AG_MSG_SNAPSHOT, .hdr = hdr()};
        m.u.snapshot = (ag_msg_snapshot){
            .tensor = name, .dtype = AG_DTYPE_F32, .lr = 1, .n = 2, .w = w, .x = g};
        ag_buf b = encode_ok(&m);
        ag_msg d;
        decode_ok(&b, &d);
        cr_assert(ag_proto_aligned(d.u.snapshot.w, 8), "name length %zu", len);
        ag_msg_clear(&d);
        ag_buf_free(&b);
    }
}

Test(codec, run_end_round_trips) {
    ag_msg m = {.type = AG_MSG_RUN_END, .hdr = hdr()};
    m.u.run_end.step = 1000;
    m.u.run_end.time_ms = -5;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.run_end.step, 1000);
    cr_assert_eq(d.u.run_end.time_ms, -5);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, every_query_round_trips_its_arguments) {
    static const int types[] = {AG_MSG_Q_RUNS, AG_MSG_Q_TENSORS, AG_MSG_Q_HISTORY, AG_MSG_Q_SCALES,
                                AG_MSG_Q_TOP,  AG_MSG_Q_STATUS,  AG_MSG_Q_REPORT};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        ag_msg m = {.type = types[i]};
        m.u.query = (ag_msg_query){"r", "t", "E3M4", 5, 10, 2, 100, 3, 0, 0, "E3M4,E5M2", 17};
        ag_buf b = encode_ok(&m);
        ag_msg d;
        decode_ok(&b, &d);
        cr_assert_eq(d.type, types[i]);
        const ag_msg_query *q = &d.u.query;
        switch (types[i]) {
        case AG_MSG_Q_HISTORY:
            cr_assert_str_eq(q->tensor, "t");
            cr_assert_eq(q->from_step, 5);
            cr_assert_eq(q->to_step, 10);
            cr_assert_eq(q->every, 2);
            /* fall through */
        case AG_MSG_Q_SCALES:
            cr_assert_str_eq(q->format, "E3M4");
            /* fall through */
        case AG_MSG_Q_TENSORS: cr_assert_str_eq(q->run, "r"); break;
        case AG_MSG_Q_TOP:
            cr_assert_str_eq(q->run, "r");
            cr_assert_str_eq(q->format, "E3M4");
            cr_assert_eq(q->window, 100);
            cr_assert_eq(q->limit, 3);
            break;
        case AG_MSG_Q_REPORT:
            cr_assert_str_eq(q->run, "r");
            cr_assert_str_eq(q->formats, "E3M4,E5M2");
            cr_assert_eq(q->width, 17);
            cr_assert_null(q->format);
            break;
        default: cr_assert_null(q->run);
        }
        ag_msg_clear(&d);
        ag_buf_free(&b);
    }
}

/* The list of proto/queries.h against the tables: each query has request
 * and reply tables, its type names, its reply at q + 16, parameters whose
 * names are unique, and a listed result whose keys the library gives. */
Test(codec, every_listed_query_has_its_tables_and_names) {
    size_t i;
    for (i = 0; ag_query_at(i); i++) {
        const ag_query_def *q = ag_query_at(i);
        cr_assert_not_null(ag_spec_for(q->q), "%s: no request table", q->name);
        cr_assert_not_null(ag_spec_for(q->r), "%s: no reply table", q->name);
        cr_assert_eq(q->r, q->q + 16);
        cr_assert_eq(ag_query_by_type(q->q), q);
        cr_assert_eq(ag_query_by_name(q->name), q);
        cr_assert_eq(strncmp(ag_proto_type_name(q->q), "q_", 2), 0);
        cr_assert_str_eq(ag_proto_type_name(q->q) + 2, q->name);
        cr_assert_eq(strncmp(ag_proto_type_name(q->r), "r_", 2), 0);
        cr_assert_str_eq(ag_proto_type_name(q->r) + 2, q->name);
        cr_assert_not(ag_proto_is_stream(q->q));
        size_t n;
        const ag_field *p = ag_query_params(q->q, &n);
        for (size_t a = 0; a < n; a++)
            for (size_t b = a + 1; b < n; b++)
                cr_assert(!p[a].doc || !p[b].doc || strcmp(p[a].doc, p[b].doc) != 0);
        if (q->result >= 0) cr_assert_not_null(ag_result_key(q->result, 0), "%s", q->name);
    }
    cr_assert_geq(i, 8);
    cr_assert_null(ag_query_by_type(AG_MSG_RUN_START));
    cr_assert_null(ag_query_by_type(AG_MSG_R_RUNS));
    cr_assert_null(ag_query_by_name("bogus"));
}

Test(codec, delivery_query_and_reply_round_trip_full_64_bit_ids) {
    ag_msg m = {.type = AG_MSG_Q_DELIVERY};
    m.u.delivery.client_id = UINT64_MAX - 1;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.type, AG_MSG_Q_DELIVERY);
    cr_assert_eq(d.u.delivery.client_id, UINT64_MAX - 1);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m = (ag_msg){.type = AG_MSG_R_DELIVERY};
    m.u.delivery = (ag_msg_delivery){UINT64_MAX, 23, 24};
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_eq(d.type, AG_MSG_R_DELIVERY);
    cr_assert_eq(d.u.delivery.client_id, UINT64_MAX);
    cr_assert_eq(d.u.delivery.messages, 23);
    cr_assert_eq(d.u.delivery.seq, 24);
    cr_assert_null(ag_msg_take_result(&d), "a delivery reply owns nothing to hand over");
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, a_delivery_query_without_a_client_id_is_rejected) {
    /* {"v":2,"t":23}: t 23, after q_run (22), in protocol version 2 */
    cr_assert_eq(AG_MSG_Q_DELIVERY, 23);
    cr_assert_eq(AG_MSG_R_DELIVERY, 39);
    const uint8_t bytes[] = {0x82, 0xa1, 'v', 0x02, 0xa1, 't', 0x17};
    ag_msg d;
    cr_assert_eq(ag_proto_decode(bytes, sizeof bytes, &d), AG_EPROTO);
    cr_assert(ag_errctx_text(&d.err)[0] != 0);
}

Test(codec, history_query_without_format_leaves_it_null) {
    ag_msg m = {.type = AG_MSG_Q_HISTORY};
    m.u.query.run = "r";
    m.u.query.tensor = "t";
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_null(d.u.query.format);
    cr_assert_eq(d.u.query.every, 0);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, runs_reply_round_trips_and_is_freed_with_one_call) {
    ag_run_info items[2] = {
        {"r1", "h", 1, 2, 3, 0, 10, 11, 12, "{}", 4, 3, "{\"1\":12}", 7},
        {"r2", "", -1, UINT64_MAX, -3, 4, 0, 0, 0, "{\"k\":1}", 1, 1, "{}", 0},
    };
    ag_run_list list = {2, items};
    ag_msg m = {.type = AG_MSG_R_RUNS};
    m.u.runs = &list;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    ag_run_list *out = ag_msg_take_result(&d);
    ag_msg_clear(&d);
    ag_buf_free(&b);
    cr_assert_not_null(out);
    cr_assert_eq(out->n, 2);
    cr_assert_str_eq(out->items[1].name, "r2");
    cr_assert_str_eq(out->items[1].host, "");
    cr_assert_eq(out->items[1].pid, -1);
    cr_assert_eq(out->items[1].client_id, UINT64_MAX);
    cr_assert_eq(out->items[1].started_ms, -3);
    cr_assert_eq(out->items[1].ended_ms, 4);
    cr_assert_str_eq(out->items[1].metadata, "{\"k\":1}");
    cr_assert_eq(out->items[0].last_step, 10);
    cr_assert_eq(out->items[0].messages, 11);
    cr_assert_eq(out->items[0].dropped, 12);
    /* the columns added later travel when asked for (all, here) */
    cr_assert_eq(out->items[0].world_size, 4);
    cr_assert_eq(out->items[0].ranks_seen, 3);
    cr_assert_str_eq(out->items[0].rank_drops, "{\"1\":12}");
    cr_assert_eq(out->items[0].incomplete, 7);
    ag_free(out);

    /* A requester that predates them gets the first 10 columns. */
    m.cols = ag_proto_reply_cols(AG_MSG_R_RUNS, 0);
    cr_assert_eq(m.cols, 10);
    b = encode_ok(&m);
    decode_ok(&b, &d);
    out = ag_msg_take_result(&d);
    ag_msg_clear(&d);
    ag_buf_free(&b);
    cr_assert_eq(out->items[0].dropped, 12);
    cr_assert_eq(out->items[0].world_size, 0);
    cr_assert_null(out->items[0].rank_drops);
    ag_free(out);
}

Test(codec, tensors_history_scales_top_and_status_replies_round_trip) {
    ag_tensor_info ti = {"w", AG_ROLE_GRADIENT, 10, 1, 9, 4, 2.5};
    ag_tensor_list tl = {1, &ti};
    ag_history_point pts[2] = {
        {1, 2, 3, 2.0 / 3, 4, 5, 6, 7, 8.5, 0.125, "daemon", 2, 0, 0.25, 12.5},
        {2, 0, 0, 0, AG_FLIPS_UNKNOWN, 0, 0, 0, 1, 1, "device", 1, 1, NAN, NAN}};
    ag_history h = {"r", "w", "E5M2", 2, pts};
    ag_scale_info si = {"w", 7, 3.0, 0.5};
    ag_scale_list sl = {"E3M4", 1, &si};
    ag_top_entry te = {"w", 5, 10, 0.5, 3};
    ag_top_list top = {"E7M0", 4, 9, 1, &te};
    ag_status st = {"0.1.0",
                    12.5,
                    1,
                    2,
                    3,
                    4,
                    5,
                    6,
                    7,
                    8,
                    "var/altgrad.db",
                    "E5M2,E3M4",
                    "degraded: disk full",
                    9,
                    24,
                    "most_recent",
                    "delayed",
                    1.5,
                    1e-10,
                    AG_CAPS,
                    3,
                    2,
                    1000,
                    4};

    ag_msg m = {.type = AG_MSG_R_TENSORS};
    m.u.tensors = &tl;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.tensors->n, 1);
    cr_assert_str_eq(d.u.tensors->items[0].name, "w");
    cr_assert_eq(d.u.tensors->items[0].role, AG_ROLE_GRADIENT);
    cr_assert_eq(d.u.tensors->items[0].snapshots, 4);
    cr_assert_eq(d.u.tensors->items[0].last_amax, 2.5);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m = (ag_msg){.type = AG_MSG_R_HISTORY};
    m.u.history = &h;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_str_eq(d.u.history->run, "r");
    cr_assert_str_eq(d.u.history->format, "E5M2");
    cr_assert_eq(d.u.history->n, 2);
    for (size_t i = 0; i < 2; i++) {
        ag_history_point got = d.u.history->points[i];
        cr_assert_str_eq(got.computed, pts[i].computed);
        got.computed = pts[i].computed;
        cr_assert_arr_eq(&got, &pts[i], sizeof got);
    }
    ag_msg_clear(&d);
    ag_buf_free(&b);
    /* A sender of 11 columns (before ranks and the quantization error):
     * unknown, not 0. */
    m.cols = 11;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_eq(d.cols, 11);
    cr_assert(isnan(d.u.history->points[0].mse) && isnan(d.u.history->points[0].sqnr_db));
    cr_assert_str_eq(d.u.history->points[0].computed, "daemon");
    ag_msg_clear(&d);
    ag_buf_free(&b);
    m.cols = 0;

    m = (ag_msg){.type = AG_MSG_R_SCALES};
    m.u.scales = &sl;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_str_eq(d.u.scales->format, "E3M4");
    cr_assert_eq(d.u.scales->items[0].scale, 0.5);
    cr_assert_eq(d.u.scales->items[0].step, 7);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    m = (ag_msg){.type = AG_MSG_R_TOP};
    m.u.top = &top;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_eq(d.u.top->from_step, 4);
    cr_assert_eq(d.u.top->to_step, 9);
    cr_assert_eq(d.u.top->items[0].stall_rate, 0.5);
    cr_assert_eq(d.u.top->items[0].steps, 3);
    ag_msg_clear(&d);
    ag_buf_free(&b);

    ag_report_row rr[2] = {{"w", "E5M2", 3000, 0.25, 0.125, 0.5, "\xe2\x96\x81\xe2\x96\x88", 24.5},
                           {"v", "E3M4", 1, 0, 0, 0, "", NAN}};
    ag_report rep = {2, rr};
    m = (ag_msg){.type = AG_MSG_R_REPORT};
    m.u.report = &rep;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_eq(d.u.report->n, 2);
    for (size_t i = 0; i < 2; i++) {
        const ag_report_row *g = &d.u.report->items[i];
        cr_assert_str_eq(g->tensor, rr[i].tensor);
        cr_assert_str_eq(g->format, rr[i].format);
        cr_assert_str_eq(g->sparkline, rr[i].sparkline);
        cr_assert_eq(g->steps, rr[i].steps);
        cr_assert_eq(g->last_rate, rr[i].last_rate);
        cr_assert_eq(g->mean_rate, rr[i].mean_rate);
        cr_assert_eq(g->max_rate, rr[i].max_rate);
    }
    cr_assert_eq(d.u.report->items[0].last_sqnr_db, 24.5);
    cr_assert(isnan(d.u.report->items[1].last_sqnr_db), "nil: unknown");
    ag_msg_clear(&d);
    /* On the wire last_sqnr_db, added last, comes after the sparkline, so a
     * receiver that reads 7 values skips it. */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, (const char *)b.data, b.len, NULL),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object_array *items = NULL;
    for (uint32_t k = 0; k < u.data.via.map.size; k++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[k];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 5 &&
            memcmp(kv->key.via.str.ptr, "items", 5) == 0)
            items = &kv->val.via.array;
    }
    cr_assert_not_null(items);
    cr_assert_eq(items->size, 2);
    const msgpack_object_array *row0 = &items->ptr[0].via.array, *row1 = &items->ptr[1].via.array;
    cr_assert_eq(row0->size, 8);
    cr_assert_eq(row0->ptr[6].type, MSGPACK_OBJECT_STR, "the sparkline 7th");
    cr_assert_eq(row0->ptr[7].via.f64, 24.5, "last_sqnr_db 8th");
    cr_assert_eq(row1->ptr[7].type, MSGPACK_OBJECT_NIL, "unknown: nil");
    msgpack_unpacked_destroy(&u);
    ag_buf_free(&b);

    m = (ag_msg){.type = AG_MSG_R_STATUS};
    m.u.status = &st;
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_assert_str_eq(d.u.status->version, "0.1.0");
    cr_assert_eq(d.u.status->uptime_s, 12.5);
    cr_assert_eq(d.u.status->rows_written, 6);
    cr_assert_eq(d.u.status->tensors, 8);
    cr_assert_str_eq(d.u.status->formats, "E5M2,E3M4");
    cr_assert_str_eq(d.u.status->store, "degraded: disk full");
    cr_assert_eq(d.u.status->discarded, 9);
    cr_assert_eq(d.u.status->history_len, 24);
    cr_assert_str_eq(d.u.status->amax_mode, "most_recent");
    cr_assert_str_eq(d.u.status->scale_mode, "delayed");
    cr_assert_eq(d.u.status->margin, 1.5);
    cr_assert_eq(d.u.status->scale_min, 1e-10);
    cr_assert_eq(d.u.status->caps, AG_CAP_BUNDLE | AG_CAP_QERR);
    cr_assert_eq(d.u.status->shm_segments, 3);
    cr_assert_eq(d.u.status->shm_passed, 2);
    cr_assert_eq(d.u.status->shm_snapshots, 1000);
    cr_assert_eq(d.u.status->shm_refused, 4);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, empty_reply_lists_round_trip) {
    ag_run_list list = {0, NULL};
    ag_msg m = {.type = AG_MSG_R_RUNS};
    m.u.runs = &list;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.runs->n, 0);
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, error_reply_round_trips) {
    ag_msg m = {.type = AG_MSG_R_ERROR};
    m.u.error.code = AG_ENOTFOUND;
    m.u.error.text = "no run \"x\"";
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_assert_eq(d.u.error.code, AG_ENOTFOUND);
    cr_assert_str_eq(d.u.error.text, "no run \"x\"");
    cr_assert_null(ag_msg_take_result(&d), "an error carries no result");
    ag_msg_clear(&d);
    ag_buf_free(&b);
}

Test(codec, incremental_stats_batch_decodes_like_a_whole_one) {
    ag_stats_batch sb;
    memset(&sb, 0, sizeof sb);
    ag_buf_init(&sb.buf);
    cr_assert_eq(ag_stats_batch_begin(&sb, "run-b", 99), AG_OK);
    cr_assert_eq(ag_stats_batch_end(&sb, 0, 0), AG_EINVAL, "an empty batch is refused");
    for (int i = 0; i < 100; i++) {
        ag_stat_record r = {(uint64_t)i, "t", AG_ROLE_GRADIENT, i * 0.5, 10, 1};
        cr_assert_eq(ag_stats_batch_add(&sb, &r), AG_OK);
    }
    ag_stat_record bad = {0, "t", AG_ROLE_GRADIENT, 1.0, 1, 2};
    cr_assert_eq(ag_stats_batch_add(&sb, &bad), AG_EINVAL);
    cr_assert_eq(ag_stats_batch_end(&sb, 5, 6), AG_OK);
    cr_assert_eq(ag_proto_patch_seq(sb.buf.data, sb.buf.len, 77, 3), AG_OK);
    ag_msg d;
    decode_ok(&sb.buf, &d);
    cr_assert_eq(d.type, AG_MSG_STATS);
    cr_assert_str_eq(d.hdr.run, "run-b");
    cr_assert_eq(d.hdr.client_id, 99);
    cr_assert_eq(d.hdr.seq, 77);
    cr_assert_eq(d.hdr.dropped, 3);
    cr_assert_eq(d.u.stats.n, 100);
    cr_assert_eq(d.u.stats.records[99].step, 99);
    cr_assert_eq(d.u.stats.records[99].amax, 49.5);
    ag_msg_clear(&d);
    ag_buf_free(&sb.buf);
}

Test(codec, patch_seq_refuses_a_message_without_our_trailer) {
    ag_msg m = {.type = AG_MSG_Q_RUNS};
    ag_buf b = encode_ok(&m);
    cr_assert_eq(ag_proto_patch_seq(b.data, b.len, 1, 1), AG_EPROTO);
    ag_buf_free(&b);
}

Test(codec, fixed_buffer_encodes_exactly_into_the_counted_size) {
    ag_msg m = {.type = AG_MSG_RUN_END, .hdr = hdr()};
    size_t need = ag_proto_encoded_size(&m);
    cr_assert_gt(need, 0);
    uint8_t mem[256];
    ag_buf b;
    ag_buf_init_fixed(&b, mem, need);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    cr_assert_eq(b.len, need);
    ag_buf_init_fixed(&b, mem, need - 1);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_ETOOBIG);
    cr_assert_eq(b.len, 0, "a failed encode leaves the buffer as it was");
}

Test(codec, peek_reads_version_and_type) {
    ag_msg m = {.type = AG_MSG_Q_STATUS};
    ag_buf b = encode_ok(&m);
    int v = 0, t = 0;
    cr_assert_eq(ag_proto_peek(b.data, b.len, &v, &t), AG_OK);
    cr_assert_eq(v, AG_PROTO_VERSION);
    cr_assert_eq(t, AG_MSG_Q_STATUS);
    cr_assert_str_eq(ag_proto_type_name(t), "q_status");
    ag_buf_free(&b);
}

/* A column added to reply items (history's computed) goes only to requesters
 * that say they read it: one that predates cols gets the first 10. */
Test(codec, history_items_carry_computed_only_for_a_requester_that_reads_it) {
    ag_history_point pt = {3, 1, 2, 0.5, 0, 0, 0, 0, 1, 1, "device", 1, 1, NAN, -3.5};
    ag_history h = {"r", "w", "E5M2", 1, &pt};
    cr_assert_eq(ag_proto_reply_cols(AG_MSG_R_HISTORY, 0), 10);
    cr_assert_eq(ag_proto_reply_cols(AG_MSG_R_HISTORY, UINT64_MAX), 15);
    cr_assert_eq(ag_proto_reply_cols(AG_MSG_R_HISTORY, 5), 5);
    ag_msg m = {.type = AG_MSG_R_HISTORY, .cols = ag_proto_reply_cols(AG_MSG_R_HISTORY, 0)};
    m.u.history = &h;
    ag_buf b = encode_ok(&m);
    ag_msg d;
    decode_ok(&b, &d);
    cr_expect_eq(d.cols, 10);
    cr_expect_eq(d.u.history->points[0].step, 3);
    cr_expect_null(d.u.history->points[0].computed, "not sent: unknown");
    ag_msg_clear(&d);
    ag_buf_free(&b);
    m.cols = 0; /* all */
    b = encode_ok(&m);
    decode_ok(&b, &d);
    cr_expect_eq(d.cols, 15);
    cr_expect_str_eq(d.u.history->points[0].computed, "device");
    cr_expect_eq(d.u.history->points[0].ranks, 1);
    cr_expect_eq(d.u.history->points[0].complete, 1);
    cr_expect(isnan(d.u.history->points[0].mse), "nil: unknown");
    cr_expect_eq(d.u.history->points[0].sqnr_db, -3.5);
    ag_msg_clear(&d);
    ag_buf_free(&b);
    m.cols = 9; /* fewer than every receiver reads */
    ag_buf_init(&b);
    cr_expect_eq(ag_proto_encode(&b, &m), AG_EINVAL);
    ag_buf_free(&b);
}

/* A newer sender's extra item values are skipped; fewer than the first
 * columns is malformed. */
Test(codec, history_items_longer_than_known_are_read_and_shorter_ones_refused) {
    static const size_t lengths[] = {9, 10, 13, 14, 16};
    for (size_t t = 0; t < 5; t++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 6);
        static const char *const keys[] = {"v", "t", "run", "tensor", "fmt", "items"};
        for (int k = 0; k < 5; k++) {
            msgpack_pack_str_with_body(&pk, keys[k], strlen(keys[k]));
            if (k == 0) msgpack_pack_uint8(&pk, 2);
            if (k == 1) msgpack_pack_uint8(&pk, AG_MSG_R_HISTORY);
            if (k == 2 || k == 3) msgpack_pack_str_with_body(&pk, "x", 1);
            if (k == 4) msgpack_pack_str_with_body(&pk, "E5M2", 4);
        }
        msgpack_pack_str_with_body(&pk, "items", 5);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_array(&pk, lengths[t]);
        for (size_t c = 0; c < lengths[t]; c++) {
            if (c == 10)
                msgpack_pack_str_with_body(&pk, "daemon", 6);
            else if (c == 13)
                msgpack_pack_nil(&pk); /* mse unknown */
            else if (c == 14)
                msgpack_pack_double(&pk, 7.25); /* sqnr_db */
            else if (c == 15)
                msgpack_pack_map(&pk, 0); /* a value of some newer column */
            else
                msgpack_pack_uint8(&pk, (uint8_t)c);
        }
        ag_msg d;
        int rc = ag_proto_decode(sb.data, sb.size, &d);
        if (lengths[t] < 10) {
            cr_expect_eq(rc, AG_EPROTO, "9 values: fewer than every receiver reads");
        } else {
            cr_assert_eq(rc, AG_OK, "%s", ag_errctx_text(&d.err));
            cr_expect_eq(d.u.history->points[0].total, 2);
            if (lengths[t] > 10)
                cr_expect_str_eq(d.u.history->points[0].computed, "daemon");
            else
                cr_expect_null(d.u.history->points[0].computed);
            cr_expect_eq(d.u.history->points[0].ranks, lengths[t] > 11 ? 11 : 0);
            cr_expect_eq(d.u.history->points[0].complete, lengths[t] > 12 ? 12 : 0);
            cr_expect(isnan(d.u.history->points[0].mse));
            if (lengths[t] > 14)
                cr_expect_eq(d.u.history->points[0].sqnr_db, 7.25);
            else
                cr_expect(isnan(d.u.history->points[0].sqnr_db), "not sent: unknown");
            ag_msg_clear(&d);
        }
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Bundles (t = 6): what ag_bundle_begin/add write, split gives back; a
 * bundle is no stream message of its own; malformed ones say why. */
Test(codec, bundles_split_into_their_messages_and_malformed_ones_are_refused) {
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_bundle_begin(&b, 0), AG_EINVAL);
    cr_assert_eq(ag_bundle_begin(&b, AG_PROTO_MAX_BUNDLE + 1), AG_EINVAL);
    cr_assert_eq(ag_bundle_begin(&b, 3), AG_OK);
    static const char *const msgs[] = {"a", "bc", "def"};
    for (int i = 0; i < 3; i++) cr_assert_eq(ag_bundle_add(&b, msgs[i], strlen(msgs[i])), AG_OK);
    cr_assert_leq(b.len, ag_bundle_size(3, 6));
    ag_bundle_entry e[4];
    size_t n = 0;
    ag_errctx err = {0};
    cr_assert_eq(ag_proto_bundle_split(b.data, b.len, e, 4, &n, &err), AG_OK);
    cr_assert_eq(n, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(e[i].len, strlen(msgs[i]));
        cr_assert_eq(memcmp(e[i].data, msgs[i], e[i].len), 0);
    }
    int version, type;
    cr_assert_eq(ag_proto_peek(b.data, b.len, &version, &type), AG_OK);
    cr_assert_eq(type, AG_MSG_BUNDLE);
    ag_msg d;
    cr_assert_neq(ag_proto_decode(b.data, b.len, &d), AG_OK, "a bundle is split, not decoded");
    cr_assert_eq(ag_proto_bundle_split(b.data, b.len, e, 2, &n, &err), AG_ETOOBIG);
    cr_assert_eq(ag_proto_bundle_split(b.data, b.len - 1, e, 4, &n, &err), AG_EPROTO);
    cr_assert_eq(n, 0);
    ag_buf_free(&b);
    const unsigned char empty[] = {0x83, 0xa1, 'v', 0x02, 0xa1, 't', 0x06,
                                   0xa4, 'm',  's', 'g',  's',  0x90};
    cr_assert_eq(ag_proto_bundle_split(empty, sizeof empty, e, 4, &n, &err), AG_EPROTO);
    const unsigned char no_msgs[] = {0x82, 0xa1, 'v', 0x02, 0xa1, 't', 0x06};
    cr_assert_eq(ag_proto_bundle_split(no_msgs, sizeof no_msgs, e, 4, &n, &err), AG_EPROTO);
    const unsigned char v1[] = {0x83, 0xa1, 'v', 0x01, 0xa1, 't',  0x06, 0xa4,
                                'm',  's',  'g', 's',  0x91, 0xc4, 0x01, 0x00};
    cr_assert_eq(ag_proto_bundle_split(v1, sizeof v1, e, 4, &n, &err), AG_EVERSION);
    const unsigned char twice[] = {0x84, 0xa1, 'v', 0x02, 0xa1, 't',  0x06, 0xa1, 't', 0x06,
                                   0xa4, 'm',  's', 'g',  's',  0x91, 0xc4, 0x01, 0x00};
    cr_assert_eq(ag_proto_bundle_split(twice, sizeof twice, e, 4, &n, &err), AG_EPROTO);
    cr_assert_eq(strcmp(ag_proto_type_name(AG_MSG_BUNDLE), "bundle"), 0);
}
