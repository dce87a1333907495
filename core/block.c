/*
 * block.c - stall counts of the block-scaled formats (docs/numerics.md,
 * Block scaling): MX (32 elements, an E8M0 scale each, OCP MX v1.0) and NVFP4
 * (16 elements of E2M1, an E4M3 scale each times an FP32 tensor scale).
 * Per block: the largest finite |w|, the block's scale from it, then the
 * element pass of stall.c with that scale, w and w + u both quantized at it,
 * elements saturating at the element format's largest finite value.
 */
#include <math.h>

#include "block.h"

#include "altgrad/altgrad.h"
#include "kernel.h"

typedef ag_block_params block_params;

void ag_block_params_of(const ag_format *fmt, float tensor_scale, block_params *bp) {
    ag_qparams_of(fmt->element, &bp->elem);
    bp->elem.overflow_value = bp->elem.max_finite; /* MX and NVFP4 conversions clamp */
    ag_qparams_of(ag_format_get("E4M3"), &bp->scale);
    bp->kind = fmt->scale_kind;
    bp->emax = fmt->element->max_exponent;
    bp->block = fmt->block;
    bp->tensor_scale = tensor_scale;
}

/* The largest finite |w| of a block (0 when none): on the bit patterns,
 * whose unsigned order is the order of non-negative floats (an integer max
 * vectorises exactly, NaN and inf excluded by their bits). */
AG_INLINE float block_amax(const float *w, size_t len) {
    uint32_t m = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t b = ag_float_bits(w[i]) & 0x7fffffffu;
        b = b < 0x7f800000u ? b : 0u;
        m = b > m ? b : m;
    }
    return ag_bits_float(m);
}

/* The divisor of a block's elements; 0 means the block quantizes to zeros. */
static float block_divisor(const block_params *bp, float amax) {
    float s = bp->tensor_scale;
    if (bp->kind == AG_SCALE_E8M0) {
        float a = amax / s;
        int k = -127;
        if (a > 0.0f) {
            uint32_t ef = ag_float_bits(a) >> 23; /* a >= 0: the exponent field */
            /* floor(log2(a)) - emax; a past float32 (amax / S overflowed):
             * the largest scale */
            k = ef == 255 ? 127 : (ef != 0 ? (int)ef - 127 : ilogbf(a)) - bp->emax;
            k = k < -127 ? -127 : k > 127 ? 127 : k;
        }
        /* 2^k: a normal float32 from -126 up, 2^-127 is subnormal */
        float x = k >= -126 ? ag_bits_float((uint32_t)(k + 127) << 23) : 0x1p-127f;
        return x * s;
    }
    /* NVFP4: s_b = E4M3(amax_b / (6 S)), saturating at 448 */
    float t = amax / (6.0f * s);
    float sb = ag_qvalue(&bp->scale, t);
    return sb * s;
}

typedef struct bcounts {
    uint64_t stalled, total, overflow, underflow, nonfinite;
} bcounts;

/* One block of len elements at divisor d (0: every element quantizes to 0). */
AG_INLINE void block_elems(const ag_qparams *pp, float d, float neg_lr, const float *w,
                           const float *v, size_t len, bcounts *bc, const int update_form) {
    const ag_qparams p = *pp;
    const int zero = !(d > 0.0f);
    const float dd = zero ? 1.0f : d;
    uint32_t stalled = 0, total = 0, overflow = 0, underflow = 0, nonfinite = 0;
    for (size_t i = 0; i < len; i++) {
        float wi = w[i], vi = v[i];
        float u = update_form ? vi : neg_lr * vi;
        uint32_t wb = ag_float_bits(wi) & 0x7fffffffu;
        uint32_t vb = ag_float_bits(vi) & 0x7fffffffu;
        uint32_t finite = (wb < 0x7f800000u) & (vb < 0x7f800000u);
        uint32_t moving = update_form ? (u != 0.0f) : (ag_bits_float(vb) > AG_GRAD_EPSILON);
        float wu = wi + u;
        float xs = zero ? 0.0f : wi / dd;
        float xu = zero ? 0.0f : wu / dd;
        float a = ag_qmag_hd(&p, xs, 0);
        float b = ag_qmag_hd(&p, xu, 0);
        float sa = copysignf(a > p.max_finite ? p.max_finite : a, xs);
        float sb = copysignf(b > p.max_finite ? p.max_finite : b, xu);
        stalled += finite & moving & (sa == sb);
        total += finite & moving;
        overflow += finite & (fabsf(xs) > p.max_finite);
        underflow += finite & (wi != 0.0f) & (a == 0.0f);
        nonfinite += !finite;
    }
    bc->stalled += stalled;
    bc->total += total;
    bc->overflow += overflow;
    bc->underflow += underflow;
    bc->nonfinite += nonfinite;
}

