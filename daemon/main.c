/*
 * main.c - altgradd: startup (config, store, restore, writer, listeners),
 * the libuv loop that moves messages from ingest to the engine, signals
 * (SIGTERM/SIGINT drain and exit 0, SIGHUP reopen log and reload), systemd
 * readiness and watchdog, and an orderly shutdown that commits everything.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "core/arena.h"
#include "core/clock.h"
#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/engine.h"
#include "daemon/http.h"
#include "daemon/ingest.h"
#include "daemon/log.h"
#include "daemon/notify.h"
#include "daemon/query.h"
#include "daemon/secure.h"
#include "daemon/shm.h"
#include "daemon/writer.h"
#include "proto/proto.h"
#include "schema/store.h"

#define PUMP_BATCH 256     /* messages per loop turn before yielding */
#define DRAIN_TICK_MS 100  /* while stopping: how often intake is checked */
#define DRAIN_IDLE_TICKS 3 /* quiet ticks before intake closes */
#define DRAIN_MAX_MS 10000 /* intake closes after this at the latest */
#define FLUSH_MS 200       /* tensor deltas and scales of statistics, at most this late */
#define TRIM_TICKS 5       /* flush ticks without a snapshot job before spares are freed */

typedef struct ag_daemon {
    int argc;
    char **argv;
    ag_config cfg;
    ag_logger log;
    ag_counters counters;
    uint64_t start_ms;
    /* The reloadable part of the scale rule, for status on the query threads
     * (the loop writes cfg on SIGHUP): scale mode, margin as its bits. */
    _Atomic int live_scale_mode;
    _Atomic uint64_t live_margin_bits;
    /* a query thread waits for a commit a client asked for (delivery_asked) */
    _Atomic int delivery_waiter;
    uv_loop_t loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t watchdog, drain, flush;
    uv_async_t kick; /* writer has room again / more to pump */
    ag_engine *engine;
    ag_writer *writer;
    ag_ingest *ingest;
    ag_query *query;
    ag_http *http; /* NULL with --http off */
    /* snapshots being evaluated on the thread pool, and the next message
     * when it must wait for them (ag_engine_may_overlap) */
    size_t threads, max_jobs;
    struct inflight *jobs; /* list */
    size_t njobs;
    nng_msg *held_nng;
    ag_msg held_msg;
    ag_shm_ref held_ref; /* its record in a client's segment, if any */
    ag_shm_table *shm;   /* the clients' segments (daemon/shm.h) */
    /* the messages of the last bundle taken (t = 6), each its own nng
     * message, handled before anything more is taken from the ring */
    nng_msg **split;
    size_t nsplit, split_at;
    /* flip baselines: when the next sweep may start (0: one is running) */
    uint64_t next_persist_ms;
    /* snapshot jobs started, and that count at the last flush tick: spare
     * buffers are freed after TRIM_TICKS ticks without a new job */
    uint64_t jobs_started, jobs_at_tick;
    unsigned quiet_ticks;
    /* what /metrics shows of the pool and the engine's memory (fill_pool_stats):
     * written here, read by the web server's threads. held_waited: the held
     * message is counted in waits already. */
    _Atomic uint64_t m_in_flight, m_evaluated, m_pipelined, m_waits;
    _Atomic uint64_t m_state, m_inflight, m_spare, m_budget;
    int held_waited;
    /* shutdown */
    int stopping, intake_closed, closed;
    int store_degraded; /* last health the loop reported (STATUS=, log) */
    unsigned idle_ticks;
    uint64_t drain_start_ms;
} ag_daemon;

static void pump(ag_daemon *d);

/* The engine's memory and the snapshots in flight, for /metrics. */
static void publish_pool(ag_daemon *d) {
    ag_engine_stats m;
    ag_engine_stats_of(d->engine, &m);
    atomic_store_explicit(&d->m_evaluated, m.evaluated, memory_order_relaxed);
    atomic_store_explicit(&d->m_state, m.state, memory_order_relaxed);
    atomic_store_explicit(&d->m_inflight, m.inflight, memory_order_relaxed);
    atomic_store_explicit(&d->m_spare, m.spare, memory_order_relaxed);
    atomic_store_explicit(&d->m_budget, m.budget, memory_order_relaxed);
    atomic_store_explicit(&d->m_in_flight, d->njobs, memory_order_relaxed);
}

/* ------------------------------------------------------------- messages */

/* One snapshot in flight: its message (the job reads its payload) and one
 * pool request per chunk. */
typedef struct inflight {
    ag_daemon *d;
    ag_engine_job *job;
    nng_msg *nm;
    ag_msg msg;
    ag_shm_ref ref; /* the arrays' record in a client's segment: released
                     * when the job ends (its chunks copy what they read) */
    size_t left;    /* chunks not yet done */
    int parked;     /* amax phase done, waiting for the end of a job before
                     * it of the same tensor (ag_engine_may_follow) */
    int resume;     /* parked, and such a job has ended: job_done steps it */
    /* Pipelined (ag_engine_job_next_behind): behind is the job of the same
     * tensor ahead of this one, whose kernel chunk c must have run before
     * this one's chunk c is queued; after is the reverse link. Cleared when
     * either ends. */
    struct inflight *behind, *after;
    struct chunk_work *works; /* the current phase's */
    struct inflight *next;
} inflight;

typedef struct chunk_work {
    uv_work_t req;
    inflight *f;
    size_t index;
    int queued, done;
} chunk_work;

static void chunk_cb(uv_work_t *req) {
    chunk_work *w = req->data;
    ag_engine_job_run_chunk(w->f->job, w->index);
}

