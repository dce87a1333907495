/*
 * test_amax.c - core/amax.c: tensor amax, the amax history ring and
 * compute_scale, with the seed's behaviours.
 */
#include <criterion/criterion.h>
#include <math.h>

#include "altgrad/altgrad.h"
#include "core/kernel.h"

Test(amax, ignores_non_finite_elements_and_counts_them) {
    float x[6] = {1.0f, -7.5f, NAN, INFINITY, -INFINITY, 3.0f};
    float m = -1;
    uint64_t bad = 0;
    cr_assert_eq(ag_amax(x, 6, &m, &bad), AG_OK);
    cr_assert_eq(m, 7.5f);
    cr_assert_eq(bad, 3);
    cr_assert_eq(ag_amax(x, 0, &m, &bad), AG_EINVAL);
    cr_assert_eq(ag_amax(NULL, 1, &m, &bad), AG_EINVAL);
}

Test(amax, large_arrays_agree_with_a_plain_loop) {
    enum { N = 100003 };
    static float x[N];
    for (size_t i = 0; i < N; i++) x[i] = sinf((float)i) * (float)(i % 977);
    x[5000] = NAN;
    float m, want = 0;
    uint64_t bad;
    for (size_t i = 0; i < N; i++)
        if (isfinite(x[i]) && fabsf(x[i]) > want) want = fabsf(x[i]);
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        cr_assert_eq(ag_amax(x, N, &m, &bad), AG_OK);
        cr_assert_eq(m, want, "%s", ag_isa_name(isa));
        cr_assert_eq(bad, 1);
    }
}

/* Past the kernel's 2^20-element counting runs: non-finite values in
 * several runs are all counted, and the largest in the last run found. */
Test(amax, counts_non_finite_values_across_runs_of_a_million) {
    size_t n = (3u << 20) + 77;
    float *x = malloc(n * sizeof *x);
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(i % 1000) * 1e-3f - 0.5f;
    size_t bad_at[] = {0, 1, (1u << 20) - 1, 1u << 20, (2u << 20) + 5, n - 1};
    for (size_t k = 0; k < sizeof bad_at / sizeof bad_at[0]; k++)
        x[bad_at[k]] = k & 1 ? -INFINITY : NAN;
    x[n - 2] = -7.25f;
    for (int isa = 0; isa < AG_ISA_COUNT; isa++) {
        if (!ag_isa_supported(isa)) continue;
        cr_assert_eq(ag_isa_force(isa), AG_OK);
        float m = 0;
        uint64_t bad = 0;
        cr_assert_eq(ag_amax(x, n, &m, &bad), AG_OK);
        cr_assert_eq(m, 7.25f, "%s", ag_isa_name(isa));
        cr_assert_eq(bad, 6, "%s: %llu", ag_isa_name(isa), (unsigned long long)bad);
    }
    free(x);
}

Test(amax_history, seed_scale_from_10_20_30_40_in_e5m2) {
    ag_amax_history *h;
    cr_assert_eq(ag_amax_history_new(&h, 4, AG_AMAX_MAX), AG_OK);
    for (int i = 1; i <= 4; i++) {
        float v = (float)(i * 10);
        cr_assert_eq(ag_amax_history_update(h, &v, 1), AG_OK);
    }
    double s = ag_compute_scale(ag_amax_history_get(h), ag_format_get("E5M2"), AG_SCALE_MIN);
    cr_assert_eq(s, 40.0 / 57344.0);
    cr_assert_gt(s, 0);
    ag_amax_history_free(h);
}

Test(amax_history, empty_history_gives_one) {
    ag_amax_history *h;
    cr_assert_eq(ag_amax_history_new(&h, AG_AMAX_HISTORY_DEFAULT_LEN, AG_AMAX_MAX), AG_OK);
    cr_assert_eq(ag_amax_history_get(h), 1.0);
    cr_assert_eq(ag_amax_history_size(h), 0);
    cr_assert_eq(ag_amax_history_capacity(h), 16);
    cr_assert_eq(ag_amax_history_get(NULL), 1.0);
    ag_amax_history_free(h);
}

