/*
 * config.c - the option table of altgradd and the parsers built on it.
 * Adding an option is one row here plus the field in ag_config. SIGHUP
 * reloads by calling ag_config_load again with the original argv.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errctx.h"
#include "daemon/config.h"
#include "daemon/log.h"

typedef enum opt_type {
    OPT_URLS,    /* repeatable string, appended */
    OPT_STRING,  /* one string */
    OPT_FORMATS, /* comma-separated format names, resolved after all definitions */
    OPT_DEFINE,  /* repeatable format definition NAME=E,M,BIAS[,inf][,nan] */
    OPT_INT,     /* long within [min, max] */
    OPT_DOUBLE,  /* finite double within [min, max] */
    OPT_ENUM,    /* one of choices, stored as values[i] */
    OPT_HTTP,    /* "off" or HOST:PORT */
    OPT_FLAG,    /* no argument; command line only */
    OPT_BOOL     /* no argument on the command line; true|false in the file */
} opt_type;

typedef struct opt {
    const char *name;
    opt_type type;
    size_t offset;
    size_t size;     /* of the field (strings: buffer size) */
    const char *def; /* default, as text; NULL = none */
    double min, max;
    const char *const *choices; /* NULL-terminated, for OPT_ENUM */
    const int *values;
    const char *arg; /* argument name in --help */
    const char *help;
    int file_ok; /* may appear in the config file */
} opt;

static const char *const scale_modes[] = {"current", "delayed", NULL};
static const int scale_mode_values[] = {AG_SCALE_CURRENT, AG_SCALE_DELAYED};
static const char *const amax_modes[] = {"max", "most_recent", NULL};
static const int amax_mode_values[] = {AG_AMAX_MAX, AG_AMAX_MOST_RECENT};
/* No "optional": nng's mbedTLS engine then lets a certificate that fails the
 * check in too (mbedTLS's VERIFY_OPTIONAL), which would only look safer than
 * none. */
static const char *const tls_auths[] = {"required", "none", NULL};
static const int tls_auth_values[] = {AG_TLS_AUTH_REQUIRED, AG_TLS_AUTH_NONE};
static const char *const log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};
static const int log_level_values[] = {AG_LOG_ERROR, AG_LOG_WARNING, AG_LOG_NOTICE, AG_LOG_INFO,
                                       AG_LOG_DEBUG};

#define FIELD(f) .offset = offsetof(ag_config, f), .size = sizeof(((ag_config *)0)->f)

/* The one table of options: the command line, the config file and --help
 * all come from it. Unnamed fields are 0/NULL. */
