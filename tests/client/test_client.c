/*
 * test_client.c - client/client.c and client/log.c against a test receiver
 * on a temporary ipc socket: ordering, sequence numbers, the drop and block
 * policies, drop reporting, reconnect after the receiver restarts, sampling, fork children,
 * close while other threads are still inside a call.
 */
#include "helpers.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static ag_client *open_client(const tmp_endpoints *t, ag_client_opts *o) {
    ag_client_opts defaults;
    if (!o) {
        memset(&defaults, 0, sizeof defaults);
        o = &defaults;
    }
    o->ingest_url = t->ingest;
    o->query_url = t->query;
    if (!o->run) o->run = "test-run";
    /* the test receiver is no daemon and never confirms delivery: close
     * would wait out its default 2 s for the confirmation */
    if (!o->close_timeout_ms) o->close_timeout_ms = 100;
    ag_client *c = NULL;
    int rc = ag_client_open(&c, o);
    cr_assert_eq(rc, AG_OK, "open: %s", ag_strerror(rc));
    return c;
}

Test(client, messages_arrive_in_order_with_consecutive_sequence_numbers) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.metadata = "{\"model\":\"mlp\"}", .batch_bytes = 512};
    ag_client *c = open_client(&t, &o);
    float w[4] = {1, 2, 3, 4}, g[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    for (uint64_t step = 1; step <= 200; step++) {
        cr_assert_eq(ag_client_log_amax(c, step, "fc.weight", AG_ROLE_WEIGHT, 1.0, 4, 0), AG_OK);
        if (step % 50 == 0)
            cr_assert_eq(ag_client_log_sgd(c, step, "fc.weight", w, g, 4, 0.01f), AG_OK);
    }
    uint64_t id = ag_client_id(c);
    cr_assert_eq(ag_client_end_run(c), AG_OK);

    uint64_t want_seq = 0, last_step = 0, records = 0, snapshots = 0;
    int ended = 0;
    while (!ended) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0, "the run did not end");
        cr_assert_eq(m.hdr.seq, want_seq, "seq %lu, want %lu", (unsigned long)m.hdr.seq,
                     (unsigned long)want_seq);
        want_seq++;
        cr_assert_eq(m.hdr.client_id, id);
        cr_assert_str_eq(m.hdr.run, "test-run");
        cr_assert_eq(m.hdr.dropped, 0);
        if (m.hdr.seq == 0) {
            cr_assert_eq(m.type, AG_MSG_RUN_START, "run_start comes first");
            cr_assert_str_eq(m.u.run_start.metadata, "{\"model\":\"mlp\"}");
            cr_assert_eq(m.u.run_start.pid, getpid());
        } else if (m.type == AG_MSG_STATS) {
            for (size_t i = 0; i < m.u.stats.n; i++) {
                cr_assert_eq(m.u.stats.records[i].step, last_step + 1, "records in order");
                last_step = m.u.stats.records[i].step;
                records++;
            }
        } else if (m.type == AG_MSG_SNAPSHOT) {
            cr_assert_eq(m.u.snapshot.step, last_step, "a snapshot follows its step's records");
            cr_assert_arr_eq(m.u.snapshot.w, w, sizeof w);
            cr_assert_arr_eq(m.u.snapshot.x, g, sizeof g);
            cr_assert_eq(m.u.snapshot.lr, 0.01f);
            snapshots++;
        } else {
            cr_assert_eq(m.type, AG_MSG_RUN_END);
            cr_assert_eq(m.u.run_end.step, 200);
            ended = 1;
        }
        received_free(&m, keep);
    }
    cr_assert_eq(records, 200);
    cr_assert_eq(snapshots, 4);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, a_full_queue_drops_counts_and_reports_the_drops) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* no receiver yet: the sender cannot hand anything over */
    ag_client_opts o = {.queue_messages = 4, .batch_bytes = 1};
    ag_client *c = open_client(&t, &o);
    int again = 0;
    for (uint64_t step = 1; step <= 100; step++) {
        int rc = ag_client_log_amax(c, step, "t", AG_ROLE_GRADIENT, 2.0, 10, 0);
        cr_assert(rc == AG_OK || rc == AG_EAGAIN, "%s", ag_strerror(rc));
        again += rc == AG_EAGAIN;
    }
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.records, 100);
    cr_assert_gt(st.dropped, 0);
    cr_assert_eq(st.dropped, (uint64_t)again, "every drop was reported to its caller");
    cr_assert_eq(st.records_dropped, (uint64_t)again);
    cr_assert_leq(st.queued, 4 + 2);

    nng_socket rx = receiver_open(t.ingest);
    wait_handed_off(c);
    cr_assert_eq(ag_client_log_amax(c, 101, "t", AG_ROLE_GRADIENT, 2.0, 10, 0), AG_OK);
    wait_handed_off(c);

    uint64_t got = 0, last_dropped = 0, last_seq = 0;
    int saw_101 = 0;
    while (!saw_101) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        if (m.hdr.seq)
            cr_assert_eq(m.hdr.seq, last_seq + 1, "dropped messages take no sequence number");
        last_seq = m.hdr.seq;
        last_dropped = m.hdr.dropped;
        if (m.type == AG_MSG_STATS) {
            got += m.u.stats.n;
            saw_101 = m.u.stats.records[m.u.stats.n - 1].step == 101;
        }
        received_free(&m, keep);
    }
    cr_assert_eq(got + st.records_dropped, 101, "every record arrived or was counted");
    cr_assert_eq(last_dropped, st.dropped, "the next message carries the drop count");
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

