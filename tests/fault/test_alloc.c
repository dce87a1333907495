/*
 * test_alloc.c - out of memory at every allocation, the way SQLite tests
 * itself: for n = 1, 2, ... the nth heap allocation of an operation fails
 * (tests/fault/alloc_fail.c), until the operation runs through without
 * meeting the failure. Each failing run must return an error (never crash),
 * leave no block allocated, and leave its object usable: the same operation
 * run again without the fault gives the full answer.
 *
 * Covered: the protocol encoder and decoder (stream messages and query
 * replies), the store's queries, the writer's queue, the engine handling a
 * run, and the client library's open, logging and close.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/engine.h"
#include "daemon/writer.h"
#include "proto/proto.h"
#include "schema/store.h"
#include "tests/fault/alloc_fail.h"
#include "tests/tmpdir.h"

#define MAX_N 100000 /* a bound against a loop that never ends */

static char dir[64], db[128];

static void rm_dir(void) { ag_tmpdir_remove(dir); }

static void setup(void) {
    ag_alloc_fail_at(0);
    strcpy(dir, "/tmp/ag_alloc_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/a.db", dir);
}

static void teardown(void) {
    ag_alloc_fail_at(0);
    rm_dir();
}

TestSuite(alloc, .init = setup, .fini = teardown, .timeout = 600);

/* ------------------------------------------------------------ protocol */

static ag_stat_record recs[3] = {
    {.step = 7, .tensor = "layer.0.weight", .role = AG_ROLE_WEIGHT, .amax = 2.5, .numel = 64},
    {.step = 7, .tensor = "layer.0.grad", .role = AG_ROLE_GRADIENT, .amax = 1e-3, .numel = 64},
    {.step = 7,
     .tensor = "act",
     .role = AG_ROLE_ACTIVATION,
     .amax = 9.0,
     .numel = 10,
     .nonfinite = 2},
};

static void encode(const ag_msg *m, ag_buf *out) {
    ag_buf_init(out);
    cr_assert_eq(ag_proto_encode(out, m), AG_OK, "%s", ag_errctx_text(&m->err));
}

/* Decode buf under every allocation failure; the last (clean) decode is
 * returned in *out for the caller to check and clear. */
static void decode_every_failure(const ag_buf *buf, ag_msg *out, const char *what) {
    long base = ag_alloc_outstanding();
    for (long n = 1; n <= MAX_N; n++) {
        ag_msg m;
        memset(&m, 0, sizeof m);
        ag_alloc_fail_at(n);
        int err = ag_proto_decode(buf->data, buf->len, &m);
        int hit = ag_alloc_failed();
        ag_alloc_fail_at(0);
        if (!hit) {
            cr_assert_eq(err, AG_OK, "%s: clean decode failed", what);
            cr_log_info("%s: %ld allocations failed in turn", what, n - 1);
            *out = m;
            return;
        }
        cr_assert_eq(err, AG_ENOMEM, "%s: allocation %ld failed but decode said %d", what, n, err);
        cr_assert_eq(ag_alloc_outstanding(), base, "%s: allocation %ld: a failed decode leaked",
                     what, n);
    }
    cr_assert_fail("%s: never ran through", what);
}

Test(alloc, decoding_a_stats_batch) {
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 9, .seq = 3};
    m.u.stats = (ag_msg_stats){.n = 3, .records = recs};
    ag_buf b;
    encode(&m, &b);
    ag_msg d;
    long base = ag_alloc_outstanding();
    decode_every_failure(&b, &d, "stats");
    cr_assert_eq(d.u.stats.n, 3);
    cr_assert_str_eq(d.u.stats.records[2].tensor, "act");
    cr_assert_eq(d.u.stats.records[2].nonfinite, 2);
    ag_msg_clear(&d);
    cr_assert_eq(ag_alloc_outstanding(), base);
    ag_buf_free(&b);
}

/* A counts message of two tensors in two formats (flips of one unknown). */
static const char *const counts_tensors[2] = {"dev.0", "dev.1"};
static const char *const counts_fmts[2] = {"E5M2", "E3M4"};
static const uint64_t counts_numel[2] = {64, 32}, counts_nonfinite[2] = {0, 1};
static const double counts_amax[2] = {0.5, 2};
static const float counts_scales[4] = {0.25f, 0.5f, 1, 2};
static const uint64_t counts_k[20] = {1, 4, 0, 1, 0, 2, 4, 0, 0, 0, 0, 0, 1, 0, 1, 3, 9, 0, 1, 1};
static const int64_t counts_flips[4] = {3, -1, 0, 7};

