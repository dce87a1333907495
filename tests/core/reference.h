/*
 * reference.h - deliberately simple reference numerics for the core tests.
 * Decoding is written from docs/numerics.md's formula; encoding searches all 128
 * non-negative patterns for the nearest value with the documented tie rule.
 * Slow and obvious on purpose: the kernels must agree with it bit for bit.
 */
#ifndef AG_TESTS_REFERENCE_H
#define AG_TESTS_REFERENCE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "altgrad/altgrad.h"

typedef struct ref_format {
    int E, M, bias, has_inf, has_nan;
} ref_format;

static inline ref_format ref_of(const ag_format *f) {
    ref_format r = {f->exponent_bits, f->mantissa_bits, f->bias, f->has_inf, f->has_nan};
    return r;
}

/* Value of a pattern, in double; NaN for NaN patterns. */
static inline double ref_decode(ref_format f, uint8_t b) {
    int s = b >> 7;
    int e = (b >> f.M) & ((1 << f.E) - 1);
    int m = b & ((1 << f.M) - 1);
    int emax_field = (1 << f.E) - 1;
    double v;
    if (f.E == 0)
        v = m / (double)(1 << f.M);
    else if (e == 0)
        v = pow(2.0, 1 - f.bias) * m / (double)(1 << f.M);
    else if (f.has_inf && e == emax_field)
        v = m == 0 ? INFINITY : NAN;
    else if (f.has_nan && !f.has_inf && e == emax_field && m == (1 << f.M) - 1)
        v = NAN;
    else
        v = pow(2.0, e - f.bias) * (1.0 + m / (double)(1 << f.M));
    return s ? -v : v;
}

static inline uint8_t ref_nan_pattern(ref_format f) {
    return (uint8_t)((((1 << f.E) - 1) << f.M) | (f.has_inf ? 1 : (1 << f.M) - 1));
}

/* Encode x by exhaustive nearest search (see docs/numerics.md, Formats). */
static inline uint8_t ref_encode(ref_format f, float x) {
    if (isnan(x)) return f.has_nan ? ref_nan_pattern(f) : 0;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    double a = fabs((double)x);
    int best = -1;
    double best_d = INFINITY, maxv = 0;
    int max_b = 0;
    for (int b = 0; b < 128; b++) {
        double v = ref_decode(f, (uint8_t)b);
        if (!isfinite(v)) continue;
        if (v > maxv) {
            maxv = v;
            max_b = b;
        }
        double d = fabs(v - a);
        if (d < best_d) {
            best_d = d;
            best = b;
        } else if (d == best_d) {
            /* tie: even mantissa field; with no mantissa bits, the smaller */
            int mm = (1 << f.M) - 1;
            if (f.M == 0) {
                if (v < ref_decode(f, (uint8_t)best)) best = b;
            } else if ((b & mm) % 2 == 0 && (best & mm) % 2 == 1) {
                best = b;
            }
        }
    }
    if (a > maxv) {
        if (!f.has_inf) return (uint8_t)(sign | max_b);
        /* the next grid value past max is inf; its mantissa field (0) is even */
        double ulp = maxv - ref_decode(f, (uint8_t)(max_b - 1));
        if (a >= maxv + ulp / 2) return (uint8_t)(sign | (((1 << f.E) - 1) << f.M));
        return (uint8_t)(sign | max_b);
    }
    return (uint8_t)(sign | best);
}

static inline float ref_quantize(const ag_format *fmt, float x, float scale) {
    ref_format f = ref_of(fmt);
    return (float)ref_decode(f, ref_encode(f, x / scale)) * scale;
}

/* Deterministic generator for test data (xorshift64*). */
static inline uint64_t ref_rand(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static inline float ref_rand_float_bits(uint64_t *s) {
    uint32_t b = (uint32_t)(ref_rand(s) >> 32);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

#endif
