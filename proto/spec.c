/*
 * spec.c - the protocol as data: one field table per message type (keys,
 * kinds, limits, where each value lives in the C structs; for replies, also
 * each field's document key and presentation). encode.c and decode.c walk
 * these tables, and so does present/json_layout.c to lay out every query
 * result; PROTOCOL.md is their prose form.
 */
#include <stddef.h>
#include <string.h>

#include "proto/internal.h"

#define U(member) offsetof(ag_msg, u.member) - offsetof(ag_msg, u)
#define N(a) (sizeof(a) / sizeof((a)[0]))

static const ag_field run_start_fields[] = {
    {"host", K_STR, F_REQ, U(run_start.host), AG_NAME_MAX, NULL, 0},
    {"pid", K_INT, F_REQ, U(run_start.pid), 0, NULL, 0},
    {"time", K_INT, F_REQ, U(run_start.time_ms), 0, NULL, 0},
    {"meta", K_JSON, F_OMIT0, U(run_start.metadata), AG_PROTO_MAX_METADATA, NULL, 0},
    {"launch", K_LAUNCH, F_OMIT0, U(run_start.launch), AG_LAUNCH_ID_MAX, NULL, 0},
    {"resume", K_ENUM, F_OMIT0, U(run_start.resume), 1, NULL, 0},
    /* index RUN_START_WORLD: decode.c checks that a world key is not 0 */
    {"rank", K_UINT, F_OMIT0, U(run_start.rank), 0, NULL, 0},
    {"world", K_UINT, F_OMIT0, U(run_start.world), 0, NULL, 0},
};
_Static_assert(RUN_START_WORLD == 7, "the index of run_start's world key");

static const ag_field stats_fields[] = {
    {"recs", K_RECS, F_REQ, U(stats), 0, NULL, 0},
};

static const ag_field snapshot_fields[] = {
    {"step", K_UINT, F_REQ, U(snapshot.step), 0, NULL, 0},
    {"tensor", K_NAME, F_REQ, U(snapshot.tensor), 0, NULL, 0},
    {"dtype", K_ENUM, F_REQ, U(snapshot.dtype), AG_DTYPE_F16, NULL, 0},
    {"form", K_ENUM, F_REQ, U(snapshot.form), AG_FORM_UPDATE, NULL, 0},
    {"lr", K_FLOAT, F_OMIT0, U(snapshot.lr), 0, NULL, 0},
    {"n", K_UINT, F_REQ, U(snapshot.n), 0, NULL, 0},
    {"numel", K_UINT, F_OMIT0, U(snapshot.numel), 0, NULL, 0},
    {"scale", K_SCALE, 0, U(snapshot.scale), U(snapshot.has_scale), NULL, 0},
    {"fmts", K_FMTS, F_OMIT0, U(snapshot.nformats), 0, NULL, 0},
    {"repl", K_ENUM, F_OMIT0, U(snapshot.replicated), 1, NULL, 0},
    {"shm", K_SHM, F_OMIT0, U(snapshot.shm), 0, NULL, 0},
    {"data", K_DATA, F_REQ, U(snapshot), 0, NULL, 0}, /* last: the encoder pads before it */
};

_Static_assert(offsetof(ag_msg_snapshot, formats) ==
                   offsetof(ag_msg_snapshot, nformats) + sizeof(size_t),
               "K_FMTS: the names follow the count");
_Static_assert(offsetof(ag_msg_counts, formats) ==
                   offsetof(ag_msg_counts, nformats) + sizeof(size_t),
               "K_FMTS: the names follow the count");

static const ag_field counts_fields[] = {
    {"step", K_UINT, F_REQ, U(counts.step), 0, NULL, 0},
    {"form", K_ENUM, F_REQ, U(counts.form), AG_FORM_UPDATE, NULL, 0},
    {"fmts", K_FMTS, F_REQ, U(counts.nformats), 0, NULL, 0},
    {"items", K_COUNTS, F_REQ, U(counts), 0, NULL, 0},
    {"repl", K_REPL, F_OMIT0, U(counts), 0, NULL, 0},
};

