/*
 * test_altgradd.c - integration tests of the real daemon: numbers it serves
 * equal what the core library computes, restarts keep data and scaling,
 * kill -9 keeps every committed row, bad messages are survived, two trainers
 * at once, SIGTERM drains, sequence gaps become drops, drops a client counted
 * while the daemon was down are recorded after its restart, a --define-format
 * format is served and restored from the database, flips are pattern flips at
 * the previous snapshot's scale, a client learns which of its messages were
 * stored (across a restart too) and one whose daemon died before confirming
 * reports exactly what it never confirmed.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "schema/store.h"
#include "tests/daemon/harness.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(altgradd, .init = setup, .fini = teardown, .timeout = 240);

/* ------------------------------------------------------------ the model */

#define NFMT 5
static const char *const fmt_names[NFMT] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
#define LR 0.01f

/* Deterministic weights and gradients; step 1 has a larger amplitude so the
 * amax history (and so the scale) of later steps depends on it. */
static void make_tensor(uint64_t step, size_t n, unsigned salt, float *w, float *g) {
    float amp = step == 1 ? 6.0f : 1.0f + 0.1f * (float)step;
    for (size_t i = 0; i < n; i++) {
        w[i] = amp * sinf((float)i * 0.37f + (float)step * 0.11f + (float)salt);
        g[i] = 1e-3f * cosf((float)i * 1.3f + (float)step) * (float)(1 + i % 7);
    }
}

typedef struct model {
    ag_amax_history *hist;
    uint8_t *prev[NFMT];
    float prev_scale[NFMT];
} model;

static void model_init(model *m) {
    memset(m, 0, sizeof *m);
    cr_assert_eq(ag_amax_history_new(&m->hist, 16, AG_AMAX_MAX), AG_OK);
}

static void model_free(model *m) {
    ag_amax_history_free(m->hist);
    for (int f = 0; f < NFMT; f++) free(m->prev[f]);
}

/* What the daemon must report for this snapshot, per format. */
static void model_step(model *m, const float *w, const float *g, size_t n,
                       ag_history_point out[NFMT]) {
    float amax;
    uint64_t nonfinite;
    cr_assert_eq(ag_amax(w, n, &amax, &nonfinite), AG_OK);
    ag_amax_history_push(m->hist, amax);
    double ha = ag_amax_history_get(m->hist);
    for (int f = 0; f < NFMT; f++) {
        const ag_format *fmt = ag_format_get(fmt_names[f]);
        float scale = (float)ag_compute_scale(ha, fmt, AG_SCALE_MIN);
        ag_stall_counts c = {0};
        cr_assert_eq(ag_stall_sgd(fmt, scale, LR, w, g, n, &c), AG_OK);
        uint8_t *cur = malloc(n);
        cr_assert_eq(ag_encode_array(fmt, scale, w, cur, n), AG_OK);
        uint64_t flips = 0;
        if (m->prev[f])
            cr_assert_eq(ag_count_pattern_flips(fmt, m->prev_scale[f], m->prev[f], w, n, &flips),
                         AG_OK);
        free(m->prev[f]);
        m->prev[f] = cur;
        m->prev_scale[f] = scale;
        out[f] = (ag_history_point){.stalled = c.stalled,
                                    .total = c.total,
                                    .flips = flips,
                                    .overflow = c.overflow,
                                    .underflow = c.underflow,
                                    .nonfinite = c.nonfinite,
                                    .amax = amax,
                                    .scale = scale};
    }
}

static void expect_point(const ag_history_point *got, const ag_history_point *want, uint64_t step,
                         const char *what) {
    cr_expect_eq(got->step, step, "%s step", what);
    cr_expect_eq(got->stalled, want->stalled, "%s step %llu stalled %llu != %llu", what,
                 (unsigned long long)step, (unsigned long long)got->stalled,
                 (unsigned long long)want->stalled);
    cr_expect_eq(got->total, want->total, "%s step %llu total", what, (unsigned long long)step);
    cr_expect_eq(got->flips, want->flips, "%s step %llu flips %llu != %llu", what,
                 (unsigned long long)step, (unsigned long long)got->flips,
                 (unsigned long long)want->flips);
    cr_expect_eq(got->overflow, want->overflow, "%s overflow", what);
    cr_expect_eq(got->underflow, want->underflow, "%s underflow", what);
    cr_expect_eq(got->nonfinite, want->nonfinite, "%s nonfinite", what);
    cr_expect_eq(got->amax, want->amax, "%s amax %g != %g", what, got->amax, want->amax);
    cr_expect_eq(got->scale, want->scale, "%s step %llu scale %.9g != %.9g", what,
                 (unsigned long long)step, got->scale, want->scale);
    double rate = want->total ? (double)want->stalled / (double)want->total : 0.0;
    cr_expect_float_eq(got->stall_rate, rate, 1e-12, "%s stall_rate", what);
}

/* Log steps [from, to] of tensor name (n elements) and record the model's
 * expectations in want[step][format]. */
static void log_steps(ag_client *c, model *m, const char *name, size_t n, unsigned salt,
                      uint64_t from, uint64_t to, ag_history_point want[][NFMT]) {
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    for (uint64_t s = from; s <= to; s++) {
        make_tensor(s, n, salt, w, g);
        model_step(m, w, g, n, want[s]);
        cr_assert_eq(ag_client_log_sgd(c, s, name, w, g, n, LR), AG_OK);
    }
    free(w);
    free(g);
}

