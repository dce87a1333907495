/*
 * http_api.c - routes and answers of altgradd's web server (http_api.h):
 * GET / (the page), /api/{status,runs,tensors,history,scales,top} with the
 * CLI's JSON documents and parameter rules, /api/heatmap (tensors x step
 * buckets of stall rate, from the rollups), and /metrics in the Prometheus
 * text format 0.0.4. Called on a libuv pool thread; SQLite is read here.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "present/json.h"

#define DEFAULT_FORMAT AG_DEFAULT_FORMAT
#define TOP_LIMIT_MAX AG_TOP_LIMIT_MAX /* as the query server clamps it */

static const char JSON_TYPE[] = "application/json";
static const char METRICS_TYPE[] = "text/plain; version=0.0.4; charset=utf-8";

const char *ag_http_reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

void ag_http_response_clear(ag_http_response *res) {
    if (res->owned) free(res->body);
    memset(res, 0, sizeof *res);
}

/* A memory stream for a body; the caller checks ferror/fclose. */
typedef struct body {
    FILE *f;
    char *data;
    size_t len;
} body;

static int body_open(body *b) {
    b->data = NULL;
    b->len = 0;
    b->f = open_memstream(&b->data, &b->len);
    return b->f ? AG_OK : AG_ENOMEM;
}

/* Close the stream and hand its bytes to res; 500 when writing failed. */
static void body_finish(body *b, ag_http_response *res, int status, const char *type) {
    int bad = ferror(b->f) != 0;
    if (fclose(b->f) != 0 || bad) {
        free(b->data);
        ag_http_error(res, 500, "out of memory");
        return;
    }
    ag_http_response_clear(res);
    res->status = status;
    res->content_type = type;
    res->body = b->data;
    res->len = b->len;
    res->owned = 1;
}

void ag_http_error(ag_http_response *res, int status, const char *text) {
    static char oom[] = "{\"error\":\"out of memory\"}\n";
    body b;
    ag_http_response_clear(res);
    res->status = status;
    res->content_type = JSON_TYPE;
    if (body_open(&b) == AG_OK) {
        fputs("{\"error\":", b.f);
        ag_json_string(b.f, text);
        fputs("}\n", b.f);
        int bad = ferror(b.f) != 0;
        if (fclose(b.f) == 0 && !bad) {
            res->body = b.data;
            res->len = b.len;
            res->owned = 1;
            return;
        }
        free(b.data);
    }
    res->body = oom;
    res->len = sizeof oom - 1;
    res->owned = 0;
}

/* Render a laid-out document as the response. */
static void send_doc(ag_http_response *res, const ag_doc *d) {
    body b;
    if (body_open(&b)) {
        ag_http_error(res, 500, "out of memory");
        return;
    }
    ag_json_write_doc(b.f, d);
    body_finish(&b, res, 200, JSON_TYPE);
}

/* A store failure as a response: unknown names are 404, the rest 500. */
static void store_error(ag_http_response *res, ag_store *st, int rc) {
    ag_http_error(res, rc == AG_ENOTFOUND ? 404 : 500,
                  rc == AG_ENOTFOUND || rc == AG_ESTORE ? ag_store_errmsg(st) : ag_strerror(rc));
}

/* ------------------------------------------------------------- parameters */

typedef struct params {
    ag_http_params p;
    const char *run, *tensor, *format;
    uint64_t from, to, every, window, limit, buckets;
} params;

/* Parse and check the parameters of an endpoint; on a bad one fill res with
 * 400 and return nonzero. need_run / need_tensor: required names. */
