/*
 * restore.c - rebuilding the engine from the store at daemon start (formats,
 * runs with the launches that went to them, the clients that have not ended
 * with their sequence state and drop count, tensors, amax
 * histories, scales, and each tensor's last stored snapshot re-encoded so
 * flips continue across a restart, or marked lost where results were
 * written after it).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/engine_internal.h"

/* ------------------------------------------------------------ restore */

static int by_id_cmp(const void *key, const void *elem, int run) {
    int64_t id = *(const int64_t *)key;
    int64_t other = run ? (*(run_state *const *)elem)->id : (*(tensor_state *const *)elem)->id;
    return id < other ? -1 : id > other;
}
static int run_cmp(const void *k, const void *el) { return by_id_cmp(k, el, 1); }
static int tensor_cmp(const void *k, const void *el) { return by_id_cmp(k, el, 0); }

static tensor_state *tensor_by_id(ag_engine *e, int64_t id) {
    tensor_state **p = bsearch(&id, e->tensors_by_id, e->ntensors_by_id, sizeof *p, tensor_cmp);
    return p ? *p : NULL;
}

static int format_index_by_id(ag_engine *e, int64_t id) {
    for (int i = 0; i < AG_FORMATS_MAX; i++)
        if (e->format_id[i] == id) return i;
    return -1;
}

/* A format the database names: defined here from its stored definition when
 * the daemon does not know it (the database describes itself); one this
 * daemon knows under the same name but defines otherwise (--define-format,
 * or a built-in) is a start-up error, AG_EEXIST with the reason in e->err. */
static int on_format(void *ctx, int64_t id, const char *name, int eb, int mb, int bias, int inf,
                     int nan) {
    ag_engine *e = ctx;
    const ag_format *f = ag_format_get(name);
    if (f && (f->exponent_bits != eb || f->mantissa_bits != mb || f->bias != bias ||
              f->has_inf != (inf != 0) || f->has_nan != (nan != 0))) {
        char have[64];
        ag_config_format_spec(f, have, sizeof have);
        return ag_errctx_set(&e->err, AG_EEXIST,
                             "the database defines format %s as %s=%d,%d,%d%s%s but this daemon "
                             "has %s (--define-format or built in); give the stored definition or "
                             "none",
                             name, name, eb, mb, bias, inf ? ",inf" : "", nan ? ",nan" : "", have);
    }
    if (!f) {
        int err = ag_format_define(name, eb, mb, bias, inf, nan, &f);
        if (err) {
            ag_log(e->log, AG_LOG_WARNING, "restore: format %s cannot be defined (%s); skipped",
                   name, ag_strerror(err));
            return 0;
        }
        ag_log(e->log, AG_LOG_INFO, "restore: format %s=%d,%d,%d%s%s defined from the database",
               name, eb, mb, bias, inf ? ",inf" : "", nan ? ",nan" : "");
    }
    int fi = ag_eng_fmt_index(f);
    if (fi >= 0) e->format_id[fi] = id;
    return 0;
}

static run_state *run_by_id(ag_engine *e, int64_t id) {
    run_state **p = bsearch(&id, e->runs_by_id, e->nruns_by_id, sizeof *p, run_cmp);
    return p ? *p : NULL;
}

/* A run with its name, the name asked for and the launch that made it
 * (rows come in id order, so the newest run made for a name wins). */
static int on_run(void *ctx, int64_t id, const char *name, const char *asked, const char *launch,
                  uint64_t last_step, int64_t ended_ms) {
    ag_engine *e = ctx;
    (void)last_step;
    if (launch && !ag_proto_launch_id_ok(launch, strlen(launch))) launch = NULL; /* not trusted */
    run_state *r = ag_eng_new_run(e, id, name, asked, launch);
    if (!r) return AG_ENOMEM;
    r->ended = ended_ms != 0;
    run_state **p = realloc(e->runs_by_id, (e->nruns_by_id + 1) * sizeof *p);
    if (!p) return AG_ENOMEM;
    e->runs_by_id = p;
    p[e->nruns_by_id++] = r;
    return 0;
}

