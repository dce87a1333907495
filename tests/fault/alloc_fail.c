/*
 * alloc_fail.c - see alloc_fail.h. The wrappers count allocations and, when
 * armed, refuse exactly one. Live blocks are kept in a pointer set (not in a
 * header before the block), so a block that some library allocated and our
 * code frees (realpath, getline) passes through untouched and uncounted.
 */
#define _GNU_SOURCE /* dladdr */
#include "tests/fault/alloc_fail.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);

static _Atomic long countdown; /* > 0: allocations until the refused one */
static _Atomic int refused;

/* Open addressing; TOMB marks a removed slot. Sized for a test's peak. */
#define SLOTS (1u << 20)
#define TOMB ((void *)1)
static void *set[SLOTS];
static long nlive;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static size_t slot_of(const void *p) {
    uintptr_t x = (uintptr_t)p;
    x ^= x >> 17;
    x *= 0xed5ad4bbu;
    x ^= x >> 11;
    return (size_t)x & (SLOTS - 1);
}

static void track(void *p) {
    pthread_mutex_lock(&lock);
    for (size_t i = slot_of(p), k = 0; k < SLOTS; k++, i = (i + 1) & (SLOTS - 1))
        if (set[i] == NULL || set[i] == TOMB) {
            set[i] = p;
            nlive++;
            break;
        }
    pthread_mutex_unlock(&lock);
}

/* Remove p; 1 if it was tracked. */
static int untrack(void *p) {
    int found = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = slot_of(p), k = 0; k < SLOTS && set[i]; k++, i = (i + 1) & (SLOTS - 1))
        if (set[i] == p) {
            set[i] = TOMB;
            nlive--;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&lock);
    return found;
}

void ag_alloc_fail_at(long nth) {
    atomic_store(&refused, 0);
    atomic_store(&countdown, nth > 0 ? nth : 0);
}
int ag_alloc_failed(void) { return atomic_load(&refused); }
long ag_alloc_outstanding(void) {
    pthread_mutex_lock(&lock);
    long n = nlive;
    pthread_mutex_unlock(&lock);
    return n;
}

/* 1 when the allocation is nng's own (its functions are nni_* and nng_*;
 * the test binary is linked with -rdynamic so dladdr can name them). nng
 * 1.5.2 does not survive its own allocation failures (see test_alloc.c), so
 * those are neither counted nor refused: the test is about our code. */
static int from_nng(const void *caller) {
    Dl_info info;
    if (!caller || !dladdr(caller, &info) || !info.dli_sname) return 0;
    return strncmp(info.dli_sname, "nni_", 4) == 0 || strncmp(info.dli_sname, "nng_", 4) == 0;
}

static int refuse_armed(void) {
    if (atomic_load(&countdown) <= 0) return 0;
    long c = atomic_load(&countdown);
    while (c > 0) {
        if (atomic_compare_exchange_weak(&countdown, &c, c - 1)) {
            if (c == 1) {
                atomic_store(&refused, 1);
                return 1;
            }
            return 0;
        }
    }
    return 0;
}

/* Each wrapper: nng's own allocations pass untouched (neither refused nor
 * tracked); ours are counted down and tracked. */
#define OURS() (!from_nng(__builtin_return_address(0)))

void *__wrap_malloc(size_t n) {
    int ours = OURS();
    if (ours && refuse_armed()) return NULL;
    void *p = __real_malloc(n);
    if (p && ours) track(p);
    return p;
}

void *__wrap_calloc(size_t n, size_t size) {
    int ours = OURS();
    if (ours && refuse_armed()) return NULL;
    void *p = __real_calloc(n, size);
    if (p && ours) track(p);
    return p;
}

char *__wrap_strdup(const char *s) {
    int ours = OURS();
    size_t n = strlen(s) + 1;
    if (ours && refuse_armed()) return NULL;
    char *p = __real_malloc(n);
    if (!p) return NULL;
    if (ours) track(p);
    memcpy(p, s, n);
    return p;
}

void __wrap_free(void *p) {
    if (!p) return;
    untrack(p);
    __real_free(p);
}

void *__wrap_realloc(void *p, size_t n) {
    int ours = OURS();
    if (ours && refuse_armed()) return NULL;
    if (!p) {
        void *q = __real_malloc(n);
        if (q && ours) track(q);
        return q;
    }
    void *q = __real_realloc(p, n);
    if (!q) return NULL;
    if (untrack(p)) track(q);
    return q;
}