static const opt options[] = {
    {.name = "ingest",
     .type = OPT_URLS,
     FIELD(ingest),
     .def = AG_DEFAULT_INGEST_URL,
     .arg = "URL",
     .file_ok = 1,
     .help = "listen for trainers' streams on URL (nng PULL); repeatable, e.g. an ipc:// "
             "and a tcp:// or tls+tcp:// listener"},
    {.name = "query",
     .type = OPT_STRING,
     FIELD(query),
     .def = AG_DEFAULT_QUERY_URL,
     .arg = "URL",
     .file_ok = 1,
     .help = "answer queries on URL (nng REP)"},
    {.name = "db",
     .type = OPT_STRING,
     FIELD(db),
     .def = AG_DEFAULT_DB_PATH,
     .arg = "PATH",
     .file_ok = 1,
     .help = "SQLite database file (created and migrated as needed)"},
    {.name = "config",
     .type = OPT_STRING,
     FIELD(config_file),
     .arg = "FILE",
     .help = "read options from FILE (key = value lines); the command line wins"},
    {.name = "define-format",
     .type = OPT_DEFINE,
     FIELD(defined),
     .arg = "SPEC",
     .file_ok = 1,
     .help = "define an 8-bit format, SPEC = NAME=E,M,BIAS[,inf][,nan] with E + M = 7 "
             "(e.g. E4M3=4,3,7,nan); repeatable; --formats and snapshots may then name it"},
    {.name = "formats",
     .type = OPT_FORMATS,
     FIELD(formats),
     .def = AG_DEFAULT_FORMATS,
     .arg = "LIST",
     .file_ok = 1,
     .help = "comma-separated formats evaluated by default (built-in or defined); "
             "NAME:unscaled (or NAME-unscaled) evaluates NAME at scale 1 (weight storage)"},
    {.name = "history-len",
     .type = OPT_INT,
     FIELD(history_len),
     .def = "16",
     .min = 1,
     .max = AG_AMAX_HISTORY_MAX_LEN,
     .arg = "N",
     .file_ok = 1,
     .help = "amax history length per tensor and role"},
    {.name = "scale-mode",
     .type = OPT_ENUM,
     FIELD(scale_mode),
     .def = "current",
     .choices = scale_modes,
     .values = scale_mode_values,
     .arg = "current|delayed",
     .file_ok = 1,
     .help = "whether a step's own amax is in the history for its scale (current, the "
             "seed's) or only earlier steps' (delayed)"},
    {.name = "amax-mode",
     .type = OPT_ENUM,
     FIELD(amax_mode),
     .def = "max",
     .choices = amax_modes,
     .values = amax_mode_values,
     .arg = "max|most_recent",
     .file_ok = 1,
     .help = "which amax of the history a scale comes from: the largest (the seed's) or "
             "the newest"},
    {.name = "margin",
     .type = OPT_DOUBLE,
     FIELD(margin),
     .def = "0",
     .min = -64,
     .max = 64,
     .arg = "M",
     .file_ok = 1,
     .help = "scale margin: scales are multiplied by 2^M"},
    {.name = "threads",
     .type = OPT_INT,
     FIELD(threads),
     .def = "0",
     .min = 0,
     .max = AG_CONFIG_MAX_THREADS,
     .arg = "N",
     .file_ok = 1,
     .help = "threads evaluating snapshots (the pool); 0: one per core the daemon may use"},
    {.name = "baseline-interval",
     .type = OPT_INT,
     FIELD(baseline_interval),
     .def = "60",
     .min = 0,
     .max = 86400,
     .arg = "S",
     .file_ok = 1,
     .help = "write the tensors' flip baselines (last snapshot weights) to the database at "
             "most every S seconds, and at SIGTERM; 0: at every commit tick (200 ms)"},
    {.name = "state-budget",
     .type = OPT_INT,
     FIELD(state_budget_mib),
     .def = "4096",
     .min = 16,
     .max = 1048576,
     .arg = "MiB",
     .file_ok = 1,
     .help = "memory the engine's state may hold: tensors, amax histories, flip baselines "
             "and snapshots being evaluated; past it new tensors and snapshots wait or are "
             "refused (counted)"},
    {.name = "shard-timeout-ms",
     .type = OPT_INT,
     FIELD(shard_timeout_ms),
     .def = "30000",
     .min = 1,
     .max = 86400000,
     .arg = "MS",
     .file_ok = 1,
     .help = "how long the shards of a sharded tensor's step wait for the other ranks of "
             "the run; then the step is stored incomplete, with the ranks that reported"},
    {.name = "shard-budget",
     .type = OPT_INT,
     FIELD(shard_budget_mib),
     .def = "1024",
     .min = 1,
     .max = 1048576,
     .arg = "MiB",
     .file_ok = 1,
     .help = "memory the snapshot shards waiting for their other ranks may hold (within "
             "--state-budget); past it the oldest waiting steps are stored incomplete"},
    {.name = "http",
     .type = OPT_HTTP,
     FIELD(http),
     .def = "127.0.0.1:8787",
     .arg = "ADDR:PORT|off",
     .file_ok = 1,
     .help = "serve the web page, the JSON API and /metrics over HTTP on ADDR:PORT (an "
             "IPv4 address or [IPv6]; port 0 picks a free one); off disables it"},
    {.name = "tls-cert",
     .type = OPT_STRING,
     FIELD(tls_cert),
     .arg = "FILE",
     .file_ok = 1,
     .help = "PEM certificate (chain) the daemon presents on its tls+tcp:// listeners"},
    {.name = "tls-key",
     .type = OPT_STRING,
     FIELD(tls_key),
     .arg = "FILE",
     .file_ok = 1,
     .help = "PEM private key of --tls-cert, unencrypted (keep it readable by the daemon "
             "only)"},
    {.name = "tls-ca",
     .type = OPT_STRING,
     FIELD(tls_ca),
     .arg = "FILE",
     .file_ok = 1,
     .help = "PEM CA certificate(s) that clients' certificates must chain to on tls+tcp:// "
             "listeners"},
    {.name = "tls-auth",
     .type = OPT_ENUM,
     FIELD(tls_auth),
     .def = "required",
     .choices = tls_auths,
     .values = tls_auth_values,
     .arg = "required|none",
     .file_ok = 1,
     .help = "whether tls+tcp:// clients must present a certificate that chains to "
             "--tls-ca (required) or are not asked (none: encryption only, anyone who "
             "reaches the port may send and query)"},
    {.name = "allow-remote-tcp",
     .type = OPT_BOOL,
     FIELD(allow_remote_tcp),
     .file_ok = 1,
     .help = "let plain tcp:// listeners and --http use addresses beyond loopback "
             "(unauthenticated and unencrypted: prefer tls+tcp://); in the file: "
             "allow-remote-tcp = true"},
    {.name = "log-level",
     .type = OPT_ENUM,
     FIELD(log_level),
     .def = "info",
     .choices = log_levels,
     .values = log_level_values,
     .arg = "error|warning|notice|info|debug",
     .file_ok = 1,
     .help = "lines above this level are not logged"},
    {.name = "keep-raw-steps",
     .type = OPT_INT,
     FIELD(keep_raw_steps),
     .def = "0",
     .min = 0,
     .max = 4e18,
     .arg = "N",
     .file_ok = 1,
     .help = "keep the per-step result and statistics rows of only the newest N steps of "
             "each run (older ones go in whole 1000-step buckets; rollups keep counting "
             "them); 0 keeps everything"},
    {.name = "rebuild-rollups",
     .type = OPT_FLAG,
     FIELD(want_rebuild),
     .help = "compute the rollups of the database again from its per-step rows, and exit"},
    {.name = "version",
     .type = OPT_FLAG,
     FIELD(want_version),
     .help = "print the version and exit"},
    {.name = "help", .type = OPT_FLAG, FIELD(want_help), .help = "print this help and exit"},
};
#define NOPTIONS (sizeof options / sizeof options[0])

