-- 007_results_source.sql - schema version 7: where a result was computed,
-- and flips that may be unknown. results is rebuilt so that flips is
-- nullable (NULL: unknown, e.g. counts computed on a trainer's device that
-- did not count flips) and gains source (0: computed by the daemon from a
-- snapshot, 1: computed on the trainer's device and sent as counts). Rows
-- from before keep their flips and get source 0.
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
INSERT INTO results_new(tensor_id, format_id, step, stalled, total, flips, overflow, underflow,
                        nonfinite, amax, scale, source)
    SELECT tensor_id, format_id, step, stalled, total, flips, overflow, underflow, nonfinite,
           amax, scale, 0 FROM results;
DROP TABLE results;
ALTER TABLE results_new RENAME TO results;
