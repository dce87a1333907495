/*
 * test_engine.c - the daemon engine (daemon/engine.c) with its writer and a
 * real store, no sockets: scale modes, margin, explicit scales, the "zero
 * amax keeps the previous scale" rule, update form, bfloat16 payloads,
 * unknown formats, the writer committing whole messages, the client's
 * drop counter restored across a restart, and which run a client's messages
 * go to (a run is its name plus a launch).
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/engine.h"
#include "daemon/engine_internal.h"
#include "daemon/writer.h"
#include "schema/store.h"
#include "tests/tmpdir.h"
#include "tests/sql_results.h"

typedef struct fixture {
    char dir[64], db[128];
    ag_config cfg;
    ag_logger log;
    ag_counters counters;
    ag_engine *engine;
    ag_writer *writer;
    uint64_t seq;
} fixture;

static fixture F;

static void start(const char **args, int nargs) {
    const char *argv[16] = {"altgradd"};
    for (int i = 0; i < nargs; i++) argv[i + 1] = args[i];
    char err[256];
    cr_assert_eq(ag_config_load(&F.cfg, nargs + 1, (char **)argv, err, sizeof err), AG_OK, "%s",
                 err);
    strcpy(F.cfg.db, F.db);
    ag_logger_init(&F.log, AG_LOG_ERROR);
    F.log.out = fopen("/dev/null", "w");
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_engine_new(&F.engine, &F.cfg, &F.log, &F.counters), AG_OK);
    cr_assert_eq(ag_engine_restore(F.engine, st), AG_OK);
    ag_writer_opts wo = {.batch_rows = 1000, .batch_ms = 5, .high_water = 100000};
    cr_assert_eq(ag_writer_start(&F.writer, st, &wo, &F.log, NULL, NULL), AG_OK);
    ag_engine_set_writer(F.engine, F.writer);
}

/* Commit everything and free the engine; the file stays. */
static void stop(void) {
    if (!F.engine) return;
    ag_engine_flush(F.engine);
    ag_engine_persist(F.engine, 1); /* the flip baselines, as the daemon at SIGTERM */
    ag_writer_stop(F.writer);
    ag_engine_free(F.engine);
    F.engine = NULL;
    fclose(F.log.out);
    ag_logger_destroy(&F.log);
}

static void setup(void) {
    memset(&F, 0, sizeof F);
    strcpy(F.dir, "/tmp/ag_engine_XXXXXX");
    cr_assert_not_null(mkdtemp(F.dir));
    snprintf(F.db, sizeof F.db, "%s/e.db", F.dir);
}

static void teardown(void) {
    stop();
    ag_tmpdir_remove(F.dir);
}

TestSuite(engine, .init = setup, .fini = teardown);

/* A snapshot message of tensor "w" (the next sequence number). */
static ag_msg snapshot_msg(uint64_t step, const float *w, const float *x, size_t n, int form,
                           double scale, const char *const *fmts, size_t nfmts) {
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = ++F.seq};
    m.u.snapshot = (ag_msg_snapshot){.step = step,
                                     .tensor = "w",
                                     .dtype = AG_DTYPE_F32,
                                     .form = form,
                                     .lr = form == AG_FORM_SGD ? 0.01 : 0,
                                     .n = n,
                                     .numel = n,
                                     .has_scale = scale > 0,
                                     .scale = scale,
                                     .nformats = nfmts,
                                     .formats = fmts,
                                     .w = w,
                                     .x = x};
    return m;
}

static int snapshot(uint64_t step, const float *w, const float *x, size_t n, int form, double scale,
                    const char *const *fmts, size_t nfmts) {
    ag_msg m = snapshot_msg(step, w, x, n, form, scale, fmts, nfmts);
    ag_engine_job *job = NULL;
    int err = ag_engine_handle(F.engine, &m, 100, &job);
    if (job) {
        ag_engine_job_run(F.engine, job);
        err = ag_engine_job_finish(F.engine, job);
    }
    return err;
}

static void fill(float *w, float *g, size_t n, float amax) {
    for (size_t i = 0; i < n; i++) {
        w[i] = amax * (float)((int)(i % 9) - 4) / 4.0f;
        g[i] = 1e-3f * (float)(i % 5);
    }
}

static ag_history *history(const char *fmt) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(st));
    ag_history_query q = {.run = "r", .tensor = "w", .format = fmt};
    ag_history *h = NULL;
    cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_close(st);
    return h;
}

static double scale_of(double amax, const char *fmt) {
    return (double)(float)ag_compute_scale(amax, ag_format_get(fmt), AG_SCALE_MIN);
}

Test(engine, current_mode_includes_the_steps_own_amax) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    fill(w, g, 36, 8.0f);
    cr_assert_eq(snapshot(2, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E3M4");
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[0].scale, scale_of(4.0, "E3M4"));
    cr_expect_eq(h->points[1].scale, scale_of(8.0, "E3M4"));
    cr_expect_eq(h->points[1].amax, 8.0);
    ag_free(h);
}

Test(engine, delayed_mode_uses_only_earlier_steps) {
    const char *args[] = {"--scale-mode", "delayed"};
    start(args, 2);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    fill(w, g, 36, 8.0f);
    cr_assert_eq(snapshot(2, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E3M4");
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[0].scale, scale_of(1.0, "E3M4"), "empty history reads 1.0");
    cr_expect_eq(h->points[1].scale, scale_of(4.0, "E3M4"));
    ag_free(h);
}

Test(engine, margin_multiplies_the_scale_by_a_power_of_two) {
    const char *args[] = {"--margin", "2"};
    start(args, 2);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E5M2");
    cr_expect_eq(h->points[0].scale, (double)(float)(4.0 * 4.0 / 57344.0));
    ag_free(h);
}

Test(engine, an_explicit_scale_is_used_for_every_format) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0.25, NULL, 0), AG_OK);
    stop();
    for (int f = 0; f < 5; f++) {
        ag_history *h = history(ag_format_at((size_t)f)->name);
        cr_expect_eq(h->points[0].scale, 0.25);
        ag_stall_counts c = {0};
        ag_stall_sgd(ag_format_at((size_t)f), 0.25f, 0.01f, w, g, 36, &c);
        cr_expect_eq(h->points[0].stalled, c.stalled);
        cr_expect_eq(h->points[0].overflow, c.overflow);
        ag_free(h);
    }
}

