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
#include "core/stall_encode.h"
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

/* The scale code of one block (the first byte of its encoded form): MX the
 * E8M0 field k + 127, NVFP4 the E4M3 pattern of s_b. */
static uint32_t ref_code(const ag_format *f, float S, const float *w, size_t len);

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

static uint32_t ref_code(const ag_format *f, float S, const float *w, size_t len) {
    float d = ref_divisor(f, S, w, len);
    if (f->block == 32) { /* d = 2^k S exactly: k from the divisor */
        int e2;
        frexp((double)d / (double)S, &e2);
        return (uint32_t)(e2 - 1 + 127);
    }
    return ref_encode(ref_of(ag_format_get("E4M3")), d / S); /* d / S = s_b exactly */
}

/* The element pattern of x at divisor d: clamped to +-max_finite, then the
 * reference encoder (NaN: the element's NaN, or +0); a zero divisor: +0. */
static uint32_t ref_elem_pattern(const ag_format *el, float d, float x) {
    if (!(d > 0.0f)) return 0;
    ref_format r = ref_of(el);
    float xs = x / d;
    if (!isnan(xs) && fabsf(xs) > el->max_finite)
        return (signbit(xs) ? ref_sign_bit(r) : 0) | ref_top(r);
    return ref_encode(r, xs);
}

/* The encoded form: per block its code, then its element patterns. */
static size_t ref_block_encode(const ag_format *f, float S, const float *w, size_t n,
                               uint8_t *out) {
    size_t pos = 0;
    for (size_t s = 0; s < n; s += (size_t)f->block) {
        size_t len = n - s < (size_t)f->block ? n - s : (size_t)f->block;
        float d = ref_divisor(f, S, w + s, len);
        out[pos++] = (uint8_t)ref_code(f, S, w + s, len);
        for (size_t i = s; i < s + len; i++)
            out[pos++] = (uint8_t)ref_elem_pattern(f->element, d, w[i]);
    }
    return pos;
}

/* Canonical element pattern: the zeros one, the NaNs one. */
static uint32_t ref_canon(const ag_format *el, uint32_t b) {
    ref_format r = ref_of(el);
    uint32_t mag = b & (ref_sign_bit(r) - 1u);
    if (isnan(ref_decode(r, b))) return 0xffffffffu;
    return mag == 0 ? 0u : b;
}

/* Flips: w encoded at the block divisors of prev (the previous snapshot's
 * weights at tensor scale Sp) against prev encoded at them. */
static uint64_t ref_block_flips(const ag_format *f, float Sp, const float *prev, const float *w,
                                size_t n) {
    uint64_t c = 0;
    for (size_t s = 0; s < n; s += (size_t)f->block) {
        size_t len = n - s < (size_t)f->block ? n - s : (size_t)f->block;
        float d = ref_divisor(f, Sp, prev + s, len);
        for (size_t i = s; i < s + len; i++)
            c += ref_canon(f->element, ref_elem_pattern(f->element, d, prev[i])) !=
                 ref_canon(f->element, ref_elem_pattern(f->element, d, w[i]));
    }
    return c;
}

/* Quantization error: over the finite w, Q(w) = d * element value of w / d
 * (0 in a block of divisor 0), (Q(w) - w)^2 taken as d^2 (q - w / d)^2. */
static ag_quant_error ref_block_qerr(const ag_format *f, float S, const float *w, size_t n) {
    ag_quant_error e = {0, 0, 0};
    for (size_t s = 0; s < n; s += (size_t)f->block) {
        size_t len = n - s < (size_t)f->block ? n - s : (size_t)f->block;
        float d = ref_divisor(f, S, w + s, len);
        for (size_t i = s; i < s + len; i++) {
            if (!isfinite(w[i])) continue;
            double diff = (double)w[i];
            if (d > 0.0f) {
                float xs = w[i] / d;
                diff = (ref_elem(f->element, xs) - (double)xs) * (double)d;
            }
            e.sq_error += diff * diff;
            e.sq_signal += (double)w[i] * (double)w[i];
            e.count++;
        }
    }
    return e;
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
}

static void assert_close(double got, double want, const char *what, const char *fmt) {
    cr_assert(fabs(got - want) <= 1e-9 * fabs(want) + 1e-300, "%s %s: %.17g want %.17g", what, fmt,
              got, want);
}

