/*
 * test_shm.c - snapshots through shared memory (proto/shm.h, client/shm.c,
 * daemon/shm.c) against the real altgradd: the same snapshots give the same
 * results through a client's segment as through the socket (also through a
 * ring smaller than some of them, and a record over half the ring fits it
 * once empty); hostile messages naming segments the daemon must not map (an
 * unknown descriptor, a plain file, an unsealed memfd, a wrong header, a
 * size over the file's) are rejected and counted (each refusal in /metrics
 * too), an offer whose segment is refused is filed all the same, and the
 * daemon serves on; a process scribbling over its own ring while the
 * daemon reads it does not bring the daemon down, and what it counts comes
 * from one copy of a record, taken before the record is released; a client
 * keeps using its segment across a restart of the daemon.
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "proto/shm.h"
#include "tests/daemon/harness.h"
#include "tests/sql_results.h"
#include "tests/daemon/results_dump.h"

static ag_harness H;

static void setup(void) { harness_init(&H); }
static void teardown(void) { harness_fini(&H); }

TestSuite(shm, .init = setup, .fini = teardown, .timeout = 120);

#define LR 0.01f

/* ------------------------------------------------------------- helpers */

static ag_client *open_client(const char *run, size_t shm_bytes, size_t sample_max) {
    ag_client_opts o = {.ingest_url = H.ingest,
                        .query_url = H.query,
                        .run = run,
                        .policy = AG_QUEUE_BLOCK,
                        .query_timeout_ms = 10000,
                        .sample_max = sample_max,
                        .shm_bytes = shm_bytes};
    ag_client *c = NULL;
    int err = ag_client_open(&c, &o);
    cr_assert_eq(err, AG_OK, "client open: %s", ag_strerror(err));
    return c;
}

static ag_client_stats stats_of(ag_client *c) {
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    return st;
}

static void flush_ok(ag_client *c) {
    int rc = ag_client_flush(c, 60000);
    cr_assert_eq(rc, AG_OK, "flush: %s (%s)", ag_strerror(rc), ag_client_last_error(c));
}

/* Deterministic weights and gradients of a tensor at a step; the amplitude
 * moves so scales change between some steps and flips re-encode. */
static void make_tensor(uint64_t step, unsigned salt, size_t n, float *w, float *g) {
    float amp = step % 3 == 1 ? 4.0f + (float)salt : 1.0f + 0.25f * (float)step;
    for (size_t i = 0; i < n; i++) {
        w[i] = amp * sinf((float)i * 0.37f + (float)step * 0.11f + (float)salt);
        g[i] = 1e-3f * cosf((float)i * 1.3f + (float)step + (float)salt) * (float)(1 + i % 7);
    }
}

