/*
 * block.h - internal: the block-scaled stall pass (block.c), which the
 * multi-format pass (stall.c) runs on its chunks for block-scaled formats.
 */
#ifndef AG_CORE_BLOCK_H
#define AG_CORE_BLOCK_H

#include <stddef.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

typedef struct ag_block_params {
    ag_qparams elem;  /* the element grid, overflow saturating */
    ag_qparams scale; /* E4M3, for NVFP4's block scales */
    int kind;
    int emax;  /* exponent of the element format's largest normal */
    int block; /* elements per block */
    float tensor_scale;
} ag_block_params;

/* fmt must be block-scaled, tensor_scale finite and > 0. */
void ag_block_params_of(const ag_format *fmt, float tensor_scale, ag_block_params *bp);
/* Adds the counts of w[0..n) (blocks from w[0]) into *out. */
void ag_block_run(const ag_block_params *bp, int update_form, float neg_lr, const float *w,
                  const float *v, size_t n, ag_stall_counts *out);

#endif
