/*
 * log.c - the trainer-facing logging calls. Statistics records are appended
 * to the open stats batch under the handle's lock (a few dozen bytes of
 * msgpack, no allocation); snapshots are validated, optionally sampled,
 * encoded outside the lock into one nng message, then queued in order.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_internal.h"
#include "core/copy.h"

#define DEFAULT_SAMPLE_SEED 0x9e3779b97f4a7c15ULL
#define CHUNK 1024 /* elements widened at a time for 16-bit statistics */

static int check_name(const char *s) {
    if (!s) return AG_EINVAL;
    size_t n = strnlen(s, AG_NAME_MAX + 1);
    if (n > AG_NAME_MAX) return AG_ETOOBIG;
    return n ? AG_OK : AG_EINVAL;
}

/* Append one record; caller holds mu. */
static int add_record_locked(ag_client *c, const ag_stat_record *r) {
    if (c->ended || c->stopping) return AG_ECLOSED;
    int rc = ag_client_start_run_locked(c);
    if (rc && rc != AG_EAGAIN) return rc;
    if (c->batch_records == 0 && (rc = ag_stats_batch_begin(&c->batch, c->run, c->client_id)))
        return rc;
    if ((rc = ag_stats_batch_add(&c->batch, r))) return rc;
    c->batch_records++;
    c->stats.records++;
    if (r->step > c->max_step) c->max_step = r->step;
    if (c->batch.buf.len >= c->opts.batch_bytes || c->batch_records >= AG_PROTO_MAX_RECORDS)
        return ag_client_close_batch_locked(c, 0);
    return AG_OK;
}

