-- 008_rollups.sql - schema version 8: rollups of results, so whole-run
-- queries read a few rows per tensor instead of every step.
-- One row per tensor, format, tier width (10, 100, 1000 steps) and bucket
-- (step / width): the counts of the bucket's result rows summed, how many
-- rows (rows) and how many of them had unknown flips (flips_unknown; flips
-- sums the known ones) or were computed on the trainer's device (device_rows), the first and last step present, and the min, max
-- and last (at last_step) of amax and scale. The daemon's writer keeps them
-- in the transaction of the rows (docs/store.md, Rollups).
CREATE TABLE rollups (
    tensor_id     INTEGER NOT NULL,
    format_id     INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    bucket        INTEGER NOT NULL,
    rows          INTEGER NOT NULL,
    stalled       INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    flips         INTEGER NOT NULL,
    flips_unknown INTEGER NOT NULL,
    overflow      INTEGER NOT NULL,
    underflow     INTEGER NOT NULL,
    nonfinite     INTEGER NOT NULL,
    first_step    INTEGER NOT NULL,
    last_step     INTEGER NOT NULL,
    amax_min      REAL NOT NULL,
    amax_max      REAL NOT NULL,
    amax_last     REAL NOT NULL,
    scale_min     REAL NOT NULL,
    scale_max     REAL NOT NULL,
    scale_last    REAL NOT NULL,
    device_rows   INTEGER NOT NULL, -- rows computed on the trainer's device (results.source 1)
    PRIMARY KEY (tensor_id, format_id, width, bucket)
) WITHOUT ROWID;

-- Raw-row retention (altgradd --keep-raw-steps): every results and stats row
-- of the tensor below step is gone; its rollups keep them. Absent: none gone.
CREATE TABLE raw_horizon (
    tensor_id INTEGER PRIMARY KEY,
    step      INTEGER NOT NULL
);

-- The rollups of the rows already stored (NULL flips count as unknown).
INSERT INTO rollups
    SELECT r.tensor_id, r.format_id, w.width, r.step / w.width, count(*), sum(r.stalled),
           sum(r.total), coalesce(sum(r.flips), 0), count(*) - count(r.flips), sum(r.overflow),
           sum(r.underflow), sum(r.nonfinite), min(r.step), max(r.step), min(r.amax),
           max(r.amax), 0, min(r.scale), max(r.scale), 0, sum(r.source)
    FROM results r, (SELECT 10 AS width UNION ALL SELECT 100 UNION ALL SELECT 1000) w
    GROUP BY r.tensor_id, r.format_id, w.width, r.step / w.width;
UPDATE rollups SET
    amax_last = (SELECT amax FROM results r WHERE r.tensor_id = rollups.tensor_id
                 AND r.format_id = rollups.format_id AND r.step = rollups.last_step),
    scale_last = (SELECT scale FROM results r WHERE r.tensor_id = rollups.tensor_id
                  AND r.format_id = rollups.format_id AND r.step = rollups.last_step);
