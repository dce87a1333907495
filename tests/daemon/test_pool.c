/*
 * test_pool.c - altgradd evaluating snapshots on its pool (daemon/main.c's
 * scheduling, daemon/snapshot.c's chunks) and keeping flip baselines in
 * memory (written in sweeps and at SIGTERM): every result is the same with
 * one thread and with several (also with several clients whose snapshots of
 * different tensors are in flight at once), and after a kill -9 the first snapshot of a
 * tensor whose written baseline is older than its last result reports its
 * flips as unknown (NULL) while the others stay exact.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/daemon/harness.h"
#include "tests/sql_results.h"
#include "tests/daemon/results_dump.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(pool, .init = setup, .fini = teardown, .timeout = 240);

#define N 150001 /* three chunks, the last one short */
#define LR 0.01f

/* Deterministic weights and gradients per tensor and step; the amplitude
 * moves so scales change between some steps (flips then re-encode). */
static void make_tensor_n(uint64_t step, unsigned salt, float *w, float *g, size_t n) {
    float amp = step % 3 == 1 ? 5.0f : 1.0f + 0.25f * (float)step;
    for (size_t i = 0; i < n; i++) {
        w[i] = amp * sinf((float)i * 0.37f + (float)step * 0.11f + (float)salt);
        g[i] = 1e-3f * cosf((float)i * 1.3f + (float)step) * (float)(1 + i % 7);
    }
}

static void make_tensor(uint64_t step, unsigned salt, float *w, float *g) {
    make_tensor_n(step, salt, w, g, N);
}

