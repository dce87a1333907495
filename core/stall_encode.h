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

/* Bytes of the encoded form of n elements of f, as the daemon keeps a
 * snapshot for flips: n * pattern_bytes for a per-tensor format; for a
 * block-scaled one n + ceil(n / block): block by block, the block's scale
 * code (one byte: the E8M0 exponent field for MX, the E4M3 pattern of s_b
 * for NVFP4), then its element patterns (one byte each). For n a multiple
 * of the block size, also the offset of element n's block. */
static inline size_t ag_encoded_bytes(const ag_format *f, size_t n) {
    if (f->block == 0) return n * (size_t)f->pattern_bytes;
    return n + (n + (size_t)f->block - 1) / (size_t)f->block;
}

/* ag_stall_sgd_multi (update_form 0, v = g, lr used) or ag_stall_update_multi
 * (update_form 1, v = u, lr ignored), adding into out[f], and enc[f] (n
 * patterns each, n * pattern_bytes bytes, all non-NULL) set to
 * ag_encode_array(fmts[f], scales[f], w), or for a block-scaled format to
 * its encoded form (ag_encoded_bytes, ag_encode_any). qerr: NULL, or per format the
 * quantization error sums (ag_quant_error_multi), added, from the same pass
 * over the blocks of w. Same errors as those; on error nothing is counted. */
int ag_stall_encode_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                          int update_form, float lr, const float *w, const float *v, size_t n,
                          ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr);

/* ag_stall_encode_multi, and for each format f with prev != NULL and
 * prev[f] != NULL the pattern flips of enc[f] against prev[f] (n patterns),
 * as ag_count_pattern_changes counts them, added to flips[f]: counted block
 * by block while the new patterns are in cache. prev[f] is allowed for a
 * per-tensor format of 1-byte patterns only (else AG_EINVAL). */
int ag_stall_encode_flips_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                int update_form, float lr, const float *w, const float *v, size_t n,
                                ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr,
                                const uint8_t *const *prev, uint64_t *flips);

/* ag_stall_encode_flips_multi, and w copied to copy (n floats, not
 * overlapping w; NULL: no copy) block by block as the pass reads it. */
int ag_stall_encode_flips_copy_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                     int update_form, float lr, const float *w, const float *v,
                                     size_t n, ag_stall_counts *out, uint8_t *const *enc,
                                     ag_quant_error *qerr, const uint8_t *const *prev,
                                     uint64_t *flips, float *copy);

/* Pattern flips between two pattern arrays (n * pattern_bytes bytes) encoded at one scale: elements
 * whose patterns differ, +0 and -0 being one pattern and every NaN pattern
 * one too. Equal to ag_count_pattern_flips(fmt, s, prev, w, n) when cur =
 * ag_encode_array(fmt, s, w), without reading w. Adds into *flips. */
int ag_count_pattern_changes(const ag_format *fmt, const uint8_t *prev, const uint8_t *cur,
                             size_t n, uint64_t *flips);

/* The encoded form of w as ag_stall_encode_multi writes it: ag_encode_array
 * for a per-tensor format, the block form (scale the tensor scale) for a
 * block-scaled one. out holds ag_encoded_bytes(fmt, n) bytes. */
int ag_encode_any(const ag_format *fmt, float scale, const float *w, size_t n, uint8_t *out);

/* Pattern flips of a block-scaled format (docs/numerics.md, Block scaling):
 * the elements of w whose element pattern at the previous snapshot's block
 * divisors (its scale codes in prev, with its tensor scale prev_scale)
 * differs from prev's, +0 and -0 one pattern, every NaN one. cur: NULL, or
 * the encoded form of w at the same tensor scale, whose blocks with prev's
 * scale code are compared byte for byte (the same answer, without encoding
 * again). Blocks from w[0]. Adds into *flips. */
int ag_block_count_flips(const ag_format *fmt, float prev_scale, const uint8_t *prev,
                         const uint8_t *cur, const float *w, size_t n, uint64_t *flips);

#endif
