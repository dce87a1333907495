/*
 * client_threads.c - a ThreadSanitizer check of libaltgrad's client: four
 * threads log statistics and snapshots on one handle (drop or block policy,
 * a small queue, a slow receiver), a fifth queries a daemon that is absent,
 * then flush and close; then, on a second handle, two threads wait for the
 * run's name in ag_client_start_run while a third reads ag_client_run and a
 * fourth logs (small snapshots too, which go in bundles once the test daemon
 * said it takes them) and a fifth flushes (asking q_delivery, which the test daemon
 * answers "nothing stored"), until it answers q_run (after two "not yet"s)
 * and the handle closes, counting what was never confirmed. The receiver
 * plays the daemon's part of shared memory (proto/shm.h): it maps each
 * offered segment, acknowledges it, checks each record it names and
 * releases them in batches, so the first handle's producers (a ring of the
 * smallest size) reserve, write, wait for room and queue records from four
 * threads at once. It also serves the descriptor socket beside its ingest
 * socket (PROTOCOL.md 3.3.2) on a thread of its own: each new connection of
 * the second handle passes its segment there from nng's thread while its
 * threads log (the first handle's segment is offered: no socket yet).
 * Criterion's
 * runner cannot start under TSan here, so this is a plain program: `make
 * tsan` builds it with -fsanitize=thread and runs it; any ThreadSanitizer
 * report fails the target.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <altgrad/altgrad.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "proto/proto.h"
#include "proto/shm.h"
static char URL[128], QURL[128];
static atomic_int stop_rx;

/* The receiver's side of shared memory: one segment at a time (a handle's). */
static struct {
    uint64_t token, size, mark;
    uint8_t *base;
    long records, bad, pending;
} seg;
/* A segment passed on the descriptor socket, for the receiver to take up
 * (guarded by passed_mu; the pass thread maps it and acknowledges it). */
static pthread_mutex_t passed_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    uint64_t token, size;
    uint8_t *base;
} passed;
static long passes;

static void seg_message(const void *data, size_t len) {
    ag_msg m;
    if (ag_proto_decode(data, len, &m) != AG_OK) return;
    if (m.type == AG_MSG_SNAPSHOT && m.u.snapshot.shm.token) {
        const ag_msg_shm *h = &m.u.snapshot.shm;
        pthread_mutex_lock(&passed_mu);
        if (h->token != seg.token && passed.base && passed.token == h->token) {
            if (seg.base) munmap(seg.base, seg.size);
            seg.base = passed.base;
            seg.token = passed.token;
            seg.size = passed.size;
            seg.mark = 0;
            passed.base = NULL;
        }
        pthread_mutex_unlock(&passed_mu);
        if (h->token != seg.token) {
            if (seg.base) munmap(seg.base, seg.size);
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%llu", (unsigned long long)h->fd);
            int fd = open(path, O_RDWR | O_CLOEXEC);
            seg.base = fd < 0 ? MAP_FAILED
                              : mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (fd >= 0) close(fd);
            if (seg.base == MAP_FAILED) seg.base = NULL;
            seg.token = seg.base ? h->token : 0;
            seg.size = h->size;
            seg.mark = 0;
        }
        ag_shm_header *hd = (ag_shm_header *)(void *)seg.base;
        if (seg.base && ag_shm_load(&hd->ack) != seg.token) {
            ag_shm_store(&hd->ack, seg.token);
            ag_shm_wake(hd);
        }
        if (seg.base && h->mark > seg.mark) seg.mark = h->mark;
        if (seg.base && h->has_at) {
            /* every logged w is 1 and every g 1e-4 */
            const float *w = (const float *)(const void *)(seg.base + AG_SHM_HEADER +
                                                           h->at % (seg.size - AG_SHM_HEADER));
            seg.bad += w[0] != 1 || w[m.u.snapshot.n] != 1e-4f;
            seg.records++;
            if (++seg.pending == 4) { /* released in batches: producers wait for room */
                seg.pending = 0;
                ag_shm_store(&hd->released, seg.mark);
                ag_shm_wake(hd);
            }
        }
    }
    ag_msg_clear(&m);
}
static void seg_receive(nng_msg *m) {
    ag_bundle_entry e[64];
    size_t n = 0;
    ag_errctx err = {0};
    int version, type;
    if (ag_proto_peek(nng_msg_body(m), nng_msg_len(m), &version, &type) == AG_OK &&
        type == AG_MSG_BUNDLE) {
        if (ag_proto_bundle_split(nng_msg_body(m), nng_msg_len(m), e, 64, &n, &err) == AG_OK)
            for (size_t i = 0; i < n; i++) seg_message(e[i].data, e[i].len);
        return;
    }
    seg_message(nng_msg_body(m), nng_msg_len(m));
}
static void *rx(void *a) {
    (void)a;
    nng_socket s;
    nng_pull0_open(&s);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 100);
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);
    nng_listen(s, URL, NULL, 0);
    long n = 0;
    while (!stop_rx) {
        nng_msg *m;
        if (nng_recvmsg(s, &m, 0) == 0) {
            n++;
            seg_receive(m);
            nng_msg_free(m);
            if (n % 50 == 0) {
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        } else if (seg.pending) { /* quiet: release what is left */
            seg.pending = 0;
            ag_shm_header *hd = (ag_shm_header *)(void *)seg.base;
            ag_shm_store(&hd->released, seg.mark);
            ag_shm_wake(hd);
        }
    }
    nng_close(s);
    fprintf(stderr, "received %ld, %ld records through shared memory (%ld wrong)\n", n, seg.records,
            seg.bad);
    if (seg.base) munmap(seg.base, seg.size);
    return NULL;
}
static ag_client *c;
static void *prod(void *a) {
    long id = (long)a;
    char name[32];
    snprintf(name, sizeof name, "t%ld", id);
    float w[512], g[512];
    for (int i = 0; i < 512; i++) {
        w[i] = 1;
        g[i] = 1e-4f;
    }
    for (uint64_t s = 0; s < 300; s++) {
        ag_client_log_stats(c, s, name, AG_ROLE_ACTIVATION, w, 512);
        if (s % 10 == 0) ag_client_log_sgd(c, s, name, w, g, 512, 0.01f);
        if (s % 100 == 0) ag_client_flush(c, 50);
    }
    return NULL;
}
static void *q(void *a) {
    (void)a;
    for (int i = 0; i < 3; i++) {
        ag_run_list *l = NULL;
        ag_client_runs(c, &l);
        ag_free(l);
    }
    return NULL;
}
/* A test daemon for q_run: "not yet" twice, then the run is tsan.2; and for
 * q_delivery: nothing stored (so a flush asks until its deadline). */
