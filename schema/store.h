/*
 * store.h - internal: the SQLite store of altgrad (schema/NNN_*.sql, WAL mode).
 * The daemon's writer thread writes through the row API inside explicit
 * transactions; the daemon's query side and the CLI's --db mode read through
 * the query API, which mirrors the client queries of altgrad.h.
 * One ag_store is one connection and is used by one thread at a time.
 */
#ifndef AG_SCHEMA_STORE_H
#define AG_SCHEMA_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"

typedef struct ag_store ag_store;

enum { AG_STORE_READONLY = 1, AG_STORE_CREATE = 2, AG_STORE_CHECKPOINTER = 4 };

/*
 * Open the database at path. Without AG_STORE_READONLY the schema is created
 * or migrated to the newest version (PRAGMA user_version); AG_STORE_CREATE
 * allows creating a missing file. READONLY on a missing file, or a file from
 * a newer altgrad, is AG_ESTORE with a message in ag_store_errmsg(*out) when
 * *out could be made (it is NULL only on AG_ENOMEM / AG_EINVAL). On failure
 * the caller still calls ag_store_close(*out).
 */
int ag_store_open(ag_store **out, const char *path, int flags);
/* AG_STORE_CHECKPOINTER: a second writable connection to a file the writer
 * has opened (and migrated), for ag_store_checkpoint alone, from a thread of
 * its own: no migration, no write lock taken. */
/* The WAL pages after which a commit on st checkpoints itself (SQLite's
 * wal_autocheckpoint; 1000 by default; 0: never, another connection does). */
int ag_store_set_autocheckpoint(ag_store *st, int pages);
/* The path st was opened with. */
const char *ag_store_path(const ag_store *st);
void ag_store_close(ag_store *st);
/* Text of the last failure on this connection, "" if none; never NULL. */
const char *ag_store_errmsg(const ag_store *st);
/* 1 when the last failure is one that retrying may cure (disk full, I/O
 * error, busy or locked, out of memory, read-only filesystem), 0 when it is
 * about the row itself (a constraint, a misuse) or there was none. */
int ag_store_failure_is_transient(const ag_store *st);
/* From schema 11 the `results` table is a virtual table over packed
 * segments (docs/store.md, "Result segments"): every connection the store
 * opens has it. Another connection to the file (tests, tools) gets it with
 * ag_store_sql_register(db) (an sqlite3 *), or for every connection of the
 * process with sqlite3_auto_extension((void (*)(void))ag_store_sql_entry).
 * SQLite result codes. */
struct sqlite3;
struct sqlite3_api_routines;
int ag_store_sql_register(struct sqlite3 *db);
int ag_store_sql_entry(struct sqlite3 *db, char **err, const struct sqlite3_api_routines *api);
/* The connection's sqlite3 handle (benchmarks read its status; SQL run on it
 * must leave the store's transactions alone). */
struct sqlite3 *ag_store_db(ag_store *st);
/* Schema version this build writes (the number of migrations). */
int ag_store_schema_version(void);
/* Schema version of the open file. */
int ag_store_user_version(ag_store *st, int *version);

/* ---------------- queries (altgrad.h results, freed with ag_free) ------- */
/* The most points one history answer holds: what one query reply of the
 * protocol may carry (AG_PROTO_MAX_ITEMS), so the daemon and a reader of the
 * file answer alike. Beyond it history is AG_ETOOBIG: ask with every or a
 * step range. */
#define AG_STORE_MAX_POINTS 1048576u
int ag_store_runs(ag_store *st, ag_run_list **out);
int ag_store_tensors(ag_store *st, const char *run, ag_tensor_list **out);
int ag_store_history(ag_store *st, const ag_history_query *q, ag_history **out);
int ag_store_scales(ag_store *st, const char *run, const char *format, ag_scale_list **out);
/* limit 0 means AG_TOP_LIMIT_DEFAULT; limits above AG_TOP_LIMIT_MAX are that. */
#define AG_STORE_TOP_LIMIT_MAX AG_TOP_LIMIT_MAX
int ag_store_top(ag_store *st, const char *run, const char *format, uint64_t window, size_t limit,
                 ag_top_list **out);
/* The status as the file holds it, the same whoever asks (the daemon's
 * query threads or altgrad --db): messages and dropped summed over the runs;
 * bytes, rejected and rows_written from the counters the daemon commits with
 * its rows; runs and tensors counted; db_path the file's canonical absolute
 * path (as opened when it cannot be resolved); version and formats those the
 * daemon recorded at its start (daemon_settings), else NULL and the formats
 * the file knows in id order. uptime_s and queue_depth are 0: only a running
 * daemon has them (it fills them in). */
