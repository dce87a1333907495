/*
 * test_http.c - the daemon's web server, end to end against the real
 * altgradd: the page, every /api endpoint byte for byte equal to what the
 * `altgrad --db ... --json` CLI prints from the same database, /metrics as
 * exposition format with the right values, hostile requests, keep-alive
 * (raw and with curl), a busy port.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "proto/spec.h"
#include "tests/cli/json_mini.h"
#include "tests/daemon/harness.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(http, .init = setup, .fini = teardown, .timeout = 240);

#define RUN "web-run"
#define N 256
#define STEPS 6

static const char *const HTTP_ON[] = {"--http", "127.0.0.1:0", NULL};

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    return fd;
}

typedef struct reply {
    int status; /* 0: closed without an answer */
    char *raw;  /* whole response */
    const char *body;
} reply;

/* Send len raw bytes and read until the server closes (bounded wait): the
 * request must say "Connection: close" or be one the server refuses. */
static reply http_raw(int port, const char *req, size_t len) {
    reply r = {0};
    int fd = connect_to(port);
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) break; /* the server may close early on a bad head */
        off += (size_t)n;
    }
    size_t cap = 1 << 16, got = 0;
    r.raw = malloc(cap);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 30000), 1, "no answer within 30 s");
        if (got + 1 == cap) r.raw = realloc(r.raw, cap *= 2);
        ssize_t n = recv(fd, r.raw + got, cap - got - 1, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    r.raw[got] = '\0';
    close(fd);
    if (strncmp(r.raw, "HTTP/1.1 ", 9) == 0) r.status = atoi(r.raw + 9);
    const char *b = strstr(r.raw, "\r\n\r\n");
    r.body = b ? b + 4 : "";
    return r;
}

static reply http_get(int port, const char *target) {
    char req[2048];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     target);
    return http_raw(port, req, (size_t)n);
}

static void reply_free(reply *r) { free(r->raw); }

/* Feed a run: STEPS snapshots of "w" (all five formats) plus stats of "act". */
static void feed(ag_client **out) {
    ag_client *c = harness_client(&H, RUN, AG_QUEUE_BLOCK);
    float w[N], g[N];
    for (uint64_t s = 1; s <= STEPS; s++) {
        for (int i = 0; i < N; i++) {
            w[i] = (float)(s + 1) * sinf((float)i * 0.3f);
            g[i] = 1e-3f * cosf((float)i + (float)s);
        }
        cr_assert_eq(ag_client_log_sgd(c, s, "w", w, g, N, 0.01f), AG_OK);
        cr_assert_eq(ag_client_log_stats(c, s, "act", AG_ROLE_ACTIVATION, w, N), AG_OK);
    }
    cr_assert_eq(ag_client_flush(c, 10000), AG_OK);
    ag_free(harness_wait_history(c, RUN, "w", "E7M0", STEPS));
    *out = c;
}

