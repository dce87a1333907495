/*
 * test_widths.c - formats of 4 to 16 bits (issue 14): the built-ins after the
 * seed's five, defined formats of every width and nan mode, against the
 * reference written from docs/numerics.md (tests/core/reference.h):
 * exhaustively for formats of 8 bits or fewer, every pattern's decode and
 * round trip and a sampled boundary sweep for 16 bits; the array kernels,
 * the multi-format stall pass with its encoding, pattern flips and the
 * quantization error, in every instruction-set variant the CPU has.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"
#include "core/stall_encode.h"
#include "reference.h"

/* Defined formats beyond the built-ins: every nan mode at several widths. */
static void define_extras(void) {
    const ag_format *f;
    cr_assert_eq(ag_format_define_ex("Q0M3", 0, 3, 0, AG_NAN_NONE, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E2M2", 2, 2, 1, AG_NAN_NONE, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E3M1fn", 3, 1, 3, AG_NAN_ALL_ONES, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E4M4i", 4, 4, 7, AG_NAN_IEEE, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E5M5", 5, 5, 15, AG_NAN_NONE, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E6M0", 6, 0, 31, AG_NAN_ALL_ONES, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E0M15", 0, 15, 0, AG_NAN_NONE, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E5M10fn", 5, 10, 15, AG_NAN_ALL_ONES, &f), AG_OK);
    cr_assert_eq(ag_format_define_ex("E7M8", 7, 8, 60, AG_NAN_IEEE, &f), AG_OK);
}

/* Every per-tensor format (block-scaled ones: test_blocks.c). */
static size_t all_formats(const ag_format **out) {
    define_extras();
    size_t n = ag_format_count(), k = 0;
    cr_assert_leq(n, AG_FORMATS_MAX);
    for (size_t i = 0; i < n; i++)
        if (ag_format_at(i)->block == 0) out[k++] = ag_format_at(i);
    cr_assert_geq(k, 20); /* 11 built-ins, 9 extras */
    return k;
}

Test(widths, builtins_follow_the_seed_five_in_order) {
    static const struct {
        const char *n;
        int E, M, bias, inf, nan, bits, bytes;
        double minp, maxf;
    } t[] = {
        {"E4M3", 4, 3, 7, 0, 1, 8, 1, 0x1p-9, 448.0},
        {"E3M2", 3, 2, 3, 0, 0, 6, 1, 0x1p-4, 28.0},
        {"E2M3", 2, 3, 1, 0, 0, 6, 1, 0x1p-3, 7.5},
        {"E2M1", 2, 1, 1, 0, 0, 4, 1, 0.5, 6.0},
        {"BF16", 8, 7, 127, 1, 1, 16, 2, 0x1p-133, 0x1.fep127},
        {"FP16", 5, 10, 15, 1, 1, 16, 2, 0x1p-24, 65504.0},
    };
    cr_assert_geq(ag_format_count(), 11);
    cr_assert_str_eq(ag_format_at(4)->name, "E7M0");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const ag_format *f = ag_format_at(5 + i);
        cr_assert_str_eq(f->name, t[i].n);
        cr_assert_eq(ag_format_get(t[i].n), f);
        cr_assert_eq(f->exponent_bits, t[i].E, "%s", t[i].n);
        cr_assert_eq(f->mantissa_bits, t[i].M, "%s", t[i].n);
        cr_assert_eq(f->bias, t[i].bias, "%s", t[i].n);
        cr_assert_eq(f->has_inf, t[i].inf, "%s", t[i].n);
        cr_assert_eq(f->has_nan, t[i].nan, "%s", t[i].n);
        cr_assert_eq(f->bits, t[i].bits, "%s", t[i].n);
        cr_assert_eq(f->pattern_bytes, t[i].bytes, "%s", t[i].n);
        cr_assert_eq((double)f->min_positive, t[i].minp, "%s", t[i].n);
        cr_assert_eq((double)f->max_finite, t[i].maxf, "%s", t[i].n);
    }
    cr_assert_eq(ag_format_get("E4M3")->nan_mode, AG_NAN_ALL_ONES);
    cr_assert_eq(ag_format_get("E5M2")->nan_mode, AG_NAN_IEEE);
    cr_assert_eq(ag_format_get("E2M1")->nan_mode, AG_NAN_NONE);
}

Test(widths, ocp_grids_and_special_patterns) {
    const ag_format *fp4 = ag_format_get("E2M1");
    static const double grid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    for (uint16_t b = 0; b < 8; b++) {
        cr_assert_eq((double)ag_decode(fp4, b), grid[b], "E2M1 0x%x", b);
        cr_assert_eq((double)ag_decode(fp4, (uint16_t)(b | 8)), -grid[b], "E2M1 0x%x", b | 8);
    }
    cr_assert_eq(ag_encode(fp4, 5.0f), 0x6);   /* tie between 4 and 6: even mantissa */
    cr_assert_eq(ag_encode(fp4, 100.0f), 0x7); /* saturates */
    cr_assert_eq(ag_encode(fp4, -0.25f), 0x8); /* half the smallest: -0 */
    const ag_format *e4 = ag_format_get("E4M3");
    cr_assert(isnan(ag_decode(e4, 0x7f)) && isnan(ag_decode(e4, 0xff)));
    cr_assert_eq((double)ag_decode(e4, 0x7e), 448.0);
    cr_assert_eq((double)ag_decode(e4, 0x78), 256.0); /* e all ones is finite */
    cr_assert_eq(ag_encode(e4, INFINITY), 0x7e);
    cr_assert_eq(ag_encode(e4, NAN), 0x7f);
    const ag_format *bf = ag_format_get("BF16");
    cr_assert_eq(ag_encode(bf, 1.0f), 0x3f80);
    cr_assert_eq(ag_encode(bf, -2.0f), 0xc000);
    cr_assert_eq(ag_encode(bf, INFINITY), 0x7f80);
    cr_assert_eq(ag_encode(bf, NAN), 0x7f81);
    cr_assert_eq(ag_encode(bf, 0x1p-133f), 0x0001);
    cr_assert_eq(ag_encode(bf, FLT_MAX), 0x7f80); /* past max + half an ulp */
    cr_assert_eq(ag_encode(bf, 1.0f + 0x1p-8f), 0x3f80);
    cr_assert_eq(ag_encode(bf, 1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    const ag_format *h = ag_format_get("FP16");
    cr_assert_eq(ag_encode(h, 1.0f), 0x3c00);
    cr_assert_eq(ag_encode(h, 65504.0f), 0x7bff);
    cr_assert_eq(ag_encode(h, 65519.0f), 0x7bff);
    cr_assert_eq(ag_encode(h, 65520.0f), 0x7c00);
    cr_assert_eq(ag_encode(h, 0x1p-24f), 0x0001);
    cr_assert_eq(ag_encode(h, 0x1p-25f), 0x0000); /* a tie with zero: even */
    cr_assert(isinf(ag_decode(h, 0xfc00)) && ag_decode(h, 0xfc00) < 0);
}

Test(widths, list_by_width) {
    const ag_format *out[AG_FORMATS_MAX];
    size_t n8 = ag_format_list(8, out, AG_FORMATS_MAX);
    cr_assert_geq(n8, 6); /* the seed's five and E4M3 */
    for (size_t i = 0; i < n8; i++) cr_assert_eq(out[i]->bits, 8);
    cr_assert_eq(ag_format_list(16, out, 1), ag_format_list(16, NULL, 0));
    cr_assert_geq(ag_format_list(16, NULL, 0), 2);
    cr_assert_str_eq(out[0]->name, "BF16");
    cr_assert_eq(ag_format_list(0, NULL, 0), ag_format_count());
    cr_assert_eq(ag_format_list(4, out, AG_FORMATS_MAX), ag_format_list(4, NULL, 0));
}

/* The number of patterns to walk for f: all of them up to 8 bits. */
static uint32_t npatterns(const ag_format *f) { return 1u << f->bits; }

Test(widths, every_pattern_decodes_and_round_trips) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    for (size_t i = 0; i < nf; i++) {
        const ag_format *f = fmts[i];
        ref_format r = ref_of(f);
        for (uint32_t b = 0; b < npatterns(f); b++) {
            double want = ref_decode(r, b);
            float got = ag_decode(f, (uint16_t)b);
            if (isnan(want)) {
                cr_assert(isnan(got), "%s 0x%x", f->name, b);
                uint16_t c = ag_encode(f, got);
                cr_assert_eq(c, ref_nan_pattern(r), "%s NaN 0x%x -> 0x%x", f->name, b, c);
                continue;
            }
            if ((double)got != want)
                cr_assert_fail("%s decode 0x%x: %a want %a", f->name, b, (double)got, want);
            uint16_t c = ag_encode(f, got);
            if (c != b) cr_assert_fail("%s 0x%x round-trips to 0x%x", f->name, b, c);
        }
    }
}

static void check_encode(const ag_format *f, float x) {
    uint16_t want = ref_encode(ref_of(f), x);
    uint16_t got = ag_encode(f, x);
    if (got != want)
        cr_assert_fail("%s encode(%a = %g): got 0x%x want 0x%x", f->name, (double)x, (double)x, got,
                       want);
}

/* Every float within 3 ulps of each grid value and each midpoint (for 16-bit
 * formats of every 7th pattern), both signs; then random floats. */
Test(widths, encode_agrees_with_the_reference_near_every_boundary_and_at_random) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    for (size_t i = 0; i < nf; i++) {
        const ag_format *f = fmts[i];
        ref_format r = ref_of(f);
        uint32_t top = ref_top(r), step = f->bits > 8 ? 7 : 1;
        for (uint32_t b = 0; b <= top; b += step) {
            double v = ref_decode(r, b);
            double w = b < top ? ref_decode(r, b + 1) : v * 2;
            double pts[3] = {v, (v + w) / 2, w};
            for (int p = 0; p < 3; p++) {
                float c = (float)pts[p];
                for (int k = -3; k <= 3; k++) {
                    float x = c;
                    for (int j = 0; j < k; j++) x = nextafterf(x, INFINITY);
                    for (int j = 0; j > k; j--) x = nextafterf(x, -INFINITY);
                    check_encode(f, x);
                    check_encode(f, -x);
                }
            }
        }
        float specials[] = {FLT_MAX, FLT_MIN,  FLT_TRUE_MIN, 0x1p-140f, 0.0f,
                            -0.0f,   INFINITY, -INFINITY,    1e30f,     f->max_finite * 1.5f};
        for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++)
            check_encode(f, specials[k]);
        uint64_t s = 99 + i;
        for (int k = 0; k < 20000; k++) {
            float x = ref_rand_float_bits(&s);
            if (isnan(x)) continue;
            check_encode(f, x);
            /* and values within the format's range */
            double u = (double)(int64_t)ref_rand(&s) * 0x1p-63;
            check_encode(f, (float)(u * f->max_finite * 1.1));
            check_encode(f, (float)(u * f->min_positive * 64));
        }
    }
}

