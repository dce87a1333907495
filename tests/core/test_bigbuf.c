/*
 * test_bigbuf.c - the daemon's large buffers (core/bigbuf.h): usable as
 * malloc's, 2 MiB-aligned from 2 MiB up, on huge pages where the kernel's
 * transparent huge pages are on, and never beyond the whole pages asked
 * for (the tail keeps small pages: no memory rounded up).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bigbuf.h"

/* Whether the kernel gives transparent huge pages to a region that asks
 * (enabled: [always] or [madvise]). */
static int thp_on(void) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    char line[128] = "";
    int on = fgets(line, sizeof line, f) && (strstr(line, "[always]") || strstr(line, "[madvise]"));
    fclose(f);
    return on;
}

Test(bigbuf, small_buffers_are_plain_memory) {
    for (size_t n = 0; n < AG_BIGBUF_PAGE; n = n * 2 + 1) {
        unsigned char *p = ag_bigbuf_alloc(n);
        cr_assert_not_null(p, "%zu bytes", n);
        memset(p, 0xa5, n);
        cr_expect(n == 0 || (p[0] == 0xa5 && p[n - 1] == 0xa5));
        free(p);
    }
}

Test(bigbuf, large_buffers_are_aligned_whole_and_freed_with_free) {
    const size_t sizes[] = {AG_BIGBUF_PAGE, 2 * AG_BIGBUF_PAGE + 12345, 3 * AG_BIGBUF_PAGE - 4};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint32_t *p = ag_bigbuf_alloc(n);
        cr_assert_not_null(p);
        cr_expect_eq((uintptr_t)p % AG_BIGBUF_PAGE, 0, "%zu bytes at %p", n, (void *)p);
        for (size_t k = 0; k < n / 4; k++) p[k] = (uint32_t)(k * 2654435761u);
        size_t bad = 0;
        for (size_t k = 0; k < n / 4; k++) bad += p[k] != (uint32_t)(k * 2654435761u);
        cr_expect_eq(bad, 0);
        free(p);
    }
}

Test(bigbuf, whole_pages_go_huge_and_the_tail_does_not) {
    const size_t n = 3 * AG_BIGBUF_PAGE + AG_BIGBUF_PAGE / 2;
    unsigned char *p = ag_bigbuf_alloc(n);
    cr_assert_not_null(p);
    memset(p, 1, n);
    size_t huge = ag_bigbuf_huge_bytes(p, n);
    cr_log_info("%zu of %zu bytes on huge pages", huge, n);
    /* never the half page past the last whole one: nothing rounded up */
    cr_expect_leq(huge, 3 * AG_BIGBUF_PAGE, "%zu bytes on huge pages", huge);
    cr_expect_eq(huge % AG_BIGBUF_PAGE, 0);
    if (thp_on()) cr_expect_gt(huge, 0, "transparent huge pages are on, yet none for the buffer");
    free(p);
}
