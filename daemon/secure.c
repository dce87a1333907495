/*
 * secure.c - the daemon's TLS configuration for its tls+tcp:// listeners
 * (see secure.h). Made once at start, before any listener; listeners hold
 * their own references, so fini may run while they are open.
 */
#include "daemon/secure.h"

#include <string.h>

#include "client/tls.h"

_Static_assert(AG_TLS_AUTH_NONE == (int)NNG_TLS_AUTH_MODE_NONE &&
                   AG_TLS_AUTH_REQUIRED == (int)NNG_TLS_AUTH_MODE_REQUIRED,
               "ag_tls_auth mirrors nng_tls_auth_mode");

static nng_tls_config *server_tls; /* NULL: no tls+tcp:// listener */

int ag_secure_init(const ag_config *cfg, char *err, size_t errlen) {
    int any = ag_tls_url(cfg->query);
    for (size_t i = 0; i < cfg->ningest; i++) any |= ag_tls_url(cfg->ingest[i]);
    if (!any) return AG_OK;
    ag_tls_files f = {.cert = cfg->tls_cert[0] ? cfg->tls_cert : NULL,
                      .key = cfg->tls_key[0] ? cfg->tls_key : NULL,
                      .ca = cfg->tls_ca[0] ? cfg->tls_ca : NULL,
                      .cert_opt = "--tls-cert",
                      .key_opt = "--tls-key",
                      .ca_opt = "--tls-ca"};
    return ag_tls_config_new(&server_tls, 1, cfg->tls_auth, &f, err, errlen);
}

int ag_secure_listener(nng_listener l, const char *url, ag_logger *lg) {
    if (!ag_tls_url(url)) return AG_OK;
    int rv = server_tls ? nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, server_tls) : NNG_EINVAL;
    if (rv) {
        ag_log(lg, AG_LOG_ERROR, "cannot set up TLS on %s: %s", url,
               server_tls ? nng_strerror(rv) : "no TLS configuration");
        return AG_ETRANSPORT;
    }
    return AG_OK;
}

static void warn_url(const ag_config *cfg, const char *what, const char *url, ag_logger *lg) {
    ag_url_reach r = ag_config_url_reach(url);
    if (r == AG_REACH_NETWORK)
        ag_log(lg, AG_LOG_WARNING,
               "%s %s: plain TCP open beyond loopback (--allow-remote-tcp): anyone who reaches "
               "it can %s, unencrypted; tls+tcp:// with client certificates is the safe way",
               what, url, strcmp(what, "ingest") == 0 ? "send runs" : "read every run");
    else if (r == AG_REACH_TLS && cfg->tls_auth != AG_TLS_AUTH_REQUIRED)
        ag_log(lg, AG_LOG_WARNING,
               "%s %s: --tls-auth none: encrypted, but anyone who reaches it can %s", what, url,
               strcmp(what, "ingest") == 0 ? "send runs" : "read every run");
}

void ag_secure_warn(const ag_config *cfg, ag_logger *lg) {
    for (size_t i = 0; i < cfg->ningest; i++) warn_url(cfg, "ingest", cfg->ingest[i], lg);
    warn_url(cfg, "query", cfg->query, lg);
    if (cfg->http_enabled && !ag_config_host_loopback(cfg->http_host))
        ag_log(lg, AG_LOG_WARNING,
               "http %s: open beyond loopback (--allow-remote-tcp), without authentication",
               cfg->http);
}

void ag_secure_fini(void) {
    if (server_tls) nng_tls_config_free(server_tls);
    server_tls = NULL;
}
