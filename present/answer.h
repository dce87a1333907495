/*
 * answer.h - internal: a query answered from a store (schema/), by the one
 * dispatch that proto/queries.h generates. The daemon's query workers, its
 * HTTP API and the CLI's --db mode all answer through it, so a query is
 * answered alike whoever asks.
 */
#ifndef AG_PRESENT_ANSWER_H
#define AG_PRESENT_ANSWER_H

#include <stddef.h>

#include "proto/proto.h"
#include "schema/store.h"

/*
 * Answers the decoded or built request req from st into reply: its type
 * and its result (a root for ag_answer_free, or r_delivery's values); its
 * version is left as the caller set it. AG_EPROTO when req is no query,
 * AG_EINVAL when a required parameter is missing, else what the store
 * returned (its text in ag_store_errmsg(st)). On failure reply holds
 * nothing to free.
 */
int ag_answer(ag_store *st, const ag_msg *req, ag_msg *reply);
/* Frees the result ag_answer left in reply (safe on a zeroed reply). */
void ag_answer_free(ag_msg *reply);

/*
 * What a request asked about, for "not found" lines: each named parameter
 * as "run 'r1', tensor 'fc1.weight', format 'E5M2'"; "" when it names none.
 */
void ag_answer_describe(const ag_msg *req, char *buf, size_t cap);

#endif
