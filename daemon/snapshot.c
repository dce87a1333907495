/*
 * snapshot.c - gradient snapshots in the engine: payload widening, the
 * per-format scales, the one-pass stall and encode kernel for every format,
 * pattern flips against the previous snapshot, and the rows they file; the
 * flip baselines kept in memory and written to the store in sweeps.
 * A job's chunks (ag_engine_job_run_chunk) may run on the thread pool.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/stall_encode.h"
#include "daemon/engine_internal.h"

/* --------------------------------------------------------- snapshots */

/* Chunks hold whole blocks of the block-scaled formats (32 or 16 elements),
 * so their encoded forms start at enc_bytes(f, start). */
_Static_assert(AG_ENGINE_CHUNK % 32 == 0, "engine chunks must be block-aligned");

/* Point job->w/x at float32 data: in place when f32 and aligned, else a
 * converted copy. */
static int payload(ag_engine *e, ag_engine_job *job, const ag_msg_snapshot *s) {
    size_t n = job->n, esz = ag_proto_dtype_size(s->dtype);
    const uint8_t *w = s->w, *x = s->x;
    int f32 = s->dtype == AG_DTYPE_F32 && ag_proto_aligned(w, 4) && ag_proto_aligned(x, 4);
    if (f32 && !s->remote) {
        job->w = (const float *)(const void *)w;
        job->x = (const float *)(const void *)x;
        return AG_OK;
    }
    job->wbuf = ag_eng_take(e, n * sizeof(float));
    if (!job->wbuf) return AG_ENOMEM;
    if (f32) {
        /* In a client's segment: w is copied chunk by chunk in the amax
         * phase (the copy is the baseline), and each chunk of g or u into a
         * scratch of its pool thread before the kernels read it. */
        job->src_w = (const float *)(const void *)w;
        job->src_x = (const float *)(const void *)x;
        job->w = job->wbuf;
        return AG_OK;
    }
    job->xbuf = ag_eng_take(e, n * sizeof(float));
    if (!job->xbuf) return AG_ENOMEM;
    if (s->dtype == AG_DTYPE_F32) {
        memcpy(job->wbuf, w, n * esz);
        memcpy(job->xbuf, x, n * esz);
    } else {
        /* Widen through an aligned copy of the 16-bit patterns. */
        uint16_t *tmp = ag_eng_take(e, n * sizeof *tmp);
        if (!tmp) return AG_ENOMEM;
        int (*widen)(const uint16_t *, float *, size_t) =
            s->dtype == AG_DTYPE_BF16 ? ag_bf16_to_f32 : ag_f16_to_f32;
        memcpy(tmp, w, n * 2);
        int err = widen(tmp, job->wbuf, n);
        memcpy(tmp, x, n * 2);
        if (!err) err = widen(tmp, job->xbuf, n);
        ag_eng_give(e, tmp, n * sizeof *tmp);
        if (err) return err;
    }
    job->w = job->wbuf;
    job->x = job->xbuf;
    return AG_OK;
}

/* n zeroed elements of size bytes for a job's per-chunk sums: from the
 * job's arena while it has room (a small job allocates nothing), else
 * calloc. NULL without memory. */
static void *job_calloc(ag_engine_job *job, size_t n, size_t size) {
    if (n && size > SIZE_MAX / n) return NULL;
    size_t bytes = n * size;
    size_t room = sizeof job->arena - job->arena_used;
    if (bytes <= room && (bytes + 15) / 16 * 16 <= room) {
        void *p = job->arena + job->arena_used;
        job->arena_used += (bytes + 15) / 16 * 16;
        memset(p, 0, bytes);
        return p;
    }
    return calloc(n ? n : 1, size);
}

/* Give back what job_calloc handed out (NULL: nothing). */
static void job_release(ag_engine_job *job, void *p) {
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)job->arena;
    if (p && (a < lo || a >= lo + sizeof job->arena)) free(p);
}