static int dispatch_chunks(ag_daemon *d, inflight *f);

/* The job of f's tensor right ahead of it (the latest one before it), in
 * flight; or NULL. The list holds the newest first. */
static inflight *earlier_of(ag_daemon *d, const inflight *f) {
    int seen = 0;
    for (inflight *g = d->jobs; g; g = g->next) {
        if (g == f)
            seen = 1;
        else if (seen && ag_engine_job_follows(f->job, g->job))
            return g;
    }
    return NULL;
}

/* f's amax phase has ended while a job before it of the same tensor still
 * runs and f may not run behind it: park f until a job of its tensor ends
 * (job_done then tries again). */
static void park(ag_daemon *d, inflight *f) {
    f->parked = 1;
    ag_log(&d->log, AG_LOG_DEBUG, "snapshot of %s: amax taken beside the one before it",
           ag_engine_job_tensor(f->job));
}

static void after_chunk_cb(uv_work_t *req, int status);
static int job_step(ag_daemon *d, inflight *f);
static void resume_parked(ag_daemon *d);
static int wake_followers(ag_daemon *d, const inflight *f);

/* Queue chunk c of f's kernels, whose turn has come (the job ahead of it
 * has run its chunk c); where the pool refuses it, run it here. */
static void release_chunk(ag_daemon *d, inflight *f, size_t c) {
    chunk_work *w = &f->works[c];
    if (w->queued) return;
    w->queued = 1;
    if (uv_queue_work(&d->loop, &w->req, chunk_cb, after_chunk_cb) == 0) return;
    ag_engine_job_run_chunk(f->job, c);
    after_chunk_cb(&w->req, 0);
}

/* f's amax phase has ended while before, the job ahead of it of the same
 * tensor, runs its kernels: f takes its scales now and runs its kernels
 * behind before's, chunk c once before's chunk c has run. 1 while f is in
 * flight, 0 when it is done (it failed); -1 when it may not (park it). */
static int pipeline(ag_daemon *d, inflight *f, inflight *before) {
    if (!ag_engine_may_pipeline(f->job, before->job) || !before->works) return -1;
    size_t n = ag_engine_job_chunks(before->job);
    chunk_work *works = calloc(n, sizeof *works);
    if (!works) return -1;
    if (!ag_engine_job_next_behind(d->engine, f->job, before->job)) {
        free(works);
        return 0;
    }
    free(f->works);
    f->works = works;
    f->behind = before;
    before->after = f;
    ag_log(&d->log, AG_LOG_DEBUG, "snapshot of %s: kernels pipelined behind the one before it",
           ag_engine_job_tensor(f->job));
    atomic_fetch_add_explicit(&d->m_pipelined, 1, memory_order_relaxed);
    f->left = n + 1; /* held until every chunk ready now is queued */
    for (size_t c = 0; c < n; c++) {
        works[c] = (chunk_work){.f = f, .index = c};
        works[c].req.data = &works[c];
    }
    for (size_t c = 0; c < n; c++)
        if (before->works[c].done) release_chunk(d, f, c);
    if (--f->left) return 1;
    return job_step(d, f); /* every chunk ran here (the pool refused them) */
}

/* Every chunk of f's current phase has run: the next phase, pipelined or
 * parked. 1 while f is in flight, 0 when it is done. */
static int job_step(ag_daemon *d, inflight *f) {
    inflight *before = ag_engine_job_scales_pending(f->job) ? earlier_of(d, f) : NULL;
    if (before) {
        int on = before->parked ? -1 : pipeline(d, f, before);
        if (on >= 0) return on;
        park(d, f);
        return 1;
    }
    return ag_engine_job_next(d->engine, f->job) && dispatch_chunks(d, f);
}

static void job_done(ag_daemon *d, inflight *f) {
    for (inflight **p = &d->jobs; *p; p = &(*p)->next)
        if (*p == f) {
            *p = f->next;
            break;
        }
    d->njobs--;
    if (f->behind) f->behind->after = NULL; /* ended first: it failed */
    if (f->after) f->after->behind = NULL;  /* its chunks are queued (the last just after) */
    /* the jobs of its tensor parked behind it try again, oldest first */
    for (inflight *g = d->jobs; g; g = g->next)
        if (g->parked && ag_engine_job_follows(g->job, f->job)) g->resume = 1;
    ag_engine_job_finish(d->engine, f->job);
    ag_shm_release(&f->ref);
    ag_msg_clear(&f->msg);
    nng_msg_free(f->nm);
    free(f->works);
    free(f);
    publish_pool(d);
    resume_parked(d);
}

/* Step the parked jobs marked resume, oldest first (each may let the next
 * run behind it). */
static void resume_parked(ag_daemon *d) {
    for (;;) {
        inflight *next = NULL; /* the list holds the newest first */
        for (inflight *g = d->jobs; g; g = g->next)
            if (g->resume) next = g;
        if (!next) break;
        next->resume = next->parked = 0;
        if (!job_step(d, next))
            job_done(d, next);
        else if (!next->parked)
            wake_followers(d, next); /* it took its scales: those behind it may too */
    }
}

/* f has taken its scales: mark the jobs of its tensor parked behind it
 * (they may now run their kernels behind its) to be stepped again. Whether
 * there were any. */
static int wake_followers(ag_daemon *d, const inflight *f) {
    int any = 0;
    for (inflight *g = d->jobs; g; g = g->next)
        if (g->parked && ag_engine_job_follows(g->job, f->job)) any = g->resume = 1;
    return any;
}

