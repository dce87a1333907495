/*
 * test_transport.c - what the client's connections ask of the kernel: an
 * ipc connection's socket send buffer of 4 MiB (nng patch 0005,
 * docs/nng.md), capped by net.core.wmem_max, so that a large snapshot goes
 * out in a few writes.
 */
#include "helpers.h"

#include <sys/socket.h>
#include <sys/un.h>

static long read_long(const char *path) {
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

/* Send buffers of this process's connected unix stream sockets whose own
 * or peer address is path (both ends of a connection to a listener there),
 * into out; how many. */
static size_t sndbufs_of(const char *path, int *out, size_t cap) {
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        if (de->d_name[0] == '.') continue;
        int fd = atoi(de->d_name), type = 0, size = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
        struct sockaddr_un self = {0}, peer = {0};
        socklen_t ls = sizeof self, lp = sizeof peer;
        if (getsockname(fd, (struct sockaddr *)&self, &ls) != 0 || self.sun_family != AF_UNIX ||
            getpeername(fd, (struct sockaddr *)&peer, &lp) != 0) /* a listener */
            continue;
        if (strcmp(self.sun_path, path) != 0 && strcmp(peer.sun_path, path) != 0) continue;
        len = sizeof size;
        if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0) out[n++] = size;
    }
    closedir(d);
    return n;
}

Test(transport, an_ipc_connection_asks_for_a_4_MiB_send_buffer) {
    long wmem_max = read_long("/proc/sys/net/core/wmem_max");
    cr_assert_gt(wmem_max, 0);
    long asked = 4l << 20;
    int expected = (int)(2 * (asked < wmem_max ? asked : wmem_max)); /* Linux doubles it */

    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {
        .ingest_url = t.ingest, .query_url = t.query, .run = "transport", .close_timeout_ms = 100};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    cr_assert_eq(ag_client_log_amax(c, 1, "w", AG_ROLE_WEIGHT, 1.0, 4, 0), AG_OK);
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0); /* run_start: the connection is up */
    received_free(&m, keep);

    char path[160];
    snprintf(path, sizeof path, "%s/ingest.sock", t.dir);
    int sizes[8];
    size_t n = sndbufs_of(path, sizes, 8);
    /* the client's end and the receiver's, and perhaps the receiver's end of
     * open's probe (a connect and hang-up) not yet reaped: nng's all */
    cr_assert_geq(n, 2, "the client's end of the connection and the receiver's: %zu", n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(sizes[i], expected, "SO_SNDBUF %d, expected %d (wmem_max %ld)", sizes[i],
                     expected, wmem_max);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}