/* a failure: its text into err, its code returned (core/errctx.h) */
#define fail ag_errbuf_set

static const opt *find_opt(const char *name, size_t len) {
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].name) == len && strncmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

static const char *choice_name(const char *const *names, const int *values, int v) {
    for (size_t i = 0; names[i]; i++)
        if (values[i] == v) return names[i];
    return "unknown";
}

const char *ag_config_amax_mode_name(int amax_mode) {
    return choice_name(amax_modes, amax_mode_values, amax_mode);
}

const char *ag_config_scale_mode_name(int scale_mode) {
    return choice_name(scale_modes, scale_mode_values, scale_mode);
}

int ag_config_set_formats(ag_config *cfg, const char *list, char *err, size_t errlen) {
    if (strlen(list) >= sizeof cfg->formats)
        return fail(err, errlen, AG_EINVAL, "--formats: list too long");
    static const char unscaled[] = ":unscaled";
    size_t n = 0;
    /* The list as the registry names its formats ("BF16:unscaled" becomes
     * "BF16-unscaled"): what status reports and the Monitor reads back. */
    char norm[sizeof cfg->formats];
    size_t used = 0;
    norm[0] = '\0';
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        size_t k = sizeof unscaled - 1;
        int want_unscaled = len > k && strncmp(p + len - k, unscaled, k) == 0;
        size_t nlen = want_unscaled ? len - k : len;
        char name[AG_FORMAT_NAME_MAX + 1];
        if (nlen == 0 || nlen > AG_FORMAT_NAME_MAX)
            return fail(err, errlen, AG_EINVAL, "--formats: bad format name in '%s'", list);
        memcpy(name, p, nlen);
        name[nlen] = '\0';
        const ag_format *f = ag_format_get(name);
        if (!f)
            return fail(err, errlen, AG_EINVAL,
                        "--formats: unknown format '%s' (define it with --define-format "
                        "NAME=E,M,BIAS[,inf][,nan])",
                        name);
        if (f->block && want_unscaled)
            return fail(err, errlen, AG_EINVAL,
                        "--formats: '%s:unscaled': '%s' is block-scaled, its scales are its "
                        "blocks' (docs/numerics.md, Block scaling); it has no unscaled twin",
                        name, name);
        if (want_unscaled) {
            int rc = ag_format_unscaled(f, &f);
            if (rc)
                return fail(err, errlen, AG_EINVAL,
                            "--formats: '%s:unscaled': %s (the name %s-unscaled must fit %d "
                            "characters)",
                            name, ag_strerror(rc), name, AG_FORMAT_NAME_MAX);
        }
        for (size_t i = 0; i < n; i++)
            if (cfg->fmts[i] == f)
                return fail(err, errlen, AG_EINVAL, "--formats: '%s' given twice", f->name);
        if (n == AG_FORMATS_MAX) return fail(err, errlen, AG_EINVAL, "--formats: too many formats");
        size_t fl = strlen(f->name);
        if (used + fl + 2 > sizeof norm)
            return fail(err, errlen, AG_EINVAL, "--formats: list too long");
        if (used) norm[used++] = ',';
        memcpy(norm + used, f->name, fl + 1);
        used += fl;
        cfg->fmts[n++] = f;
        p += len;
        if (*p == ',') p++;
    }
    if (n == 0) return fail(err, errlen, AG_EINVAL, "--formats: empty list");
    cfg->nfmts = n;
    memcpy(cfg->formats, norm, used + 1);
    return AG_OK;
}