static void after_chunk_cb(uv_work_t *req, int status) {
    chunk_work *w = req->data;
    inflight *f = w->f, *after = f->after;
    ag_daemon *d = f->d;
    size_t c = w->index;
    (void)status;
    w->done = 1;
    int phase_over = !--f->left;
    int ended = phase_over && !job_step(d, f);
    if (ended) job_done(d, f); /* before the chunk below can let the one after it end */
    if (after) release_chunk(d, after, c);
    /* f has taken its scales: the jobs of its tensor parked behind it may
     * now run their kernels behind its */
    if (phase_over && !ended && !f->parked && wake_followers(d, f)) resume_parked(d);
    /* a job ended or took its scales: a message held back (may_start) may
     * start now */
    if (ended || (phase_over && d->held_nng)) pump(d);
}

/* Put the chunks of the job's current phase on the pool; where the pool
 * refuses one, run it here rather than lose it. 1 when some were queued
 * (after_chunk_cb goes on), 0 when every chunk has already run. */
static int dispatch_chunks(ag_daemon *d, inflight *f) {
    size_t n = ag_engine_job_chunks(f->job);
    chunk_work *works = n ? calloc(n, sizeof *works) : NULL;
    free(f->works);
    f->works = works;
    f->left = n + 1; /* held until every chunk is queued */
    for (size_t c = 0; c < n; c++) {
        if (works) {
            works[c] = (chunk_work){.f = f, .index = c, .queued = 1};
            works[c].req.data = &works[c];
            if (uv_queue_work(&d->loop, &works[c].req, chunk_cb, after_chunk_cb) == 0) continue;
        }
        ag_engine_job_run_chunk(f->job, c);
        if (works) works[c].done = 1;
        f->left--;
    }
    if (--f->left) return 1;
    /* every chunk ran here: the next phase (pipelined or parked), if any */
    return job_step(d, f);
}

static void dispatch(ag_daemon *d, ag_engine_job *job, nng_msg *nm, const ag_msg *m,
                     ag_shm_ref *ref) {
    d->jobs_started++;
    inflight *f = calloc(1, sizeof *f);
    if (!f) { /* no memory to track it: evaluate it now */
        ag_engine_job_run(d->engine, job);
        ag_engine_job_finish(d->engine, job);
        ag_shm_release(ref);
        ag_msg_clear((ag_msg *)m);
        nng_msg_free(nm);
        return;
    }
    *f = (inflight){.d = d, .job = job, .nm = nm, .msg = *m, .ref = *ref};
    ref->seg = NULL;
    f->next = d->jobs;
    d->jobs = f;
    d->njobs++;
    publish_pool(d);
    if (!dispatch_chunks(d, f)) job_done(d, f);
}

/* Whether the decoded message m may be handled now, beside the jobs in flight. */
static int may_start(ag_daemon *d, const ag_msg *m, size_t len) {
    if (d->njobs == 0) return 1;
    if (m->type == AG_MSG_SNAPSHOT &&
        (d->njobs >= d->max_jobs || !ag_engine_snapshot_fits(d->engine, m, len)))
        return 0;
    const char *names[64];
    size_t k = 0;
    int pending = 0;
    for (inflight *f = d->jobs; f; f = f->next) pending |= ag_engine_job_scales_pending(f->job);
    for (inflight *f = d->jobs; f; f = f->next) {
        /* the job of m's tensor, which m may follow before it ends */
        if (ag_engine_may_follow(m, f->job)) continue;
        names[k++] = ag_engine_job_tensor(f->job);
        if (k == sizeof names / sizeof names[0]) {
            if (!ag_engine_may_overlap(m, names, k, pending)) return 0;
            k = 0;
        }
    }
    return ag_engine_may_overlap(m, names, k, pending);
}

/* Decode one message, its arrays pointed into a client's segment when they
 * are there (*ref); NULL-type result when it was rejected (counted). */
static int decode(ag_daemon *d, nng_msg *nm, ag_msg *m, ag_shm_ref *ref) {
    size_t len = nng_msg_len(nm);
    memset(m, 0, sizeof *m);
    ref->seg = NULL;
    int rc = ag_proto_decode(nng_msg_body(nm), len, m);
    if (rc == AG_OK && !ag_proto_is_stream(m->type))
        rc = ag_errctx_set(&m->err, AG_EPROTO, "not a stream message");
    if (rc == AG_OK) rc = ag_shm_resolve(d->shm, nm, m, ref, &m->err);
    if (rc) {
        ag_log(&d->log, AG_LOG_WARNING, "ingest: rejected a %zu-byte message: %s (%s)", len,
               ag_strerror(rc), ag_errctx_text(&m->err));
        ag_msg_clear(m);
        nng_msg_free(nm);
        ag_engine_reject(d->engine, len);
    }
    return rc;
}

/* Split the bundle nm into its messages (d->split, taken before the ring),
 * as if they had arrived one by one; a malformed bundle is rejected whole.
 * A message that cannot be copied is counted rejected. Frees nm. */
