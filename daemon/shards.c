/*
 * shards.c - the shards of a sharded tensor (docs/daemon.md, Ranks). In a
 * run whose world size is above 1, a tensor that the ranks log at one step
 * (not marked replicated) is the shards of one tensor. Counts items are
 * summed as they come; snapshot shards are held (float32, in the engine's
 * state budget and the shard budget) until every rank sent its shard, then
 * evaluated as one snapshot of the whole tensor: one amax observation, one
 * scale per format, each shard counted with it, one result row per format.
 * A step that stays incomplete (deadline, the run's clients all ended, the
 * budget, the daemon stopping) is stored incomplete, with the ranks that
 * reported. Runs on the loop.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "daemon/engine_internal.h"

int ag_eng_world_ok(const client_state *cs) { return cs->world == cs->run->world; }

/* A shard of a step no longer waiting, at or below the newest step of the
 * tensor stored from shards (whole or incomplete): its step was stored
 * without it, or it is a second copy. Filing it would start the step again
 * and replace the stored rows with this shard's alone. */
static int too_late(const run_state *r, const char *tensor, uint64_t step) {
    const tensor_state *t = ag_map_get(&r->tensors, tensor);
    return t && t->late_has && step <= t->late_step;
}

static void note_late(run_state *r, const char *tensor, uint64_t step) {
    tensor_state *t = ag_map_get(&r->tensors, tensor);
    if (t && (!t->late_has || step > t->late_step)) {
        t->late_has = 1;
        t->late_step = step;
    }
}

/* "step\x1ftensor": a name holds no 0x1f-free prefix ambiguity since the step
 * is fixed-width hex. */
static char *step_key(uint64_t step, const char *tensor) {
    size_t n = strlen(tensor);
    char *k = malloc(17 + n + 1);
    if (!k) return NULL;
    snprintf(k, 18, "%016" PRIx64 "\x1f", step);
    memcpy(k + 17, tensor, n + 1);
    return k;
}

/* Unlink ss from its run and the engine's list and free it, with the
 * snapshot shards it still holds. */
static void step_free(ag_engine *e, shard_step *ss) {
    if (ss->prev)
        ss->prev->next = ss->next;
    else
        e->shards_head = ss->next;
    if (ss->next)
        ss->next->prev = ss->prev;
    else
        e->shards_tail = ss->prev;
    ag_map_remove(&ss->run->shards, ss->key);
    for (uint32_t k = 0; ss->pieces && k < ss->world; k++) free(ss->pieces[k].wx);
    e->shard_bytes -= ss->bytes;
    e->state_bytes -= ss->bytes;
    free(ss->pieces);
    free(ss->have);
    free(ss->scales);
    free(ss->counts);
    free(ss->flips);
    free(ss->qerr);
    free(ss->tensor);
    free(ss->key);
    free(ss);
}

void ag_eng_free_shards(ag_engine *e) {
    while (e->shards_head) step_free(e, e->shards_head);
}

/* The waiting step of (tensor, step) in cs's run, made when absent (*made). */
static int step_for(ag_engine *e, run_state *r, int type, const char *tensor, uint64_t step,
                    shard_step **out, int *made) {
    char *key = step_key(step, tensor);
    if (!key) return AG_ENOMEM;
    shard_step *ss = ag_map_get(&r->shards, key);
    *made = 0;
    if (ss) {
        free(key);
        *out = ss;
        return ss->type == type ? AG_OK : AG_EPROTO;
    }
    ss = calloc(1, sizeof *ss);
    if (!ss) {
        free(key);
        return AG_ENOMEM;
    }
    ss->key = key;
    ss->run = r;
    ss->type = type;
    ss->step = step;
    ss->world = r->world;
    ss->tensor = strdup(tensor);
    ss->have = calloc(r->world, 1);
    ss->deadline_ms =
        ag_mono_ms() + (e->cfg->shard_timeout_ms > 0 ? e->cfg->shard_timeout_ms : 30000);
    if (!ss->tensor || !ss->have || ag_map_put(&r->shards, key, ss)) {
        free(ss->tensor);
        free(ss->have);
        free(ss->key);
        free(ss);
        return AG_ENOMEM;
    }
    ss->prev = e->shards_tail;
    if (e->shards_tail)
        e->shards_tail->next = ss;
    else
        e->shards_head = ss;
    e->shards_tail = ss;
    *made = 1;
    *out = ss;
    return AG_OK;
}

