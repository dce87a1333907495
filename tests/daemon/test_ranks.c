/*
 * test_ranks.c - one run of many ranks against the real daemon (docs/daemon.md,
 * Ranks). Two processes, ranks 0 and 1 of 2, log the two halves of tensors:
 * on the snapshot path every stored point equals the core's counts for the
 * whole tensor with the scale the whole tensor's amax history gives (flips
 * too), ranks 2; on the counts path the same with each rank counting its
 * half at the global scale. A rank that stops early leaves incomplete steps
 * with ranks 1; replicated tensors count once; duplicate ranks, shards unlike
 * their step's others, a world size unlike the run's and malformed rank keys
 * are refused and counted while the daemon goes on; a stop stores the steps
 * still waiting as incomplete, and a restart keeps the run's world and ranks.
 */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <math.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "core/stall_encode.h"
#include "tests/daemon/harness.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(ranks, .init = setup, .fini = teardown, .timeout = 300);

#define NT 3         /* tensors */
#define HALF 301     /* elements per rank (odd: chunks do not line up) */
#define N (2 * HALF) /* the whole tensor */
#define STEPS 20
#define NFMT 5
#define LR 0.05f

static const char *const tensors[NT] = {"fc1.weight", "fc2.weight", "head.weight"};
static const char *const fmt_names[NFMT] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};

/* The whole tensor t at step s: weights of varied magnitude (stalls,
 * overflow and underflow in every format) and gradients, some zero. */
static void whole(size_t t, uint64_t s, float *w, float *g) {
    for (size_t j = 0; j < N; j++) {
        double x = sin((double)(j * 5 + t * 11 + s * 3)) * pow(10.0, (double)((j + t) % 6) - 3.0);
        w[j] = (float)(x * (1.0 + 0.1 * (double)s));
        g[j] = j % 7 == 0 ? 0.0f : (float)(cos((double)(j + s)) * 1e-2 * (double)((j % 4) + 1));
    }
}

static ag_client *open_rank(const char *run, int rank, int world) {
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = run,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000,
                        .launch_id = "ranks-test-launch",
                        .rank = rank,
                        .world_size = world};
    ag_client *c = NULL;
    return ag_client_open(&c, &o) == AG_OK ? c : NULL;
}

/* What a rank process does: log steps [0, steps) of every tensor's half
 * (counts: its half's counts at the global scale), then flush and close.
 * Exit status 0 when everything was delivered. */
typedef enum { PATH_SNAPSHOT, PATH_COUNTS } path;

/* The daemon's scale rule with its defaults (history 16, max, current,
 * margin 0): the history observes each step's whole-tensor amax. */
typedef struct rule {
    ag_amax_history *h[NT];
} rule;

static void rule_init(rule *r) {
    for (size_t t = 0; t < NT; t++)
        cr_assert_eq(ag_amax_history_new(&r->h[t], AG_AMAX_HISTORY_DEFAULT_LEN, AG_AMAX_MAX),
                     AG_OK);
}

static void rule_free(rule *r) {
    for (size_t t = 0; t < NT; t++) ag_amax_history_free(r->h[t]);
}

/* Observe step's whole tensor t and return its scale in format f. */
static float rule_scale(const rule *r, size_t t, const ag_format *f) {
    double ha = ag_amax_history_get(r->h[t]);
    if (f->block) /* MX: 1; NVFP4: the tensor scale amax / (448 * 6) */
        return f->scale_kind == AG_SCALE_E8M0 ? 1.0f
                                              : (float)fmax(ha / (448.0 * 6.0), AG_SCALE_MIN);
    return (float)ag_compute_scale(ha > 0 ? ha : 0.0, f, AG_SCALE_MIN);
}

