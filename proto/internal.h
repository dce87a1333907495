/*
 * internal.h - private to proto/: the field tables that describe every
 * message (one table drives both encoder and decoder), the bounded msgpack
 * reader, and the writer glue between msgpack-c's packer and ag_buf.
 */
#ifndef AG_PROTO_INTERNAL_H
#define AG_PROTO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "proto/proto.h"

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
    K_FMTS,     /* format list (ag_msg_snapshot) */
    K_DATA,     /* snapshot payload (ag_msg_snapshot) */
    K_ITEMS     /* reply item list (spec->cols) */
};

/* Field flags. */
#define F_REQ 1u    /* must be present */
#define F_OMIT0 2u  /* encoder leaves it out when 0 / NULL */
#define F_NONNEG 4u /* float >= 0 */

typedef struct ag_field {
    const char *key;
    uint8_t kind;
    uint8_t flags;
    size_t off; /* offset in the base struct */
    size_t aux; /* limit, enum max or presence offset (see kinds) */
} ag_field;

/* One message type. Stream and query fields are relative to &msg->u; reply
 * fields are relative to the result root (size root_size), whose item array
 * and count live at items_off / count_off and hold item_size structs. */
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
} ag_spec;

const ag_spec *ag_spec_for(int type);
extern const ag_field ag_record_cols[6];

/* ---- reader ------------------------------------------------------------ */
typedef struct ag_rd {
    const uint8_t *p;
    const uint8_t *end;
    const char *why;
} ag_rd;

int ag_rd_uint(ag_rd *r, uint64_t *v);
int ag_rd_int(ag_rd *r, int64_t *v);
int ag_rd_float(ag_rd *r, double *v);
int ag_rd_str(ag_rd *r, const char **s, size_t *len);
int ag_rd_bin(ag_rd *r, const void **b, size_t *len);
/* Container headers; n is checked against the bytes left (each element
 * needs at least one byte, each map entry two). */
int ag_rd_array(ag_rd *r, uint32_t *n);
int ag_rd_map(ag_rd *r, uint32_t *n);
int ag_rd_skip(ag_rd *r, int depth);

/* ---- writer ------------------------------------------------------------ */
int ag_buf_write(void *buf, const char *data, size_t len);
void ag_packer_init(msgpack_packer *pk, ag_buf *b);
int ag_buf_put(ag_buf *b, const void *data, size_t len);

/* ---- bump allocator for decoded stream/query messages ------------------- */
void *ag_bump_alloc(void **owner, size_t size);
char *ag_bump_strndup(void **owner, const char *s, size_t n);
void ag_bump_free(void *owner);

#define AG_PROTO_TRAILER_LEN 27u /* "seq" cf x8 "drop" cf x8, with key headers */

#endif
