/*
 * tls.c - TLS settings from PEM files for nng's tls+tcp:// (see tls.h).
 * nng hands the PEM text to mbedTLS and answers a bad file with one generic
 * code, and never compares a key with its certificate; so the files are
 * first parsed here with mbedTLS directly, each failure named.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include "altgrad/altgrad.h"
#include "core/errctx.h"
#include "client/tls.h"

int ag_tls_url(const char *url) {
    return url && (strncmp(url, "tls+tcp://", 10) == 0 || strncmp(url, "tls+tcp4://", 11) == 0 ||
                   strncmp(url, "tls+tcp6://", 11) == 0);
}

/* a failure: its text into err, its code returned (core/errctx.h) */
#define fail ag_errbuf_set

/* The whole of path, NUL-terminated, into *out (malloc'd); *len excludes
 * the NUL. */
static int read_pem(const char *path, const char *opt, char **out, size_t *len, char *err,
                    size_t errlen) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, AG_EIO, "%s %s: cannot read: %s", opt, path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return fail(err, errlen, AG_EINVAL, "%s %s: not a regular file", opt, path);
    }
    if (sb.st_size > AG_TLS_FILE_MAX) {
        fclose(f);
        return fail(err, errlen, AG_EINVAL, "%s %s: larger than %d bytes, not a PEM file", opt,
                    path, AG_TLS_FILE_MAX);
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        fclose(f);
        return fail(err, errlen, AG_ENOMEM, "%s %s: out of memory", opt, path);
    }
    size_t n = fread(buf, 1, (size_t)sb.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return fail(err, errlen, AG_EIO, "%s %s: read error", opt, path);
    }
    buf[n] = '\0';
    if (n == 0 || strlen(buf) != n || !strstr(buf, "-----BEGIN ")) {
        free(buf);
        return fail(err, errlen, AG_EINVAL, "%s %s: not a PEM file (no '-----BEGIN' line)", opt,
                    path);
    }
    *out = buf;
    *len = n;
    return AG_OK;
}

static void mbed_text(int rc, char *out, size_t cap) {
    mbedtls_strerror(rc, out, cap);
    if (!*out) snprintf(out, cap, "mbedTLS error -0x%04x", (unsigned)-rc);
}

/* Parse the certificate(s) of pem into crt; every one must parse. */
static int parse_certs(mbedtls_x509_crt *crt, const char *pem, size_t len, const char *opt,
                       const char *path, char *err, size_t errlen) {
    char why[160];
    int rc = mbedtls_x509_crt_parse(crt, (const unsigned char *)pem, len + 1);
    if (rc < 0) {
        mbed_text(rc, why, sizeof why);
        return fail(err, errlen, AG_EINVAL, "%s %s: not a PEM certificate: %s", opt, path, why);
    }
    if (rc > 0)
        return fail(err, errlen, AG_EINVAL, "%s %s: %d of its certificates cannot be parsed", opt,
                    path, rc);
    return AG_OK;
}

/* The certificate's validity period contains now (where mbedTLS has time). */
static int check_dates(const mbedtls_x509_crt *crt, const char *opt, const char *path, char *err,
                       size_t errlen) {
    const mbedtls_x509_time *to = &crt->valid_to, *from = &crt->valid_from;
    if (mbedtls_x509_time_is_past(to))
        return fail(err, errlen, AG_EINVAL,
                    "%s %s: the certificate expired on %04d-%02d-%02d %02d:%02d:%02d UTC", opt,
                    path, to->year, to->mon, to->day, to->hour, to->min, to->sec);
    if (mbedtls_x509_time_is_future(from))
        return fail(err, errlen, AG_EINVAL,
                    "%s %s: the certificate is valid only from %04d-%02d-%02d %02d:%02d:%02d UTC",
                    opt, path, from->year, from->mon, from->day, from->hour, from->min, from->sec);
    return AG_OK;
}