typedef struct producer {
    ag_client *c;
    int n;
    int failures;
    volatile int done;
} producer;

static void *produce(void *arg) {
    producer *p = arg;
    for (int i = 1; i <= p->n; i++)
        if (ag_client_log_amax(p->c, (uint64_t)i, "blocked", AG_ROLE_WEIGHT, 1, 1, 0) != AG_OK)
            p->failures++;
    p->done = 1;
    return NULL;
}

Test(client, the_block_policy_waits_for_room_and_loses_nothing) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client_opts o = {.policy = AG_QUEUE_BLOCK, .queue_messages = 2, .batch_bytes = 1};
    ag_client *c = open_client(&t, &o);
    producer p = {c, 50, 0, 0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, produce, &p), 0);
    /* wait (bounded) until the queue is full: the producer must then be stuck */
    ag_client_stats st;
    for (int i = 0; i < RECV_BOUND_MS; i++) {
        ag_client_get_stats(c, &st);
        if (st.queued >= 2 && st.records >= 2) break;
        sleep_ms(1);
    }
    cr_assert_geq(st.queued, 2);
    cr_assert_not(p.done, "with no daemon the producer cannot have finished");

    nng_socket rx = receiver_open(t.ingest);
    pthread_join(th, NULL);
    cr_assert_eq(p.failures, 0);
    wait_handed_off(c);
    ag_client_get_stats(c, &st);
    cr_assert_eq(st.dropped, 0);
    int got = 0;
    uint64_t seq = 0;
    while (got < 50) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        cr_assert_eq(m.hdr.seq, seq++);
        if (m.type == AG_MSG_STATS)
            for (size_t i = 0; i < m.u.stats.n; i++)
                cr_assert_eq(m.u.stats.records[i].step, (uint64_t)++got);
        received_free(&m, keep);
    }
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, the_client_reconnects_after_the_receiver_restarts) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.reconnect_ms = 20};
    ag_client *c = open_client(&t, &o);
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    wait_handed_off(c);
    int got_first = 0;
    while (!got_first) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        got_first = m.type == AG_MSG_STATS;
        received_free(&m, keep);
    }
    nng_close(rx); /* the daemon goes away ... */
    for (uint64_t step = 2; step <= 20; step++)
        cr_assert_eq(ag_client_log_amax(c, step, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    rx = receiver_open(t.ingest); /* ... and comes back on the same socket */
    wait_handed_off(c);

    /* A message in flight when the receiver closed may be lost (a seq gap);
     * everything logged after the restart must arrive. */
    cr_assert_eq(nng_socket_set_ms(rx, NNG_OPT_RECVTIMEO, 200), 0);
    int seen_late = 0;
    uint64_t last_seq = 0;
    for (int attempt = 0; attempt < 50 && !seen_late; attempt++) {
        uint64_t step = 1000 + (uint64_t)attempt;
        cr_assert_eq(ag_client_log_amax(c, step, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
        wait_handed_off(c);
        ag_msg m;
        nng_msg *keep = NULL;
        while (!seen_late && receive(rx, &m, &keep) == 0) {
            cr_assert_gt(m.hdr.seq, last_seq, "sequence numbers only grow");
            last_seq = m.hdr.seq;
            if (m.type == AG_MSG_STATS)
                for (size_t i = 0; i < m.u.stats.n; i++)
                    seen_late |= m.u.stats.records[i].step >= 1000;
            received_free(&m, keep);
        }
    }
    cr_assert(seen_late, "nothing arrived after the receiver restarted");
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, logging_without_a_daemon_never_blocks_and_close_is_bounded) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client_opts o = {.close_timeout_ms = 50};
    ag_client *c = open_client(&t, &o);
    float x[8] = {1, -3, 2, 0, 0, 0, 0, 0};
    for (uint64_t step = 0; step < 5000; step++)
        cr_assert(ag_client_log_stats(c, step, "act", AG_ROLE_ACTIVATION, x, 8) != AG_EINVAL);
    /* no daemon: flush fails at once (not after a day) and says where it looked */
    cr_assert_eq(ag_client_flush(c, 24 * 3600 * 1000), AG_ETRANSPORT);
    const char *why = ag_client_last_error(c);
    cr_assert_not_null(strstr(why, t.ingest + strlen("ipc://")), "why: %s", why);
    cr_assert_not_null(strstr(why, "not found"), "why: %s", why);
    cr_assert_gt(ag_client_close(c), 0, "nothing was delivered"); /* bounded: nobody listened */
    tmp_endpoints_remove(&t);
}

Test(client, close_counts_every_message_a_receiver_took_but_no_daemon_confirmed) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* accepts the connection and reads nothing: what is sent sits in its
     * buffers, and no query socket will ever confirm it */
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.batch_bytes = 1, .close_timeout_ms = 200};
    ag_client *c = open_client(&t, &o);
    for (uint64_t step = 1; step <= 5; step++)
        cr_assert_eq(ag_client_log_amax(c, step, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    wait_handed_off(c);
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.sent, 6, "run_start and five batches went to the transport");
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.delivered, 0);
    cr_assert_eq(st.undelivered, 6);
    cr_assert_eq(ag_client_flush(c, 50), AG_ETIMEDOUT, "no daemon confirmed anything");
    cr_assert_eq(ag_client_close(c), 7, "run_start, five batches and run_end");
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, close_counts_queued_messages_not_those_refused_when_the_queue_was_full) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* no receiver: nothing leaves the queue */
    ag_client_opts o = {.queue_messages = 4, .batch_bytes = 1, .close_timeout_ms = 50};
    ag_client *c = open_client(&t, &o);
    int again = 0;
    for (uint64_t step = 1; step <= 100; step++) {
        int rc = ag_client_log_amax(c, step, "t", AG_ROLE_GRADIENT, 2.0, 10, 0);
        cr_assert(rc == AG_OK || rc == AG_EAGAIN, "%s", ag_strerror(rc));
        again += rc == AG_EAGAIN;
    }
    cr_assert_gt(again, 0);
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.dropped, (uint64_t)again);
    cr_assert_eq(st.undelivered, (uint64_t)(1 + 100 - again),
                 "run_start and the batches that got into the queue");
    /* refused messages were reported (AG_EAGAIN, stats.dropped); what got in
     * and never reached a daemon is what close reports, run_end included */
    cr_assert_eq(ag_client_close(c), 1 + 100 - again + 1);
    tmp_endpoints_remove(&t);
}

