/*
 * snapshot.c - gradient snapshots in the engine: payload widening, the
 * per-format scales, the one-pass stall and encode kernel for every format,
 * pattern flips against the previous snapshot, and the rows they file.
 * ag_engine_job_run may run on the libuv thread pool.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/stall_encode.h"
#include "daemon/engine_internal.h"

/* --------------------------------------------------------- snapshots */

/* Point job->w/x at float32 data: in place when f32 and aligned, else a
 * converted copy. */
static int payload(ag_engine_job *job, const ag_msg_snapshot *s) {
    size_t n = job->n, esz = ag_proto_dtype_size(s->dtype);
    const uint8_t *w = s->w, *x = s->x;
    if (s->dtype == AG_DTYPE_F32 && ag_proto_aligned(w, 4) && ag_proto_aligned(x, 4)) {
        job->w = (const float *)(const void *)w;
        job->x = (const float *)(const void *)x;
        return AG_OK;
    }
    job->wbuf = malloc(n * sizeof(float));
    job->xbuf = malloc(n * sizeof(float));
    if (!job->wbuf || !job->xbuf) return AG_ENOMEM;
    if (s->dtype == AG_DTYPE_F32) {
        memcpy(job->wbuf, w, n * esz);
        memcpy(job->xbuf, x, n * esz);
    } else {
        /* Widen through an aligned copy of the 16-bit patterns. */
        uint16_t *tmp = malloc(n * sizeof *tmp);
        if (!tmp) return AG_ENOMEM;
        int (*widen)(const uint16_t *, float *, size_t) =
            s->dtype == AG_DTYPE_BF16 ? ag_bf16_to_f32 : ag_f16_to_f32;
        memcpy(tmp, w, n * 2);
        int err = widen(tmp, job->wbuf, n);
        memcpy(tmp, x, n * 2);
        if (!err) err = widen(tmp, job->xbuf, n);
        free(tmp);
        if (err) return err;
    }
    job->w = job->wbuf;
    job->x = job->xbuf;
    return AG_OK;
}

static void job_free(ag_engine_job *job) {
    if (!job) return;
    free(job->wbuf);
    free(job->xbuf);
    free(job);
}

int ag_eng_snapshot_job(ag_engine *e, run_state *r, const ag_msg_snapshot *s, ag_engine_job **out) {
    if (s->step > INT64_MAX || s->n == 0 || s->n > SIZE_MAX / sizeof(float)) return AG_ERANGE;
    /* The kernels scale in float32: a value float32 cannot hold (inf, or a scale
     * that rounds to 0) would fail them after the scale and history had been
     * changed, and leave a scale of 0 or inf in force. Refuse it up front. */
    if (s->form == AG_FORM_SGD && !isfinite((float)s->lr)) return AG_ERANGE;
    if (s->has_scale && !((float)s->scale > 0 && isfinite((float)s->scale))) return AG_ERANGE;
    ag_engine_job *job = calloc(1, sizeof *job);
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
    /* The encoded copies this snapshot leaves for the next one's flips: one
     * of n bytes per format it names (a shape change drops all the others). */
    tensor_state *known = ag_map_get(&r->tensors, s->tensor);
    size_t keep = job->n * job->nf, had = 0;
    if (known && known->prev_n != job->n) had = known->prev_bytes;
    for (size_t i = 0; known && known->prev_n == job->n && i < job->nf; i++) {
        int again = 0;
        for (size_t k = 0; k < i; k++) again |= job->fidx[k] == job->fidx[i];
        if (!again && known->prev[job->fidx[i]]) had += job->n;
    }
    if (job->nf &&
        (job->n > SIZE_MAX / job->nf || e->state_bytes - had + keep > e->max_state_bytes)) {
        err = AG_ENOSPC;
        goto fail;
    }
    if ((err = payload(job, s))) goto fail;
    if ((err = ag_eng_tensor_for(e, r, s->tensor, AG_ROLE_WEIGHT, &job->t))) goto fail;
    if (!ag_eng_role_for(e, job->t, AG_ROLE_WEIGHT)) {
        err = AG_ENOMEM;
        goto fail;
    }
    *out = job;
    return AG_OK;
fail:
    job_free(job);
    return err;
}

/* Scales of a job, computed on the loop before the kernels (cheap). */
void ag_eng_job_scales(ag_engine *e, ag_engine_job *job) {
    role_state *rs = job->t->roles[AG_ROLE_WEIGHT];
    int pushable = job->nonfinite < job->n;
    ag_eng_observe(e, rs, job->amax, pushable, job->fmts, job->fidx, job->nf, job->step);
    for (size_t i = 0; i < job->nf; i++) {
        int fi = job->fidx[i];
        if (job->has_scale) {
            rs->scale[fi] = (double)(float)job->msg_scale;
            rs->hist_amax[fi] = ag_amax_history_get(rs->history);
        }
        job->scales[i] = (float)rs->scale[fi];
    }
}

