/*
 * engine.h - per run / tensor / role state on the libuv loop: amax histories,
 * per-format scales (docs/numerics.md, Quantize, scale, history), the last encoded snapshot per format for
 * flips, sequence-gap accounting, and the rows each message turns into
 * (pushed to the writer). Heavy snapshot kernels run as an ag_engine_job,
 * in chunks on the thread pool, while the loop goes on with messages that
 * do not depend on it.
 */
#ifndef AG_DAEMON_ENGINE_H
#define AG_DAEMON_ENGINE_H

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/log.h"
#include "daemon/writer.h"
#include "proto/proto.h"
#include "schema/store.h"

/* Snapshots of at least this many elements are evaluated on the thread pool,
 * in chunks of AG_ENGINE_CHUNK elements (a multiple of the kernels' block). */
#define AG_ENGINE_POOL_MIN 65536
#define AG_ENGINE_CHUNK 65536
/* Snapshots of one tensor that may be in flight behind its first
 * (ag_engine_may_follow): each takes its amax beside those before it and
 * runs its kernels behind theirs, so the pool has the next snapshot's work
 * queued while the loop takes the scales of the one after. */
#define AG_ENGINE_FOLLOWERS 2

typedef struct ag_engine ag_engine;
typedef struct ag_engine_job ag_engine_job;

/* cfg, lg and counters must outlive the engine. The writer is attached later
 * (restore runs on the store before the writer thread owns it). */
int ag_engine_new(ag_engine **out, const ag_config *cfg, ag_logger *lg, ag_counters *counters);
void ag_engine_free(ag_engine *e);
/* Rebuild state from the store (daemon start). Formats the database names
 * are defined from their stored definitions when unknown here; a stored
 * definition that differs from the one known under its name is AG_EEXIST
 * with the reason in ag_engine_why(). */
int ag_engine_restore(ag_engine *e, ag_store *st);
/* One line on why the last ag_engine_restore failed, "" when it gave none. */
const char *ag_engine_why(const ag_engine *e);
void ag_engine_set_writer(ag_engine *e, ag_writer *w);
/* Reloadable settings (SIGHUP): scale mode, margin. */
void ag_engine_reconfigure(ag_engine *e, const ag_config *cfg);

/*
 * Take one decoded stream message of bytes bytes. Returns AG_OK when handled
 * (rows queued), or an error when the message was rejected (counted; the
 * caller logs). For a large snapshot it returns AG_OK with *job set: its
 * ag_engine_job_chunks pieces may run on any threads, in any order and at
 * once (ag_engine_job_run_chunk); when all have run, ag_engine_job_finish
 * on the loop. The message buffer must stay alive until then. Meanwhile
 * the loop may handle other messages except: another snapshot of the same
 * tensor name, statistics while a job's scales are pending (they would enter
 * the amax history first), a run start or end (they change the clients jobs
 * refer to), and any type it does not know (see ag_engine_may_overlap).
 */
int ag_engine_handle(ag_engine *e, const ag_msg *m, size_t bytes, ag_engine_job **job);
/* A job runs in two phases: the amax of its weights, then (after the loop
 * took its scales in ag_engine_job_next) the kernels. Chunks of the
 * current phase: */
size_t ag_engine_job_chunks(const ag_engine_job *job);
/* Evaluate chunk c of the current phase: any thread. */
void ag_engine_job_run_chunk(ag_engine_job *job, size_t c);
/* On the loop when every chunk of the current phase has run: 1 when the
 * job goes on with another phase (run its chunks), 0 when it is done
 * (ag_engine_job_finish). */
int ag_engine_job_next(ag_engine *e, ag_engine_job *job);
/* 1 while the job's scales are not taken yet (its amax phase). */
int ag_engine_job_scales_pending(const ag_engine_job *job);
/* Every phase and chunk, one after the other, on this thread (the loop). */
void ag_engine_job_run(ag_engine *e, ag_engine_job *job);
/* The tensor name a job evaluates (valid until ag_engine_job_finish). */
const char *ag_engine_job_tensor(const ag_engine_job *job);
/* Queue the job's rows and free it. */
int ag_engine_job_finish(ag_engine *e, ag_engine_job *job);
/* 1 when snapshot m may start as the next job of job's tensor while job
 * and the others of that tensor in flight still run: a snapshot of the same
 * tensor of an unsharded run, as large (and large enough for the pool), the
 * latest job of the tensor without an error, and fewer than
 * AG_ENGINE_FOLLOWERS behind the first. The new job's amax phase may then
 * run beside job's (either phase); its scales wait until the job ahead of
 * it has taken its own (main.c parks it till then), and its kernels follow
 * that job's chunk by chunk (ag_engine_job_next_behind), or, where that may
 * not be, wait for its end (ag_engine_job_follows). */
