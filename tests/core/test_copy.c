/*
 * test_copy.c - ag_copy_stream (core/copy.h): the same bytes as memcpy for
 * every size around the streaming threshold and every alignment of source
 * and destination, and nothing written outside the destination.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/copy.h"

#define GUARD 64

Test(copy, streamed_copies_equal_memcpy_at_every_alignment) {
    const size_t sizes[] = {0,
                            1,
                            63,
                            4096,
                            AG_COPY_STREAM_MIN - 1,
                            AG_COPY_STREAM_MIN,
                            AG_COPY_STREAM_MIN + 1,
                            AG_COPY_STREAM_MIN + 63,
                            AG_COPY_STREAM_MIN + 4 * 1000 + 4,
                            3 * AG_COPY_STREAM_MIN + 17};
    size_t cap = 3 * AG_COPY_STREAM_MIN + 17 + 2 * GUARD + 32;
    uint8_t *src = malloc(cap), *dst = malloc(cap), *want = malloc(cap);
    cr_assert(src && dst && want);
    for (size_t i = 0; i < cap; i++) src[i] = (uint8_t)(i * 131u + (i >> 9) * 7u + 1u);
    size_t checked = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (size_t so = 0; so < 16; so += 3)
            for (size_t d0 = 0; d0 < 16; d0++) {
                size_t n = sizes[k];
                memset(dst, 0xa5, cap);
                memset(want, 0xa5, cap);
                memcpy(want + GUARD + d0, src + so, n);
                ag_copy_stream(dst + GUARD + d0, src + so, n);
                cr_assert(memcmp(dst, want, cap) == 0,
                          "size %zu, source offset %zu, destination offset %zu", n, so, d0);
                checked++;
            }
    cr_expect_eq(checked, 10u * 6u * 16u);
    free(src);
    free(dst);
    free(want);
}
