/*
 * args.c - the altgrad CLI's command line: one table of options, one pass
 * over argv that sorts options from positionals (so options may follow the
 * command's arguments), then checks per command which of them are allowed.
 */
#define _POSIX_C_SOURCE 200809L
#include "args.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "proto/spec.h"

typedef enum opt_id {
    OPT_QUERY,
    OPT_DB,
    OPT_TIMEOUT,
    OPT_JSON,
    OPT_CSV,
    OPT_HELP,
    OPT_VERSION,
    OPT_FORMAT,
    OPT_FROM,
    OPT_TO,
    OPT_EVERY,
    OPT_WINDOW,
    OPT_LIMIT,
    OPT_WIDTH,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CA,
    OPT_TLS_SERVER_NAME
} opt_id;

typedef struct opt_def {
    const char *name; /* long name without "--" */
    char short_name;  /* 0 if none */
    opt_id id;
    int takes_value;
    unsigned cmd_bit; /* AG_OPT_* for command options, 0 for global ones */
} opt_def;

static const opt_def options[] = {
    {"query", 0, OPT_QUERY, 1, 0},
    {"db", 0, OPT_DB, 1, 0},
    {"timeout", 0, OPT_TIMEOUT, 1, 0},
    {"json", 0, OPT_JSON, 0, 0},
    {"csv", 0, OPT_CSV, 0, 0},
    {"help", 'h', OPT_HELP, 0, 0},
    {"version", 'V', OPT_VERSION, 0, 0},
    {"format", 'f', OPT_FORMAT, 1, AG_OPT_FORMAT},
    {"from", 0, OPT_FROM, 1, AG_OPT_FROM},
    {"to", 0, OPT_TO, 1, AG_OPT_TO},
    {"every", 0, OPT_EVERY, 1, AG_OPT_EVERY},
    {"window", 0, OPT_WINDOW, 1, AG_OPT_WINDOW},
    {"limit", 0, OPT_LIMIT, 1, AG_OPT_LIMIT},
    {"width", 0, OPT_WIDTH, 1, AG_OPT_WIDTH},
    {"tls-cert", 0, OPT_TLS_CERT, 1, 0},
    {"tls-key", 0, OPT_TLS_KEY, 1, 0},
    {"tls-ca", 0, OPT_TLS_CA, 1, 0},
    {"tls-server-name", 0, OPT_TLS_SERVER_NAME, 1, 0},
};

typedef struct cmd_def {
    const char *name;
    ag_cli_cmd cmd;
    int npos;          /* positional arguments after the command */
    const char *usage; /* the positionals, for error lines */
    unsigned allowed;  /* AG_OPT_* bits */
} cmd_def;

/* Where each query parameter, by its name (proto/spec.c), lives in
 * ag_cli_args: a required name is a positional argument, anything else the
 * option of the same name. */
enum { ARG_TEXT, ARG_U64, ARG_SIZE };
static const struct {
    const char *name;
    int kind;
    size_t off;
} params[] = {
    {"run", ARG_TEXT, offsetof(ag_cli_args, run)},
    {"tensor", ARG_TEXT, offsetof(ag_cli_args, tensor)},
    {"format", ARG_TEXT, offsetof(ag_cli_args, format)},
    {"from", ARG_U64, offsetof(ag_cli_args, from_step)},
    {"to", ARG_U64, offsetof(ag_cli_args, to_step)},
    {"every", ARG_U64, offsetof(ag_cli_args, every)},
    {"window", ARG_U64, offsetof(ag_cli_args, window)},
    {"limit", ARG_SIZE, offsetof(ag_cli_args, limit)},
    {"width", ARG_SIZE, offsetof(ag_cli_args, width)},
};

#define NOPTIONS (sizeof options / sizeof options[0])
#define NPARAMS (sizeof params / sizeof params[0])
#define MAX_POSITIONALS 8
#define AG_CLI_TIMEOUT_MAX_MS 3600000