static int get_params(const char *query, const char *const *allowed, int need_run, int need_tensor,
                      params *out, ag_http_response *res) {
    char err[160];
    memset(out, 0, sizeof *out);
    if (ag_http_parse_params(query, allowed, &out->p, err, sizeof err)) {
        ag_http_error(res, 400, err);
        return 1;
    }
    out->run = ag_http_param_get(&out->p, "run");
    out->tensor = ag_http_param_get(&out->p, "tensor");
    out->format = ag_http_param_get(&out->p, "format");
    if (need_run && !out->run) {
        ag_http_error(res, 400, "missing query parameter 'run'");
        return 1;
    }
    if (need_tensor && !out->tensor) {
        ag_http_error(res, 400, "missing query parameter 'tensor'");
        return 1;
    }
    if ((out->run && !ag_http_valid_name(out->run)) ||
        (out->tensor && !ag_http_valid_name(out->tensor))) {
        ag_http_error(res, 400, "names are 1 to 255 bytes");
        return 1;
    }
    if (out->format && !ag_http_valid_format(out->format)) {
        snprintf(err, sizeof err, "bad format name '%s'", out->format);
        ag_http_error(res, 400, err);
        return 1;
    }
    if (!out->format) out->format = DEFAULT_FORMAT;
    static const char *const nums[] = {"from", "to", "every", "window", "limit", "buckets"};
    uint64_t *dst[] = {&out->from, &out->to, &out->every, &out->window, &out->limit, &out->buckets};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const char *v = ag_http_param_get(&out->p, nums[i]);
        if (v && ag_http_parse_u64(v, dst[i])) {
            snprintf(err, sizeof err, "%s wants a non-negative integer, not '%.40s'", nums[i], v);
            ag_http_error(res, 400, err);
            return 1;
        }
    }
    if (out->to != 0 && out->from > out->to) {
        snprintf(err, sizeof err, "from %llu is after to %llu", (unsigned long long)out->from,
                 (unsigned long long)out->to);
        ag_http_error(res, 400, err);
        return 1;
    }
    return 0;
}

/* -------------------------------------------------------------- endpoints */

static const char *const NO_PARAMS[] = {NULL};
static const char *const RUN_PARAMS[] = {"run", NULL};
static const char *const HISTORY_PARAMS[] = {"run", "tensor", "format", "from",
                                             "to",  "every",  NULL};
static const char *const SCALES_PARAMS[] = {"run", "format", NULL};
static const char *const TOP_PARAMS[] = {"run", "format", "window", "limit", NULL};
static const char *const HEATMAP_PARAMS[] = {"run", "format", "buckets", NULL};

static void api_status(const ag_http_env *env, ag_store *st, const params *p,
                       ag_http_response *res) {
    ag_status *s = NULL;
    ag_doc d;
    (void)p;
    int rc = ag_store_status(st, &s);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    if (env->status) env->status(env->status_ctx, s);
    ag_doc_init(&d, NULL);
    if (ag_doc_status(&d, s, "daemon", env->address))
        ag_http_error(res, 500, "layout");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(s);
}

static void api_runs(const ag_http_env *env, ag_store *st, const params *p, ag_http_response *res) {
    ag_run_list *l = NULL;
    ag_doc d;
    (void)env;
    (void)p;
    int rc = ag_store_runs(st, &l);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    ag_doc_init(&d, "runs");
    if (ag_doc_runs(&d, l))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(l);
}

static void api_tensors(const ag_http_env *env, ag_store *st, const params *p,
                        ag_http_response *res) {
    ag_tensor_list *l = NULL;
    ag_doc d;
    (void)env;
    int rc = ag_store_tensors(st, p->run, &l);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    ag_doc_init(&d, "tensors");
    if (ag_doc_tensors(&d, p->run, l))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(l);
}

static void api_history(const ag_http_env *env, ag_store *st, const params *p,
                        ag_http_response *res) {
    ag_history_query q = {p->run, p->tensor, p->format, p->from, p->to, p->every};
    ag_history *h = NULL;
    ag_doc d;
    (void)env;
    int rc = ag_store_history(st, &q, &h);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    ag_doc_init(&d, "points");
    if (ag_doc_history(&d, p->run, p->tensor, p->format, h))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(h);
}

static void api_scales(const ag_http_env *env, ag_store *st, const params *p,
                       ag_http_response *res) {
    ag_scale_list *l = NULL;
    ag_doc d;
    (void)env;
    int rc = ag_store_scales(st, p->run, p->format, &l);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    ag_doc_init(&d, "scales");
    if (ag_doc_scales(&d, p->run, p->format, l))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(l);
}