static int rank_main(const char *run, int rank, int world, path how, uint64_t steps,
                     int replicated_too) {
    ag_client *c = open_rank(run, rank, world);
    if (!c) return 2;
    rule r;
    for (size_t t = 0; t < NT; t++)
        if (ag_amax_history_new(&r.h[t], AG_AMAX_HISTORY_DEFAULT_LEN, AG_AMAX_MAX)) return 3;
    static float w[N], g[N];
    int rc = 0;
    for (uint64_t s = 0; s < steps && !rc; s++) {
        for (size_t t = 0; t < NT && !rc; t++) {
            whole(t, s, w, g);
            const float *hw = w + (size_t)rank * HALF, *hg = g + (size_t)rank * HALF;
            if (how == PATH_SNAPSHOT) {
                rc = ag_client_log_sgd(c, s, tensors[t], hw, hg, HALF, LR);
                continue;
            }
            /* counts: the amax all-reduced (the whole tensor's), the
             * scale from it, this half counted with it */
            float amax = 0, half_amax = 0;
            uint64_t bad = 0, half_bad = 0;
            ag_amax(w, N, &amax, &bad);
            ag_amax(hw, HALF, &half_amax, &half_bad);
            ag_amax_history_push(r.h[t], amax);
            float scales[NFMT];
            uint64_t counts[NFMT * 5];
            double mse[NFMT], sqnr[NFMT];
            for (size_t f = 0; f < NFMT; f++) {
                const ag_format *fmt = ag_format_get(fmt_names[f]);
                scales[f] = rule_scale(&r, t, fmt);
                ag_quant_error qe = {0};
                if (ag_quant_error_multi(&fmt, &scales[f], 1, hw, HALF, &qe)) return 4;
                mse[f] = ag_quant_mse(&qe);
                sqnr[f] = ag_quant_sqnr_db(&qe);
                ag_stall_counts k = {0};
                if (ag_stall_sgd(fmt, scales[f], LR, hw, hg, HALF, &k)) return 4;
                uint64_t v[5] = {k.stalled, k.total, k.overflow, k.underflow, k.nonfinite};
                memcpy(counts + f * 5, v, sizeof v);
            }
            uint64_t numel = HALF;
            double a = half_amax;
            ag_counts_batch b = {.step = s,
                                 .form = AG_FORM_SGD,
                                 .ntensors = 1,
                                 .nformats = NFMT,
                                 .tensors = &tensors[t],
                                 .formats = fmt_names,
                                 .numel = &numel,
                                 .amax = &a,
                                 .nonfinite = &half_bad,
                                 .scales = scales,
                                 .counts = counts,
                                 .mse = mse,
                                 .sqnr_db = sqnr};
            rc = ag_client_log_counts(c, &b);
        }
        if (replicated_too && !rc) {
            /* the same whole tensor on every rank: counted once */
            whole(0, s, w, g);
            ag_snapshot snap = {.step = s,
                                .tensor = "shared.bias",
                                .dtype = AG_DTYPE_F32,
                                .w = w,
                                .g = g,
                                .n = N,
                                .lr = LR,
                                .replicated = 1};
            rc = ag_client_log_snapshot(c, &snap);
        }
    }
    for (size_t t = 0; t < NT; t++) ag_amax_history_free(r.h[t]);
    if (!rc) rc = ag_client_flush(c, 60000);
    int64_t lost = ag_client_close(c);
    return rc ? 5 : lost ? 6 : 0;
}

static pid_t spawn_rank(const char *run, int rank, path how, uint64_t steps, int repl) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) _exit(rank_main(run, rank, 2, how, steps, repl));
    return pid;
}

static void reap(pid_t pid) {
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rank process failed: status %d",
              status);
}

/* Every point of every tensor and format (names, nf of them) equals the
 * core's counts of the whole tensor at the whole tensor's scale, with
 * pattern flips against the previous step; ranks 2 and complete. A
 * block-scaled format's blocks are the whole tensor's (the halves of 301
 * elements do not end on a block boundary), and so is its error. */
