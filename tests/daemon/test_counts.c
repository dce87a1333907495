/*
 * test_counts.c - counts computed by a trainer (the counts message,
 * ag_client_log_counts) against the real daemon: what is sent is what
 * history serves, computed "device", unknown flips null; the amax history
 * advances so a later snapshot is scaled from it; a format the daemon does
 * not know leaves the message not filed and recorded as a drop; and the same
 * model sent as snapshots and as counts computed here with the core library
 * (quantization error included) stores identical rows except where they
 * were computed; a message of 7-value results still files, its error null.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/daemon/harness.h"
#include "tests/sql_results.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(counts, .init = setup, .fini = teardown, .timeout = 240);

#define NT 3
#define NF 2
static const char *const tensor_names[NT] = {"a", "b", "c"};
static const char *const fmt_names[NF] = {"E5M2", "E3M4"};

/* The counts of tensor i, format f at step s: all different, all in bounds. */
static void counts_of(uint64_t s, size_t i, size_t f, uint64_t k[5]) {
    k[1] = 100 + 10 * s + i; /* total */
    k[0] = k[1] / (2 + f);   /* stalled */
    k[2] = s + f;            /* overflow */
    k[3] = 2 * s + i;        /* underflow */
    k[4] = i == 2 ? s : 0;   /* nonfinite */
}

static void send_step(ag_client *c, uint64_t s, const char *const *fmts, size_t nf) {
    uint64_t numel[NT], nonfinite[NT], counts[NT * NF * 5];
    double amax[NT];
    float scales[NT * NF];
    int64_t flips[NT * NF];
    for (size_t i = 0; i < NT; i++) {
        numel[i] = 1000 + i;
        nonfinite[i] = i == 2 ? s : 0;
        amax[i] = (double)s * (double)(i + 1);
        for (size_t f = 0; f < nf; f++) {
            size_t r = i * nf + f;
            scales[r] = (float)(0.125 * (double)(s + f)) / 3.0f;
            counts_of(s, i, f, counts + r * 5);
            flips[r] = i == 1 ? -1 : (int64_t)(s * 3 + f); /* b: not counted */
        }
    }
    ag_counts_batch b = {.step = s,
                         .form = AG_FORM_UPDATE,
                         .ntensors = NT,
                         .nformats = nf,
                         .tensors = tensor_names,
                         .formats = fmts,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts,
                         .flips = flips};
    cr_assert_eq(ag_client_log_counts(c, &b), AG_OK, "%s", ag_client_last_error(c));
}