/* float32 to bfloat16, rounding to nearest even (finite inputs). */
static void to_bf16(const float *x, uint16_t *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        out[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
}

typedef struct tensor_plan {
    const char *name;
    size_t n;
    int dtype;  /* AG_DTYPE_F32 or AG_DTYPE_BF16 */
    int update; /* 1: update form (u = lr * g), 0: SGD form */
} tensor_plan;

/* Log tensor t of plan at step through c. */
static void log_one(ag_client *c, const tensor_plan *t, unsigned salt, uint64_t step) {
    float *w = malloc(t->n * sizeof *w), *g = malloc(t->n * sizeof *g);
    uint16_t *wb = malloc(t->n * sizeof *wb), *gb = malloc(t->n * sizeof *gb);
    cr_assert(w && g && wb && gb);
    make_tensor(step, salt, t->n, w, g);
    if (t->update)
        for (size_t i = 0; i < t->n; i++) g[i] *= -LR;
    ag_snapshot s = {.step = step, .tensor = t->name, .dtype = t->dtype, .n = t->n};
    if (t->dtype == AG_DTYPE_BF16) {
        to_bf16(w, wb, t->n);
        to_bf16(g, gb, t->n);
        s.w = wb;
        if (t->update)
            s.u = gb;
        else
            s.g = gb;
    } else {
        s.w = w;
        if (t->update)
            s.u = g;
        else
            s.g = g;
    }
    if (!t->update) s.lr = LR;
    int rc = ag_client_log_snapshot(c, &s);
    cr_assert_eq(rc, AG_OK, "%s step %llu: %s", t->name, (unsigned long long)step, ag_strerror(rc));
    free(w);
    free(g);
    free(wb);
    free(gb);
}

/* dump_results, then the database and its -wal and -shm files removed. */
static char *take_results(size_t *rows) {
    char *out = results_dump(H.db, rows);
    remove(H.db);
    char side[200];
    snprintf(side, sizeof side, "%s-wal", H.db);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", H.db);
    remove(side);
    return out;
}

/* One daemon, one client with shm_bytes and sample_max, steps of every
 * tensor of plan (a flush every flush_every steps), then the results table
 * as text; *st: the client's stats at the end. */
static char *log_plan(const tensor_plan *plan, size_t ntensors, uint64_t steps,
                      uint64_t flush_every, size_t shm_bytes, size_t sample_max,
                      ag_client_stats *st, size_t *rows) {
    harness_start(&H, NULL);
    ag_client *c = open_client("shm", shm_bytes, sample_max);
    for (uint64_t s = 1; s <= steps; s++) {
        for (size_t t = 0; t < ntensors; t++) log_one(c, &plan[t], (unsigned)t, s);
        if (s % flush_every == 0 || s == steps) flush_ok(c);
    }
    for (size_t t = 0; t < ntensors; t++)
        ag_free(harness_wait_history(c, "shm", plan[t].name, "E5M2", steps));
    *st = stats_of(c);
    ag_client_close(c);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    return take_results(rows);
}

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* The first line where a and b differ, for the failure message. */
static void first_difference(const char *a, const char *b, char *out, size_t cap) {
    const char *la = a, *lb = b;
    while (*la && *lb) {
        const char *ea = strchr(la, '\n'), *eb = strchr(lb, '\n');
        if (!ea || !eb) break;
        if (ea - la != eb - lb || memcmp(la, lb, (size_t)(ea - la)) != 0) {
            snprintf(out, cap, "shm: %.*s | inline: %.*s", (int)(ea - la), la, (int)(eb - lb), lb);
            return;
        }
        la = ea + 1;
        lb = eb + 1;
    }
    snprintf(out, cap, "(lengths differ)");
}

/* The two dumps are the same text (frees both). */
static void expect_same_results(char *a, char *b) {
    char diff[1200] = "";
    if (strcmp(a, b) != 0) first_difference(a, b, diff, sizeof diff);
    cr_expect_str_eq(a, b, "first difference: %s", diff);
    free(a);
    free(b);
}

/* -------------------------------------------------- a. the same results */

Test(shm, results_through_shared_memory_equal_results_through_the_socket) {
    static const tensor_plan plan[] = {
        {"a.sgd.f32", 50001, AG_DTYPE_F32, 0},
        {"b.upd.f32", 3001, AG_DTYPE_F32, 1},
        {"c.sgd.bf16", 40000, AG_DTYPE_BF16, 0},
        {"d.upd.bf16", 777, AG_DTYPE_BF16, 1},      /* x not 4-aligned behind w */
        {"e.sampled.f32", 150000, AG_DTYPE_F32, 0}, /* over sample_max: a subset */
        {"f.odd.f32", 1, AG_DTYPE_F32, 1},
    };
    const size_t nt = sizeof plan / sizeof plan[0];
    const uint64_t steps = 7;
    ag_client_stats s1, s2;
    size_t r1, r2;
    char *via_shm = log_plan(plan, nt, steps, 1, 0, 100000, &s1, &r1);
    char *inline_ = log_plan(plan, nt, steps, 1, AG_SHM_OFF, 100000, &s2, &r2);
    cr_expect_eq(r1, nt * 5 * steps, "rows: %zu", r1);
    cr_expect_eq(count_lines(via_shm), r1);
    cr_expect_null(strstr(via_shm, " null "), "no flips are unknown in a clean run");
    cr_expect_eq(s1.snapshots, nt * steps);
    cr_expect_eq(s2.snapshots, nt * steps);
    /* Flushed every step: after the first step's offer, all of them. */
    cr_expect_geq(s1.shm_snapshots, nt * (steps - 1), "shm_snapshots %llu",
                  (unsigned long long)s1.shm_snapshots);
    cr_expect_eq(s2.shm_snapshots, 0);
    expect_same_results(via_shm, inline_);
}

/* ------------------------------------------------- b. a ring too small */

Test(shm, a_small_ring_gives_the_same_results_and_sends_what_does_not_fit_inline) {
    /* The ring of the smallest segment holds 65,536 bytes: a record is
     * 2 * n * element size. */
    static const tensor_plan plan[] = {
        {"s.small.f32", 1000, AG_DTYPE_F32, 0},    /* 8,000 */
        {"s.mid.bf16", 6000, AG_DTYPE_BF16, 1},    /* 24,000 */
        {"s.big.f32", 9000, AG_DTYPE_F32, 0},      /* 72,000: never fits */
        {"s.half.f32", 3000, AG_DTYPE_F32, 1},     /* 24,000 */
        {"s.huge.bf16", 100000, AG_DTYPE_BF16, 0}, /* 400,000: never fits */
        {"s.tiny.bf16", 33, AG_DTYPE_BF16, 0},
    };
    const size_t nt = sizeof plan / sizeof plan[0], fitting = 4;
    const uint64_t steps = 12;
    ag_client_stats s1, s2;
    size_t r1, r2;
    /* flushed every third step: the ring fills in between and the client
     * waits for the daemon to release records */
    char *small = log_plan(plan, nt, steps, 3, AG_SHM_MIN_SIZE, 0, &s1, &r1);
    char *inline_ = log_plan(plan, nt, steps, 3, AG_SHM_OFF, 0, &s2, &r2);
    cr_expect_eq(r1, nt * 5 * steps, "rows: %zu", r1);
    cr_expect_null(strstr(small, " null "), "no flips are unknown in a clean run");
    cr_expect_eq(s1.snapshots, nt * steps);
    cr_expect_gt(s1.shm_snapshots, 0);
    cr_expect_lt(s1.shm_snapshots, s1.snapshots);
    /* Under AG_QUEUE_BLOCK every record that fits the ring goes through it
     * once the daemon has the segment (acknowledged by the first flush, after
     * step 3, at the latest). */
    cr_expect_geq(s1.shm_snapshots, fitting * (steps - 3), "shm_snapshots %llu",
                  (unsigned long long)s1.shm_snapshots);
    cr_expect_leq(s1.shm_snapshots, fitting * steps);
    cr_expect_eq(s2.shm_snapshots, 0);
    expect_same_results(small, inline_);
}

/* A record over half the ring, logged with nothing else in the ring (every
 * earlier record released), fits whatever the ring's head: the gap skipped to
 * start it at the ring's start holds nothing. */
Test(shm, a_record_over_half_the_ring_fits_an_empty_ring_wherever_its_head_is) {
    static const tensor_plan plan[] = {
        {"h.quarter.f32", 2000, AG_DTYPE_F32, 0}, /* 16,000: moves the head */
        {"h.large.f32", 5000, AG_DTYPE_F32, 0},   /* 40,000: over half the ring */
    };
    harness_start(&H, NULL);
    ag_client *c = open_client("half", AG_SHM_MIN_SIZE, 0);
    log_one(c, &plan[0], 0, 1); /* the offer */
    flush_ok(c);
    /* head at 0 (or 16,000 had the offer been acked at once): 2 quarters
     * put it at 32,000 or 48,000, each past the large record's room before
     * the ring's end and short of its size behind. */
    uint64_t step = 2;
    for (int round = 0; round < 3; round++, step++) {
        ag_client_stats before = stats_of(c);
        log_one(c, &plan[0], 0, step);
        log_one(c, &plan[0], 0, step + 100);
        flush_ok(c); /* everything is read and released: the ring is empty */
        log_one(c, &plan[1], 1, step);
        flush_ok(c);
        ag_client_stats after = stats_of(c);
        cr_expect_eq(after.shm_snapshots - before.shm_snapshots, 3,
                     "round %d: %llu of 3 through shared memory", round,
                     (unsigned long long)(after.shm_snapshots - before.shm_snapshots));
    }
    ag_client_close(c);
}

/* ------------------------------------------------ c. hostile messages */

static nng_socket dial(void) {
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    cr_assert_eq(nng_dial(s, H.ingest, NULL, 0), 0);
    return s;
}

static void push(nng_socket s, const ag_buf *b) {
    cr_assert_eq(nng_send(s, (void *)b->data, b->len, 0), 0);
}

static void send_start(nng_socket s, const char *run, uint64_t cid) {
    ag_buf b;
    ag_buf_init(&b);
    ag_msg m = {.type = AG_MSG_RUN_START};
    m.hdr = (ag_stream_hdr){run, cid, 0, 0};
    m.u.run_start = (ag_msg_run_start){.host = "h", .pid = (int64_t)getpid(), .time_ms = 1};
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK);
    push(s, &b);
    ag_buf_free(&b);
}