static void expect_whole_in(ag_client *q, const char *run, int with_flips, const char *const *names,
                            size_t nf) {
    rule r;
    rule_init(&r);
    static float w[N], g[N], prev_w[N];
    for (size_t t = 0; t < NT; t++) {
        ag_history *h[AG_FORMATS_MAX];
        for (size_t f = 0; f < nf; f++) {
            h[f] = harness_wait_history(q, run, tensors[t], names[f], STEPS);
            cr_assert_eq(h[f]->n, STEPS, "%s %s", tensors[t], names[f]);
        }
        float prev_scale[AG_FORMATS_MAX] = {0};
        for (uint64_t s = 0; s < STEPS; s++) {
            whole(t, s, w, g);
            float amax = 0;
            uint64_t bad = 0;
            ag_amax(w, N, &amax, &bad);
            ag_amax_history_push(r.h[t], amax);
            for (size_t f = 0; f < nf; f++) {
                const ag_format *fmt = ag_format_get(names[f]);
                float scale = rule_scale(&r, t, fmt);
                ag_stall_counts k = {0};
                cr_assert_eq(ag_stall_sgd(fmt, scale, LR, w, g, N, &k), AG_OK);
                const ag_history_point *p = &h[f]->points[s];
                cr_expect_eq(p->step, s);
                cr_expect_eq(p->stalled, k.stalled, "%s %s step %llu stalled", tensors[t], names[f],
                             (unsigned long long)s);
                cr_expect_eq(p->total, k.total, "%s %s step %llu total", tensors[t], names[f],
                             (unsigned long long)s);
                cr_expect_eq(p->overflow, k.overflow);
                cr_expect_eq(p->underflow, k.underflow);
                cr_expect_eq(p->nonfinite, k.nonfinite);
                cr_expect_eq(p->scale, (double)scale, "%s %s step %llu: scale %g, want %g",
                             tensors[t], names[f], (unsigned long long)s, p->scale, (double)scale);
                cr_expect_eq(p->amax, (double)amax);
                cr_expect_eq(p->ranks, 2);
                cr_expect_eq(p->complete, 1);
                /* the whole tensor's quantization error (block-scaled formats
                 * at its blocks' scales): the daemon's own (snapshots), or the
                 * halves' combined (counts), equal up to the order of the
                 * double sums */
                ag_quant_error qe = {0};
                cr_assert_eq(ag_quant_error_multi(&fmt, &scale, 1, w, N, &qe), AG_OK);
                double mse = ag_quant_mse(&qe), sqnr = ag_quant_sqnr_db(&qe);
                cr_expect(fabs(p->mse - mse) <= 1e-12 * mse, "%s %s step %llu mse %a, want %a",
                          tensors[t], names[f], (unsigned long long)s, p->mse, mse);
                cr_expect(isnan(sqnr) ? isnan(p->sqnr_db) : fabs(p->sqnr_db - sqnr) <= 1e-9,
                          "%s %s step %llu sqnr_db %a, want %a", tensors[t], names[f],
                          (unsigned long long)s, p->sqnr_db, sqnr);
                if (with_flips) {
                    uint64_t flips = 0;
                    if (s > 0) {
                        static uint8_t prev[2 * N];
                        cr_assert_eq(ag_encode_any(fmt, prev_scale[f], prev_w, N, prev), AG_OK);
                        if (fmt->block)
                            ag_block_count_flips(fmt, prev_scale[f], prev, NULL, w, N, &flips);
                        else
                            ag_count_pattern_flips(fmt, prev_scale[f], prev, w, N, &flips);
                    }
                    cr_expect_eq(p->flips, flips, "%s %s step %llu flips", tensors[t], names[f],
                                 (unsigned long long)s);
                }
                prev_scale[f] = scale;
            }
            memcpy(prev_w, w, sizeof w);
        }
        for (size_t f = 0; f < nf; f++) ag_free(h[f]);
    }
    rule_free(&r);
}

static void expect_whole(ag_client *q, const char *run, int with_flips) {
    expect_whole_in(q, run, with_flips, fmt_names, NFMT);
}

static ag_run_info *find_run(ag_run_list *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) return &l->items[i];
    cr_assert_fail("no run %s", name);
    return NULL;
}

