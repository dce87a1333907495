/*
 * test_blocks.c - block-scaled formats (docs/numerics.md, Block scaling)
 * against a scalar reference written from OCP MX v1.0 (section 6.3: shared
 * E8M0 scale 2^(floor(log2(amax)) - emax_elem), elements clamped to the
 * element format's largest normal) and NVIDIA's NVFP4 description (E2M1
 * elements in 16-element blocks, an E4M3 scale amax_b / (6 S) per block, an
 * FP32 tensor scale S). Element values come from reference.h's encoder.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "reference.h"

static const char *const block_names[] = {"MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2",
                                          "MXFP6_E2M3", "MXFP4",      "NVFP4"};

/* The value an element takes: clamp to +-max_finite, then the nearest grid
 * value (reference encoder), sign kept (so -0 stays -0; compared with ==). */
static double ref_elem(const ag_format *el, float x) {
    double mx = el->max_finite;
    if (fabs((double)x) > mx) return x > 0 ? mx : -mx;
    return ref_decode(ref_of(el), ref_encode(ref_of(el), x));
}

/* The divisor of one block, from the spec's formulas. */
static float ref_divisor(const ag_format *f, float S, const float *w, size_t len) {
    float amax = 0.0f;
    for (size_t i = 0; i < len; i++)
        if (isfinite(w[i]) && fabsf(w[i]) > amax) amax = fabsf(w[i]);
    if (f->block == 32) {
        /* emax: the exponent of the element format's largest normal */
        static const struct {
            const char *n;
            int emax;
        } em[] = {{"E4M3", 8}, {"E5M2", 15}, {"E3M2", 4}, {"E2M3", 2}, {"E2M1", 2}};
        int emax = 0;
        for (size_t i = 0; i < 5; i++)
            if (strcmp(em[i].n, f->element->name) == 0) emax = em[i].emax;
        float a = amax / S;
        int k = -127;
        if (a > 0.0f) {
            if (isinf(a)) {
                k = 127;
            } else {
                int e2;
                frexp((double)a, &e2); /* a = m * 2^e2, 0.5 <= m < 1 */
                k = (e2 - 1) - emax;
            }
        }
        if (k < -127) k = -127;
        if (k > 127) k = 127;
        return (float)ldexp(1.0, k) * S;
    }
    float t = amax / (6.0f * S);
    const ag_format *e4 = ag_format_get("E4M3");
    float sb = (float)ref_elem(e4, t);
    return sb * S;
}

static ag_stall_counts ref_block_stall(const ag_format *f, float S, float lr, int update_form,
                                       const float *w, const float *v, size_t n) {
    ag_stall_counts c = {0, 0, 0, 0, 0};
    const ag_format *el = f->element;
    for (size_t s = 0; s < n; s += (size_t)f->block) {
        size_t len = n - s < (size_t)f->block ? n - s : (size_t)f->block;
        float d = ref_divisor(f, S, w + s, len);
        for (size_t i = s; i < s + len; i++) {
            float u = update_form ? v[i] : -lr * v[i];
            if (!isfinite(w[i]) || !isfinite(v[i])) {
                c.nonfinite++;
                continue;
            }
            int moving = update_form ? u != 0.0f : fabsf(v[i]) > AG_GRAD_EPSILON;
            float wu = w[i] + u;
            double qa = 0.0, qb = 0.0;
            if (d > 0.0f) {
                qa = ref_elem(el, w[i] / d);
                qb = ref_elem(el, wu / d);
                if (fabsf(w[i] / d) > el->max_finite) c.overflow++;
            }
            if (moving) {
                c.total++;
                if (qa == qb) c.stalled++;
            }
            if (w[i] != 0.0f && qa == 0.0) c.underflow++;
        }
    }
    return c;
}

static void expect_eq(const ag_stall_counts *a, const ag_stall_counts *b, const char *what,
                      const char *fmt, size_t n) {
    cr_expect(a->stalled == b->stalled && a->total == b->total && a->overflow == b->overflow &&
                  a->underflow == b->underflow && a->nonfinite == b->nonfinite,
              "%s %s n=%zu: got %llu/%llu ovf %llu unf %llu nf %llu, want %llu/%llu ovf %llu "
              "unf %llu nf %llu",
              what, fmt, n, (unsigned long long)a->stalled, (unsigned long long)a->total,
              (unsigned long long)a->overflow, (unsigned long long)a->underflow,
              (unsigned long long)a->nonfinite, (unsigned long long)b->stalled,
              (unsigned long long)b->total, (unsigned long long)b->overflow,
              (unsigned long long)b->underflow, (unsigned long long)b->nonfinite);
}

