/*
 * bench_store.c - a long run end to end. Builds one run of TENSORS x STEPS
 * small SGD snapshots (16 elements, the daemon's five formats: 1 M snapshots
 * and 5 M result rows by default) through the real altgradd, and prints:
 *  - ingest rate (snapshots/s, client send to committed) and the largest WAL
 *    seen while busy and once idle;
 *  - bytes per stored result row (file + WAL) beside what the row holds;
 *  - the latency of history, history --every 100, whole-run top, report and
 *    the heatmap (TENSORS x 500 buckets), each beside a full scan of the same
 *    raw rows in the same process (ratio = scan / query);
 *  - the CLI's report and whole-run top through the daemon and with --db.
 * Sizes: AG_BENCH_TENSORS, AG_BENCH_STEPS (ctest runs a small smoke size).
 * AG_BENCH_KEEP_DB=FILE copies the database there at the end (to profile or
 * compare queries on it); AG_BENCH_ONLY=store runs the store's share alone,
 * AG_BENCH_ONLY=ingest the end-to-end ingest alone (AG_BENCH_RATE=N paces it
 * to N snapshots a second), AG_BENCH_ONLY=counts the counts-message ingest
 * alone (AG_BENCH_COUNTS_STEPS steps, else STEPS / 5), AG_BENCH_ONLY=layouts what
 * three layouts of the rows cost the writer (the case for a layout change).
 * Starts $AG_BUILD_DIR/daemon/altgradd (else ../daemon/altgradd next to it).
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"
#include "bench_daemon.h"
#include "tests/tmpdir.h"

#define N 16
#define RUN "long"
#define ROW_BYTES 88 /* what one results row holds: 11 columns of 8 bytes */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t env_size(const char *name, size_t def) {
    const char *v = getenv(name);
    long n = v ? atol(v) : 0;
    return n > 0 ? (size_t)n : def;
}

typedef bench_daemon daemon_proc;

static void build_path(char *out, size_t len, const char *rel) { bench_build_path(out, len, rel); }

/* Start altgradd on d (dir made by the caller) and wait for its READY=1. */
static int daemon_start(daemon_proc *d) {
    const char *extra[] = {"--log-level",
                           getenv("AG_BENCH_LOG") ? getenv("AG_BENCH_LOG") : "warning", NULL};
    return bench_daemon_start(d, extra, "bench_store");
}

static void daemon_stop(daemon_proc *d) { bench_daemon_stop(d); }

static long long file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

static long long wal_size(const daemon_proc *d) {
    char p[160];
    snprintf(p, sizeof p, "%s-wal", d->db);
    return file_size(p);
}

static int committed(ag_client *c, uint64_t want) {
    ag_run_list *runs = NULL;
    int done = 0;
    if (ag_client_runs(c, &runs) == AG_OK) {
        for (size_t k = 0; k < runs->n; k++)
            if (strcmp(runs->items[k].name, RUN) == 0 && runs->items[k].messages >= want) done = 1;
        ag_free(runs);
    }
    return done;
}

/* While the run is ingested: the latency of a query (runs) asked every 50 ms
 * by another client, as a trainer's dashboard would ask. */
typedef struct prober {
    const char *ingest_url, *query_url;
    volatile int stop;
    double worst, sum;
    size_t n;
} prober;

static void *probe(void *arg) {
    prober *p = arg;
    ag_client_opts o = {
        .ingest_url = p->ingest_url, .query_url = p->query_url, .query_timeout_ms = 30000};
    ag_client *c = NULL;
    if (ag_client_open(&c, &o) != AG_OK) return NULL;
    while (!p->stop) {
        ag_run_list *runs = NULL;
        double t0 = now_s();
        if (ag_client_runs(c, &runs) == AG_OK) {
            double dt = now_s() - t0;
            p->sum += dt;
            p->n++;
            if (dt > p->worst) p->worst = dt;
        }
        ag_free(runs);
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    ag_client_close(c);
    return NULL;
}

/* CPU seconds (user + system) process pid has used, from /proc; 0 when
 * unknown. */
static double proc_cpu_s(pid_t pid) {
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *q = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!q || sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A /proc/PID/status field in kB (VmRSS, VmHWM), in MB; 0 if unread. */
static double proc_status_mb(pid_t pid, const char *field) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    double mb = 0;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            mb = strtod(line + n + 1, NULL) / 1024.0;
            break;
        }
    fclose(f);
    return mb;
}

