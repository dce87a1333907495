/*
 * test_identity.c - client/identity.c: the launch id (option, torchrun's
 * run id, $ALTGRAD_LAUNCH_ID, generated), the run start carrying it and
 * resume, and learning the run's name from a test daemon (an nng REP socket
 * in a thread that answers q_run as told): a renamed run, answers that come
 * only after a few tries, a daemon that cannot say, and no daemon at all.
 */
#include "helpers.h"

#include <pthread.h>

/* A test daemon answering q_run: `not_yet` AG_ENOTFOUND replies first, then
 * `name` (or the error `fail` when nonzero). */
typedef struct name_server {
    nng_socket rep;
    pthread_t thread;
    const char *name;
    int fail;
    int not_yet;
    int asked;    /* q_run requests seen */
    uint64_t cid; /* the client id they asked about */
    int version;  /* of the last request */
} name_server;

static void *serve_names(void *arg) {
    name_server *s = arg;
    for (;;) {
        nng_msg *msg;
        if (nng_recvmsg(s->rep, &msg, 0) != 0) break; /* closed */
        ag_msg req, rep = {.type = AG_MSG_R_ERROR};
        ag_run_ident id = {s->name, "launch", 0};
        ag_buf out;
        ag_buf_init(&out);
        rep.u.error = (ag_msg_error){AG_EPROTO, "not a query"};
        if (ag_proto_decode(nng_msg_body(msg), nng_msg_len(msg), &req) == AG_OK &&
            req.type == AG_MSG_Q_RUN) {
            s->asked++;
            s->cid = req.u.query.client_id;
            s->version = req.version;
            if (s->asked <= s->not_yet) {
                rep.u.error = (ag_msg_error){AG_ENOTFOUND, "no run start filed yet"};
            } else if (s->fail) {
                rep.u.error = (ag_msg_error){s->fail, "cannot say"};
            } else {
                rep.type = AG_MSG_R_RUN;
                rep.u.ident = &id;
            }
        }
        ag_msg_clear(&req);
        cr_assert_eq(ag_proto_encode(&out, &rep), AG_OK);
        nng_msg_clear(msg);
        nng_msg_append(msg, out.data, out.len);
        ag_buf_free(&out);
        if (nng_sendmsg(s->rep, msg, 0) != 0) nng_msg_free(msg);
    }
    return NULL;
}

static void names_start(name_server *s, const char *url) {
    cr_assert_eq(nng_rep0_open(&s->rep), 0);
    cr_assert_eq(nng_listen(s->rep, url, NULL, 0), 0);
    cr_assert_eq(pthread_create(&s->thread, NULL, serve_names, s), 0);
}

static void names_stop(name_server *s) {
    nng_close(s->rep);
    pthread_join(s->thread, NULL);
}

static ag_client *open_as(const tmp_endpoints *t, const char *run, const char *launch, int resume) {
    ag_client_opts o = {.ingest_url = t->ingest,
                        .query_url = t->query,
                        .run = run,
                        .launch_id = launch,
                        .resume = resume,
                        .query_timeout_ms = 2000,
                        /* the test daemon never confirms delivery: close would
                         * wait out its default 2 s for the confirmation */
                        .close_timeout_ms = 100};
    ag_client *c = NULL;
    int rc = ag_client_open(&c, &o);
    cr_assert_eq(rc, AG_OK, "open: %s", ag_strerror(rc));
    return c;
}

/* The launch id a client opened with these options and environment gets. */
static void launch_of(const char *given, char *out, size_t cap) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_as(&t, "r", given, 0);
    snprintf(out, cap, "%s", ag_client_launch_id(c));
    ag_client_close(c);
    tmp_endpoints_remove(&t);
}