Test(client, stats_are_computed_locally_for_every_dtype) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client *c = open_client(&t, NULL);
    float x[5] = {1.5f, -4.0f, 0, 0, 2};
    x[3] = (float)INFINITY;
    x[2] = (float)NAN;
    uint16_t bf[3] = {0x3f80, 0xc040, 0x7f80}; /* 1, -3, +inf */
    uint16_t hf[3] = {0x3c00, 0xc200, 0x7e00}; /* 1, -3, NaN */
    cr_assert_eq(ag_client_log_stats(c, 1, "f32", AG_ROLE_ACTIVATION, x, 5), AG_OK);
    cr_assert_eq(ag_client_log_stats_typed(c, 1, "bf16", AG_ROLE_GRADIENT, AG_DTYPE_BF16, bf, 3),
                 AG_OK);
    cr_assert_eq(ag_client_log_stats_typed(c, 1, "f16", AG_ROLE_UPDATE, AG_DTYPE_F16, hf, 3),
                 AG_OK);
    wait_handed_off(c);
    size_t got = 0;
    while (got < 3) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        for (size_t i = 0; m.type == AG_MSG_STATS && i < m.u.stats.n; i++, got++) {
            const ag_stat_record *r = &m.u.stats.records[i];
            if (got == 0) {
                cr_assert_eq(r->amax, 4.0);
                cr_assert_eq(r->nonfinite, 2);
                cr_assert_eq(r->numel, 5);
                cr_assert_eq(r->role, AG_ROLE_ACTIVATION);
            } else {
                cr_assert_eq(r->amax, 3.0);
                cr_assert_eq(r->nonfinite, 1);
                cr_assert_eq(r->numel, 3);
            }
        }
        received_free(&m, keep);
    }
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, sampling_sends_the_same_fixed_subset_every_step) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.sample_max = 10, .snapshot_every = 3};
    ag_client *c = open_client(&t, &o);
    enum { N = 1000 };
    static float w[N], u[N];
    for (int i = 0; i < N; i++) {
        w[i] = (float)i;
        u[i] = (float)(2 * i);
    }
    for (uint64_t step = 0; step < 9; step++)
        cr_assert_eq(ag_client_log_update(c, step, "big", w, u, N), AG_OK);
    ag_client_stats st;
    ag_client_get_stats(c, &st);
    cr_assert_eq(st.snapshots, 3, "steps 0, 3 and 6");
    cr_assert_eq(st.skipped, 6);
    wait_handed_off(c);
    float first[10];
    int snaps = 0;
    while (snaps < 3) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        if (m.type == AG_MSG_SNAPSHOT) {
            const ag_msg_snapshot *s = &m.u.snapshot;
            cr_assert_eq(s->step, (uint64_t)(3 * snaps));
            cr_assert_eq(s->form, AG_FORM_UPDATE);
            cr_assert_eq(s->n, 10);
            cr_assert_eq(s->numel, N);
            float ws[10], us[10];
            memcpy(ws, s->w, sizeof ws);
            memcpy(us, s->x, sizeof us);
            for (int k = 0; k < 10; k++) {
                cr_assert(ws[k] >= 100.0f * k && ws[k] < 100.0f * (k + 1), "one per stratum");
                cr_assert_eq(us[k], 2 * ws[k], "w and u sampled at the same indices");
            }
            if (snaps == 0)
                memcpy(first, ws, sizeof first);
            else
                cr_assert_arr_eq(ws, first, sizeof first, "the same subset every step");
            snaps++;
        }
        received_free(&m, keep);
    }
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, misuse_gets_clear_errors) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_client(&t, NULL);
    float w[2] = {1, 2}, g[2] = {3, 4};
    char long_name[AG_NAME_MAX + 2];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(ag_client_log_sgd(NULL, 0, "t", w, g, 2, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, NULL, w, g, 2, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, "", w, g, 2, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, long_name, w, g, 2, 0.1f), AG_ETOOBIG);
    cr_assert_eq(ag_client_log_sgd(c, 0, "t", NULL, g, 2, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, "t", w, NULL, 2, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, "t", w, g, 0, 0.1f), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, "t", w, g, 2, (float)NAN), AG_EINVAL);
    cr_assert_eq(ag_client_log_sgd(c, 0, "t", w, g, 2, (float)INFINITY), AG_EINVAL);
    cr_assert_eq(ag_client_log_update(c, 0, "t", w, NULL, 2), AG_EINVAL);
    const char *bad_fmt[1] = {"E9M9"};
    ag_snapshot s = {.tensor = "t",
                     .dtype = AG_DTYPE_F32,
                     .w = w,
                     .g = g,
                     .n = 2,
                     .lr = 1,
                     .formats = bad_fmt,
                     .nformats = 1};
    cr_assert_eq(ag_client_log_snapshot(c, &s), AG_EFORMAT);
    s.nformats = 0;
    s.u = g;
    cr_assert_eq(ag_client_log_snapshot(c, &s), AG_EINVAL, "both g and u");
    s.u = NULL;
    s.dtype = 9;
    cr_assert_eq(ag_client_log_snapshot(c, &s), AG_EINVAL);
    s.dtype = AG_DTYPE_F32;
    s.scale = -1;
    cr_assert_eq(ag_client_log_snapshot(c, &s), AG_EINVAL);
    cr_assert_eq(ag_client_log_amax(c, 0, "t", 7, 1, 1, 0), AG_EINVAL);
    cr_assert_eq(ag_client_log_amax(c, 0, "t", 0, -1, 1, 0), AG_EINVAL);
    cr_assert_eq(ag_client_log_amax(c, 0, "t", 0, NAN, 1, 0), AG_EINVAL);
    cr_assert_eq(ag_client_log_amax(c, 0, "t", 0, 1, 1, 2), AG_EINVAL);
    cr_assert_eq(ag_client_log_stats(c, 0, "t", 0, NULL, 2), AG_EINVAL);
    cr_assert_eq(ag_client_log_stats_typed(c, 0, "t", 0, 5, w, 2), AG_EINVAL);
    ag_client_stats st;
    ag_client_get_stats(c, &st);
    cr_assert_eq(st.records + st.snapshots, 0, "misuse queued nothing");
    cr_assert_eq(ag_client_end_run(c), AG_OK);
    cr_assert_eq(ag_client_log_amax(c, 0, "t", 0, 1, 1, 0), AG_ECLOSED);
    cr_assert_eq(ag_client_end_run(c), AG_ECLOSED);
    ag_client_close(c);
    ag_client_close(NULL);

    ag_client_opts o = {.ingest_url = t.ingest, .query_url = t.query, .run = long_name};
    cr_assert_eq(ag_client_open(&c, &o), AG_ETOOBIG);
    o.run = "r";
    o.metadata = "[1]";
    cr_assert_eq(ag_client_open(&c, &o), AG_EINVAL);
    o.metadata = NULL;
    o.policy = 7;
    cr_assert_eq(ag_client_open(&c, &o), AG_EINVAL);
    o.policy = 0;
    o.ingest_url = "nonsense://x";
    cr_assert_neq(ag_client_open(&c, &o), AG_OK);
    cr_assert_eq(ag_client_open(NULL, &o), AG_EINVAL);
    tmp_endpoints_remove(&t);
}