/* float32 to bfloat16, rounding to nearest even (finite inputs). */
static void to_bf16(const float *x, uint16_t *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        out[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
}

/* results_dump (some rows), then the database and its -wal and -shm files
 * removed. */
static char *take_results(const char *db_path) {
    size_t rows = 0;
    char *out = results_dump(db_path, &rows);
    cr_assert_gt(rows, 0);
    remove(db_path);
    char side[200];
    snprintf(side, sizeof side, "%s-wal", db_path);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", db_path);
    remove(side);
    return out;
}

/* A trainer's run: 4 tensors (two of them bfloat16), 6 steps, each step a
 * snapshot of every tensor and a stats record, all into one daemon started
 * with --threads threads (and --formats formats unless NULL). Returns the
 * results table as text (mse and sqnr_db exactly, as SQL literals). */
static char *run_with_threads(const char *threads, const char *formats) {
    const char *const extra[] = {"--threads", threads, formats ? "--formats" : NULL, formats, NULL};
    harness_start(&H, extra);
    ag_client *c = harness_client(&H, "pool", AG_QUEUE_BLOCK);
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    uint16_t *wb = malloc(N * sizeof *wb), *gb = malloc(N * sizeof *gb);
    cr_assert(w && g && wb && gb);
    static const char *const names[] = {"a.weight", "b.weight", "c.weight", "d.weight"};
    for (uint64_t s = 1; s <= 6; s++) {
        for (unsigned t = 0; t < 4; t++) {
            make_tensor(s, t, w, g);
            if (t < 2) {
                cr_assert_eq(ag_client_log_sgd(c, s, names[t], w, g, N, LR), AG_OK);
                continue;
            }
            to_bf16(w, wb, N);
            to_bf16(g, gb, N);
            ag_snapshot snap = {.step = s,
                                .tensor = names[t],
                                .dtype = AG_DTYPE_BF16,
                                .w = wb,
                                .g = gb,
                                .n = N,
                                .lr = LR};
            cr_assert_eq(ag_client_log_snapshot(c, &snap), AG_OK);
        }
        cr_assert_eq(ag_client_log_amax(c, s, "a.weight", AG_ROLE_WEIGHT, 0.5 * (double)s, N, 0),
                     AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "pool", "d.weight", "E5M2", 6));
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    free(w);
    free(g);
    free(wb);
    free(gb);
    return take_results(H.db);
}

Test(pool, results_are_the_same_with_one_thread_and_with_several) {
    char *one = run_with_threads("1", NULL);
    char *four = run_with_threads("4", NULL);
    /* 4 tensors x 5 formats x 6 steps */
    size_t lines = 0;
    for (const char *p = one; *p; p++) lines += *p == '\n';
    cr_expect_eq(lines, 4 * 5 * 6);
    cr_expect_null(strstr(one, " null "), "no flips are unknown in a clean run");
    cr_expect_str_eq(one, four);
    free(one);
    free(four);
}

/* Block-scaled formats beside per-tensor ones: their blocks are the
 * tensor's whatever the chunks the pool splits it into (65,536 elements,
 * multiples of 32 and 16), and their error sums are added in chunk order. */
Test(pool, block_formats_give_the_same_results_with_one_thread_and_with_several) {
    const char *fmts = "E5M2,MXFP8_E4M3,NVFP4,MXFP4,BF16";
    char *one = run_with_threads("1", fmts);
    char *four = run_with_threads("4", fmts);
    size_t lines = 0;
    for (const char *p = one; *p; p++) lines += *p == '\n';
    cr_expect_eq(lines, 4 * 5 * 6);
    cr_expect_null(strstr(one, " null "), "no flips are unknown in a clean run");
    cr_expect_not_null(strstr(one, " NVFP4 "));
    cr_expect_not_null(strstr(one, " MXFP8_E4M3 "));
    cr_expect_str_eq(one, four);
    free(one);
    free(four);
}

/* --------------------------------------------- several clients at once */

#define CLIENTS 3
#define STEPS 5

/* One client of the shared run: two tensors of its own, a snapshot of
 * each and a weight amax record of the first at every step. */
typedef struct trainer {
    ag_client *c;
    unsigned index;
    int rc;
} trainer;

static void *trainer_main(void *arg) {
    trainer *t = arg;
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    char names[2][32];
    for (unsigned k = 0; k < 2; k++) snprintf(names[k], sizeof names[k], "c%u.t%u", t->index, k);
    t->rc = w && g ? AG_OK : AG_ENOMEM;
    for (uint64_t s = 1; s <= STEPS && !t->rc; s++) {
        for (unsigned k = 0; k < 2 && !t->rc; k++) {
            make_tensor(s, t->index * 2 + k, w, g);
            t->rc = ag_client_log_sgd(t->c, s, names[k], w, g, N, LR);
        }
        if (!t->rc)
            t->rc = ag_client_log_amax(t->c, s, names[0], AG_ROLE_WEIGHT,
                                       0.25 * (double)(s + t->index), N, 0);
    }
    if (!t->rc) t->rc = ag_client_flush(t->c, 60000);
    free(w);
    free(g);
    return NULL;
}

static char *run_clients_with_threads(const char *threads) {
    const char *const extra[] = {"--threads", threads, NULL};
    harness_start(&H, extra);
    trainer tr[CLIENTS];
    pthread_t th[CLIENTS];
    for (unsigned i = 0; i < CLIENTS; i++) {
        tr[i] = (trainer){.c = harness_client_as(&H, "many", AG_QUEUE_BLOCK, 0, "launch-many"),
                          .index = i};
        cr_assert_not_null(tr[i].c);
    }
    for (unsigned i = 0; i < CLIENTS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, trainer_main, &tr[i]), 0);
    for (unsigned i = 0; i < CLIENTS; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(tr[i].rc, AG_OK, "client %u: %s", i, ag_strerror(tr[i].rc));
    }
    for (unsigned i = 0; i < CLIENTS; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%u.t1", i);
        ag_free(harness_wait_history(tr[0].c, "many", name, "E5M2", STEPS));
    }
    for (unsigned i = 0; i < CLIENTS; i++) ag_client_close(tr[i].c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    return take_results(H.db);
}

Test(pool, several_clients_at_once_give_the_same_results_with_one_thread_and_with_several) {
    char *one = run_clients_with_threads("1");
    char *four = run_clients_with_threads("4");
    size_t lines = 0;
    for (const char *p = one; *p; p++) lines += *p == '\n';
    cr_expect_eq(lines, CLIENTS * 2 * 5 * STEPS);
    cr_expect_null(strstr(one, " null "), "no flips are unknown in a clean run");
    cr_expect_str_eq(one, four);
    free(one);
    free(four);
}

/* ---------------------------------------------------------- kill -9 */

/* flips of tensor at step in format (-1: NULL), from the file. */
static long long stored_flips(const char *tensor, const char *format, uint64_t step) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT r.flips FROM results r"
                                    " JOIN tensors t ON t.id = r.tensor_id"
                                    " JOIN formats f ON f.id = r.format_id"
                                    " WHERE t.name = ?1 AND f.name = ?2 AND r.step = ?3",
                                    -1, &q, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(q, 1, tensor, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, format, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)step);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW, "%s %s step %llu has no result", tensor, format,
                 (unsigned long long)step);
    long long v = sqlite3_column_type(q, 0) == SQLITE_NULL ? -1 : sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

