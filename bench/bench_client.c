/*
 * bench_client.c - what logging costs a trainer. (1) ns per statistics
 * record (ag_client_log_amax) with no daemon and with a receiver draining the
 * stream, and their ratio (the target: well under 1 us, and about the same
 * either way). (2) the encode cost of a gradient snapshot as a ratio to a
 * memcpy of the same bytes. Never run as a test; prints ratios.
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

int main(void) {
    printf("bench_client (%s)\n", ag_version());
    int rc = bench_logging();
    if (!rc) rc = bench_snapshot();
    return rc;
}