static int same_formats(const shard_step *ss, size_t nf, const int *fidx) {
    if (ss->nf != nf) return 0;
    for (size_t f = 0; f < nf; f++)
        if (ss->fidx[f] != fidx[f]) return 0;
    return 1;
}

static void note_incomplete(ag_engine *e, const shard_step *ss) {
    e->incomplete_steps++;
    ag_write_item c = {.kind = AG_W_COUNTER};
    c.u.counter.name = "incomplete_steps";
    c.u.counter.delta = 1;
    ag_eng_push(e, &c);
    ag_log(e->log, AG_LOG_INFO, "run %s: %s step %" PRIu64 " stored incomplete: %u of %u ranks",
           ss->run->name, ss->tensor, ss->step, ss->nranks, ss->world);
}

/* ------------------------------------------------------------- counts */

/* Add one shard's quantization error (mse, sqnr_db of nfin finite
 * elements, amax their largest magnitude) to the sums q[0] (squared error)
 * and q[1] (squared w): the shard's sums are mse * nfin and that times
 * 10^(sqnr_db / 10); without sqnr_db the signal is 0 when the error is not
 * (sqnr_db is undefined only for a zero signal then) or when amax is 0 (an
 * all-zero shard), else unknown (an exact shard); an unknown mse leaves
 * both unknown. */
static void add_qerr(double *q, uint64_t nfin, double mse, double sqnr, double amax) {
    if (nfin == 0) return; /* no finite element: nothing to add */
    double err = mse * (double)nfin;
    double sig = !isnan(sqnr) ? err * pow(10.0, sqnr / 10.0) : mse > 0 || amax == 0 ? 0.0 : NAN;
    q[0] += err; /* NaN stays NaN */
    q[1] += sig;
}

/* File a counts step (whole, or incomplete) and free it. */
static int file_counts_step(ag_engine *e, shard_step *ss, int incomplete) {
    double mse[AG_FORMATS_MAX], sqnr[AG_FORMATS_MAX];
    uint64_t nfin = ss->numel - ss->nonfinite;
    for (size_t f = 0; f < ss->nf; f++) {
        double err = ss->qerr[2 * f], sig = ss->qerr[2 * f + 1];
        mse[f] = nfin > 0 ? err / (double)nfin : NAN;
        sqnr[f] = err > 0 && sig > 0 ? 10.0 * log10(sig / err) : NAN;
    }
    ag_counts_item it = {.tensor = ss->tensor,
                         .step = ss->step,
                         .numel = ss->numel,
                         .nonfinite = ss->nonfinite,
                         .amax = ss->amax,
                         .nf = ss->nf,
                         .fmts = ss->fmts,
                         .fidx = ss->fidx,
                         .scales = ss->scales,
                         .counts = ss->counts,
                         .flips = ss->flips,
                         .mse = mse,
                         .sqnr_db = sqnr,
                         .ranks = ss->nranks,
                         .incomplete = incomplete || ss->inconsistent};
    int err = ag_eng_file_counts(e, ss->run, &it);
    if (!err && it.incomplete) note_incomplete(e, ss);
    note_late(ss->run, ss->tensor, ss->step);
    step_free(e, ss);
    return err;
}

