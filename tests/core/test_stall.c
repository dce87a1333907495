/*
 * test_stall.c - core/stall.c: bit stall, overflow, underflow and flips,
 * the seed's checks, and agreement of every kernel (one format, several
 * formats in one pass, SGD and update forms) with a per-element reference.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "core/stall_encode.h"
#include "reference.h"

static void fill(float *w, float *g, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        double r1 = (double)(int64_t)ref_rand(&s) * 0x1p-63,
               r2 = (double)(int64_t)ref_rand(&s) * 0x1p-63;
        int kind = (int)(ref_rand(&s) % 16);
        w[i] = (float)(r1 * (kind < 4 ? 1e-6 : kind < 12 ? 2.0 : 3e4));
        g[i] = (float)(r2 * (kind % 3 == 0 ? 1e-5 : kind % 3 == 1 ? 0.5 : 100.0));
        if (kind == 15) g[i] = 0.0f;
        if (kind == 14) g[i] = 1e-11f;
    }
    w[3] = NAN;
    g[5] = INFINITY;
    w[7] = -INFINITY;
    w[9] = 0.0f;
}

static void check_every_kernel(void);

static void assert_counts_eq(ag_stall_counts a, ag_stall_counts b, const char *what) {
    cr_assert(a.stalled == b.stalled && a.total == b.total && a.overflow == b.overflow &&
                  a.underflow == b.underflow && a.nonfinite == b.nonfinite,
              "%s: got %llu/%llu ov %llu un %llu nf %llu, want %llu/%llu ov %llu un %llu nf %llu",
              what, (unsigned long long)a.stalled, (unsigned long long)a.total,
              (unsigned long long)a.overflow, (unsigned long long)a.underflow,
              (unsigned long long)a.nonfinite, (unsigned long long)b.stalled,
              (unsigned long long)b.total, (unsigned long long)b.overflow,
              (unsigned long long)b.underflow, (unsigned long long)b.nonfinite);
}

Test(stall, seed_check_small_sgd_updates_in_e5m2_all_stall) {
    float w[100], g[100];
    for (int i = 0; i < 100; i++) {
        w[i] = 1.0f;
        g[i] = 1e-4f;
    }
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 100, &c), AG_OK);
    cr_assert_eq(c.total, 100);
    cr_assert_eq(c.stalled, 100);
    cr_assert_eq((double)c.stalled / (double)c.total, 1.0);
}

Test(stall, large_updates_do_not_stall) {
    float w[64], g[64];
    for (int i = 0; i < 64; i++) {
        w[i] = 1.0f;
        g[i] = -100.0f; /* u = +1: 1 -> 2 in every format that holds 2 */
    }
    for (size_t f = 1; f < 5; f++) {
        ag_stall_counts c = {0};
        cr_assert_eq(ag_stall_sgd(ag_format_at(f), 1.0f, 0.01f, w, g, 64, &c), AG_OK);
        cr_assert_eq(c.total, 64, "%s", ag_format_at(f)->name);
        cr_assert_eq(c.stalled, 0, "%s", ag_format_at(f)->name);
    }
}

Test(stall, zero_gradients_are_not_counted) {
    float w[8] = {1, 1, 1, 1, 1, 1, 1, 1}, g[8] = {0, 0, 0, 1e-11f, 0, 0, 0, 1e-4f};
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 8, &c), AG_OK);
    cr_assert_eq(c.total, 1);
    cr_assert_eq(c.stalled, 1);
}

Test(stall, larger_learning_rate_unstalls) {
    float w[16], g[16];
    for (int i = 0; i < 16; i++) {
        w[i] = 1.0f;
        g[i] = 1e-4f;
    }
    const ag_format *f = ag_format_get("E5M2");
    ag_stall_counts lo = {0}, hi = {0};
    ag_stall_sgd(f, 1.0f, 0.01f, w, g, 16, &lo);
    ag_stall_sgd(f, 1.0f, 5000.0f, w, g, 16, &hi); /* u = -0.5: 1 -> 0.5 */
    cr_assert_eq(lo.stalled, 16);
    cr_assert_eq(hi.stalled, 0);
}

Test(stall, smaller_scale_resolves_small_updates) {
    /* E0M7 is fixed point: its ulp is scale / 128 everywhere, so the scale
     * alone decides whether a step of lr * g = 0.002 survives rounding. */
    const ag_format *f = ag_format_get("E0M7");
    float g[4] = {1, 1, 1, 1};
    float w[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    ag_stall_counts coarse = {0}, too_fine = {0};
    ag_stall_sgd(f, 1.0f, 0.002f, w, g, 4, &coarse);        /* ulp 0.0078: lost */
    ag_stall_sgd(f, 1.0f / 32, 0.002f, w, g, 4, &too_fine); /* w / scale = 8: saturates */
    cr_assert_eq(coarse.stalled, 4);
    cr_assert_eq(coarse.overflow, 0);
    cr_assert_eq(too_fine.overflow, 4);
    cr_assert_eq(too_fine.stalled, 4); /* both ends saturate to the same max */
    float w2[4] = {0.025f, 0.025f, 0.025f, 0.025f};
    ag_stall_counts fine = {0}, coarse2 = {0};
    ag_stall_sgd(f, 0.03f, 0.002f, w2, g, 4, &fine);   /* ulp 0.00023: moves */
    ag_stall_sgd(f, 1.0f, 0.002f, w2, g, 4, &coarse2); /* 3.2 -> 2.9 ulps: rounds to 3 both */
    cr_assert_eq(fine.stalled, 0);
    cr_assert_eq(fine.overflow, 0);
    cr_assert_eq(coarse2.stalled, 4);
}

Test(stall, overflow_underflow_and_nonfinite_are_counted) {
    const ag_format *f = ag_format_get("E3M4");
    float w[6] = {200.0f, -130.0f, 0.01f, 0.0f, NAN, 1.0f};
    float g[6] = {1, 1, 1, 1, 1, INFINITY};
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(f, 1.0f, 0.1f, w, g, 6, &c), AG_OK);
    cr_assert_eq(c.overflow, 2);
    cr_assert_eq(c.underflow, 1); /* 0.01 < 1/32: zero; exact 0 is not an underflow */
    cr_assert_eq(c.nonfinite, 2);
    cr_assert_eq(c.total, 4);
}

