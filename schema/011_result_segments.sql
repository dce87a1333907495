-- 011_result_segments.sql - schema version 11 (issue 17): results rows
-- packed in segments. A segment holds the points of one tensor and format
-- over a run of steps (at most about 3,000 bytes, fewer than 2^24 steps):
-- each point a step delta, a flags byte (flips unknown, mse and sqnr_db
-- present, computed on the device, incomplete, ranks not 1, amax and scale
-- exactly float32), varints for stalled, total, flips, overflow, underflow,
-- nonfinite (and ranks), then amax and scale (4 or 8 bytes) and mse and
-- sqnr_db (8 bytes each, where present); docs/store.md, "Result segments".
-- A tensor's segments of one format cover disjoint step ranges; first_step
-- and last_step bound its points (last_step is its last point's step).
-- The writer adds a batch's points to a segment in one rewrite instead of a
-- row insert per point. SQL reads and writes `results` as before, through
-- the virtual table the store registers on its connections
-- (ag_store_sql_register, or the altgrad_sqlite extension for the sqlite3
-- shell). The old rows are packed here, 64 a segment, by ag_seg_pack, an
-- aggregate the store registers before it migrates.
CREATE TABLE result_segs (
    id         INTEGER PRIMARY KEY,
    tensor_id  INTEGER NOT NULL,
    format_id  INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    last_step  INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    data       BLOB NOT NULL
);
CREATE UNIQUE INDEX result_segs_by_key ON result_segs (tensor_id, format_id, first_step);
INSERT INTO result_segs(tensor_id, format_id, first_step, last_step, n, data)
SELECT tensor_id, format_id, min(step), max(step), count(*),
       ag_seg_pack(step, stalled, total, flips, overflow, underflow, nonfinite, amax, scale,
                   source, ranks, complete, mse, sqnr_db)
FROM (SELECT *, (row_number() OVER (PARTITION BY tensor_id, format_id ORDER BY step) - 1) / 64
             AS g FROM results)
GROUP BY tensor_id, format_id, g, step >> 23;
DROP TABLE results;
