/*
 * store.c - opening the altgrad SQLite store: WAL mode, numbered migrations
 * from schema/NNN_*.sql (PRAGMA user_version), the per-connection cache of
 * prepared statements and transactions. Rows and queries live in
 * store_write.c, store_query.c and store_restore.c.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "schema/store_internal.h"

/* Every SQL text the store runs, besides the migrations and the results
 * segments' own (store_seg.c). */
static const char *const sql_text[AG_ST_COUNT] = {
    [AG_ST_BEGIN] = "BEGIN IMMEDIATE",
    [AG_ST_BEGIN_READ] = "BEGIN",
    [AG_ST_COMMIT] = "COMMIT",
    [AG_ST_ROLLBACK] = "ROLLBACK",
    [AG_ST_PUT_FORMAT] =
        "INSERT OR IGNORE INTO formats(id,name,exponent_bits,mantissa_bits,bias,has_inf,"
        "has_nan) VALUES(?1,?2,?3,?4,?5,?6,?7)",
    [AG_ST_PUT_RUN] =
        "INSERT INTO runs(id,name,host,pid,client_id,started_ms,metadata,launch_id,asked,"
        "world_size) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10) ON CONFLICT(name) DO UPDATE SET"
        " host=excluded.host, pid=excluded.pid, client_id=excluded.client_id,"
        " metadata=excluded.metadata, ended_ms=0",
    [AG_ST_PUT_CLIENT] =
        "INSERT INTO clients(client_id,run_id,launch_id,asked,started_ms,rank)"
        " VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(client_id) DO UPDATE SET"
        " run_id=excluded.run_id, launch_id=excluded.launch_id, asked=excluded.asked,"
        " started_ms=excluded.started_ms, rank=excluded.rank, last_seq=0, last_drop=NULL,"
        " ended=0",
    [AG_ST_CLIENT_DELTA] =
        "UPDATE clients SET last_seq=?2, last_drop=CASE WHEN ?3 THEN ?4 ELSE last_drop END,"
        " ended=?5, delivered=delivered+?6,"
        " delivered_seq=CASE WHEN ?6>0 THEN max(delivered_seq,?2) ELSE delivered_seq END"
        " WHERE client_id=?1",
    [AG_ST_CLIENT_RUN] =
        "SELECT r.name, coalesce(c.launch_id,'') FROM clients c JOIN runs r ON r.id=c.run_id"
        " WHERE c.client_id=?1",
    [AG_ST_PUT_TENSOR] = "INSERT INTO tensors(id,run_id,name,role) VALUES(?1,?2,?3,?4)"
                         " ON CONFLICT DO NOTHING",
    [AG_ST_PUT_STATS] = "INSERT OR REPLACE INTO stats VALUES(?1,?2,?3,?4,?5,?6,?7)",
    [AG_ST_PUT_DROP] = "INSERT INTO drops VALUES(?1,?2,?3,?4,?5,?6)",
    [AG_ST_PUT_SCALE] = "INSERT OR REPLACE INTO scales VALUES(?1,?2,?3,?4,?5,?6)",
    [AG_ST_PUT_SNAPSHOT] = "INSERT OR REPLACE INTO snapshots VALUES(?1,?2,?3,?4)",
    [AG_ST_RUN_DELTA] =
        "UPDATE runs SET messages=messages+?2, dropped=dropped+?3,"
        " last_step=max(last_step,?4), ended_ms=CASE WHEN ?5<>0 THEN ?5 ELSE ended_ms END"
        " WHERE id=?1",
    [AG_ST_TENSOR_DELTA] =
        "UPDATE tensors SET role=?2, numel=?3, first_step=min(coalesce(first_step,?4),?4),"
        " last_step=max(last_step,?5), snapshots=snapshots+?6, last_amax=?7 WHERE id=?1",
    [AG_ST_ADD_COUNTER] = "INSERT INTO counters(name,value) VALUES(?1,?2)"
                          " ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
    [AG_ST_PUT_DAEMON_SETTING] = "INSERT INTO daemon_settings(name,value) VALUES(?1,?2)"
                                 " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
    [AG_ST_RUNS] = "SELECT name,host,pid,client_id,started_ms,ended_ms,last_step,messages,dropped,"
                   "metadata,world_size,(SELECT count(DISTINCT c.rank) FROM clients c WHERE"
                   " c.run_id=runs.id),id,(SELECT count(*) FROM drops d WHERE d.run_id=runs.id)"
                   " FROM runs ORDER BY started_ms, id",
    [AG_ST_RUN_RANK_DROPS] = "SELECT c.rank, sum(d.count) FROM drops d JOIN clients c ON"
                             " c.client_id=d.client_id WHERE d.run_id=?1 GROUP BY c.rank"
                             " HAVING sum(d.count)>0 ORDER BY c.rank",
    /* from the widest rollup tier (a few rows per tensor and format, exact;
     * rollups_sealed and rollup_heads by name: SQLite pushes no IN (SELECT)
     * into the view's arms, it would scan them whole):
     * per tensor, the incomplete rows of its format that has most (a step's
     * rows are filed in every format of the step together) */
    [AG_ST_RUN_INCOMPLETE] =
        "SELECT coalesce(sum(m),0) FROM (SELECT max(s) AS m FROM (SELECT tensor_id, format_id,"
        " sum(x) AS s FROM (SELECT tensor_id, format_id, incomplete_rows AS x FROM rollups_sealed"
        " WHERE width=" AG_ROLLUP_W3_SQL " AND tensor_id IN (SELECT id FROM tensors WHERE"
        " run_id=?1) UNION ALL SELECT tensor_id, format_id, incomplete_rows3 FROM rollup_heads"
        " WHERE b3 IS NOT NULL AND tensor_id IN (SELECT id FROM tensors WHERE run_id=?1))"
        " GROUP BY tensor_id, format_id) GROUP BY tensor_id)",
    /* the same from the raw rows (a file read without rollups) */
    [AG_ST_RUN_INCOMPLETE_RAW] =
        "SELECT coalesce(sum(m),0) FROM (SELECT max(s) AS m FROM (SELECT tensor_id, count(*) AS s"
        " FROM results WHERE tensor_id IN (SELECT id FROM tensors WHERE run_id=?1) AND complete=0"
        " GROUP BY tensor_id, format_id) GROUP BY tensor_id)",
    [AG_ST_RUN_BY_NAME] = "SELECT id FROM runs WHERE name=?1",
    [AG_ST_FORMAT_BY_NAME] = "SELECT id FROM formats WHERE name=?1",
    [AG_ST_TENSOR_BY_NAME] = "SELECT id FROM tensors WHERE run_id=?1 AND name=?2",
    [AG_ST_TENSORS] = "SELECT name,role,numel,coalesce(first_step,0),last_step,snapshots,last_amax"
                      " FROM tensors WHERE run_id=?1 ORDER BY name",
    [AG_ST_HISTORY] = "SELECT step,stalled,total,flips,overflow,underflow,nonfinite,amax,scale"
                      ",source,ranks,complete,mse,sqnr_db FROM results WHERE tensor_id=?1"
                      " AND format_id=?2"
                      " AND step BETWEEN ?3 AND ?4 ORDER BY step",
    [AG_ST_SCALES] = "SELECT t.name,s.step,s.amax,s.scale FROM tensors t JOIN scales s"
                     " ON s.tensor_id=t.id AND s.format_id=?2 WHERE t.run_id=?1"
                     " ORDER BY t.name, s.step DESC, s.role",
    [AG_ST_TOP_LAST_STEP] = "SELECT last_step FROM runs WHERE id=?1",
    [AG_ST_COUNTER] = "SELECT value FROM counters WHERE name=?1",
    [AG_ST_STATUS_COUNTS] = "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM tensors),"
                            " (SELECT coalesce(sum(messages),0) FROM runs),"
                            " (SELECT coalesce(sum(dropped),0) FROM runs)",
    [AG_ST_FORMATS] = "SELECT id,name,exponent_bits,mantissa_bits,bias,has_inf,has_nan FROM formats"
                      " ORDER BY id",
    [AG_ST_DAEMON_SETTING] = "SELECT value FROM daemon_settings WHERE name=?1",
    [AG_ST_ALL_RUNS] = "SELECT id,name,coalesce(asked,name),launch_id,last_step,ended_ms,"
                       "world_size FROM runs ORDER BY id",
    [AG_ST_ALL_LAUNCHES] =
        "SELECT launch_id,asked,max(run_id) FROM clients WHERE launch_id IS NOT NULL"
        " GROUP BY launch_id,asked",
    [AG_ST_ALL_CLIENTS] =
        "SELECT client_id,run_id,last_seq,last_drop,rank FROM clients WHERE ended=0",
    [AG_ST_ALL_TENSORS] = "SELECT id,run_id,name,role FROM tensors ORDER BY id",
    [AG_ST_HISTORY_TAIL] = "SELECT amax,numel,nonfinite FROM stats WHERE tensor_id=?1 AND role=?2"
                           " ORDER BY step DESC LIMIT ?3",
    [AG_ST_ALL_SCALES] = "SELECT tensor_id,format_id,role,step,amax,scale FROM scales",
    [AG_ST_ALL_SNAPSHOTS] = "SELECT tensor_id,step,numel,weights FROM snapshots",
    /* per (tensor, format): newest result step, and the scale of the result
     * at the tensor's stored snapshot step (NULL when none); primary-key
     * lookups only */
    [AG_ST_LAST_RESULTS] =
        "SELECT t.id, f.id, (SELECT g.last_step FROM result_segs g WHERE g.tensor_id=t.id AND"
        " g.format_id=f.id ORDER BY g.first_step DESC LIMIT 1) AS last, (SELECT r.scale FROM"
        " snapshots s JOIN results r ON r.tensor_id=s.tensor_id AND r.format_id=f.id AND"
        " r.step=s.step WHERE s.tensor_id=t.id) FROM tensors t, formats f WHERE last IS NOT"
        " NULL",
    [AG_ST_MAX_IDS] = "SELECT (SELECT coalesce(max(id),0) FROM runs), (SELECT coalesce(max(id),0)"
                      " FROM tensors), (SELECT coalesce(max(id),0) FROM formats)",
    [AG_ST_DELIVERY] = "SELECT delivered,delivered_seq FROM clients WHERE client_id=?1",
    [AG_ST_ROLLUP_UPSERT] =
        "INSERT INTO rollups_sealed VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,"
        "?17,"
        "?18,?19,?20,?21,?22,?23) ON CONFLICT DO UPDATE SET rows=rows+excluded.rows,"
        " stalled=stalled+excluded.stalled, total=total+excluded.total,"
        " flips=flips+excluded.flips, flips_unknown=flips_unknown+excluded.flips_unknown,"
        " overflow=overflow+excluded.overflow, underflow=underflow+excluded.underflow,"
        " nonfinite=nonfinite+excluded.nonfinite, first_step=min(first_step,excluded.first_step),"
        " last_step=max(last_step,excluded.last_step), amax_min=min(amax_min,excluded.amax_min),"
        " amax_max=max(amax_max,excluded.amax_max), amax_last=CASE WHEN"
        " excluded.last_step>=last_step THEN excluded.amax_last ELSE amax_last END,"
        " scale_min=min(scale_min,excluded.scale_min), scale_max=max(scale_max,"
        "excluded.scale_max), scale_last=CASE WHEN excluded.last_step>=last_step THEN"
        " excluded.scale_last ELSE scale_last END, device_rows=device_rows+excluded.device_rows,"
        " incomplete_rows=incomplete_rows+excluded.incomplete_rows,"
        " ranks_min=min(ranks_min,excluded.ranks_min)",
/* A tier's sealed buckets in order (the primary key's), then its open
 * bucket (newer than every sealed one) from the heads: the view rollups
 * would add a sort to every call of the walk. */
#define ROLLUP_RANGE_SQL                                                                           \
    "SELECT bucket,rows,stalled,total,flips,flips_unknown,overflow,underflow,nonfinite,"           \
    "first_step,last_step,amax_last,scale_last,device_rows,incomplete_rows,ranks_min FROM "        \
    "rollups_sealed WHERE tensor_id=?1 AND format_id=?2 AND width=?3 AND bucket BETWEEN ?4 AND ?5" \
    " ORDER BY bucket"
    [AG_ST_ROLLUP_L1] = ROLLUP_RANGE_SQL,
    [AG_ST_ROLLUP_L2] = ROLLUP_RANGE_SQL,
    [AG_ST_ROLLUP_L3] = ROLLUP_RANGE_SQL,
#define HEAD_RANGE_SQL(k)                                                                          \
    "SELECT b" #k ",rows" #k ",stalled" #k ",total" #k ",flips" #k ",flips_unknown" #k             \
    ",overflow" #k ",underflow" #k ",nonfinite" #k ",first_step" #k ",last_step" #k                \
    ",amax_last" #k ",scale_last" #k ",device_rows" #k ",incomplete_rows" #k ",ranks_min" #k       \
    " FROM rollup_heads"                                                                           \
    " WHERE tensor_id=?1 AND format_id=?2 AND ?3>0 AND b" #k " BETWEEN ?4 AND ?5"
    [AG_ST_HEAD_L1] = HEAD_RANGE_SQL(1),
    [AG_ST_HEAD_L2] = HEAD_RANGE_SQL(2),
    [AG_ST_HEAD_L3] = HEAD_RANGE_SQL(3),
#undef HEAD_RANGE_SQL
    [AG_ST_RAW_RANGE] =
        "SELECT step,1,stalled,total,flips,flips IS NULL,overflow,underflow,nonfinite,step,step,"
        "amax,scale,source,1-complete,ranks FROM results WHERE tensor_id=?1 AND format_id=?2 AND "
        "step BETWEEN ?4 "
        "AND ?5"
        " AND ?3=1 ORDER BY step",
    [AG_ST_RUN_TENSOR_IDS] = "SELECT id,name,snapshots FROM tensors WHERE run_id=?1 ORDER BY name",
    [AG_ST_REPORT_SQNR] = "SELECT sqnr_db FROM results WHERE tensor_id=?1 AND format_id=?2"
                          " AND step=?3",
    /* the two tables behind the view rollups by name (see RUN_INCOMPLETE) */
    [AG_ST_HEAT_TIER] =
        "SELECT tensor_id,bucket,stalled,total,rows FROM rollups_sealed WHERE tensor_id IN (SELECT"
        " id FROM tensors WHERE run_id=?1) AND format_id=?2 AND width=?3 AND bucket BETWEEN ?4 AND"
        " ?5"
#define HEAD_ARM(k, w)                                                                             \
    " UNION ALL SELECT tensor_id,b" #k ",stalled" #k ",total" #k ",rows" #k " FROM rollup_heads"   \
    " WHERE ?3=" w " AND tensor_id IN (SELECT id FROM tensors WHERE run_id=?1) AND format_id=?2"   \
    " AND b" #k " BETWEEN ?4 AND ?5"
    HEAD_ARM(1, AG_ROLLUP_W1_SQL) HEAD_ARM(2, AG_ROLLUP_W2_SQL) HEAD_ARM(3, AG_ROLLUP_W3_SQL),
#undef HEAD_ARM
    [AG_ST_HEAT_RAW] = "SELECT tensor_id,step,stalled,total,1 FROM results WHERE"
                       " tensor_id IN (SELECT id FROM tensors WHERE run_id=?1) AND format_id=?2"
                       " AND ?3=1 AND step BETWEEN ?4 AND ?5",
    /* the raw rows of a heatmap finer than every tier: the segments whole,
     * decoded by the query (the virtual table's row-by-row calls cost ten
     * times the decoding) */
    [AG_ST_HEAT_SEGS] = "SELECT tensor_id,first_step,data FROM result_segs WHERE tensor_id IN"
                        " (SELECT id FROM tensors WHERE run_id=?1) AND format_id=?2 AND"
                        " last_step>=?3 AND first_step<=?4",
    [AG_ST_RUN_HORIZON] = "SELECT coalesce(max(step),0) FROM raw_horizon WHERE tensor_id IN"
                          " (SELECT id FROM tensors WHERE run_id=?1)",
    [AG_ST_RUN_SPAN] = "SELECT (SELECT min(first_step) FROM tensors WHERE run_id=?1 AND"
                       " snapshots>0), last_step FROM runs WHERE id=?1",
    [AG_ST_PRUNE_TARGETS] =
        "SELECT t.id, r.last_step, coalesce(h.step,0) FROM tensors t JOIN runs r ON r.id=t.run_id"
        " LEFT JOIN raw_horizon h ON h.tensor_id=t.id WHERE t.id>?1 ORDER BY t.id",
    [AG_ST_PRUNE_STATS] = "DELETE FROM stats WHERE tensor_id=?1 AND role IN (0,1,2,3) AND step<?2",
#define ROWS2(r) r "," r
#define ROWS4(r) ROWS2(ROWS2(r))
#define ROWS8(r) ROWS2(ROWS4(r))
#define ROWS16(r) ROWS2(ROWS8(r))
    [AG_ST_PUT_STATS_N] = "INSERT OR REPLACE INTO stats VALUES" ROWS16("(?,?,?,?,?,?,?)"),
#undef ROWS16
#undef ROWS8
#undef ROWS4
#undef ROWS2
    /* the open bucket of each tier of a tensor and format (012_rollup_heads.sql) */
    [AG_ST_HEAD_GET] =
        "SELECT b1,rows1,stalled1,total1,flips1,flips_unknown1,overflow1,underflow1,"
        "nonfinite1,first_step1,last_step1,amax_min1,amax_max1,amax_last1,scale_min1,"
        "scale_max1,scale_last1,device_rows1,incomplete_rows1,ranks_min1,b2,rows2,"
        "stalled2,total2,flips2,flips_unknown2,overflow2,underflow2,nonfinite2,"
        "first_step2,last_step2,amax_min2,amax_max2,amax_last2,scale_min2,scale_max2,"
        "scale_last2,device_rows2,incomplete_rows2,ranks_min2,b3,rows3,stalled3,total3,"
        "flips3,flips_unknown3,overflow3,underflow3,nonfinite3,first_step3,last_step3,"
        "amax_min3,amax_max3,amax_last3,scale_min3,scale_max3,scale_last3,device_rows3,"
        "incomplete_rows3,"
        "ranks_min3 FROM rollup_heads WHERE tensor_id=?1 AND format_id=?2",
    [AG_ST_HEAD_PUT] =
        "INSERT OR REPLACE INTO rollup_heads VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,"
        "?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26,?27,?28,?29,?30,"
        "?31,?32,?33,?34,?35,?36,?37,?38,?39,?40,?41,?42,?43,?44,?45,?46,?47,?48,?49,"
        "?50,?51,?52,?53,?54,?55,?56,?57,?58,?59,?60,?61,?62)",
    [AG_ST_SEALED_MAX] = "SELECT max(bucket) FROM rollups_sealed WHERE tensor_id=?1 AND"
                         " format_id=?2 AND width=?3",
    [AG_ST_PUT_HORIZON] = "INSERT INTO raw_horizon VALUES(?1,?2) ON CONFLICT DO UPDATE SET"
                          " step=max(step,excluded.step)",
};