Test(client, a_query_only_client_starts_no_run) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_client(&t, NULL);
    ag_client_stats st;
    cr_assert_eq(ag_client_flush(c, 0), AG_OK, "nothing to flush");
    ag_client_get_stats(c, &st);
    cr_assert_eq(st.queued + st.sent + st.dropped, 0);
    ag_client_close(c);
    tmp_endpoints_remove(&t);
}

Test(client, default_run_name_and_environment_urls_are_used) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    setenv("ALTGRAD_INGEST", t.ingest, 1);
    ag_client *c = NULL;
    ag_client_opts o;
    memset(&o, 0, sizeof o);
    o.close_timeout_ms = 100; /* the receiver never confirms: do not wait 2 s */
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    unsetenv("ALTGRAD_INGEST");
    cr_assert_eq(strncmp(ag_client_run(c), "run-", 4), 0);
    cr_assert_eq(ag_client_log_amax(c, 3, "t", 0, 1, 1, 0), AG_OK);
    wait_handed_off(c);
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0);
    cr_assert_eq(m.type, AG_MSG_RUN_START);
    cr_assert_str_eq(m.hdr.run, ag_client_run(c));
    received_free(&m, keep);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

typedef struct tagged_producer {
    ag_client *c;
    char tensor[16];
    int failures;
    pthread_t th;
} tagged_producer;

