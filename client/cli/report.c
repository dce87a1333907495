/*
 * report.c - `altgrad report RUN`: for every weight tensor of a run and every
 * format, the stall rate over the run (last, mean, max) and a sparkline of it
 * over the steps. Built from the tensors, top and history queries, so it works
 * the same against the daemon and a database file. `make demo` prints it.
 * A series longer than the sparkline is asked for downsampled (history
 * --every K, K a multiple of 10 past 10), which the store answers from its
 * rollups: steps and the mean come exact from a whole-run top, the last rate
 * from a top over the run's last step; max_rate is then the largest of the
 * K-point buckets.
 */
#define _POSIX_C_SOURCE 200809L
#include "commands.h"

#include <math.h>
#include <pthread.h>
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

static int by_tensor(const void *a, const void *b) {
    return strcmp(((const ag_top_entry *)a)->tensor, ((const ag_top_entry *)b)->tensor);
}

/* The entry of tensor in l, sorted by name (sort_by_tensor). */
static const ag_top_entry *find_entry(const ag_top_list *l, const char *tensor) {
    ag_top_entry key;
    if (l == NULL || l->n == 0) return NULL;
    memset(&key, 0, sizeof key);
    key.tensor = tensor;
    return bsearch(&key, l->items, l->n, sizeof *l->items, by_tensor);
}

static void sort_by_tensor(ag_top_list *l) {
    if (l != NULL && l->n > 1) qsort(l->items, l->n, sizeof *l->items, by_tensor);
}

/* Points asked for so a series of n fits width columns: 1 while it fits,
 * else n/width rounded up to a multiple of 10, 100 or 1000 (the store's
 * rollup tiers), the largest not above it, so a dense series is read as
 * whole rollup buckets. */
static uint64_t every_for(uint64_t n, size_t width) {
    uint64_t k, tier;
    if (width == 0 || n <= width) return 1;
    k = (n + width - 1) / width;
    for (tier = 1000; tier >= 10; tier /= 10)
        if (k >= tier) return (k + tier - 1) / tier * tier;
    return k;
}

/* One row for one tensor in one format; h becomes owned by st on success.
 * steps and last_rate: the series' point count and its last point's rate. */
static int add_row(ag_cli_doc *d, report_state *st, const char *tensor, const char *format,
                   ag_history *h, size_t width, uint64_t steps, double last_rate,
                   double last_sqnr) {
    ag_cli_cell row[8];
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
    row[2] = ag_cli_u64(steps);
    row[3] = ag_cli_rate(last_rate);
    row[4] = ag_cli_rate(total > 0 ? stalled / total : 0.0);
    row[5] = ag_cli_rate(max_rate);
    /* the last snapshot's SQNR (dB): null where unknown (docs/numerics.md) */
    row[6] = isfinite(last_sqnr) ? ag_cli_f64(round(last_sqnr * 100) / 100) : ag_cli_null();
    row[7] = ag_cli_str(spark);
    return ag_cli_doc_row(d, row);
}

/* The downsampled history of every row, asked for up front. Against the
 * daemon FETCHERS threads ask at once (its query threads answer them side
 * by side, and a round trip is mostly waiting); from a file, one by one
 * (one store connection). */
#define FETCHERS 3

typedef struct fetch_job {
    ag_history_query q;
    ag_history *h;
    int rc;
} fetch_job;

typedef struct fetch_pool {
    ag_cli_source *src;
    fetch_job *jobs;
    size_t n, next;
    pthread_mutex_t mu;
} fetch_pool;

static void *fetch_worker(void *arg) {
    fetch_pool *p = arg;
    for (;;) {
        size_t i;
        pthread_mutex_lock(&p->mu);
        i = p->next++;
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n) return NULL;
        p->jobs[i].rc = ag_cli_source_history(p->src, &p->jobs[i].q, &p->jobs[i].h);
    }
}

static void fetch_all(ag_cli_source *src, fetch_job *jobs, size_t n) {
    fetch_pool p;
    pthread_t th[FETCHERS];
    size_t started = 0, i;
    memset(&p, 0, sizeof p);
    p.src = src;
    p.jobs = jobs;
    p.n = n;
    pthread_mutex_init(&p.mu, NULL);
    if (src->client != NULL)
        for (i = 0; i < FETCHERS && i < n; i++)
            if (pthread_create(&th[started], NULL, fetch_worker, &p) == 0) started++;
    fetch_worker(&p); /* this thread too; alone when there are no others */
    for (i = 0; i < started; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&p.mu);
}

/* The last point of one series, asked for alone (from its last step): its
 * rate and its quantization SQNR (downsampled points carry none). */
static int last_point(ag_cli_source *src, ag_history_query q, uint64_t step, double *rate,
                      double *sqnr) {
    ag_history *one = NULL;
    int rc;
    q.every = 1;
    q.from_step = q.to_step = step;
    rc = ag_cli_source_history(src, &q, &one);
    if (rc == AG_OK && one->n > 0) {
        *rate = one->points[one->n - 1].stall_rate;
        *sqnr = one->points[one->n - 1].sqnr_db;
    }
    ag_free(one);
    return rc;
}

