/*
 * bench_ingest.c - the daemon end to end. (1) statistics records: client ->
 * altgradd -> committed in SQLite, as a ratio to inserting the same rows
 * straight into SQLite through the store in this process (target >= 0.5).
 * (2) gradient snapshots with all five formats evaluated, in MB/s beside a
 * memcpy of the same bytes. (3) the daemon's RSS holding 1000 tensors x 5
 * formats. Starts the real altgradd ($AG_BUILD_DIR/daemon/altgradd, else
 * ../daemon/altgradd next to this binary) on temporary sockets.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"
#include "bench_daemon.h"
#include "tests/tmpdir.h"

#define TENSORS 1000
#define STATS_STEPS 200 /* 200,000 records */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef bench_daemon daemon_proc;

/* Start altgradd on a new temporary folder (threads: its --threads, NULL
 * for the default: one per core; budget_mib: its --state-budget). */
static int daemon_start_opts(daemon_proc *d, const char *threads, const char *budget_mib) {
    strcpy(d->dir, "/tmp/ag_bench_XXXXXX");
    if (!mkdtemp(d->dir)) return -1;
    bench_daemon_paths(d);
    const char *extra[] = {"--log-level",
                           "warning",
                           "--threads",
                           threads ? threads : "0",
                           "--state-budget",
                           budget_mib ? budget_mib : "4096",
                           NULL};
    return bench_daemon_start(d, extra, "bench_ingest");
}

static int daemon_start_threads(daemon_proc *d, const char *threads) {
    return daemon_start_opts(d, threads, NULL);
}

static int daemon_start(daemon_proc *d) { return daemon_start_threads(d, NULL); }

static void daemon_stop(daemon_proc *d) {
    bench_daemon_stop(d);
    ag_tmpdir_remove(d->dir);
}

/* A line of /proc/PID/status ("VmRSS", "VmHWM": the peak) in KiB. */
static long status_kib(pid_t pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    size_t klen = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':' &&
            sscanf(line + klen + 1, "%ld", &kib) == 1)
            break;
    if (f) fclose(f);
    return kib;
}

static long rss_kib(pid_t pid) { return status_kib(pid, "VmRSS"); }

static ag_client *client(daemon_proc *d, const char *run) {
    ag_client_opts o = {.ingest_url = d->ingest,
                        .query_url = d->query,
                        .run = run,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000};
    ag_client *c = NULL;
    return ag_client_open(&c, &o) == AG_OK ? c : NULL;
}

/* Wait until the database holds every message the client sent for its run. */
static int wait_committed(ag_client *c) {
    ag_client_stats cs;
    for (int i = 0; i < 60000; i++) {
        ag_client_get_stats(c, &cs);
        ag_run_list *runs = NULL;
        if (ag_client_runs(c, &runs) == AG_OK) {
            int done = 0;
            for (size_t k = 0; k < runs->n; k++)
                if (strcmp(runs->items[k].name, ag_client_run(c)) == 0 && cs.queued == 0 &&
                    runs->items[k].messages >= cs.sent)
                    done = 1;
            ag_free(runs);
            if (done) return 0;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static double baseline_inserts(size_t tensors, size_t steps) {
    char dir[] = "/tmp/ag_bench_XXXXXX", path[128];
    if (!mkdtemp(dir)) return 0;
    snprintf(path, sizeof path, "%s/direct.db", dir);
    ag_store *st = NULL;
    if (ag_store_open(&st, path, AG_STORE_CREATE)) {
        ag_store_close(st);
        return 0;
    }
    double t0 = now_s();
    size_t rows = 0;
    ag_store_begin(st);
    for (size_t s = 1; s <= steps; s++)
        for (size_t t = 1; t <= tensors; t++) {
            ag_store_stats_row r = {(int64_t)t, AG_ROLE_GRADIENT, s, 0.5 + (double)(t & 7), 4096, 0,
                                    1};
            ag_store_put_stats(st, &r);
            if (++rows % 20000 == 0) {
                ag_store_commit(st);
                ag_store_begin(st);
            }
        }
    ag_store_commit(st);
    double dt = now_s() - t0;
    ag_store_close(st);
    ag_tmpdir_remove(dir);
    return (double)rows / dt;
}

static double daemon_records(daemon_proc *d, size_t tensors, size_t steps) {
    ag_client *c = client(d, "bench-stats");
    if (!c) return 0;
    char(*names)[48] = malloc(tensors * sizeof *names);
    if (!names) return 0;
    for (size_t t = 0; t < tensors; t++)
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
    /* Warm the connection (and the run) before timing. */
    ag_client_log_amax(c, 0, names[0], AG_ROLE_GRADIENT, 1.0, 4096, 0);
    ag_client_flush(c, -1);
    wait_committed(c);
    double t0 = now_s();
    for (size_t s = 1; s <= steps; s++)
        for (size_t t = 0; t < tensors; t++)
            ag_client_log_amax(c, s, names[t], AG_ROLE_GRADIENT, 0.5 + (double)(t & 7), 4096, 0);
    ag_client_flush(c, -1);
    int rc = wait_committed(c);
    double dt = now_s() - t0;
    free(names);
    ag_client_close(c);
    return rc ? 0 : (double)(tensors * steps) / dt;
}

static double memcpy_mbs(size_t bytes) {
    char *a = malloc(bytes), *b = malloc(bytes);
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        memcpy(b, a, bytes);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    volatile char sink = b[bytes / 2];
    (void)sink;
    free(a);
    free(b);
    return (double)bytes / best / 1e6;
}

static double daemon_snapshots(daemon_proc *d, size_t n, size_t steps) {
    ag_client *c = client(d, "bench-snapshots");
    if (!c) return 0;
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)((double)(i % 1000) / 700.0 - 0.7);
        g[i] = (float)((double)(i % 37) * 1e-4);
    }
    double t0 = now_s();
    for (size_t s = 1; s <= steps; s++) ag_client_log_sgd(c, s, "big.weight", w, g, n, 0.01f);
    ag_client_flush(c, -1);
    int rc = wait_committed(c);
    double dt = now_s() - t0;
    free(w);
    free(g);
    ag_client_close(c);
    return rc ? 0 : (double)(2 * n * sizeof(float) * steps) / dt / 1e6;
}

static long daemon_rss_many(daemon_proc *d, size_t tensors, size_t n) {
    ag_client *c = client(d, "bench-rss");
    if (!c) return -1;
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)i / (float)n;
        g[i] = 1e-3f;
    }
    for (size_t s = 1; s <= 2; s++)
        for (size_t t = 0; t < tensors; t++) {
            char name[32];
            snprintf(name, sizeof name, "layer.%zu", t);
            ag_client_log_sgd(c, s, name, w, g, n, 0.01f);
        }
    ag_client_flush(c, -1);
    wait_committed(c);
    free(w);
    free(g);
    ag_client_close(c);
    return rss_kib(d->pid);
}

