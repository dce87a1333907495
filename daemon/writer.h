/*
 * writer.h - the one thread that owns the SQLite write connection. The loop
 * pushes rows (ag_write_item) into a bounded queue without waiting; the
 * writer applies them in order and commits in batches, by row count and by
 * time, only at item boundaries the engine marks (the end of each message),
 * so a commit never splits one message's rows.
 */
#ifndef AG_DAEMON_WRITER_H
#define AG_DAEMON_WRITER_H

#include <stdatomic.h>
#include <stdint.h>

#include "daemon/log.h"
#include "schema/store.h"

typedef enum ag_write_kind {
    AG_W_FORMAT,
    AG_W_RUN,
    AG_W_CLIENT,
    AG_W_CLIENT_DELTA,
    AG_W_TENSOR,
    AG_W_STATS,
    AG_W_RESULT,
    AG_W_DROP,
    AG_W_SCALE,
    AG_W_SNAPSHOT,
    AG_W_RUN_DELTA,
    AG_W_TENSOR_DELTA,
    AG_W_COUNTER
} ag_write_kind;

/* One row. Strings and the snapshot weights are owned by the item (malloc)
 * and freed by the writer; everything else is by value. */
typedef struct ag_write_item {
    int kind;     /* ag_write_kind */
    int boundary; /* a commit may follow this item */
    /* writer-internal (set by ag_writer_push): a later snapshot of the same
     * tensor is queued, so this one is not written; this snapshot replaces
     * an earlier queued one */
    unsigned char superseded, supersedes;
    union {
        struct {
            int64_t id;
            const ag_format *fmt;
        } format;
        struct {
            ag_store_run_row row;
            char *name, *host, *metadata, *launch, *asked;
        } run;
        struct {
            ag_store_client_row row;
            char *launch, *asked;
        } client; /* launch may be NULL */
        ag_store_client_delta client_delta;
        struct {
            int64_t id, run_id;
            char *name;
            int role;
        } tensor;
        ag_store_stats_row stats;
        ag_store_result_row result;
        struct {
            int64_t run_id;
            uint64_t client_id;
            int64_t at_ms;
            uint64_t first_seq, count;
            const char *reason;
        } drop; /* reason: static text */
        struct {
            int64_t tensor_id, format_id;
            int role;
            uint64_t step;
            double amax, scale;
        } scale;
        struct {
            int64_t tensor_id;
            uint64_t step;
            float *w;
            size_t n;
        } snapshot;
        ag_store_run_delta run_delta;
        ag_store_tensor_delta tensor_delta;
        struct {
            const char *name;
            uint64_t delta;
        } counter; /* name: static text */
    } u;
} ag_write_item;

typedef struct ag_writer ag_writer;

typedef struct ag_writer_opts {
    size_t batch_rows;       /* commit after this many rows ... */
    unsigned batch_ms;       /* ... or this long after the batch began */
    size_t high_water;       /* ag_writer_full() above this many queued items ... */
    size_t high_bytes;       /* ... or snapshot bytes; 0: AG_WRITER_HIGH_BYTES */
    uint64_t keep_raw_steps; /* raw-row retention (ag_store_prune_raw); 0: none */
} ag_writer_opts;

/* Between batches, at most once a second each: raw-row retention (when
 * keep_raw_steps is set; at most AG_WRITER_PRUNE_ROWS rows a time) and,
 * when the queue is empty, a WAL checkpoint that truncates the file; and
 * after any batch that leaves the WAL above AG_WRITER_WAL_MAX, a truncating
 * checkpoint that waits for readers up to AG_WRITER_WAL_WAIT_MS. */
#define AG_WRITER_PRUNE_ROWS 50000
#define AG_WRITER_MAINT_MS 1000
#define AG_WRITER_WAL_MAX (24LL << 20)
#define AG_WRITER_WAL_WAIT_MS 250

#define AG_WRITER_HIGH_BYTES ((size_t)256 << 20)

