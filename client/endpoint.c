/*
 * endpoint.c - where the client looks for the daemon and whether anything
 * is there: the URL resolution (option, environment, ./var/, /run/altgrad/)
 * and a connection probe that says in one line what was tried and why it
 * failed. The probe lets a query fail at once, naming the socket, instead of
 * waiting out its timeout, and lets open warn a trainer started in the wrong
 * folder. nng itself says nothing about a dial that fails in the background.
 *
 * The probe only connects and hangs up, without the SP handshake: the nng
 * altgrad links is patched so that a peer hanging up mid-handshake no longer
 * stops a listener (docs/nng.md; nng issue #1518, which nng 1.5 had).
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/client_internal.h"
#include "core/clock.h"

#define LOCAL_SOCK "var/ingest.sock"
#define SYSTEM_SOCK "/run/altgrad/ingest.sock"

char *ag_endpoint_resolve(const char *given, int ingest, int *origin) {
    const char *env = ingest ? "ALTGRAD_INGEST" : "ALTGRAD_QUERY";
    const char *url = given;
    *origin = AG_URL_GIVEN;
    if (!url || !*url) {
        url = getenv(env);
        *origin = AG_URL_ENV;
    }
    if (!url || !*url) {
        /* the ingest socket decides for both, so the two URLs agree */
        if (access(LOCAL_SOCK, F_OK) == 0) {
            url = ingest ? AG_DEFAULT_INGEST_URL : AG_DEFAULT_QUERY_URL;
            *origin = AG_URL_LOCAL;
        } else if (access(SYSTEM_SOCK, F_OK) == 0) {
            url = ingest ? AG_SYSTEM_INGEST_URL : AG_SYSTEM_QUERY_URL;
            *origin = AG_URL_SYSTEM;
        } else {
            url = ingest ? AG_DEFAULT_INGEST_URL : AG_DEFAULT_QUERY_URL;
            *origin = AG_URL_FALLBACK;
        }
    }
    size_t n = strlen(url) + 1;
    char *copy = malloc(n);
    if (copy) memcpy(copy, url, n);
    return copy;
}

/* Wait for events on fd until the deadline; 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t until) {
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int64_t left = until - ag_mono_ms();
        int rv = poll(&p, 1, left > 0 ? (int)left : 0);
        if (rv >= 0) return rv > 0;
        if (errno != EINTR) return -1;
    }
}

/* Wait until fd's non-blocking connect finishes or the deadline passes.
 * 0 connected, an errno value, or EINPROGRESS when still pending. */
static int connect_result(int fd, int64_t until) {
    int ready = wait_fd(fd, POLLOUT, until);
    if (ready == 0) return EINPROGRESS;
    if (ready < 0) return errno;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

/* Describe path for a person: a relative path with "./" and the folder it
 * is relative to, since a trainer in the wrong folder is the usual cause. */
static void describe_path(const char *path, char *out, size_t cap) {
    if (path[0] == '/') {
        snprintf(out, cap, "%s", path);
        return;
    }
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "the current folder");
    snprintf(out, cap, "./%s (in %s)", path, cwd);
}

static int probe_ipc(const char *path, char *why, size_t cap) {
    char where[700];
    describe_path(path, where, sizeof where);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            snprintf(why, cap, "%s not found", where);
        else
            snprintf(why, cap, "%s: %s", where, strerror(e));
        return AG_ETRANSPORT;
    }
    if (!S_ISSOCK(sb.st_mode)) {
        snprintf(why, cap, "%s is not a socket", where);
        return AG_ETRANSPORT;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) return AG_OK; /* too long to probe here; nng will say */
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return AG_OK; /* cannot probe: let nng try */
    int e = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : errno;
    close(fd);
    /* connected: something listens (a slow daemon is nng's wait to bound);
     * EAGAIN: its backlog is full, so something is listening too */
    if (e == 0 || e == EAGAIN || e == EINPROGRESS || e == EINTR) return AG_OK;
    if (e == ECONNREFUSED)
        snprintf(why, cap,
                 "%s: nothing listens there (connection refused; left behind by "
                 "a daemon that stopped?)",
                 where);
    else if (e == EACCES || e == EPERM)
        snprintf(why, cap,
                 "%s: permission denied (the daemon's group must include this "
                 "user)",
                 where);
    else
        snprintf(why, cap, "%s: %s", where, strerror(e));
    return AG_ETRANSPORT;
}

