-- 001_initial.sql - altgrad store, schema version 1.
-- Runs, tensors and formats carry ids chosen by the daemon's engine, so the
-- writer never waits for a rowid. Time series are WITHOUT ROWID tables keyed
-- for range scans: stats by (tensor, role, step), results by (tensor, format, step).

CREATE TABLE formats (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    exponent_bits INTEGER NOT NULL,
    mantissa_bits INTEGER NOT NULL,
    bias          INTEGER NOT NULL,
    has_inf       INTEGER NOT NULL,
    has_nan       INTEGER NOT NULL
);

CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    host       TEXT NOT NULL DEFAULT '',
    pid        INTEGER NOT NULL DEFAULT 0,
    client_id  INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL DEFAULT 0,
    ended_ms   INTEGER NOT NULL DEFAULT 0,
    last_step  INTEGER NOT NULL DEFAULT 0,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    messages   INTEGER NOT NULL DEFAULT 0,
    dropped    INTEGER NOT NULL DEFAULT 0,
    metadata   TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE tensors (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs(id),
    name       TEXT NOT NULL,
    role       INTEGER NOT NULL DEFAULT 0,
    numel      INTEGER NOT NULL DEFAULT 0,
    first_step INTEGER,
    last_step  INTEGER NOT NULL DEFAULT 0,
    snapshots  INTEGER NOT NULL DEFAULT 0,
    last_amax  REAL NOT NULL DEFAULT 0,
    UNIQUE (run_id, name)
);

-- One amax record per tensor, role and step (activations, gradients, and the
-- weights of every gradient snapshot). The amax history is rebuilt from here.
CREATE TABLE stats (
    tensor_id INTEGER NOT NULL,
    role      INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    amax      REAL,
    numel     INTEGER NOT NULL,
    nonfinite INTEGER NOT NULL,
    PRIMARY KEY (tensor_id, role, step)
) WITHOUT ROWID;

-- Per gradient snapshot, per format: docs/numerics.md, Stall counters.
CREATE TABLE results (
    tensor_id INTEGER NOT NULL,
    format_id INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    stalled   INTEGER NOT NULL,
    total     INTEGER NOT NULL,
    flips     INTEGER NOT NULL,
    overflow  INTEGER NOT NULL,
    underflow INTEGER NOT NULL,
    nonfinite INTEGER NOT NULL,
    amax      REAL NOT NULL,
    scale     REAL NOT NULL,
    PRIMARY KEY (tensor_id, format_id, step)
) WITHOUT ROWID;

-- Gaps in a client's sequence numbers and drops the client reported.
CREATE TABLE drops (
    run_id    INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    reason    TEXT NOT NULL
);
CREATE INDEX drops_by_run ON drops (run_id);

-- Engine state restored at start: the latest scale per tensor, format, role.
CREATE TABLE scales (
    tensor_id INTEGER NOT NULL,
    format_id INTEGER NOT NULL,
    role      INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    amax      REAL NOT NULL,
    scale     REAL NOT NULL,
    PRIMARY KEY (tensor_id, format_id, role)
) WITHOUT ROWID;

-- The weights of the latest gradient snapshot per tensor, so the first
-- snapshot after a restart still counts flips against its predecessor.
CREATE TABLE snapshots (
    tensor_id INTEGER PRIMARY KEY,
    step      INTEGER NOT NULL,
    numel     INTEGER NOT NULL,
    weights   BLOB NOT NULL
);

-- Daemon-wide counters (bytes, rejected, rows_written ...).
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