static void check_history(ag_client *c, const char *run, const char *name, uint64_t steps,
                          ag_history_point want[][NFMT]) {
    for (int f = 0; f < NFMT; f++) {
        ag_history *h = harness_wait_history(c, run, name, fmt_names[f], steps);
        cr_assert_eq(h->n, steps, "%s %s: %zu points", name, fmt_names[f], h->n);
        for (uint64_t s = 1; s <= steps; s++) {
            char what[64];
            snprintf(what, sizeof what, "%s/%s", name, fmt_names[f]);
            expect_point(&h->points[s - 1], &want[s][f], s, what);
        }
        ag_free(h);
    }
}

/* ---------------------------------------------------------------- tests */

Test(altgradd, served_numbers_equal_what_the_core_library_computes) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "numbers", AG_QUEUE_BLOCK);
    static ag_history_point want_a[8][NFMT], want_b[8][NFMT];
    model ma, mb;
    model_init(&ma);
    model_init(&mb);
    /* "big" is over the thread-pool threshold, "small" is evaluated inline. */
    for (uint64_t s = 1; s <= 4; s++) {
        log_steps(c, &ma, "small", 1000, 1, s, s, want_a);
        log_steps(c, &mb, "big", 70000, 2, s, s, want_b);
        cr_assert_eq(ag_client_log_amax(c, s, "act", AG_ROLE_ACTIVATION, 2.5 * (double)s, 64, 1),
                     AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    check_history(c, "numbers", "small", 4, want_a);
    check_history(c, "numbers", "big", 4, want_b);

    /* Statistics' scales are filed by the daemon's periodic flush: poll. */
    ag_scale_list *sc = NULL;
    for (int i = 0; i < 3000; i++) {
        cr_assert_eq(ag_client_scales(c, "numbers", "E3M4", &sc), AG_OK);
        if (sc->n == 3 && sc->items[0].step == 4) break;
        ag_free(sc);
        sc = NULL;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_not_null(sc, "scales of step 4 never showed");
    /* act: history max of 2.5 * s over s <= 4 = 10; E3M4 max 124. */
    cr_expect_eq(sc->items[0].scale, (double)(float)(10.0 / 124.0));
    cr_expect_float_eq(sc->items[0].amax, 10.0, 1e-12);
    cr_expect_eq(sc->items[2].scale, want_a[4][2].scale);
    ag_free(sc);

    ag_tensor_list *ts = NULL;
    cr_assert_eq(ag_client_tensors(c, "numbers", &ts), AG_OK);
    cr_assert_eq(ts->n, 3);
    cr_expect_str_eq(ts->items[0].name, "act");
    cr_expect_eq(ts->items[0].role, AG_ROLE_ACTIVATION);
    cr_expect_eq(ts->items[0].last_step, 4);
    cr_expect_eq(ts->items[1].name[0], 'b');
    cr_expect_eq(ts->items[1].snapshots, 4);
    cr_expect_eq(ts->items[1].numel, 70000);
    cr_expect_eq(ts->items[2].first_step, 1);
    cr_expect_eq(ts->items[2].last_step, 4);
    ag_free(ts);

    ag_top_list *top = NULL;
    cr_assert_eq(ag_client_top(c, "numbers", "E5M2", 2, 0, &top), AG_OK);
    cr_expect_eq(top->from_step, 3);
    cr_expect_eq(top->to_step, 4);
    cr_assert_eq(top->n, 2);
    ag_free(top);

    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_eq(st->runs, 1);
    cr_expect_eq(st->tensors, 3);
    cr_expect_eq(st->rejected, 0);
    cr_expect_geq(st->messages, 9);
    cr_expect_str_eq(st->formats, "E0M7,E1M6,E3M4,E5M2,E7M0");
    cr_expect_gt(st->uptime_s, 0.0);
    ag_free(st);

    ag_history *h = NULL;
    ag_history_query q = {.run = "nope", .tensor = "small"};
    cr_expect_eq(ag_client_history(c, &q, &h), AG_ENOTFOUND);
    ag_client_close(c);
    model_free(&ma);
    model_free(&mb);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

Test(altgradd, a_restart_keeps_everything_and_scales_continue) {
    harness_start(&H, NULL);
    static ag_history_point want[8][NFMT];
    model m;
    model_init(&m);
    ag_client *c = harness_client(&H, "restart", AG_QUEUE_BLOCK);
    log_steps(c, &m, "w", 500, 3, 1, 3, want);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_free(harness_wait_history(c, "restart", "w", "E5M2", 3));
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    /* Steps 4..6 after the restart, resuming the run: step 1's large amax is
     * still in the history, and flips at step 4 compare against step 3's
     * snapshot. */
    harness_start(&H, NULL);
    c = harness_client_as(&H, "restart", AG_QUEUE_BLOCK, 1, NULL);
    log_steps(c, &m, "w", 500, 3, 4, 6, want);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    check_history(c, "restart", "w", 6, want);
    cr_expect_gt(want[4][3].flips, 0, "the model should see flips at step 4");
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].last_step, 6);
    ag_free(runs);
    ag_client_close(c);
    model_free(&m);
}

/* ------------------------------------------------------------- flips */

/* The case, through the daemon: the weights never change while the
 * scale (named in each snapshot) drifts by 0.07% a step. Their quantized
 * values all move with the scale, but no 8-bit pattern at the previous
 * scale does: 0 flips at every step, in every format. */
Test(altgradd, weights_that_do_not_change_never_flip_while_the_scale_drifts) {
    enum { N = 256, STEPS = 6 };
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "drift", AG_QUEUE_BLOCK);
    float w[N], g[N] = {0};
    for (size_t i = 0; i < N; i++) w[i] = 0.5f * sinf((float)i * 0.7f + 0.3f);
    double scale = 0.5 / 57344.0; /* E5M2's scale for an amax of 0.5 */
    uint64_t value_flips = 0;
    for (uint64_t s = 1; s <= STEPS; s++, scale *= 1.0007) {
        ag_snapshot snap = {.step = s,
                            .tensor = "w",
                            .dtype = AG_DTYPE_F32,
                            .w = w,
                            .g = g,
                            .n = N,
                            .lr = LR,
                            .scale = scale};
        cr_assert_eq(ag_client_log_snapshot(c, &snap), AG_OK);
        if (s > 1) { /* what the old definition (values) would have counted */
            const ag_format *e5 = ag_format_get("E5M2");
            uint8_t a[N], b[N];
            cr_assert_eq(ag_encode_array(e5, (float)(scale / 1.0007), w, a, N), AG_OK);
            cr_assert_eq(ag_encode_array(e5, (float)scale, w, b, N), AG_OK);
            cr_assert_eq(
                ag_count_flips(e5, a, (float)(scale / 1.0007), b, (float)scale, N, &value_flips),
                AG_OK);
        }
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    cr_expect_gt(value_flips, (STEPS - 1) * N / 2, "the drift must move the values");
    for (int f = 0; f < NFMT; f++) {
        ag_history *h = harness_wait_history(c, "drift", "w", fmt_names[f], STEPS);
        for (size_t k = 1; k < h->n; k++) {
            cr_expect_neq(h->points[k].scale, h->points[k - 1].scale, "%s step %llu", fmt_names[f],
                          (unsigned long long)h->points[k].step);
            cr_expect_eq(h->points[k].flips, 0, "%s step %llu: %llu flips", fmt_names[f],
                         (unsigned long long)h->points[k].step,
                         (unsigned long long)h->points[k].flips);
        }
        ag_free(h);
    }
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

/* Flips observe what the stall count predicted: a trainer that applies
 * exactly the SGD update it logged (w' = w + (-lr * g) in float32) sees, at
 * step t + 1, flips = total - stalled of step t, in every format, although
 * the growing amax moves the scale at every step. Gradients are 0 or well
 * above the 1e-10 threshold, and every value is finite, so each element
 * either moves and is counted in total or stays put. */
Test(altgradd, flips_at_each_step_are_the_updates_the_previous_step_did_not_stall) {
    enum { N = 3000, STEPS = 8 };
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "observe", AG_QUEUE_BLOCK);
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    for (size_t i = 0; i < N; i++) w[i] = sinf((float)i * 0.37f);
    w[0] = 1.5f; /* the amax, pushed outwards by its gradient every step */
    for (uint64_t s = 1; s <= STEPS; s++) {
        for (size_t i = 0; i < N; i++) {
            float mag = (float)(1 + (i * 7 + s) % 13);
            g[i] = i % 5 == 0 ? 0.0f : (i % 2 ? 1e-3f : -0.2f) * mag * cosf((float)(i + s));
        }
        g[0] = -20.0f;
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, N, LR), AG_OK);
        for (size_t i = 0; i < N; i++) {
            volatile float u = -LR * g[i]; /* as the kernel forms it: no fused multiply-add */
            w[i] = w[i] + u;
        }
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    for (int f = 0; f < NFMT; f++) {
        ag_history *h = harness_wait_history(c, "observe", "w", fmt_names[f], STEPS);
        uint64_t flips = 0;
        cr_assert_eq(h->n, STEPS);
        cr_expect_eq(h->points[0].flips, 0, "%s: the first snapshot has nothing to flip from",
                     fmt_names[f]);
        for (size_t k = 1; k < h->n; k++) {
            const ag_history_point *p = &h->points[k - 1], *q = &h->points[k];
            /* (E7M0's scale stays at scale_min: amax / 2^64 is below it.) */
            if (q->scale != (double)(float)AG_SCALE_MIN)
                cr_expect_neq(q->scale, p->scale, "%s step %llu: the scale should move",
                              fmt_names[f], (unsigned long long)q->step);
            cr_expect_eq(q->flips, p->total - p->stalled,
                         "%s step %llu: %llu flips, step %llu left %llu of %llu unstalled",
                         fmt_names[f], (unsigned long long)q->step, (unsigned long long)q->flips,
                         (unsigned long long)p->step, (unsigned long long)(p->total - p->stalled),
                         (unsigned long long)p->total);
            flips += q->flips;
        }
        cr_expect_gt(flips, 0, "%s: some updates must get through", fmt_names[f]);
        ag_free(h);
    }
    free(w);
    free(g);
    ag_client_close(c);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

typedef struct pump_args {
    ag_client *c;
    volatile int stop;
    uint64_t steps;
} pump_args;

static void *heavy_ingest(void *arg) {
    pump_args *a = arg;
    float w[256], g[256];
    for (uint64_t s = 1; !a->stop && s < 1000000; s++) {
        make_tensor(s, 256, 4, w, g);
        if (ag_client_log_sgd(a->c, s, "hot", w, g, 256, LR) != AG_OK) break;
        for (int k = 0; k < 32; k++) {
            char name[32];
            snprintf(name, sizeof name, "act%d", k);
            ag_client_log_amax(a->c, s, name, AG_ROLE_ACTIVATION, (double)k, 10, 0);
        }
        a->steps = s;
    }
    return NULL;
}

Test(altgradd, kill_9_during_heavy_ingest_keeps_every_committed_row) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "heavy", AG_QUEUE_DROP);
    ag_client *q = harness_client(&H, "observer", AG_QUEUE_DROP);
    pump_args a = {.c = c};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, heavy_ingest, &a), 0);
    ag_history *seen = harness_wait_history(q, "heavy", "hot", "E5M2", 200);
    size_t committed = seen->n;
    uint64_t last = seen->points[seen->n - 1].step;
    ag_free(seen);
    int status = harness_stop(&H, SIGKILL);
    cr_assert(WIFSIGNALED(status), "status %d", status);
    a.stop = 1;
    pthread_join(t, NULL);

    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, H.db, 0), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(ag_store_integrity_check(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_history_query hq = {.run = "heavy", .tensor = "hot"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &hq, &h), AG_OK);
    cr_assert_geq(h->n, committed);
    /* Every step up to the last one seen committed is there, in order. */
    for (size_t i = 0; i < committed; i++) cr_assert_eq(h->points[i].step, i + 1);
    cr_assert_geq(h->points[h->n - 1].step, last);
    ag_free(h);
    ag_store_close(st);
    ag_client_close(c);
    ag_client_close(q);

    /* And the daemon starts again on that file. */
    harness_start(&H, NULL);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

static void push_raw(nng_socket s, const void *data, size_t len) {
    cr_assert_eq(nng_send(s, (void *)data, len, 0), 0);
}

Test(altgradd, garbage_and_oversized_messages_are_counted_and_the_daemon_keeps_serving) {
    harness_start(&H, NULL);
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    /* Random bytes, a truncated map, a wrong version, an unknown type, a
     * query on the stream socket, a 300-byte run name, and 8 MiB of junk. */
    unsigned char junk[64];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 37 + 11);
    push_raw(s, junk, sizeof junk);
    const unsigned char truncated[] = {0x85, 0xa1, 0x76, 0x01, 0xa1};
    push_raw(s, truncated, sizeof truncated);
    const unsigned char version9[] = {0x82, 0xa1, 0x76, 0x09, 0xa1, 0x74, 0x02};
    push_raw(s, version9, sizeof version9);
    const unsigned char type99[] = {0x82, 0xa1, 0x76, 0x01, 0xa1, 0x74, 0x63};
    push_raw(s, type99, sizeof type99);
    ag_buf b;
    ag_buf_init(&b);
    ag_msg qm = {.type = AG_MSG_Q_RUNS};
    cr_assert_eq(ag_proto_encode(&b, &qm), AG_OK);
    push_raw(s, b.data, b.len);
    ag_buf_free(&b);
    unsigned char longname[400] = {0x83, 0xa1, 0x76, 0x01, 0xa1, 0x74, 0x01,
                                   0xa3, 'r',  'u',  'n',  0xda, 0x01, 0x2c};
    memset(longname + 14, 'x', 300);
    push_raw(s, longname, 14 + 300);
    size_t big = 8u << 20;
    unsigned char *huge = malloc(big);
    memset(huge, 0xc1, big); /* 0xc1 is never valid msgpack */
    push_raw(s, huge, big);
    free(huge);

    /* A good trainer after all that is served normally. */
    ag_client *c = harness_client(&H, "after-garbage", AG_QUEUE_BLOCK);
    float w[16], g[16];
    make_tensor(1, 16, 5, w, g);
    cr_assert_eq(ag_client_log_sgd(c, 1, "w", w, g, 16, LR), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_free(harness_wait_history(c, "after-garbage", "w", NULL, 1));
    ag_status *st = NULL;
    for (int i = 0; i < 3000; i++) { /* the bad ones may still be in flight */
        cr_assert_eq(ag_client_status(c, &st), AG_OK);
        if (st->rejected >= 7) break;
        ag_free(st);
        st = NULL;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_not_null(st, "the daemon did not count 7 rejected messages");
    cr_expect_eq(st->rejected, 7);
    ag_free(st);
    ag_client_close(c);
    nng_close(s);
    cr_assert_eq(WEXITSTATUS(harness_stop(&H, SIGTERM)), 0);
}

Test(altgradd, two_trainers_at_once_fill_separate_runs) {
    harness_start(&H, NULL);
    ag_client *c1 = harness_client(&H, "trainer-1", AG_QUEUE_BLOCK);
    ag_client *c2 = harness_client(&H, "trainer-2", AG_QUEUE_BLOCK);
    static ag_history_point w1[16][NFMT], w2[16][NFMT];
    model m1, m2;
    model_init(&m1);
    model_init(&m2);
    for (uint64_t s = 1; s <= 10; s++) {
        log_steps(c1, &m1, "layer", 300, 6, s, s, w1);
        log_steps(c2, &m2, "layer", 300, 7, s, s, w2);
    }
    cr_assert_eq(ag_client_flush(c1, 20000), AG_OK);
    cr_assert_eq(ag_client_flush(c2, 20000), AG_OK);
    check_history(c1, "trainer-1", "layer", 10, w1);
    check_history(c1, "trainer-2", "layer", 10, w2);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c1, &runs), AG_OK);
    cr_assert_eq(runs->n, 2);
    for (size_t i = 0; i < 2; i++) cr_expect_eq(runs->items[i].dropped, 0);
    cr_expect_neq(runs->items[0].client_id, runs->items[1].client_id);
    ag_free(runs);
    ag_client_close(c1);
    ag_client_close(c2);
    model_free(&m1);
    model_free(&m2);
}