/* A launch and the run its clients went to asking for a name (a resume of
 * another launch's run, or the run the launch made). */
static int on_launch(void *ctx, const char *launch, const char *asked, int64_t run_id) {
    ag_engine *e = ctx;
    run_state *r = run_by_id(e, run_id);
    if (!r || !ag_proto_launch_id_ok(launch, strlen(launch))) return 0; /* not trusted */
    return ag_eng_note_launch(e, launch, asked, r);
}

/* A client that has not ended, with its sequence state: the last seq, and
 * its cumulative drop count when stored (none from before schema version 3:
 * its next message re-synchronises it), so drops the client counted while
 * the daemon was down are recorded. */
static int on_client(void *ctx, uint64_t client_id, int64_t run_id, uint64_t last_seq,
                     uint64_t last_drop, int has_drop) {
    ag_engine *e = ctx;
    run_state *r = run_by_id(e, run_id);
    if (!r) return 0; /* orphan row: ignore */
    client_state *cs = ag_eng_new_client(e, client_id, r);
    if (!cs) return AG_ENOMEM;
    cs->last_seq = last_seq;
    cs->has_seq = 1;
    cs->last_drop = has_drop ? last_drop : 0;
    cs->drop_known = has_drop != 0;
    return 0;
}

static int on_run_world(void *ctx, int64_t run_id, uint64_t world) {
    ag_engine *e = ctx;
    run_state *r = run_by_id(e, run_id);
    if (r && world >= 1 && world <= AG_WORLD_MAX) r->world = (uint32_t)world;
    return 0;
}

/* A restored client's rank; its world is taken as its run's. */
static int on_client_rank(void *ctx, uint64_t client_id, uint64_t rank) {
    ag_engine *e = ctx;
    char key[17];
    snprintf(key, sizeof key, "%016llx", (unsigned long long)client_id);
    client_state *cs = ag_map_get(&e->clients, key);
    if (!cs) return 0;
    cs->world = cs->run->world;
    cs->rank = rank < cs->world ? (uint32_t)rank : 0;
    return 0;
}

static int on_tensor(void *ctx, int64_t id, int64_t run_id, const char *name, int role) {
    ag_engine *e = ctx;
    run_state *r = run_by_id(e, run_id);
    if (!r) return 0; /* orphan row: ignore */
    tensor_state *t = ag_eng_new_tensor(e, r, id, name, role);
    if (!t) return AG_ENOMEM;
    if (e->ntensors_by_id == e->cap_tensors_by_id) {
        size_t ncap = e->cap_tensors_by_id ? e->cap_tensors_by_id * 2 : 256;
        tensor_state **p = realloc(e->tensors_by_id, ncap * sizeof *p);
        if (!p) return AG_ENOMEM;
        e->tensors_by_id = p;
        e->cap_tensors_by_id = ncap;
    }
    e->tensors_by_id[e->ntensors_by_id++] = t;
    return 0;
}

static int on_history(void *ctx, int64_t tensor_id, int role, const double *amax, size_t n) {
    ag_engine *e = ctx;
    tensor_state *t = tensor_by_id(e, tensor_id);
    if (!t || role < 0 || role >= ROLES) return 0;
    role_state *rs = ag_eng_role_for(e, t, role);
    if (!rs) return AG_ENOMEM;
    for (size_t i = 0; i < n; i++) ag_amax_history_push(rs->history, amax[i]);
    return 0;
}

static int on_scale(void *ctx, int64_t tensor_id, int64_t format_id, int role, uint64_t step,
                    double amax, double scale) {
    ag_engine *e = ctx;
    tensor_state *t = tensor_by_id(e, tensor_id);
    int fi = format_index_by_id(e, format_id);
    if (!t || fi < 0 || role < 0 || role >= ROLES || !(scale > 0)) return 0;
    role_state *rs = ag_eng_role_for(e, t, role);
    if (!rs) return AG_ENOMEM;
    rs->scale[fi] = scale;
    rs->hist_amax[fi] = amax;
    rs->has_scale |= 1ull << fi;
    rs->step = step;
    return 0;
}

