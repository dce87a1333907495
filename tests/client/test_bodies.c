/*
 * test_bodies.c - client/bodies.c: the bodies of large snapshots kept for
 * the next ones. Size classes; snapshots encoded into kept bodies (of other
 * sizes of the same class, so with another message's bytes past their end)
 * arriving whole and aligned under the blocking and the dropping policies;
 * the cache's bound; its release at the last close. Criterion runs each test
 * in its own process, so each starts with an empty cache.
 */
#include "helpers.h"

#include <math.h>
#include <sys/wait.h>

#include "client/client_internal.h"

Test(bodies, a_size_class_holds_its_message_and_wastes_at_most_an_eighth) {
    for (size_t len = 1; len <= AG_PROTO_MAX_MESSAGE; len = len * 5 / 4 + 7) {
        size_t c = ag_send_body_class(len);
        if (len < AG_SEND_BODY_MIN) {
            cr_assert_eq(c, len, "a small message is allocated as it is");
            continue;
        }
        cr_assert_geq(c, len);
        cr_assert_leq(c - len, len / 8, "class %zu for %zu bytes", c, len);
        cr_assert_eq(ag_send_body_class(c), c, "a class is its own class");
    }
    size_t classes = 0;
    for (size_t c = 1u << 20; c < 2u << 20; c = ag_send_body_class(c + 1)) classes++;
    cr_assert_eq(classes, 8, "eight classes per octave");
    cr_assert_eq(ag_send_body_class(AG_PROTO_MAX_MESSAGE + 1), AG_PROTO_MAX_MESSAGE + 1);
}

/* The pattern of step s: every element differs from step to step. */
static void fill(float *w, float *g, size_t n, uint64_t s) {
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)(s * 1000003u + i);
        g[i] = -(float)(s * 7919u + i) * 0.5f;
    }
}

static void wait_kept(size_t count) {
    ag_send_bodies_stats st;
    for (int i = 0; i < RECV_BOUND_MS; i++) {
        ag_send_bodies_get(&st);
        if (st.count == count) return;
        sleep_ms(1);
    }
    cr_assert_fail("the cache holds %zu bodies, not %zu", st.count, count);
}

/*
 * One snapshot at a time: log it, receive it, check every byte and the
 * payload's alignment, wait for its body to come back to the cache. Sizes
 * n0 and n1 share a class (8 MiB and a bit: 9 MiB), n2 is of another one, so
 * step 2 is written into step 1's body and step 3 into step 2's, each time
 * over a message of another length; step 4 needs a fresh body.
 */
static void kept_bodies_carry_snapshots(int policy) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client_opts o = {.ingest_url = t.ingest,
                        .query_url = t.query,
                        .run = "bodies",
                        .policy = policy,
                        .close_timeout_ms = 100};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    const size_t n0 = (1u << 20) + 20000, n1 = (1u << 20) + 4000, n2 = 300000;
    const size_t sizes[] = {n0, n1, n0, n2, n1, n2};
    const size_t kept_after[] = {1, 1, 1, 2, 2, 2};
    const uint64_t reused_after[] = {0, 1, 2, 2, 3, 4};
    float *w = malloc(n0 * sizeof *w), *g = malloc(n0 * sizeof *g);
    float *ew = malloc(n0 * sizeof *w), *eg = malloc(n0 * sizeof *g);
    cr_assert(w && g && ew && eg);
    ag_send_bodies_stats st;
    ag_send_bodies_get(&st);
    uint64_t reused0 = st.reused;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        uint64_t step = k + 1;
        size_t n = sizes[k];
        fill(w, g, n, step);
        cr_assert_eq(ag_client_log_sgd(c, step, "big.weight", w, g, n, 0.01f), AG_OK);
        memset(w, 0, n * sizeof *w); /* the message holds its own copy */
        for (;;) {
            ag_msg m;
            nng_msg *keep = NULL;
            cr_assert_eq(receive(rx, &m, &keep), 0);
            if (m.type != AG_MSG_SNAPSHOT) { /* run_start */
                received_free(&m, keep);
                continue;
            }
            const ag_msg_snapshot *s = &m.u.snapshot;
            cr_assert_eq(s->step, step);
            cr_assert_eq(s->n, n); /* decoded: no byte past the message's end */
            size_t at = (size_t)((const uint8_t *)s->w - (const uint8_t *)nng_msg_body(keep));
            cr_assert_eq(at % 8, 0, "the payload starts 8-byte aligned in the message");
            fill(ew, eg, n, step);
            cr_assert_eq(memcmp(s->w, ew, n * sizeof *ew), 0, "w of step %llu",
                         (unsigned long long)step);
            cr_assert_eq(memcmp(s->x, eg, n * sizeof *eg), 0, "g of step %llu",
                         (unsigned long long)step);
            received_free(&m, keep);
            break;
        }
        wait_kept(kept_after[k]);
        ag_send_bodies_get(&st);
        cr_assert_eq(st.reused - reused0, reused_after[k], "step %llu", (unsigned long long)step);
    }
    ag_client_stats cs;
    ag_client_get_stats(c, &cs);
    cr_assert_eq(cs.dropped, 0);
    ag_client_close(c);
    ag_send_bodies_get(&st);
    cr_assert_eq(st.count, 0, "the last close frees the kept bodies");
    cr_assert_eq(st.bytes, 0);
    cr_assert_eq(st.limit, 0);
    free(w);
    free(g);
    free(ew);
    free(eg);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(bodies, kept_bodies_carry_the_next_snapshots_whole_under_the_block_policy) {
    kept_bodies_carry_snapshots(AG_QUEUE_BLOCK);
}