static void unbundle(ag_daemon *d, nng_msg *nm) {
    size_t len = nng_msg_len(nm), n = 0, i;
    ag_errctx err = {0};
    ag_bundle_entry *e = malloc(AG_PROTO_MAX_BUNDLE * sizeof *e);
    if (!d->split) d->split = malloc(AG_PROTO_MAX_BUNDLE * sizeof *d->split);
    int rc = !e || !d->split
                 ? AG_ENOMEM
                 : ag_proto_bundle_split(nng_msg_body(nm), len, e, AG_PROTO_MAX_BUNDLE, &n, &err);
    if (rc) {
        ag_log(&d->log, AG_LOG_WARNING, "ingest: rejected a %zu-byte bundle: %s (%s)", len,
               ag_strerror(rc), ag_errctx_text(&err));
        ag_engine_reject(d->engine, len);
        n = 0;
    }
    d->nsplit = d->split_at = 0;
    for (i = 0; i < n; i++) {
        nng_msg *one = NULL;
        if (nng_msg_alloc(&one, e[i].len) != 0) {
            ag_log(&d->log, AG_LOG_ERROR, "ingest: out of memory splitting a bundle");
            ag_engine_reject(d->engine, e[i].len);
            continue;
        }
        memcpy(nng_msg_body(one), e[i].data, e[i].len);
        nng_msg_set_pipe(one, nng_msg_get_pipe(nm)); /* who sent it (daemon/shm.c) */
        d->split[d->nsplit++] = one;
    }
    if (n) ag_log(&d->log, AG_LOG_DEBUG, "ingest: a bundle of %zu messages", n);
    free(e);
    nng_msg_free(nm);
}

static int is_bundle(nng_msg *nm) {
    int version, type;
    return ag_proto_peek(nng_msg_body(nm), nng_msg_len(nm), &version, &type) == AG_OK &&
           type == AG_MSG_BUNDLE;
}

/* The next message to handle: the rest of a split bundle first. */
static nng_msg *next_message(ag_daemon *d) {
    for (;;) {
        if (d->split_at < d->nsplit) return d->split[d->split_at++];
        nng_msg *nm = ag_ingest_pop(d->ingest);
        if (!nm || !is_bundle(nm)) return nm;
        unbundle(d, nm);
    }
}

/* File one decoded message; never fails the daemon. */
static void process(ag_daemon *d, nng_msg *nm, ag_msg *m, ag_shm_ref *ref) {
    ag_engine_job *job = NULL;
    ag_engine_handle(d->engine, m, nng_msg_len(nm), &job);
    if (job) {
        dispatch(d, job, nm, m, ref);
        return;
    }
    if (m->type == AG_MSG_SNAPSHOT) publish_pool(d); /* evaluated here, or refused */
    ag_shm_release(ref);
    ag_msg_clear(m);
    nng_msg_free(nm);
}

/* Move messages from the inbound queue into the engine, in order, while the
 * writer has room; a message that must wait for a snapshot in flight holds
 * the rest back. Yields after PUMP_BATCH messages. */
static void pump(ag_daemon *d) {
    if (d->closed) return;
    for (int i = 0; i < PUMP_BATCH; i++) {
        if (ag_writer_full(d->writer)) return; /* woken by kick */
        if (!d->held_nng) {
            nng_msg *nm = next_message(d);
            if (!nm) return;
            if (decode(d, nm, &d->held_msg, &d->held_ref)) continue;
            d->held_nng = nm;
        }
        if (!may_start(d, &d->held_msg, nng_msg_len(d->held_nng))) { /* woken by a job */
            if (!d->held_waited) atomic_fetch_add_explicit(&d->m_waits, 1, memory_order_relaxed);
            d->held_waited = 1;
            return;
        }
        d->held_waited = 0;
        nng_msg *nm = d->held_nng;
        ag_msg m = d->held_msg;
        ag_shm_ref ref = d->held_ref;
        d->held_nng = NULL;
        d->held_ref.seg = NULL;
        memset(&d->held_msg, 0, sizeof d->held_msg);
        process(d, nm, &m, &ref);
    }
    uv_async_send(&d->kick);
}

static void on_ingest_ready(void *ctx) { pump(ctx); }

static void kick_cb(uv_async_t *h) { pump(h->data); }

/* Writer thread: the queue fell below its high-water mark. */
static void on_writer_space(void *ctx) {
    ag_daemon *d = ctx;
    uv_async_send(&d->kick);
}

/* ---------------------------------------------------------------- status */

static uint64_t now_ms(void) { return (uint64_t)ag_mono_ms(); }

/* A client waits for its messages to be stored (q_delivery, a query
 * thread): the writer commits once it has caught up, not at batch time,
 * and the answer waits a little for that commit. One query thread at a
 * time waits; the others answer at once (their clients ask again), so
 * clients asking in a loop never hold every query thread. */
#define DELIVERY_WAIT_MS 10
static void delivery_asked(void *ctx) {
    ag_daemon *d = ctx;
    if (atomic_exchange(&d->delivery_waiter, 1)) {
        ag_writer_hurry(d->writer);
        return;
    }
    ag_writer_hurry_wait(d->writer, DELIVERY_WAIT_MS);
    atomic_store(&d->delivery_waiter, 0);
}

/* Query thread: the live fields of a status reply, the two only a running
 * daemon has. Everything else is what the database holds (ag_store_status),
 * so `altgrad --db` reports the same numbers (docs/cli.md). */
static void fill_status(void *ctx, ag_status *st) {
    ag_daemon *d = ctx;
    st->uptime_s = (double)(now_ms() - d->start_ms) / 1000.0;
    st->queue_depth = ag_writer_depth(d->writer);
    /* The scale rule in force (margin and scale mode reload on SIGHUP). */
    st->history_len = (uint64_t)d->cfg.history_len;
    st->amax_mode = ag_config_amax_mode_name(d->cfg.amax_mode); /* set before any thread */
    st->scale_mode = ag_config_scale_mode_name(atomic_load(&d->live_scale_mode));
    uint64_t bits = atomic_load(&d->live_margin_bits);
    memcpy(&st->margin, &bits, sizeof st->margin);
    st->scale_min = AG_SCALE_MIN;
    st->caps = AG_CAPS;
    ag_shm_stats shm;
    ag_shm_get_stats(d->shm, &shm);
    st->shm_segments = shm.segments;
    st->shm_passed = shm.passed;
    st->shm_snapshots = shm.snapshots;
    st->shm_refused = shm.refused;
    /* Live health; rows given up and not yet counted in the file too. */
    ag_writer_health_info h;
    char text[sizeof h.why + 16];
    if (ag_writer_health(d->writer, &h))
        snprintf(text, sizeof text, "degraded: %s", h.why);
    else
        snprintf(text, sizeof text, "ok");
    const char *s = ag_arena_strdup(st, text);
    if (s) st->store = s;
    st->discarded += h.unpersisted;
}

