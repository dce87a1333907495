/*
 * test_run_identity.c - a run is its name plus a launch, against the real
 * daemon: the README's first trainer run twice gives two runs, first-run and
 * first-run.2, each with its own points (tensors and history agree); resume
 * continues one run; two clients of one launch share a run; the renaming
 * still works after restarts (its state is in the database); a version-1
 * sender is still read and answered in version 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "tests/daemon/harness.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(run_identity, .init = setup, .fini = teardown, .timeout = 240);

#define WAIT_MS 20000 /* a bound against hangs, not a timing check */

/* The README's first trainer: 10 steps of fc.weight (w = 1, g = 1e-4,
 * lr = 0.01), from step `from`; returns the name the daemon filed it under. */
static void first_trainer(ag_client *c, uint64_t from, char *name, size_t cap) {
    float w[100], g[100];
    for (int i = 0; i < 100; i++) {
        w[i] = 1.0f;
        g[i] = 1e-4f;
    }
    for (uint64_t step = from; step < from + 10; step++)
        cr_assert_eq(ag_client_log_sgd(c, step, "fc.weight", w, g, 100, 0.01f), AG_OK);
    int rc = ag_client_start_run(c, WAIT_MS);
    cr_assert_eq(rc, AG_OK, "the daemon did not say the run's name: %s", ag_strerror(rc));
    snprintf(name, cap, "%s", ag_client_run(c));
    cr_assert_eq(ag_client_flush(c, WAIT_MS), AG_OK);
}

/* The run named name in the daemon's list (fails the test when absent). */
static ag_run_info find_run(const ag_run_list *runs, const char *name) {
    for (size_t i = 0; i < runs->n; i++)
        if (!strcmp(runs->items[i].name, name)) return runs->items[i];
    cr_assert_fail("no run %s among %zu", name, runs->n);
    return runs->items[0];
}

/* Wait (bounded poll) until run has n points of fc.weight in E5M2, and check
 * that `tensors` counts exactly as many snapshots as `history` shows. */
static void expect_points(ag_client *q, const char *run, size_t n) {
    ag_history *h = harness_wait_history(q, run, "fc.weight", "E5M2", n);
    cr_expect_eq(h->n, n, "%s: %zu points", run, h->n);
    for (size_t i = 0; i < h->n; i++) cr_expect_eq(h->points[i].stall_rate, 1.0);
    ag_tensor_list *ts = NULL;
    cr_assert_eq(ag_client_tensors(q, run, &ts), AG_OK);
    const ag_tensor_info *t = NULL;
    for (size_t i = 0; i < ts->n; i++)
        if (!strcmp(ts->items[i].name, "fc.weight")) t = &ts->items[i];
    cr_assert_not_null(t, "%s has no fc.weight", run);
    /* the tensor delta is filed with its snapshot's message */
    cr_expect_eq(t->snapshots, h->n,
                 "%s: tensors says %llu snapshots, history shows %zu "
                 "points",
                 run, (unsigned long long)t->snapshots, h->n);
    ag_free(ts);
    ag_free(h);
}

