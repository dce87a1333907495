/*
 * counts.c - counts messages in the engine: stall counts a trainer computed
 * on its own device (PROTOCOL.md 3.5), filed like the results of a snapshot
 * with an explicit scale. Each tensor's weight amax history observes the
 * message's amax as a snapshot's would; the scales stored are the message's.
 * In a run of many ranks an item is a shard of its tensor, summed with the
 * other ranks' (shards.c), unless it is marked replicated (filed once).
 * Small (no tensor data), so handled on the loop.
 */
#include <math.h>
#include <stdlib.h>

#include "daemon/engine_internal.h"

/* The encoded copies a snapshot left for flips compare with the snapshot
 * before these counts, not the step the counts are: drop them (the next
 * snapshot starts flips afresh) and free their memory. */
void ag_eng_forget_encoded(ag_engine *e, tensor_state *t) {
    for (int i = 0; i < AG_FORMATS_MAX; i++) {
        free(t->prev[i]);
        t->prev[i] = NULL;
    }
    e->state_bytes -= t->prev_bytes;
    t->prev_bytes = 0;
    t->prev_n = 0;
}

int ag_eng_file_counts(ag_engine *e, run_state *r, const ag_counts_item *c) {
    tensor_state *t;
    int err = ag_eng_tensor_for(e, r, c->tensor, AG_ROLE_WEIGHT, &t);
    if (err) return err;
    role_state *rs = ag_eng_role_for(e, t, AG_ROLE_WEIGHT);
    if (!rs) return AG_ENOMEM;
    int pushable = c->nonfinite < c->numel;
    ag_eng_observe(e, rs, c->amax, pushable, c->fmts, c->fidx, c->nf, c->step);
    ag_write_item st = {.kind = AG_W_STATS};
    st.u.stats = (ag_store_stats_row){t->id,    AG_ROLE_WEIGHT, c->step, c->amax,
                                      c->numel, c->nonfinite,   c->ranks};
    if ((err = ag_eng_push(e, &st))) return err;
    for (size_t f = 0; f < c->nf; f++) {
        const uint64_t *n = c->counts + f * AG_COUNTS_PER_RESULT;
        int64_t flips = c->flips ? c->flips[f] : -1;
        double mse = c->mse ? c->mse[f] : NAN, sqnr = c->sqnr_db ? c->sqnr_db[f] : NAN;
        rs->scale[c->fidx[f]] = (double)c->scales[f];
        rs->hist_amax[c->fidx[f]] = ag_amax_history_get(rs->history);
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = t->id,
                                            .format_id = e->format_id[c->fidx[f]],
                                            .step = c->step,
                                            .counts = {.stalled = n[0],
                                                       .total = n[1],
                                                       .overflow = n[2],
                                                       .underflow = n[3],
                                                       .nonfinite = n[4]},
                                            .flips = flips < 0 ? 0 : (uint64_t)flips,
                                            .flips_unknown = flips < 0,
                                            .source = 1,
                                            .amax = c->amax,
                                            .scale = (double)c->scales[f],
                                            .ranks = c->ranks,
                                            .incomplete = (uint8_t)(c->incomplete != 0),
                                            /* NaN: stored NULL */
                                            .has_qerr = !isnan(mse) || !isnan(sqnr),
                                            .mse = mse,
                                            .sqnr_db = sqnr};
        if ((err = ag_eng_push(e, &it))) return err;
    }
    ag_eng_forget_encoded(e, t);
    ag_eng_touch_tensor(e, t, AG_ROLE_WEIGHT, c->step, c->numel, c->amax);
    t->snapshots++;
    return AG_OK;
}

/* One tensor of the message, whole (a run of one rank, or replicated). */
static int file_item(ag_engine *e, run_state *r, const ag_msg_counts *c, size_t i,
                     const ag_format *const *fmts, const int *fidx) {
    size_t nf = c->nformats, k = i * nf;
    ag_counts_item it = {.tensor = c->tensors[i],
                         .step = c->step,
                         .numel = c->numel[i],
                         .nonfinite = c->nonfinite[i],
                         .amax = c->amax[i],
                         .nf = nf,
                         .fmts = fmts,
                         .fidx = fidx,
                         .scales = c->scales + k,
                         .counts = c->counts + k * AG_COUNTS_PER_RESULT,
                         .flips = c->flips ? c->flips + k : NULL,
                         .mse = c->mse ? c->mse + k : NULL,
                         .sqnr_db = c->sqnr_db ? c->sqnr_db + k : NULL,
                         .ranks = 1};
    return ag_eng_file_counts(e, r, &it);
}

/* A replicated tensor is filed once per step, by whichever rank sends it
 * first: a copy of a step at or below the newest one filed is skipped. */
static int replicated_seen(run_state *r, const char *name, uint64_t step) {
    const tensor_state *t = ag_map_get(&r->tensors, name);
    return t && t->repl_has && step <= t->repl_step;
}

static void replicated_note(run_state *r, const char *name, uint64_t step) {
    tensor_state *t = ag_map_get(&r->tensors, name);
    if (!t) return;
    t->repl_has = 1;
    t->repl_step = step;
}

int ag_eng_handle_counts(ag_engine *e, client_state *cs, const ag_msg_counts *c) {
    run_state *r = cs->run;
    const ag_format *fmts[AG_FORMATS_MAX];
    int fidx[AG_FORMATS_MAX];
    /* The codec checked every bound; what only the daemon knows is checked
     * before anything is filed, so a refused message leaves no trace. */
    if (c->step > INT64_MAX || c->nformats == 0 || c->nformats > AG_FORMATS_MAX) return AG_ERANGE;
    for (size_t f = 0; f < c->nformats; f++) {
        if (!(fmts[f] = ag_format_get(c->formats[f])) || (fidx[f] = ag_eng_fmt_index(fmts[f])) < 0)
            return AG_EFORMAT;
    }
    int sharded = r->world > 1;
    if (sharded && !ag_eng_world_ok(cs)) return AG_EINVAL;
    int err;
    for (size_t f = 0; f < c->nformats; f++) {
        int64_t id;
        if ((err = ag_eng_format_id(e, fmts[f], fidx[f], &id))) return err;
    }
    /* One tensor at a time: a tensor the state budget refuses stops the rest
     * (the message is then recorded as not fully filed); a shard refused
     * (sent twice, or unlike its step's others) is skipped, and so recorded. */
    int refused = AG_OK;
    for (size_t i = 0; i < c->n; i++) {
        int repl = c->replicated && c->replicated[i];
        if (sharded && !repl) {
            err = ag_eng_shard_counts(e, cs, c, i, fmts, fidx);
        } else if (sharded && replicated_seen(r, c->tensors[i], c->step)) {
            continue; /* another rank's copy was filed */
        } else {
            err = file_item(e, r, c, i, fmts, fidx);
            if (!err && sharded) replicated_note(r, c->tensors[i], c->step);
        }
        if (err == AG_EEXIST || err == AG_EPROTO || err == AG_ETIMEDOUT) {
            if (!refused) refused = err;
            continue;
        }
        if (err) return err;
    }
    return refused;
}
