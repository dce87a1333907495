/*
 * test_quantize.c - core/quantize.c: encode against the exhaustive reference
 * over random floats and every float near each midpoint and boundary;
 * quantize, dequantize and the array forms; misuse.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "reference.h"

static void check_encode(const ag_format *f, float x) {
    uint8_t want = ref_encode(ref_of(f), x);
    uint8_t got = ag_encode(f, x);
    if (got != want)
        cr_assert_fail("%s encode(%a = %g): got 0x%02x want 0x%02x", f->name, (double)x, (double)x,
                       got, want);
}

static float next_up(float x, int k) {
    for (; k > 0; k--) x = nextafterf(x, INFINITY);
    for (; k < 0; k++) x = nextafterf(x, -INFINITY);
    return x;
}

/* Every float within 4 ulps of each grid value and each midpoint, both signs. */
static void sweep_boundaries(const ag_format *f) {
    ref_format r = ref_of(f);
    for (int b = 0; b < 127; b++) {
        double v = ref_decode(r, (uint8_t)b), w = ref_decode(r, (uint8_t)(b + 1));
        if (!isfinite(v)) continue;
        double pts[3] = {v, isfinite(w) ? (v + w) / 2 : v * 1.5, isfinite(w) ? w : v * 2};
        for (int p = 0; p < 3; p++) {
            float c = (float)pts[p];
            for (int k = -4; k <= 4; k++) {
                float x = next_up(c, k);
                check_encode(f, x);
                check_encode(f, -x);
            }
        }
    }
    /* half the smallest value, the overflow threshold, float32 extremes */
    float specials[] = {f->min_positive / 2,
                        f->max_finite,
                        f->max_finite * 1.0625f,
                        f->max_finite * 1.125f,
                        f->max_finite * 1.25f,
                        f->max_finite * 2,
                        FLT_MAX,
                        FLT_MIN,
                        FLT_TRUE_MIN,
                        0x1p-140f,
                        0.0f,
                        INFINITY,
                        1e30f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        for (int k = -4; k <= 4; k++) {
            float x =
                isinf(specials[i]) || specials[i] == 0 ? specials[i] : next_up(specials[i], k);
            check_encode(f, x);
            check_encode(f, -x);
        }
}

Test(encode, agrees_with_reference_near_every_midpoint_and_boundary) {
    for (size_t i = 0; i < 5; i++) sweep_boundaries(ag_format_at(i));
    const ag_format *e4m3 = NULL;
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &e4m3), AG_OK);
    sweep_boundaries(e4m3);
}

Test(encode, agrees_with_reference_on_random_floats) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_at(i);
        /* random bit patterns cover every exponent; scaled normals cover the grid */
        for (int k = 0; k < 400000; k++) {
            check_encode(f, ref_rand_float_bits(&s));
            float u = (float)((ref_rand(&s) >> 11) * 0x1p-53); /* [0, 1) */
            check_encode(f, (u * 2 - 1) * f->max_finite * 1.2f);
            check_encode(f, u * f->min_positive * 8);
        }
    }
}

Test(encode, special_values_follow_the_design) {
    const ag_format *e5 = ag_format_get("E5M2"), *e3 = ag_format_get("E3M4");
    const ag_format *e7 = ag_format_get("E7M0"), *e0 = ag_format_get("E0M7");
    cr_assert_eq(ag_encode(e5, INFINITY), 0x7c);
    cr_assert_eq(ag_encode(e5, -INFINITY), 0xfc);
    cr_assert_eq(ag_encode(e5, NAN), 0x7d);      /* canonical NaN: m = 1 */
    cr_assert_eq(ag_encode(e5, 61440.0f), 0x7c); /* max + half ulp: inf */
    cr_assert_eq(ag_encode(e5, 61439.0f), 0x7b); /* just below: max */
    cr_assert_eq(ag_encode(e3, INFINITY), 0x7f); /* no inf: saturate */
    cr_assert_eq(ag_encode(e3, -1e30f), 0xff);
    cr_assert_eq(ag_encode(e3, NAN), 0x00);          /* no NaN: +0 */
    cr_assert_eq(ag_encode(e5, -1e-30f), 0x80);      /* signed zero */
    cr_assert_eq(ag_encode(e5, 0x1p-17f), 0x00);     /* half the smallest: tie to even 0 */
    cr_assert_eq(ag_encode(e5, 3 * 0x1p-17f), 0x02); /* 1.5 units: tie to even m = 2 */
    cr_assert_eq(ag_encode(e7, 1.5f), 0x3f);         /* E7M0 tie: smaller magnitude */
    cr_assert_eq(ag_encode(e7, 1.5000001f), 0x40);
    cr_assert_eq(ag_encode(e7, 0x1p-63f), 0x00);
    cr_assert_eq(ag_encode(e0, 1.5f / 128), 0x02); /* fixed point: even integer */
    cr_assert_eq(ag_encode(e0, 2.5f / 128), 0x02);
    cr_assert_eq(ag_encode(e0, 2.0f), 0x7f);
    cr_assert_eq(ag_encode(NULL, 1.0f), 0x00);
}

static void check_quantize_arrays(void);

