/*
 * quantize.c - encode, decode, quantize and dequantize, scalar and array.
 * Rounding itself is ag_qvalue() (kernel.h); this file turns rounded values
 * into bit patterns and applies scales. Array loops are written so that the
 * compiler vectorises them, with an AVX2 clone picked at run time.
 */
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define AG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define AG_CLONES
#endif

static int scale_ok(float scale)
{
    return isfinite(scale) && scale > 0.0f;
}

/* The pattern of a value already on the grid (q = ag_qvalue(...)). */
static uint8_t pattern_of(const ag_format *f, float q)
{
    int E = f->exponent_bits, M = f->mantissa_bits;
    uint32_t emask = (1u << E) - 1u;
    if (isnan(q)) {
        /* canonical NaN: e all ones, m = 1 (inf formats) or m all ones */
        uint32_t m = f->has_inf ? 1u : (1u << M) - 1u;
        return (uint8_t)((emask << M) | m);
    }
    uint8_t sign = signbit(q) ? 0x80 : 0x00;
    float a = fabsf(q);
    if (isinf(a))
        return (uint8_t)(sign | (emask << M));
    if (a == 0.0f)
        return sign;
    if (E == 0)
        return (uint8_t)(sign | (uint32_t)ldexpf(a, M));
    uint32_t bits = ag_float_bits(a);
    int32_t ex = (int32_t)(bits >> 23) - 127;
    if (ex < f->min_exponent) /* subnormal: an integer multiple of 2^(emin - M) */
        return (uint8_t)(sign | (uint32_t)ldexpf(a, M - f->min_exponent));
    uint32_t e = (uint32_t)(ex + f->bias);
    uint32_t m = (bits & 0x7fffffu) >> (23 - M);
    return (uint8_t)(sign | (e << M) | m);
}

AG_EXTERN uint8_t ag_encode(const ag_format *fmt, float x)
{
    if (fmt == NULL)
        return 0;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    return pattern_of(fmt, ag_qvalue(&p, x));
}

AG_EXTERN float ag_decode(const ag_format *fmt, uint8_t bits)
{
    return fmt == NULL ? NAN : fmt->decode_table[bits];
}

AG_EXTERN int ag_encode_array(const ag_format *fmt, float scale, const float *x,
                              uint8_t *out, size_t n)
{
    if (fmt == NULL || x == NULL || out == NULL || n == 0 || !scale_ok(scale))
        return AG_EINVAL;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    for (size_t i = 0; i < n; i++)
        out[i] = pattern_of(fmt, ag_qvalue(&p, x[i] / scale));
    return AG_OK;
}

AG_EXTERN int ag_decode_array(const ag_format *fmt, float scale, const uint8_t *bits,
                              float *out, size_t n)
{
    if (fmt == NULL || bits == NULL || out == NULL || n == 0 || !scale_ok(scale))
        return AG_EINVAL;
    for (size_t i = 0; i < n; i++)
        out[i] = fmt->decode_table[bits[i]] * scale;
    return AG_OK;
}

AG_CLONES
static void quantize_loop(const ag_qparams *pp, float scale, const float *x, float *out,
                          size_t n)
{
    const ag_qparams p = *pp;
    for (size_t i = 0; i < n; i++)
        out[i] = ag_qvalue(&p, x[i] / scale) * scale;
}

AG_EXTERN int ag_quantize_checked(const ag_format *fmt, float scale, const float *x,
                                  float *out, size_t n)
{
    if (fmt == NULL || x == NULL || out == NULL || n == 0 || !scale_ok(scale))
        return AG_EINVAL;
    ag_qparams p;
    ag_qparams_of(fmt, &p);
    quantize_loop(&p, scale, x, out, n);
    return AG_OK;
}

AG_EXTERN void ag_quantize(const ag_format *fmt, float scale, const float *x, float *out,
                           size_t n)
{
    (void)ag_quantize_checked(fmt, scale, x, out, n);
}

AG_EXTERN int ag_dequantize(float scale, const float *x, float *out, size_t n)
{
    if (x == NULL || out == NULL || n == 0 || !isfinite(scale))
        return AG_EINVAL;
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] * scale;
    return AG_OK;
}