void ag_config_format_spec(const ag_format *f, char *buf, size_t len) {
    snprintf(buf, len, "%s=%d,%d,%d%s%s", f->name, f->exponent_bits, f->mantissa_bits, f->bias,
             f->has_inf ? ",inf" : "", f->has_nan ? ",nan" : "");
}

/* A decimal int in [lo, hi] spanning exactly [s, s + len). */
static int parse_int(const char *s, size_t len, int lo, int hi, int *out) {
    char buf[16];
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (!(buf[0] == '-' || (buf[0] >= '0' && buf[0] <= '9'))) return 0;
    char *end = NULL;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

/* Why ag_format_define refused a definition of these parameters (its rules,
 * altgrad.h), as a phrase for the error line. */
static const char *impossible_why(const char *name, int E, int M, int bias, int inf, int nan) {
    size_t n = strlen(name);
    int name_ok = n > 0 && n <= AG_FORMAT_NAME_MAX;
    for (size_t i = 0; name_ok && i < n; i++) {
        char c = name[i];
        name_ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
    }
    if (!name_ok) return "the name must be 1..15 characters of [A-Za-z0-9_-]";
    if (E + M < 3 || E + M > 15)
        return "E + M must be 3..15 (sign + exponent + mantissa = 4 to 16 bits)";
    if (inf && !nan) return "inf needs nan too (e all ones: m = 0 is inf, any other m NaN)";
    if (inf && M == 0) return "inf needs mantissa bits (m = 0 is inf, the rest NaN)";
    if (E == 0 && (inf || nan || bias != 0))
        return "a fixed-point format (E = 0) takes bias 0 and no inf or nan";
    if (bias < -200 || bias > 200) return "the bias must be in -200..200";
    size_t k = sizeof AG_UNSCALED_SUFFIX - 1;
    if (n > k && strcmp(name + n - k, AG_UNSCALED_SUFFIX) == 0)
        return "a name ending in -unscaled is the unscaled twin of a registered format "
               "(with its definition)";
    return "its range does not fit float32 (2^(1-bias) below 2^-126, or its largest value "
           "2^128 or more), or NaN leaves no finite value";
}

int ag_config_define_format(ag_config *cfg, const char *spec, char *err, size_t errlen) {
    const char *usage = "expected NAME=E,M,BIAS[,inf][,nan], e.g. E4M3=4,3,7,nan";
    const char *eq = strchr(spec, '=');
    char name[AG_FORMAT_NAME_MAX + 2];
    if (!eq || eq == spec)
        return fail(err, errlen, AG_EINVAL, "--define-format '%.64s': %s", spec, usage);
    size_t nlen = (size_t)(eq - spec);
    if (nlen > AG_FORMAT_NAME_MAX)
        return fail(err, errlen, AG_EINVAL,
                    "--define-format '%.64s': the name is longer than %d characters", spec,
                    AG_FORMAT_NAME_MAX);
    memcpy(name, spec, nlen);
    name[nlen] = '\0';
    int v[3] = {0, 0, 0}, inf = 0, nan = 0, field = 0;
    const char *p = eq + 1;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (field < 3) {
            if (!parse_int(p, len, field < 2 ? 0 : -1000, 1000, &v[field]))
                return fail(err, errlen, AG_EINVAL, "--define-format '%.64s': %s is not %s; %s",
                            spec,
                            field == 0   ? "E"
                            : field == 1 ? "M"
                                         : "BIAS",
                            field < 2 ? "a non-negative integer" : "an integer", usage);
        } else if (len == 3 && strncmp(p, "inf", 3) == 0 && !inf) {
            inf = 1;
        } else if (len == 3 && strncmp(p, "nan", 3) == 0 && !nan) {
            nan = 1;
        } else {
            return fail(err, errlen, AG_EINVAL, "--define-format '%.64s': unexpected '%.*s'; %s",
                        spec, (int)(len > 16 ? 16 : len), p, usage);
        }
        field++;
        if (!comma) break;
        p = comma + 1;
    }
    if (field < 3) return fail(err, errlen, AG_EINVAL, "--define-format '%.64s': %s", spec, usage);
    const ag_format *f = NULL;
    int rc = ag_format_define(name, v[0], v[1], v[2], inf, nan, &f);
    if (rc == AG_EEXIST) {
        char have[64];
        ag_config_format_spec(ag_format_get(name), have, sizeof have);
        return fail(err, errlen, rc, "--define-format '%.64s': %s: it is %s", spec, ag_strerror(rc),
                    have);
    }
    if (rc == AG_EFORMAT)
        return fail(err, errlen, rc, "--define-format '%.64s': %s: %s", spec, ag_strerror(rc),
                    impossible_why(name, v[0], v[1], v[2], inf, nan));
    if (rc)
        return fail(err, errlen, rc, "--define-format '%.64s': %s (at most %d formats)", spec,
                    ag_strerror(rc), AG_FORMATS_MAX);
    for (size_t i = 0; i < cfg->ndefined; i++)
        if (cfg->defined[i] == f) return AG_OK;
    cfg->defined[cfg->ndefined++] = f; /* distinct registry entries: <= AG_FORMATS_MAX */
    return AG_OK;
}

