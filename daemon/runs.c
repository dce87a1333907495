/*
 * runs.c - which run a stream message belongs to (PROTOCOL.md 3.1). A run is
 * a name plus a launch: a client's run start names the run it asks for, its
 * launch id and whether to resume; the daemon files it under that name, under
 * the run its launch already went to, or under name.2, name.3 ... when the
 * name belongs to a run of another launch. Every later message of that client
 * is found by its client id, and each client's sequence numbers and drop
 * counter are accounted on its own. Runs on the loop.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/engine_internal.h"

/* A client id as the key of e->clients. */
/* The client id as 16 lowercase hex digits (as "%016" PRIx64 writes it). */
static void cid_key(uint64_t cid, char key[17]) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, cid >>= 4) key[i] = hex[cid & 15];
    key[16] = '\0';
}

/* "launch\x1fasked": a launch id is printable ASCII, so the first 0x1f
 * separates the two and no other pair gives the same key. */
static char *launch_key(const char *launch, const char *asked) {
    size_t ln = strlen(launch), an = strlen(asked);
    char *k = malloc(ln + an + 2);
    if (!k) return NULL;
    memcpy(k, launch, ln);
    k[ln] = '\x1f';
    memcpy(k + ln + 1, asked, an + 1);
    return k;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

run_state *ag_eng_new_run(ag_engine *e, int64_t id, const char *name, const char *asked,
                          const char *launch) {
    run_state *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->id = id;
    r->name = strdup(name);
    r->asked = strdup(asked ? asked : name);
    r->launch = dup_or_null(launch);
    r->world = 1;
    ag_map_init(&r->tensors);
    ag_map_init(&r->shards);
    if (!r->name || !r->asked || (launch && !r->launch) || ag_map_put(&e->runs, name, r)) goto fail;
    /* Ids only grow, so the run made last for a name is the newest. On a
     * failure every map is left as it was (a set on a present key cannot
     * fail). */
    run_state *newest = ag_map_get(&e->families, r->asked);
    if (ag_map_set(&e->families, r->asked, r)) {
        ag_map_remove(&e->runs, name);
        goto fail;
    }
    if (launch && ag_eng_note_launch(e, launch, r->asked, r)) {
        if (newest)
            ag_map_set(&e->families, r->asked, newest);
        else
            ag_map_remove(&e->families, r->asked);
        ag_map_remove(&e->runs, name);
        goto fail;
    }
    atomic_fetch_add(&e->counters->runs, 1);
    return r;
fail:
    free(r->name);
    free(r->asked);
    free(r->launch);
    free(r);
    return NULL;
}

int ag_eng_note_launch(ag_engine *e, const char *launch, const char *asked, run_state *r) {
    char *k = launch_key(launch, asked);
    if (!k) return AG_ENOMEM;
    int err = ag_map_set(&e->launches, k, r);
    free(k);
    return err;
}

client_state *ag_eng_new_client(ag_engine *e, uint64_t id, run_state *r) {
    client_state *cs = calloc(1, sizeof *cs);
    if (!cs) return NULL;
    cs->id = id;
    cs->run = r;
    cs->world = 1;
    char key[17];
    cid_key(id, key);
    if (ag_map_set(&e->clients, key, cs)) {
        free(cs);
        return NULL;
    }
    r->nclients++;
    return cs;
}

void ag_eng_free_client(void *client, void *ctx) {
    (void)ctx;
    free(client);
}

void ag_eng_forget_client(ag_engine *e, client_state *cs) {
    char key[17];
    cid_key(cs->id, key);
    ag_map_remove(&e->clients, key);
    cs->run->nclients--;
    ag_eng_free_client(cs, NULL);
}

/* ------------------------------------------------------------- naming */

/* The name of a new run for a trainer that asked for asked: asked itself
 * when no run has it, else asked.2, asked.3 ... (the first one free), asked
 * cut at a UTF-8 boundary where the suffix would pass AG_NAME_MAX. */
static int free_name(const ag_engine *e, const char *asked, char out[AG_NAME_MAX + 1]) {
    size_t len = strlen(asked);
    if (!ag_map_get(&e->runs, asked)) {
        memcpy(out, asked, len + 1);
        return AG_OK;
    }
    /* at most every run holds one of the names tried before a free one */
    for (unsigned long k = 2; k <= (unsigned long)MAX_RUNS + 2; k++) {
        char suffix[24];
        size_t sn = (size_t)snprintf(suffix, sizeof suffix, ".%lu", k);
        size_t keep = len;
        if (keep + sn > AG_NAME_MAX) {
            keep = AG_NAME_MAX - sn;
            while (keep > 0 && ((unsigned char)asked[keep] & 0xC0) == 0x80) keep--;
        }
        memcpy(out, asked, keep);
        memcpy(out + keep, suffix, sn + 1);
        if (!ag_map_get(&e->runs, out)) return AG_OK;
    }
    return AG_ENOSPC;
}

/* The existing run a start joins, or NULL for a new one:
 *  1. the run this launch already went to when it asked for this name;
 *  2. with resume, the newest run of that name (made for it, or named so);
 *  3. none: a new run, named asked when that is free. */
static run_state *run_to_join(ag_engine *e, const char *asked, const char *launch, int resume) {
    if (launch) {
        char *k = launch_key(launch, asked);
        run_state *r = k ? ag_map_get(&e->launches, k) : NULL;
        free(k);
        if (r) return r;
    }
    if (!resume) return NULL;
    run_state *made = ag_map_get(&e->families, asked), *named = ag_map_get(&e->runs, asked);
    if (!made) return named;
    if (!named) return made;
    return made->id > named->id ? made : named;
}

/* Queue the row of run r: a new run, or (on conflict, by name) a re-opened
 * one taking the starting client's host, pid and metadata. */
static int queue_run_row(ag_engine *e, run_state *r, const ag_msg *m) {
    ag_write_item it = {.kind = AG_W_RUN};
    it.u.run.row.id = r->id;
    it.u.run.row.client_id = m->hdr.client_id;
    it.u.run.row.world_size = r->world;
    it.u.run.name = strdup(r->name);
    it.u.run.asked = strdup(r->asked);
    it.u.run.launch = dup_or_null(r->launch);
    int start = m->type == AG_MSG_RUN_START;
    if (start) {
        it.u.run.row.pid = m->u.run_start.pid;
        it.u.run.row.started_ms = m->u.run_start.time_ms;
    } else {
        it.u.run.row.started_ms = ag_eng_wall_ms();
    }
    it.u.run.host = strdup(start && m->u.run_start.host ? m->u.run_start.host : "");
    it.u.run.metadata = strdup(start && m->u.run_start.metadata ? m->u.run_start.metadata : "{}");
    int err = (!it.u.run.name || !it.u.run.asked || (r->launch && !it.u.run.launch) ||
               !it.u.run.host || !it.u.run.metadata)
                  ? AG_ENOMEM
                  : ag_eng_push(e, &it);
    if (err) ag_write_item_clear(&it);
    return err;
}

static int queue_client_row(ag_engine *e, const client_state *cs, const char *asked,
                            const char *launch, int64_t started_ms) {
    ag_write_item it = {.kind = AG_W_CLIENT};
    it.u.client.row = (ag_store_client_row){
        .client_id = cs->id, .run_id = cs->run->id, .started_ms = started_ms, .rank = cs->rank};
    it.u.client.asked = strdup(asked);
    it.u.client.launch = dup_or_null(launch);
    int err =
        (!it.u.client.asked || (launch && !it.u.client.launch)) ? AG_ENOMEM : ag_eng_push(e, &it);
    if (err) ag_write_item_clear(&it);
    return err;
}

int ag_eng_client_for(ag_engine *e, const ag_msg *m, client_state **out) {
    char key[17];
    cid_key(m->hdr.client_id, key);
    int start = m->type == AG_MSG_RUN_START, err = AG_OK;
    client_state *cs = ag_map_get(&e->clients, key);
    if (cs) {
        /* A client belongs to one run: a start again re-opens it. */
        if (start) {
            cs->run->ended = 0;
            cs->rank = (uint32_t)m->u.run_start.rank;
            cs->world = (uint32_t)m->u.run_start.world;
            err = queue_run_row(e, cs->run, m);
        }
        *out = cs;
        return err;
    }
    /* A client not seen before: its run start, or its first message when the
     * start was lost (that one joins nothing: it has no launch id). */
    if (e->clients.count >= MAX_CLIENTS) return AG_ENOSPC;
    const char *asked = m->hdr.run;
    const char *launch = start ? m->u.run_start.launch : NULL;
    int resume = start && m->u.run_start.resume;
    run_state *r = run_to_join(e, asked, launch, resume);
    int made = 0;
    if (!r) {
        char name[AG_NAME_MAX + 1];
        if (e->runs.count >= MAX_RUNS) return AG_ENOSPC;
        if ((err = free_name(e, asked, name))) return err;
        if (!(r = ag_eng_new_run(e, e->next_run_id + 1, name, asked, launch))) return AG_ENOMEM;
        e->next_run_id++;
        made = 1;
        /* the run's world is its first client's (the codec bounds it) */
        if (start) r->world = (uint32_t)m->u.run_start.world;
        if (strcmp(name, asked) != 0)
            ag_log(e->log, AG_LOG_INFO, "run %s is another launch's: filed as %s", asked, name);
    } else if (launch && (err = ag_eng_note_launch(e, launch, asked, r))) {
        return err; /* a resume: this launch's later clients join it too */
    }
    if (start) r->ended = 0;
    if ((made || start) && (err = queue_run_row(e, r, m))) return err;
    if (!(cs = ag_eng_new_client(e, m->hdr.client_id, r))) return AG_ENOMEM;
    if (start) {
        cs->rank = (uint32_t)m->u.run_start.rank;
        cs->world = (uint32_t)m->u.run_start.world;
        if (cs->world != r->world)
            ag_log(e->log, AG_LOG_WARNING,
                   "run %s has %u ranks but client %016" PRIx64 " says %u: its shards are "
                   "not filed",
                   r->name, r->world, cs->id, cs->world);
    }
    int64_t t = start && m->u.run_start.time_ms ? m->u.run_start.time_ms : ag_eng_wall_ms();
    if ((err = queue_client_row(e, cs, asked, launch, t))) return err;
    *out = cs;
    return AG_OK;
}

/* ------------------------------------------------- sequence accounting */

int ag_eng_queue_drop(ag_engine *e, client_state *cs, uint64_t first_seq, uint64_t count,
                      const char *reason) {
    run_state *r = cs->run;
    ag_write_item it = {.kind = AG_W_DROP};
    it.u.drop.run_id = r->id;
    it.u.drop.client_id = cs->id;
    it.u.drop.at_ms = ag_eng_wall_ms();
    it.u.drop.first_seq = first_seq;
    it.u.drop.count = count;
    it.u.drop.reason = reason;
    r->dropped += count;
    atomic_fetch_add(&e->counters->dropped, count);
    ag_log(e->log, AG_LOG_WARNING, "run %s: %llu messages dropped (%s) before seq %llu", r->name,
           (unsigned long long)count, reason, (unsigned long long)(first_seq + count));
    return ag_eng_push(e, &it);
}

/* The drop counter's increase over the last one seen (restored from the
 * store after a restart) is added; a counter that went down re-bases; an
 * unknown one (a client from before schema version 3) is taken as the base. */
int ag_eng_account(ag_engine *e, client_state *cs, const ag_msg *m) {
    const ag_stream_hdr *h = &m->hdr;
    int new_session = m->type == AG_MSG_RUN_START || !cs->has_seq;
    uint64_t expected = new_session ? 0 : cs->last_seq + 1;
    if (!new_session && h->seq < expected) return AG_ERANGE;
    int err = AG_OK;
    if (h->seq > expected)
        err = ag_eng_queue_drop(e, cs, expected, h->seq - expected, "sequence gap");
    uint64_t seen = cs->drop_known ? cs->last_drop : 0;
    if (!err && (cs->drop_known || new_session) && h->dropped > seen)
        err = ag_eng_queue_drop(e, cs, h->seq, h->dropped - seen, "client queue full");
    cs->last_seq = h->seq;
    cs->has_seq = 1;
    cs->last_drop = h->dropped;
    cs->drop_known = 1;
    cs->run->messages++;
    /* filed under its run (its rows follow): what q_delivery counts, once
     * committed; a message refused here is not */
    if (!err) cs->delivered++;
    return err;
}