/* A zeroed job: the memory of the last one freed, else new. Loop. */
static ag_engine_job *job_new(ag_engine *e) {
    ag_engine_job *job = e->spare_job;
    e->spare_job = NULL;
    if (!job) return calloc(1, sizeof *job);
    /* the arena's bytes are zeroed as they are handed out */
    memset(job, 0, offsetof(ag_engine_job, arena));
    return job;
}

void ag_eng_free_spare_job(ag_engine *e) {
    free(e->spare_job);
    e->spare_job = NULL;
}

/* Free a job, its large buffers given back as spares, its memory kept for
 * the next job. Loop. */
static void job_free(ag_engine *e, ag_engine_job *job) {
    if (!job) return;
    size_t fbytes = job->n * sizeof(float);
    if (job->base != job->wbuf) ag_eng_give(e, job->base, fbytes);
    ag_eng_give(e, job->wbuf, fbytes);
    ag_eng_give(e, job->xbuf, fbytes);
    for (size_t i = 0; i < job->nf; i++)
        ag_eng_give(e, job->cur[i], enc_bytes(job->fmts[i], job->n));
    for (size_t i = 0; i < AG_FORMATS_MAX && job->borrowed[i]; i++)
        ag_eng_give(e, job->borrowed[i], job->borrowed_bytes[i]);
    job_release(job, job->part_amax);
    job_release(job, job->part_bad);
    job_release(job, job->part_counts);
    job_release(job, job->part_flips);
    job_release(job, job->part_qerr);
    job_release(job, job->part_err);
    if (e->spare_job)
        free(job);
    else
        e->spare_job = job;
}

/* Bytes a snapshot job of n elements holds while in flight: the message
 * (bytes), float32 conversions when not f32 (w and x), the baseline copy of
 * w when f32, and the new encoded forms (ebytes: the sum over the formats
 * of enc_bytes, 1 or 2 bytes per element, a block-scaled format one more
 * byte per block). */
static size_t job_cost(size_t n, size_t ebytes, int f32, size_t bytes) {
    return bytes + (f32 ? 1 : 2) * n * sizeof(float) + ebytes;
}

/* The encoded bytes of n elements in the formats a snapshot names (unknown
 * names count 2 per element: the job will refuse them anyway), or in the
 * defaults. */
static size_t snapshot_ebytes(const ag_engine *e, const ag_msg_snapshot *s, size_t n) {
    size_t eb = 0;
    if (s->nformats == 0) {
        for (size_t i = 0; i < e->cfg->nfmts; i++) eb += enc_bytes(e->cfg->fmts[i], n);
        return eb;
    }
    for (size_t i = 0; i < s->nformats; i++) {
        const ag_format *f = ag_format_get(s->formats[i]);
        eb += f ? enc_bytes(f, n) : 2 * n;
    }
    return eb;
}

int ag_engine_snapshot_fits(const ag_engine *e, const ag_msg *m, size_t bytes) {
    if (e->njobs == 0 || m->type != AG_MSG_SNAPSHOT) return 1;
    const ag_msg_snapshot *s = &m->u.snapshot;
    if (s->n > SIZE_MAX / (sizeof(float) * 2 + 2 * AG_FORMATS_MAX)) return 0;
    size_t need = job_cost((size_t)s->n, snapshot_ebytes(e, s, (size_t)s->n),
                           s->dtype == AG_DTYPE_F32, bytes);
    return e->state_bytes + e->inflight_bytes + need <= e->max_state_bytes;
}

int ag_engine_may_overlap(const ag_msg *m, const char *const *tensors, size_t njobs,
                          int scales_pending) {
    if (njobs == 0) return 1;
    switch (m->type) {
    case AG_MSG_STATS: return !scales_pending; /* amax histories keep message order */
    case AG_MSG_SNAPSHOT:
        for (size_t i = 0; i < njobs; i++)
            if (strcmp(tensors[i], m->u.snapshot.tensor) == 0) return 0;
        return 1;
    default: return 0; /* run start and end change clients; unknown types wait */
    }
}