int ag_store_schema_version(void) {
    return ag_store_migration_count ? ag_store_migration_numbers[ag_store_migration_count - 1] : 0;
}

const char *ag_store_errmsg(const ag_store *st) {
    return st ? ag_errctx_text(&st->err) : "no store";
}

int ag_store_failure_is_transient(const ag_store *st) {
    if (!st) return 0;
    switch (st->last_rc & 0xff) {
    case SQLITE_FULL:  /* disk or quota full: space may come back */
    case SQLITE_IOERR: /* an I/O error (EIO, a failed fsync) */
    case SQLITE_BUSY:  /* another connection holds the lock */
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_CANTOPEN: /* e.g. the WAL or a temp file could not be created */
    case SQLITE_PROTOCOL:
    case SQLITE_READONLY: /* a filesystem remounted read-only */ return 1;
    default: return 0;
    }
}

int ag_store_failf(ag_store *st, int err, const char *fmt, ...) {
    char text[AG_ERRCTX_TEXT_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return ag_errctx_set(&st->err, err, "%s", text);
}

int ag_store_fail(ag_store *st, const char *what, int rc) {
    st->last_rc = rc;
    const char *msg = st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc);
    return ag_errctx_set(&st->err, (rc & 0xff) == SQLITE_NOMEM ? AG_ENOMEM : AG_ESTORE,
                         "%s: %s: %s", st->path ? st->path : "store", what, msg);
}