Test(run_identity, the_same_name_twice_gives_two_runs_each_with_its_own_points) {
    harness_start(&H, NULL);
    char first[AG_NAME_MAX + 1], second[AG_NAME_MAX + 1];
    ag_client *a = harness_client(&H, "first-run", AG_QUEUE_BLOCK);
    first_trainer(a, 0, first, sizeof first);
    uint64_t id_a = ag_client_id(a);
    ag_client_close(a);
    ag_client *b = harness_client(&H, "first-run", AG_QUEUE_BLOCK);
    first_trainer(b, 0, second, sizeof second);
    uint64_t id_b = ag_client_id(b);
    ag_client_close(b);
    cr_expect_str_eq(first, "first-run");
    cr_expect_str_eq(second, "first-run.2");

    ag_client *q = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    expect_points(q, "first-run", 10);
    expect_points(q, "first-run.2", 10);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
    cr_expect_eq(runs->n, 2);
    ag_run_info r1 = find_run(runs, "first-run"), r2 = find_run(runs, "first-run.2");
    cr_expect_eq(r1.client_id, id_a, "each run keeps its own trainer");
    cr_expect_eq(r2.client_id, id_b);
    cr_expect_leq(r1.started_ms, r2.started_ms);
    cr_expect_neq(r1.ended_ms, 0);
    cr_expect_eq(r1.last_step, 9);
    cr_expect_eq(r2.last_step, 9);
    cr_expect_eq(r1.dropped + r2.dropped, 0);
    ag_free(runs);
    ag_client_close(q);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

Test(run_identity, resume_continues_one_run) {
    harness_start(&H, NULL);
    char name[AG_NAME_MAX + 1];
    ag_client *a = harness_client(&H, "first-run", AG_QUEUE_BLOCK);
    first_trainer(a, 0, name, sizeof name);
    ag_client_close(a);
    ag_client *b = harness_client_as(&H, "first-run", AG_QUEUE_BLOCK, 1, NULL);
    first_trainer(b, 10, name, sizeof name);
    ag_client_close(b);
    cr_expect_str_eq(name, "first-run");

    ag_client *q = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    expect_points(q, "first-run", 20);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
    cr_expect_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].last_step, 19);
    cr_expect_eq(runs->items[0].dropped, 0);
    ag_free(runs);
    ag_client_close(q);
}

Test(run_identity, two_clients_of_one_launch_share_one_run) {
    harness_start(&H, NULL);
    ag_client *r0 = harness_client_as(&H, "ddp", AG_QUEUE_BLOCK, 0, "job-7");
    ag_client *r1 = harness_client_as(&H, "ddp", AG_QUEUE_BLOCK, 0, "job-7");
    ag_client *other = harness_client_as(&H, "ddp", AG_QUEUE_BLOCK, 0, "job-8");
    for (uint64_t s = 1; s <= 20; s++) { /* interleaved: each numbers its own messages */
        cr_assert_eq(ag_client_log_amax(r0, s, "rank0.act", AG_ROLE_ACTIVATION, 1, 8, 0), AG_OK);
        cr_assert_eq(ag_client_log_amax(r1, s, "rank1.act", AG_ROLE_ACTIVATION, 1, 8, 0), AG_OK);
        cr_assert_eq(ag_client_flush(r0, WAIT_MS), AG_OK);
        cr_assert_eq(ag_client_flush(r1, WAIT_MS), AG_OK);
    }
    cr_assert_eq(ag_client_start_run(r0, WAIT_MS), AG_OK);
    cr_assert_eq(ag_client_start_run(r1, WAIT_MS), AG_OK);
    cr_assert_eq(ag_client_start_run(other, WAIT_MS), AG_OK);
    cr_expect_str_eq(ag_client_run(r0), "ddp");
    cr_expect_str_eq(ag_client_run(r1), "ddp", "same launch, same name: not renamed");
    cr_expect_str_eq(ag_client_run(other), "ddp.2");
    cr_expect_str_eq(ag_client_launch_id(r1), "job-7");
    ag_client_stats s0, s1;
    cr_assert_eq(ag_client_get_stats(r0, &s0), AG_OK);
    cr_assert_eq(ag_client_get_stats(r1, &s1), AG_OK);
    /* one run, but each client's delivery is its own (clients.delivered) */
    cr_expect_eq(s0.delivered, s0.sent);
    cr_expect_eq(s1.delivered, s1.sent);
    cr_expect_eq(s0.undelivered + s1.undelivered, 0);
    cr_expect_eq(ag_client_close(r0), 0);
    cr_expect_eq(ag_client_close(r1), 0);
    cr_expect_eq(ag_client_close(other), 0);

    ag_client *q = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    ag_tensor_list *ts = NULL;
    for (int i = 0; i < 3000; i++) { /* tensor deltas of statistics come every 200 ms */
        cr_assert_eq(ag_client_tensors(q, "ddp", &ts), AG_OK);
        if (ts->n == 2 && ts->items[0].last_step == 20 && ts->items[1].last_step == 20) break;
        ag_free(ts);
        ts = NULL;
        struct timespec pause = {0, 10 * 1000000};
        nanosleep(&pause, NULL); /* poll interval, not a timing assumption */
    }
    cr_assert_not_null(ts, "both ranks' tensors never showed in ddp");
    cr_expect_str_eq(ts->items[0].name, "rank0.act");
    cr_expect_str_eq(ts->items[1].name, "rank1.act");
    ag_free(ts);
    ag_run_list *runs = NULL;
    uint64_t want = s0.sent + s1.sent + 2; /* and both run_ends */
    ag_run_info ddp = {0};
    for (int i = 0; i < 3000; i++) {
        cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
        ddp = find_run(runs, "ddp");
        ag_free(runs);
        if (ddp.messages >= want) break;
        struct timespec pause = {0, 10 * 1000000};
        nanosleep(&pause, NULL);
    }
    cr_expect_eq(ddp.messages, want, "%llu messages filed, both ranks sent %llu",
                 (unsigned long long)ddp.messages, (unsigned long long)want);
    cr_expect_eq(ddp.dropped, 0, "two clients' sequence numbers are not gaps of one");
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(q, &st), AG_OK);
    cr_expect_eq(st->runs, 2);
    cr_expect_eq(st->rejected, 0);
    cr_expect_eq(st->dropped, 0);
    ag_free(st);
    ag_client_close(q);
}

