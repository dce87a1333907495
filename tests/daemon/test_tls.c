/*
 * test_tls.c - tls+tcp:// with client certificates, against the real daemon,
 * with a throwaway CA made at test time by scripts/tls-certs.sh (the openssl
 * CLI): a client whose certificate comes from the daemon's CA logs and
 * queries; one without a certificate, one with a certificate of another CA,
 * and one that does not trust the daemon's certificate get nothing through,
 * and the daemon serves on. At start the daemon refuses plain tcp:// beyond
 * loopback without --allow-remote-tcp, and TLS files that are missing, not
 * PEM, or a key that is not the certificate's; the client refuses the same
 * at open, saying why.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/daemon/harness.h"
#include "tests/tmpdir.h"

static ag_harness H;
static char ca_dir[128], other_dir[128]; /* the daemon's CA, and another */
static char P[16][256];                  /* paths, see the names below */
enum { CA, SERVER_PEM, SERVER_KEY, CLIENT_PEM, CLIENT_KEY, OTHER_CA, OTHER_PEM, OTHER_KEY };

static void path(int i, const char *dir, const char *file) {
    snprintf(P[i], sizeof P[i], "%s/%s", dir, file);
}

static void certs(const char *args) {
    const char *src = getenv("AG_SOURCE_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash '%s/scripts/tls-certs.sh' %s >/dev/null", src ? src : ".",
             args);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (openssl missing?)", cmd);
}

static void setup(void) {
    harness_init(&H);
    snprintf(ca_dir, sizeof ca_dir, "%s/ca", H.dir);
    snprintf(other_dir, sizeof other_dir, "%s/other", H.dir);
    char args[512];
    snprintf(args, sizeof args, "ca %s 2", ca_dir);
    certs(args);
    snprintf(args, sizeof args, "server %s daemon localhost 127.0.0.1 --days 2", ca_dir);
    certs(args);
    snprintf(args, sizeof args, "client %s trainer --days 2", ca_dir);
    certs(args);
    snprintf(args, sizeof args, "ca %s 2", other_dir);
    certs(args);
    snprintf(args, sizeof args, "client %s intruder --days 2", other_dir);
    certs(args);
    path(CA, ca_dir, "ca.pem");
    path(SERVER_PEM, ca_dir, "daemon.pem");
    path(SERVER_KEY, ca_dir, "daemon.key");
    path(CLIENT_PEM, ca_dir, "trainer.pem");
    path(CLIENT_KEY, ca_dir, "trainer.key");
    path(OTHER_CA, other_dir, "ca.pem");
    path(OTHER_PEM, other_dir, "intruder.pem");
    path(OTHER_KEY, other_dir, "intruder.key");
}

static void teardown(void) {
    if (H.pid) harness_stop(&H, SIGKILL);
    ag_tmpdir_remove(ca_dir);
    ag_tmpdir_remove(other_dir);
    harness_fini(&H);
}

TestSuite(tls, .init = setup, .fini = teardown, .timeout = 240);

static char ingest_url[64], query_url[64];

/* The daemon with TLS ingest and query listeners (the harness's ipc ones are
 * replaced: a later --ingest list and --query win). */
static void start_tls_daemon(const char *auth) {
    snprintf(ingest_url, sizeof ingest_url, "tls+tcp://127.0.0.1:%d", harness_free_tcp_port());
    snprintf(query_url, sizeof query_url, "tls+tcp://localhost:%d", harness_free_tcp_port());
    const char *extra[] = {"--ingest",    ingest_url,  "--query",     query_url,  "--tls-cert",
                           P[SERVER_PEM], "--tls-key", P[SERVER_KEY], "--tls-ca", P[CA],
                           "--tls-auth",  auth,        NULL};
    harness_start(&H, extra);
}

