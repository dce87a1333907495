/*
 * stall.c - bit-stall, overflow, underflow and flip counting (DESIGN.md 1.4).
 * One routine serves the SGD form (u = -lr * g, moving when |g| > 1e-10) and
 * the update form (u given, moving when u != 0), for one format or several:
 * the multi-format pass walks the arrays once in cache-sized blocks and runs
 * every format over each block, so memory is read once whatever the count.
 */
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

/* Elements per block: w and g blocks (2 x 8 KiB) stay in L1 across formats,
 * and per-lane 32-bit counters cannot overflow. */
#define BLOCK 2048

typedef struct block_counts {
    uint32_t stalled, total, overflow, underflow, nonfinite;
} block_counts;

/* update_form 0: v is g and u = neg_lr * g; 1: v is u. The flags are
 * compile-time constants in each instantiation below, so the loop is
 * straight-line code the compiler vectorises. */
AG_INLINE void stall_block_impl(const ag_qparams *pp, float scale, float neg_lr,
                                const float *w, const float *v, size_t n, block_counts *bc,
                                const int update_form, const int half_down)
{
    const ag_qparams p = *pp;
    uint32_t stalled = 0, total = 0, overflow = 0, underflow = 0, nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        float wi = w[i], vi = v[i];
        float u = update_form ? vi : neg_lr * vi;
        uint32_t wb = ag_float_bits(wi) & 0x7fffffffu;
        uint32_t vb = ag_float_bits(vi) & 0x7fffffffu;
        uint32_t finite = (wb < 0x7f800000u) & (vb < 0x7f800000u);
        uint32_t moving = update_form ? (u != 0.0f) : (ag_bits_float(vb) > AG_GRAD_EPSILON);
        float xs = wi / scale;
        float a = ag_qmag_hd(&p, xs, half_down);
        float b = ag_qmag_hd(&p, (wi + u) / scale, half_down);
        /* Saturation and sign: both magnitudes beyond max_finite land on the
         * same value (inf or max) exactly when their signs agree. */
        uint32_t a_over = a > p.max_finite, b_over = b > p.max_finite;
        float sa = copysignf(a_over ? p.overflow_value : a, xs);
        float sb = copysignf(b_over ? p.overflow_value : b, wi + u);
        uint32_t same = sa == sb;
        stalled += finite & moving & same;
        total += finite & moving;
        overflow += finite & (fabsf(xs) > p.max_finite);
        underflow += finite & (wi != 0.0f) & (a == 0.0f);
        nonfinite += !finite;
    }
    bc->stalled = stalled;
    bc->total = total;
    bc->overflow = overflow;
    bc->underflow = underflow;
    bc->nonfinite = nonfinite;
}

#define STALL_PARAMS                                                                     \
    (const ag_qparams *p, float scale, float neg_lr, const float *w, const float *v,    \
     size_t n, block_counts *bc)
AG_KERNEL_VARIANTS(stall_sgd_block, STALL_PARAMS,
                   { stall_block_impl(p, scale, neg_lr, w, v, n, bc, 0, 0); });
AG_KERNEL_VARIANTS(stall_sgd_block_hd, STALL_PARAMS,
                   { stall_block_impl(p, scale, neg_lr, w, v, n, bc, 0, 1); });
AG_KERNEL_VARIANTS(stall_update_block, STALL_PARAMS,
                   { stall_block_impl(p, scale, neg_lr, w, v, n, bc, 1, 0); });
AG_KERNEL_VARIANTS(stall_update_block_hd, STALL_PARAMS,
                   { stall_block_impl(p, scale, neg_lr, w, v, n, bc, 1, 1); });

static void stall_block(const ag_qparams *p, float scale, float neg_lr, int update_form,
                        const float *w, const float *v, size_t n, block_counts *bc)
{
    int isa = ag_isa_current();
    if (update_form)
        (p->half_down ? stall_update_block_hd_variants : stall_update_block_variants)[isa](
            p, scale, neg_lr, w, v, n, bc);
    else
        (p->half_down ? stall_sgd_block_hd_variants : stall_sgd_block_variants)[isa](
            p, scale, neg_lr, w, v, n, bc);
}

static int scale_ok(float scale)
{
    return isfinite(scale) && scale > 0.0f;
}

static int stall_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                       float lr, int update_form, const float *w, const float *v, size_t n,
                       ag_stall_counts *out)
{
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || v == NULL || n == 0 ||
        nfmt == 0 || nfmt > AG_FORMATS_MAX || (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    ag_qparams params[AG_FORMATS_MAX];
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL)
            return AG_EFORMAT;
        if (!scale_ok(scales[f]))
            return AG_EINVAL;
        ag_qparams_of(fmts[f], &params[f]);
    }
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        for (size_t f = 0; f < nfmt; f++) {
            block_counts bc;
            stall_block(&params[f], scales[f], -lr, update_form, w + start, v + start, len,
                        &bc);
            out[f].stalled += bc.stalled;
            out[f].total += bc.total;
            out[f].overflow += bc.overflow;
            out[f].underflow += bc.underflow;
            out[f].nonfinite += bc.nonfinite;
        }
    }
    return AG_OK;
}

AG_EXTERN int ag_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                           const float *g, size_t n, ag_stall_counts *out)
{
    if (fmt == NULL)
        return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, lr, 0, w, g, n, out);
}

AG_EXTERN int ag_stall_update(const ag_format *fmt, float scale, const float *w,
                              const float *u, size_t n, ag_stall_counts *out)
{
    if (fmt == NULL)
        return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, 0.0f, 1, w, u, n, out);
}

AG_EXTERN int ag_stall_sgd_multi(const ag_format *const *fmts, const float *scales,
                                 size_t nfmt, float lr, const float *w, const float *g,
                                 size_t n, ag_stall_counts *out)
{
    return stall_multi(fmts, scales, nfmt, lr, 0, w, g, n, out);
}

AG_EXTERN int ag_stall_update_multi(const ag_format *const *fmts, const float *scales,
                                    size_t nfmt, const float *w, const float *u, size_t n,
                                    ag_stall_counts *out)
{
    return stall_multi(fmts, scales, nfmt, 0.0f, 1, w, u, n, out);
}

AG_EXTERN int ag_count_flips(const ag_format *fmt, const uint8_t *prev, float prev_scale,
                             const uint8_t *cur, float cur_scale, size_t n,
                             uint64_t *flips)
{
    if (fmt == NULL)
        return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL || !scale_ok(prev_scale) ||
        !scale_ok(cur_scale))
        return AG_EINVAL;
    uint64_t count = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fmt->decode_table[prev[i]] * prev_scale;
        float b = fmt->decode_table[cur[i]] * cur_scale;
        count += !(a == b || (a != a && b != b));
    }
    *flips += count;
    return AG_OK;
}
