/*
 * amax.c - tensor amax, the amax history ring and the scale it yields
 * (docs/numerics.md, Quantize, scale, history). Non-finite values are counted and never enter a ring.
 */
#include <math.h>
#include <stdlib.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

struct ag_amax_history {
    size_t len;   /* capacity */
    size_t count; /* values held, <= len */
    size_t head;  /* next slot to write */
    ag_amax_mode mode;
    uint64_t nonfinite;
    double values[];
};

/* On the magnitude bits, max is an integer max: finite magnitudes order
 * like their bit patterns, and non-finite ones (>= 0x7f800000) are masked.
 * The non-finite count runs in 32 bits per run of AMAX_RUN elements (a
 * 64-bit sum beside a 32-bit max keeps the compiler from vectorising). */
#define AMAX_RUN ((size_t)1 << 20)

AG_INLINE void amax_impl(const float *x, size_t n, uint32_t *max_bits, uint64_t *nonfinite) {
    uint32_t m = 0;
    uint64_t bad = 0;
    for (size_t start = 0; start < n; start += AMAX_RUN) {
        size_t len = n - start < AMAX_RUN ? n - start : AMAX_RUN;
        const float *xs = x + start;
        uint32_t run_bad = 0;
        for (size_t i = 0; i < len; i++) {
            uint32_t b = ag_float_bits(xs[i]) & 0x7fffffffu;
            uint32_t finite = b < 0x7f800000u;
            uint32_t v = b & (0u - finite); /* a select here stays scalar */
            m = v > m ? v : m;
            run_bad += finite ^ 1u;
        }
        bad += run_bad;
    }
    *max_bits = m;
    *nonfinite = bad;
}

AG_KERNEL_VARIANTS(amax_bits, (const float *x, size_t n, uint32_t *max_bits, uint64_t *nonfinite),
                   { amax_impl(x, n, max_bits, nonfinite); });

AG_EXTERN int ag_amax(const float *x, size_t n, float *amax, uint64_t *nonfinite) {
    if (x == NULL || n == 0 || amax == NULL) return AG_EINVAL;
    uint64_t bad;
    uint32_t bits;
    amax_bits_variants[ag_isa_current()](x, n, &bits, &bad);
    float m = ag_bits_float(bits);
    *amax = m;
    if (nonfinite != NULL) *nonfinite = bad;
    return AG_OK;
}

AG_EXTERN double ag_compute_scale(double amax, const ag_format *fmt, double scale_min) {
    if (fmt == NULL || isnan(amax) || amax < 0.0 || !isfinite(scale_min) || scale_min <= 0.0)
        return NAN;
    double s = amax / (double)fmt->max_finite;
    return s > scale_min ? s : scale_min;
}

AG_EXTERN int ag_amax_history_new(ag_amax_history **out, size_t len, ag_amax_mode mode) {
    if (out == NULL || len == 0 || len > AG_AMAX_HISTORY_MAX_LEN ||
        (mode != AG_AMAX_MAX && mode != AG_AMAX_MOST_RECENT))
        return AG_EINVAL;
    ag_amax_history *h = calloc(1, sizeof *h + len * sizeof(double));
    if (h == NULL) return AG_ENOMEM;
    h->len = len;
    h->mode = mode;
    *out = h;
    return AG_OK;
}

AG_EXTERN void ag_amax_history_free(ag_amax_history *h) { free(h); }

AG_EXTERN int ag_amax_history_push(ag_amax_history *h, double amax) {
    if (h == NULL) return AG_EINVAL;
    if (!isfinite(amax) || amax < 0.0) {
        h->nonfinite++;
        return AG_OK;
    }
    h->values[h->head] = amax;
    h->head = (h->head + 1) % h->len;
    if (h->count < h->len) h->count++;
    return AG_OK;
}

AG_EXTERN int ag_amax_history_update(ag_amax_history *h, const float *x, size_t n) {
    if (h == NULL) return AG_EINVAL;
    float m;
    uint64_t bad;
    int rc = ag_amax(x, n, &m, &bad);
    if (rc != AG_OK) return rc;
    h->nonfinite += bad;
    if (bad < n) rc = ag_amax_history_push(h, m);
    return rc;
}

AG_EXTERN double ag_amax_history_get(const ag_amax_history *h) {
    if (h == NULL || h->count == 0) return 1.0;
    if (h->mode == AG_AMAX_MOST_RECENT) return h->values[(h->head + h->len - 1) % h->len];
    double m = h->values[0];
    for (size_t i = 1; i < h->count; i++) m = h->values[i] > m ? h->values[i] : m;
    return m;
}

AG_EXTERN size_t ag_amax_history_size(const ag_amax_history *h) { return h ? h->count : 0; }

AG_EXTERN size_t ag_amax_history_capacity(const ag_amax_history *h) { return h ? h->len : 0; }

AG_EXTERN uint64_t ag_amax_history_nonfinite(const ag_amax_history *h) {
    return h ? h->nonfinite : 0;
}

AG_EXTERN void ag_amax_history_reset(ag_amax_history *h) {
    if (h == NULL) return;
    h->count = 0;
    h->head = 0;
    h->nonfinite = 0;
}

AG_EXTERN int ag_amax_history_values(const ag_amax_history *h, double *out, size_t cap, size_t *n) {
    if (h == NULL || n == NULL || (out == NULL && cap > 0)) return AG_EINVAL;
    *n = h->count;
    if (cap < h->count) return AG_ERANGE;
    size_t start = (h->head + h->len - h->count) % h->len;
    for (size_t i = 0; i < h->count; i++) out[i] = h->values[(start + i) % h->len];
    return AG_OK;
}
