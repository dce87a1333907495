/*
 * report.c - `altgrad report RUN`: for every weight tensor of a run and every
 * format, the stall rate over the run (last, mean, max) and a sparkline of it
 * over the steps. Built from the tensors and history queries, so it works the
 * same against the daemon and a database file. `make demo` prints it.
 */
#define _POSIX_C_SOURCE 200809L
#include "commands.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "output.h"

#define MAX_FORMATS AG_FORMATS_MAX

size_t ag_cli_sparkline(const ag_history_point *points, size_t n, size_t width, char *buf,
                        size_t cap) {
    size_t cols, c, len = 0;
    if (buf != NULL && cap > 0) buf[0] = '\0';
    if (points == NULL || n == 0 || width == 0 || buf == NULL) return 0;
    cols = n < width ? n : width;
    if (cap < 3 * cols + 1) return 0;
    for (c = 0; c < cols; c++) {
        size_t lo = c * n / cols, hi = (c + 1) * n / cols, i;
        double stalled = 0, total = 0, rate;
        unsigned level;
        for (i = lo; i < hi; i++) {
            stalled += (double)points[i].stalled;
            total += (double)points[i].total;
        }
        rate = total > 0 ? stalled / total : 0.0;
        if (!(rate >= 0.0)) rate = 0.0;
        if (rate > 1.0) rate = 1.0;
        level = (unsigned)lround(rate * 7.0); /* 0..7 -> U+2581..U+2588 */
        buf[len++] = (char)0xE2;
        buf[len++] = (char)0x96;
        buf[len++] = (char)(0x81 + level);
    }
    buf[len] = '\0';
    return cols;
}

/* Splits a comma-separated list in place into names[]; returns the count. */
static size_t split_formats(char *list, const char **names, size_t max) {
    size_t n = 0;
    char *save = NULL, *tok;
    for (tok = strtok_r(list, ",", &save); tok != NULL && n < max;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (*tok != '\0') names[n++] = tok;
    }
    return n;
}

/* Everything the rows point at lives here until the document is rendered. */
typedef struct report_state {
    ag_history **histories;
    char **sparklines;
    size_t n, cap;
} report_state;

static int keep(report_state *st, ag_history *h, char *spark) {
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 32;
        ag_history **hs = realloc(st->histories, cap * sizeof *hs);
        char **ss;
        if (hs == NULL) return AG_ENOMEM;
        st->histories = hs;
        ss = realloc(st->sparklines, cap * sizeof *ss);
        if (ss == NULL) return AG_ENOMEM;
        st->sparklines = ss;
        st->cap = cap;
    }
    st->histories[st->n] = h;
    st->sparklines[st->n] = spark;
    st->n++;
    return AG_OK;
}

static void release(report_state *st) {
    size_t i;
    for (i = 0; i < st->n; i++) {
        ag_free(st->histories[i]);
        free(st->sparklines[i]);
    }
    free(st->histories);
    free(st->sparklines);
}

/* One row for one tensor in one format; h becomes owned by st on success. */
static int add_row(ag_cli_doc *d, report_state *st, const char *tensor, const char *format,
                   ag_history *h, size_t width) {
    ag_cli_cell row[7];
    double stalled = 0, total = 0, max_rate = 0;
    size_t i, cap = 3 * width + 1;
    char *spark = malloc(cap);
    int rc;

    if (spark == NULL) return AG_ENOMEM;
    ag_cli_sparkline(h->points, h->n, width, spark, cap);
    for (i = 0; i < h->n; i++) {
        stalled += (double)h->points[i].stalled;
        total += (double)h->points[i].total;
        if (h->points[i].stall_rate > max_rate) max_rate = h->points[i].stall_rate;
    }
    rc = keep(st, h, spark);
    if (rc != AG_OK) {
        free(spark);
        return rc;
    }
    row[0] = ag_cli_str(tensor);
    row[1] = ag_cli_str(format);
    row[2] = ag_cli_u64(h->n);
    row[3] = ag_cli_rate(h->points[h->n - 1].stall_rate);
    row[4] = ag_cli_rate(total > 0 ? stalled / total : 0.0);
    row[5] = ag_cli_rate(max_rate);
    row[6] = ag_cli_str(spark);
    return ag_cli_doc_row(d, row);
}

int ag_cli_report(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap) {
    static const char *const cols[] = {"tensor",    "format",   "steps",     "last_rate",
                                       "mean_rate", "max_rate", "sparkline", NULL};
    static const char seed_formats[] = AG_DEFAULT_FORMATS;
    ag_tensor_list *tensors = NULL;
    ag_status *status = NULL;
    report_state st;
    ag_cli_doc d;
    const char *formats[MAX_FORMATS];
    char *list = NULL;
    size_t nfmt, t, f;
    int rc;

    memset(&st, 0, sizeof st);
    ag_cli_doc_init(&d, "rows");
    rc = ag_cli_source_tensors(src, a->run, &tensors);
    if (rc != AG_OK) {
        ag_cli_source_explain(src, rc, err, cap, "run '%s'", a->run);
        goto fail;
    }
    if (a->format == NULL) {
        /* The formats the daemon evaluates (or the file knows), else the seed's. */
        rc = ag_cli_source_status(src, &status);
        if (rc != AG_OK) {
            ag_cli_source_explain(src, rc, err, cap, NULL);
            goto fail;
        }
    }
    list = strdup(a->format                               ? a->format
                  : (status->formats && *status->formats) ? status->formats
                                                          : seed_formats);
    if (list == NULL) {
        rc = AG_ENOMEM;
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    nfmt = split_formats(list, formats, MAX_FORMATS);

    if ((rc = ag_cli_doc_meta(&d, "run", ag_cli_str(a->run))) == AG_OK) rc = ag_doc_cols(&d, cols);
    for (t = 0; rc == AG_OK && t < tensors->n; t++) {
        const ag_tensor_info *ti = &tensors->items[t];
        if (ti->snapshots == 0)
            continue; /* activations and gradients: statistics only, no stall rate */
        for (f = 0; rc == AG_OK && f < nfmt; f++) {
            ag_history_query q;
            ag_history *h = NULL;
            memset(&q, 0, sizeof q);
            q.run = a->run;
            q.tensor = ti->name;
            q.format = formats[f];
            rc = ag_cli_source_history(src, &q, &h);
            if (rc == AG_ENOTFOUND && a->format == NULL) {
                rc = AG_OK; /* a format this tensor was not evaluated in */
                continue;
            }
            if (rc != AG_OK) {
                ag_cli_source_explain(src, rc, err, cap, "run '%s', tensor '%s', format '%s'",
                                      a->run, ti->name, formats[f]);
                goto fail;
            }
            if (h->n == 0) {
                ag_free(h);
                continue;
            }
            rc = add_row(&d, &st, ti->name, formats[f], h, a->width);
            if (rc != AG_OK && (st.n == 0 || st.histories[st.n - 1] != h)) ag_free(h);
        }
    }
    if (rc != AG_OK) {
        snprintf(err, cap, "cannot lay out the report: %s", ag_strerror(rc));
        goto fail;
    }
    rc = ag_cli_render(out, &d, a->mode);
    if (rc != AG_OK) snprintf(err, cap, "cannot write the output");
fail:
    ag_cli_doc_free(&d);
    release(&st);
    free(list);
    ag_free(status);
    ag_free(tensors);
    return rc;
}