Test(counts, history_serves_the_counts_sent_computed_on_the_device) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "dev", AG_QUEUE_BLOCK);
    for (uint64_t s = 1; s <= 3; s++) send_step(c, s, fmt_names, NF);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK, "%s", ag_client_last_error(c));
    for (size_t i = 0; i < NT; i++)
        for (size_t f = 0; f < NF; f++) {
            ag_history *h = harness_wait_history(c, "dev", tensor_names[i], fmt_names[f], 3);
            cr_assert_eq(h->n, 3);
            for (uint64_t s = 1; s <= 3; s++) {
                const ag_history_point *p = &h->points[s - 1];
                uint64_t k[5];
                counts_of(s, i, f, k);
                cr_expect_eq(p->step, s);
                cr_expect_eq(p->stalled, k[0]);
                cr_expect_eq(p->total, k[1]);
                cr_expect_eq(p->overflow, k[2]);
                cr_expect_eq(p->underflow, k[3]);
                cr_expect_eq(p->nonfinite, k[4]);
                cr_expect_eq(p->flips, i == 1 ? AG_FLIPS_UNKNOWN : s * 3 + f, "%s %s step %llu",
                             tensor_names[i], fmt_names[f], (unsigned long long)s);
                cr_expect_eq(p->amax, (double)s * (double)(i + 1));
                cr_expect_eq(p->scale, (double)((float)(0.125 * (double)(s + f)) / 3.0f));
                cr_expect_str_eq(p->computed, "device");
                cr_expect(isnan(p->mse) && isnan(p->sqnr_db), "7-value results: error unknown");
            }
            ag_free(h);
        }
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(c, "dev", &tl), AG_OK);
    cr_assert_eq(tl->n, NT);
    for (size_t i = 0; i < NT; i++) {
        cr_expect_eq(tl->items[i].snapshots, 3, "counts advance the tensor like snapshots");
        cr_expect_eq(tl->items[i].numel, 1000 + i);
        cr_expect_eq(tl->items[i].last_step, 3);
        cr_expect_eq(tl->items[i].role, AG_ROLE_WEIGHT);
    }
    ag_free(tl);

    /* A snapshot of "a" at step 4 without a scale: its amax (0.5) is below
     * the counts' (3 at step 3), so its scale comes from a history holding
     * them: max(1, 2, 3, 0.5) / 57344 in E5M2. */
    float w[64], u[64];
    for (size_t j = 0; j < 64; j++) {
        w[j] = 0.5f * (float)(j + 1) / 64.0f;
        u[j] = 1e-3f;
    }
    cr_assert_eq(ag_client_log_update(c, 4, "a", w, u, 64), AG_OK);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    ag_history *h = harness_wait_history(c, "dev", "a", "E5M2", 4);
    cr_expect_eq(h->points[3].scale, (double)(float)(3.0 / 57344.0));
    cr_expect_eq(h->points[3].amax, 0.5);
    cr_expect_str_eq(h->points[3].computed, "daemon");
    ag_free(h);
    ag_history_query q = {.run = "dev", .tensor = "a", .format = "E5M2", .every = 2};
    cr_assert_eq(ag_client_history(c, &q, &h), AG_OK);
    cr_assert_eq(h->n, 2);
    cr_expect_str_eq(h->points[0].computed, "device");
    cr_expect_str_eq(h->points[1].computed, "mixed");
    ag_free(h);

    /* The scale rule a trainer needs to compute such scales itself. */
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_eq(st->history_len, 16);
    cr_expect_str_eq(st->amax_mode, "max");
    cr_expect_str_eq(st->scale_mode, "current");
    cr_expect_eq(st->margin, 0.0);
    cr_expect_eq(st->scale_min, AG_SCALE_MIN);
    cr_expect_eq(st->rejected, 0);
    ag_free(st);
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* The client refuses what the daemon would refuse, before queuing anything. */
Test(counts, the_client_refuses_a_bad_batch_whole) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "bad", AG_QUEUE_BLOCK);
    uint64_t numel[2] = {10, 10}, nonfinite[2] = {0, 0};
    uint64_t counts[2 * 5] = {1, 2, 0, 0, 0, 3, 2, 0, 0, 0}; /* second: stalled > total */
    double amax[2] = {1, 1};
    float scales[2] = {1, 1};
    const char *names[2] = {"x", "y"}, *fmts[1] = {"E5M2"}, *nope[1] = {"E9M9"};
    ag_counts_batch b = {.step = 1,
                         .form = AG_FORM_SGD,
                         .ntensors = 2,
                         .nformats = 1,
                         .tensors = names,
                         .formats = fmts,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts};
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL);
    counts[5] = 1;
    b.formats = nope;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EFORMAT);
    b.formats = fmts;
    b.counts = NULL;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL);
    b.counts = counts;
    /* hostile quantization error: negative or infinite mse, NaN... */
    double mse[2] = {0.5, -1}, sqnr[2] = {3, NAN};
    b.mse = mse;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL, "mse < 0");
    mse[1] = INFINITY;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL, "mse inf");
    mse[1] = 0;
    b.sqnr_db = sqnr;
    sqnr[1] = 4;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL, "sqnr_db beside an mse of 0");
    sqnr[1] = -INFINITY;
    mse[1] = 1;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL, "sqnr_db -inf");
    sqnr[1] = NAN;
    nonfinite[1] = 10;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL, "mse without a finite element");
    nonfinite[1] = 0;
    b.mse = b.sqnr_db = NULL;
    b.ntensors = 0;
    cr_expect_eq(ag_client_log_counts(c, &b), AG_EINVAL);
    ag_client_stats cs;
    cr_assert_eq(ag_client_get_stats(c, &cs), AG_OK);
    cr_expect_eq(cs.queued + cs.sent, 0, "nothing queued, not even a run start");
    cr_expect_eq(ag_client_log_counts(NULL, &b), AG_EINVAL);
    cr_expect_eq(ag_client_log_counts(c, NULL), AG_EINVAL);
    ag_client_close(c);
}