int ag_eng_snapshot_job(ag_engine *e, run_state *r, const ag_msg_snapshot *s, ag_engine_job **out) {
    if (s->step > INT64_MAX || s->n == 0 ||
        s->n > SIZE_MAX / (sizeof(float) * 2 + 2 * AG_FORMATS_MAX))
        return AG_ERANGE;
    /* The kernels scale in float32: a value float32 cannot hold (inf, or a scale
     * that rounds to 0) would fail them after the scale and history had been
     * changed, and leave a scale of 0 or inf in force. Refuse it up front. */
    if (s->form == AG_FORM_SGD && !isfinite((float)s->lr)) return AG_ERANGE;
    if (s->has_scale && !((float)s->scale > 0 && isfinite((float)s->scale))) return AG_ERANGE;
    ag_engine_job *job = job_new(e);
    if (!job) return AG_ENOMEM;
    int err = AG_OK;
    job->step = s->step;
    job->n = (size_t)s->n;
    job->numel = s->numel;
    job->form = s->form;
    job->lr = (float)s->lr;
    job->has_scale = s->has_scale;
    job->msg_scale = s->scale;
    if (s->nformats) {
        for (size_t i = 0; i < s->nformats; i++) {
            const ag_format *f = ag_format_get(s->formats[i]);
            if (!f) {
                err = AG_EFORMAT;
                goto fail;
            }
            job->fmts[job->nf++] = f;
        }
    } else {
        for (size_t i = 0; i < e->cfg->nfmts; i++) job->fmts[job->nf++] = e->cfg->fmts[i];
    }
    for (size_t i = 0; i < job->nf; i++) {
        int64_t id;
        if ((job->fidx[i] = ag_eng_fmt_index(job->fmts[i])) < 0) {
            err = AG_EFORMAT;
            goto fail;
        }
        if ((err = ag_eng_format_id(e, job->fmts[i], job->fidx[i], &id))) goto fail;
    }
    /* What the tensor keeps once this snapshot is its baseline: one encoded
     * form per format it names (n bytes, 2n for 16-bit formats, n plus one
     * per block for block-scaled ones; a shape change drops all the others)
     * and its float32 weights until written; what it holds now is given back
     * then. In flight the job holds job_cost besides. */
    tensor_state *known = ag_map_get(&r->tensors, s->tensor);
    size_t ebytes = 0;
    for (size_t i = 0; i < job->nf; i++) ebytes += enc_bytes(job->fmts[i], job->n);
    size_t keep = ebytes + job->n * sizeof(float), had = 0;
    if (known) had = known->base_w ? known->base_n * sizeof(float) : 0;
    if (known && known->prev_n != job->n) had += known->prev_bytes;
    for (size_t i = 0; known && known->prev_n == job->n && i < job->nf; i++) {
        int again = 0;
        for (size_t k = 0; k < i; k++) again |= job->fidx[k] == job->fidx[i];
        if (!again && known->prev[job->fidx[i]]) had += enc_bytes(job->fmts[i], job->n);
    }
    size_t cost = job_cost(job->n, ebytes, s->dtype == AG_DTYPE_F32, 0);
    if (e->state_bytes + e->inflight_bytes + cost - had > e->max_state_bytes ||
        keep > e->max_state_bytes) {
        err = AG_ENOSPC;
        goto fail;
    }
    job->reserved = cost;
    if ((err = payload(e, job, s))) goto fail;
    if (known)
        job->t = known; /* found above: no second lookup */
    else if ((err = ag_eng_tensor_for(e, r, s->tensor, AG_ROLE_WEIGHT, &job->t)))
        goto fail;
    if (!ag_eng_role_for(e, job->t, AG_ROLE_WEIGHT)) {
        err = AG_ENOMEM;
        goto fail;
    }
    e->inflight_bytes += job->reserved;
    *out = job;
    return AG_OK;
fail:
    job_free(e, job);
    return err;
}