#define RN 256 /* elements of the raw snapshots */

/* A raw float32 SGD snapshot of RN elements: with shm (NULL: no key) and
 * inline arrays unless shm->has_at. */
static void send_snapshot(nng_socket s, const char *run, uint64_t cid, uint64_t seq,
                          const char *tensor, uint64_t step, const ag_msg_shm *shm, int dtype) {
    static float data[2 * RN];
    for (int i = 0; i < RN; i++) {
        data[i] = 0.5f + (float)i * 0.01f + (float)step * 1e-3f;
        data[RN + i] = 1e-3f * (float)((i + (int)step) % 5);
    }
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){run, cid, seq, 0};
    m.u.snapshot = (ag_msg_snapshot){
        .step = step, .tensor = tensor, .dtype = dtype, .form = AG_FORM_SGD, .lr = 0.01, .n = RN};
    if (shm) m.u.snapshot.shm = *shm;
    if (!shm || !shm->has_at) {
        m.u.snapshot.w = data;
        m.u.snapshot.x = (const uint8_t *)data + RN * ag_proto_dtype_size(dtype);
    }
    ag_buf b;
    ag_buf_init(&b);
    int rc = ag_proto_encode(&b, &m);
    cr_assert_eq(rc, AG_OK, "%s", ag_errctx_text(&m.err));
    push(s, &b);
    ag_buf_free(&b);
}

/* A segment of size bytes (a memfd; sealed with seals unless 0; a plain file
 * in the test's directory when file) whose header says magic, token and
 * hsize; its ring holds valid float32 records. */
static int make_segment(int file, int sealing, int seals, uint64_t size, uint64_t magic,
                        uint64_t token, uint64_t hsize) {
    int fd;
    if (file) {
        char path[200];
        snprintf(path, sizeof path, "%s/segment.XXXXXX", H.dir);
        fd = mkostemp(path, O_CLOEXEC);
        cr_assert_geq(fd, 0);
        unlink(path);
    } else {
        fd = memfd_create("hostile", MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
        cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
    }
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq(p, MAP_FAILED);
    ag_shm_header *h = (ag_shm_header *)(void *)p;
    h->magic = magic;
    h->token = token;
    h->size = hsize;
    float *ring = (float *)(void *)(p + AG_SHM_HEADER);
    for (size_t i = 0; i < (size - AG_SHM_HEADER) / sizeof(float); i++)
        ring[i] = 0.25f + (float)(i % 1000) * 1e-3f;
    munmap(p, size);
    if (seals) cr_assert_eq(fcntl(fd, F_ADD_SEALS, seals), 0, "%s", strerror(errno));
    return fd;
}

static ag_status *status_of(ag_client *c) {
    ag_status *st = NULL;
    int rc = ag_client_status(c, &st);
    cr_assert_eq(rc, AG_OK, "status: %s", ag_strerror(rc));
    return st;
}

static uint64_t rejected_now(ag_client *c) {
    ag_status *st = status_of(c);
    uint64_t r = st->rejected;
    ag_free(st);
    return r;
}

/* Points of run/tensor in any format (0 when it has none). */
static size_t points_of(ag_client *c, const char *run, const char *tensor) {
    ag_history_query q = {.run = run, .tensor = tensor, .format = "E5M2"};
    ag_history *h = NULL;
    int rc = ag_client_history(c, &q, &h);
    if (rc == AG_ENOTFOUND) return 0;
    cr_assert_eq(rc, AG_OK, "history: %s", ag_strerror(rc));
    size_t n = h->n;
    ag_free(h);
    return n;
}

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* A raw float32 update snapshot of n elements whose arrays are the record
 * of len bytes at position at of the segment h names (its mark: the
 * record's end). */
static void send_record(nng_socket s, const char *run, uint64_t cid, uint64_t seq,
                        const char *tensor, uint64_t step, size_t n, const ag_msg_shm *h,
                        uint64_t at, uint64_t len) {
    ag_msg m = {.type = AG_MSG_SNAPSHOT};
    m.hdr = (ag_stream_hdr){run, cid, seq, 0};
    m.u.snapshot = (ag_msg_snapshot){
        .step = step, .tensor = tensor, .dtype = AG_DTYPE_F32, .form = AG_FORM_UPDATE, .n = n};
    m.u.snapshot.shm = *h;
    m.u.snapshot.shm.mark = at + len;
    m.u.snapshot.shm.at = at;
    m.u.snapshot.shm.has_at = 1;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &m), AG_OK, "%s", ag_errctx_text(&m.err));
    push(s, &b);
    ag_buf_free(&b);
}