/* A batch past AG_COUNTS_ITEMS_MAX tensors goes as several messages, all
 * filed. */
Test(counts, a_batch_of_more_tensors_than_one_message_holds_is_split) {
    enum { T = AG_COUNTS_ITEMS_MAX + 5 };
    static char names[T][16];
    static const char *tensors[T];
    static uint64_t numel[T], nonfinite[T], counts[T * 5];
    static double amax[T];
    static float scales[T];
    for (size_t i = 0; i < T; i++) {
        snprintf(names[i], sizeof names[i], "t%05zu", i);
        tensors[i] = names[i];
        numel[i] = 100 + i;
        amax[i] = 1;
        scales[i] = 0.5f;
        counts[i * 5 + 1] = i % 100; /* total */
        counts[i * 5] = i % 7 < i % 100 ? i % 7 : 0;
    }
    const char *fmts[1] = {"E5M2"};
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "big", AG_QUEUE_BLOCK);
    ag_counts_batch b = {.step = 9,
                         .form = AG_FORM_UPDATE,
                         .ntensors = T,
                         .nformats = 1,
                         .tensors = tensors,
                         .formats = fmts,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts};
    cr_assert_eq(ag_client_log_counts(c, &b), AG_OK, "%s", ag_client_last_error(c));
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "%s", ag_client_last_error(c));
    ag_client_stats cs;
    cr_assert_eq(ag_client_get_stats(c, &cs), AG_OK);
    cr_expect_eq(cs.delivered, 3, "run start and two counts messages");
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(c, "big", &tl), AG_OK);
    cr_assert_eq(tl->n, T);
    cr_expect_str_eq(tl->items[T - 1].name, names[T - 1]);
    cr_expect_eq(tl->items[T - 1].numel, 100 + T - 1);
    ag_free(tl);
    ag_history *h = harness_wait_history(c, "big", names[T - 1], "E5M2", 1);
    cr_expect_eq(h->points[0].total, (T - 1) % 100);
    cr_expect_eq(h->points[0].flips, AG_FLIPS_UNKNOWN);
    ag_free(h);
    ag_client_close(c);
}

/* The reasons the daemon recorded for run's drops, comma-joined. */
static void drop_reasons(const char *run, char *out, size_t cap) {
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    out[0] = '\0';
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT d.reason FROM drops d JOIN runs r ON r.id=d.run_id"
                                    " WHERE r.name=?1 ORDER BY d.first_seq",
                                    -1, &s, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    while (sqlite3_step(s) == SQLITE_ROW) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", sqlite3_column_text(s, 0));
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
}

Test(counts, a_format_the_daemon_does_not_know_leaves_the_message_unfiled_as_a_drop) {
    const ag_format *mine = NULL;
    cr_assert_eq(ag_format_define("X4M3", 4, 3, 7, 0, 1, &mine), AG_OK);
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "fmts", AG_QUEUE_BLOCK);
    const char *fmts[NF] = {"E5M2", "X4M3"}; /* known here, not to the daemon */
    send_step(c, 1, fmts, NF);
    send_step(c, 2, fmt_names, NF);
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK, "%s", ag_client_last_error(c));
    ag_history *h = harness_wait_history(c, "fmts", "a", "E5M2", 1);
    cr_expect_eq(h->n, 1, "step 1 was not filed at all, not even its known format");
    cr_expect_eq(h->points[0].step, 2);
    ag_free(h);
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(c, "fmts", &tl), AG_OK);
    cr_expect_eq(tl->items[0].snapshots, 1);
    ag_free(tl);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].dropped, 1);
    ag_free(runs);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_eq(st->rejected, 1);
    ag_free(st);
    char reasons[512];
    drop_reasons("fmts", reasons, sizeof reasons);
    cr_expect_str_eq(reasons, "not filed: unknown format");
    ag_client_close(c);
}

/* ------------------------------------------- the same model, both ways */

#define N 257
#define STEPS 4
#define NALL 5

/* Weights and updates of tensor t at step s: deterministic, varied in
 * magnitude so every format sees stalls, overflow and underflow. */