/* Every instruction-set variant this CPU has, one after another. */
Test(stall, every_kernel_agrees_with_the_reference) {
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        cr_log_info("stall kernels: %s", ag_isa_name(isa));
        check_every_kernel();
    }
}

static void check_every_kernel(void) {
    enum { N = 20011 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    fill(w, g, N, 7);
    const ag_format *fmts[5];
    float scales[5] = {0.004f, 1.0f, 0.25f, 1.0f, 3e-3f};
    for (size_t i = 0; i < 5; i++) fmts[i] = ag_format_at(i);
    float lrs[3] = {0.01f, 1.0f, 1e-4f};
    for (int li = 0; li < 3; li++) {
        ag_stall_counts multi[5] = {{0}}, multi_u[5] = {{0}};
        cr_assert_eq(ag_stall_sgd_multi(fmts, scales, 5, lrs[li], w, g, N, multi), AG_OK);
        cr_assert_eq(ag_stall_update_multi(fmts, scales, 5, w, g, N, multi_u), AG_OK);
        for (size_t i = 0; i < 5; i++) {
            ag_stall_counts want, one = {0}, want_u, one_u = {0};
            ref_stall(fmts[i], scales[i], 0, lrs[li], w, g, N, &want);
            ref_stall(fmts[i], scales[i], 1, 0, w, g, N, &want_u);
            cr_assert_eq(ag_stall_sgd(fmts[i], scales[i], lrs[li], w, g, N, &one), AG_OK);
            cr_assert_eq(ag_stall_update(fmts[i], scales[i], w, g, N, &one_u), AG_OK);
            assert_counts_eq(one, want, fmts[i]->name);
            assert_counts_eq(multi[i], want, fmts[i]->name);
            assert_counts_eq(one_u, want_u, fmts[i]->name);
            assert_counts_eq(multi_u[i], want_u, fmts[i]->name);
            cr_assert_gt(want.total, 0);
        }
    }
    free(w);
    free(g);
}

Test(stall, counts_accumulate_across_calls) {
    float w[2] = {1, 1}, g[2] = {1e-4f, 1e-4f};
    ag_stall_counts c = {0};
    ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 2, &c);
    ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 2, &c);
    cr_assert_eq(c.total, 4);
    cr_assert_eq(c.stalled, 4);
}

Test(stall, misuse_is_rejected_and_counts_untouched) {
    const ag_format *f = ag_format_get("E5M2");
    float w[2] = {1, 1}, g[2] = {1, 1};
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(NULL, 1, 0.1f, w, g, 2, &c), AG_EFORMAT);
    cr_assert_eq(ag_stall_sgd(f, 1, 0.1f, NULL, g, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 1, 0.1f, w, NULL, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 1, 0.1f, w, g, 0, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 1, 0.1f, w, g, 2, NULL), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 0, 0.1f, w, g, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, NAN, 0.1f, w, g, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 1, NAN, w, g, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd(f, 1, INFINITY, w, g, 2, &c), AG_EINVAL);
    const ag_format *fm[2] = {f, NULL};
    float sc[2] = {1, 1};
    cr_assert_eq(ag_stall_sgd_multi(fm, sc, 2, 0.1f, w, g, 2, &c), AG_EFORMAT);
    cr_assert_eq(ag_stall_sgd_multi(fm, sc, 0, 0.1f, w, g, 2, &c), AG_EINVAL);
    cr_assert_eq(ag_stall_sgd_multi(fm, sc, AG_FORMATS_MAX + 1, 0.1f, w, g, 2, &c), AG_EINVAL);
    cr_assert_eq(c.total, 0);
    cr_assert_eq(c.stalled, 0);
}

Test(flips, count_changed_quantized_values) {
    const ag_format *f = ag_format_get("E5M2");
    uint8_t a[5] = {0x3c, 0x3c, 0x00, 0x7d, 0x40};
    uint8_t b[5] = {0x3c, 0x3d, 0x80, 0x7e, 0x40};
    uint64_t flips = 0;
    cr_assert_eq(ag_count_flips(f, a, 1.0f, b, 1.0f, 5, &flips), AG_OK);
    cr_assert_eq(flips, 1); /* +0 = -0, NaN = NaN */
    flips = 0;
    cr_assert_eq(ag_count_flips(f, a, 1.0f, b, 2.0f, 5, &flips), AG_OK);
    cr_assert_eq(flips, 3); /* scale change moves every nonzero value */
    cr_assert_eq(ag_count_flips(f, a, 0.0f, b, 1.0f, 5, &flips), AG_EINVAL);
    cr_assert_eq(ag_count_flips(NULL, a, 1.0f, b, 1.0f, 5, &flips), AG_EFORMAT);
}

