/*
 * tests/sql_results.h - a test that reads or writes the store's file with
 * plain SQLite includes this: from schema 11 `results` is the store's
 * virtual table over packed segments (docs/store.md, "Result segments"),
 * and this puts it on every connection the test process opens.
 */
#ifndef AG_TESTS_SQL_RESULTS_H
#define AG_TESTS_SQL_RESULTS_H

#include <sqlite3.h>

#include "schema/store.h"

__attribute__((constructor)) static void ag_tests_sql_results(void) {
    sqlite3_auto_extension((void (*)(void))ag_store_sql_entry);
}

#endif
