/*
 * spec.h - the field tables of proto/spec.c: every message of the protocol
 * as data. One table per message drives the encoder and the decoder; the
 * reply tables also carry each field's document key and presentation, so
 * present/json_layout.c lays out every query result by walking them and
 * ag_result_key() hands the same keys to the Python layer; a query's request
 * table is its parameter list, which the client, the CLI and the HTTP API
 * check and fill by. Internal: nothing public includes it.
 */
#ifndef AG_PROTO_SPEC_H
#define AG_PROTO_SPEC_H

#include <stddef.h>
#include <stdint.h>

/* Value kinds of a field or an item column. */
enum ag_kind {
    K_UINT = 1, /* uint64_t */
    K_INT,      /* int64_t */
    K_FLOAT,    /* double, finite */
    K_ENUM,     /* int in 0..aux */
    K_NAME,     /* const char *, 1..AG_NAME_MAX */
    K_STR,      /* const char *, 0..aux bytes */
    K_FMT,      /* const char *, format name */
    K_JSON,     /* const char *, JSON object <= aux bytes */
    K_CODE,     /* int, negative ag_err */
    K_SCALE,    /* double > 0 with presence flag (int at aux) */
    K_LAUNCH,   /* const char *, launch id: 1..aux bytes of printable ASCII */
    K_RECS,     /* stats records (ag_msg_stats) */
    K_FMTS,     /* format list: a size_t count at off, the names pointer right after it */
    K_DATA,     /* snapshot payload (ag_msg_snapshot) */
    K_ITEMS,    /* reply item list (spec->cols) */
    K_COUNTS,   /* counts items (ag_msg_counts) */
    K_REPL,     /* counts: the indexes of replicated items (ag_msg_counts.replicated) */
    K_SHM       /* snapshot: the shared-memory key (ag_msg_shm) */
};

/* The index of run_start's "world" key in its table (decode checks it). */
#define RUN_START_WORLD 7

/* Field flags. */
#define F_REQ 1u    /* must be present */
#define F_OMIT0 2u  /* encoder leaves it out when 0 / NULL */
#define F_NONNEG 4u /* float >= 0 */

/* How a reply field is shown in a document (present/json.h cells). */
enum ag_show {
    S_PLAIN = 0, /* by kind: text (NULL as ""), integer, real */
    S_RATE,      /* K_FLOAT in [0, 1]: a rate cell (4 decimals in tables) */
    S_TIME,      /* K_INT Unix ms: a time cell (UTC time in tables) */
    S_ROLE,      /* K_ENUM ag_role: its name, null when out of range */
    S_NULLABLE,  /* text: NULL shown as null, not "" */
    S_UNKNOWN,   /* K_UINT: AG_FLIPS_UNKNOWN (UINT64_MAX) shown as unknown (null / empty) */
    S_NAN        /* K_FLOAT that may be unknown: NaN, nil on the wire, null / empty shown;
                  * a column the sender did not send decodes as NaN */
};

typedef struct ag_field {
    const char *key; /* wire key */
    uint8_t kind;
    uint8_t flags;
    size_t off; /* offset in the base struct */
    size_t aux; /* limit, enum max or presence offset (see kinds) */
    /* Replies and query parameters only (NULL / 0 elsewhere): */
    const char *doc; /* reply: the document key; for a field or column, also
                      * the name of the C member at off; for K_ITEMS, the
                      * list's key. Query: the parameter's CLI and HTTP name
                      * (NULL: not a parameter people give) */
    uint8_t show;    /* replies: enum ag_show */
} ag_field;

/* One message type. Stream and query fields are relative to &msg->u; reply
 * fields are relative to the result root (size root_size), whose item array
 * and count live at items_off / count_off and hold item_size structs.
 * Reply fields and columns are in document order; items travel as arrays,
 * so where the wire's column order differs, wire[p] is the index in cols of
 * the column at wire position p (NULL: the same order). */
typedef struct ag_spec {
    int type;
    const ag_field *fields;
    size_t nfields;
    size_t root_size;
    size_t item_size;
    size_t items_off;
    size_t count_off;
    const ag_field *cols;
    size_t ncols;
    const uint8_t *wire;
    size_t ncols_base; /* columns every receiver reads (the first ones on the
                        * wire): the reply's columns before any was added;
                        * later ones are sent to requesters that ask (cols) */
} ag_spec;

const ag_spec *ag_spec_for(int type);
/* The parameters of query q (its request's fields), *n of them; NULL with
 * *n = 0 for a query without any. */
const ag_field *ag_query_params(int q, size_t *n);
extern const ag_field ag_record_cols[6];

/* The column sent at wire position p of a reply item. */
static inline const ag_field *ag_spec_wire_col(const ag_spec *s, size_t p) {
    return &s->cols[s->wire ? s->wire[p] : p];
}

#endif