int ag_client_log_amax(ag_client *c, uint64_t step, const char *tensor, int role, double amax,
                       uint64_t numel, uint64_t nonfinite) {
    if (!c) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    int rc = check_name(tensor);
    if (rc) return rc;
    if (role < AG_ROLE_WEIGHT || role > AG_ROLE_UPDATE || !isfinite(amax) || amax < 0 ||
        nonfinite > numel)
        return AG_EINVAL;
    ag_stat_record r = {step, tensor, role, amax, numel, nonfinite};
    pthread_mutex_lock(&c->mu);
    rc = add_record_locked(c, &r);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ag_client_log_stats(ag_client *c, uint64_t step, const char *tensor, int role, const float *x,
                        size_t n) {
    if (!c || !x || n == 0) return AG_EINVAL;
    float amax = 0;
    uint64_t nonfinite = 0;
    int rc = ag_amax(x, n, &amax, &nonfinite);
    if (rc) return rc;
    return ag_client_log_amax(c, step, tensor, role, amax, n, nonfinite);
}

int ag_client_log_stats_typed(ag_client *c, uint64_t step, const char *tensor, int role, int dtype,
                              const void *x, size_t n) {
    if (dtype == AG_DTYPE_F32) return ag_client_log_stats(c, step, tensor, role, x, n);
    if (!c || !x || n == 0 || (dtype != AG_DTYPE_BF16 && dtype != AG_DTYPE_F16)) return AG_EINVAL;
    float wide[CHUNK];
    float amax = 0;
    uint64_t nonfinite = 0;
    const uint16_t *p = x;
    for (size_t at = 0; at < n; at += CHUNK) {
        size_t k = n - at < CHUNK ? n - at : CHUNK;
        int rc = dtype == AG_DTYPE_BF16 ? ag_bf16_to_f32(p + at, wide, k)
                                        : ag_f16_to_f32(p + at, wide, k);
        float part = 0;
        uint64_t bad = 0;
        if (!rc) rc = ag_amax(wide, k, &part, &bad);
        if (rc) return rc;
        if (part > amax) amax = part;
        nonfinite += bad;
    }
    return ag_client_log_amax(c, step, tensor, role, amax, n, nonfinite);
}

/* ---- snapshots ----------------------------------------------------------- */

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * A fixed subset of m of the n elements: one element from each of m strata
 * of (almost) equal size, its offset in the stratum drawn from (seed, k).
 * The same (seed, n, m) gives the same subset every step, so flips between
 * snapshots compare the same elements.
 */
static void gather_sample(const void *src, void *dst, size_t size, size_t n, size_t m,
                          uint64_t seed) {
    size_t q = n / m, r = n % m;
    const uint8_t *s = src;
    uint8_t *d = dst;
    for (size_t k = 0; k < m; k++) {
        size_t len = q + (k < r);
        size_t start = k * q + (k < r ? k : r);
        size_t idx = start + (size_t)(mix64(seed ^ (k * 0xd1b54a32d192ed03ULL)) % len);
        memcpy(d + k * size, s + idx * size, size);
    }
}

static int check_snapshot(const ag_snapshot *s) {
    int rc = check_name(s->tensor);
    if (rc) return rc;
    if (ag_proto_dtype_size(s->dtype) == 0 || s->n == 0 || !s->w || (!s->g == !s->u))
        return AG_EINVAL;
    if (s->g && !isfinite(s->lr)) return AG_EINVAL;
    if (!isfinite(s->scale) || s->scale < 0) return AG_EINVAL;
    if (s->nformats > AG_PROTO_MAX_FORMATS) return AG_ETOOBIG;
    if (s->nformats && !s->formats) return AG_EINVAL;
    if (s->numel && s->numel < s->n) return AG_EINVAL;
    for (size_t i = 0; i < s->nformats; i++)
        if (!s->formats[i] || !ag_format_get(s->formats[i])) return AG_EFORMAT;
    return AG_OK;
}

/* Announce a waiter on the segment's wake word: the wake count to wait
 * after. Read what is waited for after this (proto/shm.h). */
static uint32_t announce(ag_client_shm *sh) {
    uint32_t seen = __atomic_load_n(&sh->hdr->wake, __ATOMIC_SEQ_CST);
    __atomic_store_n(&sh->hdr->waiting, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return seen;
}

static void retire(ag_client_shm *sh) { __atomic_store_n(&sh->hdr->waiting, 0, __ATOMIC_SEQ_CST); }

/* A record of len bytes in the segment (writer and mu held): 1 and its
 * position, or 0 to send the arrays in the message. Under the blocking
 * policy a full ring is waited for, as a full queue is, while the daemon
 * keeps reading it (the ring holds what it has still to read); a daemon
 * that read nothing for SHM_STALL_MS, or a new connection (ack cleared),
 * ends the wait, and so does close (within SHM_NAP_MS). */
#define SHM_STALL_MS 2000
#define SHM_NAP_MS 100
static int reserve_locked(ag_client *c, ag_client_shm *sh, size_t len, uint64_t *at) {
    if (ag_client_shm_reserve(sh, len, at)) return 1;
    if (c->opts.policy != AG_QUEUE_BLOCK || len > sh->cap) return 0;
    uint64_t seen = sh->released;
    int64_t since = ag_mono_ms();
    int got = 0;
    while (!c->stopping && ag_client_shm_acked(sh)) {
        uint32_t wake = announce(sh);
        if ((got = ag_client_shm_reserve(sh, len, at))) break;
        pthread_mutex_unlock(&c->mu);
        ag_shm_wait(sh->hdr, wake, SHM_NAP_MS);
        pthread_mutex_lock(&c->mu);
        if ((got = ag_client_shm_reserve(sh, len, at))) break;
        if (sh->released != seen) {
            seen = sh->released;
            since = ag_mono_ms();
        } else if (ag_mono_ms() - since > SHM_STALL_MS) {
            break;
        }
    }
    retire(sh);
    return got;
}

/* Before the daemon has said it mapped the segment, snapshots carry their
 * arrays. Under the blocking policy, once a snapshot offering the segment
 * is queued on this connection, the next ones wait for the answer, at most
 * SHM_ACK_MS a connection in all, and not once the daemon's r_run said it
 * cannot map the segment (a daemon of another user, or one from before
 * shared memory, never answers the offer). */
#define SHM_ACK_MS 1000
static void await_ack(ag_client *c, ag_client_shm *sh) {
    if (c->opts.policy != AG_QUEUE_BLOCK || ag_client_shm_acked(sh) ||
        !atomic_load(&c->shm_offered) || atomic_load(&c->shm_ack_waited) >= SHM_ACK_MS ||
        atomic_load(&c->shm_caps) == SHM_CANNOT)
        return;
    int64_t start = ag_mono_ms();
    while (!ag_client_shm_acked(sh) && atomic_load(&c->shm_ack_waited) < SHM_ACK_MS &&
           atomic_load(&c->shm_caps) != SHM_CANNOT) {
        uint32_t wake = announce(sh);
        if (ag_client_shm_acked(sh)) break;
        ag_shm_wait(sh->hdr, wake, 20);
        int64_t now = ag_mono_ms();
        atomic_fetch_add(&c->shm_ack_waited, (int)(now - start));
        start = now;
        pthread_mutex_lock(&c->mu);
        int stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (stop) break;
    }
    retire(sh);
}

int ag_client_log_snapshot(ag_client *c, const ag_snapshot *s) {
    if (!c || !s) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    int rc = check_snapshot(s);
    if (rc) return rc;
    size_t size = ag_proto_dtype_size(s->dtype);
    size_t n = s->n;
    size_t m = c->opts.sample_max && n > c->opts.sample_max ? c->opts.sample_max : n;
    if (m > AG_PROTO_MAX_MESSAGE / (2 * size)) return AG_ETOOBIG;

    pthread_mutex_lock(&c->mu);
    if (c->ended || c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return AG_ECLOSED;
    }
    if (c->opts.snapshot_every > 1 && s->step % c->opts.snapshot_every != 0) {
        c->stats.skipped++;
        pthread_mutex_unlock(&c->mu);
        return AG_OK;
    }
    c->callers++; /* we wait and encode unlocked: close must wait for us */
    pthread_mutex_unlock(&c->mu);

    /* Through shared memory when the daemon has the segment mapped and its
     * ring has room: one producer at a time, so that records are queued in
     * the order of their positions (client_internal.h). */
    ag_client_shm *sh = c->shm.base ? &c->shm : NULL;
    if (sh) await_ack(c, sh);
    int writer = sh && ag_client_shm_acked(sh), via_shm = 0;
    uint64_t at = 0, mark = 0;
    size_t bytes = 2 * m * size;
    if (writer) pthread_mutex_lock(&sh->writer);
    pthread_mutex_lock(&c->mu);
    rc = c->ended || c->stopping ? AG_ECLOSED : ag_client_start_run_locked(c);
    if (!rc && writer) via_shm = reserve_locked(c, sh, bytes, &at);
    /* Under the drop policy a full queue drops the snapshot before we spend
     * time encoding it. */
    if (!rc && c->opts.policy == AG_QUEUE_DROP &&
        !ag_client_has_room_locked(c, via_shm ? AG_SHM_ALIGN : bytes)) {
        c->stats.dropped++;
        rc = AG_EAGAIN;
    }
    /* Every record below the mark was queued before this message, or never
     * will be: the daemon may hand its space back once it has read them. */
    mark = via_shm ? sh->head : c->shm_frontier;
    pthread_mutex_unlock(&c->mu);

    void *sample = NULL;
    nng_msg *nm = NULL;
    if (rc) goto leave;
    const void *w = s->w, *x = s->g ? s->g : s->u;
    if (via_shm) {
        uint8_t *dst = ag_client_shm_record(sh, at);
        uint64_t seed = c->opts.sample_seed ? c->opts.sample_seed : DEFAULT_SAMPLE_SEED;
        if (m < n) {
            gather_sample(w, dst, size, n, m, seed);
            gather_sample(x, dst + m * size, size, n, m, seed);
        } else {
            /* the daemon reads them, not us: around our caches */
            ag_copy_stream(dst, w, m * size);
            ag_copy_stream(dst + m * size, x, m * size);
        }
        w = x = NULL;
    } else if (m < n) {
        sample = malloc(2 * m * size);
        if (!sample) {
            rc = AG_ENOMEM;
            goto leave;
        }
        uint64_t seed = c->opts.sample_seed ? c->opts.sample_seed : DEFAULT_SAMPLE_SEED;
        gather_sample(w, sample, size, n, m, seed);
        gather_sample(x, (uint8_t *)sample + m * size, size, n, m, seed);
        w = sample;
        x = (uint8_t *)sample + m * size;
    }
    ag_msg msg = {.type = AG_MSG_SNAPSHOT};
    msg.hdr.run = c->run;
    msg.hdr.client_id = c->client_id;
    ag_msg_snapshot *o = &msg.u.snapshot;
    o->step = s->step;
    o->tensor = s->tensor;
    o->dtype = s->dtype;
    o->form = s->g ? AG_FORM_SGD : AG_FORM_UPDATE;
    o->lr = s->g ? s->lr : 0;
    o->n = m;
    o->numel = s->numel ? s->numel : n;
    o->has_scale = s->scale > 0;
    o->scale = s->scale;
    o->nformats = s->nformats;
    o->formats = s->formats;
    o->replicated = s->replicated != 0;
    o->w = w;
    o->x = x;
    if (sh) /* the segment: where the arrays are, or offered for the next ones */
        o->shm = (ag_msg_shm){.token = sh->token,
                              .fd = (uint64_t)sh->fd,
                              .size = sh->size,
                              .mark = mark,
                              .at = at,
                              .has_at = via_shm};
    rc = ag_client_encode_msg(&msg, &nm);
    free(sample);

leave:
    pthread_mutex_lock(&c->mu);
    if (!rc && c->ended) {
        /* another thread ended the run while we encoded: nothing may follow
         * run_end */
        nng_msg_free(nm);
        rc = AG_ECLOSED;
    }
    if (!rc) {
        ag_client_close_batch_locked(c, 0); /* records logged before this go first */
        rc = ag_client_enqueue_snapshot_locked(c, nm);
    }
    if (!rc) {
        c->stats.snapshots++;
        c->stats.shm_snapshots += (uint64_t)via_shm;
        if (s->step > c->max_step) c->max_step = s->step;
    }
    if (via_shm) c->shm_frontier = sh->head; /* the record is queued, or given up */
    if (!rc && sh && !via_shm) atomic_store(&c->shm_offered, 1); /* an offer is on its way */
    ag_client_leave_locked(c);
    pthread_mutex_unlock(&c->mu);
    if (writer) pthread_mutex_unlock(&sh->writer);
    return rc;
}

int ag_client_log_sgd(ag_client *c, uint64_t step, const char *tensor, const float *w,
                      const float *g, size_t n, float lr) {
    if (!g) return AG_EINVAL;
    ag_snapshot s = {
        .step = step, .tensor = tensor, .dtype = AG_DTYPE_F32, .w = w, .g = g, .n = n, .lr = lr};
    return ag_client_log_snapshot(c, &s);
}

int ag_client_log_update(ag_client *c, uint64_t step, const char *tensor, const float *w,
                         const float *u, size_t n) {
    if (!u) return AG_EINVAL;
    ag_snapshot s = {.step = step, .tensor = tensor, .dtype = AG_DTYPE_F32, .w = w, .u = u, .n = n};
    return ag_client_log_snapshot(c, &s);
}

/* ---- counts computed by the trainer --------------------------------------- */

/* The items [first, first + n) of b as one message's counts. */
static ag_msg_counts counts_slice(const ag_counts_batch *b, size_t first, size_t n) {
    size_t r = first * b->nformats;
    return (ag_msg_counts){.step = b->step,
                           .form = b->form,
                           .nformats = b->nformats,
                           .formats = b->formats,
                           .n = n,
                           .tensors = b->tensors ? b->tensors + first : NULL,
                           .numel = b->numel ? b->numel + first : NULL,
                           .amax = b->amax ? b->amax + first : NULL,
                           .nonfinite = b->nonfinite ? b->nonfinite + first : NULL,
                           .scales = b->scales ? b->scales + r : NULL,
                           .counts = b->counts ? b->counts + r * AG_COUNTS_PER_RESULT : NULL,
                           .flips = b->flips ? b->flips + r : NULL,
                           .replicated = b->replicated ? b->replicated + first : NULL,
                           .mse = b->mse ? b->mse + r : NULL,
                           .sqnr_db = b->sqnr_db ? b->sqnr_db + r : NULL};
}

int ag_client_log_counts(ag_client *c, const ag_counts_batch *b) {
    if (!c || !b) return AG_EINVAL;
    if (ag_client_forked(c)) return AG_ECLOSED;
    /* Everything is checked before anything is queued: a batch goes out
     * whole or not at all (a full queue aside). */
    ag_msg_counts all = counts_slice(b, 0, b->ntensors);
    const char *why = NULL;
    int rc = ag_proto_counts_check(&all, &why);
    if (rc) {
        ag_client_note_error(c, why);
        return rc;
    }
    for (size_t f = 0; f < b->nformats; f++)
        if (!ag_format_get(b->formats[f])) {
            ag_client_note_error(c, "a format this library does not know");
            return AG_EFORMAT;
        }
    pthread_mutex_lock(&c->mu);
    if (c->ended || c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return AG_ECLOSED;
    }
    rc = ag_client_start_run_locked(c);
    if (!rc) c->callers++; /* we encode unlocked: close must wait for us */
    pthread_mutex_unlock(&c->mu);
    if (rc) return rc;

    int dropped = 0;
    for (size_t first = 0; first < b->ntensors && !rc; first += AG_COUNTS_ITEMS_MAX) {
        size_t n = b->ntensors - first;
        if (n > AG_COUNTS_ITEMS_MAX) n = AG_COUNTS_ITEMS_MAX;
        ag_msg msg = {.type = AG_MSG_COUNTS};
        msg.hdr.run = c->run;
        msg.hdr.client_id = c->client_id;
        msg.u.counts = counts_slice(b, first, n);
        nng_msg *nm = NULL;
        rc = ag_client_encode_msg(&msg, &nm);
        pthread_mutex_lock(&c->mu);
        if (!rc && c->ended) { /* ended while we encoded: nothing may follow run_end */
            nng_msg_free(nm);
            rc = AG_ECLOSED;
        }
        if (!rc) {
            ag_client_close_batch_locked(c, 0); /* records logged before this go first */
            rc = ag_client_enqueue_locked(c, nm, 0, 0);
            if (rc == AG_EAGAIN) { /* dropped and counted; the next may fit */
                dropped = 1;
                rc = AG_OK;
            }
        }
        if (!rc && b->step > c->max_step) c->max_step = b->step;
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_lock(&c->mu);
    ag_client_leave_locked(c);
    pthread_mutex_unlock(&c->mu);
    return rc ? rc : dropped ? AG_EAGAIN : AG_OK;
}