Test(engine, a_zero_amax_leaves_the_previous_scale_in_force) {
    const char *args[] = {"--history-len", "1"};
    start(args, 2);
    float w[36], g[36];
    fill(w, g, 36, 2.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    memset(w, 0, sizeof w);
    cr_assert_eq(snapshot(2, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E5M2");
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[1].scale, h->points[0].scale);
    cr_expect_eq(h->points[1].scale, scale_of(2.0, "E5M2"));
    ag_free(h);
}

Test(engine, update_form_counts_what_the_core_counts) {
    start(NULL, 0);
    float w[64], u[64];
    for (int i = 0; i < 64; i++) {
        w[i] = 1.0f + (float)i / 16.0f;
        u[i] = i % 3 ? 1e-5f * (float)i : 0.0f;
    }
    static const char *const fmts[] = {"E3M4"};
    cr_assert_eq(snapshot(1, w, u, 64, AG_FORM_UPDATE, 0, fmts, 1), AG_OK);
    stop();
    ag_history *h = history("E3M4");
    ag_stall_counts c = {0};
    ag_amax_history *hist;
    ag_amax_history_new(&hist, 16, AG_AMAX_MAX);
    ag_amax_history_update(hist, w, 64);
    float scale =
        (float)ag_compute_scale(ag_amax_history_get(hist), ag_format_get("E3M4"), AG_SCALE_MIN);
    ag_amax_history_free(hist);
    cr_assert_eq(ag_stall_update(ag_format_get("E3M4"), scale, w, u, 64, &c), AG_OK);
    cr_expect_eq(h->points[0].total, c.total);
    cr_expect_eq(h->points[0].stalled, c.stalled);
    cr_expect_eq(h->points[0].scale, (double)scale);
    ag_free(h);
}

Test(engine, bfloat16_payloads_give_the_results_of_their_float32_values) {
    start(NULL, 0);
    uint16_t wb[40], gb[40];
    float wf[40], gf[40];
    for (int i = 0; i < 40; i++) {
        wb[i] = (uint16_t)(0x3f80 + i * 3);   /* 1.0 and up */
        gb[i] = (uint16_t)(0x3a80 + (i % 7)); /* about 1e-3 */
    }
    ag_bf16_to_f32(wb, wf, 40);
    ag_bf16_to_f32(gb, gf, 40);
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = 1};
    m.u.snapshot = (ag_msg_snapshot){.step = 1,
                                     .tensor = "w",
                                     .dtype = AG_DTYPE_BF16,
                                     .form = AG_FORM_SGD,
                                     .lr = 0.5,
                                     .n = 40,
                                     .numel = 40,
                                     .w = wb,
                                     .x = gb};
    ag_engine_job *job = NULL;
    cr_assert_eq(ag_engine_handle(F.engine, &m, 100, &job), AG_OK);
    cr_assert_null(job);
    stop();
    ag_history *h = history("E5M2");
    float amax;
    uint64_t nf;
    ag_amax(wf, 40, &amax, &nf);
    float scale = (float)ag_compute_scale(amax, ag_format_get("E5M2"), AG_SCALE_MIN);
    ag_stall_counts c = {0};
    ag_stall_sgd(ag_format_get("E5M2"), scale, 0.5f, wf, gf, 40, &c);
    cr_expect_eq(h->points[0].amax, amax);
    cr_expect_eq(h->points[0].stalled, c.stalled);
    cr_expect_eq(h->points[0].total, c.total);
    ag_free(h);
}

Test(engine, a_snapshot_naming_an_unknown_format_is_rejected_and_counted) {
    start(NULL, 0);
    float w[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1};
    static const char *const fmts[] = {"E5M2", "E9M9"};
    cr_expect_eq(snapshot(1, w, g, 4, AG_FORM_SGD, 0, fmts, 2), AG_EFORMAT);
    cr_expect_eq(atomic_load(&F.counters.rejected), 1);
    /* The engine goes on. */
    cr_expect_eq(snapshot(2, w, g, 4, AG_FORM_SGD, 0, fmts, 1), AG_OK);
    stop();
    ag_history *h = history("E5M2");
    cr_expect_eq(h->n, 1);
    cr_expect_eq(h->points[0].step, 2);
    ag_free(h);
}

Test(engine, a_restored_engine_continues_histories_and_flips) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 6.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    start(NULL, 0);
    float w2[36], g2[36];
    fill(w2, g2, 36, 1.0f);
    cr_assert_eq(snapshot(2, w2, g2, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E3M4");
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[1].scale, scale_of(6.0, "E3M4"), "step 1's amax is still in force");
    /* Every element changed (w2 = w / 6): pattern flips at step 1's scale
     * against the restored snapshot. */
    uint8_t a[36];
    float s = (float)h->points[0].scale;
    ag_encode_array(ag_format_get("E3M4"), s, w, a, 36);
    uint64_t flips = 0;
    ag_count_pattern_flips(ag_format_get("E3M4"), s, a, w2, 36, &flips);
    cr_expect_gt(flips, 0);
    cr_expect_eq(h->points[1].flips, flips);
    ag_free(h);
}

/* ------------------------------------------------- defined formats */

Test(engine, a_defined_format_is_evaluated_as_the_core_evaluates_it) {
    const char *args[] = {"--define-format", "E4M3=4,3,7,nan", "--define-format",
                          "E2M5=2,5,1",      "--formats",      "E5M2,E4M3"};
    start(args, 6);
    const ag_format *e4m3 = ag_format_get("E4M3"), *e2m5 = ag_format_get("E2M5");
    cr_assert_not_null(e4m3);
    cr_assert_not_null(e2m5);
    float w[2][72], g[2][72];
    fill(w[0], g[0], 72, 300.0f);
    fill(w[1], g[1], 72, 2.0f);
    /* Steps 1-2: the defaults (E5M2, E4M3); step 3 names E2M5 itself. */
    cr_assert_eq(snapshot(1, w[0], g[0], 72, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    cr_assert_eq(snapshot(2, w[1], g[1], 72, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    static const char *const named[] = {"E2M5"};
    cr_assert_eq(snapshot(3, w[1], g[1], 72, AG_FORM_SGD, 0, named, 1), AG_OK);
    cr_expect_eq(atomic_load(&F.counters.rejected), 0);
    stop();
    ag_history *h = history("E4M3");
    cr_assert_eq(h->n, 2);
    for (int s = 0; s < 2; s++) {
        /* The amax history's max is step 1's 300 at both steps. */
        float scale = (float)ag_compute_scale(300.0, e4m3, AG_SCALE_MIN);
        ag_stall_counts c = {0};
        cr_assert_eq(ag_stall_sgd(e4m3, scale, 0.01f, w[s], g[s], 72, &c), AG_OK);
        cr_expect_eq(h->points[s].scale, (double)scale);
        cr_expect_eq(h->points[s].total, c.total);
        cr_expect_eq(h->points[s].stalled, c.stalled, "step %d: %llu != %llu", s + 1,
                     (unsigned long long)h->points[s].stalled, (unsigned long long)c.stalled);
        cr_expect_eq(h->points[s].overflow, c.overflow);
        cr_expect_eq(h->points[s].underflow, c.underflow);
    }
    cr_expect_gt(h->points[1].stalled, 0, "the test should see stalls");
    ag_free(h);
    h = history("E2M5");
    cr_assert_eq(h->n, 1);
    cr_expect_eq(h->points[0].step, 3);
    float scale = (float)ag_compute_scale(300.0, e2m5, AG_SCALE_MIN);
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(e2m5, scale, 0.01f, w[1], g[1], 72, &c), AG_OK);
    cr_expect_eq(h->points[0].stalled, c.stalled);
    cr_expect_eq(h->points[0].scale, (double)scale);
    ag_free(h);
}

/* Issue 14: a 16-bit format, its unscaled twin (scale 1 even under a
 * message's scale) and an OCP format, each as the core computes it, with
 * the quantization error of the same pass and 16-bit pattern flips. */
Test(engine, wide_formats_unscaled_twins_and_quantization_error_are_stored) {
    const char *args[] = {"--formats", "E5M2,BF16:unscaled,FP16,E2M1"};
    start(args, 2);
    const ag_format *bfu = ag_format_get("BF16-unscaled"), *fp16 = ag_format_get("FP16"),
                    *fp4 = ag_format_get("E2M1");
    cr_assert(bfu && bfu->unscaled && fp16 && fp4);
    enum { N = 5000 };
    static float w[3][N], u[N];
    fill(w[0], u, N, 40.0f);
    double amax[3] = {0, 0, 0}; /* the history's max after each step */
    for (size_t i = 0; i < N; i++) {
        w[0][i] += 0.0013f * (float)(i % 7); /* off the coarser grids */
        u[i] = u[i] * 10.0f;
        w[1][i] = w[0][i] + u[i]; /* the update applied: flips = total - stalled */
        w[2][i] = w[1][i];
        amax[0] = fmax(amax[0], fabs((double)w[0][i]));
        amax[1] = fmax(amax[1], fabs((double)w[1][i]));
    }
    amax[1] = fmax(amax[1], amax[0]);
    amax[2] = amax[1];
    cr_assert_eq(snapshot(1, w[0], u, N, AG_FORM_UPDATE, 0, NULL, 0), AG_OK);
    cr_assert_eq(snapshot(2, w[1], u, N, AG_FORM_UPDATE, 0, NULL, 0), AG_OK);
    cr_assert_eq(snapshot(3, w[2], u, N, AG_FORM_UPDATE, 0.5, NULL, 0), AG_OK); /* explicit */
    cr_expect_eq(atomic_load(&F.counters.rejected), 0);
    stop();
    const ag_format *fm[3] = {bfu, fp16, fp4};
    for (int k = 0; k < 3; k++) {
        ag_history *h = history(fm[k]->name);
        cr_assert_eq(h->n, 3, "%s", fm[k]->name);
        ag_stall_counts c0 = {0};
        for (int s = 0; s < 3; s++) {
            float scale = k == 0   ? 1.0f
                          : s == 2 ? 0.5f
                                   : (float)ag_compute_scale(amax[s], fm[k], AG_SCALE_MIN);
            cr_expect_eq(h->points[s].scale, (double)scale, "%s step %d", fm[k]->name, s + 1);
            ag_stall_counts c = {0};
            cr_assert_eq(ag_stall_update(fm[k], scale, w[s], u, N, &c), AG_OK);
            if (s == 0) c0 = c;
            cr_expect_eq(h->points[s].stalled, c.stalled, "%s step %d", fm[k]->name, s + 1);
            cr_expect_eq(h->points[s].total, c.total);
            cr_expect_eq(h->points[s].overflow, c.overflow);
            cr_expect_eq(h->points[s].underflow, c.underflow);
            ag_quant_error q = {0};
            cr_assert_eq(ag_quant_error_multi(&fm[k], &scale, 1, w[s], N, &q), AG_OK);
            cr_expect_eq(h->points[s].mse, ag_quant_mse(&q), "%s mse", fm[k]->name);
            cr_expect_eq(h->points[s].sqnr_db, ag_quant_sqnr_db(&q), "%s sqnr", fm[k]->name);
            cr_expect(isfinite(h->points[s].sqnr_db) && h->points[s].mse > 0);
        }
        cr_expect_eq(h->points[0].flips, 0);
        cr_expect_eq(h->points[1].flips, c0.total - c0.stalled, "%s flips", fm[k]->name);
        cr_expect_eq(h->points[2].flips, 0, "%s: same weights", fm[k]->name);
        ag_free(h);
    }
}

/* Put a format row as a daemon of another configuration would have. */
static void store_format(int64_t id, const char *name, int eb, int mb, int bias, int inf, int nan) {
    ag_format f = {
        .exponent_bits = eb, .mantissa_bits = mb, .bias = bias, .has_inf = inf, .has_nan = nan};
    strcpy(f.name, name);
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, id, &f), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK);
    ag_store_close(st);
}

Test(engine, restore_defines_the_formats_the_database_describes) {
    store_format(1, "E3M4B2", 3, 4, 2, 0, 0);
    cr_assert_null(ag_format_get("E3M4B2"));
    start(NULL, 0);
    const ag_format *f = ag_format_get("E3M4B2");
    cr_assert_not_null(f, "restore did not define the stored format");
    cr_expect_eq(f->exponent_bits, 3);
    cr_expect_eq(f->bias, 2);
    /* A snapshot may name it, and it files under the stored format id. */
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    static const char *const named[] = {"E3M4B2"};
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, named, 1), AG_OK);
    stop();
    ag_history *h = history("E3M4B2");
    cr_assert_eq(h->n, 1);
    ag_stall_counts c = {0};
    float scale = (float)ag_compute_scale(4.0, f, AG_SCALE_MIN);
    cr_assert_eq(ag_stall_sgd(f, scale, 0.01f, w, g, 36, &c), AG_OK);
    cr_expect_eq(h->points[0].stalled, c.stalled);
    ag_free(h);
    int64_t rid, tid, fid;
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    cr_assert_eq(ag_store_max_ids(st, &rid, &tid, &fid), AG_OK);
    cr_expect_eq(fid, 1, "no second row for the same format");
    ag_store_close(st);
}

