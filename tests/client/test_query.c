/*
 * test_query.c - client/query.c against a test daemon (an nng REP socket in
 * a thread): every query's request reaches it intact, results come back and
 * are freed with one ag_free, error replies map to AG_ENOTFOUND/AG_EREMOTE
 * with the daemon's text, no daemon fails at once naming the socket while a
 * silent one gives AG_ETIMEDOUT, one handle serves several querying threads,
 * and flush and close take the daemon's delivery answers for what they are.
 */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>

typedef struct server {
    nng_socket rep;
    pthread_t thread;
    int served;
    /* the answer to delivery queries, set by the test as it goes */
    _Atomic uint64_t stored, last_seq;
    _Atomic int delivery_asked;
} server;

/* Answer one decoded request. */
static int answer(server *s, const ag_msg *req, ag_buf *out) {
    ag_msg rep = {0};
    ag_run_info run = {"r1", "host", 12, 34, 1000, 0, 99, 7, 1, "{\"k\":2}", 1, 1, "{}", 0};
    ag_run_list runs = {1, &run};
    ag_tensor_info ti = {"fc.weight", AG_ROLE_WEIGHT, 64, 1, 99, 10, 0.75};
    ag_tensor_list tensors = {1, &ti};
    ag_history_point pt = {0};
    ag_history hist = {0};
    ag_scale_info si = {"fc.weight", 99, 3.5, 0.0625};
    ag_scale_list scales = {0};
    ag_top_entry te = {"fc.weight", 9, 10, 0.9, 5};
    ag_top_list top = {0};
    ag_status st = {
        "0.1.0",     1.5,  10, 2000, 1,     2,         3,  40,    1, 1, "var/altgrad.db",
        "E5M2,E3M4", "ok", 0,  16,   "max", "delayed", -1, 1e-10, 0, 0, 0,
        0,           0};
    const ag_msg_query *q = &req->u.query;
    if (req->type != AG_MSG_Q_DELIVERY && q->run && strcmp(q->run, "missing") == 0) {
        rep.type = AG_MSG_R_ERROR;
        rep.u.error = (ag_msg_error){AG_ENOTFOUND, "no run named missing"};
    } else {
        switch (req->type) {
        case AG_MSG_Q_RUNS:
            rep.type = AG_MSG_R_RUNS;
            rep.u.runs = &runs;
            break;
        case AG_MSG_Q_TENSORS:
            rep.type = AG_MSG_R_TENSORS;
            rep.u.tensors = &tensors;
            break;
        case AG_MSG_Q_HISTORY:
            /* echo the arguments back through the reply */
            pt = (ag_history_point){.step = q->from_step,
                                    .stalled = q->to_step,
                                    .total = q->every,
                                    .scale = 1,
                                    .amax = 1};
            hist = (ag_history){q->run, q->tensor, q->format ? q->format : "E5M2", 1, &pt};
            rep.type = AG_MSG_R_HISTORY;
            rep.u.history = &hist;
            break;
        case AG_MSG_Q_SCALES:
            if (q->format && strcmp(q->format, "E0M7") == 0) {
                /* pretend the store failed */
                rep.type = AG_MSG_R_ERROR;
                rep.u.error = (ag_msg_error){AG_ESTORE, "database is locked"};
                break;
            }
            scales = (ag_scale_list){q->format ? q->format : "E5M2", 1, &si};
            rep.type = AG_MSG_R_SCALES;
            rep.u.scales = &scales;
            break;
        case AG_MSG_Q_TOP:
            top = (ag_top_list){q->format ? q->format : "E5M2", q->window, q->limit, 1, &te};
            rep.type = AG_MSG_R_TOP;
            rep.u.top = &top;
            break;
        case AG_MSG_Q_DELIVERY:
            rep.type = AG_MSG_R_DELIVERY;
            rep.u.delivery = (ag_msg_delivery){req->u.delivery.client_id, atomic_load(&s->stored),
                                               atomic_load(&s->last_seq)};
            atomic_fetch_add(&s->delivery_asked, 1);
            break;
        default:
            rep.type = AG_MSG_R_STATUS;
            rep.u.status = &st;
            break;
        }
    }
    return ag_proto_encode(out, &rep);
}

