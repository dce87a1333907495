/*
 * test_block_formats.c - block-scaled formats (MXFP8_E4M3, MXFP4, NVFP4)
 * through the real altgradd (docs/numerics.md, Block scaling, In altgradd):
 * snapshots of a tensor smaller than a block, one that is not a multiple of
 * the block size and one chunked (>= 65,536 elements) store exactly the
 * core's block counts, flips (at the previous snapshot's block scales) and
 * quantization error, at the scale the daemon's rule gives (1 for MX, the
 * FP32 tensor scale for NVFP4); a snapshot's own format list and scale; a
 * counts message naming block formats; status lists them.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/stall_encode.h"
#include "tests/daemon/harness.h"
#include "tests/sql_results.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(block_formats, .init = setup, .fini = teardown, .timeout = 240);

#define NF 4
#define NT 3
#define STEPS 3
static const char *const FMTS[NF] = {"E4M3", "MXFP8_E4M3", "MXFP4", "NVFP4"};
static const char *const TENSORS[NT] = {"tiny", "small", "big"};
/* smaller than a block; not a multiple of 16 or 32; two engine chunks, the
 * second not a multiple of 32 either */
static const size_t SIZES[NT] = {7, 100, 70001};

/* Weights and updates of tensor t at step s: magnitudes over many binades
 * (so blocks get different scales), a few outliers per step, zeros, and an
 * update that is below half an element step in some places and far above
 * it in others. w at step s + 1 is w + u of step s (the trainer applied the
 * update it logged), with fresh outliers from step 2. */
static void model(size_t t, uint64_t s, float *w, float *u, size_t n) {
    for (size_t j = 0; j < n; j++) {
        if (s == 1) {
            double x = sin((double)(j * 7 + t * 13)) * pow(10.0, (double)((j / 40 + t) % 6) - 3.0);
            w[j] = j % 37 == 5 ? 0.0f : (float)x;
        } else {
            w[j] += u[j];
        }
        double r = cos((double)(j * 3 + s * 11 + t));
        u[j] = j % 9 == 0 ? 0.0f : (float)(r * fabs((double)w[j]) * (j % 4 == 0 ? 0.3 : 1e-3));
    }
    if (n > 64 && s == 2) w[n / 2] *= 1000.0f; /* an outlier block: its amax moves */
}

/* The daemon's rule with its defaults (history 16, max, current, margin 0):
 * 1 for MX, amax / (448 * 6) for NVFP4, amax / max_finite per tensor. */
static float rule_scale(double ha, const ag_format *f) {
    if (f->block && f->scale_kind == AG_SCALE_E8M0) return 1.0f;
    if (f->block) return (float)fmax(ha / (448.0 * 6.0), AG_SCALE_MIN);
    return (float)ag_compute_scale(ha, f, AG_SCALE_MIN);
}

typedef struct expect_row {
    ag_stall_counts c;
    uint64_t flips;
    double mse, sqnr, scale;
} expect_row;

/* The stored results of run as rows [tensor][format][step - 1]. */
typedef struct stored_row {
    long long stalled, total, overflow, underflow, nonfinite, flips;
    int flips_null, mse_null, sqnr_null;
    double mse, sqnr, scale;
    long long source;
} stored_row;