Test(bodies, kept_bodies_carry_the_next_snapshots_whole_under_the_drop_policy) {
    kept_bodies_carry_snapshots(AG_QUEUE_DROP);
}

Test(bodies, the_cache_keeps_at_most_its_limit_and_the_last_close_frees_it) {
    tmp_endpoints t;
    tmp_endpoints_make(&t); /* no receiver: everything logged stays queued */
    ag_client_opts o = {.ingest_url = t.ingest,
                        .query_url = t.query,
                        .run = "bodies",
                        .policy = AG_QUEUE_DROP,
                        .queue_bytes = 100u << 20,
                        .close_timeout_ms = 1};
    ag_client *keeper = NULL, *c = NULL;
    cr_assert_eq(ag_client_open_quiet(&keeper, &o, 1), AG_OK); /* holds the cache open */
    cr_assert_eq(ag_client_open_quiet(&c, &o, 1), AG_OK);
    ag_send_bodies_stats st;
    ag_send_bodies_get(&st);
    cr_assert_eq(st.limit, AG_SEND_BODIES_MAX_BYTES, "min(queue_bytes, 64 MiB)");

    const size_t n = 1u << 19; /* 4 MiB and a header: chunks of 4.5 MiB and 64 bytes */
    float *w = calloc(n, sizeof *w), *g = calloc(n, sizeof *g);
    cr_assert(w && g);
    for (uint64_t s = 1; s <= 20; s++)
        cr_assert_eq(ag_client_log_sgd(c, s, "big.weight", w, g, n, 0.01f), AG_OK);
    ag_client_stats cs;
    ag_client_get_stats(c, &cs);
    cr_assert_eq(cs.queued, 21, "run_start and 20 snapshots, 80 MiB, fit the queue");
    ag_client_close(c); /* frees the 20 bodies: the cache keeps what fits */
    ag_send_bodies_get(&st);
    size_t chunk = ag_send_body_class(4u << 20 | 1) + 64;
    cr_assert_eq(st.count, AG_SEND_BODIES_MAX_BYTES / chunk, "14 of the 20");
    cr_assert_leq(st.bytes, AG_SEND_BODIES_MAX_BYTES);
    cr_assert_eq(st.bytes, st.count * chunk);

    ag_client_close(keeper);
    ag_send_bodies_get(&st);
    cr_assert_eq(st.count, 0);
    cr_assert_eq(st.bytes, 0);

    /* a client opened afterwards installs the cache again, with its limit */
    o.queue_bytes = 8u << 20;
    cr_assert_eq(ag_client_open_quiet(&c, &o, 1), AG_OK);
    ag_send_bodies_get(&st);
    cr_assert_eq(st.limit, 8u << 20);
    ag_client_close(c);
    free(w);
    free(g);
    tmp_endpoints_remove(&t);
}