static void *serve(void *arg) {
    server *s = arg;
    for (;;) {
        nng_msg *msg;
        if (nng_recvmsg(s->rep, &msg, 0) != 0) break; /* closed */
        ag_msg req;
        ag_buf out;
        ag_buf_init(&out);
        int rc = ag_proto_decode(nng_msg_body(msg), nng_msg_len(msg), &req);
        if (rc == AG_OK) rc = answer(s, &req, &out);
        if (rc != AG_OK) {
            ag_msg err = {.type = AG_MSG_R_ERROR};
            err.u.error = (ag_msg_error){AG_EPROTO, "bad request"};
            ag_buf_reset(&out);
            ag_proto_encode(&out, &err);
        }
        ag_msg_clear(&req);
        nng_msg_clear(msg);
        nng_msg_append(msg, out.data, out.len);
        ag_buf_free(&out);
        if (nng_sendmsg(s->rep, msg, 0) != 0)
            nng_msg_free(msg);
        else
            s->served++;
    }
    return NULL;
}

static void server_start(server *s, const char *url) {
    cr_assert_eq(nng_rep0_open(&s->rep), 0);
    cr_assert_eq(nng_listen(s->rep, url, NULL, 0), 0);
    s->served = 0;
    atomic_store(&s->stored, 0);
    atomic_store(&s->last_seq, 0);
    atomic_store(&s->delivery_asked, 0);
    cr_assert_eq(pthread_create(&s->thread, NULL, serve, s), 0);
}

static void server_stop(server *s) {
    nng_close(s->rep);
    pthread_join(s->thread, NULL);
}

static ag_client *open_query_client(const tmp_endpoints *t, int timeout_ms) {
    ag_client_opts o = {
        .ingest_url = t->ingest, .query_url = t->query, .query_timeout_ms = timeout_ms};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    return c;
}

Test(query, every_query_returns_a_result_freed_with_one_call) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    server s;
    server_start(&s, t.query);
    ag_client *c = open_query_client(&t, RECV_BOUND_MS);

    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_OK, "%s", ag_client_last_error(c));
    cr_assert_eq(runs->n, 1);
    cr_assert_str_eq(runs->items[0].name, "r1");
    cr_assert_str_eq(runs->items[0].metadata, "{\"k\":2}");
    cr_assert_eq(runs->items[0].last_step, 99);
    ag_free(runs);

    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_client_tensors(c, "r1", &tl), AG_OK);
    cr_assert_str_eq(tl->items[0].name, "fc.weight");
    cr_assert_eq(tl->items[0].last_amax, 0.75);
    ag_free(tl);

    ag_history_query hq = {"r1", "fc.weight", "E3M4", 5, 50, 4};
    ag_history *h = NULL;
    cr_assert_eq(ag_client_history(c, &hq, &h), AG_OK);
    cr_assert_str_eq(h->run, "r1");
    cr_assert_str_eq(h->tensor, "fc.weight");
    cr_assert_str_eq(h->format, "E3M4");
    cr_assert_eq(h->points[0].step, 5, "from_step reached the daemon");
    cr_assert_eq(h->points[0].stalled, 50, "to_step reached the daemon");
    cr_assert_eq(h->points[0].total, 4, "every reached the daemon");
    ag_free(h);
    hq.format = NULL;
    cr_assert_eq(ag_client_history(c, &hq, &h), AG_OK);
    cr_assert_str_eq(h->format, "E5M2", "no format means E5M2");
    ag_free(h);

    ag_scale_list *sl = NULL;
    cr_assert_eq(ag_client_scales(c, "r1", "E7M0", &sl), AG_OK);
    cr_assert_str_eq(sl->format, "E7M0");
    cr_assert_eq(sl->items[0].scale, 0.0625);
    ag_free(sl);

    ag_top_list *top = NULL;
    cr_assert_eq(ag_client_top(c, "r1", NULL, 20, 3, &top), AG_OK);
    cr_assert_eq(top->from_step, 20, "window reached the daemon");
    cr_assert_eq(top->to_step, 3, "limit reached the daemon");
    cr_assert_eq(top->items[0].stall_rate, 0.9);
    ag_free(top);

    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_OK);
    cr_assert_str_eq(st->version, "0.1.0");
    cr_assert_eq(st->rows_written, 40);
    cr_assert_str_eq(st->formats, "E5M2,E3M4");
    ag_free(st);

    ag_client_close(c);
    server_stop(&s);
    tmp_endpoints_remove(&t);
}

Test(query, daemon_errors_map_to_notfound_or_remote_with_its_text) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    server s;
    server_start(&s, t.query);
    ag_client *c = open_query_client(&t, RECV_BOUND_MS);
    ag_tensor_list *tl = (ag_tensor_list *)&t; /* must be reset to NULL on failure */
    cr_assert_eq(ag_client_tensors(c, "missing", &tl), AG_ENOTFOUND);
    cr_assert_null(tl);
    cr_assert_str_eq(ag_client_last_error(c), "no run named missing");
    ag_scale_list *sl = NULL;
    cr_assert_eq(ag_client_scales(c, "r1", "E0M7", &sl), AG_EREMOTE);
    cr_assert_null(sl);
    cr_assert_str_eq(ag_client_last_error(c), "database is locked");
    cr_assert_str_eq(ag_client_last_error(NULL), "");
    ag_client_close(c);
    server_stop(&s);
    tmp_endpoints_remove(&t);
}