int ag_store_status(ag_store *st, ag_status **out);
/* The run the client client_id's messages are filed under (its name into
 * run[run_cap]) and the launch id it gave (into launch[launch_cap], "" if
 * none). AG_ENOTFOUND (with a message) when no start of that client is
 * stored; AG_ERANGE when a buffer is too small. */
int ag_store_client_run(ag_store *st, uint64_t client_id, char *run, size_t run_cap, char *launch,
                        size_t launch_cap);
/* How many stream messages of client client_id are stored (committed) and
 * the highest seq among them (the q_delivery query; clients.delivered and
 * delivered_seq); 0 and 0 for a client never seen. */
int ag_store_delivery(ag_store *st, uint64_t client_id, uint64_t *messages, uint64_t *last_seq);
/* The report of a run (the report query, AG_MSG_Q_REPORT): every tensor with
 * snapshots, by name, in each of formats (comma-separated; NULL: the
 * daemon's recorded formats, else the file's, and then a format a tensor
 * has no rows in is left out), with steps, last, mean and max stall rate
 * and a sparkline of width columns (0: AG_REPORT_WIDTH_DEFAULT, at most
 * AG_REPORT_WIDTH_MAX, else AG_ERANGE). An unknown run, or a named format
 * the file does not know, is AG_ENOTFOUND; more than AG_STORE_MAX_POINTS
 * rows or AG_STORE_REPORT_MAX_CELLS sparkline columns in all AG_ETOOBIG. */
#define AG_STORE_REPORT_MAX_CELLS (16u * 1024u * 1024u)
int ag_store_report(ag_store *st, const char *run, const char *formats, size_t width,
                    ag_report **out);
/* The sparkline of points[0..n) in at most width columns (column c pools
 * points [c*n/cols, (c+1)*n/cols)), each U+2581..U+2588 by the rate of its
 * summed counts, into buf (NUL-terminated UTF-8, 3 bytes a column; cap must
 * hold 3 * columns + 1). Returns the columns written, 0 for no points, no
 * width or a short buffer (buf then ""). */
size_t ag_store_sparkline(const ag_history_point *points, size_t n, size_t width, char *buf,
                          size_t cap);
/* Stall rate of one run and format as tensors x step buckets, for a heatmap.
 * Bucket b of tensor t covers steps [from_step + b*width, from_step +
 * (b+1)*width - 1]; from_step is a multiple of width, and width is the
 * smallest step count (a multiple of a rollup tier's width where one fits)
 * that covers the run's steps in at most the buckets asked for, so every
 * cell is summed exactly from whole rollup buckets. Tensors are those of
 * the run with snapshots, by name; a cell with total 0 has no rate. */
#define AG_STORE_HEATMAP_MAX_BUCKETS 2000u
#define AG_STORE_HEATMAP_MAX_CELLS ((size_t)1 << 22)
typedef struct ag_store_heat {
    const char *run, *format;
    uint64_t from_step, to_step, width;
    size_t nbuckets, ntensors;
    const char **tensors;
    uint64_t *stalled, *total, *rows; /* [tensor * nbuckets + bucket] */
} ag_store_heat;
/* buckets 1 .. AG_STORE_HEATMAP_MAX_BUCKETS (else AG_ERANGE); more than
 * AG_STORE_HEATMAP_MAX_CELLS cells is AG_ETOOBIG. Freed with ag_free. */
int ag_store_heatmap(ag_store *st, const char *run, const char *format, size_t buckets,
                     ag_store_heat **out);
/* PRAGMA integrity_check: 0 when "ok", AG_ESTORE otherwise. */
int ag_store_integrity_check(ag_store *st);

/* ---------------- writes (the daemon's writer thread) ------------------- */
/* Rows are plain values; ids are chosen by the caller (the daemon engine). */
typedef struct ag_store_run_row {
    int64_t id;
    const char *name;
    const char *host;
    int64_t pid;
    uint64_t client_id;
    int64_t started_ms;
    const char *metadata;  /* JSON text; NULL gives "{}" */
    const char *launch_id; /* the launch that made the run; NULL: none */
    const char *asked;     /* the name its trainer asked for; NULL: name */
    uint64_t world_size;   /* ranks of the run (0: 1); kept when the run is re-opened */
} ag_store_run_row;

/* A client's start: the run its messages go to (schema version 4). */
typedef struct ag_store_client_row {
    uint64_t client_id;
    int64_t run_id;
    const char *launch_id; /* NULL: none given */
    const char *asked;     /* the run name it asked for */
    int64_t started_ms;
    uint64_t rank; /* its rank in the run's world (schema version 9) */
} ag_store_client_row;

