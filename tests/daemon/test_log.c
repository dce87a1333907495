/*
 * test_log.c - daemon logging (daemon/log.c): journald "<N>" prefixes,
 * level filtering, one line per record, and rate limiting of repeats.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "daemon/log.h"

static size_t read_lines(FILE *f, char lines[][256], size_t max) {
    rewind(f);
    size_t n = 0;
    while (n < max && fgets(lines[n], 256, f)) n++;
    return n;
}

Test(log, lines_carry_their_syslog_priority_and_stay_on_one_line) {
    ag_logger lg;
    ag_logger_init(&lg, AG_LOG_INFO);
    lg.out = tmpfile();
    ag_log(&lg, AG_LOG_ERROR, "disk %s", "full\nreally");
    ag_log(&lg, AG_LOG_DEBUG, "not shown");
    ag_log(&lg, AG_LOG_INFO, "count %d", 3);
    char lines[8][256];
    size_t n = read_lines(lg.out, lines, 8);
    cr_assert_eq(n, 2);
    cr_expect_str_eq(lines[0], "<3>disk full really\n");
    cr_expect_str_eq(lines[1], "<6>count 3\n");
    fclose(lg.out);
    ag_logger_destroy(&lg);
}

Test(log, repeats_of_one_template_are_rate_limited_and_others_are_not) {
    ag_logger lg;
    ag_logger_init(&lg, AG_LOG_DEBUG);
    lg.out = tmpfile();
    for (int i = 0; i < 100; i++) ag_log(&lg, AG_LOG_WARNING, "bad message %d", i);
    ag_log(&lg, AG_LOG_WARNING, "another template");
    char lines[200][256];
    size_t n = read_lines(lg.out, lines, 200);
    cr_assert_eq(n, AG_LOG_BURST + 1);
    cr_expect_str_eq(lines[AG_LOG_BURST], "<4>another template\n");
    fclose(lg.out);
    ag_logger_destroy(&lg);
}

Test(log, level_names_parse_both_ways) {
    cr_expect_eq(ag_log_level_parse("warning"), AG_LOG_WARNING);
    cr_expect_eq(ag_log_level_parse("loud"), -1);
    cr_expect_eq(ag_log_level_parse(NULL), -1);
    cr_expect_str_eq(ag_log_level_name(AG_LOG_DEBUG), "debug");
}
