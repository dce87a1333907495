/*
 * test_stall.c - core/stall.c: bit stall, overflow, underflow and flips,
 * the seed's checks, and agreement of every kernel (one format, several
 * formats in one pass, SGD and update forms) with a per-element reference.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "reference.h"

/* Per-element reference built on ref_encode / ref_decode. */
static void ref_stall(const ag_format *f, float scale, int update_form, float lr,
                      const float *w, const float *v, size_t n, ag_stall_counts *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(w[i]) || !isfinite(v[i])) {
            c->nonfinite++;
            continue;
        }
        float u = update_form ? v[i] : -lr * v[i];
        float wn = w[i] + u;
        float a = ref_quantize(f, w[i], scale), b = ref_quantize(f, wn, scale);
        int moving = update_form ? u != 0.0f : fabsf(v[i]) > 1e-10f;
        if (moving) {
            c->total++;
            c->stalled += a == b;
        }
        c->overflow += fabsf(w[i] / scale) > f->max_finite;
        c->underflow += w[i] != 0.0f && a == 0.0f;
    }
}

static void fill(float *w, float *g, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        double r1 = (double)(int64_t)ref_rand(&s) * 0x1p-63, r2 = (double)(int64_t)ref_rand(&s) * 0x1p-63;
        int kind = (int)(ref_rand(&s) % 16);
        w[i] = (float)(r1 * (kind < 4 ? 1e-6 : kind < 12 ? 2.0 : 3e4));
        g[i] = (float)(r2 * (kind % 3 == 0 ? 1e-5 : kind % 3 == 1 ? 0.5 : 100.0));
        if (kind == 15)
            g[i] = 0.0f;
        if (kind == 14)
            g[i] = 1e-11f;
    }
    w[3] = NAN;
    g[5] = INFINITY;
    w[7] = -INFINITY;
    w[9] = 0.0f;
}

static void check_every_kernel(void);

static void assert_counts_eq(ag_stall_counts a, ag_stall_counts b, const char *what)
{
    cr_assert(a.stalled == b.stalled && a.total == b.total && a.overflow == b.overflow &&
                  a.underflow == b.underflow && a.nonfinite == b.nonfinite,
              "%s: got %llu/%llu ov %llu un %llu nf %llu, want %llu/%llu ov %llu un %llu nf %llu",
              what, (unsigned long long)a.stalled, (unsigned long long)a.total,
              (unsigned long long)a.overflow, (unsigned long long)a.underflow,
              (unsigned long long)a.nonfinite, (unsigned long long)b.stalled,
              (unsigned long long)b.total, (unsigned long long)b.overflow,
              (unsigned long long)b.underflow, (unsigned long long)b.nonfinite);
}

Test(stall, seed_check_small_sgd_updates_in_e5m2_all_stall)
{
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

Test(stall, large_updates_do_not_stall)
{
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

Test(stall, zero_gradients_are_not_counted)
{
    float w[8] = {1, 1, 1, 1, 1, 1, 1, 1}, g[8] = {0, 0, 0, 1e-11f, 0, 0, 0, 1e-4f};
    ag_stall_counts c = {0};
    cr_assert_eq(ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 8, &c), AG_OK);
    cr_assert_eq(c.total, 1);
    cr_assert_eq(c.stalled, 1);
}

Test(stall, larger_learning_rate_unstalls)
{
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

Test(stall, smaller_scale_resolves_small_updates)
{
    /* E0M7 is fixed point: its ulp is scale / 128 everywhere, so the scale
     * alone decides whether a step of lr * g = 0.002 survives rounding. */
    const ag_format *f = ag_format_get("E0M7");
    float g[4] = {1, 1, 1, 1};
    float w[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    ag_stall_counts coarse = {0}, too_fine = {0};
    ag_stall_sgd(f, 1.0f, 0.002f, w, g, 4, &coarse);     /* ulp 0.0078: lost */
    ag_stall_sgd(f, 1.0f / 32, 0.002f, w, g, 4, &too_fine); /* w / scale = 8: saturates */
    cr_assert_eq(coarse.stalled, 4);
    cr_assert_eq(coarse.overflow, 0);
    cr_assert_eq(too_fine.overflow, 4);
    cr_assert_eq(too_fine.stalled, 4); /* both ends saturate to the same max */
    float w2[4] = {0.025f, 0.025f, 0.025f, 0.025f};
    ag_stall_counts fine = {0}, coarse2 = {0};
    ag_stall_sgd(f, 0.03f, 0.002f, w2, g, 4, &fine);    /* ulp 0.00023: moves */
    ag_stall_sgd(f, 1.0f, 0.002f, w2, g, 4, &coarse2);  /* 3.2 -> 2.9 ulps: rounds to 3 both */
    cr_assert_eq(fine.stalled, 0);
    cr_assert_eq(fine.overflow, 0);
    cr_assert_eq(coarse2.stalled, 4);
}

Test(stall, overflow_underflow_and_nonfinite_are_counted)
{
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
Test(stall, every_kernel_agrees_with_the_reference)
{
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa))
            continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        cr_log_info("stall kernels: %s", ag_isa_name(isa));
        check_every_kernel();
    }
}

static void check_every_kernel(void)
{
    enum { N = 20011 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    fill(w, g, N, 7);
    const ag_format *fmts[5];
    float scales[5] = {0.004f, 1.0f, 0.25f, 1.0f, 3e-3f};
    for (size_t i = 0; i < 5; i++)
        fmts[i] = ag_format_at(i);
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

Test(stall, counts_accumulate_across_calls)
{
    float w[2] = {1, 1}, g[2] = {1e-4f, 1e-4f};
    ag_stall_counts c = {0};
    ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 2, &c);
    ag_stall_sgd(ag_format_get("E5M2"), 1.0f, 0.01f, w, g, 2, &c);
    cr_assert_eq(c.total, 4);
    cr_assert_eq(c.stalled, 4);
}

Test(stall, misuse_is_rejected_and_counts_untouched)
{
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

Test(flips, count_changed_quantized_values)
{
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
