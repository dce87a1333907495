/*
 * engine_internal.h - internal to the daemon engine (engine.c, runs.c,
 * snapshot.c, restore.c): the state of runs, clients, tensors and roles, the
 * snapshot job, and the helpers the files share. Everything here runs on the loop,
 * except a snapshot job's kernels (snapshot.c) on the thread pool.
 */
#ifndef AG_DAEMON_ENGINE_INTERNAL_H
#define AG_DAEMON_ENGINE_INTERNAL_H

#include "core/errctx.h"
#include "core/stall_encode.h"
#include "daemon/engine.h"
#include "daemon/map.h"

#define ROLES 4
#define MAX_RUNS 100000
#define MAX_CLIENTS 1000000 /* clients that have not ended (a trainer killed never ends) */
#define MAX_TENSORS 1000000
/* Memory the engine's state may hold (--state-budget; docs/daemon.md,
 * Memory): tensors, roles with their amax histories, the flip baselines
 * (last encoded snapshot per format, and its float32 weights until they are
 * written), the snapshots being evaluated (message, conversions, new
 * encodings) and the spare buffers kept for reuse (freed first). Past it, new tensors and snapshots that would keep more are
 * rejected (counted), so a client cannot make the daemon run out of
 * memory; the loop first waits for snapshots in flight to finish
 * (ag_engine_snapshot_fits). Restored state is counted but never refused. */
#define AG_ENGINE_MAX_STATE_BYTES ((size_t)4 << 30)
/* Spare buffers (docs/daemon.md, Memory): the large buffers a snapshot
 * frees (a tensor's replaced baseline, a job's conversions) are kept for the
 * next snapshot of the same size instead of being unmapped, so it does not
 * page-fault fresh zeroed pages in. At most this many, each of at least
 * AG_ENGINE_SPARE_MIN bytes (smaller ones are cheap from the heap), within
 * the state budget, and all freed when the daemon is idle (ag_engine_trim). */
#define AG_ENGINE_SPARES 64
#define AG_ENGINE_SPARE_MIN ((size_t)64 << 10)
/* Buffers up to this size are kept too, AG_ENGINE_SMALLS of them (at most
 * 128 KiB, outside the budget): a small snapshot then allocates nothing. */
#define AG_ENGINE_SMALL_MAX ((size_t)4096)
#define AG_ENGINE_SMALLS 32

typedef struct ag_spare {
    void *p;
    size_t size;
} ag_spare;

typedef struct role_state {
    ag_amax_history *history;
    double scale[AG_FORMATS_MAX];     /* by registry index */
    double hist_amax[AG_FORMATS_MAX]; /* history amax each scale came from */
    uint64_t has_scale;               /* bit per registry index */
    uint64_t dirty;                   /* scales to write at the message's end */
    uint64_t step;
} role_state;

typedef struct run_state run_state;

/* Restore only: a format the tensor has results in, from the store's
 * last_result callback, waiting for the tensor's stored baseline. */
typedef struct restored_result {
    int fi; /* registry index */
    int has_scale;
    uint64_t last_step;
    float scale;
} restored_result;