/* What `altgrad --db DB --json ARGS` prints. */
static char *cli_json(const char *args) {
    char cmd[1024];
    const char *b = getenv("AG_BUILD_DIR");
    snprintf(cmd, sizeof cmd, "%s/client/cli/altgrad --db %s --json %s", b ? b : ".", H.db, args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 1 << 16, got = 0;
    char *out = malloc(cap);
    size_t n;
    while ((n = fread(out + got, 1, cap - got - 1, p)) > 0) {
        got += n;
        if (got + 1 == cap) out = realloc(out, cap *= 2);
    }
    out[got] = '\0';
    cr_assert_eq(pclose(p), 0, "%s failed", cmd);
    return out;
}

Test(http, every_api_endpoint_prints_what_the_cli_prints_from_the_same_database) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    int port = harness_http_port(&H);
    /* The writer may still be filing the statistics summaries, so a case
     * that differs is asked again (bounded) before it fails. */
    struct {
        const char *target, *cli;
    } cases[] = {
        {"/api/runs", "runs"},
        {"/api/tensors?run=" RUN, "tensors " RUN},
        {"/api/history?run=" RUN "&tensor=w", "history " RUN " w"},
        {"/api/history?run=" RUN "&tensor=w&format=E3M4&from=2&to=5&every=2",
         "history " RUN " w --format E3M4 --from 2 --to 5 --every 2"},
        {"/api/scales?run=" RUN "&format=E1M6", "scales " RUN " --format E1M6"},
        {"/api/top?run=" RUN "&format=E5M2&window=3&limit=1",
         "top " RUN " --format E5M2 --window 3 --limit 1"},
        {"/api/top?run=web%2Drun", "top " RUN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int tries = 0;; tries++) {
            reply r = http_get(port, cases[i].target);
            char *want = cli_json(cases[i].cli);
            cr_assert_eq(r.status, 200, "%s: %s", cases[i].target, r.raw);
            cr_assert(strstr(r.raw, "Content-Type: application/json\r\n"));
            jm_value *v = jm_parse(r.body);
            cr_assert_not_null(v, "%s: not JSON: %s", cases[i].target, r.body);
            jm_free(v);
            int same = strcmp(r.body, want) == 0;
            if (!same && tries < 100) { /* rows still being committed */
                reply_free(&r);
                free(want);
                struct timespec ts = {0, 50 * 1000000};
                nanosleep(&ts, NULL);
                continue;
            }
            cr_assert_str_eq(r.body, want, "%s", cases[i].target);
            reply_free(&r);
            free(want);
            break;
        }
    }

    /* status: the live counters, the CLI's keys, our address. */
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    reply r = http_get(port, "/api/status");
    cr_assert_eq(r.status, 200);
    jm_value *v = jm_parse(r.body);
    cr_assert_not_null(v);
    static const char *const keys[] = {
        "source",        "address",    "version",     "uptime_s",     "messages",     "bytes",
        "rejected",      "dropped",    "queue_depth", "rows_written", "runs",         "tensors",
        "db_path",       "formats",    "store",       "discarded",    "history_len",  "amax_mode",
        "scale_mode",    "margin",     "scale_min",   "caps",         "shm_segments", "shm_passed",
        "shm_snapshots", "shm_refused"};
    cr_assert_eq(v->n, sizeof keys / sizeof keys[0]);
    cr_assert_eq(jm_get(v, "history_len")->number, 16.0, "the daemon's defaults");
    cr_assert_str_eq(jm_get(v, "amax_mode")->string, "max");
    cr_assert_str_eq(jm_get(v, "scale_mode")->string, "current");
    cr_assert_eq(jm_get(v, "margin")->number, 0.0);
    cr_assert_eq(jm_get(v, "scale_min")->number, 1e-10);
    cr_assert_eq(st->history_len, 16);
    cr_assert_str_eq(st->scale_mode, "current");
    for (size_t i = 0; i < v->n; i++) cr_assert_str_eq(v->keys[i], keys[i]);
    cr_assert_str_eq(jm_get(v, "source")->string, "daemon");
    cr_assert_eq(jm_get(v, "messages")->number, (double)st->messages);
    cr_assert_eq(jm_get(v, "runs")->number, 1.0);
    cr_assert_str_eq(jm_get(v, "formats")->string, "E0M7,E1M6,E3M4,E5M2,E7M0");
    cr_assert_str_eq(jm_get(v, "store")->string, "ok");
    cr_assert_str_eq(st->store, "ok");
    cr_assert_eq(jm_get(v, "discarded")->number, 0.0);
    char addr[64];
    snprintf(addr, sizeof addr, "http://127.0.0.1:%d", port);
    cr_assert_str_eq(jm_get(v, "address")->string, addr);
    jm_free(v);
    reply_free(&r);
    ag_free(st);
    ag_client_close(c);
}