/* A sealed segment of our own (size bytes, token), offered to the daemon by
 * the message of sequence number 1 on s (a snapshot "offered" of run, filed)
 * and acknowledged; mapped here (the caller unmaps it and closes *fd). */
static uint8_t *offer_own_segment(nng_socket s, ag_client *obs, const char *run, uint64_t cid,
                                  uint64_t token, uint64_t size, int *fd) {
    *fd = make_segment(0, 1, SEALS, size, AG_SHM_MAGIC, token, size);
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    cr_assert_neq(base, MAP_FAILED);
    ag_msg_shm h = {.token = token, .fd = (uint64_t)*fd, .size = size};
    send_snapshot(s, run, cid, 1, "offered", 1, &h, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, run, "offered", "E5M2", 1));
    cr_assert_eq(ag_shm_load(&((ag_shm_header *)(void *)base)->ack), token,
                 "the daemon did not map the segment");
    return base;
}

Test(shm, hostile_segments_are_refused_their_records_rejected_and_offers_filed) {
    static const char *const http[] = {"--http", "127.0.0.1:0", NULL};
    harness_start(&H, http);
    ag_client *obs = open_client("observer", AG_SHM_OFF, 0);
    nng_socket s = dial();
    const char *run = "hostile";
    const uint64_t cid = 77;
    send_start(s, run, cid);
    uint64_t seq = 1, good_step = 0, rejected = 0;
    const uint64_t SZ = AG_SHM_MIN_SIZE;

    /* After each hostile message a good one; when the good one is filed the
     * hostile one was handled (one connection: in order). */
#define GOOD_AFTER()                                                                               \
    do {                                                                                           \
        send_snapshot(s, run, cid, seq++, "good", ++good_step, NULL, AG_DTYPE_F32);                \
        ag_free(harness_wait_history(obs, run, "good", "E5M2", good_step));                        \
    } while (0)

    int closed = make_segment(0, 1, SEALS, SZ, AG_SHM_MAGIC, 1, SZ);
    close(closed); /* a descriptor number nobody has now */
    struct {
        const char *what;
        int fd;
        uint64_t size; /* the message's */
        uint64_t at;
    } cases[] = {
        {"a descriptor that is not open", closed, SZ, 0},
        {"a plain file", make_segment(1, 0, 0, SZ, AG_SHM_MAGIC, 102, SZ), SZ, 0},
        {"an unsealed memfd", make_segment(0, 1, 0, SZ, AG_SHM_MAGIC, 103, SZ), SZ, 0},
        {"a memfd without sealing", make_segment(0, 0, 0, SZ, AG_SHM_MAGIC, 104, SZ), SZ, 0},
        {"a memfd sealed against growing only",
         make_segment(0, 1, F_SEAL_GROW | F_SEAL_SEAL, SZ, AG_SHM_MAGIC, 105, SZ), SZ, 0},
        {"a wrong magic", make_segment(0, 1, SEALS, SZ, AG_SHM_MAGIC ^ 1, 106, SZ), SZ, 0},
        {"a wrong token", make_segment(0, 1, SEALS, SZ, AG_SHM_MAGIC, 1007, SZ), SZ, 0},
        {"a header of another size",
         make_segment(0, 1, SEALS, SZ + 4096, AG_SHM_MAGIC, 108, SZ + 4096), SZ, 0},
        /* header and message agree on a size the file does not have: the
         * record lies past the file's end */
        {"a size over the file's", make_segment(0, 1, SEALS, SZ, AG_SHM_MAGIC, 109, SZ + 65536),
         SZ + 65536, SZ - AG_SHM_HEADER + 4096},
    };
    const size_t nc = sizeof cases / sizeof cases[0];
    uint64_t base_rejected = rejected_now(obs);
    for (size_t i = 0; i < nc; i++) {
        uint64_t token = i == 0 ? 101 : 101 + i;
        ag_msg_shm h = {.token = token,
                        .fd = (uint64_t)cases[i].fd,
                        .size = cases[i].size,
                        .mark = cases[i].at + 2 * RN * 4,
                        .at = cases[i].at,
                        .has_at = 1};
        char tensor[32];
        snprintf(tensor, sizeof tensor, "hostile.%zu", i);
        uint64_t before = rejected_now(obs);
        send_snapshot(s, run, cid, seq++, tensor, 1, &h, AG_DTYPE_F32);
        GOOD_AFTER();
        rejected++;
        cr_expect_eq(rejected_now(obs) - before, 1, "%s: not rejected", cases[i].what);
        cr_expect_eq(points_of(obs, run, tensor), 0, "%s: filed", cases[i].what);
    }
    /* Each refusal counted in /metrics (those of the same tokens below may
     * or may not look again, as 10 s have passed or not). */
    cr_expect_eq(harness_metric(&H, "altgrad_shm_refused_total"), (double)nc);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_segments"), 0.0);
    cr_expect_eq(harness_metric(&H, "altgrad_shm_snapshots_total"), 0.0);
    /* The same tokens again, refused recently: rejected without a look. */
    rejected = rejected_now(obs) - base_rejected;
    for (size_t i = 1; i < nc; i++) {
        ag_msg_shm h = {.token = 101 + i,
                        .fd = (uint64_t)cases[i].fd,
                        .size = cases[i].size,
                        .mark = 0,
                        .at = 0,
                        .has_at = 1};
        send_snapshot(s, run, cid, seq++, "hostile.again", 1, &h, AG_DTYPE_F32);
    }
    GOOD_AFTER();
    rejected += nc - 1;
    cr_expect_eq(rejected_now(obs) - base_rejected, rejected, "again: not all rejected");
    cr_expect_eq(points_of(obs, run, "hostile.again"), 0);

    /* Offers (the arrays inline) naming segments that cannot be mapped are
     * filed as they are: a bogus descriptor, and each refused one. */
    ag_msg_shm offer = {.token = 5001, .fd = (uint64_t)closed, .size = SZ, .mark = 0};
    send_snapshot(s, run, cid, seq++, "offer.bogus", 1, &offer, AG_DTYPE_F32);
    offer.token = 5002;
    offer.fd = 1u << 30;
    send_snapshot(s, run, cid, seq++, "offer.bogus", 2, &offer, AG_DTYPE_BF16);
    for (size_t i = 1; i < nc; i++) {
        offer = (ag_msg_shm){.token = 101 + i, .fd = (uint64_t)cases[i].fd, .size = cases[i].size};
        send_snapshot(s, run, cid, seq++, "offer.refused", i, &offer, AG_DTYPE_F32);
    }
    GOOD_AFTER();
    ag_free(harness_wait_history(obs, run, "offer.bogus", "E5M2", 2));
    ag_free(harness_wait_history(obs, run, "offer.refused", "E5M2", nc - 1));
    cr_expect_eq(rejected_now(obs) - base_rejected, rejected, "an offer was rejected");
    ag_status *st = status_of(obs);
    cr_expect_eq(st->rejected - base_rejected, rejected);
    ag_free(st);
#undef GOOD_AFTER

    for (size_t i = 1; i < nc; i++) close(cases[i].fd);
    nng_close(s);
    ag_client_close(obs);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* ---------------------------------- d. a process scribbling on its ring */

#define SMALL (57344.0f / 1048576.0f) /* E5M2's max_finite * 2^-20: scale 2^-20, exactly */
#define BIG (57344.0f * 1048576.0f)   /* ... * 2^20: scale 2^20 */

#define FLIP_N 4096                     /* elements of the records of part 2 */
#define FLIP_BYTES (2 * 2 * FLIP_N * 4) /* the part of the ring they use */

typedef struct scribbler {
    uint8_t *base;
    size_t size;
    atomic_int stop;
    atomic_int patterns; /* 0: random bits (NaN, infinities...); 1: all SMALL or all BIG */
    atomic_ulong passes;
} scribbler;

static void *scribble_main(void *arg) {
    scribbler *sc = arg;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    while (!atomic_load(&sc->stop)) {
        if (atomic_load(&sc->patterns)) {
            float v = atomic_load(&sc->passes) % 2 ? BIG : SMALL;
            uint32_t bits;
            memcpy(&bits, &v, sizeof bits);
            for (size_t off = AG_SHM_HEADER; off < AG_SHM_HEADER + FLIP_BYTES; off += 4)
                __atomic_store_n((uint32_t *)(void *)(sc->base + off), bits, __ATOMIC_RELAXED);
            atomic_fetch_add(&sc->passes, 1);
            continue;
        }
        /* the ring, and the client's part of the header */
        for (size_t off = 0; off + 8 <= sc->size; off += 8) {
            if (off == offsetof(ag_shm_header, ack) || off == offsetof(ag_shm_header, released))
                continue;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint64_t v = x;
            switch (x >> 61) { /* now and then NaN, infinities, huge values */
            case 0: v = 0x7fc000007f800000ULL; break;
            case 1: v = 0xff8000007f7fffffULL; break;
            default: break;
            }
            __atomic_store_n((uint64_t *)(void *)(sc->base + off), v, __ATOMIC_RELAXED);
        }
        atomic_fetch_add(&sc->passes, 1);
    }
    return NULL;
}

/* The daemon copies a record out of the segment before it reads it twice:
 * its amax (hence the scale) and its counts come from the same values, so
 * with a scale from this step's amax alone (--history-len 1) and values whose
 * amax / max_finite is a power of two, nothing overflows E5M2, whatever the
 * ring held at each moment. */
Test(shm, a_process_scribbling_on_its_ring_while_the_daemon_reads_it_does_no_harm) {
    const char *const extra[] = {"--formats", "E5M2", "--history-len", "1", NULL};
    harness_start(&H, extra);
    ag_client *obs = open_client("observer", AG_SHM_OFF, 0);
    nng_socket s = dial();
    const char *run = "scribbled";
    const uint64_t cid = 78, token = 0x5c51bb1e5ULL;
    send_start(s, run, cid);
    const uint64_t size = 4 * AG_SHM_MIN_SIZE, cap = size - AG_SHM_HEADER;
    int fd;
    uint8_t *base = offer_own_segment(s, obs, run, cid, token, size, &fd);
    uint64_t seq = 2;
    ag_msg_shm h = {.token = token, .fd = (uint64_t)fd, .size = size};

    scribbler sc = {.base = base, .size = size};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, scribble_main, &sc), 0);
    /* 1: garbage. Records all over the ring, of both element sizes, some
     * unaligned, while it changes under the daemon; marks that go back and
     * forth. */
    const int records = 300;
    for (int k = 0; k < records; k++) {
        int dtype = k % 3 == 0 ? AG_DTYPE_BF16 : AG_DTYPE_F32;
        uint64_t len = 2 * RN * ag_proto_dtype_size(dtype);
        uint64_t at =
            ((uint64_t)k * 4160 + (uint64_t)(k % 7) * 2) % (cap - len) + (uint64_t)(k / 50) * cap;
        h = (ag_msg_shm){.token = token,
                         .fd = (uint64_t)fd,
                         .size = size,
                         .mark = k % 11 == 0 ? UINT64_MAX - (uint64_t)k : at + len,
                         .at = at,
                         .has_at = 1};
        char tensor[32];
        snprintf(tensor, sizeof tensor, "garbage.%d", k % 4);
        send_snapshot(s, run, cid, seq++, tensor, 1 + (uint64_t)k / 4, &h, dtype);
    }
    send_snapshot(s, run, cid, seq++, "good", 1, NULL, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, run, "good", "E5M2", 1));
    ag_free(harness_wait_history(obs, run, "garbage.3", "E5M2", 1));

    /* 2: the whole ring SMALL, then BIG, then SMALL... float32 records,
     * aligned (copied chunk by chunk on the pool). */
    unsigned long p0 = atomic_load(&sc.passes);
    atomic_store(&sc.patterns, 1);
    while (atomic_load(&sc.passes) < p0 + 2) { /* the garbage pass under way is over */
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    const int flips = 400, tensors = 4;
    for (int k = 0; k < flips; k++) {
        uint64_t len = 2 * FLIP_N * 4;
        uint64_t at = (uint64_t)(k % 2) * len + (uint64_t)k * cap;
        char tensor[32];
        snprintf(tensor, sizeof tensor, "flip.%d", k % tensors);
        send_record(s, run, cid, seq++, tensor, 1 + (uint64_t)(k / tensors), FLIP_N, &h, at, len);
    }
    send_snapshot(s, run, cid, seq++, "good", 2, NULL, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, run, "good", "E5M2", 2));
    atomic_store(&sc.stop, 1);
    pthread_join(th, NULL);
    cr_expect_gt(atomic_load(&sc.passes), 2);
    size_t overflowing = 0, points = 0;
    for (int t = 0; t < tensors; t++) {
        char tensor[32];
        snprintf(tensor, sizeof tensor, "flip.%d", t);
        ag_history *fh = harness_wait_history(obs, run, tensor, "E5M2", (size_t)(flips / tensors));
        for (size_t i = 0; i < fh->n; i++) {
            points++;
            if (fh->points[i].overflow) overflowing++;
            cr_expect(fh->points[i].amax == SMALL || fh->points[i].amax == BIG, "amax %g",
                      fh->points[i].amax);
        }
        ag_free(fh);
    }
    cr_expect_eq(points, (size_t)flips);
    cr_expect_eq(overflowing, 0,
                 "%zu of %zu results overflow: counted on other values than "
                 "their amax",
                 overflowing, points);

    /* And it still takes the segment's records, now quiet. */
    float *ring = (float *)(void *)(base + AG_SHM_HEADER);
    for (size_t i = 0; i < 2 * RN; i++) ring[i] = 1.0f + (float)i * 1e-3f;
    h = (ag_msg_shm){
        .token = token, .fd = (uint64_t)fd, .size = size, .at = 1000 * cap, .has_at = 1};
    h.mark = h.at + 2 * RN * 4;
    send_snapshot(s, run, cid, seq++, "quiet", 1, &h, AG_DTYPE_F32);
    ag_history *q = harness_wait_history(obs, run, "quiet", "E5M2", 1);
    cr_expect_eq(q->points[0].nonfinite, 0);
    cr_expect_float_eq(q->points[0].amax, 1.0f + (float)(RN - 1) * 1e-3f, 1e-6);
    ag_free(q);

    munmap(base, size);
    close(fd);
    nng_close(s);
    ag_client_close(obs);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

