/*
 * test_commands.c - client/cli/commands.c, report.c and source.c in --db
 * mode: a database written through the store with known numbers, read back
 * by the CLI's commands, their JSON/CSV parsed and compared number by number.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cli/commands.h"
#include "json_mini.h"
#include "schema/store.h"

static char dir[64];
static char db_path[128];

/* Run "r1": weight tensor fc1.weight with E5M2 results at steps 1..4
 * (stalled = step, total = 10, scale = step / 8) and E3M4 at steps 1..4
 * (stalled 0; step 4 sent as counts by a trainer, flips unknown); activation
 * tensor fc1.out with statistics only. */
static void fill(void) {
    ag_store *st = NULL;
    uint64_t step;
    ag_store_run_row run = {.id = 1,
                            .name = "r1",
                            .host = "h",
                            .pid = 7,
                            .client_id = 9,
                            .started_ms = 1000,
                            .metadata = "{\"note\":\"a,\\\"b\"}"};
    ag_store_run_delta rd = {.run_id = 1, .messages = 8, .last_step = 4};
    ag_store_tensor_delta w = {.tensor_id = 1,
                               .role = AG_ROLE_WEIGHT,
                               .numel = 10,
                               .first_step = 1,
                               .last_step = 4,
                               .snapshots = 4,
                               .last_amax = 0.5};
    ag_store_tensor_delta act = {.tensor_id = 2,
                                 .role = AG_ROLE_ACTIVATION,
                                 .numel = 64,
                                 .first_step = 1,
                                 .last_step = 4,
                                 .last_amax = 3.0};

    cr_assert_eq(ag_store_open(&st, db_path, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 1, 1, "fc1.weight", AG_ROLE_WEIGHT), AG_OK);
    cr_assert_eq(ag_store_put_tensor(st, 2, 1, "fc1.out", AG_ROLE_ACTIVATION), AG_OK);
    for (step = 1; step <= 4; step++) {
        ag_store_result_row r = {.tensor_id = 1,
                                 .format_id = 1,
                                 .step = step,
                                 .counts = {.stalled = step, .total = 10},
                                 .flips = 1,
                                 .amax = 0.5,
                                 .scale = (double)step / 8,
                                 .has_qerr = 1,
                                 .mse = 1e-3 * (double)step,
                                 .sqnr_db = 20.0 + (double)step};
        ag_store_stats_row s = {
            .tensor_id = 2, .role = AG_ROLE_ACTIVATION, .step = step, .amax = 3.0, .numel = 64};
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
        r.format_id = 2;
        r.counts.stalled = 0;
        r.flips_unknown = r.source = step == 4;
        r.has_qerr = 0; /* E3M4: no quantization error known */
        cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
        cr_assert_eq(ag_store_put_stats(st, &s), AG_OK);
    }
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    cr_assert_eq(ag_store_apply_tensor_delta(st, &w), AG_OK);
    cr_assert_eq(ag_store_apply_tensor_delta(st, &act), AG_OK);
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
    ag_store_close(st);
}

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/ag-clicmd-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/t.db", dir);
    fill();
}

