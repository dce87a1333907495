/*
 * alloc_fail.h - test-only: fail the Nth heap allocation. Test binaries that
 * use it link with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,
 * --wrap=strdup,--wrap=free, so every allocation made by code linked into the
 * test (our libraries, and the nng linked into them) goes through a counter.
 * Outstanding blocks are tracked, so a test proves a failed call left nothing
 * allocated, the way SQLite's malloc tests do.
 */
#ifndef AG_TESTS_ALLOC_FAIL_H
#define AG_TESTS_ALLOC_FAIL_H

#include <stdint.h>

/* Fail the nth allocation from now (1 = the next one); 0 turns failing off. */
void ag_alloc_fail_at(long nth);
/* 1 once the armed allocation has been refused (then nothing more fails). */
int ag_alloc_failed(void);
/* Blocks allocated through the wrappers and not yet freed. */
long ag_alloc_outstanding(void);

#endif