/* The array forms in every variant: encode_array against ag_encode, and
 * decode_array against ag_decode. */
Test(widths, array_kernels_agree_with_the_scalar_ones) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    enum { N = 5003 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    uint8_t *enc = malloc(2 * N);
    uint64_t s = 5;
    for (size_t i = 0; i < N; i++) {
        double u = (double)(int64_t)ref_rand(&s) * 0x1p-63;
        x[i] = (float)(u * (i % 3 == 0 ? 1e-3 : i % 3 == 1 ? 3.0 : 1e5));
    }
    x[0] = NAN;
    x[1] = -INFINITY;
    x[2] = -0.0f;
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t fi = 0; fi < nf; fi++) {
            const ag_format *f = fmts[fi];
            const float scale = 0.375f;
            cr_assert_eq(ag_encode_array(f, scale, x, enc, N), AG_OK);
            cr_assert_eq(ag_decode_array(f, 2.0f, enc, y, N), AG_OK);
            for (size_t i = 0; i < N; i++) {
                uint16_t want = ag_encode(f, x[i] / scale), got;
                if (f->pattern_bytes == 2)
                    memcpy(&got, enc + 2 * i, 2);
                else
                    got = enc[i];
                if (got != want)
                    cr_assert_fail("%s %s [%zu] %a: 0x%x want 0x%x", ag_isa_name(isa), f->name, i,
                                   (double)x[i], got, want);
                float v = ag_decode(f, want) * 2.0f;
                cr_assert(v == y[i] || (isnan(v) && isnan(y[i])), "%s %s decode [%zu]",
                          ag_isa_name(isa), f->name, i);
            }
        }
    }
    free(x);
    free(y);
    free(enc);
}