Test(http, the_heatmap_gives_each_bucket_the_stall_rate_of_its_steps) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    int port = harness_http_port(&H);
    ag_history_query q = {.run = RUN, .tensor = "w", .format = "E3M4"};
    ag_history *h = NULL;
    cr_assert_eq(ag_client_history(c, &q, &h), AG_OK);
    cr_assert_eq(h->n, STEPS);
    const size_t asks[] = {1, 2, 4, 6, 2000};
    for (size_t i = 0; i < sizeof asks / sizeof asks[0]; i++) {
        char target[128];
        snprintf(target, sizeof target, "/api/heatmap?run=" RUN "&format=E3M4&buckets=%zu",
                 asks[i]);
        reply r = http_get(port, target);
        cr_assert_eq(r.status, 200, "%s: %s", target, r.raw);
        jm_value *v = jm_parse(r.body);
        cr_assert_not_null(v, "not JSON: %s", r.body);
        const jm_value *tensors = jm_get(v, "tensors"), *rates = jm_get(v, "rates");
        cr_assert(tensors && tensors->n == 1 && strcmp(tensors->items[0].string, "w") == 0, "%s",
                  r.body);
        size_t nb = (size_t)jm_get(v, "buckets")->number;
        uint64_t from = (uint64_t)jm_get(v, "from_step")->number;
        uint64_t width = (uint64_t)jm_get(v, "width")->number;
        cr_assert(nb >= 1 && nb <= asks[i], "%s", r.body);
        cr_assert(rates && rates->n == 1 && rates->items[0].n == nb, "%s", r.body);
        for (size_t b = 0; b < nb; b++) {
            double stalled = 0, total = 0;
            for (size_t k = 0; k < h->n; k++)
                if (h->points[k].step >= from + b * width &&
                    h->points[k].step < from + (b + 1) * width) {
                    stalled += (double)h->points[k].stalled;
                    total += (double)h->points[k].total;
                }
            const jm_value *cell = &rates->items[0].items[b];
            if (total == 0)
                cr_expect_eq(cell->type, JM_NULL, "%s bucket %zu", target, b);
            else
                cr_expect(cell->type == JM_NUMBER && fabs(cell->number - stalled / total) < 1e-12,
                          "%s bucket %zu", target, b);
        }
        /* overall pools the tensor's buckets: the whole run */
        const jm_value *overall = jm_get(v, "overall");
        double all_stalled = 0, all_total = 0;
        for (size_t k = 0; k < h->n; k++) {
            all_stalled += (double)h->points[k].stalled;
            all_total += (double)h->points[k].total;
        }
        cr_assert(overall && overall->n == 1 && overall->items[0].type == JM_NUMBER, "%s", r.body);
        cr_expect(fabs(overall->items[0].number - all_stalled / all_total) < 1e-12, "%s", r.body);
        cr_expect_eq(jm_get(v, "digits")->number, 0);
        jm_free(v);
        reply_free(&r);
    }
    /* digits=D: every rate rounded to D significant digits, the same cells */
    for (int digits = 1; digits <= 17; digits += 4) {
        char exact_t[128], round_t[128];
        snprintf(exact_t, sizeof exact_t, "/api/heatmap?run=" RUN "&format=E3M4&buckets=3");
        snprintf(round_t, sizeof round_t,
                 "/api/heatmap?run=" RUN "&format=E3M4&buckets=3&digits=%d", digits);
        reply re = http_get(port, exact_t), rr = http_get(port, round_t);
        cr_assert_eq(rr.status, 200, "%s: %s", round_t, rr.raw);
        jm_value *ve = jm_parse(re.body), *vr = jm_parse(rr.body);
        cr_assert(ve && vr, "%s", rr.body);
        cr_expect_eq(jm_get(vr, "digits")->number, digits);
        const char *keys[] = {"overall", "rates"};
        for (int k = 0; k < 2; k++) {
            const jm_value *a = jm_get(ve, keys[k]), *b = jm_get(vr, keys[k]);
            cr_assert(a && b && a->n == b->n, "%s", rr.body);
            for (size_t i = 0; i < a->n; i++) {
                const jm_value *x = k ? a->items[i].items : &a->items[i];
                const jm_value *y = k ? b->items[i].items : &b->items[i];
                size_t n = k ? a->items[i].n : 1;
                cr_assert(!k || b->items[i].n == n);
                for (size_t j = 0; j < n; j++) {
                    cr_assert_eq(x[j].type, y[j].type, "%s", rr.body);
                    if (x[j].type != JM_NUMBER) continue;
                    char want[64];
                    snprintf(want, sizeof want, "%.*g", digits, x[j].number);
                    cr_expect_eq(y[j].number, strtod(want, NULL), "%s: %.17g rounds to %s", round_t,
                                 x[j].number, want);
                }
            }
        }
        jm_free(ve);
        jm_free(vr);
        reply_free(&re);
        reply_free(&rr);
    }
    ag_free(h);
    /* Bounded and validated. */
    static const struct {
        const char *target;
        int status;
    } bad[] = {
        {"/api/heatmap?run=" RUN "&buckets=0", 400},
        {"/api/heatmap?run=" RUN "&buckets=2001", 400},
        {"/api/heatmap?run=" RUN "&buckets=99999999999999999999999", 400},
        {"/api/heatmap?run=" RUN "&buckets=-3", 400},
        {"/api/heatmap?run=" RUN "&tensor=w", 400},
        {"/api/heatmap?run=" RUN "&digits=0", 400},
        {"/api/heatmap?run=" RUN "&digits=18", 400},
        {"/api/heatmap?run=" RUN "&digits=x", 400},
        {"/api/heatmap?buckets=3", 400},
        {"/api/heatmap?run=nope", 404},
        {"/api/heatmap?run=" RUN "&format=NOPE", 404},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        reply r = http_get(port, bad[i].target);
        cr_expect_eq(r.status, bad[i].status, "%s: %s", bad[i].target, r.raw);
        reply_free(&r);
    }
    ag_client_close(c);
}

