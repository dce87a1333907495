-- 007_results_source.sql - schema version 7: results.flips is nullable (NULL:
-- unknown, e.g. the first snapshot after a crash lost its tensor's flip
-- baseline) and results.source says where a row was computed (0: by the
-- daemon from a snapshot, 1: on the trainer's device and sent as counts).
-- Same columns otherwise, same key; the rows are copied over with source 0.
CREATE TABLE results_new (
    tensor_id INTEGER NOT NULL,
    format_id INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    stalled   INTEGER NOT NULL,
    total     INTEGER NOT NULL,
    flips     INTEGER,
    overflow  INTEGER NOT NULL,
    underflow INTEGER NOT NULL,
    nonfinite INTEGER NOT NULL,
    amax      REAL NOT NULL,
    scale     REAL NOT NULL,
    source    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tensor_id, format_id, step)
) WITHOUT ROWID;
INSERT INTO results_new (tensor_id, format_id, step, stalled, total, flips, overflow, underflow,
                         nonfinite, amax, scale, source)
    SELECT tensor_id, format_id, step, stalled, total, flips, overflow, underflow, nonfinite,
           amax, scale, 0
    FROM results;
DROP TABLE results;
ALTER TABLE results_new RENAME TO results;