/* Plain per-element flips: decode both patterns, scale, compare. */
static uint64_t ref_flips(const ag_format *f, const uint8_t *prev, float ps, const uint8_t *cur,
                          float cs, size_t n) {
    ref_format r = ref_of(f);
    uint64_t count = 0;
    for (size_t i = 0; i < n; i++) {
        float a = (float)ref_decode(r, prev[i]) * ps, b = (float)ref_decode(r, cur[i]) * cs;
        count += !(a == b || (isnan(a) && isnan(b)));
    }
    return count;
}

/* prev random; cur mostly equal, else a random pattern, the other zero,
 * another NaN pattern or the neighbouring pattern. */
static void fill_patterns(uint8_t *prev, uint8_t *cur, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ref_rand(&s);
        prev[i] = (uint8_t)r;
        switch ((r >> 8) % 8) {
        case 0: cur[i] = (uint8_t)(r >> 16); break;
        case 1:
            prev[i] &= 0x80u;
            cur[i] = (uint8_t)(prev[i] ^ 0x80u);
            break; /* +0 / -0 */
        case 2:
            prev[i] |= 0x7fu;
            cur[i] = (uint8_t)(0x7du | (r >> 16 & 0x82u));
            break;
        case 3: cur[i] = (uint8_t)(prev[i] + 1u); break;
        default: cur[i] = prev[i]; break;
        }
    }
}

static void check_flips_every_scale(void) {
    enum { N = 70001 }; /* several counting blocks and a ragged end */
    uint8_t *prev = malloc(N), *cur = malloc(N);
    fill_patterns(prev, cur, N, 11);
    const ag_format *fmts[7];
    size_t nf = 0;
    for (size_t i = 0; i < 5; i++) fmts[nf++] = ag_format_at(i);
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &fmts[nf++]), AG_OK);
    cr_assert_eq(ag_format_define("E2M5", 2, 5, 1, 0, 0, &fmts[nf++]), AG_OK);
    /* equal scales (the byte path), scales whose products overflow or go
     * subnormal (the table path must take over), different scales */
    float pairs[][2] = {{1.0f, 1.0f},   {0.004f, 0.004f}, {3e-3f, 3e-3f},
                        {3e38f, 3e38f}, {1e-40f, 1e-40f}, {1e-30f, 1e-30f},
                        {1.0f, 2.0f},   {0.25f, 0.004f},  {1e-40f, 2e-40f}};
    for (size_t f = 0; f < nf; f++)
        for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
            for (size_t len = 1; len <= N; len = len < 100 ? len + 33 : len * 7 + 5) {
                uint64_t got = 5;
                cr_assert_eq(
                    ag_count_flips(fmts[f], prev, pairs[k][0], cur, pairs[k][1], len, &got), AG_OK);
                uint64_t want = ref_flips(fmts[f], prev, pairs[k][0], cur, pairs[k][1], len);
                cr_assert_eq(got, want + 5, "%s scales %g %g n %zu: got %llu want %llu",
                             fmts[f]->name, (double)pairs[k][0], (double)pairs[k][1], len,
                             (unsigned long long)(got - 5), (unsigned long long)want);
            }
    free(prev);
    free(cur);
}

Test(flips, every_kernel_agrees_with_the_reference_at_any_scale) {
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        cr_log_info("flip kernels: %s", ag_isa_name(isa));
        check_flips_every_scale();
    }
}

/* Every element flipped, over runs longer than any narrow per-lane
 * counter holds: each kernel counts all of them. */
Test(flips, a_change_at_every_element_is_counted_every_time) {
    enum { N = 70001 };
    uint8_t *prev = malloc(N), *cur = malloc(N);
    memset(prev, 0x01, N);
    memset(cur, 0x82, N);
    const ag_format *e3 = ag_format_get("E3M4");
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t len = 1; len <= N; len = len * 3 + 1) {
            uint64_t bytes = 0, values = 0;
            cr_assert_eq(ag_count_pattern_changes(e3, prev, cur, len, &bytes), AG_OK);
            cr_assert_eq(ag_count_flips(e3, prev, 1.0f, cur, 1.0f, len, &values), AG_OK);
            cr_assert_eq(bytes, len, "%s n %zu: %llu", ag_isa_name(isa), len,
                         (unsigned long long)bytes);
            cr_assert_eq(values, len, "%s n %zu: %llu", ag_isa_name(isa), len,
                         (unsigned long long)values);
        }
    }
    free(prev);
    free(cur);
}

/* ---- pattern flips: patterns at the previous snapshot's scale ---- */

/* 1 when patterns a and b of f mean different things: +0 and -0 are one
 * pattern, and so are all NaN patterns (reference decode). */
static int ref_pattern_differs(ref_format r, uint8_t a, uint8_t b) {
    double va = ref_decode(r, a), vb = ref_decode(r, b);
    if (isnan(va) || isnan(vb)) return isnan(va) != isnan(vb);
    if ((a & 0x7f) == 0 && (b & 0x7f) == 0) return 0;
    return a != b;
}

/* The seed formats and two defined ones (OCP E4M3 NaN-without-inf, E2M5). */
static size_t flip_formats(const ag_format **fmts) {
    size_t nf = 0;
    for (size_t i = 0; i < 5; i++) fmts[nf++] = ag_format_at(i);
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &fmts[nf++]), AG_OK);
    cr_assert_eq(ag_format_define("E2M5", 2, 5, 1, 0, 0, &fmts[nf++]), AG_OK);
    return nf;
}

/* The case: 256 weights that do not change while the scale drifts
 * by 0.07% (the amax history's maximum moved). Value flips count every
 * nonzero element; pattern flips at the previous scale count none. */
