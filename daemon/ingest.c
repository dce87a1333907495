/*
 * ingest.c - nng PULL with one receive aio whose callback (on an nng
 * thread) queues the message and wakes the loop (see ingest.h), and the
 * bodies of large received messages kept for the next ones (nng's
 * nng_msg_body_cache, docs/nng.md). Local sockets are created owner/group
 * only.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "altgrad/altgrad.h"
#include "core/clock.h"
#include "daemon/ingest.h"
#include "daemon/secure.h"
#include <nng/protocol/pipeline0/pull.h>
#include "proto/proto.h"

/* A message body kept for reuse: malloc'd, size bytes. */
typedef struct body {
    void *p;
    size_t size;
} body;

struct ag_ingest {
    nng_socket sock;
    int open;
    nng_aio *aio;
    uv_async_t async;
    pthread_mutex_t lock;
    nng_msg **ring;
    size_t head, count, bytes, received;
    uint64_t pushed, popped; /* messages queued and taken, ever */
    int64_t resumed_ms;      /* receiving last re-armed after a pause (ag_mono_ms) */
    size_t max_bytes;        /* ag_ingest_queue_bytes */
    int paused;              /* receive not re-armed: queue full */
    int closing;
    /* bodies kept, oldest first; with the queue they fit in max_bytes */
    body bodies[AG_INGEST_BODIES];
    size_t nbodies, body_bytes;
    int cache_on; /* installed in nng */
    ag_logger *log;
    void (*on_ready)(void *);
    void *ctx;
};

int ag_ipc_prepare(const char *url, ag_logger *lg) {
    if (strncmp(url, "ipc://", 6) != 0) return AG_OK;
    const char *path = url + 6;
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return AG_OK;
    char dir[AG_CONFIG_PATH_MAX];
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir) return AG_EINVAL;
    memcpy(dir, path, len);
    dir[len] = '\0';
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        ag_log(lg, AG_LOG_ERROR, "cannot create %s for %s: %s", dir, url, strerror(errno));
        return AG_EIO;
    }
    return AG_OK;
}

size_t ag_ingest_queue_bytes(const ag_config *cfg) {
    size_t eighth = cfg->state_budget_mib > 0 ? ((size_t)cfg->state_budget_mib << 20) / 8 : 0;
    return eighth && eighth < AG_INGEST_QUEUE_BYTES ? eighth : AG_INGEST_QUEUE_BYTES;
}

/* ------------------------------------------------------ body cache */

/* nng thread: a kept body of exactly size bytes, or NULL (nng allocates). */
static void *body_take(void *arg, size_t size) {
    ag_ingest *in = arg;
    void *p = NULL;
    pthread_mutex_lock(&in->lock);
    for (size_t i = in->nbodies; i-- > 0;)
        if (in->bodies[i].size == size) { /* the newest: its pages are the warmest */
            p = in->bodies[i].p;
            memmove(&in->bodies[i], &in->bodies[i + 1], (in->nbodies - i - 1) * sizeof(body));
            in->nbodies--;
            in->body_bytes -= size;
            break;
        }
    pthread_mutex_unlock(&in->lock);
    return p;
}

/* Take the oldest kept body off the list (lock held); the caller frees it
 * once unlocked. */
static void *evict_oldest(ag_ingest *in) {
    void *p = in->bodies[0].p;
    in->body_bytes -= in->bodies[0].size;
    memmove(&in->bodies[0], &in->bodies[1], (in->nbodies - 1) * sizeof(body));
    in->nbodies--;
    return p;
}

/* Any thread freeing a message: keep its body when it fits beside the
 * queue (the oldest kept ones make room), else let nng free it. */
static int body_keep(void *arg, void *p, size_t size) {
    ag_ingest *in = arg;
    void *evicted[AG_INGEST_BODIES];
    size_t nevicted = 0;
    int kept = 0;
    pthread_mutex_lock(&in->lock);
    if (!in->closing && in->bytes + size <= in->max_bytes) {
        while (in->nbodies > 0 && (in->nbodies == AG_INGEST_BODIES ||
                                   in->bytes + in->body_bytes + size > in->max_bytes))
            evicted[nevicted++] = evict_oldest(in);
        in->bodies[in->nbodies++] = (body){p, size};
        in->body_bytes += size;
        kept = 1;
    }
    pthread_mutex_unlock(&in->lock);
    for (size_t i = 0; i < nevicted; i++) free(evicted[i]);
    return kept;
}

