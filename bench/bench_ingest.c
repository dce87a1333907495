/*
 * bench_ingest.c - the daemon end to end. (1) statistics records: client ->
 * altgradd -> committed in SQLite, as a ratio to inserting the same rows
 * straight into SQLite through the store in this process (target >= 0.5).
 * (2) gradient snapshots with all five formats evaluated, in MB/s beside a
 * memcpy of the same bytes: one tensor from one client, then
 * AG_BENCH_TENSORS tensors from as many clients (threads) so several
 * snapshots are in flight, each with the default pool and one pool thread,
 * and where the CPU went per GB (which thread bounds the stream); and the
 * bench's clients alone against a receiver that discards (the sender's own
 * ceiling). (3) the daemon's RSS holding 1000 tensors x 5 formats, and its
 * peak with many large tensors against a small budget. (4) snapshot ingest
 * alone and while a browser-like client polls /api/history and /metrics
 * every 100 ms over one keep-alive connection, as a ratio (target >= 0.9).
 * Starts the real
 * altgradd ($AG_BUILD_DIR/daemon/altgradd, else ../daemon/altgradd next to
 * this binary) on temporary sockets.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/reqrep0/rep.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
#define MAX_STREAMS 64  /* AG_BENCH_TENSORS at most */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef bench_daemon daemon_proc;

/* Start altgradd on a new temporary folder (threads: its --threads, NULL
 * for the default: one per core; budget_mib: its --state-budget; http: its
 * --http ADDR:PORT, NULL for none). */
static int daemon_start_http(daemon_proc *d, const char *threads, const char *budget_mib,
                             const char *http) {
    strcpy(d->dir, "/tmp/ag_bench_XXXXXX");
    if (!mkdtemp(d->dir)) return -1;
    bench_daemon_paths(d);
    const char *extra[] = {"--log-level",
                           "warning",
                           "--threads",
                           threads ? threads : "0",
                           "--state-budget",
                           budget_mib ? budget_mib : "4096",
                           http ? "--http" : NULL,
                           http,
                           NULL};
    return bench_daemon_start(d, extra, "bench_ingest");
}

static int daemon_start_opts(daemon_proc *d, const char *threads, const char *budget_mib) {
    return daemon_start_http(d, threads, budget_mib, NULL);
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

/* ------------------------------------------- what the cores can add */

/* Loops of float multiply-adds on registers (eight independent chains, no
 * memory): how much more a second (third...) thread computes here, one
 * scalar and, where the machine has AVX2 (as the kernels then use), one on
 * 256-bit vectors: the most the pool's "all cores / one thread" could be
 * for work that is compute alone (docs/daemon.md, "What the two cores of
 * the dev machine can add"). The two loops are the same but for the type. */
static atomic_int ceiling_stop;

typedef struct ceiling_arg {
    int vector;
    double rate;
} ceiling_arg;

#if defined(__x86_64__)
typedef float v8f __attribute__((vector_size(32)));
__attribute__((target("avx2,fma"))) static long ceiling_vector(void) {
    v8f a[8], x, y;
    for (int i = 0; i < 8; i++) {
        a[i] = (v8f){1, 2, 3, 4, 5, 6, 7, (float)i};
    }
    x = (v8f){0.999999f, 0.999999f, 0.999999f, 0.999999f,
              0.999999f, 0.999999f, 0.999999f, 0.999999f};
    y = x * 1e-7f;
    long rounds = 0;
    while (!atomic_load_explicit(&ceiling_stop, memory_order_relaxed)) {
        for (int k = 0; k < 4096; k++)
            for (int i = 0; i < 8; i++) a[i] = a[i] * x + y;
        rounds++;
    }
    float sum = 0;
    for (int i = 0; i < 8; i++) sum += a[i][0] + a[i][7];
    return rounds + (sum == 12345.0f);
}
#endif

static long ceiling_scalar(void) {
    float a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, x = 0.999999f, y = 1e-7f;
    long rounds = 0;
    while (!atomic_load_explicit(&ceiling_stop, memory_order_relaxed)) {
        for (int k = 0; k < 4096; k++)
            for (int i = 0; i < 8; i++) a[i] = a[i] * x + y;
        rounds++;
    }
    float sum = 0;
    for (int i = 0; i < 8; i++) sum += a[i];
    return rounds + (sum == 12345.0f); /* keeps the loop */
}

static void *ceiling_main(void *arg) {
    ceiling_arg *c = arg;
    double t0 = now_s();
    long rounds = 0;
#if defined(__x86_64__)
    if (c->vector) rounds = ceiling_vector();
#endif
    if (!c->vector) rounds = ceiling_scalar();
    c->rate = (double)rounds / (now_s() - t0);
    return NULL;
}

/* Rounds per second of nthreads threads of one loop together, over a second. */
static double ceiling_rate(int nthreads, int vector) {
    pthread_t th[64];
    ceiling_arg arg[64];
    double total = 0;
    if (nthreads > 64) nthreads = 64;
    atomic_store(&ceiling_stop, 0);
    for (int i = 0; i < nthreads; i++) {
        arg[i] = (ceiling_arg){vector, 0};
        pthread_create(&th[i], NULL, ceiling_main, &arg[i]);
    }
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    atomic_store(&ceiling_stop, 1);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        total += arg[i].rate;
    }
    return total;
}

