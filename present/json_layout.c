/*
 * json_layout.c - how each query result is laid out as a document (json.h),
 * exactly as docs/cli.md lists them. The keys, order and cell kinds of every
 * field the result carries come from its reply table in proto/spec.c (the
 * one description of a result's fields); what is written here is only what
 * a document adds beside the result (status's source and address, the run
 * a list belongs to) and the request's names that stand in where a result
 * has none. The CLI (all three output modes) and the daemon's HTTP API both
 * use these, so `altgrad --json` and `GET /api/...` print the same shapes.
 */
#include "present/json.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/spec.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* One value of a reply field or column at base, as its table shows it. */
static ag_cell field_cell(const ag_field *f, const void *base) {
    const char *p = (const char *)base + f->off;
    switch (f->kind) {
    case K_UINT: {
        uint64_t v = *(const uint64_t *)(const void *)p;
        return f->show == S_UNKNOWN && v == AG_FLIPS_UNKNOWN ? ag_cell_unknown() : ag_cell_u64(v);
    }
    case K_INT: {
        int64_t v = *(const int64_t *)(const void *)p;
        return f->show == S_TIME ? ag_cell_time_ms(v) : ag_cell_i64(v);
    }
    case K_FLOAT: {
        double v = *(const double *)(const void *)p;
        if (f->show == S_NAN && isnan(v)) return ag_cell_unknown();
        return f->show == S_RATE ? ag_cell_rate(v) : ag_cell_f64(v);
    }
    case K_ENUM: {
        int v = *(const int *)(const void *)p;
        const char *name = ag_role_name(v);
        if (f->show != S_ROLE) return ag_cell_i64(v);
        return name ? ag_cell_str(name) : ag_cell_null();
    }
    case K_NAME:
    case K_STR:
    case K_FMT:
    case K_JSON:
    case K_LAUNCH: {
        const char *s = *(const char *const *)(const void *)p;
        return !s && f->show == S_NULLABLE ? ag_cell_null() : ag_cell_str(s);
    }
    default: return ag_cell_null(); /* no reply carries the other kinds */
    }
}

static int is_text(const ag_field *f) {
    return f->kind == K_NAME || f->kind == K_STR || f->kind == K_FMT || f->kind == K_JSON ||
           f->kind == K_LAUNCH;
}

/*
 * Lays out the result root of reply type `type`: first `extra` (fields the
 * document adds beside the result), then the reply's fields in table order
 * (a text field the result left NULL takes the `given` cell of the same
 * key, the request's name), then, for a list, its columns and rows under
 * the list's key.
 */
static int lay_out(ag_doc *d, int type, const void *root, const ag_doc_field *extra, size_t nextra,
                   const ag_doc_field *given, size_t ngiven) {
    const ag_spec *spec = ag_spec_for(type);
    const ag_field *items = NULL;
    size_t i, j;
    int rc = AG_OK;
    d->list_key = NULL;
    for (i = 0; i < nextra && rc == AG_OK; i++) rc = ag_doc_meta(d, extra[i].key, extra[i].value);
    for (i = 0; i < spec->nfields && rc == AG_OK; i++) {
        const ag_field *f = &spec->fields[i];
        ag_cell c;
        if (f->kind == K_ITEMS) {
            items = f;
            continue;
        }
        c = field_cell(f, root);
        if (is_text(f) && !*(const char *const *)(const void *)((const char *)root + f->off))
            for (j = 0; j < ngiven; j++)
                if (strcmp(given[j].key, f->doc) == 0) c = given[j].value;
        rc = ag_doc_meta(d, f->doc, c);
    }
    if (!items || rc != AG_OK) return rc;
    if (spec->ncols > AG_DOC_COLS_MAX) return AG_ENOSPC;
    d->list_key = items->doc;
    for (i = 0; i < spec->ncols && rc == AG_OK; i++) rc = ag_doc_col(d, spec->cols[i].doc);
    {
        const char *base =
            *(const char *const *)(const void *)((const char *)root + spec->items_off);
        size_t n = *(const size_t *)(const void *)((const char *)root + spec->count_off);
        ag_cell row[AG_DOC_COLS_MAX];
        for (i = 0; i < n && rc == AG_OK; i++) {
            for (j = 0; j < spec->ncols; j++)
                row[j] = field_cell(&spec->cols[j], base + i * spec->item_size);
            rc = ag_doc_row(d, row);
        }
    }
    return rc;
}

