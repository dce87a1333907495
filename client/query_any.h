/*
 * query_any.h - internal to client/ (and its CLI): any query of
 * proto/queries.h asked by its request message, the one path every
 * ag_client_* query takes. Not in altgrad.h and not exported from the
 * shared library; the CLI links the static one.
 */
#ifndef AG_CLIENT_QUERY_ANY_H
#define AG_CLIENT_QUERY_ANY_H

#include "altgrad/altgrad.h"
#include "proto/proto.h"

/*
 * Checks req's parameters by its table (names 1..AG_NAME_MAX bytes, format
 * names), sends it and waits for its reply within the query timeout, as the
 * ag_client_* queries of altgrad.h do (same errors, same text in
 * ag_client_last_error). On success *reply holds the decoded reply: its
 * result is ag_msg_result(reply), handed over with ag_msg_take_result; clear
 * it with ag_msg_clear. On failure *reply holds nothing.
 */
int ag_client_ask(ag_client *c, const ag_msg *req, ag_msg *reply);

#endif
