/*
 * bench_ranks.c - how many ranks one altgradd holds. R simulated ranks
 * (threads, each its own ag_client, one run of world size R) stream counts
 * messages (TENSORS tensors x 5 formats, each rank its shard, the daemon
 * summing them) every step over tcp://127.0.0.1 to one daemon. The ranks step
 * in lockstep (a barrier per step, as a trainer's collectives make them) as
 * fast as the daemon takes their messages: each client queues at most QUEUE
 * messages and blocks on a full queue, and every FLUSH_EVERY steps waits until
 * the daemon committed all it sent, so the daemon's pace is the step rate and
 * nothing is dropped on the client side. After a fixed time every rank
 * flushes (the daemon confirms it committed everything). Prints, for 1, 64 and 128 ranks, the steps per second
 * the daemon files whole (every rank's shards summed) and the messages per
 * second it commits, with the ratio to one rank, and the drops and incomplete
 * steps it recorded (both must be 0). Bounded: SECONDS (argv[1], default 2)
 * of sending per rank count.
 */
#define _POSIX_C_SOURCE 200809L
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "bench_daemon.h"

#define TENSORS 150
#define NFMT 5
#define QUEUE 4        /* messages a rank's client queues before it blocks */
#define FLUSH_EVERY 16 /* steps between two flushes (the daemon confirms all) */

static const char *const fmt_names[NFMT] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
static const char *tensor_names[TENSORS];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A loopback port nothing listens on now. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) ||
        getsockname(fd, (struct sockaddr *)&sa, &len)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

typedef struct shared {
    const char *ingest, *query, *run;
    int world;
    double stop_at;
    pthread_barrier_t step; /* the ranks' lockstep */
    _Atomic int stop;       /* set by rank 0 between two barriers */
    _Atomic int failed;
} shared;

typedef struct rank_ctx {
    shared *sh;
    int rank;
    uint64_t steps, messages;
    pthread_t th;
} rank_ctx;

/* One rank: counts of its shard of every tensor, step after step in
 * lockstep with the others, until rank 0 says the time is up. */
static void *rank_main(void *arg) {
    rank_ctx *rc = arg;
    shared *sh = rc->sh;
    ag_client_opts o = {.ingest_url = sh->ingest,
                        .query_url = sh->query,
                        .run = sh->run,
                        .policy = AG_QUEUE_BLOCK,
                        .queue_messages = QUEUE,
                        .query_timeout_ms = 30000,
                        .close_timeout_ms = 60000,
                        .launch_id = sh->run,
                        .rank = rc->rank,
                        .world_size = sh->world};
    ag_client *c = NULL;
    if (ag_client_open(&c, &o)) atomic_store(&sh->failed, 1);
    static _Thread_local uint64_t numel[TENSORS], nonfinite[TENSORS], counts[TENSORS * NFMT * 5];
    static _Thread_local double amax[TENSORS];
    static _Thread_local float scales[TENSORS * NFMT];
    for (size_t t = 0; t < TENSORS; t++) {
        numel[t] = 4096;
        amax[t] = 0.5 + (double)rc->rank * 1e-3;
        for (size_t f = 0; f < NFMT; f++) {
            scales[t * NFMT + f] = 0.25f; /* the global scale: the same on every rank */
            uint64_t *k = counts + (t * NFMT + f) * 5;
            k[1] = 1000 + t;
            k[0] = k[1] / (f + 2);
            k[2] = f;
            k[3] = t % 7;
            k[4] = 0;
        }
    }
    ag_counts_batch b = {.form = AG_FORM_SGD,
                         .ntensors = TENSORS,
                         .nformats = NFMT,
                         .tensors = tensor_names,
                         .formats = fmt_names,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts};
    for (;;) {
        if (c && !atomic_load(&sh->failed)) {
            b.step = rc->steps;
            if (ag_client_log_counts(c, &b)) atomic_store(&sh->failed, 1);
            /* what the daemon has not committed stays bounded (its ingest
             * queue and the sockets would otherwise hold a thousand
             * messages), so the rate measured is the one it sustains */
            if (++rc->steps % FLUSH_EVERY == 0 && ag_client_flush(c, 60000))
                atomic_store(&sh->failed, 1);
        }
        pthread_barrier_wait(&sh->step);
        if (rc->rank == 0 && (now_s() >= sh->stop_at || atomic_load(&sh->failed)))
            atomic_store(&sh->stop, 1);
        pthread_barrier_wait(&sh->step);
        if (atomic_load(&sh->stop)) break;
    }
    if (!c) return NULL;
    if (ag_client_flush(c, 120000)) atomic_store(&sh->failed, 1);
    ag_client_stats st;
    ag_client_get_stats(c, &st);
    rc->messages = st.delivered;
    if (ag_client_close(c) != 0) atomic_store(&sh->failed, 1);
    return NULL;
}

