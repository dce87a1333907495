/*
 * fault_vfs.h - test-only SQLite VFS that wraps the default one and injects
 * the failures a real disk produces, the way SQLite's own test VFSes do:
 * writes that fail with "disk full" or EIO once a byte budget is spent (or
 * from the Nth write call), fsyncs that fail, and slow writes. Installed as
 * the default VFS, so code under test opens databases as usual.
 *
 * The controls are atomics: a test flips them while another thread writes.
 */
#ifndef AG_TESTS_FAULT_VFS_H
#define AG_TESTS_FAULT_VFS_H

#include <stdint.h>

typedef enum ag_fault_kind {
    AG_FAULT_NONE = 0,
    AG_FAULT_FULL = 1, /* writes fail SQLITE_FULL (ENOSPC) */
    AG_FAULT_EIO = 2   /* writes fail SQLITE_IOERR_WRITE (EIO) */
} ag_fault_kind;

/* Register the fault VFS as SQLite's default (once per process). */
int ag_fault_vfs_install(void);
/* From now on, once `budget_bytes` more bytes were written (0: at once), every
 * write fails with `kind`, until ag_fault_clear(). */
void ag_fault_writes_after_bytes(ag_fault_kind kind, uint64_t budget_bytes);
/* From now on the `nth` write call (1 = the next) and every later one fails. */
void ag_fault_writes_after_calls(ag_fault_kind kind, uint64_t nth);
/* Every xSync fails with SQLITE_IOERR_FSYNC while on. */
void ag_fault_fsync(int on);
/* Each write sleeps this long first (a slow disk); 0: off. */
void ag_fault_write_delay_us(unsigned us);
/* Space is back and the disk is healthy: no fault, no delay. */
void ag_fault_clear(void);
/* Writes and syncs refused since install (a test's proof the fault fired). */
uint64_t ag_fault_refused(void);

#endif
