/*
 * client_threads.c - a ThreadSanitizer check of libaltgrad's client: four
 * threads log statistics and snapshots on one handle (drop or block policy,
 * a small queue, a slow receiver), a fifth queries a daemon that is absent,
 * then flush and close. Criterion's runner cannot start under TSan here, so
 * this is a plain program: `make tsan` builds it with -fsanitize=thread and
 * runs it; any ThreadSanitizer report fails the target.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <altgrad/altgrad.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static char URL[128];
static atomic_int stop_rx;
static void *rx(void *a) {
    (void)a;
    nng_socket s; nng_pull0_open(&s);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 100);
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);
    nng_listen(s, URL, NULL, 0);
    long n = 0;
    while (!stop_rx) { nng_msg *m; if (nng_recvmsg(s, &m, 0) == 0) { n++; nng_msg_free(m);
        if (n % 50 == 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, NULL); } } }
    nng_close(s);
    fprintf(stderr, "received %ld\n", n);
    return NULL;
}
static ag_client *c;
static void *prod(void *a) {
    long id = (long)a; char name[32]; snprintf(name, sizeof name, "t%ld", id);
    float w[512], g[512]; for (int i = 0; i < 512; i++) { w[i] = 1; g[i] = 1e-4f; }
    for (uint64_t s = 0; s < 300; s++) {
        ag_client_log_stats(c, s, name, AG_ROLE_ACTIVATION, w, 512);
        if (s % 10 == 0) ag_client_log_sgd(c, s, name, w, g, 512, 0.01f);
        if (s % 100 == 0) ag_client_flush(c, 50);
    }
    return NULL;
}
static void *q(void *a) { (void)a; for (int i = 0; i < 3; i++) { ag_run_list *l = NULL; ag_client_runs(c, &l); ag_free(l); } return NULL; }
int main(int argc, char **argv) {
    int policy = argc > 1 ? atoi(argv[1]) : 0;
    snprintf(URL, sizeof URL, "ipc:///tmp/altgrad-tsan-%ld.sock", (long)getpid());
    pthread_t r; pthread_create(&r, NULL, rx, NULL);
    ag_client_opts o = {0}; o.ingest_url = URL; o.query_url = "ipc:///tmp/altgrad-tsan-absent.sock";
    o.run = "tsan"; o.policy = policy; o.queue_messages = 16; o.query_timeout_ms = 100;
    int rc = ag_client_open(&c, &o); if (rc) { fprintf(stderr, "open %s\n", ag_strerror(rc)); return 1; }
    pthread_t p[4], qt; for (long i = 0; i < 4; i++) pthread_create(&p[i], NULL, prod, (void *)i);
    pthread_create(&qt, NULL, q, NULL);
    for (int i = 0; i < 4; i++) pthread_join(p[i], NULL);
    pthread_join(qt, NULL);
    ag_client_flush(c, 1000);
    ag_client_close(c);
    stop_rx = 1; pthread_join(r, NULL);
    fprintf(stderr, "done policy %d\n", policy);
    unlink(URL + strlen("ipc://"));
    return 0;
}