Test(flips, unchanged_weights_under_a_drifting_scale_give_no_pattern_flips) {
    enum { N = 256 };
    float w[N];
    uint8_t prev[N], cur[N];
    uint64_t s = 3;
    const ag_format *fmts[7];
    size_t nf = flip_formats(fmts);
    for (size_t i = 0; i < N; i++) w[i] = (float)((double)(int64_t)ref_rand(&s) * 0x1p-63 * 0.6);
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t f = 0; f < nf; f++) {
            float s0 = 0.6f / fmts[f]->max_finite, s1 = s0 * 1.0007f;
            uint64_t pattern = 0, value = 0, nonzero = 0;
            cr_assert_eq(ag_encode_array(fmts[f], s0, w, prev, N), AG_OK);
            cr_assert_eq(ag_encode_array(fmts[f], s1, w, cur, N), AG_OK);
            for (size_t i = 0; i < N; i++) nonzero += (prev[i] & 0x7f) != 0;
            cr_assert_eq(ag_count_pattern_flips(fmts[f], s0, prev, w, N, &pattern), AG_OK);
            cr_assert_eq(pattern, 0, "%s (%s): %llu pattern flips of unchanged weights",
                         fmts[f]->name, ag_isa_name(isa), (unsigned long long)pattern);
            cr_assert_eq(ag_count_flips(fmts[f], prev, s0, cur, s1, N, &value), AG_OK);
            cr_assert_geq(value, nonzero, "%s: value flips %llu of %llu nonzero", fmts[f]->name,
                          (unsigned long long)value, (unsigned long long)nonzero);
            cr_assert_gt(nonzero, N / 2, "%s: the weights should mostly be representable",
                         fmts[f]->name);
        }
    }
}

/* The largest finite magnitude bits of f. */
static uint8_t max_finite_mag(const ag_format *f) {
    uint8_t m = 0x7f;
    while (!isfinite(ag_decode(f, m))) m--;
    return m;
}

/* Weights on the grid at a power-of-two scale (so w / scale is exact), then
 * a known set of elements moved to a neighbouring pattern; the rest are
 * unchanged, nudged within their rounding interval, or turn from +0 to -0.
 * Exactly the moved ones flip, whichever kernel counts them. */
static void check_known_flips(const ag_format *f) {
    enum { N = 40009 }; /* more than one counting block, ragged end */
    float *prev_w = malloc(N * sizeof *prev_w), *cur_w = malloc(N * sizeof *cur_w);
    uint8_t *prev = malloc(N), *cur = malloc(N);
    const float scale = 0x1p-6f;
    uint8_t top = max_finite_mag(f);
    uint64_t s = 17, moved = 0;
    for (size_t i = 0; i < N; i++) {
        uint8_t mag = (uint8_t)(1 + ref_rand(&s) % top), sign = (uint8_t)(i & 1u) << 7;
        prev_w[i] = ag_decode(f, (uint16_t)(sign | mag)) * scale;
        cur_w[i] = prev_w[i];
        if (i % 11 == 0) { /* +0 then -0: the same pattern for flips */
            prev_w[i] = 0.0f;
            cur_w[i] = -0.0f;
        } else if (i % 7 == 0) { /* the neighbouring grid value: a flip */
            uint8_t to = mag < top ? (uint8_t)(mag + 1) : (uint8_t)(mag - 1);
            cur_w[i] = ag_decode(f, (uint16_t)(sign | to)) * scale;
            moved++;
        } else if (i % 5 == 0) { /* within the rounding interval: no flip */
            cur_w[i] = prev_w[i] * (1.0f + 0x1p-12f);
        }
    }
    cr_assert_eq(ag_encode_array(f, scale, prev_w, prev, N), AG_OK);
    cr_assert_eq(ag_encode_array(f, scale, cur_w, cur, N), AG_OK);
    uint64_t fused = 0, bytes = 0;
    cr_assert_eq(ag_count_pattern_flips(f, scale, prev, cur_w, N, &fused), AG_OK);
    cr_assert_eq(ag_count_pattern_changes(f, prev, cur, N, &bytes), AG_OK);
    cr_assert_eq(fused, moved, "%s: %llu pattern flips, %llu elements moved", f->name,
                 (unsigned long long)fused, (unsigned long long)moved);
    cr_assert_eq(bytes, moved, "%s: %llu byte flips, %llu elements moved", f->name,
                 (unsigned long long)bytes, (unsigned long long)moved);
    free(prev_w);
    free(cur_w);
    free(prev);
    free(cur);
}

Test(flips, pattern_flips_count_exactly_the_elements_that_moved) {
    const ag_format *fmts[7];
    size_t nf = flip_formats(fmts);
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t f = 0; f < nf; f++) check_known_flips(fmts[f]);
    }
}

/* prev random weights; cur mostly equal, else moved a little, moved far,
 * a random float (NaN, inf, huge and tiny included), or the other zero. */
static void fill_weight_pairs(float *prev, float *cur, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ref_rand(&s);
        prev[i] = (float)((double)(int64_t)ref_rand(&s) * 0x1p-63 * (r & 1 ? 2.0 : 1e-3));
        switch ((r >> 8) % 8) {
        case 0: cur[i] = ref_rand_float_bits(&s); break;
        case 1:
            prev[i] = 0.0f;
            cur[i] = -0.0f;
            break;
        case 2:
            prev[i] = ref_rand_float_bits(&s);
            cur[i] = prev[i];
            break;
        case 3: cur[i] = prev[i] * 1.01f; break;
        case 4: cur[i] = prev[i] * 1.3f; break;
        default: cur[i] = prev[i]; break;
        }
    }
}