/* The value of request parameter p in req. */
static const char *param_text(const ag_msg *req, const ag_field *p) {
    return *(const char *const *)(const void *)((const char *)&req->u + p->off);
}

/* 1 when reply table s has a field (not the item list) with document key k. */
static int has_field(const ag_spec *s, const char *k) {
    for (size_t i = 0; i < s->nfields; i++)
        if (s->fields[i].kind != K_ITEMS && strcmp(s->fields[i].doc, k) == 0) return 1;
    return 0;
}

int ag_doc_answer(ag_doc *d, const ag_msg *req, const ag_msg *reply, const char *source,
                  const char *address) {
    const ag_query_def *def = ag_query_by_type(req->type);
    const ag_spec *spec = ag_spec_for(reply->type);
    const void *root = ag_msg_result(reply);
    ag_doc_field extra[AG_DOC_META_MAX], given[AG_DOC_META_MAX];
    size_t nextra = 0, ngiven = 0, n;
    const ag_field *p = ag_query_params(req->type, &n);
    if (!def || !spec || !root || def->r != reply->type) return AG_EINVAL;
    if (def->flags & AG_Q_LIVE) {
        extra[nextra++] = (ag_doc_field){"source", ag_cell_str(source)};
        extra[nextra++] = (ag_doc_field){"address", ag_cell_str(address)};
    }
    /* the names asked for: beside the result where it has no such field,
     * standing in for its own where it has one */
    for (size_t i = 0; i < n && nextra < AG_DOC_META_MAX; i++) {
        if (!p[i].doc || (p[i].kind != K_NAME && p[i].kind != K_FMT)) continue;
        ag_doc_field f = {p[i].doc, ag_cell_str(param_text(req, &p[i]))};
        if (has_field(spec, p[i].doc))
            given[ngiven++] = f;
        else
            extra[nextra++] = f;
    }
    return lay_out(d, reply->type, root, extra, nextra, given, ngiven);
}

int ag_doc_status(ag_doc *d, const ag_status *s, const char *source, const char *address) {
    const ag_doc_field extra[] = {{"source", ag_cell_str(source)},
                                  {"address", ag_cell_str(address)}};
    return lay_out(d, AG_MSG_R_STATUS, s, extra, COUNT(extra), NULL, 0);
}

int ag_doc_runs(ag_doc *d, const ag_run_list *l) {
    return lay_out(d, AG_MSG_R_RUNS, l, NULL, 0, NULL, 0);
}

int ag_doc_tensors(ag_doc *d, const char *run, const ag_tensor_list *l) {
    const ag_doc_field extra[] = {{"run", ag_cell_str(run)}};
    return lay_out(d, AG_MSG_R_TENSORS, l, extra, COUNT(extra), NULL, 0);
}

int ag_doc_history(ag_doc *d, const char *run, const char *tensor, const char *format,
                   const ag_history *h) {
    const ag_doc_field given[] = {{"run", ag_cell_str(run)},
                                  {"tensor", ag_cell_str(tensor)},
                                  {"format", ag_cell_str(format)}};
    return lay_out(d, AG_MSG_R_HISTORY, h, NULL, 0, given, COUNT(given));
}

int ag_doc_scales(ag_doc *d, const char *run, const char *format, const ag_scale_list *l) {
    const ag_doc_field extra[] = {{"run", ag_cell_str(run)}};
    const ag_doc_field given[] = {{"format", ag_cell_str(format)}};
    return lay_out(d, AG_MSG_R_SCALES, l, extra, COUNT(extra), given, COUNT(given));
}

int ag_doc_top(ag_doc *d, const char *run, const char *format, const ag_top_list *l) {
    const ag_doc_field extra[] = {{"run", ag_cell_str(run)}};
    const ag_doc_field given[] = {{"format", ag_cell_str(format)}};
    return lay_out(d, AG_MSG_R_TOP, l, extra, COUNT(extra), given, COUNT(given));
}