#define BLOCK_PARAMS                                                                               \
    (const block_params *bp, float neg_lr, const float *w, const float *v, size_t n, bcounts *bc)
/* Whole blocks of a compile-time size bs (the loops then have constant trip
 * counts and vectorise without remainders), then the tail. */
AG_INLINE void block_pass_bs(const block_params *bp, float neg_lr, const float *w, const float *v,
                             size_t n, bcounts *bc, const int update_form, const size_t bs) {
    size_t s = 0;
    for (; s + bs <= n; s += bs) {
        float d = block_divisor(bp, block_amax(w + s, bs));
        block_elems(&bp->elem, d, neg_lr, w + s, v + s, bs, bc, update_form);
    }
    if (s < n) {
        float d = block_divisor(bp, block_amax(w + s, n - s));
        block_elems(&bp->elem, d, neg_lr, w + s, v + s, n - s, bc, update_form);
    }
}

AG_INLINE void block_pass(const block_params *bp, float neg_lr, const float *w, const float *v,
                          size_t n, bcounts *bc, const int update_form) {
    if (bp->block == 32)
        block_pass_bs(bp, neg_lr, w, v, n, bc, update_form, 32);
    else
        block_pass_bs(bp, neg_lr, w, v, n, bc, update_form, 16);
}
AG_KERNEL_VARIANTS(block_sgd, BLOCK_PARAMS, { block_pass(bp, neg_lr, w, v, n, bc, 0); });
AG_KERNEL_VARIANTS(block_update, BLOCK_PARAMS, { block_pass(bp, neg_lr, w, v, n, bc, 1); });

void ag_block_run(const ag_block_params *bp, int update_form, float neg_lr, const float *w,
                  const float *v, size_t n, ag_stall_counts *out) {
    bcounts bc = {0, 0, 0, 0, 0};
    int isa = ag_isa_current();
    (update_form ? block_update_variants : block_sgd_variants)[isa](bp, neg_lr, w, v, n, &bc);
    out->stalled += bc.stalled;
    out->total += bc.total;
    out->overflow += bc.overflow;
    out->underflow += bc.underflow;
    out->nonfinite += bc.nonfinite;
}

static int block_stall(const ag_format *fmt, float scale, float lr, int update_form, const float *w,
                       const float *v, size_t n, ag_stall_counts *out) {
    if (fmt == NULL || fmt->block == 0 || fmt->element == NULL) return AG_EFORMAT;
    if (w == NULL || v == NULL || out == NULL || n == 0 || !isfinite(scale) || !(scale > 0.0f) ||
        (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, scale, &bp);
    ag_block_run(&bp, update_form, -lr, w, v, n, out);
    return AG_OK;
}

AG_EXTERN int ag_block_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                                 const float *g, size_t n, ag_stall_counts *out) {
    return block_stall(fmt, scale, lr, 0, w, g, n, out);
}

AG_EXTERN int ag_block_stall_update(const ag_format *fmt, float scale, const float *w,
                                    const float *u, size_t n, ag_stall_counts *out) {
    return block_stall(fmt, scale, 0.0f, 1, w, u, n, out);
}

AG_EXTERN int ag_block_scale(const ag_format *fmt, float scale, const float *w, size_t len,
                             float *out) {
    if (fmt == NULL || fmt->block == 0 || fmt->element == NULL) return AG_EFORMAT;
    if (w == NULL || out == NULL || len == 0 || len > (size_t)fmt->block || !isfinite(scale) ||
        !(scale > 0.0f))
        return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, scale, &bp);
    *out = block_divisor(&bp, block_amax(w, len));
    return AG_OK;
}