/* The scale the daemon used for tensor's format at step. */
static float stored_scale(const char *tensor, const char *format, uint64_t step) {
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT r.scale FROM results r"
                                    " JOIN tensors t ON t.id = r.tensor_id"
                                    " JOIN formats f ON f.id = r.format_id"
                                    " WHERE t.name = ?1 AND f.name = ?2 AND r.step = ?3",
                                    -1, &q, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(q, 1, tensor, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, format, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)step);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    float s = (float)sqlite3_column_double(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return s;
}

static const char *const FMTS[5] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};

static void send(ag_client *c, const char *tensor, uint64_t step, unsigned salt, float *w,
                 float *g) {
    make_tensor(step, salt, w, g);
    cr_assert_eq(ag_client_log_sgd(c, step, tensor, w, g, N, LR), AG_OK);
}

Test(pool, after_kill_9_flips_are_unknown_where_the_baseline_was_stale_and_exact_elsewhere) {
    /* Baselines are written only at SIGTERM here (the first sweep would
     * come after a day). */
    const char *const extra[] = {"--baseline-interval", "86400", NULL};
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    float *w1 = malloc(N * sizeof *w1);
    cr_assert(w && g && w1);

    /* 1: both tensors at step 1, then a clean stop writes both baselines. */
    harness_start(&H, extra);
    ag_client *c = harness_client_as(&H, "k9", AG_QUEUE_BLOCK, 0, "launch-k9");
    send(c, "stale", 1, 1, w, g);
    send(c, "kept", 1, 2, w, g);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "k9", "kept", "E5M2", 1));
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    /* 2: "stale" moves on to step 2 (committed), then the daemon is killed
     * before any sweep: its stored baseline (step 1) is older than its last
     * result. "kept" was not touched: its baseline is current. */
    harness_start(&H, extra);
    c = harness_client_as(&H, "k9", AG_QUEUE_BLOCK, 1, "launch-k9");
    send(c, "stale", 2, 1, w, g);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "k9", "stale", "E5M2", 2));
    ag_client_close(c);
    status = harness_stop(&H, SIGKILL);
    cr_assert(WIFSIGNALED(status), "status %d", status);

    /* 3: both tensors again. */
    harness_start(&H, extra);
    c = harness_client_as(&H, "k9", AG_QUEUE_BLOCK, 1, "launch-k9");
    send(c, "stale", 3, 1, w, g);
    send(c, "kept", 2, 2, w, g);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "k9", "kept", "E5M2", 2));
    ag_free(harness_wait_history(c, "k9", "stale", "E5M2", 3));
    ag_client_close(c);
    status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    make_tensor(1, 2, w1, g); /* "kept" at step 1: its baseline */
    make_tensor(2, 2, w, g);  /* "kept" at step 2 */
    uint8_t *prev = malloc(N);
    cr_assert_not_null(prev);
    for (int f = 0; f < 5; f++) {
        cr_expect_geq(stored_flips("stale", FMTS[f], 2), 0, "%s: step 2 compared in memory",
                      FMTS[f]);
        cr_expect_eq(stored_flips("stale", FMTS[f], 3), -1,
                     "%s: the baseline of step 2 was lost: flips unknown, not 0", FMTS[f]);
        /* "kept": exact flips against step 1's weights at step 1's scale. */
        const ag_format *fmt = ag_format_get(FMTS[f]);
        float s1 = stored_scale("kept", FMTS[f], 1);
        cr_assert_eq(ag_encode_array(fmt, s1, w1, prev, N), AG_OK);
        uint64_t want = 0;
        cr_assert_eq(ag_count_pattern_flips(fmt, s1, prev, w, N, &want), AG_OK);
        cr_expect_eq(stored_flips("kept", FMTS[f], 2), (long long)want, "%s: %llu flips expected",
                     FMTS[f], (unsigned long long)want);
    }
    cr_expect_gt(stored_flips("kept", "E5M2", 2), 0, "the weights moved");
    free(prev);
    free(w);
    free(g);
    free(w1);
}

