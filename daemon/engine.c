/*
 * engine.c - the daemon's numerics state machine (see engine.h): tensors
 * found by name, with ids handed out here so the writer never waits for
 * SQLite; amax observations and scales; the end of each message (its deltas
 * and a commit boundary); statistics; dispatch. Which run a message belongs
 * to is runs.c, snapshots are snapshot.c, restore at start restore.c.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/bigbuf.h"
#include "core/clock.h"
#include "daemon/engine_internal.h"

static int replicated_seen(run_state *r, const char *name, uint64_t step);

int64_t ag_eng_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Formats' registry indexes, remembered by address (an entry's index never
 * changes: the registry only grows). Per thread, direct-mapped. */
#define FMT_CACHE 16
static _Thread_local struct {
    const ag_format *f;
    int i;
} fmt_cache[FMT_CACHE];

static int fmt_index_uncached(const ag_format *f);

int ag_eng_fmt_index(const ag_format *f) {
    size_t slot = (size_t)((uintptr_t)f / sizeof *f) % FMT_CACHE;
    if (f && fmt_cache[slot].f == f) return fmt_cache[slot].i;
    int i = fmt_index_uncached(f);
    if (i >= 0) {
        fmt_cache[slot].f = f;
        fmt_cache[slot].i = i;
    }
    return i;
}

static int fmt_index_uncached(const ag_format *f) {
    size_t n = ag_format_count();
    /* The registry is one array: its index from the address, checked. */
    const ag_format *first = ag_format_at(0);
    uintptr_t a = (uintptr_t)f, lo = (uintptr_t)first;
    if (first && a >= lo && (a - lo) % sizeof *f == 0) {
        size_t i = (size_t)((a - lo) / sizeof *f);
        if (i < n && i < AG_FORMATS_MAX && ag_format_at(i) == f) return (int)i;
    }
    for (size_t i = 0; i < n && i < AG_FORMATS_MAX; i++)
        if (ag_format_at(i) == f) return (int)i;
    return -1;
}

int ag_eng_push(ag_engine *e, const ag_write_item *it) {
    if (!e->writer) return AG_ECLOSED;
    if (e->nstage == e->stage_cap) {
        size_t ncap = e->stage_cap ? e->stage_cap * 2 : 64;
        ag_write_item *p = realloc(e->stage, ncap * sizeof *p);
        if (!p) return AG_ENOMEM;
        e->stage = p;
        e->stage_cap = ncap;
    }
    e->stage[e->nstage++] = *it;
    return AG_OK;
}

int ag_eng_stage_flush(ag_engine *e, int boundary) {
    if (!e->writer) return AG_ECLOSED;
    if (e->nstage == 0 && !boundary) return AG_OK;
    int err = ag_writer_push_batch(e->writer, e->stage, e->nstage, boundary);
    if (err) {
        ag_log(e->log, AG_LOG_ERROR, "%zu rows not queued for the store: %s", e->nstage,
               ag_strerror(err));
        for (size_t i = 0; i < e->nstage; i++) ag_write_item_clear(&e->stage[i]);
        /* the boundary still closes what was queued before */
        if (boundary) ag_writer_boundary(e->writer);
    }
    e->nstage = 0;
    return err;
}

void ag_eng_boundary(ag_engine *e) { ag_eng_stage_flush(e, 1); }

/* ---------------------------------------------------------------- state */

static void free_tensor(void *v, void *ctx) {
    (void)ctx;
    tensor_state *t = v;
    for (int r = 0; r < ROLES; r++)
        if (t->roles[r]) {
            ag_amax_history_free(t->roles[r]->history);
            free(t->roles[r]);
        }
    for (int i = 0; i < AG_FORMATS_MAX; i++) free(t->prev[i]);
    free(t->base_w);
    free(t->restored);
    free(t->name);
    free(t);
}

