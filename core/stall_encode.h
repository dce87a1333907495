/*
 * stall_encode.h - internal: the multi-format stall pass that also encodes
 * the weights for every format, for the daemon's snapshots (counts, then
 * patterns for flips and the next snapshot, from one read of the arrays),
 * and the byte form of pattern flips for two snapshots encoded at one scale.
 */
#ifndef AG_CORE_STALL_ENCODE_H
#define AG_CORE_STALL_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"

/* ag_stall_sgd_multi (update_form 0, v = g, lr used) or ag_stall_update_multi
 * (update_form 1, v = u, lr ignored), adding into out[f], and enc[f] (n
 * patterns each, n * pattern_bytes bytes, all non-NULL) set to
 * ag_encode_array(fmts[f], scales[f], w). qerr: NULL, or per format the
 * quantization error sums (ag_quant_error_multi), added, from the same pass
 * over the blocks of w. Same errors as those; on error nothing is counted. */
int ag_stall_encode_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                          int update_form, float lr, const float *w, const float *v, size_t n,
                          ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr);

/* Pattern flips between two pattern arrays (n * pattern_bytes bytes) encoded at one scale: elements
 * whose patterns differ, +0 and -0 being one pattern and every NaN pattern
 * one too. Equal to ag_count_pattern_flips(fmt, s, prev, w, n) when cur =
 * ag_encode_array(fmt, s, w), without reading w. Adds into *flips. */
int ag_count_pattern_changes(const ag_format *fmt, const uint8_t *prev, const uint8_t *cur,
                             size_t n, uint64_t *flips);

#endif
