/*
 * test_map.c - daemon/map.c: the engine's string-keyed map, including its
 * per-map hash seed (crafted names must not all share a bucket everywhere).
 */
#include <criterion/criterion.h>
#include <stdio.h>

#include "altgrad/altgrad.h"
#include "daemon/map.h"

Test(map, stores_and_finds_many_keys_across_growth) {
    ag_map m;
    ag_map_init(&m);
    static int values[5000];
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "layer%d.weight", i);
        cr_assert_eq(ag_map_put(&m, key, &values[i]), AG_OK);
    }
    cr_assert_eq(m.count, 5000);
    cr_assert_geq(m.nbuckets, 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "layer%d.weight", i);
        cr_assert_eq(ag_map_get(&m, key), &values[i], "%s", key);
    }
    cr_assert_null(ag_map_get(&m, "layer5000.weight"));
    cr_assert_null(ag_map_get(&m, ""));
    ag_map_free(&m);
    cr_assert_null(ag_map_get(&m, "layer1.weight"));
    cr_assert_eq(ag_map_put(&m, "again", &values[0]), AG_OK); /* a freed map refills */
    cr_assert_eq(ag_map_get(&m, "again"), &values[0]);
    ag_map_free(&m);
}

static void count_value(void *value, void *ctx) {
    (void)value;
    (*(size_t *)ctx)++;
}

Test(map, each_visits_every_value_once) {
    ag_map m;
    ag_map_init(&m);
    int v[3];
    ag_map_put(&m, "a", &v[0]);
    ag_map_put(&m, "b", &v[1]);
    ag_map_put(&m, "c", &v[2]);
    size_t n = 0;
    ag_map_each(&m, count_value, &n);
    cr_assert_eq(n, 3);
    ag_map_free(&m);
}

Test(map, set_replaces_and_remove_forgets_a_key) {
    ag_map m;
    ag_map_init(&m);
    int v[300];
    char key[32];
    cr_assert_null(ag_map_remove(&m, "absent"), "an empty map removes nothing");
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "%016x", i);
        cr_assert_eq(ag_map_set(&m, key, &v[i]), AG_OK);
    }
    cr_assert_eq(ag_map_set(&m, "0000000000000007", &v[299]), AG_OK);
    cr_assert_eq(m.count, 300, "set on a present key replaces, it does not add");
    cr_assert_eq(ag_map_get(&m, "0000000000000007"), &v[299]);
    for (int i = 0; i < 300; i += 2) {
        snprintf(key, sizeof key, "%016x", i);
        cr_assert_not_null(ag_map_remove(&m, key));
        cr_assert_null(ag_map_remove(&m, key), "removed twice");
    }
    cr_assert_eq(m.count, 150);
    for (int i = 1; i < 300; i += 2) {
        snprintf(key, sizeof key, "%016x", i);
        cr_assert_not_null(ag_map_get(&m, key), "%s lost by a neighbour's removal", key);
    }
    cr_assert_null(ag_map_get(&m, "0000000000000000"));
    ag_map_free(&m);
}

/* Two maps hash the same names differently: bucket layouts that a client
 * could aim at in one process do not carry over to another. */
Test(map, each_map_has_its_own_hash_seed) {
    ag_map a, b;
    ag_map_init(&a);
    ag_map_init(&b);
    cr_assert_neq(a.seed, b.seed);
    int v = 0;
    char key[16];
    size_t same = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(key, sizeof key, "t%d", i);
        ag_map_put(&a, key, &v);
        ag_map_put(&b, key, &v);
    }
    for (size_t i = 0; i < a.nbuckets; i++)
        for (ag_map_entry *e = a.buckets[i]; e; e = e->next)
            for (size_t j = 0; j < b.nbuckets; j++)
                for (ag_map_entry *f = b.buckets[j]; f; f = f->next)
                    if (strcmp(e->key, f->key) == 0) same += e->hash == f->hash;
    cr_assert_lt(same, 2);
    ag_map_free(&a);
    ag_map_free(&b);
}