sqlite3_stmt *ag_store_stmt(ag_store *st, ag_stmt_id id) {
    sqlite3_stmt *s = st->stmts[id];
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return s;
    }
    int rc = sqlite3_prepare_v3(st->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL);
    if (rc != SQLITE_OK) {
        ag_store_fail(st, "prepare", rc);
        return NULL;
    }
    st->stmts[id] = s;
    return s;
}

int ag_store_exec_stmt(ag_store *st, sqlite3_stmt *s, const char *what) {
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) {
        int err = ag_store_fail(st, what, rc);
        sqlite3_reset(s);
        return err;
    }
    sqlite3_reset(s);
    return AG_OK;
}

static int exec_sql(ag_store *st, const char *sql, const char *what) {
    char *msg = NULL;
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        st->last_rc = rc;
        ag_errctx_set(&st->err, (rc & 0xff) == SQLITE_NOMEM ? AG_ENOMEM : AG_ESTORE, "%s: %s: %s",
                      st->path, what, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return st->err.code;
    }
    return AG_OK;
}

int ag_store_user_version(ag_store *st, int *version) {
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc != SQLITE_OK) return ag_store_fail(st, "user_version", rc);
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        int err = ag_store_fail(st, "user_version", rc);
        sqlite3_finalize(s);
        return err;
    }
    *version = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    return AG_OK;
}