Test(altgradd, sigterm_drains_everything_a_blocking_client_sent) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "drain", AG_QUEUE_BLOCK);
    const uint64_t steps = 3000;
    for (uint64_t s = 1; s <= steps; s++)
        for (int k = 0; k < 8; k++) {
            char name[16];
            snprintf(name, sizeof name, "t%d", k);
            cr_assert_eq(ag_client_log_amax(c, s, name, AG_ROLE_GRADIENT, 1.0, 4, 0), AG_OK);
        }
    cr_assert_eq(ag_client_flush(c, -1), AG_OK);
    ag_client_stats cs;
    cr_assert_eq(ag_client_get_stats(c, &cs), AG_OK);
    cr_assert_eq(cs.dropped, 0);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    ag_client_close(c);

    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, H.db, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(st));
    ag_tensor_list *ts = NULL;
    cr_assert_eq(ag_store_tensors(st, "drain", &ts), AG_OK);
    cr_assert_eq(ts->n, 8);
    for (size_t i = 0; i < 8; i++) {
        cr_expect_eq(ts->items[i].first_step, 1);
        cr_expect_eq(ts->items[i].last_step, steps);
    }
    ag_free(ts);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    /* run_start + every batch message the client handed over. */
    cr_expect_eq(runs->items[0].messages, cs.sent, "%llu messages filed, %llu sent",
                 (unsigned long long)runs->items[0].messages, (unsigned long long)cs.sent);
    cr_expect_eq(runs->items[0].dropped, 0);
    ag_free(runs);
    ag_store_close(st);
}