static void *produce_tagged(void *arg) {
    tagged_producer *p = arg;
    for (uint64_t step = 1; step <= 1000; step++)
        if (ag_client_log_amax(p->c, step, p->tensor, AG_ROLE_WEIGHT, 1, 1, 0) != AG_OK)
            p->failures++;
    return NULL;
}

Test(client, one_handle_is_safe_from_several_logging_threads) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.policy = AG_QUEUE_BLOCK, .batch_bytes = 256};
    ag_client *c = open_client(&t, &o);
    tagged_producer ps[4];
    for (int i = 0; i < 4; i++) {
        ps[i].c = c;
        ps[i].failures = 0;
        snprintf(ps[i].tensor, sizeof ps[i].tensor, "thread%d", i);
        cr_assert_eq(pthread_create(&ps[i].th, NULL, produce_tagged, &ps[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(ps[i].th, NULL);
        cr_assert_eq(ps[i].failures, 0);
    }
    cr_assert_eq(ag_client_end_run(c), AG_OK);
    /* receive while the client is open: nng pushes back when nobody reads */
    uint64_t last[4] = {0, 0, 0, 0}, seq = 0;
    int ended = 0, total = 0;
    while (!ended) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        cr_assert_eq(m.hdr.seq, seq++);
        ended = m.type == AG_MSG_RUN_END;
        for (size_t i = 0; m.type == AG_MSG_STATS && i < m.u.stats.n; i++) {
            const ag_stat_record *r = &m.u.stats.records[i];
            int who = r->tensor[6] - '0';
            cr_assert_eq(r->step, last[who] + 1, "each thread's records stay in its order");
            last[who] = r->step;
            total++;
        }
        received_free(&m, keep);
    }
    cr_assert_eq(total, 4000);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(client, close_is_bounded_even_when_a_blocking_queue_is_full) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client_opts o = {.policy = AG_QUEUE_BLOCK,
                        .queue_messages = 1,
                        .batch_bytes = 1 << 20,
                        .close_timeout_ms = 50};
    ag_client *c = open_client(&t, &o);
    /* run_start fills the one-message queue; the record stays in the open batch */
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20), AG_ETIMEDOUT, "flush is bounded too");
    ag_client_close(c); /* must return: nobody will ever make room */
    tmp_endpoints_remove(&t);
}