static nng_socket rep;
static void *names(void *a) {
    (void)a;
    int asked = 0;
    for (;;) {
        nng_msg *m;
        if (nng_recvmsg(rep, &m, 0) != 0) break;
        ag_msg req, out = {.type = AG_MSG_R_ERROR};
        ag_run_ident id = {"tsan.2", "", AG_CAP_BUNDLE}; /* it takes bundles */
        out.u.error = (ag_msg_error){AG_ENOTFOUND, "not yet"};
        int ok = ag_proto_decode(nng_msg_body(m), nng_msg_len(m), &req) == AG_OK;
        if (ok && req.type == AG_MSG_Q_RUN && ++asked > 2) {
            out.type = AG_MSG_R_RUN;
            out.u.ident = &id;
        } else if (ok && req.type == AG_MSG_Q_DELIVERY) {
            /* nothing stored yet: flush and close keep asking until their deadline */
            out.type = AG_MSG_R_DELIVERY;
            out.u.delivery = (ag_msg_delivery){req.u.delivery.client_id, 0, 0};
        }
        ag_msg_clear(&req);
        ag_buf b;
        ag_buf_init(&b);
        ag_proto_encode(&b, &out);
        nng_msg_clear(m);
        nng_msg_append(m, b.data, b.len);
        ag_buf_free(&b);
        if (nng_sendmsg(rep, m, 0) != 0) nng_msg_free(m);
    }
    return NULL;
}
/* Flushes asking the test daemon for delivery while others log and wait. */
static void *flush_some(void *a) {
    (void)a;
    for (int i = 0; i < 3; i++) ag_client_flush(c, 50);
    return NULL;
}
static atomic_int named;
static void *wait_name(void *a) {
    (void)a;
    if (ag_client_start_run(c, 5000) == AG_OK && strcmp(ag_client_run(c), "tsan.2") == 0) named++;
    return NULL;
}
static void *read_name(void *a) {
    (void)a;
    for (int i = 0; i < 2000 && strcmp(ag_client_run(c), "tsan.2") != 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}
static void *log_more(void *a) {
    (void)a;
    float w[16], g[16];
    for (int i = 0; i < 16; i++) w[i] = 1, g[i] = 1e-4f;
    for (uint64_t s = 0; s < 200; s++) {
        ag_client_log_amax(c, s, "x", AG_ROLE_WEIGHT, 1, 1, 0);
        /* small snapshots: once the name (and caps) is known, bundled */
        ag_client_log_sgd(c, s, "y", w, g, 16, 0.01f);
    }
    return NULL;
}

/* The descriptor socket: accept, take the memfd, map it, acknowledge,
 * reply, keep the connection as the lease until the next one. */
static void *passer(void *a) {
    int l = *(int *)a, lease = -1;
    while (!stop_rx) {
        struct pollfd pf = {l, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0) continue;
        int cn = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (cn < 0) continue;
        ag_shm_pass_request rq;
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov = {&rq, sizeof rq};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = ctl.buf,
                            .msg_controllen = sizeof ctl.buf};
        ag_shm_pass_reply rp = {.magic = AG_SHM_REPLY_MAGIC, .status = AG_EPROTO};
        struct cmsghdr *ch = NULL;
        if (recvmsg(cn, &mh, MSG_CMSG_CLOEXEC) == (ssize_t)sizeof rq && (ch = CMSG_FIRSTHDR(&mh)) &&
            ch->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(ch), sizeof fd);
            void *p = mmap(NULL, rq.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (p != MAP_FAILED) {
                ag_shm_header *hd = p;
                pthread_mutex_lock(&passed_mu);
                if (passed.base) munmap(passed.base, passed.size);
                passed.base = p;
                passed.token = rq.token;
                passed.size = rq.size;
                passes++;
                pthread_mutex_unlock(&passed_mu);
                ag_shm_store(&hd->ack, rq.token);
                ag_shm_wake(hd);
                rp.status = AG_OK;
            }
        }
        send(cn, &rp, sizeof rp, MSG_NOSIGNAL);
        if (rp.status != AG_OK) {
            close(cn);
            continue;
        }
        if (lease >= 0) close(lease);
        lease = cn;
    }
    if (lease >= 0) close(lease);
    return NULL;
}