/* The unix socket address of an ipc:// URL. */
static void socket_address(struct sockaddr_un *sa, const char *url) {
    const char *path = url + strlen("ipc://");
    size_t n = strlen(path);
    cr_assert_lt(n, sizeof sa->sun_path);
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, n + 1);
}

/* A query timeout no test may wait out: a failure that comes back at all
 * came back without waiting for it. */
#define UNWAITABLE_MS 600000

Test(query, no_daemon_fails_at_once_naming_the_socket) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_query_client(&t, UNWAITABLE_MS);
    ag_run_list *runs = (ag_run_list *)&t; /* must come back NULL */
    cr_assert_eq(ag_client_runs(c, &runs), AG_ETRANSPORT);
    cr_assert_null(runs);
    const char *why = ag_client_last_error(c);
    cr_assert_not_null(strstr(why, t.query + strlen("ipc://")), "the socket is not named: %s", why);
    cr_assert_not_null(strstr(why, "not found"), "no reason given: %s", why);
    ag_client_close(c);
    tmp_endpoints_remove(&t);
}

Test(query, a_socket_file_nobody_listens_on_fails_at_once_as_refused) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* what a killed daemon leaves behind: the file, bound by nobody */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sa;
    socket_address(&sa, t.query);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    ag_client *c = open_query_client(&t, UNWAITABLE_MS);
    ag_status *st = NULL;
    cr_assert_eq(ag_client_status(c, &st), AG_ETRANSPORT);
    cr_assert_null(st);
    const char *why = ag_client_last_error(c);
    cr_assert_not_null(strstr(why, sa.sun_path), "the socket is not named: %s", why);
    cr_assert_not_null(strstr(why, "refused"), "no reason given: %s", why);
    ag_client_close(c);
    tmp_endpoints_remove(&t);
}

Test(query, a_daemon_that_is_there_but_silent_still_times_out) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* a listener that never accepts: connections queue in its backlog and
     * nobody shakes hands, as with a daemon too busy to answer */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sa;
    socket_address(&sa, t.query);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 16), 0);
    ag_client *c = open_query_client(&t, 100);
    ag_run_list *runs = NULL;
    cr_assert_eq(ag_client_runs(c, &runs), AG_ETIMEDOUT);
    cr_assert_null(runs);
    cr_assert_not_null(strstr(ag_client_last_error(c), "no reply"), "%s", ag_client_last_error(c));
    ag_client_close(c);
    close(fd);
    tmp_endpoints_remove(&t);
}

Test(query, bad_arguments_are_refused_before_sending) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    ag_client *c = open_query_client(&t, 100);
    ag_tensor_list *tl = NULL;
    ag_scale_list *sl = NULL;
    char long_name[AG_NAME_MAX + 2];
    memset(long_name, 'y', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(ag_client_tensors(c, NULL, &tl), AG_EINVAL);
    cr_assert_eq(ag_client_tensors(c, long_name, &tl), AG_ETOOBIG);
    cr_assert_eq(ag_client_tensors(c, "r", NULL), AG_EINVAL);
    cr_assert_eq(ag_client_scales(c, "r", "E5 M2", &sl), AG_EINVAL);
    cr_assert_eq(ag_client_runs(NULL, NULL), AG_EINVAL);
    ag_history_query hq = {.run = "r"};
    ag_history *h = NULL;
    cr_assert_eq(ag_client_history(c, &hq, &h), AG_EINVAL, "no tensor");
    ag_client_close(c);
    tmp_endpoints_remove(&t);
}

typedef struct querier {
    ag_client *c;
    int failures;
    pthread_t th;
} querier;

static void *query_many(void *arg) {
    querier *q = arg;
    for (int i = 0; i < 25; i++) {
        ag_run_list *runs = NULL;
        if (ag_client_runs(q->c, &runs) != AG_OK || runs->n != 1) q->failures++;
        ag_free(runs);
    }
    return NULL;
}

