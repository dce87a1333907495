/*
 * json.h - internal: the one JSON writer of altgrad and the layout of every
 * query result as a "document" (a few key/value fields plus a table of rows).
 * The altgrad CLI renders documents as JSON, CSV or a table; the daemon's
 * HTTP API renders the same documents as JSON, so one spec serves both.
 */
#ifndef AG_PROTO_JSON_H
#define AG_PROTO_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "altgrad/altgrad.h"

typedef enum ag_cell_kind {
    AG_CELL_NULL = 0, /* JSON null, empty CSV field, "-" in a table */
    AG_CELL_STR,      /* text; NULL pointer counts as "" */
    AG_CELL_U64,
    AG_CELL_I64,
    AG_CELL_F64,     /* shortest round-trip in JSON/CSV; %.6g in tables */
    AG_CELL_RATE,    /* a double in [0, 1]: like F64, but 4 decimals in tables */
    AG_CELL_TIME_MS, /* Unix ms (int64): a number in JSON/CSV, UTC time in tables */
    AG_CELL_UNKNOWN  /* a value not known: JSON null, an empty cell in CSV and tables */
} ag_cell_kind;

typedef struct ag_cell {
    ag_cell_kind kind;
    union {
        const char *s; /* borrowed: must outlive the render */
        uint64_t u;
        int64_t i;
        double d;
    } v;
} ag_cell;

ag_cell ag_cell_null(void);
ag_cell ag_cell_unknown(void);
ag_cell ag_cell_str(const char *s);
ag_cell ag_cell_u64(uint64_t u);
ag_cell ag_cell_i64(int64_t i);
ag_cell ag_cell_f64(double d);
ag_cell ag_cell_rate(double d);
ag_cell ag_cell_time_ms(int64_t ms);

#define AG_DOC_META_MAX 32 /* status has 16 today */
#define AG_DOC_COLS_MAX 16

typedef struct ag_doc_field {
    const char *key;
    ag_cell value;
} ag_doc_field;

/*
 * A document. With list_key NULL it is a single record (its meta fields).
 * With list_key set it is {meta..., list_key: [rows]} in JSON. Keys and
 * column names are borrowed string literals; string cells borrow their text
 * (usually from the query result the document was laid out from).
 */
typedef struct ag_doc {
    const char *list_key;
    size_t nmeta;
    ag_doc_field meta[AG_DOC_META_MAX];
    size_t ncols;
    const char *cols[AG_DOC_COLS_MAX];
    size_t nrows;
    size_t cap_rows;
    ag_cell *cells; /* nrows * ncols, row-major */
} ag_doc;

void ag_doc_init(ag_doc *d, const char *list_key);
void ag_doc_free(ag_doc *d);
/* AG_ENOSPC when the fixed tables are full; AG_EINVAL after rows exist. */
int ag_doc_meta(ag_doc *d, const char *key, ag_cell value);
int ag_doc_col(ag_doc *d, const char *name);
/* ag_doc_col for each name of a NULL-terminated list. */
int ag_doc_cols(ag_doc *d, const char *const *names);
/* Appends one row of d->ncols cells (copied). AG_ENOMEM on failure. */
int ag_doc_row(ag_doc *d, const ag_cell *cells);

/* ---------------- JSON (RFC 8259) -------------------------------------- */
/* s as a JSON string literal, quotes included; control characters escaped,
 * invalid UTF-8 becomes U+FFFD, so the output is always valid JSON. */
void ag_json_string(FILE *out, const char *s);
/* Length (1-4) of the valid UTF-8 sequence at s, 0 when it is not one
 * (overlong forms, surrogates, past U+10FFFF). s is NUL-terminated. */
size_t ag_utf8_sequence(const unsigned char *s);
/* The shortest "%.{15,16,17}g" text that reads back as exactly d. */
void ag_json_format_double(char *buf, size_t cap, double d);
/* One value: numbers as integers or shortest doubles, NaN/inf as null. */
void ag_json_cell(FILE *out, const ag_cell *c);
/* The whole document, one array element a line, ending in "}\n". AG_EIO
 * when the stream failed. */
int ag_json_write_doc(FILE *out, const ag_doc *d);

/* ---------------- layouts of the query results (docs/cli.md) ------------
 * Each fills an initialised, empty document from one result and sets its
 * list key ("runs", "points", ...; none for status); the document borrows
 * strings from the result and from the names passed, so free the document
 * before them. Names the result carries win; the names passed (the
 * request's) fill in where it has none. Returns AG_OK, AG_ENOMEM, or
 * AG_ENOSPC (a layout outgrew the fixed tables: a bug). */
struct ag_msg;
/* The document of any query: the reply to the request req (both ag_msg of
 * proto/proto.h) laid out by its table, with the names req asked for where
 * the result does not carry them, and for status (AG_Q_LIVE) the source and
 * address it came from first. AG_EINVAL when reply does not answer req.
 * The ag_doc_* below are this for one result each. */
int ag_doc_answer(ag_doc *d, const struct ag_msg *req, const struct ag_msg *reply,
                  const char *source, const char *address);
int ag_doc_status(ag_doc *d, const ag_status *s, const char *source, const char *address);
int ag_doc_runs(ag_doc *d, const ag_run_list *l);
int ag_doc_tensors(ag_doc *d, const char *run, const ag_tensor_list *l);
int ag_doc_history(ag_doc *d, const char *run, const char *tensor, const char *format,
                   const ag_history *h);
int ag_doc_scales(ag_doc *d, const char *run, const char *format, const ag_scale_list *l);
int ag_doc_top(ag_doc *d, const char *run, const char *format, const ag_top_list *l);

#endif