Test(engine, a_stored_definition_contradicting_the_daemons_is_a_startup_error) {
    store_format(1, "E4M3", 4, 3, 8, 0, 1);
    char err[256];
    const char *argv[] = {"altgradd", "--define-format", "E4M3=4,3,7,nan"};
    cr_assert_eq(ag_config_load(&F.cfg, 3, (char **)argv, err, sizeof err), AG_OK, "%s", err);
    ag_logger_init(&F.log, AG_LOG_ERROR);
    F.log.out = fopen("/dev/null", "w");
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_CREATE), AG_OK);
    ag_engine *e = NULL;
    cr_assert_eq(ag_engine_new(&e, &F.cfg, &F.log, &F.counters), AG_OK);
    cr_expect_eq(ag_engine_restore(e, st), AG_EEXIST);
    const char *why = ag_engine_why(e);
    cr_expect_not_null(strstr(why, "E4M3=4,3,8,nan"), "%s", why);
    cr_expect_not_null(strstr(why, "E4M3=4,3,7,nan"), "%s", why);
    cr_expect_null(strchr(why, '\n'));
    ag_engine_free(e);
    ag_store_close(st);
    fclose(F.log.out);
    ag_logger_destroy(&F.log);
}

/* ------------------------------------------------- hostile values (red team) */

