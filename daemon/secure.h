/*
 * secure.h - the daemon's TLS for its tls+tcp:// listeners (ingest and
 * query): one nng TLS configuration made at start from --tls-cert,
 * --tls-key, --tls-ca and --tls-auth (client/tls.c checks the files), set
 * on every tls+tcp:// listener before it starts.
 */
#ifndef AG_DAEMON_SECURE_H
#define AG_DAEMON_SECURE_H

#include <stddef.h>

#include <nng/nng.h>

#include "daemon/config.h"
#include "daemon/log.h"

/* Read and check the TLS files when some listener of cfg is tls+tcp://
 * (else nothing to do). AG_EINVAL / AG_EIO with one line in err. */
int ag_secure_init(const ag_config *cfg, char *err, size_t errlen);
/* Give listener l (made for url) the TLS configuration when url is
 * tls+tcp://. 0, or AG_ETRANSPORT (logged). */
int ag_secure_listener(nng_listener l, const char *url, ag_logger *lg);
/* Log a warning for each listener reachable from the network without
 * client certificates (--allow-remote-tcp, --tls-auth other than required). */
void ag_secure_warn(const ag_config *cfg, ag_logger *lg);
void ag_secure_fini(void);

#endif