static void free_run(void *v, void *ctx) {
    run_state *r = v;
    ag_map_free(&r->shards); /* its steps were freed by ag_eng_free_shards */
    free(r->ranks_ended);
    ag_map_each(&r->tensors, free_tensor, ctx);
    ag_map_free(&r->tensors);
    free(r->name);
    free(r->asked);
    free(r->launch);
    free(r);
}

int ag_engine_new(ag_engine **out, const ag_config *cfg, ag_logger *lg, ag_counters *counters) {
    if (!out || !cfg || !lg || !counters) return AG_EINVAL;
    ag_engine *e = calloc(1, sizeof *e);
    if (!e) return AG_ENOMEM;
    e->cfg = cfg;
    e->log = lg;
    e->counters = counters;
    ag_map_init(&e->runs);
    ag_map_init(&e->families);
    ag_map_init(&e->launches);
    ag_map_init(&e->clients);
    e->history_len = (size_t)cfg->history_len;
    /* Of --state-budget, an eighth each goes to the ingest queue and to the
     * writer's queued baselines (main.c); the engine has the rest. */
    size_t budget =
        cfg->state_budget_mib > 0 ? (size_t)cfg->state_budget_mib << 20 : AG_ENGINE_MAX_STATE_BYTES;
    e->max_state_bytes = budget - budget / 4;
    e->max_shard_bytes =
        cfg->shard_budget_mib > 0 ? (size_t)cfg->shard_budget_mib << 20 : (size_t)1 << 30;
    e->amax_mode = cfg->amax_mode;
    ag_engine_reconfigure(e, cfg);
    *out = e;
    return AG_OK;
}

void ag_engine_reconfigure(ag_engine *e, const ag_config *cfg) {
    e->scale_mode = cfg->scale_mode;
    e->margin_mult = exp2(cfg->margin);
}

void ag_engine_set_writer(ag_engine *e, ag_writer *w) { e->writer = w; }

void ag_engine_free(ag_engine *e) {
    if (!e) return;
    ag_eng_free_shards(e);
    ag_map_each(&e->clients, ag_eng_free_client, NULL);
    ag_map_free(&e->clients);
    ag_map_free(&e->launches);
    ag_map_free(&e->families);
    ag_map_each(&e->runs, free_run, NULL);
    ag_map_free(&e->runs);
    free(e->runs_by_id);
    free(e->tensors_by_id);
    for (size_t i = 0; i < e->nstage; i++) ag_write_item_clear(&e->stage[i]);
    free(e->stage);
    ag_eng_free_spare_job(e);
    ag_engine_trim(e);
    free(e);
}

/* ------------------------------------------------------------- spares */

/* Drop spare i (its bytes leave spare_bytes; the caller frees or uses it). */
static void *spare_remove(ag_engine *e, size_t i) {
    void *p = e->spares[i].p;
    e->spare_bytes -= e->spares[i].size;
    memmove(&e->spares[i], &e->spares[i + 1], (e->nspares - i - 1) * sizeof e->spares[0]);
    e->nspares--;
    return p;
}

void *ag_eng_take(ag_engine *e, size_t size) {
    if (size <= AG_ENGINE_SMALL_MAX) {
        for (size_t i = e->nsmall; i-- > 0;)
            if (e->small[i].size == size) {
                void *p = e->small[i].p;
                e->small[i] = e->small[--e->nsmall];
                return p;
            }
        return malloc(size ? size : 1);
    }
    /* The newest of that size: the most likely to be still in cache. */
    for (size_t i = e->nspares; i-- > 0;)
        if (e->spares[i].size == size) return spare_remove(e, i);
    /* New memory: first free the spares the budget has no room for (the
     * caller's reservation in inflight_bytes already counts this buffer). */
    ag_eng_spares_fit(e);
    return ag_bigbuf_alloc(size);
}

