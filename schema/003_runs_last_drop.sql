-- 003_runs_last_drop.sql - schema version 3.
-- The client's cumulative drop counter as the daemon last saw it, written with
-- last_seq, so drops a client counted across a daemon restart are recorded.
-- NULL (runs from before this version): unknown, the next message resyncs it.
ALTER TABLE runs ADD COLUMN last_drop INTEGER;