Test(blocks, registry_entries_follow_the_builtins) {
    static const struct {
        const char *n, *el;
        int block, kind;
    } t[] = {{"MXFP8_E4M3", "E4M3", 32, AG_SCALE_E8M0}, {"MXFP8_E5M2", "E5M2", 32, AG_SCALE_E8M0},
             {"MXFP6_E3M2", "E3M2", 32, AG_SCALE_E8M0}, {"MXFP6_E2M3", "E2M3", 32, AG_SCALE_E8M0},
             {"MXFP4", "E2M1", 32, AG_SCALE_E8M0},      {"NVFP4", "E2M1", 16, AG_SCALE_E4M3}};
    for (size_t i = 0; i < 6; i++) {
        const ag_format *f = ag_format_at(11 + i);
        cr_assert_not_null(f);
        cr_assert_str_eq(f->name, t[i].n);
        cr_assert_eq(f, ag_format_get(t[i].n));
        cr_assert_eq(f->block, t[i].block);
        cr_assert_eq(f->scale_kind, t[i].kind);
        cr_assert_eq(f->element, ag_format_get(t[i].el));
        cr_assert_eq(f->bits, f->element->bits);
        cr_assert_eq(f->max_finite, f->element->max_finite);
    }
    for (size_t i = 0; i < 11; i++) {
        cr_assert_eq(ag_format_at(i)->block, 0);
        cr_assert_null(ag_format_at(i)->element);
    }
    const ag_format *tw = NULL;
    cr_assert_eq(ag_format_unscaled(ag_format_get("MXFP4"), &tw), AG_EFORMAT);
    cr_assert_null(ag_format_get("MXFP4-unscaled"));
    cr_assert_eq(ag_format_define("MXFP4", 2, 1, 1, 0, 0, &tw), AG_EEXIST);
}

Test(blocks, misuse_is_refused) {
    float w[4] = {1, 2, 3, 4};
    ag_stall_counts c = {0, 0, 0, 0, 0};
    float d;
    const ag_format *mx = ag_format_get("MXFP4");
    cr_assert_eq(ag_block_stall_sgd(ag_format_get("E2M1"), 1.0f, 0.1f, w, w, 4, &c), AG_EFORMAT);
    cr_assert_eq(ag_block_stall_sgd(NULL, 1.0f, 0.1f, w, w, 4, &c), AG_EFORMAT);
    cr_assert_eq(ag_block_stall_sgd(mx, 0.0f, 0.1f, w, w, 4, &c), AG_EINVAL);
    cr_assert_eq(ag_block_stall_sgd(mx, NAN, 0.1f, w, w, 4, &c), AG_EINVAL);
    cr_assert_eq(ag_block_stall_sgd(mx, 1.0f, INFINITY, w, w, 4, &c), AG_EINVAL);
    cr_assert_eq(ag_block_stall_update(mx, 1.0f, w, NULL, 4, &c), AG_EINVAL);
    cr_assert_eq(ag_block_stall_update(mx, 1.0f, w, w, 0, &c), AG_EINVAL);
    cr_assert_eq(ag_block_scale(mx, 1.0f, w, 33, &d), AG_EINVAL);
    cr_assert_eq(ag_block_scale(ag_format_get("E4M3"), 1.0f, w, 4, &d), AG_EFORMAT);
    cr_assert_eq(c.total + c.nonfinite, 0);
}

/* Hand-computed examples. */
Test(blocks, mxfp4_examples) {
    const ag_format *f = ag_format_get("MXFP4");
    float w[32] = {0}, d;
    w[0] = 6.0f; /* floor(log2 6) = 2 = emax of E2M1: scale 2^0 */
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 1.0f);
    w[0] = 7.0f; /* still 2^0; 7 saturates to 6: overflow */
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 1.0f);
    float u[32] = {0};
    u[0] = -0.9f; /* 7 - 0.9 = 6.1 -> 6, like 7 -> 6: stalled */
    ag_stall_counts c = {0, 0, 0, 0, 0};
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 32, &c), AG_OK);
    cr_assert_eq(c.total, 1);
    cr_assert_eq(c.stalled, 1);
    cr_assert_eq(c.overflow, 1);
    u[0] = -1.5f; /* 5.5 -> 6 (tie to even mantissa: 4 and 6, 6 = 1.1b x 4) */
    memset(&c, 0, sizeof c);
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 32, &c), AG_OK);
    cr_assert_eq(c.stalled, 1);
    u[0] = -2.0f; /* 5 -> 4 (tie between 4 and 6 goes to 4) */
    memset(&c, 0, sizeof c);
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 32, &c), AG_OK);
    cr_assert_eq(c.stalled, 0);
    /* amax 8: scale 2^1, elements 8/2 = 4; 0.4 / 2 = 0.2 -> 0: underflow */
    w[0] = 8.0f;
    w[1] = 0.4f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 2.0f);
    memset(&c, 0, sizeof c);
    memset(u, 0, sizeof u);
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 32, &c), AG_OK);
    cr_assert_eq(c.underflow, 1);
    cr_assert_eq(c.overflow, 0);
    /* a zero block: 2^-127 */
    memset(w, 0, sizeof w);
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 0x1p-127f);
    /* MXFP8_E4M3: amax 1 -> 2^(0 - 8) */
    w[3] = -1.0f;
    cr_assert_eq(ag_block_scale(ag_format_get("MXFP8_E4M3"), 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 0x1p-8f);
    /* clamped at 2^127: 3e38 / 2^2 would need 2^125 -> fine; amax 2^-140
     * (subnormal) gives 2^-142 -> clamped to 2^-127 */
    w[3] = 0x1p-140f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 32, &d), AG_OK);
    cr_assert_eq(d, 0x1p-127f);
}