/* Ingest the run; returns snapshots per second (0 on failure). */
static double ingest(daemon_proc *d, size_t tensors, size_t steps, long long *wal_busy) {
    ag_client_opts o = {.ingest_url = d->ingest,
                        .query_url = d->query,
                        .run = RUN,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000};
    ag_client *c = NULL;
    if (ag_client_open(&c, &o) != AG_OK) return 0;
    char(*names)[48] = malloc(tensors * sizeof *names);
    float w[N], g[N];
    for (size_t t = 0; t < tensors; t++)
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
    for (int i = 0; i < N; i++) g[i] = 1e-3f * (float)(i % 5);
    prober pr = {.ingest_url = d->ingest, .query_url = d->query};
    pthread_t probe_thread;
    int probing = pthread_create(&probe_thread, NULL, probe, &pr) == 0;
    double t0 = now_s(), d0 = proc_cpu_s(d->pid), c0 = cpu_now_s();
    /* AG_BENCH_RATE: snapshots a second to send at most (paced a step at a
     * time), for the CPU a snapshot of a stream the writer keeps up with */
    double pace = (double)env_size("AG_BENCH_RATE", 0);
    for (size_t s = 0; s < steps; s++) {
        for (double ahead;
             pace > 0 && (ahead = (double)(s * tensors) / pace - (now_s() - t0)) > 0;) {
            struct timespec ts = {(time_t)ahead, (long)((ahead - (double)(time_t)ahead) * 1e9)};
            nanosleep(&ts, NULL);
        }
        for (size_t t = 0; t < tensors; t++) {
            for (int i = 0; i < N; i++)
                w[i] = (float)(i + 1) * 0.01f * (float)((t % 7) + 1) + (float)s * 1e-6f;
            if (ag_client_log_sgd(c, s, names[t], w, g, N, 0.01f) != AG_OK) {
                fprintf(stderr, "bench_store: send failed at step %zu\n", s);
                return 0;
            }
        }
        if (s % 20 == 0) {
            long long wl = wal_size(d);
            if (wl > *wal_busy) *wal_busy = wl;
        }
    }
    ag_client_flush(c, -1);
    /* The run start is one message; every snapshot is one. */
    uint64_t want = (uint64_t)tensors * steps;
    while (!committed(c, want)) {
        long long wl = wal_size(d);
        if (wl > *wal_busy) *wal_busy = wl;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        if (now_s() - t0 > 3600) return 0;
    }
    double dt = now_s() - t0;
    /* CPU a snapshot: what a shared machine's load does not change */
    printf("  CPU a snapshot while ingesting: daemon %.1f us, this process (client and "
           "probe) %.1f us\n",
           (proc_cpu_s(d->pid) - d0) * 1e6 / (double)want, (cpu_now_s() - c0) * 1e6 / (double)want);
    if (probing) {
        pr.stop = 1;
        pthread_join(probe_thread, NULL);
        printf("  a query (runs) while ingesting: %zu asked, mean %.1f ms, worst %.1f ms\n", pr.n,
               pr.n ? pr.sum * 1e3 / (double)pr.n : 0.0, pr.worst * 1e3);
    }
    free(names);
    ag_client_close(c);
    return (double)want / dt;
}

/* The same tensors' counts computed by the trainer (counts messages, t=5:
 * one message a step with every tensor, five formats) into run "counts";
 * returns tensors per second (each one "snapshot": a stats row and five
 * results rows), 0 on failure. */
