/*
 * counts.c - counts messages in the engine: stall counts a trainer computed
 * on its own device (PROTOCOL.md 3.5), filed like the results of a snapshot
 * with an explicit scale. Each tensor's weight amax history observes the
 * message's amax as a snapshot's would; the scales stored are the message's.
 * Small (no tensor data), so handled on the loop.
 */
#include <math.h>
#include <stdlib.h>

#include "daemon/engine_internal.h"

/* The encoded copies a snapshot left for flips compare with the snapshot
 * before these counts, not the step the counts are: drop them (the next
 * snapshot starts flips afresh) and free their memory. */
static void forget_encoded(ag_engine *e, tensor_state *t) {
    for (int i = 0; i < AG_FORMATS_MAX; i++) {
        free(t->prev[i]);
        t->prev[i] = NULL;
    }
    e->state_bytes -= t->prev_bytes;
    t->prev_bytes = 0;
    t->prev_n = 0;
}

/* One tensor of the message: amax observed, scales set, rows queued. */
static int file_item(ag_engine *e, run_state *r, const ag_msg_counts *c, size_t i,
                     const ag_format *const *fmts, const int *fidx) {
    tensor_state *t;
    int err = ag_eng_tensor_for(e, r, c->tensors[i], AG_ROLE_WEIGHT, &t);
    if (err) return err;
    role_state *rs = ag_eng_role_for(e, t, AG_ROLE_WEIGHT);
    if (!rs) return AG_ENOMEM;
    size_t nf = c->nformats;
    int pushable = c->nonfinite[i] < c->numel[i];
    ag_eng_observe(e, rs, c->amax[i], pushable, fmts, fidx, nf, c->step);
    ag_write_item st = {.kind = AG_W_STATS};
    st.u.stats = (ag_store_stats_row){t->id,      AG_ROLE_WEIGHT, c->step,
                                      c->amax[i], c->numel[i],    c->nonfinite[i]};
    if ((err = ag_eng_push(e, &st))) return err;
    for (size_t f = 0; f < nf; f++) {
        size_t k = i * nf + f;
        const uint64_t *n = c->counts + k * AG_COUNTS_PER_RESULT;
        int64_t flips = c->flips ? c->flips[k] : -1;
        rs->scale[fidx[f]] = (double)c->scales[k];
        rs->hist_amax[fidx[f]] = ag_amax_history_get(rs->history);
        ag_write_item it = {.kind = AG_W_RESULT};
        it.u.result = (ag_store_result_row){.tensor_id = t->id,
                                            .format_id = e->format_id[fidx[f]],
                                            .step = c->step,
                                            .counts = {.stalled = n[0],
                                                       .total = n[1],
                                                       .overflow = n[2],
                                                       .underflow = n[3],
                                                       .nonfinite = n[4]},
                                            .flips = flips < 0 ? 0 : (uint64_t)flips,
                                            .flips_unknown = flips < 0,
                                            .source = 1,
                                            .amax = c->amax[i],
                                            .scale = (double)c->scales[k]};
        if ((err = ag_eng_push(e, &it))) return err;
    }
    forget_encoded(e, t);
    ag_eng_touch_tensor(e, t, AG_ROLE_WEIGHT, c->step, c->numel[i], c->amax[i]);
    t->snapshots++;
    return AG_OK;
}

int ag_eng_handle_counts(ag_engine *e, run_state *r, const ag_msg_counts *c) {
    const ag_format *fmts[AG_FORMATS_MAX];
    int fidx[AG_FORMATS_MAX];
    /* The codec checked every bound; what only the daemon knows is checked
     * before anything is filed, so a refused message leaves no trace. */
    if (c->step > INT64_MAX || c->nformats == 0 || c->nformats > AG_FORMATS_MAX) return AG_ERANGE;
    for (size_t f = 0; f < c->nformats; f++) {
        if (!(fmts[f] = ag_format_get(c->formats[f])) || (fidx[f] = ag_eng_fmt_index(fmts[f])) < 0)
            return AG_EFORMAT;
    }
    int err;
    for (size_t f = 0; f < c->nformats; f++) {
        int64_t id;
        if ((err = ag_eng_format_id(e, fmts[f], fidx[f], &id))) return err;
    }
    /* One tensor at a time: a tensor the state budget refuses stops the rest
     * (the message is then recorded as not fully filed). */
    for (size_t i = 0; i < c->n; i++)
        if ((err = file_item(e, r, c, i, fmts, fidx))) return err;
    return AG_OK;
}