Test(ranks, two_ranks_snapshot_halves_are_counted_as_the_whole_tensor) {
    harness_start(&H, NULL);
    pid_t a = spawn_rank("sharded", 0, PATH_SNAPSHOT, STEPS, 0);
    pid_t b = spawn_rank("sharded", 1, PATH_SNAPSHOT, STEPS, 0);
    reap(a);
    reap(b);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    expect_whole(q, "sharded", 1);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
    ag_run_info *r = find_run(runs, "sharded");
    cr_expect_eq(r->world_size, 2);
    cr_expect_eq(r->ranks_seen, 2);
    cr_expect_eq(r->incomplete, 0);
    cr_expect_eq(r->dropped, 0);
    cr_expect_str_eq(r->rank_drops, "{}");
    ag_free(runs);
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(q, "sharded", &tl), AG_OK);
    for (size_t i = 0; i < tl->n; i++) {
        cr_expect_eq(tl->items[i].snapshots, STEPS, "one snapshot per step, not per shard");
        cr_expect_eq(tl->items[i].numel, N, "numel is the shards' sum");
    }
    ag_free(tl);
    ag_client_close(q);
}

Test(ranks, block_formats_count_the_whole_tensors_blocks_across_the_shards) {
    static const char *const block_fmts[4] = {"E5M2", "MXFP8_E4M3", "MXFP4", "NVFP4"};
    const char *const extra[] = {"--formats", "E5M2,MXFP8_E4M3,MXFP4,NVFP4", NULL};
    harness_start(&H, extra);
    pid_t a = spawn_rank("sharded-blocks", 0, PATH_SNAPSHOT, STEPS, 0);
    pid_t b = spawn_rank("sharded-blocks", 1, PATH_SNAPSHOT, STEPS, 0);
    reap(a);
    reap(b);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    expect_whole_in(q, "sharded-blocks", 1, block_fmts, 4);
    ag_client_close(q);
}

Test(ranks, two_ranks_counts_of_halves_are_summed_into_the_whole_tensor) {
    harness_start(&H, NULL);
    pid_t a = spawn_rank("counted", 0, PATH_COUNTS, STEPS, 0);
    pid_t b = spawn_rank("counted", 1, PATH_COUNTS, STEPS, 0);
    reap(a);
    reap(b);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    expect_whole(q, "counted", 0);
    ag_history_query hq = {.run = "counted", .tensor = tensors[0], .format = "E5M2"};
    ag_history *h = NULL;
    cr_assert_eq(ag_client_history(q, &hq, &h), AG_OK);
    for (size_t i = 0; i < h->n; i++) {
        cr_expect_eq(h->points[i].flips, AG_FLIPS_UNKNOWN, "no flips were sent");
        cr_expect_str_eq(h->points[i].computed, "device");
    }
    ag_free(h);
    /* downsampled through the rollups: still whole, ranks 2 */
    hq.every = 10;
    cr_assert_eq(ag_client_history(q, &hq, &h), AG_OK);
    cr_assert_eq(h->n, 2);
    cr_expect_eq(h->points[0].ranks, 2);
    cr_expect_eq(h->points[0].complete, 1);
    ag_free(h);
    ag_client_close(q);
}

Test(ranks, a_rank_that_stops_early_leaves_incomplete_steps_with_the_ranks_that_reported) {
    /* Rank 1 logs the first half of the steps and leaves; the steps rank 0
     * logs after that are stored once every rank ended (rank 0's close). */
    harness_start(&H, NULL);
    pid_t a = spawn_rank("early", 0, PATH_SNAPSHOT, STEPS, 0);
    pid_t b = spawn_rank("early", 1, PATH_SNAPSHOT, STEPS / 2, 0);
    reap(b);
    reap(a);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    for (size_t t = 0; t < NT; t++) {
        ag_history *h = harness_wait_history(q, "early", tensors[t], "E5M2", STEPS);
        cr_assert_eq(h->n, STEPS);
        for (uint64_t s = 0; s < STEPS; s++) {
            const ag_history_point *p = &h->points[s];
            int whole_step = s < STEPS / 2;
            cr_expect_eq(p->ranks, whole_step ? 2 : 1, "step %llu", (unsigned long long)s);
            cr_expect_eq(p->complete, whole_step, "step %llu", (unsigned long long)s);
            if (!whole_step) cr_expect_eq(p->flips, AG_FLIPS_UNKNOWN);
        }
        ag_free(h);
        /* a bucket holding an incomplete step is incomplete, with its fewest ranks */
        ag_history_query hq = {.run = "early", .tensor = tensors[t], .every = STEPS};
        cr_assert_eq(ag_client_history(q, &hq, &h), AG_OK);
        cr_assert_eq(h->n, 1);
        cr_expect_eq(h->points[0].ranks, 1);
        cr_expect_eq(h->points[0].complete, 0);
        ag_free(h);
    }
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK);
    ag_run_info *r = find_run(runs, "early");
    cr_expect_eq(r->world_size, 2);
    cr_expect_eq(r->ranks_seen, 2);
    cr_expect_eq(r->incomplete, NT * (STEPS / 2));
    ag_free(runs);
    ag_client_close(q);
}