/* Encode one stats message of run from client cid with an explicit seq and
 * cumulative drop counter, and push it raw. */
static void push_stats_of(nng_socket s, const char *run, uint64_t cid, uint64_t seq,
                          uint64_t dropped, uint64_t step) {
    ag_stat_record rec = {
        .step = step, .tensor = "x", .role = AG_ROLE_GRADIENT, .amax = 1.0, .numel = 1};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = run, .client_id = cid, .seq = seq, .dropped = dropped};
    m.u.stats = (ag_msg_stats){.n = 1, .records = &rec};
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    push_raw(s, b.data, b.len);
    ag_buf_free(&b);
}

/* Ask the daemon's query socket what it stored of client cid, as a client's
 * flush does (q_delivery), over a socket of our own. */
static ag_msg_delivery ask_delivery(uint64_t cid) {
    nng_socket s;
    cr_assert_eq(nng_req0_open(&s), 0);
    cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 30000), 0);
    cr_assert_eq(nng_dial(s, H.query, NULL, 0), 0);
    ag_msg q = {.type = AG_MSG_Q_DELIVERY};
    q.u.delivery.client_id = cid;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &q), AG_OK);
    cr_assert_eq(nng_send(s, b.data, b.len, 0), 0);
    ag_buf_free(&b);
    nng_msg *r;
    cr_assert_eq(nng_recvmsg(s, &r, 0), 0, "no answer to a delivery query");
    ag_msg d;
    cr_assert_eq(ag_proto_decode(nng_msg_body(r), nng_msg_len(r), &d), AG_OK);
    cr_assert_eq(d.type, AG_MSG_R_DELIVERY, "answered with %s", ag_proto_type_name(d.type));
    ag_msg_delivery out = d.u.delivery;
    ag_msg_clear(&d);
    nng_msg_free(r);
    nng_close(s);
    cr_assert_eq(out.client_id, cid);
    return out;
}