static const ag_field run_end_fields[] = {
    {"step", K_UINT, F_REQ, U(run_end.step), 0, NULL, 0},
    {"time", K_INT, F_REQ, U(run_end.time_ms), 0, NULL, 0},
};

/* Query parameters. The last (document) column is the parameter's name in
 * the CLI (a required name is a positional argument, anything else --name)
 * and in the HTTP API (?name=); NULL: not one people give. A query's
 * parameters are in that order. */
static const ag_field q_run_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0, "run", 0},
};

static const ag_field q_runs_fields[] = {
    {"cols", K_UINT, F_OMIT0, U(query.cols), 0, NULL, 0},
};

static const ag_field q_history_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0, "run", 0},
    {"tensor", K_NAME, F_REQ, U(query.tensor), 0, "tensor", 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0, "format", 0},
    {"from", K_UINT, F_OMIT0, U(query.from_step), 0, "from", 0},
    {"to", K_UINT, F_OMIT0, U(query.to_step), 0, "to", 0},
    {"every", K_UINT, F_OMIT0, U(query.every), 0, "every", 0},
    {"cols", K_UINT, F_OMIT0, U(query.cols), 0, NULL, 0},
};

static const ag_field q_scales_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0, "run", 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0, "format", 0},
};

static const ag_field q_top_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0, "run", 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0, "format", 0},
    {"window", K_UINT, F_OMIT0, U(query.window), 0, "window", 0},
    {"limit", K_UINT, F_OMIT0, U(query.limit), 0, "limit", 0},
};

/* report: formats is a comma-separated list (the store checks each name),
 * at most AG_FORMATS_MAX names of AG_FORMAT_NAME_MAX bytes and their commas */
static const ag_field q_report_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0, "run", 0},
    {"fmts", K_STR, F_OMIT0, U(query.formats), AG_FORMATS_MAX *(AG_FORMAT_NAME_MAX + 1), "format",
     0},
    {"width", K_UINT, F_OMIT0, U(query.width), 0, "width", 0},
};

static const ag_field q_client_fields[] = {
    {"cid", K_UINT, F_REQ, U(query.client_id), 0, NULL, 0},
};

static const ag_field q_delivery_fields[] = {
    {"cid", K_UINT, F_REQ, U(delivery.client_id), 0, NULL, 0},
};

static const ag_field error_fields[] = {
    {"code", K_CODE, F_REQ, U(error.code), 0, NULL, 0},
    {"msg", K_STR, F_REQ, U(error.text), AG_PROTO_MAX_ERROR_TEXT, NULL, 0},
};

/* Stats records: a fixed array of 6, relative to ag_stat_record. */
const ag_field ag_record_cols[6] = {
    {"step", K_UINT, F_REQ, offsetof(ag_stat_record, step), 0, NULL, 0},
    {"tensor", K_NAME, F_REQ, offsetof(ag_stat_record, tensor), 0, NULL, 0},
    {"role", K_ENUM, F_REQ, offsetof(ag_stat_record, role), AG_ROLE_UPDATE, NULL, 0},
    {"amax", K_FLOAT, F_REQ | F_NONNEG, offsetof(ag_stat_record, amax), 0, NULL, 0},
    {"numel", K_UINT, F_REQ, offsetof(ag_stat_record, numel), 0, NULL, 0},
    {"nonfinite", K_UINT, F_REQ, offsetof(ag_stat_record, nonfinite), 0, NULL, 0},
};

/* ---- replies -----------------------------------------------------------
 * The one description of every query result's fields: wire key, kind,
 * flags, where the value lives, and how the documents (CLI, HTTP API,
 * Python) show it. Tables are in document order. R() names the C member,
 * whose name is the document key, so member and key cannot drift apart;
 * C() is R() for a column whose wire key is that name too. */