int main(void) {
    daemon_proc d = {0};
    /* AG_BENCH_ONLY=snapshots: only the two snapshot lines (for a profile of
     * that stream); AG_BENCH_STEPS: snapshots per line (default 20). */
    const char *only = getenv("AG_BENCH_ONLY"), *steps_env = getenv("AG_BENCH_STEPS");
    int snapshots_only = only && strcmp(only, "snapshots") == 0;
    size_t steps = steps_env ? strtoul(steps_env, NULL, 10) : 20;
    if (steps < 1 || steps > 100000) steps = 20;
    size_t n = 1u << 20;
    if (snapshots_only) goto snapshots;
    double direct = baseline_inserts(TENSORS, STATS_STEPS);
    if (daemon_start(&d)) return 1;
    double e2e = daemon_records(&d, TENSORS, STATS_STEPS);
    printf("stats ingest: end-to-end %.0f records/s, direct SQLite inserts %.0f rows/s, "
           "ratio %.2f (target >= 0.5)\n",
           e2e, direct, direct > 0 ? e2e / direct : 0.0);
    daemon_stop(&d);

snapshots:
    if (daemon_start(&d)) return 1;
    double snap = daemon_snapshots(&d, n, steps);
    double mc = memcpy_mbs(2 * n * sizeof(float));
    printf("snapshot ingest (SGD, 5 formats, %zu elements): %.0f MB/s of w+g, memcpy %.0f MB/s, "
           "ratio %.4f (target >= 0.2)\n",
           n, snap, mc, mc > 0 ? snap / mc : 0.0);
    daemon_stop(&d);

    /* The same with one pool thread: what the cores add. */
    if (daemon_start_threads(&d, "1")) return 1;
    double snap1 = daemon_snapshots(&d, n, steps);
    printf("snapshot ingest, 1 pool thread (SGD, 5 formats, %zu elements): %.0f MB/s of w+g, "
           "memcpy %.0f MB/s, ratio %.4f; all cores / one thread %.2fx (target >= 1.7)\n",
           n, snap1, mc, mc > 0 ? snap1 / mc : 0.0, snap1 > 0 ? snap / snap1 : 0.0);
    daemon_stop(&d);
    if (snapshots_only) return 0;

    if (daemon_start(&d)) return 1;
    long rss0 = rss_kib(d.pid);
    long rss = daemon_rss_many(&d, 1000, 1024);
    printf("daemon RSS: %ld KiB at start, %ld KiB holding 1000 tensors x 5 formats "
           "(1024 elements each, 2 snapshots)\n",
           rss0, rss);
    daemon_stop(&d);

    /* Many large tensors in flight against a small budget: the peak RSS. */
    if (daemon_start_opts(&d, NULL, "512")) return 1;
    rss0 = rss_kib(d.pid);
    daemon_rss_many(&d, 96, n);
    long hwm = status_kib(d.pid, "VmHWM");
    printf("daemon peak RSS: %ld KiB (%ld MiB) with --state-budget 512 MiB, 96 tensors x %zu "
           "elements x 2 snapshots offered (%.0f MiB of state if all were kept); %ld KiB at "
           "start\n",
           hwm, hwm / 1024, n, 96.0 * (double)n * 9 / 1048576, rss0);
    daemon_stop(&d);
    return 0;
}
