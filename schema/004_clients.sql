-- 004_clients.sql - schema version 4.
-- Per client id: how many of its stream messages the daemon stored and the
-- highest sequence number among them, written with those messages' rows (so
-- a commit holds both). A client asks for its row (the q_delivery query) to
-- learn which of the messages it sent arrived; after a daemon restart the
-- answer still counts what was stored before it.
CREATE TABLE clients (
    client_id INTEGER PRIMARY KEY,
    run_id    INTEGER NOT NULL,
    messages  INTEGER NOT NULL DEFAULT 0,
    last_seq  INTEGER NOT NULL DEFAULT 0
);
