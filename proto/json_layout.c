/*
 * json_layout.c - how each query result is laid out as a document (json.h):
 * its keys, columns and cell kinds, exactly as docs/cli.md lists them. The
 * CLI (all three output modes) and the daemon's HTTP API both use these, so
 * `altgrad --json` and `GET /api/...` print the same shapes.
 */
#include "proto/json.h"

#include <stddef.h>

static int add_cols(ag_doc *d, const char *const *names)
{
    int rc = AG_OK;
    for (; *names != NULL && rc == AG_OK; names++)
        rc = ag_doc_col(d, *names);
    return rc;
}

int ag_doc_status(ag_doc *d, const ag_status *s, const char *source, const char *address)
{
    const ag_doc_field fields[] = {
        {"source", ag_cell_str(source)},
        {"address", ag_cell_str(address)},
        {"version", ag_cell_str(s->version)},
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
    };
    size_t i;
    int rc = AG_OK;
    for (i = 0; i < sizeof fields / sizeof fields[0] && rc == AG_OK; i++)
        rc = ag_doc_meta(d, fields[i].key, fields[i].value);
    return rc;
}

int ag_doc_runs(ag_doc *d, const ag_run_list *l)
{
    static const char *const cols[] = {"name", "host", "pid", "client_id", "started_ms",
                                       "ended_ms", "last_step", "messages", "dropped",
                                       "metadata", NULL};
    size_t i;
    int rc = add_cols(d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_run_info *r = &l->items[i];
        ag_cell row[10];
        row[0] = ag_cell_str(r->name);
        row[1] = ag_cell_str(r->host);
        row[2] = ag_cell_i64(r->pid);
        row[3] = ag_cell_u64(r->client_id);
        row[4] = ag_cell_time_ms(r->started_ms);
        row[5] = ag_cell_time_ms(r->ended_ms);
        row[6] = ag_cell_u64(r->last_step);
        row[7] = ag_cell_u64(r->messages);
        row[8] = ag_cell_u64(r->dropped);
        row[9] = ag_cell_str(r->metadata);
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_tensors(ag_doc *d, const char *run, const ag_tensor_list *l)
{
    static const char *const cols[] = {"name", "role", "numel", "first_step", "last_step",
                                       "snapshots", "last_amax", NULL};
    size_t i;
    int rc = ag_doc_meta(d, "run", ag_cell_str(run));
    if (rc == AG_OK)
        rc = add_cols(d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_tensor_info *t = &l->items[i];
        const char *role = ag_role_name(t->role);
        ag_cell row[7];
        row[0] = ag_cell_str(t->name);
        row[1] = role ? ag_cell_str(role) : ag_cell_null();
        row[2] = ag_cell_u64(t->numel);
        row[3] = ag_cell_u64(t->first_step);
        row[4] = ag_cell_u64(t->last_step);
        row[5] = ag_cell_u64(t->snapshots);
        row[6] = ag_cell_f64(t->last_amax);
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_history(ag_doc *d, const char *run, const char *tensor, const char *format,
                   const ag_history *h)
{
    static const char *const cols[] = {"step", "stalled", "total", "stall_rate", "flips",
                                       "overflow", "underflow", "nonfinite", "amax",
                                       "scale", NULL};
    size_t i;
    int rc;
    if ((rc = ag_doc_meta(d, "run", ag_cell_str(h->run ? h->run : run))) == AG_OK &&
        (rc = ag_doc_meta(d, "tensor", ag_cell_str(h->tensor ? h->tensor : tensor))) ==
            AG_OK &&
        (rc = ag_doc_meta(d, "format", ag_cell_str(h->format ? h->format : format))) == AG_OK)
        rc = add_cols(d, cols);
    for (i = 0; rc == AG_OK && i < h->n; i++) {
        const ag_history_point *p = &h->points[i];
        ag_cell row[10];
        row[0] = ag_cell_u64(p->step);
        row[1] = ag_cell_u64(p->stalled);
        row[2] = ag_cell_u64(p->total);
        row[3] = ag_cell_rate(p->stall_rate);
        row[4] = ag_cell_u64(p->flips);
        row[5] = ag_cell_u64(p->overflow);
        row[6] = ag_cell_u64(p->underflow);
        row[7] = ag_cell_u64(p->nonfinite);
        row[8] = ag_cell_f64(p->amax);
        row[9] = ag_cell_f64(p->scale);
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_scales(ag_doc *d, const char *run, const char *format, const ag_scale_list *l)
{
    static const char *const cols[] = {"tensor", "step", "amax", "scale", NULL};
    size_t i;
    int rc;
    if ((rc = ag_doc_meta(d, "run", ag_cell_str(run))) == AG_OK &&
        (rc = ag_doc_meta(d, "format", ag_cell_str(l->format ? l->format : format))) == AG_OK)
        rc = add_cols(d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_scale_info *s = &l->items[i];
        ag_cell row[4];
        row[0] = ag_cell_str(s->tensor);
        row[1] = ag_cell_u64(s->step);
        row[2] = ag_cell_f64(s->amax);
        row[3] = ag_cell_f64(s->scale);
        rc = ag_doc_row(d, row);
    }
    return rc;
}

int ag_doc_top(ag_doc *d, const char *run, const char *format, const ag_top_list *l)
{
    static const char *const cols[] = {"tensor", "stall_rate", "stalled", "total", "steps",
                                       NULL};
    size_t i;
    int rc;
    if ((rc = ag_doc_meta(d, "run", ag_cell_str(run))) == AG_OK &&
        (rc = ag_doc_meta(d, "format", ag_cell_str(l->format ? l->format : format))) ==
            AG_OK &&
        (rc = ag_doc_meta(d, "from_step", ag_cell_u64(l->from_step))) == AG_OK &&
        (rc = ag_doc_meta(d, "to_step", ag_cell_u64(l->to_step))) == AG_OK)
        rc = add_cols(d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_top_entry *t = &l->items[i];
        ag_cell row[5];
        row[0] = ag_cell_str(t->tensor);
        row[1] = ag_cell_rate(t->stall_rate);
        row[2] = ag_cell_u64(t->stalled);
        row[3] = ag_cell_u64(t->total);
        row[4] = ag_cell_u64(t->steps);
        rc = ag_doc_row(d, row);
    }
    return rc;
}