static void push_stats(nng_socket s, uint64_t seq, uint64_t step) {
    push_stats_of(s, "gappy", 99, seq, 0, step);
}

Test(altgradd, sequence_gaps_are_recorded_as_drops_and_replays_rejected) {
    harness_start(&H, NULL);
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    ag_msg start = {.type = AG_MSG_RUN_START};
    start.hdr = (ag_stream_hdr){.run = "gappy", .client_id = 99, .seq = 0};
    start.u.run_start = (ag_msg_run_start){.host = "h", .pid = 1, .time_ms = 1};
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &start), AG_OK);
    push_raw(s, b.data, b.len);
    ag_buf_free(&b);
    push_stats(s, 1, 1);
    push_stats(s, 5, 2); /* 2, 3, 4 lost */
    push_stats(s, 3, 3); /* out of order: rejected */
    push_stats(s, 6, 4);

    ag_client *c = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    ag_run_list *runs = NULL;
    for (int i = 0; i < 3000; i++) {
        cr_assert_eq(ag_client_runs(c, &runs), AG_OK);
        if (runs->n == 1 && runs->items[0].last_step == 4) break;
        ag_free(runs);
        runs = NULL;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_not_null(runs, "the run never reached step 4");
    cr_expect_eq(runs->items[0].dropped, 3);
    cr_expect_eq(runs->items[0].messages, 4);
    cr_expect_eq(runs->items[0].client_id, 99);
    ag_free(runs);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_eq(st->rejected, 1);
    cr_expect_eq(st->dropped, 3);
    ag_free(st);
    /* what the client is told: seq 0, 1, 5 and 6 stored (not the replay),
     * so seq 2..4 are known lost */
    ag_msg_delivery d = ask_delivery(99);
    cr_expect_eq(d.messages, 4);
    cr_expect_eq(d.seq, 6);
    ag_client_close(c);
    nng_close(s);
}

