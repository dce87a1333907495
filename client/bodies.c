/*
 * bodies.c - the bodies of large outgoing messages (snapshots), kept for the
 * next ones through nng's process-wide nng_msg_body_cache (docs/nng.md): a
 * body nng has sent comes back here instead of to free(), so the next
 * snapshot is encoded into pages already mapped, neither faulted in nor
 * zeroed again. Bodies come in size classes (eight per octave) so that
 * tensors of near sizes share them. One cache per process, installed while a
 * client is open, bounded in bytes (docs/client.md, Memory).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>

#include "client/client_internal.h"

/* A kept body: malloc'd (by nng), size bytes as nng allocated it. */
typedef struct kept_body {
    void *p;
    size_t size;
} kept_body;

/*
 * The one cache of the process: nng's hook is process-wide, so this is too.
 * `install` serialises opening and closing (the first client installs the
 * hook, the last removes it and frees what was kept); it is never taken
 * inside nng's hooks, which run under nng's own lock, so the two locks are
 * always taken in one order. `lock` guards the kept bodies and the limit.
 */
static struct {
    pthread_mutex_t install;
    unsigned clients; /* open handles (install held) */
    pthread_mutex_t lock;
    size_t limit; /* bytes kept at most; 0 while no client is open */
    kept_body bodies[AG_SEND_BODIES_MAX];
    size_t n, bytes;
    uint64_t reused; /* bodies handed out again, ever */
} cache = {.install = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER};

size_t ag_send_body_class(size_t len) {
    if (len < AG_SEND_BODY_MIN || len > AG_PROTO_MAX_MESSAGE) return len;
    /* the smallest (9..16) * 2^e that holds len: at most an eighth more */
    size_t unit = 1;
    while ((len - 1) / unit >= 16) unit <<= 1;
    return (len + unit - 1) / unit * unit;
}

static int pow2(size_t x) { return (x & (x - 1)) == 0; }

/* Is size the chunk nng allocates for a message of one of our classes?
 * nng_msg_alloc adds 32 bytes of headroom and 32 of tailroom unless the size
 * is a power of two. Other large bodies (a long query answer received) are
 * left to free(): they would rarely be asked for again, and would push out
 * the ones that are. */
static int is_class_chunk(size_t size) {
    if (size >= AG_SEND_BODY_MIN && pow2(size)) return ag_send_body_class(size) == size;
    return size >= AG_SEND_BODY_MIN + 64 && !pow2(size - 64) &&
           ag_send_body_class(size - 64) == size - 64;
}

/* nng (the encoding thread): a kept body of exactly size bytes, else NULL
 * (nng allocates a zeroed one). The newest first: its pages are the
 * warmest. */
static void *body_take(void *arg, size_t size) {
    (void)arg;
    void *p = NULL;
    pthread_mutex_lock(&cache.lock);
    for (size_t i = cache.n; i-- > 0;)
        if (cache.bodies[i].size == size) {
            p = cache.bodies[i].p;
            cache.n--;
            for (size_t j = i; j < cache.n; j++) cache.bodies[j] = cache.bodies[j + 1];
            cache.bytes -= size;
            cache.reused++;
            break;
        }
    pthread_mutex_unlock(&cache.lock);
    return p;
}

/* nng (any thread freeing a message): keep the body when it is one of our
 * classes and fits the limit, the oldest kept ones making room. */
static int body_keep(void *arg, void *p, size_t size) {
    (void)arg;
    if (!is_class_chunk(size)) return 0;
    void *evicted[AG_SEND_BODIES_MAX];
    size_t nevicted = 0;
    int kept = 0;
    pthread_mutex_lock(&cache.lock);
    if (size <= cache.limit) {
        while (cache.n > 0 && (cache.n == AG_SEND_BODIES_MAX || cache.bytes + size > cache.limit)) {
            evicted[nevicted++] = cache.bodies[0].p;
            cache.bytes -= cache.bodies[0].size;
            cache.n--;
            for (size_t i = 0; i < cache.n; i++) cache.bodies[i] = cache.bodies[i + 1];
        }
        cache.bodies[cache.n++] = (kept_body){p, size};
        cache.bytes += size;
        kept = 1;
    }
    pthread_mutex_unlock(&cache.lock);
    for (size_t i = 0; i < nevicted; i++) free(evicted[i]);
    return kept;
}

void ag_send_bodies_open(size_t queue_bytes) {
    size_t limit = queue_bytes < AG_SEND_BODIES_MAX_BYTES ? queue_bytes : AG_SEND_BODIES_MAX_BYTES;
    pthread_mutex_lock(&cache.install);
    pthread_mutex_lock(&cache.lock);
    if (limit > cache.limit) cache.limit = limit;
    pthread_mutex_unlock(&cache.lock);
    if (cache.clients++ == 0) nng_msg_body_cache(AG_SEND_BODY_MIN, body_take, body_keep, NULL);
    pthread_mutex_unlock(&cache.install);
}

void ag_send_bodies_close(void) {
    void *all[AG_SEND_BODIES_MAX];
    size_t n = 0;
    pthread_mutex_lock(&cache.install);
    if (--cache.clients == 0) {
        /* nng's lock makes this wait for a take or keep in progress; from
         * here on bodies are freed as before */
        nng_msg_body_cache(0, NULL, NULL, NULL);
        pthread_mutex_lock(&cache.lock);
        for (n = 0; n < cache.n; n++) all[n] = cache.bodies[n].p;
        cache.n = cache.bytes = cache.limit = 0;
        pthread_mutex_unlock(&cache.lock);
    }
    pthread_mutex_unlock(&cache.install);
    for (size_t i = 0; i < n; i++) free(all[i]);
}

void ag_send_bodies_forked(void) {
    /* a thread of the parent may have held either lock: start afresh. The
     * kept bodies are the parent's copies, left alone; with no limit the
     * hook (still installed in this copy of nng) keeps nothing. */
    pthread_mutex_init(&cache.install, NULL);
    pthread_mutex_init(&cache.lock, NULL);
    cache.clients = 0;
    cache.limit = cache.n = cache.bytes = 0;
}

void ag_send_bodies_get(ag_send_bodies_stats *out) {
    pthread_mutex_lock(&cache.lock);
    *out = (ag_send_bodies_stats){cache.bytes, cache.n, cache.limit, cache.reused};
    pthread_mutex_unlock(&cache.lock);
}