static void print_ceiling(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 2) return;
    double s1 = ceiling_rate(1, 0), sn = ceiling_rate((int)cores, 0);
    printf("compute ceiling: %ld threads of a multiply-add loop run %.2fx one thread (scalar)",
           cores, s1 > 0 ? sn / s1 : 0.0);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        double v1 = ceiling_rate(1, 1), vn = ceiling_rate((int)cores, 1);
        printf(", %.2fx (256-bit vectors, as the kernels)", v1 > 0 ? vn / v1 : 0.0);
    }
#endif
    printf(": what 'all cores / one thread' can reach on this machine\n");
}

/* ------------------------------------------------ CPU time by thread */

/* CPU seconds of a process's threads, by what they do: its main thread (the
 * daemon's loop, the bench's caller), nng's threads (the sockets: receive
 * in the daemon, send in the bench), and the rest (the daemon's pool,
 * writer and query threads; the bench's stream and client sender threads).
 * From /proc/PID/task/TID/schedstat (nanoseconds on a CPU). */
typedef struct cpu_split {
    double main, nng, rest;
} cpu_split;

static cpu_split cpu_of(pid_t pid) {
    cpu_split c = {0};
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char comm[64] = "", file[384];
        unsigned long long ns = 0;
        snprintf(file, sizeof file, "%s/%s/comm", path, de->d_name);
        FILE *f = fopen(file, "r");
        if (f) {
            if (!fgets(comm, sizeof comm, f)) comm[0] = '\0';
            fclose(f);
        }
        snprintf(file, sizeof file, "%s/%s/schedstat", path, de->d_name);
        f = fopen(file, "r");
        if (f) {
            if (fscanf(f, "%llu", &ns) != 1) ns = 0;
            fclose(f);
        }
        double s = (double)ns * 1e-9;
        if (atoi(de->d_name) == (int)pid)
            c.main += s;
        else if (strncmp(comm, "nng:", 4) == 0)
            c.nng += s;
        else
            c.rest += s;
    }
    if (dir) closedir(dir);
    return c;
}

static cpu_split cpu_minus(cpu_split a, cpu_split b) {
    return (cpu_split){a.main - b.main, a.nng - b.nng, a.rest - b.rest};
}

/* ------------------------------------------------------------ streams */

/* AG_BENCH_SHM=off: the clients send every snapshot's arrays through the
 * socket (for an A/B against shared memory, the default). */
static int shm_off(void) {
    const char *v = getenv("AG_BENCH_SHM");
    return v && strcmp(v, "off") == 0;
}

/* One client streaming its own tensor: steps snapshots of n elements. */
typedef struct stream {
    const char *ingest, *query;
    size_t n, steps, index;
    const float *w, *g;
    int blind;      /* no daemon: send and hand over without confirming */
    double cpu;     /* this thread's CPU seconds */
    double logging; /* ... of which since every client was open */
    uint64_t shm;   /* snapshots whose arrays went through shared memory */
    double flush_s; /* the flush after the last snapshot, wall time */
    int rc;
    ag_client *c;
    pthread_barrier_t *go;
} stream;