/* Web server thread: the shared-memory numbers of /metrics. */
static void fill_shm_stats(void *ctx, ag_shm_stats *out) {
    ag_daemon *d = ctx;
    ag_shm_get_stats(d->shm, out);
}

/* Web server thread: the pool's, the engine's memory and the writer's. */
static void fill_pool_stats(void *ctx, ag_pool_stats *out) {
    ag_daemon *d = ctx;
    *out = (ag_pool_stats){.threads = d->threads, /* set before any thread starts */
                           .in_flight = atomic_load_explicit(&d->m_in_flight, memory_order_relaxed),
                           .evaluated = atomic_load_explicit(&d->m_evaluated, memory_order_relaxed),
                           .pipelined = atomic_load_explicit(&d->m_pipelined, memory_order_relaxed),
                           .waits = atomic_load_explicit(&d->m_waits, memory_order_relaxed),
                           .state_bytes = atomic_load_explicit(&d->m_state, memory_order_relaxed),
                           .inflight_bytes =
                               atomic_load_explicit(&d->m_inflight, memory_order_relaxed),
                           .spare_bytes = atomic_load_explicit(&d->m_spare, memory_order_relaxed),
                           .budget_bytes = atomic_load_explicit(&d->m_budget, memory_order_relaxed),
                           .commits = ag_writer_commits(d->writer),
                           .hurried = ag_writer_hurried(d->writer)};
}

/* Record what this daemon runs with in the database (daemon_settings), for
 * status and report read from the file. */
static int record_settings(ag_store *st, const ag_config *cfg) {
    char len[32], margin[40], scale_min[40];
    snprintf(len, sizeof len, "%ld", cfg->history_len);
    snprintf(margin, sizeof margin, "%.17g", cfg->margin);
    snprintf(scale_min, sizeof scale_min, "%.17g", AG_SCALE_MIN);
    int err = ag_store_begin(st);
    if (!err && !(err = ag_store_put_daemon_setting(st, "version", AG_VERSION_STRING)) &&
        !(err = ag_store_put_daemon_setting(st, "formats", cfg->formats)) &&
        !(err = ag_store_put_daemon_setting(st, "history_len", len)) &&
        !(err = ag_store_put_daemon_setting(st, "amax_mode",
                                            ag_config_amax_mode_name(cfg->amax_mode))) &&
        !(err = ag_store_put_daemon_setting(st, "scale_mode",
                                            ag_config_scale_mode_name(cfg->scale_mode))) &&
        !(err = ag_store_put_daemon_setting(st, "margin", margin)) &&
        !(err = ag_store_put_daemon_setting(st, "scale_min", scale_min)))
        err = ag_store_commit(st);
    if (err) ag_store_rollback(st);
    return err;
}

static void notify_status(ag_daemon *d, const char *what) {
    char line[512];
    const char *http = ag_http_bound(d->http);
    ag_writer_health_info h;
    if (d->writer && ag_writer_health(d->writer, &h)) {
        /* The store refuses writes: say it first, and why. */
        snprintf(line, sizeof line,
                 "STATUS=store degraded, retrying %llu held rows (ingest paused when the "
                 "queue fills): %s",
                 (unsigned long long)h.held_rows, h.why);
        ag_notify(line);
        return;
    }
    snprintf(line, sizeof line, "STATUS=%s: %llu runs, %llu tensors, %llu messages%s%s", what,
             (unsigned long long)atomic_load(&d->counters.runs),
             (unsigned long long)atomic_load(&d->counters.tensors),
             (unsigned long long)atomic_load(&d->counters.messages), http ? ", http " : "",
             http ? http : "");
    ag_notify(line);
}

/* -------------------------------------------------------------- shutdown */

static void close_handles(ag_daemon *d) {
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
    uv_close((uv_handle_t *)&d->watchdog, NULL);
    uv_close((uv_handle_t *)&d->drain, NULL);
    uv_close((uv_handle_t *)&d->flush, NULL);
    uv_close((uv_handle_t *)&d->kick, NULL);
    ag_ingest_free(d->ingest);
    d->ingest = NULL;
    ag_http_close(d->http);
}

/* While stopping: keep taking what trainers already sent until intake has
 * been quiet for a few ticks, then close it, file the rest and finish. */
static void drain_cb(uv_timer_t *t) {
    ag_daemon *d = t->data;
    if (!d->intake_closed) {
        size_t got = ag_ingest_take_received(d->ingest);
        d->idle_ticks = got == 0 && ag_ingest_depth(d->ingest) == 0 && !d->njobs && !d->held_nng &&
                                d->split_at == d->nsplit
                            ? d->idle_ticks + 1
                            : 0;
        if (d->idle_ticks < DRAIN_IDLE_TICKS && now_ms() - d->drain_start_ms < DRAIN_MAX_MS) {
            pump(d);
            return;
        }
        ag_ingest_close(d->ingest);
        d->intake_closed = 1;
    }
    pump(d);
    if (d->njobs || d->held_nng || d->split_at < d->nsplit || ag_ingest_depth(d->ingest) > 0)
        return; /* next tick */
    uv_timer_stop(t);
    ag_engine_expire(d->engine, 1); /* steps still waiting for ranks: incomplete */
    ag_engine_flush(d->engine);
    ag_engine_persist(d->engine, 1); /* every flip baseline, so a restart loses none */
    d->closed = 1;
    ag_log(&d->log, AG_LOG_INFO, "stopping: intake closed, committing %zu queued rows",
           ag_writer_depth(d->writer));
    close_handles(d);
}

