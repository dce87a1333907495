-- 002_runs_by_client.sql - schema version 2.
-- The daemon finds a run by its client id when a client reconnects after a
-- daemon restart without sending a new run start.
CREATE INDEX runs_by_client ON runs (client_id);