static void *stream_main(void *arg) {
    stream *st = arg;
    char name[48];
    snprintf(name, sizeof name, "layers.%zu.weight", st->index);
    ag_client_opts o = {.ingest_url = st->ingest,
                        .query_url = st->query,
                        .run = "bench-snapshots",
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 30000,
                        .close_timeout_ms = st->blind ? 1 : 0,
                        /* the receiver that discards measures the socket's path */
                        .shm_bytes = shm_off() || st->blind ? AG_SHM_OFF : 0};
    st->rc = ag_client_open(&st->c, &o);
    pthread_barrier_wait(st->go);
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    double cpu0 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    if (st->rc) return NULL;
    for (size_t s = 1; s <= st->steps && !st->rc; s++)
        st->rc = ag_client_log_sgd(st->c, s, name, st->w, st->g, st->n, 0.01f);
    double f0 = now_s();
    if (!st->rc && !st->blind) st->rc = ag_client_flush(st->c, -1);
    st->flush_s = now_s() - f0;
    if (!st->rc && !st->blind) st->rc = wait_committed(st->c);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    st->cpu = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    st->logging = st->cpu - cpu0;
    ag_client_stats cs;
    if (ag_client_get_stats(st->c, &cs) == AG_OK) st->shm = cs.shm_snapshots;
    return NULL;
}

/* What a stream of snapshots measured: MB/s of w+g, and CPU seconds per
 * GB of w+g in the daemon (or receiver) and in this process. */
typedef struct stream_result {
    double mbs;
    cpu_split peer, self;
    double callers; /* of self: the logging threads alone (encoding) */
    double gb;
    double shm;     /* the share of snapshots sent through shared memory */
    double flush_s; /* the longest of the clients' flushes after their last snapshot */
} stream_result;

/* ntensors clients (threads), each streaming steps snapshots of its own
 * tensor of n elements to ingest; with a peer pid, its CPU is split too.
 * blind: the peer is a null receiver that exits once it has everything. */
static stream_result run_streams(const char *ingest, const char *query, pid_t peer, size_t n,
                                 size_t steps, size_t ntensors, int blind) {
    stream_result r = {0};
    float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
    stream st[MAX_STREAMS];
    pthread_t th[MAX_STREAMS];
    pthread_barrier_t go;
    if (!w || !g || ntensors < 1 || ntensors > MAX_STREAMS) goto out;
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)((double)(i % 1000) / 700.0 - 0.7);
        g[i] = (float)((double)(i % 37) * 1e-4);
    }
    pthread_barrier_init(&go, NULL, (unsigned)ntensors + 1);
    for (size_t t = 0; t < ntensors; t++) {
        st[t] = (stream){.ingest = ingest,
                         .query = query,
                         .n = n,
                         .steps = steps,
                         .index = t,
                         .w = w,
                         .g = g,
                         .blind = blind,
                         .go = &go};
        pthread_create(&th[t], NULL, stream_main, &st[t]);
    }
    pthread_barrier_wait(&go); /* every client open */
    cpu_split peer0 = peer > 0 ? cpu_of(peer) : (cpu_split){0}, self0 = cpu_of(getpid());
    double t0 = now_s();
    int rc = 0;
    for (size_t t = 0; t < ntensors; t++) {
        pthread_join(th[t], NULL);
        rc |= st[t].rc;
    }
    if (blind && peer > 0) { /* the receiver exits when it has every snapshot */
        int status = 0;
        waitpid(peer, &status, 0);
        rc |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    double dt = now_s() - t0;
    cpu_split self = cpu_minus(cpu_of(getpid()), self0);
    if (!blind && peer > 0) r.peer = cpu_minus(cpu_of(peer), peer0);
    for (size_t t = 0; t < ntensors; t++) {
        self.rest += st[t].cpu; /* the stream threads have exited */
        r.callers += st[t].logging;
        r.shm += (double)st[t].shm / (double)(steps * ntensors);
        if (st[t].flush_s > r.flush_s) r.flush_s = st[t].flush_s;
        ag_client_close(st[t].c);
    }
    pthread_barrier_destroy(&go);
    r.gb = (double)(2 * n * sizeof(float) * steps * ntensors) / 1e9;
    r.self = self;
    r.mbs = rc ? 0 : r.gb * 1e3 / dt;
out:
    free(w);
    free(g);
    return r;
}