/* Every instruction-set variant this CPU has, one after another. */
Test(quantize, equals_decode_of_encode_times_scale) {
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        check_quantize_arrays();
    }
}

static void check_quantize_arrays(void) {
    uint64_t s = 42;
    enum { N = 20000 };
    float *x = malloc(N * sizeof *x), *q = malloc(N * sizeof *q);
    uint8_t *bits = malloc(N);
    float *d = malloc(N * sizeof *d);
    for (size_t i = 0; i < N; i++)
        x[i] = (float)((double)(int64_t)ref_rand(&s) * 0x1p-63) * (i % 7 == 0 ? 1e4f : 3.0f);
    x[0] = NAN;
    x[1] = INFINITY;
    x[2] = -0.0f;
    float scales[] = {1.0f, 0.37f, 1e-3f, 250.0f};
    for (size_t fi = 0; fi < 5; fi++) {
        const ag_format *f = ag_format_at(fi);
        for (size_t si = 0; si < 4; si++) {
            float sc = scales[si];
            cr_assert_eq(ag_quantize_checked(f, sc, x, q, N), AG_OK);
            cr_assert_eq(ag_encode_array(f, sc, x, bits, N), AG_OK);
            cr_assert_eq(ag_decode_array(f, sc, bits, d, N), AG_OK);
            for (size_t i = 0; i < N; i++) {
                float want = ref_quantize(f, x[i], sc);
                cr_assert_eq(bits[i], ref_encode(ref_of(f), x[i] / sc));
                if (isnan(want)) {
                    cr_assert(isnan(q[i]) && isnan(d[i]));
                } else {
                    cr_assert(memcmp(&q[i], &want, 4) == 0, "%s scale %g x=%a got %a want %a",
                              f->name, (double)sc, (double)x[i], (double)q[i], (double)want);
                    cr_assert(memcmp(&d[i], &want, 4) == 0);
                }
            }
        }
    }
    /* in place */
    memcpy(q, x, N * sizeof *x);
    ag_quantize(ag_format_get("E3M4"), 2.0f, q, q, N);
    for (size_t i = 3; i < N; i++)
        cr_assert_eq(q[i], ref_quantize(ag_format_get("E3M4"), x[i], 2.0f));
    free(x);
    free(q);
    free(bits);
    free(d);
}

Test(quantize, dequantize_multiplies_by_scale) {
    float x[4] = {1, -2, 0.5f, 0}, out[4];
    cr_assert_eq(ag_dequantize(3.0f, x, out, 4), AG_OK);
    cr_assert_eq(out[0], 3.0f);
    cr_assert_eq(out[1], -6.0f);
    cr_assert_eq(out[2], 1.5f);
    cr_assert_eq(ag_dequantize(NAN, x, out, 4), AG_EINVAL);
}

Test(quantize, misuse_is_rejected_without_touching_output) {
    const ag_format *f = ag_format_get("E5M2");
    float x[2] = {1, 2}, out[2] = {7, 7};
    uint8_t b[2] = {9, 9};
    cr_assert_eq(ag_quantize_checked(NULL, 1, x, out, 2), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, 1, NULL, out, 2), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, 1, x, NULL, 2), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, 1, x, out, 0), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, 0, x, out, 2), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, -1, x, out, 2), AG_EINVAL);
    cr_assert_eq(ag_quantize_checked(f, INFINITY, x, out, 2), AG_EINVAL);
    ag_quantize(f, NAN, x, out, 2);
    cr_assert_eq(out[0], 7.0f);
    cr_assert_eq(ag_encode_array(f, 1, x, b, 0), AG_EINVAL);
    cr_assert_eq(ag_decode_array(NULL, 1, b, out, 2), AG_EINVAL);
    cr_assert_eq(b[0], 9);
    cr_assert_eq(ag_dequantize(1, NULL, out, 2), AG_EINVAL);
}

Test(dtype, half_precision_inputs_widen_exactly) {
    uint16_t bf[4] = {0x3f80, 0xc000, 0x7f80, 0x0001};
    float out[4];
    cr_assert_eq(ag_bf16_to_f32(bf, out, 4), AG_OK);
    cr_assert_eq(out[0], 1.0f);
    cr_assert_eq(out[1], -2.0f);
    cr_assert(isinf(out[2]));
    cr_assert_eq(out[3], 0x1p-133f);
    uint16_t h[6] = {0x3c00, 0xc000, 0x7c00, 0x0001, 0x03ff, 0x7bff};
    float o[6];
    cr_assert_eq(ag_f16_to_f32(h, o, 6), AG_OK);
    cr_assert_eq(o[0], 1.0f);
    cr_assert_eq(o[1], -2.0f);
    cr_assert(isinf(o[2]));
    cr_assert_eq(o[3], 0x1p-24f);
    cr_assert_eq(o[4], 1023 * 0x1p-24f);
    cr_assert_eq(o[5], 65504.0f);
    uint16_t nanh = 0x7e00;
    cr_assert_eq(ag_f16_to_f32(&nanh, o, 1), AG_OK);
    cr_assert(isnan(o[0]));
    cr_assert_eq(ag_f16_to_f32(NULL, o, 1), AG_EINVAL);
    cr_assert_eq(ag_bf16_to_f32(bf, o, 0), AG_EINVAL);
}