#define REC_N (3 * 65536) /* three chunks of the pool: a job, not evaluated on the loop */

/* A record is read only before the daemon releases it: once `released` has
 * passed it, the client may write over it, and what the daemon counts must
 * not change. A large inline snapshot of another tensor, sent first, keeps
 * the one pool thread busy, so the record's later phases run well after its
 * release; the test overwrites the record (SMALL values) with BIG ones as
 * soon as it sees the release. Counted on the copy: amax SMALL, no
 * overflow; counted on the overwritten record: BIG values overflow a scale
 * made for SMALL ones. */
Test(shm, a_record_released_and_overwritten_does_not_change_its_results) {
    const char *const extra[] = {"--formats", "E5M2", "--history-len", "1", "--threads", "1", NULL};
    harness_start(&H, extra);
    ag_client *obs = open_client("observer", AG_SHM_OFF, 0);
    nng_socket s = dial();
    const char *run = "overwritten";
    const uint64_t cid = 79, token = 0x0e1e1e1eULL;
    send_start(s, run, cid);
    const uint64_t size = AG_SHM_HEADER + (4u << 20), cap = size - AG_SHM_HEADER;
    int fd;
    uint8_t *base = offer_own_segment(s, obs, run, cid, token, size, &fd);
    ag_shm_header *hdr = (ag_shm_header *)(void *)base;
    uint64_t seq = 2;

    const size_t big_n = 1u << 21; /* 32 chunks of the pool */
    float *bw = malloc(2 * big_n * sizeof *bw);
    cr_assert_not_null(bw);
    for (size_t i = 0; i < 2 * big_n; i++) bw[i] = 0.5f + (float)(i % 977) * 1e-3f;
    const int rounds = 6;
    float *rec = (float *)(void *)(base + AG_SHM_HEADER);
    for (int r = 0; r < rounds; r++) {
        ag_msg m = {.type = AG_MSG_SNAPSHOT};
        m.hdr = (ag_stream_hdr){run, cid, seq++, 0};
        m.u.snapshot = (ag_msg_snapshot){.step = 1 + (uint64_t)r,
                                         .tensor = "busy",
                                         .dtype = AG_DTYPE_F32,
                                         .form = AG_FORM_UPDATE,
                                         .n = big_n,
                                         .w = bw,
                                         .x = bw + big_n};
        ag_buf b;
        ag_buf_init(&b);
        cr_assert_eq(ag_proto_encode(&b, &m), AG_OK, "%s", ag_errctx_text(&m.err));
        push(s, &b);
        ag_buf_free(&b);

        uint64_t at = (uint64_t)(r + 1) * cap, len = 2 * REC_N * 4;
        for (size_t i = 0; i < 2 * REC_N; i++) rec[i] = SMALL;
        ag_msg_shm h = {.token = token, .fd = (uint64_t)fd, .size = size};
        send_record(s, run, cid, seq++, "record", 1 + (uint64_t)r, REC_N, &h, at, len);
        /* The release: the record's space is the client's again. */
        for (long polls = 0; ag_shm_load(&hdr->released) < at + len; polls++) {
            cr_assert_lt(polls, 1000 + 200000, "the record was never released");
            if (polls > 1000) {
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL); /* a poll interval (bounded: 20 s) */
            }
        }
        for (size_t i = 0; i < 2 * REC_N; i++) {
            float big = BIG;
            uint32_t bits;
            memcpy(&bits, &big, sizeof bits);
            __atomic_store_n((uint32_t *)(void *)&rec[i], bits, __ATOMIC_RELAXED);
        }
        ag_free(harness_wait_history(obs, run, "record", "E5M2", (size_t)r + 1));
    }
    ag_history *rh = harness_wait_history(obs, run, "record", "E5M2", (size_t)rounds);
    for (size_t i = 0; i < rh->n; i++) {
        cr_expect_eq(rh->points[i].amax, SMALL, "step %llu: amax %g",
                     (unsigned long long)rh->points[i].step, rh->points[i].amax);
        cr_expect_eq(rh->points[i].overflow, 0,
                     "step %llu: %llu overflow: counted on what "
                     "the client wrote after the release",
                     (unsigned long long)rh->points[i].step,
                     (unsigned long long)rh->points[i].overflow);
    }
    ag_free(rh);
    free(bw);
    munmap(base, size);
    close(fd);
    nng_close(s);
    ag_client_close(obs);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* ------------------------------------------------ e. a daemon restart */

