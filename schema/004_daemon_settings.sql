-- 004_daemon_settings.sql - schema version 4.
-- What the altgradd that last opened the file for writing was configured
-- with (its version, the formats it evaluates by default, in order), so a
-- reader of the file (altgrad --db) reports what that daemon reports.
CREATE TABLE daemon_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