/* Saturating Q(w) - w summed in double. */
static void ref_qerr(const ag_format *f, float scale, const float *w, size_t n, ag_quant_error *e) {
    memset(e, 0, sizeof *e);
    ref_format r = ref_of(f);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(w[i])) continue;
        float xs = w[i] / scale;
        double q = ref_decode(r, ref_encode(r, xs));
        if (!isfinite(q)) q = copysign((double)f->max_finite, (double)xs);
        double d = (q - (double)xs) * scale;
        e->sq_error += d * d;
        e->sq_signal += (double)w[i] * (double)w[i];
        e->count++;
    }
}

static void assert_close(double got, double want, const char *what) {
    cr_assert(fabs(got - want) <= 1e-9 * fabs(want) + 1e-300, "%s: %.17g want %.17g", what, got,
              want);
}

Test(widths, the_multi_format_pass_counts_encodes_and_measures_error_in_every_format) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    enum { N = 6007 };
    float *w = malloc(N * sizeof *w), *g = malloc(N * sizeof *g);
    uint64_t s = 11;
    for (size_t i = 0; i < N; i++) {
        double r1 = (double)(int64_t)ref_rand(&s) * 0x1p-63,
               r2 = (double)(int64_t)ref_rand(&s) * 0x1p-63;
        int kind = (int)(ref_rand(&s) % 8);
        w[i] = (float)(r1 * (kind < 2 ? 1e-6 : kind < 6 ? 2.0 : 3e4));
        g[i] = (float)(r2 * (kind % 3 == 0 ? 1e-5 : kind % 3 == 1 ? 0.5 : 100.0));
    }
    w[3] = NAN;
    g[5] = INFINITY;
    w[9] = 0.0f;
    float scales[AG_FORMATS_MAX];
    uint8_t *enc[AG_FORMATS_MAX];
    for (size_t f = 0; f < nf; f++) {
        /* per-tensor scales from the amax (3e4) for most; 1 (unscaled) for some */
        scales[f] = f % 4 == 3 ? 1.0f : (float)(3e4 / fmts[f]->max_finite);
        enc[f] = malloc(N * (size_t)fmts[f]->pattern_bytes);
    }
    uint8_t *want_enc = malloc(2 * N);
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (int form = 0; form < 2; form++) {
            ag_stall_counts got[AG_FORMATS_MAX] = {{0}};
            ag_quant_error qe[AG_FORMATS_MAX] = {{0}}, qe2[AG_FORMATS_MAX] = {{0}};
            cr_assert_eq(
                ag_stall_encode_multi(fmts, scales, nf, form, 0.01f, w, g, N, got, enc, qe), AG_OK);
            cr_assert_eq(ag_quant_error_multi(fmts, scales, nf, w, N, qe2), AG_OK);
            for (size_t f = 0; f < nf; f++) {
                ag_stall_counts want;
                ref_stall(fmts[f], scales[f], form, 0.01f, w, g, N, &want);
                cr_assert(
                    got[f].stalled == want.stalled && got[f].total == want.total &&
                        got[f].overflow == want.overflow && got[f].underflow == want.underflow &&
                        got[f].nonfinite == want.nonfinite,
                    "%s %s form %d: %llu/%llu ov %llu un %llu, want %llu/%llu ov %llu un %llu",
                    ag_isa_name(isa), fmts[f]->name, form, (unsigned long long)got[f].stalled,
                    (unsigned long long)got[f].total, (unsigned long long)got[f].overflow,
                    (unsigned long long)got[f].underflow, (unsigned long long)want.stalled,
                    (unsigned long long)want.total, (unsigned long long)want.overflow,
                    (unsigned long long)want.underflow);
                cr_assert_eq(ag_encode_array(fmts[f], scales[f], w, want_enc, N), AG_OK);
                cr_assert_eq(memcmp(enc[f], want_enc, N * (size_t)fmts[f]->pattern_bytes), 0,
                             "%s encoding", fmts[f]->name);
                ag_quant_error rq;
                ref_qerr(fmts[f], scales[f], w, N, &rq);
                cr_assert_eq(qe[f].count, rq.count);
                cr_assert_eq(qe2[f].count, rq.count);
                assert_close(qe[f].sq_error, rq.sq_error, fmts[f]->name);
                assert_close(qe[f].sq_signal, rq.sq_signal, fmts[f]->name);
                assert_close(qe2[f].sq_error, rq.sq_error, fmts[f]->name);
                assert_close(ag_quant_mse(&qe[f]), rq.sq_error / (double)rq.count, "mse");
                if (rq.sq_error > 0)
                    assert_close(ag_quant_sqnr_db(&qe[f]), 10 * log10(rq.sq_signal / rq.sq_error),
                                 "sqnr");
            }
        }
    }
    for (size_t f = 0; f < nf; f++) free(enc[f]);
    free(want_enc);
    free(w);
    free(g);
}