void ag_eng_give(ag_engine *e, void *p, size_t size) {
    if (!p) return;
    if (size <= AG_ENGINE_SMALL_MAX) {
        if (e->nsmall == AG_ENGINE_SMALLS) {
            free(e->small[0].p); /* the oldest */
            e->small[0] = e->small[--e->nsmall];
        }
        e->small[e->nsmall++] = (ag_spare){p, size};
        return;
    }
    if (size < AG_ENGINE_SPARE_MIN ||
        e->state_bytes + e->inflight_bytes + e->spare_bytes + size > e->max_state_bytes) {
        free(p);
        return;
    }
    if (e->nspares == AG_ENGINE_SPARES) free(spare_remove(e, 0));
    e->spares[e->nspares++] = (ag_spare){p, size};
    e->spare_bytes += size;
}

void ag_eng_spares_fit(ag_engine *e) {
    while (e->nspares && e->state_bytes + e->inflight_bytes + e->spare_bytes > e->max_state_bytes)
        free(spare_remove(e, 0));
}

void ag_engine_trim(ag_engine *e) {
    while (e->nspares) free(spare_remove(e, e->nspares - 1));
    while (e->nsmall) free(e->small[--e->nsmall].p);
}

size_t ag_engine_spare_bytes(const ag_engine *e) { return e->spare_bytes; }

void ag_engine_stats_of(const ag_engine *e, ag_engine_stats *out) {
    *out = (ag_engine_stats){.state = e->state_bytes,
                             .inflight = e->inflight_bytes,
                             .spare = e->spare_bytes,
                             .budget = e->max_state_bytes,
                             .evaluated = e->evaluated};
}

role_state *ag_eng_role_for(ag_engine *e, tensor_state *t, int role) {
    if (t->roles[role]) return t->roles[role];
    role_state *rs = calloc(1, sizeof *rs);
    if (!rs) return NULL;
    if (ag_amax_history_new(&rs->history, e->history_len, (ag_amax_mode)e->amax_mode)) {
        free(rs);
        return NULL;
    }
    t->roles[role] = rs;
    e->state_bytes += sizeof *rs + e->history_len * sizeof(double);
    return rs;
}

/* The store id of format f (registry index fi), queuing its row when new. */
int ag_eng_format_id(ag_engine *e, const ag_format *f, int fi, int64_t *id) {
    if (!e->format_id[fi]) {
        ag_write_item it = {.kind = AG_W_FORMAT};
        it.u.format.id = e->next_format_id + 1;
        it.u.format.fmt = f;
        int err = ag_eng_push(e, &it);
        if (err) return err;
        e->format_id[fi] = ++e->next_format_id;
    }
    *id = e->format_id[fi];
    return AG_OK;
}

tensor_state *ag_eng_new_tensor(ag_engine *e, run_state *r, int64_t id, const char *name,
                                int role) {
    tensor_state *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->id = id;
    t->run = r;
    t->role = role;
    t->name = strdup(name);
    e->state_bytes += sizeof *t + strlen(name) + 1;
    ag_eng_spares_fit(e);
    if (!t->name || ag_map_put(&r->tensors, name, t)) {
        free(t->name);
        free(t);
        return NULL;
    }
    e->ntensors++;
    atomic_fetch_add(&e->counters->tensors, 1);
    return t;
}

size_t ag_eng_tensor_cost(const ag_engine *e, const char *name) {
    return sizeof(tensor_state) + strlen(name) + 1 +
           ROLES * (sizeof(role_state) + e->history_len * sizeof(double));
}

int ag_eng_tensor_for(ag_engine *e, run_state *r, const char *name, int role, tensor_state **out) {
    tensor_state *t = ag_map_get(&r->tensors, name);
    if (!t) {
        if (e->ntensors >= MAX_TENSORS ||
            e->state_bytes + ag_eng_tensor_cost(e, name) > e->max_state_bytes)
            return AG_ENOSPC;
        ag_write_item it = {.kind = AG_W_TENSOR};
        it.u.tensor.id = e->next_tensor_id + 1;
        it.u.tensor.run_id = r->id;
        it.u.tensor.role = role;
        if (!(it.u.tensor.name = strdup(name))) return AG_ENOMEM;
        if (!(t = ag_eng_new_tensor(e, r, e->next_tensor_id + 1, name, role))) {
            ag_write_item_clear(&it);
            return AG_ENOMEM;
        }
        int err = ag_eng_push(e, &it);
        if (err) {
            ag_write_item_clear(&it);
            return err;
        }
        e->next_tensor_id++;
    }
    *out = t;
    return AG_OK;
}