Test(ranks, a_replicated_tensor_logged_by_both_ranks_is_counted_once) {
    harness_start(&H, NULL);
    pid_t a = spawn_rank("repl", 0, PATH_SNAPSHOT, 4, 1);
    pid_t b = spawn_rank("repl", 1, PATH_SNAPSHOT, 4, 1);
    reap(a);
    reap(b);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    ag_history *h = harness_wait_history(q, "repl", "shared.bias", "E5M2", 4);
    cr_assert_eq(h->n, 4);
    static float w[N], g[N];
    ag_amax_history *hist = NULL;
    ag_amax_history_new(&hist, AG_AMAX_HISTORY_DEFAULT_LEN, AG_AMAX_MAX);
    for (uint64_t s = 0; s < 4; s++) {
        whole(0, s, w, g);
        ag_amax_history_update(hist, w, N);
        float scale =
            (float)ag_compute_scale(ag_amax_history_get(hist), ag_format_get("E5M2"), AG_SCALE_MIN);
        ag_stall_counts k = {0};
        ag_stall_sgd(ag_format_get("E5M2"), scale, LR, w, g, N, &k);
        cr_expect_eq(h->points[s].total, k.total, "counted once, not once per rank");
        cr_expect_eq(h->points[s].stalled, k.stalled);
        cr_expect_eq(h->points[s].ranks, 1);
        cr_expect_eq(h->points[s].complete, 1);
    }
    ag_amax_history_free(hist);
    ag_free(h);
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(q, "repl", &tl), AG_OK);
    for (size_t i = 0; i < tl->n; i++)
        if (strcmp(tl->items[i].name, "shared.bias") == 0)
            cr_expect_eq(tl->items[i].snapshots, 4, "one per step: the second copy is skipped");
    ag_free(tl);
    ag_client_close(q);
}

/* ------------------------------------------------------------ refusals */

Test(ranks, a_rank_outside_its_world_is_refused_at_open) {
    ag_client_opts o = {.ingest_url = "ipc:///nonexistent/a", .query_url = "ipc:///nonexistent/b"};
    ag_client *c = (ag_client *)&o;
    o.rank = 2;
    o.world_size = 2;
    cr_expect_eq(ag_client_open(&c, &o), AG_EINVAL);
    cr_expect_null(c);
    o.rank = 0;
    o.world_size = AG_WORLD_MAX + 1;
    cr_expect_eq(ag_client_open(&c, &o), AG_EINVAL);
    o.world_size = -1;
    cr_expect_eq(ag_client_open(&c, &o), AG_EINVAL);
    cr_expect_neq(strlen(ag_client_last_error(NULL)), 0, "the reason is said");
}

/* Push raw bytes at the daemon's ingest socket. */
static void push_raw(const void *data, size_t len) {
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    cr_assert_eq(nng_send(s, (void *)data, len, 0), 0);
    nng_close(s); /* lingers until sent */
}

static uint64_t rejected_now(ag_client *q) {
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(q, &st), AG_OK);
    uint64_t n = st->rejected;
    ag_free(st);
    return n;
}

static void wait_rejected(ag_client *q, uint64_t want) {
    for (int i = 0; i < 3000 && rejected_now(q) < want; i++) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL); /* poll interval, not a timing assumption */
    }
    cr_assert_geq(rejected_now(q), want);
}

