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
#include "kernel.h"
#include "stall_encode.h"

/* Elements per block: w and g blocks (2 x 8 KiB) stay in L1 across formats,
 * and per-lane 32-bit counters cannot overflow. */
#define BLOCK 2048

typedef struct block_counts {
    uint32_t stalled, total, overflow, underflow, nonfinite;
} block_counts;

/* Pattern constants of one format for encoding (as ag_encode_array builds
 * them): the pattern of a grid magnitude is its float32 exponent rebiased
 * and its top M mantissa bits, or below 2^emin the integer multiple of the
 * uniform step. */
typedef struct enc_params {
    uint32_t bias_adj;     /* bias - 127 */
    uint32_t mant_mask;    /* (1 << M) - 1 */
    uint32_t over_pattern; /* what a magnitude past max_finite encodes to: inf or max */
    uint32_t nan_pattern;  /* canonical NaN, or 0 where NaN encodes as +0 */
    float sub_scale;       /* 2^(M - emin) */
} enc_params;

static void enc_params_of(const ag_format *f, enc_params *e) {
    int M = f->mantissa_bits;
    uint32_t emask = (1u << f->exponent_bits) - 1u;
    e->bias_adj = (uint32_t)(f->bias - 127);
    e->mant_mask = (1u << M) - 1u;
    e->over_pattern = f->has_inf ? emask << M : ag_encode(f, f->max_finite);
    e->nan_pattern = f->has_nan ? ag_encode(f, NAN) : 0u;
    e->sub_scale = ldexpf(1.0f, M - f->min_exponent);
}

/* The pattern of x (= w / scale) from m = ag_qmag_hd(p, x): ag_encode's
 * result, straight-line. */
AG_INLINE uint8_t enc_pattern(const ag_qparams *p, const enc_params *e, float x, float m) {
    uint32_t mb = ag_float_bits(m);
    uint32_t sign = (ag_float_bits(x) >> 24) & 0x80u;
    uint32_t normal = (((mb >> 23) + e->bias_adj) << p->mant) | ((mb >> p->shift) & e->mant_mask);
    uint32_t sub = (uint32_t)(int32_t)(m * e->sub_scale);
    uint32_t mag = mb < p->emin_bits ? sub : normal;
    mag = m > p->max_finite ? e->over_pattern : mag;
    uint32_t out = (mag | sign) & 0xffu;
    return (uint8_t)(x != x ? e->nan_pattern : out);
}

/* update_form 0: v is g and u = neg_lr * g; 1: v is u. encode: also write
 * the pattern of w / scale to enc. The flags are compile-time constants in
 * each instantiation below, so the loop is straight-line code the compiler
 * vectorises. */
AG_INLINE void stall_block_impl(const ag_qparams *pp, const enc_params *ep, float scale,
                                float neg_lr, const float *w, const float *v, size_t n,
                                block_counts *bc, uint8_t *enc, const int update_form,
                                const int half_down, const int encode) {
    const ag_qparams p = *pp;
    const enc_params e = *ep;
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
        if (encode) enc[i] = enc_pattern(&p, &e, xs, a);
    }
    bc->stalled = stalled;
    bc->total = total;
    bc->overflow = overflow;
    bc->underflow = underflow;
    bc->nonfinite = nonfinite;
}