Test(query, one_handle_serves_several_threads) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    server s;
    server_start(&s, t.query);
    ag_client *c = open_query_client(&t, RECV_BOUND_MS);
    querier qs[4];
    for (int i = 0; i < 4; i++) {
        qs[i] = (querier){c, 0, 0};
        cr_assert_eq(pthread_create(&qs[i].th, NULL, query_many, &qs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(qs[i].th, NULL);
        cr_assert_eq(qs[i].failures, 0, "thread %d", i);
    }
    ag_client_close(c);
    server_stop(&s);
    cr_assert_eq(s.served, 100);
    tmp_endpoints_remove(&t);
}

typedef struct pending_query {
    ag_client *c;
    int rc;
    pthread_t th;
} pending_query;

static void *query_status(void *arg) {
    pending_query *p = arg;
    ag_status *st = NULL;
    p->rc = ag_client_status(p->c, &st);
    ag_free(st);
    return NULL;
}

Test(query, close_fails_a_query_in_flight_at_once_and_waits_for_it) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rep;
    cr_assert_eq(nng_rep0_open(&rep), 0);
    cr_assert_eq(nng_socket_set_ms(rep, NNG_OPT_RECVTIMEO, RECV_BOUND_MS), 0);
    cr_assert_eq(nng_listen(rep, t.query, NULL, 0), 0);
    /* a daemon that takes the request and never answers */
    ag_client *c = open_query_client(&t, 600000);
    pending_query p = {c, 1, 0};
    cr_assert_eq(pthread_create(&p.th, NULL, query_status, &p), 0);
    nng_msg *req;
    cr_assert_eq(nng_recvmsg(rep, &req, 0), 0, "the query never arrived");
    nng_msg_free(req);
    ag_client_close(c); /* the query is waiting for its reply now */
    pthread_join(p.th, NULL);
    cr_assert_eq(p.rc, AG_ECLOSED, "%s", ag_strerror(p.rc));
    nng_close(rep);
    tmp_endpoints_remove(&t);
}

typedef struct hostile {
    nng_socket rep;
    pthread_t thread;
    const void *const *replies;
    const size_t *lens;
    size_t n;
} hostile;

/* Answer the i-th request with the i-th canned reply, whatever was asked. */
static void *serve_hostile(void *arg) {
    hostile *h = arg;
    for (size_t i = 0; i < h->n; i++) {
        nng_msg *msg;
        if (nng_recvmsg(h->rep, &msg, 0) != 0) break;
        nng_msg_clear(msg);
        nng_msg_append(msg, h->replies[i], h->lens[i]);
        if (nng_sendmsg(h->rep, msg, 0) != 0) nng_msg_free(msg);
    }
    return NULL;
}

Test(query, a_hostile_reply_fails_cleanly) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    /* a valid runs reply, to be sent where status was asked */
    ag_run_info run = {"r1", "host", 12, 34, 1000, 0, 99, 7, 1, "{}", 1, 1, "{}", 0};
    ag_run_list runs = {1, &run};
    ag_msg rm = {.type = AG_MSG_R_RUNS};
    rm.u.runs = &runs;
    ag_buf good;
    ag_buf_init(&good);
    cr_assert_eq(ag_proto_encode(&good, &rm), AG_OK);
    static const uint8_t garbage[] = {0xc1, 0xff, 0x00, 0x13, 0x37};
    static const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff}; /* array32 of 4G */
    static const uint8_t huge_string[] = {0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
    const void *replies[] = {garbage, huge_array, huge_string, good.data, good.data, ""};
    size_t lens[] = {sizeof garbage, sizeof huge_array, sizeof huge_string,
                     good.len,       good.len / 2,      0};
    hostile h = {.replies = replies, .lens = lens, .n = 6};
    cr_assert_eq(nng_rep0_open(&h.rep), 0);
    cr_assert_eq(nng_listen(h.rep, t.query, NULL, 0), 0);
    cr_assert_eq(pthread_create(&h.thread, NULL, serve_hostile, &h), 0);
    ag_client *c = open_query_client(&t, RECV_BOUND_MS);
    for (size_t i = 0; i < h.n; i++) {
        ag_status *st = (ag_status *)&t; /* must come back NULL */
        int rc = ag_client_status(c, &st);
        cr_assert(rc == AG_EPROTO || rc == AG_EVERSION || rc == AG_ETOOBIG, "reply %zu: %s", i,
                  ag_strerror(rc));
        cr_assert_null(st);
        cr_assert_neq(strlen(ag_client_last_error(c)), 0);
    }
    ag_client_close(c);
    pthread_join(h.thread, NULL);
    nng_close(h.rep);
    ag_buf_free(&good);
    tmp_endpoints_remove(&t);
}

/* A client that logs n amax records, each its own message (seq 1..n after
 * run_start's 0), to a receiver that takes them and confirms nothing. */
