/*
 * test_format.c - core/format.c: the registry, format fields, and decoding of
 * every pattern of every seed format.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "reference.h"

static const char *const seed_names[] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"};

Test(format, registry_holds_the_five_seed_formats_in_order) {
    cr_assert_geq(ag_format_count(), 5);
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_at(i);
        cr_assert_not_null(f);
        cr_assert_str_eq(f->name, seed_names[i]);
        cr_assert_eq(ag_format_get(seed_names[i]), f);
    }
    cr_assert_null(ag_format_get("E4M4"));
    cr_assert_null(ag_format_get("e5m2"));
    cr_assert_null(ag_format_get(NULL));
    cr_assert_null(ag_format_at(ag_format_count()));
}

Test(format, seed_fields_match_the_design_table) {
    static const struct {
        const char *n;
        int E, M, bias, inf, nan;
        double minp, maxf;
    } t[] = {
        {"E0M7", 0, 7, 0, 0, 0, 1.0 / 128, 127.0 / 128}, {"E1M6", 1, 6, 0, 0, 0, 1.0 / 32, 3.96875},
        {"E3M4", 3, 4, 1, 0, 0, 1.0 / 16, 124.0},        {"E5M2", 5, 2, 15, 1, 1, 0x1p-16, 57344.0},
        {"E7M0", 7, 0, 63, 0, 0, 0x1p-62, 0x1p64},
    };
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_get(t[i].n);
        cr_assert_eq(f->exponent_bits, t[i].E, "%s", t[i].n);
        cr_assert_eq(f->mantissa_bits, t[i].M, "%s", t[i].n);
        cr_assert_eq(f->bias, t[i].bias, "%s", t[i].n);
        cr_assert_eq(f->has_inf, t[i].inf, "%s", t[i].n);
        cr_assert_eq(f->has_nan, t[i].nan, "%s", t[i].n);
        cr_assert_eq((double)f->min_positive, t[i].minp, "%s", t[i].n);
        cr_assert_eq((double)f->max_finite, t[i].maxf, "%s", t[i].n);
    }
}

/* Values worked out by hand from docs/numerics.md's table, pattern by pattern. */
Test(format, decode_matches_hand_derived_values) {
    static const struct {
        const char *n;
        uint8_t b;
        double v;
    } t[] = {
        {"E0M7", 0x00, 0.0},         {"E0M7", 0x01, 1.0 / 128},   {"E0M7", 0x40, 0.5},
        {"E0M7", 0x7f, 127.0 / 128}, {"E0M7", 0xc0, -0.5},        {"E0M7", 0xff, -127.0 / 128},
        {"E1M6", 0x01, 1.0 / 32},    {"E1M6", 0x3f, 63.0 / 32},   {"E1M6", 0x40, 2.0},
        {"E1M6", 0x41, 2.03125},     {"E1M6", 0x7f, 3.96875},     {"E1M6", 0xc0, -2.0},
        {"E3M4", 0x01, 1.0 / 16},    {"E3M4", 0x0f, 15.0 / 16},   {"E3M4", 0x10, 1.0},
        {"E3M4", 0x18, 1.5},         {"E3M4", 0x70, 64.0},        {"E3M4", 0x7f, 124.0},
        {"E5M2", 0x01, 0x1p-16},     {"E5M2", 0x03, 3 * 0x1p-16}, {"E5M2", 0x04, 0x1p-14},
        {"E5M2", 0x3c, 1.0},         {"E5M2", 0x3d, 1.25},        {"E5M2", 0x7b, 57344.0},
        {"E5M2", 0xbc, -1.0},        {"E7M0", 0x01, 0x1p-62},     {"E7M0", 0x3f, 1.0},
        {"E7M0", 0x40, 2.0},         {"E7M0", 0x7f, 0x1p64},      {"E7M0", 0xbf, -1.0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const ag_format *f = ag_format_get(t[i].n);
        cr_assert_eq((double)ag_decode(f, t[i].b), t[i].v, "%s 0x%02x", t[i].n, t[i].b);
    }
}

Test(format, decode_of_special_patterns) {
    const ag_format *e5 = ag_format_get("E5M2");
    cr_assert(isinf(ag_decode(e5, 0x7c)) && ag_decode(e5, 0x7c) > 0);
    cr_assert(isinf(ag_decode(e5, 0xfc)) && ag_decode(e5, 0xfc) < 0);
    for (int b = 0x7d; b <= 0x7f; b++) {
        cr_assert(isnan(ag_decode(e5, (uint8_t)b)));
        cr_assert(isnan(ag_decode(e5, (uint8_t)(b | 0x80))));
    }
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_at(i);
        cr_assert_eq(ag_decode(f, 0x00), 0.0f);
        cr_assert(signbit(ag_decode(f, 0x80)) && ag_decode(f, 0x80) == 0.0f, "%s -0", f->name);
    }
    cr_assert(isnan(ag_decode(NULL, 0)));
}