/* Wait (bounded) for a child; kill it and fail when it hangs. */
static int wait_child(pid_t pid) {
    for (int i = 0; i < RECV_BOUND_MS; i++) {
        int status = 0;
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) return status;
        sleep_ms(1);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_assert_fail("the forked child hung");
    return -1;
}

Test(client, a_forked_child_is_refused_and_cannot_hang_or_break_the_parents_client) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.close_timeout_ms = 50};
    ag_client *c = open_client(&t, &o);
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        /* a DataLoader worker, say: nothing here may touch the parent's
         * threads, sockets or lock; every call is refused and close returns */
        float w[2] = {1, 2};
        ag_client_stats st;
        ag_run_list *runs = NULL;
        int bad = 0;
        bad |= ag_client_log_amax(c, 2, "t", AG_ROLE_WEIGHT, 1, 1, 0) != AG_ECLOSED;
        bad |= ag_client_log_stats(c, 2, "t", AG_ROLE_WEIGHT, w, 2) != AG_ECLOSED;
        bad |= ag_client_log_update(c, 2, "t", w, w, 2) != AG_ECLOSED;
        bad |= ag_client_flush(c, 10) != AG_ECLOSED;
        bad |= ag_client_get_stats(c, &st) != AG_ECLOSED;
        bad |= ag_client_runs(c, &runs) != AG_ECLOSED;
        bad |= ag_client_end_run(c) != AG_ECLOSED;
        ag_client_close(c);
        _exit(bad ? 3 : 0);
    }
    int status = wait_child(pid);
    cr_assert(WIFEXITED(status), "the child crashed (signal %d)",
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    cr_assert_eq(WEXITSTATUS(status), 0, "a call in the child was not refused");

    /* the parent's client goes on as if nothing happened */
    cr_assert_eq(ag_client_log_amax(c, 2, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    cr_assert_eq(ag_client_end_run(c), AG_OK);
    uint64_t seq = 0, steps = 0;
    int ended = 0;
    while (!ended) {
        ag_msg m;
        nng_msg *keep = NULL;
        cr_assert_eq(receive(rx, &m, &keep), 0);
        cr_assert_eq(m.hdr.seq, seq++);
        for (size_t i = 0; m.type == AG_MSG_STATS && i < m.u.stats.n; i++)
            cr_assert_eq(m.u.stats.records[i].step, ++steps);
        ended = m.type == AG_MSG_RUN_END;
        received_free(&m, keep);
    }
    cr_assert_eq(steps, 2);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

typedef struct snapshotter {
    ag_client *c;
    const float *w;
    size_t n;
    int rc;
} snapshotter;

static void *log_big_snapshot(void *arg) {
    snapshotter *s = arg;
    s->rc = ag_client_log_update(s->c, 7, "big", s->w, s->w, s->n);
    return NULL;
}

Test(client, close_waits_for_a_thread_still_encoding_a_snapshot) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.close_timeout_ms = 1};
    ag_client *c = open_client(&t, &o);
    /* big enough that encoding it (unlocked) outlasts a close */
    size_t n = (size_t)16 << 20;
    float *w = calloc(n, sizeof *w);
    cr_assert_not_null(w);
    snapshotter s = {c, w, n, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, log_big_snapshot, &s), 0);
    /* run_start is queued under the lock just before the snapshot is encoded */
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0);
    cr_assert_eq(m.type, AG_MSG_RUN_START);
    received_free(&m, keep);
    ag_client_close(c); /* must not free the handle under the encoding thread */
    pthread_join(th, NULL);
    cr_assert(s.rc == AG_ECLOSED || s.rc == AG_OK, "%s", ag_strerror(s.rc));
    free(w);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