int ag_eng_shard_counts(ag_engine *e, client_state *cs, const ag_msg_counts *c, size_t i,
                        const ag_format *const *fmts, const int *fidx) {
    run_state *r = cs->run;
    size_t nf = c->nformats, k = i * nf;
    shard_step *ss;
    int made;
    int err = step_for(e, r, AG_MSG_COUNTS, c->tensors[i], c->step, &ss, &made);
    if (err) return err;
    if (made && too_late(r, c->tensors[i], c->step)) {
        step_free(e, ss);
        return AG_ETIMEDOUT;
    }
    if (made) {
        ss->form = c->form;
        ss->nf = nf;
        memcpy(ss->fmts, fmts, nf * sizeof *fmts);
        memcpy(ss->fidx, fidx, nf * sizeof *fidx);
        ss->scales = malloc(nf * sizeof *ss->scales);
        ss->counts = calloc(nf * AG_COUNTS_PER_RESULT, sizeof *ss->counts);
        ss->flips = calloc(nf, sizeof *ss->flips);
        ss->qerr = calloc(2 * nf, sizeof *ss->qerr);
        if (!ss->scales || !ss->counts || !ss->flips || !ss->qerr) {
            step_free(e, ss);
            return AG_ENOMEM;
        }
        memcpy(ss->scales, c->scales + k, nf * sizeof *ss->scales);
    } else if (ss->form != c->form || !same_formats(ss, nf, fidx)) {
        return AG_EPROTO;
    }
    if (ss->have[cs->rank]) return AG_EEXIST;
    /* The Monitor all-reduces the amax, so every rank counts with the one
     * scale of the whole tensor; shards that disagree are not one tensor's. */
    for (size_t f = 0; f < nf; f++) {
        const uint64_t *n = c->counts + (k + f) * AG_COUNTS_PER_RESULT;
        for (int j = 0; j < AG_COUNTS_PER_RESULT; j++)
            ss->counts[f * AG_COUNTS_PER_RESULT + j] += n[j];
        int64_t fl = c->flips ? c->flips[k + f] : -1;
        ss->flips[f] = ss->flips[f] < 0 || fl < 0 ? -1 : ss->flips[f] + fl;
        if (c->scales[k + f] != ss->scales[f]) ss->inconsistent = 1;
        add_qerr(ss->qerr + 2 * f, c->numel[i] - c->nonfinite[i], c->mse ? c->mse[k + f] : NAN,
                 c->sqnr_db ? c->sqnr_db[k + f] : NAN, c->amax[i]);
    }
    if (c->amax[i] > ss->amax) ss->amax = c->amax[i];
    ss->numel += c->numel[i];
    ss->nonfinite += c->nonfinite[i];
    ss->have[cs->rank] = 1;
    if (++ss->nranks < ss->world) return AG_OK;
    if (ss->inconsistent)
        ag_log(e->log, AG_LOG_WARNING,
               "run %s: the shards of %s step %" PRIu64 " disagree on a scale: stored incomplete",
               r->name, ss->tensor, ss->step);
    return file_counts_step(e, ss, 0);
}

/* ----------------------------------------------------------- snapshots */

/* A hash of the shard layout (world and each rank's element count): the
 * baseline of a tensor compares element by element only under one layout. */
static uint64_t layout_of(const shard_step *ss) {
    uint64_t h = 1469598103934665603ULL ^ ss->world;
    for (uint32_t k = 0; k < ss->world; k++)
        h = (h ^ (ss->pieces[k].wx ? ss->pieces[k].n + 1 : 0)) * 1099511628211ULL;
    return h ? h : 1;
}

/* The job evaluating ss's shards as one snapshot (the reported ranks' shards
 * in rank order). ss's shards are given up (freed) either way. */
static int make_job(ag_engine *e, shard_step *ss, ag_engine_job **out) {
    size_t n = 0;
    uint64_t numel = 0;
    for (uint32_t k = 0; k < ss->world; k++)
        if (ss->pieces[k].wx) {
            n += ss->pieces[k].n;
            numel += ss->pieces[k].numel;
        }
    int partial = ss->nranks < ss->world;
    uint64_t layout = layout_of(ss);
    /* the shards' memory becomes the whole tensor's arrays */
    e->shard_bytes -= ss->bytes;
    e->state_bytes -= ss->bytes;
    ss->bytes = 0;
    float *w = ag_eng_take(e, n * sizeof(float)), *x = ag_eng_take(e, n * sizeof(float));
    if (!w || !x) {
        ag_eng_give(e, w, n * sizeof(float));
        ag_eng_give(e, x, n * sizeof(float));
        return AG_ENOMEM;
    }
    size_t at = 0;
    for (uint32_t k = 0; k < ss->world; k++) {
        shard_piece *p = &ss->pieces[k];
        if (!p->wx) continue;
        memcpy(w + at, p->wx, p->n * sizeof(float));
        memcpy(x + at, p->wx + p->n, p->n * sizeof(float));
        at += p->n;
        free(p->wx);
        p->wx = NULL;
    }
    const char *names[AG_FORMATS_MAX];
    for (size_t f = 0; f < ss->nf; f++) names[f] = ss->fmts[f]->name;
    ag_msg_snapshot ms = {.step = ss->step,
                          .tensor = ss->tensor,
                          .dtype = AG_DTYPE_F32,
                          .form = ss->form,
                          .lr = ss->lr,
                          .n = n,
                          .numel = numel,
                          .has_scale = ss->has_scale,
                          .scale = ss->scale,
                          .nformats = ss->nf,
                          .formats = names,
                          .w = w,
                          .x = x};
    ag_engine_job *job = NULL;
    int err = ag_eng_snapshot_job(e, ss->run, &ms, &job);
    if (err) {
        ag_eng_give(e, w, n * sizeof(float));
        ag_eng_give(e, x, n * sizeof(float));
        return err;
    }
    /* the job owns the arrays it reads (payload took them in place) */
    job->wbuf = w;
    job->xbuf = x;
    job->reserved += n * sizeof(float);
    e->inflight_bytes += n * sizeof(float);
    job->ranks = ss->nranks;
    job->partial = partial;
    tensor_state *t = job->t;
    if (!partial) {
        if (t->shard_layout && t->shard_layout != layout && t->prev_n)
            ag_eng_forget_encoded(e, t); /* shards moved: nothing comparable */
        t->shard_layout = layout;
    }
    *out = job;
    return AG_OK;
}