static void api_top(const ag_http_env *env, ag_store *st, const params *p, ag_http_response *res) {
    ag_top_list *l = NULL;
    ag_doc d;
    (void)env;
    size_t limit = p->limit > TOP_LIMIT_MAX ? TOP_LIMIT_MAX : (size_t)p->limit;
    int rc = ag_store_top(st, p->run, p->format, p->window, limit, &l);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    ag_doc_init(&d, "tensors");
    if (ag_doc_top(&d, p->run, p->format, l))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_free(l);
}

/* {"run","format","from_step","to_step","width","buckets","tensors":[names],
 * "rates":[[rate or null per bucket] per tensor]}: bucket b of a tensor
 * covers steps from_step + b*width .. + width - 1; null: no rows there. */
static void api_heatmap(const ag_http_env *env, ag_store *st, const params *p,
                        ag_http_response *res) {
    (void)env;
    uint64_t want = ag_http_param_get(&p->p, "buckets") ? p->buckets : 100;
    if (want == 0 || want > AG_STORE_HEATMAP_MAX_BUCKETS) {
        char err[96];
        snprintf(err, sizeof err, "buckets must be 1..%u", AG_STORE_HEATMAP_MAX_BUCKETS);
        ag_http_error(res, 400, err);
        return;
    }
    ag_store_heat *h = NULL;
    int rc = ag_store_heatmap(st, p->run, p->format, (size_t)want, &h);
    if (rc) {
        if (rc == AG_ETOOBIG)
            ag_http_error(res, 400, ag_store_errmsg(st));
        else
            store_error(res, st, rc);
        return;
    }
    body b;
    if (body_open(&b)) {
        ag_free(h);
        ag_http_error(res, 500, "out of memory");
        return;
    }
    char num[64];
    fputs("{\"run\":", b.f);
    ag_json_string(b.f, h->run);
    fputs(",\"format\":", b.f);
    ag_json_string(b.f, h->format);
    fprintf(b.f, ",\"from_step\":%llu,\"to_step\":%llu,\"width\":%llu,\"buckets\":%zu",
            (unsigned long long)h->from_step, (unsigned long long)h->to_step,
            (unsigned long long)h->width, h->nbuckets);
    fputs(",\"tensors\":[", b.f);
    for (size_t t = 0; t < h->ntensors; t++) {
        if (t) fputc(',', b.f);
        ag_json_string(b.f, h->tensors[t]);
    }
    fputs("],\"rates\":[", b.f);
    for (size_t t = 0; t < h->ntensors; t++) {
        fputs(t ? ",[" : "[", b.f);
        for (size_t k = 0; k < h->nbuckets; k++) {
            size_t c = t * h->nbuckets + k;
            if (k) fputc(',', b.f);
            if (h->total[c] == 0) {
                fputs("null", b.f);
                continue;
            }
            ag_json_format_double(num, sizeof num, (double)h->stalled[c] / (double)h->total[c]);
            fputs(num, b.f);
        }
        fputc(']', b.f);
    }
    fputs("]}\n", b.f);
    ag_free(h);
    body_finish(&b, res, 200, JSON_TYPE);
}

/* ---------------------------------------------------------------- metrics */

/* A label value escaped per the exposition format (\\, \", \n); bytes that
 * are not UTF-8 become U+FFFD, other control bytes are kept out. */
static void label_value(FILE *f, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        if (*p == '\\')
            fputs("\\\\", f);
        else if (*p == '"')
            fputs("\\\"", f);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20 || *p == 0x7F)
            fputc('?', f);
        else {
            size_t n = ag_utf8_sequence(p);
            if (n == 0) {
                fputs("\xEF\xBF\xBD", f);
                p++;
                continue;
            }
            fwrite(p, 1, n, f);
            p += n;
            continue;
        }
        p++;
    }
}

static void sample_value(FILE *f, double v) {
    char buf[64];
    if (isnan(v))
        fputs("NaN", f);
    else if (isinf(v))
        fputs(v > 0 ? "+Inf" : "-Inf", f);
    else {
        ag_json_format_double(buf, sizeof buf, v);
        fputs(buf, f);
    }
}

