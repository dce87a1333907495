/*
 * test_bundle.c - bundles (t = 6, PROTOCOL.md 3.6) through the real
 * altgradd: the same snapshots sent one by one and in bundles are stored
 * alike, with rollups that sum their raw rows; hostile bundles (empty,
 * truncated, over the count, of the wrong version, with bad entries) are
 * rejected and counted, the good entries beside bad ones are kept, and the
 * daemon serves on; a client sends queued small snapshots in bundles once
 * the daemon said it takes them.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "proto/proto.h"
#include "tests/daemon/harness.h"
#include "tests/sql_results.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(bundle, .init = setup, .fini = teardown, .timeout = 120);

#define N 16
#define TENSORS 3
#define STEPS 40

static void sleep_ms(long ms) { /* a poll interval, not a timing assumption */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The encoded run_start (seq 0) of client cid for run. */
static void encode_start(ag_buf *b, const char *run, uint64_t cid) {
    ag_msg m = {.type = AG_MSG_RUN_START};
    m.hdr = (ag_stream_hdr){run, cid, 0, 0};
    m.u.run_start = (ag_msg_run_start){.host = "h", .pid = 1, .time_ms = 1};
    cr_assert_eq(ag_proto_encode(b, &m), AG_OK);
}

/* The encoded snapshot of tensor t at step, message seq of client cid. */
static void encode_snapshot(ag_buf *b, const char *run, uint64_t cid, uint64_t seq, int t,
                            uint64_t step) {
    static float data[2 * N];
    char name[16];
    snprintf(name, sizeof name, "t%d.weight", t);
    for (int i = 0; i < N; i++) {
        data[i] = (float)(i + 1) * 0.01f * (float)(t + 1) + (float)step * 1e-4f;
        data[N + i] = 1e-3f * (float)((i + t + (int)step) % 7);
    }
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){run, cid, seq, 0};
    m.u.snapshot = (ag_msg_snapshot){.step = step,
                                     .tensor = name,
                                     .dtype = AG_DTYPE_F32,
                                     .form = AG_FORM_SGD,
                                     .lr = 0.01,
                                     .n = N,
                                     .w = data,
                                     .x = data + N};
    cr_assert_eq(ag_proto_encode(b, &m), AG_OK);
}

static nng_socket dial(void) {
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    return s;
}

static void push(nng_socket s, const void *data, size_t len) {
    cr_assert_eq(nng_send(s, (void *)data, len, 0), 0);
}

/* Messages [first, first + count) of the snapshot stream of run as one
 * bundle (message k is tensor k % TENSORS at step 1 + k / TENSORS). */
static void push_bundle(nng_socket s, const char *run, uint64_t cid, size_t first, size_t count) {
    ag_buf b, one;
    ag_buf_init(&b);
    ag_buf_init(&one);
    cr_assert_eq(ag_bundle_begin(&b, (uint32_t)count), AG_OK);
    for (size_t k = first; k < first + count; k++) {
        ag_buf_reset(&one);
        encode_snapshot(&one, run, cid, k + 1, (int)(k % TENSORS), 1 + k / TENSORS);
        cr_assert_eq(ag_bundle_add(&b, one.data, one.len), AG_OK);
    }
    push(s, b.data, b.len);
    ag_buf_free(&b);
    ag_buf_free(&one);
}

static ag_history *wait_history(ag_client *c, const char *run, const char *tensor,
                                const char *format, size_t n) {
    return harness_wait_history(c, run, tensor, format, n);
}