#define STALL_PARAMS                                                                               \
    (const ag_qparams *p, const enc_params *e, float scale, float neg_lr, const float *w,          \
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

typedef void(*stall_fn) STALL_PARAMS;

/* [encode][update_form][half_down] */
static const stall_fn *const stall_table[2][2][2] = {
    {{stall_sgd_variants, stall_sgd_hd_variants},
     {stall_update_variants, stall_update_hd_variants}},
    {{stall_sgd_enc_variants, stall_sgd_hd_enc_variants},
     {stall_update_enc_variants, stall_update_hd_enc_variants}}};

static int scale_ok(float scale) { return isfinite(scale) && scale > 0.0f; }

/* enc: NULL, or one n-byte output per format for the patterns of w. */
static int stall_multi(const ag_format *const *fmts, const float *scales, size_t nfmt, float lr,
                       int update_form, const float *w, const float *v, size_t n,
                       ag_stall_counts *out, uint8_t *const *enc) {
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || v == NULL || n == 0 ||
        nfmt == 0 || nfmt > AG_FORMATS_MAX || (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    ag_qparams params[AG_FORMATS_MAX];
    enc_params eparams[AG_FORMATS_MAX];
    stall_fn fns[AG_FORMATS_MAX];
    int isa = ag_isa_current();
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL) return AG_EFORMAT;
        if (!scale_ok(scales[f]) || (enc != NULL && enc[f] == NULL)) return AG_EINVAL;
        ag_qparams_of(fmts[f], &params[f]);
        memset(&eparams[f], 0, sizeof eparams[f]);
        if (enc != NULL) enc_params_of(fmts[f], &eparams[f]);
        fns[f] = stall_table[enc != NULL][update_form != 0][params[f].half_down != 0][isa];
    }
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        for (size_t f = 0; f < nfmt; f++) {
            block_counts bc;
            fns[f](&params[f], &eparams[f], scales[f], -lr, w + start, v + start, len, &bc,
                   enc != NULL ? enc[f] + start : NULL);
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
                           const float *g, size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, lr, 0, w, g, n, out, NULL);
}

AG_EXTERN int ag_stall_update(const ag_format *fmt, float scale, const float *w, const float *u,
                              size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, 0.0f, 1, w, u, n, out, NULL);
}

AG_EXTERN int ag_stall_sgd_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                 float lr, const float *w, const float *g, size_t n,
                                 ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, lr, 0, w, g, n, out, NULL);
}

AG_EXTERN int ag_stall_update_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                    const float *w, const float *u, size_t n,
                                    ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, 0.0f, 1, w, u, n, out, NULL);
}

int ag_stall_encode_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                          int update_form, float lr, const float *w, const float *v, size_t n,
                          ag_stall_counts *out, uint8_t *const *enc) {
    if (enc == NULL) return AG_EINVAL;
    return stall_multi(fmts, scales, nfmt, update_form ? 0.0f : lr, update_form != 0, w, v, n, out,
                       enc);
}

/* ------------------------------------------------------------- flips */

/* Byte form of "the same pattern": canon() maps each pattern to a byte that
 * is equal exactly when the patterns mean the same thing: the two zeros to
 * 0x00, every NaN (magnitude bits above nan_above) to 0xff, anything else to
 * itself. */
AG_INLINE uint8_t flip_canon(uint8_t b, uint8_t nan_above) {
    uint8_t mag = b & 0x7fu;
    uint8_t v = mag == 0 ? 0u : b;
    return mag > nan_above ? 0xffu : v;
}

/* The largest magnitude bits that are not NaN in fmt: the NaN patterns of
 * every format are the magnitudes above it (0x7f when there are none). */
static uint8_t nan_above_of(const ag_format *fmt) {
    unsigned thr = 0x7f;
    while (thr > 0 && isnan(fmt->decode_table[thr])) thr--;
    return (uint8_t)thr;
}

/* Elements per counting block: a 16-bit per-lane count cannot overflow. */
#define FLIP_BLOCK 32768

AG_INLINE void flips_bytes_impl(const uint8_t *prev, const uint8_t *cur, size_t n,
                                uint8_t nan_above, uint64_t *count) {
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start, *b = cur + start;
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++)
            c += flip_canon(a[i], nan_above) != flip_canon(b[i], nan_above);
        total += c;
    }
    *count = total;
}

/* Pattern flips with the encoding fused in: the pattern of w[i] / scale (as
 * ag_encode_array makes it) against prev[i], in one pass over w. */
