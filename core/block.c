/*
 * block.c - the block-scaled formats (docs/numerics.md, Block scaling): MX
 * (32 elements, an E8M0 scale each, OCP MX v1.0) and NVFP4 (16 elements of
 * E2M1, an E4M3 scale each times an FP32 tensor scale). Per block: the
 * largest finite |w|, the block's scale code from it, then one pass over the
 * block's elements at that scale: stall counts (w and w + u both quantized
 * at it, elements saturating at the element format's largest finite value),
 * and in the daemon's pass also the encoded form (the code, then the
 * element patterns) and the quantization error. Flips compare a snapshot's
 * elements with the previous one's at the previous block scales.
 */
#include <math.h>
#include <string.h>

#include "block.h"

#include "altgrad/altgrad.h"
#include "kernel.h"
#include "stall_encode.h"

typedef ag_block_params block_params;

void ag_block_params_of(const ag_format *fmt, float tensor_scale, block_params *bp) {
    ag_qparams_of(fmt->element, &bp->elem);
    bp->elem.overflow_value = bp->elem.max_finite; /* MX and NVFP4 conversions clamp */
    ag_eparams_of(fmt->element, &bp->elem_e);
    if (fmt->element->has_inf) /* saturating: past max is the largest finite pattern */
        bp->elem_e.over_pattern -= 1u;
    bp->scale_fmt = ag_format_get("E4M3");
    ag_qparams_of(bp->scale_fmt, &bp->scale);
    ag_eparams_of(bp->scale_fmt, &bp->scale_e);
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

/* The block's scale code from its amax: MX, the E8M0 field k + 127 of
 * X = 2^k (0..254); NVFP4, the E4M3 pattern of s_b (0..0x7e). */
static uint32_t block_code(const block_params *bp, float amax) {
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
        return (uint32_t)(k + 127);
    }
    /* NVFP4: s_b = E4M3(amax_b / (6 S)), saturating at 448 */
    float t = amax / (6.0f * s);
    return ag_pattern(&bp->scale, &bp->scale_e, t, ag_qmag_hd(&bp->scale, t, 0));
}

/* The divisor of a block's elements from its code; 0 means the block
 * quantizes to zeros. */
static float code_divisor(const block_params *bp, uint32_t code) {
    float s = bp->tensor_scale;
    if (bp->kind == AG_SCALE_E8M0) /* 2^(code - 127): normal from code 1, 2^-127 subnormal */
        return (code != 0 ? ag_bits_float(code << 23) : 0x1p-127f) * s;
    return ag_pattern_value(&bp->scale, &bp->scale_e, bp->scale_fmt, code) * s;
}

typedef struct bcounts {
    uint64_t stalled, total, overflow, underflow, nonfinite;
} bcounts;

/* Lanes of the error sums within a block (blocks are multiples of 8). */
#define BQ_LANES 8

/* (Q(w) - w)^2 / d^2 of one element at divisor dd (w itself squared when
 * the block's divisor is 0), 0 for a non-finite w. */
AG_INLINE double qerr_term(const ag_qparams *p, float wi, const int zero, float dd) {
    uint32_t fin = (ag_float_bits(wi) & 0x7fffffffu) < 0x7f800000u;
    float xs = zero ? 0.0f : wi / dd;
    float a = ag_qmag_hd(p, xs, 0);
    float q = copysignf(a > p->max_finite ? p->max_finite : a, xs);
    double dv = zero ? (double)wi : (double)q - (double)xs;
    return fin ? dv * dv : 0.0;
}

/* One block of len elements at divisor d (0: every element quantizes to
 * 0, and encodes as +0). The flags are compile-time constants in each
 * instantiation: count the stall counts (v read), encode the element
 * patterns into enc, qerr add the block's error sum into *se. */