/* ------------------------------- the next snapshot of a tensor in flight */

#define SOLO_STEPS 10
/* 16 chunks: a snapshot's kernels take longer than the client's copy of
 * the next, so a streamed next one arrives while they run */
#define SOLO_N (1u << 20)

/* One tensor's SOLO_STEPS snapshots (and a weight amax record after each)
 * into a daemon with two pool threads: streamed (the next snapshot's amax
 * phase runs beside the kernels of the one before: ag_engine_may_follow),
 * or each waited for until filed before the next is sent (never beside
 * another). The results as text; *followed: bit 0 when the daemon's log says
 * a snapshot's amax was taken beside the one before it and the snapshot
 * parked till that one ended, bit 1 when its kernels ran behind those of
 * the one before it, chunk by chunk (ag_engine_job_next_behind). */
/* Steps 1..steps of the one tensor, made first (so the snapshots can go
 * out back to back): step s at w, g + (s - 1) * SOLO_N. */
static void solo_steps(size_t steps, float **w, float **g) {
    *w = malloc(steps * (size_t)SOLO_N * sizeof **w);
    *g = malloc(steps * (size_t)SOLO_N * sizeof **g);
    cr_assert(*w && *g);
    for (uint64_t s = 1; s <= steps; s++)
        make_tensor_n(s, 7, *w + (s - 1) * SOLO_N, *g + (s - 1) * SOLO_N, SOLO_N);
}

/* Lines of the daemon's log holding text. */
static int log_lines(const char *text) {
    FILE *f = fopen(H.log, "r");
    cr_assert_not_null(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

static char *run_solo(int wait_each, int *followed) {
    const char *const extra[] = {"--threads", "2", "--log-level", "debug", NULL};
    harness_start(&H, extra);
    ag_client *c = harness_client(&H, "solo", AG_QUEUE_BLOCK);
    float *w, *g;
    solo_steps(SOLO_STEPS, &w, &g);
    for (uint64_t s = 1; s <= SOLO_STEPS; s++) {
        cr_assert_eq(ag_client_log_sgd(c, s, "solo.weight", w + (s - 1) * SOLO_N,
                                       g + (s - 1) * SOLO_N, SOLO_N, LR),
                     AG_OK);
        cr_assert_eq(
            ag_client_log_amax(c, s, "solo.weight", AG_ROLE_WEIGHT, 0.75 * (double)s, SOLO_N, 0),
            AG_OK);
        if (wait_each) {
            cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
            ag_free(harness_wait_history(c, "solo", "solo.weight", "E5M2", s));
        }
    }
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "solo", "solo.weight", "E5M2", SOLO_STEPS));
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    free(w);
    free(g);
    *followed = (log_lines("amax taken beside the one before it") > 0) |
                (log_lines("kernels pipelined behind the one before it") > 0) << 1;
    remove(H.log);
    return take_results(H.db);
}