void ag_ingest_trim(ag_ingest *in) {
    void *all[AG_INGEST_BODIES];
    pthread_mutex_lock(&in->lock);
    size_t n = in->nbodies;
    for (size_t i = 0; i < n; i++) all[i] = in->bodies[i].p;
    in->nbodies = 0;
    in->body_bytes = 0;
    pthread_mutex_unlock(&in->lock);
    for (size_t i = 0; i < n; i++) free(all[i]);
}

size_t ag_ingest_cached_bytes(ag_ingest *in) {
    pthread_mutex_lock(&in->lock);
    size_t b = in->body_bytes;
    pthread_mutex_unlock(&in->lock);
    return b;
}

/* ------------------------------------------------------------ receive */

static void async_cb(uv_async_t *h) {
    ag_ingest *in = h->data;
    in->on_ready(in->ctx);
}

static void recv_cb(void *arg) {
    ag_ingest *in = arg;
    int rv = nng_aio_result(in->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    pthread_mutex_lock(&in->lock);
    if (in->closing) {
        if (rv == 0) nng_msg_free(nng_aio_get_msg(in->aio));
        pthread_mutex_unlock(&in->lock);
        return;
    }
    if (rv == 0) {
        nng_msg *m = nng_aio_get_msg(in->aio);
        in->ring[(in->head + in->count) % AG_INGEST_QUEUE_MSGS] = m;
        in->count++;
        in->bytes += nng_msg_len(m);
        in->received++;
        in->pushed++;
    }
    /* The queue grew: kept bodies make room, oldest first. */
    void *evicted[AG_INGEST_BODIES];
    size_t nevicted = 0;
    while (in->nbodies > 0 && in->bytes + in->body_bytes > in->max_bytes)
        evicted[nevicted++] = evict_oldest(in);
    /* A quarter of the bytes stays for kept bodies, so a backlog (the queue
     * full, the pool behind) still reads into pages already mapped. */
    int full = in->count >= AG_INGEST_QUEUE_MSGS || in->bytes >= in->max_bytes - in->max_bytes / 4;
    in->paused = full;
    pthread_mutex_unlock(&in->lock);
    for (size_t i = 0; i < nevicted; i++) free(evicted[i]);
    if (rv != 0) ag_log(in->log, AG_LOG_WARNING, "ingest: receive failed: %s", nng_strerror(rv));
    if (rv == 0) uv_async_send(&in->async);
    if (!full) nng_recv_aio(in->sock, in->aio);
}

nng_msg *ag_ingest_pop(ag_ingest *in) {
    nng_msg *m = NULL;
    int rearm = 0;
    pthread_mutex_lock(&in->lock);
    if (in->count) {
        m = in->ring[in->head];
        in->head = (in->head + 1) % AG_INGEST_QUEUE_MSGS;
        in->count--;
        in->bytes -= nng_msg_len(m);
        in->popped++;
    }
    if (in->paused && !in->closing && in->count < AG_INGEST_QUEUE_MSGS / 2 &&
        in->bytes < in->max_bytes / 2) {
        in->paused = 0;
        in->resumed_ms = ag_mono_ms();
        rearm = 1;
    }
    pthread_mutex_unlock(&in->lock);
    if (rearm) nng_recv_aio(in->sock, in->aio);
    return m;
}

size_t ag_ingest_take_received(ag_ingest *in) {
    pthread_mutex_lock(&in->lock);
    size_t n = in->received;
    in->received = 0;
    pthread_mutex_unlock(&in->lock);
    return n;
}

void ag_ingest_progress(ag_ingest *in, ag_ingest_counts *out) {
    pthread_mutex_lock(&in->lock);
    out->pushed = in->pushed;
    out->popped = in->popped;
    out->receiving = !in->paused && !in->closing;
    out->resumed_ms = in->resumed_ms;
    pthread_mutex_unlock(&in->lock);
}

size_t ag_ingest_depth(ag_ingest *in) {
    pthread_mutex_lock(&in->lock);
    size_t n = in->count;
    pthread_mutex_unlock(&in->lock);
    return n;
}

int ag_ingest_start(ag_ingest **out, uv_loop_t *loop, const ag_config *cfg, ag_logger *lg,
                    void (*on_ready)(void *ctx), void *ctx) {
    ag_ingest *in = calloc(1, sizeof *in);
    if (!in) return AG_ENOMEM;
    in->ring = calloc(AG_INGEST_QUEUE_MSGS, sizeof *in->ring);
    if (!in->ring) {
        free(in);
        return AG_ENOMEM;
    }
    in->log = lg;
    in->max_bytes = ag_ingest_queue_bytes(cfg);
    in->on_ready = on_ready;
    in->ctx = ctx;
    pthread_mutex_init(&in->lock, NULL);
    uv_async_init(loop, &in->async, async_cb);
    in->async.data = in;
    *out = in;

    int rv;
    if ((rv = nng_pull0_open(&in->sock))) goto fail;
    in->open = 1;
    if ((rv = nng_socket_set_size(in->sock, NNG_OPT_RECVMAXSZ, AG_PROTO_MAX_MESSAGE))) goto fail;
    for (size_t i = 0; i < cfg->ningest; i++) {
        nng_listener l;
        if (ag_ipc_prepare(cfg->ingest[i], lg)) return AG_EIO;
        if ((rv = nng_listener_create(&l, in->sock, cfg->ingest[i]))) {
            ag_log(lg, AG_LOG_ERROR, "ingest: bad URL %s: %s", cfg->ingest[i], nng_strerror(rv));
            return AG_ETRANSPORT;
        }
        if (strncmp(cfg->ingest[i], "ipc://", 6) == 0)
            nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0660);
        if (ag_secure_listener(l, cfg->ingest[i], lg)) return AG_ETRANSPORT;
        if ((rv = nng_listener_start(l, 0))) {
            ag_log(lg, AG_LOG_ERROR, "ingest: cannot listen on %s: %s", cfg->ingest[i],
                   nng_strerror(rv));
            return AG_ETRANSPORT;
        }
    }
    /* One daemon, one cache: nng's hook is process-wide. */
    nng_msg_body_cache(AG_INGEST_BODY_MIN, body_take, body_keep, in);
    in->cache_on = 1;
    if ((rv = nng_aio_alloc(&in->aio, recv_cb, in))) goto fail;
    nng_recv_aio(in->sock, in->aio);
    return AG_OK;
fail:
    ag_log(lg, AG_LOG_ERROR, "ingest: %s", nng_strerror(rv));
    return AG_ETRANSPORT;
}

void ag_ingest_close(ag_ingest *in) {
    if (!in) return;
    pthread_mutex_lock(&in->lock);
    in->closing = 1;
    pthread_mutex_unlock(&in->lock);
    if (in->aio) nng_aio_stop(in->aio);
    if (in->open) nng_close(in->sock);
    in->open = 0;
}

static void free_cb(uv_handle_t *h) {
    ag_ingest *in = h->data;
    pthread_mutex_destroy(&in->lock);
    free(in->ring);
    free(in);
}

void ag_ingest_free(ag_ingest *in) {
    if (!in) return;
    ag_ingest_close(in);
    /* Messages freed from now on (queries, the held message) go to free();
     * nng's rwlock makes this wait for a take or keep in progress. */
    if (in->cache_on) nng_msg_body_cache(0, NULL, NULL, NULL);
    in->cache_on = 0;
    if (in->aio) nng_aio_free(in->aio);
    in->aio = NULL;
    while (in->count) nng_msg_free(ag_ingest_pop(in));
    ag_ingest_trim(in);
    uv_close((uv_handle_t *)&in->async, free_cb);
}
