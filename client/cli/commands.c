/*
 * commands.c - the altgrad CLI's query commands: status, runs, tensors,
 * history, scales, top. Each asks its source for one altgrad.h result, lays
 * it out as an ag_cli_doc (the same keys in JSON, CSV and the table) and
 * renders it in the mode asked for.
 */
#define _POSIX_C_SOURCE 200809L
#include "commands.h"

#include <stdio.h>
#include <string.h>

#include "output.h"

#define DEFAULT_FORMAT "E5M2"

static int add_cols(ag_cli_doc *d, const char *const *names)
{
    int rc = AG_OK;
    for (; *names != NULL && rc == AG_OK; names++)
        rc = ag_cli_doc_col(d, *names);
    return rc;
}

/* Common tail: render the document, or say why building it failed. */
static int finish(ag_cli_doc *d, int rc, const ag_cli_args *a, FILE *out, char *err,
                  size_t cap)
{
    if (rc == AG_OK) {
        rc = ag_cli_render(out, d, a->mode);
        if (rc != AG_OK)
            snprintf(err, cap, "cannot write the output");
    } else {
        snprintf(err, cap, "cannot lay out the result: %s", ag_strerror(rc));
    }
    return rc;
}

static int cmd_status(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                      size_t cap)
{
    ag_status *s = NULL;
    ag_cli_doc d;
    int rc;

    ag_cli_doc_init(&d, NULL);
    rc = ag_cli_source_status(src, &s);
    if (rc != AG_OK) {
        ag_cli_source_explain(src, rc, NULL, err, cap);
        goto fail;
    }
    {
        const ag_cli_field fields[] = {
            {"source", ag_cli_str(src->store ? "database" : "daemon")},
            {"address", ag_cli_str(src->where)},
            {"version", ag_cli_str(s->version)},
            {"uptime_s", ag_cli_f64(s->uptime_s)},
            {"messages", ag_cli_u64(s->messages)},
            {"bytes", ag_cli_u64(s->bytes)},
            {"rejected", ag_cli_u64(s->rejected)},
            {"dropped", ag_cli_u64(s->dropped)},
            {"queue_depth", ag_cli_u64(s->queue_depth)},
            {"rows_written", ag_cli_u64(s->rows_written)},
            {"runs", ag_cli_u64(s->runs)},
            {"tensors", ag_cli_u64(s->tensors)},
            {"db_path", ag_cli_str(s->db_path)},
            {"formats", ag_cli_str(s->formats)},
        };
        size_t i;
        for (i = 0; i < sizeof fields / sizeof fields[0] && rc == AG_OK; i++)
            rc = ag_cli_doc_meta(&d, fields[i].key, fields[i].value);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(s);
    return rc;
}

static int cmd_runs(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                    size_t cap)
{
    static const char *const cols[] = {"name", "host", "pid", "client_id", "started_ms",
                                       "ended_ms", "last_step", "messages", "dropped",
                                       "metadata", NULL};
    ag_run_list *l = NULL;
    ag_cli_doc d;
    size_t i;
    int rc;

    ag_cli_doc_init(&d, "runs");
    rc = ag_cli_source_runs(src, &l);
    if (rc != AG_OK) {
        ag_cli_source_explain(src, rc, NULL, err, cap);
        goto fail;
    }
    rc = add_cols(&d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_run_info *r = &l->items[i];
        ag_cli_cell row[10];
        row[0] = ag_cli_str(r->name);
        row[1] = ag_cli_str(r->host);
        row[2] = ag_cli_i64(r->pid);
        row[3] = ag_cli_u64(r->client_id);
        row[4] = ag_cli_time_ms(r->started_ms);
        row[5] = ag_cli_time_ms(r->ended_ms);
        row[6] = ag_cli_u64(r->last_step);
        row[7] = ag_cli_u64(r->messages);
        row[8] = ag_cli_u64(r->dropped);
        row[9] = ag_cli_str(r->metadata);
        rc = ag_cli_doc_row(&d, row);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(l);
    return rc;
}

static int cmd_tensors(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                       size_t cap)
{
    static const char *const cols[] = {"name", "role", "numel", "first_step", "last_step",
                                       "snapshots", "last_amax", NULL};
    ag_tensor_list *l = NULL;
    ag_cli_doc d;
    char what[AG_NAME_MAX + 16];
    size_t i;
    int rc;

    ag_cli_doc_init(&d, "tensors");
    rc = ag_cli_source_tensors(src, a->run, &l);
    if (rc != AG_OK) {
        snprintf(what, sizeof what, "run '%s'", a->run);
        ag_cli_source_explain(src, rc, what, err, cap);
        goto fail;
    }
    rc = ag_cli_doc_meta(&d, "run", ag_cli_str(a->run));
    if (rc == AG_OK)
        rc = add_cols(&d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_tensor_info *t = &l->items[i];
        const char *role = ag_role_name(t->role);
        ag_cli_cell row[7];
        row[0] = ag_cli_str(t->name);
        row[1] = role ? ag_cli_str(role) : ag_cli_null();
        row[2] = ag_cli_u64(t->numel);
        row[3] = ag_cli_u64(t->first_step);
        row[4] = ag_cli_u64(t->last_step);
        row[5] = ag_cli_u64(t->snapshots);
        row[6] = ag_cli_f64(t->last_amax);
        rc = ag_cli_doc_row(&d, row);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(l);
    return rc;
}

static int cmd_history(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                       size_t cap)
{
    static const char *const cols[] = {"step", "stalled", "total", "stall_rate", "flips",
                                       "overflow", "underflow", "nonfinite", "amax",
                                       "scale", NULL};
    ag_history_query q;
    ag_history *h = NULL;
    ag_cli_doc d;
    char what[2 * AG_NAME_MAX + 64];
    size_t i;
    int rc;

    memset(&q, 0, sizeof q);
    q.run = a->run;
    q.tensor = a->tensor;
    q.format = a->format ? a->format : DEFAULT_FORMAT;
    q.from_step = a->from_step;
    q.to_step = a->to_step;
    q.every = a->every;
    ag_cli_doc_init(&d, "points");
    rc = ag_cli_source_history(src, &q, &h);
    if (rc != AG_OK) {
        snprintf(what, sizeof what, "run '%s', tensor '%s', format '%s'", q.run, q.tensor,
                 q.format);
        ag_cli_source_explain(src, rc, what, err, cap);
        goto fail;
    }
    if ((rc = ag_cli_doc_meta(&d, "run", ag_cli_str(h->run ? h->run : a->run))) == AG_OK &&
        (rc = ag_cli_doc_meta(&d, "tensor", ag_cli_str(h->tensor ? h->tensor : a->tensor))) ==
            AG_OK &&
        (rc = ag_cli_doc_meta(&d, "format", ag_cli_str(h->format ? h->format : q.format))) ==
            AG_OK)
        rc = add_cols(&d, cols);
    for (i = 0; rc == AG_OK && i < h->n; i++) {
        const ag_history_point *p = &h->points[i];
        ag_cli_cell row[10];
        row[0] = ag_cli_u64(p->step);
        row[1] = ag_cli_u64(p->stalled);
        row[2] = ag_cli_u64(p->total);
        row[3] = ag_cli_rate(p->stall_rate);
        row[4] = ag_cli_u64(p->flips);
        row[5] = ag_cli_u64(p->overflow);
        row[6] = ag_cli_u64(p->underflow);
        row[7] = ag_cli_u64(p->nonfinite);
        row[8] = ag_cli_f64(p->amax);
        row[9] = ag_cli_f64(p->scale);
        rc = ag_cli_doc_row(&d, row);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(h);
    return rc;
}

static int cmd_scales(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                      size_t cap)
{
    static const char *const cols[] = {"tensor", "step", "amax", "scale", NULL};
    const char *format = a->format ? a->format : DEFAULT_FORMAT;
    ag_scale_list *l = NULL;
    ag_cli_doc d;
    char what[AG_NAME_MAX + 64];
    size_t i;
    int rc;

    ag_cli_doc_init(&d, "scales");
    rc = ag_cli_source_scales(src, a->run, format, &l);
    if (rc != AG_OK) {
        snprintf(what, sizeof what, "run '%s', format '%s'", a->run, format);
        ag_cli_source_explain(src, rc, what, err, cap);
        goto fail;
    }
    if ((rc = ag_cli_doc_meta(&d, "run", ag_cli_str(a->run))) == AG_OK &&
        (rc = ag_cli_doc_meta(&d, "format", ag_cli_str(l->format ? l->format : format))) ==
            AG_OK)
        rc = add_cols(&d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_scale_info *s = &l->items[i];
        ag_cli_cell row[4];
        row[0] = ag_cli_str(s->tensor);
        row[1] = ag_cli_u64(s->step);
        row[2] = ag_cli_f64(s->amax);
        row[3] = ag_cli_f64(s->scale);
        rc = ag_cli_doc_row(&d, row);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(l);
    return rc;
}

static int cmd_top(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                   size_t cap)
{
    static const char *const cols[] = {"tensor", "stall_rate", "stalled", "total", "steps",
                                       NULL};
    const char *format = a->format ? a->format : DEFAULT_FORMAT;
    ag_top_list *l = NULL;
    ag_cli_doc d;
    char what[AG_NAME_MAX + 64];
    size_t i;
    int rc;

    ag_cli_doc_init(&d, "tensors");
    rc = ag_cli_source_top(src, a->run, format, a->window, a->limit, &l);
    if (rc != AG_OK) {
        snprintf(what, sizeof what, "run '%s', format '%s'", a->run, format);
        ag_cli_source_explain(src, rc, what, err, cap);
        goto fail;
    }
    if ((rc = ag_cli_doc_meta(&d, "run", ag_cli_str(a->run))) == AG_OK &&
        (rc = ag_cli_doc_meta(&d, "format", ag_cli_str(l->format ? l->format : format))) ==
            AG_OK &&
        (rc = ag_cli_doc_meta(&d, "from_step", ag_cli_u64(l->from_step))) == AG_OK &&
        (rc = ag_cli_doc_meta(&d, "to_step", ag_cli_u64(l->to_step))) == AG_OK)
        rc = add_cols(&d, cols);
    for (i = 0; rc == AG_OK && i < l->n; i++) {
        const ag_top_entry *t = &l->items[i];
        ag_cli_cell row[5];
        row[0] = ag_cli_str(t->tensor);
        row[1] = ag_cli_rate(t->stall_rate);
        row[2] = ag_cli_u64(t->stalled);
        row[3] = ag_cli_u64(t->total);
        row[4] = ag_cli_u64(t->steps);
        rc = ag_cli_doc_row(&d, row);
    }
    rc = finish(&d, rc, a, out, err, cap);
fail:
    ag_cli_doc_free(&d);
    ag_free(l);
    return rc;
}

int ag_cli_execute(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err,
                   size_t cap)
{
    switch (a->cmd) {
    case AG_CMD_STATUS: return cmd_status(src, a, out, err, cap);
    case AG_CMD_RUNS: return cmd_runs(src, a, out, err, cap);
    case AG_CMD_TENSORS: return cmd_tensors(src, a, out, err, cap);
    case AG_CMD_HISTORY: return cmd_history(src, a, out, err, cap);
    case AG_CMD_SCALES: return cmd_scales(src, a, out, err, cap);
    case AG_CMD_TOP: return cmd_top(src, a, out, err, cap);
    case AG_CMD_REPORT: return ag_cli_report(src, a, out, err, cap);
    default:
        snprintf(err, cap, "no command");
        return AG_EINVAL;
    }
}