AG_INLINE void flips_encode_impl(const ag_qparams *pp, const enc_params *ep, float scale,
                                 const uint8_t *prev, const float *w, size_t n, uint8_t nan_above,
                                 uint64_t *count, const int half_down) {
    const ag_qparams p = *pp;
    const enc_params e = *ep;
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start;
        const float *x = w + start;
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++) {
            float xs = x[i] / scale;
            uint8_t b = enc_pattern(&p, &e, xs, ag_qmag_hd(&p, xs, half_down));
            c += flip_canon(a[i], nan_above) != flip_canon(b, nan_above);
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

AG_KERNEL_VARIANTS(flips_bytes,
                   (const uint8_t *prev, const uint8_t *cur, size_t n, uint8_t nan_above,
                    uint64_t *count),
                   { flips_bytes_impl(prev, cur, n, nan_above, count); });
#define FLIPS_ENCODE_PARAMS                                                                        \
    (const ag_qparams *p, const enc_params *e, float scale, const uint8_t *prev, const float *w,   \
     size_t n, uint8_t nan_above, uint64_t *count)
AG_KERNEL_VARIANTS(flips_encode, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, nan_above, count, 0); });
AG_KERNEL_VARIANTS(flips_encode_hd, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, nan_above, count, 1); });
AG_KERNEL_VARIANTS(flips_table,
                   (const float *ta, const float *tb, const uint8_t *prev, const uint8_t *cur,
                    size_t n, uint64_t *count),
                   { flips_table_impl(ta, tb, prev, cur, n, count); });

int ag_count_pattern_changes(const ag_format *fmt, const uint8_t *prev, const uint8_t *cur,
                             size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL) return AG_EINVAL;
    uint64_t count = 0;
    flips_bytes_variants[ag_isa_current()](prev, cur, n, nan_above_of(fmt), &count);
    *flips += count;
    return AG_OK;
}

AG_EXTERN int ag_count_pattern_flips(const ag_format *fmt, float scale, const uint8_t *prev,
                                     const float *w, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || w == NULL || n == 0 || flips == NULL || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    enc_params e;
    ag_qparams_of(fmt, &p);
    enc_params_of(fmt, &e);
    uint64_t count = 0;
    int isa = ag_isa_current();
    if (p.half_down)
        flips_encode_hd_variants[isa](&p, &e, scale, prev, w, n, nan_above_of(fmt), &count);
    else
        flips_encode_variants[isa](&p, &e, scale, prev, w, n, nan_above_of(fmt), &count);
    *flips += count;
    return AG_OK;
}

/* 1 when, at scale s, equal canon() bytes mean equal values and different
 * ones different values (tab[p] = decode(p) * s). Sign-magnitude patterns
 * decode in increasing magnitude, so it is enough that the magnitudes of
 * each sign stay strictly increasing and nonzero after scaling, that the
 * NaNs are exactly the magnitudes above nan_above, and that the two signs
 * mirror each other. */
static int flips_bytes_exact(const float *tab, uint8_t *nan_above) {
    unsigned thr = 0x7f;
    while (thr > 0 && isnan(tab[thr])) thr--;
    for (unsigned m = 0; m < 0x80; m++) {
        float pos = tab[m], neg = tab[m | 0x80];
        if ((m > thr) != (isnan(pos) != 0) || (m > thr) != (isnan(neg) != 0)) return 0;
        if (m > thr) continue;
        if (m == 0 ? (pos != 0.0f || neg != 0.0f) : !(pos > tab[m - 1] && neg == -pos)) return 0;
    }
    *nan_above = (uint8_t)thr;
    return 1;
}

AG_EXTERN int ag_count_flips(const ag_format *fmt, const uint8_t *prev, float prev_scale,
                             const uint8_t *cur, float cur_scale, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL || !scale_ok(prev_scale) ||
        !scale_ok(cur_scale))
        return AG_EINVAL;
    float ta[256], tb[256];
    for (int p = 0; p < 256; p++) {
        ta[p] = fmt->decode_table[p] * prev_scale;
        tb[p] = fmt->decode_table[p] * cur_scale;
    }
    uint8_t nan_above;
    uint64_t count = 0;
    int isa = ag_isa_current();
    if (prev_scale == cur_scale && flips_bytes_exact(ta, &nan_above))
        flips_bytes_variants[isa](prev, cur, n, nan_above, &count);
    else
        flips_table_variants[isa](ta, tb, prev, cur, n, &count);
    *flips += count;
    return AG_OK;
}