int ag_config_set_http(ag_config *cfg, const char *text, char *err, size_t errlen) {
    if (strlen(text) >= sizeof cfg->http)
        return fail(err, errlen, AG_EINVAL, "--http: value too long");
    if (strcmp(text, "off") == 0) {
        cfg->http_enabled = 0;
        strcpy(cfg->http, text);
        return AG_OK;
    }
    const char *colon = strrchr(text, ':');
    if (!colon) return fail(err, errlen, AG_EINVAL, "--http: '%s' is not ADDR:PORT or off", text);
    const char *host = text, *host_end = colon;
    int family = AF_INET;
    if (*host == '[') {
        if (host_end == host || host_end[-1] != ']')
            return fail(err, errlen, AG_EINVAL, "--http: bad IPv6 address in '%s'", text);
        host++;
        host_end--;
        family = AF_INET6;
    }
    size_t hlen = (size_t)(host_end - host);
    char addr[64];
    unsigned char bin[16];
    if (hlen == 0 || hlen >= sizeof addr)
        return fail(err, errlen, AG_EINVAL, "--http: bad address in '%s'", text);
    memcpy(addr, host, hlen);
    addr[hlen] = '\0';
    if (inet_pton(family, addr, bin) != 1)
        return fail(err, errlen, AG_EINVAL, "--http: '%s' is not a numeric %s address", addr,
                    family == AF_INET ? "IPv4" : "IPv6");
    const char *port = colon + 1;
    char *end = NULL;
    errno = 0;
    long v = *port >= '0' && *port <= '9' ? strtol(port, &end, 10) : -1;
    if (v < 0 || errno || *end || v > 65535)
        return fail(err, errlen, AG_EINVAL, "--http: bad port in '%s' (0..65535)", text);
    strcpy(cfg->http_host, addr);
    cfg->http_port = (int)v;
    cfg->http_enabled = 1;
    strcpy(cfg->http, text);
    return AG_OK;
}