Test(format, every_pattern_decodes_as_the_design_formula_says) {
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_at(i);
        ref_format r = ref_of(f);
        for (int b = 0; b < 256; b++) {
            double want = ref_decode(r, (uint8_t)b);
            float got = ag_decode(f, (uint8_t)b);
            if (isnan(want))
                cr_assert(isnan(got), "%s 0x%02x", f->name, b);
            else
                cr_assert_eq((double)got, want, "%s 0x%02x", f->name, b);
        }
    }
}

Test(format, every_finite_pattern_round_trips) {
    for (size_t i = 0; i < 5; i++) {
        const ag_format *f = ag_format_at(i);
        for (int b = 0; b < 256; b++) {
            float v = ag_decode(f, (uint8_t)b);
            if (isnan(v)) {
                uint8_t c = ag_encode(f, v);
                cr_assert(isnan(ag_decode(f, c)), "%s NaN 0x%02x -> 0x%02x", f->name, b, c);
                cr_assert_eq(c, ref_nan_pattern(ref_of(f)));
                continue;
            }
            cr_assert_eq(ag_encode(f, v), (uint8_t)b, "%s 0x%02x (%a)", f->name, b, (double)v);
        }
    }
}

Test(format, define_adds_a_new_format_once) {
    const ag_format *f = NULL, *g = NULL;
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &f), AG_OK);
    cr_assert_not_null(f);
    cr_assert_eq(ag_format_get("E4M3"), f);
    cr_assert_eq((double)f->max_finite, 448.0); /* OCP E4M3: S.1111.111 is NaN */
    cr_assert_eq((double)f->min_positive, 0x1p-9);
    cr_assert(isnan(ag_decode(f, 0x7f)));
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &g), AG_OK);
    cr_assert_eq(f, g);
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 8, 0, 1, &g), AG_EEXIST);
    cr_assert_eq(ag_format_define("E2M5", 2, 5, 1, 0, 0, &g), AG_OK);
    cr_assert_eq(ag_encode(g, 1.0f), 0x20); /* e = 1 (bias 1), m = 0 */
}

Test(format, define_rejects_impossible_formats) {
    const ag_format *f = NULL;
    cr_assert_eq(ag_format_define("X", 8, 8, 127, 1, 1, &f), AG_EFORMAT); /* 17 bits */
    cr_assert_eq(ag_format_define("X", 1, 1, 0, 0, 0, &f), AG_EFORMAT);   /* 3 bits */
    cr_assert_eq(ag_format_define("X", 0, 2, 0, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define("X", 8, 7, 128, 1, 1, &f), AG_EFORMAT); /* 2^-127 */
    cr_assert_eq(ag_format_define("X", 8, 7, 126, 1, 1, &f), AG_EFORMAT); /* max 2^128 */
    cr_assert_eq(ag_format_define_ex("X", 4, 3, 7, 3, &f), AG_EFORMAT);   /* no such mode */
    cr_assert_eq(ag_format_define("E8M-1", 8, -1, 7, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define("X", 4, 3, 7, 1, 0, &f), AG_EFORMAT);    /* inf without NaN */
    cr_assert_eq(ag_format_define("X", 7, 0, 63, 1, 1, &f), AG_EFORMAT);   /* inf needs m bits */
    cr_assert_eq(ag_format_define("X", 0, 7, 0, 0, 1, &f), AG_EFORMAT);    /* fixed point NaN */
    cr_assert_eq(ag_format_define("X", 0, 7, 3, 0, 0, &f), AG_EFORMAT);    /* fixed point bias */
    cr_assert_eq(ag_format_define("X", 7, 0, -100, 0, 0, &f), AG_EFORMAT); /* past float32 */
    cr_assert_eq(ag_format_define("X", 7, 0, 150, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define("", 4, 3, 7, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define("bad name", 4, 3, 7, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define("a_name_far_too_long", 4, 3, 7, 0, 0, &f), AG_EFORMAT);
    cr_assert_eq(ag_format_define(NULL, 4, 3, 7, 0, 0, &f), AG_EFORMAT);
    cr_assert_null(ag_format_get("X"));
    cr_assert_str_neq(ag_strerror(AG_EFORMAT), ag_strerror(AG_OK));
}

Test(format, strerror_names_every_code) {
    for (int e = 0; e >= AG_ELOST; e--)
        cr_assert_str_neq(ag_strerror(e), "unknown error", "code %d", e);
    cr_assert_str_eq(ag_strerror(12345), "unknown error");
    cr_assert_str_eq(ag_version(), AG_VERSION_STRING);
}