static const char usage_text[] =
    "usage: altgrad [--query URL | --db FILE] [--json | --csv] COMMAND [ARGS] [OPTIONS]\n"
    "\n"
    "Query altgradd (or read its database file) for bit-stall statistics.\n"
    "\n"
    "commands:\n"
    "  status                      daemon (or database) counters\n"
    "  runs                        training runs\n"
    "  tensors RUN                 tensors of a run\n"
    "  history RUN TENSOR          stall history of a weight tensor in one format\n"
    "      [--format F] [--from S] [--to S] [--every K]\n"
    "  scales RUN [--format F]     current scale of every tensor of a run\n"
    "  top RUN                     tensors with the highest stall rate\n"
    "      [--format F] [--window N] [--limit N]\n"
    "  report RUN                  stall rate per tensor and format, with a sparkline\n"
    "      [--format F[,F...]] [--width N]\n"
    "\n"
    "options:\n"
    "  --query URL    daemon query socket (default: $ALTGRAD_QUERY, else ipc://var/query.sock\n"
    "                 when ./var/ingest.sock exists, else ipc:///run/altgrad/query.sock when\n"
    "                 /run/altgrad/ingest.sock exists, else ipc://var/query.sock)\n"
    "  --db FILE      read this database file directly (daemon running or not)\n"
    "  --timeout MS   wait at most MS milliseconds for the daemon's answer (default 5000;\n"
    "                 with no daemon at the URL the command fails at once)\n"
    "  --json         one JSON document on stdout\n"
    "  --csv          CSV (RFC 4180) with a header line\n"
    "  --format F     format name, default E5M2 (report: all formats the daemon evaluates)\n"
    "  --from S, --to S  inclusive step range (0 = open)\n"
    "  --every K      downsample history: sum counts over buckets of K points\n"
    "  --window N     top: only the N most recent steps (0 = all)\n"
    "  --limit N      top: at most N tensors (default 10)\n"
    "  --width N      report: sparkline columns (default 40)\n"
    "  --tls-cert FILE, --tls-key FILE  this client's certificate and key for a\n"
    "                 tls+tcp:// URL (default $ALTGRAD_TLS_CERT, $ALTGRAD_TLS_KEY)\n"
    "  --tls-ca FILE  the CA the daemon's certificate must chain to (default $ALTGRAD_TLS_CA)\n"
    "  --tls-server-name NAME  the name the daemon's certificate must carry (default\n"
    "                 $ALTGRAD_TLS_SERVER_NAME, else the URL's host)\n"
    "  -h, --help     this text;  -V, --version  the version\n"
    "\n"
    "Options may stand before or after the command's arguments; `--` ends them.\n"
    "Exit status: 0 success, 1 error (no daemon, unknown run...), 2 usage error.\n";

const char *ag_cli_usage(void) { return usage_text; }

const char *ag_cli_cmd_name(ag_cli_cmd cmd) {
    const ag_query_def *def = ag_query_by_type((int)cmd);
    return def != NULL && (def->flags & AG_Q_PUBLIC) ? def->name : NULL;
}

static int param_index(const char *name) {
    size_t i;
    for (i = 0; name != NULL && i < NPARAMS; i++)
        if (strcmp(params[i].name, name) == 0) return (int)i;
    return -1;
}

static const opt_def *find_long(const char *name, size_t len);

/* The command of a public query: its required parameters positional, in
 * order (their names upper-cased in usage, of usage_cap bytes), the others
 * the options of their names. 0 when name is no public query. */
static int query_command(const char *name, cmd_def *out, char *usage, size_t usage_cap) {
    const ag_query_def *def = ag_query_by_name(name);
    const ag_field *p;
    size_t n, i, len;
    if (def == NULL || !(def->flags & AG_Q_PUBLIC)) return 0;
    p = ag_query_params(def->q, &n);
    memset(out, 0, sizeof *out);
    out->name = def->name;
    out->cmd = (ag_cli_cmd)def->q;
    out->usage = usage;
    len = (size_t)snprintf(usage, usage_cap, "%s", def->name);
    for (i = 0; i < n; i++) {
        const opt_def *o;
        if (p[i].doc == NULL) continue;
        if (p[i].flags & F_REQ) {
            const char *c;
            out->npos++;
            if (len + 1 < usage_cap) usage[len++] = ' ';
            for (c = p[i].doc; *c && len + 1 < usage_cap; c++)
                usage[len++] = (char)(*c >= 'a' && *c <= 'z' ? *c - 'a' + 'A' : *c);
            usage[len] = '\0';
        } else if ((o = find_long(p[i].doc, strlen(p[i].doc))) != NULL) {
            out->allowed |= o->cmd_bit;
        }
    }
    return 1;
}