Test(widths, quantization_error_edge_cases) {
    const ag_format *bf = ag_format_get("BF16");
    float exact[4] = {1.0f, -2.0f, 0.5f, 0.0f}, zeros[3] = {0.0f, -0.0f, 0.0f};
    float s1 = 1.0f;
    ag_quant_error e = {0};
    cr_assert_eq(ag_quant_error_multi(&bf, &s1, 1, exact, 4, &e), AG_OK);
    cr_assert_eq(e.sq_error, 0.0);
    cr_assert_eq(e.sq_signal, 5.25);
    cr_assert_eq(e.count, 4);
    cr_assert_eq(ag_quant_mse(&e), 0.0);
    cr_assert(isnan(ag_quant_sqnr_db(&e))); /* exact: no noise */
    ag_quant_error z = {0};
    cr_assert_eq(ag_quant_error_multi(&bf, &s1, 1, zeros, 3, &z), AG_OK);
    cr_assert(isnan(ag_quant_sqnr_db(&z)));
    ag_quant_error none = {0};
    cr_assert(isnan(ag_quant_mse(&none)));
    /* one element 1 + 2^-8 + 2^-9 rounds up to 1 + 2^-7 in BF16 */
    float one[1] = {1.0f + 0x1p-8f + 0x1p-9f};
    ag_quant_error o = {0};
    cr_assert_eq(ag_quant_error_multi(&bf, &s1, 1, one, 1, &o), AG_OK);
    cr_assert_eq(o.sq_error, 0x1p-18);
    /* saturation: E4M3 at scale 1, 1000 counts as 448 */
    const ag_format *e4 = ag_format_get("E4M3");
    float big[1] = {1000.0f};
    ag_quant_error b = {0};
    cr_assert_eq(ag_quant_error_multi(&e4, &s1, 1, big, 1, &b), AG_OK);
    cr_assert_eq(b.sq_error, 552.0 * 552.0);
    float bad = 0.0f;
    cr_assert_eq(ag_quant_error_multi(&e4, &bad, 1, big, 1, &b), AG_EINVAL);
    cr_assert_eq(ag_quant_error_multi(&e4, &s1, 1, big, 0, &b), AG_EINVAL);
    const ag_format *nul = NULL;
    cr_assert_eq(ag_quant_error_multi(&nul, &s1, 1, big, 1, &b), AG_EFORMAT);
}