static void family(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void labelled(FILE *f, const char *name, const char *run, const char *tensor,
                     const char *format, double v) {
    fprintf(f, "%s{run=\"", name);
    label_value(f, run);
    fputs("\",tensor=\"", f);
    label_value(f, tensor);
    fputs("\",format=\"", f);
    label_value(f, format);
    fputs("\"} ", f);
    sample_value(f, v);
    fputc('\n', f);
}

static int by_start_desc(const void *a, const void *b) {
    const ag_run_info *x = a, *y = b;
    return x->started_ms < y->started_ms ? 1 : x->started_ms > y->started_ms ? -1 : 0;
}

/* One run's gauges, for at most *budget tensors (decremented). Families are
 * written by the caller in two passes (stall rate, then scale), because the
 * format wants all samples of a metric together. */
static int run_gauges(const ag_http_env *env, ag_store *st, FILE *f, const char *run,
                      int scale_pass, size_t *budget) {
    ag_tensor_list *tl = NULL;
    int rc = ag_store_tensors(st, run, &tl);
    if (rc) return rc == AG_ENOTFOUND ? AG_OK : rc;
    size_t take = tl->n < *budget ? tl->n : *budget;
    *budget -= take;
    for (size_t k = 0; k < env->cfg->nfmts && rc == AG_OK; k++) {
        const char *fmt = env->cfg->fmts[k]->name;
        if (scale_pass) {
            ag_scale_list *sl = NULL;
            rc = ag_store_scales(st, run, fmt, &sl);
            if (rc == AG_ENOTFOUND) {
                rc = AG_OK;
                continue;
            }
            if (rc) break;
            for (size_t i = 0; i < sl->n; i++) {
                int chosen = take == tl->n;
                for (size_t j = 0; !chosen && j < take; j++)
                    chosen = strcmp(tl->items[j].name, sl->items[i].tensor) == 0;
                if (chosen)
                    labelled(f, "altgrad_scale", run, sl->items[i].tensor, fmt, sl->items[i].scale);
            }
            ag_free(sl);
            continue;
        }
        for (size_t j = 0; j < take && rc == AG_OK; j++) {
            const ag_tensor_info *t = &tl->items[j];
            if (t->snapshots == 0) continue;
            ag_history_query q = {run, t->name, fmt, t->last_step, 0, 0};
            ag_history *h = NULL;
            rc = ag_store_history(st, &q, &h);
            if (rc == AG_ENOTFOUND) {
                rc = AG_OK;
                continue;
            }
            if (rc) break;
            if (h->n > 0)
                labelled(f, "altgrad_stall_rate", run, t->name, fmt,
                         h->points[h->n - 1].stall_rate);
            ag_free(h);
        }
    }
    ag_free(tl);
    return rc;
}

static void api_metrics(const ag_http_env *env, ag_store *st, const params *p,
                        ag_http_response *res) {
    ag_status *s = NULL;
    ag_run_list *runs = NULL;
    body b = {0};
    (void)p;
    int rc = ag_store_status(st, &s);
    if (!rc) rc = ag_store_runs(st, &runs);
    if (rc) {
        store_error(res, st, rc);
        goto done;
    }
    if (env->status) env->status(env->status_ctx, s);
    if (body_open(&b)) {
        ag_http_error(res, 500, "out of memory");
        goto done;
    }
    FILE *f = b.f;
    const struct {
        const char *name, *type, *help;
        uint64_t v;
    } counters[] = {
        {"altgrad_messages_total", "counter", "Stream messages accepted.", s->messages},
        {"altgrad_bytes_total", "counter", "Stream bytes received.", s->bytes},
        {"altgrad_rejected_total", "counter",
         "Messages rejected as malformed, oversized, of another version or out of order.",
         s->rejected},
        {"altgrad_dropped_total", "counter",
         "Messages lost: sequence gaps and client-reported drops.", s->dropped},
        {"altgrad_rows_written_total", "counter", "Rows committed to the database.",
         s->rows_written},
        {"altgrad_rows_discarded_total", "counter",
         "Rows given up: refused by the store for good, or still failing at stop.", s->discarded},
        {"altgrad_store_degraded", "gauge",
         "1 while the database refuses writes (rows kept and retried), else 0.",
         s->store && strncmp(s->store, "ok", 3) != 0},
        {"altgrad_queue_depth", "gauge", "Rows waiting for the database writer.", s->queue_depth},
        {"altgrad_runs", "gauge", "Runs known.", s->runs},
        {"altgrad_tensors", "gauge", "Tensors known.", s->tensors},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        family(f, counters[i].name, counters[i].type, counters[i].help);
        fprintf(f, "%s %llu\n", counters[i].name, (unsigned long long)counters[i].v);
    }
    family(f, "altgrad_uptime_seconds", "gauge", "Seconds since the daemon started.");
    fputs("altgrad_uptime_seconds ", f);
    sample_value(f, s->uptime_s);
    fputc('\n', f);
    family(f, "altgrad_build_info", "gauge", "The daemon's version, always 1.");
    fputs("altgrad_build_info{version=\"", f);
    label_value(f, s->version);
    fputs("\"} 1\n", f);

    qsort(runs->items, runs->n, sizeof *runs->items, by_start_desc);
    size_t total_tensors = 0;
    static const char *const help[2] = {
        "Stall rate (stalled / total) of the tensor's latest gradient snapshot in the "
        "format; at most "
        "1000"
        " tensors, newest runs first.",
        "Latest scale of the tensor in the format; at most 1000 tensors, newest runs first."};
    for (int pass = 0; pass < 2 && rc == AG_OK; pass++) {
        size_t budget = AG_HTTP_METRICS_TENSORS_MAX;
        family(f, pass ? "altgrad_scale" : "altgrad_stall_rate", "gauge", help[pass]);
        for (size_t i = 0; i < runs->n && budget > 0 && rc == AG_OK; i++)
            rc = run_gauges(env, st, f, runs->items[i].name, pass, &budget);
        total_tensors = AG_HTTP_METRICS_TENSORS_MAX - budget;
    }
    family(f, "altgrad_metrics_tensors", "gauge",
           "Tensors with per-tensor series in this scrape (bounded).");
    fprintf(f, "altgrad_metrics_tensors %zu\n", total_tensors);
    if (rc) {
        fclose(f);
        free(b.data);
        store_error(res, st, rc);
        goto done;
    }
    body_finish(&b, res, 200, METRICS_TYPE);
done:
    ag_free(runs);
    ag_free(s);
}

/* ------------------------------------------------------------------ route */

typedef void (*handler)(const ag_http_env *, ag_store *, const params *, ag_http_response *);

typedef struct route {
    const char *path;
    handler fn;
    const char *const *allowed;
    int need_run, need_tensor;
} route;

static const route routes[] = {
    {"/api/status", api_status, NO_PARAMS, 0, 0},
    {"/api/runs", api_runs, NO_PARAMS, 0, 0},
    {"/api/tensors", api_tensors, RUN_PARAMS, 1, 0},
    {"/api/history", api_history, HISTORY_PARAMS, 1, 1},
    {"/api/scales", api_scales, SCALES_PARAMS, 1, 0},
    {"/api/top", api_top, TOP_PARAMS, 1, 0},
    {"/api/heatmap", api_heatmap, HEATMAP_PARAMS, 1, 0},
    {"/metrics", api_metrics, NO_PARAMS, 0, 0},
};

static const route *find_route(const char *path) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}

int ag_http_needs_store(const ag_http_request *req) {
    return req->method != AG_HTTP_OTHER && find_route(req->path) != NULL;
}

void ag_http_answer(const ag_http_env *env, ag_store *st, const ag_http_request *req,
                    ag_http_response *res) {
    params p;
    memset(res, 0, sizeof *res);
    if (req->method == AG_HTTP_OTHER) {
        ag_http_error(res, 405, "only GET and HEAD are served");
        return;
    }
    if (strcmp(req->path, "/") == 0 || strcmp(req->path, "/index.html") == 0) {
        if (get_params(req->query, NO_PARAMS, 0, 0, &p, res)) return;
        res->status = 200;
        res->content_type = "text/html; charset=utf-8";
        res->body = (char *)ag_http_page;
        res->len = strlen(ag_http_page);
        res->owned = 0;
        return;
    }
    const route *r = find_route(req->path);
    if (!r) {
        ag_http_error(res, 404, "no such page");
        return;
    }
    if (get_params(req->query, r->allowed, r->need_run, r->need_tensor, &p, res)) return;
    if (!st) {
        ag_http_error(res, 500, "the database cannot be read");
        return;
    }
    r->fn(env, st, &p, res);
}