/* Poll the daemon (bounded) until run reached step; returns its messages
 * and dropped counts. */
static void wait_run_step(const char *run, uint64_t step, uint64_t *messages, uint64_t *dropped) {
    ag_client *c = harness_client(&H, "observer", AG_QUEUE_BLOCK);
    for (int i = 0; i < 3000; i++) {
        ag_run_list *runs = NULL;
        cr_assert_eq(ag_client_runs(c, &runs), AG_OK);
        for (size_t k = 0; k < runs->n; k++)
            if (!strcmp(runs->items[k].name, run) && runs->items[k].last_step >= step) {
                *messages = runs->items[k].messages;
                *dropped = runs->items[k].dropped;
                ag_free(runs);
                ag_client_close(c);
                return;
            }
        ag_free(runs);
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    ag_client_close(c);
    cr_assert_fail("run %s never reached step %llu", run, (unsigned long long)step);
}

Test(altgradd, drops_a_client_counted_while_the_daemon_was_down_are_recorded) {
    harness_start(&H, NULL);
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    ag_msg start = {.type = AG_MSG_RUN_START};
    start.hdr = (ag_stream_hdr){.run = "lossy", .client_id = 77, .seq = 0};
    start.u.run_start = (ag_msg_run_start){.host = "h", .pid = 1, .time_ms = 1};
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &start), AG_OK);
    push_raw(s, b.data, b.len);
    ag_buf_free(&b);
    push_stats_of(s, "lossy", 77, 1, 2, 1); /* the client's queue dropped 2 */
    push_stats_of(s, "lossy", 77, 2, 2, 2);
    uint64_t messages = 0, dropped = 0;
    wait_run_step("lossy", 2, &messages, &dropped);
    cr_expect_eq(messages, 3);
    cr_expect_eq(dropped, 2);
    nng_close(s);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    /* The daemon is down: the same client drops K = 5 more while it waits,
     * and seq 3 is lost in transport. Its next messages wait in the socket's
     * send buffer and reach the restarted daemon. */
    const uint64_t K = 5;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_socket_set_int(s, NNG_OPT_SENDBUF, 8), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, NNG_FLAG_NONBLOCK), 0);
    push_stats_of(s, "lossy", 77, 4, 2 + K, 3);
    push_stats_of(s, "lossy", 77, 5, 2 + K, 4);
    harness_start(&H, NULL);
    wait_run_step("lossy", 4, &messages, &dropped);
    cr_expect_eq(messages, 5);
    cr_expect_eq(dropped, 2 + K + 1,
                 "dropped %llu: want 2 before, %llu counted by the client "
                 "while the daemon was down and 1 sequence gap",
                 (unsigned long long)dropped, (unsigned long long)K);
    nng_close(s);
    status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    /* The file agrees. */
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, H.db, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(st));
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].dropped, 2 + K + 1);
    ag_free(runs);
    ag_store_close(st);
}

Test(altgradd, bad_options_and_unusable_paths_exit_nonzero_with_one_line) {
    const char *const bad_db[] = {"--db", "/nonexistent-dir/x/y.db", NULL};
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char path[512];
        const char *b = getenv("AG_BUILD_DIR");
        snprintf(path, sizeof path, "%s/daemon/altgradd", b ? b : ".");
        int fd = open(H.log, O_WRONLY | O_CREAT, 0600);
        dup2(fd, 2);
        execl(path, path, "--query", H.query, "--ingest", H.ingest, bad_db[0], bad_db[1],
              (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 127,
              "status %d", status);
    FILE *f = fopen(H.log, "r");
    cr_assert_not_null(f);
    char line[512];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_not_null(strstr(line, "/nonexistent-dir/x/y.db"), "%s", line);
    fclose(f);
}

/* ------------------------------------------------- a defined format */

/* The model for one format (its state in m->prev[0]): push the step's amax,
 * then what the daemon must report for fmt. */
static void model_step_one(model *m, const ag_format *fmt, const float *w, const float *g, size_t n,
                           ag_history_point *out) {
    float amax;
    uint64_t nonfinite;
    cr_assert_eq(ag_amax(w, n, &amax, &nonfinite), AG_OK);
    ag_amax_history_push(m->hist, amax);
    float scale = (float)ag_compute_scale(ag_amax_history_get(m->hist), fmt, AG_SCALE_MIN);
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(fmt, scale, LR, w, g, n, &c), AG_OK);
    uint8_t *cur = malloc(n);
    cr_assert_eq(ag_encode_array(fmt, scale, w, cur, n), AG_OK);
    uint64_t flips = 0;
    if (m->prev[0])
        cr_assert_eq(ag_count_pattern_flips(fmt, m->prev_scale[0], m->prev[0], w, n, &flips),
                     AG_OK);
    free(m->prev[0]);
    m->prev[0] = cur;
    m->prev_scale[0] = scale;
    *out = (ag_history_point){.stalled = c.stalled,
                              .total = c.total,
                              .flips = flips,
                              .overflow = c.overflow,
                              .underflow = c.underflow,
                              .nonfinite = c.nonfinite,
                              .amax = amax,
                              .scale = scale};
}