static int open_client(ag_client **c, const char *run, const char *cert, const char *key,
                       const char *ca, int timeout_ms) {
    ag_client_opts o = {.ingest_url = ingest_url,
                        .query_url = query_url,
                        .run = run,
                        .policy = AG_QUEUE_DROP,
                        .query_timeout_ms = timeout_ms,
                        .close_timeout_ms = timeout_ms,
                        .tls_cert = cert,
                        .tls_key = key,
                        .tls_ca = ca};
    *c = NULL;
    return ag_client_open(c, &o);
}

static void log_steps(ag_client *c, int steps) {
    float w[64], g[64];
    for (int i = 0; i < 64; i++) {
        w[i] = 1.0f + (float)i / 64;
        g[i] = 1e-3f * (float)(i + 1);
    }
    for (int s = 0; s < steps; s++)
        cr_assert_eq(ag_client_log_sgd(c, (uint64_t)s, "fc.weight", w, g, 64, 0.01f), AG_OK);
}

static void assert_daemon_alive(void) {
    int st;
    cr_assert_eq(waitpid(H.pid, &st, WNOHANG), 0, "altgradd died (see %s)", H.log);
}

static int has_run(ag_run_list *runs, const char *name) {
    for (size_t i = 0; i < runs->n; i++)
        if (strncmp(runs->items[i].name, name, strlen(name)) == 0) return 1;
    return 0;
}

Test(tls, trusted_client_logs_and_queries) {
    start_tls_daemon("required");
    ag_client *c;
    cr_assert_eq(open_client(&c, "tls-run", P[CLIENT_PEM], P[CLIENT_KEY], P[CA], 10000), AG_OK,
                 "%s", ag_client_last_error(NULL));
    log_steps(c, 5);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "flush: %s", ag_client_last_error(c));
    ag_history *h = harness_wait_history(c, "tls-run", "fc.weight", "E5M2", 5);
    cr_assert_eq(h->n, 5);
    ag_free(h);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK, "%s", ag_client_last_error(c));
    cr_assert_geq(st->messages, 6); /* run start and five snapshots */
    ag_free(st);
    cr_assert_eq(ag_client_close(c), 0, "every message confirmed over tls+tcp://");
    assert_daemon_alive();
    /* a clean stop (under ASan: nothing of the TLS setup leaked) */
    int code = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(code) && WEXITSTATUS(code) == 0, "altgradd stopped with status %d", code);
}

/* A client the daemon must refuse (or that must refuse the daemon): no query
 * answers, its run never arrives. */
static void refused(const char *who, const char *cert, const char *key, const char *ca) {
    ag_client *c;
    cr_assert_eq(open_client(&c, who, cert, key, ca, 1500), AG_OK, "%s: %s", who,
                 ag_client_last_error(NULL));
    log_steps(c, 3);
    ag_run_list *runs = NULL;
    int rc = ag_client_runs(c, &runs);
    cr_assert_eq(rc, AG_ETIMEDOUT, "%s: a query got %s", who, ag_strerror(rc));
    cr_assert(strstr(ag_client_last_error(c), "no TLS session"), "%s: %s", who,
              ag_client_last_error(c));
    cr_assert_gt(ag_client_close(c), 0, "%s: its messages cannot have been confirmed", who);
}

Test(tls, refused_clients_and_the_daemon_lives) {
    start_tls_daemon("required");
    refused("nocert", NULL, NULL, P[CA]);
    refused("intruder", P[OTHER_PEM], P[OTHER_KEY], P[CA]);
    /* a client that does not trust the daemon's certificate stops there */
    refused("distrust", P[CLIENT_PEM], P[CLIENT_KEY], P[OTHER_CA]);
    assert_daemon_alive();
    /* the listeners still serve a trusted client, and nothing of the others arrived */
    ag_client *c;
    cr_assert_eq(open_client(&c, "after", P[CLIENT_PEM], P[CLIENT_KEY], P[CA], 10000), AG_OK);
    log_steps(c, 2);
    cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "flush: %s", ag_client_last_error(c));
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_OK, "%s", ag_client_last_error(c));
    cr_assert(has_run(runs, "after"));
    cr_assert(!has_run(runs, "nocert") && !has_run(runs, "intruder") && !has_run(runs, "distrust"),
              "a refused client's run arrived");
    ag_free(runs);
    cr_assert_eq(ag_client_close(c), 0);
    assert_daemon_alive();
}