int ag_cli_report(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap) {
    static const char *const cols[] = {"tensor",       "format",    "steps",
                                       "last_rate",    "mean_rate", "max_rate",
                                       "last_sqnr_db", "sparkline", NULL};
    static const char seed_formats[] = AG_DEFAULT_FORMATS;
    ag_tensor_list *tensors = NULL;
    ag_status *status = NULL;
    ag_top_list *whole[MAX_FORMATS] = {NULL}, *final[MAX_FORMATS] = {NULL};
    fetch_job *jobs = NULL;
    size_t njobs = 0, k;
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
    /* Per format, every tensor's sums over the run and over its last step. */
    for (f = 0; rc == AG_OK && f < nfmt; f++) {
        rc = ag_cli_source_top(src, a->run, formats[f], 0, AG_TOP_LIMIT_MAX, &whole[f]);
        if (rc == AG_OK)
            rc = ag_cli_source_top(src, a->run, formats[f], 1, AG_TOP_LIMIT_MAX, &final[f]);
        if (rc == AG_OK) {
            sort_by_tensor(whole[f]);
            sort_by_tensor(final[f]);
        }
        if (rc == AG_ENOTFOUND && a->format == NULL) {
            rc = AG_OK; /* a format the file does not know: no rows in it */
            continue;
        }
        if (rc != AG_OK) {
            ag_cli_source_explain(src, rc, err, cap, "run '%s', format '%s'", a->run, formats[f]);
            goto fail;
        }
    }

    /* Every (tensor, format) row with results, its history asked for first. */
    jobs = calloc(tensors->n * (nfmt ? nfmt : 1) + 1, sizeof *jobs);
    if (jobs == NULL) {
        rc = AG_ENOMEM;
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    for (t = 0; t < tensors->n; t++) {
        const ag_tensor_info *ti = &tensors->items[t];
        if (ti->snapshots == 0)
            continue; /* activations and gradients: statistics only, no stall rate */
        for (f = 0; f < nfmt; f++) {
            const ag_top_entry *all = find_entry(whole[f], ti->name);
            fetch_job *j = &jobs[njobs];
            if (all == NULL) continue; /* no rows in this format */
            j->q.run = a->run;
            j->q.tensor = ti->name;
            j->q.format = formats[f];
            j->q.every = every_for(all->steps, a->width);
            njobs++;
        }
    }
    fetch_all(src, jobs, njobs);

    if ((rc = ag_cli_doc_meta(&d, "run", ag_cli_str(a->run))) == AG_OK) rc = ag_doc_cols(&d, cols);
    for (k = 0; rc == AG_OK && k < njobs; k++) {
        fetch_job *j = &jobs[k];
        ag_history *h = j->h;
        const ag_top_entry *all = NULL, *last = NULL;
        double last_rate = 0, last_sqnr = NAN, rate_again = 0;
        for (f = 0; f < nfmt; f++)
            if (formats[f] == j->q.format) {
                all = find_entry(whole[f], j->q.tensor);
                last = find_entry(final[f], j->q.tensor);
            }
        j->h = NULL;
        rc = j->rc;
        if (rc == AG_ENOTFOUND && a->format == NULL) {
            rc = AG_OK; /* a format this tensor was not evaluated in */
            continue;
        }
        if (rc != AG_OK) {
            /* Asked again here, so the explanation is this thread's. */
            ag_free(h);
            h = NULL;
            rc = ag_cli_source_history(src, &j->q, &h);
            if (rc == AG_OK) rc = AG_EIO; /* answered now: the first failure stands */
            ag_cli_source_explain(src, rc, err, cap, "run '%s', tensor '%s', format '%s'", a->run,
                                  j->q.tensor, j->q.format);
            ag_free(h);
            goto fail;
        }
        if (h->n == 0) {
            ag_free(h);
            continue;
        }
        last_rate = h->points[h->n - 1].stall_rate;
        last_sqnr = h->points[h->n - 1].sqnr_db;
        if (j->q.every > 1 && (rc = last_point(src, j->q, h->points[h->n - 1].step, &rate_again,
                                               &last_sqnr)) != AG_OK) {
            ag_cli_source_explain(src, rc, err, cap, "run '%s', tensor '%s', format '%s'", a->run,
                                  j->q.tensor, j->q.format);
            ag_free(h);
            goto fail;
        }
        if (j->q.every > 1) last_rate = rate_again;
        if (last != NULL) last_rate = last->stall_rate;
        rc = add_row(&d, &st, j->q.tensor, j->q.format, h, a->width, all->steps, last_rate,
                     last_sqnr);
        if (rc != AG_OK && (st.n == 0 || st.histories[st.n - 1] != h)) ag_free(h);
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
    for (k = 0; jobs != NULL && k < njobs; k++) ag_free(jobs[k].h);
    free(jobs);
    for (f = 0; f < MAX_FORMATS; f++) {
        ag_free(whole[f]);
        ag_free(final[f]);
    }
    free(list);
    ag_free(status);
    ag_free(tensors);
    return rc;
}
