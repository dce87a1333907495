/*
 * arena.c - query results freed with one ag_free() (see arena.h).
 * Every block carries a header linking it to the next block of the same
 * result; the root's header heads the chain. Blocks are max_align_t aligned.
 */
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "arena.h"

typedef union block_header {
    union block_header *next;
    max_align_t align;
} block_header;

static block_header *header_of(void *p) { return (block_header *)p - 1; }

void *ag_arena_new(size_t root_size) {
    if (root_size > SIZE_MAX - sizeof(block_header)) return NULL;
    block_header *h = calloc(1, sizeof *h + root_size);
    if (h == NULL) return NULL;
    h->next = NULL;
    return h + 1;
}

void *ag_arena_alloc(void *root, size_t size) {
    if (root == NULL || size > SIZE_MAX - sizeof(block_header)) return NULL;
    block_header *h = calloc(1, sizeof *h + size);
    if (h == NULL) return NULL;
    block_header *r = header_of(root);
    h->next = r->next; /* insert after the root: the root stays first */
    r->next = h;
    return h + 1;
}

char *ag_arena_strndup(void *root, const char *s, size_t n) {
    if (s == NULL) {
        s = "";
        n = 0;
    }
    if (n == SIZE_MAX) return NULL;
    char *d = ag_arena_alloc(root, n + 1);
    if (d == NULL) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *ag_arena_strdup(void *root, const char *s) {
    return ag_arena_strndup(root, s, s ? strlen(s) : 0);
}

void *ag_arena_grow(void *root, void *old, size_t old_size, size_t new_size) {
    void *p = ag_arena_alloc(root, new_size);
    if (p != NULL && old != NULL) memcpy(p, old, old_size < new_size ? old_size : new_size);
    return p;
}

AG_EXTERN void ag_free(void *result) {
    if (result == NULL) return;
    block_header *h = header_of(result);
    while (h != NULL) {
        block_header *next = h->next;
        free(h);
        h = next;
    }
}
