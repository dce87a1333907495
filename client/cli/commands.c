/*
 * commands.c - the altgrad CLI's query commands: one for each public query
 * of proto/queries.h (status, runs, tensors, history, scales, top, report). The
 * command's request is built from its parameter table, asked of the source
 * and laid out with present/json_layout.c, the layouts the daemon's HTTP
 * API uses, so JSON, CSV, the table and GET /api/... share their keys;
 * ag_cli_execute renders the document in the mode asked for.
 */
#define _POSIX_C_SOURCE 200809L
#include "commands.h"

#include <stdio.h>
#include <string.h>

#include "output.h"

#include "present/answer.h"

int ag_cli_execute(ag_cli_source *src, const ag_cli_args *a, FILE *out, char *err, size_t cap) {
    ag_msg req, reply = {0};
    ag_cli_doc d;
    int rc;

    if (ag_cli_request(a, &req) != AG_OK) {
        snprintf(err, cap, "no command");
        return AG_EINVAL;
    }
    rc = ag_cli_source_ask(src, &req, &reply);
    if (rc != AG_OK) {
        char what[2 * AG_NAME_MAX + 64];
        ag_answer_describe(&req, what, sizeof what);
        if (what[0] == '\0') return ag_cli_source_explain(src, rc, err, cap, NULL);
        return ag_cli_source_explain(src, rc, err, cap, "%s", what);
    }
    ag_cli_doc_init(&d, NULL); /* the layout sets its list key */
    rc = ag_doc_answer(&d, &req, &reply, src->store ? "database" : "daemon", src->where);
    if (rc != AG_OK)
        snprintf(err, cap, "cannot lay out the result: %s", ag_strerror(rc));
    else if ((rc = ag_cli_render(out, &d, a->mode)) != AG_OK)
        snprintf(err, cap, "cannot write the output");
    ag_cli_doc_free(&d);
    ag_answer_free(&reply);
    return rc;
}