typedef struct tensor_state {
    int64_t id;
    run_state *run;
    char *name;
    role_state *roles[ROLES];
    /* delta since the last message end */
    int touched;
    int role;
    uint64_t numel, first_step, last_step, snapshots;
    double last_amax;
    struct tensor_state *next_touched;
    /* last encoded snapshot per format (registry index), for flips */
    uint8_t *prev[AG_FORMATS_MAX];
    float prev_scale[AG_FORMATS_MAX];
    size_t prev_n;
    size_t prev_bytes; /* of prev[], as counted in the engine's state_bytes */
    /* The float32 weights of the last snapshot (base_n of them, step
     * base_step) until they are written to the snapshots table (then NULL):
     * what a restart rebuilds prev[] from. Counted in state_bytes. */
    float *base_w;
    size_t base_n;
    uint64_t base_step;
    int in_dirty; /* on the engine's dirty or sweep list */
    struct tensor_state *next_dirty;
    /* bit per registry index: the baseline of that format was lost (a
     * crash wrote results after the last stored weights), so the next
     * snapshot's flips in it are unknown */
    uint64_t flips_lost;
    int busy;                     /* snapshot jobs of this tensor in flight: 0 to 1 +
               * AG_ENGINE_FOLLOWERS (the later ones behind the first:
               * ag_engine_may_follow) */
    struct ag_engine_job *newest; /* the latest of them, or NULL */
    /* Ranks (shards.c): the newest step of a replicated tensor filed (a later
     * copy of it from another rank is not filed again), and the shard layout
     * (world and each rank's element count) of the baseline in prev[]. */
    uint64_t repl_step;
    int repl_has;
    uint64_t shard_layout; /* 0: unknown (a restored baseline is trusted) */
    /* the newest step stored from shards (whole or incomplete): a shard of
     * it, or of an older step no longer waiting, comes too late: not filed */
    uint64_t late_step;
    int late_has;
    restored_result *restored; /* restore only */
    size_t nrestored;
} tensor_state;

struct run_state {
    int64_t id;
    char *name;   /* unique among runs */
    char *asked;  /* the name its trainer asked for (name, or name is asked.k) */
    char *launch; /* the launch that made it; NULL: none given */
    ag_map tensors;
    int ended; /* a run_end was filed and no start since */
    /* delta since the last message end */
    uint64_t messages, dropped, last_step;
    int64_t ended_ms;
    size_t jobs;          /* its snapshot jobs in flight: messages is held back meanwhile */
    uint32_t world;       /* ranks of the run (its first run start's world; 1: not sharded) */
    size_t nclients;      /* clients of the run the engine holds (not ended) */
    uint8_t *ranks_ended; /* [world], NULL until a rank ends: its run_end came */
    uint32_t nranks_ended;
    ag_map shards; /* "step\x1ftensor" -> shard_step waiting for its other ranks */
};

/* One (run, tensor, step) of a sharded tensor whose shards wait for the
 * other ranks (shards.c): on the engine's list, oldest first, until every
 * rank of the run sent its shard, the deadline passes, the run's clients all
 * ended, the shard budget needs room or the daemon stops. */
typedef struct shard_piece {
    float *wx; /* w then x, n each, float32 (snapshots); NULL: not sent */
    size_t n;
    uint64_t numel;
} shard_piece;

typedef struct shard_step {
    run_state *run;
    char *tensor;
    char *key; /* in run->shards */
    uint64_t step;
    int type; /* AG_MSG_SNAPSHOT or AG_MSG_COUNTS */
    uint32_t world, nranks;
    uint8_t *have; /* [world] */
    int64_t deadline_ms;
    int inconsistent; /* counts: shards disagreed on a scale */
    int form;
    size_t nf;
    const ag_format *fmts[AG_FORMATS_MAX];
    int fidx[AG_FORMATS_MAX];
    /* snapshots */
    int dtype;
    float lr;
    int has_scale;
    double scale;
    shard_piece *pieces; /* [world] */
    size_t bytes;        /* held, counted in the engine's state and shard bytes */
    /* counts: the sums so far */
    uint64_t numel, nonfinite;
    double amax;
    float *scales;    /* [nf] */
    uint64_t *counts; /* [nf * 5] */
    int64_t *flips;   /* [nf], -1 unknown */
    double *qerr;     /* [nf * 2]: sums of squared error and of squared w; NaN unknown */
    struct shard_step *prev, *next;
} shard_step;

/* One client (its random cid) and the run its messages are filed under,
 * from its run start (or first message) until its run end. Each client
 * numbers its own messages, so the sequence state is per client. */