Test(identity, the_launch_id_comes_from_the_option_then_torchrun_then_altgrad_then_is_made) {
    char a[AG_LAUNCH_ID_MAX + 1], b[AG_LAUNCH_ID_MAX + 1];
    unsetenv("TORCHELASTIC_RUN_ID");
    unsetenv("ALTGRAD_LAUNCH_ID");
    launch_of(NULL, a, sizeof a);
    launch_of(NULL, b, sizeof b);
    cr_expect(strlen(a) > 0 && strcmp(a, b) != 0, "generated ids differ: %s %s", a, b);

    setenv("ALTGRAD_LAUNCH_ID", "mine-1", 1);
    launch_of(NULL, a, sizeof a);
    cr_expect_str_eq(a, "mine-1");
    setenv("TORCHELASTIC_RUN_ID", "5f0c-rdzv", 1);
    launch_of(NULL, a, sizeof a);
    cr_expect_str_eq(a, "5f0c-rdzv", "torchrun's run id comes first");
    launch_of("given", a, sizeof a);
    cr_expect_str_eq(a, "given", "the option wins");

    /* torchrun without --rdzv-id says "none" for every launch: not a launch id */
    setenv("TORCHELASTIC_RUN_ID", "none", 1);
    launch_of(NULL, a, sizeof a);
    cr_expect_str_eq(a, "mine-1");
    unsetenv("ALTGRAD_LAUNCH_ID");
    launch_of(NULL, a, sizeof a);
    char want[64];
    snprintf(want, sizeof want, ":%ld", (long)getppid());
    cr_expect(strncmp(a, "torchrun:", 9) == 0 && strstr(a, want), "%s", a);
    launch_of(NULL, b, sizeof b);
    cr_expect_str_eq(a, b, "ranks of one torchrun agent share it");
    unsetenv("TORCHELASTIC_RUN_ID");
}

Test(identity, an_environment_value_that_is_no_launch_id_is_hashed_the_same_for_every_rank) {
    char longer[300], a[AG_LAUNCH_ID_MAX + 1], b[AG_LAUNCH_ID_MAX + 1];
    memset(longer, 'j', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    unsetenv("TORCHELASTIC_RUN_ID");
    setenv("ALTGRAD_LAUNCH_ID", longer, 1);
    launch_of(NULL, a, sizeof a);
    launch_of(NULL, b, sizeof b);
    cr_expect_str_eq(a, b);
    cr_expect(ag_proto_launch_id_ok(a, strlen(a)), "%s", a);
    setenv("ALTGRAD_LAUNCH_ID", "tab\there", 1);
    launch_of(NULL, b, sizeof b);
    cr_expect(ag_proto_launch_id_ok(b, strlen(b)) && strcmp(a, b) != 0, "%s", b);
    unsetenv("ALTGRAD_LAUNCH_ID");
}

Test(identity, a_bad_launch_id_option_is_refused) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    char longer[AG_LAUNCH_ID_MAX + 2];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    ag_client_opts o = {.ingest_url = t.ingest, .query_url = t.query, .launch_id = longer};
    ag_client *c = NULL;
    cr_expect_eq(ag_client_open(&c, &o), AG_ETOOBIG);
    cr_expect_null(c);
    o.launch_id = "";
    cr_expect_eq(ag_client_open(&c, &o), AG_EINVAL);
    o.launch_id = "new\nline";
    cr_expect_eq(ag_client_open(&c, &o), AG_EINVAL);
    tmp_endpoints_remove(&t);
}

Test(identity, the_run_start_carries_the_launch_and_resume) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    ag_client *c = open_as(&t, "first-run", "job-9", 7);
    cr_expect_str_eq(ag_client_query_url(c), t.query);
    cr_expect_str_eq(ag_client_ingest_url(c), t.ingest);
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0);
    cr_assert_eq(m.type, AG_MSG_RUN_START);
    cr_expect_eq(m.version, AG_PROTO_VERSION);
    cr_expect_str_eq(m.hdr.run, "first-run");
    cr_expect_str_eq(m.u.run_start.launch, "job-9");
    cr_expect_eq(m.u.run_start.resume, 1, "any nonzero resume is sent as 1");
    received_free(&m, keep);
    ag_client_close(c);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(identity, start_run_learns_the_name_the_daemon_chose_after_it_committed) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    name_server s = {.name = "first-run.2", .not_yet = 3};
    names_start(&s, t.query);
    ag_client *c = open_as(&t, "first-run", NULL, 0);
    cr_expect_str_eq(ag_client_run(c), "first-run", "the name asked for until the daemon says");
    cr_assert_eq(ag_client_start_run(c, RECV_BOUND_MS), AG_OK);
    cr_expect_str_eq(ag_client_run(c), "first-run.2");
    cr_expect_eq(s.asked, 4, "asked again after each 'not yet'");
    cr_expect_eq(s.cid, ag_client_id(c));
    cr_expect_eq(s.version, AG_PROTO_VERSION);
    cr_expect_eq(ag_client_start_run(c, 0), AG_OK, "known: returns at once");
    /* Logging goes on under the name asked for: the daemon files by client id. */
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    wait_handed_off(c); /* the test daemon confirms no delivery: no flush */
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0);
    cr_expect_eq(m.type, AG_MSG_RUN_START, "start_run queued the run start");
    received_free(&m, keep);
    ag_client_close(c);
    names_stop(&s);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(identity, the_name_is_learnt_in_the_background_without_start_run) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    name_server s = {.name = "bg.3"};
    names_start(&s, t.query);
    ag_client *c = open_as(&t, "bg", NULL, 0);
    cr_assert_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    int known = 0;
    for (int i = 0; i < RECV_BOUND_MS / 10 && !known; i++) {
        known = strcmp(ag_client_run(c), "bg.3") == 0;
        if (!known) sleep_ms(10); /* a poll, bounded; not a timing assertion */
    }
    cr_expect(known, "ag_client_run still says %s", ag_client_run(c));
    ag_client_close(c);
    names_stop(&s);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(identity, a_daemon_that_cannot_say_leaves_the_name_asked_for) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    name_server s = {.name = "never", .fail = AG_EPROTO};
    names_start(&s, t.query);
    ag_client *c = open_as(&t, "old-daemon", NULL, 0);
    cr_expect_eq(ag_client_start_run(c, RECV_BOUND_MS), AG_EREMOTE);
    cr_expect_str_eq(ag_client_run(c), "old-daemon");
    cr_expect_eq(s.asked, 1, "an answer that will not change is not asked again");
    ag_client_close(c);
    names_stop(&s);

    name_server v = {.name = "never", .fail = AG_EVERSION};
    names_start(&v, t.query);
    c = open_as(&t, "older-daemon", NULL, 0);
    cr_expect_eq(ag_client_start_run(c, RECV_BOUND_MS), AG_EVERSION);
    ag_client_close(c);
    names_stop(&v);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

