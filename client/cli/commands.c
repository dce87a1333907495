/*
 * commands.c - the altgrad CLI's query commands: status, runs, tensors,
 * history, scales, top. Each asks its source for one altgrad.h result and
 * lays it out with present/json_layout.c, the layouts the daemon's HTTP API
 * uses, so JSON, CSV, the table and GET /api/... share their keys;
 * ag_cli_execute renders the document in the mode asked for.
 */
#define _POSIX_C_SOURCE 200809L
#include "commands.h"

#include <stdio.h>
#include <string.h>

#include "output.h"

#define DEFAULT_FORMAT AG_DEFAULT_FORMAT

/*
 * One query command: fetches its result into *result (freed by the caller
 * with ag_free, also on failure) and lays it out into d. On failure returns
 * an ag_err and leaves one line in err.
 */
typedef int (*command_fn)(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                          char *err, size_t cap);

/* The tail of every command: rc from a layout function, explained. */
static int laid_out(int rc, char *err, size_t cap) {
    if (rc != AG_OK) snprintf(err, cap, "cannot lay out the result: %s", ag_strerror(rc));
    return rc;
}

static int cmd_status(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                      char *err, size_t cap) {
    ag_status *s = NULL;
    int rc = ag_cli_source_status(src, &s);
    (void)a;
    *result = s;
    if (rc != AG_OK) return ag_cli_source_explain(src, rc, err, cap, NULL);
    return laid_out(ag_doc_status(d, s, src->store ? "database" : "daemon", src->where), err, cap);
}

static int cmd_runs(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                    char *err, size_t cap) {
    ag_run_list *l = NULL;
    int rc = ag_cli_source_runs(src, &l);
    (void)a;
    *result = l;
    if (rc != AG_OK) return ag_cli_source_explain(src, rc, err, cap, NULL);
    return laid_out(ag_doc_runs(d, l), err, cap);
}

static int cmd_tensors(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                       char *err, size_t cap) {
    ag_tensor_list *l = NULL;
    int rc = ag_cli_source_tensors(src, a->run, &l);
    *result = l;
    if (rc != AG_OK) return ag_cli_source_explain(src, rc, err, cap, "run '%s'", a->run);
    return laid_out(ag_doc_tensors(d, a->run, l), err, cap);
}

static int cmd_history(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                       char *err, size_t cap) {
    ag_history_query q;
    ag_history *h = NULL;
    int rc;

    memset(&q, 0, sizeof q);
    q.run = a->run;
    q.tensor = a->tensor;
    q.format = a->format ? a->format : DEFAULT_FORMAT;
    q.from_step = a->from_step;
    q.to_step = a->to_step;
    q.every = a->every;
    rc = ag_cli_source_history(src, &q, &h);
    *result = h;
    if (rc != AG_OK)
        return ag_cli_source_explain(src, rc, err, cap, "run '%s', tensor '%s', format '%s'", q.run,
                                     q.tensor, q.format);
    return laid_out(ag_doc_history(d, a->run, a->tensor, q.format, h), err, cap);
}

static int cmd_scales(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                      char *err, size_t cap) {
    const char *format = a->format ? a->format : DEFAULT_FORMAT;
    ag_scale_list *l = NULL;
    int rc = ag_cli_source_scales(src, a->run, format, &l);
    *result = l;
    if (rc != AG_OK)
        return ag_cli_source_explain(src, rc, err, cap, "run '%s', format '%s'", a->run, format);
    return laid_out(ag_doc_scales(d, a->run, format, l), err, cap);
}

static int cmd_top(ag_cli_source *src, const ag_cli_args *a, ag_cli_doc *d, void **result,
                   char *err, size_t cap) {
    const char *format = a->format ? a->format : DEFAULT_FORMAT;
    ag_top_list *l = NULL;
    int rc = ag_cli_source_top(src, a->run, format, a->window, a->limit, &l);
    *result = l;
    if (rc != AG_OK)
        return ag_cli_source_explain(src, rc, err, cap, "run '%s', format '%s'", a->run, format);
    return laid_out(ag_doc_top(d, a->run, format, l), err, cap);
}

static command_fn command_for(ag_cli_cmd cmd) {
    switch (cmd) {
    case AG_CMD_STATUS: return cmd_status;
    case AG_CMD_RUNS: return cmd_runs;
    case AG_CMD_TENSORS: return cmd_tensors;
    case AG_CMD_HISTORY: return cmd_history;
    case AG_CMD_SCALES: return cmd_scales;
    case AG_CMD_TOP: return cmd_top;
    default: return NULL;
    }
}

int ag_cli_execute(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap) {
    command_fn run;
    void *result = NULL;
    ag_cli_doc d;
    int rc;

    if (a->cmd == AG_CMD_REPORT) return ag_cli_report(src, a, out, err, cap);
    run = command_for(a->cmd);
    if (run == NULL) {
        snprintf(err, cap, "no command");
        return AG_EINVAL;
    }
    ag_cli_doc_init(&d, NULL); /* the layout sets its list key */
    rc = run(src, a, &d, &result, err, cap);
    if (rc == AG_OK && (rc = ag_cli_render(out, &d, a->mode)) != AG_OK)
        snprintf(err, cap, "cannot write the output");
    ag_cli_doc_free(&d);
    ag_free(result);
    return rc;
}