/* Hand-computed encoded forms. */
Test(blocks, encoded_form_examples) {
    /* MXFP4, amax 7: X = 2^0 (code 127); 6 = 1.1b x 2^2 -> 0b0111, -0.5 the
     * subnormal 0b1001, 7 saturates to 6, 1e-9 -> +0 */
    float w[4] = {6.0f, -0.5f, 7.0f, 1e-9f};
    uint8_t enc[8];
    const ag_format *mx = ag_format_get("MXFP4");
    cr_assert_eq(ag_encoded_bytes(mx, 4), 5);
    cr_assert_eq(ag_encoded_bytes(mx, 64), 66);
    cr_assert_eq(ag_encoded_bytes(mx, 65), 68);
    cr_assert_eq(ag_encode_any(mx, 1.0f, w, 4, enc), AG_OK);
    const uint8_t want[5] = {127, 0x7, 0x9, 0x7, 0x0};
    cr_assert_arr_eq(enc, want, 5);
    /* NVFP4 at S = 1, amax 7: s_b = 1.125 = E4M3 0.0111.001 (0x39); 7 / 1.125 -> 6 */
    const ag_format *nv = ag_format_get("NVFP4");
    cr_assert_eq(ag_encoded_bytes(nv, 17), 19);
    cr_assert_eq(ag_encode_any(nv, 1.0f, w + 2, 1, enc), AG_OK);
    cr_assert_eq(enc[0], 0x39);
    cr_assert_eq(enc[1], 0x7);
    /* MXFP8_E5M2 saturates: 1e6 in a block of amax 1e6 is below the top, but
     * inf (not in the amax) at the block's scale is the largest finite pattern */
    const ag_format *e5 = ag_format_get("MXFP8_E5M2");
    float big[2] = {1.0f, INFINITY};
    cr_assert_eq(ag_encode_any(e5, 1.0f, big, 2, enc), AG_OK);
    cr_assert_eq(enc[0], 127 - 15);
    cr_assert_eq(enc[2], 0x7b); /* 0.11110.11: 57344, not inf's 0x7c */
    /* a flip is a pattern change at the previous block scale: moving the
     * block's amax (7 -> 8) changes every element's scale, not its pattern */
    float w2[4] = {6.0f, -0.5f, 8.0f, 1e-9f};
    uint64_t flips = 0;
    cr_assert_eq(ag_encode_any(mx, 1.0f, w, 4, enc), AG_OK);
    cr_assert_eq(ag_block_count_flips(mx, 1.0f, enc, NULL, w2, 4, &flips), AG_OK);
    cr_assert_eq(flips, 0); /* 8 saturates to 6 at the old X = 1, as 7 did */
    w2[1] = -1.0f;
    cr_assert_eq(ag_block_count_flips(mx, 1.0f, enc, NULL, w2, 4, &flips), AG_OK);
    cr_assert_eq(flips, 1);
    cr_assert_eq(ag_block_count_flips(ag_format_get("E2M1"), 1.0f, enc, NULL, w2, 4, &flips),
                 AG_EFORMAT);
    cr_assert_eq(ag_encode_any(mx, 0.0f, w, 4, enc), AG_EINVAL);
}

/* The daemon's pass for block-scaled formats beside per-tensor ones: counts,
 * encoded forms, quantization error; then flips against the next step. */