static double ingest_counts(daemon_proc *d, size_t tensors, size_t steps, double cpu_us[2]) {
    ag_client_opts o = {.ingest_url = d->ingest,
                        .query_url = d->query,
                        .run = "counts",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000};
    ag_client *c = NULL;
    if (ag_client_open(&c, &o) != AG_OK) return 0;
    static const char *const fmts[] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    static const double maxes[] = {127.0 / 128, 3.96875, 124.0, 57344.0, 18446744073709551616.0};
    char(*names)[48] = malloc(tensors * sizeof *names);
    const char **tn = malloc(tensors * sizeof *tn);
    uint64_t *numel = malloc(tensors * sizeof *numel),
             *nonfinite = calloc(tensors, sizeof *nonfinite);
    double *amax = malloc(tensors * sizeof *amax);
    float *scales = malloc(tensors * 5 * sizeof *scales);
    uint64_t *counts = calloc(tensors * 5 * AG_COUNTS_PER_RESULT, sizeof *counts);
    int64_t *flips = malloc(tensors * 5 * sizeof *flips);
    double t0 = now_s(), d0 = proc_cpu_s(d->pid), c0 = cpu_now_s(), rate = 0;
    for (size_t t = 0; t < tensors; t++) {
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
        tn[t] = names[t];
        numel[t] = N;
    }
    for (size_t s = 0; s < steps; s++) {
        for (size_t t = 0; t < tensors; t++) {
            amax[t] = 0.16 * (double)((t % 7) + 1) + (double)s * 1e-6;
            for (int f = 0; f < 5; f++) {
                size_t k = t * 5 + (size_t)f;
                scales[k] = (float)(amax[t] / maxes[f]);
                counts[k * AG_COUNTS_PER_RESULT] = (s + t + (size_t)f) % N; /* stalled */
                counts[k * AG_COUNTS_PER_RESULT + 1] = N;                   /* total */
                flips[k] = (int64_t)((s + t) % 3);
            }
        }
        ag_counts_batch b = {.step = s,
                             .form = AG_FORM_SGD,
                             .ntensors = tensors,
                             .nformats = 5,
                             .tensors = tn,
                             .formats = fmts,
                             .numel = numel,
                             .amax = amax,
                             .nonfinite = nonfinite,
                             .scales = scales,
                             .counts = counts,
                             .flips = flips};
        if (ag_client_log_counts(c, &b) != AG_OK) {
            fprintf(stderr, "bench_store: counts failed at step %zu\n", s);
            goto out;
        }
    }
    ag_client_flush(c, -1);
    ag_run_list *runs = NULL;
    for (int done = 0; !done && now_s() - t0 < 3600;) {
        if (ag_client_runs(c, &runs) == AG_OK) {
            for (size_t k = 0; k < runs->n; k++)
                if (strcmp(runs->items[k].name, "counts") == 0 && runs->items[k].messages >= steps)
                    done = 1;
            ag_free(runs);
        }
        if (!done) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    rate = (double)(tensors * steps) / (now_s() - t0);
    cpu_us[0] = (proc_cpu_s(d->pid) - d0) * 1e6 / (double)(tensors * steps);
    cpu_us[1] = (cpu_now_s() - c0) * 1e6 / (double)(tensors * steps);
out:
    ag_client_close(c);
    free(names);
    free(tn);
    free(numel);
    free(nonfinite);
    free(amax);
    free(scales);
    free(counts);
    free(flips);
    return rate;
}

/* The writer's share alone: the rows of tensors x steps snapshots (one
 * stats row, five result rows with their rollups; per batch of 100,000 rows
 * (the daemon's) the deltas and scale rows the writer folds) written through
 * the store into a fresh file, in snapshots per second. sorted: each batch's
 * rows by key, as the writer writes them (daemon/writer.c), else in arrival
 * order (step after step across the tensors). *cpu_s: the process's CPU
 * seconds it took (the machine is shared: wall time says less). */
static double store_pages[3]; /* pages written a snapshot, per mode */

static double store_capacity(const char *dir, size_t tensors, size_t steps, int mode,
                             double *cpu_s) {
    int sorted = mode > 0, batched = mode == 2;
    char path[160];
    snprintf(path, sizeof path, "%s/direct-%d.db", dir, mode);
    ag_store *st = NULL;
    if (ag_store_open(&st, path, AG_STORE_CREATE)) {
        ag_store_close(st);
        return 0;
    }
    static const char *const fmts[] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    ag_store_begin(st);
    for (int f = 0; f < 5; f++) ag_store_put_format(st, f + 1, ag_format_get(fmts[f]));
    ag_store_run_row run = {.id = 1, .name = "direct", .host = "h"};
    ag_store_put_run(st, &run);
    for (size_t t = 0; t < tensors; t++) {
        char name[48];
        snprintf(name, sizeof name, "layers.%zu.weight", t);
        ag_store_put_tensor(st, (int64_t)t + 1, 1, name, AG_ROLE_WEIGHT);
    }
    ag_store_commit(st);
    double t0 = now_s(), c0 = cpu_now_s();
    /* steps per batch of about 100,000 rows (16 queued per snapshot);
     * AG_BENCH_STORE_STEPS=K: K steps a transaction (1: a steady stream's
     * commits, a step of every tensor each) */
    size_t per =
        env_size("AG_BENCH_STORE_STEPS", 100000 / 16 / tensors ? 100000 / 16 / tensors : 1);
    ag_store_stats_row *srows = malloc(per * tensors * sizeof *srows);
    ag_store_result_row *rrows = malloc(per * tensors * 5 * sizeof *rrows);
    for (size_t s0 = 0; s0 < steps; s0 += per) {
        size_t s1 = s0 + per < steps ? s0 + per : steps;
        ag_store_begin(st);
        for (size_t i = 0; i < (s1 - s0) * tensors; i++) {
            /* arrival order: i = step-major; sorted: tensor-major */
            size_t t = sorted ? i / (s1 - s0) : i % tensors;
            size_t s = s0 + (sorted ? i % (s1 - s0) : i / tensors);
            ag_store_stats_row sr = {(int64_t)t + 1, AG_ROLE_WEIGHT, s, 0.5, N, 0, 1};
            if (batched)
                srows[i] = sr;
            else
                ag_store_put_stats(st, &sr);
        }
        size_t done = 0;
        if (batched) ag_store_put_stats_rows(st, srows, sizeof *srows, (s1 - s0) * tensors, &done);
        /* arrival: step, tensor, format; sorted: tensor, format, step */
        size_t n = (s1 - s0) * tensors * 5;
        for (size_t i = 0; i < n; i++) {
            size_t t, s;
            int f;
            if (sorted) {
                t = i / ((s1 - s0) * 5);
                f = (int)(i / (s1 - s0) % 5);
                s = s0 + i % (s1 - s0);
            } else {
                s = s0 + i / (tensors * 5);
                t = i / 5 % tensors;
                f = (int)(i % 5);
            }
            ag_store_result_row r = {.tensor_id = (int64_t)t + 1,
                                     .format_id = f + 1,
                                     .step = s,
                                     .counts = {.stalled = (s + t) % 16, .total = 16},
                                     .flips = 1,
                                     .amax = 0.5,
                                     .scale = 2.0};
            if (batched)
                rrows[i] = r;
            else
                ag_store_put_result(st, &r);
        }
        if (batched) ag_store_put_results(st, rrows, sizeof *rrows, n, &done);
        for (size_t k = 0; k < tensors; k++) {
            ag_store_tensor_delta td = {(int64_t)k + 1, AG_ROLE_WEIGHT, N, 0, s1 - 1, 1, 0.5};
            ag_store_apply_tensor_delta(st, &td);
            for (int f = 0; f < 5; f++)
                ag_store_put_scale(st, (int64_t)k + 1, f + 1, AG_ROLE_WEIGHT, s1 - 1, 0.5, 2.0);
        }
        ag_store_run_delta rd = {.run_id = 1, .messages = (s1 - s0) * tensors, .last_step = s1 - 1};
        ag_store_apply_run_delta(st, &rd);
        ag_store_add_counter(st, "bytes", (s1 - s0) * tensors * 16);
        ag_store_commit(st);
    }
    double dt = now_s() - t0;
    *cpu_s = cpu_now_s() - c0;
    /* pages the transactions wrote (each one a WAL frame, later copied into
     * the file by a checkpoint) */
    int pages = 0, hi = 0;
    sqlite3_db_status(ag_store_db(st), SQLITE_DBSTATUS_CACHE_WRITE, &pages, &hi, 0);
    store_pages[mode] = (double)pages / (double)(tensors * steps);
    free(srows);
    free(rrows);
    ag_store_close(st);
    return (double)(tensors * steps) / dt;
}

/* What the layout of the rows costs the writer (AG_BENCH_ONLY=layouts): the
 * rows of tensors x steps snapshots (a stats row and five formats' results)
 * written with plain SQLite, in sorted batches of about 6,000 snapshots, in
 * three layouts: today's (a stats row and five results rows), one row per
 * snapshot with five formats' columns side by side (eight slots of 14, what
 * a view could still unpack in SQL), and one row per snapshot with the
 * formats' values in one blob (no SQL reader could see them without our
 * code). Prints CPU a snapshot and file bytes per point. */
static void layout_rows(sqlite3 *db, int layout, int64_t t, int64_t s, sqlite3_stmt *const st[3]) {
    double amax = 0.5 + (double)s * 1e-6;
    if (layout < 2) {
        sqlite3_stmt *p = st[0];
        sqlite3_reset(p);
        sqlite3_bind_int64(p, 1, t);
        sqlite3_bind_int64(p, 2, s);
        sqlite3_bind_double(p, 3, amax);
        sqlite3_step(p);
    }
    if (layout == 0) {
        for (int f = 1; f <= 5; f++) {
            sqlite3_stmt *p = st[1];
            sqlite3_reset(p);
            const int64_t v[] = {t, f, s, (s + t) % 16, 16, 1, 0, 0, 0};
            for (int k = 0; k < 9; k++) sqlite3_bind_int64(p, k + 1, v[k]);
            sqlite3_bind_double(p, 10, amax);
            sqlite3_bind_double(p, 11, amax / 57344 * f);
            sqlite3_bind_double(p, 12, 1e-7 * (double)s);
            sqlite3_bind_double(p, 13, 30.0 + (double)s * 1e-3);
            sqlite3_step(p);
        }
    } else if (layout == 1) {
        sqlite3_stmt *p = st[1];
        sqlite3_reset(p);
        sqlite3_clear_bindings(p);
        sqlite3_bind_int64(p, 1, t);
        sqlite3_bind_int64(p, 2, s);
        for (int f = 0; f < 5; f++) {
            int o = 3 + f * 14;
            const int64_t v[] = {f + 1, (s + t) % 16, 16, 1, 0, 0, 0};
            for (int k = 0; k < 7; k++) sqlite3_bind_int64(p, o + k, v[k]);
            sqlite3_bind_double(p, o + 7, amax);
            sqlite3_bind_double(p, o + 8, amax / 57344 * (f + 1));
            sqlite3_bind_int64(p, o + 9, 0);
            sqlite3_bind_int64(p, o + 10, 1);
            sqlite3_bind_int64(p, o + 11, 1);
            sqlite3_bind_double(p, o + 12, 1e-7 * (double)s);
            sqlite3_bind_double(p, o + 13, 30.0 + (double)s * 1e-3);
        }
        sqlite3_step(p);
    } else {
        /* per format: id, 5 counts and flips as bytes here, amax, scale,
         * mse, sqnr as doubles: what a packed encoding would hold */
        unsigned char blob[5 * 40];
        for (int f = 0; f < 5; f++) {
            unsigned char *b = blob + f * 40;
            double d[4] = {amax, amax / 57344 * (f + 1), 1e-7 * (double)s, 30.0 + (double)s * 1e-3};
            b[0] = (unsigned char)(f + 1);
            b[1] = (unsigned char)((s + t) % 16);
            b[2] = 16;
            b[3] = 1;
            memset(b + 4, 0, 4);
            memcpy(b + 8, d, sizeof d);
        }
        sqlite3_stmt *p = st[2];
        sqlite3_reset(p);
        sqlite3_bind_int64(p, 1, t);
        sqlite3_bind_int64(p, 2, s);
        sqlite3_bind_double(p, 3, amax);
        sqlite3_bind_blob(p, 4, blob, sizeof blob, SQLITE_TRANSIENT);
        sqlite3_step(p);
    }
    (void)db;
}

static int layouts(const char *dir, size_t tensors, size_t steps) {
    static const char *const names[] = {"today's (stats row + 5 results rows)",
                                        "stats row + one row, 5 formats wide",
                                        "one row with amax, formats in a blob"};
    for (int layout = 0; layout < 3; layout++) {
        char path[160], cols[4096] = "";
        snprintf(path, sizeof path, "%s/layout-%d.db", dir, layout);
        sqlite3 *db = NULL;
        if (sqlite3_open(path, &db) != SQLITE_OK) return 1;
        for (int k = 0; k < 8; k++) {
            char c[320];
            snprintf(c, sizeof c,
                     ",f%d INTEGER,stalled%d INTEGER,total%d INTEGER,flips%d INTEGER,"
                     "overflow%d INTEGER,underflow%d INTEGER,nonfinite%d INTEGER,amax%d REAL,"
                     "scale%d REAL,source%d INTEGER,ranks%d INTEGER,complete%d INTEGER,"
                     "mse%d REAL,sqnr%d REAL",
                     k, k, k, k, k, k, k, k, k, k, k, k, k, k);
            strcat(cols, c);
        }
        char wide[4600], ins[1024] = "INSERT INTO wide VALUES(?,?";
        snprintf(wide, sizeof wide,
                 "CREATE TABLE wide(tensor_id INTEGER NOT NULL, step INTEGER NOT NULL%s,"
                 " PRIMARY KEY(tensor_id, step)) WITHOUT ROWID",
                 cols);
        for (int k = 0; k < 8 * 14; k++) strcat(ins, ",?");
        strcat(ins, ")");
        sqlite3_stmt *st[3] = {NULL, NULL, NULL};
        if (sqlite3_exec(db,
                         "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                         " PRAGMA cache_size=-65536;"
                         "CREATE TABLE stats(tensor_id INTEGER NOT NULL, role INTEGER NOT NULL,"
                         " step INTEGER NOT NULL, amax REAL, numel INTEGER NOT NULL, nonfinite"
                         " INTEGER NOT NULL, ranks INTEGER NOT NULL, PRIMARY KEY(tensor_id, role,"
                         " step)) WITHOUT ROWID;"
                         "CREATE TABLE results(tensor_id INTEGER NOT NULL, format_id INTEGER NOT"
                         " NULL, step INTEGER NOT NULL, stalled INTEGER NOT NULL, total INTEGER NOT"
                         " NULL, flips INTEGER, overflow INTEGER NOT NULL, underflow INTEGER NOT"
                         " NULL, nonfinite INTEGER NOT NULL, amax REAL NOT NULL, scale REAL NOT"
                         " NULL, source INTEGER NOT NULL DEFAULT 0, ranks INTEGER NOT NULL DEFAULT"
                         " 1, complete INTEGER NOT NULL DEFAULT 1, mse REAL, sqnr_db REAL, PRIMARY"
                         " KEY(tensor_id, format_id, step)) WITHOUT ROWID;"
                         "CREATE TABLE packed(tensor_id INTEGER NOT NULL, step INTEGER NOT NULL,"
                         " amax REAL, v BLOB NOT NULL, PRIMARY KEY(tensor_id, step)) WITHOUT"
                         " ROWID;",
                         NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, wide, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO stats VALUES(?1,0,?2,?3,16,0,1)", -1,
                               &st[0], NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(db,
                               layout == 0 ? "INSERT INTO results(tensor_id,format_id,step,stalled,"
                                             "total,flips,overflow,underflow,nonfinite,amax,scale,"
                                             "mse,sqnr_db) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
                                           : ins,
                               -1, &st[1], NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(db, "INSERT INTO packed VALUES(?,?,?,?)", -1, &st[2], NULL) !=
                SQLITE_OK) {
            fprintf(stderr, "bench_store: layouts: %s\n", sqlite3_errmsg(db));
            sqlite3_close(db);
            return 1;
        }
        size_t per = 100000 / 16 / tensors ? 100000 / 16 / tensors : 1;
        double c0 = cpu_now_s();
        for (size_t s0 = 0; s0 < steps; s0 += per) {
            sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
            for (size_t t = 0; t < tensors; t++)
                for (size_t s = s0; s < s0 + per && s < steps; s++)
                    layout_rows(db, layout, (int64_t)t + 1, (int64_t)s, st);
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        }
        double cpu = cpu_now_s() - c0;
        for (int k = 0; k < 3; k++) sqlite3_finalize(st[k]);
        sqlite3_close(db);
        char wal[180];
        snprintf(wal, sizeof wal, "%s-wal", path);
        printf("  layout %-38s CPU %5.1f us a snapshot, %5.1f bytes a point\n", names[layout],
               cpu * 1e6 / (double)(tensors * steps),
               (double)(file_size(path) + file_size(wal)) / (double)(tensors * steps * 5));
    }
    return 0;
}

static int failed; /* a query or command failed: exit 1 */

/* Best of reps wall time of fn(ctx). */
static double best_of(int reps, int (*fn)(void *), void *ctx) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (fn(ctx)) {
            failed = 1;
            return -1;
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

typedef struct qctx {
    char tensor[48]; /* the tensor whose history is asked */
    ag_store *st;
    sqlite3 *db; /* a plain connection for the scans */
    size_t tensors, buckets;
    int64_t tid, run_id;
    uint64_t sink;
} qctx;

static int q_history(void *p) {
    qctx *q = p;
    ag_history_query hq = {.run = RUN, .tensor = q->tensor, .format = "E5M2"};
    ag_history *h = NULL;
    if (ag_store_history(q->st, &hq, &h)) return 1;
    q->sink += h->n;
    ag_free(h);
    return 0;
}

static int q_every(void *p) {
    qctx *q = p;
    ag_history_query hq = {.run = RUN, .tensor = q->tensor, .format = "E5M2", .every = 100};
    ag_history *h = NULL;
    if (ag_store_history(q->st, &hq, &h)) return 1;
    q->sink += h->n;
    ag_free(h);
    return 0;
}

static int q_top(void *p) {
    qctx *q = p;
    ag_top_list *l = NULL;
    if (ag_store_top(q->st, RUN, "E5M2", 0, 10, &l)) return 1;
    q->sink += l->n;
    ag_free(l);
    return 0;
}

static int q_report(void *p) {
    qctx *q = p;
    ag_report *r = NULL;
    if (ag_store_report(q->st, RUN, NULL, 0, &r)) return 1;
    q->sink += r->n;
    ag_free(r);
    return 0;
}

static int q_heatmap(void *p) {
    qctx *q = p;
    ag_store_heat *h = NULL;
    if (ag_store_heatmap(q->st, RUN, "E5M2", q->buckets, &h)) return 1;
    q->sink += h->nbuckets;
    ag_free(h);
    return 0;
}

/* A full scan: step through every row of sql (bound to tid when ?1 is there). */
static int scan(qctx *q, const char *sql) {
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(q->db, sql, -1, &s, NULL) != SQLITE_OK) return 1;
    if (sqlite3_bind_parameter_count(s) >= 1) sqlite3_bind_int64(s, 1, q->tid);
    if (sqlite3_bind_parameter_count(s) >= 2) sqlite3_bind_int64(s, 2, q->run_id);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) q->sink += (uint64_t)sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc != SQLITE_DONE;
}

static int scan_history(void *p) {
    return scan(p, "SELECT stalled,total,flips,overflow,underflow,nonfinite,amax,scale FROM results"
                   " WHERE tensor_id=?1 AND format_id=(SELECT id FROM formats WHERE name='E5M2')"
                   " ORDER BY step");
}

static int scan_every(void *p) {
    return scan(p, "SELECT sum(stalled),sum(total),sum(flips),max(step) FROM (SELECT"
                   " (row_number() OVER (ORDER BY step) - 1) / 100 AS k, * FROM results WHERE"
                   " tensor_id=?1 AND format_id=(SELECT id FROM formats WHERE name='E5M2'))"
                   " GROUP BY k");
}

static int scan_top(void *p) {
    return scan(p, "SELECT sum(r.stalled), sum(r.total), count(*) FROM tensors t JOIN results r ON"
                   " r.tensor_id=t.id AND r.format_id=(SELECT id FROM formats WHERE name='E5M2')"
                   " WHERE t.run_id=?2 AND ?1=?1 GROUP BY t.id ORDER BY CAST(sum(r.stalled) AS"
                   " REAL)/sum(r.total) DESC LIMIT 10");
}

static int scan_report(void *p) {
    return scan(p, "SELECT r.stalled + r.total FROM tensors t JOIN results r ON r.tensor_id=t.id"
                   " WHERE t.run_id=?2 AND ?1=?1 ORDER BY t.name, r.format_id, r.step");
}

static int scan_heatmap(void *p) {
    return scan(p, "SELECT sum(r.stalled), sum(r.total) FROM results r WHERE r.tensor_id IN"
                   " (SELECT id FROM tensors WHERE run_id=?2) AND ?1=?1 AND r.format_id=(SELECT"
                   " id FROM formats WHERE name='E5M2') GROUP BY r.tensor_id, r.step / 10");
}

/* The report the CLI prints, from the store: what `altgrad --db report` does. */
typedef struct cli_ctx {
    const char *args;
} cli_ctx;

static int run_cli(void *p) {
    cli_ctx *c = p;
    char exe[600], cmd[1600];
    build_path(exe, sizeof exe, "client/cli/altgrad");
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null", exe, c->args);
    return system(cmd) != 0;
}

static void line(const char *what, double t, double base) {
    printf("  %-34s %9.4f s   full scan %9.4f s   ratio %8.1f\n", what, t, base,
           t > 0 ? base / t : 0.0);
}

/* The store's rate in arrival order, sorted one row a call and sorted in
 * batches (as the writer writes them), by wall and by CPU time. */
static void print_capacity(size_t snaps, const double rate[3], const double cpu[3]) {
    printf("  the store alone: %.0f snapshots/s in arrival order, %.0f sorted by key, %.0f sorted "
           "in batches as the writer writes them (CPU: %.1f, %.1f and %.1f us a snapshot; pages "
           "written: %.2f, %.2f and %.2f a snapshot)\n",
           rate[0], rate[1], rate[2], cpu[0] * 1e6 / (double)snaps, cpu[1] * 1e6 / (double)snaps,
           cpu[2] * 1e6 / (double)snaps, store_pages[0], store_pages[1], store_pages[2]);
}

static int capacity(const char *dir, size_t tensors, size_t steps) {
    double rate[3], cpu[3] = {0, 0, 0};
    /* AG_BENCH_STORE_MODE=2: the writer's way alone (to profile it) */
    const char *only = getenv("AG_BENCH_STORE_MODE");
    int m0 = only ? atoi(only) : 0, m1 = only ? m0 : 2;
    if (m0 < 0 || m0 > 2) m0 = m1 = 2;
    for (int m = 0; m < 3; m++)
        rate[m] = m >= m0 && m <= m1 ? store_capacity(dir, tensors, steps, m, &cpu[m]) : 1;
    print_capacity(tensors * steps, rate, cpu);
    return rate[0] <= 0 || rate[1] <= 0 || rate[2] <= 0;
}

int main(void) {
    /* this process reads the file with plain SQLite too: `results` is the
     * store's virtual table over its segments */
    sqlite3_auto_extension((void (*)(void))ag_store_sql_entry);
    size_t tensors = env_size("AG_BENCH_TENSORS", 200), steps = env_size("AG_BENCH_STEPS", 5000);
    const char *only = getenv("AG_BENCH_ONLY");
    if (only && strcmp(only, "layouts") == 0) {
        char dir[] = "/tmp/ag_bench_store_XXXXXX";
        if (!mkdtemp(dir)) return 1;
        printf("bench_store: the writer's rows of %zu x %zu snapshots in three layouts (plain "
               "SQLite, no rollups)\n",
               tensors, steps);
        int bad = layouts(dir, tensors, steps);
        ag_tmpdir_remove(dir);
        return bad;
    }
    if (only && strcmp(only, "store") == 0) {
        /* the writer's share alone, to profile or compare store changes */
        char dir[] = "/tmp/ag_bench_store_XXXXXX";
        if (!mkdtemp(dir)) return 1;
        int bad = capacity(dir, tensors, steps);
        ag_tmpdir_remove(dir);
        return bad;
    }
    daemon_proc d = {0};
    strcpy(d.dir, "/tmp/ag_bench_store_XXXXXX");
    if (!mkdtemp(d.dir)) return 1;
    bench_daemon_paths(&d);
    if (daemon_start(&d)) return 1;

    if (only && strcmp(only, "counts") == 0) {
        /* AG_BENCH_ONLY=counts: the counts-message ingest line alone */
        size_t cs = env_size("AG_BENCH_COUNTS_STEPS", steps / 5 ? steps / 5 : 1);
        double cc[2] = {0, 0}, cr = ingest_counts(&d, tensors, cs, cc);
        if (cr > 0)
            printf("  counts messages (t=5, %zu tensors a message, 5 formats, %zu steps): %.0f "
                   "tensors/s end to end; CPU a tensor: daemon %.1f us, client %.1f us\n",
                   tensors, cs, cr, cc[0], cc[1]);
        /* the daemon's memory: its peak, and once the writer has been idle
         * a while (it frees a backlog's batch buffers) */
        double peak = proc_status_mb(d.pid, "VmHWM");
        sleep(3);
        printf("  daemon RSS: peak %.0f MB, %.0f MB after 3 s idle\n", peak,
               proc_status_mb(d.pid, "VmRSS"));
        daemon_stop(&d);
        ag_tmpdir_remove(d.dir);
        return cr <= 0;
    }
    long long wal_busy = 0;
    double rate = ingest(&d, tensors, steps, &wal_busy);
    if (rate <= 0 || (only && strcmp(only, "ingest") == 0)) {
        /* AG_BENCH_ONLY=ingest: the ingest line alone, to compare changes */
        if (rate > 0)
            printf("  ingest %.0f snapshots/s end to end (%zu x %zu), WAL busy %.1f MB\n", rate,
                   tensors, steps, (double)wal_busy / 1e6);
        daemon_stop(&d);
        ag_tmpdir_remove(d.dir);
        return rate <= 0;
    }
    size_t csteps = env_size("AG_BENCH_COUNTS_STEPS", steps / 5 ? steps / 5 : 1);
    double ccpu[2] = {0, 0}, crate = ingest_counts(&d, tensors, csteps, ccpu);
    sleep(3); /* idle: the writer checkpoints */
    long long wal_idle = wal_size(&d);
    printf("bench_store: %zu tensors x %zu steps, 16-element SGD snapshots, 5 formats\n", tensors,
           steps);
    printf("  ingest %.0f snapshots/s end to end (target >= 100000)\n", rate);
    printf("  counts messages (t=5, %zu tensors a message, 5 formats, %zu steps): %.0f tensors/s "
           "end to end; CPU a tensor: daemon %.1f us, client %.1f us\n",
           tensors, csteps, crate, ccpu[0], ccpu[1]);
    if (crate <= 0) failed = 1;
    capacity(d.dir, tensors, steps);
    printf("  WAL: largest seen while busy %.1f MB, idle %.1f MB (target < 64 MB)\n",
           (double)wal_busy / 1e6, (double)wal_idle / 1e6);

    qctx q = {.tensors = tensors, .buckets = 500};
    snprintf(q.tensor, sizeof q.tensor, "layers.%zu.weight", tensors > 7 ? (size_t)7 : tensors - 1);
    if (ag_store_open(&q.st, d.db, AG_STORE_READONLY) ||
        sqlite3_open_v2(d.db, &q.db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_store: cannot read %s\n", d.db);
        return 1;
    }
    sqlite3_stmt *s = NULL;
    long long rows = 0, rollups = 0;
    if (sqlite3_prepare_v2(q.db,
                           "SELECT (SELECT count(*) FROM results), (SELECT count(*) FROM rollups),"
                           " (SELECT id FROM tensors WHERE name=?1),"
                           " (SELECT id FROM runs WHERE name='" RUN "')",
                           -1, &s, NULL) == SQLITE_OK &&
        sqlite3_bind_text(s, 1, q.tensor, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
        rows = sqlite3_column_int64(s, 0);
        rollups = sqlite3_column_int64(s, 1);
        q.tid = sqlite3_column_int64(s, 2);
        q.run_id = sqlite3_column_int64(s, 3);
    }
    sqlite3_finalize(s);
    long long bytes = file_size(d.db) + wal_size(&d);
    printf("  store: %lld result rows, %lld rollup rows, %.1f MB: %.1f bytes per result row "
           "(the row holds %d bytes), ratio %.2f\n",
           rows, rollups, (double)bytes / 1e6, rows ? (double)bytes / (double)rows : 0.0, ROW_BYTES,
           rows ? (double)bytes / (double)rows / ROW_BYTES : 0.0);

    printf("  query latency (store, best of 3):\n");
    line("history (one tensor)", best_of(3, q_history, &q), best_of(3, scan_history, &q));
    line("history --every 100", best_of(3, q_every, &q), best_of(3, scan_every, &q));
    line("top (whole run)", best_of(3, q_top, &q), best_of(3, scan_top, &q));
    char heat[64];
    snprintf(heat, sizeof heat, "heatmap (%zu x %zu buckets)", tensors, q.buckets);
    line(heat, best_of(3, q_heatmap, &q), best_of(3, scan_heatmap, &q));
    double scan_rep = best_of(1, scan_report, &q);
    line("report (store)", best_of(3, q_report, &q), scan_rep);
    char args[600];
    cli_ctx c = {args};
    snprintf(args, sizeof args, "--db %s report " RUN, d.db);
    line("report (altgrad --db)", best_of(3, run_cli, &c), scan_rep);
    snprintf(args, sizeof args, "--query %s --timeout 60000 report " RUN, d.query);
    line("report (altgrad, daemon)", best_of(3, run_cli, &c), scan_rep);
    snprintf(args, sizeof args, "--db %s top " RUN, d.db);
    double top_db = best_of(3, run_cli, &c);
    snprintf(args, sizeof args, "--query %s top " RUN, d.query);
    double top_d = best_of(3, run_cli, &c);
    printf("  CLI: top (whole run) %.3f s through the daemon, %.3f s with --db (target <= 0.2 s "
           "each, report too)\n",
           top_d, top_db);
    sqlite3_close(q.db);
    ag_store_close(q.st);
    daemon_stop(&d);
    const char *keep = getenv("AG_BENCH_KEEP_DB");
    if (keep && *keep) {
        char cmd[2400];
        snprintf(cmd, sizeof cmd,
                 "cp '%s' '%s' && rm -f '%s-wal' && { [ ! -f '%s-wal' ] || cp '%s-wal' '%s-wal'; }",
                 d.db, keep, keep, d.db, d.db, keep);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_store: cannot copy the database to %s\n", keep);
    }
    ag_tmpdir_remove(d.dir);
    if (failed) fprintf(stderr, "bench_store: a query failed\n");
    return failed || q.sink == 0xFFFFFFFFFFFFFFFFull; /* keep the work */
}