/* Start altgradd on H's paths with extra arguments, expecting it to fail at
 * start; returns its exit status with its first stderr line in line. */
static int daemon_fails(const char *const *extra, char *line, size_t len) {
    char path[512], errlog[160];
    const char *b = getenv("AG_BUILD_DIR");
    snprintf(path, sizeof path, "%s/daemon/altgradd", b ? b : ".");
    snprintf(errlog, sizeof errlog, "%s/fail.log", H.dir);
    const char *argv[16] = {path,   "--ingest", H.ingest, "--query", H.query,
                            "--db", H.db,       "--http", "off"};
    size_t argc = 9;
    for (size_t i = 0; extra[i] && argc < 15; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    FILE *f = fopen(errlog, "r");
    cr_assert_not_null(f);
    line[0] = '\0';
    char *got = fgets(line, (int)len, f);
    (void)got;
    fclose(f);
    return status;
}

Test(altgradd, a_defined_format_is_served_and_survives_a_restart_without_the_option) {
    const char *const define[] = {"--define-format", "E4M3=4,3,7,nan", "--formats", "E5M2,E4M3",
                                  NULL};
    harness_start(&H, define);
    /* The trainer defines the format too, as it must to name it. */
    const ag_format *e4m3 = NULL;
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &e4m3), AG_OK);
    static ag_history_point want[8];
    model m;
    model_init(&m);
    enum { N = 3000 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    ag_client *c = harness_client(&H, "e4m3", AG_QUEUE_BLOCK);
    for (uint64_t s = 1; s <= 3; s++) { /* the daemon's defaults: E5M2 and E4M3 */
        make_tensor(s, N, 5, w, g);
        model_step_one(&m, e4m3, w, g, N, &want[s]);
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, N, LR), AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_history *h = harness_wait_history(c, "e4m3", "w", "E4M3", 3);
    cr_assert_eq(h->n, 3);
    for (uint64_t s = 1; s <= 3; s++) expect_point(&h->points[s - 1], &want[s], s, "E4M3");
    ag_free(h);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_str_eq(st->formats, "E5M2,E4M3");
    ag_free(st);
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    /* A contradicting definition of the stored format: one line, exit 2. */
    char line[512];
    const char *const clash[] = {"--define-format", "E4M3=4,3,8,nan", NULL};
    status = daemon_fails(clash, line, sizeof line);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 2, "status %d", status);
    cr_expect_not_null(strstr(line, "E4M3=4,3,7,nan"), "%s", line);
    cr_expect_not_null(strstr(line, "E4M3=4,3,8,nan"), "%s", line);

    /* Restarted without the option: the database's definition is restored,
     * history is served and new snapshots naming E4M3 are evaluated, with
     * the amax history and flips continuing across the restart (the trainer
     * resumes its run). */
    harness_start(&H, NULL);
    c = harness_client_as(&H, "e4m3", AG_QUEUE_BLOCK, 1, NULL);
    static const char *const named[] = {"E4M3"};
    for (uint64_t s = 4; s <= 5; s++) {
        make_tensor(s, N, 5, w, g);
        model_step_one(&m, e4m3, w, g, N, &want[s]);
        ag_snapshot snap = {.step = s,
                            .tensor = "w",
                            .dtype = AG_DTYPE_F32,
                            .w = w,
                            .g = g,
                            .n = N,
                            .lr = LR,
                            .formats = named,
                            .nformats = 1};
        cr_assert_eq(ag_client_log_snapshot(c, &snap), AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    h = harness_wait_history(c, "e4m3", "w", "E4M3", 5);
    cr_assert_eq(h->n, 5);
    for (uint64_t s = 1; s <= 5; s++) expect_point(&h->points[s - 1], &want[s], s, "E4M3");
    cr_expect_gt(want[4].flips, 0, "the model should see flips at step 4");
    ag_free(h);
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_eq(st->rejected, 0);
    ag_free(st);
    ag_client_close(c);
    status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    /* The file alone answers by name, as altgrad --db does. */
    ag_store *db = NULL;
    cr_assert_eq(ag_store_open(&db, H.db, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(db));
    ag_history_query q = {.run = "e4m3", .tensor = "w", .format = "E4M3"};
    cr_assert_eq(ag_store_history(db, &q, &h), AG_OK, "%s", ag_store_errmsg(db));
    cr_expect_eq(h->n, 5);
    cr_expect_eq(h->points[4].stalled, want[5].stalled);
    ag_free(h);
    ag_store_close(db);
    free(w);
    free(g);
    model_free(&m);
}

/* xorshift64: a deterministic mutation stream. */
static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

Test(altgradd, thousands_of_mutated_messages_never_stop_the_daemon) {
    harness_start(&H, NULL);
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    /* Valid seeds: a run start, a stats batch and a small snapshot. */
    ag_buf seeds[3];
    float w[8] = {1, -2, 3, 0.5f, 0, 7, -0.25f, 2}, g[8] = {1e-3f, 0, 1, -1, 2, 0, 0, 1};
    ag_stat_record recs[2] = {
        {.step = 1, .tensor = "a", .role = 2, .amax = 3, .numel = 9},
        {.step = 2, .tensor = "b", .role = 1, .amax = 1, .numel = 4, .nonfinite = 1}};
    ag_msg m[3] = {{.type = AG_MSG_RUN_START}, {.type = AG_MSG_STATS}, {.type = AG_MSG_SNAPSHOT}};
    for (int i = 0; i < 3; i++)
        m[i].hdr = (ag_stream_hdr){.run = "fuzz", .client_id = 5, .seq = (uint64_t)i};
    m[0].u.run_start = (ag_msg_run_start){.host = "h", .pid = 1, .time_ms = 1};
    m[1].u.stats = (ag_msg_stats){.n = 2, .records = recs};
    m[2].u.snapshot = (ag_msg_snapshot){.step = 3,
                                        .tensor = "w",
                                        .dtype = AG_DTYPE_F32,
                                        .form = AG_FORM_SGD,
                                        .lr = 0.1,
                                        .n = 8,
                                        .numel = 8,
                                        .w = w,
                                        .x = g};
    for (int i = 0; i < 3; i++) {
        ag_buf_init(&seeds[i]);
        cr_assert_eq(ag_proto_encode(&seeds[i], &m[i]), AG_OK, "%s", ag_errctx_text(&m[i].err));
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    unsigned char buf[4096];
    for (int k = 0; k < 3000; k++) {
        const ag_buf *seed = &seeds[k % 3];
        size_t len = seed->len;
        memcpy(buf, seed->data, len);
        int flips = 1 + (int)(next_rand(&rng) % 4);
        for (int f = 0; f < flips; f++)
            buf[next_rand(&rng) % len] ^= (unsigned char)(1u << (next_rand(&rng) % 8));
        if (next_rand(&rng) % 8 == 0) len = next_rand(&rng) % len + 1; /* truncate */
        push_raw(s, buf, len);
    }
    for (int i = 0; i < 3; i++) ag_buf_free(&seeds[i]);
    /* Still serving: a clean trainer's numbers arrive. */
    ag_client *c = harness_client(&H, "after-fuzz", AG_QUEUE_BLOCK);
    cr_assert_eq(ag_client_log_sgd(c, 1, "w", w, g, 8, 0.1f), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_free(harness_wait_history(c, "after-fuzz", "w", NULL, 1));
    ag_client_close(c);
    nng_close(s);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

Test(altgradd, a_client_learns_every_message_was_stored_and_close_reports_none_undelivered) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "confirmed", AG_QUEUE_BLOCK);
    uint64_t cid = ag_client_id(c);
    float w[64], g[64];
    for (uint64_t s = 1; s <= 20; s++) {
        make_tensor(s, 64, 1, w, g);
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, 64, LR), AG_OK);
        cr_assert_eq(ag_client_log_amax(c, s, "a", AG_ROLE_ACTIVATION, 1.0, 8, 0), AG_OK);
    }
    cr_assert_eq(ag_client_end_run(c), AG_OK);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "%s", ag_client_last_error(c));
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_gt(st.sent, 21, "run_start, 20 snapshots, batches, run_end");
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.delivered, st.sent);
    cr_assert_eq(st.undelivered, 0);
    cr_assert_eq(ag_client_close(c), 0);

    /* the answer comes from the database, so a restarted daemon gives it too */
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    harness_start(&H, NULL);
    ag_msg_delivery d = ask_delivery(cid);
    cr_assert_eq(d.messages, st.sent);
    cr_assert_eq(d.seq, st.sent - 1);
    d = ask_delivery(cid ^ 0x8000000000000000ull); /* a client never seen */
    cr_assert_eq(d.messages, 0);
    cr_assert_eq(d.seq, 0);
}

