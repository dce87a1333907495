/*
 * bench_core.c - throughput of the core kernels on 16M-element float32
 * arrays, each printed as a ratio to a plain read of the same arrays (the
 * sum of w + g) timed in the same process, each repetition of a kernel
 * right after one of the plain read (the ratio is to the best of those).
 * Best of several repetitions.
 * Targets (issue 2): one-format stall >= 0.5, five formats in one pass >= 0.25.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "core/stall_encode.h"

#define REPS 5

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile float sink;

/* The baseline: read both arrays once, with independent accumulators so the
 * compiler can vectorise without reassociating floating point. */
static void plain_read(const float *w, const float *g, size_t n) {
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += w[i + j] + g[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; i < n; i++) s += w[i] + g[i];
    sink = s;
}

/* The seed's five, then E4M3 and BF16 (issue 14). */
#define NFMT 7
static const char *const fmt_names[NFMT] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0", "E4M3", "BF16"};

typedef struct ctx {
    const float *w, *g;
    float *out;
    uint8_t *bits;
    size_t n;
    const ag_format *fmts[NFMT];
    float scales[NFMT];
    int which;
    uint8_t *enc[NFMT];               /* the daemon's pass: patterns per format */
    const ag_format *fmts9[NFMT + 2]; /* the seven, then MXFP8_E4M3 and NVFP4 */
    float scales9[NFMT + 2];
    uint8_t *enc9[NFMT + 2]; /* their encoded forms (ag_encoded_bytes) */
    uint8_t *prev5[5];       /* the five's patterns of the snapshot before */
} ctx;

static void run_plain(ctx *c) { plain_read(c->w, c->g, c->n); }

static void run_stall_one(ctx *c) {
    ag_stall_counts s = {0};
    ag_stall_sgd(c->fmts[c->which], c->scales[c->which], 0.01f, c->w, c->g, c->n, &s);
    sink = (float)s.stalled;
}

static void run_stall_five(ctx *c) {
    ag_stall_counts s[5] = {{0}};
    ag_stall_sgd_multi(c->fmts, c->scales, 5, 0.01f, c->w, c->g, c->n, s);
    sink = (float)s[0].stalled;
}

static void run_stall_seven(ctx *c) {
    ag_stall_counts s[NFMT] = {{0}};
    ag_stall_sgd_multi(c->fmts, c->scales, NFMT, 0.01f, c->w, c->g, c->n, s);
    sink = (float)s[0].stalled;
}

/* The seven and two block-scaled formats in one pass (issue 14). */
static void run_stall_nine(ctx *c) {
    ag_stall_counts s[NFMT + 2] = {{0}};
    ag_stall_sgd_multi(c->fmts9, c->scales9, NFMT + 2, 0.01f, c->w, c->g, c->n, s);
    sink = (float)s[0].stalled;
}

static void run_stall_block(ctx *c) {
    ag_stall_counts s = {0};
    ag_stall_sgd(c->fmts9[c->which], c->scales9[c->which], 0.01f, c->w, c->g, c->n, &s);
    sink = (float)s.stalled;
}

/* What altgradd runs on a snapshot: counts, the patterns of every format
 * and the quantization error, in one pass. */
static void run_daemon_pass(ctx *c) {
    ag_stall_counts s[NFMT] = {{0}};
    ag_quant_error q[NFMT] = {{0}};
    ag_stall_encode_multi(c->fmts, c->scales, NFMT, 0, 0.01f, c->w, c->g, c->n, s, c->enc, q);
    sink = (float)s[0].stalled + (float)q[0].sq_error;
}

/* The daemon's pass over the seven and MXFP8_E4M3 and NVFP4 (block scale
 * codes, element patterns and error at the block scales too). */
static void run_daemon_pass_nine(ctx *c) {
    ag_stall_counts s[NFMT + 2] = {{0}};
    ag_quant_error q[NFMT + 2] = {{0}};
    ag_stall_encode_multi(c->fmts9, c->scales9, NFMT + 2, 0, 0.01f, c->w, c->g, c->n, s, c->enc9,
                          q);
    sink = (float)s[0].stalled + (float)q[NFMT].sq_error;
}

/* The same without the quantization error: what it costs. */
static void run_daemon_pass_noerr(ctx *c) {
    ag_stall_counts s[NFMT] = {{0}};
    ag_stall_encode_multi(c->fmts, c->scales, NFMT, 0, 0.01f, c->w, c->g, c->n, s, c->enc, NULL);
    sink = (float)s[0].stalled;
}