Test(http, the_page_is_one_self_contained_html_document) {
    harness_start(&H, HTTP_ON);
    int port = harness_http_port(&H);
    reply r = http_get(port, "/");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.raw, "Content-Type: text/html; charset=utf-8\r\n"));
    cr_assert(strstr(r.raw, "Content-Security-Policy: default-src 'none'"));
    cr_assert(strstr(r.body, "<!DOCTYPE html>"));
    cr_assert(strstr(r.body, "</html>"));
    cr_assert(strstr(r.body, "/api/"));
    cr_assert_null(strstr(r.body, "src=\"http"), "no external resources");
    cr_assert_null(strstr(r.body, "href=\"http"), "no external resources");
    char cl[64];
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen(r.body));
    cr_assert(strstr(r.raw, cl));
    reply_free(&r);
    /* HEAD: the same head, no body */
    const char head[] = "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    r = http_raw(port, head, sizeof head - 1);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.raw, cl));
    cr_assert_str_eq(r.body, "");
    reply_free(&r);
}

/* The value of the sample whose line starts with prefix, or NAN. */
static double sample(const char *text, const char *prefix) {
    const char *p = text;
    while ((p = strstr(p, prefix))) {
        if (p == text || p[-1] == '\n') return strtod(p + strlen(prefix), NULL);
        p++;
    }
    return NAN;
}