/* Pattern flips of 16-bit (and narrow) formats: the fused kernel and the
 * byte comparison against a reference from ref_encode, with zeros of both
 * signs and NaNs. */
static int ref_differs(ref_format r, uint32_t a, uint32_t b) {
    uint32_t mag = ref_sign_bit(r) - 1u;
    if ((a & mag) == 0 && (b & mag) == 0) return 0;
    double va = ref_decode(r, a), vb = ref_decode(r, b);
    if (isnan(va) && isnan(vb)) return 0;
    return a != b;
}

Test(widths, pattern_flips_of_every_width) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    enum { N = 40009 };
    float *pw = malloc(N * sizeof *pw), *cw = malloc(N * sizeof *cw);
    uint8_t *prev = malloc(2 * N), *cur = malloc(2 * N);
    uint64_t s = 23;
    for (size_t i = 0; i < N; i++) {
        double u = (double)(int64_t)ref_rand(&s) * 0x1p-63;
        pw[i] = (float)(u * 4.0);
        int k = (int)(i % 6);
        cw[i] = k == 0   ? pw[i]
                : k == 1 ? pw[i] * (1.0f + 0x1p-20f)
                : k == 2 ? pw[i] * 1.01f
                : k == 3 ? -pw[i]
                         : pw[i] + 0.001f;
        if (i % 97 == 0) {
            pw[i] = 0.0f;
            cw[i] = -0.0f;
        }
        if (i % 101 == 0) pw[i] = cw[i] = NAN;
    }
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        for (size_t fi = 0; fi < nf; fi++) {
            const ag_format *f = fmts[fi];
            ref_format r = ref_of(f);
            const float scale = 0.25f;
            uint64_t want = 0;
            for (size_t i = 0; i < N; i++)
                want += ref_differs(r, ref_encode(r, pw[i] / scale), ref_encode(r, cw[i] / scale));
            cr_assert_eq(ag_encode_array(f, scale, pw, prev, N), AG_OK);
            cr_assert_eq(ag_encode_array(f, scale, cw, cur, N), AG_OK);
            uint64_t fused = 0, bytes = 0, values = 0;
            cr_assert_eq(ag_count_pattern_flips(f, scale, prev, cw, N, &fused), AG_OK);
            cr_assert_eq(ag_count_pattern_changes(f, prev, cur, N, &bytes), AG_OK);
            cr_assert_eq(ag_count_flips(f, prev, scale, cur, scale, N, &values), AG_OK);
            cr_assert_eq(fused, want, "%s %s fused %llu want %llu", ag_isa_name(isa), f->name,
                         (unsigned long long)fused, (unsigned long long)want);
            cr_assert_eq(bytes, want, "%s %s", ag_isa_name(isa), f->name);
            cr_assert_eq(values, want, "%s %s values", ag_isa_name(isa), f->name);
            cr_assert_gt(want, 0);
        }
    }
    free(pw);
    free(cw);
    free(prev);
    free(cur);
}

