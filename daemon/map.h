/*
 * map.h - a small string-keyed hash map (separate chaining, doubling) for
 * the engine's runs, tensors and clients. Keys are copied; values are the caller's.
 */
#ifndef AG_DAEMON_MAP_H
#define AG_DAEMON_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ag_map_entry {
    struct ag_map_entry *next;
    size_t hash;
    void *value;
    char key[];
} ag_map_entry;

typedef struct ag_map {
    ag_map_entry **buckets;
    size_t nbuckets, count;
    uint64_t seed; /* random per map: see map.c */
} ag_map;

void ag_map_init(ag_map *m);
/* Frees the entries (not the values). */
void ag_map_free(ag_map *m);
void *ag_map_get(const ag_map *m, const char *key);
/* Insert key (absent) -> value; AG_ENOMEM on failure. */
int ag_map_put(ag_map *m, const char *key, void *value);
/* key -> value, replacing the value of a present key; AG_ENOMEM on failure. */
int ag_map_set(ag_map *m, const char *key, void *value);
/* Remove key; returns its value, NULL when absent. */
void *ag_map_remove(ag_map *m, const char *key);
/* Call fn on every value. */
void ag_map_each(const ag_map *m, void (*fn)(void *value, void *ctx), void *ctx);

#endif