Test(blocks, nvfp4_examples) {
    const ag_format *f = ag_format_get("NVFP4");
    float w[16] = {0}, d;
    /* tensor amax 448 * 6 -> S = 1; block amax 6: s_b = E4M3(1) = 1 */
    w[0] = 6.0f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 16, &d), AG_OK);
    cr_assert_eq(d, 1.0f);
    /* block amax 7: 7/6 = 1.1667 -> E4M3 1.125 (grid step 1/8), divisor 1.125;
     * 7 / 1.125 = 6.22 saturates to 6: overflow */
    w[0] = 7.0f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 16, &d), AG_OK);
    cr_assert_eq(d, 1.125f);
    ag_stall_counts c = {0, 0, 0, 0, 0};
    float u[16] = {0};
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 16, &c), AG_OK);
    cr_assert_eq(c.overflow, 1);
    /* S = 0.5: 7 / 3 = 2.33 -> E4M3 2.25; divisor 1.125 again */
    cr_assert_eq(ag_block_scale(f, 0.5f, w, 16, &d), AG_OK);
    cr_assert_eq(d, 1.125f);
    /* block amax far below 6 S: s_b rounds to 0, every element to zero */
    w[0] = 1e-9f;
    w[1] = -1e-9f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 16, &d), AG_OK);
    cr_assert_eq(d, 0.0f);
    memset(&c, 0, sizeof c);
    u[0] = 1.0f; /* w + u = 1 also quantizes to 0 at this block's scale */
    cr_assert_eq(ag_block_stall_update(f, 1.0f, w, u, 16, &c), AG_OK);
    cr_assert_eq(c.total, 1);
    cr_assert_eq(c.stalled, 1);
    cr_assert_eq(c.underflow, 2);
    cr_assert_eq(c.overflow, 0);
    /* block amax past 448 * 6 S: s_b saturates at 448 */
    w[0] = 1e6f;
    cr_assert_eq(ag_block_scale(f, 1.0f, w, 16, &d), AG_OK);
    cr_assert_eq(d, 448.0f);
}

/* Random tensors with edge cases, against the reference, every ISA variant. */
static float edge_value(uint64_t *s, int kind) {
    float x = ref_rand_float_bits(s);
    switch (kind) {
    case 0: return (float)((double)(ref_rand(s) % 2000000) / 1000000.0 - 1.0);
    case 1: return ldexpf((float)(ref_rand(s) % 1000) / 1000.0f, (int)(ref_rand(s) % 60) - 140);
    case 2: return 0.0f;
    case 3: return isfinite(x) ? x : INFINITY;
    default: return x;
    }
}

static void fill(uint64_t *s, float *w, float *v, size_t n, int update_form) {
    for (size_t b = 0; b < n; b += 16) {
        int kind = (int)(ref_rand(s) % 8); /* per 16: blocks mixing kinds */
        for (size_t i = b; i < n && i < b + 16; i++) {
            int k = kind < 5 ? kind : 0;
            w[i] = edge_value(s, k);
            if (ref_rand(s) % 97 == 0) w[i] = ref_rand(s) % 2 ? NAN : -INFINITY;
            if (kind == 6 && i == b) w[i] = 7.5f * 1.0e3f; /* a top-binade outlier */
            double r = (double)(ref_rand(s) % 2000001) / 1000000.0 - 1.0;
            v[i] = (float)(r * (update_form ? fabs((double)w[i]) * 0.3 + 1e-30 : 10.0));
            if (ref_rand(s) % 13 == 0) v[i] = 0.0f;
            if (ref_rand(s) % 101 == 0) v[i] = NAN;
        }
    }
}