Test(amax_history, ring_forgets_the_oldest_value) {
    ag_amax_history *h;
    cr_assert_eq(ag_amax_history_new(&h, 3, AG_AMAX_MAX), AG_OK);
    double in[] = {100, 1, 2, 3};
    for (int i = 0; i < 4; i++) ag_amax_history_push(h, in[i]);
    cr_assert_eq(ag_amax_history_get(h), 3.0);
    cr_assert_eq(ag_amax_history_size(h), 3);
    double out[3];
    size_t n = 0;
    cr_assert_eq(ag_amax_history_values(h, out, 3, &n), AG_OK);
    cr_assert_eq(n, 3);
    cr_assert(out[0] == 1 && out[1] == 2 && out[2] == 3);
    cr_assert_eq(ag_amax_history_values(h, out, 2, &n), AG_ERANGE);
    ag_amax_history_reset(h);
    cr_assert_eq(ag_amax_history_size(h), 0);
    cr_assert_eq(ag_amax_history_get(h), 1.0);
    ag_amax_history_free(h);
}

Test(amax_history, most_recent_mode_returns_the_newest) {
    ag_amax_history *h;
    cr_assert_eq(ag_amax_history_new(&h, 4, AG_AMAX_MOST_RECENT), AG_OK);
    ag_amax_history_push(h, 50);
    ag_amax_history_push(h, 5);
    cr_assert_eq(ag_amax_history_get(h), 5.0);
    ag_amax_history_free(h);
}

Test(amax_history, non_finite_values_are_counted_not_stored) {
    ag_amax_history *h;
    cr_assert_eq(ag_amax_history_new(&h, 4, AG_AMAX_MAX), AG_OK);
    ag_amax_history_push(h, 2.0);
    cr_assert_eq(ag_amax_history_push(h, NAN), AG_OK);
    cr_assert_eq(ag_amax_history_push(h, INFINITY), AG_OK);
    float all_bad[2] = {NAN, INFINITY};
    cr_assert_eq(ag_amax_history_update(h, all_bad, 2), AG_OK);
    cr_assert_eq(ag_amax_history_size(h), 1);
    cr_assert_eq(ag_amax_history_nonfinite(h), 4);
    cr_assert_eq(ag_amax_history_get(h), 2.0);
    ag_amax_history_free(h);
}

Test(amax_history, bad_arguments_are_rejected) {
    ag_amax_history *h = NULL;
    cr_assert_eq(ag_amax_history_new(&h, 0, AG_AMAX_MAX), AG_EINVAL);
    cr_assert_eq(ag_amax_history_new(&h, AG_AMAX_HISTORY_MAX_LEN + 1, AG_AMAX_MAX), AG_EINVAL);
    cr_assert_eq(ag_amax_history_new(&h, 4, (ag_amax_mode)7), AG_EINVAL);
    cr_assert_eq(ag_amax_history_new(NULL, 4, AG_AMAX_MAX), AG_EINVAL);
    cr_assert_null(h);
    cr_assert_eq(ag_amax_history_push(NULL, 1), AG_EINVAL);
    ag_amax_history_free(NULL);
}

Test(isa, forcing_an_unknown_variant_is_refused) {
    cr_assert_eq(ag_isa_force(-1), AG_EINVAL);
    cr_assert_eq(ag_isa_force(AG_ISA_COUNT), AG_EINVAL);
    cr_assert(ag_isa_supported(AG_ISA_BASE));
    cr_assert_eq(ag_isa_force(AG_ISA_BASE), AG_OK);
    cr_assert_eq(ag_isa_current(), AG_ISA_BASE);
    cr_assert_str_eq(ag_isa_name(AG_ISA_AVX2), "avx2");
}

Test(scale, compute_scale_divides_by_max_and_floors_at_scale_min) {
    const ag_format *e5 = ag_format_get("E5M2"), *e3 = ag_format_get("E3M4");
    cr_assert_eq(ag_compute_scale(57344.0, e5, AG_SCALE_MIN), 1.0);
    cr_assert_eq(ag_compute_scale(62.0, e3, AG_SCALE_MIN), 0.5);
    cr_assert_eq(ag_compute_scale(0.0, e5, AG_SCALE_MIN), AG_SCALE_MIN);
    cr_assert_eq(ag_compute_scale(1e-20, e5, 1e-3), 1e-3);
    cr_assert(isnan(ag_compute_scale(1.0, NULL, AG_SCALE_MIN)));
    cr_assert(isnan(ag_compute_scale(NAN, e5, AG_SCALE_MIN)));
    cr_assert(isnan(ag_compute_scale(-1.0, e5, AG_SCALE_MIN)));
    cr_assert(isnan(ag_compute_scale(1.0, e5, 0.0)));
}
