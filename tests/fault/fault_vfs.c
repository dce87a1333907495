/*
 * fault_vfs.c - see fault_vfs.h. A shim VFS: every file it opens is the real
 * VFS's file followed by our header, whose io methods pass through to the
 * real ones except xWrite and xSync, which consult the fault controls.
 */
#define _POSIX_C_SOURCE 200809L
#include "tests/fault/fault_vfs.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static sqlite3_vfs *real_vfs;
static sqlite3_vfs fault_vfs;
static sqlite3_io_methods fault_io;

static _Atomic int fault_kind;          /* ag_fault_kind while armed */
static _Atomic int64_t bytes_left = -1; /* < 0: no byte budget */
static _Atomic int64_t calls_left = -1; /* < 0: no call countdown */
static _Atomic int sync_fails;
static _Atomic unsigned delay_us;
static _Atomic uint64_t refused;

/* Our file: the real file's bytes come right after this header. */
typedef struct fault_file {
    sqlite3_file base;
    const sqlite3_io_methods *real; /* the real file's methods (they differ by file) */
} fault_file;

static sqlite3_file *real_file(sqlite3_file *f) { return (sqlite3_file *)((fault_file *)f + 1); }
#define REAL(f) (((fault_file *)(f))->real)

static int should_fail(int amt) {
    int kind = atomic_load(&fault_kind);
    if (kind == AG_FAULT_NONE) return 0;
    int64_t c = atomic_load(&calls_left);
    if (c >= 0) {
        if (c > 1) {
            atomic_fetch_sub(&calls_left, 1);
            return 0;
        }
        return kind;
    }
    int64_t b = atomic_load(&bytes_left);
    if (b >= 0) {
        if (b >= amt) {
            atomic_fetch_sub(&bytes_left, amt);
            return 0;
        }
        atomic_store(&bytes_left, 0);
        return kind;
    }
    return kind;
}

static int f_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off) {
    unsigned us = atomic_load(&delay_us);
    if (us) {
        struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    switch (should_fail(amt)) {
    case AG_FAULT_FULL: atomic_fetch_add(&refused, 1); return SQLITE_FULL;
    case AG_FAULT_EIO: atomic_fetch_add(&refused, 1); return SQLITE_IOERR_WRITE;
    default: break;
    }
    return REAL(f)->xWrite(real_file(f), buf, amt, off);
}

static int f_sync(sqlite3_file *f, int flags) {
    if (atomic_load(&sync_fails)) {
        atomic_fetch_add(&refused, 1);
        return SQLITE_IOERR_FSYNC;
    }
    return REAL(f)->xSync(real_file(f), flags);
}

/* Pass-throughs. */
static int f_close(sqlite3_file *f) { return REAL(f)->xClose(real_file(f)); }
static int f_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) {
    return REAL(f)->xRead(real_file(f), b, n, o);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 n) {
    return REAL(f)->xTruncate(real_file(f), n);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *n) { return REAL(f)->xFileSize(real_file(f), n); }
static int f_lock(sqlite3_file *f, int l) { return REAL(f)->xLock(real_file(f), l); }
static int f_unlock(sqlite3_file *f, int l) { return REAL(f)->xUnlock(real_file(f), l); }
static int f_reserved(sqlite3_file *f, int *r) {
    return REAL(f)->xCheckReservedLock(real_file(f), r);
}
static int f_fcntl(sqlite3_file *f, int op, void *a) {
    return REAL(f)->xFileControl(real_file(f), op, a);
}
static int f_sector(sqlite3_file *f) { return REAL(f)->xSectorSize(real_file(f)); }
static int f_devchar(sqlite3_file *f) { return REAL(f)->xDeviceCharacteristics(real_file(f)); }
static int f_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **p) {
    return REAL(f)->xShmMap(real_file(f), pg, sz, ext, p);
}
static int f_shmlock(sqlite3_file *f, int off, int n, int flags) {
    return REAL(f)->xShmLock(real_file(f), off, n, flags);
}
static void f_shmbarrier(sqlite3_file *f) { REAL(f)->xShmBarrier(real_file(f)); }
static int f_shmunmap(sqlite3_file *f, int del) { return REAL(f)->xShmUnmap(real_file(f), del); }
static int f_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p) {
    return REAL(f)->xFetch(real_file(f), o, n, p);
}
static int f_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) {
    return REAL(f)->xUnfetch(real_file(f), o, p);
}

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out) {
    (void)vfs;
    sqlite3_file *rf = real_file(f);
    int rc = real_vfs->xOpen(real_vfs, name, rf, flags, out);
    if (rc != SQLITE_OK) {
        f->pMethods = NULL;
        return rc;
    }
    ((fault_file *)f)->real = rf->pMethods;
    f->pMethods = rf->pMethods ? &fault_io : NULL;
    return rc;
}

