/*
 * test_layout.c - present/json_layout.c lays out every query result from
 * its reply table in proto/spec.c: for each result, the document's columns
 * (a list) or record keys (status) are exactly ag_result_key()'s keys, in
 * order, after the few fields the document adds beside the result.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "present/json.h"

/* keys[0..n) against ag_result_key(result, 0..), which must end there. */
static void assert_keys(int result, const char *const *keys, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        const char *k = ag_result_key(result, i);
        cr_assert_not_null(k, "result %d: key %zu missing (document has \"%s\")", result, i,
                           keys[i]);
        cr_assert_str_eq(keys[i], k, "result %d, key %zu", result, i);
    }
    cr_assert_null(ag_result_key(result, n), "result %d: more keys than the document", result);
}

static void assert_cols(int result, const ag_doc *d, const char *list_key) {
    cr_assert_str_eq(d->list_key, list_key);
    assert_keys(result, d->cols, d->ncols);
}

Test(layout, every_list_result_has_the_columns_of_its_table) {
    ag_doc d;
    ag_run_info ri = {.name = "r", .host = "h", .pid = 1, .metadata = "{}"};
    ag_run_list rl = {1, &ri};
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_runs(&d, &rl), AG_OK);
    assert_cols(AG_RESULT_RUNS, &d, "runs");
    cr_assert_eq(d.nmeta, 0);
    cr_assert_eq(d.nrows, 1);
    ag_doc_free(&d);

    ag_tensor_info ti = {.name = "w", .role = AG_ROLE_GRADIENT, .last_amax = 2.5};
    ag_tensor_list tl = {1, &ti};
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_tensors(&d, "r", &tl), AG_OK);
    assert_cols(AG_RESULT_TENSORS, &d, "tensors");
    cr_assert_eq(d.cells[1].kind, AG_CELL_STR); /* role by name */
    cr_assert_str_eq(d.cells[1].v.s, "gradient");
    ag_doc_free(&d);

    ag_history_point pt = {.step = 1, .stall_rate = 2.0 / 3};
    ag_history h = {NULL, "w", NULL, 1, &pt};
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_history(&d, "r", "x", "E3M4", &h), AG_OK);
    assert_cols(AG_RESULT_HISTORY, &d, "points");
    cr_assert_eq(d.nmeta, 3);
    cr_assert_str_eq(d.meta[0].key, "run"); /* the request's, the result has none */
    cr_assert_str_eq(d.meta[0].value.v.s, "r");
    cr_assert_str_eq(d.meta[1].value.v.s, "w"); /* the result's wins */
    cr_assert_str_eq(d.meta[2].key, "format");
    cr_assert_str_eq(d.meta[2].value.v.s, "E3M4");
    cr_assert_eq(d.cells[3].kind, AG_CELL_RATE);
    ag_doc_free(&d);

    ag_scale_info si = {.tensor = "w", .step = 7, .scale = 0.5};
    ag_scale_list sl = {"E3M4", 1, &si};
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_scales(&d, "r", "E5M2", &sl), AG_OK);
    assert_cols(AG_RESULT_SCALES, &d, "scales");
    ag_doc_free(&d);

    ag_top_entry te = {.tensor = "w", .stalled = 5, .total = 10, .stall_rate = 0.5, .steps = 3};
    ag_top_list top = {"E7M0", 4, 9, 1, &te};
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_top(&d, "r", "E5M2", &top), AG_OK);
    assert_cols(AG_RESULT_TOP, &d, "tensors");
    cr_assert_eq(d.nmeta, 4);
    cr_assert_str_eq(d.meta[3].key, "to_step");
    cr_assert_eq(d.cells[1].kind, AG_CELL_RATE);
    cr_assert_eq(d.cells[1].v.d, 0.5);
    cr_assert_eq(d.cells[2].v.u, 5);
    ag_doc_free(&d);
}

Test(layout, status_has_source_and_address_then_the_fields_of_its_table) {
    ag_status st = {.version = "0.1.0", .uptime_s = 12.5, .db_path = "db", .formats = "E5M2"};
    ag_doc d;
    const char *keys[AG_DOC_META_MAX];
    size_t i;
    ag_doc_init(&d, NULL);
    cr_assert_eq(ag_doc_status(&d, &st, "daemon", "ipc://x"), AG_OK);
    cr_assert_null(d.list_key);
    cr_assert_geq(d.nmeta, 2);
    cr_assert_str_eq(d.meta[0].key, "source");
    cr_assert_str_eq(d.meta[1].key, "address");
    for (i = 2; i < d.nmeta; i++) keys[i - 2] = d.meta[i].key;
    assert_keys(AG_RESULT_STATUS, keys, d.nmeta - 2);
    for (i = 0; i < d.nmeta; i++)
        if (strcmp(d.meta[i].key, "store") == 0)
            cr_assert_eq(d.meta[i].value.kind, AG_CELL_NULL); /* NULL text shown as null */
    ag_doc_free(&d);
}

Test(layout, unknown_results_have_no_keys) {
    cr_assert_null(ag_result_key(-1, 0));
    cr_assert_null(ag_result_key(1000, 0)); /* not STATUS + 1: a new result may take it */
    cr_assert_str_eq(ag_result_key(AG_RESULT_STATUS, 1), "uptime_s");
}