static void check_pattern_flips_reference(const ag_format *f, const float *pw, const float *cw,
                                          size_t n, float scale) {
    ref_format r = ref_of(f);
    uint8_t *prev = malloc(n), *cur = malloc(n);
    uint64_t *want = malloc((n + 1) * sizeof *want);
    want[0] = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = ref_encode(r, pw[i] / scale);
        cur[i] = ref_encode(r, cw[i] / scale);
        want[i + 1] = want[i] + (uint64_t)ref_pattern_differs(r, prev[i], cur[i]);
    }
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t len = 1; len <= n; len = len < 100 ? len + 33 : len * 5 + 7) {
            uint64_t fused = 7, bytes = 9;
            cr_assert_eq(ag_count_pattern_flips(f, scale, prev, cw, len, &fused), AG_OK);
            cr_assert_eq(ag_count_pattern_changes(f, prev, cur, len, &bytes), AG_OK);
            cr_assert_eq(fused - 7, want[len], "%s (%s) scale %g n %zu: %llu, want %llu", f->name,
                         ag_isa_name(isa), (double)scale, len, (unsigned long long)(fused - 7),
                         (unsigned long long)want[len]);
            cr_assert_eq(bytes - 9, want[len], "%s (%s) scale %g n %zu: bytes %llu, want %llu",
                         f->name, ag_isa_name(isa), (double)scale, len,
                         (unsigned long long)(bytes - 9), (unsigned long long)want[len]);
        }
    }
    free(prev);
    free(cur);
    free(want);
}

Test(flips, every_pattern_flip_kernel_agrees_with_the_reference) {
    enum { N = 5011 };
    float *pw = malloc(N * sizeof *pw), *cw = malloc(N * sizeof *cw);
    const ag_format *fmts[7];
    size_t nf = flip_formats(fmts);
    const float scales[] = {1.0f, 0.004f, 3e-3f, 3e38f, 1e-40f};
    fill_weight_pairs(pw, cw, N, 23);
    for (size_t f = 0; f < nf; f++)
        for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++)
            check_pattern_flips_reference(fmts[f], pw, cw, N, scales[k]);
    free(pw);
    free(cw);

    const ag_format *e5 = ag_format_get("E5M2");
    uint8_t b = 0;
    float w = 1.0f;
    uint64_t c = 0;
    cr_assert_eq(ag_count_pattern_flips(NULL, 1.0f, &b, &w, 1, &c), AG_EFORMAT);
    cr_assert_eq(ag_count_pattern_flips(e5, 0.0f, &b, &w, 1, &c), AG_EINVAL);
    cr_assert_eq(ag_count_pattern_flips(e5, NAN, &b, &w, 1, &c), AG_EINVAL);
    cr_assert_eq(ag_count_pattern_flips(e5, 1.0f, &b, &w, 0, &c), AG_EINVAL);
    cr_assert_eq(ag_count_pattern_flips(e5, 1.0f, NULL, &w, 1, &c), AG_EINVAL);
    cr_assert_eq(ag_count_pattern_changes(NULL, &b, &b, 1, &c), AG_EFORMAT);
    cr_assert_eq(ag_count_pattern_changes(e5, &b, NULL, 1, &c), AG_EINVAL);
    cr_assert_eq(c, 0);
}

/* The fused pass: the counts of the multi-format kernels and the patterns of
 * ag_encode_array, for both forms, seed and defined formats, odd sizes. */