/* The latest scale row of tensor "w", format fmt, role 0 (0 when none). */
static double stored_scale(const char *fmt) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    ag_scale_list *l = NULL;
    cr_assert_eq(ag_store_scales(st, "r", fmt, &l), AG_OK, "%s", ag_store_errmsg(st));
    double s = l->n ? l->items[0].scale : 0.0;
    ag_free(l);
    ag_store_close(st);
    return s;
}

Test(engine, an_explicit_scale_float32_cannot_hold_is_rejected_and_keeps_the_scale) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    double before = scale_of(4.0, "E5M2");
    /* 1e300 is inf and 1e-320 is 0 in float32, which the kernels scale in. */
    cr_expect_eq(snapshot(2, w, g, 36, AG_FORM_SGD, 1e300, NULL, 0), AG_ERANGE);
    cr_expect_eq(snapshot(3, w, g, 36, AG_FORM_SGD, 1e-320, NULL, 0), AG_ERANGE);
    cr_expect_eq(atomic_load(&F.counters.rejected), 2);
    cr_expect_eq(snapshot(4, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    stop();
    ag_history *h = history("E5M2");
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[0].step, 1);
    cr_expect_eq(h->points[1].step, 4);
    cr_expect_eq(h->points[1].scale, before);
    cr_expect_eq(stored_scale("E5M2"), before);
    ag_free(h);
}

Test(engine, a_learning_rate_float32_cannot_hold_is_rejected) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = 1};
    m.u.snapshot = (ag_msg_snapshot){.step = 1,
                                     .tensor = "w",
                                     .dtype = AG_DTYPE_F32,
                                     .form = AG_FORM_SGD,
                                     .lr = 1e300,
                                     .n = 36,
                                     .numel = 36,
                                     .w = w,
                                     .x = g};
    ag_engine_job *job = NULL;
    cr_expect_eq(ag_engine_handle(F.engine, &m, 100, &job), AG_ERANGE);
    cr_assert_null(job);
    cr_expect_eq(atomic_load(&F.counters.rejected), 1);
}

Test(engine, a_client_drop_count_past_int64_is_rejected_not_stored_negative) {
    start(NULL, 0);
    ag_stat_record rec = {
        .step = 1, .tensor = "a", .role = AG_ROLE_ACTIVATION, .amax = 1, .numel = 4};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = 0, .dropped = UINT64_MAX};
    m.u.stats = (ag_msg_stats){.n = 1, .records = &rec};
    ag_engine_job *job = NULL;
    cr_expect_eq(ag_engine_handle(F.engine, &m, 100, &job), AG_ERANGE);
    m.hdr.dropped = 3;
    cr_expect_eq(ag_engine_handle(F.engine, &m, 100, &job), AG_OK);
    stop();
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_expect_eq(runs->items[0].dropped, 3);
    ag_free(runs);
    ag_store_close(st);
}

static int stats_of(const char *const *names, size_t n, uint64_t step) {
    ag_stat_record recs[16];
    cr_assert_leq(n, 16);
    for (size_t i = 0; i < n; i++)
        recs[i] = (ag_stat_record){
            .step = step, .tensor = names[i], .role = AG_ROLE_ACTIVATION, .amax = 1, .numel = 4};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = ++F.seq};
    m.u.stats = (ag_msg_stats){.n = n, .records = recs};
    ag_engine_job *job = NULL;
    return ag_engine_handle(F.engine, &m, 100, &job);
}

