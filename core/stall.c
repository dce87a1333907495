/*
 * stall.c - bit-stall, overflow, underflow and flip counting (docs/numerics.md, Stall).
 * One routine serves the SGD form (u = -lr * g, moving when |g| > 1e-10) and
 * the update form (u given, moving when u != 0), for one format or several:
 * the multi-format pass walks the arrays once in cache-sized blocks and runs
 * every format over each block, so memory is read once whatever the count.
 * The same pass can also encode w for every format (stall_encode.h). Flips
 * (docs/numerics.md) compare 8-bit patterns at one scale: as bytes when both
 * snapshots were encoded at it, or encoding the new weights at the old scale
 * and comparing in the same pass when the scale moved.
 */
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "block.h"
#include "kernel.h"
#include "stall_encode.h"

/* Elements per block: w and g blocks (2 x 8 KiB) stay in L1 across formats,
 * and per-lane 32-bit counters cannot overflow. */
#define BLOCK 2048

typedef struct block_counts {
    uint32_t stalled, total, overflow, underflow, nonfinite;
} block_counts;

/* Stores pattern b of element i: encode 1 one byte, encode 2 a uint16_t. */
AG_INLINE void put_pattern(uint8_t *enc, size_t i, uint32_t b, const int encode) {
    if (encode == 2) {
        uint16_t h = (uint16_t)b;
        memcpy(enc + 2 * i, &h, 2);
    } else {
        enc[i] = (uint8_t)b;
    }
}

/* update_form 0: v is g and u = neg_lr * g; 1: v is u. encode 1 or 2: also
 * write the pattern of w / scale to enc (1 or 2 bytes each). The flags are
 * compile-time constants in each instantiation below, so the loop is
 * straight-line code the compiler vectorises. */
AG_INLINE void stall_block_impl(const ag_qparams *pp, const ag_eparams *ep, float scale,
                                float neg_lr, const float *w, const float *v, size_t n,
                                block_counts *bc, uint8_t *enc, const int update_form,
                                const int half_down, const int encode) {
    const ag_qparams p = *pp;
    const ag_eparams e = *ep;
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
        if (encode) put_pattern(enc, i, ag_pattern(&p, &e, xs, a), encode);
    }
    bc->stalled = stalled;
    bc->total = total;
    bc->overflow = overflow;
    bc->underflow = underflow;
    bc->nonfinite = nonfinite;
}

#define STALL_PARAMS                                                                               \
    (const ag_qparams *p, const ag_eparams *e, float scale, float neg_lr, const float *w,          \
     const float *v, size_t n, block_counts *bc, uint8_t *enc)
#define STALL_VARIANTS(name, update_form, half_down, encode)                                       \
    AG_KERNEL_VARIANTS(name, STALL_PARAMS, {                                                       \
        stall_block_impl(p, e, scale, neg_lr, w, v, n, bc, enc, update_form, half_down, encode);   \
    })
STALL_VARIANTS(stall_sgd, 0, 0, 0);
STALL_VARIANTS(stall_sgd_hd, 0, 1, 0);
STALL_VARIANTS(stall_update, 1, 0, 0);
STALL_VARIANTS(stall_update_hd, 1, 1, 0);
STALL_VARIANTS(stall_sgd_enc, 0, 0, 1);
STALL_VARIANTS(stall_sgd_hd_enc, 0, 1, 1);
STALL_VARIANTS(stall_update_enc, 1, 0, 1);
STALL_VARIANTS(stall_update_hd_enc, 1, 1, 1);
STALL_VARIANTS(stall_sgd_enc2, 0, 0, 2);
STALL_VARIANTS(stall_sgd_hd_enc2, 0, 1, 2);
STALL_VARIANTS(stall_update_enc2, 1, 0, 2);
STALL_VARIANTS(stall_update_hd_enc2, 1, 1, 2);

typedef void(*stall_fn) STALL_PARAMS;

/* [encode][update_form][half_down] */
static const stall_fn *const stall_table[3][2][2] = {
    {{stall_sgd_variants, stall_sgd_hd_variants},
     {stall_update_variants, stall_update_hd_variants}},
    {{stall_sgd_enc_variants, stall_sgd_hd_enc_variants},
     {stall_update_enc_variants, stall_update_hd_enc_variants}},
    {{stall_sgd_enc2_variants, stall_sgd_hd_enc2_variants},
     {stall_update_enc2_variants, stall_update_hd_enc2_variants}}};