static void check_stall_encode(void) {
    enum { N = 20011 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    fill(w, g, N, 13);
    w[11] = 1e30f; /* past every max_finite */
    w[12] = -1e30f;
    w[13] = -0.0f;
    w[14] = NAN; /* patterns patched after the loop, before the flips */
    g[3000] = INFINITY;
    const ag_format *fmts[7];
    for (size_t i = 0; i < 5; i++) fmts[i] = ag_format_at(i);
    cr_assert_eq(ag_format_define("E4M3", 4, 3, 7, 0, 1, &fmts[5]), AG_OK);
    cr_assert_eq(ag_format_define("E2M5", 2, 5, 1, 0, 0, &fmts[6]), AG_OK);
    float scales[7] = {0.004f, 1.0f, 0.25f, 1.0f, 3e-3f, 0.5f, 2.0f};
    uint8_t *enc[7], *want = malloc(N), *prev[7];
    float *moved = malloc(N * sizeof *moved), *copy = malloc(N * sizeof *copy);
    for (size_t i = 0; i < N; i++) moved[i] = i % 5 == 0 ? -w[i] : i % 7 == 0 ? w[i] * 1.01f : w[i];
    moved[20] = NAN;
    for (size_t f = 0; f < 7; f++) {
        enc[f] = malloc(N);
        prev[f] = malloc(N);
        cr_assert_eq(ag_encode_array(fmts[f], scales[f], moved, prev[f], N), AG_OK);
    }
    for (int form = 0; form < 2; form++)
        for (size_t n = 1; n <= N; n = n * 3 + 2049) {
            ag_stall_counts got[7] = {{0}}, ref[7] = {{0}};
            memset(want, 0, N);
            cr_assert_eq(
                ag_stall_encode_multi(fmts, scales, 7, form, 0.01f, w, g, n, got, enc, NULL),
                AG_OK);
            cr_assert_eq(form ? ag_stall_update_multi(fmts, scales, 7, w, g, n, ref)
                              : ag_stall_sgd_multi(fmts, scales, 7, 0.01f, w, g, n, ref),
                         AG_OK);
            for (size_t f = 0; f < 7; f++) {
                assert_counts_eq(got[f], ref[f], fmts[f]->name);
                cr_assert_eq(ag_encode_array(fmts[f], scales[f], w, want, n), AG_OK);
                for (size_t i = 0; i < n; i++)
                    cr_assert_eq(enc[f][i], want[i], "%s form %d element %zu (%g): %#x, want %#x",
                                 fmts[f]->name, form, i, (double)w[i], enc[f][i], want[i]);
            }
            /* the flips counted in the pass (all but one format) equal the
             * byte comparison of the patterns it wrote */
            const uint8_t *against[7] = {prev[0], prev[1], prev[2], NULL,
                                         prev[4], prev[5], prev[6]};
            uint64_t flips[7] = {1, 2, 3, 4, 5, 6, 7};
            ag_stall_counts again[7] = {{0}};
            for (size_t f = 0; f < 7; f++) memset(enc[f], 0x5a, N);
            /* with the copy of w made by the pass (n even: without; n = 1 to
             * a destination not 16-byte aligned) */
            memset(copy, 0xff, N * sizeof *copy);
            float *to = n == 1 ? copy + 1 : n % 2 ? copy : NULL;
            cr_assert_eq(ag_stall_encode_flips_copy_multi(fmts, scales, 7, form, 0.01f, w, g, n,
                                                          again, enc, NULL, against, flips, to),
                         AG_OK);
            if (to) cr_assert_eq(memcmp(to, w, n * sizeof *w), 0, "n %zu: the copy of w", n);
            for (size_t f = 0; f < 7; f++) {
                assert_counts_eq(again[f], ref[f], fmts[f]->name);
                /* the patterns written as the flips were counted */
                cr_assert_eq(ag_encode_array(fmts[f], scales[f], w, want, n), AG_OK);
                cr_assert_eq(memcmp(enc[f], want, n), 0, "%s form %d n %zu: patterns",
                             fmts[f]->name, form, n);
                uint64_t want_flips = f + 1;
                if (against[f])
                    cr_assert_eq(ag_count_pattern_changes(fmts[f], prev[f], enc[f], n, &want_flips),
                                 AG_OK);
                cr_assert_eq(flips[f], want_flips, "%s form %d n %zu: flips %llu, want %llu",
                             fmts[f]->name, form, n, (unsigned long long)(flips[f] - f - 1),
                             (unsigned long long)(want_flips - f - 1));
                cr_assert(!against[f] || n < 1000 || want_flips > f + 1, "%s: some flips",
                          fmts[f]->name);
            }
        }
    for (size_t f = 0; f < 7; f++) {
        free(enc[f]);
        free(prev[f]);
    }
    free(moved);
    free(copy);
    free(want);
    free(w);
    free(g);
}

Test(stall, the_pass_that_also_encodes_agrees_with_the_separate_kernels) {
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        cr_log_info("stall+encode kernels: %s", ag_isa_name(isa));
        check_stall_encode();
    }
    const ag_format *f = ag_format_get("E5M2");
    float w = 1, g = 1, sc = 1;
    uint8_t b, *enc[1] = {&b}, *none[1] = {NULL};
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_encode_multi(&f, &sc, 1, 0, 0.1f, &w, &g, 1, &c, NULL, NULL), AG_EINVAL);
    cr_assert_eq(ag_stall_encode_multi(&f, &sc, 1, 0, 0.1f, &w, &g, 1, &c, none, NULL), AG_EINVAL);
    cr_assert_eq(ag_stall_encode_multi(&f, &sc, 1, 0, NAN, &w, &g, 1, &c, enc, NULL), AG_EINVAL);
    cr_assert_eq(c.total, 0);
    cr_assert_eq(ag_stall_encode_multi(&f, &sc, 1, 1, NAN, &w, &g, 1, &c, enc, NULL), AG_OK);
    cr_assert_eq(b, ag_encode(f, 1.0f));
    /* flips in the pass: only for per-tensor 1-byte formats, with somewhere to add them */
    const uint8_t *against[1] = {&b};
    uint64_t flips = 0;
    cr_assert_eq(
        ag_stall_encode_flips_multi(&f, &sc, 1, 0, 0.1f, &w, &g, 1, &c, enc, NULL, against, NULL),
        AG_EINVAL);
    const ag_format *mx = ag_format_get("MXFP8_E4M3"), *bf = ag_format_get("BF16");
    uint8_t wide[2], mxb[2], *encw[1] = {wide}, *encm[1] = {mxb};
    cr_assert_eq(ag_stall_encode_flips_multi(&bf, &sc, 1, 0, 0.1f, &w, &g, 1, &c, encw, NULL,
                                             against, &flips),
                 AG_EINVAL);
    cr_assert_eq(ag_stall_encode_flips_multi(&mx, &sc, 1, 0, 0.1f, &w, &g, 1, &c, encm, NULL,
                                             against, &flips),
                 AG_EINVAL);
    cr_assert_eq(flips, 0);
}

/* Blocks of 2048 (the pass's), each a different case for the counting
 * loops that run only where a block cannot overflow (and, for some, holds
 * no nonzero magnitude below 2^emin): every element in range; in range
 * with magnitudes below 2^emin; one w past the format's range; one w + u
 * past it only; the block's largest magnitude exactly max * scale; NaN and
 * inf among in-range values; unmoved elements (-NaN in the prepared w + u)
 * and zeros throughout. Counted block by block and whole, both forms,
 * against the reference. */
