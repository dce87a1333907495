-- 013_rollup_tiers.sql - schema version 13 (issue 17): the rollup tiers
-- become 100, 1000 and 10000 steps (10, 100 and 1000 before). A width-10
-- bucket sealed every ten steps of each tensor and format: at a steady
-- stream it was half the pages each commit wrote and a quarter of the
-- writer's time (docs/store.md, Rollups). A query for buckets finer than
-- 100 steps reads the raw rows, as one finer than 10 did.
-- The width-100 and width-1000 buckets stay as they are (the heads' columns
-- shift: NAME1 is now width 100, NAME2 width 1000, NAME3 width 10000); the
-- width-10000 buckets are summed from the width-1000 ones, so buckets below
-- a raw-row horizon (retention) keep their counts. They are all sealed: the
-- next commit of a tensor and format sums into its newest one, or opens a
-- head past it.
DELETE FROM rollups_sealed WHERE width = 10;
INSERT INTO rollups_sealed
    SELECT tensor_id, format_id, 10000, bucket / 10, sum(rows), sum(stalled), sum(total),
           sum(flips), sum(flips_unknown), sum(overflow), sum(underflow), sum(nonfinite),
           min(first_step), max(last_step), min(amax_min), max(amax_max), 0, min(scale_min),
           max(scale_max), 0, sum(device_rows), sum(incomplete_rows), min(ranks_min)
    FROM rollups WHERE width = 1000
    GROUP BY tensor_id, format_id, bucket / 10;
UPDATE rollups_sealed SET
    amax_last = (SELECT r.amax_last FROM rollups r WHERE r.tensor_id = rollups_sealed.tensor_id
                 AND r.format_id = rollups_sealed.format_id AND r.width = 1000
                 AND r.bucket BETWEEN rollups_sealed.bucket * 10 AND rollups_sealed.bucket * 10 + 9
                 ORDER BY r.last_step DESC LIMIT 1),
    scale_last = (SELECT r.scale_last FROM rollups r WHERE r.tensor_id = rollups_sealed.tensor_id
                  AND r.format_id = rollups_sealed.format_id AND r.width = 1000
                  AND r.bucket BETWEEN rollups_sealed.bucket * 10 AND rollups_sealed.bucket * 10 + 9
                  ORDER BY r.last_step DESC LIMIT 1)
    WHERE width = 10000;
UPDATE rollup_heads SET
    b1 = b2, rows1 = rows2, stalled1 = stalled2, total1 = total2, flips1 = flips2,
    flips_unknown1 = flips_unknown2, overflow1 = overflow2, underflow1 = underflow2,
    nonfinite1 = nonfinite2, first_step1 = first_step2, last_step1 = last_step2,
    amax_min1 = amax_min2, amax_max1 = amax_max2, amax_last1 = amax_last2,
    scale_min1 = scale_min2, scale_max1 = scale_max2, scale_last1 = scale_last2,
    device_rows1 = device_rows2, incomplete_rows1 = incomplete_rows2, ranks_min1 = ranks_min2,
    b2 = b3, rows2 = rows3, stalled2 = stalled3, total2 = total3, flips2 = flips3,
    flips_unknown2 = flips_unknown3, overflow2 = overflow3, underflow2 = underflow3,
    nonfinite2 = nonfinite3, first_step2 = first_step3, last_step2 = last_step3,
    amax_min2 = amax_min3, amax_max2 = amax_max3, amax_last2 = amax_last3,
    scale_min2 = scale_min3, scale_max2 = scale_max3, scale_last2 = scale_last3,
    device_rows2 = device_rows3, incomplete_rows2 = incomplete_rows3, ranks_min2 = ranks_min3,
    b3 = NULL, rows3 = NULL, stalled3 = NULL, total3 = NULL, flips3 = NULL,
    flips_unknown3 = NULL, overflow3 = NULL, underflow3 = NULL, nonfinite3 = NULL,
    first_step3 = NULL, last_step3 = NULL, amax_min3 = NULL, amax_max3 = NULL,
    amax_last3 = NULL, scale_min3 = NULL, scale_max3 = NULL, scale_last3 = NULL,
    device_rows3 = NULL, incomplete_rows3 = NULL, ranks_min3 = NULL;
DROP VIEW rollups;
CREATE VIEW rollups AS
SELECT * FROM rollups_sealed
UNION ALL
SELECT tensor_id, format_id, 100, b1, rows1, stalled1, total1, flips1, flips_unknown1, overflow1, underflow1, nonfinite1, first_step1, last_step1, amax_min1, amax_max1, amax_last1, scale_min1, scale_max1, scale_last1, device_rows1, incomplete_rows1, ranks_min1
    FROM rollup_heads WHERE b1 IS NOT NULL
UNION ALL
SELECT tensor_id, format_id, 1000, b2, rows2, stalled2, total2, flips2, flips_unknown2, overflow2, underflow2, nonfinite2, first_step2, last_step2, amax_min2, amax_max2, amax_last2, scale_min2, scale_max2, scale_last2, device_rows2, incomplete_rows2, ranks_min2
    FROM rollup_heads WHERE b2 IS NOT NULL
UNION ALL
SELECT tensor_id, format_id, 10000, b3, rows3, stalled3, total3, flips3, flips_unknown3, overflow3, underflow3, nonfinite3, first_step3, last_step3, amax_min3, amax_max3, amax_last3, scale_min3, scale_max3, scale_last3, device_rows3, incomplete_rows3, ranks_min3
    FROM rollup_heads WHERE b3 IS NOT NULL;