typedef struct client_state {
    uint64_t id;
    run_state *run;
    uint64_t last_seq;
    int has_seq;        /* last_seq is this client's */
    uint64_t last_drop; /* the client's cumulative drop count seen */
    int drop_known;
    int ended;            /* its run_end was filed: forgotten after the message */
    uint32_t rank, world; /* from its run start (0 and 1 without one) */
    uint64_t delivered;   /* messages accounted since the last message end: the
                            * clients row's delivery count gets them with the
                            * message's rows (q_delivery) */
    size_t jobs;          /* its snapshot jobs in flight: delivered is held back
                         * meanwhile, so a later message never makes the
                         * store say a seq is stored before all below it */
} client_state;

struct ag_engine {
    const ag_config *cfg;
    ag_logger *log;
    ag_counters *counters;
    ag_writer *writer;
    /* Rows queued for the writer since the last commit boundary, handed
     * over in one ag_writer_push_batch at the boundary (ag_eng_boundary). */
    ag_write_item *stage;
    size_t nstage, stage_cap;
    ag_map runs;     /* name -> run_state */
    ag_map families; /* name asked -> the newest run made for it */
    ag_map launches; /* "launch\x1fasked" -> the run that launch went to */
    ag_map clients;  /* cid as 16 hex digits -> client_state */
    size_t ntensors;
    int64_t next_run_id, next_tensor_id, next_format_id;
    int64_t format_id[AG_FORMATS_MAX]; /* store id by registry index, 0 = none yet */
    int scale_mode, amax_mode;
    double margin_mult; /* 2^margin */
    size_t history_len;
    tensor_state *touched;
    size_t state_bytes, max_state_bytes; /* see AG_ENGINE_MAX_STATE_BYTES */
    size_t inflight_bytes;               /* reserved by snapshot jobs in flight */
    uint64_t evaluated;                  /* snapshot jobs ended, ever (ag_engine_stats_of) */
    size_t njobs;                        /* snapshot jobs in flight */
    ag_engine_job *spare_job;            /* a finished job's memory, for the next */
    /* spare buffers, oldest first; spare_bytes of them, counted with
     * state_bytes and inflight_bytes against max_state_bytes */
    ag_spare spares[AG_ENGINE_SPARES];
    size_t nspares, spare_bytes;
    /* Small buffers (at most AG_ENGINE_SMALL_MAX bytes: a small snapshot's
     * encoded forms and weights) kept for reuse, newest last. */
    ag_spare small[AG_ENGINE_SMALLS];
    size_t nsmall;
    /* tensors whose base_w is not yet written: dirty since the last sweep,
     * and those the sweep in progress still has to write */
    tensor_state *dirty, *sweep;
    /* restore: id -> object, sorted by id */
    run_state **runs_by_id;
    size_t nruns_by_id;
    tensor_state **tensors_by_id;
    size_t ntensors_by_id, cap_tensors_by_id;
    ag_errctx err; /* restore: why it failed (ag_engine_why), "" if no reason given */
    /* shards waiting for their other ranks, oldest first (shards.c) */
    shard_step *shards_head, *shards_tail;
    size_t shard_bytes, max_shard_bytes;
    uint64_t incomplete_steps; /* filed incomplete since start (status, metrics) */
};

/* How a format of a job counts its flips (decided on the loop when the job
 * is made; the tensor's baseline does not change while the job is in flight). */
enum { FLIPS_NONE, FLIPS_BYTES, FLIPS_ENCODE, FLIPS_UNKNOWN };

