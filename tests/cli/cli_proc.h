/*
 * cli_proc.h - for the CLI's end-to-end tests: a temporary folder with the
 * sockets and database of a real altgradd (started and stopped here), and
 * programs (the altgrad CLI, the demo trainer) run as subprocesses with
 * their output collected from files. Needs $AG_BUILD_DIR (set by ctest).
 */
#ifndef AG_TESTS_CLI_PROC_H
#define AG_TESTS_CLI_PROC_H

#include <sys/types.h>

#define CLI_POLL_TRIES 300 /* x 50 ms: a bound on waiting, not a timing assertion */

typedef struct cli_env {
    char dir[64];     /* the temporary folder, removed by cli_env_fini */
    char ingest[128]; /* ipc:// URLs in dir */
    char query[128];
    char db[128];  /* the database file in dir */
    char cli[512]; /* the programs of $AG_BUILD_DIR */
    char daemon_bin[512];
    char trainer[512];
    pid_t daemon_pid; /* -1 when no daemon runs */
} cli_env;

/* Makes the folder and the paths (fails the test without $AG_BUILD_DIR). */
void cli_env_init(cli_env *e);
/* Kills a daemon still running (SIGKILL), removes the folder. */
void cli_env_fini(cli_env *e);

/* Wait a little between two polls. */
void cli_pause(void);
/* The whole file as a string (free it); "" when it cannot be read. */
char *cli_slurp(const char *path);
/* Runs argv to completion; *out and *err get its stdout and stderr (free
 * them). Returns the exit status, or 128 + the signal that ended it. */
int cli_run(const cli_env *e, char *const argv[], char **out, char **err);
/* Starts altgradd on e's sockets and database with HTTP off and the extra
 * arguments (NULL-terminated, or NULL), and waits until it answers status. */
void cli_start_daemon(cli_env *e, const char *const *extra);
/* SIGTERM to the daemon; returns its exit status. */
int cli_stop_daemon(cli_env *e);
/* Asserts err is exactly one line starting with "altgrad: ". */
void cli_assert_one_error_line(const char *err);

#endif
