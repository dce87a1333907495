/*
 * spec.c - the protocol as data: one field table per message type (keys,
 * kinds, limits, where each value lives in the C structs). encode.c and
 * decode.c walk these tables; PROTOCOL.md is their prose form.
 */
#include <stddef.h>

#include "proto/internal.h"

#define U(member) offsetof(ag_msg, u.member) - offsetof(ag_msg, u)
#define N(a) (sizeof(a) / sizeof((a)[0]))

static const ag_field run_start_fields[] = {
    {"host", K_STR, F_REQ, U(run_start.host), AG_NAME_MAX},
    {"pid", K_INT, F_REQ, U(run_start.pid), 0},
    {"time", K_INT, F_REQ, U(run_start.time_ms), 0},
    {"meta", K_JSON, F_OMIT0, U(run_start.metadata), AG_PROTO_MAX_METADATA},
    {"launch", K_LAUNCH, F_OMIT0, U(run_start.launch), AG_LAUNCH_ID_MAX},
    {"resume", K_ENUM, F_OMIT0, U(run_start.resume), 1},
};

static const ag_field stats_fields[] = {
    {"recs", K_RECS, F_REQ, U(stats), 0},
};

static const ag_field snapshot_fields[] = {
    {"step", K_UINT, F_REQ, U(snapshot.step), 0},
    {"tensor", K_NAME, F_REQ, U(snapshot.tensor), 0},
    {"dtype", K_ENUM, F_REQ, U(snapshot.dtype), AG_DTYPE_F16},
    {"form", K_ENUM, F_REQ, U(snapshot.form), AG_FORM_UPDATE},
    {"lr", K_FLOAT, F_OMIT0, U(snapshot.lr), 0},
    {"n", K_UINT, F_REQ, U(snapshot.n), 0},
    {"numel", K_UINT, F_OMIT0, U(snapshot.numel), 0},
    {"scale", K_SCALE, 0, U(snapshot.scale), U(snapshot.has_scale)},
    {"fmts", K_FMTS, F_OMIT0, U(snapshot), 0},
    {"data", K_DATA, F_REQ, U(snapshot), 0}, /* last: the encoder pads before it */
};

static const ag_field run_end_fields[] = {
    {"step", K_UINT, F_REQ, U(run_end.step), 0},
    {"time", K_INT, F_REQ, U(run_end.time_ms), 0},
};

static const ag_field q_run_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0},
};

static const ag_field q_history_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0},      {"tensor", K_NAME, F_REQ, U(query.tensor), 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0},  {"from", K_UINT, F_OMIT0, U(query.from_step), 0},
    {"to", K_UINT, F_OMIT0, U(query.to_step), 0}, {"every", K_UINT, F_OMIT0, U(query.every), 0},
};

static const ag_field q_scales_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0},
};

static const ag_field q_top_fields[] = {
    {"run", K_NAME, F_REQ, U(query.run), 0},
    {"fmt", K_FMT, F_OMIT0, U(query.format), 0},
    {"window", K_UINT, F_OMIT0, U(query.window), 0},
    {"limit", K_UINT, F_OMIT0, U(query.limit), 0},
};

static const ag_field q_client_fields[] = {
    {"cid", K_UINT, F_REQ, U(query.client_id), 0},
};

static const ag_field q_delivery_fields[] = {
    {"cid", K_UINT, F_REQ, U(delivery.client_id), 0},
};

static const ag_field error_fields[] = {
    {"code", K_CODE, F_REQ, U(error.code), 0},
    {"msg", K_STR, F_REQ, U(error.text), AG_PROTO_MAX_ERROR_TEXT},
};