/* A query listener that never answers: a daemon that is there but slow. */
static nng_socket mute_query(const char *url) {
    nng_socket q;
    cr_assert_eq(nng_rep0_open(&q), 0);
    cr_assert_eq(nng_listen(q, url, NULL, 0), 0);
    return q;
}

Test(identity, without_a_daemon_start_run_fails_at_once_and_close_is_not_held_up) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_as(&t, "alone", NULL, 0);
    /* no daemon: fails at once (a day-long timeout would hang the test),
     * naming where it looked */
    cr_expect_eq(ag_client_start_run(c, 24 * 3600 * 1000), AG_ETRANSPORT);
    cr_expect_not_null(strstr(ag_client_last_error(c), t.query + strlen("ipc://")), "%s",
                       ag_client_last_error(c));
    cr_expect_str_eq(ag_client_run(c), "alone");
    cr_expect_eq(ag_client_log_amax(c, 1, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK, "logging goes on");
    ag_client_close(c);

    /* A receiver but no query socket: run_start goes out, no one to ask. */
    nng_socket rx = receiver_open(t.ingest);
    c = open_as(&t, "unasked", NULL, 0);
    cr_expect_eq(ag_client_start_run(c, 24 * 3600 * 1000), AG_ETRANSPORT);
    ag_client_close(c);

    /* A query socket that never answers: the question waits out its time. */
    nng_socket q = mute_query(t.query);
    c = open_as(&t, "unanswered", NULL, 0);
    cr_expect_eq(ag_client_start_run(c, 200), AG_ETIMEDOUT);
    ag_client_close(c);
    nng_close(q);
    nng_close(rx);

    c = open_as(&t, "ended", NULL, 0);
    cr_assert_eq(ag_client_end_run(c), AG_OK);
    cr_expect_eq(ag_client_start_run(c, 0), AG_ECLOSED, "ended before it started");
    ag_client_close(c);
    cr_expect_eq(ag_client_start_run(NULL, 0), AG_EINVAL);
    cr_expect_null(ag_client_run(NULL));
    cr_expect_null(ag_client_launch_id(NULL));
    tmp_endpoints_remove(&t);
}

typedef struct waiter {
    ag_client *c;
    int rc;
} waiter;

static void *wait_for_name(void *arg) {
    waiter *w = arg;
    w->rc = ag_client_start_run(w->c, -1);
    return NULL;
}

Test(identity, close_wakes_a_thread_waiting_for_the_name) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    nng_socket q = mute_query(t.query); /* there, but it never answers */
    ag_client *c = open_as(&t, "waiting", NULL, 0);
    waiter w = {c, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wait_for_name, &w), 0);
    /* The waiter queues run_start and waits without letting go of the lock in
     * between; once the sender delivered it, the waiter is waiting (no
     * daemon answers the question). */
    ag_msg m;
    nng_msg *keep = NULL;
    cr_assert_eq(receive(rx, &m, &keep), 0);
    cr_assert_eq(m.type, AG_MSG_RUN_START);
    received_free(&m, keep);
    ag_client_close(c);
    pthread_join(th, NULL);
    cr_expect_eq(w.rc, AG_ECLOSED);
    nng_close(q);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}
