/*
 * map.c - string-keyed hash map with FNV-1a hashing (see map.h). Each map
 * starts its hash from a random seed, so a client cannot precompute names
 * that all land in one bucket and turn every lookup into a list walk.
 */
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "daemon/map.h"

static size_t fnv1a(const ag_map *m, const char *s) {
    uint64_t h = 1469598103934665603ull ^ m->seed;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    /* final mix (murmur3's), so the seed reaches every bit of the bucket index */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h;
}

void ag_map_init(ag_map *m) {
    memset(m, 0, sizeof *m);
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() ^
               (uint64_t)(uintptr_t)m;
    }
    m->seed = seed;
}

void ag_map_free(ag_map *m) {
    uint64_t seed = m->seed;
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
    m->seed = seed; /* a freed map may be refilled */
}

void *ag_map_get(const ag_map *m, const char *key) {
    if (!m->nbuckets) return NULL;
    size_t h = fnv1a(m, key);
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
    e->hash = fnv1a(m, key);
    e->value = value;
    e->next = m->buckets[e->hash % m->nbuckets];
    m->buckets[e->hash % m->nbuckets] = e;
    m->count++;
    return AG_OK;
}

int ag_map_set(ag_map *m, const char *key, void *value) {
    if (m->nbuckets) {
        size_t h = fnv1a(m, key);
        for (ag_map_entry *e = m->buckets[h % m->nbuckets]; e; e = e->next)
            if (e->hash == h && strcmp(e->key, key) == 0) {
                e->value = value;
                return AG_OK;
            }
    }
    return ag_map_put(m, key, value);
}

void *ag_map_remove(ag_map *m, const char *key) {
    if (!m->nbuckets) return NULL;
    size_t h = fnv1a(m, key);
    for (ag_map_entry **p = &m->buckets[h % m->nbuckets]; *p; p = &(*p)->next) {
        ag_map_entry *e = *p;
        if (e->hash != h || strcmp(e->key, key) != 0) continue;
        void *value = e->value;
        *p = e->next;
        free(e);
        m->count--;
        return value;
    }
    return NULL;
}

void ag_map_each(const ag_map *m, void (*fn)(void *value, void *ctx), void *ctx) {
    for (size_t i = 0; i < m->nbuckets; i++)
        for (ag_map_entry *e = m->buckets[i]; e; e = e->next) fn(e->value, ctx);
}
