/*
 * source.c - the CLI's two back ends behind one set of calls: the daemon
 * (ag_client_* queries over nng) or a database file opened read-only through
 * the store, which works whether or not the daemon is running (SQLite WAL).
 */
#define _POSIX_C_SOURCE 200809L
#include "source.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/open_quiet.h"
#include "client/query_any.h"
#include "present/answer.h"
#include "schema/store.h"

const char *ag_cli_default_query_url(void) {
    const char *env = getenv("ALTGRAD_QUERY");
    if (env != NULL && *env != '\0') return env;
    if (access("var/ingest.sock", F_OK) == 0) return AG_DEFAULT_QUERY_URL;
    if (access("/run/altgrad/ingest.sock", F_OK) == 0) return AG_SYSTEM_QUERY_URL;
    return AG_DEFAULT_QUERY_URL;
}

/* Error lines must stay one line whatever the daemon or SQLite said. */
static void one_line(char *s) {
    for (; *s; s++)
        if (*s == '\n' || *s == '\r' || *s == '\t') *s = ' ';
}

int ag_cli_source_open(ag_cli_source *s, const ag_cli_args *a, char *err, size_t cap) {
    int rc;
    memset(s, 0, sizeof *s);
    if (a->db_path != NULL) {
        ag_store *st = NULL;
        snprintf(s->where, sizeof s->where, "%s", a->db_path);
        rc = ag_store_open(&st, a->db_path, AG_STORE_READONLY);
        if (rc != AG_OK) {
            const char *msg = st ? ag_store_errmsg(st) : "";
            snprintf(err, cap, "cannot read database %s: %s", a->db_path,
                     *msg ? msg : ag_strerror(rc));
            ag_store_close(st);
            one_line(err);
            return rc;
        }
        s->store = st;
        return AG_OK;
    } else {
        ag_client_opts opts;
        ag_client *c = NULL;
        memset(&opts, 0, sizeof opts);
        opts.query_url = a->query_url;
        opts.query_timeout_ms = a->timeout_ms;
        opts.tls_cert = a->tls_cert;
        opts.tls_key = a->tls_key;
        opts.tls_ca = a->tls_ca;
        opts.tls_server_name = a->tls_server_name;
        snprintf(s->where, sizeof s->where, "%s",
                 a->query_url ? a->query_url : ag_cli_default_query_url());
        /* quiet: a query that finds no daemon says so itself, in one line */
        rc = ag_client_open_quiet(&c, &opts, 1);
        if (rc != AG_OK) {
            const char *why = ag_client_last_error(NULL); /* names the URL */
            if (*why)
                snprintf(err, cap, "%s", why);
            else
                snprintf(err, cap, "cannot open a client for %s: %s", s->where, ag_strerror(rc));
            one_line(err);
            return rc;
        }
        s->client = c;
        return AG_OK;
    }
}

void ag_cli_source_close(ag_cli_source *s) {
    if (s == NULL) return;
    if (s->client != NULL) ag_client_close(s->client);
    if (s->store != NULL) ag_store_close(s->store);
    s->client = NULL;
    s->store = NULL;
}

int ag_cli_source_ask(ag_cli_source *s, const ag_msg *req, ag_msg *reply) {
    int rc;
    if (s->store) return ag_answer(s->store, req, reply);
    rc = ag_client_ask(s->client, req, reply);
    if (rc == AG_OK) ag_msg_take_result(reply); /* the root stays in reply->u */
    return rc;
}

int ag_cli_source_tensors(ag_cli_source *s, const char *run, ag_tensor_list **out) {
    return s->store ? ag_store_tensors(s->store, run, out) : ag_client_tensors(s->client, run, out);
}

int ag_cli_source_history(ag_cli_source *s, const ag_history_query *q, ag_history **out) {
    return s->store ? ag_store_history(s->store, q, out) : ag_client_history(s->client, q, out);
}

int ag_cli_source_top(ag_cli_source *s, const char *run, const char *format, uint64_t window,
                      size_t limit, ag_top_list **out) {
    return s->store ? ag_store_top(s->store, run, format, window, limit, out)
                    : ag_client_top(s->client, run, format, window, limit, out);
}

int ag_cli_source_status(ag_cli_source *s, ag_status **out) {
    return s->store ? ag_store_status(s->store, out) : ag_client_status(s->client, out);
}

int ag_cli_source_explain(const ag_cli_source *s, int rc, char *err, size_t cap,
                          const char *what_fmt, ...) {
    char what[2 * AG_NAME_MAX + 64] = "no such run, tensor or format";
    const char *said = "";
    va_list ap;

    if (what_fmt != NULL) {
        va_start(ap, what_fmt);
        vsnprintf(what, sizeof what, what_fmt, ap);
        va_end(ap);
    }
    if (s->store != NULL)
        said = ag_store_errmsg(s->store);
    else if (s->client != NULL)
        said = ag_client_last_error(s->client);
    if (said == NULL) said = "";

    if (rc == AG_ETIMEDOUT && s->client != NULL && strncmp(s->where, "tls+", 4) == 0 &&
        *said != '\0')
        snprintf(err, cap, "%s (--timeout MS waits longer)", said); /* why no TLS session */
    else if (rc == AG_ETIMEDOUT && s->client != NULL)
        snprintf(err, cap,
                 "the daemon at %s did not answer in time (--timeout MS waits "
                 "longer)",
                 s->where);
    else if (rc == AG_ETRANSPORT && s->client != NULL && *said != '\0')
        snprintf(err, cap, "%s", said); /* names the socket and why, see ag_client_last_error */
    else if (rc == AG_ENOTFOUND && *said != '\0')
        snprintf(err, cap, "%s", said);
    else if (rc == AG_ENOTFOUND)
        snprintf(err, cap, "not found: %s", what);
    else if (*said != '\0')
        snprintf(err, cap, "%s: %s", s->where, said);
    else
        snprintf(err, cap, "%s: %s", s->where, ag_strerror(rc));
    one_line(err);
    return rc;
}