Test(ranks, world_0_and_a_third_rank_of_two_over_the_wire_are_rejected_and_the_daemon_lives) {
    harness_start(&H, NULL);
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    uint64_t before = rejected_now(q);
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = {"raw", 77, 0, 0}};
    m.u.run_start.host = "h";
    m.u.run_start.rank = 1;
    m.u.run_start.world = 2;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    uint8_t *world = memmem(b.data, b.len, "\xa5world", 6);
    uint8_t *rank = memmem(b.data, b.len, "\xa4rank", 5);
    cr_assert(world && rank);
    world[6] = 0x00; /* world 0 */
    push_raw(b.data, b.len);
    world[6] = 0x02;
    rank[5] = 0x02; /* rank 2 of 2: a third rank */
    push_raw(b.data, b.len);
    ag_buf_free(&b);
    wait_rejected(q, before + 2);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(q, &runs), AG_OK, "the daemon answers");
    for (size_t i = 0; i < runs->n; i++) cr_expect_str_neq(runs->items[i].name, "raw");
    ag_free(runs);
    ag_client_close(q);
}

Test(ranks, a_duplicate_rank_an_unlike_shard_and_a_foreign_world_are_dropped_and_counted) {
    static const char *const args[] = {"--shard-timeout-ms", "5000", NULL};
    harness_start(&H, args);
    ag_client *r0 = open_rank("odd", 0, 2);
    ag_client *r1 = open_rank("odd", 1, 2);
    ag_client *dup = open_rank("odd", 1, 2);   /* a second rank 1 */
    ag_client *three = open_rank("odd", 0, 3); /* a world unlike the run's */
    cr_assert(r0 && r1 && dup && three);
    static float w[N], g[N];
    whole(0, 0, w, g);
    cr_assert_eq(ag_client_start_run(r0, 20000), AG_OK); /* the run's world: 2 */
    cr_assert_eq(ag_client_log_sgd(r0, 0, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r0, 20000), AG_OK);
    /* rank 1's shard in bfloat16 while rank 0's was float32: unlike */
    uint16_t bw[HALF], bg[HALF];
    memset(bw, 0, sizeof bw);
    memset(bg, 0, sizeof bg);
    ag_snapshot s = {
        .step = 0, .tensor = "t", .dtype = AG_DTYPE_BF16, .w = bw, .g = bg, .n = HALF, .lr = LR};
    cr_assert_eq(ag_client_log_snapshot(r1, &s), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    /* in the update form: unlike too */
    cr_assert_eq(ag_client_log_update(r1, 0, "t", w + HALF, g + HALF, HALF), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    /* the real rank 1, then its duplicate */
    cr_assert_eq(ag_client_log_sgd(r1, 1, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    cr_assert_eq(ag_client_log_sgd(dup, 1, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(dup, 20000), AG_OK);
    cr_assert_eq(ag_client_log_sgd(three, 1, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(three, 20000), AG_OK);
    cr_assert_eq(ag_client_log_sgd(r0, 1, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r0, 20000), AG_OK);
    ag_history *h = harness_wait_history(r0, "odd", "t", "E5M2", 2);
    cr_expect_eq(h->points[0].ranks, 1, "step 0: only rank 0's shard was like its step's");
    cr_expect_eq(h->points[0].complete, 0);
    cr_expect_eq(h->points[1].ranks, 2, "step 1: ranks 0 and 1");
    cr_expect_eq(h->points[1].complete, 1);
    uint64_t step0_total = h->points[0].total, step0_stalled = h->points[0].stalled;
    ag_free(h);
    /* rank 1's shard of step 0 after the step was stored incomplete: too late,
     * it must not replace rank 0's rows with its own */
    cr_assert_eq(ag_client_log_sgd(r1, 0, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    /* a second copy of rank 1's shard of the whole step 1: it must not start
     * the step again (and, waiting alone, replace the whole tensor's rows) */
    cr_assert_eq(ag_client_log_sgd(dup, 1, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(dup, 20000), AG_OK);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(r0, &runs), AG_OK);
    ag_run_info *r = find_run(runs, "odd");
    cr_expect_eq(r->world_size, 2);
    cr_expect_eq(r->dropped, 6, "bf16, update form, duplicate twice, foreign world, late");
    cr_expect_str_eq(r->rank_drops, "{\"0\":1,\"1\":5}");
    ag_free(runs);
    h = harness_wait_history(r0, "odd", "t", "E5M2", 2);
    cr_expect_eq(h->n, 2);
    cr_expect_eq(h->points[0].total, step0_total, "step 0 still holds rank 0's shard");
    cr_expect_eq(h->points[0].stalled, step0_stalled);
    cr_expect_eq(h->points[1].ranks, 2, "step 1 is still the whole tensor's");
    cr_expect_eq(h->points[1].complete, 1);
    ag_free(h);
    cr_assert_eq(ag_client_runs(r0, &runs), AG_OK);
    ag_free(runs);
    ag_client_close(three);
    ag_client_close(dup);
    ag_client_close(r1);
    ag_client_close(r0);
    cr_assert_eq(harness_stop(&H, SIGTERM), 0, "the daemon stops cleanly");
}

Test(ranks, a_stop_stores_waiting_steps_incomplete_and_a_restart_keeps_the_world_and_ranks) {
    harness_start(&H, NULL);
    ag_client *r0 = open_rank("restart", 0, 2), *r1 = open_rank("restart", 1, 2);
    cr_assert(r0 && r1);
    static float w[N], g[N];
    whole(0, 0, w, g);
    cr_assert_eq(ag_client_start_run(r1, 20000), AG_OK);
    cr_assert_eq(ag_client_log_sgd(r0, 0, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r0, 20000), AG_OK);
    /* SIGTERM with rank 1's shard of step 0 never sent: stored incomplete */
    cr_assert_eq(harness_stop(&H, SIGTERM), 0);
    harness_start(&H, NULL);
    ag_history *h = harness_wait_history(r0, "restart", "t", "E5M2", 1);
    cr_expect_eq(h->points[0].ranks, 1);
    cr_expect_eq(h->points[0].complete, 0);
    ag_stall_counts k = {0}; /* rank 0's half only, at its own amax's scale */
    float amax = 0;
    uint64_t bad = 0;
    ag_amax(w, HALF, &amax, &bad);
    float scale = (float)ag_compute_scale(amax, ag_format_get("E5M2"), AG_SCALE_MIN);
    ag_stall_sgd(ag_format_get("E5M2"), scale, LR, w, g, HALF, &k);
    cr_expect_eq(h->points[0].total, k.total);
    cr_expect_eq(h->points[0].stalled, k.stalled);
    cr_expect_eq(h->points[0].scale, (double)scale, "the scale of the shards that reported");
    ag_free(h);
    /* the run's world and the clients' ranks came back from the database */
    cr_assert_eq(ag_client_log_sgd(r0, 1, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_log_sgd(r1, 1, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r0, 20000), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    h = harness_wait_history(r0, "restart", "t", "E5M2", 2);
    cr_expect_eq(h->points[1].ranks, 2);
    cr_expect_eq(h->points[1].complete, 1);
    ag_free(h);
    ag_client_close(r1);
    ag_client_close(r0);
}

Test(ranks, metrics_show_each_runs_incomplete_steps_and_each_ranks_drops) {
    static const char *const args[] = {"--http", "127.0.0.1:0", NULL};
    harness_start(&H, args);
    ag_client *r0 = open_rank("metered", 0, 2), *r1 = open_rank("metered", 1, 2);
    cr_assert(r0 && r1);
    static float w[N], g[N];
    whole(0, 0, w, g);
    cr_assert_eq(ag_client_start_run(r1, 20000), AG_OK);
    for (uint64_t s = 0; s < 3; s++)
        cr_assert_eq(ag_client_log_sgd(r0, s, "t", w, g, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_log_sgd(r1, 0, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    /* rank 1 sends its shard of step 0 again: a drop of rank 1 */
    cr_assert_eq(ag_client_log_sgd(r1, 0, "t", w + HALF, g + HALF, HALF, LR), AG_OK);
    cr_assert_eq(ag_client_flush(r1, 20000), AG_OK);
    ag_client_close(r1); /* steps 1 and 2 wait for rank 1's shards ... */
    ag_client_close(r0); /* ... until every rank ended: stored incomplete */
    ag_client *q = harness_client(&H, "reader", AG_QUEUE_DROP);
    ag_history *h = harness_wait_history(q, "metered", "t", "E5M2", 3);
    ag_free(h);
    char *m = harness_http_get(&H, "/metrics");
    cr_expect_not_null(strstr(m, "\naltgrad_run_incomplete_steps{run=\"metered\"} 2\n"), "%s", m);
    cr_expect_not_null(strstr(m, "\naltgrad_rank_dropped_total{run=\"metered\",rank=\"1\"} 1\n"),
                       "%s", m);
    cr_expect_null(strstr(m, "rank=\"0\""), "rank 0 lost nothing");
    cr_expect_not_null(strstr(m, "\naltgrad_dropped_total 1\n"), "the names kept: %s", m);
    free(m);
    ag_client_close(q);
}

/* One rank's shard of each of two tensors, with its quantization error. */
static void send_qerr_shard(ag_client *c, const double amax[2], const double mse[2],
                            const double sqnr[2]) {
    static const char *const names[2] = {"zeros.bias", "exact.bias"};
    static const char *const fmts[1] = {"E5M2"};
    uint64_t numel[2] = {10, 10}, nonfinite[2] = {0, 0}, counts[2 * 5] = {0};
    float scales[2] = {1, 1};
    ag_counts_batch b = {.step = 1,
                         .form = AG_FORM_UPDATE,
                         .ntensors = 2,
                         .nformats = 1,
                         .tensors = names,
                         .formats = fmts,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts,
                         .mse = mse,
                         .sqnr_db = sqnr};
    cr_assert_eq(ag_client_log_counts(c, &b), AG_OK, "%s", ag_client_last_error(c));
    cr_assert_eq(ag_client_flush(c, 20000), AG_OK);
}

/* The shards' errors combine into the whole tensor's: Σ (Q(w) - w)² = mse ·
 * finite elements and Σ w² from sqnr_db, per shard. An all-zero shard
 * (amax 0, mse 0, no sqnr_db) adds nothing; an exact shard of nonzero
 * weights (mse 0, amax > 0) leaves the signal, so sqnr_db, unknown. */
Test(ranks, the_shards_quantization_errors_combine_into_the_whole_tensors) {
    harness_start(&H, NULL);
    ag_client *r0 = open_rank("qerr", 0, 2), *r1 = open_rank("qerr", 1, 2);
    cr_assert(r0 && r1);
    const double amax0[2] = {0, 2}, mse0[2] = {0, 0}, sqnr0[2] = {NAN, NAN};
    const double amax1[2] = {1, 1}, mse1[2] = {0.1, 0.1}, sqnr1[2] = {20, 20};
    send_qerr_shard(r0, amax0, mse0, sqnr0);
    send_qerr_shard(r1, amax1, mse1, sqnr1);
    /* shard 1: Σ err = 0.1 * 10 = 1, Σ w² = 1 * 10^2 = 100; 20 elements in all */
    ag_history *h = harness_wait_history(r0, "qerr", "zeros.bias", "E5M2", 1);
    cr_assert_eq(h->n, 1);
    cr_expect_eq(h->points[0].ranks, 2);
    cr_expect(fabs(h->points[0].mse - 0.05) < 1e-15, "mse %a", h->points[0].mse);
    cr_expect(fabs(h->points[0].sqnr_db - 20) < 1e-12, "sqnr_db %a", h->points[0].sqnr_db);
    ag_free(h);
    h = harness_wait_history(r0, "qerr", "exact.bias", "E5M2", 1);
    cr_assert_eq(h->n, 1);
    cr_expect(fabs(h->points[0].mse - 0.05) < 1e-15, "mse %a", h->points[0].mse);
    cr_expect(isnan(h->points[0].sqnr_db), "the exact shard's signal is unknown");
    ag_free(h);
    ag_client_close(r0);
    ag_client_close(r1);
}