static void model_step(size_t t, uint64_t s, float *w, float *u) {
    for (size_t j = 0; j < N; j++) {
        double x = sin((double)(j * 7 + t * 13 + s)) * pow(10.0, (double)((j + t) % 7) - 4.0);
        w[j] = (float)(x * (1.0 + 0.5 * (double)s));
        u[j] = j % 5 == 0 ? 0.0f : (float)(x * 1e-3 * (double)((j % 3) + 1));
    }
    if (t == 1) w[3] = NAN; /* a non-finite weight */
}

/* The daemon's scale rule with its defaults (history 16, max, current,
 * margin 0), as a trainer computing counts itself would apply it. */
static float rule_scale(ag_amax_history *h, const ag_format *f) {
    double ha = ag_amax_history_get(h);
    return (float)ag_compute_scale(ha > 0 ? ha : 0.0, f, AG_SCALE_MIN);
}

/* Rows of run's results, stats and scales tables as text, one per row, in
 * a fixed order; source / where left out. */
static char *table_rows(const char *run, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    size_t cap = 1 << 20, len = 0;
    char *out = calloc(1, cap);
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    while (sqlite3_step(s) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(s); i++) {
            const char *v = (const char *)sqlite3_column_text(s, i);
            if (sqlite3_column_type(s, i) == SQLITE_FLOAT)
                len += (size_t)snprintf(out + len, cap - len, "%a ", sqlite3_column_double(s, i));
            else
                len += (size_t)snprintf(out + len, cap - len, "%s ", v ? v : "NULL");
        }
        len += (size_t)snprintf(out + len, cap - len, "\n");
        cr_assert_lt(len, cap - 256);
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return out;
}

