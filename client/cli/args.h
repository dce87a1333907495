/*
 * args.h - internal to the altgrad CLI: the command line, parsed in one pass
 * over all of argv so options may stand before or after a command's
 * arguments. Validation happens here; the commands get checked values.
 */
#ifndef AG_CLI_ARGS_H
#define AG_CLI_ARGS_H

#include <stddef.h>
#include <stdint.h>

#include "output.h"
#include "proto/proto.h"

typedef enum ag_cli_cmd {
    AG_CMD_NONE = 0,
    /* Every public query of proto/queries.h is a command of its name, and
     * its request type is the command's value; these name the ones the CLI
     * (or its tests) refer to. */
    AG_CMD_RUNS = AG_MSG_Q_RUNS,
    AG_CMD_TENSORS = AG_MSG_Q_TENSORS,
    AG_CMD_HISTORY = AG_MSG_Q_HISTORY,
    AG_CMD_SCALES = AG_MSG_Q_SCALES,
    AG_CMD_TOP = AG_MSG_Q_TOP,
    AG_CMD_STATUS = AG_MSG_Q_STATUS,
    AG_CMD_REPORT = AG_MSG_Q_REPORT
} ag_cli_cmd;

/* Bits for the options a command accepts (and that were given). */
enum {
    AG_OPT_FORMAT = 1 << 0,
    AG_OPT_FROM = 1 << 1,
    AG_OPT_TO = 1 << 2,
    AG_OPT_EVERY = 1 << 3,
    AG_OPT_WINDOW = 1 << 4,
    AG_OPT_LIMIT = 1 << 5,
    AG_OPT_WIDTH = 1 << 6
};

#define AG_CLI_ERR_MAX 256
#define AG_CLI_REPORT_WIDTH_DEFAULT AG_REPORT_WIDTH_DEFAULT
#define AG_CLI_REPORT_WIDTH_MAX AG_REPORT_WIDTH_MAX

typedef struct ag_cli_args {
    const char *query_url; /* --query, or NULL */
    /* --tls-cert, --tls-key, --tls-ca, --tls-server-name, or NULL (the
     * client's environment fallbacks) */
    const char *tls_cert, *tls_key, *tls_ca, *tls_server_name;
    const char *db_path; /* --db, or NULL */
    int timeout_ms;      /* --timeout: query timeout, 0 = the client's default */
    ag_cli_mode mode;    /* --json / --csv, else table */
    int help;            /* --help / -h: print usage, exit 0 */
    int version;         /* --version / -V */
    ag_cli_cmd cmd;
    const char *run;    /* tensors, history, scales, top, report */
    const char *tensor; /* history */
    const char *format; /* --format, NULL: the command's default */
    uint64_t from_step; /* --from, 0 = the start */
    uint64_t to_step;   /* --to, 0 = the end */
    uint64_t every;     /* --every, 0 = every point */
    uint64_t window;    /* --window, 0 = all steps */
    size_t limit;       /* --limit, 0 = the default (10) */
    size_t width;       /* --width (report's sparkline columns) */
    unsigned given;     /* AG_OPT_* bits seen */
} ag_cli_args;

/*
 * Parses argv[1..argc). On success returns 0 and fills *a (strings point
 * into argv). On a usage error returns AG_EINVAL with one line (no prefix,
 * no newline) in err. --help and --version succeed without a command.
 */
int ag_cli_parse(int argc, char **argv, ag_cli_args *a, char *err, size_t errcap);

/* The command's name ("history"), or NULL for AG_CMD_NONE. */
const char *ag_cli_cmd_name(ag_cli_cmd cmd);

/* The request of query command a->cmd, its parameters (proto/spec.c) taken
 * from a by name and a format not given as AG_DEFAULT_FORMAT; strings point
 * into a's. AG_EINVAL when a->cmd is no query. */
int ag_cli_request(const ag_cli_args *a, ag_msg *req);

/* The usage text printed by --help. */
const char *ag_cli_usage(void);

#endif
