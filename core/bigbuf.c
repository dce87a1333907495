/*
 * bigbuf.c - large buffers on transparent huge pages (bigbuf.h).
 *
 * Why: the snapshot pass streams several such buffers at once; on the 2-core
 * dev machine (a VM, where a TLB miss walks two page tables) the daemon's
 * pool spent 13-21% less CPU per GB of snapshots with its float32 copies of
 * w on huge pages (docs/daemon.md, "Huge pages for the working buffers").
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bigbuf.h"

void *ag_bigbuf_alloc(size_t size) {
    if (size < AG_BIGBUF_PAGE) return malloc(size ? size : 1);
    void *p = NULL;
    /* glibc maps an aligned block this large by itself: the alignment
     * costs address space, not memory */
    if (posix_memalign(&p, AG_BIGBUF_PAGE, size) != 0) return NULL;
    size_t whole = size / AG_BIGBUF_PAGE * AG_BIGBUF_PAGE;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, whole, MADV_HUGEPAGE); /* advice: a failure changes nothing */
#endif
    return p;
}

size_t ag_bigbuf_huge_bytes(const void *p, size_t size) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    uintptr_t lo = (uintptr_t)p, hi = lo + size;
    char line[512];
    int inside = 0;
    size_t huge = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = a < hi && b > lo;
            continue;
        }
        unsigned long kb;
        if (inside && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) huge += (size_t)kb << 10;
    }
    fclose(f);
    return huge;
}