AG_INLINE void block_elems(const block_params *bp, float d, float neg_lr, const float *w,
                           const float *v, size_t len, bcounts *bc, uint8_t *enc, double *se,
                           const int update_form, const int count, const int encode,
                           const int qerr) {
    const ag_qparams p = bp->elem;
    const ag_eparams e = bp->elem_e;
    const int zero = !(d > 0.0f);
    const float dd = zero ? 1.0f : d;
    uint32_t stalled = 0, total = 0, overflow = 0, underflow = 0, nonfinite = 0;
    double acc[BQ_LANES] = {0};
    for (size_t i = 0; i < len; i++) {
        float wi = w[i];
        uint32_t wb = ag_float_bits(wi) & 0x7fffffffu;
        float xs = zero ? 0.0f : wi / dd;
        float a = ag_qmag_hd(&p, xs, 0);
        if (count) {
            float vi = v[i];
            float u = update_form ? vi : neg_lr * vi;
            uint32_t vb = ag_float_bits(vi) & 0x7fffffffu;
            uint32_t finite = (wb < 0x7f800000u) & (vb < 0x7f800000u);
            uint32_t moving = update_form ? (u != 0.0f) : (ag_bits_float(vb) > AG_GRAD_EPSILON);
            float wu = wi + u;
            float xu = zero ? 0.0f : wu / dd;
            float b = ag_qmag_hd(&p, xu, 0);
            float sa = copysignf(a > p.max_finite ? p.max_finite : a, xs);
            float sb = copysignf(b > p.max_finite ? p.max_finite : b, xu);
            stalled += finite & moving & (sa == sb);
            total += finite & moving;
            overflow += finite & (fabsf(xs) > p.max_finite);
            underflow += finite & (wi != 0.0f) & (a == 0.0f);
            nonfinite += !finite;
        }
        if (encode) enc[i] = (uint8_t)ag_pattern(&p, &e, xs, a);
    }
    /* The error in a loop of its own (double lanes; one loop for both would
     * keep the counts from vectorising), element i in lane i % BQ_LANES. */
    if (qerr) {
        size_t i = 0;
        for (; i + BQ_LANES <= len; i += BQ_LANES)
            for (size_t j = 0; j < BQ_LANES; j++) acc[j] += qerr_term(&p, w[i + j], zero, dd);
        for (; i < len; i++) acc[i % BQ_LANES] += qerr_term(&p, w[i], zero, dd);
    }
    if (count) {
        bc->stalled += stalled;
        bc->total += total;
        bc->overflow += overflow;
        bc->underflow += underflow;
        bc->nonfinite += nonfinite;
    }
    if (qerr) {
        double t = 0.0;
        for (size_t j = 0; j < BQ_LANES; j++) t += acc[j];
        /* back to w's units: d^2 is exact in double (d is a float) */
        *se += zero ? t : t * ((double)d * (double)d);
    }
}

/* Whole blocks of a compile-time size bs (the loops then have constant trip
 * counts and vectorise without remainders), then the tail. With encode,
 * each block writes its code and then its element patterns. */
AG_INLINE void block_pass_bs(const block_params *bp, float neg_lr, const float *w, const float *v,
                             size_t n, bcounts *bc, uint8_t *enc, double *se, const int update_form,
                             const int count, const int encode, const int qerr, const size_t bs) {
    size_t s = 0;
    uint8_t *out = enc;
    for (; s + bs <= n; s += bs) {
        uint32_t code = block_code(bp, block_amax(w + s, bs));
        float d = code_divisor(bp, code);
        if (encode) *out++ = (uint8_t)code;
        block_elems(bp, d, neg_lr, w + s, count ? v + s : NULL, bs, bc, out, se, update_form, count,
                    encode, qerr);
        if (encode) out += bs;
    }
    if (s < n) {
        uint32_t code = block_code(bp, block_amax(w + s, n - s));
        float d = code_divisor(bp, code);
        if (encode) *out++ = (uint8_t)code;
        block_elems(bp, d, neg_lr, w + s, count ? v + s : NULL, n - s, bc, out, se, update_form,
                    count, encode, qerr);
    }
}

