/*
 * config.h - the daemon's options, declared once in one table (config.c):
 * name, type, default, bounds and help. The command line, the config file
 * ("key = value" lines, the same keys) and --help all come from it; the
 * command line wins over the file.
 */
#ifndef AG_DAEMON_CONFIG_H
#define AG_DAEMON_CONFIG_H

#include <stddef.h>

#include "altgrad/altgrad.h"

#define AG_CONFIG_MAX_INGEST 8
#define AG_CONFIG_PATH_MAX 1024
#define AG_CONFIG_MAX_THREADS 256

typedef enum ag_scale_mode {
    AG_SCALE_CURRENT = 0, /* the current step's amax is in its own scale (seed) */
    AG_SCALE_DELAYED = 1  /* only earlier steps' amax (TransformerEngine's delayed) */
} ag_scale_mode;

/* --tls-auth: how clients' certificates are checked on tls+tcp:// listeners
 * (the values of nng's nng_tls_auth_mode) */
typedef enum ag_tls_auth {
    AG_TLS_AUTH_NONE = 0,    /* not asked for: anyone reaching the port may send */
    AG_TLS_AUTH_REQUIRED = 2 /* required, and must chain to --tls-ca (default) */
} ag_tls_auth;

typedef struct ag_config {
    char ingest[AG_CONFIG_MAX_INGEST][AG_CONFIG_PATH_MAX];
    size_t ningest;
    char query[AG_CONFIG_PATH_MAX];
    char db[AG_CONFIG_PATH_MAX];
    char config_file[AG_CONFIG_PATH_MAX];
    char formats[512]; /* comma-separated names as given */
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nfmts;
    /* --define-format: the formats defined (in the process-wide registry) by
     * the file and the command line, in order, each once */
    const ag_format *defined[AG_FORMATS_MAX];
    size_t ndefined;
    long history_len;
    int scale_mode; /* ag_scale_mode */
    int amax_mode;  /* ag_amax_mode */
    char http[128]; /* --http as given: "HOST:PORT" or "off" */
    int http_enabled;
    char http_host[64];     /* numeric IPv4 or IPv6 address, no brackets */
    int http_port;          /* 0: any free port */
    double margin;          /* scale * 2^margin */
    long threads;           /* snapshot pool threads; 0: one per usable core */
    long baseline_interval; /* seconds between writes of the flip baselines */
    long state_budget_mib;  /* the engine's memory budget */
    long shard_timeout_ms;  /* shards of a step wait this long for the other ranks */
    long shard_budget_mib;  /* memory waiting snapshot shards may hold */
    int log_level;          /* ag_log_level */
    long keep_raw_steps;    /* 0: keep every raw row */
    /* tls+tcp:// listeners: the daemon's certificate and key, the CA that
     * clients' certificates must chain to (PEM paths; "" = not given) */
    char tls_cert[AG_CONFIG_PATH_MAX];
    char tls_key[AG_CONFIG_PATH_MAX];
    char tls_ca[AG_CONFIG_PATH_MAX];
    int tls_auth;         /* ag_tls_auth */
    int allow_remote_tcp; /* plain tcp:// and --http may listen beyond loopback */
    int want_rebuild;     /* --rebuild-rollups: rebuild and exit */
    int want_help;
    int want_version;
} ag_config;

/*
 * Fill cfg from defaults, then the config file (--config, if given), then the
 * command line. Format definitions (--define-format, from both) are applied
 * as they are read and the format list is resolved last, so --formats may
 * name a format defined anywhere. On error returns AG_EINVAL (AG_EIO for an
 * unreadable file; ag_config_define_format's codes for a refused definition)
 * with one line of explanation in err.
 */
int ag_config_load(ag_config *cfg, int argc, char **argv, char *err, size_t errlen);
/* Check and resolve the format list text into fmts/nfmts. */
/* "max" / "most_recent" and "current" / "delayed": the names of an amax
 * mode (ag_amax_mode) and a scale mode (ag_scale_mode), as the options
 * spell them; "unknown" for another value. */
const char *ag_config_amax_mode_name(int amax_mode);
const char *ag_config_scale_mode_name(int scale_mode);
int ag_config_set_formats(ag_config *cfg, const char *list, char *err, size_t errlen);
/* Parse SPEC = "NAME=E,M,BIAS[,inf][,nan]" and define it with
 * ag_format_define (appended to cfg->defined). AG_EINVAL for bad syntax, or
 * ag_format_define's code (AG_EFORMAT impossible, AG_EEXIST name taken by a
 * different format, AG_ENOSPC registry full), with one line saying what is
 * wrong in err. */
int ag_config_define_format(ag_config *cfg, const char *spec, char *err, size_t errlen);
/* One line describing f as a spec ("E4M3=4,3,7,nan") into buf. */
void ag_config_format_spec(const ag_format *f, char *buf, size_t len);
/* Check an --http value: "off", "IPv4:PORT" or "[IPv6]:PORT" (PORT 0..65535,
 * 0 = any free port); fills the http_* fields. */
int ag_config_set_http(ag_config *cfg, const char *text, char *err, size_t errlen);
/* How a listener URL (or an --http host) reaches the network: */
typedef enum ag_url_reach {
    AG_REACH_LOCAL = 0,    /* ipc://, inproc://: this machine's processes */
    AG_REACH_LOOPBACK = 1, /* plain TCP on 127.0.0.0/8, ::1 or localhost */
    AG_REACH_NETWORK = 2,  /* plain TCP (tcp://, ws://) on any other address */
    AG_REACH_TLS = 3       /* tls+tcp:// on any address */
} ag_url_reach;
ag_url_reach ag_config_url_reach(const char *url);
/* Whether host (no brackets) is 127.0.0.0/8, ::1 (or ::ffff:127.x) or
 * "localhost". */
int ag_config_host_loopback(const char *host);
/* Print --help (generated from the table) to stdout. */
void ag_config_usage(const char *prog);

#endif