void ag_eng_touch_tensor(ag_engine *e, tensor_state *t, int role, uint64_t step, uint64_t numel,
                         double amax) {
    if (!t->touched) {
        t->touched = 1;
        t->first_step = step;
        t->last_step = step;
        t->snapshots = 0;
        t->next_touched = e->touched;
        e->touched = t;
    }
    if (step < t->first_step) t->first_step = step;
    if (step > t->last_step) t->last_step = step;
    t->role = role;
    t->numel = numel;
    t->last_amax = amax;
    if (step > t->run->last_step) t->run->last_step = step;
}

/* --------------------------------------------------------------- scales */

/* The scale of format f from history amax ha (docs/numerics.md, Quantize, scale, history): a zero or
 * non-finite amax leaves the previous scale in force. */
static double scale_from(ag_engine *e, const role_state *rs, int fi, const ag_format *f,
                         double ha) {
    if (ag_eng_scale_is_one(f)) return 1.0; /* weight storage, or MX: no tensor scale */
    if ((!(ha > 0) || !isfinite(ha)) && (rs->has_scale >> fi & 1)) return rs->scale[fi];
    double s;
    if (f->block) /* NVFP4's tensor scale: amax / (448 * 6), E4M3 block scales of E2M1 */
        s = fmax((ha > 0 && isfinite(ha) ? ha : 0.0) / (448.0 * (double)f->max_finite),
                 AG_SCALE_MIN);
    else
        s = ag_compute_scale(ha > 0 && isfinite(ha) ? ha : 0.0, f, AG_SCALE_MIN);
    s *= e->margin_mult;
    if (!(s > 0) || !isfinite(s) || s > 3e38) s = rs->has_scale >> fi & 1 ? rs->scale[fi] : 1.0;
    return (double)(float)s; /* the kernels scale in float32: report what they used */
}

/* Push one amax observation and refresh the scales of the given formats. */
void ag_eng_observe(ag_engine *e, role_state *rs, double amax, int pushable,
                    const ag_format *const *fmts, const int *fidx, size_t nf, uint64_t step) {
    double before = ag_amax_history_get(rs->history);
    if (pushable) ag_amax_history_push(rs->history, amax);
    double ha = e->scale_mode == AG_SCALE_DELAYED ? before : ag_amax_history_get(rs->history);
    for (size_t i = 0; i < nf; i++) {
        int fi = fidx[i];
        rs->scale[fi] = scale_from(e, rs, fi, fmts[i], ha);
        rs->hist_amax[fi] = ha;
        rs->has_scale |= 1ull << fi;
        rs->dirty |= 1ull << fi;
    }
    rs->step = step;
}

/* ------------------------------------------------------ message ends */

/* Queue the tensor deltas and scale rows of everything touched since the
 * last flush. */
static int flush_tensors(ag_engine *e) {
    int err = AG_OK;
    for (tensor_state *t = e->touched; t; t = t->next_touched) {
        ag_write_item it = {.kind = AG_W_TENSOR_DELTA};
        it.u.tensor_delta = (ag_store_tensor_delta){
            t->id, t->role, t->numel, t->first_step, t->last_step, t->snapshots, t->last_amax};
        if (!err) err = ag_eng_push(e, &it);
        for (int role = 0; role < ROLES; role++) {
            role_state *rs = t->roles[role];
            if (!rs) continue;
            for (uint64_t left = rs->dirty; left; left &= left - 1) {
                int fi = __builtin_ctzll(left); /* the dirty formats, lowest first */
                ag_write_item s = {.kind = AG_W_SCALE};
                s.u.scale.tensor_id = t->id;
                s.u.scale.format_id = e->format_id[fi];
                s.u.scale.role = role;
                s.u.scale.step = rs->step;
                s.u.scale.amax = rs->hist_amax[fi];
                s.u.scale.scale = rs->scale[fi];
                if (!err) err = ag_eng_push(e, &s);
            }
            rs->dirty = 0;
        }
        t->touched = 0;
    }
    e->touched = NULL;
    return err;
}