Test(run_identity, renaming_goes_on_from_the_database_after_restarts) {
    char name[AG_NAME_MAX + 1];
    harness_start(&H, NULL);
    ag_client *a = harness_client_as(&H, "r", AG_QUEUE_BLOCK, 0, "launch-a");
    first_trainer(a, 0, name, sizeof name);
    cr_expect_str_eq(name, "r");
    ag_client_close(a);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);

    harness_start(&H, NULL);
    ag_client *b = harness_client_as(&H, "r", AG_QUEUE_BLOCK, 0, "launch-b");
    first_trainer(b, 0, name, sizeof name);
    cr_expect_str_eq(name, "r.2");
    /* kill -9: b never ends; its run stays live in the file */
    cr_assert_eq(ag_client_flush(b, WAIT_MS), AG_OK);
    ag_client *q = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    expect_points(q, "r.2", 10);
    ag_client_close(q);
    harness_stop(&H, SIGKILL);

    harness_start(&H, NULL);
    ag_client *c = harness_client_as(&H, "r", AG_QUEUE_BLOCK, 0, "launch-c");
    first_trainer(c, 0, name, sizeof name);
    cr_expect_str_eq(name, "r.3", "r and r.2 are taken, one ended, one live");
    ag_client_close(c);
    /* Another client of launch b joins b's run; a resume takes the newest. */
    ag_client *b2 = harness_client_as(&H, "r", AG_QUEUE_BLOCK, 0, "launch-b");
    first_trainer(b2, 10, name, sizeof name);
    cr_expect_str_eq(name, "r.2");
    ag_client_close(b2);
    /* b's first client is still open: its messages go on into r.2 after both
     * restarts, without a gap. */
    cr_assert_eq(ag_client_log_amax(b, 30, "late", AG_ROLE_ACTIVATION, 1, 1, 0), AG_OK);
    cr_assert_eq(ag_client_flush(b, WAIT_MS), AG_OK);
    ag_client *d = harness_client_as(&H, "r", AG_QUEUE_BLOCK, 1, "launch-d");
    first_trainer(d, 20, name, sizeof name);
    cr_expect_str_eq(name, "r.3");
    ag_client_close(d);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
    ag_client_close(b);

    harness_start(&H, NULL);
    q = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    expect_points(q, "r", 10);
    expect_points(q, "r.2", 20);
    expect_points(q, "r.3", 20);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
    cr_expect_eq(runs->n, 3);
    ag_run_info r2 = find_run(runs, "r.2");
    cr_expect_eq(r2.last_step, 30);
    ag_free(runs);
    ag_client_close(q);
}

