/*
 * quantize.c - encode, decode, quantize and dequantize, scalar and array.
 * Rounding itself is ag_qvalue() (kernel.h), patterns ag_pattern(); this file
 * applies scales and stores patterns of one or two bytes. Array loops are written so that the
 * compiler vectorises them, in one variant per instruction set (kernel.h).
 */
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

static int scale_ok(float scale) { return isfinite(scale) && scale > 0.0f; }

AG_EXTERN uint16_t ag_encode(const ag_format *fmt, float x) {
    if (fmt == NULL) return 0;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    return (uint16_t)ag_pattern(&p, &e, x, ag_qmag(&p, x));
}

AG_EXTERN float ag_decode(const ag_format *fmt, uint16_t bits) {
    if (fmt == NULL) return NAN;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    return ag_pattern_value(&p, &e, fmt, bits);
}

/* wide: 2-byte patterns (stored as uint16_t through memcpy: the buffer is
 * bytes to the caller). */
AG_INLINE void encode_impl(const ag_qparams *pp, const ag_eparams *ep, float scale, const float *x,
                           uint8_t *out, size_t n, const int half_down, const int wide) {
    const ag_qparams p = *pp;
    const ag_eparams e = *ep;
    for (size_t i = 0; i < n; i++) {
        float xs = x[i] / scale;
        uint32_t b = ag_pattern(&p, &e, xs, ag_qmag_hd(&p, xs, half_down));
        if (wide) {
            uint16_t h = (uint16_t)b;
            memcpy(out + 2 * i, &h, 2);
        } else {
            out[i] = (uint8_t)b;
        }
    }
}

#define ENCODE_PARAMS                                                                              \
    (const ag_qparams *p, const ag_eparams *e, float scale, const float *x, uint8_t *out, size_t n)
AG_KERNEL_VARIANTS(encode_loop, ENCODE_PARAMS, { encode_impl(p, e, scale, x, out, n, 0, 0); });
AG_KERNEL_VARIANTS(encode_loop_hd, ENCODE_PARAMS, { encode_impl(p, e, scale, x, out, n, 1, 0); });
AG_KERNEL_VARIANTS(encode_loop_w, ENCODE_PARAMS, { encode_impl(p, e, scale, x, out, n, 0, 1); });
AG_KERNEL_VARIANTS(encode_loop_hd_w, ENCODE_PARAMS, { encode_impl(p, e, scale, x, out, n, 1, 1); });

AG_EXTERN int ag_encode_array(const ag_format *fmt, float scale, const float *x, uint8_t *out,
                              size_t n) {
    if (fmt == NULL || x == NULL || out == NULL || n == 0 || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    int isa = ag_isa_current();
    if (fmt->pattern_bytes == 2)
        (p.half_down ? encode_loop_hd_w_variants : encode_loop_w_variants)[isa](&p, &e, scale, x,
                                                                                out, n);
    else
        (p.half_down ? encode_loop_hd_variants : encode_loop_variants)[isa](&p, &e, scale, x, out,
                                                                            n);
    return AG_OK;
}

AG_EXTERN int ag_decode_array(const ag_format *fmt, float scale, const uint8_t *bits, float *out,
                              size_t n) {
    if (fmt == NULL || bits == NULL || out == NULL || n == 0 || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    if (fmt->pattern_bytes == 1) {
        float table[256];
        for (uint32_t b = 0; b < 256; b++) table[b] = ag_pattern_value(&p, &e, fmt, b) * scale;
        for (size_t i = 0; i < n; i++) out[i] = table[bits[i]];
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, bits + 2 * i, 2);
            out[i] = ag_pattern_value(&p, &e, fmt, h) * scale;
        }
    }
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