Test(http, metrics_parse_as_exposition_format_with_the_right_values) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    /* counts of tensor d: flips counted in E5M2, not in E3M4 */
    const char *names[1] = {"d"}, *fmts[2] = {"E5M2", "E3M4"};
    uint64_t numel[1] = {10}, nonfinite[1] = {0}, counts[10] = {1, 2, 0, 0, 0, 1, 2, 0, 0, 0};
    double amax[1] = {1};
    float scales[2] = {1, 1};
    int64_t flips[2] = {4, -1};
    ag_counts_batch b = {.step = 1,
                         .form = AG_FORM_UPDATE,
                         .ntensors = 1,
                         .nformats = 2,
                         .tensors = names,
                         .formats = fmts,
                         .numel = numel,
                         .amax = amax,
                         .nonfinite = nonfinite,
                         .scales = scales,
                         .counts = counts,
                         .flips = flips};
    cr_assert_eq(ag_client_log_counts(c, &b), AG_OK);
    ag_free(harness_wait_history(c, RUN, "d", "E3M4", 1));
    int port = harness_http_port(&H);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    ag_client_stats cs = {0};
    cr_assert_eq(ag_client_get_stats(c, &cs), AG_OK);
    ag_history_query q = {.run = RUN, .tensor = "w", .format = "E3M4"};
    ag_history *h = NULL;
    cr_assert_eq(ag_client_history(c, &q, &h), AG_OK);
    reply r = http_get(port, "/metrics");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.raw, "Content-Type: text/plain; version=0.0.4"));

    /* Every sample line: name[{labels}] value, its family TYPEd before. */
    char *text = strdup(r.body), *save = NULL;
    char typed[64][64];
    size_t ntyped = 0, samples = 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0) continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[64], type[16];
            cr_assert_eq(sscanf(line + 7, "%63s %15s", name, type), 2);
            cr_assert(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0);
            if (strcmp(type, "counter") == 0)
                cr_assert(strstr(name, "_total") != NULL, "counter %s", name);
            cr_assert_lt(ntyped, 64);
            strcpy(typed[ntyped++], name);
            continue;
        }
        cr_assert_neq(line[0], '#', "stray comment %s", line);
        size_t nl = strcspn(line, "{ ");
        int known = 0;
        for (size_t i = 0; i < ntyped; i++)
            known |= strlen(typed[i]) == nl && strncmp(typed[i], line, nl) == 0;
        cr_assert(known, "sample before its TYPE: %s", line);
        const char *val = strrchr(line, ' ');
        cr_assert_not_null(val);
        char *end;
        strtod(val + 1, &end);
        cr_assert(*end == '\0' || strcmp(val + 1, "NaN") == 0, "bad value in %s", line);
        samples++;
    }
    free(text);
    cr_assert_gt(samples, 10);
    /* counters are at least what the client saw before the scrape */
    cr_assert_geq(sample(r.body, "altgrad_messages_total "), (double)st->messages);
    cr_assert_eq(sample(r.body, "altgrad_runs "), 1.0);
    cr_assert_eq(sample(r.body, "altgrad_rejected_total "), 0.0);
    cr_assert_eq(sample(r.body, "altgrad_metrics_tensors "), 3.0);
    cr_assert_eq(sample(r.body, "altgrad_store_degraded "), 0.0);
    cr_assert_eq(sample(r.body, "altgrad_rows_discarded_total "), 0.0);
    /* The client's segment, passed at connect: its snapshots' arrays were read there. */
    cr_assert_gt(cs.shm_snapshots, 0);
    cr_assert_eq(sample(r.body, "altgrad_shm_snapshots_total "), (double)cs.shm_snapshots);
    cr_assert_eq(sample(r.body, "altgrad_shm_segments "), 1.0);
    cr_assert_eq(sample(r.body, "altgrad_shm_segments_passed "), 1.0);
    cr_assert_eq(sample(r.body, "altgrad_shm_refused_total "), 0.0);
    /* the pool evaluated every snapshot of w, is idle, and its memory adds up */
    cr_assert_eq(sample(r.body, "altgrad_snapshots_evaluated_total "), (double)STEPS);
    cr_assert_eq(sample(r.body, "altgrad_snapshots_in_flight "), 0.0);
    cr_assert_geq(sample(r.body, "altgrad_pool_threads "), 1.0);
    double pipelined = sample(r.body, "altgrad_snapshots_pipelined_total ");
    cr_assert(pipelined >= 0 && pipelined < STEPS, "pipelined %g", pipelined);
    cr_assert_geq(sample(r.body, "altgrad_snapshot_waits_total "), 0.0);
    double state = sample(r.body, "altgrad_engine_state_bytes "),
           spare = sample(r.body, "altgrad_engine_spare_bytes "),
           budget = sample(r.body, "altgrad_engine_budget_bytes ");
    /* tensor w's baselines at least: 4 bytes of weights and a byte per format an element */
    cr_assert_geq(state, (double)N * 5, "state %g", state);
    cr_assert_eq(sample(r.body, "altgrad_engine_inflight_bytes "), 0.0);
    cr_assert_leq(state + spare, budget);
    /* --state-budget's default 4096 MiB, of which the engine has three quarters */
    cr_assert_eq(budget, (double)(3072ull << 20));
    double commits = sample(r.body, "altgrad_writer_commits_total ");
    cr_assert_geq(commits, 1.0);
    cr_assert_leq(sample(r.body, "altgrad_writer_commits_hurried_total "), commits);
    double rate =
        sample(r.body, "altgrad_stall_rate{run=\"" RUN "\",tensor=\"w\",format=\"E3M4\"} ");
    cr_assert_eq(rate, h->points[h->n - 1].stall_rate);
    double scale = sample(r.body, "altgrad_scale{run=\"" RUN "\",tensor=\"w\",format=\"E3M4\"} ");
    cr_assert_eq(scale, h->points[h->n - 1].scale);
    double flips_w = sample(r.body, "altgrad_flips{run=\"" RUN "\",tensor=\"w\",format=\"E3M4\"} ");
    cr_assert_eq(flips_w, (double)h->points[h->n - 1].flips);
    cr_assert_eq(sample(r.body, "altgrad_flips{run=\"" RUN "\",tensor=\"d\",format=\"E5M2\"} "),
                 4.0);
    cr_assert(isnan(sample(r.body, "altgrad_flips{run=\"" RUN "\",tensor=\"d\",format=\"E3M4\"} ")),
              "unknown flips have no sample, never 0");
    reply_free(&r);
    ag_free(h);
    ag_free(st);
    ag_client_close(c);
}

Test(http, label_values_are_escaped_per_the_exposition_format) {
    harness_start(&H, HTTP_ON);
    ag_client *c = harness_client(&H, "q\"uo\\te\nrun", AG_QUEUE_BLOCK);
    float w[4] = {1, 2, 3, 4}, g[4] = {1e-3f, 1e-3f, 1e-3f, 1e-3f};
    cr_assert_eq(ag_client_log_sgd(c, 1, "t", w, g, 4, 0.1f), AG_OK);
    ag_free(harness_wait_history(c, "q\"uo\\te\nrun", "t", "E5M2", 1));
    reply r = http_get(harness_http_port(&H), "/metrics");
    cr_assert(strstr(r.body, "run=\"q\\\"uo\\\\te\\nrun\",tensor=\"t\""), "%s", r.body);
    reply_free(&r);
    ag_client_close(c);
}