Test(bodies, a_forked_child_starts_with_no_cache_of_its_own) {
    tmp_endpoints t;
    tmp_endpoints_make(&t); /* no receiver: the snapshot stays queued */
    ag_client_opts o = {.ingest_url = t.ingest,
                        .query_url = t.query,
                        .run = "bodies",
                        .policy = AG_QUEUE_DROP,
                        .close_timeout_ms = 1};
    ag_client *c = NULL, *other = NULL;
    cr_assert_eq(ag_client_open_quiet(&c, &o, 1), AG_OK);
    cr_assert_eq(ag_client_open_quiet(&other, &o, 1), AG_OK);
    const size_t n = 1u << 18;
    float *w = calloc(n, sizeof *w);
    cr_assert_not_null(w);
    cr_assert_eq(ag_client_log_sgd(c, 1, "big.weight", w, w, n, 0.01f), AG_OK);
    ag_client_close(c); /* not the last: its queued body is kept */
    ag_send_bodies_stats st;
    ag_send_bodies_get(&st);
    cr_assert_eq(st.count, 1);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ag_send_bodies_stats cs;
        ag_send_bodies_get(&cs); /* would hang on a lock a parent's thread held */
        _exit(cs.count == 0 && cs.bytes == 0 && cs.limit == 0 ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child saw the parent's cache");
    ag_send_bodies_get(&st);
    cr_assert_eq(st.count, 1, "the parent's is untouched");
    ag_client_close(other);
    free(w);
    tmp_endpoints_remove(&t);
}

/* ag_client_encode_msg encodes a small snapshot once on the stack and copies
 * it, a larger one sized first and in place: either way the bytes are the
 * encoder's, and a message the encoder refuses is refused with its code. */
Test(bodies, encoded_messages_are_the_encoders_bytes_small_large_or_refused) {
    /* 16-element snapshots to a few MB; 240..256 elements straddle the stack buffer */
    const size_t sizes[] = {1, 16, 200, 240, 244, 246, 248, 250, 252, 256, 300, 5000, 100000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        float *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g);
        cr_assert(w && g);
        fill(w, g, n, k + 1);
        for (int bad = 0; bad < 2; bad++) {
            ag_msg m = {.type = AG_MSG_SNAPSHOT, .hdr = {.run = "r", .client_id = 3, .seq = 9}};
            m.u.snapshot = (ag_msg_snapshot){.step = 7,
                                             .tensor = bad ? "" : "layers.0.weight",
                                             .dtype = AG_DTYPE_F32,
                                             .form = AG_FORM_SGD,
                                             .lr = 0.01,
                                             .n = n,
                                             .numel = n,
                                             .w = w,
                                             .x = g};
            ag_buf want;
            ag_buf_init(&want);
            int want_rc = ag_proto_encode(&want, &m);
            nng_msg *got = NULL;
            int rc = ag_client_encode_msg(&m, &got);
            cr_assert_eq(rc, want_rc, "n %zu bad %d: %d, the encoder %d", n, bad, rc, want_rc);
            if (bad) {
                cr_assert_neq(rc, AG_OK);
                cr_assert_null(got);
            } else {
                cr_assert_eq(rc, AG_OK, "n %zu: %d %s", n, rc, ag_errctx_text(&m.err));
                cr_assert_eq(nng_msg_len(got), want.len, "n %zu", n);
                cr_assert_eq(memcmp(nng_msg_body(got), want.data, want.len), 0, "n %zu", n);
                nng_msg_free(got);
            }
            ag_buf_free(&want);
        }
        free(w);
        free(g);
    }
}

/* Other messages are encoded once and copied, from the stack or, past its
 * room (a counts message of many tensors), from the heap: the encoder's
 * bytes either way, and its code for one it refuses. */
Test(bodies, counts_messages_are_the_encoders_bytes_few_or_many_tensors) {
    enum { T = 300, F = 5 };
    static char names[T][32];
    static const char *tensors[T];
    static uint64_t numel[T], nonfinite[T], counts[T * F * AG_COUNTS_PER_RESULT];
    static double amax[T];
    static float scales[T * F];
    static const char *const fmts[F] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};
    for (size_t t = 0; t < T; t++) {
        snprintf(names[t], sizeof names[t], "layers.%zu.weight", t);
        tensors[t] = names[t];
        numel[t] = 1000;
        amax[t] = 0.5 + (double)t;
    }
    for (size_t r = 0; r < T * F; r++) {
        scales[r] = 0.25f;
        counts[r * AG_COUNTS_PER_RESULT] = r % 1000; /* stalled */
        counts[r * AG_COUNTS_PER_RESULT + 1] = 1000; /* total */
    }
    const size_t ns[] = {1, 3, 20, 60, T};
    size_t longest = 0;
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
        for (int bad = 0; bad < 2; bad++) {
            ag_msg m = {.type = AG_MSG_COUNTS, .hdr = {.run = "r", .client_id = 3, .seq = 9}};
            m.u.counts = (ag_msg_counts){.step = 7,
                                         .nformats = F,
                                         .formats = fmts,
                                         .n = ns[k],
                                         .tensors = tensors,
                                         .numel = numel,
                                         .amax = amax,
                                         .nonfinite = nonfinite,
                                         .scales = scales,
                                         .counts = counts};
            double bad_amax[T];
            if (bad) { /* the last tensor's amax is not finite */
                memcpy(bad_amax, amax, sizeof bad_amax);
                bad_amax[ns[k] - 1] = NAN;
                m.u.counts.amax = bad_amax;
            }
            ag_buf want;
            ag_buf_init(&want);
            int want_rc = ag_proto_encode(&want, &m);
            nng_msg *got = NULL;
            int rc = ag_client_encode_msg(&m, &got);
            cr_assert_eq(rc, want_rc, "%zu tensors bad %d: %d, the encoder %d", ns[k], bad, rc,
                         want_rc);
            if (bad) {
                cr_assert_neq(rc, AG_OK);
                cr_assert_null(got);
            } else {
                cr_assert_eq(rc, AG_OK, "%zu tensors: %s", ns[k], ag_errctx_text(&m.err));
                cr_assert_eq(nng_msg_len(got), want.len, "%zu tensors", ns[k]);
                if (want.len > longest) longest = want.len;
                cr_assert_eq(memcmp(nng_msg_body(got), want.data, want.len), 0, "%zu tensors",
                             ns[k]);
                nng_msg_free(got);
            }
            ag_buf_free(&want);
        }
    cr_assert_gt(longest, 2 * 2048, "the largest is past the stack buffer (%zu bytes)", longest);
}