static ag_msg_counts counts_body(void) {
    return (ag_msg_counts){.step = 4,
                           .form = AG_FORM_UPDATE,
                           .nformats = 2,
                           .formats = counts_fmts,
                           .n = 2,
                           .tensors = counts_tensors,
                           .numel = counts_numel,
                           .amax = counts_amax,
                           .nonfinite = counts_nonfinite,
                           .scales = counts_scales,
                           .counts = counts_k,
                           .flips = counts_flips};
}

Test(alloc, decoding_a_counts_message) {
    ag_msg m = {.type = AG_MSG_COUNTS};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 9, .seq = 3};
    m.u.counts = counts_body();
    ag_buf b;
    encode(&m, &b);
    ag_msg d;
    long base = ag_alloc_outstanding();
    decode_every_failure(&b, &d, "counts");
    cr_assert_eq(d.u.counts.n, 2);
    cr_assert_str_eq(d.u.counts.tensors[1], "dev.1");
    cr_assert_eq(d.u.counts.flips[1], -1);
    cr_assert_eq(d.u.counts.counts[16], 9);
    ag_msg_clear(&d);
    cr_assert_eq(ag_alloc_outstanding(), base);
    ag_buf_free(&b);
}

Test(alloc, encoding_and_decoding_a_history_reply) {
    ag_history_point pts[4];
    for (int i = 0; i < 4; i++)
        pts[i] = (ag_history_point){.step = (uint64_t)i + 1,
                                    .stalled = 3,
                                    .total = 4,
                                    .stall_rate = 0.75,
                                    .amax = 1.5,
                                    .scale = 0.25};
    ag_history h = {.run = "r", .tensor = "w", .format = "E5M2", .n = 4, .points = pts};
    ag_msg m = {.type = AG_MSG_R_HISTORY};
    m.u.history = &h;
    /* encoding into a growable buffer under every failure */
    long base = ag_alloc_outstanding();
    ag_buf b;
    for (long n = 1;; n++) {
        cr_assert_leq(n, MAX_N);
        ag_buf_init(&b);
        ag_alloc_fail_at(n);
        int err = ag_proto_encode(&b, &m);
        int hit = ag_alloc_failed();
        ag_alloc_fail_at(0);
        if (!hit) {
            cr_assert_eq(err, AG_OK);
            break;
        }
        cr_assert_eq(err, AG_ENOMEM, "encode: allocation %ld failed, got %d", n, err);
        ag_buf_free(&b);
        cr_assert_eq(ag_alloc_outstanding(), base, "encode: allocation %ld leaked", n);
    }
    ag_msg d;
    decode_every_failure(&b, &d, "history reply");
    ag_history *got = ag_msg_take_result(&d);
    ag_msg_clear(&d);
    cr_assert_not_null(got);
    cr_assert_eq(got->n, 4);
    cr_assert_str_eq(got->tensor, "w");
    cr_assert_eq(got->points[3].step, 4);
    ag_free(got);
    ag_buf_free(&b);
    cr_assert_eq(ag_alloc_outstanding(), base);
}

/* --------------------------------------------------------------- store */

static void make_store(void) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r", .host = "h", .started_ms = 1};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    for (int t = 0; t < 5; t++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", t);
        cr_assert_eq(ag_store_put_tensor(st, t + 1, 1, name, 0), AG_OK);
        for (uint64_t s = 1; s <= 20; s++) {
            ag_store_result_row r = {
                .tensor_id = t + 1, .format_id = 1, .step = s, .amax = 1.0, .scale = 0.5};
            r.counts.stalled = s;
            r.counts.total = 40;
            cr_assert_eq(ag_store_put_result(st, &r), AG_OK);
            cr_assert_eq(ag_store_put_scale(st, t + 1, 1, 0, s, 1.0, 0.5), AG_OK);
        }
    }
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_store_close(st);
}

/* One query, by number, into *out (freed by the caller with ag_free). */
static int query(ag_store *st, int which, void **out) {
    ag_history_query q = {.run = "r", .tensor = "t3", .every = 3};
    switch (which) {
    case 0: return ag_store_runs(st, (ag_run_list **)out);
    case 1: return ag_store_tensors(st, "r", (ag_tensor_list **)out);
    case 2: return ag_store_history(st, &q, (ag_history **)out);
    case 3: return ag_store_scales(st, "r", "E5M2", (ag_scale_list **)out);
    case 4: return ag_store_top(st, "r", "E5M2", 10, 3, (ag_top_list **)out);
    default: return ag_store_status(st, (ag_status **)out);
    }
}

