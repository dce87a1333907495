/*
 * test_report.c - the stall-rate sparkline that `altgrad report` and `make
 * demo` print (schema/store_report.c builds it for the report query).
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <string.h>

#include "client/cli/output.h"
#include "schema/store.h"

static ag_history_point point(uint64_t step, uint64_t stalled, uint64_t total) {
    ag_history_point p;
    memset(&p, 0, sizeof p);
    p.step = step;
    p.stalled = stalled;
    p.total = total;
    p.stall_rate = total ? (double)stalled / (double)total : 0.0;
    return p;
}

#define LOW "\xe2\x96\x81"  /* U+2581 */
#define MID "\xe2\x96\x85"  /* U+2585: round(0.5 * 7) = 4 levels up */
#define FULL "\xe2\x96\x88" /* U+2588 */

Test(report, sparkline_maps_rate_zero_to_the_lowest_and_one_to_the_full_block) {
    ag_history_point p[3] = {point(1, 0, 10), point(2, 5, 10), point(3, 10, 10)};
    char buf[64];
    cr_assert_eq(ag_store_sparkline(p, 3, 40, buf, sizeof buf), 3);
    cr_assert_str_eq(buf, LOW MID FULL);
    cr_assert_eq(ag_cli_display_width(buf), 3);
}

Test(report, sparkline_pools_counts_when_points_outnumber_columns) {
    /* 4 points into 2 columns: (0+10)/(10+10) = 0.5, (10+10)/(10+10) = 1 */
    ag_history_point p[4] = {point(1, 0, 10), point(2, 10, 10), point(3, 10, 10), point(4, 10, 10)};
    char buf[64];
    cr_assert_eq(ag_store_sparkline(p, 4, 2, buf, sizeof buf), 2);
    cr_assert_str_eq(buf, MID FULL);
}

Test(report, sparkline_weights_columns_by_total_not_by_point) {
    /* rates 1.0 (1 of 1) and 0.0 (0 of 99) pool to 0.01, not 0.5 */
    ag_history_point p[2] = {point(1, 1, 1), point(2, 0, 99)};
    char buf[16];
    cr_assert_eq(ag_store_sparkline(p, 2, 1, buf, sizeof buf), 1);
    cr_assert_str_eq(buf, LOW);
}

Test(report, sparkline_of_steps_with_nothing_to_move_is_lowest) {
    ag_history_point p[1] = {point(1, 0, 0)};
    char buf[16];
    cr_assert_eq(ag_store_sparkline(p, 1, 8, buf, sizeof buf), 1);
    cr_assert_str_eq(buf, LOW);
}

Test(report, sparkline_refuses_empty_input_and_short_buffers) {
    ag_history_point p[3] = {point(1, 0, 10), point(2, 5, 10), point(3, 10, 10)};
    char buf[16] = "junk";
    cr_assert_eq(ag_store_sparkline(p, 0, 8, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "");
    cr_assert_eq(ag_store_sparkline(p, 3, 8, buf, 9), 0, "3 columns need 10 bytes");
    cr_assert_str_eq(buf, "");
    cr_assert_eq(ag_store_sparkline(p, 3, 8, buf, 10), 3);
}