AG_INLINE void block_pass(const block_params *bp, float neg_lr, const float *w, const float *v,
                          size_t n, bcounts *bc, uint8_t *enc, double *se, const int update_form,
                          const int count, const int encode, const int qerr) {
    if (bp->block == 32)
        block_pass_bs(bp, neg_lr, w, v, n, bc, enc, se, update_form, count, encode, qerr, 32);
    else
        block_pass_bs(bp, neg_lr, w, v, n, bc, enc, se, update_form, count, encode, qerr, 16);
}

#define BLOCK_PARAMS                                                                               \
    (const block_params *bp, float neg_lr, const float *w, const float *v, size_t n, bcounts *bc,  \
     uint8_t *enc, double *se)
#define BLOCK_VARIANTS(name, update_form, count, encode, qerr)                                     \
    AG_KERNEL_VARIANTS(name, BLOCK_PARAMS, {                                                       \
        block_pass(bp, neg_lr, w, v, n, bc, enc, se, update_form, count, encode, qerr);            \
    })
BLOCK_VARIANTS(block_sgd, 0, 1, 0, 0);
BLOCK_VARIANTS(block_update, 1, 1, 0, 0);
BLOCK_VARIANTS(block_sgd_full, 0, 1, 1, 1);
BLOCK_VARIANTS(block_update_full, 1, 1, 1, 1);
BLOCK_VARIANTS(block_qerr, 0, 0, 0, 1);
BLOCK_VARIANTS(block_encode, 0, 0, 1, 0);

void ag_block_run(const ag_block_params *bp, int update_form, float neg_lr, const float *w,
                  const float *v, size_t n, ag_stall_counts *out, uint8_t *enc, double *sq_error) {
    bcounts bc = {0, 0, 0, 0, 0};
    double se = 0.0;
    int isa = ag_isa_current();
    if (enc != NULL) /* the daemon's pass: counts, patterns and error in one */
        (update_form ? block_update_full_variants : block_sgd_full_variants)[isa](bp, neg_lr, w, v,
                                                                                  n, &bc, enc, &se);
    else
        (update_form ? block_update_variants : block_sgd_variants)[isa](bp, neg_lr, w, v, n, &bc,
                                                                        NULL, NULL);
    if (enc == NULL && sq_error != NULL)
        block_qerr_variants[isa](bp, 0.0f, w, NULL, n, NULL, NULL, &se);
    out->stalled += bc.stalled;
    out->total += bc.total;
    out->overflow += bc.overflow;
    out->underflow += bc.underflow;
    out->nonfinite += bc.nonfinite;
    if (sq_error != NULL) *sq_error += se;
}

void ag_block_qerr(const ag_block_params *bp, const float *w, size_t n, double *sq_error) {
    double se = 0.0;
    block_qerr_variants[ag_isa_current()](bp, 0.0f, w, NULL, n, NULL, NULL, &se);
    *sq_error += se;
}

/* ------------------------------------------------------------- flips */

/* "The same pattern" (as stall.c's flips): the two zeros are one, every
 * NaN (magnitude above nan_above) is one. */
AG_INLINE uint32_t canon(uint32_t b, uint32_t mag_mask, uint32_t nan_above) {
    uint32_t mag = b & mag_mask;
    uint32_t v = mag == 0 ? 0u : b;
    return mag > nan_above ? 0xffffffffu : v;
}

/* Flips of one block of len elements: against prev's patterns pe, either
 * the current patterns ce (same code) or w encoded at divisor d. */
AG_INLINE uint32_t flips_bytes(const block_params *bp, const uint8_t *pe, const uint8_t *ce,
                               size_t len) {
    const uint32_t mm = bp->elem_e.mag_mask, na = bp->elem_e.nan_above;
    uint32_t c = 0;
    for (size_t i = 0; i < len; i++) c += canon(pe[i], mm, na) != canon(ce[i], mm, na);
    return c;
}