/* A client's sequence state, applied at the end of each of its messages. */
typedef struct ag_store_client_delta {
    uint64_t client_id;
    uint64_t last_seq;
    uint64_t last_drop; /* the client's cumulative drop count, set when has_drop */
    int has_drop;
    int ended;          /* its run_end was filed */
    uint64_t delivered; /* its messages stored since the last delta (added to
                           * clients.delivered; delivered_seq becomes last_seq
                           * when larger) */
} ag_store_client_delta;

typedef struct ag_store_stats_row {
    int64_t tensor_id;
    int role;
    uint64_t step;
    double amax; /* NaN or inf is stored as NULL */
    uint64_t numel;
    uint64_t nonfinite;
    uint64_t ranks; /* ranks that reported the row (0: 1) */
} ag_store_stats_row;

typedef struct ag_store_result_row {
    int64_t tensor_id;
    int64_t format_id;
    uint64_t step;
    ag_stall_counts counts;
    uint64_t flips;
    double amax;
    double scale;
    uint8_t flips_unknown; /* 1: flips is unknown (stored as NULL) */
    uint8_t source;        /* where it was computed: 0 the daemon, 1 the trainer's device */
    uint8_t incomplete;    /* 1: not every rank of a sharded tensor reported (complete 0) */
    uint64_t ranks;        /* ranks that reported it (0: 1) */
    /* the quantization error of w (docs/numerics.md): stored only with
     * has_qerr (else NULL, as for counts from a trainer); a NaN is NULL */
    uint8_t has_qerr;
    double mse;
    double sqnr_db;
} ag_store_result_row;

/* Per-run aggregate applied once per batch. */
typedef struct ag_store_run_delta {
    int64_t run_id;
    uint64_t messages;  /* added */
    uint64_t dropped;   /* added */
    uint64_t last_step; /* max-ed */
    int64_t ended_ms;   /* set when nonzero */
} ag_store_run_delta;

/* Per-tensor aggregate applied once per batch. */
typedef struct ag_store_tensor_delta {
    int64_t tensor_id;
    int role; /* of the latest record */
    uint64_t numel;
    uint64_t first_step; /* min-ed */
    uint64_t last_step;  /* max-ed */
    uint64_t snapshots;  /* added */
    double last_amax;
} ag_store_tensor_delta;

int ag_store_begin(ag_store *st);
int ag_store_commit(ag_store *st);
/* Safe to call with no transaction open. */
int ag_store_rollback(ag_store *st);

int ag_store_put_format(ag_store *st, int64_t id, const ag_format *fmt);
/* Inserts the run, or on a known name re-opens it (host, pid, client, metadata
 * replaced; ended_ms cleared; counters, launch and asked name kept). */
int ag_store_put_run(ag_store *st, const ag_store_run_row *r);
/* Inserts the client, or on a known client id starts it anew (run, launch,
 * name replaced, sequence state cleared). */
int ag_store_put_client(ag_store *st, const ag_store_client_row *c);
int ag_store_apply_client_delta(ag_store *st, const ag_store_client_delta *d);
int ag_store_put_tensor(ag_store *st, int64_t id, int64_t run_id, const char *name, int role);
/* A duplicate (tensor, role, step) replaces the earlier row. */
int ag_store_put_stats(ag_store *st, const ag_store_stats_row *r);
int ag_store_put_result(ag_store *st, const ag_store_result_row *r);
/* Many rows at once, exactly as the calls above one by one in order, only
 * cheaper: rows[i] is at (const char *)rows + i * stride (so a caller's
 * array of structs that begin with the row can be passed as it is). Rows of
 * one tensor and format in rising steps past the newest stored step go
 * 16 a statement (sort them so: tensor, format or role, step).
 * AG_OK with *done = n, or the failure of row *done: the rows before it are
 * written, it is not (a failure of the rollups' memory is transient, as in
 * ag_store_put_result: roll the transaction back then). */
int ag_store_put_results(ag_store *st, const void *rows, size_t stride, size_t n, size_t *done);
int ag_store_put_stats_rows(ag_store *st, const void *rows, size_t stride, size_t n, size_t *done);
int ag_store_put_drop(ag_store *st, int64_t run_id, uint64_t client_id, int64_t at_ms,
                      uint64_t first_seq, uint64_t count, const char *reason);
int ag_store_put_scale(ag_store *st, int64_t tensor_id, int64_t format_id, int role, uint64_t step,
                       double amax, double scale);