/* ------------------------------------------------ who may reach the daemon */

int ag_config_host_loopback(const char *host) {
    unsigned char a[16];
    if (strcmp(host, "localhost") == 0) return 1;
    if (inet_pton(AF_INET, host, a) == 1) return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) != 1) return 0; /* another name: not known to be local */
    static const unsigned char lo[16] = {[15] = 1};
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    return memcmp(a, lo, 16) == 0 || (memcmp(a, mapped, 12) == 0 && a[12] == 127);
}

/* The host of SCHEME://HOST:PORT[/...] (IPv6 in brackets) into host; "" for
 * none ("tcp://:7461", every address). 0, or -1 when there is no port. */
static int url_host(const char *rest, char *host, size_t cap) {
    const char *end;
    if (*rest == '[') {
        end = strchr(rest, ']');
        if (!end || end[1] != ':') return -1;
        rest++;
    } else {
        size_t n = strcspn(rest, "/");
        end = NULL;
        for (const char *p = rest; p < rest + n; p++)
            if (*p == ':') end = p;
        if (!end) return -1;
    }
    size_t len = (size_t)(end - rest);
    if (len >= cap) return -1;
    memcpy(host, rest, len);
    host[len] = '\0';
    return 0;
}

ag_url_reach ag_config_url_reach(const char *url) {
    static const char *const plain[] = {"tcp://", "tcp4://", "tcp6://",
                                        "ws://",  "ws4://",  "ws6://"};
    static const char *const tls[] = {"tls+tcp://", "tls+tcp4://", "tls+tcp6://",
                                      "wss://",     "wss4://",     "wss6://"};
    for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++)
        if (strncmp(url, tls[i], strlen(tls[i])) == 0) return AG_REACH_TLS;
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        size_t n = strlen(plain[i]);
        if (strncmp(url, plain[i], n) != 0) continue;
        char host[256];
        if (url_host(url + n, host, sizeof host) != 0) return AG_REACH_NETWORK;
        return ag_config_host_loopback(host) ? AG_REACH_LOOPBACK : AG_REACH_NETWORK;
    }
    return AG_REACH_LOCAL; /* ipc://, inproc://; nng refuses what it does not know */
}

/* Plain TCP stays on loopback unless --allow-remote-tcp; a tls+tcp://
 * listener needs the daemon's certificate and key, and the CA unless
 * --tls-auth none. */
static int check_url(const ag_config *cfg, const char *key, const char *url, int *tls, char *err,
                     size_t errlen) {
    ag_url_reach r = ag_config_url_reach(url);
    if (r == AG_REACH_NETWORK && !cfg->allow_remote_tcp)
        return fail(err, errlen, AG_EINVAL,
                    "--%s %s: plain TCP beyond loopback lets anyone on the network send or "
                    "read runs; use tls+tcp:// with client certificates (--tls-cert, --tls-key, "
                    "--tls-ca), a loopback address, or --allow-remote-tcp to insist",
                    key, url);
    if (r == AG_REACH_TLS && strncmp(url, "wss", 3) == 0)
        return fail(err, errlen, AG_EINVAL, "--%s %s: wss:// is not supported; use tls+tcp://", key,
                    url);
    if (r == AG_REACH_TLS) *tls = 1;
    return AG_OK;
}