/* Scales of a job, computed on the loop before the kernels (cheap). */
void ag_eng_job_scales(ag_engine *e, ag_engine_job *job) {
    role_state *rs = job->t->roles[AG_ROLE_WEIGHT];
    int pushable = job->nonfinite < job->n;
    ag_eng_observe(e, rs, job->amax, pushable, job->fmts, job->fidx, job->nf, job->step);
    for (size_t i = 0; i < job->nf; i++) {
        int fi = job->fidx[i];
        if (job->has_scale && !ag_eng_scale_is_one(job->fmts[i])) { /* a twin, MX stay at 1 */
            rs->scale[fi] = (double)(float)job->msg_scale;
            rs->hist_amax[fi] = ag_amax_history_get(rs->history);
        }
        job->scales[i] = (float)rs->scale[fi];
    }
}

int ag_eng_job_prepare(ag_engine *e, ag_engine_job *job) {
    tensor_state *t = job->t;
    size_t n = job->n, nf = job->nf;
    job->chunk = AG_ENGINE_CHUNK;
    job->nchunks = (n + job->chunk - 1) / job->chunk;
    job->part_counts = job_calloc(job, job->nchunks * nf, sizeof *job->part_counts);
    job->part_flips = job_calloc(job, job->nchunks * nf, sizeof *job->part_flips);
    job->part_qerr = job_calloc(job, job->nchunks * nf, sizeof *job->part_qerr);
    if (!job->part_err) job->part_err = job_calloc(job, job->nchunks, sizeof *job->part_err);
    if (!job->part_counts || !job->part_flips || !job->part_qerr || !job->part_err)
        return AG_ENOMEM;
    for (size_t i = 0; i < nf; i++)
        if (!(job->cur[i] = ag_eng_take(e, enc_bytes(job->fmts[i], n)))) return AG_ENOMEM;
    if (job->wbuf) {
        job->base = job->wbuf; /* a conversion: already a copy */
    } else if (!(job->base = ag_eng_take(e, n * sizeof(float)))) {
        return AG_ENOMEM;
    }
    ag_eng_spares_fit(e); /* the job's reservation now holds what it took */
    /* Pattern flips at the previous snapshot's scale (docs/numerics.md): when
     * the scale has not moved, this snapshot's patterns are already the ones
     * to compare; when it has, the weights are encoded again at the old scale
     * in the counting pass. In message order, so a format named twice
     * compares with itself. A shape change leaves nothing comparable. */
    int same_shape = t->prev_n == n;
    const ag_engine_job *b = job->behind; /* pipelined: its patterns are the baseline to be */
    for (size_t i = 0; i < nf; i++) {
        int fi = job->fidx[i];
        const uint8_t *prev = same_shape ? t->prev[fi] : NULL;
        float prev_scale = t->prev_scale[fi];
        int lost = (t->flips_lost >> fi & 1) != 0;
        /* the last of b's copies of the format: the one its end keeps */
        for (size_t k = 0; b && k < b->nf; k++)
            if (b->fidx[k] == fi) {
                prev = b->cur[k];
                prev_scale = b->scales[k];
                lost = 0;
            }
        for (size_t k = 0; k < i; k++)
            if (job->fidx[k] == fi) {
                prev = job->cur[k];
                prev_scale = job->scales[k];
                lost = 0;
            }
        job->flip_prev[i] = prev;
        job->flip_scale[i] = prev_scale;
        job->flip_mode[i] = lost || job->partial           ? FLIPS_UNKNOWN
                            : !prev                        ? FLIPS_NONE
                            : prev_scale == job->scales[i] ? FLIPS_BYTES
                                                           : FLIPS_ENCODE;
    }
    return AG_OK;
}

size_t ag_engine_job_chunks(const ag_engine_job *job) { return job->err ? 0 : job->nchunks; }

int ag_engine_job_scales_pending(const ag_engine_job *job) { return job->phase == 0; }