/* cert and key: parse both and check the key is the certificate's. */
static int check_pair(const ag_tls_files *f, const char *cert, size_t cert_len, const char *key,
                      size_t key_len, char *err, size_t errlen) {
    mbedtls_x509_crt crt;
    mbedtls_pk_context pk;
    char why[160];
    mbedtls_x509_crt_init(&crt);
    mbedtls_pk_init(&pk);
    int rc = parse_certs(&crt, cert, cert_len, f->cert_opt, f->cert, err, errlen);
    if (!rc) rc = check_dates(&crt, f->cert_opt, f->cert, err, errlen);
    if (!rc) {
#if MBEDTLS_VERSION_MAJOR < 3
        int m = mbedtls_pk_parse_key(&pk, (const unsigned char *)key, key_len + 1, NULL, 0);
#else
#error "altgrad's TLS checks are written for mbedTLS 2 (Debian 12's 2.28)"
#endif
        if (m == MBEDTLS_ERR_PK_PASSWORD_REQUIRED || m == MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
            rc = fail(err, errlen, AG_EINVAL,
                      "%s %s: the key is encrypted; give an unencrypted key (readable only by "
                      "its user)",
                      f->key_opt, f->key);
        } else if (m != 0) {
            mbed_text(m, why, sizeof why);
            rc = fail(err, errlen, AG_EINVAL, "%s %s: not a PEM private key: %s", f->key_opt,
                      f->key, why);
        } else if ((m = mbedtls_pk_check_pair(&crt.pk, &pk)) != 0) {
            rc = fail(err, errlen, AG_EINVAL,
                      "%s %s: the key does not match the certificate in %s (%s)", f->key_opt,
                      f->key, f->cert, f->cert_opt);
        }
    }
    mbedtls_pk_free(&pk);
    mbedtls_x509_crt_free(&crt);
    return rc;
}

static int check_ca(const ag_tls_files *f, const char *ca, size_t ca_len, char *err,
                    size_t errlen) {
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int rc = parse_certs(&crt, ca, ca_len, f->ca_opt, f->ca, err, errlen);
    for (const mbedtls_x509_crt *c = &crt; !rc && c; c = c->next)
        rc = check_dates(c, f->ca_opt, f->ca, err, errlen);
    mbedtls_x509_crt_free(&crt);
    return rc;
}

static int nng_fail(char *err, size_t errlen, int rv, const char *what) {
    return fail(err, errlen, rv == NNG_ENOMEM ? AG_ENOMEM : AG_EINVAL, "TLS: %s: %s", what,
                nng_strerror(rv));
}

int ag_tls_config_new(nng_tls_config **out, int server, int auth, const ag_tls_files *f, char *err,
                      size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if ((f->cert != NULL) != (f->key != NULL))
        return fail(err, errlen, AG_EINVAL, "TLS: %s and %s go together: give both or neither",
                    f->cert_opt, f->key_opt);
    if (server && !f->cert)
        return fail(err, errlen, AG_EINVAL,
                    "a tls+tcp:// listener needs its certificate and key (%s, %s)", f->cert_opt,
                    f->key_opt);
    if (auth != NNG_TLS_AUTH_MODE_NONE && !f->ca)
        return fail(err, errlen, AG_EINVAL, "TLS: %s is needed to check the %s certificate",
                    f->ca_opt, server ? "clients'" : "daemon's");
    char *cert = NULL, *key = NULL, *ca = NULL;
    size_t cert_len = 0, key_len = 0, ca_len = 0;
    nng_tls_config *cfg = NULL;
    int rc = AG_OK, rv;
    if (f->cert && ((rc = read_pem(f->cert, f->cert_opt, &cert, &cert_len, err, errlen)) ||
                    (rc = read_pem(f->key, f->key_opt, &key, &key_len, err, errlen)) ||
                    (rc = check_pair(f, cert, cert_len, key, key_len, err, errlen))))
        goto out;
    if (f->ca && ((rc = read_pem(f->ca, f->ca_opt, &ca, &ca_len, err, errlen)) ||
                  (rc = check_ca(f, ca, ca_len, err, errlen))))
        goto out;
    if ((rv = nng_tls_config_alloc(&cfg, server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT))) {
        rc = nng_fail(err, errlen, rv,
                      rv == NNG_ENOTSUP ? "this build of nng has no TLS (scripts/build-nng.sh)"
                                        : "cannot allocate a configuration");
        goto out;
    }
    if (cert && (rv = nng_tls_config_own_cert(cfg, cert, key, NULL))) {
        rc = nng_fail(err, errlen, rv, "nng refused the certificate and key");
        goto out;
    }
    if (ca && (rv = nng_tls_config_ca_chain(cfg, ca, NULL))) {
        rc = nng_fail(err, errlen, rv, "nng refused the CA certificates");
        goto out;
    }
    if ((rv = nng_tls_config_auth_mode(cfg, (nng_tls_auth_mode)auth))) {
        rc = nng_fail(err, errlen, rv, "bad authentication mode");
        goto out;
    }
    if (!server && f->server_name && (rv = nng_tls_config_server_name(cfg, f->server_name))) {
        rc = nng_fail(err, errlen, rv, "bad server name");
        goto out;
    }
    *out = cfg;
    cfg = NULL;
out:
    if (cfg) nng_tls_config_free(cfg);
    if (key) {
        memset(key, 0, key_len); /* private key text: no copy left in freed memory */
        free(key);
    }
    free(cert);
    free(ca);
    return rc;
}
