/*
 * endpoint.c - where the client looks for the daemon and whether anything
 * is there: the URL resolution (option, environment, ./var/, /run/altgrad/)
 * and a connection probe that says in one line what was tried and why it
 * failed. The probe lets a query fail at once, naming the socket, instead of
 * waiting out its timeout, and lets open warn a trainer started in the wrong
 * folder. nng itself says nothing about a dial that fails in the background.
 *
 * A probe that reaches a listener completes the SP handshake (8-byte headers
 * both ways) before it hangs up: nng 1.5 (Debian 12) has a listener that
 * stops serving after a peer disconnects in the middle of the handshake
 * (nng issue #1518, fixed in 1.6), so a bare connect-and-close would wedge
 * the daemon it was looking for.
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
#include <time.h>
#include <unistd.h>

#include "client/client_internal.h"

#define LOCAL_SOCK "var/ingest.sock"
#define SYSTEM_SOCK "/run/altgrad/ingest.sock"

char *ag_endpoint_resolve(const char *given, int ingest, int *origin)
{
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
    if (copy)
        memcpy(copy, url, n);
    return copy;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t until);

/* Wait until fd's non-blocking connect finishes or the deadline passes.
 * 0 connected, an errno value, or EINPROGRESS when still pending. */
static int connect_result(int fd, int64_t until)
{
    int ready = wait_fd(fd, POLLOUT, until);
    if (ready == 0)
        return EINPROGRESS;
    if (ready < 0)
        return errno;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

/* SP protocol numbers (the 16-bit id in the handshake header). */
#define SP_PUSH0 0x50
#define SP_PULL0 0x51
#define SP_REQ0 0x30
#define SP_REP0 0x31

/* Wait for events on fd until the deadline; 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t until)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int64_t left = until - mono_ms();
        int rv = poll(&p, 1, left > 0 ? (int)left : 0);
        if (rv >= 0)
            return rv > 0;
        if (errno != EINTR)
            return -1;
    }
}

/*
 * The SP handshake on a connected non-blocking fd, as the socket type the
 * client would use (ingest: PUSH0 to a PULL0; else REQ0 to a REP0). AG_OK
 * when the peer answered with the expected protocol, or did not answer
 * within timeout_ms (something listens: a slow daemon is nng's wait to
 * bound); AG_ETRANSPORT with why when it hung up or speaks another protocol.
 */
static int handshake(int fd, int ingest, const char *where, int timeout_ms, char *why,
                     size_t cap)
{
    unsigned self = ingest ? SP_PUSH0 : SP_REQ0, peer = ingest ? SP_PULL0 : SP_REP0;
    uint8_t out[8] = {0, 'S', 'P', 0, (uint8_t)(self >> 8), (uint8_t)self, 0, 0};
    uint8_t in[8];
    size_t sent = 0, got = 0;
    int64_t until = mono_ms() + timeout_ms;
    while (sent < sizeof out) {
        ssize_t n = send(fd, out + sent, sizeof out - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(fd, POLLOUT, until) > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return AG_OK; /* no room for 8 bytes: busy, not absent */
        snprintf(why, cap, "%s: the listener hung up at once (%s)", where, strerror(errno));
        return AG_ETRANSPORT;
    }
    while (got < sizeof in) {
        ssize_t n = recv(fd, in + got, sizeof in - got, 0);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ready = wait_fd(fd, POLLIN, until);
            if (ready > 0)
                continue;
            if (ready == 0)
                return AG_OK; /* slow to answer, but there */
        }
        snprintf(why, cap, "%s: the listener hung up without a handshake (not altgradd?)",
                 where);
        return AG_ETRANSPORT;
    }
    unsigned theirs = (unsigned)in[4] << 8 | in[5];
    if (memcmp(in, "\0SP\0", 4) != 0) {
        snprintf(why, cap, "%s does not speak nng's protocols (not altgradd)", where);
        return AG_ETRANSPORT;
    }
    if (theirs != peer) {
        snprintf(why, cap, "%s is not altgradd's %s socket (its SP protocol is 0x%x; the %s "
                 "one?)", where, ingest ? "ingest" : "query", theirs,
                 ingest ? "query" : "ingest");
        return AG_ETRANSPORT;
    }
    return AG_OK;
}

/* Describe path for a person: a relative path with "./" and the folder it
 * is relative to, since a trainer in the wrong folder is the usual cause. */
static void describe_path(const char *path, char *out, size_t cap)
{
    if (path[0] == '/') {
        snprintf(out, cap, "%s", path);
        return;
    }
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "the current folder");
    snprintf(out, cap, "./%s (in %s)", path, cwd);
}