/* Phase 0: the amax of the job's weights in chunks, summed on the loop. */
int ag_eng_job_amax_phase(ag_engine_job *job) {
    job->phase = 0;
    job->chunk = AG_ENGINE_CHUNK;
    job->nchunks = (job->n + job->chunk - 1) / job->chunk;
    job->part_amax = job_calloc(job, job->nchunks, sizeof *job->part_amax);
    job->part_bad = job_calloc(job, job->nchunks, sizeof *job->part_bad);
    job->part_err = job_calloc(job, job->nchunks, sizeof *job->part_err);
    return job->part_amax && job->part_bad && job->part_err ? AG_OK : AG_ENOMEM;
}

int ag_engine_job_next(ag_engine *e, ag_engine_job *job) {
    if (job->err || job->phase != 0) return 0;
    /* The largest finite magnitude and the non-finite count, as one pass
     * over the whole array gives them. */
    float amax = 0;
    uint64_t bad = 0;
    for (size_t c = 0; c < job->nchunks && !job->err; c++) {
        job->err = job->part_err[c];
        amax = job->part_amax[c] > amax ? job->part_amax[c] : amax;
        bad += job->part_bad[c];
    }
    job->phase = 1;
    if (job->err) return 0;
    job->amax = amax;
    job->nonfinite = bad;
    ag_eng_job_scales(e, job);
    job_release(job, job->part_err);
    job->part_err = NULL;
    job->err = ag_eng_job_prepare(e, job);
    return job->err == AG_OK;
}

const char *ag_engine_job_tensor(const ag_engine_job *job) { return job->t->name; }

int ag_engine_may_follow(const ag_msg *m, const ag_engine_job *job) {
    const ag_engine_job *last = job->t->newest;
    return m->type == AG_MSG_SNAPSHOT && last && !last->err &&
           job->t->busy <= AG_ENGINE_FOLLOWERS && job->t->run->world <= 1 &&
           last->n >= AG_ENGINE_POOL_MIN && m->u.snapshot.n == last->n &&
           strcmp(m->u.snapshot.tensor, job->t->name) == 0;
}

int ag_engine_job_follows(const ag_engine_job *later, const ag_engine_job *earlier) {
    return later != earlier && later->t == earlier->t;
}

int ag_engine_may_pipeline(const ag_engine_job *job, const ag_engine_job *before) {
    return job != before && job->phase == 0 && !job->err && !job->partial && before->phase == 1 &&
           !before->err && !before->partial && !before->follower && before->t == job->t &&
           before->n == job->n; /* so the same chunks (AG_ENGINE_CHUNK) */
}

int ag_engine_job_next_behind(ag_engine *e, ag_engine_job *job, ag_engine_job *before) {
    job->behind = before;
    before->follower = job;
    int on = ag_engine_job_next(e, job);
    if (!on) { /* failed (or nothing to run): it ends now, before before */
        job->behind = NULL;
        before->follower = NULL;
    }
    return on;
}

/* The end of a job with a pipelined neighbour (on the loop, before the
 * job's own buffers go): unlink the two; if job is the one ahead, every
 * pattern array of it the follower reads and the end did not make the
 * baseline (job failed) moves to the follower, whose flips against it are
 * unknown. */
static void unlink_pipeline(ag_engine *e, ag_engine_job *job) {
    if (job->behind) { /* a follower ending first: it failed before its kernels */
        job->behind->follower = NULL;
        job->behind = NULL;
    }
    ag_engine_job *f = job->follower;
    if (!f) return;
    f->behind = NULL;
    job->follower = NULL;
    for (size_t i = 0; i < job->nf; i++) {
        if (!job->cur[i]) continue; /* now the tensor's baseline */
        int read = 0;
        for (size_t k = 0; k < f->nf; k++)
            if (f->flip_prev[k] == job->cur[i]) {
                read = 1;
                f->voided |= 1ull << k;
            }
        if (!read) continue;
        for (size_t k = 0; k < AG_FORMATS_MAX; k++)
            if (!f->borrowed[k]) {
                f->borrowed[k] = job->cur[i];
                f->borrowed_bytes[k] = enc_bytes(job->fmts[i], job->n);
                /* held until the follower ends: counted in its reservation
                 * (this job's has been given back already) */
                f->reserved += f->borrowed_bytes[k];
                e->inflight_bytes += f->borrowed_bytes[k];
                job->cur[i] = NULL;
                break;
            }
    }
}