int ag_store_put_snapshot(ag_store *st, int64_t tensor_id, uint64_t step, const float *w, size_t n);
int ag_store_apply_run_delta(ag_store *st, const ag_store_run_delta *d);
int ag_store_apply_tensor_delta(ag_store *st, const ag_store_tensor_delta *d);
/* counters[name] += delta (names: "bytes", "rejected", "rows_written"). */
int ag_store_add_counter(ag_store *st, const char *name, uint64_t delta);
/* daemon_settings[name] = value: what the daemon was started with, recorded
 * at its start ("version", "formats"), so readers of the file report it. */
int ag_store_put_daemon_setting(ag_store *st, const char *name, const char *value);

/* ---------------- rollups, retention, WAL (writer connection) ----------- */
/* The WAL is truncated to this size after a checkpoint (journal_size_limit). */
#define AG_STORE_WAL_LIMIT_TEXT "16777216"
/* Compute every rollup bucket again from the raw rows, in one transaction
 * (buckets wholly below a tensor's retention horizon are kept: their raw
 * rows are gone). *buckets (may be NULL): how many were written. */
int ag_store_rebuild_rollups(ag_store *st, uint64_t *buckets);
/* Raw-row retention: of every tensor, delete the results and stats rows
 * older than the newest keep_steps steps of its run, in whole steps of
 * 1000 (the top rollup tier), so rollups keep counting them; one
 * transaction, stopping after about max_rows rows (call again for more).
 * *removed: rows deleted. No transaction may be open. */
int ag_store_prune_raw(ag_store *st, uint64_t keep_steps, uint64_t max_rows, uint64_t *removed);
/* Checkpoint the WAL (truncate: and cut the file to 0 bytes), waiting for
 * readers at most wait_ms: *busy is 1 when they kept it from finishing. */
int ag_store_checkpoint(ag_store *st, int truncate, int wait_ms, int *busy);
/* Size of the file's WAL in bytes (0 when there is none). */
long long ag_store_wal_bytes(ag_store *st);

/* ---------------- restore (daemon start, before the writer runs) -------- */
/*
 * Streams the engine state back: every format and run, each launch's runs,
 * the clients that have not ended, every tensor, the newest
 * history_len amax values per (tensor, role) oldest first, the latest scales,
 * the latest snapshot weights (flip baselines) and how they compare with the
 * newest results. Callbacks return 0 to go on; any other
 * value stops and is returned. Pointers passed are valid during the call only.
 */
typedef struct ag_store_restore_cb {
    void *ctx;
    int (*format)(void *ctx, int64_t id, const char *name, int exponent_bits, int mantissa_bits,
                  int bias, int has_inf, int has_nan);
    /* In id order. asked: the name asked for (the run's own name when the
     * file does not say); launch: NULL when none. */
    int (*run)(void *ctx, int64_t id, const char *name, const char *asked, const char *launch,
               uint64_t last_step, int64_t ended_ms);
    /* Each (launch, name asked) some client gave, with the newest run it went to. */
    int (*launch)(void *ctx, const char *launch, const char *asked, int64_t run_id);
    /* Each client that has not ended. has_drop is 0 when its last_drop was
     * never written (from before schema version 3): its drop counter is then
     * unknown. */
    int (*client)(void *ctx, uint64_t client_id, int64_t run_id, uint64_t last_seq,
                  uint64_t last_drop, int has_drop);
    int (*tensor)(void *ctx, int64_t id, int64_t run_id, const char *name, int role);
    int (*history)(void *ctx, int64_t tensor_id, int role, const double *amax, size_t n);
    int (*scale)(void *ctx, int64_t tensor_id, int64_t format_id, int role, uint64_t step,
                 double amax, double scale);
    /* Before the snapshots: each (tensor, format) with results, the newest
     * step with a result (last_step) and, where the tensor's snapshots row
     * has a result of this format at its own step, that result's scale
     * (has_scale 1). A baseline older than last_step was lost in a crash. */
    int (*last_result)(void *ctx, int64_t tensor_id, int64_t format_id, uint64_t last_step,
                       int has_scale, double scale);
    int (*snapshot)(void *ctx, int64_t tensor_id, uint64_t step, const float *w, size_t n);
    /* Optional (NULL: not called), right after run / client: the run's world
     * size, the client's rank (schema version 9; 1 and 0 before). */
    int (*run_world)(void *ctx, int64_t run_id, uint64_t world_size);
    int (*client_rank)(void *ctx, uint64_t client_id, uint64_t rank);
} ag_store_restore_cb;

int ag_store_restore(ag_store *st, size_t history_len, const ag_store_restore_cb *cb);
/* Largest ids in use (0 when none). */
int ag_store_max_ids(ag_store *st, int64_t *run_id, int64_t *tensor_id, int64_t *format_id);

#endif