static void read_rows(const char *run, stored_row rows[NT][NF][STEPS], int *count) {
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(
        sqlite3_prepare_v2(db,
                           "SELECT t.name, f.name, x.step, x.stalled, x.total, x.overflow,"
                           " x.underflow, x.nonfinite, x.flips, x.mse, x.sqnr_db, x.scale,"
                           " x.source FROM results x JOIN tensors t ON t.id = x.tensor_id"
                           " JOIN formats f ON f.id = x.format_id JOIN runs r ON r.id = t.run_id"
                           " WHERE r.name = ?1",
                           -1, &q, NULL),
        SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_bind_text(q, 1, run, -1, SQLITE_STATIC);
    *count = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *tn = (const char *)sqlite3_column_text(q, 0);
        const char *fn = (const char *)sqlite3_column_text(q, 1);
        long long step = sqlite3_column_int64(q, 2);
        int ti = -1, fi = -1;
        for (int i = 0; i < NT; i++)
            if (strcmp(tn, TENSORS[i]) == 0) ti = i;
        for (int i = 0; i < NF; i++)
            if (strcmp(fn, FMTS[i]) == 0) fi = i;
        cr_assert(ti >= 0 && fi >= 0 && step >= 1 && step <= STEPS, "row %s %s %lld", tn, fn, step);
        stored_row *r = &rows[ti][fi][step - 1];
        r->stalled = sqlite3_column_int64(q, 3);
        r->total = sqlite3_column_int64(q, 4);
        r->overflow = sqlite3_column_int64(q, 5);
        r->underflow = sqlite3_column_int64(q, 6);
        r->nonfinite = sqlite3_column_int64(q, 7);
        r->flips_null = sqlite3_column_type(q, 8) == SQLITE_NULL;
        r->flips = sqlite3_column_int64(q, 8);
        r->mse_null = sqlite3_column_type(q, 9) == SQLITE_NULL;
        r->mse = sqlite3_column_double(q, 9);
        r->sqnr_null = sqlite3_column_type(q, 10) == SQLITE_NULL;
        r->sqnr = sqlite3_column_double(q, 10);
        r->scale = sqlite3_column_double(q, 11);
        r->source = sqlite3_column_int64(q, 12);
        (*count)++;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static int close_to(double a, double b) { return fabs(a - b) <= 1e-12 * fabs(b); }

Test(block_formats, snapshots_store_the_cores_block_counts_flips_and_error) {
    const char *const extra[] = {"--formats", "E4M3,MXFP8_E4M3,MXFP4,NVFP4", "--threads", "2",
                                 NULL};
    harness_start(&H, extra);
    ag_client *c = harness_client(&H, "blocks", AG_QUEUE_BLOCK);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_expect_str_eq(st->formats, "E4M3,MXFP8_E4M3,MXFP4,NVFP4");
    ag_free(st);
    const ag_format *fmts[NF];
    for (size_t f = 0; f < NF; f++) cr_assert_not_null(fmts[f] = ag_format_get(FMTS[f]));
    static expect_row want[NT][NF][STEPS];
    for (size_t t = 0; t < NT; t++) {
        size_t n = SIZES[t];
        float *w = calloc(n, sizeof *w), *u = calloc(n, sizeof *u);
        uint8_t *prev[NF];
        float prev_scale[NF];
        for (size_t f = 0; f < NF; f++)
            cr_assert_not_null(prev[f] = malloc(ag_encoded_bytes(fmts[f], n)));
        double ha = 0.0;
        for (uint64_t s = 1; s <= STEPS; s++) {
            model(t, s, w, u, n);
            cr_assert_eq(ag_client_log_update(c, s, TENSORS[t], w, u, n), AG_OK);
            float a;
            uint64_t bad;
            cr_assert_eq(ag_amax(w, n, &a, &bad), AG_OK);
            ha = fmax(ha, (double)a);
            for (size_t f = 0; f < NF; f++) {
                expect_row *e = &want[t][f][s - 1];
                float scale = rule_scale(ha, fmts[f]);
                e->scale = scale;
                memset(&e->c, 0, sizeof e->c);
                cr_assert_eq(ag_stall_update(fmts[f], scale, w, u, n, &e->c), AG_OK);
                ag_quant_error q = {0, 0, 0};
                cr_assert_eq(ag_quant_error_multi(&fmts[f], &scale, 1, w, n, &q), AG_OK);
                e->mse = ag_quant_mse(&q);
                e->sqnr = ag_quant_sqnr_db(&q);
                e->flips = 0;
                if (s > 1 && fmts[f]->block)
                    cr_assert_eq(ag_block_count_flips(fmts[f], prev_scale[f], prev[f], NULL, w, n,
                                                      &e->flips),
                                 AG_OK);
                else if (s > 1)
                    cr_assert_eq(
                        ag_count_pattern_flips(fmts[f], prev_scale[f], prev[f], w, n, &e->flips),
                        AG_OK);
                cr_assert_eq(ag_encode_any(fmts[f], scale, w, n, prev[f]), AG_OK);
                prev_scale[f] = scale;
            }
        }
        for (size_t f = 0; f < NF; f++) free(prev[f]);
        free(w);
        free(u);
    }
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK, "%s", ag_client_last_error(c));
    ag_free(harness_wait_history(c, "blocks", "big", "NVFP4", STEPS));
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    static stored_row got[NT][NF][STEPS];
    int count = 0;
    read_rows("blocks", got, &count);
    cr_assert_eq(count, NT * NF * STEPS);
    int moved = 0, stalls = 0, overflows = 0;
    for (size_t t = 0; t < NT; t++)
        for (size_t f = 0; f < NF; f++)
            for (size_t s = 0; s < STEPS; s++) {
                const expect_row *e = &want[t][f][s];
                const stored_row *g = &got[t][f][s];
                const char *tn = TENSORS[t], *fn = FMTS[f];
                cr_expect(g->stalled == (long long)e->c.stalled &&
                              g->total == (long long)e->c.total &&
                              g->overflow == (long long)e->c.overflow &&
                              g->underflow == (long long)e->c.underflow &&
                              g->nonfinite == (long long)e->c.nonfinite,
                          "%s %s step %zu: %lld/%lld ov %lld un %lld, want %llu/%llu ov %llu un "
                          "%llu",
                          tn, fn, s + 1, g->stalled, g->total, g->overflow, g->underflow,
                          (unsigned long long)e->c.stalled, (unsigned long long)e->c.total,
                          (unsigned long long)e->c.overflow, (unsigned long long)e->c.underflow);
                cr_expect(!g->flips_null && g->flips == (long long)e->flips,
                          "%s %s step %zu: flips %lld (null %d), want %llu", tn, fn, s + 1,
                          g->flips, g->flips_null, (unsigned long long)e->flips);
                cr_expect_eq(g->scale, e->scale, "%s %s step %zu: scale %.9g want %.9g", tn, fn,
                             s + 1, g->scale, e->scale);
                cr_expect(!g->mse_null && close_to(g->mse, e->mse), "%s %s mse %.17g want %.17g",
                          tn, fn, g->mse, e->mse);
                cr_expect(!g->sqnr_null && close_to(g->sqnr, e->sqnr),
                          "%s %s sqnr %.17g want %.17g", tn, fn, g->sqnr, e->sqnr);
                cr_expect_eq(g->source, 0);
                /* flips are the observed side of the previous step's stalls:
                 * the trainer applied the update it logged (but for the
                 * outlier of step 2) */
                if (s > 0 && !(s == 1 && SIZES[t] > 64))
                    cr_expect_eq(g->flips, got[t][f][s - 1].total - got[t][f][s - 1].stalled,
                                 "%s %s step %zu", tn, fn, s + 1);
                if (fmts[f]->block) {
                    moved += g->flips > 0;
                    stalls += g->stalled > 0 && g->stalled < g->total;
                    overflows += g->overflow > 0;
                }
            }
    /* the model reaches what the test is about */
    cr_expect_gt(moved, 0);
    cr_expect_gt(stalls, 0);
    cr_expect_gt(overflows, 0);
}

/* A snapshot naming its formats, with its own scale: NVFP4's tensor scale is
 * that scale, MX stays at 1 (it has no tensor scale). A counts message
 * naming block formats is filed with the trainer's numbers. */
Test(block_formats, a_snapshots_own_list_and_scale_and_a_counts_message) {
    harness_start(&H, NULL); /* the default formats: no block format */
    ag_client *c = harness_client(&H, "own", AG_QUEUE_BLOCK);
    enum { n = 1000 };
    static float w[n], u[n];
    for (size_t j = 0; j < n; j++) {
        w[j] = (float)sin((double)j) * (j % 50 == 0 ? 40.0f : 1.0f);
        u[j] = (float)cos((double)j) * 0.05f;
    }
    static const char *const mine[3] = {"MXFP4", "NVFP4", "E5M2"};
    ag_snapshot snap = {.step = 1,
                        .tensor = "own",
                        .dtype = AG_DTYPE_F32,
                        .w = w,
                        .u = u,
                        .n = n,
                        .scale = 0.0078125,
                        .formats = mine,
                        .nformats = 3};
    cr_assert_eq(ag_client_log_snapshot(c, &snap), AG_OK);
    static const char *const tn[1] = {"dev"};
    static const char *const cf[2] = {"MXFP8_E4M3", "NVFP4"};
    uint64_t numel = 512, nonfinite = 0;
    double amax = 3.5;
    float scales[2] = {1.0f, 0.25f};
    uint64_t counts[10] = {7, 500, 1, 2, 0, 9, 510, 3, 4, 0};
    int64_t flips[2] = {-1, 11};
    ag_counts_batch b = {.step = 4,
                         .form = AG_FORM_UPDATE,
                         .ntensors = 1,
                         .nformats = 2,
                         .tensors = tn,
                         .formats = cf,
                         .numel = &numel,
                         .amax = &amax,
                         .nonfinite = &nonfinite,
                         .scales = scales,
                         .counts = counts,
                         .flips = flips};
    cr_assert_eq(ag_client_log_counts(c, &b), AG_OK, "%s", ag_client_last_error(c));
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK, "%s", ag_client_last_error(c));
    ag_free(harness_wait_history(c, "own", "dev", "NVFP4", 1));
    ag_history *h = harness_wait_history(c, "own", "own", "MXFP4", 1);
    ag_free(h);
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    /* the snapshot: the core's counts at 1 (MX) and at the message's scale */
    const ag_format *mx = ag_format_get("MXFP4"), *nv = ag_format_get("NVFP4");
    ag_stall_counts cm = {0, 0, 0, 0, 0}, cn = {0, 0, 0, 0, 0};
    cr_assert_eq(ag_stall_update(mx, 1.0f, w, u, n, &cm), AG_OK);
    cr_assert_eq(ag_stall_update(nv, 0.0078125f, w, u, n, &cn), AG_OK);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT t.name || ' ' || f.name || ' ' || x.step || ' ' ||"
                                    " x.stalled || '/' || x.total || ' ' || x.overflow || ' ' ||"
                                    " x.underflow || ' ' || coalesce(x.flips, 'null') || ' ' ||"
                                    " x.scale || ' ' || x.source || ' ' ||"
                                    " (x.mse IS NULL) FROM results x"
                                    " JOIN tensors t ON t.id = x.tensor_id"
                                    " JOIN formats f ON f.id = x.format_id"
                                    " ORDER BY t.name, f.name",
                                    -1, &q, NULL),
                 SQLITE_OK);
    char all[1024] = "";
    while (sqlite3_step(q) == SQLITE_ROW) {
        strncat(all, (const char *)sqlite3_column_text(q, 0), sizeof all - strlen(all) - 2);
        strcat(all, "\n");
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    char want[1024];
    snprintf(want, sizeof want,
             "dev MXFP8_E4M3 4 7/500 1 2 null 1.0 1 1\n"
             "dev NVFP4 4 9/510 3 4 11 0.25 1 1\n"
             "own E5M2 1 %s\n"
             "own MXFP4 1 %llu/%llu %llu %llu 0 1.0 0 0\n"
             "own NVFP4 1 %llu/%llu %llu %llu 0 0.0078125 0 0\n",
             "", (unsigned long long)cm.stalled, (unsigned long long)cm.total,
             (unsigned long long)cm.overflow, (unsigned long long)cm.underflow,
             (unsigned long long)cn.stalled, (unsigned long long)cn.total,
             (unsigned long long)cn.overflow, (unsigned long long)cn.underflow);
    /* E5M2's row is the per-tensor one at the message's scale: checked
     * elsewhere; here only that it is there */
    char *e5 = strstr(all, "own E5M2 1 ");
    cr_assert_not_null(e5, "%s", all);
    char *eol = strchr(e5, '\n');
    memmove(e5 + strlen("own E5M2 1 "), eol, strlen(eol) + 1);
    cr_expect_str_eq(all, want);
    cr_expect_gt(cm.total, 0);
    cr_expect_gt(cn.total, 0);
}