Test(counts, a_model_sent_as_snapshots_and_as_counts_stores_identical_rows) {
    harness_start(&H, NULL);
    ag_client *c = harness_client(&H, "snap", AG_QUEUE_BLOCK);
    ag_client *d = harness_client(&H, "device", AG_QUEUE_BLOCK);
    static const char *const all[NALL] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    static const char *const names[2] = {"t0", "t1"};
    const ag_format *fmts[NALL];
    for (size_t f = 0; f < NALL; f++) cr_assert_not_null(fmts[f] = ag_format_get(all[f]));
    ag_amax_history *hist[2];
    uint8_t *prev[2][NALL];
    float prev_scale[2][NALL];
    for (size_t t = 0; t < 2; t++) {
        cr_assert_eq(ag_amax_history_new(&hist[t], 16, AG_AMAX_MAX), AG_OK);
        for (size_t f = 0; f < NALL; f++) cr_assert_not_null(prev[t][f] = malloc(N));
    }
    float w[N], u[N];
    for (uint64_t s = 1; s <= STEPS; s++) {
        uint64_t numel[2], nonfinite[2], counts[2 * NALL * 5];
        double amax[2];
        float scales[2 * NALL];
        int64_t flips[2 * NALL];
        double mse[2 * NALL], sqnr[2 * NALL];
        for (size_t t = 0; t < 2; t++) {
            model_step(t, s, w, u);
            cr_assert_eq(ag_client_log_update(c, s, names[t], w, u, N), AG_OK);
            /* what a trainer computing on its device does */
            float a;
            cr_assert_eq(ag_amax(w, N, &a, &nonfinite[t]), AG_OK);
            amax[t] = a;
            numel[t] = N;
            if (nonfinite[t] < N) ag_amax_history_push(hist[t], a);
            ag_stall_counts out[NALL];
            memset(out, 0, sizeof out);
            for (size_t f = 0; f < NALL; f++) scales[t * NALL + f] = rule_scale(hist[t], fmts[f]);
            cr_assert_eq(ag_stall_update_multi(fmts, scales + t * NALL, NALL, w, u, N, out), AG_OK);
            ag_quant_error qe[NALL];
            memset(qe, 0, sizeof qe);
            cr_assert_eq(ag_quant_error_multi(fmts, scales + t * NALL, NALL, w, N, qe), AG_OK);
            for (size_t f = 0; f < NALL; f++) {
                mse[t * NALL + f] = ag_quant_mse(&qe[f]);
                sqnr[t * NALL + f] = ag_quant_sqnr_db(&qe[f]);
            }
            for (size_t f = 0; f < NALL; f++) {
                size_t r = t * NALL + f;
                uint64_t *k = counts + r * 5;
                k[0] = out[f].stalled;
                k[1] = out[f].total;
                k[2] = out[f].overflow;
                k[3] = out[f].underflow;
                k[4] = out[f].nonfinite;
                uint64_t fl = 0; /* the first snapshot has no earlier one: 0 */
                if (s > 1)
                    cr_assert_eq(
                        ag_count_pattern_flips(fmts[f], prev_scale[t][f], prev[t][f], w, N, &fl),
                        AG_OK);
                flips[r] = (int64_t)fl;
                cr_assert_eq(ag_encode_array(fmts[f], scales[r], w, prev[t][f], N), AG_OK);
                prev_scale[t][f] = scales[r];
            }
        }
        ag_counts_batch b = {.step = s,
                             .form = AG_FORM_UPDATE,
                             .ntensors = 2,
                             .nformats = NALL,
                             .tensors = names,
                             .formats = all,
                             .numel = numel,
                             .amax = amax,
                             .nonfinite = nonfinite,
                             .scales = scales,
                             .counts = counts,
                             .flips = flips,
                             .mse = mse,
                             .sqnr_db = sqnr};
        cr_assert_eq(ag_client_log_counts(d, &b), AG_OK, "%s", ag_client_last_error(d));
    }
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
    cr_assert_eq(ag_client_flush(d, 20000), AG_OK);
    static const char *const sql[3] = {
        "SELECT t.name, f.name, x.step, x.stalled, x.total, x.flips, x.overflow, x.underflow,"
        " x.nonfinite, x.amax, x.scale, x.mse, x.sqnr_db FROM results x"
        " JOIN tensors t ON t.id=x.tensor_id"
        " JOIN formats f ON f.id=x.format_id JOIN runs r ON r.id=t.run_id WHERE r.name=?1"
        " ORDER BY t.name, f.name, x.step",
        "SELECT t.name, x.role, x.step, x.amax, x.numel, x.nonfinite FROM stats x"
        " JOIN tensors t ON t.id=x.tensor_id JOIN runs r ON r.id=t.run_id WHERE r.name=?1"
        " ORDER BY t.name, x.role, x.step",
        "SELECT t.name, f.name, x.role, x.step, x.amax, x.scale FROM scales x"
        " JOIN tensors t ON t.id=x.tensor_id JOIN formats f ON f.id=x.format_id"
        " JOIN runs r ON r.id=t.run_id WHERE r.name=?1 ORDER BY t.name, f.name, x.role"};
    for (int k = 0; k < 3; k++) {
        char *a = table_rows("snap", sql[k]), *b = table_rows("device", sql[k]);
        cr_expect_gt(strlen(a), 0);
        cr_expect_str_eq(b, a, "table %d differs:\ncounts:\n%s\nsnapshots:\n%s", k, b, a);
        free(a);
        free(b);
    }
    char *sources = table_rows("device", "SELECT DISTINCT x.source FROM results x"
                                         " JOIN tensors t ON t.id=x.tensor_id JOIN runs r"
                                         " ON r.id=t.run_id WHERE r.name=?1");
    cr_expect_str_eq(sources, "1 \n");
    free(sources);
    sources = table_rows("snap", "SELECT DISTINCT x.source FROM results x"
                                 " JOIN tensors t ON t.id=x.tensor_id JOIN runs r"
                                 " ON r.id=t.run_id WHERE r.name=?1");
    cr_expect_str_eq(sources, "0 \n");
    free(sources);
    char *known = table_rows("device", "SELECT count(*), count(x.mse), count(x.sqnr_db) FROM"
                                       " results x JOIN tensors t ON t.id=x.tensor_id JOIN runs r"
                                       " ON r.id=t.run_id WHERE r.name=?1");
    char want[64];
    snprintf(want, sizeof want, "%d %d %d \n", 2 * NALL * STEPS, 2 * NALL * STEPS,
             2 * NALL * STEPS);
    cr_expect_str_eq(known, want, "every row has its error");
    free(known);
    for (size_t t = 0; t < 2; t++) {
        ag_amax_history_free(hist[t]);
        for (size_t f = 0; f < NALL; f++) free(prev[t][f]);
    }
    ag_client_close(c);
    ag_client_close(d);
}