/* Where the CPU went, per GB of w+g. */
static void print_cpu(const char *what, const stream_result *r) {
    if (r->gb <= 0) return;
    printf("  %s, CPU s per GB of w+g: daemon loop %.3f, daemon nng (receive) %.3f, daemon pool "
           "and writer %.3f; bench callers and senders %.3f (callers %.3f), bench nng (send) "
           "%.3f; through shared memory %.0f%%\n",
           what, r->peer.main / r->gb, r->peer.nng / r->gb, r->peer.rest / r->gb,
           (r->self.main + r->self.rest) / r->gb, r->callers / r->gb, r->self.nng / r->gb,
           100 * r->shm);
}

/* bench_ingest --null-receiver URL QUERY COUNT MIN: receive on URL (nng
 * PULL) and discard, reusing large bodies as the daemon does, until COUNT
 * messages of at least MIN bytes arrived; exit 0. */
typedef struct null_bodies {
    pthread_mutex_t lock;
    void *p[16];
    size_t size[16], n;
} null_bodies;

static void *null_take(void *arg, size_t size) {
    null_bodies *nb = arg;
    void *p = NULL;
    pthread_mutex_lock(&nb->lock);
    for (size_t i = 0; i < nb->n && !p; i++)
        if (nb->size[i] == size) {
            p = nb->p[i];
            nb->p[i] = nb->p[--nb->n];
            nb->size[i] = nb->size[nb->n];
        }
    pthread_mutex_unlock(&nb->lock);
    return p;
}

static int null_keep(void *arg, void *p, size_t size) {
    null_bodies *nb = arg;
    pthread_mutex_lock(&nb->lock);
    int kept = nb->n < 16;
    if (kept) {
        nb->p[nb->n] = p;
        nb->size[nb->n++] = size;
    }
    pthread_mutex_unlock(&nb->lock);
    return kept;
}

static int null_receiver(const char *url, const char *query, size_t count, size_t min) {
    static null_bodies nb = {.lock = PTHREAD_MUTEX_INITIALIZER};
    nng_msg_body_cache(1 << 20, null_take, null_keep, &nb);
    nng_socket s, q; /* q: a query socket that never answers, so clients find a "daemon" */
    if (nng_pull0_open(&s) || nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0) ||
        nng_listen(s, url, NULL, 0) || nng_rep0_open(&q) || nng_listen(q, query, NULL, 0))
        return 1;
    fprintf(stdout, "listening\n");
    fflush(stdout);
    size_t got = 0;
    while (got < count) {
        nng_msg *m = NULL;
        if (nng_recvmsg(s, &m, 0)) return 1;
        got += nng_msg_len(m) >= min;
        nng_msg_free(m);
    }
    nng_close(s);
    nng_close(q);
    return 0;
}

/* The bench's clients alone: ntensors of them stream to a null receiver
 * (a child process). MB/s of w+g handed over and received. */