int ag_engine_may_follow(const ag_msg *m, const ag_engine_job *job);
/* 1 when job, whose amax phase has run, may take its scales and run its
 * kernels while before, the job of its tensor ahead of it, still runs its
 * kernels (ag_engine_job_next_behind): before is past its amax phase, has
 * no error and no follower yet, and both evaluate the whole of one tensor
 * of the same size. */
int ag_engine_may_pipeline(const ag_engine_job *job, const ag_engine_job *before);
/* ag_engine_job_next for such a job: its scales now, and each format's
 * flips against before's patterns where before evaluates that format (the
 * baseline once before ends), else against the tensor's baseline. Chunk c
 * of its kernels may run only once chunk c of before's has (main.c keeps
 * that order); before must end first. If before ends with an error, the
 * flips that compared with it are reported unknown. */
int ag_engine_job_next_behind(ag_engine *e, ag_engine_job *job, ag_engine_job *before);
/* 1 when later evaluates the same tensor as earlier (in flight before it). */
int ag_engine_job_follows(const ag_engine_job *later, const ag_engine_job *earlier);
/* 1 when message m may be handled while the jobs in flight (whose tensors
 * are tensors[0..njobs)) still run, scales_pending of them without their
 * scales yet: see ag_engine_handle. */
int ag_engine_may_overlap(const ag_msg *m, const char *const *tensors, size_t njobs,
                          int scales_pending);
/* 1 when snapshot m (bytes long) fits the state budget beside the jobs in
 * flight, or no job is in flight (it is then accepted or refused alone). */
int ag_engine_snapshot_fits(const ag_engine *e, const ag_msg *m, size_t bytes);
/* Free the spare snapshot buffers the engine keeps for reuse (docs/daemon.md,
 * Memory), so RSS goes down while the daemon is idle. */
void ag_engine_trim(ag_engine *e);
/* Bytes of spare buffers the engine holds now. */
size_t ag_engine_spare_bytes(const ag_engine *e);
/* The engine's memory against its share of --state-budget (docs/daemon.md,
 * Memory): its state at rest (tensors, histories, baselines), what the
 * snapshots in flight reserve, the spare buffers kept for the next ones,
 * and the most the three may hold together; and the snapshots whose
 * evaluation ended (on the pool or, small ones, on the loop), ever. Loop
 * thread. */
typedef struct ag_engine_stats {
    size_t state, inflight, spare, budget;
    uint64_t evaluated;
} ag_engine_stats;
void ag_engine_stats_of(const ag_engine *e, ag_engine_stats *out);
/* Write the flip baselines of tensors snapshotted since the last sweep
 * (docs/daemon.md, Flip baselines): start a sweep when none is in
 * progress, then move weights to the writer while it has room (all: until
 * done, whatever the queue holds). Returns 1 when the sweep is done. */
int ag_engine_persist(ag_engine *e, int all);
/* Queue the deltas and scales of tensors touched by statistics since the
 * last flush (the loop calls it on a timer and before stopping). */
int ag_engine_flush(ag_engine *e);
/* Store the steps of sharded tensors still waiting for ranks as incomplete:
 * those past --shard-timeout-ms, or all (the daemon stopping). Steps whose
 * tensor has a snapshot job in flight wait for the next call. Loop; returns
 * how many were stored. */
size_t ag_engine_expire(ag_engine *e, int all);
/* Steps stored incomplete since the daemon started. */
uint64_t ag_engine_incomplete_steps(const ag_engine *e);
/* Count one rejected message (undecodable ones never reach handle). */
void ag_engine_reject(ag_engine *e, size_t bytes);

#endif