Test(shm, a_client_keeps_its_segment_across_a_restart_of_the_daemon) {
    static const tensor_plan plan[] = {
        {"r.sgd.f32", 3000, AG_DTYPE_F32, 0},
        {"r.upd.bf16", 2000, AG_DTYPE_BF16, 1},
    };
    harness_start(&H, NULL);
    ag_client *c = open_client("restart", 0, 0);
    for (uint64_t s = 1; s <= 4; s++) {
        for (unsigned t = 0; t < 2; t++) log_one(c, &plan[t], t, s);
        flush_ok(c);
    }
    ag_client_stats before = stats_of(c);
    cr_expect_geq(before.shm_snapshots, 6, "before: %llu",
                  (unsigned long long)before.shm_snapshots);
    int status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

    harness_start(&H, NULL);
    for (uint64_t s = 5; s <= 10; s++) {
        for (unsigned t = 0; t < 2; t++) log_one(c, &plan[t], t, s);
        int rc = ag_client_flush(c, 20000);
        for (int tries = 0; tries < 100 && rc == AG_ETRANSPORT; tries++) {
            struct timespec ts = {0, 50 * 1000000}; /* not connected again yet: a poll interval */
            nanosleep(&ts, NULL);
            rc = ag_client_flush(c, 20000);
        }
        cr_assert_eq(rc, AG_OK, "flush after the restart: %s (%s)", ag_strerror(rc),
                     ag_client_last_error(c));
    }
    ag_client_stats after = stats_of(c);
    /* After the restart the first snapshot offers the segment again; the
     * others, flushed step by step, go through it. */
    cr_expect_geq(after.shm_snapshots - before.shm_snapshots, 12 - 2, "after: %llu",
                  (unsigned long long)(after.shm_snapshots - before.shm_snapshots));
    for (unsigned t = 0; t < 2; t++) {
        ag_history *h = harness_wait_history(c, "restart", plan[t].name, "E5M2", 10);
        cr_expect_eq(h->n, 10);
        for (size_t i = 0; i < h->n; i++) {
            cr_expect_eq(h->points[i].step, i + 1);
            cr_expect_eq(h->points[i].total, plan[t].n);
        }
        ag_free(h);
    }
    ag_client_close(c);
    status = harness_stop(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

/* ------------------------------------------- a remote connection's records */

/* A segment mapped for a local client is not readable through a tcp
 * connection that names its token: a record must come from the process the
 * segment is mapped for, over ipc; an offer over tcp is filed from its data. */
Test(shm, a_record_named_over_tcp_is_rejected_even_for_a_mapped_segment) {
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", harness_free_tcp_port());
    const char *extra[] = {"--ingest", tcp, NULL};
    harness_start(&H, extra);
    ag_client *obs = open_client("observer", AG_SHM_OFF, 0);
    const uint64_t SZ = AG_SHM_MIN_SIZE, token = 0x5eed;
    int fd = make_segment(0, 1, SEALS, SZ, AG_SHM_MAGIC, token, SZ);
    ag_msg_shm offer = {.token = token, .fd = (uint64_t)fd, .size = SZ};

    /* over ipc: offered, mapped (acknowledged), and a record of it filed */
    nng_socket local = dial();
    send_start(local, "local", 501);
    send_snapshot(local, "local", 501, 1, "w", 1, &offer, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, "local", "w", "E5M2", 1));
    ag_msg_shm rec = offer;
    rec.has_at = 1;
    rec.mark = 2 * RN * 4;
    send_snapshot(local, "local", 501, 2, "w", 2, &rec, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, "local", "w", "E5M2", 2));

    /* over tcp: the same token with a record is rejected; an offer and a good
     * snapshot are filed */
    nng_socket remote;
    cr_assert_eq(nng_push0_open(&remote), 0);
    cr_assert_eq(nng_dial(remote, tcp, NULL, 0), 0);
    send_start(remote, "remote", 502);
    uint64_t rejected = rejected_now(obs);
    send_snapshot(remote, "remote", 502, 1, "stolen", 1, &rec, AG_DTYPE_F32);
    send_snapshot(remote, "remote", 502, 2, "offered", 1, &offer, AG_DTYPE_F32);
    send_snapshot(remote, "remote", 502, 3, "good", 1, NULL, AG_DTYPE_F32);
    ag_free(harness_wait_history(obs, "remote", "good", "E5M2", 1));
    ag_free(harness_wait_history(obs, "remote", "offered", "E5M2", 1));
    cr_expect_eq(rejected_now(obs) - rejected, 1);
    cr_expect_eq(points_of(obs, "remote", "stolen"), 0);
    nng_close(remote);
    nng_close(local);
    close(fd);
    ag_client_close(obs);
    cr_expect_eq(harness_stop(&H, SIGTERM), 0);
}