static int v_delete(sqlite3_vfs *v, const char *n, int s) {
    (void)v;
    return real_vfs->xDelete(real_vfs, n, s);
}
static int v_access(sqlite3_vfs *v, const char *n, int fl, int *r) {
    (void)v;
    return real_vfs->xAccess(real_vfs, n, fl, r);
}
static int v_full(sqlite3_vfs *v, const char *n, int sz, char *out) {
    (void)v;
    return real_vfs->xFullPathname(real_vfs, n, sz, out);
}
static void *v_dlopen(sqlite3_vfs *v, const char *n) {
    (void)v;
    return real_vfs->xDlOpen(real_vfs, n);
}
static void v_dlerror(sqlite3_vfs *v, int n, char *m) {
    (void)v;
    real_vfs->xDlError(real_vfs, n, m);
}
static void (*v_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) {
    (void)v;
    return real_vfs->xDlSym(real_vfs, h, s);
}
static void v_dlclose(sqlite3_vfs *v, void *h) {
    (void)v;
    real_vfs->xDlClose(real_vfs, h);
}
static int v_random(sqlite3_vfs *v, int n, char *out) {
    (void)v;
    return real_vfs->xRandomness(real_vfs, n, out);
}
static int v_sleep(sqlite3_vfs *v, int us) {
    (void)v;
    return real_vfs->xSleep(real_vfs, us);
}
static int v_time(sqlite3_vfs *v, double *t) {
    (void)v;
    return real_vfs->xCurrentTime(real_vfs, t);
}
static int v_lasterr(sqlite3_vfs *v, int n, char *m) {
    (void)v;
    return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, m) : 0;
}
static int v_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
    (void)v;
    return real_vfs->xCurrentTimeInt64(real_vfs, t);
}

int ag_fault_vfs_install(void) {
    if (real_vfs) return SQLITE_OK;
    sqlite3_initialize();
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs) return SQLITE_ERROR;
    fault_io = (sqlite3_io_methods){.iVersion = 3,
                                    .xClose = f_close,
                                    .xRead = f_read,
                                    .xWrite = f_write,
                                    .xTruncate = f_truncate,
                                    .xSync = f_sync,
                                    .xFileSize = f_size,
                                    .xLock = f_lock,
                                    .xUnlock = f_unlock,
                                    .xCheckReservedLock = f_reserved,
                                    .xFileControl = f_fcntl,
                                    .xSectorSize = f_sector,
                                    .xDeviceCharacteristics = f_devchar,
                                    .xShmMap = f_shmmap,
                                    .xShmLock = f_shmlock,
                                    .xShmBarrier = f_shmbarrier,
                                    .xShmUnmap = f_shmunmap,
                                    .xFetch = f_fetch,
                                    .xUnfetch = f_unfetch};
    fault_vfs = (sqlite3_vfs){.iVersion = 2,
                              .szOsFile = (int)sizeof(fault_file) + real_vfs->szOsFile,
                              .mxPathname = real_vfs->mxPathname,
                              .zName = "ag_fault",
                              .xOpen = v_open,
                              .xDelete = v_delete,
                              .xAccess = v_access,
                              .xFullPathname = v_full,
                              .xDlOpen = v_dlopen,
                              .xDlError = v_dlerror,
                              .xDlSym = v_dlsym,
                              .xDlClose = v_dlclose,
                              .xRandomness = v_random,
                              .xSleep = v_sleep,
                              .xCurrentTime = v_time,
                              .xGetLastError = v_lasterr,
                              .xCurrentTimeInt64 = v_time64};
    return sqlite3_vfs_register(&fault_vfs, 1);
}

void ag_fault_writes_after_bytes(ag_fault_kind kind, uint64_t budget_bytes) {
    atomic_store(&calls_left, -1);
    atomic_store(&bytes_left, (int64_t)budget_bytes);
    atomic_store(&fault_kind, (int)kind);
}

void ag_fault_writes_after_calls(ag_fault_kind kind, uint64_t nth) {
    atomic_store(&bytes_left, -1);
    atomic_store(&calls_left, (int64_t)(nth ? nth : 1));
    atomic_store(&fault_kind, (int)kind);
}

void ag_fault_fsync(int on) { atomic_store(&sync_fails, on); }
void ag_fault_write_delay_us(unsigned us) { atomic_store(&delay_us, us); }

void ag_fault_clear(void) {
    atomic_store(&fault_kind, AG_FAULT_NONE);
    atomic_store(&bytes_left, -1);
    atomic_store(&calls_left, -1);
    atomic_store(&sync_fails, 0);
    atomic_store(&delay_us, 0);
}

uint64_t ag_fault_refused(void) { return atomic_load(&refused); }
