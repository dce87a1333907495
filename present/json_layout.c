/*
 * json_layout.c - how each query result is laid out as a document (json.h):
 * its keys, columns and cell kinds, exactly as docs/cli.md lists them. The
 * CLI (all three output modes) and the daemon's HTTP API both use these, so
 * `altgrad --json` and `GET /api/...` print the same shapes.
 */
#include "present/json.h"

#include <stddef.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* The record part of a document: its key/value fields, in order. */
static int add_fields(ag_doc *d, const ag_doc_field *fields, size_t n) {
    size_t i;
    int rc = AG_OK;
    for (i = 0; i < n && rc == AG_OK; i++) rc = ag_doc_meta(d, fields[i].key, fields[i].value);
    return rc;
}

/* The start of every list document: its list key, fields and columns. */
static int begin_list(ag_doc *d, const char *list_key, const ag_doc_field *fields, size_t nfields,
                      const char *const *cols) {
    int rc = add_fields(d, fields, nfields);
    d->list_key = list_key;
    return rc == AG_OK ? ag_doc_cols(d, cols) : rc;
}

int ag_doc_status(ag_doc *d, const ag_status *s, const char *source, const char *address) {
    const ag_doc_field fields[] = {
        {"source", ag_cell_str(source)},
        {"address", ag_cell_str(address)},
        /* NULL: a database file no altgradd of schema version 4+ recorded */
        {"version", s->version ? ag_cell_str(s->version) : ag_cell_null()},
        {"uptime_s", ag_cell_f64(s->uptime_s)},
        {"messages", ag_cell_u64(s->messages)},
        {"bytes", ag_cell_u64(s->bytes)},
        {"rejected", ag_cell_u64(s->rejected)},
        {"dropped", ag_cell_u64(s->dropped)},
        {"queue_depth", ag_cell_u64(s->queue_depth)},
        {"rows_written", ag_cell_u64(s->rows_written)},
        {"runs", ag_cell_u64(s->runs)},
        {"tensors", ag_cell_u64(s->tensors)},
        {"db_path", ag_cell_str(s->db_path)},
        {"formats", ag_cell_str(s->formats)},
        /* NULL: read from a file, where the daemon's live health is unknown */
        {"store", s->store ? ag_cell_str(s->store) : ag_cell_null()},
        {"discarded", ag_cell_u64(s->discarded)},
    };
    d->list_key = NULL;
    return add_fields(d, fields, COUNT(fields));
}

int ag_doc_runs(ag_doc *d, const ag_run_list *l) {
    static const char *const cols[] = {"name",       "host",     "pid",       "client_id",
                                       "started_ms", "ended_ms", "last_step", "messages",
                                       "dropped",    "metadata", NULL};
    size_t i;
    int rc = begin_list(d, "runs", NULL, 0, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_run_info *r = &l->items[i];
        const ag_cell row[] = {
            ag_cell_str(r->name),      ag_cell_str(r->host),           ag_cell_i64(r->pid),
            ag_cell_u64(r->client_id), ag_cell_time_ms(r->started_ms), ag_cell_time_ms(r->ended_ms),
            ag_cell_u64(r->last_step), ag_cell_u64(r->messages),       ag_cell_u64(r->dropped),
            ag_cell_str(r->metadata),
        };
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_tensors(ag_doc *d, const char *run, const ag_tensor_list *l) {
    static const char *const cols[] = {"name",      "role",      "numel",     "first_step",
                                       "last_step", "snapshots", "last_amax", NULL};
    const ag_doc_field fields[] = {{"run", ag_cell_str(run)}};
    size_t i;
    int rc = begin_list(d, "tensors", fields, COUNT(fields), cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_tensor_info *t = &l->items[i];
        const char *role = ag_role_name(t->role);
        const ag_cell row[] = {
            ag_cell_str(t->name),      role ? ag_cell_str(role) : ag_cell_null(),
            ag_cell_u64(t->numel),     ag_cell_u64(t->first_step),
            ag_cell_u64(t->last_step), ag_cell_u64(t->snapshots),
            ag_cell_f64(t->last_amax),
        };
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_history(ag_doc *d, const char *run, const char *tensor, const char *format,
                   const ag_history *h) {
    static const char *const cols[] = {"step",  "stalled",  "total",     "stall_rate",
                                       "flips", "overflow", "underflow", "nonfinite",
                                       "amax",  "scale",    NULL};
    const ag_doc_field fields[] = {
        {"run", ag_cell_str(h->run ? h->run : run)},
        {"tensor", ag_cell_str(h->tensor ? h->tensor : tensor)},
        {"format", ag_cell_str(h->format ? h->format : format)},
    };
    size_t i;
    int rc = begin_list(d, "points", fields, COUNT(fields), cols);
    for (i = 0; rc == AG_OK && i < h->n; i++) {
        const ag_history_point *p = &h->points[i];
        const ag_cell row[] = {
            ag_cell_u64(p->step),        ag_cell_u64(p->stalled),   ag_cell_u64(p->total),
            ag_cell_rate(p->stall_rate), ag_cell_u64(p->flips),     ag_cell_u64(p->overflow),
            ag_cell_u64(p->underflow),   ag_cell_u64(p->nonfinite), ag_cell_f64(p->amax),
            ag_cell_f64(p->scale),
        };
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_scales(ag_doc *d, const char *run, const char *format, const ag_scale_list *l) {
    static const char *const cols[] = {"tensor", "step", "amax", "scale", NULL};
    const ag_doc_field fields[] = {
        {"run", ag_cell_str(run)},
        {"format", ag_cell_str(l->format ? l->format : format)},
    };
    size_t i;
    int rc = begin_list(d, "scales", fields, COUNT(fields), cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_scale_info *s = &l->items[i];
        const ag_cell row[] = {ag_cell_str(s->tensor), ag_cell_u64(s->step), ag_cell_f64(s->amax),
                               ag_cell_f64(s->scale)};
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_top(ag_doc *d, const char *run, const char *format, const ag_top_list *l) {
    static const char *const cols[] = {"tensor", "stall_rate", "stalled", "total", "steps", NULL};
    const ag_doc_field fields[] = {
        {"run", ag_cell_str(run)},
        {"format", ag_cell_str(l->format ? l->format : format)},
        {"from_step", ag_cell_u64(l->from_step)},
        {"to_step", ag_cell_u64(l->to_step)},
    };
    size_t i;
    int rc = begin_list(d, "tensors", fields, COUNT(fields), cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_top_entry *t = &l->items[i];
        const ag_cell row[] = {ag_cell_str(t->tensor), ag_cell_rate(t->stall_rate),
                               ag_cell_u64(t->stalled), ag_cell_u64(t->total),
                               ag_cell_u64(t->steps)};
        rc = ag_doc_row(d, row);
    }
    return rc;
}
