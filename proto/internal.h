/*
 * internal.h - private to proto/: the bounded msgpack reader and the writer
 * glue between msgpack-c's packer and ag_buf. The field tables that describe
 * every message (proto/spec.h) are shared with present/.
 */
#ifndef AG_PROTO_INTERNAL_H
#define AG_PROTO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "core/errctx.h"
#include "proto/proto.h"
#include "proto/shm.h"
#include "proto/spec.h"

/* ---- reader ------------------------------------------------------------ */
typedef struct ag_rd {
    const uint8_t *p;
    const uint8_t *end;
    ag_errctx *err; /* where a failure says what was wrong (NULL: nowhere) */
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