Test(widths, unscaled_twins) {
    const ag_format *bf = ag_format_get("BF16"), *t = NULL, *t2 = NULL;
    cr_assert_eq(ag_format_unscaled(bf, &t), AG_OK);
    cr_assert_str_eq(t->name, "BF16-unscaled");
    cr_assert(t->unscaled && !bf->unscaled);
    cr_assert_eq(t->exponent_bits, 8);
    cr_assert_eq((double)t->max_finite, (double)bf->max_finite);
    cr_assert_eq(ag_format_unscaled(bf, &t2), AG_OK);
    cr_assert_eq(t, t2);
    cr_assert_eq(ag_format_unscaled(t, &t2), AG_OK);
    cr_assert_eq(t, t2); /* the twin of a twin is itself */
    cr_assert_eq(ag_format_get("BF16-unscaled"), t);
    /* by name: created on first lookup */
    const ag_format *h = ag_format_get("FP16-unscaled");
    cr_assert_not_null(h);
    cr_assert(h->unscaled);
    cr_assert_eq(ag_format_get("FP16-unscaled"), h);
    cr_assert_null(ag_format_get("NOPE-unscaled"));
    cr_assert_null(ag_format_get("-unscaled"));
    /* defining the twin's name: the base's definition or nothing */
    cr_assert_eq(ag_format_define("BF16-unscaled", 8, 7, 127, 1, 1, &t2), AG_OK);
    cr_assert_eq(t2, t);
    cr_assert_eq(ag_format_define("BF16-unscaled", 5, 10, 15, 1, 1, &t2), AG_EEXIST);
    cr_assert_eq(ag_format_define("Q9-unscaled", 4, 3, 7, 0, 0, &t2), AG_EFORMAT);
    const ag_format *lng = NULL;
    cr_assert_eq(ag_format_define("E5M10abc", 5, 10, 15, 1, 1, &lng), AG_OK);
    cr_assert_eq(ag_format_unscaled(lng, &t2), AG_ERANGE);
    cr_assert_eq(ag_format_unscaled(NULL, &t2), AG_EFORMAT);
    /* same numerics: encoding is the base's */
    cr_assert_eq(ag_encode(t, 1.0f), ag_encode(bf, 1.0f));
}