static stream_result null_snapshots(size_t n, size_t steps, size_t ntensors) {
    stream_result r = {0};
    char dir[] = "/tmp/ag_bench_XXXXXX", url[128], query[128], count[32], min[32], exe[512];
    if (!mkdtemp(dir)) return r;
    snprintf(url, sizeof url, "ipc://%s/null.sock", dir);
    snprintf(query, sizeof query, "ipc://%s/q.sock", dir);
    snprintf(count, sizeof count, "%zu", steps * ntensors);
    snprintf(min, sizeof min, "%zu", n * 2 * sizeof(float));
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = '\0';
    int out[2];
    if (pipe(out)) return r;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        execl(exe, exe, "--null-receiver", url, query, count, min, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[32] = "";
    ssize_t k = read(out[0], line, sizeof line - 1); /* "listening" */
    close(out[0]);
    if (pid > 0 && k > 0) {
        r = run_streams(url, query, pid, n, steps, ntensors, 1);
    } else if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    ag_tmpdir_remove(dir);
    return r;
}

static double daemon_snapshots_run(daemon_proc *d, size_t n, size_t steps, const char *run) {
    ag_client *c = client(d, run);
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

/* ------------------------------------------------- a browser that polls */

/* A free TCP port on loopback (bound and released: the daemon takes it
 * next, which is good enough for a benchmark). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

typedef struct poller {
    int port;
    const char *run;
    volatile int stop;
    pthread_t thread;
    size_t requests, failures, bytes;
    double total_s, max_s;
} poller;

/* One GET on *fd (connected anew when -1 or closed by the server), its
 * answer read whole by Content-Length. Body bytes, or -1. */
static long http_get_keepalive(int *fd, int port, const char *target) {
    char req[512], buf[1 << 16];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", target);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (*fd < 0) {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            *fd = socket(AF_INET, SOCK_STREAM, 0);
            if (*fd < 0 || connect(*fd, (struct sockaddr *)&a, sizeof a) != 0) goto retry;
        }
        if (send(*fd, req, (size_t)n, MSG_NOSIGNAL) != n) goto retry;
        size_t got = 0, head = 0; /* bytes read; the head's length once known */
        long body = -1;
        for (;;) {
            /* the head is kept (NUL-terminated) until found; the body only counted */
            char *at = head ? buf : buf + got;
            size_t room = head ? sizeof buf : sizeof buf - 1 - got;
            if (room == 0) break; /* a head over 64 KiB */
            ssize_t k = recv(*fd, at, room, 0);
            if (k <= 0) break;
            got += (size_t)k;
            if (!head) {
                buf[got] = '\0';
                char *end = strstr(buf, "\r\n\r\n");
                if (!end) continue;
                *end = '\0';
                const char *cl = strstr(buf, "Content-Length: ");
                body = cl ? strtol(cl + 16, NULL, 10) : 0;
                head = (size_t)(end + 4 - buf);
            }
            if (got >= head + (size_t)body) return body;
        }
    retry:
        if (*fd >= 0) close(*fd);
        *fd = -1;
    }
    return -1;
}