Test(engine, tensors_past_the_state_budget_are_rejected_and_counted_not_allocated) {
    start(NULL, 0);
    static const char *const names[] = {"t00", "t01", "t02", "t03", "t04",
                                        "t05", "t06", "t07", "t08", "t09"};
    F.engine->max_state_bytes = F.engine->state_bytes + 3 * ag_eng_tensor_cost(F.engine, "t00");
    uint64_t d0 = atomic_load(&F.counters.dropped); /* the first seq's gap, if any */
    cr_expect_eq(stats_of(names, 10, 1), AG_ENOSPC);
    size_t made = atomic_load(&F.counters.tensors);
    cr_expect(made >= 3 && made < 10, "%zu tensors", made);
    cr_expect_eq(atomic_load(&F.counters.rejected), 1);
    /* the run lost data: it shows as a drop of the run, with the reason */
    cr_expect_geq(atomic_load(&F.counters.dropped), d0 + 1, "dropped %llu",
                  (unsigned long long)atomic_load(&F.counters.dropped));
    cr_expect_leq(F.engine->state_bytes, F.engine->max_state_bytes);
    /* Known tensors still take records. */
    cr_expect_eq(stats_of(names, made, 2), AG_OK);
    cr_expect_eq(atomic_load(&F.counters.rejected), 1);
    stop();
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    cr_expect_geq(runs->items[0].dropped, 1, "the run says it lost a message");
    ag_free(runs);
    ag_store_close(st);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(F.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT sum(count) FROM drops WHERE reason = 'not filed: "
                                    "the daemon''s state budget is full'",
                                    -1, &q, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_expect_eq(sqlite3_column_int64(q, 0), 1, "one drop row gives the reason");
    sqlite3_finalize(q);
    sqlite3_close(db);
}

Test(engine, a_snapshot_whose_encoded_copies_pass_the_state_budget_is_rejected) {
    start(NULL, 0);
    float w[36], g[36];
    fill(w, g, 36, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 16, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    size_t used = F.engine->state_bytes;
    /* Replacing the 5 copies of 16 bytes fits; 5 of 36 do not. */
    F.engine->max_state_bytes = used + 5 * 10;
    cr_expect_eq(snapshot(2, w, g, 16, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    cr_expect_eq(F.engine->state_bytes, used);
    uint64_t d0 = atomic_load(&F.counters.dropped);
    cr_expect_eq(snapshot(3, w, g, 36, AG_FORM_SGD, 0, NULL, 0), AG_ENOSPC);
    cr_expect_eq(atomic_load(&F.counters.rejected), 1);
    cr_expect_eq(atomic_load(&F.counters.dropped), d0 + 1,
                 "the run's lost snapshot is a drop: %llu",
                 (unsigned long long)atomic_load(&F.counters.dropped));
    cr_expect_eq(F.engine->state_bytes, used);
    /* A shape change that fits frees the old copies (flips restart). */
    cr_expect_eq(snapshot(4, w, g, 20, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    cr_expect_eq(F.engine->state_bytes, used + 5 * 4 + 4 * sizeof(float),
                 "4 more bytes per format and 4 more float32 weights");
}

/* Block-scaled formats keep a scale code per block beside their element
 * patterns (n + ceil(n / block) bytes), counted in the state budget; an
 * explicit scale is NVFP4's tensor scale, MX stays at 1. */
Test(engine, block_formats_keep_a_code_per_block_in_the_budget_and_take_an_explicit_scale) {
    const char *args[] = {"--formats", "MXFP4,NVFP4"};
    start(args, 2);
    float w[50], g[50];
    fill(w, g, 50, 4.0f);
    cr_assert_eq(snapshot(1, w, g, 40, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    size_t used = F.engine->state_bytes;
    /* 40 -> 50 elements: MXFP4 42 -> 52 bytes, NVFP4 43 -> 54, weights +10 */
    cr_assert_eq(snapshot(2, w, g, 50, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    cr_expect_eq(F.engine->state_bytes, used + 10 + 11 + 10 * sizeof(float), "%zu -> %zu", used,
                 F.engine->state_bytes);
    cr_assert_eq(snapshot(3, w, g, 50, AG_FORM_SGD, 0.5, NULL, 0), AG_OK);
    cr_expect_eq(atomic_load(&F.counters.rejected), 0);
    stop();
    ag_history *mx = history("MXFP4"), *nv = history("NVFP4");
    cr_assert_eq(mx->n, 3);
    cr_assert_eq(nv->n, 3);
    double amax = 4.0; /* fill's largest |w| */
    for (int s = 0; s < 3; s++) {
        cr_expect_eq(mx->points[s].scale, 1.0, "step %d", s + 1);
        double want = s == 2 ? 0.5 : (double)(float)(amax / (448.0 * 6.0));
        cr_expect_eq(nv->points[s].scale, want, "step %d: %.9g want %.9g", s + 1,
                     nv->points[s].scale, want);
    }
    /* same weights at the same scale: no flips; step 3's NVFP4 compared at
     * step 2's scale */
    cr_expect_eq(mx->points[2].flips, 0);
    cr_expect_eq(nv->points[2].flips, 0);
    ag_free(mx);
    ag_free(nv);
}

/* ------------------------------------------ client drops across restarts */

/* One stats record of run "r" from client cid with the given seq and
 * cumulative drop counter. */
static int stats_from(uint64_t cid, uint64_t seq, uint64_t dropped, uint64_t step) {
    ag_stat_record rec = {
        .step = step, .tensor = "a", .role = AG_ROLE_ACTIVATION, .amax = 1, .numel = 4};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = cid, .seq = seq, .dropped = dropped};
    m.u.stats = (ag_msg_stats){.n = 1, .records = &rec};
    ag_engine_job *job = NULL;
    return ag_engine_handle(F.engine, &m, 100, &job);
}

/* The stored dropped count of run "r". */
static uint64_t stored_dropped(void) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK, "%s", ag_store_errmsg(st));
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_assert_eq(runs->n, 1);
    uint64_t d = runs->items[0].dropped;
    ag_free(runs);
    ag_store_close(st);
    return d;
}

Test(engine, a_restored_engine_adds_the_drops_a_client_counted_while_it_was_down) {
    start(NULL, 0);
    cr_assert_eq(stats_from(1, 0, 2, 1), AG_OK); /* 2 dropped before the first message */
    cr_assert_eq(stats_from(1, 1, 2, 2), AG_OK);
    stop();
    cr_assert_eq(stored_dropped(), 2);
    start(NULL, 0);
    client_state *c = ag_map_get(&F.engine->clients, "0000000000000001");
    cr_assert_not_null(c, "client 1 was not restored");
    cr_expect_str_eq(c->run->name, "r");
    cr_expect_eq(c->last_seq, 1);
    cr_expect(c->drop_known, "the stored drop counter was not restored");
    cr_expect_eq(c->last_drop, 2);
    /* Same client after the restart: 5 more dropped meanwhile. */
    cr_assert_eq(stats_from(1, 2, 7, 3), AG_OK);
    cr_assert_eq(stats_from(1, 3, 7, 4), AG_OK);
    stop();
    cr_expect_eq(stored_dropped(), 7);
}

Test(engine, a_drop_counter_below_the_restored_one_resynchronises) {
    start(NULL, 0);
    cr_assert_eq(stats_from(1, 0, 4, 1), AG_OK);
    stop();
    start(NULL, 0);
    cr_assert_eq(stats_from(1, 1, 1, 2), AG_OK); /* went down: no drops, new base */
    cr_assert_eq(stats_from(1, 2, 3, 3), AG_OK); /* +2 over the new base */
    stop();
    cr_expect_eq(stored_dropped(), 6);
}

Test(engine, a_run_stored_without_a_drop_counter_resynchronises_on_its_next_message) {
    start(NULL, 0);
    cr_assert_eq(stats_from(1, 0, 2, 1), AG_OK);
    stop();
    /* As a run written before schema version 3 left it. */
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open(F.db, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "UPDATE clients SET last_drop=NULL", NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    start(NULL, 0);
    client_state *c = ag_map_get(&F.engine->clients, "0000000000000001");
    cr_assert_not_null(c);
    cr_expect(!c->drop_known);
    cr_assert_eq(stats_from(1, 1, 9, 2), AG_OK); /* unknown base: taken as is */
    cr_assert_eq(stats_from(1, 2, 10, 3), AG_OK);
    stop();
    cr_expect_eq(stored_dropped(), 3);
}

/* ------------------------------------------------- run identity */

/* A run start of client cid asking for run, from launch (NULL: none). */
static int start_of(uint64_t cid, const char *run, const char *launch, int resume) {
    ag_msg m = {.type = AG_MSG_RUN_START};
    m.hdr = (ag_stream_hdr){.run = run, .client_id = cid, .seq = 0};
    m.u.run_start = (ag_msg_run_start){
        .host = "h", .pid = (int64_t)cid, .time_ms = 1000, .launch = launch, .resume = resume};
    ag_engine_job *job = NULL;
    return ag_engine_handle(F.engine, &m, 100, &job);
}

static int end_of(uint64_t cid, const char *run, uint64_t seq) {
    ag_msg m = {.type = AG_MSG_RUN_END};
    m.hdr = (ag_stream_hdr){.run = run, .client_id = cid, .seq = seq};
    m.u.run_end = (ag_msg_run_end){.step = 1, .time_ms = 2000};
    ag_engine_job *job = NULL;
    return ag_engine_handle(F.engine, &m, 100, &job);
}

/* A stats message of client cid (seq) for tensor "a" at step. */
static int stat_of(uint64_t cid, const char *run, uint64_t seq, uint64_t step) {
    ag_stat_record rec = {
        .step = step, .tensor = "a", .role = AG_ROLE_ACTIVATION, .amax = 1, .numel = 4};
    ag_msg m = {.type = AG_MSG_STATS};
    m.hdr = (ag_stream_hdr){.run = run, .client_id = cid, .seq = seq};
    m.u.stats = (ag_msg_stats){.n = 1, .records = &rec};
    ag_engine_job *job = NULL;
    return ag_engine_handle(F.engine, &m, 100, &job);
}

/* The name of the run client cid's messages go to, from the file. */
static const char *run_of(uint64_t cid) {
    static char name[AG_NAME_MAX + 1];
    char launch[AG_LAUNCH_ID_MAX + 1];
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    int err = ag_store_client_run(st, cid, name, sizeof name, launch, sizeof launch);
    cr_assert_eq(err, AG_OK, "client %llu: %s", (unsigned long long)cid, ag_store_errmsg(st));
    ag_store_close(st);
    return name;
}

/* Run name -> (messages, dropped), from the file. */
static void run_counts(const char *name, uint64_t *messages, uint64_t *dropped) {
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    int found = 0;
    for (size_t i = 0; i < runs->n; i++)
        if (!strcmp(runs->items[i].name, name)) {
            *messages = runs->items[i].messages;
            *dropped = runs->items[i].dropped;
            found = 1;
        }
    ag_free(runs);
    ag_store_close(st);
    cr_assert(found, "no run %s", name);
}

Test(engine, a_taken_name_gets_the_first_free_suffix_whether_its_run_ended_or_not) {
    start(NULL, 0);
    cr_assert_eq(start_of(1, "x", "A", 0), AG_OK);
    cr_assert_eq(end_of(1, "x", 1), AG_OK);
    cr_assert_eq(start_of(2, "x", "B", 0), AG_OK);   /* x ended: a new run */
    cr_assert_eq(start_of(3, "x", "C", 0), AG_OK);   /* x.2 is live, another launch's */
    cr_assert_eq(start_of(4, "x.3", "D", 0), AG_OK); /* asked for x.3 itself: taken */
    cr_assert_eq(start_of(5, "y", NULL, 0), AG_OK);
    cr_assert_eq(start_of(6, "y", NULL, 0), AG_OK); /* no launch id: its own launch */
    stop();
    cr_expect_str_eq(run_of(1), "x");
    cr_expect_str_eq(run_of(2), "x.2");
    cr_expect_str_eq(run_of(3), "x.3");
    cr_expect_str_eq(run_of(4), "x.3.2");
    cr_expect_str_eq(run_of(5), "y");
    cr_expect_str_eq(run_of(6), "y.2");
}

Test(engine, clients_of_one_launch_share_its_run_and_number_their_messages_apart) {
    start(NULL, 0);
    cr_assert_eq(start_of(1, "old", "A", 0), AG_OK);
    cr_assert_eq(start_of(2, "x", "L", 0), AG_OK);
    cr_assert_eq(start_of(3, "x", "L", 0), AG_OK);   /* rank 1 of launch L */
    cr_assert_eq(start_of(4, "x", "M", 0), AG_OK);   /* another launch */
    cr_assert_eq(start_of(5, "old", "L", 0), AG_OK); /* launch L, another name: its own run */
    /* Interleaved: each client's seq counts on its own, so no gap. */
    cr_assert_eq(stat_of(2, "x", 1, 1), AG_OK);
    cr_assert_eq(stat_of(3, "x", 1, 1), AG_OK);
    cr_assert_eq(stat_of(2, "x", 2, 2), AG_OK);
    cr_assert_eq(stat_of(3, "x", 2, 2), AG_OK);
    cr_assert_eq(stat_of(3, "x", 4, 3), AG_OK); /* client 3 lost seq 3 */
    cr_expect_eq(stat_of(2, "x", 2, 3), AG_ERANGE, "a replay of client 2");
    stop();
    cr_expect_str_eq(run_of(2), "x");
    cr_expect_str_eq(run_of(3), "x");
    cr_expect_str_eq(run_of(4), "x.2");
    cr_expect_str_eq(run_of(5), "old.2");
    uint64_t messages = 0, dropped = 0;
    run_counts("x", &messages, &dropped);
    cr_expect_eq(messages, 7, "2 starts and 5 stats");
    cr_expect_eq(dropped, 1, "only client 3's gap");
}

Test(engine, resume_continues_the_newest_run_of_the_name) {
    start(NULL, 0);
    cr_assert_eq(start_of(1, "x", "A", 0), AG_OK);
    cr_assert_eq(start_of(2, "x", "B", 0), AG_OK); /* x.2 */
    cr_assert_eq(end_of(2, "x", 1), AG_OK);
    cr_assert_eq(start_of(3, "x", "C", 1), AG_OK);   /* resumes x.2, the newest */
    cr_assert_eq(start_of(4, "x", "C", 0), AG_OK);   /* launch C's next client joins it */
    cr_assert_eq(start_of(5, "x.2", "D", 1), AG_OK); /* by its own name */
    cr_assert_eq(start_of(6, "z", "E", 1), AG_OK);   /* nothing to resume: a new run */
    stop();
    cr_expect_str_eq(run_of(3), "x.2");
    cr_expect_str_eq(run_of(4), "x.2");
    cr_expect_str_eq(run_of(5), "x.2");
    cr_expect_str_eq(run_of(6), "z");
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_store_runs(st, &runs), AG_OK);
    cr_expect_eq(runs->n, 3, "x, x.2, z");
    for (size_t i = 0; i < runs->n; i++)
        if (!strcmp(runs->items[i].name, "x.2"))
            cr_expect_eq(runs->items[i].ended_ms, 0, "a resumed run is running again");
    ag_free(runs);
    ag_store_close(st);
}

Test(engine, the_naming_state_survives_a_restart) {
    start(NULL, 0);
    cr_assert_eq(start_of(1, "x", "A", 0), AG_OK);
    cr_assert_eq(start_of(2, "x", "B", 0), AG_OK);
    cr_assert_eq(stat_of(2, "x", 1, 1), AG_OK);
    stop();
    start(NULL, 0);
    cr_assert_eq(start_of(3, "x", "C", 0), AG_OK); /* x, x.2 are taken */
    cr_assert_eq(start_of(4, "x", "B", 0), AG_OK); /* launch B's run is x.2 */
    cr_assert_eq(stat_of(2, "x", 2, 2), AG_OK);    /* client 2 goes on, no gap */
    cr_assert_eq(start_of(5, "x", "Z", 1), AG_OK); /* the newest is x.3 */
    stop();
    cr_expect_str_eq(run_of(3), "x.3");
    cr_expect_str_eq(run_of(4), "x.2");
    cr_expect_str_eq(run_of(5), "x.3");
    uint64_t messages = 0, dropped = 0;
    run_counts("x.2", &messages, &dropped);
    cr_expect_eq(messages, 4);
    cr_expect_eq(dropped, 0);
}

Test(engine, a_client_after_its_run_end_or_without_a_start_gets_a_run_of_its_own) {
    start(NULL, 0);
    cr_assert_eq(start_of(1, "x", "A", 0), AG_OK);
    cr_assert_eq(end_of(1, "x", 1), AG_OK);
    cr_expect_null(ag_map_get(&F.engine->clients, "0000000000000001"), "an ended client is "
                                                                       "forgotten");
    /* A client whose start was lost: its first message starts it, and with no
     * launch id it joins nothing. */
    cr_assert_eq(stat_of(9, "x", 3, 1), AG_OK);
    stop();
    cr_expect_str_eq(run_of(9), "x.2");
    uint64_t messages = 0, dropped = 0;
    run_counts("x.2", &messages, &dropped);
    cr_expect_eq(dropped, 3, "seq 0..2 never arrived");
}

Test(engine, a_suffix_past_255_bytes_cuts_the_name_at_a_character_boundary) {
    /* 254 bytes: 252 x 'a' then U+00E9 (2 bytes); with ".2" that is 256, so
     * the name is cut, and not inside the 2-byte character. */
    char name[AG_NAME_MAX + 1];
    memset(name, 'a', 252);
    memcpy(name + 252, "\xc3\xa9", 2);
    name[254] = '\0';
    start(NULL, 0);
    cr_assert_eq(start_of(1, name, "A", 0), AG_OK);
    cr_assert_eq(start_of(2, name, "B", 0), AG_OK);
    stop();
    const char *got = run_of(2);
    cr_expect_leq(strlen(got), AG_NAME_MAX);
    cr_expect_eq(strlen(got), 252 + 2, "%zu bytes", strlen(got));
    cr_expect_eq(memcmp(got, name, 252), 0);
    cr_expect_str_eq(got + 252, ".2", "the 2-byte character is dropped whole");
}

/* ---------------------------------------- kernels behind the one before */

#include "tests/daemon/results_dump.h"

/* 4 chunks of the pool's size: snapshot s of tensor "w" (weights that move
 * a little every step, so flips count), as test_pool makes them. */
#define PIPE_N (4u * AG_ENGINE_CHUNK)

static void pipe_tensor(uint64_t s, float *w, float *g) {
    for (size_t i = 0; i < PIPE_N; i++) {
        float base = (float)((int)(i % 97) - 48) / 40.0f;
        w[i] = base + 1e-3f * (float)s * (float)((i * 7 + s) % 13);
        g[i] = 1e-4f * (float)((i + s) % 11);
    }
}

static ag_engine_job *job_of(uint64_t step, const float *w, const float *g) {
    ag_msg m = snapshot_msg(step, w, g, PIPE_N, AG_FORM_SGD, 0, NULL, 0);
    ag_engine_job *job = NULL;
    cr_assert_eq(ag_engine_handle(F.engine, &m, 100, &job), AG_OK);
    cr_assert_not_null(job, "a snapshot of %u elements is a job for the pool", PIPE_N);
    return job;
}

static void run_phase(ag_engine_job *job) {
    size_t n = ag_engine_job_chunks(job);
    for (size_t c = 0; c < n; c++) ag_engine_job_run_chunk(job, c);
}

/* Stop the engine, free the arrays, and the results rows as text (the
 * database removed). */
static char *finish_run(float *w, float *g) {
    stop();
    free(w);
    free(g);
    char *out = results_dump(F.db, NULL);
    remove(F.db);
    return out;
}

/* Steps 1..4 of one tensor: step 2 takes its scales and runs its kernels
 * behind step 1's, step 3 behind step 2's, all three in flight at once
 * (fail: step 1 fails in its last chunk); then step 4 alone. The results
 * rows as text. */
static char *pipelined_run(int fail) {
    start(NULL, 0);
    float *w = malloc(4 * PIPE_N * sizeof *w), *g = malloc(4 * PIPE_N * sizeof *g);
    cr_assert(w && g);
    for (uint64_t s = 1; s <= 4; s++) pipe_tensor(s, w + (s - 1) * PIPE_N, g + (s - 1) * PIPE_N);
    ag_msg next = {.type = AG_MSG_SNAPSHOT};
    next.u.snapshot = (ag_msg_snapshot){.tensor = "w", .n = PIPE_N};
    ag_engine_job *one = job_of(1, w, g);
    /* step 2's amax beside step 1's: its scales wait for step 1's */
    cr_assert(ag_engine_may_follow(&next, one), "the next step's amax beside this one's");
    ag_engine_job *two = job_of(2, w + PIPE_N, g + PIPE_N);
    run_phase(two);
    cr_assert_not(ag_engine_may_pipeline(two, one), "not before step 1 has taken its scales");
    run_phase(one);
    cr_assert(ag_engine_job_next(F.engine, one), "step 1 goes on to its kernels");
    cr_assert(ag_engine_may_pipeline(two, one));
    cr_assert(ag_engine_job_next_behind(F.engine, two, one));
    cr_assert_not(ag_engine_may_pipeline(two, one), "one follower each");
    cr_assert(ag_engine_may_follow(&next, one));
    ag_engine_job *three = job_of(3, w + 2 * PIPE_N, g + 2 * PIPE_N);
    cr_assert_not(ag_engine_may_follow(&next, one), "no more than %d behind the first",
                  AG_ENGINE_FOLLOWERS);
    run_phase(three);
    cr_assert(ag_engine_may_pipeline(three, two));
    cr_assert(ag_engine_job_next_behind(F.engine, three, two));
    /* each chunk of a step right after the same chunk of the step before,
     * the chunks in reverse: each step's flips must read the new patterns
     * of the one before */
    size_t n = ag_engine_job_chunks(one);
    cr_assert_eq(n, 4);
    for (size_t c = n; c-- > 0;) {
        ag_engine_job_run_chunk(one, c);
        if (c > 0) ag_engine_job_run_chunk(two, c);
        if (c > 1) ag_engine_job_run_chunk(three, c);
    }
    if (fail) one->part_err[n - 1] = AG_EIO; /* as a failing kernel would */
    size_t two_reserved = two->reserved;
    cr_assert_eq(ag_engine_job_finish(F.engine, one), fail ? AG_EIO : AG_OK);
    /* step 1's patterns step 2 still reads (it failed: they moved to step 2)
     * stay counted against the budget, in step 2's reservation */
    size_t borrowed = 0;
    for (size_t i = 0; i < AG_FORMATS_MAX && two->borrowed[i]; i++)
        borrowed += two->borrowed_bytes[i];
    cr_assert_eq(borrowed > 0, fail != 0, "step 2 borrowed %zu bytes", borrowed);
    cr_assert_eq(two->reserved, two_reserved + borrowed);
    cr_assert_eq(F.engine->inflight_bytes, two->reserved + three->reserved);
    /* the rest after step 1 has ended, the spare buffers freed: step 1's
     * patterns too, had nothing kept them (the address sanitizer would see
     * the read) */
    ag_engine_trim(F.engine);
    ag_engine_job_run_chunk(two, 0);
    cr_assert_not(ag_engine_job_next(F.engine, two));
    ag_engine_job_run_chunk(three, 1);
    ag_engine_job_run_chunk(three, 0);
    cr_assert_eq(ag_engine_job_finish(F.engine, two), AG_OK);
    cr_assert_not(ag_engine_job_next(F.engine, three));
    cr_assert_eq(ag_engine_job_finish(F.engine, three), AG_OK);
    cr_assert_eq(F.engine->inflight_bytes, 0, "every reservation given back");
    ag_engine_job *four = job_of(4, w + 3 * PIPE_N, g + 3 * PIPE_N);
    ag_engine_job_run(F.engine, four);
    cr_assert_eq(ag_engine_job_finish(F.engine, four), AG_OK);
    return finish_run(w, g);
}

/* The same steps one after the other (without step 1 when it failed). */
static char *serial_run(int without_first) {
    start(NULL, 0);
    float *w = malloc(PIPE_N * sizeof *w), *g = malloc(PIPE_N * sizeof *g);
    cr_assert(w && g);
    for (uint64_t s = without_first ? 2 : 1; s <= 4; s++) {
        pipe_tensor(s, w, g);
        cr_assert_eq(snapshot(s, w, g, PIPE_N, AG_FORM_SGD, 0, NULL, 0), AG_OK);
    }
    return finish_run(w, g);
}

Test(engine, a_snapshot_pipelined_behind_the_one_before_gives_the_results_of_one_after_the_other) {
    char *piped = pipelined_run(0);
    char *serial = serial_run(0);
    cr_expect_null(strstr(serial, " null "), "no flips are unknown in a clean run");
    cr_expect_str_eq(piped, serial);
    free(piped);
    free(serial);
}

/* Step 1 fails after step 2 compared with its patterns: they never became
 * the baseline, so step 2's flips are unknown (not counted against a
 * snapshot that was not filed); step 2 is the baseline of step 3 all the
 * same, whose flips are exact, and so are step 4's. */
Test(engine, a_pipelined_snapshot_whose_predecessor_fails_has_unknown_flips) {
    char *piped = pipelined_run(1);
    char *serial = serial_run(1);
    /* the serial run files step 2 against no baseline (flips 0 where the
     * failed run has null); steps 3 and 4 alike in both */
    size_t nulls = 0;
    for (const char *p = strstr(piped, " null "); p; p = strstr(p + 1, " null ")) nulls++;
    cr_expect_eq(nulls, 5, "step 2's flips unknown in each of the 5 formats:\n%s", piped);
    char *a = piped, *b = serial;
    for (size_t line = 0; *a && *b; line++) {
        char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        cr_assert(ea && eb);
        *ea = *eb = '\0';
        if (strstr(a, " null ")) { /* step 2: the same but for flips */
            cr_expect(strstr(a, " 2 ") != NULL, "only step 2's flips are unknown: %s", a);
        } else {
            cr_expect_str_eq(a, b);
        }
        a = ea + 1;
        b = eb + 1;
    }
    cr_expect(!*a && !*b, "as many rows");
    free(piped);
    free(serial);
}