static int probe_ipc(const char *path, int ingest, int timeout_ms, char *why, size_t cap)
{
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
    if (strlen(path) >= sizeof sa.sun_path)
        return AG_OK; /* too long to probe here; nng will say */
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return AG_OK; /* cannot probe: let nng try */
    int e = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : errno;
    if (e == 0) {
        int rc = handshake(fd, ingest, where, timeout_ms, why, cap);
        close(fd);
        return rc;
    }
    close(fd);
    /* EAGAIN: its backlog is full, so something is listening */
    if (e == EAGAIN || e == EINPROGRESS || e == EINTR)
        return AG_OK;
    if (e == ECONNREFUSED)
        snprintf(why, cap, "%s: nothing listens there (connection refused; left behind by "
                 "a daemon that stopped?)", where);
    else if (e == EACCES || e == EPERM)
        snprintf(why, cap, "%s: permission denied (the daemon's group must include this "
                 "user)", where);
    else
        snprintf(why, cap, "%s: %s", where, strerror(e));
    return AG_ETRANSPORT;
}

/* host:port of a tcp:// URL's rest into host and port; 0 on success. */
static int split_host_port(const char *rest, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    const char *h = rest;
    size_t hlen;
    if (*rest == '[') { /* [v6]:port */
        const char *close_br = strchr(rest, ']');
        if (!close_br || close_br[1] != ':')
            return -1;
        h = rest + 1;
        hlen = (size_t)(close_br - h);
        colon = close_br + 1;
    } else {
        colon = strrchr(rest, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - rest);
    }
    size_t plen = strcspn(colon + 1, "/");
    if (hlen == 0 || hlen >= hcap || plen == 0 || plen >= pcap)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    return 0;
}

static int probe_tcp(const char *url, const char *rest, int family, int ingest,
                     int timeout_ms, int pending_fails, char *why, size_t cap)
{
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
    int64_t until = mono_ms() + timeout_ms;
    int last = ECONNREFUSED, pending = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        a->ai_protocol);
        if (fd < 0)
            continue;
        int e = connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        if (e == EINPROGRESS)
            e = connect_result(fd, until);
        if (e == 0) {
            int64_t left = until - mono_ms();
            int rc = handshake(fd, ingest, url, left > 0 ? (int)left : 0, why, cap);
            close(fd);
            freeaddrinfo(res);
            return rc;
        }
        close(fd); /* refused, or still pending: the listener has nothing to tear down */
        if (e == EINPROGRESS)
            pending = 1;
        else
            last = e;
    }
    freeaddrinfo(res);
    if (pending && !pending_fails)
        return AG_OK; /* not known yet: no reason to complain */
    if (pending)
        snprintf(why, cap, "%s: no answer to a connection within %d ms", url, timeout_ms);
    else
        snprintf(why, cap, "%s: %s", url, strerror(last));
    return AG_ETRANSPORT;
}

int ag_endpoint_probe(const char *url, int ingest, int timeout_ms, int pending_fails, char *why,
                      size_t cap)
{
    if (cap)
        why[0] = '\0';
    if (strncmp(url, "ipc://", 6) == 0)
        return probe_ipc(url + 6, ingest, timeout_ms, why, cap);
    if (strncmp(url, "tcp://", 6) == 0)
        return probe_tcp(url, url + 6, AF_UNSPEC, ingest, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tcp4://", 7) == 0)
        return probe_tcp(url, url + 7, AF_INET, ingest, timeout_ms, pending_fails, why, cap);
    if (strncmp(url, "tcp6://", 7) == 0)
        return probe_tcp(url, url + 7, AF_INET6, ingest, timeout_ms, pending_fails, why, cap);
    return AG_OK; /* inproc, tls+tcp, ws...: nng's own wait is all we have */
}

void ag_endpoint_explain(const char *url, int origin, int ingest, const char *why, char *out,
                         size_t cap)
{
    const char *hint = "";
    switch (origin) {
    case AG_URL_ENV:
        hint = ingest ? " ($ALTGRAD_INGEST)" : " ($ALTGRAD_QUERY)";
        break;
    case AG_URL_FALLBACK:
        hint = " (no URL given: also looked for " SYSTEM_SOCK ", the system daemon's; start "
               "altgradd in this folder or give its URL)";
        break;
    default:
        break;
    }
    snprintf(out, cap, "no daemon at %s: %s%s", url, why, hint);
}