typedef struct blocked_producer {
    ag_client *c;
    int rc;
    volatile int done;
} blocked_producer;

/* Logs until a call fails (then never touches the handle again). */
static void *produce_until_refused(void *arg) {
    blocked_producer *p = arg;
    for (uint64_t step = 1; p->rc == AG_OK; step++)
        p->rc = ag_client_log_amax(p->c, step, "blocked", AG_ROLE_WEIGHT, 1, 1, 0);
    p->done = 1;
    return NULL;
}

Test(client, close_wakes_a_producer_blocked_on_a_full_queue) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client_opts o = {
        .policy = AG_QUEUE_BLOCK, .queue_messages = 1, .batch_bytes = 1, .close_timeout_ms = 1};
    ag_client *c = open_client(&t, &o);
    blocked_producer p = {c, 0, 0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, produce_until_refused, &p), 0);
    /* wait until the producer is stuck: records logged stop growing */
    ag_client_stats st;
    uint64_t last = 0;
    int still = 0;
    for (int i = 0; i < RECV_BOUND_MS && still < 100; i++) {
        ag_client_get_stats(c, &st);
        still = st.records >= 1 && st.records == last ? still + 1 : 0;
        last = st.records;
        sleep_ms(1);
    }
    cr_assert_geq(still, 100, "the producer never blocked");
    cr_assert_not(p.done, "with no daemon the producer cannot have finished");
    ag_client_close(c); /* the blocked producer leaves (AG_ECLOSED) before the free */
    pthread_join(th, NULL);
    cr_assert_eq(p.rc, AG_ECLOSED);
    tmp_endpoints_remove(&t);
}