/* ------------------------------------------------- quantization error */

/* Lanes of the double accumulators: independent sums the compiler can
 * keep in vector registers (a single running sum would be a serial chain). */
#define QE_LANES 8

/* Sum over the finite w[i] of (Q - w/scale)^2, Q the saturating grid value
 * of w/scale, in double (the difference of two floats is exact in double). */
AG_INLINE double qerr_term(const ag_qparams *p, float wi, float scale, const int half_down) {
    uint32_t fin = (ag_float_bits(wi) & 0x7fffffffu) < 0x7f800000u;
    float xs = wi / scale;
    float a = ag_qmag_hd(p, xs, half_down);
    float q = copysignf(a > p->max_finite ? p->max_finite : a, xs);
    double d = (double)q - (double)xs;
    return fin ? d * d : 0.0;
}

AG_INLINE void qerr_block_impl(const ag_qparams *pp, float scale, const float *w, size_t n,
                               double *sum, const int half_down) {
    const ag_qparams p = *pp;
    double acc[QE_LANES] = {0};
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) acc[j] += qerr_term(&p, w[i + j], scale, half_down);
    for (; i < n; i++) acc[0] += qerr_term(&p, w[i], scale, half_down);
    double t = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) t += acc[j];
    *sum = t;
}

/* Sum of w[i]^2 and the count over the finite w[i]. */
AG_INLINE void signal_block_impl(const float *w, size_t n, double *sum, uint64_t *count) {
    double acc[QE_LANES] = {0};
    uint32_t c = 0;
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) {
            float x = w[i + j];
            uint32_t fin = (ag_float_bits(x) & 0x7fffffffu) < 0x7f800000u;
            acc[j] += fin ? (double)x * (double)x : 0.0;
            c += fin;
        }
    for (; i < n; i++) {
        float x = w[i];
        uint32_t fin = (ag_float_bits(x) & 0x7fffffffu) < 0x7f800000u;
        acc[0] += fin ? (double)x * (double)x : 0.0;
        c += fin;
    }
    double t = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) t += acc[j];
    *sum = t;
    *count = c;
}

#define QERR_PARAMS (const ag_qparams *p, float scale, const float *w, size_t n, double *sum)
AG_KERNEL_VARIANTS(qerr_block, QERR_PARAMS, { qerr_block_impl(p, scale, w, n, sum, 0); });
AG_KERNEL_VARIANTS(qerr_block_hd, QERR_PARAMS, { qerr_block_impl(p, scale, w, n, sum, 1); });
AG_KERNEL_VARIANTS(signal_block, (const float *w, size_t n, double *sum, uint64_t *count),
                   { signal_block_impl(w, n, sum, count); });

static int scale_ok(float scale) { return isfinite(scale) && scale > 0.0f; }

/* enc: NULL, or one output of n patterns per format for the patterns of w.
 * qerr: NULL, or per format the quantization error sums of w, added. */