struct ag_engine_job {
    tensor_state *t;
    client_state *client; /* whose message it is */
    uint64_t seq;         /* the message's, to record it as dropped if it fails */
    uint64_t step, numel;
    size_t n;
    int form;
    float lr;
    int has_scale;
    double msg_scale;
    const float *w, *x;
    float *wbuf, *xbuf; /* owned conversions, when the payload was not f32-aligned */
    /* float32 arrays in a client's segment (ag_msg_snapshot.remote), which
     * the client may write while we read: the amax phase copies each chunk of
     * w into wbuf first (x stays NULL), and each kernel chunk copies its
     * chunk of src_x into its thread's scratch (snapshot.c) */
    const float *src_w, *src_x;
    float *base; /* the weights kept as the tensor's baseline (wbuf, or a copy) */
    size_t nf;
    const ag_format *fmts[AG_FORMATS_MAX];
    int fidx[AG_FORMATS_MAX];
    float scales[AG_FORMATS_MAX];
    uint8_t *cur[AG_FORMATS_MAX]; /* this snapshot's encoded forms, enc_bytes(f, n) each */
    /* flips of format i: mode, and what it compares with (a pattern array
     * and its scale: the tensor's baseline, or cur[k] of the same format
     * named earlier in the message) */
    int flip_mode[AG_FORMATS_MAX];
    const uint8_t *flip_prev[AG_FORMATS_MAX];
    float flip_scale[AG_FORMATS_MAX];
    ag_stall_counts counts[AG_FORMATS_MAX];
    uint64_t flips[AG_FORMATS_MAX];
    ag_quant_error qerr[AG_FORMATS_MAX]; /* quantization error of w at scales[i] */
    float amax;
    uint64_t nonfinite;
    /* chunks: elements [c * chunk, ...), each with its own counts, summed in
     * chunk order when the job finishes (integers: the same totals for any
     * number of threads) */
    int phase;          /* 0: the amax chunks run (scales pending), 1: the kernels */
    float *part_amax;   /* phase 0: nchunks */
    uint64_t *part_bad; /* phase 0: nchunks */
    size_t chunk, nchunks;
    ag_stall_counts *part_counts; /* nchunks * nf */
    uint64_t *part_flips;         /* nchunks * nf */
    ag_quant_error *part_qerr;    /* nchunks * nf (sums in double, added in chunk order) */
    int *part_err;                /* nchunks */
    size_t reserved;              /* bytes counted in the engine's inflight_bytes */
    size_t bytes;                 /* of the message, for the bytes counter */
    int err;
    /* a sharded tensor's step (shards.c): how many ranks it holds, and
     * whether that is fewer than the run's world (then its flips are unknown
     * and it does not become the tensor's baseline) */
    uint32_t ranks;
    int partial;
    /* Pipelined (ag_engine_job_next_behind): behind is the job before this
     * one of its tensor, still in flight, whose patterns this one's flips
     * compare with; follower is the reverse link. Both cleared when either
     * ends. If behind ends without making its patterns the baseline (an
     * error), the pattern arrays this job still reads move to borrowed
     * (freed with this job, their bytes added to its reservation) and its
     * formats compare with nothing the
     * tensor keeps: their flips are unknown (bit i of voided). */
    struct ag_engine_job *behind, *follower;
    uint8_t *borrowed[AG_FORMATS_MAX];
    size_t borrowed_bytes[AG_FORMATS_MAX];
    uint64_t voided;
    /* the per-chunk sums of a small job (one chunk), without allocations
     * (job_calloc); larger ones are allocated */
    size_t arena_used;
    _Alignas(16) unsigned char arena[1024];
};

/* Bytes of f's encoded form of n elements (core/stall_encode.h): n
 * patterns of 1 or 2 bytes, or for a block-scaled format n element patterns
 * and a scale code per block. For n a multiple of the block size (every
 * chunk start, AG_ENGINE_CHUNK), also the offset of element n. */
static inline size_t enc_bytes(const ag_format *f, size_t n) { return ag_encoded_bytes(f, n); }

/* Formats whose scale is always 1, whatever the amax or a message's scale:
 * the unscaled twins (weight storage) and the MX formats (no tensor scale;
 * their E8M0 block scales are the whole scaling). NVFP4's scale is its FP32
 * tensor scale, from the amax history like a per-tensor format's. */
static inline int ag_eng_scale_is_one(const ag_format *f) {
    return f->unscaled || (f->block && f->scale_kind == AG_SCALE_E8M0);
}