Test(pool, a_snapshot_evaluated_beside_the_one_before_it_gives_the_same_results) {
    int followed_streamed = 0, followed_serial = 0;
    /* the streamed run overlaps only when the pool is behind: try a few */
    char *streamed = NULL;
    for (int tries = 0; tries < 5 && !(followed_streamed & 2); tries++) {
        free(streamed);
        streamed = run_solo(0, &followed_streamed);
    }
    char *serial = run_solo(1, &followed_serial);
    cr_expect(followed_streamed & 2,
              "no snapshot of the stream was evaluated behind the one before it");
    cr_expect(!followed_serial, "a snapshot waited for was evaluated beside another");
    size_t lines = 0;
    for (const char *p = serial; *p; p++) lines += *p == '\n';
    cr_expect_eq(lines, 5 * SOLO_STEPS);
    cr_expect_null(strstr(serial, " null "), "no flips are unknown in a clean run");
    cr_expect_str_eq(streamed, serial);
    free(streamed);
    free(serial);
}

/* Snapshots of one tensor already queued when the daemon gets to them (it
 * was stopped while the trainer sent them): the next ones start their amax
 * phase beside the first one's, without waiting for it to end, and run
 * their kernels behind it, chunk by chunk. (A daemon that let a held-back
 * snapshot in only when a job ended evaluated such a queue one at a time.)
 * The results are those of the same snapshots sent one at a time. */
Test(pool, snapshots_queued_together_run_behind_one_another) {
    enum { QUEUED = 7 }; /* after step 1: 6 x 8 MiB, in the 64 MiB segment */
    const char *const extra[] = {"--threads", "2",           "--log-level", "debug",
                                 "--http",    "127.0.0.1:0", NULL};
    harness_start(&H, extra);
    ag_client *c = harness_client(&H, "queued", AG_QUEUE_BLOCK);
    float *w, *g;
    solo_steps(QUEUED, &w, &g);
    cr_assert_eq(ag_client_log_sgd(c, 1, "solo.weight", w, g, SOLO_N, LR), AG_OK);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    cr_assert_eq(kill(H.pid, SIGSTOP), 0);
    for (uint64_t s = 2; s <= QUEUED; s++)
        cr_assert_eq(ag_client_log_sgd(c, s, "solo.weight", w + (s - 1) * SOLO_N,
                                       g + (s - 1) * SOLO_N, SOLO_N, LR),
                     AG_OK);
    ag_client_stats st = {0};
    for (int tries = 0; tries < 3000; tries++) {
        cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
        if (st.queued == 0) break;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(st.queued, 0, "the snapshots were not all sent");
    cr_assert_eq(kill(H.pid, SIGCONT), 0);
    cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
    ag_free(harness_wait_history(c, "queued", "solo.weight", "E5M2", QUEUED));
    ag_client_close(c);
    /* /metrics counts what the log tells, and the pool is idle again */
    double pipelined = harness_metric(&H, "altgrad_snapshots_pipelined_total");
    cr_expect_eq(harness_metric(&H, "altgrad_snapshots_evaluated_total"), (double)QUEUED);
    cr_expect_eq(harness_metric(&H, "altgrad_snapshots_in_flight"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_engine_inflight_bytes"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_pool_threads"), 2.0);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    int behind = log_lines("kernels pipelined behind the one before it");
    cr_expect_eq(pipelined, (double)behind, "altgrad_snapshots_pipelined_total %g, log %d",
                 pipelined, behind);
    remove(H.log);
    cr_expect_geq(behind, 1, "none of %d queued snapshots ran behind the one before it",
                  QUEUED - 1);
    char *queued = take_results(H.db);
    /* the same steps, each filed before the next is sent */
    harness_start(&H, extra);
    c = harness_client(&H, "queued", AG_QUEUE_BLOCK);
    for (uint64_t s = 1; s <= QUEUED; s++) {
        cr_assert_eq(ag_client_log_sgd(c, s, "solo.weight", w + (s - 1) * SOLO_N,
                                       g + (s - 1) * SOLO_N, SOLO_N, LR),
                     AG_OK);
        cr_assert_eq(ag_client_flush(c, 60000), AG_OK);
        ag_free(harness_wait_history(c, "queued", "solo.weight", "E5M2", s));
    }
    ag_client_close(c);
    status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    char *serial = take_results(H.db);
    cr_expect_null(strstr(serial, " null "), "no flips are unknown in a clean run");
    cr_expect_str_eq(queued, serial);
    free(queued);
    free(serial);
    free(w);
    free(g);
}
