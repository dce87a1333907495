/*
 * test_spares.c - the engine's spare snapshot buffers (daemon/engine.c,
 * docs/daemon.md, Memory): results with buffers reused are the same as with
 * fresh ones (float32 and bfloat16 payloads, scales that move, a format
 * named twice), spares stay within the state budget, and trimming frees
 * them all.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
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

#define N ((size_t)1 << 17) /* n-byte pattern arrays of 128 KiB: above AG_ENGINE_SPARE_MIN */
#define STEPS 6
#define NFMT 3

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
    memset(&F, 0, sizeof F);
    strcpy(F.dir, "/tmp/ag_spares_XXXXXX");
    cr_assert_not_null(mkdtemp(F.dir));
    snprintf(F.db, sizeof F.db, "%s/e.db", F.dir);
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

static void stop(void) {
    if (!F.engine) return;
    ag_engine_flush(F.engine);
    ag_engine_persist(F.engine, 1);
    ag_writer_stop(F.writer);
    ag_engine_free(F.engine);
    F.engine = NULL;
    fclose(F.log.out);
    ag_logger_destroy(&F.log);
}

static void teardown(void) {
    stop();
    if (F.dir[0]) ag_tmpdir_remove(F.dir);
}

TestSuite(spares, .fini = teardown);

static const char *const fmts[NFMT] = {"E3M4", "E5M2", "E3M4"}; /* one named twice */

static int snapshot(uint64_t step, const void *w, const void *x, int dtype, size_t n) {
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){.run = "r", .client_id = 1, .seq = ++F.seq};
    m.u.snapshot = (ag_msg_snapshot){.step = step,
                                     .tensor = "w",
                                     .dtype = dtype,
                                     .form = AG_FORM_SGD,
                                     .lr = 0.01,
                                     .n = n,
                                     .numel = n,
                                     .nformats = NFMT,
                                     .formats = fmts,
                                     .w = w,
                                     .x = x};
    ag_engine_job *job = NULL;
    int err = ag_engine_handle(F.engine, &m, 100, &job);
    if (job) {
        ag_engine_job_run(F.engine, job);
        err = ag_engine_job_finish(F.engine, job);
    }
    return err;
}

/* Weights that drift with the step (so patterns flip) and whose amax moves
 * (so some steps count flips at the old scale). */
static void fill(float *w, float *g, size_t n, uint64_t step) {
    float amax = step % 3 == 0 ? 2.0f : 1.0f;
    for (size_t i = 0; i < n; i++) {
        float v = (float)((i * 2654435761u + step * 40503u) % 20011) / 20011.0f;
        w[i] = amax * (2.0f * v - 1.0f);
        g[i] = 1e-3f * (float)((i + step) % 7);
    }
}

/* bfloat16 patterns of f (truncated). */
static void to_bf16(const float *f, uint16_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &f[i], sizeof u);
        b[i] = (uint16_t)(u >> 16);
    }
}

typedef struct outcome {
    uint64_t flips[NFMT][STEPS], stalled[NFMT][STEPS];
    int has_spares; /* spares were held after some snapshot */
} outcome;

/* STEPS snapshots (odd steps bfloat16, even float32); trim_each: free the
 * spares after every one, so every snapshot gets fresh buffers. */
static void run(int trim_each, outcome *o) {
    memset(o, 0, sizeof *o);
    start(NULL, 0);
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    uint16_t *wb = malloc(N * sizeof *wb), *gb = malloc(N * sizeof *gb);
    cr_assert(w && g && wb && gb);
    for (uint64_t s = 1; s <= STEPS; s++) {
        fill(w, g, N, s);
        if (s % 2) {
            to_bf16(w, wb, N);
            to_bf16(g, gb, N);
            cr_assert_eq(snapshot(s, wb, gb, AG_DTYPE_BF16, N), AG_OK);
        } else {
            cr_assert_eq(snapshot(s, w, g, AG_DTYPE_F32, N), AG_OK);
        }
        ag_engine *e = F.engine;
        cr_assert_leq(e->state_bytes + e->inflight_bytes + e->spare_bytes, e->max_state_bytes);
        o->has_spares |= ag_engine_spare_bytes(e) > 0;
        if (trim_each) {
            ag_engine_trim(e);
            cr_assert_eq(ag_engine_spare_bytes(e), 0);
        }
    }
    free(w);
    free(g);
    free(wb);
    free(gb);
    stop();
    ag_store *st = NULL;
    cr_assert_eq(ag_store_open(&st, F.db, AG_STORE_READONLY), AG_OK);
    for (size_t f = 0; f < 2; f++) { /* the format named twice stores one row a step */
        ag_history_query q = {.run = "r", .tensor = "w", .format = fmts[f]};
        ag_history *h = NULL;
        cr_assert_eq(ag_store_history(st, &q, &h), AG_OK, "%s", ag_store_errmsg(st));
        cr_assert_eq(h->n, STEPS);
        for (size_t i = 0; i < STEPS; i++) {
            o->flips[f][i] = h->points[i].flips;
            o->stalled[f][i] = h->points[i].stalled;
        }
        ag_free(h);
    }
    ag_store_close(st);
    ag_tmpdir_remove(F.dir);
    F.dir[0] = 0;
}

Test(spares, reused_buffers_give_the_same_results_as_fresh_ones) {
    outcome *fresh = malloc(sizeof *fresh), *reused = malloc(sizeof *reused);
    cr_assert(fresh && reused);
    run(1, fresh);
    run(0, reused);
    cr_expect(reused->has_spares, "the snapshots kept no spare buffers");
    uint64_t flips = 0;
    for (size_t f = 0; f < 2; f++)
        for (size_t i = 0; i < STEPS; i++) {
            cr_expect_eq(reused->flips[f][i], fresh->flips[f][i], "format %zu step %zu", f, i + 1);
            cr_expect_eq(reused->stalled[f][i], fresh->stalled[f][i], "format %zu step %zu", f,
                         i + 1);
            if (i > 0) flips += fresh->flips[f][i];
        }
    cr_expect_gt(flips, 0, "no flips: the comparison shows nothing");
    free(fresh);
    free(reused);
}

Test(spares, spares_stay_within_the_state_budget_and_trim_frees_them) {
    /* 16 MiB: the engine has 12; a tensor of 2^20 elements in 2 formats
     * keeps 6 MiB and its snapshot in flight needs 6 more, so only part of
     * a replaced baseline can stay as spares. */
    const char *args[] = {"--state-budget", "16"};
    start(args, 2);
    size_t n = (size_t)1 << 20;
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    cr_assert(w && g);
    ag_engine *e = F.engine;
    for (uint64_t s = 1; s <= 4; s++) {
        fill(w, g, n, s);
        cr_assert_eq(snapshot(s, w, g, AG_DTYPE_F32, n), AG_OK, "step %llu", (unsigned long long)s);
        cr_assert_leq(e->state_bytes + e->inflight_bytes + e->spare_bytes, e->max_state_bytes,
                      "step %llu", (unsigned long long)s);
    }
    cr_expect_gt(ag_engine_spare_bytes(e), 0);
    ag_engine_trim(e);
    cr_expect_eq(ag_engine_spare_bytes(e), 0);
    cr_expect_eq(e->nspares, 0);
    free(w);
    free(g);
}
