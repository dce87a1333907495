/*
 * open_quiet.h - internal to client/ (and its CLI): opening a client without
 * the one-line notice ag_client_open prints when no daemon is found, for a
 * tool that says so itself (the CLI's query errors name the socket). Not in
 * altgrad.h and not exported from the shared library; the CLI links the
 * static one.
 */
#ifndef AG_CLIENT_OPEN_QUIET_H
#define AG_CLIENT_OPEN_QUIET_H

#include "altgrad/altgrad.h"

/* ag_client_open, silent when quiet != 0. */
int ag_client_open_quiet(ag_client **out, const ag_client_opts *opts, int quiet);

#endif