int ag_cli_request(const ag_cli_args *a, ag_msg *req) {
    const ag_query_def *def = ag_query_by_type((int)a->cmd);
    const ag_field *p;
    size_t n, i;
    memset(req, 0, sizeof *req);
    if (def == NULL || !(def->flags & AG_Q_PUBLIC)) return AG_EINVAL;
    req->type = def->q;
    p = ag_query_params(def->q, &n);
    for (i = 0; i < n; i++) {
        int k = param_index(p[i].doc);
        const char *from;
        char *to = (char *)&req->u + p[i].off;
        if (k < 0) continue;
        from = (const char *)a + params[k].off;
        if (params[k].kind == ARG_TEXT) {
            const char *v;
            memcpy(&v, from, sizeof v);
            if (v == NULL && p[i].kind == K_FMT) v = AG_DEFAULT_FORMAT;
            memcpy(to, &v, sizeof v);
        } else {
            uint64_t v;
            if (params[k].kind == ARG_SIZE) {
                size_t z;
                memcpy(&z, from, sizeof z);
                v = z;
            } else {
                memcpy(&v, from, sizeof v);
            }
            memcpy(to, &v, sizeof v);
        }
    }
    return AG_OK;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
usage_error(char *err, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return AG_EINVAL;
}

/* Strict unsigned decimal: digits only, no sign, no overflow. */
static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9') return AG_EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') return AG_EINVAL;
    *out = (uint64_t)v;
    return AG_OK;
}

/* A format name as the registry allows it: 1..15 of [A-Za-z0-9_-]; with
 * list set, several separated by commas. */
static int valid_format(const char *s, int list) {
    size_t len = 0;
    if (s == NULL || *s == '\0') return 0;
    for (; *s; s++) {
        if (*s == ',' && list) {
            if (len == 0 || s[1] == '\0') return 0;
            len = 0;
            continue;
        }
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return 0;
        if (++len > AG_FORMAT_NAME_MAX) return 0;
    }
    return 1;
}

static const opt_def *find_long(const char *name, size_t len) {
    size_t i;
    for (i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].name) == len && strncmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

static const opt_def *find_short(char c) {
    size_t i;
    for (i = 0; i < NOPTIONS; i++)
        if (options[i].short_name != 0 && options[i].short_name == c) return &options[i];
    return NULL;
}

static int apply_option(const opt_def *o, const char *shown, const char *val, ag_cli_args *a,
                        char *err, size_t cap) {
    uint64_t u = 0;
    switch (o->id) {
    case OPT_QUERY:
        if (*val == '\0') return usage_error(err, cap, "--query needs a URL");
        a->query_url = val;
        return AG_OK;
    case OPT_DB:
        if (*val == '\0') return usage_error(err, cap, "--db needs a file name");
        a->db_path = val;
        return AG_OK;
    case OPT_TLS_CERT:
    case OPT_TLS_KEY:
    case OPT_TLS_CA:
    case OPT_TLS_SERVER_NAME:
        if (*val == '\0') return usage_error(err, cap, "%s needs a value", shown);
        if (o->id == OPT_TLS_CERT) a->tls_cert = val;
        if (o->id == OPT_TLS_KEY) a->tls_key = val;
        if (o->id == OPT_TLS_CA) a->tls_ca = val;
        if (o->id == OPT_TLS_SERVER_NAME) a->tls_server_name = val;
        return AG_OK;
    case OPT_JSON: a->mode = AG_CLI_JSON; return AG_OK;
    case OPT_CSV: a->mode = AG_CLI_CSV; return AG_OK;
    case OPT_HELP: a->help = 1; return AG_OK;
    case OPT_VERSION: a->version = 1; return AG_OK;
    case OPT_FORMAT: a->format = val; return AG_OK; /* checked once the command is known */
    default: break;
    }
    if (parse_u64(val, &u) != AG_OK)
        return usage_error(err, cap, "%s wants a non-negative integer, not '%s'", shown, val);
    switch (o->id) {
    case OPT_FROM: a->from_step = u; break;
    case OPT_TO: a->to_step = u; break;
    case OPT_EVERY: a->every = u; break;
    case OPT_WINDOW: a->window = u; break;
    case OPT_TIMEOUT:
        if (u < 1 || u > AG_CLI_TIMEOUT_MAX_MS)
            return usage_error(err, cap, "%s must be between 1 and %d ms", shown,
                               AG_CLI_TIMEOUT_MAX_MS);
        a->timeout_ms = (int)u;
        break;
    case OPT_LIMIT:
        if (u > SIZE_MAX) return usage_error(err, cap, "%s is too large", shown);
        a->limit = (size_t)u;
        break;
    case OPT_WIDTH:
        if (u < 1 || u > AG_CLI_REPORT_WIDTH_MAX)
            return usage_error(err, cap, "%s must be between 1 and %d", shown,
                               AG_CLI_REPORT_WIDTH_MAX);
        a->width = (size_t)u;
        break;
    default: break;
    }
    return AG_OK;
}