Test(http, hostile_requests_get_the_right_status_and_the_daemon_keeps_serving) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    int port = harness_http_port(&H);
    static char big[10000];
    reply r;

    memset(big, 'a', sizeof big);
    memcpy(big, "GET / HTTP/1.1\r\nX-Big: ", 23);
    r = http_raw(port, big, sizeof big);
    cr_expect_eq(r.status, 431, "%s", r.raw);
    reply_free(&r);
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    r = http_raw(port, big, sizeof big);
    cr_expect_eq(r.status, 414, "%s", r.raw);
    reply_free(&r);

    /* The head is read and refused by nng (the body is then nng's HTML error
     * page), the rest by us (a JSON error). */
#define CLOSE "Host: x\r\nConnection: close\r\n\r\n"
    static char headers[4096];
    size_t hn = (size_t)snprintf(headers, sizeof headers, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 70; i++)
        hn += (size_t)snprintf(headers + hn, sizeof headers - hn, "A: b\r\n");
    snprintf(headers + hn, sizeof headers - hn, "\r\n");
    struct {
        const char *req;
        size_t len;
        int status, ours;
    } cases[] = {
        {"\x01\x02\xff garbage\r\n\r\n", 0, 400, 0},
        {"GET / HTTP/1.1\r\n\r\n", 0, 400, 0}, /* no Host */
        {"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 0, 400, 0},
        {"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 0, 400, 0},
        {headers, 0, 431, 0}, /* 70 header lines */
        {"GET / HTTP/3.0\r\n\r\n", 0, 505, 0},
        {"GET /\0 HTTP/1.1\r\n\r\n", 19, 400, 0},
        {"POST /api/runs HTTP/1.1\r\nContent-Length: 0\r\n" CLOSE, 0, 405, 1},
        {"DELETE / HTTP/1.1\r\n" CLOSE, 0, 405, 1},
        {"GET http://x/api/runs HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /a%zz HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/tensors?run=%zz HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/tensors?run=%00 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/tensors?run=nope HTTP/1.1\r\n" CLOSE, 0, 404, 1},
        {"GET /api/history?run=" RUN "&tensor=nope HTTP/1.1\r\n" CLOSE, 0, 404, 1},
        {"GET /api/history?run=" RUN "&tensor=w&format=NOPE HTTP/1.1\r\n" CLOSE, 0, 404, 1},
        {"GET /api/history?run=" RUN "&tensor=w&format=E5+M2 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/history?run=" RUN "&tensor=w&from=-1 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/history?run=" RUN "&tensor=w&from=5&to=2 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/history?run=" RUN " HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/top?run=" RUN "&limit=1e3 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /api/runs?x=1 HTTP/1.1\r\n" CLOSE, 0, 400, 1},
        {"GET /nope HTTP/1.1\r\n" CLOSE, 0, 404, 1},
    };
#undef CLOSE
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].req);
        r = http_raw(port, cases[i].req, len);
        cr_expect_eq(r.status, cases[i].status, "case %zu: %s", i, r.raw);
        if (r.status == 405) cr_expect(strstr(r.raw, "Allow: GET, HEAD\r\n"));
        if (cases[i].ours) {
            jm_value *v = jm_parse(r.body);
            cr_expect(v && jm_get(v, "error") && jm_get(v, "error")->type == JM_STRING,
                      "case %zu: error body %s", i, r.body);
            jm_free(v);
        }
        reply_free(&r);
    }
    /* A body nng refuses is not read as the next request: one answer, closed. */
    static const char smuggle[] = "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\n"
                                  "GET /api/runs HTTP/1.1\r\nHost: x\r\n\r\n";
    r = http_raw(port, smuggle, sizeof smuggle - 1);
    cr_expect_eq(r.status, 400, "%s", r.raw);
    cr_expect_null(strstr(r.raw + 1, "HTTP/1.1 "), "a second answer: %s", r.raw);
    reply_free(&r);
    /* a client that connects and says nothing, then goes */
    close(connect_to(port));

    /* 100 idle connections: the first 64 are held, the rest closed at once. */
    int fds[100], closed = 0;
    for (int i = 0; i < 100; i++) fds[i] = connect_to(port);
    for (int i = 0; i < 100; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        char b;
        if (poll(&p, 1, i < 64 ? 0 : 10000) == 1 && recv(fds[i], &b, 1, 0) <= 0) closed++;
    }
    cr_expect_geq(closed, 30, "only %d of 100 idle connections were refused", closed);
    for (int i = 0; i < 100; i++) close(fds[i]);

    /* ingest and queries still work */
    float w[N], g[N];
    for (int i = 0; i < N; i++) {
        w[i] = sinf((float)i);
        g[i] = 1e-3f;
    }
    cr_assert_eq(ag_client_log_sgd(c, STEPS + 1, "w", w, g, N, 0.01f), AG_OK);
    ag_free(harness_wait_history(c, RUN, "w", "E5M2", STEPS + 1));
    /* and HTTP once the server has seen our idle connections go */
    for (int tries = 0;; tries++) {
        r = http_get(port, "/api/tensors?run=" RUN);
        if (r.status == 200 || tries == 200) break;
        reply_free(&r);
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(r.status, 200);
    reply_free(&r);
    ag_client_close(c);
    cr_assert_eq(harness_stop(&H, SIGTERM), 0);
}

