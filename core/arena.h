/*
 * arena.h - internal: results that the caller frees with one ag_free().
 * A result is a root block with a hidden header chaining every further block
 * allocated for it (arrays, strings). Used by the store and the client to
 * build the query results of altgrad.h. Not thread-safe per result.
 */
#ifndef AG_CORE_ARENA_H
#define AG_CORE_ARENA_H
#include <stddef.h>

/* A zeroed root block of root_size bytes; NULL on out of memory. */
void *ag_arena_new(size_t root_size);
/* A zeroed block owned by root; NULL on out of memory (root stays valid). */
void *ag_arena_alloc(void *root, size_t size);
/* A copy of s (NULL gives "") owned by root; NULL on out of memory. */
char *ag_arena_strdup(void *root, const char *s);
/* Like ag_arena_strdup for n bytes that need not be NUL-terminated. */
char *ag_arena_strndup(void *root, const char *s, size_t n);
/* A zeroed block of new_size holding the first old_size bytes of old; old
 * stays owned by root until ag_free. NULL on out of memory. */
void *ag_arena_grow(void *root, void *old, size_t old_size, size_t new_size);

#endif