int64_t ag_eng_wall_ms(void);
/* Registry index of f (0..AG_FORMATS_MAX-1), or -1. */
int ag_eng_fmt_index(const ag_format *f);
/* Queue one row for the writer: kept in the engine's stage (copied; owned
 * pointers move to it) until the next ag_eng_boundary or ag_eng_stage_flush
 * hands the stage over in order. AG_ENOMEM (the stage cannot grow) or
 * AG_ECLOSED (no writer): not queued, the caller still owns it. */
int ag_eng_push(ag_engine *e, const ag_write_item *it);
/* Hand the staged rows to the writer in one push (boundary: then mark a
 * commit boundary, as ag_writer_boundary). Rows the writer refuses (out of
 * memory growing its queue, or stopped) are freed and logged: the error. */
int ag_eng_stage_flush(ag_engine *e, int boundary);
/* The end of a message (or other unit): the stage handed over, a boundary. */
void ag_eng_boundary(ag_engine *e);
/* The store id of format f (registry index fi), queuing its row when new. */
int ag_eng_format_id(ag_engine *e, const ag_format *f, int fi, int64_t *id);
/* A run in the engine's maps (asked NULL: name; launch NULL: none); the
 * caller queues its row when it is new. */
run_state *ag_eng_new_run(ag_engine *e, int64_t id, const char *name, const char *asked,
                          const char *launch);
/* Record that launch, asking for the name asked, went to run r. */
int ag_eng_note_launch(ag_engine *e, const char *launch, const char *asked, run_state *r);
/* A client session of run r (restore, or a start). */
client_state *ag_eng_new_client(ag_engine *e, uint64_t id, run_state *r);
tensor_state *ag_eng_new_tensor(ag_engine *e, run_state *r, int64_t id, const char *name, int role);
/* The tensor named name of run r, created (and its row queued) when new. */
int ag_eng_tensor_for(ag_engine *e, run_state *r, const char *name, int role, tensor_state **out);
/* The role state of t, created with an empty amax history when new. */
role_state *ag_eng_role_for(ag_engine *e, tensor_state *t, int role);
/* Push one amax observation (when pushable) and refresh the scales of fmts. */
void ag_eng_observe(ag_engine *e, role_state *rs, double amax, int pushable,
                    const ag_format *const *fmts, const int *fidx, size_t nf, uint64_t step);
/* Record a record of t at step for the next tensor delta. */
void ag_eng_touch_tensor(ag_engine *e, tensor_state *t, int role, uint64_t step, uint64_t numel,
                         double amax);
/* Queue a message's run and client deltas (and tensor deltas with_tensors)
 * and a boundary; a client whose run ended is forgotten. */
int ag_eng_end_message(ag_engine *e, client_state *cs, size_t bytes, int with_tensors);
void ag_eng_free_client(void *client, void *ctx);
/* Remove client cs from the engine and free it. */
void ag_eng_forget_client(ag_engine *e, client_state *cs);

/* runs.c */
/* The client of stream message m, and so its run: found by its client id,
 * else started (the naming rule of PROTOCOL.md 3.1), queuing the rows of a
 * new run and client. A run_start of a known client re-opens its run. */
int ag_eng_client_for(ag_engine *e, const ag_msg *m, client_state **out);
/* Account m's seq and drop counter on its client: gaps become drops of its
 * run; a seq at or below the client's last is out of order (AG_ERANGE). */
int ag_eng_account(ag_engine *e, client_state *cs, const ag_msg *m);
/* Record count messages of cs's run from first_seq as dropped, with a static
 * reason: a drops row, the run's and the daemon's dropped. */
int ag_eng_queue_drop(ag_engine *e, client_state *cs, uint64_t first_seq, uint64_t count,
                      const char *reason);
/* Count a message accepted but not (fully) filed as rejected: the live
 * counter and the stored one (status reads the store). */
void ag_eng_count_unfiled(ag_engine *e);
/* A static reason for a message accepted but not (fully) filed. */
const char *ag_eng_unfiled_reason(int err);