static void begin_stop(ag_daemon *d, int signum) {
    if (d->stopping) return;
    d->stopping = 1;
    ag_log(&d->log, AG_LOG_NOTICE, "signal %d: draining and stopping", signum);
    ag_notify("STOPPING=1");
    d->drain_start_ms = now_ms();
    int rc = uv_timer_start(&d->drain, drain_cb, DRAIN_TICK_MS, DRAIN_TICK_MS);
    if (rc) {
        /* No drain ticks: close intake now and file what is already here. */
        ag_log(&d->log, AG_LOG_ERROR, "cannot start the drain timer (%s): stopping at once",
               uv_strerror(rc));
        ag_ingest_close(d->ingest);
        d->intake_closed = 1;
        drain_cb(&d->drain);
    }
}

/* What status reports of the reloadable scale rule (see fill_status). */
static void publish_scale_rule(ag_daemon *d) {
    uint64_t bits;
    memcpy(&bits, &d->cfg.margin, sizeof bits);
    atomic_store(&d->live_scale_mode, d->cfg.scale_mode);
    atomic_store(&d->live_margin_bits, bits);
}

static void on_signal(uv_signal_t *h, int signum) {
    ag_daemon *d = h->data;
    if (signum != SIGHUP) {
        begin_stop(d, signum);
        return;
    }
    ag_notify("RELOADING=1");
    ag_logger_reopen(&d->log);
    ag_config fresh;
    char err[512];
    if (ag_config_load(&fresh, d->argc, d->argv, err, sizeof err)) {
        ag_log(&d->log, AG_LOG_ERROR, "reload: %s; keeping the current settings", err);
    } else {
        /* Listeners, database, formats and history length need a restart. */
        d->cfg.log_level = fresh.log_level;
        d->cfg.scale_mode = fresh.scale_mode;
        d->cfg.margin = fresh.margin;
        publish_scale_rule(d);
        ag_logger_set_level(&d->log, fresh.log_level);
        ag_engine_reconfigure(d->engine, &d->cfg);
        ag_log(&d->log, AG_LOG_NOTICE, "reloaded: log-level %s, margin %g",
               ag_log_level_name(fresh.log_level), fresh.margin);
    }
    ag_notify("READY=1");
    notify_status(d, "ready");
}

static void flush_cb(uv_timer_t *t) {
    ag_daemon *d = t->data;
    if (!d->closed) {
        /* sharded steps whose ranks did not all report in time: incomplete */
        ag_engine_expire(d->engine, 0);
        ag_engine_flush(d->engine);
        /* Flip baselines: a sweep at most every baseline_interval seconds,
         * moved to the writer as it has room. */
        uint64_t now = now_ms();
        if (d->next_persist_ms && now >= d->next_persist_ms) d->next_persist_ms = 0;
        if (!d->next_persist_ms && ag_engine_persist(d->engine, 0))
            d->next_persist_ms = now + (uint64_t)d->cfg.baseline_interval * 1000;
        /* Idle: give the spare snapshot buffers back to the system. */
        d->quiet_ticks = d->jobs_started == d->jobs_at_tick && !d->njobs ? d->quiet_ticks + 1 : 0;
        d->jobs_at_tick = d->jobs_started;
        if (d->quiet_ticks >= TRIM_TICKS) {
            ag_engine_trim(d->engine);
            ag_ingest_trim(d->ingest);
        }
        /* how far the inbound queue has been resolved: every message taken
         * from it, but a bundle whose parts are not all taken yet */
        ag_ingest_counts ic;
        ag_ingest_progress(d->ingest, &ic);
        ag_shm_inbound in = {.arrived = ic.pushed,
                             .resolved = ic.popped - (d->split_at < d->nsplit),
                             .receiving = ic.receiving,
                             .since_ms = (uint64_t)ic.resumed_ms};
        ag_shm_sweep(d->shm, now, &in);
        publish_pool(d);
    }
    /* Tell the service manager when the store goes degraded or recovers. */
    ag_writer_health_info h;
    int degraded = ag_writer_health(d->writer, &h);
    if (degraded != d->store_degraded) {
        d->store_degraded = degraded;
        notify_status(d, degraded ? "degraded" : "ready");
    }
}

static void watchdog_cb(uv_timer_t *t) {
    (void)t;
    ag_notify("WATCHDOG=1");
}

/* ----------------------------------------------------------------- start */

/* Create the database's directory (one level) when it is missing. */
static int prepare_db_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return AG_OK;
    char dir[AG_CONFIG_PATH_MAX];
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir) return AG_EINVAL;
    memcpy(dir, path, len);
    dir[len] = '\0';
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) return AG_EIO;
    return AG_OK;
}