/* The flip baseline of a block format survives a restart: the stored
 * weights are encoded again at their blocks' scales (daemon/restore.c). */
Test(block_formats, flips_continue_across_a_restart) {
    const char *const extra[] = {"--formats", "MXFP4,NVFP4", NULL};
    enum { n = 5000 };
    static float w[n], u[n];
    const ag_format *fmts[2] = {ag_format_get("MXFP4"), ag_format_get("NVFP4")};
    uint8_t *prev[2];
    float scale1[2], scale2[2];
    double ha = 0.0;
    for (int f = 0; f < 2; f++) cr_assert_not_null(prev[f] = malloc(ag_encoded_bytes(fmts[f], n)));
    for (uint64_t s = 1; s <= 2; s++) {
        model(1, s, w, u, n);
        float a;
        uint64_t bad;
        cr_assert_eq(ag_amax(w, n, &a, &bad), AG_OK);
        ha = fmax(ha, (double)a);
        for (int f = 0; f < 2; f++) (s == 1 ? scale1 : scale2)[f] = rule_scale(ha, fmts[f]);
        if (s == 1)
            for (int f = 0; f < 2; f++)
                cr_assert_eq(ag_encode_any(fmts[f], scale1[f], w, n, prev[f]), AG_OK);
        harness_start(&H, extra);
        ag_client *c = harness_client_as(&H, "restart", AG_QUEUE_BLOCK, s > 1, "launch-r");
        cr_assert_eq(ag_client_log_update(c, s, "w", w, u, n), AG_OK);
        cr_assert_eq(ag_client_flush(c, 20000), AG_OK, "%s", ag_client_last_error(c));
        ag_free(harness_wait_history(c, "restart", "w", "NVFP4", (size_t)s));
        ag_client_close(c);
        int status = harness_stop(&H, SIGTERM);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT f.name, x.flips, x.scale FROM results x"
                                    " JOIN formats f ON f.id = x.format_id WHERE x.step = 2"
                                    " ORDER BY f.name",
                                    -1, &q, NULL),
                 SQLITE_OK);
    int rows = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *fn = (const char *)sqlite3_column_text(q, 0);
        int f = strcmp(fn, "MXFP4") == 0 ? 0 : 1;
        uint64_t want = 0;
        cr_assert_eq(ag_block_count_flips(fmts[f], scale1[f], prev[f], NULL, w, n, &want), AG_OK);
        cr_expect_neq(sqlite3_column_type(q, 1), SQLITE_NULL, "%s flips unknown", fn);
        cr_expect_eq(sqlite3_column_int64(q, 1), (long long)want, "%s flips %lld want %llu", fn,
                     sqlite3_column_int64(q, 1), (unsigned long long)want);
        cr_expect_eq(sqlite3_column_double(q, 2), scale2[f], "%s scale", fn);
        cr_expect_gt(want, 0);
        rows++;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    cr_expect_eq(rows, 2);
    for (int f = 0; f < 2; f++) free(prev[f]);
}