Test(alloc, every_store_query) {
    make_store();
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
    static const char *const names[] = {"runs", "tensors", "history", "scales", "top", "status"};
    for (int which = 0; which < 6; which++) {
        long base = ag_alloc_outstanding();
        for (long n = 1;; n++) {
            cr_assert_leq(n, MAX_N);
            void *res = NULL;
            ag_alloc_fail_at(n);
            int err = query(st, which, &res);
            int hit = ag_alloc_failed();
            ag_alloc_fail_at(0);
            if (!hit) {
                cr_log_info("store %s: %ld allocations failed in turn", names[which], n - 1);
                cr_assert_eq(err, AG_OK, "%s: %s", names[which], ag_store_errmsg(st));
                cr_assert_not_null(res);
                ag_free(res);
                break;
            }
            cr_assert_neq(err, AG_OK, "%s: allocation %ld failed unnoticed", names[which], n);
            cr_assert_null(res, "%s: a failed query handed out a result", names[which]);
            cr_assert_eq(ag_alloc_outstanding(), base, "%s: allocation %ld leaked", names[which],
                         n);
        }
    }
    /* and the connection still answers fully */
    ag_history_query q = {.run = "r", .tensor = "t4"};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
    cr_assert_eq(h->n, 20, "history answers %zu points", h->n);
    cr_assert_eq(h->points[19].stalled, 20);
    ag_free(h);
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_store_tensors(st, "r", &tl), AG_OK);
    cr_assert_eq(tl->n, 5);
    ag_free(tl);
    ag_store_close(st);
}

/* ------------------------------------------------------ engine + writer */

typedef struct engine_fix {
    ag_config cfg;
    ag_logger log;
    ag_counters counters;
    ag_engine *engine;
    ag_writer *writer;
} engine_fix;

static void engine_start(engine_fix *f) {
    memset(f, 0, sizeof *f);
    const char *argv[] = {"altgradd"};
    char err[256];
    cr_assert_eq(ag_config_load(&f->cfg, 1, (char **)argv, err, sizeof err), AG_OK, "%s", err);
    strcpy(f->cfg.db, db);
    ag_logger_init(&f->log, AG_LOG_ERROR);
    f->log.out = fopen("/dev/null", "w");
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, db, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_engine_new(&f->engine, &f->cfg, &f->log, &f->counters), AG_OK);
    cr_assert_eq(ag_engine_restore(f->engine, st), AG_OK);
    ag_writer_opts wo = {.batch_rows = 1000, .batch_ms = 2, .high_water = 100000};
    cr_assert_eq(ag_writer_start(&f->writer, st, &wo, &f->log, NULL, NULL), AG_OK);
    ag_engine_set_writer(f->engine, f->writer);
}

static void engine_stop(engine_fix *f) {
    ag_engine_flush(f->engine);
    ag_writer_stop(f->writer);
    ag_engine_free(f->engine);
    fclose(f->log.out);
    ag_logger_destroy(&f->log);
}

/* A client's whole run: start, stats, two snapshots, counts, end. Returns
 * the first error (the rest are still sent, as the daemon's loop does). */
static int send_run(engine_fix *f, const char *run, uint64_t cid) {
    static float w[32], g[32];
    for (int i = 0; i < 32; i++) {
        w[i] = 0.1f * (float)(i - 16);
        g[i] = 1e-3f * (float)(i % 3);
    }
    ag_msg ms[6];
    memset(ms, 0, sizeof ms);
    for (int i = 0; i < 6; i++)
        ms[i].hdr = (ag_stream_hdr){.run = run, .client_id = cid, .seq = (uint64_t)i};
    ms[0].type = AG_MSG_RUN_START;
    ms[0].u.run_start = (ag_msg_run_start){.host = "h", .pid = 1, .time_ms = 1};
    ms[1].type = AG_MSG_STATS;
    ms[1].u.stats = (ag_msg_stats){.n = 3, .records = recs};
    for (int k = 2; k <= 3; k++) {
        ms[k].type = AG_MSG_SNAPSHOT;
        ms[k].u.snapshot = (ag_msg_snapshot){.step = (uint64_t)k,
                                             .tensor = "w",
                                             .dtype = AG_DTYPE_F32,
                                             .form = AG_FORM_SGD,
                                             .lr = 0.01,
                                             .n = 32,
                                             .numel = 32,
                                             .w = w,
                                             .x = g};
    }
    ms[4].type = AG_MSG_COUNTS;
    ms[4].u.counts = counts_body();
    ms[5].type = AG_MSG_RUN_END;
    ms[5].u.run_end = (ag_msg_run_end){.step = 4, .time_ms = 2};
    int first = AG_OK;
    for (int i = 0; i < 6; i++) {
        ag_engine_job *job = NULL;
        int err = ag_engine_handle(f->engine, &ms[i], 100, &job);
        if (job) {
            ag_engine_job_run(f->engine, job);
            err = ag_engine_job_finish(f->engine, job);
        }
        if (err && !first) first = err;
    }
    return first;
}