/* Apply the migrations numbered above user_version, in order, each in its
 * own transaction together with its user_version bump (to its number), so a
 * crash leaves a whole version. Numbers may skip (a branch's migration ahead
 * of another's): the version is the newest number applied. */
static int migrate(ag_store *st) {
    int version = 0, err;
    if ((err = ag_store_user_version(st, &version))) return err;
    int newest = ag_store_schema_version();
    if (version > newest)
        return ag_store_failf(st, AG_ESTORE,
                              "%s: schema version %d is newer than this altgrad (%d)", st->path,
                              version, newest);
    for (size_t i = 0; i < ag_store_migration_count; i++) {
        if (ag_store_migration_numbers[i] <= version) continue;
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version=%d", ag_store_migration_numbers[i]);
        if ((err = exec_sql(st, "BEGIN IMMEDIATE", "migrate"))) return err;
        if ((err = exec_sql(st, ag_store_migrations[i], "migrate")) ||
            (err = exec_sql(st, bump, "migrate")) || (err = exec_sql(st, "COMMIT", "migrate"))) {
            sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
            return err;
        }
    }
    return AG_OK;
}

int ag_store_open(ag_store **out, const char *path, int flags) {
    if (!out) return AG_EINVAL;
    *out = NULL;
    if (!path || !*path) return AG_EINVAL;
    ag_store *st = calloc(1, sizeof *st);
    if (!st) return AG_ENOMEM;
    *out = st;
    st->path = strdup(path);
    if (!st->path) return AG_ENOMEM;
    st->readonly = (flags & AG_STORE_READONLY) != 0;

    struct stat sb;
    if (stat(path, &sb) != 0 && (st->readonly || !(flags & AG_STORE_CREATE)))
        return ag_store_failf(st, AG_ESTORE, "%s: no such database file", path);

    int oflags = SQLITE_OPEN_NOMUTEX |
                 (st->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(path, &st->db, oflags, NULL);
    if (rc != SQLITE_OK) return ag_store_fail(st, "open", rc);
    sqlite3_extended_result_codes(st->db, 1);
    /* `results` of schema 11 is a virtual table over the segments; the
     * migration to it packs the old rows with ag_seg_pack */
    if ((rc = ag_seg_register(st->db)) != SQLITE_OK) return ag_store_fail(st, "open", rc);
    st->seg.db = st->db;
    /* Readers wait for the writer's checkpoints instead of failing. */
    sqlite3_busy_timeout(st->db, 5000);
    /* Pages are read through a map of the file rather than copied in by
     * read(): whole-run queries of a short-lived reader (altgrad --db) start
     * with a cold page cache. */
    sqlite3_exec(st->db, "PRAGMA mmap_size=1073741824", NULL, NULL, NULL);

    int err;
    if (flags & AG_STORE_CHECKPOINTER) {
        /* the writer's file, open and migrated: checkpoints only */
        if (st->readonly) return AG_EINVAL;
        int version = 0;
        if ((err = ag_store_user_version(st, &version))) return err;
        if (version != ag_store_schema_version())
            return ag_store_failf(st, AG_ESTORE, "%s: checkpointer: schema version %d, not %d",
                                  path, version, ag_store_schema_version());
        return AG_OK;
    }
    if (st->readonly) {
        int version = 0;
        if ((err = ag_store_user_version(st, &version))) return err;
        if (version == 0) return ag_store_failf(st, AG_ESTORE, "%s: not an altgrad database", path);
        if (version > ag_store_schema_version())
            return ag_store_failf(st, AG_ESTORE,
                                  "%s: schema version %d is newer than this altgrad (%d)", path,
                                  version, ag_store_schema_version());
        /* A reader does not migrate: an older file is answered from raw rows,
         * through a temporary view (searched before main) that gives results
         * the columns later versions added: before schema 7 every result was
         * computed by the daemon (source 0), before 9 every run had one rank
         * and every row was whole, before 10 no quantization error was
         * stored (NULL, unknown). */
        const char *results_view =
            version < 7    ? "CREATE TEMP VIEW results AS SELECT *, 0 AS source, 1 AS ranks,"
                             " 1 AS complete, NULL AS mse, NULL AS sqnr_db FROM main.results"
            : version < 9  ? "CREATE TEMP VIEW results AS SELECT *, 1 AS ranks, 1 AS complete,"
                             " NULL AS mse, NULL AS sqnr_db FROM main.results"
            : version < 10 ? "CREATE TEMP VIEW results AS SELECT *, NULL AS mse, NULL AS sqnr_db"
                             " FROM main.results"
                           : NULL;
        if (results_view && (err = exec_sql(st, results_view, "results of an older schema")))
            return err;
        if (version < 9 &&
            (err = exec_sql(st,
                            "CREATE TEMP VIEW runs AS SELECT *, 1 AS world_size FROM main.runs;"
                            "CREATE TEMP VIEW clients AS SELECT *, 0 AS rank FROM main.clients",
                            "runs of schema 8")))
            return err;
        /* Rollups of schema 8 to 12 have tiers of 10, 100 and 1000 steps:
         * a reader that does not migrate answers from raw rows (exact,
         * slower); the daemon migrates the file at its next start. */
        st->has_rollups = version >= 13;
        st->has_segs = version >= 11;
        return AG_OK;
    }
    /* WAL: readers never block the writer; NORMAL sync keeps every commit
     * across a process kill (only power loss may lose the newest ones). */
    if ((err = exec_sql(st, "PRAGMA journal_mode=WAL", "journal_mode")) ||
        (err = exec_sql(st, "PRAGMA synchronous=NORMAL", "synchronous")) ||
        (err = exec_sql(st, "PRAGMA foreign_keys=OFF", "foreign_keys")) ||
        (err = exec_sql(st, "PRAGMA journal_size_limit=" AG_STORE_WAL_LIMIT_TEXT,
                        "journal_size_limit")) ||
        (err = exec_sql(st, "PRAGMA wal_autocheckpoint=1000", "wal_autocheckpoint")) ||
        /* The writer touches a leaf of results, stats and rollups per tensor
         * and format: keep them in memory (64 MB at most). */
        (err = exec_sql(st, "PRAGMA cache_size=-65536", "cache_size")))
        return err;
    /* SQLite opens a write-protected file read-only without a word: every
     * later commit would fail and the daemon lose what it was sent. */
    if (sqlite3_db_readonly(st->db, "main") == 1)
        return ag_store_failf(st, AG_ESTORE, "%s: the file is read-only", path);
    if ((err = migrate(st))) return err;
    st->has_rollups = 1;
    st->has_segs = 1;
    /* Take the write lock once (waiting the busy timeout): a file that another
     * process keeps locked is refused now, not found unwritable later. */
    if ((err = exec_sql(st, "BEGIN IMMEDIATE", "write lock"))) return err;
    return exec_sql(st, "COMMIT", "write lock");
}

sqlite3 *ag_store_db(ag_store *st) { return st ? st->db : NULL; }

int ag_store_set_autocheckpoint(ag_store *st, int pages) {
    if (!st || st->readonly || pages < 0) return AG_EINVAL;
    int rc = sqlite3_wal_autocheckpoint(st->db, pages);
    return rc == SQLITE_OK ? AG_OK : ag_store_fail(st, "wal_autocheckpoint", rc);
}

const char *ag_store_path(const ag_store *st) { return st ? st->path : NULL; }

void ag_store_close(ag_store *st) {
    if (!st) return;
    if (st->db) {
        if (st->in_txn) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        for (int i = 0; i < AG_ST_COUNT; i++) sqlite3_finalize(st->stmts[i]);
        ag_seg_ctx_close(&st->seg);
        sqlite3_close(st->db);
    }
    free(st->acc);
    free(st->path);
    free(st);
}

int ag_store_begin(ag_store *st) {
    if (!st || st->readonly) return AG_EINVAL;
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_BEGIN);
    if (!s) return AG_ESTORE;
    ag_rollup_forget(st);
    int err = ag_store_exec_stmt(st, s, "begin");
    if (!err) st->in_txn = 1;
    return err;
}