/* What altgradd does with a snapshot of the five (bench_ingest's):
 * amax, then counts, patterns, quantization error and the pattern flips
 * against the last snapshot's patterns (prev5, as bytes) in one pass. */
static void run_snapshot_job(ctx *c) {
    float m;
    uint64_t bad, flips = 0;
    ag_amax(c->w, c->n, &m, &bad);
    ag_stall_counts s[5] = {{0}};
    ag_quant_error q[5] = {{0}};
    uint64_t f5[5] = {0};
    const uint8_t *prev[5] = {c->prev5[0], c->prev5[1], c->prev5[2], c->prev5[3], c->prev5[4]};
    ag_stall_encode_flips_multi(c->fmts, c->scales, 5, 0, 0.01f, c->w, c->g, c->n, s, c->enc, q,
                                prev, f5);
    for (int i = 0; i < 5; i++) flips += f5[i];
    sink = (float)s[0].stalled + (float)q[0].sq_error + (float)flips;
}

static void run_encode(ctx *c) {
    ag_encode_array(c->fmts[c->which], c->scales[c->which], c->w, c->bits, c->n);
}

static void run_quantize(ctx *c) {
    ag_quantize(c->fmts[c->which], c->scales[c->which], c->w, c->out, c->n);
}

static void run_amax(ctx *c) {
    float m;
    uint64_t bad;
    ag_amax(c->w, c->n, &m, &bad);
    sink = m;
}

/* The plain read timed alongside the last best_time: each line's ratio is
 * to the baseline of its own moments, so a shared machine whose speed
 * drifts during the run moves both sides of it alike. */
static double line_base = INFINITY;

/* fn's best of REPS, each repetition after one of the plain read (whose
 * best goes to line_base). */
static double best_time(void (*fn)(ctx *), ctx *c) {
    double best = INFINITY, base = INFINITY;
    for (int r = 0; r < REPS; r++) {
        double t0 = now();
        run_plain(c);
        double t1 = now();
        fn(c);
        double t2 = now();
        base = t1 - t0 < base ? t1 - t0 : base;
        best = t2 - t1 < best ? t2 - t1 : best;
    }
    line_base = base;
    return best;
}

