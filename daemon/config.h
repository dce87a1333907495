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

typedef enum ag_scale_mode {
    AG_SCALE_CURRENT = 0, /* the current step's amax is in its own scale (seed) */
    AG_SCALE_DELAYED = 1  /* only earlier steps' amax (TransformerEngine's delayed) */
} ag_scale_mode;

typedef struct ag_config {
    char ingest[AG_CONFIG_MAX_INGEST][AG_CONFIG_PATH_MAX];
    size_t ningest;
    char query[AG_CONFIG_PATH_MAX];
    char db[AG_CONFIG_PATH_MAX];
    char config_file[AG_CONFIG_PATH_MAX];
    char formats[512];    /* comma-separated names as given */
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nfmts;
    long history_len;
    int scale_mode;       /* ag_scale_mode */
    int amax_mode;        /* ag_amax_mode */
    char http[128];       /* --http as given: "HOST:PORT" or "off" */
    int http_enabled;
    char http_host[64];   /* numeric IPv4 or IPv6 address, no brackets */
    int http_port;        /* 0: any free port */
    double margin;        /* scale * 2^margin */
    int log_level;        /* ag_log_level */
    int want_help;
    int want_version;
} ag_config;

/*
 * Fill cfg from defaults, then the config file (--config, if given), then the
 * command line. On error returns AG_EINVAL (or AG_EIO for an unreadable
 * file) with one line of explanation in err.
 */
int ag_config_load(ag_config *cfg, int argc, char **argv, char *err, size_t errlen);
/* Check and resolve the format list text into fmts/nfmts. */
int ag_config_set_formats(ag_config *cfg, const char *list, char *err, size_t errlen);
/* Check an --http value: "off", "IPv4:PORT" or "[IPv6]:PORT" (PORT 0..65535,
 * 0 = any free port); fills the http_* fields. */
int ag_config_set_http(ag_config *cfg, const char *text, char *err, size_t errlen);
/* Print --help (generated from the table) to stdout. */
void ag_config_usage(const char *prog);

#endif