static void teardown(void) {
    char path[160];
    static const char *const suffix[] = {"", "-wal", "-shm"};
    size_t i;
    for (i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", db_path, suffix[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Parses argv as the CLI would (with --db added) and runs the command;
 * returns its ag_err, *out gets stdout, err the error line. */
static int cli(char **out, char *err, size_t cap, int argc, char **argv) {
    char *full[16];
    ag_cli_args a;
    ag_cli_source src;
    size_t len = 0;
    FILE *f;
    int i, rc;

    cr_assert_lt(argc + 3, 16);
    full[0] = "altgrad";
    full[1] = "--db";
    full[2] = db_path;
    for (i = 0; i < argc; i++) full[3 + i] = argv[i];
    cr_assert_eq(ag_cli_parse(argc + 3, full, &a, err, cap), AG_OK, "%s", err);
    rc = ag_cli_source_open(&src, &a, err, cap);
    cr_assert_eq(rc, AG_OK, "%s", err);
    f = open_memstream(out, &len);
    cr_assert_not_null(f);
    rc = ag_cli_execute(&src, &a, f, err, cap);
    fclose(f);
    ag_cli_source_close(&src);
    return rc;
}

#define CLI(out, err, ...)                                                                         \
    cli((out), (err), sizeof(err), (int)(sizeof((char *[]){__VA_ARGS__}) / sizeof(char *)),        \
        (char *[]){__VA_ARGS__})

TestSuite(commands, .init = setup, .fini = teardown);

Test(commands, history_json_carries_every_point_with_its_numbers) {
    char *out, err[512];
    jm_value *doc;
    const jm_value *pts;
    size_t i;
    cr_assert_eq(CLI(&out, err, "history", "r1", "fc1.weight", "--json"), AG_OK, "%s", err);
    doc = jm_parse(out);
    cr_assert_not_null(doc, "invalid JSON: %s", out);
    cr_assert_str_eq(jm_get(doc, "format")->string, "E5M2");
    pts = jm_get(doc, "points");
    cr_assert_eq(pts->n, 4);
    for (i = 0; i < 4; i++) {
        const jm_value *p = &pts->items[i];
        cr_assert_eq(jm_get(p, "step")->number, (double)(i + 1));
        cr_assert_eq(jm_get(p, "stalled")->number, (double)(i + 1));
        cr_assert_eq(jm_get(p, "total")->number, 10);
        cr_assert_eq(jm_get(p, "stall_rate")->number, (double)(i + 1) / 10);
        cr_assert_eq(jm_get(p, "flips")->number, 1);
        cr_assert_eq(jm_get(p, "amax")->number, 0.5);
        cr_assert_eq(jm_get(p, "scale")->number, (double)(i + 1) / 8);
        cr_assert_not_null(jm_get(p, "overflow"));
        cr_assert_not_null(jm_get(p, "underflow"));
    }
    jm_free(doc);
    free(out);
}

Test(commands, history_every_sums_buckets_and_csv_has_one_line_per_bucket) {
    char *out, err[512];
    cr_assert_eq(CLI(&out, err, "history", "r1", "fc1.weight", "--every", "2", "--csv"), AG_OK,
                 "%s", err);
    cr_assert_str_eq(out, "step,stalled,total,stall_rate,flips,overflow,underflow,nonfinite,"
                          "amax,scale,computed,ranks,complete,mse,sqnr_db\n"
                          "2,3,20,0.15,2,0,0,0,0.5,0.25,daemon,1,1,,\n"
                          "4,7,20,0.35,2,0,0,0,0.5,0.5,daemon,1,1,,\n");
    free(out);
}

/* Unknown flips are an empty cell in CSV and tables and null in JSON, never
 * 0; computed says where each point's counts came from. */
Test(commands, unknown_flips_show_as_empty_or_null_and_computed_names_the_device) {
    char *out, err[512];
    cr_assert_eq(
        CLI(&out, err, "history", "r1", "fc1.weight", "--format", "E3M4", "--from", "3", "--csv"),
        AG_OK, "%s", err);
    cr_assert_str_eq(out, "step,stalled,total,stall_rate,flips,overflow,underflow,nonfinite,"
                          "amax,scale,computed,ranks,complete,mse,sqnr_db\n"
                          "3,0,10,0,1,0,0,0,0.5,0.375,daemon,1,1,,\n"
                          "4,0,10,0,,0,0,0,0.5,0.5,device,1,1,,\n");
    free(out);
    cr_assert_eq(CLI(&out, err, "history", "r1", "fc1.weight", "--format", "E3M4", "--json"), AG_OK,
                 "%s", err);
    jm_value *doc = jm_parse(out);
    cr_assert_not_null(doc, "%s", out);
    const jm_value *pts = jm_get(doc, "points");
    cr_assert_eq(pts->n, 4);
    cr_expect_eq(jm_get(&pts->items[2], "flips")->number, 1);
    cr_expect_eq(jm_get(&pts->items[3], "flips")->type, JM_NULL);
    cr_expect_str_eq(jm_get(&pts->items[3], "computed")->string, "device");
    jm_free(doc);
    free(out);
    cr_assert_eq(CLI(&out, err, "history", "r1", "fc1.weight", "--format", "E3M4", "--from", "4"),
                 AG_OK, "%s", err);
    /* column header and one row: the row has three words less (the empty cells) */
    char *head = strstr(out, "step "), *row = head ? strchr(head, '\n') : NULL;
    cr_assert_not_null(row, "%s", out);
    size_t words[2] = {0, 0};
    for (int part = 0; part < 2; part++) {
        const char *p = part ? row + 1 : head, *end = part ? strchr(row + 1, '\n') : row;
        for (int in = 0; p < end; p++) {
            if (*p != ' ' && !in) words[part]++;
            in = *p != ' ';
        }
    }
    cr_expect_eq(words[0], 15, "%s", out);
    /* flips, mse and sqnr_db are empty cells (counts from a trainer), not 0 */
    cr_expect_eq(words[1], 12, "flips is an empty cell, not 0: %s", out);
    cr_expect_not_null(strstr(row, "device"), "%s", out);
    free(out);
}

Test(commands, runs_csv_quotes_the_metadata) {
    char *out, err[512];
    cr_assert_eq(CLI(&out, err, "runs", "--csv"), AG_OK, "%s", err);
    cr_assert_str_eq(out, "name,host,pid,client_id,started_ms,ended_ms,last_step,messages,"
                          "dropped,metadata,world_size,ranks_seen,rank_drops,incomplete\n"
                          "r1,h,7,9,1000,0,4,8,0,\"{\"\"note\"\":\"\"a,\\\"\"b\"\"}\",1,0,{},0\n");
    free(out);
}

Test(commands, tensors_table_names_roles) {
    char *out, err[512];
    cr_assert_eq(CLI(&out, err, "tensors", "r1"), AG_OK, "%s", err);
    cr_assert_not_null(strstr(out, "fc1.out     activation"), "%s", out);
    cr_assert_not_null(strstr(out, "fc1.weight  weight"), "%s", out);
    free(out);
}

Test(commands, top_ranks_by_stall_rate_in_the_format_asked) {
    char *out, err[512];
    jm_value *doc;
    const jm_value *items;
    cr_assert_eq(CLI(&out, err, "top", "r1", "--json"), AG_OK, "%s", err);
    doc = jm_parse(out);
    cr_assert_not_null(doc, "invalid JSON: %s", out);
    items = jm_get(doc, "tensors");
    cr_assert_eq(items->n, 1);
    cr_assert_str_eq(jm_get(&items->items[0], "tensor")->string, "fc1.weight");
    cr_assert_eq(jm_get(&items->items[0], "stalled")->number, 10);
    cr_assert_eq(jm_get(&items->items[0], "total")->number, 40);
    cr_assert_eq(jm_get(&items->items[0], "stall_rate")->number, 0.25);
    jm_free(doc);
    free(out);
}

Test(commands, report_covers_weight_tensors_in_every_known_format) {
    char *out, err[512];
    jm_value *doc;
    const jm_value *rows;
    size_t i;
    cr_assert_eq(CLI(&out, err, "report", "r1", "--json"), AG_OK, "%s", err);
    doc = jm_parse(out);
    cr_assert_not_null(doc, "invalid JSON: %s", out);
    rows = jm_get(doc, "rows");
    cr_assert_eq(rows->n, 2, "fc1.weight in E5M2 and E3M4, no activation: %s", out);
    for (i = 0; i < rows->n; i++) {
        const jm_value *r = &rows->items[i];
        const char *fmt = jm_get(r, "format")->string;
        cr_assert_str_eq(jm_get(r, "tensor")->string, "fc1.weight");
        cr_assert_eq(jm_get(r, "steps")->number, 4);
        const jm_value *sq = jm_get(r, "last_sqnr_db");
        cr_assert_not_null(sq, "the column is there: %s", out);
        if (strcmp(fmt, "E5M2") == 0) {
            cr_assert_eq(sq->number, 24.0, "the last step's: %s", out);
            cr_assert_eq(jm_get(r, "mean_rate")->number, 0.25);
            cr_assert_eq(jm_get(r, "last_rate")->number, 0.4);
            cr_assert_eq(jm_get(r, "max_rate")->number, 0.4);
            /* rates .1 .2 .3 .4 -> levels 1 1 2 3 */
            cr_assert_str_eq(jm_get(r, "sparkline")->string,
                             "\xe2\x96\x82\xe2\x96\x82\xe2\x96\x83\xe2\x96\x84");
        } else {
            cr_assert_str_eq(fmt, "E3M4");
            cr_assert_eq(jm_get(r, "mean_rate")->number, 0);
            cr_assert_eq(sq->type, JM_NULL, "unknown: null, not 0: %s", out);
        }
    }
    jm_free(doc);
    free(out);
}

Test(commands, unknown_run_is_not_found_with_one_line) {
    char *out, err[512];
    cr_assert_eq(CLI(&out, err, "tensors", "nope"), AG_ENOTFOUND);
    cr_assert_null(strchr(err, '\n'));
    cr_assert_not_null(strstr(err, "nope"), "%s", err);
    cr_assert_str_eq(out, "", "nothing on stdout on error");
    free(out);
}

Test(commands, unknown_format_is_not_found) {
    char *out, err[512];
    cr_assert_eq(CLI(&out, err, "history", "r1", "fc1.weight", "--format", "E7M0"), AG_ENOTFOUND);
    cr_assert_not_null(strstr(err, "E7M0"), "%s", err);
    free(out);
}

Test(commands, status_reads_counts_from_the_file) {
    char *out, err[512];
    jm_value *doc;
    cr_assert_eq(CLI(&out, err, "status", "--json"), AG_OK, "%s", err);
    doc = jm_parse(out);
    cr_assert_not_null(doc, "invalid JSON: %s", out);
    cr_assert_str_eq(jm_get(doc, "source")->string, "database");
    cr_assert_eq(jm_get(doc, "runs")->number, 1);
    cr_assert_eq(jm_get(doc, "tensors")->number, 2);
    cr_assert_eq(jm_get(doc, "uptime_s")->number, 0);
    /* no daemon recorded its settings in this file: no version to report */
    cr_assert_eq(jm_get(doc, "version")->type, JM_NULL, "%s", out);
    jm_free(doc);
    free(out);
    cr_assert_eq(CLI(&out, err, "status"), AG_OK, "%s", err);
    cr_assert_not_null(strstr(out, "\nversion:       -\n"), "%s", out);
    free(out);
}

Test(commands, missing_database_file_fails_to_open_with_one_line) {
    char path[160], err[512];
    char *argv[] = {"altgrad", "--db", path, "runs", NULL};
    ag_cli_args a;
    ag_cli_source src;
    snprintf(path, sizeof path, "%s/none.db", dir);
    cr_assert_eq(ag_cli_parse(4, argv, &a, err, sizeof err), AG_OK);
    cr_assert_neq(ag_cli_source_open(&src, &a, err, sizeof err), AG_OK);
    cr_assert_null(strchr(err, '\n'));
    cr_assert_not_null(strstr(err, "none.db"), "%s", err);
    cr_assert_null(src.store);
    cr_assert_eq(access(path, F_OK), -1, "a read-only open must not create the file");
}