static void check_fast_blocks(const ag_format *const *fmts, const float *scales, size_t nfmt,
                              float amax, int whole) {
    enum { B = 2048, NB = 7, N = B * NB };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    uint64_t s = 99;
    for (size_t i = 0; i < N; i++) {
        size_t blk = i / B;
        double r = (double)(int64_t)ref_rand(&s) * 0x1p-63; /* (-1, 1) */
        /* |w| <= 0.9 amax and |u| <= 0.25: w + u stays in range too */
        w[i] = (float)(amax * 0.9 * r);
        if (blk == 1 && i % 3 == 0) /* block 1: magnitudes down to 2^-60 of it */
            w[i] = ldexpf(w[i], -(int)(ref_rand(&s) % 61));
        g[i] = (float)((double)(int64_t)ref_rand(&s) * 0x1p-63 * (i % 5 == 0 ? 1e-4 : 0.25));
        if (i % 97 == 0) g[i] = 0.0f; /* not moving */
        if (i % 101 == 0) w[i] = i % 202 ? -0.0f : 0.0f;
    }
    /* below E7M0's 2^emin once divided: 0, and 2^emin past half of it */
    w[B + 5] = 3e-38f;
    w[B + 7] = -5e-38f;
    /* just above FLT_MIN: residuals of their quotients would be subnormal,
     * where ag_quot is wrong (the pass divides there) */
    for (int j = 0; j < 64; j++) w[B + 11 + 3 * j] = ldexpf(1.0f + (float)j * 0x1p-19f, -126);
    uint8_t *enc[9], *pat = malloc(2 * (size_t)N);
    for (size_t f = 0; f < nfmt; f++) enc[f] = malloc(2 * (size_t)N);
    w[2 * B + 1500] = amax * 1e6f; /* block 2: one w overflows every format */
    w[3 * B + 700] = amax;         /* block 3: w in range, w + u past it */
    g[3 * B + 700] = -amax * 1e6f;
    w[4 * B + 9] = -amax; /* block 4: |w| = amax exactly, at most max once divided */
    w[5 * B + 33] = NAN;  /* block 5: not finite elements */
    g[5 * B + 34] = INFINITY;
    w[5 * B + 35] = -INFINITY;
    for (size_t i = 6 * B; i < N; i++) g[i] = 0.0f; /* block 6: nothing moves */
    for (int form = 0; form < 2; form++) {
        float lr = form ? 0.0f : 1.0f;
        for (size_t b = 0; b < NB + (whole != 0); b++) { /* b == NB: the whole array */
            size_t off = b < NB ? b * B : 0, len = b < NB ? B : N;
            ag_stall_counts got[9] = {{0}};
            int rc = form ? ag_stall_update_multi(fmts, scales, nfmt, w + off, g + off, len, got)
                          : ag_stall_sgd_multi(fmts, scales, nfmt, lr, w + off, g + off, len, got);
            cr_assert_eq(rc, AG_OK);
            for (size_t f = 0; f < nfmt; f++) {
                ag_stall_counts want;
                ref_stall(fmts[f], scales[f], form, lr, w + off, g + off, len, &want);
                char what[64];
                snprintf(what, sizeof what, "%s form %d block %zu", fmts[f]->name, form, b);
                assert_counts_eq(got[f], want, what);
            }
            /* the pass that also encodes: the same counts, ag_encode_array's
             * patterns, ag_quant_error_multi's error sums bit for bit */
            ag_stall_counts again[9] = {{0}};
            ag_quant_error qe[9] = {{0}}, qwant[9] = {{0}};
            cr_assert_eq(ag_stall_encode_multi(fmts, scales, nfmt, form, lr, w + off, g + off, len,
                                               again, enc, qe),
                         AG_OK);
            cr_assert_eq(ag_quant_error_multi(fmts, scales, nfmt, w + off, len, qwant), AG_OK);
            for (size_t f = 0; f < nfmt; f++) {
                assert_counts_eq(again[f], got[f], fmts[f]->name);
                cr_assert_eq(ag_encode_array(fmts[f], scales[f], w + off, pat, len), AG_OK);
                size_t bytes = len * (size_t)fmts[f]->pattern_bytes;
                for (size_t i = 0; i < bytes; i++)
                    cr_assert_eq(enc[f][i], pat[i], "%s form %d block %zu byte %zu: %#x, want %#x",
                                 fmts[f]->name, form, b, i, enc[f][i], pat[i]);
                cr_assert(qe[f].sq_error == qwant[f].sq_error &&
                              qe[f].sq_signal == qwant[f].sq_signal &&
                              qe[f].count == qwant[f].count,
                          "%s form %d block %zu: error %.17g, want %.17g", fmts[f]->name, form, b,
                          qe[f].sq_error, qwant[f].sq_error);
            }
        }
    }
    for (size_t f = 0; f < nfmt; f++) free(enc[f]);
    free(pat);
    free(w);
    free(g);
}

