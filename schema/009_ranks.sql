-- 009_ranks.sql - schema version 9: runs of many ranks (docs/daemon.md, Ranks).
-- A run has a world size (its first client's); each client records its rank
-- (its drops are the drops rows of its client id). A result or statistics row
-- of a sharded tensor records how many ranks reported (ranks) and whether
-- that was all of them (complete 0: an incomplete step, never the whole
-- tensor). Rollups count their incomplete rows and keep the fewest ranks of
-- any row. Rows from before this version were whole: 1 rank, complete.
ALTER TABLE runs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1;
ALTER TABLE clients ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;
-- runs counts each run's distinct ranks: by run, not a scan of every client
CREATE INDEX clients_by_run ON clients (run_id, rank);
ALTER TABLE results ADD COLUMN ranks INTEGER NOT NULL DEFAULT 1;
ALTER TABLE results ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;
ALTER TABLE stats ADD COLUMN ranks INTEGER NOT NULL DEFAULT 1;
ALTER TABLE rollups ADD COLUMN incomplete_rows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollups ADD COLUMN ranks_min INTEGER NOT NULL DEFAULT 1;