/* Whether format i's flips are counted in the encode pass: bytes against
 * bytes at one scale, for a per-tensor format of 1-byte patterns. */
static int flips_fused(const ag_engine_job *job, size_t i) {
    return job->flip_mode[i] == FLIPS_BYTES && job->flip_prev[i] && !job->fmts[i]->block &&
           job->fmts[i]->pattern_bytes == 1;
}

/* A pool thread's copy of a chunk of g or u read from a client's segment:
 * the kernels read it more than once, and the client may write the
 * segment meanwhile. In the thread's caches while the chunk's pass runs. */
static _Thread_local float remote_x[AG_ENGINE_CHUNK] __attribute__((aligned(64)));

/* Stall counts, the patterns of every format and the baseline copy of w
 * in one pass over the chunk's w and x, then each format's flips. Only
 * this chunk's slices of the job's arrays are written. */

void ag_engine_job_run_chunk(ag_engine_job *job, size_t c) {
    size_t start = c * job->chunk;
    size_t len = job->n - start < job->chunk ? job->n - start : job->chunk;
    if (job->phase == 0) {
        if (job->src_w) memcpy(job->wbuf + start, job->src_w + start, len * sizeof(float));
        job->part_err[c] = ag_amax(job->w + start, len, &job->part_amax[c], &job->part_bad[c]);
        return;
    }
    size_t nf = job->nf;
    ag_stall_counts *counts = job->part_counts + c * nf;
    uint64_t *flips = job->part_flips + c * nf;
    uint8_t *cur[AG_FORMATS_MAX] = {NULL};
    for (size_t i = 0; i < nf; i++) cur[i] = job->cur[i] + enc_bytes(job->fmts[i], start);
    /* byte flips of the per-tensor 1-byte formats counted in the pass, as
     * each block's patterns are written */
    const uint8_t *fused[AG_FORMATS_MAX] = {NULL};
    for (size_t i = 0; i < nf; i++)
        fused[i] = flips_fused(job, i) ? job->flip_prev[i] + start : NULL;
    const float *x = job->x ? job->x + start : remote_x;
    if (!job->x) memcpy(remote_x, job->src_x + start, len * sizeof(float));
    /* the baseline copy of w made by the pass, block by block (a record from
     * a client's segment was copied in the amax phase: base is w) */
    float *copy = job->base != job->w ? job->base + start : NULL;
    int err = ag_stall_encode_flips_copy_multi(job->fmts, job->scales, nf, job->form != AG_FORM_SGD,
                                               job->lr, job->w + start, x, len, counts, cur,
                                               job->part_qerr + c * nf, fused, flips, copy);
    for (size_t i = 0; i < nf && !err; i++) {
        if (fused[i]) continue;
        const uint8_t *prev =
            job->flip_prev[i] ? job->flip_prev[i] + enc_bytes(job->fmts[i], start) : NULL;
        if (job->fmts[i]->block &&
            (job->flip_mode[i] == FLIPS_BYTES || job->flip_mode[i] == FLIPS_ENCODE))
            /* at the previous snapshot's block scales: blocks whose scale
             * code did not move compare bytes, the others encode again */
            err = ag_block_count_flips(job->fmts[i], job->flip_scale[i], prev,
                                       job->flip_mode[i] == FLIPS_BYTES ? cur[i] : NULL,
                                       job->w + start, len, &flips[i]);
        else if (job->flip_mode[i] == FLIPS_BYTES)
            err = ag_count_pattern_changes(job->fmts[i], prev, cur[i], len, &flips[i]);
        else if (job->flip_mode[i] == FLIPS_ENCODE)
            err = ag_count_pattern_flips(job->fmts[i], job->flip_scale[i], prev, job->w + start,
                                         len, &flips[i]);
    }
    job->part_err[c] = err;
}

