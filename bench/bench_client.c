/*
 * bench_client.c - what logging costs a trainer. (1) ns per statistics
 * record (ag_client_log_amax) with no daemon and with a receiver draining the
 * stream, and their ratio (the target: well under 1 us, and about the same
 * either way). (2) the encode cost of a gradient snapshot as a ratio to a
 * memcpy of the same bytes. (3) a step of device-computed counts for a
 * GPT-2-small-sized model (148 tensors, 92 M weights, 5 formats): message
 * bytes against the snapshots it replaces, and encode time against a stats
 * batch of the same tensors. Never run as a test; prints ratios.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>

#include "altgrad/altgrad.h"
#include "proto/proto.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct drain {
    nng_socket s;
    uint64_t messages;
} drain;

/* The stand-in daemon: receive and drop everything. */
static void *drain_main(void *arg) {
    drain *d = arg;
    nng_msg *m;
    while (nng_recvmsg(d->s, &m, 0) == 0) {
        d->messages++;
        nng_msg_free(m);
    }
    return NULL;
}

/* Hand everything queued to the receiver. Not ag_client_flush: that waits
 * for a daemon to confirm delivery, and the receiver here only drains. */
static void drain_queue(ag_client *c) {
    for (int i = 0; i < 10000; i++) {
        ag_client_flush(c, 0); /* queues the open batch */
        ag_client_stats st;
        if (ag_client_get_stats(c, &st) != AG_OK || st.queued == 0) return;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* ns per record over n calls; best of three rounds. */
static double time_records(ag_client *c, size_t n, int daemon_up, uint64_t *dropped) {
    static const char *const names[4] = {"layers.0.attn.q_proj.weight", "layers.0.mlp.up.weight",
                                         "layers.1.attn.q_proj.weight", "lm_head.weight"};
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        double t0 = now_s();
        for (size_t i = 0; i < n; i++)
            ag_client_log_amax(c, i / 4, names[i & 3], AG_ROLE_GRADIENT, 0.5 + (double)(i & 7),
                               4096, 0);
        double ns = (now_s() - t0) * 1e9 / (double)n;
        if (ns < best) best = ns;
        if (daemon_up) drain_queue(c); /* start each round with an empty queue */
    }
    ag_client_stats st;
    ag_client_get_stats(c, &st);
    *dropped = st.records_dropped;
    return best;
}

static int bench_logging(void) {
    char dir[] = "/tmp/ag-bench-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char url[128], qurl[128], path[128];
    snprintf(url, sizeof url, "ipc://%s/ingest.sock", dir);
    snprintf(qurl, sizeof qurl, "ipc://%s/query.sock", dir);
    snprintf(path, sizeof path, "%s/ingest.sock", dir);
    const size_t n = 2000000;
    ag_client_opts o = {
        .ingest_url = url, .query_url = qurl, .run = "bench", .close_timeout_ms = 100};

    ag_client *c = NULL;
    if (ag_client_open(&c, &o) != AG_OK) return 1;
    uint64_t dropped_absent = 0;
    double absent = time_records(c, n, 0, &dropped_absent);
    ag_client_close(c);

    drain d = {.messages = 0};
    if (nng_pull0_open(&d.s) != 0 || nng_listen(d.s, url, NULL, 0) != 0) {
        fprintf(stderr, "bench_client: cannot listen on %s\n", url);
        return 1;
    }
    nng_socket_set_size(d.s, NNG_OPT_RECVMAXSZ, AG_PROTO_MAX_MESSAGE);
    pthread_t th;
    pthread_create(&th, NULL, drain_main, &d);
    if (ag_client_open(&c, &o) != AG_OK) return 1;
    uint64_t dropped_up = 0;
    double up = time_records(c, n, 1, &dropped_up);
    ag_client_close(c);
    nng_close(d.s);
    pthread_join(th, NULL);
    unlink(path);
    rmdir(dir);

    printf("stats record, no daemon:          %8.1f ns/call  (%llu of %zu records dropped)\n",
           absent, (unsigned long long)dropped_absent, 3 * n);
    printf("stats record, receiver draining:  %8.1f ns/call  (%llu dropped, %llu messages)\n", up,
           (unsigned long long)dropped_up, (unsigned long long)d.messages);
    printf("ratio daemon up / no daemon:      %8.2f\n", up / absent);
    return 0;
}

static int bench_snapshot(void) {
    const size_t n = 4u << 20; /* 4 Mi elements: 32 MiB of w and g */
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    size_t cap = 2 * n * sizeof(float) + 4096;
    uint8_t *out = malloc(cap);
    if (!w || !g || !out) return 1;
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)i * 1e-3f;
        g[i] = (float)(i % 97) * 1e-5f;
    }
    memset(out, 0, cap);
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr.run = "bench";
    m.hdr.client_id = 1;
    const char *fmts[2] = {"E5M2", "E3M4"};
    m.u.snapshot = (ag_msg_snapshot){.step = 1,
                                     .tensor = "layers.0.mlp.up.weight",
                                     .dtype = AG_DTYPE_F32,
                                     .lr = 0.01,
                                     .n = n,
                                     .nformats = 2,
                                     .formats = fmts,
                                     .w = w,
                                     .x = g};
    double best_copy = 1e30, best_enc = 1e30;
    size_t len = 0;
    for (int round = 0; round < 7; round++) {
        double t0 = now_s();
        memcpy(out, w, n * sizeof *w);
        memcpy(out + n * sizeof *w, g, n * sizeof *g);
        double t1 = now_s();
        ag_buf b;
        ag_buf_init_fixed(&b, out, cap);
        if (ag_proto_encode(&b, &m) != AG_OK) return 1;
        double t2 = now_s();
        len = b.len;
        if (t1 - t0 < best_copy) best_copy = t1 - t0;
        if (t2 - t1 < best_enc) best_enc = t2 - t1;
    }
    double mib = (double)(2 * n * sizeof(float)) / (1024.0 * 1024.0);
    printf("snapshot of %zu x 2 float32 (%.0f MiB, message %zu bytes):\n", n, mib, len);
    printf("  memcpy of the same bytes:       %8.2f ms  (%.1f GiB/s)\n", best_copy * 1e3,
           mib / 1024.0 / best_copy);
    printf("  ag_proto_encode:                %8.2f ms  (%.1f GiB/s)\n", best_enc * 1e3,
           mib / 1024.0 / best_enc);
    printf("  ratio encode / memcpy:          %8.2f\n", best_enc / best_copy);
    free(w);
    free(g);
    free(out);
    return 0;
}