static int check_reach(const ag_config *cfg, char *err, size_t errlen) {
    int tls = 0, rc;
    for (size_t i = 0; i < cfg->ningest; i++)
        if ((rc = check_url(cfg, "ingest", cfg->ingest[i], &tls, err, errlen))) return rc;
    if ((rc = check_url(cfg, "query", cfg->query, &tls, err, errlen))) return rc;
    if (cfg->http_enabled && !cfg->allow_remote_tcp && !ag_config_host_loopback(cfg->http_host))
        return fail(err, errlen, AG_EINVAL,
                    "--http %s: the page, API and /metrics have no authentication; keep them on "
                    "a loopback address (a reverse proxy or an SSH tunnel shares them), or give "
                    "--allow-remote-tcp to insist (e.g. for a Prometheus on another host)",
                    cfg->http);
    if (tls && (!cfg->tls_cert[0] || !cfg->tls_key[0]))
        return fail(err, errlen, AG_EINVAL,
                    "a tls+tcp:// listener needs the daemon's certificate and key: --tls-cert "
                    "FILE --tls-key FILE (docs/daemon.md, \"Many nodes\")");
    if (tls && cfg->tls_auth != AG_TLS_AUTH_NONE && !cfg->tls_ca[0])
        return fail(err, errlen, AG_EINVAL,
                    "a tls+tcp:// listener with --tls-auth required needs --tls-ca FILE, the CA "
                    "that clients' certificates must chain to");
    return AG_OK;
}

/* Set option o from text; from_cli tells which source (for URL lists). */
static int set_opt(ag_config *cfg, const opt *o, const char *val, int *urls_reset, char *err,
                   size_t errlen) {
    char *field = (char *)cfg + o->offset;
    char *end;
    switch (o->type) {
    case OPT_URLS: {
        if (urls_reset && !*urls_reset) { /* a new source replaces the old list */
            cfg->ningest = 0;
            *urls_reset = 1;
        }
        if (!*val) return fail(err, errlen, AG_EINVAL, "--%s: empty URL", o->name);
        if (cfg->ningest == AG_CONFIG_MAX_INGEST)
            return fail(err, errlen, AG_EINVAL, "--%s: at most %d listeners", o->name,
                        AG_CONFIG_MAX_INGEST);
        if (strlen(val) >= AG_CONFIG_PATH_MAX)
            return fail(err, errlen, AG_EINVAL, "--%s: URL too long", o->name);
        strcpy(cfg->ingest[cfg->ningest++], val);
        return AG_OK;
    }
    case OPT_STRING:
        if (!*val) return fail(err, errlen, AG_EINVAL, "--%s: empty value", o->name);
        if (strlen(val) >= o->size)
            return fail(err, errlen, AG_EINVAL, "--%s: value too long", o->name);
        strcpy(field, val);
        return AG_OK;
    case OPT_FORMATS: /* resolved by ag_config_load once every definition is in */
        if (strlen(val) >= o->size)
            return fail(err, errlen, AG_EINVAL, "--%s: list too long", o->name);
        strcpy(field, val);
        cfg->nfmts = 0;
        return AG_OK;
    case OPT_DEFINE: return ag_config_define_format(cfg, val, err, errlen);
    case OPT_INT: {
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < (long)o->min || v > (long)o->max)
            return fail(err, errlen, AG_EINVAL, "--%s: '%s' is not an integer in %g..%g", o->name,
                        val, o->min, o->max);
        *(long *)(void *)field = v;
        return AG_OK;
    }
    case OPT_DOUBLE: {
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v) || v < o->min || v > o->max)
            return fail(err, errlen, AG_EINVAL, "--%s: '%s' is not a number in %g..%g", o->name,
                        val, o->min, o->max);
        *(double *)(void *)field = v;
        return AG_OK;
    }
    case OPT_ENUM:
        for (size_t i = 0; o->choices[i]; i++)
            if (strcmp(val, o->choices[i]) == 0) {
                *(int *)(void *)field = o->values[i];
                return AG_OK;
            }
        return fail(err, errlen, AG_EINVAL, "--%s: '%s' is not one of %s", o->name, val, o->arg);
    case OPT_HTTP: return ag_config_set_http(cfg, val, err, errlen);
    case OPT_FLAG: *(int *)(void *)field = 1; return AG_OK;
    case OPT_BOOL:
        if (!*val || strcmp(val, "true") == 0 || strcmp(val, "yes") == 0 || strcmp(val, "1") == 0) {
            *(int *)(void *)field = 1;
            return AG_OK;
        }
        if (strcmp(val, "false") == 0 || strcmp(val, "no") == 0 || strcmp(val, "0") == 0) {
            *(int *)(void *)field = 0;
            return AG_OK;
        }
        return fail(err, errlen, AG_EINVAL, "%s: '%s' is not true or false", o->name, val);
    }
    return AG_EINVAL;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