/* Stats records: a fixed array of 6, relative to ag_stat_record. */
const ag_field ag_record_cols[6] = {
    {"step", K_UINT, F_REQ, offsetof(ag_stat_record, step), 0},
    {"tensor", K_NAME, F_REQ, offsetof(ag_stat_record, tensor), 0},
    {"role", K_ENUM, F_REQ, offsetof(ag_stat_record, role), AG_ROLE_UPDATE},
    {"amax", K_FLOAT, F_REQ | F_NONNEG, offsetof(ag_stat_record, amax), 0},
    {"numel", K_UINT, F_REQ, offsetof(ag_stat_record, numel), 0},
    {"nonfinite", K_UINT, F_REQ, offsetof(ag_stat_record, nonfinite), 0},
};

/* ---- replies ----------------------------------------------------------- */
#define ITEMS                                                                                      \
    { "items", K_ITEMS, F_REQ, 0, 0 }

static const ag_field runs_fields[] = {ITEMS};
static const ag_field runs_cols[] = {
    {"name", K_NAME, F_REQ, offsetof(ag_run_info, name), 0},
    {"host", K_STR, F_REQ, offsetof(ag_run_info, host), AG_NAME_MAX},
    {"pid", K_INT, F_REQ, offsetof(ag_run_info, pid), 0},
    {"client_id", K_UINT, F_REQ, offsetof(ag_run_info, client_id), 0},
    {"started_ms", K_INT, F_REQ, offsetof(ag_run_info, started_ms), 0},
    {"ended_ms", K_INT, F_REQ, offsetof(ag_run_info, ended_ms), 0},
    {"last_step", K_UINT, F_REQ, offsetof(ag_run_info, last_step), 0},
    {"messages", K_UINT, F_REQ, offsetof(ag_run_info, messages), 0},
    {"dropped", K_UINT, F_REQ, offsetof(ag_run_info, dropped), 0},
    {"metadata", K_JSON, F_REQ, offsetof(ag_run_info, metadata), AG_PROTO_MAX_METADATA},
};

static const ag_field tensors_fields[] = {ITEMS};
static const ag_field tensors_cols[] = {
    {"name", K_NAME, F_REQ, offsetof(ag_tensor_info, name), 0},
    {"role", K_ENUM, F_REQ, offsetof(ag_tensor_info, role), AG_ROLE_UPDATE},
    {"numel", K_UINT, F_REQ, offsetof(ag_tensor_info, numel), 0},
    {"first_step", K_UINT, F_REQ, offsetof(ag_tensor_info, first_step), 0},
    {"last_step", K_UINT, F_REQ, offsetof(ag_tensor_info, last_step), 0},
    {"snapshots", K_UINT, F_REQ, offsetof(ag_tensor_info, snapshots), 0},
    {"last_amax", K_FLOAT, F_REQ, offsetof(ag_tensor_info, last_amax), 0},
};

static const ag_field history_fields[] = {
    {"run", K_NAME, F_REQ, offsetof(ag_history, run), 0},
    {"tensor", K_NAME, F_REQ, offsetof(ag_history, tensor), 0},
    {"fmt", K_FMT, F_REQ, offsetof(ag_history, format), 0},
    ITEMS,
};
static const ag_field history_cols[] = {
    {"step", K_UINT, F_REQ, offsetof(ag_history_point, step), 0},
    {"stalled", K_UINT, F_REQ, offsetof(ag_history_point, stalled), 0},
    {"total", K_UINT, F_REQ, offsetof(ag_history_point, total), 0},
    {"stall_rate", K_FLOAT, F_REQ | F_NONNEG, offsetof(ag_history_point, stall_rate), 0},
    {"flips", K_UINT, F_REQ, offsetof(ag_history_point, flips), 0},
    {"overflow", K_UINT, F_REQ, offsetof(ag_history_point, overflow), 0},
    {"underflow", K_UINT, F_REQ, offsetof(ag_history_point, underflow), 0},
    {"nonfinite", K_UINT, F_REQ, offsetof(ag_history_point, nonfinite), 0},
    {"amax", K_FLOAT, F_REQ, offsetof(ag_history_point, amax), 0},
    {"scale", K_FLOAT, F_REQ, offsetof(ag_history_point, scale), 0},
};