static int stall_multi(const ag_format *const *fmts, const float *scales, size_t nfmt, float lr,
                       int update_form, const float *w, const float *v, size_t n,
                       ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr) {
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || v == NULL || n == 0 ||
        nfmt == 0 || nfmt > AG_FORMATS_MAX || (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    ag_qparams params[AG_FORMATS_MAX];
    ag_eparams eparams[AG_FORMATS_MAX];
    stall_fn fns[AG_FORMATS_MAX];
    size_t pbytes[AG_FORMATS_MAX];
    ag_block_params bparams[AG_FORMATS_MAX];
    int isa = ag_isa_current();
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL) return AG_EFORMAT;
        if (!scale_ok(scales[f]) || (enc != NULL && enc[f] == NULL)) return AG_EINVAL;
        if (fmts[f]->block != 0) { /* block-scaled: block.c's pass */
            if (fmts[f]->element == NULL) return AG_EFORMAT;
            ag_block_params_of(fmts[f], scales[f], &bparams[f]);
            fns[f] = NULL;
            continue;
        }
        ag_qparams_of(fmts[f], &params[f]);
        ag_eparams_of(fmts[f], &eparams[f]);
        pbytes[f] = (size_t)fmts[f]->pattern_bytes;
        int mode = enc == NULL ? 0 : fmts[f]->pattern_bytes == 2 ? 2 : 1;
        fns[f] = stall_table[mode][update_form != 0][params[f].half_down != 0][isa];
    }
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        double sig = 0.0;
        uint64_t cnt = 0;
        if (qerr != NULL) signal_block_variants[isa](w + start, len, &sig, &cnt);
        for (size_t f = 0; f < nfmt; f++) {
            if (fns[f] == NULL) { /* chunks start at multiples of 2048: block-aligned */
                double se = 0.0;
                ag_block_run(&bparams[f], update_form, -lr, w + start, v + start, len, &out[f],
                             enc != NULL ? enc[f] + ag_encoded_bytes(fmts[f], start) : NULL,
                             qerr != NULL ? &se : NULL);
                if (qerr != NULL) {
                    qerr[f].sq_error += se;
                    qerr[f].sq_signal += sig;
                    qerr[f].count += cnt;
                }
                continue;
            }
            block_counts bc;
            fns[f](&params[f], &eparams[f], scales[f], -lr, w + start, v + start, len, &bc,
                   enc != NULL ? enc[f] + start * pbytes[f] : NULL);
            out[f].stalled += bc.stalled;
            out[f].total += bc.total;
            out[f].overflow += bc.overflow;
            out[f].underflow += bc.underflow;
            out[f].nonfinite += bc.nonfinite;
            if (qerr != NULL) {
                double se = 0.0;
                (params[f].half_down ? qerr_block_hd_variants : qerr_block_variants)[isa](
                    &params[f], scales[f], w + start, len, &se);
                double s2 = (double)scales[f] * (double)scales[f];
                qerr[f].sq_error += se * s2;
                qerr[f].sq_signal += sig;
                qerr[f].count += cnt;
            }
        }
    }
    return AG_OK;
}

AG_EXTERN int ag_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                           const float *g, size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, lr, 0, w, g, n, out, NULL, NULL);
}

AG_EXTERN int ag_stall_update(const ag_format *fmt, float scale, const float *w, const float *u,
                              size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, 0.0f, 1, w, u, n, out, NULL, NULL);
}

AG_EXTERN int ag_stall_sgd_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                 float lr, const float *w, const float *g, size_t n,
                                 ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, lr, 0, w, g, n, out, NULL, NULL);
}

AG_EXTERN int ag_stall_update_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                    const float *w, const float *u, size_t n,
                                    ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, 0.0f, 1, w, u, n, out, NULL, NULL);
}

int ag_stall_encode_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                          int update_form, float lr, const float *w, const float *v, size_t n,
                          ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr) {
    if (enc == NULL) return AG_EINVAL;
    return stall_multi(fmts, scales, nfmt, update_form ? 0.0f : lr, update_form != 0, w, v, n, out,
                       enc, qerr);
}

AG_EXTERN int ag_quant_error_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                   const float *w, size_t n, ag_quant_error *out) {
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || n == 0 || nfmt == 0 ||
        nfmt > AG_FORMATS_MAX)
        return AG_EINVAL;
    ag_qparams params[AG_FORMATS_MAX];
    ag_block_params bparams[AG_FORMATS_MAX];
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL || (fmts[f]->block != 0 && fmts[f]->element == NULL)) return AG_EFORMAT;
        if (!scale_ok(scales[f])) return AG_EINVAL;
        if (fmts[f]->block != 0)
            ag_block_params_of(fmts[f], scales[f], &bparams[f]);
        else
            ag_qparams_of(fmts[f], &params[f]);
    }
    int isa = ag_isa_current();
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        double sig = 0.0;
        uint64_t cnt = 0;
        signal_block_variants[isa](w + start, len, &sig, &cnt);
        for (size_t f = 0; f < nfmt; f++) {
            double se = 0.0;
            if (fmts[f]->block != 0) { /* block-scaled: in w's units already */
                ag_block_qerr(&bparams[f], w + start, len, &se);
                out[f].sq_error += se;
                out[f].sq_signal += sig;
                out[f].count += cnt;
                continue;
            }
            (params[f].half_down ? qerr_block_hd_variants : qerr_block_variants)[isa](
                &params[f], scales[f], w + start, len, &se);
            out[f].sq_error += se * ((double)scales[f] * (double)scales[f]); /* as stall_multi */
            out[f].sq_signal += sig;
            out[f].count += cnt;
        }
    }
    return AG_OK;
}