Test(bundle, bundled_and_single_messages_store_the_same_and_rollups_sum_their_rows) {
    harness_start(&H, NULL);
    nng_socket s = dial();
    ag_buf b;
    ag_buf_init(&b);
    encode_start(&b, "single", 11);
    push(s, b.data, b.len);
    ag_buf_reset(&b);
    encode_start(&b, "bundled", 12);
    push(s, b.data, b.len);
    for (size_t k = 0; k < TENSORS * STEPS; k++) {
        ag_buf_reset(&b);
        encode_snapshot(&b, "single", 11, k + 1, (int)(k % TENSORS), 1 + k / TENSORS);
        push(s, b.data, b.len);
    }
    /* bundles of 1, 7 and the rest: a bundle may split a step's tensors */
    push_bundle(s, "bundled", 12, 0, 1);
    push_bundle(s, "bundled", 12, 1, 7);
    push_bundle(s, "bundled", 12, 8, TENSORS * STEPS - 8);
    ag_buf_free(&b);

    ag_client *c = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    static const char *const fmts[] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    for (int t = 0; t < TENSORS; t++) {
        char name[16];
        snprintf(name, sizeof name, "t%d.weight", t);
        for (int f = 0; f < 5; f++) {
            ag_history *one = wait_history(c, "single", name, fmts[f], STEPS);
            ag_history *many = wait_history(c, "bundled", name, fmts[f], STEPS);
            cr_assert_eq(one->n, STEPS);
            cr_assert_eq(many->n, STEPS, "%s %s", name, fmts[f]);
            for (size_t i = 0; i < STEPS; i++) {
                ag_history_point p = one->points[i], q = many->points[i];
                cr_assert_eq(p.step, q.step);
                cr_assert_eq(p.stalled, q.stalled, "%s %s step %llu", name, fmts[f],
                             (unsigned long long)p.step);
                cr_assert_eq(p.total, q.total);
                cr_assert_eq(p.flips, q.flips);
                cr_assert_eq(p.overflow, q.overflow);
                cr_assert_eq(p.underflow, q.underflow);
                cr_assert(p.amax == q.amax && p.scale == q.scale);
            }
            ag_free(one);
            ag_free(many);
        }
    }
    /* each bundled message counts as a message, with no gap and no drop */
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_OK);
    for (size_t i = 0; i < runs->n; i++)
        if (strcmp(runs->items[i].name, "bundled") == 0) {
            cr_assert_eq(runs->items[i].messages, 1 + TENSORS * STEPS);
            cr_assert_eq(runs->items[i].dropped, 0);
        }
    ag_free(runs);
    ag_client_close(c);
    nng_close(s);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);

    /* every rollup bucket equals the GROUP BY of its raw rows */
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    static const char sql[] =
        "SELECT count(*) FROM (SELECT r.tensor_id, r.format_id, w.width, r.step / w.width,"
        " count(*), sum(r.stalled), sum(r.total) FROM results r, (SELECT 100 AS width UNION ALL"
        " SELECT 1000 UNION ALL SELECT 10000) w GROUP BY 1, 2, 3, 4 EXCEPT SELECT tensor_id,"
        " format_id, width, bucket, rows, stalled, total FROM rollups)";
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int64(q, 0), 0, "a rollup bucket differs from its raw rows");
    sqlite3_finalize(q);
    sqlite3_close(db);
}

/* rejected as the daemon's status counts it, waiting for at least want */
static uint64_t rejected(ag_client *c, uint64_t want) {
    uint64_t got = 0;
    for (int i = 0; i < 3000; i++) {
        ag_status *st = NULL;
        cr_assert_eq(ag_client_status(c, &st), AG_OK);
        got = st->rejected;
        ag_free(st);
        if (got >= want) break;
        sleep_ms(10);
    }
    return got;
}

