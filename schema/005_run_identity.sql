-- 005_run_identity.sql - schema version 5: a run is its name plus a launch.
-- A trainer asks for a run name; the daemon files it under that name, or under
-- name.2, name.3 ... when the name belongs to a run of another launch (unless
-- it asked to resume). runs.asked keeps the name asked for, runs.launch_id the
-- launch that made the run (NULL: none given, or a run from before this version).
ALTER TABLE runs ADD COLUMN launch_id TEXT;
ALTER TABLE runs ADD COLUMN asked TEXT;
CREATE INDEX runs_by_asked ON runs (asked);

-- One row per client (its random cid): the run its messages are filed under,
-- the launch and name it asked for, and its sequence state (which moves here
-- from runs.last_seq / runs.last_drop: several clients of one launch share a
-- run, each numbering its own messages). last_drop NULL: unknown, the next
-- message resyncs it. ended: its run_end was filed.
CREATE TABLE clients (
    client_id  INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL,
    launch_id  TEXT,
    asked      TEXT NOT NULL,
    started_ms INTEGER NOT NULL DEFAULT 0,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    last_drop  INTEGER,
    ended      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX clients_by_launch ON clients (launch_id, asked);

-- Every run of an older database had one client: its last one (a client id
-- seen in two runs stays with the newer).
INSERT OR IGNORE INTO clients (client_id, run_id, asked, started_ms, last_seq, last_drop, ended)
    SELECT client_id, id, name, started_ms, last_seq, last_drop, ended_ms <> 0
    FROM runs WHERE client_id <> 0 ORDER BY id DESC;