/* A step of counts for 148 tensors (12 layers of 12, 4 more) of about 92 M
 * weights in 5 formats: its size next to the snapshots of the same tensors,
 * and its encode time next to a stats batch of the same tensors. */
static int bench_counts(void) {
    enum { T = 148, F = 5 };
    static char names[T][48];
    static const char *tensors[T];
    static uint64_t numel[T], nonfinite[T], counts[T * F * 5];
    static double amax[T];
    static float scales[T * F];
    static int64_t flips[T * F];
    static ag_stat_record recs[T];
    const char *fmts[F] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    uint64_t weights = 0;
    for (size_t i = 0; i < T; i++) {
        /* per layer (GPT-2 small): attention 768 x 2304 and 768 x 768, MLP two of
         * 768 x 3072, eight biases and norms of 768 */
        static const uint64_t layer[12] = {768 * 2304, 768 * 768, 768 * 3072, 768 * 3072, 768, 768,
                                           768,        768,       768,        768,        768, 768};
        snprintf(names[i], sizeof names[i], "transformer.h.%zu.p%zu.weight", i / 12, i % 12);
        tensors[i] = names[i];
        numel[i] = layer[i % 12];
        weights += numel[i];
        amax[i] = 0.25 + (double)i * 1e-3;
        for (size_t f = 0; f < F; f++) {
            size_t r = i * F + f;
            scales[r] = (float)(amax[i] / 57344.0);
            uint64_t *k = counts + r * 5;
            k[1] = numel[i] - numel[i] / 7;
            k[0] = k[1] / (f + 2);
            k[2] = 0;
            k[3] = numel[i] / 100;
            k[4] = 0;
            flips[r] = (int64_t)(numel[i] / 3);
        }
        recs[i] = (ag_stat_record){1000, tensors[i], AG_ROLE_WEIGHT, amax[i], numel[i], 0};
    }
    ag_msg m = {.type = AG_MSG_COUNTS, .hdr = {"bench", 1, 2, 0}};
    m.u.counts = (ag_msg_counts){.step = 1000,
                                 .form = AG_FORM_UPDATE,
                                 .nformats = F,
                                 .formats = fmts,
                                 .n = T,
                                 .tensors = tensors,
                                 .numel = numel,
                                 .amax = amax,
                                 .nonfinite = nonfinite,
                                 .scales = scales,
                                 .counts = counts,
                                 .flips = flips};
    ag_msg st = {.type = AG_MSG_STATS, .hdr = {"bench", 1, 2, 0}};
    st.u.stats = (ag_msg_stats){T, recs};
    ag_buf b;
    ag_buf_init(&b);
    double best_counts = 1e30, best_stats = 1e30;
    size_t counts_len = 0, stats_len = 0;
    for (int round = 0; round < 200; round++) {
        ag_buf_reset(&b);
        double t0 = now_s();
        if (ag_proto_encode(&b, &m) != AG_OK) return 1;
        double t1 = now_s();
        counts_len = b.len;
        ag_buf_reset(&b);
        double t2 = now_s();
        if (ag_proto_encode(&b, &st) != AG_OK) return 1;
        double t3 = now_s();
        stats_len = b.len;
        if (t1 - t0 < best_counts) best_counts = t1 - t0;
        if (t3 - t2 < best_stats) best_stats = t3 - t2;
    }
    ag_buf_free(&b);
    double snap_bytes = (double)weights * 2 * sizeof(float);
    printf("counts of %d tensors (%.1f M weights) in %d formats, one step:\n", T,
           (double)weights / 1e6, F);
    printf("  message:                        %8zu bytes (%.1f per tensor and format)\n",
           counts_len, (double)counts_len / (T * F));
    printf("  snapshots of the same (w, u):   %8.0f MB;  ratio counts / snapshots %.2g\n",
           snap_bytes / 1e6, (double)counts_len / snap_bytes);
    printf("  encode counts (checked):        %8.1f us\n", best_counts * 1e6);
    printf("  encode stats batch, %d records: %8.1f us (%zu bytes)\n", T, best_stats * 1e6,
           stats_len);
    printf("  ratio counts / stats batch:     %8.2f\n", best_counts / best_stats);
    return 0;
}

int main(void) {
    printf("bench_client (%s)\n", ag_version());
    int rc = bench_logging();
    if (!rc) rc = bench_snapshot();
    if (!rc) rc = bench_counts();
    return rc;
}
