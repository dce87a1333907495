/*
 * test_ingest.c - daemon/ingest.c: the PULL socket's inbound queue and the
 * bodies of large received messages kept for reuse (nng_msg_body_cache,
 * docs/nng.md): a reused body holds the new message whole, kept bodies fit
 * beside the queue within its bound, and trimming frees them.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/supplemental/util/platform.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/ingest.h"
#include "tests/tmpdir.h"

typedef struct fixture {
    char dir[64];
    ag_config cfg;
    ag_logger log;
    uv_loop_t loop;
    ag_ingest *in;
    int to_sender; /* commands to the sending process */
    pid_t sender;
} fixture;

static fixture F;

static void on_ready(void *ctx) { (void)ctx; }

/* Byte i of message k: differs between messages at every offset. */
static uint8_t pattern(size_t k, size_t i) { return (uint8_t)(i * 31u + k * 7u + (i >> 12)); }

/* The sending process (its own nng, so its messages never touch this
 * process's body cache): sends message k of size bytes for each "k size"
 * line read from fd, until EOF. */
static void sender_main(const char *url, int fd) {
    nng_socket push;
    if (nng_push0_open(&push) || nng_dial(push, url, NULL, NNG_FLAG_NONBLOCK)) _exit(1);
    FILE *in = fdopen(fd, "r");
    size_t k, size;
    while (in && fscanf(in, "%zu %zu", &k, &size) == 2) {
        nng_msg *m = NULL;
        if (nng_msg_alloc(&m, size)) _exit(1);
        uint8_t *b = nng_msg_body(m);
        for (size_t i = 0; i < size; i++) b[i] = pattern(k, i);
        if (nng_sendmsg(push, m, 0)) _exit(1);
    }
    nng_msleep(100); /* let the last one leave */
    nng_close(push);
    _exit(0);
}

/* An ingest on a temporary socket with --state-budget budget (MiB), and a
 * PUSH socket dialed to it. */
static void start(const char *budget) {
    memset(&F, 0, sizeof F);
    strcpy(F.dir, "/tmp/ag_ingest_XXXXXX");
    cr_assert_not_null(mkdtemp(F.dir));
    char url[128];
    snprintf(url, sizeof url, "ipc://%s/in.sock", F.dir);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    F.sender = fork();
    cr_assert_geq(F.sender, 0);
    if (F.sender == 0) {
        close(fds[1]);
        sender_main(url, fds[0]);
    }
    close(fds[0]);
    F.to_sender = fds[1];
    const char *argv[] = {"altgradd", "--ingest", url, "--state-budget", budget};
    char err[256];
    cr_assert_eq(ag_config_load(&F.cfg, 5, (char **)argv, err, sizeof err), AG_OK, "%s", err);
    ag_logger_init(&F.log, AG_LOG_ERROR);
    F.log.out = fopen("/dev/null", "w");
    cr_assert_eq(uv_loop_init(&F.loop), 0);
    cr_assert_eq(ag_ingest_start(&F.in, &F.loop, &F.cfg, &F.log, on_ready, NULL), AG_OK);
}

static void stop(void) {
    close(F.to_sender);
    int status = 0;
    cr_expect_eq(waitpid(F.sender, &status, 0), F.sender);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sender: status %d", status);
    ag_ingest_free(F.in);
    uv_run(&F.loop, UV_RUN_DEFAULT); /* the async handle's close */
    cr_expect_eq(uv_loop_close(&F.loop), 0);
    fclose(F.log.out);
    ag_logger_destroy(&F.log);
    ag_tmpdir_remove(F.dir);
}

static void send_message(size_t k, size_t size) {
    char line[64];
    int len = snprintf(line, sizeof line, "%zu %zu\n", k, size);
    cr_assert_eq(write(F.to_sender, line, (size_t)len), len);
}

/* The next message off the inbound queue (waits for it). */
static nng_msg *next_message(void) {
    for (int i = 0; i < 20000; i++) {
        nng_msg *m = ag_ingest_pop(F.in);
        if (m) return m;
        nng_msleep(1);
    }
    cr_assert_fail("no message arrived");
    return NULL;
}

#define BIG ((size_t)(2u << 20) + 24) /* above AG_INGEST_BODY_MIN, not a power of two */

Test(ingest, a_reused_body_holds_the_new_message_whole) {
    start("4096");
    void *freed[16];
    size_t nfreed = 0, reused = 0;
    for (size_t k = 0; k < 16; k++) {
        send_message(k, BIG);
        nng_msg *m = next_message();
        cr_assert_eq(nng_msg_len(m), BIG);
        const uint8_t *b = nng_msg_body(m);
        for (size_t i = 0; i < BIG; i++)
            if (b[i] != pattern(k, i))
                cr_assert_fail("message %zu, byte %zu: %u, not %u", k, i, b[i], pattern(k, i));
        for (size_t j = 0; j < nfreed; j++) reused += freed[j] == (void *)b;
        freed[nfreed++] = (void *)b;
        nng_msg_free(m);
        cr_expect_gt(ag_ingest_cached_bytes(F.in), 0, "message %zu: its body was not kept", k);
    }
    cr_expect_gt(reused, 0, "no body was used twice");
    ag_ingest_trim(F.in);
    cr_expect_eq(ag_ingest_cached_bytes(F.in), 0);
    stop();
}

Test(ingest, kept_bodies_fit_beside_the_queue_within_its_bound) {
    /* 16 MiB of state: the ingest queue and the kept bodies have 2 MiB. */
    start("16");
    size_t bound = ag_ingest_queue_bytes(&F.cfg), size = (size_t)3 << 19; /* 1.5 MiB */
    cr_assert_eq(bound, (size_t)2 << 20);
    nng_msg *held[4];
    for (size_t k = 0; k < 4; k++) {
        send_message(k, size);
        held[k] = next_message();
    }
    for (size_t k = 0; k < 4; k++) {
        nng_msg_free(held[k]);
        cr_expect_leq(ag_ingest_cached_bytes(F.in), bound, "after %zu freed", k + 1);
    }
    /* One body fits in 2 MiB, and the last one freed is the one kept. */
    cr_expect_gt(ag_ingest_cached_bytes(F.in), size);
    cr_expect_lt(ag_ingest_cached_bytes(F.in), 2 * size);
    /* A message queued and not taken leaves no room for a kept body. */
    send_message(4, size);
    nng_msg *m = next_message();
    send_message(5, size);
    for (int i = 0; i < 20000 && ag_ingest_depth(F.in) == 0; i++) nng_msleep(1);
    cr_assert_eq(ag_ingest_depth(F.in), 1);
    nng_msg_free(m);
    cr_expect_eq(ag_ingest_cached_bytes(F.in), 0, "a kept body would pass the bound");
    nng_msg_free(next_message());
    ag_ingest_trim(F.in);
    cr_expect_eq(ag_ingest_cached_bytes(F.in), 0);
    stop();
}

Test(ingest, small_messages_are_not_kept) {
    start("4096");
    send_message(0, 4096);
    nng_msg_free(next_message());
    send_message(1, AG_INGEST_BODY_MIN / 2);
    nng_msg_free(next_message());
    cr_expect_eq(ag_ingest_cached_bytes(F.in), 0);
    stop();
}