/* Widen a shard's w and x (n each, of dtype, unaligned) into wx. */
static int widen(int dtype, const void *w, const void *x, size_t n, float *wx) {
    if (dtype == AG_DTYPE_F32) {
        memcpy(wx, w, n * sizeof(float));
        memcpy(wx + n, x, n * sizeof(float));
        return AG_OK;
    }
    uint16_t *tmp = malloc(n * sizeof *tmp);
    if (!tmp) return AG_ENOMEM;
    int (*fn)(const uint16_t *, float *, size_t) =
        dtype == AG_DTYPE_BF16 ? ag_bf16_to_f32 : ag_f16_to_f32;
    memcpy(tmp, w, n * 2);
    int err = fn(tmp, wx, n);
    memcpy(tmp, x, n * 2);
    if (!err) err = fn(tmp, wx + n, n);
    free(tmp);
    return err;
}

/* Room for need more bytes of shards: the oldest waiting snapshot steps
 * (not keep, not of a tensor with a job in flight) are stored incomplete
 * until the shard budget and the state budget hold need more. */
static int make_room(ag_engine *e, size_t need, const shard_step *keep);

int ag_eng_shard_snapshot(ag_engine *e, client_state *cs, const ag_msg_snapshot *s,
                          ag_engine_job **job) {
    run_state *r = cs->run;
    *job = NULL;
    if (s->step > INT64_MAX || s->n == 0 || s->n > SIZE_MAX / (2 * sizeof(float))) return AG_ERANGE;
    if (s->form == AG_FORM_SGD && !isfinite((float)s->lr)) return AG_ERANGE;
    if (s->has_scale && !((float)s->scale > 0 && isfinite((float)s->scale))) return AG_ERANGE;
    const ag_format *fmts[AG_FORMATS_MAX];
    int fidx[AG_FORMATS_MAX];
    size_t nf = 0;
    if (s->nformats) {
        for (size_t i = 0; i < s->nformats; i++)
            if (!(fmts[nf++] = ag_format_get(s->formats[i]))) return AG_EFORMAT;
    } else {
        for (size_t i = 0; i < e->cfg->nfmts; i++) fmts[nf++] = e->cfg->fmts[i];
    }
    for (size_t i = 0; i < nf; i++)
        if ((fidx[i] = ag_eng_fmt_index(fmts[i])) < 0) return AG_EFORMAT;
    size_t need = 2 * (size_t)s->n * sizeof(float);
    if (need > e->max_shard_bytes) return AG_ENOSPC;
    shard_step *ss;
    char *key = step_key(s->step, s->tensor);
    if (!key) return AG_ENOMEM;
    ss = ag_map_get(&r->shards, key);
    free(key);
    if (ss) {
        if (ss->type != AG_MSG_SNAPSHOT || ss->dtype != s->dtype || ss->form != s->form ||
            (s->form == AG_FORM_SGD && ss->lr != (float)s->lr) || ss->has_scale != s->has_scale ||
            (s->has_scale && ss->scale != s->scale) || !same_formats(ss, nf, fidx))
            return AG_EPROTO;
        if (ss->have[cs->rank]) return AG_EEXIST;
    } else if (too_late(r, s->tensor, s->step)) {
        return AG_ETIMEDOUT;
    }
    int err = make_room(e, need, ss);
    if (err) return err;
    int made = 0;
    if (!ss) {
        if ((err = step_for(e, r, AG_MSG_SNAPSHOT, s->tensor, s->step, &ss, &made))) return err;
        ss->pieces = calloc(ss->world, sizeof *ss->pieces);
        if (!ss->pieces) {
            step_free(e, ss);
            return AG_ENOMEM;
        }
        ss->dtype = s->dtype;
        ss->form = s->form;
        ss->lr = s->form == AG_FORM_SGD ? (float)s->lr : 0;
        ss->has_scale = s->has_scale;
        ss->scale = s->scale;
        ss->nf = nf;
        memcpy(ss->fmts, fmts, nf * sizeof *fmts);
        memcpy(ss->fidx, fidx, nf * sizeof *fidx);
    }
    shard_piece *p = &ss->pieces[cs->rank];
    p->wx = malloc(need);
    if (!p->wx || (err = widen(s->dtype, s->w, s->x, (size_t)s->n, p->wx))) {
        free(p->wx);
        p->wx = NULL;
        if (made) step_free(e, ss);
        return err ? err : AG_ENOMEM;
    }
    p->n = (size_t)s->n;
    p->numel = s->numel;
    ss->bytes += need;
    e->shard_bytes += need;
    e->state_bytes += need;
    ss->have[cs->rank] = 1;
    if (++ss->nranks < ss->world) return AG_OK;
    err = make_job(e, ss, job);
    note_late(r, ss->tensor, ss->step);
    step_free(e, ss);
    return err;
}