/* A format the tensor has results in: kept until its stored baseline (if
 * any) comes (on_snapshot). */
static int on_last_result(void *ctx, int64_t tensor_id, int64_t format_id, uint64_t last_step,
                          int has_scale, double scale) {
    ag_engine *e = ctx;
    tensor_state *t = tensor_by_id(e, tensor_id);
    int fi = format_index_by_id(e, format_id);
    if (!t || fi < 0) return 0;
    restored_result *p = realloc(t->restored, (t->nrestored + 1) * sizeof *p);
    if (!p) return AG_ENOMEM;
    t->restored = p;
    p[t->nrestored++] = (restored_result){
        .fi = fi, .has_scale = has_scale, .last_step = last_step, .scale = (float)scale};
    return 0;
}

/* The tensor's stored baseline: encoded at its own step's result scale in
 * every format whose newest result is of that step, so the first snapshot
 * after the restart counts flips against it. Where a newer result exists
 * the daemon stopped without writing its baseline (kill -9, a crash): that
 * snapshot's flips in the format are unknown, never 0. */
static int on_snapshot(void *ctx, int64_t tensor_id, uint64_t step, const float *w, size_t n) {
    ag_engine *e = ctx;
    tensor_state *t = tensor_by_id(e, tensor_id);
    if (!t) return 0;
    for (size_t i = 0; i < t->nrestored; i++) {
        const restored_result *rr = &t->restored[i];
        int fi = rr->fi;
        float s = rr->scale;
        if (!rr->has_scale || rr->last_step != step || !(s > 0) || !isfinite(s) ||
            (t->prev_n && t->prev_n != n)) {
            t->flips_lost |= 1ull << fi;
            continue;
        }
        const ag_format *fmt = ag_format_at((size_t)fi);
        size_t bytes = enc_bytes(fmt, n);
        uint8_t *cur = malloc(bytes);
        if (!cur) return AG_ENOMEM;
        if (ag_encode_any(fmt, s, w, n, cur)) {
            free(cur);
            t->flips_lost |= 1ull << fi;
            continue;
        }
        if (!t->prev[fi]) {
            t->prev_bytes += bytes;
            e->state_bytes += bytes;
        }
        free(t->prev[fi]);
        t->prev[fi] = cur;
        t->prev_scale[fi] = s;
        t->prev_n = n;
    }
    free(t->restored);
    t->restored = NULL;
    t->nrestored = 0;
    return 0;
}

const char *ag_engine_why(const ag_engine *e) { return ag_errctx_text(&e->err); }

int ag_engine_restore(ag_engine *e, ag_store *st) {
    ag_errctx_clear(&e->err);
    int err = ag_store_max_ids(st, &e->next_run_id, &e->next_tensor_id, &e->next_format_id);
    if (err) return err;
    ag_store_restore_cb cb = {.ctx = e,
                              .format = on_format,
                              .run = on_run,
                              .launch = on_launch,
                              .client = on_client,
                              .tensor = on_tensor,
                              .history = on_history,
                              .scale = on_scale,
                              .snapshot = on_snapshot,
                              .last_result = on_last_result,
                              .run_world = on_run_world,
                              .client_rank = on_client_rank};
    err = ag_store_restore(st, e->history_len, &cb);
    /* A tensor with results but no stored baseline lost it: its first
     * snapshot's flips are unknown in those formats. */
    for (size_t i = 0; i < e->ntensors_by_id; i++) {
        tensor_state *t = e->tensors_by_id[i];
        for (size_t k = 0; k < t->nrestored; k++) t->flips_lost |= 1ull << t->restored[k].fi;
        free(t->restored);
        t->restored = NULL;
        t->nrestored = 0;
    }
    free(e->runs_by_id);
    free(e->tensors_by_id);
    e->runs_by_id = NULL;
    e->tensors_by_id = NULL;
    e->nruns_by_id = e->ntensors_by_id = e->cap_tensors_by_id = 0;
    return err;
}