static const ag_field scales_fields[] = {
    {"fmt", K_FMT, F_REQ, offsetof(ag_scale_list, format), 0},
    ITEMS,
};
static const ag_field scales_cols[] = {
    {"tensor", K_NAME, F_REQ, offsetof(ag_scale_info, tensor), 0},
    {"step", K_UINT, F_REQ, offsetof(ag_scale_info, step), 0},
    {"amax", K_FLOAT, F_REQ, offsetof(ag_scale_info, amax), 0},
    {"scale", K_FLOAT, F_REQ, offsetof(ag_scale_info, scale), 0},
};

static const ag_field top_fields[] = {
    {"fmt", K_FMT, F_REQ, offsetof(ag_top_list, format), 0},
    {"from", K_UINT, F_REQ, offsetof(ag_top_list, from_step), 0},
    {"to", K_UINT, F_REQ, offsetof(ag_top_list, to_step), 0},
    ITEMS,
};
static const ag_field top_cols[] = {
    {"tensor", K_NAME, F_REQ, offsetof(ag_top_entry, tensor), 0},
    {"stalled", K_UINT, F_REQ, offsetof(ag_top_entry, stalled), 0},
    {"total", K_UINT, F_REQ, offsetof(ag_top_entry, total), 0},
    {"stall_rate", K_FLOAT, F_REQ | F_NONNEG, offsetof(ag_top_entry, stall_rate), 0},
    {"steps", K_UINT, F_REQ, offsetof(ag_top_entry, steps), 0},
};

static const ag_field status_fields[] = {
    {"version", K_STR, F_REQ, offsetof(ag_status, version), AG_PROTO_MAX_TEXT},
    {"uptime", K_FLOAT, F_REQ | F_NONNEG, offsetof(ag_status, uptime_s), 0},
    {"messages", K_UINT, F_REQ, offsetof(ag_status, messages), 0},
    {"bytes", K_UINT, F_REQ, offsetof(ag_status, bytes), 0},
    {"rejected", K_UINT, F_REQ, offsetof(ag_status, rejected), 0},
    {"dropped", K_UINT, F_REQ, offsetof(ag_status, dropped), 0},
    {"queue", K_UINT, F_REQ, offsetof(ag_status, queue_depth), 0},
    {"rows", K_UINT, F_REQ, offsetof(ag_status, rows_written), 0},
    {"runs", K_UINT, F_REQ, offsetof(ag_status, runs), 0},
    {"tensors", K_UINT, F_REQ, offsetof(ag_status, tensors), 0},
    {"db", K_STR, F_REQ, offsetof(ag_status, db_path), AG_PROTO_MAX_TEXT},
    {"fmts", K_STR, F_REQ, offsetof(ag_status, formats), AG_PROTO_MAX_TEXT},
    /* protocol 2: absent from older daemons (then NULL and 0) */
    {"store", K_STR, 0, offsetof(ag_status, store), AG_PROTO_MAX_TEXT},
    {"discarded", K_UINT, 0, offsetof(ag_status, discarded), 0},
};

static const ag_field ident_fields[] = {
    {"run", K_NAME, F_REQ, offsetof(ag_run_ident, run), 0},
    {"launch", K_STR, F_REQ, offsetof(ag_run_ident, launch), AG_LAUNCH_ID_MAX},
};

static const ag_field r_delivery_fields[] = {
    {"cid", K_UINT, F_REQ, U(delivery.client_id), 0},
    {"messages", K_UINT, F_REQ, U(delivery.messages), 0},
    {"seq", K_UINT, F_REQ, U(delivery.seq), 0},
};

#define LIST(T, list_t, item_t, f, c)                                                              \
    {                                                                                              \
        T, f, N(f), sizeof(list_t), sizeof(item_t), offsetof(list_t, items), offsetof(list_t, n),  \
            c, N(c)                                                                                \
    }
#define MSG(T, f)                                                                                  \
    { T, f, N(f), 0, 0, 0, 0, NULL, 0 }
#define BARE(T)                                                                                    \
    { T, NULL, 0, 0, 0, 0, 0, NULL, 0 }