/* ----------------------------------------------------------- incomplete */

/* The run's last step as filing a step outside any message moved it (no
 * client's message end carries it). */
static void queue_run_step(ag_engine *e, const run_state *r) {
    ag_write_item it = {.kind = AG_W_RUN_DELTA};
    it.u.run_delta = (ag_store_run_delta){.run_id = r->id, .last_step = r->last_step};
    ag_eng_push(e, &it);
}

/* File ss as incomplete now. 1 when it was filed (or given up), 0 when it
 * must wait (a job of its tensor is in flight). */
static int file_incomplete(ag_engine *e, shard_step *ss) {
    run_state *r = ss->run;
    int err;
    if (ss->type == AG_MSG_COUNTS) {
        err = file_counts_step(e, ss, 1);
    } else {
        const tensor_state *t = ag_map_get(&r->tensors, ss->tensor);
        if (t && t->busy) return 0;
        ag_engine_job *job = NULL;
        err = make_job(e, ss, &job);
        if (!err) note_incomplete(e, ss);
        note_late(r, ss->tensor, ss->step);
        step_free(e, ss);
        if (!err) { /* evaluated here, on the loop; its end queues its rows */
            e->njobs++;
            r->jobs++;
            job->t->busy++;
            job->err = ag_eng_job_amax_phase(job);
            ag_engine_job_run(e, job);
            ag_engine_job_finish(e, job);
            queue_run_step(e, r);
            ag_eng_boundary(e);
            return 1;
        }
    }
    if (err) {
        ag_eng_count_unfiled(e);
        ag_log(e->log, AG_LOG_WARNING, "run %s: an incomplete step not stored: %s", r->name,
               ag_strerror(err));
    }
    queue_run_step(e, r);
    ag_eng_end_message(e, NULL, 0, 1);
    return 1;
}

static int make_room(ag_engine *e, size_t need, const shard_step *keep) {
    shard_step *ss = e->shards_head;
    while (e->shard_bytes + need > e->max_shard_bytes ||
           e->state_bytes + e->inflight_bytes + need > e->max_state_bytes) {
        while (ss && (ss == keep || ss->type != AG_MSG_SNAPSHOT || ss->bytes == 0)) ss = ss->next;
        if (!ss) return AG_ENOSPC;
        shard_step *next = ss->next;
        if (!file_incomplete(e, ss)) next = ss->next; /* busy: try the next one */
        ss = next;
    }
    return AG_OK;
}

size_t ag_eng_expire_shards(ag_engine *e, int64_t now_ms, run_state *r, int all) {
    size_t filed = 0;
    for (shard_step *ss = e->shards_head, *next; ss; ss = next) {
        next = ss->next;
        if (!all && !(r && ss->run == r) && (r || ss->deadline_ms > now_ms)) continue;
        filed += (size_t)file_incomplete(e, ss);
    }
    return filed;
}
