/*
 * quantize.c - encode, decode, quantize and dequantize, scalar and array.
 * Rounding itself is ag_qvalue() (kernel.h); this file turns rounded values
 * into bit patterns and applies scales. Array loops are written so that the
 * compiler vectorises them, in one variant per instruction set (kernel.h).
 */
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

static int scale_ok(float scale) { return isfinite(scale) && scale > 0.0f; }

/* The pattern of a value already on the grid (q = ag_qvalue(...)). */
static uint8_t pattern_of(const ag_format *f, float q) {
    int E = f->exponent_bits, M = f->mantissa_bits;
    uint32_t emask = (1u << E) - 1u;
    if (isnan(q)) {
        /* canonical NaN: e all ones, m = 1 (inf formats) or m all ones */
        uint32_t m = f->has_inf ? 1u : (1u << M) - 1u;
        return (uint8_t)((emask << M) | m);
    }
    uint8_t sign = signbit(q) ? 0x80 : 0x00;
    float a = fabsf(q);
    if (isinf(a)) return (uint8_t)(sign | (emask << M));
    if (a == 0.0f) return sign;
    if (E == 0) return (uint8_t)(sign | (uint32_t)ldexpf(a, M));
    uint32_t bits = ag_float_bits(a);
    int32_t ex = (int32_t)(bits >> 23) - 127;
    if (ex < f->min_exponent) /* subnormal: an integer multiple of 2^(emin - M) */
        return (uint8_t)(sign | (uint32_t)ldexpf(a, M - f->min_exponent));
    uint32_t e = (uint32_t)(ex + f->bias);
    uint32_t m = (bits & 0x7fffffu) >> (23 - M);
    return (uint8_t)(sign | (e << M) | m);
}

AG_EXTERN uint8_t ag_encode(const ag_format *fmt, float x) {
    if (fmt == NULL) return 0;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    return pattern_of(fmt, ag_qvalue(&p, x));
}

AG_EXTERN float ag_decode(const ag_format *fmt, uint8_t bits) {
    return fmt == NULL ? NAN : fmt->decode_table[bits];
}

/* Pattern constants of one format, for the branch-free array encoder. */
typedef struct pattern_params {
    uint32_t bias_adj;    /* bias - 127: float32 exponent field to format exponent field */
    uint32_t mant_mask;   /* (1 << M) - 1 */
    uint32_t inf_pattern; /* e all ones, m = 0 (formats with inf) */
    uint32_t max_pattern; /* the largest finite pattern */
    uint32_t nan_pattern; /* canonical NaN, or 0 where NaN encodes as +0 */
    float sub_scale;      /* 2^(M - emin): uniform-grid value to mantissa integer */
} pattern_params;

/* Same result as pattern_of(f, ag_qvalue(p, x)), as straight-line code. */
AG_INLINE uint8_t pattern_fast(const ag_qparams *p, const pattern_params *pp, float x,
                               const int half_down) {
    float m = ag_qmag_hd(p, x, half_down);
    uint32_t mb = ag_float_bits(m);
    uint32_t sign = (ag_float_bits(x) >> 24) & 0x80u;
    uint32_t normal =
        ((((mb >> 23) + pp->bias_adj) << p->mant) | ((mb >> p->shift) & pp->mant_mask));
    uint32_t sub = (uint32_t)(int32_t)(m * pp->sub_scale);
    uint32_t mag = mb < p->emin_bits ? sub : normal;
    mag = m > p->max_finite
              ? (p->overflow_value > p->max_finite ? pp->inf_pattern : pp->max_pattern)
              : mag;
    uint32_t out = (mag | sign) & 0xffu;
    return (uint8_t)(x != x ? pp->nan_pattern : out);
}

AG_INLINE void encode_impl(const ag_qparams *p, const pattern_params *pp, float scale,
                           const float *x, uint8_t *out, size_t n) {
    const ag_qparams q = *p;
    const pattern_params r = *pp;
    if (q.half_down)
        for (size_t i = 0; i < n; i++) out[i] = pattern_fast(&q, &r, x[i] / scale, 1);
    else
        for (size_t i = 0; i < n; i++) out[i] = pattern_fast(&q, &r, x[i] / scale, 0);
}

AG_KERNEL_VARIANTS(encode_loop,
                   (const ag_qparams *p, const pattern_params *pp, float scale, const float *x,
                    uint8_t *out, size_t n),
                   { encode_impl(p, pp, scale, x, out, n); });

AG_EXTERN int ag_encode_array(const ag_format *fmt, float scale, const float *x, uint8_t *out,
                              size_t n) {
    if (fmt == NULL || x == NULL || out == NULL || n == 0 || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    pattern_params pp;
    int M = fmt->mantissa_bits;
    uint32_t emask = (1u << fmt->exponent_bits) - 1u;
    pp.bias_adj = (uint32_t)(fmt->bias - 127);
    pp.mant_mask = (1u << M) - 1u;
    pp.inf_pattern = emask << M;
    pp.max_pattern = ag_encode(fmt, fmt->max_finite);
    pp.nan_pattern = fmt->has_nan ? ag_encode(fmt, NAN) : 0u;
    pp.sub_scale = ldexpf(1.0f, M - fmt->min_exponent);
    encode_loop_variants[ag_isa_current()](&p, &pp, scale, x, out, n);
    return AG_OK;
}

AG_EXTERN int ag_decode_array(const ag_format *fmt, float scale, const uint8_t *bits, float *out,
                              size_t n) {
    if (fmt == NULL || bits == NULL || out == NULL || n == 0 || !scale_ok(scale)) return AG_EINVAL;
    for (size_t i = 0; i < n; i++) out[i] = fmt->decode_table[bits[i]] * scale;
    return AG_OK;
}

AG_INLINE void quantize_impl(const ag_qparams *pp, float scale, const float *x, float *out,
                             size_t n) {
    const ag_qparams p = *pp;
    if (p.half_down)
        for (size_t i = 0; i < n; i++) out[i] = ag_qvalue_hd(&p, x[i] / scale, 1) * scale;
    else
        for (size_t i = 0; i < n; i++) out[i] = ag_qvalue_hd(&p, x[i] / scale, 0) * scale;
}

AG_KERNEL_VARIANTS(quantize_loop,
                   (const ag_qparams *p, float scale, const float *x, float *out, size_t n),
                   { quantize_impl(p, scale, x, out, n); });

AG_EXTERN int ag_quantize_checked(const ag_format *fmt, float scale, const float *x, float *out,
                                  size_t n) {
    if (fmt == NULL || x == NULL || out == NULL || n == 0 || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    quantize_loop_variants[ag_isa_current()](&p, scale, x, out, n);
    return AG_OK;
}

AG_EXTERN void ag_quantize(const ag_format *fmt, float scale, const float *x, float *out,
                           size_t n) {
    (void)ag_quantize_checked(fmt, scale, x, out, n);
}

AG_EXTERN int ag_dequantize(float scale, const float *x, float *out, size_t n) {
    if (x == NULL || out == NULL || n == 0 || !isfinite(scale)) return AG_EINVAL;
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale;
    return AG_OK;
}
