/*
 * kernel.h - internal: the one rounding routine every kernel inlines.
 * ag_qvalue() maps x to the nearest value of a format's grid (the value of
 * decode(encode(x))) with branch-free steps the compiler vectorises.
 */
#ifndef AG_CORE_KERNEL_H
#define AG_CORE_KERNEL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "altgrad/altgrad.h"

typedef struct ag_qparams {
    int32_t emin;       /* exponent of the finest grid region */
    int32_t mant;       /* mantissa bits M */
    uint32_t emin_bits; /* float32 bits of 2^emin: below it the grid is uniform */
    uint32_t shift;     /* 23 - M: float32 mantissa bits dropped by rounding */
    uint32_t half_m1;   /* 2^(shift-1) - 1 */
    uint32_t keep_mask; /* clears the dropped bits */
    float sub_magic;    /* 2^(emin - M + 23): adding it rounds to the uniform grid */
    float max_finite;
    float overflow_value; /* what a magnitude past max_finite becomes: inf or max */
    float nan_value;      /* what NaN becomes: NaN or +0 */
    int half_down;        /* M == 0: ties go to the smaller magnitude */
} ag_qparams;

static inline float ag_bits_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t ag_float_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline void ag_qparams_of(const ag_format *fmt, ag_qparams *p) {
    p->emin = fmt->min_exponent;
    p->mant = fmt->mantissa_bits;
    p->emin_bits = (uint32_t)(fmt->min_exponent + 127) << 23;
    p->shift = 23u - (uint32_t)fmt->mantissa_bits;
    p->half_m1 = (1u << (p->shift - 1)) - 1u;
    p->keep_mask = ~((1u << p->shift) - 1u);
    p->sub_magic =
        ag_bits_float((uint32_t)(fmt->min_exponent - fmt->mantissa_bits + 23 + 127) << 23);
    p->max_finite = fmt->max_finite;
    p->overflow_value = fmt->has_inf ? INFINITY : fmt->max_finite;
    p->nan_value = fmt->has_nan ? NAN : 0.0f;
    p->half_down = fmt->mantissa_bits == 0;
}

#if defined(__GNUC__)
#define AG_INLINE static inline __attribute__((always_inline))
#else
#define AG_INLINE static inline
#endif

/* The magnitude of x rounded to the grid, without overflow or NaN handling
 * (callers compare it with max_finite; NaN and inf give values above it).
 * Where |x| >= 2^emin the grid is x's own binade cut to M mantissa bits, so
 * rounding is integer arithmetic on the float32 bits (a carry moves into the
 * exponent by itself). Below 2^emin the grid is uniform with step
 * 2^(emin - M), and adding 2^(emin - M + 23) makes float32 addition round
 * to exactly that step. half_down must be p->half_down; kernels pass it as a
 * constant so the loop has no branch. */
AG_INLINE float ag_qmag_hd(const ag_qparams *p, float x, const int half_down) {
    uint32_t ab = ag_float_bits(x) & 0x7fffffffu;
    uint32_t odd = half_down ? 0u : (ab >> p->shift) & 1u;
    uint32_t normal = (ab + p->half_m1 + odd) & p->keep_mask;
    float sub = (ag_bits_float(ab) + p->sub_magic) - p->sub_magic;
    return ab < p->emin_bits ? sub : ag_bits_float(normal);
}

AG_INLINE float ag_qmag(const ag_qparams *p, float x) {
    return p->half_down ? ag_qmag_hd(p, x, 1) : ag_qmag_hd(p, x, 0);
}

/* decode(encode(x)) for any float x, sign included. */
AG_INLINE float ag_qvalue_hd(const ag_qparams *p, float x, const int half_down) {
    float m = ag_qmag_hd(p, x, half_down);
    m = m > p->max_finite ? p->overflow_value : m;
    float v = copysignf(m, x);
    return x != x ? p->nan_value : v;
}

AG_INLINE float ag_qvalue(const ag_qparams *p, float x) {
    return p->half_down ? ag_qvalue_hd(p, x, 1) : ag_qvalue_hd(p, x, 0);
}

/* Pattern constants of one format for encoding: the pattern of a grid
 * magnitude m >= 2^emin is its float32 exponent rebiased and its top M
 * mantissa bits; below 2^emin it is the mantissa field of m + 2^emin (exact:
 * m is a multiple of 2^(emin - M)); the sign goes to bit E + M. */
typedef struct ag_eparams {
    uint32_t bias_adj;     /* bias - 127: float32 exponent field to format exponent field */
    uint32_t mant_mask;    /* (1 << M) - 1 */
    uint32_t sign_shift;   /* 31 - (E + M): float32 sign bit to the pattern's */
    uint32_t sign_bit;     /* 1 << (E + M) */
    uint32_t mag_mask;     /* sign_bit - 1 */
    uint32_t over_pattern; /* what a magnitude past max_finite encodes to: inf or max */
    uint32_t nan_pattern;  /* canonical NaN, or 0 where NaN encodes as +0 */
    uint32_t nan_above;    /* magnitude patterns above it are NaN (mag_mask: none) */
    float emin_value;      /* 2^emin */
} ag_eparams;

/* The canonical NaN pattern (e all ones; m = 1 with inf, else m all ones). */
static inline uint32_t ag_nan_pattern_of(const ag_format *f) {
    uint32_t emask = (1u << f->exponent_bits) - 1u, M = (uint32_t)f->mantissa_bits;
    return (emask << M) | (f->has_inf ? 1u : (1u << M) - 1u);
}