Test(blocks, the_daemon_pass_encodes_and_measures_error_in_block_formats) {
    enum { N = 4099 + 2048 }; /* several 2048-element chunks and a tail of 3 */
    static float w[N], v[N], w2[N];
    static uint8_t enc[16][2 * N], want_enc[2 * N], enc2[16][2 * N];
    uint64_t seed = 9001;
    const char *names[] = {"MXFP8_E4M3", "E4M3",  "MXFP8_E5M2", "MXFP6_E3M2",
                           "MXFP6_E2M3", "MXFP4", "NVFP4",      "BF16"};
    enum { NF = sizeof names / sizeof names[0] };
    const ag_format *fmts[NF];
    float scales[NF];
    uint8_t *encp[NF], *enc2p[NF];
    for (size_t i = 0; i < NF; i++) {
        fmts[i] = ag_format_get(names[i]);
        scales[i] = fmts[i]->block == 16 ? 0.37f : fmts[i]->block ? 1.0f : 0.5f;
        encp[i] = enc[i];
        enc2p[i] = enc2[i];
    }
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (int form = 0; form < 2; form++) {
            fill(&seed, w, v, N, form);
            ag_stall_counts got[NF];
            ag_quant_error qe[NF], qe2[NF];
            memset(got, 0, sizeof got);
            memset(qe, 0, sizeof qe);
            memset(qe2, 0, sizeof qe2);
            cr_assert_eq(
                ag_stall_encode_multi(fmts, scales, NF, form, 0.01f, w, v, N, got, encp, qe),
                AG_OK);
            cr_assert_eq(ag_quant_error_multi(fmts, scales, NF, w, N, qe2), AG_OK);
            for (size_t i = 0; i < NF; i++) {
                if (!fmts[i]->block) continue;
                ag_stall_counts want = ref_block_stall(fmts[i], scales[i], 0.01f, form, w, v, N);
                expect_eq(&got[i], &want, "encode pass", names[i], N);
                size_t nb = ref_block_encode(fmts[i], scales[i], w, N, want_enc);
                cr_assert_eq(nb, ag_encoded_bytes(fmts[i], N));
                for (size_t k = 0; k < nb; k++)
                    cr_assert_eq(enc[i][k], want_enc[k], "%s %s byte %zu: %#x want %#x",
                                 ag_isa_name(isa), names[i], k, enc[i][k], want_enc[k]);
                memset(want_enc, 0xa5, nb);
                cr_assert_eq(ag_encode_any(fmts[i], scales[i], w, N, want_enc), AG_OK);
                cr_assert_eq(memcmp(want_enc, enc[i], nb), 0, "%s ag_encode_any", names[i]);
                ag_quant_error rq = ref_block_qerr(fmts[i], scales[i], w, N);
                cr_assert_eq(qe[i].count, rq.count);
                cr_assert_eq(qe2[i].count, rq.count);
                assert_close(qe[i].sq_error, rq.sq_error, "sq_error", names[i]);
                assert_close(qe2[i].sq_error, rq.sq_error, "sq_error alone", names[i]);
                assert_close(qe[i].sq_signal, rq.sq_signal, "sq_signal", names[i]);
                cr_assert_gt(rq.sq_error, 0.0);
            }
            /* the next step: w2 = w + u where w moved (finite, |g| > 1e-10 or 0) */
            for (size_t k = 0; k < N; k++) {
                if (!isfinite(w[k])) w[k] = 0.25f;
                if (!isfinite(v[k]) || (v[k] != 0.0f && fabsf(v[k]) <= AG_GRAD_EPSILON))
                    v[k] = 0.0f;
                w2[k] = w[k] + (form ? v[k] : -0.01f * v[k]);
            }
            memset(got, 0, sizeof got);
            cr_assert_eq(
                ag_stall_encode_multi(fmts, scales, NF, form, 0.01f, w, v, N, got, encp, NULL),
                AG_OK);
            /* the step after at the same tensor scales, and at others */
            ag_stall_counts got2[NF];
            memset(got2, 0, sizeof got2);
            cr_assert_eq(
                ag_stall_encode_multi(fmts, scales, NF, form, 0.01f, w2, v, N, got2, enc2p, NULL),
                AG_OK);
            for (size_t i = 0; i < NF; i++) {
                if (!fmts[i]->block) continue;
                uint64_t fb = 0, fe = 0;
                cr_assert_eq(ag_block_count_flips(fmts[i], scales[i], enc[i], enc2[i], w2, N, &fb),
                             AG_OK);
                cr_assert_eq(ag_block_count_flips(fmts[i], scales[i], enc[i], NULL, w2, N, &fe),
                             AG_OK);
                uint64_t want = ref_block_flips(fmts[i], scales[i], w, w2, N);
                cr_assert_eq(fb, want, "%s bytes flips %llu want %llu", names[i],
                             (unsigned long long)fb, (unsigned long long)want);
                cr_assert_eq(fe, want, "%s flips %llu want %llu", names[i], (unsigned long long)fe,
                             (unsigned long long)want);
                /* flips are the observed side of the stall count: an update
                 * not stalled at step t is an element that flips at t + 1 */
                cr_assert_eq(want, got[i].total - got[i].stalled, "%s: flips %llu, moved %llu",
                             names[i], (unsigned long long)want,
                             (unsigned long long)(got[i].total - got[i].stalled));
            }
        }
    }
}
