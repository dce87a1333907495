-- 010_formats.sql - schema version 10 (issue 14): the quantization error of
-- each result, computed in the same pass as its counts (docs/numerics.md,
-- Quantization error): mse, the mean of (Q(w) - w)^2 over the tensor's
-- finite weights, Q the format at the result's scale (saturating), and
-- sqnr_db = 10 log10(sum w^2 / sum (Q(w) - w)^2). NULL where unknown: rows
-- stored before this version, counts sent by a trainer, and sqnr_db of an
-- exact or all-zero tensor (no noise, or no signal, to compare).
-- Formats of 4 to 16 bits and the unscaled twins (NAME-unscaled) need no
-- column: formats rows hold E, M, bias, inf and NaN, and a twin is told by
-- its name.
ALTER TABLE results ADD COLUMN mse REAL;
ALTER TABLE results ADD COLUMN sqnr_db REAL;