static void *poll_main(void *arg) {
    poller *p = arg;
    int fd = -1;
    char history[256];
    snprintf(history, sizeof history, "/api/history?run=%s&tensor=big.weight", p->run);
    const char *targets[] = {history, "/metrics"};
    while (!p->stop) {
        for (size_t i = 0; i < 2; i++) {
            double t0 = now_s();
            long body = http_get_keepalive(&fd, p->port, targets[i]);
            double dt = now_s() - t0;
            p->requests++;
            if (body < 0)
                p->failures++;
            else
                p->bytes += (size_t)body;
            p->total_s += dt;
            if (dt > p->max_s) p->max_s = dt;
        }
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (fd >= 0) close(fd);
    return NULL;
}

/* The daemon's CPU time (user + system) in seconds, from /proc. */
static double cpu_s(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* What one answer costs the daemon in CPU (it does nothing else meanwhile):
 * 500 GETs of each target over one keep-alive connection. */
static void answer_cost(daemon_proc *d, int port, const char *run) {
    char history[256];
    snprintf(history, sizeof history, "/api/history?run=%s&tensor=big.weight", run);
    const char *targets[] = {"/", history, "/metrics"};
    int fd = -1;
    printf("  daemon CPU per answer (500 each, keep-alive):");
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        double c0 = cpu_s(d->pid), t0 = now_s();
        long bytes = 0;
        for (int k = 0; k < 500; k++) bytes = http_get_keepalive(&fd, port, targets[i]);
        printf(" %s %.3f ms (%.2f ms wall, %ld B)%s", i == 1 ? "/api/history" : targets[i],
               (cpu_s(d->pid) - c0) / 500 * 1e3, (now_s() - t0) / 500 * 1e3, bytes,
               i + 1 < sizeof targets / sizeof targets[0] ? "," : "\n");
    }
    if (fd >= 0) close(fd);
}

/* Snapshot ingest with and without a poller on one daemon serving HTTP:
 * one run to warm the daemon (not counted), then alone, polled, polled,
 * alone (twice), so that a drift over the daemon's life (a growing database)
 * weighs on both alike; prints both rates, their ratio and each run's rate. */
static int ingest_while_polled(size_t n, size_t steps) {
    daemon_proc d = {0};
    char http[64];
    int port = free_port();
    snprintf(http, sizeof http, "127.0.0.1:%d", port);
    if (port < 0 || daemon_start_http(&d, NULL, NULL, http)) return 1;
    double alone = 0, polled = 0, rate[8];
    poller p = {.port = port};
    daemon_snapshots_run(&d, n, steps, "warm-up");
    static const int order[] = {0, 1, 1, 0, 0, 1, 1, 0};
    enum { ROUNDS = sizeof order / sizeof order[0] / 2 };
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        char run[64];
        snprintf(run, sizeof run, "%s-%zu", order[i] ? "polled" : "alone", i);
        if (!order[i]) {
            alone += rate[i] = daemon_snapshots_run(&d, n, steps, run);
            continue;
        }
        p.run = run;
        p.stop = 0;
        if (pthread_create(&p.thread, NULL, poll_main, &p) != 0) break;
        polled += rate[i] = daemon_snapshots_run(&d, n, steps, run);
        p.stop = 1;
        pthread_join(p.thread, NULL);
    }
    printf("snapshot ingest while a browser polls /api/history and /metrics every 100 ms "
           "(keep-alive): %.0f MB/s alone, %.0f MB/s polled, ratio %.3f (target >= 0.9); "
           "%zu polls, %zu failed, %.1f ms mean, %.1f ms max, %.0f KiB per answer\n",
           alone / ROUNDS, polled / ROUNDS, alone > 0 ? polled / alone : 0.0, p.requests,
           p.failures, p.requests ? 1e3 * p.total_s / (double)p.requests : 0.0, 1e3 * p.max_s,
           p.requests ? (double)p.bytes / (double)p.requests / 1024.0 : 0.0);
    printf("  each run in order (a: alone, p: polled), MB/s:");
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        printf(" %c %.0f", order[i] ? 'p' : 'a', rate[i]);
    printf("\n");
    answer_cost(&d, port, "polled-6");
    daemon_stop(&d);
    return p.failures ? 1 : 0;
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

/* CPU seconds per GB of w+g of the daemon and the bench together. */
static double cpu_per_gb(const stream_result *r) {
    return (r->peer.main + r->peer.nng + r->peer.rest + r->self.main + r->self.nng + r->self.rest) /
           r->gb;
}

/* How busy the machine was during the stream on every core, and the most
 * "all cores / one thread" could be had no CPU been idle: every core's
 * time at the stream's CPU cost per GB, against the one-thread stream as
 * measured. The gap between that bound and the ratio measured is idle
 * time; the gap between the bound and the target is CPU the stream spends
 * (the bench's clients included). */
static void print_busy(const stream_result *all, const stream_result *one) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1 || all->gb <= 0 || one->mbs <= 0) return;
    double per_gb = cpu_per_gb(all), busy = per_gb * all->mbs / 1e3;
    double bound = (double)cores / per_gb * 1e3 / one->mbs;
    printf(
        "  on every core: %.3f CPU s per GB of w+g in all, %.2f of %ld cores busy (%.0f%% idle); "
        "with none idle, all cores / one thread would be at most %.2fx\n",
        per_gb, busy, cores, 100 * (1 - busy / (double)cores), bound);
}

/* ------------------------------------------- one tensor, in rounds */

#define MAX_ROUNDS 16

/* One round of the one-tensor lines: a stream to a daemon on every core
 * and one to a daemon with one pool thread, and the memcpy baseline (best
 * of 5, as memcpy_mbs times it) taken right before and right after the
 * stream on every core, averaged. */
typedef struct one_round {
    stream_result all, one;
    double mc;
} one_round;

static int one_round_stream(stream_result *out, const char *threads, size_t n, size_t steps) {
    daemon_proc d = {0};
    if (daemon_start_threads(&d, threads)) return 1;
    *out = run_streams(d.ingest, d.query, d.pid, n, steps, 1, 0);
    daemon_stop(&d);
    return out->mbs > 0 ? 0 : 1;
}

/* one_first: the one-thread stream first (rounds alternate the order). */
static int one_round_run(one_round *r, size_t n, size_t steps, int one_first) {
    size_t bytes = 2 * n * sizeof(float);
    if (one_first && one_round_stream(&r->one, "1", n, steps)) return 1;
    double before = memcpy_mbs(bytes);
    if (one_round_stream(&r->all, NULL, n, steps)) return 1;
    r->mc = (before + memcpy_mbs(bytes)) / 2;
    return one_first ? 0 : one_round_stream(&r->one, "1", n, steps);
}