/* The refusals above are the client certificate check's: with --tls-auth
 * none clients without one, or with one of another CA, get in. */
Test(tls, auth_none_admits_any_client) {
    start_tls_daemon("none");
    const char *certs_[][2] = {{NULL, NULL}, {P[OTHER_PEM], P[OTHER_KEY]}};
    for (size_t i = 0; i < 2; i++) {
        ag_client *c;
        cr_assert_eq(open_client(&c, "anon", certs_[i][0], certs_[i][1], P[CA], 10000), AG_OK);
        log_steps(c, 2);
        cr_assert_eq(ag_client_flush(c, 30000), AG_OK, "flush: %s", ag_client_last_error(c));
        cr_assert_eq(ag_client_close(c), 0);
    }
    /* the client still checks the daemon's certificate */
    refused("distrust", NULL, NULL, P[OTHER_CA]);
    assert_daemon_alive();
}

Test(tls, client_checks_its_files_at_open) {
    snprintf(ingest_url, sizeof ingest_url, "tls+tcp://127.0.0.1:%d", harness_free_tcp_port());
    snprintf(query_url, sizeof query_url, "tls+tcp://127.0.0.1:%d", harness_free_tcp_port());
    ag_client *c;
    /* no CA: the daemon's certificate could not be checked */
    cr_assert_eq(open_client(&c, "x", P[CLIENT_PEM], P[CLIENT_KEY], NULL, 1000), AG_EINVAL);
    cr_assert(strstr(ag_client_last_error(NULL), "tls_ca"), "%s", ag_client_last_error(NULL));
    /* a key that is not the certificate's */
    cr_assert_eq(open_client(&c, "x", P[CLIENT_PEM], P[OTHER_KEY], P[CA], 1000), AG_EINVAL);
    cr_assert(strstr(ag_client_last_error(NULL), "does not match"), "%s",
              ag_client_last_error(NULL));
    /* a certificate without its key */
    cr_assert_eq(open_client(&c, "x", P[CLIENT_PEM], NULL, P[CA], 1000), AG_EINVAL);
    /* a file that is missing, one that is no PEM */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.pem", H.dir);
    cr_assert_eq(open_client(&c, "x", missing, P[CLIENT_KEY], P[CA], 1000), AG_EIO);
    cr_assert(strstr(ag_client_last_error(NULL), missing));
    cr_assert_eq(open_client(&c, "x", P[CLIENT_PEM], P[CLIENT_KEY], "/etc/hostname", 1000),
                 AG_EINVAL);
    cr_assert(strstr(ag_client_last_error(NULL), "not a PEM file"), "%s",
              ag_client_last_error(NULL));
    /* the environment fills in what the options leave out */
    setenv("ALTGRAD_TLS_CERT", P[CLIENT_PEM], 1);
    setenv("ALTGRAD_TLS_KEY", P[CLIENT_KEY], 1);
    setenv("ALTGRAD_TLS_CA", P[CA], 1);
    cr_assert_eq(open_client(&c, "x", NULL, NULL, NULL, 1000), AG_OK, "%s",
                 ag_client_last_error(NULL));
    cr_assert_str_empty(ag_client_last_error(NULL));
    ag_client_close(c);
    setenv("ALTGRAD_TLS_KEY", P[OTHER_KEY], 1);
    cr_assert_eq(open_client(&c, "x", NULL, NULL, NULL, 1000), AG_EINVAL);
    cr_assert(strstr(ag_client_last_error(NULL), "$ALTGRAD_TLS_KEY"), "%s",
              ag_client_last_error(NULL));
    unsetenv("ALTGRAD_TLS_CERT");
    unsetenv("ALTGRAD_TLS_KEY");
    unsetenv("ALTGRAD_TLS_CA");
}

