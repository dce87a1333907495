/*
 * consumer.c - the smallest outside program that links libaltgrad: checks the
 * seed's bit-stall example with the core, then (given a daemon's URLs) streams
 * three gradient snapshots and reads them back through the query API. Built
 * against an installed altgrad by tests/install (pkg-config and find_package).
 */
#define _POSIX_C_SOURCE 200809L
#include <altgrad/altgrad.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N 100
#define STEPS 3
#define TENSOR "fc.weight"

/* docs/numerics.md, Stall: w = 1, g = 1e-4, lr = 0.01 in E5M2 at scale 1 stalls all. */
static int check_core(void) {
    float w[N], g[N];
    for (size_t i = 0; i < N; i++) {
        w[i] = 1.0f;
        g[i] = 1e-4f;
    }
    ag_stall_counts sc = {0};
    int rc = ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, N, &sc);
    if (rc != AG_OK) {
        fprintf(stderr, "consumer: ag_stall_sgd: %s\n", ag_strerror(rc));
        return 1;
    }
    printf("consumer: libaltgrad %s, E5M2 stalled %llu of %llu\n", ag_version(),
           (unsigned long long)sc.stalled, (unsigned long long)sc.total);
    return sc.stalled == N && sc.total == N ? 0 : 1;
}

static int has_tensor(ag_client *c, const char *run) {
    ag_run_list *runs = NULL;
    ag_tensor_list *tensors = NULL;
    int found = 0;
    if (ag_client_runs(c, &runs) != AG_OK) goto done;
    for (size_t i = 0; i < runs->n && !found; i++) found = strcmp(runs->items[i].name, run) == 0;
    if (!found || ag_client_tensors(c, run, &tensors) != AG_OK) {
        found = 0;
        goto done;
    }
    found = 0;
    for (size_t i = 0; i < tensors->n; i++)
        if (strcmp(tensors->items[i].name, TENSOR) == 0 && tensors->items[i].snapshots >= STEPS)
            found = 1;
done:
    ag_free(tensors);
    ag_free(runs);
    return found;
}

static int talk(const char *ingest, const char *query) {
    char run[64];
    snprintf(run, sizeof run, "consumer-%ld", (long)getpid());
    ag_client_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.ingest_url = ingest;
    opts.query_url = query;
    opts.run = run;
    ag_client *c = NULL;
    ag_history *h = NULL;
    int status = 1;
    int rc = ag_client_open(&c, &opts);
    if (rc != AG_OK) {
        fprintf(stderr, "consumer: ag_client_open: %s\n", ag_strerror(rc));
        return 1;
    }
    float w[N], g[N];
    for (size_t i = 0; i < N; i++) {
        w[i] = 1.0f;
        g[i] = 1e-4f;
    }
    for (uint64_t step = 0; step < STEPS; step++)
        if ((rc = ag_client_log_sgd(c, step, TENSOR, w, g, N, 0.01f)) != AG_OK) {
            fprintf(stderr, "consumer: ag_client_log_sgd: %s\n", ag_strerror(rc));
            goto fail;
        }
    if ((rc = ag_client_flush(c, 10000)) != AG_OK) {
        fprintf(stderr, "consumer: ag_client_flush: %s\n", ag_strerror(rc));
        goto fail;
    }
    /* The daemon commits in batches: wait (bounded) until the run shows. */
    const struct timespec tick = {0, 50 * 1000 * 1000};
    int seen = 0;
    for (int i = 0; i < 400 && !seen; i++) {
        seen = has_tensor(c, run);
        if (!seen) nanosleep(&tick, NULL);
    }
    if (!seen) {
        fprintf(stderr, "consumer: run %s with %d snapshots of %s never showed\n", run, STEPS,
                TENSOR);
        goto fail;
    }
    ag_history_query q;
    memset(&q, 0, sizeof q);
    q.run = run;
    q.tensor = TENSOR;
    q.format = "E5M2";
    if ((rc = ag_client_history(c, &q, &h)) != AG_OK) {
        fprintf(stderr, "consumer: ag_client_history: %s (%s)\n", ag_strerror(rc),
                ag_client_last_error(c));
        goto fail;
    }
    for (size_t i = 0; i < h->n; i++) {
        printf("consumer: %s %s step %llu stall rate %.3f\n", run, TENSOR,
               (unsigned long long)h->points[i].step, h->points[i].stall_rate);
        if (h->points[i].stall_rate != 1.0) goto fail;
    }
    status = h->n == STEPS ? 0 : 1;
fail:
    ag_free(h);
    /* close ends the run and returns how many messages the daemon never
     * confirmed it stored */
    int64_t undelivered = ag_client_close(c);
    if (undelivered > 0) {
        fprintf(stderr, "consumer: %lld messages never confirmed by the daemon\n",
                (long long)undelivered);
        status = 1;
    }
    return status;
}

int main(int argc, char **argv) {
    if (argc != 1 && argc != 3) {
        fprintf(stderr, "usage: %s [INGEST_URL QUERY_URL]\n", argv[0]);
        return 2;
    }
    if (check_core() != 0) return 1;
    if (argc == 3 && talk(argv[1], argv[2]) != 0) return 1;
    printf("consumer: ok\n");
    return 0;
}
