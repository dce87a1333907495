/*
 * harness.h - starts the real altgradd (fork/exec of $AG_BUILD_DIR/daemon/
 * altgradd) on temporary ipc sockets and a temporary database, waits for its
 * READY=1 on a private $NOTIFY_SOCKET, and stops it by signal.
 */
#ifndef AG_TESTS_DAEMON_HARNESS_H
#define AG_TESTS_DAEMON_HARNESS_H

#include <sys/types.h>

#include "altgrad/altgrad.h"

typedef struct ag_harness {
    char dir[64];
    char ingest[160];
    char query[160];
    char db[160];
    char notify[160];
    char log[160];
    pid_t pid;
    int notify_fd;
} ag_harness;

/* Make the temporary directory and the notify socket. */
void harness_init(ag_harness *h);
/* Start altgradd with extra arguments (NULL-terminated) and wait for READY=1.
 * HTTP is off unless extra names --http. */
void harness_start(ag_harness *h, const char *const *extra);
/* Send sig and wait for the exit; returns the wait status. */
int harness_stop(ag_harness *h, int sig);
/* Remove the directory. Stops a running daemon with SIGKILL first. */
void harness_fini(ag_harness *h);
/* A client on the harness's sockets. */
ag_client *harness_client(ag_harness *h, const char *run, int policy);
/* The same with resume and a launch id (NULL: the client's default). */
ag_client *harness_client_as(ag_harness *h, const char *run, int policy, int resume,
                             const char *launch_id);
/* Poll the daemon (bounded, 30 s) until history of run/tensor/format has at
 * least n points; returns the history (ag_free) or fails the test. */
ag_history *harness_wait_history(ag_client *c, const char *run, const char *tensor,
                                 const char *format, size_t n);
/* An unused loopback TCP port (bound to port 0, read back, closed). */
int harness_free_tcp_port(void);
/* The port of the daemon's web server (started with "--http 127.0.0.1:0"),
 * from the line its log writes before READY=1. */
int harness_http_port(const ag_harness *h);
/* The body of GET target from the daemon's web server (started with
 * "--http 127.0.0.1:0": its port is read from its log); fails the test
 * unless the answer is 200. free() it. */
char *harness_http_get(ag_harness *h, const char *target);
/* The value of the sample without labels called name in the daemon's
 * /metrics (as above), or NaN when there is none. */
double harness_metric(ag_harness *h, const char *name);

#endif