int ag_cli_parse(int argc, char **argv, ag_cli_args *a, char *err, size_t cap) {
    const char *pos[MAX_POSITIONALS];
    size_t npos = 0, i;
    const cmd_def *cmd = NULL;
    cmd_def query_cmd;
    char usage[128];
    int json = 0, csv = 0, only_positionals = 0;
    int k;

    memset(a, 0, sizeof *a);
    a->width = AG_CLI_REPORT_WIDTH_DEFAULT;
    if (err != NULL && cap > 0) err[0] = '\0';

    for (k = 1; k < argc; k++) {
        const char *arg = argv[k], *val = NULL;
        const opt_def *o;
        char shown[32];

        if (arg == NULL) return usage_error(err, cap, "bad argument list");
        if (only_positionals || arg[0] != '-' || arg[1] == '\0') {
            if (npos == MAX_POSITIONALS) return usage_error(err, cap, "too many arguments");
            pos[npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positionals = 1;
            continue;
        }
        if (arg[1] == '-') {
            const char *name = arg + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(name, len);
            if (o == NULL)
                return usage_error(err, cap, "unknown option '%.*s'", (int)(len + 2), arg);
            if (eq != NULL) {
                if (!o->takes_value) return usage_error(err, cap, "--%s takes no value", o->name);
                val = eq + 1;
            }
        } else {
            if (arg[2] != '\0' || (o = find_short(arg[1])) == NULL)
                return usage_error(err, cap, "unknown option '%s'", arg);
        }
        snprintf(shown, sizeof shown, "--%s", o->name);
        if (o->takes_value && val == NULL) {
            if (k + 1 >= argc) return usage_error(err, cap, "%s needs a value", shown);
            val = argv[++k];
        }
        if (o->id == OPT_JSON) json = 1;
        if (o->id == OPT_CSV) csv = 1;
        a->given |= o->cmd_bit;
        if (apply_option(o, shown, val ? val : "", a, err, cap) != AG_OK) return AG_EINVAL;
    }

    if (a->help || a->version) return AG_OK;
    if (json && csv) return usage_error(err, cap, "--json and --csv exclude each other");
    if (a->query_url != NULL && a->db_path != NULL)
        return usage_error(err, cap, "--query and --db exclude each other");
    if (a->timeout_ms != 0 && a->db_path != NULL)
        return usage_error(err, cap, "--timeout applies to the daemon, not to --db");
    if (npos == 0) return usage_error(err, cap, "no command given (try 'altgrad --help')");

    if (query_command(pos[0], &query_cmd, usage, sizeof usage)) cmd = &query_cmd;
    if (cmd == NULL)
        return usage_error(err, cap, "unknown command '%s' (try 'altgrad --help')", pos[0]);
    a->cmd = cmd->cmd;
    if (npos - 1 != (size_t)cmd->npos)
        return usage_error(err, cap, "%s: expected '%s', got %zu argument%s", cmd->name, cmd->usage,
                           npos - 1, npos - 1 == 1 ? "" : "s");
    for (i = 0; i < NOPTIONS; i++) {
        if ((a->given & options[i].cmd_bit) && !(cmd->allowed & options[i].cmd_bit))
            return usage_error(err, cap, "%s does not take --%s", cmd->name, options[i].name);
    }
    if (a->format != NULL && !valid_format(a->format, cmd->cmd == AG_CMD_REPORT))
        return usage_error(err, cap, "bad format name '%s'", a->format);
    for (i = 1; i < npos; i++) {
        if (pos[i][0] == '\0') return usage_error(err, cap, "%s: empty name", cmd->name);
        if (strlen(pos[i]) > AG_NAME_MAX)
            return usage_error(err, cap, "%s: name longer than %d bytes", cmd->name, AG_NAME_MAX);
    }
    if (a->to_step != 0 && a->from_step > a->to_step)
        return usage_error(err, cap, "--from %llu is after --to %llu",
                           (unsigned long long)a->from_step, (unsigned long long)a->to_step);
    {
        /* a query's positionals are its required parameters, in order */
        size_t n, next = 1;
        const ag_field *p = ag_query_params((int)cmd->cmd, &n);
        for (i = 0; i < n && next < npos; i++) {
            int at = param_index(p[i].doc);
            if (!(p[i].flags & F_REQ) || at < 0 || params[at].kind != ARG_TEXT) continue;
            memcpy((char *)a + params[at].off, &pos[next++], sizeof(const char *));
        }
    }
    return AG_OK;
}