static const ag_spec specs[] = {
    MSG(AG_MSG_RUN_START, run_start_fields),
    MSG(AG_MSG_STATS, stats_fields),
    MSG(AG_MSG_SNAPSHOT, snapshot_fields),
    MSG(AG_MSG_RUN_END, run_end_fields),
    BARE(AG_MSG_Q_RUNS),
    MSG(AG_MSG_Q_TENSORS, q_run_fields),
    MSG(AG_MSG_Q_HISTORY, q_history_fields),
    MSG(AG_MSG_Q_SCALES, q_scales_fields),
    MSG(AG_MSG_Q_TOP, q_top_fields),
    BARE(AG_MSG_Q_STATUS),
    MSG(AG_MSG_Q_RUN, q_client_fields),
    MSG(AG_MSG_Q_DELIVERY, q_delivery_fields),
    LIST(AG_MSG_R_RUNS, ag_run_list, ag_run_info, runs_fields, runs_cols),
    LIST(AG_MSG_R_TENSORS, ag_tensor_list, ag_tensor_info, tensors_fields, tensors_cols),
    {AG_MSG_R_HISTORY, history_fields, N(history_fields), sizeof(ag_history),
     sizeof(ag_history_point), offsetof(ag_history, points), offsetof(ag_history, n), history_cols,
     N(history_cols)},
    LIST(AG_MSG_R_SCALES, ag_scale_list, ag_scale_info, scales_fields, scales_cols),
    LIST(AG_MSG_R_TOP, ag_top_list, ag_top_entry, top_fields, top_cols),
    {AG_MSG_R_STATUS, status_fields, N(status_fields), sizeof(ag_status), 0, 0, 0, NULL, 0},
    {AG_MSG_R_RUN, ident_fields, N(ident_fields), sizeof(ag_run_ident), 0, 0, 0, NULL, 0},
    MSG(AG_MSG_R_DELIVERY, r_delivery_fields),
    MSG(AG_MSG_R_ERROR, error_fields),
};

const ag_spec *ag_spec_for(int type) {
    for (size_t i = 0; i < N(specs); i++)
        if (specs[i].type == type) return &specs[i];
    return NULL;
}

const char *ag_proto_type_name(int type) {
    switch (type) {
    case AG_MSG_RUN_START: return "run_start";
    case AG_MSG_STATS: return "stats";
    case AG_MSG_SNAPSHOT: return "snapshot";
    case AG_MSG_RUN_END: return "run_end";
    case AG_MSG_Q_RUNS: return "q_runs";
    case AG_MSG_Q_TENSORS: return "q_tensors";
    case AG_MSG_Q_HISTORY: return "q_history";
    case AG_MSG_Q_SCALES: return "q_scales";
    case AG_MSG_Q_TOP: return "q_top";
    case AG_MSG_Q_STATUS: return "q_status";
    case AG_MSG_Q_RUN: return "q_run";
    case AG_MSG_Q_DELIVERY: return "q_delivery";
    case AG_MSG_R_RUNS: return "r_runs";
    case AG_MSG_R_TENSORS: return "r_tensors";
    case AG_MSG_R_HISTORY: return "r_history";
    case AG_MSG_R_SCALES: return "r_scales";
    case AG_MSG_R_TOP: return "r_top";
    case AG_MSG_R_STATUS: return "r_status";
    case AG_MSG_R_RUN: return "r_run";
    case AG_MSG_R_DELIVERY: return "r_delivery";
    case AG_MSG_R_ERROR: return "r_error";
    default: return "unknown";
    }
}

int ag_proto_is_stream(int type) { return type >= AG_MSG_RUN_START && type <= AG_MSG_RUN_END; }

size_t ag_proto_dtype_size(int dtype) {
    switch (dtype) {
    case AG_DTYPE_F32: return 4;
    case AG_DTYPE_BF16: return 2;
    case AG_DTYPE_F16: return 2;
    default: return 0;
    }
}
