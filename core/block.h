/*
 * block.h - internal: the block-scaled pass (block.c), which the
 * multi-format pass (stall.c) runs on its chunks for block-scaled formats:
 * counts, the encoded form (block scale codes and element patterns) and the
 * quantization error, and the pattern flips of two snapshots.
 */
#ifndef AG_CORE_BLOCK_H
#define AG_CORE_BLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

typedef struct ag_block_params {
    ag_qparams elem;   /* the element grid, overflow saturating */
    ag_eparams elem_e; /* element patterns, overflow to the largest finite one */
    ag_qparams scale;  /* E4M3, for NVFP4's block scales */
    ag_eparams scale_e;
    const ag_format *scale_fmt; /* E4M3 */
    int kind;
    int emax;  /* exponent of the element format's largest normal */
    int block; /* elements per block */
    float tensor_scale;
} ag_block_params;

/* fmt must be block-scaled, tensor_scale finite and > 0. */
void ag_block_params_of(const ag_format *fmt, float tensor_scale, ag_block_params *bp);
/* Adds the counts of w[0..n) (blocks from w[0]) into *out. enc: NULL, or
 * where the encoded form of w goes (ag_encoded_bytes(fmt, n) bytes,
 * stall_encode.h). sq_error: NULL, or adds the sum over the finite w[i] of
 * (Q(w[i]) - w[i])^2 (docs/numerics.md, Block scaling). */
void ag_block_run(const ag_block_params *bp, int update_form, float neg_lr, const float *w,
                  const float *v, size_t n, ag_stall_counts *out, uint8_t *enc, double *sq_error);
/* The sum of ag_block_run's sq_error alone. */
void ag_block_qerr(const ag_block_params *bp, const float *w, size_t n, double *sq_error);

#endif
