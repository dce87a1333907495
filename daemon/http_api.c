/*
 * http_api.c - routes and answers of altgradd's web server (http_api.h):
 * GET / (the page), /api/<name> for each public query of proto/queries.h
 * with the CLI's JSON documents and the query's parameter table, /api/heatmap (tensors x
 * step buckets of stall rate, from the rollups), and /metrics in the Prometheus
 * text format 0.0.4. Called on a web server worker thread (http_server.c);
 * SQLite is read here.
 */
#define _POSIX_C_SOURCE 200809L
#include "daemon/http_api.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "present/answer.h"
#include "present/json.h"
#include "proto/spec.h"

#define DEFAULT_FORMAT AG_DEFAULT_FORMAT

static const char JSON_TYPE[] = "application/json";
static const char METRICS_TYPE[] = "text/plain; version=0.0.4; charset=utf-8";

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

/* A store failure as a response: unknown names are 404, a value out of
 * range or an answer too big (report's width, its rows) 400, the rest 500. */
static void store_error(ag_http_response *res, ag_store *st, int rc) {
    int asked = rc == AG_ERANGE || rc == AG_ETOOBIG;
    const char *said = ag_store_errmsg(st);
    ag_http_error(res,
                  rc == AG_ENOTFOUND ? 404
                  : asked            ? 400
                                     : 500,
                  (rc == AG_ENOTFOUND || rc == AG_ESTORE || asked) && *said ? said
                                                                            : ag_strerror(rc));
}

/* ------------------------------------------------------------- parameters */

/* The named parameter of f[0..n) whose value was given, or NULL. */
static const ag_field *param_named(const ag_field *f, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (f[i].doc && strcmp(f[i].doc, name) == 0) return &f[i];
    return NULL;
}

/*
 * Parse and check the parameters of an endpoint by its table f[0..n) (a
 * query's is its request table in proto/spec.c; proto/spec.h says the
 * kinds) into base, zeroed by the caller: only the table's names are
 * allowed; a required one missing, a bad name, format or number, or a
 * `from` after a `to`, is 400 in res and nonzero. A format not given is
 * AG_DEFAULT_FORMAT. p keeps the parsed text base points into.
 */