int main(int argc, char **argv) {
    size_t n = (size_t)16 << 20;
    if (argc > 1) n = (size_t)strtoull(argv[1], NULL, 10);
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g), *out = malloc(n * sizeof *out);
    uint8_t *bits = malloc(2 * n);
    if (!w || !g || !out || !bits) {
        fprintf(stderr, "bench_core: out of memory\n");
        return 1;
    }
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w[i] = (float)((double)(s >> 11) * 0x1p-53 * 2.0 - 1.0);
        g[i] = (float)((double)(s & 0xffffff) * 0x1p-24 - 0.5) * 1e-2f;
    }
    ctx c = {w, g, out, bits, n, {0}, {0}, 0, {0}, {0}, {0}, {0}, {0}};
    for (int i = 0; i < NFMT; i++) {
        c.fmts[i] = ag_format_get(fmt_names[i]);
        c.scales[i] = (float)ag_compute_scale(1.0, c.fmts[i], AG_SCALE_MIN);
        c.enc[i] = malloc(n * (size_t)c.fmts[i]->pattern_bytes);
        if (!c.enc[i]) {
            fprintf(stderr, "bench_core: out of memory\n");
            return 1;
        }
    }
    for (int i = 0; i < NFMT; i++) {
        c.fmts9[i] = c.fmts[i];
        c.scales9[i] = c.scales[i];
    }
    c.fmts9[NFMT] = ag_format_get("MXFP8_E4M3");
    c.scales9[NFMT] = 1.0f; /* MX: no tensor scale */
    c.fmts9[NFMT + 1] = ag_format_get("NVFP4");
    c.scales9[NFMT + 1] = 1.0f / (448.0f * 6.0f); /* S = amax / (448 * 6), amax 1 */
    for (int i = 0; i < NFMT + 2; i++) {
        c.enc9[i] = i < NFMT ? c.enc[i] : malloc(ag_encoded_bytes(c.fmts9[i], n));
        if (!c.enc9[i]) {
            fprintf(stderr, "bench_core: out of memory\n");
            return 1;
        }
    }
    for (int i = 0; i < 5; i++) { /* the last snapshot: these weights a little moved */
        float *wp = out;
        for (size_t k = 0; k < n; k++) wp[k] = w[k] + g[k] * 0.5f;
        if (!(c.prev5[i] = malloc(n)) ||
            ag_encode_array(c.fmts[i], c.scales[i], wp, c.prev5[i], n) != AG_OK) {
            fprintf(stderr, "bench_core: out of memory\n");
            return 1;
        }
    }
    best_time(run_plain, &c); /* warm the pages */
    best_time(run_plain, &c);
    double base_rate = (double)n / line_base;
    printf("bench_core: n = %zu float32, best of %d, kernels: %s (AG_ISA=base|avx2|avx512 picks)\n",
           n, REPS, ag_isa_name(ag_isa_current()));
    printf("%-28s %12s %8s\n", "kernel", "Melem/s", "ratio");
    printf("%-28s %12.1f %8.3f\n", "plain read (sum w+g)", base_rate / 1e6, 1.0);
    for (int i = 0; i < NFMT; i++) {
        c.which = i;
        double t = best_time(run_stall_one, &c);
        char name[64];
        snprintf(name, sizeof name, "stall_sgd %s", c.fmts[i]->name);
        printf("%-28s %12.1f %8.3f\n", name, (double)n / t / 1e6, line_base / t);
    }
    double t5 = best_time(run_stall_five, &c);
    printf("%-28s %12.1f %8.3f   (target >= 0.25)\n", "stall_sgd_multi 5 formats",
           (double)n / t5 / 1e6, line_base / t5);
    double t7 = best_time(run_stall_seven, &c);
    printf("%-28s %12.1f %8.3f\n", "stall_sgd_multi 5+E4M3+BF16", (double)n / t7 / 1e6,
           line_base / t7);
    double t9 = best_time(run_stall_nine, &c);
    printf("%-28s %12.1f %8.3f   (one pass: 5+E4M3+BF16+MXFP8_E4M3+NVFP4)\n",
           "stall_sgd_multi 7+MX+NV", (double)n / t9 / 1e6, line_base / t9);
    for (int i = NFMT; i < NFMT + 2; i++) {
        c.which = i;
        double t = best_time(run_stall_block, &c);
        char name[64];
        snprintf(name, sizeof name, "stall_sgd %s", c.fmts9[i]->name);
        printf("%-28s %12.1f %8.3f\n", name, (double)n / t / 1e6, line_base / t);
    }
    double td = best_time(run_daemon_pass, &c);
    printf("%-28s %12.1f %8.3f   (counts, patterns, quantization error)\n",
           "daemon pass 5+E4M3+BF16", (double)n / td / 1e6, line_base / td);
    double td9 = best_time(run_daemon_pass_nine, &c);
    printf("%-28s %12.1f %8.3f   (the same with MXFP8_E4M3 and NVFP4)\n", "daemon pass 7+MX+NV",
           (double)n / td9 / 1e6, line_base / td9);
    double tn = best_time(run_daemon_pass_noerr, &c);
    printf("%-28s %12.1f %8.3f   (counts, patterns)\n", "  the same, no quant. error",
           (double)n / tn / 1e6, line_base / tn);
    double tj = best_time(run_snapshot_job, &c);
    printf("%-28s %12.1f %8.3f   (amax; counts, patterns, error; flips: altgradd's work)\n",
           "snapshot job 5 formats", (double)n / tj / 1e6, line_base / tj);
    c.which = 3;
    double te = best_time(run_encode, &c);
    printf("%-28s %12.1f %8.3f\n", "encode_array E5M2", (double)n / te / 1e6, line_base / te);
    c.which = 6;
    double tb = best_time(run_encode, &c);
    printf("%-28s %12.1f %8.3f\n", "encode_array BF16", (double)n / tb / 1e6, line_base / tb);
    c.which = 3;
    double tq = best_time(run_quantize, &c);
    printf("%-28s %12.1f %8.3f\n", "quantize E5M2", (double)n / tq / 1e6, line_base / tq);
    double ta = best_time(run_amax, &c);
    printf("%-28s %12.1f %8.3f\n", "amax", (double)n / ta / 1e6, line_base / ta);
    free(w);
    free(g);
    free(out);
    free(bits);
    for (int i = 0; i < NFMT; i++) free(c.enc[i]);
    for (int i = NFMT; i < NFMT + 2; i++) free(c.enc9[i]);
    for (int i = 0; i < 5; i++) free(c.prev5[i]);
    return 0;
}