int main(int argc, char **argv) {
    int policy = argc > 1 ? atoi(argv[1]) : 0;
    snprintf(URL, sizeof URL, "ipc:///tmp/altgrad-tsan-%ld.sock", (long)getpid());
    pthread_t r, pt;
    pthread_create(&r, NULL, rx, NULL);
    /* the descriptor socket, from the second handle on (the first offers) */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s%s", URL + strlen("ipc://"), AG_SHM_PASS_SUFFIX);
    int pl = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ag_client_opts o = {0};
    o.ingest_url = URL;
    o.query_url = "ipc:///tmp/altgrad-tsan-absent.sock";
    o.run = "tsan";
    o.policy = policy;
    o.queue_messages = 16;
    o.query_timeout_ms = 100;
    o.shm_bytes = AG_SHM_MIN_SIZE; /* 16 records of 4 KiB: the ring fills */
    int rc = ag_client_open(&c, &o);
    if (rc) {
        fprintf(stderr, "open %s\n", ag_strerror(rc));
        return 1;
    }
    pthread_t p[4], qt;
    for (long i = 0; i < 4; i++) pthread_create(&p[i], NULL, prod, (void *)i);
    pthread_create(&qt, NULL, q, NULL);
    for (int i = 0; i < 4; i++) pthread_join(p[i], NULL);
    pthread_join(qt, NULL);
    ag_client_flush(c, 1000);
    ag_client_close(c);

    unlink(sa.sun_path);
    if (pl < 0 || bind(pl, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(pl, 8) != 0) {
        fprintf(stderr, "descriptor socket %s\n", sa.sun_path);
        return 1;
    }
    pthread_create(&pt, NULL, passer, &pl);

    snprintf(QURL, sizeof QURL, "ipc:///tmp/altgrad-tsan-q-%ld.sock", (long)getpid());
    nng_rep0_open(&rep);
    nng_listen(rep, QURL, NULL, 0);
    pthread_t nt, t[4];
    pthread_create(&nt, NULL, names, NULL);
    o.query_url = QURL;
    o.query_timeout_ms = 2000;
    o.close_timeout_ms = 300;
    rc = ag_client_open(&c, &o);
    if (rc) {
        fprintf(stderr, "open %s\n", ag_strerror(rc));
        return 1;
    }
    pthread_create(&t[0], NULL, wait_name, NULL);
    pthread_create(&t[1], NULL, wait_name, NULL);
    pthread_create(&t[2], NULL, read_name, NULL);
    pthread_create(&t[3], NULL, log_more, NULL);
    pthread_t ft;
    pthread_create(&ft, NULL, flush_some, NULL);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    pthread_join(ft, NULL);
    if (ag_client_close(c) <= 0) {
        fprintf(stderr, "nothing confirmed, yet none undelivered\n");
        return 1;
    }
    nng_close(rep);
    pthread_join(nt, NULL);
    if (named != 2) {
        fprintf(stderr, "the name was not learnt (%d)\n", (int)named);
        return 1;
    }

    stop_rx = 1;
    pthread_join(r, NULL);
    pthread_join(pt, NULL);
    close(pl);
    unlink(sa.sun_path);
    if (passes == 0) {
        fprintf(stderr, "the second handle did not pass its segment\n");
        return 1;
    }
    pthread_mutex_lock(&passed_mu);
    if (passed.base) munmap(passed.base, passed.size);
    pthread_mutex_unlock(&passed_mu);
    if (seg.bad || (policy == AG_QUEUE_BLOCK && seg.records == 0)) {
        fprintf(stderr, "shared memory: %ld records, %ld wrong\n", seg.records, seg.bad);
        return 1;
    }
    fprintf(stderr, "done policy %d (%ld segments passed)\n", policy, passes);
    unlink(URL + strlen("ipc://"));
    unlink(QURL + strlen("ipc://"));
    return 0;
}