AG_EXTERN double ag_quant_mse(const ag_quant_error *e) {
    if (e == NULL || e->count == 0) return NAN;
    return e->sq_error / (double)e->count;
}

AG_EXTERN double ag_quant_sqnr_db(const ag_quant_error *e) {
    if (e == NULL || e->count == 0 || !(e->sq_error > 0.0) || !(e->sq_signal > 0.0)) return NAN;
    return 10.0 * log10(e->sq_signal / e->sq_error);
}

/* ------------------------------------------------------------- flips */

/* "The same pattern": canon() maps each pattern to a number that is equal
 * exactly when the patterns mean the same thing: the two zeros to 0, every
 * NaN (magnitude above nan_above) to ~0, anything else to itself. */
AG_INLINE uint32_t flip_canon(uint32_t b, uint32_t mag_mask, uint32_t nan_above) {
    uint32_t mag = b & mag_mask;
    uint32_t v = mag == 0 ? 0u : b;
    return mag > nan_above ? 0xffffffffu : v;
}

AG_INLINE uint32_t get_pattern(const uint8_t *a, size_t i, const int wide) {
    if (wide) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        return h;
    }
    return a[i];
}

/* Elements per counting block: a 16-bit per-lane count cannot overflow. */
#define FLIP_BLOCK 32768

AG_INLINE void flips_bytes_impl(const uint8_t *prev, const uint8_t *cur, size_t n,
                                uint32_t mag_mask, uint32_t nan_above, uint64_t *count,
                                const int wide) {
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start * (wide ? 2 : 1), *b = cur + start * (wide ? 2 : 1);
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++)
            c += flip_canon(get_pattern(a, i, wide), mag_mask, nan_above) !=
                 flip_canon(get_pattern(b, i, wide), mag_mask, nan_above);
        total += c;
    }
    *count = total;
}

/* Pattern flips with the encoding fused in: the pattern of w[i] / scale (as
 * ag_encode_array makes it) against prev[i], in one pass over w. */
AG_INLINE void flips_encode_impl(const ag_qparams *pp, const ag_eparams *ep, float scale,
                                 const uint8_t *prev, const float *w, size_t n, uint64_t *count,
                                 const int half_down, const int wide) {
    const ag_qparams p = *pp;
    const ag_eparams e = *ep;
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start * (wide ? 2 : 1);
        const float *x = w + start;
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++) {
            float xs = x[i] / scale;
            uint32_t b = ag_pattern(&p, &e, xs, ag_qmag_hd(&p, xs, half_down));
            c += flip_canon(get_pattern(a, i, wide), e.mag_mask, e.nan_above) !=
                 flip_canon(b, e.mag_mask, e.nan_above);
        }
        total += c;
    }
    *count = total;
}

/* Value flips at two scales: the two value tables, looked up per element. */
AG_INLINE void flips_table_impl(const float *ta, const float *tb, const uint8_t *prev,
                                const uint8_t *cur, size_t n, uint64_t *count) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        float a = ta[prev[i]], b = tb[cur[i]];
        total += !(a == b || (a != a && b != b));
    }
    *count = total;
}

#define FLIPS_BYTES_PARAMS                                                                         \
    (const uint8_t *prev, const uint8_t *cur, size_t n, uint32_t mag_mask, uint32_t nan_above,     \
     uint64_t *count)
AG_KERNEL_VARIANTS(flips_bytes, FLIPS_BYTES_PARAMS,
                   { flips_bytes_impl(prev, cur, n, mag_mask, nan_above, count, 0); });
AG_KERNEL_VARIANTS(flips_bytes_w, FLIPS_BYTES_PARAMS,
                   { flips_bytes_impl(prev, cur, n, mag_mask, nan_above, count, 1); });
#define FLIPS_ENCODE_PARAMS                                                                        \
    (const ag_qparams *p, const ag_eparams *e, float scale, const uint8_t *prev, const float *w,   \
     size_t n, uint64_t *count)