int ag_store_commit(ag_store *st) {
    if (!st || !st->in_txn) return AG_EINVAL;
    int err = ag_rollup_flush(st);
    if (err) return err; /* the transaction stays open: the caller rolls back */
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_COMMIT);
    if (!s) return AG_ESTORE;
    err = ag_store_exec_stmt(st, s, "commit");
    if (!err || sqlite3_get_autocommit(st->db)) st->in_txn = 0;
    return err;
}

int ag_store_rollback(ag_store *st) {
    if (!st) return AG_EINVAL;
    ag_rollup_forget(st);
    if (!st->in_txn && sqlite3_get_autocommit(st->db)) return AG_OK;
    st->in_txn = 0;
    if (sqlite3_get_autocommit(st->db)) return AG_OK; /* sqlite rolled back already */
    sqlite3_stmt *s = ag_store_stmt(st, AG_ST_ROLLBACK);
    if (!s) return AG_ESTORE;
    return ag_store_exec_stmt(st, s, "rollback");
}

int ag_store_integrity_check(ag_store *st) {
    if (!st) return AG_EINVAL;
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA integrity_check", -1, &s, NULL);
    if (rc != SQLITE_OK) return ag_store_fail(st, "integrity_check", rc);
    int err = AG_OK;
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        err = ag_store_fail(st, "integrity_check", rc);
    } else {
        const char *txt = (const char *)sqlite3_column_text(s, 0);
        if (!txt || strcmp(txt, "ok") != 0)
            err =
                ag_store_failf(st, AG_ESTORE, "%s: integrity_check: %s", st->path, txt ? txt : "?");
    }
    sqlite3_finalize(s);
    return err;
}