/* One raw message encoded in protocol version 1. */
static void push_v1(nng_socket s, ag_msg *m) {
    m->version = 1;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, m), AG_OK, "%s", ag_errctx_text(&m->err));
    cr_assert_eq(nng_send(s, b.data, b.len, 0), 0);
    ag_buf_free(&b);
}

Test(run_identity, a_version_1_sender_gets_a_run_of_its_own_and_version_1_replies) {
    harness_start(&H, NULL);
    char name[AG_NAME_MAX + 1];
    ag_client *a = harness_client(&H, "legacy", AG_QUEUE_BLOCK);
    first_trainer(a, 0, name, sizeof name);
    ag_client_close(a);

    nng_socket push;
    cr_assert_eq(nng_push0_open(&push), 0);
    cr_assert_eq(nng_dial(push, H.ingest, NULL, 0), 0);
    ag_msg start = {.type = AG_MSG_RUN_START};
    start.hdr = (ag_stream_hdr){.run = "legacy", .client_id = 4242, .seq = 0};
    start.u.run_start = (ag_msg_run_start){.host = "old", .pid = 1, .time_ms = 1};
    push_v1(push, &start);
    ag_stat_record rec = {
        .step = 5, .tensor = "x", .role = AG_ROLE_GRADIENT, .amax = 1, .numel = 1};
    ag_msg stats = {.type = AG_MSG_STATS};
    stats.hdr = (ag_stream_hdr){.run = "legacy", .client_id = 4242, .seq = 1};
    stats.u.stats = (ag_msg_stats){.n = 1, .records = &rec};
    push_v1(push, &stats);

    /* A version-1 query gets a version-1 reply, and the old client's run is
     * legacy.2: it merged into nothing. */
    nng_socket req;
    cr_assert_eq(nng_req0_open(&req), 0);
    cr_assert_eq(nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, WAIT_MS), 0);
    cr_assert_eq(nng_dial(req, H.query, NULL, 0), 0);
    int found = 0;
    for (int i = 0; i < 3000 && !found; i++) {
        ag_msg q = {.type = AG_MSG_Q_TENSORS, .version = 1};
        q.u.query.run = "legacy.2";
        ag_buf b;
        ag_buf_init(&b);
        cr_assert_eq(ag_proto_encode(&b, &q), AG_OK);
        cr_assert_eq(nng_send(req, b.data, b.len, 0), 0);
        ag_buf_free(&b);
        void *buf = NULL;
        size_t len = 0;
        cr_assert_eq(nng_recv(req, &buf, &len, NNG_FLAG_ALLOC), 0);
        int v = 0, t = 0;
        cr_assert_eq(ag_proto_peek(buf, len, &v, &t), AG_OK);
        cr_expect_eq(v, 1, "a version-1 request is answered in version 1");
        ag_msg reply;
        cr_assert_eq(ag_proto_decode(buf, len, &reply), AG_OK);
        found = reply.type == AG_MSG_R_TENSORS && reply.u.tensors->n == 1;
        if (!found) cr_assert(reply.type == AG_MSG_R_ERROR, "type %d", reply.type);
        ag_msg_clear(&reply);
        nng_free(buf, len);
        if (!found) {
            struct timespec pause = {0, 10 * 1000000};
            nanosleep(&pause, NULL);
        }
    }
    cr_expect(found, "the version-1 client's run never showed as legacy.2");
    nng_close(req);
    nng_close(push);
}
