/*
 * bigbuf.h - memory for the daemon's large working buffers (a snapshot's
 * float32 copy of w, its patterns): the same bytes as malloc, freed with
 * free(), but aligned to 2 MiB and, from 2 MiB up, marked for transparent
 * huge pages (MADV_HUGEPAGE) over the whole 2 MiB pages they cover. The
 * tail beyond the last whole 2 MiB page keeps small pages, so the memory
 * touched is the size asked for, never rounded up. Where the kernel has
 * transparent huge pages off, the advice does nothing.
 */
#ifndef AG_CORE_BIGBUF_H
#define AG_CORE_BIGBUF_H

#include <stddef.h>

#define AG_BIGBUF_PAGE ((size_t)2 << 20)

/* size bytes (at least 1), or NULL without memory. */
void *ag_bigbuf_alloc(size_t size);
/* How many bytes of [p, p + size) lie in whole huge pages that the kernel
 * has given (from /proc/self/smaps; 0 where it cannot tell): for tests. */
size_t ag_bigbuf_huge_bytes(const void *p, size_t size);

#endif