void ag_engine_job_run(ag_engine *e, ag_engine_job *job) {
    do {
        size_t n = ag_engine_job_chunks(job);
        for (size_t c = 0; c < n; c++) ag_engine_job_run_chunk(job, c);
    } while (ag_engine_job_next(e, job));
}

void ag_eng_mark_dirty(ag_engine *e, tensor_state *t) {
    if (t->in_dirty) return;
    t->in_dirty = 1;
    t->next_dirty = e->dirty;
    e->dirty = t;
}

/* Sum the chunks (in order) and make this snapshot the tensor's baseline:
 * its patterns for the next flips, its weights for the next write. */
static int adopt(ag_engine *e, ag_engine_job *job) {
    tensor_state *t = job->t;
    size_t nf = job->nf;
    for (size_t c = 0; c < job->nchunks; c++) {
        if (job->part_err[c]) return job->part_err[c];
        for (size_t i = 0; i < nf; i++) {
            const ag_stall_counts *p = &job->part_counts[c * nf + i];
            job->counts[i].stalled += p->stalled;
            job->counts[i].total += p->total;
            job->counts[i].overflow += p->overflow;
            job->counts[i].underflow += p->underflow;
            job->counts[i].nonfinite += p->nonfinite;
            job->flips[i] += job->part_flips[c * nf + i];
            const ag_quant_error *q = &job->part_qerr[c * nf + i];
            job->qerr[i].sq_error += q->sq_error;
            job->qerr[i].sq_signal += q->sq_signal;
            job->qerr[i].count += q->count;
        }
    }
    /* An incomplete step is not the whole tensor: its patterns compare with
     * nothing later, so the baseline stays the last whole step's. */
    if (job->partial) return AG_OK;
    if (t->prev_n != job->n) { /* shape changed: earlier snapshots are not comparable */
        for (int i = 0; i < AG_FORMATS_MAX; i++) {
            if (t->prev[i])
                ag_eng_give(e, t->prev[i], enc_bytes(ag_format_at((size_t)i), t->prev_n));
            t->prev[i] = NULL;
        }
        t->prev_n = job->n;
    }
    for (size_t i = 0; i < nf; i++) {
        int fi = job->fidx[i];
        /* the replaced baseline, or (a format named twice) the earlier copy of this job */
        ag_eng_give(e, t->prev[fi], enc_bytes(job->fmts[i], job->n));
        t->prev[fi] = job->cur[i];
        job->cur[i] = NULL;
        t->prev_scale[fi] = job->scales[i];
        t->flips_lost &= ~(1ull << fi);
    }
    size_t base_bytes = t->base_w ? t->base_n * sizeof(float) : 0;
    ag_eng_give(e, t->base_w, base_bytes);
    t->base_w = job->base;
    if (job->base == job->wbuf) job->wbuf = NULL;
    job->base = NULL;
    t->base_n = job->n;
    t->base_step = job->step;
    e->state_bytes = e->state_bytes - base_bytes + t->base_n * sizeof(float);
    ag_eng_mark_dirty(e, t);
    return AG_OK;
}

