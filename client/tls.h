/*
 * tls.h - private to altgrad: the TLS settings of nng's tls+tcp:// transport
 * (mbedTLS underneath), made from PEM files, for the client library (a
 * dialer: checks the daemon's certificate against a CA, may present its own)
 * and the daemon (a listener: presents its certificate, checks the clients'
 * against a CA). Every file is read and checked here, so a bad one is named
 * with what is wrong with it before any connection is tried.
 */
#ifndef AG_CLIENT_TLS_H
#define AG_CLIENT_TLS_H

#include <stddef.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#define AG_TLS_FILE_MAX (1 << 20) /* bytes of one PEM file */

/* Whether url is one of nng's TLS transports (tls+tcp://, tls+tcp4://,
 * tls+tcp6://). */
int ag_tls_url(const char *url);

typedef struct ag_tls_files {
    const char *cert;        /* PEM certificate (chain) presented to the peer; NULL: none */
    const char *key;         /* its PEM private key, unencrypted; with cert */
    const char *ca;          /* PEM CA certificate(s) the peer's must chain to */
    const char *server_name; /* dialer: the name the daemon's certificate must carry */
    /* names of the settings in messages, e.g. "--tls-cert" or "tls_cert" */
    const char *cert_opt, *key_opt, *ca_opt;
} ag_tls_files;

/*
 * A new nng TLS configuration (the caller frees it with nng_tls_config_free
 * once it is set on its dialers/listeners, which hold their own reference).
 * server: listener (NNG_TLS_MODE_SERVER) or dialer. auth: an
 * nng_tls_auth_mode, how the peer's certificate is checked (a dialer always
 * requires the daemon's). Checks: each file readable, at most
 * AG_TLS_FILE_MAX bytes, PEM that mbedTLS parses; the key unencrypted and
 * the private half of the certificate's public key; the certificate inside
 * its validity period. On error returns AG_EINVAL (AG_EIO: a file cannot be
 * read, AG_ENOMEM) with one line in err naming the file and the setting.
 */
int ag_tls_config_new(nng_tls_config **out, int server, int auth, const ag_tls_files *f, char *err,
                      size_t errlen);

#endif