#define R(T, wire, member, kind, flags, aux, show)                                                 \
    { wire, kind, flags, offsetof(T, member), aux, #member, show }
#define C(T, member, kind, flags, aux, show) R(T, #member, member, kind, flags, aux, show)
/* The item list; its document key is the list's key ("runs", "points"...). */
#define ITEMS(list_key)                                                                            \
    { "items", K_ITEMS, F_REQ, 0, 0, list_key, S_PLAIN }

static const ag_field runs_fields[] = {ITEMS("runs")};
#define RUN(m, kind, aux, show) C(ag_run_info, m, kind, F_REQ, aux, show)
static const ag_field runs_cols[] = {
    RUN(name, K_NAME, 0, S_PLAIN),
    RUN(host, K_STR, AG_NAME_MAX, S_PLAIN),
    RUN(pid, K_INT, 0, S_PLAIN),
    RUN(client_id, K_UINT, 0, S_PLAIN),
    RUN(started_ms, K_INT, 0, S_TIME),
    RUN(ended_ms, K_INT, 0, S_TIME),
    RUN(last_step, K_UINT, 0, S_PLAIN),
    RUN(messages, K_UINT, 0, S_PLAIN),
    RUN(dropped, K_UINT, 0, S_PLAIN),
    RUN(metadata, K_JSON, AG_PROTO_MAX_METADATA, S_PLAIN),
    /* added later (PROTOCOL.md 4.3): sent to requesters that ask */
    RUN(world_size, K_UINT, 0, S_PLAIN),
    RUN(ranks_seen, K_UINT, 0, S_PLAIN),
    RUN(rank_drops, K_JSON, AG_PROTO_MAX_METADATA, S_PLAIN),
    RUN(incomplete, K_UINT, 0, S_PLAIN),
};

static const ag_field tensors_fields[] = {ITEMS("tensors")};
#define TENSOR(m, kind, aux, show) C(ag_tensor_info, m, kind, F_REQ, aux, show)
static const ag_field tensors_cols[] = {
    TENSOR(name, K_NAME, 0, S_PLAIN),       TENSOR(role, K_ENUM, AG_ROLE_UPDATE, S_ROLE),
    TENSOR(numel, K_UINT, 0, S_PLAIN),      TENSOR(first_step, K_UINT, 0, S_PLAIN),
    TENSOR(last_step, K_UINT, 0, S_PLAIN),  TENSOR(snapshots, K_UINT, 0, S_PLAIN),
    TENSOR(last_amax, K_FLOAT, 0, S_PLAIN),
};

static const ag_field history_fields[] = {
    C(ag_history, run, K_NAME, F_REQ, 0, S_PLAIN),
    C(ag_history, tensor, K_NAME, F_REQ, 0, S_PLAIN),
    R(ag_history, "fmt", format, K_FMT, F_REQ, 0, S_PLAIN),
    ITEMS("points"),
};
/* aux 16: the longest text column (computed); numbers ignore aux */
#define POINT(m, kind, flags, show) C(ag_history_point, m, kind, flags, 16, show)
static const ag_field history_cols[] = {
    POINT(step, K_UINT, F_REQ, S_PLAIN),      POINT(stalled, K_UINT, F_REQ, S_PLAIN),
    POINT(total, K_UINT, F_REQ, S_PLAIN),     POINT(stall_rate, K_FLOAT, F_REQ | F_NONNEG, S_RATE),
    POINT(flips, K_UINT, F_REQ, S_UNKNOWN),   POINT(overflow, K_UINT, F_REQ, S_PLAIN),
    POINT(underflow, K_UINT, F_REQ, S_PLAIN), POINT(nonfinite, K_UINT, F_REQ, S_PLAIN),
    POINT(amax, K_FLOAT, F_REQ, S_PLAIN),     POINT(scale, K_FLOAT, F_REQ, S_PLAIN),
    POINT(computed, K_STR, 0, S_NULLABLE),    POINT(ranks, K_UINT, F_REQ, S_PLAIN),
    POINT(complete, K_UINT, F_REQ, S_PLAIN),  POINT(mse, K_FLOAT, F_NONNEG, S_NAN),
    POINT(sqnr_db, K_FLOAT, 0, S_NAN),
};

static const ag_field scales_fields[] = {
    R(ag_scale_list, "fmt", format, K_FMT, F_REQ, 0, S_PLAIN),
    ITEMS("scales"),
};
#define SCALE(m, kind) C(ag_scale_info, m, kind, F_REQ, 0, S_PLAIN)
static const ag_field scales_cols[] = {
    SCALE(tensor, K_NAME),
    SCALE(step, K_UINT),
    SCALE(amax, K_FLOAT),
    SCALE(scale, K_FLOAT),
};

static const ag_field top_fields[] = {
    R(ag_top_list, "fmt", format, K_FMT, F_REQ, 0, S_PLAIN),
    R(ag_top_list, "from", from_step, K_UINT, F_REQ, 0, S_PLAIN),
    R(ag_top_list, "to", to_step, K_UINT, F_REQ, 0, S_PLAIN),
    ITEMS("tensors"),
};
#define TOP(m, kind, flags, show) C(ag_top_entry, m, kind, flags, 0, show)
static const ag_field top_cols[] = {
    TOP(tensor, K_NAME, F_REQ, S_PLAIN),  TOP(stall_rate, K_FLOAT, F_REQ | F_NONNEG, S_RATE),
    TOP(stalled, K_UINT, F_REQ, S_PLAIN), TOP(total, K_UINT, F_REQ, S_PLAIN),
    TOP(steps, K_UINT, F_REQ, S_PLAIN),
};
/* On the wire a top item is [tensor, stalled, total, stall_rate, steps]. */
static const uint8_t top_wire[] = {0, 2, 3, 1, 4};

static const ag_field report_fields[] = {ITEMS("rows")};
#define REPORT(m, kind, flags, aux, show) C(ag_report_row, m, kind, flags, aux, show)
static const ag_field report_cols[] = {
    REPORT(tensor, K_NAME, F_REQ, 0, S_PLAIN),
    REPORT(format, K_FMT, F_REQ, 0, S_PLAIN),
    REPORT(steps, K_UINT, F_REQ, 0, S_PLAIN),
    REPORT(last_rate, K_FLOAT, F_REQ | F_NONNEG, 0, S_RATE),
    REPORT(mean_rate, K_FLOAT, F_REQ | F_NONNEG, 0, S_RATE),
    REPORT(max_rate, K_FLOAT, F_REQ | F_NONNEG, 0, S_RATE),
    /* the SQNR of the series' last row: nil (unknown) for counts from a
     * trainer, a row from before schema 10, an exact or all-zero tensor */
    REPORT(last_sqnr_db, K_FLOAT, 0, 0, S_NAN),
    /* 3 bytes of UTF-8 a column */
    REPORT(sparkline, K_STR, F_REQ, 3 * AG_REPORT_WIDTH_MAX, S_PLAIN),
};
/* On the wire a report item is [tensor, format, steps, last_rate, mean_rate,
 * max_rate, sparkline, last_sqnr_db]: the column added last goes last. */
static const uint8_t report_wire[] = {0, 1, 2, 3, 4, 5, 7, 6};

#define STATUS(wire, m, kind, flags, aux, show) R(ag_status, wire, m, kind, flags, aux, show)
static const ag_field status_fields[] = {
    /* NULL: a database file no altgradd of schema version 4+ recorded */
    STATUS("version", version, K_STR, F_REQ, AG_PROTO_MAX_TEXT, S_NULLABLE),
    STATUS("uptime", uptime_s, K_FLOAT, F_REQ | F_NONNEG, 0, S_PLAIN),
    STATUS("messages", messages, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("bytes", bytes, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("rejected", rejected, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("dropped", dropped, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("queue", queue_depth, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("rows", rows_written, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("runs", runs, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("tensors", tensors, K_UINT, F_REQ, 0, S_PLAIN),
    STATUS("db", db_path, K_STR, F_REQ, AG_PROTO_MAX_TEXT, S_PLAIN),
    STATUS("fmts", formats, K_STR, F_REQ, AG_PROTO_MAX_TEXT, S_PLAIN),
    /* protocol 2: absent from older daemons (then NULL and 0). NULL is also
     * a status read from a file, where the daemon's live health is unknown */
    STATUS("store", store, K_STR, 0, AG_PROTO_MAX_TEXT, S_NULLABLE),
    STATUS("discarded", discarded, K_UINT, 0, 0, S_PLAIN),
    /* the scale rule; absent from older daemons (0 / NULL) */
    STATUS("history_len", history_len, K_UINT, 0, 0, S_PLAIN),
    STATUS("amax_mode", amax_mode, K_STR, 0, 16, S_NULLABLE),
    STATUS("scale_mode", scale_mode, K_STR, 0, 16, S_NULLABLE),
    STATUS("margin", margin, K_FLOAT, 0, 0, S_PLAIN),
    STATUS("scale_min", scale_min, K_FLOAT, F_NONNEG, 0, S_PLAIN),
    /* added later: absent (0) from older daemons */
    STATUS("caps", caps, K_UINT, 0, 0, S_PLAIN),
    STATUS("shm_segments", shm_segments, K_UINT, 0, 0, S_PLAIN),
    STATUS("shm_passed", shm_passed, K_UINT, 0, 0, S_PLAIN),
    STATUS("shm_snapshots", shm_snapshots, K_UINT, 0, 0, S_PLAIN),
    STATUS("shm_refused", shm_refused, K_UINT, 0, 0, S_PLAIN),
};

static const ag_field ident_fields[] = {
    C(ag_run_ident, run, K_NAME, F_REQ, 0, S_PLAIN),
    C(ag_run_ident, launch, K_STR, F_REQ, AG_LAUNCH_ID_MAX, S_PLAIN),
    /* added later within version 2: absent (0) from older daemons */
    C(ag_run_ident, caps, K_UINT, F_OMIT0, 0, S_PLAIN),
};

static const ag_field r_delivery_fields[] = {
    {"cid", K_UINT, F_REQ, U(delivery.client_id), 0, NULL, 0},
    {"messages", K_UINT, F_REQ, U(delivery.messages), 0, NULL, 0},
    {"seq", K_UINT, F_REQ, U(delivery.seq), 0, NULL, 0},
};

#define LIST(T, list_t, item_t, f, c, w)                                                           \
    {                                                                                              \
        T, f, N(f), sizeof(list_t), sizeof(item_t), offsetof(list_t, items), offsetof(list_t, n),  \
            c, N(c), w, N(c)                                                                       \
    }
#define MSG(T, f)                                                                                  \
    { T, f, N(f), 0, 0, 0, 0, NULL, 0, NULL, 0 }
#define BARE(T)                                                                                    \
    { T, NULL, 0, 0, 0, 0, 0, NULL, 0, NULL, 0 }
/* The columns of r_history items before any was added (protocol 2). */
#define HISTORY_COLS_BASE 10
/* The columns of r_runs items before world_size ... were added. */
#define RUNS_COLS_BASE 10

static const ag_spec specs[] = {
    MSG(AG_MSG_RUN_START, run_start_fields),
    MSG(AG_MSG_STATS, stats_fields),
    MSG(AG_MSG_SNAPSHOT, snapshot_fields),
    MSG(AG_MSG_RUN_END, run_end_fields),
    MSG(AG_MSG_COUNTS, counts_fields),
    MSG(AG_MSG_Q_RUNS, q_runs_fields),
    MSG(AG_MSG_Q_TENSORS, q_run_fields),
    MSG(AG_MSG_Q_HISTORY, q_history_fields),
    MSG(AG_MSG_Q_SCALES, q_scales_fields),
    MSG(AG_MSG_Q_TOP, q_top_fields),
    BARE(AG_MSG_Q_STATUS),
    MSG(AG_MSG_Q_RUN, q_client_fields),
    MSG(AG_MSG_Q_DELIVERY, q_delivery_fields),
    MSG(AG_MSG_Q_REPORT, q_report_fields),
    {AG_MSG_R_RUNS, runs_fields, N(runs_fields), sizeof(ag_run_list), sizeof(ag_run_info),
     offsetof(ag_run_list, items), offsetof(ag_run_list, n), runs_cols, N(runs_cols), NULL,
     RUNS_COLS_BASE},
    LIST(AG_MSG_R_TENSORS, ag_tensor_list, ag_tensor_info, tensors_fields, tensors_cols, NULL),
    {AG_MSG_R_HISTORY, history_fields, N(history_fields), sizeof(ag_history),
     sizeof(ag_history_point), offsetof(ag_history, points), offsetof(ag_history, n), history_cols,
     N(history_cols), NULL, HISTORY_COLS_BASE},
    LIST(AG_MSG_R_SCALES, ag_scale_list, ag_scale_info, scales_fields, scales_cols, NULL),
    LIST(AG_MSG_R_TOP, ag_top_list, ag_top_entry, top_fields, top_cols, top_wire),
    {AG_MSG_R_STATUS, status_fields, N(status_fields), sizeof(ag_status), 0, 0, 0, NULL, 0, NULL,
     0},
    {AG_MSG_R_RUN, ident_fields, N(ident_fields), sizeof(ag_run_ident), 0, 0, 0, NULL, 0, NULL, 0},
    MSG(AG_MSG_R_DELIVERY, r_delivery_fields),
    LIST(AG_MSG_R_REPORT, ag_report, ag_report_row, report_fields, report_cols, report_wire),
    MSG(AG_MSG_R_ERROR, error_fields),
};

size_t ag_proto_reply_cols(int reply_type, uint64_t asked) {
    const ag_spec *s = ag_spec_for(reply_type);
    if (!s || !s->cols) return 0;
    if (asked == 0) return s->ncols_base;
    return asked < s->ncols ? (size_t)asked : s->ncols;
}

const ag_spec *ag_spec_for(int type) {
    for (size_t i = 0; i < N(specs); i++)
        if (specs[i].type == type) return &specs[i];
    return NULL;
}

/* ---- the queries of proto/queries.h ------------------------------------ */
static const ag_query_def queries[] = {
#define QUERY_DEF_(NAME, name, q, result, flags, answer) {#name, q, q + 16, result, flags},
    AG_QUERY_LIST(QUERY_DEF_)
#undef QUERY_DEF_
};

const ag_field *ag_query_params(int q, size_t *n) {
    const ag_spec *s = ag_spec_for(q);
    *n = s ? s->nfields : 0;
    return s ? s->fields : NULL;
}

const ag_query_def *ag_query_at(size_t i) { return i < N(queries) ? &queries[i] : NULL; }

const ag_query_def *ag_query_by_type(int q) {
    for (size_t i = 0; i < N(queries); i++)
        if (queries[i].q == q) return &queries[i];
    return NULL;
}

const ag_query_def *ag_query_by_name(const char *name) {
    for (size_t i = 0; name && i < N(queries); i++)
        if (strcmp(queries[i].name, name) == 0) return &queries[i];
    return NULL;
}

AG_EXTERN const char *ag_result_key(int result, size_t i) {
    const ag_spec *s = NULL;
    for (size_t k = 0; k < N(queries) && !s; k++)
        if (result >= 0 && queries[k].result == result) s = ag_spec_for(queries[k].r);
    if (!s) return NULL;
    /* a list's row columns; a record's (status) fields */
    const ag_field *f = s->cols ? s->cols : s->fields;
    size_t n = s->cols ? s->ncols : s->nfields;
    return i < n ? f[i].doc : NULL;
}

const char *ag_proto_type_name(int type) {
    switch (type) {
    case AG_MSG_RUN_START: return "run_start";
    case AG_MSG_STATS: return "stats";
    case AG_MSG_SNAPSHOT: return "snapshot";
    case AG_MSG_RUN_END: return "run_end";
    case AG_MSG_COUNTS: return "counts";
    case AG_MSG_BUNDLE: return "bundle";
#define TYPE_NAMES_(NAME, name, q, result, flags, answer)                                          \
    case AG_MSG_Q_##NAME: return "q_" #name;                                                       \
    case AG_MSG_R_##NAME: return "r_" #name;
        AG_QUERY_LIST(TYPE_NAMES_)
#undef TYPE_NAMES_
    case AG_MSG_R_ERROR: return "r_error";
    default: return "unknown";
    }
}

int ag_proto_is_stream(int type) { return type >= AG_MSG_RUN_START && type <= AG_MSG_COUNTS; }

size_t ag_proto_dtype_size(int dtype) {
    switch (dtype) {
    case AG_DTYPE_F32: return 4;
    case AG_DTYPE_BF16: return 2;
    case AG_DTYPE_F16: return 2;
    default: return 0;
    }
}