static int start(ag_daemon *d) {
    ag_store *st = NULL;
    int err;
    if (prepare_db_dir(d->cfg.db) || (err = ag_store_open(&st, d->cfg.db, AG_STORE_CREATE))) {
        fprintf(stderr, "altgradd: cannot open database %s: %s\n", d->cfg.db,
                st ? ag_store_errmsg(st) : strerror(errno));
        ag_store_close(st);
        return 1;
    }
    ag_status *seed = NULL;
    if (ag_store_status(st, &seed) == AG_OK) {
        atomic_store(&d->counters.messages, seed->messages);
        atomic_store(&d->counters.bytes, seed->bytes);
        atomic_store(&d->counters.rejected, seed->rejected);
        atomic_store(&d->counters.dropped, seed->dropped);
        ag_free(seed);
    }
    if (!(d->shm = ag_shm_table_new(&d->log))) {
        fprintf(stderr, "altgradd: out of memory\n");
        ag_store_close(st);
        return 1;
    }
    if ((err = ag_engine_new(&d->engine, &d->cfg, &d->log, &d->counters)) ||
        (err = ag_engine_restore(d->engine, st))) {
        const char *why = d->engine ? ag_engine_why(d->engine) : "";
        fprintf(stderr, "altgradd: cannot restore state from %s: %s\n", d->cfg.db,
                *why               ? why
                : err == AG_ESTORE ? ag_store_errmsg(st)
                                   : ag_strerror(err));
        ag_store_close(st);
        /* A --define-format contradicting the database is a bad option. */
        return err == AG_EEXIST ? 2 : 1;
    }
    if ((err = record_settings(st, &d->cfg))) {
        fprintf(stderr, "altgradd: cannot record its settings in %s: %s\n", d->cfg.db,
                err == AG_ESTORE ? ag_store_errmsg(st) : ag_strerror(err));
        ag_store_close(st);
        return 1;
    }
    /* Queued baseline weights: an eighth of the state budget (engine.c). */
    size_t eighth = ((size_t)d->cfg.state_budget_mib << 20) / 8;
    ag_writer_opts wo = {.batch_rows = 300000,
                         .batch_ms = 50,
                         .high_water = 400000,
                         .high_bytes =
                             eighth < AG_WRITER_HIGH_BYTES ? eighth : AG_WRITER_HIGH_BYTES,
                         .keep_raw_steps = (uint64_t)d->cfg.keep_raw_steps};
    if ((err = ag_writer_start(&d->writer, st, &wo, &d->log, on_writer_space, d))) {
        fprintf(stderr, "altgradd: cannot start the writer: %s\n", ag_strerror(err));
        ag_store_close(st);
        return 1;
    }
    ag_engine_set_writer(d->engine, d->writer);
    if ((err = ag_query_start(&d->query, &d->cfg, &d->log, fill_status, delivery_asked, d))) {
        fprintf(stderr, "altgradd: cannot serve queries on %s\n", d->cfg.query);
        return 1;
    }
    if ((err = ag_ingest_start(&d->ingest, &d->loop, &d->cfg, &d->log, on_ingest_ready, d))) {
        fprintf(stderr, "altgradd: cannot listen for trainers on %s\n", d->cfg.ingest[0]);
        return 1;
    }
    if ((err = ag_shm_listen(d->shm, &d->cfg))) {
        fprintf(stderr, "altgradd: cannot listen for shared memory beside %s\n", d->cfg.ingest[0]);
        return 1;
    }
    publish_pool(d); /* the budget and the state restored, before anyone asks */
    /* A busy HTTP port is not fatal: the page is a convenience, ingest is not. */
    if (d->cfg.http_enabled)
        ag_http_start(&d->http, &d->cfg, &d->log, fill_status, fill_shm_stats, fill_pool_stats, d);
    return 0;
}

/* Initialise the loop and its handles; on a failure close what was made
 * (running the loop once so the closes complete), close the loop and say
 * which one failed. 0 or -1. */
static int init_loop(ag_daemon *d) {
    int rc = uv_loop_init(&d->loop);
    if (rc) {
        fprintf(stderr, "altgradd: cannot start the event loop: %s\n", uv_strerror(rc));
        return -1;
    }
    uv_handle_t *made[8];
    size_t n = 0;
    const char *what = "async";
    d->kick.data = d->drain.data = d->flush.data = d;
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    if ((rc = uv_async_init(&d->loop, &d->kick, kick_cb))) goto fail;
    made[n++] = (uv_handle_t *)&d->kick;
    what = "timer";
    uv_timer_t *timers[] = {&d->watchdog, &d->drain, &d->flush};
    for (size_t i = 0; i < 3; i++) {
        if ((rc = uv_timer_init(&d->loop, timers[i]))) goto fail;
        made[n++] = (uv_handle_t *)timers[i];
    }
    what = "signal handler";
    uv_signal_t *sigs[] = {&d->sig_term, &d->sig_int, &d->sig_hup};
    for (size_t i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(&d->loop, sigs[i]))) goto fail;
        made[n++] = (uv_handle_t *)sigs[i];
    }
    return 0;
fail:
    fprintf(stderr, "altgradd: cannot create the loop's %s: %s\n", what, uv_strerror(rc));
    for (size_t i = 0; i < n; i++) uv_close(made[i], NULL);
    uv_run(&d->loop, UV_RUN_DEFAULT); /* completes the closes */
    uv_loop_close(&d->loop);
    return -1;
}

/* Start the signal handlers and timers of a started daemon. On a failure
 * (which leaves no way to stop it cleanly) say so; the caller closes intake
 * and the handles, and the rest unwinds as after a SIGTERM. */