Test(blocks, random_tensors_match_the_reference) {
    static const size_t sizes[] = {1, 15, 16, 17, 31, 32, 33, 47, 64, 100, 1000, 4099};
    static const float scales[] = {1.0f, 0.37f, 1e-3f, 1e5f};
    uint64_t seed = 0x5eedb10c;
    float *w = malloc(4099 * sizeof *w), *v = malloc(4099 * sizeof *v);
    cr_assert(w && v);
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t fi = 0; fi < 6; fi++) {
            const ag_format *f = ag_format_get(block_names[fi]);
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                for (int form = 0; form < 2; form++) {
                    size_t n = sizes[si];
                    float S = scales[(si + fi + (size_t)form) % 4];
                    fill(&seed, w, v, n, form);
                    ag_stall_counts got = {0, 0, 0, 0, 0}, want;
                    int rc = form ? ag_block_stall_update(f, S, w, v, n, &got)
                                  : ag_block_stall_sgd(f, S, 0.01f, w, v, n, &got);
                    cr_assert_eq(rc, AG_OK);
                    want = ref_block_stall(f, S, 0.01f, form, w, v, n);
                    expect_eq(&got, &want, form ? "update" : "sgd", f->name, n);
                }
            }
        }
    }
    free(w);
    free(v);
}

/* The counts add up: a tensor in pieces at block boundaries equals the whole. */
Test(blocks, counts_add_across_calls) {
    uint64_t seed = 77;
    float w[256], v[256];
    fill(&seed, w, v, 256, 0);
    for (size_t fi = 0; fi < 6; fi++) {
        const ag_format *f = ag_format_get(block_names[fi]);
        ag_stall_counts a = {0, 0, 0, 0, 0}, b = {0, 0, 0, 0, 0};
        cr_assert_eq(ag_block_stall_sgd(f, 1.0f, 0.1f, w, v, 256, &a), AG_OK);
        cr_assert_eq(ag_block_stall_sgd(f, 1.0f, 0.1f, w, v, 128, &b), AG_OK);
        cr_assert_eq(ag_block_stall_sgd(f, 1.0f, 0.1f, w + 128, v + 128, 128, &b), AG_OK);
        expect_eq(&a, &b, "split", f->name, 256);
        cr_assert_gt(a.total, 0);
    }
}

/* The multi-format pass takes block-scaled formats beside per-tensor ones:
 * one pass, the counts of separate calls. */
Test(blocks, multi_pass_mixes_block_and_per_tensor_formats) {
    enum { N = 5000 }; /* several 2048-element chunks and a tail */
    static float w[N], v[N];
    uint64_t seed = 4242;
    const char *names[] = {"E0M7", "MXFP8_E4M3", "E4M3", "NVFP4", "BF16", "MXFP4", "MXFP6_E2M3"};
    enum { NF = sizeof names / sizeof names[0] };
    const ag_format *fmts[NF];
    float scales[NF];
    for (size_t i = 0; i < NF; i++) {
        fmts[i] = ag_format_get(names[i]);
        scales[i] = fmts[i]->block == 16 ? 0.01f : fmts[i]->block ? 1.0f : 0.5f;
    }
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (int form = 0; form < 2; form++) {
            fill(&seed, w, v, N, form);
            ag_stall_counts got[NF], want;
            memset(got, 0, sizeof got);
            int rc = form ? ag_stall_update_multi(fmts, scales, NF, w, v, N, got)
                          : ag_stall_sgd_multi(fmts, scales, NF, 0.01f, w, v, N, got);
            cr_assert_eq(rc, AG_OK);
            for (size_t i = 0; i < NF; i++) {
                memset(&want, 0, sizeof want);
                if (fmts[i]->block) {
                    want = ref_block_stall(fmts[i], scales[i], 0.01f, form, w, v, N);
                    ag_stall_counts one = {0, 0, 0, 0, 0};
                    cr_assert_eq(form ? ag_stall_update(fmts[i], scales[i], w, v, N, &one)
                                      : ag_stall_sgd(fmts[i], scales[i], 0.01f, w, v, N, &one),
                                 AG_OK);
                    expect_eq(&one, &want, "single", names[i], N);
                } else {
                    cr_assert_eq(form ? ag_stall_update(fmts[i], scales[i], w, v, N, &want)
                                      : ag_stall_sgd(fmts[i], scales[i], 0.01f, w, v, N, &want),
                                 AG_OK);
                }
                expect_eq(&got[i], &want, "multi", names[i], N);
            }
        }
    }
    /* no patterns or quantization error for block formats yet */
    ag_quant_error q[NF];
    memset(q, 0, sizeof q);
    cr_assert_eq(ag_quant_error_multi(fmts, scales, NF, w, N, q), AG_EFORMAT);
}