Test(alloc, the_engine_handling_a_run) {
    long base = ag_alloc_outstanding();
    int clean = 0;
    for (long n = 1; n <= MAX_N && !clean; n++) {
        rm_dir();
        cr_assert_not_null(mkdtemp(strcpy(dir, "/tmp/ag_alloc_XXXXXX")));
        snprintf(db, sizeof db, "%s/a.db", dir);
        engine_fix f;
        engine_start(&f);
        ag_alloc_fail_at(n);
        int err = send_run(&f, "r", 1);
        int hit = ag_alloc_failed();
        ag_alloc_fail_at(0);
        if (!hit) {
            cr_assert_eq(err, AG_OK);
            cr_log_info("engine: %ld allocations failed in turn", n - 1);
            clean = 1;
        }
        /* Usable after the failure: a second run is filed in full. */
        cr_assert_eq(send_run(&f, "again", 2), AG_OK, "allocation %ld: the engine is broken", n);
        engine_stop(&f);
        cr_assert_eq(ag_alloc_outstanding(), base, "allocation %ld: leaked %ld blocks", n,
                     ag_alloc_outstanding() - base);
        ag_store *st = NULL;
        cr_assert_eq(ag_store_open(&st, db, AG_STORE_READONLY), AG_OK);
        ag_history_query q = {.run = "again", .tensor = "w"};
        ag_history *h = NULL;
        cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "allocation %ld: %s", n,
                     ag_store_errmsg(st));
        cr_assert_eq(h->n, 2, "allocation %ld: the run after the failure is incomplete", n);
        ag_free(h);
        q.tensor = "dev.1";
        q.format = "E3M4";
        cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "allocation %ld: %s", n,
                     ag_store_errmsg(st));
        cr_assert_eq(h->n, 1, "allocation %ld: the counts after the failure are missing", n);
        cr_assert_eq(h->points[0].total, 9);
        ag_free(h);
        ag_store_close(st);
    }
    cr_assert(clean, "never ran through");
}

/* -------------------------------------------------------------- client */

Test(alloc, the_client_open_log_close) {
    char ingest[160], query_url[160];
    snprintf(ingest, sizeof ingest, "ipc://%s/nobody.sock", dir);
    snprintf(query_url, sizeof query_url, "ipc://%s/nobody-q.sock", dir);
    float w[16], g[16];
    for (int i = 0; i < 16; i++) w[i] = g[i] = 0.5f;
    /* nng initialises itself once per process, at the first socket, and keeps
     * that state until exit. Its own unwinding of a half-done initialisation
     * is broken in 1.5.2 (nni_fini waits on a condition variable it never
     * made), so initialise it before any allocation is made to fail. */
    ag_client_opts warm = {
        .ingest_url = ingest, .query_url = query_url, .run = "warm", .close_timeout_ms = 1};
    ag_client *c0 = NULL;
    cr_assert_eq(ag_client_open(&c0, &warm), AG_OK);
    ag_client_close(c0);
    /* Some blocks of a closed client are freed a moment later (nng reaps
     * pipes on its own threads): measure once the count holds still. */
    long base = ag_alloc_outstanding();
    for (int still = 0, i = 0; still < 20 && i < 400; i++) {
        nanosleep(&(struct timespec){0, 5000000}, NULL);
        long now = ag_alloc_outstanding();
        still = now == base ? still + 1 : 0;
        base = now;
    }
    for (long n = 1;; n++) {
        cr_assert_leq(n, MAX_N);
        ag_client_opts o = {
            .ingest_url = ingest, .query_url = query_url, .run = "r", .close_timeout_ms = 1};
        ag_client *c = NULL;
        ag_alloc_fail_at(n);
        int err = ag_client_open(&c, &o);
        if (err == AG_OK) {
            (void)ag_client_log_stats(c, 1, "t", AG_ROLE_WEIGHT, w, 16);
            (void)ag_client_log_sgd(c, 1, "w", w, g, 16, 0.01f);
        }
        int hit = ag_alloc_failed();
        ag_alloc_fail_at(0);
        if (err == AG_OK)
            ag_client_close(c);
        else
            cr_assert_null(c, "a failed open handed out a client");
        cr_assert(err == AG_OK || hit, "open failed without a failed allocation: %d", err);
        /* nng frees some blocks from its own threads a moment after close */
        for (int i = 0; i < 200 && ag_alloc_outstanding() > base; i++)
            nanosleep(&(struct timespec){0, 5000000}, NULL);
        long now = ag_alloc_outstanding();
        cr_assert_leq(now, base, "allocation %ld: leaked %ld blocks", n, now - base);
        base = now; /* a block of an earlier client freed late lowers it */
        if (!hit) {
            cr_log_info("client: %ld allocations failed in turn", n - 1);
            break;
        }
    }
}