static ag_client *logging_client(const tmp_endpoints *t, int n, int close_timeout_ms) {
    ag_client_opts o = {.ingest_url = t->ingest,
                        .query_url = t->query,
                        .run = "delivery",
                        .batch_bytes = 1,
                        .query_timeout_ms = RECV_BOUND_MS,
                        .close_timeout_ms = close_timeout_ms};
    ag_client *c = NULL;
    cr_assert_eq(ag_client_open(&c, &o), AG_OK);
    for (int i = 1; i <= n; i++)
        cr_assert_eq(ag_client_log_amax(c, (uint64_t)i, "t", AG_ROLE_WEIGHT, 1, 1, 0), AG_OK);
    wait_handed_off(c);
    return c;
}

Test(query, flush_succeeds_only_once_the_daemon_confirms_every_message) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    server s;
    server_start(&s, t.query);
    ag_client *c = logging_client(&t, 3, 100); /* seq 0..3 */
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.sent, 4);
    cr_assert_eq(st.delivered, 0, "nothing is delivered before the daemon says so");
    cr_assert_eq(st.undelivered, 4);

    /* the daemon has stored run_start and one batch so far */
    atomic_store(&s.stored, 2);
    atomic_store(&s.last_seq, 1);
    cr_assert_eq(ag_client_flush(c, 200), AG_ETIMEDOUT);
    cr_assert_gt(atomic_load(&s.delivery_asked), 0, "flush never asked the daemon");
    cr_assert_not_null(strstr(ag_client_last_error(c), "confirmed 2 of 4"), "%s",
                       ag_client_last_error(c));
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.delivered, 2);
    cr_assert_eq(st.undelivered, 2);

    /* now all of them */
    atomic_store(&s.stored, 4);
    atomic_store(&s.last_seq, 3);
    cr_assert_eq(ag_client_flush(c, RECV_BOUND_MS), AG_OK);
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.delivered, 4);
    cr_assert_eq(st.undelivered, 0);

    /* run_end (seq 4) confirmed too: close reports nothing undelivered */
    atomic_store(&s.stored, 5);
    atomic_store(&s.last_seq, 4);
    cr_assert_eq(ag_client_close(c), 0);
    server_stop(&s);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(query, messages_the_daemon_skipped_are_lost_and_counted_at_once) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    server s;
    server_start(&s, t.query);
    ag_client *c = logging_client(&t, 5, UNWAITABLE_MS); /* seq 0..5 */
    /* the daemon has the last message but only 4 of the 6: two were lost on
     * the way, and a stream delivers in order, so they never will arrive;
     * flush says so without waiting out its (unwaitable) timeout */
    atomic_store(&s.stored, 4);
    atomic_store(&s.last_seq, 5);
    cr_assert_eq(ag_client_flush(c, UNWAITABLE_MS), AG_ELOST);
    cr_assert_not_null(strstr(ag_client_last_error(c), "2 below it were lost"), "%s",
                       ag_client_last_error(c));
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.delivered, 4);
    cr_assert_eq(st.undelivered, 2);
    /* close queues run_end (seq 6), which the daemon stores as well */
    atomic_store(&s.stored, 5);
    atomic_store(&s.last_seq, 6);
    cr_assert_eq(ag_client_close(c), 2, "the two lost messages");
    server_stop(&s);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}

Test(query, a_delivery_answer_that_cannot_be_true_is_refused) {
    tmp_endpoints t;
    tmp_endpoints_make(&t);
    nng_socket rx = receiver_open(t.ingest);
    server s;
    server_start(&s, t.query);
    ag_client *c = logging_client(&t, 2, 100); /* seq 0..2 */
    atomic_store(&s.stored, 7);                /* more than we ever sent */
    atomic_store(&s.last_seq, 2);
    cr_assert_eq(ag_client_flush(c, RECV_BOUND_MS), AG_EPROTO);
    atomic_store(&s.stored, 3);
    atomic_store(&s.last_seq, 99); /* a seq we never used */
    cr_assert_eq(ag_client_flush(c, RECV_BOUND_MS), AG_EPROTO);
    atomic_store(&s.stored, 3);
    atomic_store(&s.last_seq, 1); /* three messages below seq 2? */
    cr_assert_eq(ag_client_flush(c, RECV_BOUND_MS), AG_EPROTO);
    ag_client_stats st;
    cr_assert_eq(ag_client_get_stats(c, &st), AG_OK);
    cr_assert_eq(st.delivered, 0, "nothing from a false answer is believed");
    cr_assert_eq(ag_client_close(c), 4, "run_start, two batches, run_end");
    server_stop(&s);
    nng_close(rx);
    tmp_endpoints_remove(&t);
}