/* ----------------------------------------------- r_run's AG_CAP_SHM */

/* The caps of the daemon's r_run for client_id, asked over url. */
static uint64_t run_caps(const char *url, uint64_t client_id) {
    nng_socket s;
    cr_assert_eq(nng_req0_open(&s), 0);
    cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000), 0);
    cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
    ag_msg req = {.type = AG_MSG_Q_RUN};
    req.u.query.client_id = client_id;
    ag_buf b;
    ag_buf_init(&b);
    cr_assert_eq(ag_proto_encode(&b, &req), AG_OK);
    cr_assert_eq(nng_send(s, b.data, b.len, 0), 0);
    ag_buf_free(&b);
    char *buf = NULL;
    size_t len = 0;
    cr_assert_eq(nng_recv(s, &buf, &len, NNG_FLAG_ALLOC), 0);
    ag_msg reply;
    cr_assert_eq(ag_proto_decode(buf, len, &reply), AG_OK);
    cr_assert_eq(reply.type, AG_MSG_R_RUN);
    uint64_t caps = reply.u.ident->caps;
    ag_msg_clear(&reply);
    nng_free(buf, len);
    nng_close(s);
    return caps;
}

/* The daemon tells a client of its own user on its machine (over ipc) that
 * it can map its segment, so that the client's first snapshots wait for the
 * mapping; over tcp it does not (and the client does not wait), while the
 * stream over ipc still maps the segment. */