Test(stall, blocks_that_cannot_overflow_count_as_the_reference_does) {
    const char *names[9] = {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0", "E4M3", "E2M1", "BF16", "FP16"};
    const ag_format *fmts[9];
    float scales[9];
    /* amax values whose scales take ag_quot with one correction and with
     * two (ag_recip_steps), for every format between them */
    const float amaxes[4] = {3.0f, 0.7f, 1e-3f, 12345.6f};
    int steps_seen[3] = {0, 0, 0};
    for (int a = 0; a < 4; a++) {
        for (int i = 0; i < 9; i++) {
            fmts[i] = ag_format_get(names[i]);
            cr_assert_not_null(fmts[i], "%s", names[i]);
            scales[i] = (float)ag_compute_scale(amaxes[a], fmts[i], AG_SCALE_MIN);
            steps_seen[ag_recip_steps(scales[i], 1.0f / scales[i])]++;
        }
        /* the first amax on every instruction set; the others where
         * ag_quot runs (every set but base) */
        for (int isa = a == 0 ? 0 : AG_ISA_AVX2; isa < AG_ISA_COUNT; isa++) {
            if (!ag_isa_supported(isa)) continue;
            cr_assert_eq(ag_isa_force(isa), AG_OK);
            check_fast_blocks(fmts, scales, 9, amaxes[a], a == 0);
            if (a == 0) check_fast_blocks(fmts, scales, 5, amaxes[a], 1);
            /* an even count: no format's differences left to sum w's with */
            if (a == 0) check_fast_blocks(fmts, scales, 8, amaxes[a], 1);
        }
    }
    cr_assert(steps_seen[1] > 0 && steps_seen[2] > 0, "one and two corrections: %d, %d",
              steps_seen[1], steps_seen[2]);
}

/* A block of magnitudes just above FLT_MIN, divided by scales near 1e-4:
 * their residuals would be subnormal, where ag_quot can be an ulp off; the
 * pass divides such blocks (an ulp shows in the error sums, all tiny). */
Test(stall, blocks_of_tiny_values_are_divided) {
    enum { N = 2048 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    for (int i = 0; i < N; i++) {
        w[i] = ldexpf(1.0f + (float)i * 0x1p-13f, -126) * (i % 2 ? -1.0f : 1.0f);
        g[i] = 1e-3f;
    }
    const ag_format *fmts[2] = {ag_format_get("E5M2"), ag_format_get("E4M3")};
    float scales[2] = {3.0f / 57344.0f, 3.0f / 448.0f};
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        ag_stall_counts c[2] = {{0}};
        ag_quant_error qe[2] = {{0}}, want[2] = {{0}};
        uint8_t e0[N], e1[N], *enc[2] = {e0, e1};
        cr_assert_eq(ag_stall_encode_multi(fmts, scales, 2, 0, 0.01f, w, g, N, c, enc, qe), AG_OK);
        cr_assert_eq(ag_quant_error_multi(fmts, scales, 2, w, N, want), AG_OK);
        for (int f = 0; f < 2; f++)
            cr_assert(qe[f].sq_error == want[f].sq_error, "%s %s: error %a, want %a",
                      ag_isa_name(isa), fmts[f]->name, qe[f].sq_error, want[f].sq_error);
    }
    free(w);
    free(g);
}

/* ag_quot against IEEE division for every float32 x in [1, 2) (a power of
 * two scales x, the quotient and every residual exactly, and the sign
 * mirrors them, so this is every x whose quotient and residuals stay
 * normal), for scales of both kinds: the seed's formats' scales at several
 * amax values, mantissas at the ends of the binade, and random ones. */
Test(quot, the_reciprocal_quotient_is_the_correctly_rounded_one) {
    float scales[28];
    size_t ns = 0;
    const float amaxes[4] = {1.0f, 3.0f, 0.37f, 12345.6f};
    for (int a = 0; a < 4; a++)
        for (size_t f = 0; f < 5; f++)
            scales[ns++] = (float)ag_compute_scale(amaxes[a], ag_format_at(f), AG_SCALE_MIN);
    scales[ns++] = 1.0f;
    scales[ns++] = 1.5f;
    scales[ns++] = ldexpf(1.0f, -30) * (2.0f - 0x1p-23f); /* mantissa all ones */
    scales[ns++] = ldexpf(1.0f + 0x1p-23f, 50);
    uint64_t st = 5;
    while (ns < 28) {
        uint32_t b = (uint32_t)((127u - 35u + ref_rand(&st) % 90u) << 23) |
                     (uint32_t)(ref_rand(&st) & 0x7fffffu);
        float sc;
        memcpy(&sc, &b, sizeof sc);
        scales[ns++] = sc;
    }
    int seen[3] = {0, 0, 0};
    for (size_t k = 0; k < ns; k++) {
        float sc = scales[k], r = 1.0f / sc;
        int steps = ag_recip_steps(sc, r);
        cr_assert(steps >= 1, "scale %a inside [2^-40, 2^60]", (double)sc);
        seen[steps]++;
        size_t bad = 0;
        for (uint32_t m = 0; m < (1u << 23); m++) {
            float x;
            uint32_t xb = 0x3f800000u | m;
            memcpy(&x, &xb, sizeof x);
            float want = x / sc, got = steps == 1 ? ag_quot(x, sc, r, 1) : ag_quot(x, sc, r, 2);
            if (memcmp(&got, &want, sizeof got) != 0 && bad++ == 0)
                cr_log_error("scale %a x %a: %a, want %a", (double)sc, (double)x, (double)got,
                             (double)want);
        }
        cr_assert_eq(bad, 0, "scale %a (%d corrections): %zu quotients differ", (double)sc, steps,
                     bad);
    }
    cr_assert(seen[1] > 0 && seen[2] > 0, "both kinds of scale: %d, %d", seen[1], seen[2]);
    cr_assert_eq(ag_recip_steps(0x1p-41f, 0x1p41f), 0);
    cr_assert_eq(ag_recip_steps(0x1p61f, 0x1p-61f), 0);
}