/* Stall counts and the encoded weights of every format in one pass over w
 * and x, then flips of each format against the previous snapshot. */
int ag_eng_job_kernels(ag_engine_job *job) {
    tensor_state *t = job->t;
    uint8_t *cur[AG_FORMATS_MAX] = {NULL};
    int err = AG_OK;
    for (size_t i = 0; i < job->nf; i++)
        if (!(cur[i] = malloc(job->n))) {
            err = AG_ENOMEM;
            goto fail;
        }
    if ((err = ag_stall_encode_multi(job->fmts, job->scales, job->nf, job->form != AG_FORM_SGD,
                                     job->lr, job->w, job->x, job->n, job->counts, cur)))
        goto fail;
    if (t->prev_n != job->n) { /* shape changed: earlier snapshots are not comparable */
        for (int i = 0; i < AG_FORMATS_MAX; i++) {
            free(t->prev[i]);
            t->prev[i] = NULL;
        }
        t->prev_n = job->n;
    }
    /* Pattern flips at the previous snapshot's scale (docs/numerics.md): when
     * the scale has not moved, this snapshot's patterns are already the ones
     * to compare; when it has, the weights are encoded again at the old scale
     * in the counting pass. In message order, so a format named twice
     * compares with itself. */
    for (size_t i = 0; i < job->nf; i++) {
        int fi = job->fidx[i];
        if (t->prev[fi] && t->prev_scale[fi] == job->scales[i])
            err =
                ag_count_pattern_changes(job->fmts[i], t->prev[fi], cur[i], job->n, &job->flips[i]);
        else if (t->prev[fi])
            err = ag_count_pattern_flips(job->fmts[i], t->prev_scale[fi], t->prev[fi], job->w,
                                         job->n, &job->flips[i]);
        free(t->prev[fi]);
        t->prev[fi] = cur[i];
        cur[i] = NULL;
        t->prev_scale[fi] = job->scales[i];
        if (err) goto fail;
    }
    return AG_OK;
fail:
    for (size_t i = 0; i < job->nf; i++) free(cur[i]);
    return err;
}

/* Thread pool side: only this job's tensor is touched, and the loop leaves
 * the engine alone until ag_engine_job_finish. */
void ag_engine_job_run(ag_engine_job *job) {
    if (!job->err) job->err = ag_eng_job_kernels(job);
}

int ag_engine_job_finish(ag_engine *e, ag_engine_job *job) {
    int err = job->err;
    tensor_state *t = job->t;
    run_state *r = t->run;
    size_t kept = 0; /* the kernels may have kept or dropped encoded copies */
    for (int i = 0; i < AG_FORMATS_MAX; i++) kept += t->prev[i] ? t->prev_n : 0;
    e->state_bytes = e->state_bytes - t->prev_bytes + kept;
    t->prev_bytes = kept;
    if (err) goto done;
    ag_write_item st = {.kind = AG_W_STATS};
    st.u.stats =
        (ag_store_stats_row){t->id, AG_ROLE_WEIGHT, job->step, job->amax, job->n, job->nonfinite};
    if ((err = ag_eng_push(e, &st))) goto done;
    for (size_t i = 0; i < job->nf; i++) {
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = t->id,
                                            .format_id = e->format_id[job->fidx[i]],
                                            .step = job->step,
                                            .counts = job->counts[i],
                                            .flips = job->flips[i],
                                            .amax = job->amax,
                                            .scale = job->scales[i]};
        if ((err = ag_eng_push(e, &it))) goto done;
    }
    ag_write_item sn = {.kind = AG_W_SNAPSHOT};
    sn.u.snapshot.tensor_id = t->id;
    sn.u.snapshot.step = job->step;
    sn.u.snapshot.n = job->n;
    if (job->wbuf) {
        sn.u.snapshot.w = job->wbuf;
        job->wbuf = NULL;
    } else if ((sn.u.snapshot.w = malloc(job->n * sizeof(float)))) {
        memcpy(sn.u.snapshot.w, job->w, job->n * sizeof(float));
    }
    if (!sn.u.snapshot.w) {
        err = AG_ENOMEM;
        goto done;
    }
    if ((err = ag_eng_push(e, &sn))) {
        ag_write_item_clear(&sn);
        goto done;
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
    job_free(job);
    /* The message was accepted (seq accounted) even if its rows failed. */
    ag_eng_end_message(e, client, bytes, 1);
    return err;
}