int ag_engine_job_finish(ag_engine *e, ag_engine_job *job) {
    int err = job->err;
    tensor_state *t = job->t;
    run_state *r = t->run;
    e->inflight_bytes -= job->reserved;
    e->njobs--;
    e->evaluated++;
    t->busy--; /* later jobs of the tensor may be in flight (ag_engine_may_follow) */
    if (t->newest == job) t->newest = NULL;
    r->jobs--;
    if (job->client) job->client->jobs--;
    if (!err) err = adopt(e, job);
    unlink_pipeline(e, job);
    size_t kept = 0; /* the baseline may have been replaced or dropped */
    for (int i = 0; i < AG_FORMATS_MAX; i++)
        kept += t->prev[i] ? enc_bytes(ag_format_at((size_t)i), t->prev_n) : 0;
    e->state_bytes = e->state_bytes - t->prev_bytes + kept;
    t->prev_bytes = kept;
    if (err) goto done;
    ag_write_item st = {.kind = AG_W_STATS};
    st.u.stats = (ag_store_stats_row){t->id,
                                      AG_ROLE_WEIGHT,
                                      job->step,
                                      job->amax,
                                      job->n,
                                      job->nonfinite,
                                      job->ranks ? job->ranks : 1};
    if ((err = ag_eng_push(e, &st))) goto done;
    for (size_t i = 0; i < job->nf; i++) {
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = t->id,
                                            .format_id = e->format_id[job->fidx[i]],
                                            .step = job->step,
                                            .counts = job->counts[i],
                                            .flips = job->flips[i],
                                            .amax = job->amax,
                                            .scale = job->scales[i],
                                            .flips_unknown = job->flip_mode[i] == FLIPS_UNKNOWN ||
                                                             (job->voided >> i & 1),
                                            .ranks = job->ranks ? job->ranks : 1,
                                            .incomplete = (uint8_t)job->partial,
                                            .has_qerr = 1,
                                            .mse = ag_quant_mse(&job->qerr[i]),
                                            .sqnr_db = ag_quant_sqnr_db(&job->qerr[i])};
        if ((err = ag_eng_push(e, &it))) goto done;
    }
    ag_eng_touch_tensor(e, t, AG_ROLE_WEIGHT, job->step, job->numel, job->amax);
    t->snapshots++;
done:
    if (err) {
        ag_eng_count_unfiled(e);
        ag_log(e->log, AG_LOG_WARNING, "snapshot of %s/%s step %llu not evaluated: %s", r->name,
               t->name, (unsigned long long)job->step, ag_strerror(err));
        if (job->client) ag_eng_queue_drop(e, job->client, job->seq, 1, ag_eng_unfiled_reason(err));
    }
    size_t bytes = job->bytes;
    client_state *client = job->client;
    job_free(e, job);
    ag_eng_spares_fit(e);
    /* The message was accepted (seq accounted) even if its rows failed. */
    ag_eng_end_message(e, client, bytes, 1);
    return err;
}

/* ------------------------------------------------------------ baselines */

int ag_engine_persist(ag_engine *e, int all) {
    /* Baselines go to the writer one at a time, after what is staged, so
     * ag_writer_full sees their bytes as they are queued. */
    ag_eng_stage_flush(e, 0);
    if (!e->sweep) { /* a new sweep: everything dirty until now */
        e->sweep = e->dirty;
        e->dirty = NULL;
    }
    while (e->sweep) {
        if (!all && e->writer && ag_writer_full(e->writer)) return 0;
        tensor_state *t = e->sweep;
        e->sweep = t->next_dirty;
        t->next_dirty = NULL;
        t->in_dirty = 0;
        if (!t->base_w) continue;
        ag_write_item sn = {.kind = AG_W_SNAPSHOT};
        sn.u.snapshot.tensor_id = t->id;
        sn.u.snapshot.step = t->base_step;
        sn.u.snapshot.n = t->base_n;
        sn.u.snapshot.w = t->base_w; /* moves to the writer */
        int err = e->writer ? ag_writer_push(e->writer, &sn) : AG_ECLOSED;
        if (err) { /* kept: the next sweep tries again */
            ag_log(e->log, AG_LOG_WARNING, "baseline of %s/%s not written: %s", t->run->name,
                   t->name, ag_strerror(err));
            ag_eng_mark_dirty(e, t);
            continue;
        }
        t->base_w = NULL;
        e->state_bytes -= t->base_n * sizeof(float);
    }
    ag_eng_boundary(e);
    return 1;
}
