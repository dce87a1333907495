/*
 * test_cli_sources.c - one truth: every command of the altgrad CLI, with
 * every option form and output mode, prints byte for byte the same through
 * the daemon (client/cli/source.c's ag_client back end) as from the database
 * file (--db, the store back end). The daemon runs a non-default format
 * configuration (--define-format E4M3, --formats E5M2,E4M3,E3M4) on a file
 * an earlier daemon with the default formats already wrote a run into, so
 * the file knows formats the daemon does not evaluate, in another order.
 * The daemon-mode answers are taken once the trainer's run is committed;
 * the --db answers after the daemon stopped (SIGTERM commits everything).
 * status differs only in its documented fields (docs/cli.md): source and
 * address name where the answer came from; uptime_s, queue_depth and store are live;
 * rows_written grows at the stop by the flip baselines then written.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_proc.h"
#include "json_mini.h"

static cli_env E;

static void setup(void) { cli_env_init(&E); }

static void teardown(void) { cli_env_fini(&E); }

TestSuite(cli_sources, .init = setup, .fini = teardown, .timeout = 300);

#define ARGS_MAX 16

/* One command line after the source option (words up to NULL), and whether
 * it must fail (exit 1, one line on stderr) or succeed. */
typedef struct command {
    int fails;
    const char *words[ARGS_MAX];
} command;