int ag_engine_flush(ag_engine *e) {
    if (!e->touched) return AG_OK;
    int err = flush_tensors(e);
    ag_eng_boundary(e);
    return err;
}

/* Queue the message's run delta and its client's sequence state and
 * delivery count (so a commit holds the client's last seq, cumulative drop
 * count and the count q_delivery answers with the message's rows),
 * with_tensors: the touched tensors' deltas too
 * (statistics leave them to the periodic ag_engine_flush: a batch touches
 * many tensors and rewriting them per message would dominate), then a
 * commit boundary. A client whose run_end this was is forgotten (its row
 * says it ended, so a restart does not bring it back). */
int ag_eng_end_message(ag_engine *e, client_state *cs, size_t bytes, int with_tensors) {
    int err = with_tensors ? flush_tensors(e) : AG_OK;
    if (cs) {
        run_state *r = cs->run;
        /* While snapshots of the run or client are in flight, messages
         * handled after them are not yet counted as stored: the counts and
         * the highest stored seq (q_delivery) must never claim a message
         * whose rows are not queued yet. They are given with the last one. */
        uint64_t messages = r->jobs ? 0 : r->messages;
        uint64_t delivered = cs->jobs ? 0 : cs->delivered;
        ag_write_item it = {.kind = AG_W_RUN_DELTA};
        it.u.run_delta = (ag_store_run_delta){.run_id = r->id,
                                              .messages = messages,
                                              .dropped = r->dropped,
                                              .last_step = r->last_step,
                                              .ended_ms = r->ended_ms};
        if (!err) err = ag_eng_push(e, &it);
        r->messages -= messages;
        r->dropped = 0;
        r->ended_ms = 0;
        ag_write_item c = {.kind = AG_W_CLIENT_DELTA};
        c.u.client_delta = (ag_store_client_delta){.client_id = cs->id,
                                                   .last_seq = cs->last_seq,
                                                   .last_drop = cs->last_drop,
                                                   .has_drop = cs->drop_known,
                                                   .ended = cs->ended,
                                                   .delivered = delivered};
        if (!err) err = ag_eng_push(e, &c);
        cs->delivered -= delivered;
        if (cs->ended) ag_eng_forget_client(e, cs);
    }
    ag_write_item c = {.kind = AG_W_COUNTER};
    c.u.counter.name = "bytes";
    c.u.counter.delta = bytes;
    if (!err) err = ag_eng_push(e, &c);
    ag_eng_boundary(e);
    return err;
}

void ag_eng_count_unfiled(ag_engine *e) {
    atomic_fetch_add(&e->counters->rejected, 1);
    ag_write_item c = {.kind = AG_W_COUNTER};
    c.u.counter.name = "rejected";
    c.u.counter.delta = 1;
    ag_eng_push(e, &c); /* committed with the message's end */
}

void ag_engine_reject(ag_engine *e, size_t bytes) {
    atomic_fetch_add(&e->counters->rejected, 1);
    atomic_fetch_add(&e->counters->bytes, bytes);
    ag_write_item c = {.kind = AG_W_COUNTER};
    c.u.counter.name = "rejected";
    c.u.counter.delta = 1;
    if (ag_eng_push(e, &c) == AG_OK) {
        ag_write_item b = {.kind = AG_W_COUNTER};
        b.u.counter.name = "bytes";
        b.u.counter.delta = bytes;
        ag_eng_push(e, &b);
        ag_eng_boundary(e);
    }
}

/* ------------------------------------------------------------ stats */