/* Read one response from fd: its head (a byte at a time, so nothing of a
 * pipelined next answer is taken), then Content-Length bytes of body (none
 * for a HEAD). The connection stays as the server leaves it. */
static reply read_response(int fd, int head_only) {
    reply r = {0};
    size_t cap = 1 << 16, got = 0, want = 0;
    r.raw = malloc(cap);
    for (;;) {
        r.raw[got] = '\0';
        const char *end = strstr(r.raw, "\r\n\r\n");
        if (end && !want) {
            const char *cl = strstr(r.raw, "Content-Length: ");
            cr_assert(cl && cl < end, "no Content-Length: %s", r.raw);
            want = (size_t)(end + 4 - r.raw) + (head_only ? 0 : strtoul(cl + 16, NULL, 10));
        }
        if (want && got >= want) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 30000), 1, "no answer within 30 s");
        while (got + 1 >= cap || (want && want + 1 >= cap)) r.raw = realloc(r.raw, cap *= 2);
        ssize_t n = recv(fd, r.raw + got, want ? want - got : 1, 0);
        cr_assert_gt(n, 0, "the server closed mid-answer: %s", r.raw);
        got += (size_t)n;
    }
    r.raw[got] = '\0';
    if (strncmp(r.raw, "HTTP/1.1 ", 9) == 0) r.status = atoi(r.raw + 9);
    r.body = strstr(r.raw, "\r\n\r\n") + 4;
    return r;
}

static void send_all(int fd, const char *text) {
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        off += (size_t)n;
    }
}

/* HTTP/1.1 keeps the connection: one socket carries several requests, asked
 * one after the other and pipelined, until the client says close. */
Test(http, one_connection_carries_several_requests) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    int port = harness_http_port(&H), fd = connect_to(port);
    send_all(fd, "GET /api/runs HTTP/1.1\r\nHost: x\r\n\r\n");
    reply r = read_response(fd, 0);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert(strstr(r.body, RUN), "%s", r.body);
    cr_assert_null(strstr(r.raw, "Connection: close"), "%s", r.raw);
    reply_free(&r);
    send_all(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd, 0);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert(strstr(r.body, "altgrad_messages_total "), "%s", r.body);
    reply_free(&r);
    /* three at once, a refused one among them: each answered in order */
    send_all(fd, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /api/tensors?run=" RUN " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    r = read_response(fd, 1);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert(strstr(r.raw, "Content-Type: text/html"), "%s", r.raw);
    reply_free(&r);
    r = read_response(fd, 0);
    cr_assert_eq(r.status, 404, "%s", r.raw);
    reply_free(&r);
    r = read_response(fd, 0);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert(strstr(r.body, "\"w\""), "%s", r.body);
    cr_assert(strstr(r.raw, "Connection: close\r\n"), "%s", r.raw);
    reply_free(&r);
    char b;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 30000), 1);
    cr_assert_eq(recv(fd, &b, 1, 0), 0, "closed after the request that asked");
    close(fd);
    /* HTTP/1.0 gets one answer and the connection closed */
    r = http_raw(port, "GET /api/runs HTTP/1.0\r\n\r\n", 27);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    reply_free(&r);
    ag_client_close(c);
}

/* curl, asked for two URLs of the daemon, reuses its one connection. The
 * daemon holds no run yet: /metrics answers with no per-tensor series (under
 * UBSan it once died there, sorting an empty run list). */
Test(http, curl_reuses_one_connection_for_two_requests) {
    harness_start(&H, HTTP_ON);
    int port = harness_http_port(&H);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -sS -v --max-time 30 -o /dev/null -o /dev/null "
             "http://127.0.0.1:%d/api/status http://127.0.0.1:%d/metrics 2>&1",
             port, port);
    FILE *pp = popen(cmd, "r");
    cr_assert_not_null(pp);
    static char out[1 << 16];
    size_t n = fread(out, 1, sizeof out - 1, pp);
    out[n] = '\0';
    cr_assert_eq(pclose(pp), 0, "curl failed (is it installed?): %s", out);
    cr_assert(strstr(out, "Re-using existing connection"), "%s", out);
    const char *first = strstr(out, "< HTTP/1.1 200");
    cr_assert(first && strstr(first + 1, "< HTTP/1.1 200"), "two answers: %s", out);
    int connects = 0;
    for (const char *p = out; (p = strstr(p, "* Connected to ")); p++) connects++;
    cr_assert_eq(connects, 1, "one TCP connection: %s", out);
}