static int start_handles(ag_daemon *d) {
    int rc = 0;
    const char *what = "";
    static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
    uv_signal_t *sigs[] = {&d->sig_term, &d->sig_int, &d->sig_hup};
    for (size_t i = 0; i < 3 && !rc; i++)
        if ((rc = uv_signal_start(sigs[i], on_signal, signums[i]))) what = "signal handler";
    if (!rc && (rc = uv_timer_start(&d->flush, flush_cb, FLUSH_MS, FLUSH_MS))) what = "flush timer";
    uint64_t wd = ag_notify_watchdog_usec();
    uint64_t every = wd / 2000 ? wd / 2000 : 1;
    if (!rc && wd && (rc = uv_timer_start(&d->watchdog, watchdog_cb, every, every)))
        what = "watchdog timer";
    if (!rc) return 0;
    fprintf(stderr, "altgradd: cannot start the %s: %s\n", what, uv_strerror(rc));
    return -1;
}

/* altgradd --rebuild-rollups: open (and migrate) the file, compute its
 * rollups again from the raw rows, say how many buckets, exit. */
static int rebuild_rollups(const ag_config *cfg) {
    ag_store *st = NULL;
    uint64_t buckets = 0;
    int err = ag_store_open(&st, cfg->db, 0);
    if (!err) err = ag_store_rebuild_rollups(st, &buckets);
    if (err) {
        fprintf(stderr, "altgradd: cannot rebuild the rollups of %s: %s\n", cfg->db,
                st ? ag_store_errmsg(st) : ag_strerror(err));
        ag_store_close(st);
        return 1;
    }
    ag_store_close(st);
    printf("altgradd: rebuilt %llu rollup buckets of %s\n", (unsigned long long)buckets, cfg->db);
    return 0;
}

int main(int argc, char **argv) {
    static ag_daemon daemon_ctx; /* large; one per process */
    ag_daemon *d = &daemon_ctx;
    d->argc = argc;
    d->argv = argv;
    char err[512];
    if (ag_config_load(&d->cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "altgradd: %s\n", err);
        return 2;
    }
    if (d->cfg.want_help) {
        ag_config_usage(argv[0]);
        return 0;
    }
    if (d->cfg.want_version) {
        printf("altgradd %s\n", AG_VERSION_STRING);
        return 0;
    }
    if (d->cfg.want_rebuild) return rebuild_rollups(&d->cfg);
    /* TLS files: read and checked before anything starts (a bad option). */
    if (ag_secure_init(&d->cfg, err, sizeof err)) {
        fprintf(stderr, "altgradd: %s\n", err);
        return 2;
    }
    ag_logger_init(&d->log, d->cfg.log_level);
    d->start_ms = now_ms();
    publish_scale_rule(d);
#ifdef M_MMAP_THRESHOLD
    /* Snapshot buffers (megabytes, freed as jobs end) go back to the system
     * at once instead of staying in malloc's heap: RSS follows the budget. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    /* The pool evaluating snapshots is libuv's, sized before its first use. */
    d->threads = d->cfg.threads > 0 ? (size_t)d->cfg.threads : (size_t)uv_available_parallelism();
    if (d->threads < 1) d->threads = 1;
    if (d->threads > AG_CONFIG_MAX_THREADS) d->threads = AG_CONFIG_MAX_THREADS;
    d->max_jobs = 2 * d->threads + 2;
    char pool[16];
    snprintf(pool, sizeof pool, "%zu", d->threads);
    setenv("UV_THREADPOOL_SIZE", pool, 1);
    if (init_loop(d)) {
        ag_secure_fini();
        ag_logger_destroy(&d->log);
        return 1;
    }

    int rc = start(d);
    if (rc == 0 && start_handles(d)) rc = 1;
    if (rc == 0) {
        ag_log(&d->log, AG_LOG_NOTICE,
               "altgradd %s ready: db %s, query %s, formats %s, %zu snapshot threads",
               AG_VERSION_STRING, d->cfg.db, d->cfg.query, d->cfg.formats, d->threads);
        for (size_t i = 0; i < d->cfg.ndefined; i++) {
            char spec[64];
            ag_config_format_spec(d->cfg.defined[i], spec, sizeof spec);
            ag_log(&d->log, AG_LOG_INFO, "format defined: %s", spec);
        }
        for (size_t i = 0; i < d->cfg.ningest; i++)
            ag_log(&d->log, AG_LOG_NOTICE, "listening for trainers on %s", d->cfg.ingest[i]);
        ag_secure_warn(&d->cfg, &d->log);
        if (ag_http_bound(d->http))
            ag_log(&d->log, AG_LOG_NOTICE, "http: serving the page, API and metrics on http://%s/",
                   ag_http_bound(d->http));
        ag_notify("READY=1");
        notify_status(d, "ready");
        d->next_persist_ms = now_ms() + (uint64_t)d->cfg.baseline_interval * 1000;
        pump(d); /* anything that arrived during startup */
    } else if (d->ingest) {
        ag_ingest_close(d->ingest);
    }
    if (rc != 0) close_handles(d);
    uv_run(&d->loop, UV_RUN_DEFAULT);

    /* The loop has ended: intake is closed. Commit what is queued. */
    if (d->held_nng) {
        ag_shm_release(&d->held_ref);
        ag_msg_clear(&d->held_msg);
        nng_msg_free(d->held_nng);
    }
    while (d->split_at < d->nsplit) nng_msg_free(d->split[d->split_at++]);
    free(d->split);
    ag_query_stop(d->query);
    ag_writer_stop(d->writer);
    ag_engine_free(d->engine);
    ag_shm_table_free(d->shm); /* every job has ended */
    ag_http_free(d->http);
    ag_secure_fini();
    uv_loop_close(&d->loop);
    if (rc == 0) ag_log(&d->log, AG_LOG_NOTICE, "stopped");
    ag_logger_destroy(&d->log);
    return rc;
}