static int get_params(const char *query, const ag_field *f, size_t n, void *base, ag_http_params *p,
                      ag_http_response *res) {
    char err[160];
    const char *allowed[AG_HTTP_PARAMS_MAX + 1];
    size_t k = 0, i;
    for (i = 0; i < n && k < AG_HTTP_PARAMS_MAX; i++)
        if (f[i].doc) allowed[k++] = f[i].doc;
    allowed[k] = NULL;
    if (ag_http_parse_params(query, allowed, p, err, sizeof err)) {
        ag_http_error(res, 400, err);
        return 1;
    }
    for (i = 0; i < n; i++)
        if (f[i].doc && (f[i].flags & F_REQ) && !ag_http_param_get(p, f[i].doc)) {
            snprintf(err, sizeof err, "missing query parameter '%s'", f[i].doc);
            ag_http_error(res, 400, err);
            return 1;
        }
    /* names first, then formats, then numbers, then texts (report's list of
     * formats, which the store checks name by name): the first bad one is
     * said */
    static const uint8_t kinds[] = {K_NAME, K_FMT, K_UINT, K_STR};
    for (size_t o = 0; o < sizeof kinds; o++)
        for (i = 0; i < n; i++) {
            int kind = kinds[o];
            const char *v = f[i].doc ? ag_http_param_get(p, f[i].doc) : NULL;
            void *at = (char *)base + f[i].off;
            if ((int)f[i].kind != kind) continue;
            if (kind == K_FMT && !v) v = DEFAULT_FORMAT;
            if (!v) continue;
            if (kind == K_NAME && !ag_http_valid_name(v)) {
                ag_http_error(res, 400, "names are 1 to 255 bytes");
                return 1;
            }
            if (kind == K_FMT && !ag_http_valid_format(v)) {
                snprintf(err, sizeof err, "bad format name '%s'", v);
                ag_http_error(res, 400, err);
                return 1;
            }
            if (kind == K_STR && strlen(v) > f[i].aux) {
                snprintf(err, sizeof err, "%s is longer than %zu bytes", f[i].doc, f[i].aux);
                ag_http_error(res, 400, err);
                return 1;
            }
            if (kind == K_UINT && ag_http_parse_u64(v, at)) {
                snprintf(err, sizeof err, "%s wants a non-negative integer, not '%.40s'", f[i].doc,
                         v);
                ag_http_error(res, 400, err);
                return 1;
            }
            if (kind != K_UINT) memcpy(at, &v, sizeof v);
        }
    const ag_field *from = param_named(f, n, "from"), *to = param_named(f, n, "to");
    if (from && to) {
        uint64_t a, b;
        memcpy(&a, (char *)base + from->off, sizeof a);
        memcpy(&b, (char *)base + to->off, sizeof b);
        if (b != 0 && a > b) {
            snprintf(err, sizeof err, "from %llu is after to %llu", (unsigned long long)a,
                     (unsigned long long)b);
            ag_http_error(res, 400, err);
            return 1;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- endpoints */

/* GET /api/<name> of a public query: asked of the store, laid out as the
 * CLI lays it out. */
static void api_query(const ag_http_env *env, ag_store *st, const ag_msg *req,
                      ag_http_response *res) {
    const ag_query_def *def = ag_query_by_type(req->type);
    ag_msg reply = {0};
    ag_doc d;
    int rc = ag_answer(st, req, &reply);
    if (rc) {
        store_error(res, st, rc);
        return;
    }
    if ((def->flags & AG_Q_LIVE) && env->status) env->status(env->status_ctx, reply.u.status);
    ag_doc_init(&d, NULL);
    if (ag_doc_answer(&d, req, &reply, "daemon", env->address))
        ag_http_error(res, 500, "out of memory");
    else
        send_doc(res, &d);
    ag_doc_free(&d);
    ag_answer_free(&reply);
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
 * written by the caller in passes (stall rate, scale, flips), because the
 * format wants all samples of a metric together. Flips are the latest
 * point's, only where known: counts sent without flips have no sample. */
enum { PASS_STALL, PASS_SCALE, PASS_FLIPS, PASSES };
static int run_gauges(const ag_http_env *env, ag_store *st, FILE *f, const char *run, int pass,
                      size_t *budget) {
    int scale_pass = pass == PASS_SCALE;
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
            const ag_history_point *last = h->n > 0 ? &h->points[h->n - 1] : NULL;
            if (last && pass == PASS_STALL)
                labelled(f, "altgrad_stall_rate", run, t->name, fmt, last->stall_rate);
            if (last && pass == PASS_FLIPS && last->flips != AG_FLIPS_UNKNOWN)
                labelled(f, "altgrad_flips", run, t->name, fmt, (double)last->flips);
            ag_free(h);
        }
    }
    ag_free(tl);
    return rc;
}

/* Runs of many ranks (docs/daemon.md, Ranks): each run's steps stored
 * incomplete, and the messages each of its ranks lost (rank_drops, the JSON
 * object {"rank":dropped} of the ranks with drops). */
static void rank_metrics(FILE *f, const ag_run_list *runs) {
    family(f, "altgrad_run_incomplete_steps", "gauge",
           "Steps of sharded tensors stored incomplete (not every rank reported), per run of "
           "more than one rank.");
    for (size_t i = 0; i < runs->n; i++) {
        if (runs->items[i].world_size <= 1) continue;
        fputs("altgrad_run_incomplete_steps{run=\"", f);
        label_value(f, runs->items[i].name);
        fprintf(f, "\"} %llu\n", (unsigned long long)runs->items[i].incomplete);
    }
    family(f, "altgrad_rank_dropped_total", "counter",
           "Messages lost per rank of a run (sequence gaps, client drops, not filed), for the "
           "ranks with drops.");
    for (size_t i = 0; i < runs->n; i++) {
        const char *p = runs->items[i].rank_drops;
        unsigned long long rank, n;
        int used;
        while (p && (p = strchr(p, '"')) && sscanf(p, "\"%llu\":%llu%n", &rank, &n, &used) == 2) {
            fputs("altgrad_rank_dropped_total{run=\"", f);
            label_value(f, runs->items[i].name);
            fprintf(f, "\",rank=\"%llu\"} %llu\n", rank, n);
            p += used;
        }
    }
}

/* A family of one sample without labels: a counter or a gauge. */
typedef struct scalar {
    const char *name, *type, *help;
    uint64_t v;
} scalar;

static void scalars(FILE *f, const scalar *m, size_t n) {
    for (size_t i = 0; i < n; i++) {
        family(f, m[i].name, m[i].type, m[i].help);
        fprintf(f, "%s %llu\n", m[i].name, (unsigned long long)m[i].v);
    }
}

static void api_metrics(const ag_http_env *env, ag_store *st, const void *params,
                        const ag_http_params *given, ag_http_response *res) {
    ag_status *s = NULL;
    ag_run_list *runs = NULL;
    body b = {0};
    (void)params;
    (void)given;
    int rc = ag_store_status(st, &s);
    if (!rc) rc = ag_store_runs(st, &runs);
    if (rc) {
        store_error(res, st, rc);
        goto done;
    }
    if (env->status) env->status(env->status_ctx, s);
    ag_shm_stats shm = {0};
    if (env->shm_stats) env->shm_stats(env->status_ctx, &shm);
    if (body_open(&b)) {
        ag_http_error(res, 500, "out of memory");
        goto done;
    }
    FILE *f = b.f;
    const scalar counters[] = {
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
    scalars(f, counters, sizeof counters / sizeof counters[0]);
    family(f, "altgrad_uptime_seconds", "gauge", "Seconds since the daemon started.");
    fputs("altgrad_uptime_seconds ", f);
    sample_value(f, s->uptime_s);
    fputc('\n', f);
    family(f, "altgrad_build_info", "gauge", "The daemon's version, always 1.");
    fputs("altgrad_build_info{version=\"", f);
    label_value(f, s->version);
    fputs("\"} 1\n", f);

    rank_metrics(f, runs);
    if (runs->n > 1) /* an empty list may have no array: qsort wants one */
        qsort(runs->items, runs->n, sizeof *runs->items, by_start_desc);
    size_t total_tensors = 0;
    static const char *const help[PASSES] = {
        "Stall rate (stalled / total) of the tensor's latest gradient snapshot in the "
        "format; at most "
        "1000"
        " tensors, newest runs first.",
        "Latest scale of the tensor in the format; at most 1000 tensors, newest runs first.",
        ("Pattern flips of the tensor's latest snapshot in the format, where known (counts "
         "sent without flips have none); at most 1000 tensors, newest runs first.")};
    static const char *const name[PASSES] = {"altgrad_stall_rate", "altgrad_scale",
                                             "altgrad_flips"};
    for (int pass = 0; pass < PASSES && rc == AG_OK; pass++) {
        size_t budget = AG_HTTP_METRICS_TENSORS_MAX;
        family(f, name[pass], "gauge", help[pass]);
        for (size_t i = 0; i < runs->n && budget > 0 && rc == AG_OK; i++)
            rc = run_gauges(env, st, f, runs->items[i].name, pass, &budget);
        total_tensors = AG_HTTP_METRICS_TENSORS_MAX - budget;
    }
    family(f, "altgrad_metrics_tensors", "gauge",
           "Tensors with per-tensor series in this scrape (bounded).");
    fprintf(f, "altgrad_metrics_tensors %zu\n", total_tensors);
    /* Last, so that every family before them keeps its place in the scrape. */
    const scalar shm_counters[] = {
        {"altgrad_shm_segments", "gauge", "Shared-memory segments of trainers mapped now.",
         shm.segments},
        {"altgrad_shm_segments_passed", "gauge",
         "Of the shared-memory segments mapped, those passed over the descriptor socket.",
         shm.passed},
        {"altgrad_shm_snapshots_total", "counter",
         "Snapshots whose arrays the daemon read from a shared-memory segment.", shm.snapshots},
        {"altgrad_shm_refused_total", "counter",
         "Shared-memory segments refused, opened through /proc or passed.", shm.refused},
    };
    scalars(f, shm_counters, sizeof shm_counters / sizeof shm_counters[0]);
    ag_pool_stats pool = {0};
    if (env->pool_stats) env->pool_stats(env->status_ctx, &pool);
    const scalar pool_counters[] = {
        {"altgrad_pool_threads", "gauge", "Threads of the snapshot pool.", pool.threads},
        {"altgrad_snapshots_in_flight", "gauge", "Snapshots being evaluated now.", pool.in_flight},
        {"altgrad_snapshots_evaluated_total", "counter",
         "Snapshots whose evaluation ended, since the daemon started.", pool.evaluated},
        {"altgrad_snapshots_pipelined_total", "counter",
         "Of those, snapshots whose kernels ran behind the one before of their tensor.",
         pool.pipelined},
        {"altgrad_snapshot_waits_total", "counter",
         "Messages held back until snapshots in flight ended (pool, memory budget or tensor "
         "order).",
         pool.waits},
        {"altgrad_engine_state_bytes", "gauge",
         "The engine's state at rest: tensors, amax histories, flip baselines.", pool.state_bytes},
        {"altgrad_engine_inflight_bytes", "gauge", "Bytes reserved by the snapshots in flight.",
         pool.inflight_bytes},
        {"altgrad_engine_spare_bytes", "gauge", "Buffers kept for the next snapshots.",
         pool.spare_bytes},
        {"altgrad_engine_budget_bytes", "gauge",
         "The most the engine's state, snapshots in flight and spare buffers may hold "
         "(its share of --state-budget).",
         pool.budget_bytes},
        {"altgrad_writer_commits_total", "counter", "Batches of rows the writer committed.",
         pool.commits},
        {"altgrad_writer_commits_hurried_total", "counter",
         "Of those, batches committed early because a client's flush waited for them.",
         pool.hurried},
    };
    scalars(f, pool_counters, sizeof pool_counters / sizeof pool_counters[0]);
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

/* ---------------------------------------------------------------- heatmap */

/* {"run","format","from_step","to_step","width","buckets","digits","tensors":[names],
 * "overall":[rate or null per tensor],"rates":[[rate or null per bucket] per
 * tensor]}: bucket b of a tensor covers steps from_step + b*width .. + width
 * - 1; null: no rows there. overall pools a tensor's buckets (sum stalled /
 * sum total). digits (1..17) rounds every rate to that many significant
 * digits, for a page that only needs a colour; 0 (not given): the shortest
 * text that reads back as the same double. */
typedef struct heatmap_params {
    const char *run, *format;
    uint64_t buckets, digits;
} heatmap_params;

static const ag_field heatmap_fields[] = {
    {"run", K_NAME, F_REQ, offsetof(heatmap_params, run), 0, "run", 0},
    {"fmt", K_FMT, F_OMIT0, offsetof(heatmap_params, format), 0, "format", 0},
    {"buckets", K_UINT, F_OMIT0, offsetof(heatmap_params, buckets), 0, "buckets", 0},
    {"digits", K_UINT, F_OMIT0, offsetof(heatmap_params, digits), 0, "digits", 0},
};

#define HEATMAP_DIGITS_MAX 17

/* stalled / total, or null where total is 0, with digits significant digits
 * (0: exact). */
static void heat_rate(FILE *f, uint64_t stalled, uint64_t total, int digits) {
    char num[64];
    if (total == 0) {
        fputs("null", f);
        return;
    }
    double r = (double)stalled / (double)total;
    if (digits > 0)
        snprintf(num, sizeof num, "%.*g", digits, r);
    else
        ag_json_format_double(num, sizeof num, r);
    fputs(num, f);
}

static void api_heatmap(const ag_http_env *env, ag_store *st, const void *params,
                        const ag_http_params *given, ag_http_response *res) {
    const heatmap_params *p = params;
    (void)env;
    uint64_t want = ag_http_param_get(given, "buckets") ? p->buckets : 100;
    if (want == 0 || want > AG_STORE_HEATMAP_MAX_BUCKETS) {
        char err[96];
        snprintf(err, sizeof err, "buckets must be 1..%u", AG_STORE_HEATMAP_MAX_BUCKETS);
        ag_http_error(res, 400, err);
        return;
    }
    int digits = 0;
    if (ag_http_param_get(given, "digits")) {
        if (p->digits == 0 || p->digits > HEATMAP_DIGITS_MAX) {
            char err[96];
            snprintf(err, sizeof err, "digits must be 1..%d", HEATMAP_DIGITS_MAX);
            ag_http_error(res, 400, err);
            return;
        }
        digits = (int)p->digits;
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
    fputs("{\"run\":", b.f);
    ag_json_string(b.f, h->run);
    fputs(",\"format\":", b.f);
    ag_json_string(b.f, h->format);
    fprintf(b.f,
            ",\"from_step\":%llu,\"to_step\":%llu,\"width\":%llu,\"buckets\":%zu,\"digits\":%d",
            (unsigned long long)h->from_step, (unsigned long long)h->to_step,
            (unsigned long long)h->width, h->nbuckets, digits);
    fputs(",\"tensors\":[", b.f);
    for (size_t t = 0; t < h->ntensors; t++) {
        if (t) fputc(',', b.f);
        ag_json_string(b.f, h->tensors[t]);
    }
    fputs("],\"overall\":[", b.f);
    for (size_t t = 0; t < h->ntensors; t++) {
        uint64_t stalled = 0, total = 0;
        for (size_t k = 0; k < h->nbuckets; k++) {
            stalled += h->stalled[t * h->nbuckets + k];
            total += h->total[t * h->nbuckets + k];
        }
        if (t) fputc(',', b.f);
        heat_rate(b.f, stalled, total, digits);
    }
    fputs("],\"rates\":[", b.f);
    for (size_t t = 0; t < h->ntensors; t++) {
        fputs(t ? ",[" : "[", b.f);
        for (size_t k = 0; k < h->nbuckets; k++) {
            size_t c = t * h->nbuckets + k;
            if (k) fputc(',', b.f);
            heat_rate(b.f, h->stalled[c], h->total[c], digits);
        }
        fputc(']', b.f);
    }
    fputs("]}\n", b.f);
    ag_free(h);
    body_finish(&b, res, 200, JSON_TYPE);
}

/* ------------------------------------------------------------------ route */

/* Endpoints that are no query of proto/queries.h (those are /api/<name>,
 * query_route): a handler, and the table of its parameters (proto/spec.h
 * rows: name, kind, F_REQ, offset), parsed into a zeroed struct of
 * params_size bytes (at most PARAMS_MAX) it receives, with the parameters
 * as given (to tell one given as 0 from one not given). */
typedef void (*handler)(const ag_http_env *, ag_store *, const void *params,
                        const ag_http_params *given, ag_http_response *);

typedef struct route {
    const char *path;
    handler fn;
    const ag_field *params;
    size_t nparams, params_size;
} route;

#define PARAMS_MAX 256

static const route routes[] = {
    {"/metrics", api_metrics, NULL, 0, 0},
    {"/api/heatmap", api_heatmap, heatmap_fields, sizeof heatmap_fields / sizeof heatmap_fields[0],
     sizeof(heatmap_params)},
};

static const route *find_route(const char *path) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}

/* The public query GET path names (/api/<name>, proto/queries.h), or NULL. */
static const ag_query_def *query_route(const char *path) {
    const ag_query_def *def = strncmp(path, "/api/", 5) == 0 ? ag_query_by_name(path + 5) : NULL;
    return def && (def->flags & AG_Q_PUBLIC) ? def : NULL;
}

int ag_http_needs_store(const ag_http_request *req) {
    return req->method != AG_HTTP_OTHER && (query_route(req->path) || find_route(req->path));
}

void ag_http_answer(const ag_http_env *env, ag_store *st, const ag_http_request *req,
                    ag_http_response *res) {
    ag_http_params p;
    memset(res, 0, sizeof *res);
    if (req->method == AG_HTTP_OTHER) {
        ag_http_error(res, 405, "only GET and HEAD are served");
        return;
    }
    if (strcmp(req->path, "/") == 0 || strcmp(req->path, "/index.html") == 0) {
        if (get_params(req->query, NULL, 0, NULL, &p, res)) return;
        res->status = 200;
        res->content_type = "text/html; charset=utf-8";
        res->body = (char *)ag_http_page;
        res->len = strlen(ag_http_page);
        res->owned = 0;
        return;
    }
    const ag_query_def *def = query_route(req->path);
    const route *r = def ? NULL : find_route(req->path);
    if (!def && !r) {
        ag_http_error(res, 404, "no such page");
        return;
    }
    ag_msg q = {0};
    _Alignas(max_align_t) unsigned char params[PARAMS_MAX] = {0};
    if (def) {
        size_t n;
        const ag_field *f = ag_query_params(def->q, &n);
        q.type = def->q;
        if (get_params(req->query, f, n, &q.u, &p, res)) return;
    } else if (r->params_size > sizeof params) {
        ag_http_error(res, 500, "an endpoint's parameters outgrew their room");
        return;
    } else if (get_params(req->query, r->params, r->nparams, params, &p, res)) {
        return;
    }
    if (!st) {
        ag_http_error(res, 500, "the database cannot be read");
        return;
    }
    if (def)
        api_query(env, st, &q, res);
    else
        r->fn(env, st, params, &p, res);
}
