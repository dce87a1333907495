/*
 * output.h - internal to the altgrad CLI: one result "document" (a few
 * key/value fields plus a table of rows) rendered as an aligned table for
 * people, or as JSON or CSV for programs. Kept apart from the commands so the
 * escaping, quoting and alignment rules can be unit-tested on their own.
 * The document model and the JSON writer live in proto/json.h (the daemon's
 * HTTP API prints the same JSON); tables and CSV are the CLI's own.
 */
#ifndef AG_CLI_OUTPUT_H
#define AG_CLI_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "present/json.h"

typedef enum ag_cli_mode {
    AG_CLI_TABLE = 0, /* aligned columns for people */
    AG_CLI_JSON = 1,  /* one JSON document */
    AG_CLI_CSV = 2    /* RFC 4180 rows with a header line */
} ag_cli_mode;

/* The cells and documents are proto/json.h's, shared with the daemon's HTTP
 * API; the CLI names are kept as aliases. */
typedef ag_cell_kind ag_cli_kind;
typedef ag_cell ag_cli_cell;
typedef ag_doc_field ag_cli_field;
typedef ag_doc ag_cli_doc;

#define AG_CLI_META_MAX AG_DOC_META_MAX
#define AG_CLI_COLS_MAX AG_DOC_COLS_MAX

ag_cli_cell ag_cli_null(void);
ag_cli_cell ag_cli_str(const char *s);
ag_cli_cell ag_cli_u64(uint64_t u);
ag_cli_cell ag_cli_i64(int64_t i);
ag_cli_cell ag_cli_f64(double d);
ag_cli_cell ag_cli_rate(double d);
ag_cli_cell ag_cli_time_ms(int64_t ms);

/*
 * A document. With list_key NULL it is a single record (its meta fields):
 * a JSON object, a key/value listing, or a one-row CSV. With list_key set it
 * is {meta..., list_key: [rows]} in JSON, meta lines then an aligned table
 * for people, and only the rows (header + one line each) in CSV.
 * Keys and column names are borrowed string literals.
 */
void ag_cli_doc_init(ag_cli_doc *d, const char *list_key);
void ag_cli_doc_free(ag_cli_doc *d);
/* AG_ENOSPC when the fixed tables are full; AG_EINVAL after rows exist. */
int ag_cli_doc_meta(ag_cli_doc *d, const char *key, ag_cli_cell value);
int ag_cli_doc_col(ag_cli_doc *d, const char *name);
/* Appends one row of d->ncols cells (copied). AG_ENOMEM on failure. */
int ag_cli_doc_row(ag_cli_doc *d, const ag_cli_cell *cells);

/* Writes the whole document; AG_EIO if the stream failed. */
int ag_cli_render(FILE *out, const ag_cli_doc *d, ag_cli_mode mode);

/* Building blocks, exposed for the tests. */
/* s as a JSON string literal, quotes included; invalid UTF-8 becomes U+FFFD. */
void ag_cli_json_string(FILE *out, const char *s);
/* s as one CSV field, quoted (quotes doubled) when it holds , " CR or LF,
 * or starts or ends with a space. */
void ag_cli_csv_field(FILE *out, const char *s);
/* The shortest "%.{15,16,17}g" text that reads back as exactly d. */
void ag_cli_format_double(char *buf, size_t cap, double d);
/* Columns a UTF-8 string takes in a terminal (code points; no wide chars). */
size_t ag_cli_display_width(const char *s);

#endif