Test(shm, r_run_announces_shared_memory_to_a_local_client_of_the_same_user_only) {
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", harness_free_tcp_port());
    for (int over_tcp = 0; over_tcp < 2; over_tcp++) {
        const char *extra[] = {"--query", tcp, NULL};
        harness_start(&H, over_tcp ? extra : NULL);
        const char *query = over_tcp ? tcp : H.query;
        ag_client_opts o = {.ingest_url = H.ingest,
                            .query_url = query,
                            .run = over_tcp ? "caps-tcp" : "caps-ipc",
                            .policy = AG_QUEUE_BLOCK,
                            .query_timeout_ms = 10000};
        ag_client *c = NULL;
        cr_assert_eq(ag_client_open(&c, &o), AG_OK);
        cr_assert_eq(ag_client_start_run(c, 10000), AG_OK);
        uint64_t caps = run_caps(query, ag_client_id(c));
        cr_expect_eq((caps & AG_CAP_SHM) != 0, !over_tcp, "caps %llu over %s",
                     (unsigned long long)caps, over_tcp ? "tcp" : "ipc");
        cr_expect_eq(caps & (AG_CAP_BUNDLE | AG_CAP_QERR), AG_CAP_BUNDLE | AG_CAP_QERR);
        static float w[4096], g[4096];
        for (int i = 0; i < 4096; i++) w[i] = 1.0f + (float)i * 1e-3f, g[i] = 1e-3f;
        for (uint64_t step = 1; step <= 6; step++) {
            cr_assert_eq(ag_client_log_sgd(c, step, "w", w, g, 4096, 0.01f), AG_OK);
            cr_assert_eq(ag_client_flush(c, 10000), AG_OK);
        }
        ag_client_stats st = stats_of(c);
        cr_expect_geq(st.shm_snapshots, 4, "%llu through shared memory",
                      (unsigned long long)st.shm_snapshots);
        ag_client_close(c);
        cr_expect_eq(harness_stop(&H, SIGTERM), 0);
    }
}
