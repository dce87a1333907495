/*
 * test_report.c - schema/store_report.c: the report query answers, row for
 * row and bit for bit, what `altgrad report` built before it existed from a
 * whole-run top, a top over the last step and one downsampled history per
 * tensor and format (kept here as the reference), on a file with dense and
 * sparse series, gaps, a step stored again, a format some tensors lack and
 * a tensor without snapshots; the last row's SQNR, known or not; and its
 * errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "schema/store.h"
#include "tests/tmpdir.h"

static char dir[64];
static char db_path[128];
static ag_store *st;

/* Run "r": a.weight dense 0..2999 in both formats; b.weight every 7th step
 * from 5 in both; c.weight in E5M2 only, with a gap and a step stored
 * again; d.act statistics only (no snapshots). The run's last step is 3010,
 * past every tensor's. Formats E5M2 (1), E3M4 (2); the daemon's recorded
 * formats name one the file does not know. Rows in E5M2 carry a quantization
 * error (but b.weight's at even steps: unknown), rows in E3M4 none. */
static void setup(void) {
    strcpy(dir, "/tmp/ag_report_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/t.db", dir);
    st = NULL;
    cr_assert_eq(ag_store_open(&st, db_path, AG_STORE_CREATE), AG_OK);
    cr_assert_eq(ag_store_begin(st), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 1, ag_format_get("E5M2")), AG_OK);
    cr_assert_eq(ag_store_put_format(st, 2, ag_format_get("E3M4")), AG_OK);
    cr_assert_eq(ag_store_put_daemon_setting(st, "formats", "E3M4,E7M0,E5M2"), AG_OK);
    ag_store_run_row run = {.id = 1, .name = "r", .host = "h"};
    cr_assert_eq(ag_store_put_run(st, &run), AG_OK);
    static const char *const names[] = {"a.weight", "b.weight", "c.weight", "d.act"};
    for (int t = 0; t < 4; t++)
        cr_assert_eq(ag_store_put_tensor(st, t + 1, 1, names[t],
                                         t == 3 ? AG_ROLE_ACTIVATION : AG_ROLE_WEIGHT),
                     AG_OK);
    for (uint64_t step = 0; step < 3000; step++)
        for (int t = 0; t < 3; t++)
            for (int f = 0; f < 2; f++) {
                if (t == 1 && (step < 5 || (step - 5) % 7)) continue;
                if (t == 2 && (f == 1 || (step >= 1200 && step < 1750))) continue;
                uint64_t h = step * 2654435761u + (uint64_t)t * 97 + (uint64_t)f * 13;
                ag_store_result_row r = {.tensor_id = t + 1,
                                         .format_id = f + 1,
                                         .step = step,
                                         .counts = {.stalled = h % 37, .total = 40 + h % 3},
                                         .flips = h % 5,
                                         .amax = 1.0,
                                         .scale = 2.0,
                                         .has_qerr = f == 0 && !(t == 1 && step % 2 == 0),
                                         .mse = 1e-4 * (double)(h % 11),
                                         .sqnr_db = 20.0 + (double)(h % 101) / 4};
                cr_assert_eq(ag_store_put_result(st, &r), AG_OK, "%s", ag_store_errmsg(st));
            }
    ag_store_result_row again = {.tensor_id = 3,
                                 .format_id = 1,
                                 .step = 2500,
                                 .counts = {.stalled = 39, .total = 40},
                                 .amax = 1.0,
                                 .scale = 2.0};
    cr_assert_eq(ag_store_put_result(st, &again), AG_OK);
    ag_store_run_delta rd = {.run_id = 1, .last_step = 3010};
    cr_assert_eq(ag_store_apply_run_delta(st, &rd), AG_OK);
    for (int t = 0; t < 4; t++) {
        ag_store_tensor_delta td = {.tensor_id = t + 1,
                                    .role = t == 3 ? AG_ROLE_ACTIVATION : AG_ROLE_WEIGHT,
                                    .numel = 16,
                                    .last_step = 2999,
                                    .snapshots = t == 3 ? 0 : 3000};
        cr_assert_eq(ag_store_apply_tensor_delta(st, &td), AG_OK);
    }
    cr_assert_eq(ag_store_commit(st), AG_OK, "%s", ag_store_errmsg(st));
}

static void teardown(void) {
    ag_store_close(st);
    ag_tmpdir_remove(dir);
}

TestSuite(report, .init = setup, .fini = teardown);

/* ---- the reference: what altgrad report did from top and history ---- */

/* K rows a point: n / width rounded up to a multiple of a rollup tier's
 * width (100, 1000, 10000; proto/PROTOCOL.md, r_report) */