Test(http, a_busy_port_is_one_warning_and_the_daemon_goes_on) {
    harness_start(&H, HTTP_ON);
    int port = harness_http_port(&H);
    ag_harness second;
    harness_init(&second);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    const char *const extra[] = {"--http", addr, NULL};
    harness_start(&second, extra);
    FILE *f = fopen(second.log, "r");
    char buf[4096] = "";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_expect(strstr(buf, "going on without HTTP"), "%s", buf);
    ag_client *c = harness_client(&second, "x", AG_QUEUE_BLOCK);
    ag_status *st = NULL;
    cr_expect_eq(ag_client_status(c, &st), AG_OK);
    ag_free(st);
    ag_client_close(c);
    cr_expect_eq(harness_stop(&second, SIGTERM), 0);
    harness_fini(&second);
}

Test(http, http_off_serves_nothing_and_bad_values_exit_2) {
    const char *const off[] = {"--http", "off", NULL};
    harness_start(&H, off);
    FILE *f = fopen(H.log, "r");
    char buf[4096] = "";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_expect_null(strstr(buf, "http:"), "%s", buf);
    harness_stop(&H, SIGTERM);
    const char *bad[] = {"127.0.0.1", "localhost:80", "127.0.0.1:65536",
                         "[::1:80",   "1.2.3.4:-1",   "127.0.0.1:8x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[512];
        const char *b = getenv("AG_BUILD_DIR");
        snprintf(cmd, sizeof cmd, "%s/daemon/altgradd --http '%s' --db %s/x.db 2>/dev/null",
                 b ? b : ".", bad[i], H.dir);
        int st = system(cmd);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "--http %s: status %d", bad[i], st);
    }
}

/* Every public query of proto/queries.h, walked from the list itself: a
 * query added there is served at /api/<name> with the bytes the CLI's
 * command of the same name prints, with no edit here. */
Test(http, every_public_query_is_an_endpoint_and_a_command_alike) {
    harness_start(&H, HTTP_ON);
    ag_client *c;
    feed(&c);
    int port = harness_http_port(&H);
    size_t seen = 0;
    for (size_t i = 0; ag_query_at(i); i++) {
        const ag_query_def *q = ag_query_at(i);
        if (!(q->flags & AG_Q_PUBLIC)) continue;
        char target[256], cli[256];
        size_t n, tl, cl;
        const ag_field *p = ag_query_params(q->q, &n);
        tl = (size_t)snprintf(target, sizeof target, "/api/%s", q->name);
        cl = (size_t)snprintf(cli, sizeof cli, "%s", q->name);
        for (size_t k = 0; k < n; k++) {
            if (!p[k].doc || !(p[k].flags & F_REQ)) continue;
            const char *v = strcmp(p[k].doc, "run") == 0 ? RUN : "w";
            tl += (size_t)snprintf(target + tl, sizeof target - tl, "%c%s=%s",
                                   strchr(target, '?') ? '&' : '?', p[k].doc, v);
            cl += (size_t)snprintf(cli + cl, sizeof cli - cl, " %s", v);
        }
        for (int tries = 0;; tries++) {
            reply r = http_get(port, target);
            cr_assert_eq(r.status, 200, "%s: %s", target, r.raw);
            char *want = cli_json(cli);
            /* status's live counters and address differ by design */
            int same = (q->flags & AG_Q_LIVE) || strcmp(r.body, want) == 0;
            if (!same && tries < 100) { /* rows still being committed */
                reply_free(&r);
                free(want);
                struct timespec ts = {0, 50 * 1000000};
                nanosleep(&ts, NULL);
                continue;
            }
            cr_assert(same, "%s: %s\nCLI %s: %s", target, r.body, cli, want);
            reply_free(&r);
            free(want);
            break;
        }
        seen++;
    }
    cr_assert_geq(seen, 6, "runs, tensors, history, scales, top, status at least");
    reply r = http_get(port, "/api/delivery?cid=1");
    cr_assert_eq(r.status, 404, "an internal query is no endpoint");
    reply_free(&r);
    ag_client_close(c);
}