/* ---- the multi-format pass at every rounding boundary ---- */

/* w for format f at scale s: each grid magnitude x (16-bit formats: every
 * 29th past the first and last 64), the midpoint to the next (a tie), a
 * float either side of both, all times s; both signs; then max + half an
 * ulp (inf's tie) and float32's extremes. With s a power of two, w / s is
 * exactly these values. Returns the count (at most cap). */
static size_t boundary_values(const ag_format *f, float s, float *out, size_t cap) {
    ref_format r = ref_of(f);
    uint32_t top = ref_top(r);
    size_t k = 0;
    for (uint32_t p = 0; p <= top; p += (p < 64 || top - p < 64 || f->bits <= 8) ? 1 : 29) {
        double v = ref_decode(r, p);
        double next = p < top ? ref_decode(r, p + 1) : 2 * v - ref_decode(r, p - 1);
        float g = (float)v, mid = (float)((v + next) / 2);
        float c[6] = {g,   nextafterf(g, 0.0f),   nextafterf(g, INFINITY),
                      mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int j = 0; j < 6; j++) {
            cr_assert_leq(k + 2, cap);
            out[k++] = c[j] * s;
            out[k++] = -c[j] * s;
        }
    }
    float extremes[] = {FLT_MAX, -FLT_MAX, FLT_MIN, 0x1p-149f, -1e-40f, 0.0f, -0.0f, 1e30f};
    for (size_t j = 0; j < sizeof extremes / sizeof extremes[0]; j++) {
        cr_assert_lt(k, cap);
        out[k++] = extremes[j];
    }
    return k;
}

/* One format, w at every boundary, updates that move each element to a
 * neighbouring boundary (stride 2: the next candidate of the same sign) or
 * to the next grid value's (stride 12), and none (u = 0 every 5th): counts
 * against ref_stall, patterns against ref_encode, and the quantization error
 * equal bit for bit to ag_quant_error_multi's. */