AG_INLINE uint32_t flips_encode(const block_params *bp, const uint8_t *pe, const float *w, float d,
                                size_t len) {
    const ag_qparams p = bp->elem;
    const ag_eparams e = bp->elem_e;
    const int zero = !(d > 0.0f);
    const float dd = zero ? 1.0f : d;
    uint32_t c = 0;
    for (size_t i = 0; i < len; i++) {
        float xs = zero ? 0.0f : w[i] / dd;
        uint32_t b = ag_pattern(&p, &e, xs, ag_qmag_hd(&p, xs, 0));
        c += canon(pe[i], e.mag_mask, e.nan_above) != canon(b, e.mag_mask, e.nan_above);
    }
    return c;
}

AG_INLINE void block_flips_bs(const block_params *bp, const uint8_t *prev, const uint8_t *cur,
                              const float *w, size_t n, uint64_t *count, const size_t bs) {
    uint64_t total = 0;
    size_t pos = 0;
    for (size_t s = 0; s < n; s += bs) {
        size_t len = n - s < bs ? n - s : bs;
        uint32_t code = prev[pos];
        if (cur != NULL && cur[pos] == code)
            total += len == bs ? flips_bytes(bp, prev + pos + 1, cur + pos + 1, bs)
                               : flips_bytes(bp, prev + pos + 1, cur + pos + 1, len);
        else
            total += len == bs
                         ? flips_encode(bp, prev + pos + 1, w + s, code_divisor(bp, code), bs)
                         : flips_encode(bp, prev + pos + 1, w + s, code_divisor(bp, code), len);
        pos += len + 1;
    }
    *count = total;
}

#define FLIPS_PARAMS                                                                               \
    (const block_params *bp, const uint8_t *prev, const uint8_t *cur, const float *w, size_t n,    \
     uint64_t *count)
AG_KERNEL_VARIANTS(block_flips, FLIPS_PARAMS, {
    if (bp->block == 32)
        block_flips_bs(bp, prev, cur, w, n, count, 32);
    else
        block_flips_bs(bp, prev, cur, w, n, count, 16);
});

/* ------------------------------------------------------- entry points */

static int block_ok(const ag_format *fmt) {
    return fmt != NULL && fmt->block != 0 && fmt->element != NULL;
}

static int block_stall(const ag_format *fmt, float scale, float lr, int update_form, const float *w,
                       const float *v, size_t n, ag_stall_counts *out) {
    if (!block_ok(fmt)) return AG_EFORMAT;
    if (w == NULL || v == NULL || out == NULL || n == 0 || !isfinite(scale) || !(scale > 0.0f) ||
        (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, scale, &bp);
    ag_block_run(&bp, update_form, -lr, w, v, n, out, NULL, NULL);
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
    if (!block_ok(fmt)) return AG_EFORMAT;
    if (w == NULL || out == NULL || len == 0 || len > (size_t)fmt->block || !isfinite(scale) ||
        !(scale > 0.0f))
        return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, scale, &bp);
    *out = code_divisor(&bp, block_code(&bp, block_amax(w, len)));
    return AG_OK;
}

int ag_encode_any(const ag_format *fmt, float scale, const float *w, size_t n, uint8_t *out) {
    if (fmt == NULL) return AG_EFORMAT;
    if (fmt->block == 0) return ag_encode_array(fmt, scale, w, out, n);
    if (!block_ok(fmt)) return AG_EFORMAT;
    if (w == NULL || out == NULL || n == 0 || !isfinite(scale) || !(scale > 0.0f)) return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, scale, &bp);
    block_encode_variants[ag_isa_current()](&bp, 0.0f, w, NULL, n, NULL, out, NULL);
    return AG_OK;
}

int ag_block_count_flips(const ag_format *fmt, float prev_scale, const uint8_t *prev,
                         const uint8_t *cur, const float *w, size_t n, uint64_t *flips) {
    if (!block_ok(fmt)) return AG_EFORMAT;
    if (prev == NULL || w == NULL || n == 0 || flips == NULL || !isfinite(prev_scale) ||
        !(prev_scale > 0.0f))
        return AG_EINVAL;
    block_params bp;
    ag_block_params_of(fmt, prev_scale, &bp);
    uint64_t count = 0;
    block_flips_variants[ag_isa_current()](&bp, prev, cur, w, n, &count);
    *flips += count;
    return AG_OK;
}