Test(bundle, hostile_bundles_are_rejected_and_counted_and_good_entries_kept) {
    harness_start(&H, NULL);
    nng_socket s = dial();
    ag_buf b, one;
    ag_buf_init(&b);
    ag_buf_init(&one);
    encode_start(&b, "hostile", 21);
    push(s, b.data, b.len);
    /* {"v":2,"t":6,"msgs":[]}: empty */
    const unsigned char empty[] = {0x83, 0xa1, 'v', 0x02, 0xa1, 't', 0x06,
                                   0xa4, 'm',  's', 'g',  's',  0x90};
    push(s, empty, sizeof empty);
    /* an array of 5 entries with 2 there: truncated */
    const unsigned char truncated[] = {0x83, 0xa1, 'v',  0x02, 0xa1, 't',  0x06, 0xa4, 'm', 's',
                                       'g',  's',  0x95, 0xc4, 0x01, 0x00, 0xc4, 0x01, 0x00};
    push(s, truncated, sizeof truncated);
    /* an entry that is no binary */
    const unsigned char notbin[] = {0x83, 0xa1, 'v', 0x02, 0xa1, 't',  0x06,
                                    0xa4, 'm',  's', 'g',  's',  0x91, 0x07};
    push(s, notbin, sizeof notbin);
    /* version 1 */
    const unsigned char v1[] = {0x83, 0xa1, 'v', 0x01, 0xa1, 't',  0x06, 0xa4,
                                'm',  's',  'g', 's',  0x91, 0xc4, 0x01, 0x00};
    push(s, v1, sizeof v1);
    /* more messages than a bundle may hold: the header claims 4097 */
    unsigned char *over = calloc(1, 16 + 4097 * 3);
    memcpy(over,
           (const unsigned char[]){0x83, 0xa1, 'v', 0x02, 0xa1, 't', 0x06, 0xa4, 'm', 's', 'g', 's',
                                   0xdc, 0x10, 0x01},
           15);
    for (size_t i = 0; i < 4097; i++) memcpy(over + 15 + 3 * i, "\xc4\x01\x00", 3);
    push(s, over, 15 + 4097 * 3);
    free(over);
    /* five entries: a good snapshot, garbage, a nested bundle, a query and
     * another good snapshot: the three bad ones are rejected one by one */
    cr_assert_eq(ag_bundle_begin(&b, 5), AG_OK);
    ag_buf_reset(&b);
    cr_assert_eq(ag_bundle_begin(&b, 5), AG_OK);
    encode_snapshot(&one, "hostile", 21, 1, 0, 1);
    cr_assert_eq(ag_bundle_add(&b, one.data, one.len), AG_OK);
    cr_assert_eq(ag_bundle_add(&b, "\xc1\xc1\xc1", 3), AG_OK);
    cr_assert_eq(ag_bundle_add(&b, empty, sizeof empty), AG_OK);
    ag_buf_reset(&one);
    ag_msg qm = {.type = AG_MSG_Q_RUNS};
    cr_assert_eq(ag_proto_encode(&one, &qm), AG_OK);
    cr_assert_eq(ag_bundle_add(&b, one.data, one.len), AG_OK);
    ag_buf_reset(&one);
    encode_snapshot(&one, "hostile", 21, 2, 0, 2);
    cr_assert_eq(ag_bundle_add(&b, one.data, one.len), AG_OK);
    push(s, b.data, b.len);
    ag_buf_free(&b);
    ag_buf_free(&one);

    ag_client *c = harness_client(&H, "after", AG_QUEUE_BLOCK);
    ag_history *h = wait_history(c, "hostile", "t0.weight", "E5M2", 2);
    cr_assert_eq(h->n, 2, "both good entries are stored");
    ag_free(h);
    cr_assert_eq(rejected(c, 8), 8, "5 bundles and 3 entries rejected");
    /* and a trainer is served as before */
    float w[N], g[N];
    for (int i = 0; i < N; i++) w[i] = 0.1f * (float)(i + 1), g[i] = 0.01f;
    cr_assert_eq(ag_client_log_sgd(c, 1, "w", w, g, N, 0.01f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_free(wait_history(c, "after", "w", NULL, 1));
    ag_client_close(c);
    nng_close(s);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

/* A client that learned the daemon takes bundles sends its queued small
 * snapshots in them (the daemon's debug log says so), and everything
 * arrives. */
Test(bundle, a_client_bundles_queued_small_snapshots_and_all_arrive) {
    const char *const debug[] = {"--log-level", "debug", NULL};
    harness_start(&H, debug);
    ag_client *c = harness_client(&H, "client-bundles", AG_QUEUE_BLOCK);
    float w[N], g[N];
    for (int i = 0; i < N; i++) w[i] = 0.1f * (float)(i + 1), g[i] = 0.01f;
    /* the first message is the run's start: once its name is known the
     * daemon's caps are too */
    cr_assert_eq(ag_client_log_sgd(c, 0, "w", w, g, N, 0.01f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    for (uint64_t step = 1; step <= 2000; step++)
        cr_assert_eq(ag_client_log_sgd(c, step, "w", w, g, N, 0.01f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_history *h = wait_history(c, "client-bundles", "w", NULL, 2001);
    cr_assert_eq(h->n, 2001);
    ag_free(h);
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
    FILE *f = fopen(H.log, "r");
    cr_assert_not_null(f);
    char line[512];
    int bundles = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "a bundle of")) bundles++;
    fclose(f);
    cr_assert_gt(bundles, 0, "no bundle reached the daemon");
}