static inline void ag_eparams_of(const ag_format *f, ag_eparams *e) {
    uint32_t E = (uint32_t)f->exponent_bits, M = (uint32_t)f->mantissa_bits;
    uint32_t emask = (1u << E) - 1u;
    e->bias_adj = (uint32_t)(f->bias - 127);
    e->mant_mask = (1u << M) - 1u;
    e->sign_shift = 31u - (E + M);
    e->sign_bit = 1u << (E + M);
    e->mag_mask = e->sign_bit - 1u;
    e->nan_pattern = f->has_nan ? ag_nan_pattern_of(f) : 0u;
    /* the largest finite magnitude pattern: below inf, below the all-ones
     * NaN, or all ones */
    uint32_t max_pattern =
        f->has_inf ? (emask << M) - 1u : (f->has_nan ? e->mag_mask - 1u : e->mag_mask);
    e->over_pattern = f->has_inf ? emask << M : max_pattern;
    e->nan_above = f->has_nan ? max_pattern + (uint32_t)f->has_inf : e->mag_mask;
    e->emin_value = ag_bits_float((uint32_t)(f->min_exponent + 127) << 23);
}

/* The pattern of x from m = ag_qmag_hd(p, x) (m = |x| on the grid). */
AG_INLINE uint32_t ag_pattern(const ag_qparams *p, const ag_eparams *e, float x, float m) {
    uint32_t mb = ag_float_bits(m);
    uint32_t sign = (ag_float_bits(x) >> e->sign_shift) & e->sign_bit;
    uint32_t normal = (((mb >> 23) + e->bias_adj) << p->mant) | ((mb >> p->shift) & e->mant_mask);
    uint32_t sub = (ag_float_bits(m + e->emin_value) >> p->shift) & e->mant_mask;
    uint32_t mag = mb < p->emin_bits ? sub : normal;
    mag = m > p->max_finite ? e->over_pattern : mag;
    uint32_t out = (mag | sign) & (e->sign_bit | e->mag_mask);
    return x != x ? e->nan_pattern : out;
}

/* The value of a pattern (decode), straight-line: the magnitude's float32
 * bits are built directly; below 2^emin (e = 0, or a fixed-point format)
 * (2^emin + m 2^(emin - M)) - 2^emin, exact. NaN patterns (magnitude above
 * nan_above) give NaN, inf's pattern inf. */
AG_INLINE float ag_pattern_value(const ag_qparams *p, const ag_eparams *e, const ag_format *f,
                                 uint32_t b) {
    uint32_t mag = b & e->mag_mask;
    uint32_t ef = mag >> p->mant, m = mag & e->mant_mask;
    uint32_t mbits = m << p->shift;
    float sub = ag_bits_float(p->emin_bits | mbits) - e->emin_value;
    float normal = ag_bits_float(((ef - e->bias_adj) << 23) | mbits);
    float v = (f->exponent_bits == 0 || ef == 0) ? sub : normal;
    v = (f->has_inf && mag == e->over_pattern) ? INFINITY : v;
    v = mag > e->nan_above ? NAN : v;
    return (b & e->sign_bit) ? -v : v;
}

/* x / s correctly rounded, without a division, for the kernels that divide
 * a block of elements by one scale (docs/numerics.md, Division by a scale):
 * r = 1 / s (correctly rounded), q = x * r, then one or two corrections
 * q + (x - q s) r, each residual x - q s computed exactly by an fma.
 * Markstein's theorem makes the last correction exact where q is within an
 * ulp of x / s; x * r is, when |s r - 1| <= 2^-25 (steps 1), and after one
 * correction always (steps 2). Needs x / s, x and the residuals normal:
 * ag_recip_steps says which s allow it, the caller which x (no NaN: the
 * sign of a NaN result is not kept; a zero's sign neither, so callers take
 * signs from x). Only the instruction sets with fma call it. */
AG_INLINE float ag_quot(float x, float s, float r, const int steps) {
    float q = x * r;
    if (steps == 2) q = fmaf(fmaf(-q, s, x), r, q);
    return fmaf(fmaf(-q, s, x), r, q);
}

/* The corrections ag_quot needs for scale s (r = 1 / s): 1 or 2, or 0
 * where s is outside [2^-40, 2^60] (a division then). */
static inline int ag_recip_steps(float s, float r) {
    if (!(s >= 0x1p-40f && s <= 0x1p60f)) return 0;
    double delta = (double)s * (double)r - 1.0; /* exact: 48 bits */
    return fabs(delta) <= 0x1p-25 ? 1 : 2;
}

/* Instruction sets the array kernels are compiled for, one variant each,
 * picked once at run time (cpu.c). Every variant computes the same bits. */
enum { AG_ISA_BASE = 0, AG_ISA_AVX2 = 1, AG_ISA_AVX512 = 2, AG_ISA_COUNT = 3 };
/* The variant in use: the best the CPU supports, unless $AG_ISA (base, avx2,
 * avx512) names a supported one, or ag_isa_force chose one. */
int ag_isa_current(void);
int ag_isa_supported(int isa);
/* Use isa from now on (tests, benchmarks): AG_EINVAL if the CPU lacks it. */
int ag_isa_force(int isa);
const char *ag_isa_name(int isa);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AG_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define AG_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")))
#else
#define AG_TARGET_AVX2
#define AG_TARGET_AVX512
#endif

/* Defines name_base, name_avx2 and name_avx512, each the loop `body` (which
 * calls AG_INLINE routines) compiled for one instruction set, and the
 * table name_variants[] indexed by AG_ISA_*. */
#define AG_KERNEL_VARIANTS(name, params, ...)                                                      \
    static void name##_base params __VA_ARGS__ AG_TARGET_AVX2 static void name##_avx2 params       \
        __VA_ARGS__ AG_TARGET_AVX512 static void name##_avx512 params                              \
            __VA_ARGS__ static void(*const name##_variants[AG_ISA_COUNT])                          \
                params = {name##_base, name##_avx2, name##_avx512}

#endif
