/*
 * copy.h - a copy of bytes that will not be read again soon by the writer:
 * the arrays a client puts in its shared-memory segment, the weights the
 * daemon copies out of it. Large copies store around the caches (SSE2
 * non-temporal stores, part of every x86-64), so the destination's lines
 * are neither read for ownership nor pushed out of the caches the copier
 * still needs; elsewhere, and for small copies, memcpy. The stores are
 * fenced before return, so whatever the caller publishes next (a message,
 * a release store) is ordered after them.
 */
#ifndef AG_CORE_COPY_H
#define AG_CORE_COPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define AG_COPY_STREAM_MIN (256u * 1024u) /* smaller copies stay in the caches */

static inline void ag_copy_stream(void *dst, const void *src, size_t n) {
#if defined(__x86_64__)
    if (n >= AG_COPY_STREAM_MIN) {
        uint8_t *d = dst;
        const uint8_t *s = src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head;
        s += head;
        n -= head;
        for (; n >= 64; n -= 64, d += 64, s += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
            __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));
            _mm_stream_si128((__m128i *)(void *)d, a);
            _mm_stream_si128((__m128i *)(void *)(d + 16), b);
            _mm_stream_si128((__m128i *)(void *)(d + 32), c);
            _mm_stream_si128((__m128i *)(void *)(d + 48), e);
        }
        memcpy(d, s, n);
        _mm_sfence();
        return;
    }
#endif
    memcpy(dst, src, n);
}

#endif
