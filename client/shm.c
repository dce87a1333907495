/*
 * shm.c - the client's side of snapshots through shared memory
 * (proto/shm.h, docs/client.md "Shared memory"). A client whose ingest URL
 * is ipc:// creates one sealed memfd at open; its snapshots offer it to the
 * daemon, and once the daemon has mapped it (ack) their arrays are written
 * into its ring instead of into the message, which then carries only where
 * they are. The daemon says which records it has read (released); a record
 * that does not fit the free part of the ring goes in its message as before.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/client_internal.h"

int ag_client_shm_open(ag_client_shm *s, size_t bytes) {
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->lease = -1;
    if (bytes < AG_SHM_MIN_SIZE || bytes > AG_SHM_MAX_SIZE) return AG_EINVAL;
    bytes = (bytes + 4095) & ~(size_t)4095;
    int fd = memfd_create("altgrad-snapshots", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return AG_EINVAL;
    /* Sealed at its size: the daemon maps it and refuses one it could see
     * shrink (a read past the end would kill it with SIGBUS). */
    if (ftruncate(fd, (off_t)bytes) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        close(fd);
        return AG_ENOMEM;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return AG_ENOMEM;
    }
    if (pthread_mutex_init(&s->writer, NULL) != 0) {
        munmap(p, bytes);
        close(fd);
        return AG_ENOMEM;
    }
    s->fd = fd;
    s->base = p;
    s->hdr = p;
    s->size = bytes;
    s->cap = bytes - AG_SHM_HEADER;
    s->token = ag_client_random_u64();
    s->hdr->magic = AG_SHM_MAGIC;
    s->hdr->token = s->token;
    s->hdr->size = bytes;
    ag_shm_store(&s->hdr->ack, 0);
    ag_shm_store(&s->hdr->released, 0);
    return AG_OK;
}

void ag_client_shm_close(ag_client_shm *s) {
    if (!s->base) return;
    /* The daemon keeps its own mapping: records it has not read yet stay
     * readable after this (the memfd lives while anyone maps it). */
    munmap(s->base, s->size);
    close(s->fd);
    if (s->lease >= 0) close(s->lease); /* the daemon unmaps it once it has read it */
    s->lease = -1;
    pthread_mutex_destroy(&s->writer);
    s->base = NULL;
    s->fd = -1;
}

int ag_client_shm_acked(const ag_client_shm *s) {
    return s->base && ag_shm_load(&s->hdr->ack) == s->token;
}

#define PASS_TIMEOUT_MS 2000 /* for each of connect, send and the reply */

int ag_client_shm_pass(ag_client_shm *s, const char *ingest_url, uint64_t daemon_pid,
                       uint64_t daemon_uid) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!s->base || strncmp(ingest_url, "ipc://", 6) != 0) return AG_EINVAL;
    const char *path = ingest_url + 6;
    if (strlen(path) + sizeof AG_SHM_PASS_SUFFIX > sizeof sa.sun_path) return AG_EINVAL;
    memcpy(sa.sun_path, path, strlen(path));
    memcpy(sa.sun_path + strlen(path), AG_SHM_PASS_SUFFIX, sizeof AG_SHM_PASS_SUFFIX);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return AG_ETRANSPORT;
    struct timeval tv = {PASS_TIMEOUT_MS / 1000, (PASS_TIMEOUT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ag_shm_pass_request rq = {AG_SHM_PASS_MAGIC, s->token, s->size, 0};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {&rq, sizeof rq};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
    ch->cmsg_level = SOL_SOCKET;
    ch->cmsg_type = SCM_RIGHTS;
    ch->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(ch), &s->fd, sizeof(int));
    ag_shm_pass_reply rp;
    /* Only to the daemon: a process that took the socket's path (another
     * user's, in a shared /tmp) must not get the trainer's arrays. The
     * kernel names the listener as it names the ingest connection's peer:
     * the same pid, or (both outside our pid namespace) the same user. */
    struct ucred cr = {0, 0, 0};
    socklen_t crlen = sizeof cr;
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
             getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) == 0 &&
             (uint64_t)cr.pid == daemon_pid &&
             (daemon_pid != 0 || (uint64_t)cr.uid == daemon_uid) &&
             sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)sizeof rq &&
             recv(fd, &rp, sizeof rp, 0) == (ssize_t)sizeof rp && rp.magic == AG_SHM_REPLY_MAGIC &&
             rp.status == AG_OK && ag_client_shm_acked(s);
    if (!ok) {
        close(fd);
        return AG_ETRANSPORT;
    }
    if (s->lease >= 0) close(s->lease); /* the earlier connection's: ended */
    s->lease = fd;
    return AG_OK;
}

void ag_client_shm_reconnected(ag_client_shm *s) {
    /* A new connection may be a new daemon, which has not mapped the
     * segment: offer it again before writing records into it. */
    if (s->base) ag_shm_store(&s->hdr->ack, 0);
}

int ag_client_shm_reserve(ag_client_shm *s, size_t len, uint64_t *at) {
    uint64_t released = ag_shm_load(&s->hdr->released);
    /* Only the daemon writes it, and only forward; a value outside what was
     * reserved is not believed. */
    if (released > s->head || released < s->released) released = s->released;
    s->released = released;
    uint64_t need = ((uint64_t)len + AG_SHM_ALIGN - 1) / AG_SHM_ALIGN * AG_SHM_ALIGN;
    if (need == 0 || need > s->cap) return 0;
    uint64_t start = s->head, off = start % s->cap;
    if (off + need > s->cap) start += s->cap - off; /* never across the ring's end */
    if (released == s->head) released = start;      /* nothing unread: the gap skipped is free */
    if (start + need - released > s->cap) return 0;
    *at = start;
    s->head = start + need;
    return 1;
}

uint8_t *ag_client_shm_record(const ag_client_shm *s, uint64_t at) {
    return s->base + AG_SHM_HEADER + at % s->cap;
}