AG_KERNEL_VARIANTS(flips_encode, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 0, 0); });
AG_KERNEL_VARIANTS(flips_encode_hd, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 1, 0); });
AG_KERNEL_VARIANTS(flips_encode_w, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 0, 1); });
AG_KERNEL_VARIANTS(flips_encode_hd_w, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 1, 1); });
AG_KERNEL_VARIANTS(flips_table,
                   (const float *ta, const float *tb, const uint8_t *prev, const uint8_t *cur,
                    size_t n, uint64_t *count),
                   { flips_table_impl(ta, tb, prev, cur, n, count); });

int ag_count_pattern_changes(const ag_format *fmt, const uint8_t *prev, const uint8_t *cur,
                             size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL) return AG_EINVAL;
    ag_eparams e;
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    (fmt->pattern_bytes == 2 ? flips_bytes_w_variants : flips_bytes_variants)[ag_isa_current()](
        prev, cur, n, e.mag_mask, e.nan_above, &count);
    *flips += count;
    return AG_OK;
}

AG_EXTERN int ag_count_pattern_flips(const ag_format *fmt, float scale, const uint8_t *prev,
                                     const float *w, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || w == NULL || n == 0 || flips == NULL || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    int isa = ag_isa_current();
    int wide = fmt->pattern_bytes == 2;
    if (p.half_down)
        (wide ? flips_encode_hd_w_variants : flips_encode_hd_variants)[isa](&p, &e, scale, prev, w,
                                                                            n, &count);
    else
        (wide ? flips_encode_w_variants : flips_encode_variants)[isa](&p, &e, scale, prev, w, n,
                                                                      &count);
    *flips += count;
    return AG_OK;
}

/* 1 when, at scale s, equal canon() values mean equal values and different
 * ones different values (tab[p] = decode(p) * s, 8-bit patterns, sign at
 * bit 7). Sign-magnitude patterns decode in increasing magnitude, so it is
 * enough that the magnitudes of each sign stay strictly increasing and
 * nonzero after scaling, that the NaNs are exactly the magnitudes above
 * nan_above, and that the two signs mirror each other. */
static int flips_bytes_exact(const float *tab, uint32_t *nan_above) {
    unsigned thr = 0x7f;
    while (thr > 0 && isnan(tab[thr])) thr--;
    for (unsigned m = 0; m < 0x80; m++) {
        float pos = tab[m], neg = tab[m | 0x80];
        if ((m > thr) != (isnan(pos) != 0) || (m > thr) != (isnan(neg) != 0)) return 0;
        if (m > thr) continue;
        if (m == 0 ? (pos != 0.0f || neg != 0.0f) : !(pos > tab[m - 1] && neg == -pos)) return 0;
    }
    *nan_above = thr;
    return 1;
}

AG_EXTERN int ag_count_flips(const ag_format *fmt, const uint8_t *prev, float prev_scale,
                             const uint8_t *cur, float cur_scale, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL || !scale_ok(prev_scale) ||
        !scale_ok(cur_scale))
        return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    if (fmt->pattern_bytes == 2) {
        /* wide patterns: decode each element (no 65536-entry tables) */
        for (size_t i = 0; i < n; i++) {
            float a = ag_pattern_value(&p, &e, fmt, get_pattern(prev, i, 1)) * prev_scale;
            float b = ag_pattern_value(&p, &e, fmt, get_pattern(cur, i, 1)) * cur_scale;
            count += !(a == b || (a != a && b != b));
        }
        *flips += count;
        return AG_OK;
    }
    /* Narrow formats are laid out as 8-bit patterns with the sign at bit 7
     * for the tables: a pattern b of a narrower format has its sign at bit
     * E + M, so its table entry is indexed by b itself (the bits above the
     * sign are zero in valid patterns and ignored by decoding). */
    float ta[256], tb[256];
    for (uint32_t b = 0; b < 256; b++) {
        float v = ag_pattern_value(&p, &e, fmt, b);
        ta[b] = v * prev_scale;
        tb[b] = v * cur_scale;
    }
    uint32_t nan_above;
    int isa = ag_isa_current();
    if (fmt->bits == 8 && prev_scale == cur_scale && flips_bytes_exact(ta, &nan_above))
        flips_bytes_variants[isa](prev, cur, n, 0x7fu, nan_above, &count);
    else
        flips_table_variants[isa](ta, tb, prev, cur, n, &count);
    *flips += count;
    return AG_OK;
}
