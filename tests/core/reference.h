/*
 * reference.h - deliberately simple reference numerics for the core tests.
 * Decoding is written from docs/numerics.md's formula; encoding looks for the
 * nearest value among the non-negative patterns with the documented tie rule.
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

/* The sign bit of a pattern: bit E + M. */
static inline uint32_t ref_sign_bit(ref_format f) { return 1u << (f.E + f.M); }

/* Value of a pattern, in double; NaN for NaN patterns. */
static inline double ref_decode(ref_format f, uint32_t b) {
    int s = (b & ref_sign_bit(f)) != 0;
    int e = (int)(b >> f.M) & ((1 << f.E) - 1);
    int m = (int)b & ((1 << f.M) - 1);
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

static inline uint16_t ref_nan_pattern(ref_format f) {
    return (uint16_t)((((1 << f.E) - 1) << f.M) | (f.has_inf ? 1 : (1 << f.M) - 1));
}

/* The largest finite magnitude pattern: the one below the first pattern
 * (counting up) that decodes to inf or NaN. */
static inline uint32_t ref_top(ref_format f) {
    uint32_t top = ref_sign_bit(f) - 1u;
    while (!isfinite(ref_decode(f, top))) top--;
    return top;
}

/* Encode x: the nearest of the finite magnitudes (which increase with the
 * pattern, so a bisection finds the two around |x|), with the documented tie
 * rule (see docs/numerics.md, Formats). */
static inline uint16_t ref_encode(ref_format f, float x) {
    if (isnan(x)) return f.has_nan ? ref_nan_pattern(f) : 0;
    uint32_t sign = signbit(x) ? ref_sign_bit(f) : 0;
    double a = fabs((double)x);
    uint32_t top = ref_top(f);
    double maxv = ref_decode(f, top);
    if (a > maxv) {
        if (!f.has_inf) return (uint16_t)(sign | top);
        /* the next grid value past max is inf; its mantissa field (0) is even */
        double ulp = maxv - ref_decode(f, top - 1);
        if (a >= maxv + ulp / 2) return (uint16_t)(sign | (((1u << f.E) - 1) << f.M));
        return (uint16_t)(sign | top);
    }
    /* lo: the largest pattern with value <= a */
    uint32_t lo = 0, hi = top;
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (ref_decode(f, mid) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    uint32_t best = lo;
    if (lo < top) {
        double dl = a - ref_decode(f, lo), dh = ref_decode(f, lo + 1) - a;
        if (dh < dl)
            best = lo + 1;
        else if (dh == dl) {
            /* tie: even mantissa field; with no mantissa bits, the smaller */
            uint32_t mm = (1u << f.M) - 1u;
            if (f.M != 0 && (lo & mm) % 2 == 1) best = lo + 1;
        }
    }
    return (uint16_t)(sign | best);
}

static inline float ref_quantize(const ag_format *fmt, float x, float scale) {
    ref_format f = ref_of(fmt);
    return (float)ref_decode(f, ref_encode(f, x / scale)) * scale;
}

/* Stall counts element by element from ref_quantize (docs/numerics.md):
 * SGD form (update_form 0) u = -lr * v, update form u = v. Two infinities
 * of one sign compare equal, so an element whose w and w + u both overflow
 * to inf is stalled. */
static inline void ref_stall(const ag_format *f, float scale, int update_form, float lr,
                             const float *w, const float *v, size_t n, ag_stall_counts *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(w[i]) || !isfinite(v[i])) {
            c->nonfinite++;
            continue;
        }
        float u = update_form ? v[i] : -lr * v[i];
        float a = ref_quantize(f, w[i], scale), b = ref_quantize(f, w[i] + u, scale);
        int moving = update_form ? u != 0.0f : fabsf(v[i]) > 1e-10f;
        if (moving) {
            c->total++;
            c->stalled += a == b;
        }
        c->overflow += fabsf(w[i] / scale) > f->max_finite;
        c->underflow += w[i] != 0.0f && a == 0.0f;
    }
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
