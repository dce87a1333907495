/*
 * page_fixture.c - a database for tests/page/test_page.py and
 * bench/page_load.py: two runs ("big-a",
 * "big-b") of TENSORS x STEPS gradient snapshots in the five built-in
 * formats (5 result rows, one stats row, their rollups), written through the
 * store as the daemon's writer writes them (the way bench_store.c measures
 * the store alone), so a daemon started on the file serves them. Tensor
 * names are a transformer's (blocks.L.attn.q.weight ...); stall rates vary
 * by format, layer, kind and step, so the heatmap has something to show.
 * Run B has dropped messages, so the page shows them.
 *
 *   page_fixture DB [TENSORS [STEPS [STEPS_B]]]   (defaults 500 2000 2000)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"

#define NUMEL 4096
#define NFMT 5
#define BATCH_ROWS 100000

static const char *const FMTS[NFMT] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
static const double FMT_BASE[NFMT] = {0.05, 0.08, 0.18, 0.42, 0.70};
static const char *const PARTS[] = {
    "attn.q.weight",   "attn.k.weight",   "attn.v.weight", "attn.o.weight", "mlp.up.weight",
    "mlp.gate.weight", "mlp.down.weight", "ln1.weight",    "ln2.weight",    "attn.o.bias"};
#define NPARTS (sizeof PARTS / sizeof PARTS[0])

static int check(int rc, ag_store *st, const char *what) {
    if (rc) {
        fprintf(stderr, "page_fixture: %s: %s (%s)\n", what, ag_strerror(rc), ag_store_errmsg(st));
        exit(1);
    }
    return rc;
}

static double noise(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (double)(x & 0xffff) / 65536.0 - 0.5;
}

static double rate_of(size_t t, size_t f, uint64_t s, size_t steps, int run) {
    size_t layer = t / NPARTS, part = t % NPARTS;
    double r = FMT_BASE[f] + 0.25 * (double)layer / 60.0 +
               (part >= 7 ? -0.1 : 0.04 * (double)part) +
               (run ? 0.12 : 0.2) * (double)s / (double)steps +
               0.05 * noise((uint64_t)t * 2654435761u + s * 40503u + f + (uint64_t)run * 7);
    if (part == 3 && s > steps / 2) r += 0.15; /* a tensor that gets worse */
    return r < 0 ? 0 : r > 1 ? 1 : r;
}

static void write_run(ag_store *st, int64_t run_id, const char *name, int64_t first_tensor,
                      size_t tensors, size_t steps, uint64_t dropped) {
    ag_store_run_row run = {.id = run_id,
                            .name = name,
                            .host = "bench",
                            .pid = 1000 + run_id,
                            .client_id = (uint64_t)run_id,
                            .started_ms = 1700000000000 + run_id * 1000};
    check(ag_store_begin(st), st, "begin");
    check(ag_store_put_run(st, &run), st, "run");
    for (size_t t = 0; t < tensors; t++) {
        char tn[64];
        snprintf(tn, sizeof tn, "blocks.%zu.%s", t / NPARTS, PARTS[t % NPARTS]);
        check(ag_store_put_tensor(st, first_tensor + (int64_t)t, run_id, tn, AG_ROLE_WEIGHT), st,
              "tensor");
    }
    check(ag_store_commit(st), st, "commit");
    size_t rows = 0, since = 0;
    check(ag_store_begin(st), st, "begin");
    for (uint64_t s = 1; s <= steps; s++) {
        for (size_t t = 0; t < tensors; t++) {
            int64_t id = first_tensor + (int64_t)t;
            double amax = 0.05 + 0.001 * (double)(t % 37) + 1e-5 * (double)s;
            ag_store_stats_row sr = {id, AG_ROLE_WEIGHT, s, amax, NUMEL, 0, 1};
            check(ag_store_put_stats(st, &sr), st, "stats");
            for (size_t f = 0; f < NFMT; f++) {
                double r = rate_of(t, f, s, steps, run_id != 1);
                ag_store_result_row rr = {
                    .tensor_id = id,
                    .format_id = (int64_t)f + 1,
                    .step = s,
                    .counts = {.stalled = (uint64_t)lround(r * NUMEL), .total = NUMEL},
                    .flips = 3,
                    .amax = amax,
                    .scale = ldexp(1.0, (int)(2 * f) - 8)};
                check(ag_store_put_result(st, &rr), st, "result");
            }
            rows += 16;
            since++;
        }
        if (rows >= BATCH_ROWS || s == steps) {
            for (size_t t = 0; t < tensors; t++) {
                int64_t id = first_tensor + (int64_t)t;
                double amax = 0.05 + 0.001 * (double)(t % 37) + 1e-5 * (double)s;
                ag_store_tensor_delta td = {id, AG_ROLE_WEIGHT, NUMEL, 1, s, since / tensors, amax};
                check(ag_store_apply_tensor_delta(st, &td), st, "tensor delta");
                for (size_t f = 0; f < NFMT; f++)
                    check(ag_store_put_scale(st, id, (int64_t)f + 1, AG_ROLE_WEIGHT, s, amax,
                                             ldexp(1.0, (int)(2 * f) - 8)),
                          st, "scale");
            }
            ag_store_run_delta rd = {
                .run_id = run_id,
                .messages = since,
                .last_step = s,
                .dropped = s == steps ? dropped : 0,
                .ended_ms = s == steps ? 1700000000000 + run_id * 1000 + (int64_t)steps * 100 : 0};
            check(ag_store_apply_run_delta(st, &rd), st, "run delta");
            check(ag_store_add_counter(st, "bytes", rows * 8), st, "counter");
            check(ag_store_commit(st), st, "commit");
            check(ag_store_begin(st), st, "begin");
            rows = 0;
            since = 0;
        }
    }
    check(ag_store_commit(st), st, "commit");
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) {
        fputs("usage: page_fixture DB [TENSORS [STEPS [STEPS_B]]]\n", stderr);
        return 2;
    }
    size_t tensors = argc > 2 ? (size_t)atol(argv[2]) : 500;
    size_t steps = argc > 3 ? (size_t)atol(argv[3]) : 2000;
    size_t steps_b = argc > 4 ? (size_t)atol(argv[4]) : steps;
    if (tensors == 0 || steps == 0 || steps_b == 0) {
        fputs("page_fixture: sizes are positive integers\n", stderr);
        return 2;
    }
    ag_store *st = NULL;
    check(ag_store_open(&st, argv[1], AG_STORE_CREATE), st, argv[1]);
    check(ag_store_begin(st), st, "begin");
    for (int f = 0; f < NFMT; f++)
        check(ag_store_put_format(st, f + 1, ag_format_get(FMTS[f])), st, "format");
    check(ag_store_commit(st), st, "commit");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    write_run(st, 1, "big-a", 1, tensors, steps, 0);
    write_run(st, 2, "big-b", 1 + (int64_t)tensors, tensors, steps_b, 37);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("page_fixture: %s: 2 runs of %zu tensors x %zu / %zu steps x %d formats in %.1f s\n",
           argv[1], tensors, steps, steps_b, NFMT, dt);
    ag_store_close(st);
    return 0;
}