typedef struct result {
    double steps_s, msgs_s, elapsed;
    uint64_t whole_steps, messages, dropped, incomplete;
    int ok;
} result;

static result run_ranks(const bench_daemon *d, const char *ingest, int world, double seconds) {
    result res = {0};
    char run[64];
    snprintf(run, sizeof run, "load-%d", world);
    shared sh = {.ingest = ingest, .query = d->query, .run = run, .world = world};
    rank_ctx *ranks = calloc((size_t)world, sizeof *ranks);
    pthread_barrier_init(&sh.step, NULL, (unsigned)world);
    double t0 = now_s();
    sh.stop_at = t0 + seconds;
    for (int r = 0; r < world; r++) {
        ranks[r] = (rank_ctx){.sh = &sh, .rank = r};
        pthread_create(&ranks[r].th, NULL, rank_main, &ranks[r]);
    }
    uint64_t min_steps = UINT64_MAX;
    for (int r = 0; r < world; r++) {
        pthread_join(ranks[r].th, NULL);
        if (ranks[r].steps < min_steps) min_steps = ranks[r].steps;
        res.messages += ranks[r].messages;
    }
    res.elapsed = now_s() - t0; /* sending and the flush: everything committed */
    res.whole_steps = min_steps;
    res.steps_s = (double)min_steps / res.elapsed;
    res.msgs_s = (double)res.messages / res.elapsed;
    res.ok = !atomic_load(&sh.failed);
    pthread_barrier_destroy(&sh.step);
    free(ranks);
    /* what the daemon recorded for the run: drops and incomplete steps */
    ag_client_opts o = {.ingest_url = ingest, .query_url = d->query, .query_timeout_ms = 30000};
    ag_client *q = NULL;
    ag_run_list *runs = NULL;
    if (ag_client_open(&q, &o) == AG_OK && ag_client_runs(q, &runs) == AG_OK) {
        for (size_t i = 0; i < runs->n; i++)
            if (strcmp(runs->items[i].name, run) == 0) {
                res.dropped = runs->items[i].dropped;
                res.incomplete = runs->items[i].incomplete;
            }
        ag_free(runs);
    } else {
        res.ok = 0;
    }
    ag_client_close(q);
    return res;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    if (!(seconds > 0) || seconds > 600) seconds = 2.0;
    static char names[TENSORS][32];
    for (size_t t = 0; t < TENSORS; t++) {
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
        tensor_names[t] = names[t];
    }
    bench_daemon d = {0};
    strcpy(d.dir, "/tmp/ag_bench_XXXXXX");
    if (!mkdtemp(d.dir)) return 1;
    bench_daemon_paths(&d);
    int port = free_port();
    if (port < 0) return 1;
    char ingest[64];
    snprintf(ingest, sizeof ingest, "tcp://127.0.0.1:%d", port);
    snprintf(d.ingest, sizeof d.ingest, "%s", ingest);
    const char *extra[] = {"--log-level", "warning", NULL};
    if (bench_daemon_start(&d, extra, "bench_ranks")) return 1;

    static const int worlds[] = {1, 64, 128};
    result base = {0};
    int rc = 0;
    printf("bench_ranks: counts of %d tensors x %d formats per rank and step, tcp loopback, "
           "%.1f s of sending each\n",
           TENSORS, NFMT, seconds);
    printf("%6s %10s %12s %12s %9s %9s %8s %11s\n", "ranks", "steps/s", "messages/s", "whole steps",
           "x steps", "x msgs", "dropped", "incomplete");
    for (size_t i = 0; i < sizeof worlds / sizeof worlds[0]; i++) {
        result r = run_ranks(&d, ingest, worlds[i], seconds);
        if (i == 0) base = r;
        printf("%6d %10.1f %12.0f %12llu %9.3f %9.2f %8llu %11llu%s\n", worlds[i], r.steps_s,
               r.msgs_s, (unsigned long long)r.whole_steps,
               base.steps_s > 0 ? r.steps_s / base.steps_s : 0.0,
               base.msgs_s > 0 ? r.msgs_s / base.msgs_s : 0.0, (unsigned long long)r.dropped,
               (unsigned long long)r.incomplete, r.ok ? "" : "  (a rank failed)");
        if (!r.ok || r.dropped || r.incomplete) rc = 1;
    }
    bench_daemon_stop(&d);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", d.dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_ranks: could not remove %s\n", d.dir);
    return rc;
}