/* Every command with each of its option forms (spelled both ways). */
static const command commands[] = {
    {0, {"status"}},
    {0, {"runs"}},
    {0, {"tensors", "t1"}},
    {0, {"tensors", "warm"}},
    {0, {"history", "t1", "fc1.weight"}},
    {0, {"history", "t1", "fc2.weight", "--format", "E4M3"}},
    {0, {"history", "t1", "fc1.weight", "--format=E3M4", "--every", "4"}},
    {0, {"history", "t1", "fc3.weight", "--from", "3", "--to", "9"}},
    {0, {"history", "t1", "fc1.bias", "--format", "E4M3", "--from=2", "--to", "11", "--every=3"}},
    {0, {"history", "t1", "fc2.bias", "--every", "0", "--to", "0"}},
    {0, {"history", "warm", "fc1.weight", "--format", "E0M7"}},
    {0, {"history", "t1", "fc1.out"}}, /* statistics only: no points */
    {0, {"scales", "t1"}},
    {0, {"scales", "t1", "--format", "E4M3"}},
    {0, {"scales", "warm", "--format", "E7M0"}},
    {0, {"top", "t1"}},
    {0, {"top", "t1", "--format", "E4M3", "--window", "5"}},
    {0, {"top", "t1", "--format", "E3M4", "--limit", "2"}},
    {0, {"top", "t1", "--window=3", "--limit=4"}},
    {0, {"top", "warm", "--window", "0", "--limit", "0"}},
    {0, {"report", "t1"}},
    {0, {"report", "t1", "--format", "E4M3,E5M2"}},
    {0, {"report", "t1", "--width", "5"}},
    {0, {"report", "warm"}},
    {0, {"report", "warm", "--format", "E1M6", "--width=3"}},
    /* failures print one line on stderr and exit 1, the same from both */
    {1, {"tensors", "nope"}},
    {1, {"history", "t1", "nope.weight"}},
    {1, {"history", "t1", "fc1.weight", "--format", "E2M5"}},
    {1, {"scales", "t1", "--format", "NOPE"}},
    {1, {"top", "nope"}},
    {1, {"report", "nope"}},
    {1, {"report", "t1", "--format", "E5M2,NOPE"}},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const char *const modes[] = {NULL, "--json", "--csv"};
#define NMODES 3

typedef struct answer {
    int code;
    char *out, *err;
} answer;

static void describe(const command *c, const char *mode, char *buf, size_t cap) {
    size_t len = 0, i;
    buf[0] = '\0';
    for (i = 0; c->words[i] != NULL && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s ", c->words[i]);
    if (len < cap) snprintf(buf + len, cap - len, "%s", mode ? mode : "(table)");
}

static answer ask(const char *source_flag, const char *source, const command *c, const char *mode) {
    char *argv[ARGS_MAX + 6];
    size_t n = 0, i;
    answer a;
    argv[n++] = E.cli;
    argv[n++] = (char *)source_flag;
    argv[n++] = (char *)source;
    if (mode != NULL) argv[n++] = (char *)mode;
    for (i = 0; c->words[i] != NULL; i++) argv[n++] = (char *)c->words[i];
    argv[n] = NULL;
    a.code = cli_run(&E, argv, &a.out, &a.err);
    return a;
}

/* The value of key in the flat JSON object text ("" when absent); in buf. */
static const char *json_field(const char *doc, const char *key, char *buf, size_t cap) {
    jm_value *v = jm_parse(doc);
    const jm_value *f = v ? jm_get(v, key) : NULL;
    buf[0] = '\0';
    if (f != NULL && f->type == JM_STRING)
        snprintf(buf, cap, "%s", f->string);
    else if (f != NULL && f->type == JM_NUMBER)
        snprintf(buf, cap, "%.17g", f->number);
    jm_free(v);
    return buf;
}

/* The status fields that may differ between the two sources (docs/cli.md). */
static int is_source_dependent(const char *key, size_t len) {
    /* rows_written: the daemon writes its flip baselines when it stops
     * (docs/daemon.md), after the daemon-mode answers were taken. caps: what
     * a running daemon can take (a file has none); shm_*: its clients'
     * shared memory since it started (a file has none). */
    static const char *const keys[] = {"source",     "address",       "uptime_s",   "queue_depth",
                                       "store",      "rows_written",  "caps",       "shm_segments",
                                       "shm_passed", "shm_snapshots", "shm_refused"};
    size_t i;
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strlen(keys[i]) == len && strncmp(keys[i], key, len) == 0) return 1;
    return 0;
}

/* Appends text[0..len) to the growing string *s. */
static void put(char **s, size_t *len, const char *text, size_t n) {
    char *g = realloc(*s, *len + n + 1);
    cr_assert_not_null(g);
    memcpy(g + *len, text, n);
    *len += n;
    g[*len] = '\0';
    *s = g;
}

/* The end of the field (CSV) or member value (JSON) starting at p: the next
 * top-level comma, closing brace or line end, quotes respected. */
static const char *field_end(const char *p, int json) {
    int quoted = 0;
    for (; *p != '\0'; p++) {
        if (quoted) {
            if (json && *p == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                quoted = 0;
            continue;
        }
        if (*p == '"')
            quoted = 1;
        else if (*p == ',' || *p == '\n' || (json && *p == '}'))
            break;
    }
    return p;
}

/*
 * status with its source-dependent fields replaced by "*", in whichever mode
 * it was printed: "key: value" lines (table), {"key":value,...} (JSON), or a
 * header line and one row (CSV). Everything else is kept byte for byte.
 */
static char *normalise_status(const char *text, const char *mode) {
    char *s = NULL;
    size_t len = 0;
    put(&s, &len, "", 0);
    if (mode == NULL) {
        const char *line = text;
        while (*line != '\0') {
            const char *nl = strchr(line, '\n'), *colon = strchr(line, ':');
            size_t n = nl ? (size_t)(nl - line) + 1 : strlen(line);
            if (colon != NULL && colon < line + n &&
                is_source_dependent(line, (size_t)(colon - line))) {
                put(&s, &len, line, (size_t)(colon - line) + 1);
                put(&s, &len, " *\n", 3);
            } else {
                put(&s, &len, line, n);
            }
            line += n;
        }
    } else if (strcmp(mode, "--json") == 0) {
        const char *p = text;
        cr_assert_eq(*p, '{', "status --json: %s", text);
        put(&s, &len, p++, 1);
        while (*p == '"') {
            const char *key = p + 1, *kend = strchr(key, '"'), *vend;
            cr_assert(kend != NULL && kend[1] == ':', "status --json: %s", text);
            vend = field_end(kend + 2, 1);
            put(&s, &len, p, (size_t)(kend + 2 - p));
            if (is_source_dependent(key, (size_t)(kend - key)))
                put(&s, &len, "*", 1);
            else
                put(&s, &len, kend + 2, (size_t)(vend - kend - 2));
            if (*vend == ',') put(&s, &len, vend++, 1);
            p = vend;
        }
        put(&s, &len, p, strlen(p));
    } else {
        const char *header = text, *row = strchr(text, '\n'), *h, *r;
        cr_assert_not_null(row, "status --csv: %s", text);
        row++;
        put(&s, &len, header, (size_t)(row - header));
        for (h = header, r = row; *r != '\0' && *r != '\n';) {
            const char *hend = field_end(h, 0), *rend = field_end(r, 0);
            if (is_source_dependent(h, (size_t)(hend - h)))
                put(&s, &len, "*", 1);
            else
                put(&s, &len, r, (size_t)(rend - r));
            if (*rend == ',') put(&s, &len, rend, 1);
            h = *hend == ',' ? hend + 1 : hend;
            r = *rend == ',' ? rend + 1 : rend;
        }
        put(&s, &len, r, strlen(r));
    }
    return s;
}

/* Runs the demo trainer as run (steps steps) against the daemon and waits
 * until the daemon has committed its end: run_end is the trainer's last
 * message and its commit holds every row before it, so the file is then
 * complete for that run. */
static void train(const char *run, const char *steps) {
    char *argv[] = {E.trainer, "--ingest",  E.ingest,  "--query",     E.query,
                    "--run",   (char *)run, "--steps", (char *)steps, "--hidden",
                    "8",       "--batch",   "16",      NULL};
    char *runs[] = {E.cli, "--query", E.query, "--json", "runs", NULL};
    char *out, *err;
    int code = cli_run(&E, argv, &out, &err), i;
    cr_assert_eq(code, 0, "trainer failed: %s", err);
    free(out);
    free(err);
    for (i = 0; i < CLI_POLL_TRIES; i++) {
        jm_value *doc;
        const jm_value *list;
        size_t k;
        int ended = 0;
        code = cli_run(&E, runs, &out, &err);
        cr_assert_eq(code, 0, "runs: %s", err);
        doc = jm_parse(out);
        cr_assert_not_null(doc, "runs --json: %s", out);
        list = jm_get(doc, "runs");
        for (k = 0; list != NULL && k < list->n; k++) {
            const jm_value *r = &list->items[k];
            if (strcmp(jm_get(r, "name")->string, run) == 0)
                ended = jm_get(r, "ended_ms")->number != 0;
        }
        jm_free(doc);
        free(out);
        free(err);
        if (ended) return;
        cli_pause();
    }
    cr_assert_fail("run %s never ended in the database", run);
}

Test(cli_sources, every_command_prints_the_same_through_the_daemon_and_from_the_file) {
    const char *const configured[] = {"--define-format", "E4M3=4,3,7,nan", "--formats",
                                      "E5M2,E4M3,E3M4", NULL};
    static answer via_daemon[NCOMMANDS][NMODES];
    char what[256], buf[256];
    size_t c, m;

    /* An earlier daemon with the default formats leaves run "warm" behind. */
    cli_start_daemon(&E, NULL);
    train("warm", "3");
    cr_assert_eq(cli_stop_daemon(&E), 0, "altgradd did not exit cleanly on SIGTERM");

    cli_start_daemon(&E, configured);
    train("t1", "12");
    for (c = 0; c < NCOMMANDS; c++)
        for (m = 0; m < NMODES; m++)
            via_daemon[c][m] = ask("--query", E.query, &commands[c], modes[m]);
    cr_assert_eq(cli_stop_daemon(&E), 0, "altgradd did not exit cleanly on SIGTERM");

    for (c = 0; c < NCOMMANDS; c++)
        for (m = 0; m < NMODES; m++) {
            answer d = via_daemon[c][m], f = ask("--db", E.db, &commands[c], modes[m]);
            describe(&commands[c], modes[m], what, sizeof what);
            cr_assert_eq(d.code, f.code, "%s: exit %d through the daemon, %d from the file (%s%s)",
                         what, d.code, f.code, d.err, f.err);
            cr_assert_str_eq(d.err, f.err, "%s: stderr differs", what);
            if (commands[c].fails) {
                cr_assert_eq(d.code, 1, "%s: exit %d", what, d.code);
                cli_assert_one_error_line(d.err);
            } else {
                cr_assert_eq(d.code, 0, "%s: exit %d: %s", what, d.code, d.err);
                cr_assert_str_eq(d.err, "", "%s: stderr %s", what, d.err);
                cr_assert_neq(d.out[0], '\0', "%s printed nothing", what);
            }
            if (strcmp(commands[c].words[0], "status") == 0) {
                char *nd = normalise_status(d.out, modes[m]);
                char *nf = normalise_status(f.out, modes[m]);
                cr_assert_str_eq(nd, nf,
                                 "%s differs beyond source, address, uptime_s, store, "
                                 "queue_depth and caps:\n--- daemon\n%s--- file\n%s",
                                 what, d.out, f.out);
                free(nd);
                free(nf);
            } else {
                cr_assert_str_eq(d.out, f.out, "%s differs:\n--- daemon\n%s--- file\n%s", what,
                                 d.out, f.out);
            }
            free(f.out);
            free(f.err);
        }

    /* What the comparison rests on: the daemon's configuration, recorded in
     * the file, and non-trivial answers. */
    {
        answer s = via_daemon[0][1];
        cr_assert_str_eq(json_field(s.out, "formats", buf, sizeof buf), "E5M2,E4M3,E3M4");
        cr_assert_str_eq(json_field(s.out, "source", buf, sizeof buf), "daemon");
        cr_assert_neq(atof(json_field(s.out, "rows_written", buf, sizeof buf)), 0.0,
                      "rows_written: %s", s.out);
        cr_assert_eq(atof(json_field(s.out, "runs", buf, sizeof buf)), 2.0);
    }
    {
        /* report t1 --json: 6 weight tensors x the 3 configured formats */
        const answer *r = &via_daemon[20][1];
        cr_assert_str_eq(commands[20].words[0], "report");
        cr_assert_null(commands[20].words[2]);
        jm_value *doc = jm_parse(r->out);
        const jm_value *rows = doc ? jm_get(doc, "rows") : NULL;
        cr_assert_not_null(rows, "report --json: %s", r->out);
        cr_assert_eq(rows->n, 18, "report rows: %s", r->out);
        cr_assert_str_eq(jm_get(&rows->items[0], "format")->string, "E5M2");
        cr_assert_str_eq(jm_get(&rows->items[1], "format")->string, "E4M3");
        cr_assert_str_eq(jm_get(&rows->items[2], "format")->string, "E3M4");
        jm_free(doc);
    }
    for (c = 0; c < NCOMMANDS; c++)
        for (m = 0; m < NMODES; m++) {
            free(via_daemon[c][m].out);
            free(via_daemon[c][m].err);
        }
}