static int handle_stats(ag_engine *e, run_state *r, const ag_msg_stats *s) {
    int fidx[AG_FORMATS_MAX];
    const ag_config *cfg = e->cfg;
    for (size_t i = 0; i < cfg->nfmts; i++) {
        int64_t id;
        fidx[i] = ag_eng_fmt_index(cfg->fmts[i]);
        int err = ag_eng_format_id(e, cfg->fmts[i], fidx[i], &id);
        if (err) return err;
    }
    for (size_t i = 0; i < s->n; i++) {
        const ag_stat_record *rec = &s->records[i];
        if (rec->step > INT64_MAX || rec->role < 0 || rec->role >= ROLES) return AG_ERANGE;
    }
    for (size_t i = 0; i < s->n; i++) {
        const ag_stat_record *rec = &s->records[i];
        tensor_state *t;
        int err = ag_eng_tensor_for(e, r, rec->tensor, rec->role, &t);
        if (err) return err;
        role_state *rs = ag_eng_role_for(e, t, rec->role);
        if (!rs) return AG_ENOMEM;
        int pushable = isfinite(rec->amax) && rec->amax >= 0 &&
                       !(rec->numel > 0 && rec->nonfinite >= rec->numel);
        ag_eng_observe(e, rs, rec->amax, pushable, cfg->fmts, fidx, cfg->nfmts, rec->step);
        ag_write_item it = {.kind = AG_W_STATS};
        it.u.stats = (ag_store_stats_row){t->id,      rec->role,      rec->step, rec->amax,
                                          rec->numel, rec->nonfinite, 1};
        if ((err = ag_eng_push(e, &it))) return err;
        ag_eng_touch_tensor(e, t, rec->role, rec->step, rec->numel, rec->amax);
    }
    return AG_OK;
}

/* ----------------------------------------------------------- dispatch */

const char *ag_eng_unfiled_reason(int err) {
    switch (err) {
    case AG_ENOSPC: return "not filed: the daemon's state budget is full";
    case AG_ENOMEM: return "not filed: out of memory";
    case AG_EEXIST: return "not filed: a rank sent its shard of a step twice";
    case AG_EPROTO: return "not filed: a shard differs from its step's other shards";
    case AG_EINVAL: return "not filed: the client's world size is not its run's";
    case AG_ETIMEDOUT: return "not filed: a shard came after its step was stored";
    case AG_EFORMAT: return "not filed: unknown format";
    default: return "not filed: refused after acceptance";
    }
}

static int reject_msg(ag_engine *e, const ag_msg *m, size_t bytes, int err) {
    ag_log(e->log, AG_LOG_WARNING, "run %s: %s message seq %llu rejected: %s",
           m->hdr.run ? m->hdr.run : "?", ag_proto_type_name(m->type),
           (unsigned long long)m->hdr.seq,
           err == AG_ERANGE ? "out of order or out of range" : ag_strerror(err));
    ag_engine_reject(e, bytes);
    return err;
}