/* Run altgradd with args (after the harness's database and no HTTP); return
 * its exit status once it exits by itself, its stderr in out. */
static int daemon_refuses(const char *const *args, char *out, size_t cap) {
    const char *b = getenv("AG_BUILD_DIR");
    char bin[512], errfile[300];
    snprintf(bin, sizeof bin, "%s/daemon/altgradd", b ? b : ".");
    snprintf(errfile, sizeof errfile, "%s/refused.log", H.dir);
    const char *argv[32] = {bin, "--db", H.db, "--http", "off", "--query", H.query};
    size_t n = 7;
    for (size_t i = 0; args[i] && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) dup2(fd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    FILE *f = fopen(errfile, "r");
    size_t got = f ? fread(out, 1, cap - 1, f) : 0;
    out[got] = '\0';
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(tls, daemon_refuses_plain_tcp_beyond_loopback) {
    char port[16], url[64], out[2048];
    snprintf(port, sizeof port, "%d", harness_free_tcp_port());
    const char *hosts[] = {"0.0.0.0", "192.0.2.7", "[::]", "", "example.org"};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        snprintf(url, sizeof url, "tcp://%s:%s", hosts[i], port);
        const char *args[] = {"--ingest", url, NULL};
        cr_assert_eq(daemon_refuses(args, out, sizeof out), 2, "%s: %s", url, out);
        cr_assert(strstr(out, "--allow-remote-tcp") && strstr(out, "tls+tcp://"), "%s", out);
    }
    const char *query[] = {"--ingest", H.ingest, "--query", "tcp://0.0.0.0:1", NULL};
    cr_assert_eq(daemon_refuses(query, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "--query tcp://0.0.0.0:1"), "%s", out);
    const char *http[] = {"--ingest", H.ingest, "--http", "0.0.0.0:0", NULL};
    cr_assert_eq(daemon_refuses(http, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "--allow-remote-tcp"), "%s", out);
    /* insisting starts it, with a warning in the log */
    snprintf(url, sizeof url, "tcp://0.0.0.0:%s", port);
    const char *insist[] = {"--ingest", url, "--allow-remote-tcp", NULL};
    harness_start(&H, insist);
    int st = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "altgradd stopped with status %d", st);
    FILE *f = fopen(H.log, "r");
    cr_assert_not_null(f);
    size_t got = fread(out, 1, sizeof out - 1, f);
    out[got] = '\0';
    fclose(f);
    cr_assert(strstr(out, "plain TCP open beyond loopback"), "%s", out);
}

Test(tls, daemon_checks_its_files_at_start) {
    char url[64], out[2048], missing[300];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", harness_free_tcp_port());
    snprintf(missing, sizeof missing, "%s/none.key", H.dir);
    struct {
        const char *cert, *key, *ca, *want;
    } cases[] = {
        {NULL, NULL, P[CA], "--tls-cert FILE --tls-key FILE"},
        {P[SERVER_PEM], P[SERVER_KEY], NULL, "needs --tls-ca"},
        {P[SERVER_PEM], missing, P[CA], "No such file"},
        {P[SERVER_PEM], P[CLIENT_KEY], P[CA], "does not match the certificate"},
        {P[SERVER_PEM], P[SERVER_KEY], "/etc/hostname", "not a PEM file"},
        {P[SERVER_KEY], P[SERVER_KEY], P[CA], "not a PEM certificate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[12] = {"--ingest", url};
        size_t n = 2;
        if (cases[i].cert) args[n++] = "--tls-cert", args[n++] = cases[i].cert;
        if (cases[i].key) args[n++] = "--tls-key", args[n++] = cases[i].key;
        if (cases[i].ca) args[n++] = "--tls-ca", args[n++] = cases[i].ca;
        args[n] = NULL;
        cr_assert_eq(daemon_refuses(args, out, sizeof out), 2, "case %zu: %s", i, out);
        cr_assert(strstr(out, cases[i].want), "case %zu: want '%s' in: %s", i, cases[i].want, out);
    }
}