#define CONFIG_LINE_MAX 4096 /* bytes of one config file line, newline excluded */

static int load_file(ag_config *cfg, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, errlen, AG_EIO, "--config: cannot read %s: %s", path, strerror(errno));
    /* getline, not fgets into a fixed buffer: a long line must be refused
     * whole (fgets would parse its tail, say past a comment, as a line of its
     * own), and a NUL byte seen (it would cut a value short silently). */
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int lineno = 0, rc = AG_OK, urls_reset = 0;
    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n') len--;
        if (len > CONFIG_LINE_MAX) {
            rc = fail(err, errlen, AG_EINVAL, "%s:%d: line longer than %d bytes", path, lineno,
                      CONFIG_LINE_MAX);
            break;
        }
        if (memchr(line, '\0', len)) {
            rc = fail(err, errlen, AG_EINVAL, "%s:%d: NUL byte in line", path, lineno);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = fail(err, errlen, AG_EINVAL, "%s:%d: expected 'key = value'", path, lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        const opt *o = find_opt(key, strlen(key));
        if (!o || !o->file_ok) {
            rc = fail(err, errlen, AG_EINVAL, "%s:%d: unknown key '%.64s'", path, lineno, key);
            break;
        }
        char sub[256];
        if ((rc = set_opt(cfg, o, val, &urls_reset, sub, sizeof sub))) {
            fail(err, errlen, rc, "%s:%d: %s", path, lineno, sub);
            break;
        }
    }
    if (rc == AG_OK && ferror(f)) rc = fail(err, errlen, AG_EIO, "--config: cannot read %s", path);
    free(line);
    fclose(f);
    return rc;
}

/* Walk argv; when only_config, just pick up --config. */
static int parse_args(ag_config *cfg, int argc, char **argv, int only_config, char *err,
                      size_t errlen) {
    int urls_reset = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            return fail(err, errlen, AG_EINVAL, "unexpected argument '%s' (see --help)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_opt(name, len);
        if (!o) return fail(err, errlen, AG_EINVAL, "unknown option '%s' (see --help)", a);
        const char *val = NULL;
        if (o->type == OPT_FLAG || o->type == OPT_BOOL) {
            if (eq) return fail(err, errlen, AG_EINVAL, "--%s takes no value", o->name);
        } else if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            return fail(err, errlen, AG_EINVAL, "--%s needs a value (%s)", o->name, o->arg);
        }
        if (only_config && strcmp(o->name, "config") != 0) continue;
        int rc = set_opt(cfg, o, val ? val : "", &urls_reset, err, errlen);
        if (rc) return rc;
    }
    return AG_OK;
}

int ag_config_load(ag_config *cfg, int argc, char **argv, char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (!options[i].def) continue;
        int rc = set_opt(cfg, &options[i], options[i].def, NULL, err, errlen);
        if (rc) return rc;
    }
    int rc = parse_args(cfg, argc, argv, 1, err, errlen);
    if (rc) return rc;
    if (cfg->config_file[0] && (rc = load_file(cfg, cfg->config_file, err, errlen))) return rc;
    if ((rc = parse_args(cfg, argc, argv, 0, err, errlen))) return rc;
    if ((rc = check_reach(cfg, err, errlen))) return rc;
    return ag_config_set_formats(cfg, cfg->formats, err, errlen);
}

void ag_config_usage(const char *prog) {
    printf("usage: %s [OPTION]...\n"
           "altgradd %s: collects tensor statistics and gradients from trainers, computes\n"
           "quantization scales and bit-stall rates per 8-bit format, stores them in SQLite\n"
           "and answers queries. Every option but --config, --help and --version may also\n"
           "be given in the config file as 'key = value'.\n\n",
           prog, AG_VERSION_STRING);
    for (size_t i = 0; i < NOPTIONS; i++) {
        const opt *o = &options[i];
        char left[96];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        printf("  %-34s %s", left, o->help);
        if (o->def) printf(" (default %s)", o->def);
        if (o->type == OPT_INT || o->type == OPT_DOUBLE) printf(" [%g..%g]", o->min, o->max);
        printf("\n");
    }
}