/* Start the writer thread on st (owned from now on; closed by ag_writer_stop).
 * on_space(ctx) is called from the writer thread when the queue drops back
 * below high_water after having been full (the loop wakes via uv_async). */
int ag_writer_start(ag_writer **out, ag_store *st, const ag_writer_opts *opts, ag_logger *lg,
                    void (*on_space)(void *), void *ctx);
/* Queue one item (copied; owned pointers move to the writer). Never blocks
 * on disk; AG_ENOMEM if the queue cannot grow, AG_ECLOSED after stop.
 * The snapshots table keeps one row per tensor, so a snapshot still queued
 * when a newer one of its tensor arrives is dropped unwritten; the writer
 * then commits no earlier than the newer one, so no commit goes back to an
 * older snapshot than the one its results were computed with. */
int ag_writer_push(ag_writer *w, const ag_write_item *item);
/* Queue n items in order under one lock, as n ag_writer_push calls would,
 * then, when boundary is set, mark the last queued item as a commit
 * boundary (ag_writer_boundary). All or nothing: on AG_ENOMEM or AG_ECLOSED
 * no item was queued and the caller still owns them all. */
int ag_writer_push_batch(ag_writer *w, const ag_write_item *items, size_t n, int boundary);
/* Mark the last queued item as a commit boundary and wake the writer. */
void ag_writer_boundary(ag_writer *w);
/* A client waits for what was queued to be committed (it asked the
 * daemon how many of its messages are stored): once the writer has taken
 * everything queued up to a message boundary, it commits the open batch
 * then, at least HURRY_MIN_MS (2 ms) after the batch began, instead of
 * waiting out the batch time. One commit for any number of calls before it;
 * a call with no batch open hurries the next. Any thread. */
void ag_writer_hurry(ag_writer *w);
/* ag_writer_hurry, then, when a batch is open or rows are queued, wait up
 * to timeout_ms for that batch to end (committed, or failed and held for
 * a retry). 1 when one ended in time. Not on the writer thread. */
int ag_writer_hurry_wait(ag_writer *w, int timeout_ms);
/* Batches committed early for ag_writer_hurry, ever. */
uint64_t ag_writer_hurried(ag_writer *w);
/* Batches committed, ever (a batch given up or retried counts when it commits). */
uint64_t ag_writer_commits(ag_writer *w);
/* 1 when more than high_water items or high_bytes of snapshot weights wait
 * (the loop stops taking messages). */
int ag_writer_full(ag_writer *w);
size_t ag_writer_depth(ag_writer *w);
/* Bytes the queue's ring and the batch's held rows have room for: a
 * backlog's are freed once the writer has been idle about a second. */
size_t ag_writer_buffer_bytes(ag_writer *w);
uint64_t ag_writer_rows_written(ag_writer *w);

/* The store's health as the writer sees it. A failed begin, row or commit
 * that retrying may cure (disk full, I/O error, busy) rolls the batch back
 * and keeps its rows; the writer retries them, pausing 50 ms doubling to
 * 2 s, while the queue fills and pushes back on ingest (ag_writer_full). */
typedef struct ag_writer_health_info {
    int degraded;         /* the last attempt failed; the batch is held */
    uint64_t failures;    /* failed attempts since start */
    uint64_t discarded;   /* rows given up: a commit failure about the rows
                          * themselves, or still failing 5 s after stop */
    uint64_t held_rows;   /* rows of the failed batch, waiting for the retry */
    uint64_t unpersisted; /* of discarded, not yet in the file's "discarded" counter
                           * (the next commit adds them) */
    char why[256];        /* while degraded: what failed, SQLite's text */
} ag_writer_health_info;
/* Fill *out; returns out->degraded. Any thread. */
int ag_writer_health(ag_writer *w, ag_writer_health_info *out);
/* Drain everything queued, commit, stop the thread, close the store, free.
 * While the store keeps failing, retries for at most 5 s, then gives the
 * rows up (counted in discarded, logged). */
void ag_writer_stop(ag_writer *w);
/* Free what an item owns (for items that never reached the queue). */
void ag_write_item_clear(ag_write_item *item);

#endif
