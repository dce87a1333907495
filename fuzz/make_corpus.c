/*
 * make_corpus.c - writes one valid encoded message of every type into the
 * directory given as argv[1]: the seed corpus of fuzz_decode.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto.h"

static int save(const char *dir, const char *name, const ag_msg *m) {
    ag_buf b;
    ag_buf_init(&b);
    if (ag_proto_encode(&b, m) != AG_OK) {
        fprintf(stderr, "make_corpus: cannot encode %s\n", name);
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.data, 1, b.len, f) != b.len) {
        perror(path);
        if (f) fclose(f);
        ag_buf_free(&b);
        return 1;
    }
    fclose(f);
    ag_buf_free(&b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    ag_stream_hdr h = {"run", 1, 2, 3};
    int bad = 0;
    ag_msg m = {.type = AG_MSG_RUN_START, .hdr = h};
    m.u.run_start = (ag_msg_run_start){.host = "host",
                                       .pid = 1,
                                       .time_ms = 2,
                                       .metadata = "{\"a\":[1,{\"b\":null}]}",
                                       .launch = "job-1",
                                       .resume = 1};
    bad |= save(dir, "run_start", &m);
    ag_stat_record recs[2] = {{1, "w", 0, 1.5, 10, 1}, {2, "a", 2, 0, 0, 0}};
    m = (ag_msg){.type = AG_MSG_STATS, .hdr = h};
    m.u.stats = (ag_msg_stats){2, recs};
    bad |= save(dir, "stats", &m);
    float w[3] = {1, 2, 3}, g[3] = {4, 5, 6};
    const char *fmts[2] = {"E5M2", "E3M4"};
    m = (ag_msg){.type = AG_MSG_SNAPSHOT, .hdr = h};
    m.u.snapshot = (ag_msg_snapshot){.step = 1,
                                     .tensor = "w",
                                     .lr = 0.5,
                                     .n = 3,
                                     .numel = 9,
                                     .has_scale = 1,
                                     .scale = 2,
                                     .nformats = 2,
                                     .formats = fmts,
                                     .w = w,
                                     .x = g};
    bad |= save(dir, "snapshot", &m);
    /* the shared-memory key: an offer beside the data, then a record */
    m.u.snapshot.shm = (ag_msg_shm){.token = 7, .fd = 3, .size = 1u << 20, .mark = 64};
    bad |= save(dir, "snapshot_shm_offer", &m);
    m.u.snapshot.shm.has_at = 1;
    m.u.snapshot.shm.at = (1u << 20) - 4096 - 64;
    bad |= save(dir, "snapshot_shm_record", &m);
    const char *tensors[2] = {"fc1.weight", "fc2.weight"};
    const uint64_t numel[2] = {100, 7}, nonfinite[2] = {0, 1};
    const double amax[2] = {0.5, 3};
    const float scales[4] = {0.25f, 1, 0.5f, 2};
    const uint64_t counts[4 * AG_COUNTS_PER_RESULT] = {3, 10, 0, 1, 0, 0, 0, 0, 0, 0,
                                                       1, 6,  1, 0, 1, 6, 6, 0, 0, 1};
    const int64_t flips[4] = {2, -1, 0, 7};
    m = (ag_msg){.type = AG_MSG_COUNTS, .hdr = h};
    m.u.counts = (ag_msg_counts){.step = 4,
                                 .form = AG_FORM_SGD,
                                 .nformats = 2,
                                 .formats = fmts,
                                 .n = 2,
                                 .tensors = tensors,
                                 .numel = numel,
                                 .amax = amax,
                                 .nonfinite = nonfinite,
                                 .scales = scales,
                                 .counts = counts,
                                 .flips = flips};
    bad |= save(dir, "counts", &m);
    /* results of 9 values: the quantization error, nil where unknown */
    const double mse[4] = {0.5, NAN, 0, 1e-9}, sqnr[4] = {-3.5, NAN, NAN, 42};
    m.u.counts.mse = mse;
    m.u.counts.sqnr_db = sqnr;
    bad |= save(dir, "counts_qerr", &m);
    m = (ag_msg){.type = AG_MSG_RUN_END, .hdr = h};
    bad |= save(dir, "run_end", &m);
    m = (ag_msg){.type = AG_MSG_Q_HISTORY};
    m.u.query = (ag_msg_query){"r", "t", "E5M2", 1, 2, 3, 4, 5, 6, 11, "E5M2,MXFP4", 16};
    bad |= save(dir, "q_history", &m);
    m.type = AG_MSG_Q_TOP;
    bad |= save(dir, "q_top", &m);
    m.type = AG_MSG_Q_RUN;
    bad |= save(dir, "q_run", &m);
    ag_run_ident ident = {"r.2", "job-1", AG_CAPS};
    m = (ag_msg){.type = AG_MSG_R_RUN};
    m.u.ident = &ident;
    bad |= save(dir, "r_run", &m);
    ag_run_info ri = {"r", "h", 1, 2, 3, 4, 5, 6, 7, "{}", 2, 2, "{\"1\":3}", 4};
    ag_run_list rl = {1, &ri};
    m = (ag_msg){.type = AG_MSG_R_RUNS};
    m.u.runs = &rl;
    bad |= save(dir, "r_runs", &m);
    ag_history_point pt = {1, 2, 3, 0.5, 4, 5, 6, 7, 8, 9, "daemon", 1, 1, 0.25, 30.5};
    ag_history hist = {"r", "t", "E5M2", 1, &pt};
    m = (ag_msg){.type = AG_MSG_R_HISTORY};
    m.u.history = &hist;
    bad |= save(dir, "r_history", &m);
    ag_status st = {"0.1.0",      1,    2, 3,  4,     5,         6,   7,     8,      9, "db",
                    "E5M2,NVFP4", "ok", 0, 16, "max", "current", 0.0, 1e-10, AG_CAPS};
    m = (ag_msg){.type = AG_MSG_R_STATUS};
    m.u.status = &st;
    bad |= save(dir, "r_status", &m);
    m = (ag_msg){.type = AG_MSG_Q_DELIVERY};
    m.u.delivery = (ag_msg_delivery){0xfedcba9876543210ULL, 0, 0};
    bad |= save(dir, "q_delivery", &m);
    m = (ag_msg){.type = AG_MSG_R_DELIVERY};
    m.u.delivery = (ag_msg_delivery){0xfedcba9876543210ULL, 41, 42};
    bad |= save(dir, "r_delivery", &m);
    m = (ag_msg){.type = AG_MSG_R_ERROR};
    m.u.error = (ag_msg_error){AG_ENOTFOUND, "no such run"};
    bad |= save(dir, "r_error", &m);
    return bad;
}