static double round_key(const one_round *r, int by_cores) {
    return by_cores ? r->all.mbs / r->one.mbs : r->all.mbs / r->mc;
}

/* The round whose R (by_cores 0) or all cores / one thread (1) is the
 * median (the lower of the middle two for an even count). */
static const one_round *median_round(const one_round *rs, size_t k, int by_cores) {
    for (size_t i = 0; i < k; i++) {
        size_t below = 0, equal = 0;
        for (size_t j = 0; j < k; j++) {
            below += round_key(&rs[j], by_cores) < round_key(&rs[i], by_cores);
            equal += j < i && round_key(&rs[j], by_cores) == round_key(&rs[i], by_cores);
        }
        if (below + equal == (k - 1) / 2) return &rs[i];
    }
    return &rs[0];
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "--null-receiver") == 0)
        return null_receiver(argv[2], argv[3], strtoul(argv[4], NULL, 10),
                             strtoul(argv[5], NULL, 10));
    daemon_proc d = {0};
    /* AG_BENCH_ONLY=snapshots: only the snapshot lines (for a profile of
     * that stream), =rss: only the RSS lines; AG_BENCH_STEPS: snapshots per
     * client and line (default 20); AG_BENCH_ROUNDS: rounds of the
     * one-tensor lines (default 3). */
    const char *only = getenv("AG_BENCH_ONLY"), *steps_env = getenv("AG_BENCH_STEPS");
    int snapshots_only = only && strcmp(only, "snapshots") == 0;
    int rss_only = only && strcmp(only, "rss") == 0;       /* AG_BENCH_ONLY=rss: the RSS lines */
    int polled_only = only && strcmp(only, "polled") == 0; /* =polled: ingest while polled */
    int send_only = only && strcmp(only, "send") == 0;     /* =send: the clients alone */
    size_t steps = steps_env ? strtoul(steps_env, NULL, 10) : 20;
    if (steps < 1 || steps > 100000) steps = 20;
    size_t n = 1u << 20;
    /* AG_BENCH_TENSORS: clients (threads, each its own tensor) of the
     * several-tensor lines (default 4). */
    const char *tensors_env = getenv("AG_BENCH_TENSORS");
    size_t ntensors = tensors_env ? strtoul(tensors_env, NULL, 10) : 4;
    if (ntensors < 1 || ntensors > MAX_STREAMS) ntensors = 4;
    if (polled_only) return ingest_while_polled(n, steps);
    if (snapshots_only) goto snapshots;
    if (rss_only) goto rss;
    if (send_only) goto send;
    double direct = baseline_inserts(TENSORS, STATS_STEPS);
    if (daemon_start(&d)) return 1;
    double e2e = daemon_records(&d, TENSORS, STATS_STEPS);
    printf("stats ingest: end-to-end %.0f records/s, direct SQLite inserts %.0f rows/s, "
           "ratio %.2f (target >= 0.5)\n",
           e2e, direct, direct > 0 ? e2e / direct : 0.0);
    daemon_stop(&d);

