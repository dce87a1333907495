/*
 * map.c - string-keyed hash map with FNV-1a hashing (see map.h).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "daemon/map.h"

static size_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

void ag_map_init(ag_map *m) { memset(m, 0, sizeof *m); }

void ag_map_free(ag_map *m) {
    for (size_t i = 0; i < m->nbuckets; i++) {
        ag_map_entry *e = m->buckets[i];
        while (e) {
            ag_map_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof *m);
}

void *ag_map_get(const ag_map *m, const char *key) {
    if (!m->nbuckets) return NULL;
    size_t h = fnv1a(key);
    for (ag_map_entry *e = m->buckets[h % m->nbuckets]; e; e = e->next)
        if (e->hash == h && strcmp(e->key, key) == 0) return e->value;
    return NULL;
}

static int rehash(ag_map *m, size_t nb) {
    ag_map_entry **b = calloc(nb, sizeof *b);
    if (!b) return AG_ENOMEM;
    for (size_t i = 0; i < m->nbuckets; i++) {
        ag_map_entry *e = m->buckets[i];
        while (e) {
            ag_map_entry *next = e->next;
            e->next = b[e->hash % nb];
            b[e->hash % nb] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
    return AG_OK;
}

int ag_map_put(ag_map *m, const char *key, void *value) {
    if (m->count + 1 > m->nbuckets) {
        int err = rehash(m, m->nbuckets ? m->nbuckets * 2 : 64);
        if (err) return err;
    }
    size_t len = strlen(key);
    ag_map_entry *e = malloc(sizeof *e + len + 1);
    if (!e) return AG_ENOMEM;
    memcpy(e->key, key, len + 1);
    e->hash = fnv1a(key);
    e->value = value;
    e->next = m->buckets[e->hash % m->nbuckets];
    m->buckets[e->hash % m->nbuckets] = e;
    m->count++;
    return AG_OK;
}

void ag_map_each(const ag_map *m, void (*fn)(void *value, void *ctx), void *ctx) {
    for (size_t i = 0; i < m->nbuckets; i++)
        for (ag_map_entry *e = m->buckets[i]; e; e = e->next) fn(e->value, ctx);
}