int ag_engine_handle(ag_engine *e, const ag_msg *m, size_t bytes, ag_engine_job **job) {
    *job = NULL;
    if (!ag_proto_is_stream(m->type)) return reject_msg(e, m, bytes, AG_EPROTO);
    /* Counts are int64 in the store: a larger seq or drop counter would be
     * filed as a negative number. */
    if (m->hdr.seq > INT64_MAX || m->hdr.dropped > INT64_MAX)
        return reject_msg(e, m, bytes, AG_ERANGE);
    client_state *cs;
    int err = ag_eng_client_for(e, m, &cs);
    if (err) return reject_msg(e, m, bytes, err);
    run_state *r = cs->run;
    if ((err = ag_eng_account(e, cs, m))) return reject_msg(e, m, bytes, err);
    atomic_fetch_add(&e->counters->messages, 1);
    atomic_fetch_add(&e->counters->bytes, bytes);
    switch (m->type) {
    case AG_MSG_RUN_START:
        if (r->ranks_ended && ag_eng_world_ok(cs) && r->ranks_ended[cs->rank]) {
            r->ranks_ended[cs->rank] = 0; /* the rank is back */
            r->nranks_ended--;
        }
        break;
    case AG_MSG_RUN_END:
        if (r->world > 1 && ag_eng_world_ok(cs)) {
            if (!r->ranks_ended) r->ranks_ended = calloc(r->world, 1);
            if (r->ranks_ended && !r->ranks_ended[cs->rank]) {
                r->ranks_ended[cs->rank] = 1;
                r->nranks_ended++;
            }
        }
        r->ended_ms = m->u.run_end.time_ms ? m->u.run_end.time_ms : ag_eng_wall_ms();
        r->ended = 1;
        cs->ended = 1;
        if (m->u.run_end.step <= INT64_MAX && m->u.run_end.step > r->last_step)
            r->last_step = m->u.run_end.step;
        break;
    case AG_MSG_STATS: err = handle_stats(e, r, &m->u.stats); break;
    case AG_MSG_COUNTS: err = ag_eng_handle_counts(e, cs, &m->u.counts); break;
    case AG_MSG_SNAPSHOT: {
        ag_engine_job *j = NULL;
        const ag_msg_snapshot *s = &m->u.snapshot;
        if (r->world > 1 && !ag_eng_world_ok(cs)) {
            err = AG_EINVAL;
            break;
        }
        if (r->world > 1 && !s->replicated) { /* a shard: held until its step is whole */
            if ((err = ag_eng_shard_snapshot(e, cs, s, &j)) || !j) break;
        } else if (r->world > 1 && replicated_seen(r, s->tensor, s->step)) {
            break; /* another rank's copy of this step was filed */
        } else if ((err = ag_eng_snapshot_job(e, r, s, &j))) {
            break;
        }
        if (r->world > 1 && s->replicated) {
            j->t->repl_has = 1;
            j->t->repl_step = s->step;
        }
        j->bytes = bytes;
        j->reserved += bytes; /* the message is held until the job ends */
        e->inflight_bytes += bytes;
        j->client = cs;
        j->seq = m->hdr.seq;
        j->t->busy++;
        j->t->newest = j;
        e->njobs++;
        r->jobs++;
        cs->jobs++;
        /* The amax in chunks, then the scales on the loop, then the kernels. */
        j->err = ag_eng_job_amax_phase(j);
        if (j->n >= AG_ENGINE_POOL_MIN && !j->err) {
            *job = j;
            return AG_OK;
        }
        ag_engine_job_run(e, j);
        return ag_engine_job_finish(e, j);
    }
    }
    if (err) {
        /* Accepted but not (fully) filed: the run lost data, so it shows as a
         * drop of that run (a drops row with the reason) besides rejected. */
        ag_eng_count_unfiled(e);
        ag_log(e->log, AG_LOG_WARNING, "run %s: %s message not (fully) filed: %s", r->name,
               ag_proto_type_name(m->type), ag_strerror(err));
        ag_eng_queue_drop(e, cs, m->hdr.seq, 1, ag_eng_unfiled_reason(err));
    }
    ag_eng_end_message(e, cs, bytes, m->type != AG_MSG_STATS);
    /* Every rank of the run ended: its waiting steps will not be whole. */
    if (m->type == AG_MSG_RUN_END && r->nranks_ended == r->world && r->shards.count)
        ag_eng_expire_shards(e, 0, r, 0);
    return err;
}

/* Whether a replicated tensor's step was filed already (from another rank). */
static int replicated_seen(run_state *r, const char *name, uint64_t step) {
    const tensor_state *t = ag_map_get(&r->tensors, name);
    return t && t->repl_has && step <= t->repl_step;
}

size_t ag_engine_expire(ag_engine *e, int all) {
    return e->shards_head ? ag_eng_expire_shards(e, ag_mono_ms(), NULL, all) : 0;
}

uint64_t ag_engine_incomplete_steps(const ag_engine *e) { return e->incomplete_steps; }
