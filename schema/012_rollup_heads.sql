-- 012_rollup_heads.sql - schema version 12 (issue 17): the open bucket of
-- each rollup tier in one row per tensor and format. A commit used to
-- upsert a rollups row per tier and bucket it touched: three rows per
-- tensor and format at least, the writer's largest cost at a steady stream
-- (docs/daemon.md). Now rollups_sealed holds the buckets a newer bucket of
-- the same tier has followed (written once, and again only for a late or
-- replaced row), and rollup_heads the newest bucket of each tier
-- (columns NAME1, NAME2, NAME3 for widths 10, 100 and 1000; bK NULL: no
-- open bucket of that tier), rewritten once a commit. The view rollups is
-- their union, with the columns rollups had: readers are unchanged.
-- Every bucket stays exact at every commit (rollups sums equal the raw
-- rows', as before). Rows stored before this version are all sealed.
ALTER TABLE rollups RENAME TO rollups_sealed;
CREATE TABLE rollup_heads (
    tensor_id INTEGER NOT NULL,
    format_id INTEGER NOT NULL,
    b1 INTEGER,
    rows1 INTEGER,
    stalled1 INTEGER,
    total1 INTEGER,
    flips1 INTEGER,
    flips_unknown1 INTEGER,
    overflow1 INTEGER,
    underflow1 INTEGER,
    nonfinite1 INTEGER,
    first_step1 INTEGER,
    last_step1 INTEGER,
    amax_min1 REAL,
    amax_max1 REAL,
    amax_last1 REAL,
    scale_min1 REAL,
    scale_max1 REAL,
    scale_last1 REAL,
    device_rows1 INTEGER,
    incomplete_rows1 INTEGER,
    ranks_min1 INTEGER,
    b2 INTEGER,
    rows2 INTEGER,
    stalled2 INTEGER,
    total2 INTEGER,
    flips2 INTEGER,
    flips_unknown2 INTEGER,
    overflow2 INTEGER,
    underflow2 INTEGER,
    nonfinite2 INTEGER,
    first_step2 INTEGER,
    last_step2 INTEGER,
    amax_min2 REAL,
    amax_max2 REAL,
    amax_last2 REAL,
    scale_min2 REAL,
    scale_max2 REAL,
    scale_last2 REAL,
    device_rows2 INTEGER,
    incomplete_rows2 INTEGER,
    ranks_min2 INTEGER,
    b3 INTEGER,
    rows3 INTEGER,
    stalled3 INTEGER,
    total3 INTEGER,
    flips3 INTEGER,
    flips_unknown3 INTEGER,
    overflow3 INTEGER,
    underflow3 INTEGER,
    nonfinite3 INTEGER,
    first_step3 INTEGER,
    last_step3 INTEGER,
    amax_min3 REAL,
    amax_max3 REAL,
    amax_last3 REAL,
    scale_min3 REAL,
    scale_max3 REAL,
    scale_last3 REAL,
    device_rows3 INTEGER,
    incomplete_rows3 INTEGER,
    ranks_min3 INTEGER,
    PRIMARY KEY (tensor_id, format_id)
) WITHOUT ROWID;
CREATE VIEW rollups AS
SELECT * FROM rollups_sealed
UNION ALL
SELECT tensor_id, format_id, 10, b1, rows1, stalled1, total1, flips1, flips_unknown1, overflow1, underflow1, nonfinite1, first_step1, last_step1, amax_min1, amax_max1, amax_last1, scale_min1, scale_max1, scale_last1, device_rows1, incomplete_rows1, ranks_min1
    FROM rollup_heads WHERE b1 IS NOT NULL
UNION ALL
SELECT tensor_id, format_id, 100, b2, rows2, stalled2, total2, flips2, flips_unknown2, overflow2, underflow2, nonfinite2, first_step2, last_step2, amax_min2, amax_max2, amax_last2, scale_min2, scale_max2, scale_last2, device_rows2, incomplete_rows2, ranks_min2
    FROM rollup_heads WHERE b2 IS NOT NULL
UNION ALL
SELECT tensor_id, format_id, 1000, b3, rows3, stalled3, total3, flips3, flips_unknown3, overflow3, underflow3, nonfinite3, first_step3, last_step3, amax_min3, amax_max3, amax_last3, scale_min3, scale_max3, scale_last3, device_rows3, incomplete_rows3, ranks_min3
    FROM rollup_heads WHERE b3 IS NOT NULL;