snapshots:;
    /* One tensor, all cores and one pool thread, in AG_BENCH_ROUNDS rounds
     * (default 3) of the two, their order alternated, each stream between
     * two memcpy baselines: its ratio R is to the mean of those, and
     * "all cores / one thread" compares the two streams of one round. The
     * lines give the median round (by R, and by the cores' ratio), so a
     * machine whose speed drifts moves both sides of each ratio alike. */
    const char *rounds_env = getenv("AG_BENCH_ROUNDS");
    size_t rounds = rounds_env ? strtoul(rounds_env, NULL, 10) : 3;
    if (rounds < 1 || rounds > MAX_ROUNDS) rounds = 3;
    one_round rs[MAX_ROUNDS];
    for (size_t r = 0; r < rounds; r++)
        if (one_round_run(&rs[r], n, steps, r % 2 == 1)) return 1;
    const one_round *mr = median_round(rs, rounds, 0), *mt = median_round(rs, rounds, 1);
    double mc = mr->mc; /* the baseline of the median round, for the lines below */
    printf("snapshot ingest (SGD, 5 formats, %zu elements): %.0f MB/s of w+g, memcpy %.0f MB/s, "
           "ratio %.4f (target >= 0.2)\n",
           n, mr->all.mbs, mr->mc, mr->all.mbs / mr->mc);
    print_cpu("one tensor", &mr->all);
    printf("snapshot ingest, 1 pool thread (SGD, 5 formats, %zu elements): %.0f MB/s of w+g, "
           "memcpy %.0f MB/s, ratio %.4f; all cores / one thread %.2fx (target >= 1.7)\n",
           n, mt->one.mbs, mt->mc, mt->one.mbs / mt->mc, mt->all.mbs / mt->one.mbs);
    print_cpu("one tensor, 1 pool thread", &mt->one);
    print_busy(&mt->all, &mt->one);
    printf("  each round (R; all cores / one thread):");
    for (size_t r = 0; r < rounds; r++)
        printf(" %.0f and %.0f MB/s against memcpy %.0f (R %.3f; %.2fx)%s", rs[r].all.mbs,
               rs[r].one.mbs, rs[r].mc, rs[r].all.mbs / rs[r].mc, rs[r].all.mbs / rs[r].one.mbs,
               r + 1 < rounds ? "," : "\n");
    /* the stream's tail: the snapshots still queued when the client stops
     * logging are evaluated and committed while its flush waits */
    printf("  each round, the client's flush after its last snapshot (on every core; one pool "
           "thread), ms of the stream's:");
    for (size_t r = 0; r < rounds; r++)
        printf(" %.0f of %.0f; %.0f of %.0f%s", rs[r].all.flush_s * 1e3,
               rs[r].all.gb > 0 ? rs[r].all.gb * 1e3 / rs[r].all.mbs * 1e3 : 0.0,
               rs[r].one.flush_s * 1e3,
               rs[r].one.gb > 0 ? rs[r].one.gb * 1e3 / rs[r].one.mbs * 1e3 : 0.0,
               r + 1 < rounds ? "," : "\n");

    /* Several tensors from as many clients: snapshots of different tensors
     * in flight at once, each client its own connection. */
    if (daemon_start(&d)) return 1;
    stream_result many = run_streams(d.ingest, d.query, d.pid, n, steps, ntensors, 0);
    printf("snapshot ingest, %zu tensors from %zu clients (SGD, 5 formats, %zu elements each): "
           "%.0f MB/s of w+g, memcpy %.0f MB/s, ratio %.4f\n",
           ntensors, ntensors, n, many.mbs, mc, mc > 0 ? many.mbs / mc : 0.0);
    print_cpu("several tensors", &many);
    daemon_stop(&d);
    if (daemon_start_threads(&d, "1")) return 1;
    stream_result many1 = run_streams(d.ingest, d.query, d.pid, n, steps, ntensors, 0);
    printf("snapshot ingest, %zu tensors from %zu clients, 1 pool thread: %.0f MB/s of w+g, "
           "ratio %.4f; all cores / one thread %.2fx\n",
           ntensors, ntensors, many1.mbs, mc > 0 ? many1.mbs / mc : 0.0,
           many1.mbs > 0 ? many.mbs / many1.mbs : 0.0);
    print_cpu("several tensors, 1 pool thread", &many1);
    daemon_stop(&d);
    print_ceiling();

    /* The bench's own ceiling: its clients against a receiver that only
     * discards what arrives. */
send:;
    stream_result null1 = null_snapshots(n, steps, 1);
    stream_result nulln = null_snapshots(n, steps, ntensors);
    printf("snapshot send alone (the bench's clients, a receiver that discards): 1 client "
           "%.0f MB/s of w+g, %zu clients %.0f MB/s\n",
           null1.mbs, ntensors, nulln.mbs);
    if (null1.gb > 0)
        printf("  1 client, CPU s per GB of w+g: bench callers and senders %.3f (callers %.3f), "
               "bench nng (send) %.3f\n",
               (null1.self.main + null1.self.rest) / null1.gb, null1.callers / null1.gb,
               null1.self.nng / null1.gb);
    if (snapshots_only || send_only) return 0;

rss:
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
    if (rss_only) return 0;
    return ingest_while_polled(n, steps);
}
