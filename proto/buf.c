/*
 * buf.c - output buffers for the encoder (growable, fixed or counting) and
 * the bump allocator that holds a decoded message's strings and arrays, so a
 * decode costs a handful of mallocs however many records it carries.
 */
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

enum { BUF_GROW = 0, BUF_FIXED = 1, BUF_COUNT = 2 };

void ag_buf_init(ag_buf *b) {
    memset(b, 0, sizeof(*b));
    b->mode = BUF_GROW;
}

void ag_buf_init_fixed(ag_buf *b, void *mem, size_t cap) {
    memset(b, 0, sizeof(*b));
    b->data = mem;
    b->cap = cap;
    b->mode = BUF_FIXED;
}

void ag_buf_init_count(ag_buf *b) {
    memset(b, 0, sizeof(*b));
    b->mode = BUF_COUNT;
}

void ag_buf_reset(ag_buf *b) {
    b->len = 0;
    b->err = 0;
}

void ag_buf_free(ag_buf *b) {
    if (b->mode == BUF_GROW) free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(ag_buf *b, size_t extra) {
    if (extra > AG_PROTO_MAX_MESSAGE || b->len + extra > AG_PROTO_MAX_MESSAGE) return AG_ETOOBIG;
    size_t need = b->len + extra;
    if (need <= b->cap) return AG_OK;
    if (b->mode == BUF_COUNT) return AG_OK;
    if (b->mode == BUF_FIXED) return AG_ETOOBIG;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return AG_ENOMEM;
    b->data = p;
    b->cap = cap;
    return AG_OK;
}

int ag_buf_put(ag_buf *b, const void *data, size_t len) {
    if (b->err) return b->err;
    int rc = buf_reserve(b, len);
    if (rc) {
        b->err = rc;
        return rc;
    }
    if (b->mode != BUF_COUNT && len) memcpy(b->data + b->len, data, len);
    b->len += len;
    return AG_OK;
}

/* msgpack_packer_write: 0 on success, like msgpack's own sbuffer. */
int ag_buf_write(void *buf, const char *data, size_t len) {
    return ag_buf_put(buf, data, len) ? -1 : 0;
}

void ag_packer_init(msgpack_packer *pk, ag_buf *b) { msgpack_packer_init(pk, b, ag_buf_write); }

/* Bump blocks: a chain of malloc'd blocks, newest first. */
typedef struct bump_block {
    struct bump_block *next;
    size_t used;
    size_t cap;
    max_align_t align[]; /* storage */
} bump_block;

#define BUMP_MIN 4096u

void *ag_bump_alloc(void **owner, size_t size) {
    bump_block *blk = *owner;
    size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (size == 0) size = sizeof(max_align_t);
    if (!blk || blk->cap - blk->used < size) {
        size_t cap = size > BUMP_MIN ? size : BUMP_MIN;
        if (blk && cap < blk->cap * 2 && blk->cap * 2 <= (64u << 20)) cap = blk->cap * 2;
        bump_block *nb = malloc(sizeof(*nb) + cap);
        if (!nb) return NULL;
        nb->next = blk;
        nb->used = 0;
        nb->cap = cap;
        *owner = nb;
        blk = nb;
    }
    void *p = (char *)blk->align + blk->used;
    blk->used += size;
    memset(p, 0, size);
    return p;
}

char *ag_bump_strndup(void **owner, const char *s, size_t n) {
    char *p = ag_bump_alloc(owner, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void ag_bump_free(void *owner) {
    bump_block *blk = owner;
    while (blk) {
        bump_block *next = blk->next;
        free(blk);
        blk = next;
    }
}