/* host:port of a tcp:// URL's rest into host and port; 0 on success. */
static int split_host_port(const char *rest, char *host, size_t hcap, char *port, size_t pcap) {
    const char *colon;
    const char *h = rest;
    size_t hlen;
    if (*rest == '[') { /* [v6]:port */
        const char *close_br = strchr(rest, ']');
        if (!close_br || close_br[1] != ':') return -1;
        h = rest + 1;
        hlen = (size_t)(close_br - h);
        colon = close_br + 1;
    } else {
        colon = strrchr(rest, ':');
        if (!colon) return -1;
        hlen = (size_t)(colon - rest);
    }
    size_t plen = strcspn(colon + 1, "/");
    if (hlen == 0 || hlen >= hcap || plen == 0 || plen >= pcap) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    return 0;
}

static int probe_tcp(const char *url, const char *rest, int family, int timeout_ms,
                     int pending_fails, char *why, size_t cap) {
    char host[256], port[16];
    if (split_host_port(rest, host, sizeof host, port, sizeof port) != 0)
        return AG_OK; /* nng parses its own URLs; nothing to add */
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        snprintf(why, cap, "%s: cannot resolve %s: %s", url, host, gai_strerror(g));
        return AG_ETRANSPORT;
    }
    int64_t until = ag_mono_ms() + timeout_ms;
    int last = ECONNREFUSED, pending = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int e = connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        if (e == EINPROGRESS) e = connect_result(fd, until);
        close(fd);
        if (e == 0) {
            freeaddrinfo(res);
            return AG_OK;
        }
        if (e == EINPROGRESS)
            pending = 1;
        else
            last = e;
    }
    freeaddrinfo(res);
    if (pending && !pending_fails) return AG_OK; /* not known yet: no reason to complain */
    if (pending)
        snprintf(why, cap, "%s: no answer to a connection within %d ms", url, timeout_ms);
    else
        snprintf(why, cap, "%s: %s", url, strerror(last));
    return AG_ETRANSPORT;
}

int ag_endpoint_probe(const char *url, int timeout_ms, int pending_fails, char *why, size_t cap) {
    if (cap) why[0] = '\0';
    if (strncmp(url, "ipc://", 6) == 0) return probe_ipc(url + 6, why, cap);
    if (strncmp(url, "tcp://", 6) == 0)
        return probe_tcp(url, url + 6, AF_UNSPEC, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tcp4://", 7) == 0)
        return probe_tcp(url, url + 7, AF_INET, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tcp6://", 7) == 0)
        return probe_tcp(url, url + 7, AF_INET6, timeout_ms, pending_fails, why, cap);
    /* tls+tcp: whether the port takes connections (the TLS handshake is
     * nng's; the daemon's listener survives a peer that leaves before it) */
    if (strncmp(url, "tls+tcp://", 10) == 0)
        return probe_tcp(url, url + 10, AF_UNSPEC, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tls+tcp4://", 11) == 0)
        return probe_tcp(url, url + 11, AF_INET, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tls+tcp6://", 11) == 0)
        return probe_tcp(url, url + 11, AF_INET6, timeout_ms, pending_fails, why, cap);
    return AG_OK; /* inproc, ws...: nng's own wait is all we have */
}

void ag_endpoint_explain(const char *url, int origin, int ingest, const char *why, char *out,
                         size_t cap) {
    const char *hint = "";
    switch (origin) {
    case AG_URL_ENV: hint = ingest ? " ($ALTGRAD_INGEST)" : " ($ALTGRAD_QUERY)"; break;
    case AG_URL_FALLBACK:
        hint = " (no URL given: also looked for " SYSTEM_SOCK ", the system daemon's; start "
               "altgradd in this folder or give its URL)";
        break;
    default: break;
    }
    snprintf(out, cap, "no daemon at %s: %s%s", url, why, hint);
}