static void check_boundaries(const ag_format *f, float s, const float *w, size_t n, float *u,
                             uint8_t *enc, uint16_t *want_b) {
    ref_format r = ref_of(f);
    for (size_t i = 0; i < n; i++) want_b[i] = ref_encode(r, w[i] / s);
    for (size_t stride = 2; stride <= 12; stride += 10) {
        for (size_t i = 0; i < n; i++) u[i] = i % 5 == 4 ? 0.0f : w[(i + stride) % n] - w[i];
        ag_stall_counts want;
        ref_stall(f, s, 1, 0.0f, w, u, n, &want);
        ag_quant_error qe_want = {0};
        cr_assert_eq(ag_quant_error_multi(&f, &s, 1, w, n, &qe_want), AG_OK);
        for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
            if (!ag_isa_supported(isa)) continue;
            cr_assert_eq(ag_isa_force(isa), AG_OK);
            ag_stall_counts got[4] = {{0}};
            ag_quant_error qe = {0};
            uint8_t *encs[1] = {enc};
            const ag_format *two[2] = {f, f};
            float s2[2] = {s, s};
            /* alone (its own loop), twice in one pass (the shared
             * preparation), and the pass that also encodes */
            cr_assert_eq(ag_stall_update_multi(&f, &s, 1, w, u, n, &got[0]), AG_OK);
            cr_assert_eq(ag_stall_update_multi(two, s2, 2, w, u, n, &got[1]), AG_OK);
            cr_assert_eq(ag_stall_encode_multi(&f, &s, 1, 1, 0.0f, w, u, n, &got[3], encs, &qe),
                         AG_OK);
            for (int k = 0; k < 4; k++) {
                ag_stall_counts c = got[k];
                cr_assert(c.stalled == want.stalled && c.total == want.total &&
                              c.overflow == want.overflow && c.underflow == want.underflow &&
                              c.nonfinite == want.nonfinite,
                          "%s %s scale %a stride %zu%s: %llu/%llu ov %llu un %llu nf %llu, want "
                          "%llu/%llu ov %llu un %llu nf %llu",
                          ag_isa_name(isa), f->name, (double)s, stride,
                          k == 0   ? ""
                          : k == 3 ? " (encoding)"
                                   : " (two in a pass)",
                          (unsigned long long)c.stalled, (unsigned long long)c.total,
                          (unsigned long long)c.overflow, (unsigned long long)c.underflow,
                          (unsigned long long)c.nonfinite, (unsigned long long)want.stalled,
                          (unsigned long long)want.total, (unsigned long long)want.overflow,
                          (unsigned long long)want.underflow, (unsigned long long)want.nonfinite);
            }
            for (size_t i = 0; i < n; i++) {
                uint16_t b = want_b[i], got_b;
                if (f->pattern_bytes == 2)
                    memcpy(&got_b, enc + 2 * i, 2);
                else
                    got_b = enc[i];
                if (got_b != b)
                    cr_assert_fail("%s %s scale %a [%zu] w %a: pattern 0x%x, want 0x%x",
                                   ag_isa_name(isa), f->name, (double)s, i, (double)w[i], got_b, b);
            }
            cr_assert(qe.sq_error == qe_want.sq_error && qe.sq_signal == qe_want.sq_signal &&
                          qe.count == qe_want.count,
                      "%s %s scale %a: error %a signal %a n %llu, want %a %a %llu",
                      ag_isa_name(isa), f->name, (double)s, qe.sq_error, qe.sq_signal,
                      (unsigned long long)qe.count, qe_want.sq_error, qe_want.sq_signal,
                      (unsigned long long)qe_want.count);
        }
    }
}

Test(widths, the_multi_format_pass_agrees_with_the_reference_at_every_rounding_boundary) {
    const ag_format *fmts[AG_FORMATS_MAX];
    size_t nf = all_formats(fmts);
    /* a BF16-like grid whose largest binade's rounding constant would not
     * be a finite float: the pass rounds it on the integer path */
    cr_assert_eq(ag_format_define_ex("E8M4i", 8, 4, 127, AG_NAN_IEEE, &fmts[nf++]), AG_OK);
    enum { CAP = 80000 };
    float *w = malloc(CAP * sizeof *w), *u = malloc(CAP * sizeof *u);
    uint8_t *enc = malloc(2 * CAP);
    uint16_t *want_b = malloc(CAP * sizeof *want_b);
    const float scales[] = {1.0f, 0x1p-3f, 0.3f};
    for (size_t fi = 0; fi < nf; fi++)
        for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++) {
            size_t n = boundary_values(fmts[fi], scales[k], w, CAP);
            check_boundaries(fmts[fi], scales[k], w, n, u, enc, want_b);
        }
    free(want_b);
    free(w);
    free(u);
    free(enc);
}