Test(altgradd, a_daemon_killed_before_confirming_leaves_exactly_what_it_never_stored) {
    harness_start(&H, NULL);
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = "unconfirmed",
                        .batch_bytes = 1,
                        .query_timeout_ms = 10000,
                        .close_timeout_ms = 300};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    for (uint64_t s = 1; s <= 10; s++) /* batch_bytes 1: a message each */
        cr_assert_eq(ag_client_log_amax(c, s, "a", AG_ROLE_ACTIVATION, 1.0, 8, 0), AG_OK);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "%s", ag_client_last_error(c));
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.delivered, 11);

    /* The daemon stops reading: four more messages go to the transport and
     * sit in its socket buffer, "sent" ... */
    cr_assert_eq(kill(H.pid, SIGSTOP), 0);
    for (uint64_t s = 11; s <= 14; s++)
        cr_assert_eq(ag_client_log_amax(c, s, "a", AG_ROLE_ACTIVATION, 1.0, 8, 0), AG_OK);
    for (int i = 0; i < 30000; i++) {
        cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
        if (st.sent == 15) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL); /* poll interval, not a timing assumption */
    }
    cr_assert_eq(st.sent, 15, "the messages never left the queue");
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.undelivered, 4);
    /* ... and the daemon dies without reading them */
    int status = harness_stop(&H, SIGKILL);
    cr_assert(WIFSIGNALED(status), "status %d", status);
    cr_assert_eq(ag_client_close(c), 5, "the four it never read, and run_end");
}