static uint64_t every_for(uint64_t n, size_t width) {
    if (n <= width) return 1;
    uint64_t k = (n + width - 1) / width;
    for (uint64_t tier = 10000; tier >= 100; tier /= 10)
        if (k >= tier) return (k + tier - 1) / tier * tier;
    return k;
}

static const ag_top_entry *entry(const ag_top_list *l, const char *tensor) {
    for (size_t i = 0; l && i < l->n; i++)
        if (strcmp(l->items[i].tensor, tensor) == 0) return &l->items[i];
    return NULL;
}

typedef struct ref_row {
    char tensor[32], format[16], spark[3 * AG_REPORT_WIDTH_MAX + 1];
    uint64_t steps;
    double last_rate, mean_rate, max_rate, last_sqnr_db;
} ref_row;

/* The reference rows of the report of "r" (formats NULL: the recorded
 * ones, unknown ones skipped); returns how many. */
static size_t reference(const char *formats, size_t width, ref_row *out, size_t cap) {
    char list[256];
    const char *names[16];
    size_t nfmt = 0, n = 0;
    ag_status *status = NULL;
    if (!formats) {
        cr_assert_eq(ag_store_status(st, &status), AG_OK);
        formats = status->formats;
    }
    snprintf(list, sizeof list, "%s", formats);
    ag_free(status);
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        names[nfmt++] = tok;
    ag_top_list *whole[16] = {0}, *final[16] = {0};
    for (size_t f = 0; f < nfmt; f++) {
        int rc = ag_store_top(st, "r", names[f], 0, AG_TOP_LIMIT_MAX, &whole[f]);
        if (rc == AG_ENOTFOUND) continue;
        cr_assert_eq(rc, AG_OK);
        cr_assert_eq(ag_store_top(st, "r", names[f], 1, AG_TOP_LIMIT_MAX, &final[f]), AG_OK);
    }
    ag_tensor_list *tl = NULL;
    cr_assert_eq(ag_store_tensors(st, "r", &tl), AG_OK);
    for (size_t t = 0; t < tl->n; t++) {
        if (tl->items[t].snapshots == 0) continue;
        for (size_t f = 0; f < nfmt; f++) {
            const ag_top_entry *all = entry(whole[f], tl->items[t].name);
            if (!all) continue;
            ag_history_query q = {.run = "r",
                                  .tensor = tl->items[t].name,
                                  .format = names[f],
                                  .every = every_for(all->steps, width)};
            ag_history *h = NULL;
            cr_assert_eq(ag_store_history(st, &q, &h), AG_OK);
            if (h->n == 0) {
                ag_free(h);
                continue;
            }
            cr_assert_lt(n, cap);
            ref_row *r = &out[n++];
            const ag_top_entry *last = entry(final[f], tl->items[t].name);
            /* the SQNR of the series' last row: a downsampled point has
             * none, so that row alone */
            r->last_sqnr_db = h->points[h->n - 1].sqnr_db;
            if (q.every > 1) {
                ag_history *one = NULL;
                ag_history_query q1 = q;
                q1.every = 1;
                q1.from_step = q1.to_step = h->points[h->n - 1].step;
                cr_assert_eq(ag_store_history(st, &q1, &one), AG_OK);
                r->last_sqnr_db = one->n ? one->points[one->n - 1].sqnr_db : NAN;
                ag_free(one);
            }
            r->last_rate = h->points[h->n - 1].stall_rate;
            if (last) {
                r->last_rate = last->stall_rate;
            } else if (q.every > 1) {
                ag_history *one = NULL;
                q.every = 1;
                q.from_step = q.to_step = h->points[h->n - 1].step;
                cr_assert_eq(ag_store_history(st, &q, &one), AG_OK);
                if (one->n) r->last_rate = one->points[one->n - 1].stall_rate;
                ag_free(one);
            }
            double stalled = 0, total = 0;
            r->max_rate = 0;
            for (size_t i = 0; i < h->n; i++) {
                stalled += (double)h->points[i].stalled;
                total += (double)h->points[i].total;
                if (h->points[i].stall_rate > r->max_rate) r->max_rate = h->points[i].stall_rate;
            }
            r->mean_rate = total > 0 ? stalled / total : 0.0;
            r->steps = all->steps;
            snprintf(r->tensor, sizeof r->tensor, "%s", tl->items[t].name);
            snprintf(r->format, sizeof r->format, "%s", names[f]);
            ag_store_sparkline(h->points, h->n, width, r->spark, sizeof r->spark);
            ag_free(h);
        }
    }
    ag_free(tl);
    for (size_t f = 0; f < nfmt; f++) {
        ag_free(whole[f]);
        ag_free(final[f]);
    }
    return n;
}

