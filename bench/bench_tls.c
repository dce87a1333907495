/*
 * bench_tls.c - what tls+tcp:// costs the stream. One real altgradd listens
 * for trainers on ipc://, tcp://127.0.0.1 and tls+tcp://127.0.0.1 (client
 * certificates required, from a CA made here by scripts/tls-certs.sh); one
 * client per transport sends the same work, timed until the daemon confirms
 * it committed every message (ag_client_flush): statistics records (small,
 * batched messages) and gradient snapshots (1 M elements, 8 MB each), the
 * transports taking turns, best of 3 rounds. Prints each rate and the ratios
 * tls/ipc and tls/tcp, measured in this process.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "bench_daemon.h"
#include "tests/tmpdir.h"

#define RECORD_TENSORS 1000
#define RECORD_STEPS 100 /* 100,000 records per transport */
#define SNAP_N (1u << 20)
#define SNAP_STEPS 12
#define ROUNDS 3

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char certs_dir[160], cert[200], key[200], ca[200];

static ag_client *open_on(bench_daemon *d, const char *url, const char *run) {
    ag_client_opts o = {.ingest_url = url,
                        .query_url = d->query,
                        .run = run,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000,
                        .close_timeout_ms = 30000,
                        .tls_cert = cert,
                        .tls_key = key,
                        .tls_ca = ca};
    ag_client *c = NULL;
    int rc = ag_client_open(&c, &o);
    if (rc)
        fprintf(stderr, "bench_tls: open %s: %s %s\n", url, ag_strerror(rc),
                ag_client_last_error(NULL));
    return c;
}

/* records/s, committed */
static double records(bench_daemon *d, const char *url, const char *run) {
    ag_client *c = open_on(d, url, run);
    if (!c) return 0;
    static char names[RECORD_TENSORS][24];
    for (size_t t = 0; t < RECORD_TENSORS; t++)
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
    ag_client_log_amax(c, 0, names[0], AG_ROLE_GRADIENT, 1.0, 4096, 0); /* connect first */
    if (ag_client_flush(c, 60000)) return 0;
    double t0 = now_s();
    for (size_t s = 1; s <= RECORD_STEPS; s++)
        for (size_t t = 0; t < RECORD_TENSORS; t++)
            ag_client_log_amax(c, s, names[t], AG_ROLE_GRADIENT, 0.5 + (double)(t & 7), 4096, 0);
    int rc = ag_client_flush(c, 120000);
    double dt = now_s() - t0;
    ag_client_close(c);
    return rc ? 0 : (double)(RECORD_TENSORS * RECORD_STEPS) / dt;
}

/* MB/s of w + g, committed */
static double snapshots(bench_daemon *d, const char *url, const char *run) {
    ag_client *c = open_on(d, url, run);
    if (!c) return 0;
    float *w = malloc(SNAP_N * sizeof *w), *g = malloc(SNAP_N * sizeof *g);
    for (size_t i = 0; i < SNAP_N; i++) {
        w[i] = (float)((double)(i % 1000) / 700.0 - 0.7);
        g[i] = (float)((double)(i % 37) * 1e-4);
    }
    ag_client_log_sgd(c, 0, "big.weight", w, g, SNAP_N, 0.01f); /* connect first */
    int rc = ag_client_flush(c, 60000);
    double t0 = now_s();
    for (size_t s = 1; s <= SNAP_STEPS && !rc; s++)
        ag_client_log_sgd(c, s, "big.weight", w, g, SNAP_N, 0.01f);
    if (!rc) rc = ag_client_flush(c, 120000);
    double dt = now_s() - t0;
    free(w);
    free(g);
    ag_client_close(c);
    return rc ? 0 : (double)(2.0 * SNAP_N * sizeof(float) * SNAP_STEPS) / dt / 1e6;
}

int main(void) {
    bench_daemon d = {0};
    strcpy(d.dir, "/tmp/ag_bench_tls_XXXXXX");
    if (!mkdtemp(d.dir)) return 1;
    bench_daemon_paths(&d);
    snprintf(certs_dir, sizeof certs_dir, "%s/certs", d.dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "s='%s/scripts/tls-certs.sh'; { bash \"$s\" ca %s 2 && bash \"$s\" server %s "
             "daemon 127.0.0.1 && bash \"$s\" client %s bench; } >/dev/null",
             AG_SOURCE_DIR, certs_dir, certs_dir, certs_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_tls: cannot make certificates (openssl?)\n");
        return 1;
    }
    snprintf(cert, sizeof cert, "%s/bench.pem", certs_dir);
    snprintf(key, sizeof key, "%s/bench.key", certs_dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", certs_dir);
    char srv_cert[200], srv_key[200];
    snprintf(srv_cert, sizeof srv_cert, "%s/daemon.pem", certs_dir);
    snprintf(srv_key, sizeof srv_key, "%s/daemon.key", certs_dir);
    /* ports: the pid spreads parallel runs apart */
    char tcp[64], tls[64];
    int port = 20000 + (int)(getpid() % 20000);
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", port);
    snprintf(tls, sizeof tls, "tls+tcp://127.0.0.1:%d", port + 1);
    const char *extra[] = {"--ingest",  tcp,     "--ingest", tls, "--tls-cert", srv_cert,
                           "--tls-key", srv_key, "--tls-ca", ca,  NULL};
    if (bench_daemon_start(&d, extra, "bench_tls")) return 1;

    /* The transports take turns, ROUNDS times; the best of each counts (the
     * machine is shared: a slow round is someone else's load). */
    const char *urls[3] = {d.ingest, tcp, tls}, *label[3] = {"ipc", "tcp", "tls"};
    double rec[3] = {0}, snap[3] = {0};
    for (int r = 0; r < ROUNDS; r++)
        for (int i = 0; i < 3; i++) {
            char run[32];
            snprintf(run, sizeof run, "rec-%s-%d", label[i], r);
            double v = records(&d, urls[i], run);
            if (v > rec[i]) rec[i] = v;
            snprintf(run, sizeof run, "snap-%s-%d", label[i], r);
            v = snapshots(&d, urls[i], run);
            if (v > snap[i]) snap[i] = v;
        }
    bench_daemon_stop(&d);
    ag_tmpdir_remove(certs_dir);
    ag_tmpdir_remove(d.dir);
    printf("best of %d rounds\n", ROUNDS);
    printf("statistics records committed/s (%d records): ipc %.0f, tcp %.0f, tls %.0f; "
           "tls/ipc %.3f, tls/tcp %.3f\n",
           RECORD_TENSORS * RECORD_STEPS, rec[0], rec[1], rec[2], rec[0] ? rec[2] / rec[0] : 0,
           rec[1] ? rec[2] / rec[1] : 0);
    printf("snapshots committed (SGD, 5 formats, %u elements, w+g MB/s): ipc %.0f, tcp %.0f, "
           "tls %.0f; tls/ipc %.3f, tls/tcp %.3f\n",
           SNAP_N, snap[0], snap[1], snap[2], snap[0] ? snap[2] / snap[0] : 0,
           snap[1] ? snap[2] / snap[1] : 0);
    return rec[2] > 0 && snap[2] > 0 ? 0 : 1;
}