/* Bytes a tensor with all its roles may hold outside its snapshots. */
size_t ag_eng_tensor_cost(const ag_engine *e, const char *name);

/* counts.c: file a counts message of client cs (AG_EFORMAT for a format the
 * daemon does not know, before anything is filed). */
int ag_eng_handle_counts(ag_engine *e, client_state *cs, const ag_msg_counts *c);
/* One tensor's results at step, from counts (a trainer's, or the sum of its
 * shards): amax observed, scales set, a statistics row and a result row per
 * format queued (ranks that reported, incomplete when fewer than the world). */
typedef struct ag_counts_item {
    const char *tensor;
    uint64_t step;
    uint64_t numel, nonfinite;
    double amax;
    size_t nf;
    const ag_format *const *fmts;
    const int *fidx;
    const float *scales;    /* [nf] */
    const uint64_t *counts; /* [nf * 5] */
    const int64_t *flips;   /* [nf] -1 unknown, or NULL: all unknown */
    const double *mse;      /* [nf] NaN unknown, or NULL: all unknown */
    const double *sqnr_db;  /* [nf] NaN unknown, or NULL: all unknown */
    uint32_t ranks;
    int incomplete;
} ag_counts_item;
int ag_eng_file_counts(ag_engine *e, run_state *r, const ag_counts_item *it);
/* Drop t's encoded baselines (prev[]), their memory given back. */
void ag_eng_forget_encoded(ag_engine *e, tensor_state *t);

/* shards.c */
/* A shard of a sharded tensor's snapshot from client cs: held until its step
 * is whole, then (*job set) evaluated like one snapshot of the whole tensor.
 * AG_OK when held or a job was made; an error when it is not filed. */
int ag_eng_shard_snapshot(ag_engine *e, client_state *cs, const ag_msg_snapshot *s,
                          ag_engine_job **job);
/* Item i of counts c from cs is a shard: summed until its step is whole. */
int ag_eng_shard_counts(ag_engine *e, client_state *cs, const ag_msg_counts *c, size_t i,
                        const ag_format *const *fmts, const int *fidx);
/* File waiting steps as incomplete: those past their deadline (now_ms), all
 * of run r (r not NULL), or all (all). A snapshot step whose tensor has a
 * job in flight waits for the next call. Returns how many were filed. */
size_t ag_eng_expire_shards(ag_engine *e, int64_t now_ms, run_state *r, int all);
/* Free a run's waiting steps without filing them (engine teardown). */
void ag_eng_free_shards(ag_engine *e);
/* Whether client cs may send shards of its run: its world is the run's. */
int ag_eng_world_ok(const client_state *cs);

/* snapshot.c */
int ag_eng_snapshot_job(ag_engine *e, run_state *r, const ag_msg_snapshot *s, ag_engine_job **out);
void ag_eng_job_scales(ag_engine *e, ag_engine_job *job);
/* Allocate the job's patterns and chunk results and decide each format's
 * flips, once the scales are known. Loop. */
int ag_eng_job_prepare(ag_engine *e, ag_engine_job *job);
/* Set the job up for its amax phase (chunks of ag_amax). */
int ag_eng_job_amax_phase(ag_engine_job *job);
/* Free the finished job's memory kept for the next one (ag_engine_free). */
void ag_eng_free_spare_job(ag_engine *e);
/* A buffer of size bytes: a spare of exactly that size, else malloc (after
 * freeing the spares past the budget). Loop. */
void *ag_eng_take(ag_engine *e, size_t size);
/* Give back p (size bytes, from malloc or ag_eng_take; NULL is ignored): kept
 * as a spare while the budget has room, else freed. Loop. */
void ag_eng_give(ag_engine *e, void *p, size_t size);
/* Free the oldest spares until state, jobs and spares fit the budget. */
void ag_eng_spares_fit(ag_engine *e);
/* Put t on the list of baselines to write. */
void ag_eng_mark_dirty(ag_engine *e, tensor_state *t);

#endif