static void expect_report(const char *formats, size_t width) {
    static ref_row want[64];
    size_t n = reference(formats, width, want, 64);
    ag_report *got = NULL;
    cr_assert_eq(ag_store_report(st, "r", formats, width, &got), AG_OK, "%s", ag_store_errmsg(st));
    cr_assert_eq(got->n, n, "formats %s width %zu: %zu rows, want %zu", formats, width, got->n, n);
    for (size_t i = 0; i < n; i++) {
        const ag_report_row *g = &got->items[i];
        const ref_row *w = &want[i];
        cr_assert_str_eq(g->tensor, w->tensor);
        cr_assert_str_eq(g->format, w->format);
        cr_assert_eq(g->steps, w->steps, "%s %s", w->tensor, w->format);
        cr_assert(g->last_rate == w->last_rate, "%s %s width %zu: last %.17g want %.17g", w->tensor,
                  w->format, width, g->last_rate, w->last_rate);
        cr_assert(g->mean_rate == w->mean_rate, "%s %s: mean", w->tensor, w->format);
        cr_assert(g->max_rate == w->max_rate, "%s %s: max", w->tensor, w->format);
        cr_assert(g->last_sqnr_db == w->last_sqnr_db ||
                      (isnan(g->last_sqnr_db) && isnan(w->last_sqnr_db)),
                  "%s %s width %zu: last_sqnr_db %.17g want %.17g", w->tensor, w->format, width,
                  g->last_sqnr_db, w->last_sqnr_db);
        cr_assert_str_eq(g->sparkline, w->spark, "%s %s width %zu", w->tensor, w->format, width);
    }
    ag_free(got);
}

Test(report, rows_equal_what_top_and_history_give_for_every_width) {
    static const size_t widths[] = {1, 2, 3, 7, 40, 99, 101, 430, 1000};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        expect_report(NULL, widths[i]);
        expect_report("E5M2,E3M4", widths[i]);
    }
}

Test(report, default_formats_are_the_recorded_ones_and_unknown_ones_are_left_out) {
    ag_report *got = NULL;
    cr_assert_eq(ag_store_report(st, "r", NULL, 0, &got), AG_OK);
    /* a and b in E3M4 and E5M2 (recorded order), c in E5M2 only, d none */
    cr_assert_eq(got->n, 5);
    cr_assert_str_eq(got->items[0].tensor, "a.weight");
    cr_assert_str_eq(got->items[0].format, "E3M4");
    cr_assert_str_eq(got->items[1].format, "E5M2");
    cr_assert_str_eq(got->items[4].tensor, "c.weight");
    cr_assert_str_eq(got->items[4].format, "E5M2");
    cr_assert_eq(got->items[0].steps, 3000);
    /* the last row's SQNR: a.weight's in E5M2 (step 2999), none in E3M4,
     * none for b.weight's last row (step 2994, even) */
    uint64_t h = (uint64_t)2999 * 2654435761u;
    cr_assert_eq(got->items[1].last_sqnr_db, 20.0 + (double)(h % 101) / 4);
    cr_assert(isnan(got->items[0].last_sqnr_db), "E3M4: unknown");
    cr_assert_str_eq(got->items[3].tensor, "b.weight");
    cr_assert(isnan(got->items[3].last_sqnr_db), "b.weight's last row: unknown");
    /* width 0 is 40 columns */
    ag_report *forty = NULL;
    cr_assert_eq(ag_store_report(st, "r", NULL, AG_REPORT_WIDTH_DEFAULT, &forty), AG_OK);
    for (size_t i = 0; i < got->n; i++)
        cr_assert_str_eq(got->items[i].sparkline, forty->items[i].sparkline);
    ag_free(forty);
    ag_free(got);
    expect_report(NULL, AG_REPORT_WIDTH_DEFAULT);
}

Test(report, unknown_names_and_bad_widths_are_errors_that_say_so) {
    ag_report *got = NULL;
    cr_assert_eq(ag_store_report(st, "nope", NULL, 0, &got), AG_ENOTFOUND);
    cr_assert_not_null(strstr(ag_store_errmsg(st), "nope"));
    cr_assert_eq(ag_store_report(st, "r", "E5M2,E7M0", 0, &got), AG_ENOTFOUND);
    cr_assert_not_null(strstr(ag_store_errmsg(st), "E7M0"));
    cr_assert_eq(ag_store_report(st, "r", NULL, AG_REPORT_WIDTH_MAX + 1, &got), AG_ERANGE);
    cr_assert_null(got);
    /* empty names and spaces before a name are skipped, as the CLI did */
    cr_assert_eq(ag_store_report(st, "r", " E5M2,,", 3, &got), AG_OK);
    cr_assert_eq(got->n, 3);
    ag_free(got);
}
