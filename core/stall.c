/*
 * stall.c - bit-stall, overflow, underflow and flip counting (docs/numerics.md, Stall).
 * One routine serves the SGD form (u = -lr * g, moving when |g| > 1e-10) and
 * the update form (u given, moving when u != 0), for one format or several:
 * the multi-format pass walks the arrays once in cache-sized blocks and runs
 * every format over each block, so memory is read once whatever the count
 * (a block is prepared once: w and w + u, with NaN where an element does not
 * count; then one loop per format; docs/numerics.md, How the stall pass is
 * built). The same pass can also encode w for every format and sum the
 * quantization error (stall_encode.h). Flips
 * (docs/numerics.md) compare 8-bit patterns at one scale: as bytes when both
 * snapshots were encoded at it, or encoding the new weights at the old scale
 * and comparing in the same pass when the scale moved.
 */
#include <math.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "altgrad/altgrad.h"
#include "block.h"
#include "kernel.h"
#include "stall_encode.h"

/* Stores pattern b of element i: encode 1 one byte, encode 2 a uint16_t. */
AG_INLINE void put_pattern(uint8_t *enc, size_t i, uint32_t b, const int encode) {
    if (encode == 2) {
        uint16_t h = (uint16_t)b;
        memcpy(enc + 2 * i, &h, 2);
    } else {
        enc[i] = (uint8_t)b;
    }
}

/* Elements per block: the pass reads w and v once per block into two
 * scratch arrays that stay in L1 while every format runs over them, and
 * per-lane 32-bit counters cannot overflow. The quantization error sums in
 * blocks of this size (docs/numerics.md). */
#define BLOCK 2048

/* What one pass over a block counts once for all formats. */
typedef struct prep_counts {
    uint32_t total, nonfinite, zeros;
    float amax; /* the largest |wn|, |wun| of the block (NaN left out), 0 if none */
    float amin; /* the smallest of them not 0 (NaN and inf are large), inf if none */
} prep_counts;

/* What one format counts over a block: rzero counts the elements whose w
 * rounds to zero (w = 0 included; the caller subtracts prep_counts.zeros). */
typedef struct block_counts {
    uint32_t stalled, overflow, rzero;
    prep_counts pc; /* the loops that prepare their own elements */
} block_counts;

/* The shared part of every format's work, once per block: wn[i] = w[i] where
 * w and v are finite, else NaN; wun[i] = w[i] + u where the element also
 * moves, else -NaN. A NaN never compares equal, never exceeds max_finite and
 * never rounds to zero, so the per-format loops need no masks: an element
 * that is not finite or not moving cannot count as stalled, overflowed or
 * underflowed. (Rounding with M = 0 turns a NaN into inf: the two signs
 * keep x's +inf and y's -inf apart.) update_form 0: v is g and
 * u = neg_lr * g; 1: v is u. One element: x (wn) and y (wun), and whether it
 * is counted (finite and moving), not finite, or a finite zero. */
AG_INLINE void prep_element(float neg_lr, float wi, float vi, float *x, float *y, uint32_t *counted,
                            uint32_t *nonfinite, uint32_t *zero, const int update_form) {
    float u = update_form ? vi : neg_lr * vi;
    uint32_t wb = ag_float_bits(wi) & 0x7fffffffu;
    uint32_t vb = ag_float_bits(vi) & 0x7fffffffu;
    /* signed compares (one instruction a vector): wb, vb < 2^31 */
    uint32_t finite = ((int32_t)wb < 0x7f800000) & ((int32_t)vb < 0x7f800000);
    uint32_t moving = update_form ? (u != 0.0f) : (ag_bits_float(vb) > AG_GRAD_EPSILON);
    *counted = finite & moving;
    *x = finite ? wi : NAN;
    *y = *counted ? wi + u : -NAN;
    *nonfinite = !finite;
    *zero = finite & (wi == 0.0f);
}

AG_INLINE void prep_block_impl(float neg_lr, const float *w, const float *v, size_t n, float *wn,
                               float *wun, prep_counts *pc, const int update_form) {
    uint32_t total = 0, nonfinite = 0, zeros = 0;
    /* the bits of magnitudes order as the floats; amin holds bits - 1 */
    uint32_t amax = 0, amin = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        uint32_t c, nf, z;
        prep_element(neg_lr, w[i], v[i], &wn[i], &wun[i], &c, &nf, &z, update_form);
        total += c;
        nonfinite += nf;
        zeros += z;
        /* the magnitudes of the finite w and of the counted w + u (where
         * wn and wun are not NaN), else 0 */
        uint32_t a = ag_float_bits(w[i]) & 0x7fffffffu & (0u - nf - 1u) /* finite: all ones */;
        uint32_t b = ag_float_bits(wun[i]) & 0x7fffffffu & (0u - c);
        uint32_t lo = (a - 1u) < (b - 1u) ? (a - 1u) : (b - 1u); /* 0 wraps to the top */
        amin = lo < amin ? lo : amin;
        a = a > b ? a : b;
        amax = a > amax ? a : amax;
    }
    pc->total = total;
    pc->nonfinite = nonfinite;
    pc->zeros = zeros;
    pc->amax = ag_bits_float(amax);
    pc->amin = amin >= 0x7f800000u ? INFINITY : ag_bits_float(amin + 1u);
}

#define PREP_PARAMS                                                                                \
    (float neg_lr, const float *w, const float *v, size_t n, float *wn, float *wun, prep_counts *pc)
AG_KERNEL_VARIANTS(prep_sgd, PREP_PARAMS, { prep_block_impl(neg_lr, w, v, n, wn, wun, pc, 0); });
AG_KERNEL_VARIANTS(prep_update, PREP_PARAMS, { prep_block_impl(neg_lr, w, v, n, wn, wun, pc, 1); });

/* One format's constants for the per-format loops. */
typedef struct fplan {
    ag_qparams p;
    ag_eparams e;
    float scale;
    float rscale;       /* 1 / scale */
    int recip;          /* ag_recip_steps(scale, rscale) */
    float neg_lr;       /* -lr, for the loops that prepare their own elements */
    float over_at;      /* |x| is clamped to it: it rounds to max, or past it to inf's pattern */
    uint32_t magic_add; /* (23 - M) << 23: exponent of the rounding magic over x's */
    uint32_t pat_sub;   /* (emin + 127 + 23 - M) << M: see fmt_block_impl */
    uint32_t sign_pos;  /* E + M */
} fplan;

/* How a format rounds in the per-format loop. MAGIC: |x| + m - m with
 * m = 2^(max(e, emin) + 23 - M), e the exponent of x, lets float32 addition
 * round to nearest even at exactly the grid's step in x's binade (2^(e - M))
 * and in the uniform range below 2^emin (2^(emin - M)), in one path: the sum
 * lies in m's binade, whose ulp is that step, and the grid index is the
 * sum's mantissa, so its parity is the tie rule's. It needs M >= 1 (for
 * M = 0 ties go down) and m finite up to the overflow threshold; MAGIC_SAT
 * is MAGIC for a format without inf (its saturated value needs no min).
 * INT and INT_HD: ag_qmag_hd, the general routine (half_down 0 or 1).
 * POW2: M = 0 (a grid of powers of two, ties down) as INT_HD computes it,
 * in integer steps with M's constants folded in: at or above 2^emin the
 * exponent field of |x| + 2^22 - 1; below, 2^emin past half of it, else 0
 * (what 2^(emin + 23) added and taken away rounds to, ties to the even 0);
 * the pattern is that exponent field rebiased, 0 below 2^emin. It needs
 * 2^(emin - 1) normal (emin >= -125). */
enum { KIND_MAGIC = 0, KIND_MAGIC_SAT = 1, KIND_INT = 2, KIND_INT_HD = 3, KIND_POW2 = 4 };
#define KINDS 5

static int plan_of(const ag_format *f, float scale, fplan *pl) {
    ag_qparams_of(f, &pl->p);
    ag_eparams_of(f, &pl->e);
    pl->scale = scale;
    pl->rscale = 1.0f / scale;
    pl->recip = ag_recip_steps(scale, pl->rscale);
    uint32_t maxb = ag_float_bits(f->max_finite), M = (uint32_t)f->mantissa_bits;
    /* inf formats: from max + half an ulp of max on (the tie goes to inf);
     * saturating ones: anything past max */
    pl->over_at = f->has_inf ? ag_bits_float(maxb + (1u << (22u - M))) : ag_bits_float(maxb + 1u);
    pl->magic_add = (23u - M) << 23;
    pl->pat_sub = ((uint32_t)(f->min_exponent + 127) + 23u - M) << M;
    pl->sign_pos = (uint32_t)(f->exponent_bits + f->mantissa_bits);
    if (M == 0) return f->min_exponent >= -125 ? KIND_POW2 : KIND_INT_HD;
    /* the magic of the largest binade below over_at must be a finite float */
    if ((ag_float_bits(pl->over_at) >> 23) + 23u - M > 254u) return KIND_INT;
    return f->has_inf ? KIND_MAGIC : KIND_MAGIC_SAT;
}

/* One format over one prepared block: x = wn / scale (w) and y = wun / scale
 * (w + u), each rounded once; stalled where the two signed grid values are
 * equal (+0 = -0; two same-signed overflows are equal: both inf, here
 * 2^(emax + 1), or both max), overflow where |x| > max_finite, rzero where x
 * rounds to 0.
 * encode: also the pattern of x to pt (32 bits each), and to d the
 * float difference (saturated grid value of x) - x, exact where no element
 * of the block overflows (Sterbenz: the grid value is within a factor 2 of
 * x, or 0); NaN elements get garbage, which the caller patches. */
AG_INLINE void fmt_block_impl(const fplan *pl, const float *wn, const float *wun, size_t n,
                              block_counts *bc, uint32_t *pt, float *d, const int kind,
                              const int encode, const int direct) {
    const ag_qparams p = pl->p;
    const ag_eparams e = pl->e;
    const float scale = pl->scale, over_at = pl->over_at, max = p.max_finite;
    (void)e; /* the integer path's patterns only */
    const uint32_t magic_add = pl->magic_add, pat_sub = pl->pat_sub, sign_pos = pl->sign_pos;
    const float neg_lr = pl->neg_lr;
    uint32_t stalled = 0, overflow = 0, rzero = 0, total = 0, nonfinite = 0, zeros = 0;
    for (size_t i = 0; i < n; i++) {
        float xn = wn[i], yn = wun[i];
        if (direct) { /* a format alone: wn, wun are w and v */
            uint32_t c, nf, z;
            prep_element(neg_lr, wn[i], wun[i], &xn, &yn, &c, &nf, &z, direct == 2);
            total += c;
            nonfinite += nf;
            zeros += z;
        }
        float x = xn / scale, y = yn / scale;
        float ax = fabsf(x), ay = fabsf(y), rx, ry, qx;
        uint32_t pat = 0;
        if (kind == KIND_MAGIC || kind == KIND_MAGIC_SAT) {
            /* |x| clamped to over_at first (a NaN stays NaN): it rounds to
             * max in a saturating format and, the tie going to the even
             * pattern, to 2^(emax + 1) in one with inf, whose pattern is
             * inf's; so overflows need no select, and the magic of the
             * largest binade the clamp leaves is finite */
            float cx = over_at < ax ? over_at : ax, cy = over_at < ay ? over_at : ay;
            uint32_t ex = ag_float_bits(cx) & 0x7f800000u, ey = ag_float_bits(cy) & 0x7f800000u;
            ex = (ex < p.emin_bits ? p.emin_bits : ex) + magic_add;
            ey = (ey < p.emin_bits ? p.emin_bits : ey) + magic_add;
            float sx = cx + ag_bits_float(ex), sy = cy + ag_bits_float(ey);
            rx = sx - ag_bits_float(ex);
            ry = sy - ag_bits_float(ey);
            qx = kind == KIND_MAGIC_SAT ? rx : rx > max ? max : rx;
            if (encode) {
                /* the grid index is the sum's mantissa, sx - m in the bits;
                 * the binade above emin adds 2^M per step of m */
                pat = ag_float_bits(sx) - ex + (ex >> p.shift) - pat_sub;
                pat |= (ag_float_bits(x) >> 31) << sign_pos;
            }
        } else if (kind == KIND_POW2) {
            /* clamped the same way; a NaN rounds as INT_HD rounds it */
            float cx = over_at < ax ? over_at : ax, cy = over_at < ay ? over_at : ay;
            uint32_t bx = ag_float_bits(cx), by = ag_float_bits(cy);
            const uint32_t half = p.emin_bits - 0x800000u;
            uint32_t nx = (bx + 0x3fffffu) & 0xff800000u, ny = (by + 0x3fffffu) & 0xff800000u;
            uint32_t sx = bx > half ? p.emin_bits : 0u, sy = by > half ? p.emin_bits : 0u;
            uint32_t rxb = bx < p.emin_bits ? sx : nx;
            rx = ag_bits_float(rxb);
            ry = ag_bits_float(by < p.emin_bits ? sy : ny);
            if (encode) {
                uint32_t mag = rxb < p.emin_bits ? 0u : (rxb >> 23) + e.bias_adj;
                mag = rx > max ? e.over_pattern : mag;
                uint32_t sign = (ag_float_bits(x) >> e.sign_shift) & e.sign_bit;
                pat = (mag | sign) & (e.sign_bit | e.mag_mask);
                pat = x != x ? e.nan_pattern : pat;
            }
            qx = rx > max ? max : rx;
        } else {
            /* clamped the same way; the integer rounding keeps NaN where
             * M >= 1 and makes it inf where M = 0 */
            float cx = over_at < ax ? over_at : ax, cy = over_at < ay ? over_at : ay;
            rx = ag_qmag_hd(&p, cx, kind == KIND_INT_HD);
            ry = ag_qmag_hd(&p, cy, kind == KIND_INT_HD);
            if (encode) pat = ag_pattern(&p, &e, x, rx);
            qx = rx > max ? max : rx;
        }
        /* the signed grid values (rx, ry >= 0 or NaN); +0 == -0 */
        stalled += ag_bits_float(ag_float_bits(rx) | (ag_float_bits(x) & 0x80000000u)) ==
                   ag_bits_float(ag_float_bits(ry) | (ag_float_bits(y) & 0x80000000u));
        overflow += ax > max;
        rzero += rx == 0.0f;
        if (encode) {
            pt[i] = pat;
            d[i] = copysignf(qx, x) - x;
        }
    }
    bc->stalled = stalled;
    bc->overflow = overflow;
    bc->rzero = rzero;
    bc->pc.total = total;
    bc->pc.nonfinite = nonfinite;
    bc->pc.zeros = zeros;
    bc->pc.amax = 0.0f;
    bc->pc.amin = INFINITY;
}

#define FMT_PARAMS                                                                                 \
    (const fplan *pl, const float *wn, const float *wun, size_t n, block_counts *bc, uint32_t *pt, \
     float *d)
#define FMT_VARIANTS(name, kind, encode, direct)                                                   \
    AG_KERNEL_VARIANTS(name, FMT_PARAMS,                                                           \
                       { fmt_block_impl(pl, wn, wun, n, bc, pt, d, kind, encode, direct); })
FMT_VARIANTS(fmt_magic, KIND_MAGIC, 0, 0);
FMT_VARIANTS(fmt_int, KIND_INT, 0, 0);
FMT_VARIANTS(fmt_int_hd, KIND_INT_HD, 0, 0);
FMT_VARIANTS(fmt_magic_enc, KIND_MAGIC, 1, 0);
FMT_VARIANTS(fmt_magic_sat_enc, KIND_MAGIC_SAT, 1, 0);
FMT_VARIANTS(fmt_int_enc, KIND_INT, 1, 0);
FMT_VARIANTS(fmt_int_hd_enc, KIND_INT_HD, 1, 0);
FMT_VARIANTS(fmt_pow2, KIND_POW2, 0, 0);
FMT_VARIANTS(fmt_pow2_enc, KIND_POW2, 1, 0);
/* one format alone, counts only: no separate preparation (SGD, update) */
FMT_VARIANTS(fmt_magic_sgd, KIND_MAGIC, 0, 1);
FMT_VARIANTS(fmt_int_sgd, KIND_INT, 0, 1);
FMT_VARIANTS(fmt_int_hd_sgd, KIND_INT_HD, 0, 1);
FMT_VARIANTS(fmt_magic_upd, KIND_MAGIC, 0, 2);
FMT_VARIANTS(fmt_int_upd, KIND_INT, 0, 2);
FMT_VARIANTS(fmt_int_hd_upd, KIND_INT_HD, 0, 2);
FMT_VARIANTS(fmt_pow2_sgd, KIND_POW2, 0, 1);
FMT_VARIANTS(fmt_pow2_upd, KIND_POW2, 0, 2);

/* One format over a prepared block none of whose |x|, |y| exceeds
 * max_finite (the caller checks the block's largest magnitude once:
 * division is monotone), so no clamp and no overflow to count; the signed
 * values round in one step each. Stalled where the two are equal (+0 = -0;
 * a NaN never is), rzero where x's is 0.
 * MAGIC and MAGIC_SAT (fast 0, 1): m = 1.5 * 2^(max(e, emin) + 23 - M)
 * keeps x + m inside m's binade for either sign of x (|x| < 2^(e + 1) and
 * M <= 21), where the ulp is the grid's step; m's mantissa is even in those
 * units, so the sum's ties go to the even grid index as x's own would, and
 * (x + m) - m is x's signed grid value (+0 where it rounds to zero; NaN
 * stays NaN). fast 1: no nonzero |x| below 2^emin either (the block's
 * smallest magnitude checked the same way), so e needs no clamp to emin
 * (0 rounds to 0 with any m).
 * POW2 (fast 2), no nonzero |x| below 2^emin: the signed bits plus
 * 2^22 - 1, cut to sign and exponent, are x's power of two, ties down (a
 * mantissa past half carries into the exponent; 0 stays 0); a NaN becomes
 * inf of its sign, and wn's NaN is +, wun's -, as prep_element makes them.
 * With fast 1 and 2, x rounds to 0 only where it is 0: the caller takes
 * rzero from the prepared block's zeros (rzero is left 0 here).
 * encode: x's pattern to pt and (grid value of x) - x to d, as
 * fmt_block_impl writes them (exact: no element overflows). MAGIC: the
 * grid index |bits(x + m) - bits(m)| (both in m's binade) plus the index
 * of x's binade above emin's, (bits(2^max(e, emin)) - bits(2^emin)) >> (23 - M);
 * POW2: the exponent field rebiased, 0 for 0. */
AG_INLINE void fmt_fast_impl(const fplan *pl, const float *wn, const float *wun, size_t n,
                             block_counts *bc, uint32_t *pt, float *d, const int fast,
                             const int encode, const int recip) {
    const float scale = pl->scale, rscale = pl->rscale;
    const uint32_t emin0 = pl->p.emin_bits, emin_bits = fast == 0 ? emin0 : 0u;
    const uint32_t magic_add = pl->magic_add, shift = pl->p.shift;
    const uint32_t sign_pos = pl->sign_pos;
    const uint32_t bias_adj = pl->e.bias_adj;
    uint32_t stalled = 0, rzero = 0;
    for (size_t i = 0; i < n; i++) {
        float x, y, rx, ry;
        if (recip) {
            x = ag_quot(wn[i], scale, rscale, recip);
            y = ag_quot(wun[i], scale, rscale, recip);
        } else {
            x = wn[i] / scale;
            y = wun[i] / scale;
        }
        /* the sign of x, from wn (ag_quot does not keep a zero's) */
        const uint32_t xsign = ag_float_bits(wn[i]) >> 31;
        uint32_t pat = 0;
        if (fast == 2) {
            uint32_t tx = (ag_float_bits(x) + 0x3fffffu) & 0xff800000u;
            rx = ag_bits_float(tx);
            ry = ag_bits_float((ag_float_bits(y) + 0x3fffffu) & 0xff800000u);
            if (encode) {
                uint32_t mag = tx << 1 == 0 ? 0u : ((tx & 0x7f800000u) >> 23) + bias_adj;
                pat = mag | (xsign << sign_pos);
            }
        } else {
            uint32_t ex = ag_float_bits(x) & 0x7f800000u, ey = ag_float_bits(y) & 0x7f800000u;
            if (fast == 0) {
                ex = ex < emin_bits ? emin_bits : ex;
                ey = ey < emin_bits ? emin_bits : ey;
            }
            /* ex, ey have no bits below the exponent: the 1.5 of m added */
            const uint32_t m15 = magic_add | 0x400000u;
            float mx = ag_bits_float(ex + m15), my = ag_bits_float(ey + m15);
            float sx = x + mx;
            rx = sx - mx;
            ry = (y + my) - my;
            if (encode) {
                /* |bits(sx) - bits(mx)|: the smaller of the two differences */
                uint32_t kp = ag_float_bits(sx) - ag_float_bits(mx);
                uint32_t kn = ag_float_bits(mx) - ag_float_bits(sx);
                /* x = 0 in a nosub block: e below emin, binade index 0 */
                uint32_t eb = fast == 0 ? ex : ex < emin0 ? emin0 : ex;
                pat = (kp < kn ? kp : kn) + ((eb - emin0) >> shift);
                pat |= xsign << sign_pos;
            }
        }
        stalled += rx == ry;
        if (fast == 0) rzero += rx == 0.0f;
        if (encode) {
            pt[i] = pat;
            d[i] = rx - x;
        }
    }
    bc->stalled = stalled;
    bc->overflow = 0;
    bc->rzero = rzero;
    bc->pc.total = bc->pc.nonfinite = bc->pc.zeros = 0;
    bc->pc.amax = 0.0f;
    bc->pc.amin = INFINITY;
}
#define FAST_VARIANTS(name, fast, encode, recip)                                                   \
    AG_KERNEL_VARIANTS(name, FMT_PARAMS,                                                           \
                       { fmt_fast_impl(pl, wn, wun, n, bc, pt, d, fast, encode, recip); })
#define FAST_RECIP(name, fast, encode)                                                             \
    FAST_VARIANTS(name, fast, encode, 0);                                                          \
    FAST_VARIANTS(name##_r1, fast, encode, 1);                                                     \
    FAST_VARIANTS(name##_r2, fast, encode, 2)
FAST_RECIP(fmt_fast, 0, 0);
FAST_RECIP(fmt_fast_nosub, 1, 0);
FAST_RECIP(fmt_fast_pow2, 2, 0);
FAST_RECIP(fmt_fast_enc, 0, 1);
FAST_RECIP(fmt_fast_nosub_enc, 1, 1);
FAST_RECIP(fmt_fast_pow2_enc, 2, 1);

typedef void(*fmt_fn) FMT_PARAMS;

/* [encode][0 MAGIC, 1 MAGIC without values below 2^emin, 2 POW2][recip:
 * 0 dividing, 1 and 2 ag_quot with that many corrections] */
static const fmt_fn *const fast_table[2][3][3] = {
    {{fmt_fast_variants, fmt_fast_r1_variants, fmt_fast_r2_variants},
     {fmt_fast_nosub_variants, fmt_fast_nosub_r1_variants, fmt_fast_nosub_r2_variants},
     {fmt_fast_pow2_variants, fmt_fast_pow2_r1_variants, fmt_fast_pow2_r2_variants}},
    {{fmt_fast_enc_variants, fmt_fast_enc_r1_variants, fmt_fast_enc_r2_variants},
     {fmt_fast_nosub_enc_variants, fmt_fast_nosub_enc_r1_variants, fmt_fast_nosub_enc_r2_variants},
     {fmt_fast_pow2_enc_variants, fmt_fast_pow2_enc_r1_variants, fmt_fast_pow2_enc_r2_variants}}};

/* [encode][kind]: counting alone, MAGIC and MAGIC_SAT are one loop */
static const fmt_fn *const fmt_table[2][KINDS] = {
    {fmt_magic_variants, fmt_magic_variants, fmt_int_variants, fmt_int_hd_variants,
     fmt_pow2_variants},
    {fmt_magic_enc_variants, fmt_magic_sat_enc_variants, fmt_int_enc_variants,
     fmt_int_hd_enc_variants, fmt_pow2_enc_variants}};
/* [update form][kind]: MAGIC and MAGIC_SAT count alike */
static const fmt_fn *const fmt_direct_table[2][KINDS] = {
    {fmt_magic_sgd_variants, fmt_magic_sgd_variants, fmt_int_sgd_variants, fmt_int_hd_sgd_variants,
     fmt_pow2_sgd_variants},
    {fmt_magic_upd_variants, fmt_magic_upd_variants, fmt_int_upd_variants, fmt_int_hd_upd_variants,
     fmt_pow2_upd_variants}};

/* The patterns of a block, from 32 bits each to their width: kept apart
 * from the per-format loop, whose float vectors would otherwise be unrolled
 * to the width of the byte vectors (and spilled). */
AG_INLINE void pack_impl(const uint32_t *pt, uint8_t *enc, size_t n, const int width) {
    for (size_t i = 0; i < n; i++) put_pattern(enc, i, pt[i], width);
}
AG_KERNEL_VARIANTS(pack1, (const uint32_t *pt, uint8_t *enc, size_t n),
                   { pack_impl(pt, enc, n, 1); });
AG_KERNEL_VARIANTS(pack2, (const uint32_t *pt, uint8_t *enc, size_t n),
                   { pack_impl(pt, enc, n, 2); });

/* ------------------------------------------------- quantization error */

/* Lanes of the double accumulators: independent sums the compiler can
 * keep in vector registers (a single running sum would be a serial chain). */
#define QE_LANES 8

/* Sum over the finite w[i] of (Q - w/scale)^2, Q the saturating grid value
 * of w/scale, in double (the difference of two floats is exact in double). */
AG_INLINE double qerr_term(const ag_qparams *p, float wi, float scale, const int half_down) {
    uint32_t fin = (ag_float_bits(wi) & 0x7fffffffu) < 0x7f800000u;
    float xs = wi / scale;
    float a = ag_qmag_hd(p, xs, half_down);
    float q = copysignf(a > p->max_finite ? p->max_finite : a, xs);
    double d = (double)q - (double)xs;
    return fin ? d * d : 0.0;
}

AG_INLINE void qerr_block_impl(const ag_qparams *pp, float scale, const float *w, size_t n,
                               double *sum, const int half_down) {
    const ag_qparams p = *pp;
    double acc[QE_LANES] = {0};
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) acc[j] += qerr_term(&p, w[i + j], scale, half_down);
    for (; i < n; i++) acc[0] += qerr_term(&p, w[i], scale, half_down);
    double t = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) t += acc[j];
    *sum = t;
}

/* w[i], or 0 where w[i] is not finite. */
AG_INLINE float finite_or_zero(float x) {
    return (ag_float_bits(x) & 0x7fffffffu) < 0x7f800000u ? x : 0.0f;
}

/* Sum of w[i]^2 and the count over the finite w[i]: the count and the
 * lanes in two loops, each of which the compiler vectorises (a non-finite
 * element adds +0, as (double)0 * 0 is). */
AG_INLINE void signal_block_impl(const float *w, size_t n, double *sum, uint64_t *count) {
    double acc[QE_LANES] = {0};
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++) c += (ag_float_bits(w[i]) & 0x7fffffffu) < 0x7f800000u;
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) {
            double x = (double)finite_or_zero(w[i + j]);
            acc[j] += x * x;
        }
    for (; i < n; i++) {
        double x = (double)finite_or_zero(w[i]);
        acc[0] += x * x;
    }
    double t = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) t += acc[j];
    *sum = t;
    *count = c;
}

#define QERR_PARAMS (const ag_qparams *p, float scale, const float *w, size_t n, double *sum)
AG_KERNEL_VARIANTS(qerr_block, QERR_PARAMS, { qerr_block_impl(p, scale, w, n, sum, 0); });
AG_KERNEL_VARIANTS(qerr_block_hd, QERR_PARAMS, { qerr_block_impl(p, scale, w, n, sum, 1); });
AG_KERNEL_VARIANTS(signal_block, (const float *w, size_t n, double *sum, uint64_t *count),
                   { signal_block_impl(w, n, sum, count); });

/* acc + x^2 in double. The square of a float is exact in double (48
 * significant bits at most, within double's range), so one fused
 * multiply-add rounds exactly as the multiplication and the addition do:
 * fused 1 (the variants with fma) takes one instruction for the two. */
AG_INLINE double sq_add(double acc, float x, const int fused) {
    double v = (double)x;
    return fused ? __builtin_fma(v, v, acc) : acc + v * v;
}

/* Sum of d[i]^2 in double, in the lanes and order of qerr_block_impl: equal
 * to it when d[i] is the exact difference of every element (all finite). */
AG_INLINE void dsum_block_impl(const float *d, size_t n, double *sum, const int fused) {
    double acc[QE_LANES] = {0};
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) acc[j] = sq_add(acc[j], d[i + j], fused);
    for (; i < n; i++) acc[0] = sq_add(acc[0], d[i], fused);
    double t = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) t += acc[j];
    *sum = t;
}

/* dsum_block_impl of two formats' differences in one loop: each sum in its
 * own lanes and order (the same bits), the two chains of additions
 * interleaved so neither waits on the other's latency. */
AG_INLINE void dsum2_block_impl(const float *d0, const float *d1, size_t n, double *sum0,
                                double *sum1, const int fused) {
    double a0[QE_LANES] = {0}, a1[QE_LANES] = {0};
    size_t i = 0;
    for (; i + QE_LANES <= n; i += QE_LANES)
        for (size_t j = 0; j < QE_LANES; j++) {
            a0[j] = sq_add(a0[j], d0[i + j], fused);
            a1[j] = sq_add(a1[j], d1[i + j], fused);
        }
    for (; i < n; i++) {
        a0[0] = sq_add(a0[0], d0[i], fused);
        a1[0] = sq_add(a1[0], d1[i], fused);
    }
    double t0 = 0.0, t1 = 0.0;
    for (size_t j = 0; j < QE_LANES; j++) {
        t0 += a0[j];
        t1 += a1[j];
    }
    *sum0 = t0;
    *sum1 = t1;
}

/* Each instruction set's variant by hand: the base one without fma. */
#define DSUM_PARAMS (const float *d, size_t n, double *sum)
#define DSUM2_PARAMS (const float *d0, const float *d1, size_t n, double *sum0, double *sum1)
static void dsum_block_base DSUM_PARAMS { dsum_block_impl(d, n, sum, 0); }
AG_TARGET_AVX2 static void dsum_block_avx2 DSUM_PARAMS { dsum_block_impl(d, n, sum, 1); }
AG_TARGET_AVX512 static void dsum_block_avx512 DSUM_PARAMS { dsum_block_impl(d, n, sum, 1); }
static void(*const dsum_block_variants[AG_ISA_COUNT]) DSUM_PARAMS = {
    dsum_block_base, dsum_block_avx2, dsum_block_avx512};
static void dsum2_block_base DSUM2_PARAMS { dsum2_block_impl(d0, d1, n, sum0, sum1, 0); }
AG_TARGET_AVX2 static void dsum2_block_avx2 DSUM2_PARAMS {
    dsum2_block_impl(d0, d1, n, sum0, sum1, 1);
}
AG_TARGET_AVX512 static void dsum2_block_avx512 DSUM2_PARAMS {
    dsum2_block_impl(d0, d1, n, sum0, sum1, 1);
}
static void(*const dsum2_block_variants[AG_ISA_COUNT]) DSUM2_PARAMS = {
    dsum2_block_base, dsum2_block_avx2, dsum2_block_avx512};

static int scale_ok(float scale) { return isfinite(scale) && scale > 0.0f; }

/* The pattern of w[i] / scale where w[i] or v[i] is not finite (the
 * per-format loop saw NaN there): as ag_encode_array writes it. */
static void patch_patterns(const fplan *pl, const float *w, const float *v, size_t n, uint8_t *enc,
                           int width) {
    for (size_t i = 0; i < n; i++) {
        if ((ag_float_bits(w[i]) & 0x7fffffffu) < 0x7f800000u &&
            (ag_float_bits(v[i]) & 0x7fffffffu) < 0x7f800000u)
            continue;
        float xs = w[i] / pl->scale;
        uint32_t b = ag_pattern(&pl->p, &pl->e, xs, ag_qmag(&pl->p, xs));
        if (width == 2)
            put_pattern(enc, i, b, 2);
        else
            put_pattern(enc, i, b, 1);
    }
}

/* The byte-flip kernels (defined with the flips, below), called per block
 * by the pass that just wrote the block's patterns. */
static void (*const flips_bytes_variants[AG_ISA_COUNT])(const uint8_t *, const uint8_t *, size_t,
                                                        uint32_t, uint32_t, uint64_t *);
/* The same fused with pack1: the block's patterns narrowed to bytes and
 * stored, and their flips against prev counted in that loop (where no
 * pattern needs patching). */
static void (*const pack1_flips_variants[AG_ISA_COUNT])(const uint32_t *, uint8_t *,
                                                        const uint8_t *, size_t, uint32_t, uint32_t,
                                                        uint64_t *);

/* dst[0..n) = src[0..n): with non-temporal stores where dst is 16-byte
 * aligned (a copy kept for later, not read again by this pass: no read for
 * ownership of its lines, no eviction of the pass's arrays). The caller
 * fences (copy_fence) before the copy is handed to another thread. */
static void copy_block(float *dst, const float *src, size_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (((uintptr_t)dst & 15) == 0) {
        size_t i = 0;
        for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
        for (; i < n; i++) dst[i] = src[i];
        return;
    }
#endif
    memcpy(dst, src, n * sizeof *src);
}

static void copy_fence(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    _mm_sfence();
#endif
}

/* enc: NULL, or one output of n patterns per format for the patterns of w.
 * qerr: NULL, or per format the quantization error sums of w, added.
 * prev: NULL, or per format NULL or the patterns to count flips against as
 * bytes (a per-tensor 1-byte format, with enc), each block while its
 * patterns are in L1; the flips are added to flips[f]. */
static int stall_multi(const ag_format *const *fmts, const float *scales, size_t nfmt, float lr,
                       int update_form, const float *w, const float *v, size_t n,
                       ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr,
                       const uint8_t *const *prev, uint64_t *flips, float *copy) {
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || v == NULL || n == 0 ||
        nfmt == 0 || nfmt > AG_FORMATS_MAX || (!update_form && !isfinite(lr)))
        return AG_EINVAL;
    fplan plans[AG_FORMATS_MAX];
    fmt_fn fns[AG_FORMATS_MAX];
    int width[AG_FORMATS_MAX], fast[AG_FORMATS_MAX];
    ag_block_params bparams[AG_FORMATS_MAX];
    int isa = ag_isa_current(), per_tensor = 0;
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL) return AG_EFORMAT;
        if (!scale_ok(scales[f]) || (enc != NULL && enc[f] == NULL)) return AG_EINVAL;
        if (prev != NULL && prev[f] != NULL &&
            (enc == NULL || flips == NULL || fmts[f]->block != 0 || fmts[f]->pattern_bytes != 1))
            return AG_EINVAL;
        if (fmts[f]->block != 0) { /* block-scaled: block.c's pass */
            if (fmts[f]->element == NULL) return AG_EFORMAT;
            ag_block_params_of(fmts[f], scales[f], &bparams[f]);
            fns[f] = NULL;
            continue;
        }
        int kind = plan_of(fmts[f], scales[f], &plans[f]);
        plans[f].neg_lr = -lr;
        width[f] = fmts[f]->pattern_bytes == 2 ? 2 : 1;
        fns[f] = fmt_table[enc != NULL][kind][isa];
        /* blocks that cannot overflow: fmt_fast* (1 MAGIC, 2 POW2) */
        fast[f] = kind == KIND_MAGIC || kind == KIND_MAGIC_SAT ? 1 : kind == KIND_POW2 ? 2 : 0;
        if (nfmt == 1 && enc == NULL) fns[f] = fmt_direct_table[update_form != 0][kind][isa];
        per_tensor = 1;
    }
    int direct = nfmt == 1 && enc == NULL && per_tensor;
    /* the prepared block and the differences of one format */
    /* d[0]: a format's differences waiting to be summed with the next
     * format's (d[1]) in one loop; pend: that format, or -1 */
    float wn[BLOCK], wun[BLOCK], d[2][BLOCK];
    uint32_t pt[BLOCK];
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        const float *wb = w + start, *vb = v + start;
        prep_counts pc = {0, 0, 0, 0.0f, INFINITY};
        if (per_tensor && !direct)
            (update_form ? prep_update_variants : prep_sgd_variants)[isa](-lr, wb, vb, len, wn, wun,
                                                                          &pc);
        /* the copy of w, block by block while the block is in L1 */
        if (copy != NULL) copy_block(copy + start, wb, len);
        double sig = 0.0;
        uint64_t cnt = 0;
        /* Where every w of the block is finite (prepared: no element not
         * finite), the signal is dsum_block_impl of w itself, the same lanes
         * and order as signal_block_impl: summed at the block's end in the
         * loop of the last format's differences, and added to every format
         * then (one addition a block and format, as here). */
        int sig_late = qerr != NULL && per_tensor && !direct && pc.nonfinite == 0;
        if (sig_late)
            cnt = len;
        else if (qerr != NULL)
            signal_block_variants[isa](wb, len, &sig, &cnt);
        /* the next block's w and v stream in while the formats run from L1:
         * its cache lines, a share before each format (a format alone
         * streams w and v itself, and the hardware prefetches them better) */
        size_t next = start + len, next_len = n - next < BLOCK ? n - next : BLOCK;
        size_t lines = next < n && !direct ? (next_len * sizeof(float) + 63) / 64 : 0, line = 0;
        int pend = -1;
        for (size_t f = 0; f < nfmt; f++) {
            for (size_t upto = lines * (f + 1) / nfmt; line < upto; line++) {
                __builtin_prefetch((const char *)(w + next) + 64 * line, 0, 2);
                __builtin_prefetch((const char *)(v + next) + 64 * line, 0, 2);
            }
            if (fns[f] == NULL) { /* chunks start at multiples of 2048: block-aligned */
                double se = 0.0;
                ag_block_run(&bparams[f], update_form, -lr, wb, vb, len, &out[f],
                             enc != NULL ? enc[f] + ag_encoded_bytes(fmts[f], start) : NULL,
                             qerr != NULL ? &se : NULL);
                if (qerr != NULL) {
                    qerr[f].sq_error += se;
                    if (!sig_late) {
                        qerr[f].sq_signal += sig;
                        qerr[f].count += cnt;
                    }
                }
                continue;
            }
            block_counts bc;
            uint8_t *eb = enc != NULL ? enc[f] + start * (size_t)width[f] : NULL;
            float *df = d[pend >= 0];
            if (direct) {
                fns[f](&plans[f], wb, vb, len, &bc, pt, df);
                pc = bc.pc;
            } else if (fast[f] && pc.amax / scales[f] <= plans[f].p.max_finite &&
                       (fast[f] == 1 || pc.amin / scales[f] >= plans[f].e.emin_value)) {
                /* no overflow in the block; with nosub (always for pow2) also
                 * no nonzero magnitude below 2^emin, so only zeros round to 0 */
                float lo = pc.amin / scales[f];
                int nosub = lo >= plans[f].e.emin_value;
                int which = fast[f] == 2 ? 2 : nosub;
                /* ag_quot where the instruction set has fma, the scale allows
                 * it, and every element is finite and not tiny once divided */
                int recip =
                    isa != AG_ISA_BASE && pc.nonfinite == 0 && lo >= 0x1p-60f ? plans[f].recip : 0;
                fast_table[enc != NULL][which][recip][isa](&plans[f], wn, wun, len, &bc, pt, df);
                if (nosub) bc.rzero = pc.zeros;
            } else {
                fns[f](&plans[f], wn, wun, len, &bc, pt, df);
            }
            /* flips counted as the patterns are narrowed, unless some need patching */
            int fuse = prev != NULL && prev[f] != NULL && pc.nonfinite == 0;
            if (fuse) {
                uint64_t fl = 0;
                pack1_flips_variants[isa](pt, eb, prev[f] + start, len, plans[f].e.mag_mask,
                                          plans[f].e.nan_above, &fl);
                flips[f] += fl;
            } else if (eb != NULL) {
                (width[f] == 2 ? pack2_variants : pack1_variants)[isa](pt, eb, len);
            }
            out[f].stalled += bc.stalled;
            out[f].total += pc.total;
            out[f].overflow += bc.overflow;
            out[f].underflow += bc.rzero - pc.zeros;
            out[f].nonfinite += pc.nonfinite;
            if (eb != NULL && pc.nonfinite != 0)
                patch_patterns(&plans[f], wb, vb, len, eb, width[f]);
            if (prev != NULL && prev[f] != NULL && !fuse) {
                uint64_t fl = 0;
                flips_bytes_variants[isa](prev[f] + start, eb, len, plans[f].e.mag_mask,
                                          plans[f].e.nan_above, &fl);
                flips[f] += fl;
            }
            if (qerr != NULL) {
                double se = 0.0, se0 = 0.0;
                if (!sig_late) {
                    qerr[f].sq_signal += sig;
                    qerr[f].count += cnt;
                }
                if (pc.nonfinite != 0 || bc.overflow != 0) {
                    /* d is exact only for finite elements within range */
                    (plans[f].p.half_down ? qerr_block_hd_variants : qerr_block_variants)[isa](
                        &plans[f].p, scales[f], wb, len, &se);
                } else if (pend < 0) { /* summed with the next format's, or at the block's end */
                    pend = (int)f;
                    continue;
                } else {
                    dsum2_block_variants[isa](d[0], d[1], len, &se0, &se);
                    qerr[pend].sq_error += se0 * ((double)scales[pend] * (double)scales[pend]);
                    pend = -1;
                }
                qerr[f].sq_error += se * ((double)scales[f] * (double)scales[f]);
            }
        }
        if (pend >= 0) {
            double se = 0.0;
            if (sig_late)
                dsum2_block_variants[isa](d[0], wb, len, &se, &sig);
            else
                dsum_block_variants[isa](d[0], len, &se);
            qerr[pend].sq_error += se * ((double)scales[pend] * (double)scales[pend]);
        } else if (sig_late) {
            dsum_block_variants[isa](wb, len, &sig);
        }
        for (size_t f = 0; sig_late && f < nfmt; f++) {
            qerr[f].sq_signal += sig;
            qerr[f].count += cnt;
        }
    }
    if (copy != NULL) copy_fence();
    return AG_OK;
}

AG_EXTERN int ag_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                           const float *g, size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, lr, 0, w, g, n, out, NULL, NULL, NULL, NULL, NULL);
}

AG_EXTERN int ag_stall_update(const ag_format *fmt, float scale, const float *w, const float *u,
                              size_t n, ag_stall_counts *out) {
    if (fmt == NULL) return AG_EFORMAT;
    return stall_multi(&fmt, &scale, 1, 0.0f, 1, w, u, n, out, NULL, NULL, NULL, NULL, NULL);
}

AG_EXTERN int ag_stall_sgd_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                 float lr, const float *w, const float *g, size_t n,
                                 ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, lr, 0, w, g, n, out, NULL, NULL, NULL, NULL, NULL);
}

AG_EXTERN int ag_stall_update_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                    const float *w, const float *u, size_t n,
                                    ag_stall_counts *out) {
    return stall_multi(fmts, scales, nfmt, 0.0f, 1, w, u, n, out, NULL, NULL, NULL, NULL, NULL);
}

int ag_stall_encode_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                          int update_form, float lr, const float *w, const float *v, size_t n,
                          ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr) {
    return ag_stall_encode_flips_multi(fmts, scales, nfmt, update_form, lr, w, v, n, out, enc, qerr,
                                       NULL, NULL);
}

int ag_stall_encode_flips_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                int update_form, float lr, const float *w, const float *v, size_t n,
                                ag_stall_counts *out, uint8_t *const *enc, ag_quant_error *qerr,
                                const uint8_t *const *prev, uint64_t *flips) {
    return ag_stall_encode_flips_copy_multi(fmts, scales, nfmt, update_form, lr, w, v, n, out, enc,
                                            qerr, prev, flips, NULL);
}

int ag_stall_encode_flips_copy_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                     int update_form, float lr, const float *w, const float *v,
                                     size_t n, ag_stall_counts *out, uint8_t *const *enc,
                                     ag_quant_error *qerr, const uint8_t *const *prev,
                                     uint64_t *flips, float *copy) {
    if (enc == NULL) return AG_EINVAL;
    return stall_multi(fmts, scales, nfmt, update_form ? 0.0f : lr, update_form != 0, w, v, n, out,
                       enc, qerr, prev, flips, copy);
}

AG_EXTERN int ag_quant_error_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                   const float *w, size_t n, ag_quant_error *out) {
    if (fmts == NULL || scales == NULL || out == NULL || w == NULL || n == 0 || nfmt == 0 ||
        nfmt > AG_FORMATS_MAX)
        return AG_EINVAL;
    ag_qparams params[AG_FORMATS_MAX];
    ag_block_params bparams[AG_FORMATS_MAX];
    for (size_t f = 0; f < nfmt; f++) {
        if (fmts[f] == NULL || (fmts[f]->block != 0 && fmts[f]->element == NULL)) return AG_EFORMAT;
        if (!scale_ok(scales[f])) return AG_EINVAL;
        if (fmts[f]->block != 0)
            ag_block_params_of(fmts[f], scales[f], &bparams[f]);
        else
            ag_qparams_of(fmts[f], &params[f]);
    }
    int isa = ag_isa_current();
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t len = n - start < BLOCK ? n - start : BLOCK;
        double sig = 0.0;
        uint64_t cnt = 0;
        signal_block_variants[isa](w + start, len, &sig, &cnt);
        for (size_t f = 0; f < nfmt; f++) {
            double se = 0.0;
            if (fmts[f]->block != 0) { /* block-scaled: in w's units already */
                ag_block_qerr(&bparams[f], w + start, len, &se);
                out[f].sq_error += se;
                out[f].sq_signal += sig;
                out[f].count += cnt;
                continue;
            }
            (params[f].half_down ? qerr_block_hd_variants : qerr_block_variants)[isa](
                &params[f], scales[f], w + start, len, &se);
            out[f].sq_error += se * ((double)scales[f] * (double)scales[f]); /* as stall_multi */
            out[f].sq_signal += sig;
            out[f].count += cnt;
        }
    }
    return AG_OK;
}

AG_EXTERN double ag_quant_mse(const ag_quant_error *e) {
    if (e == NULL || e->count == 0) return NAN;
    return e->sq_error / (double)e->count;
}

AG_EXTERN double ag_quant_sqnr_db(const ag_quant_error *e) {
    if (e == NULL || e->count == 0 || !(e->sq_error > 0.0) || !(e->sq_signal > 0.0)) return NAN;
    return 10.0 * log10(e->sq_signal / e->sq_error);
}

/* ------------------------------------------------------------- flips */

/* "The same pattern": canon() maps each pattern to a number that is equal
 * exactly when the patterns mean the same thing: the two zeros to 0, every
 * NaN (magnitude above nan_above) to ~0, anything else to itself. */
AG_INLINE uint32_t flip_canon(uint32_t b, uint32_t mag_mask, uint32_t nan_above) {
    uint32_t mag = b & mag_mask;
    uint32_t v = mag == 0 ? 0u : b;
    return mag > nan_above ? 0xffffffffu : v;
}

AG_INLINE uint32_t get_pattern(const uint8_t *a, size_t i, const int wide) {
    if (wide) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        return h;
    }
    return a[i];
}

/* Elements per counting block: a 16-bit per-lane count cannot overflow. */
#define FLIP_BLOCK 32768

/* flip_canon(a) != flip_canon(b) for 8-bit patterns, in 8-bit arithmetic
 * (32 patterns a vector): the bytes differ, and not both magnitudes are 0
 * (+0 and -0) nor both NaN (the smaller magnitude past nan_above). Where
 * only one is 0 or NaN the bytes differ and so do the canonical forms.
 * nan_above is clamped to 0xff by the caller (a larger one means no NaN,
 * as 0xff does). */
AG_INLINE uint8_t flip8(uint8_t a, uint8_t b, uint8_t mag_mask, uint8_t nan_above) {
    uint8_t ma = a & mag_mask, mb = b & mag_mask;
    uint8_t lo = ma < mb ? ma : mb;
    return (uint8_t)((a != b) & ((ma | mb) != 0) & (lo <= nan_above));
}

/* Elements per 8-bit counting run: at most 255 flips, a multiple of 32. */
#define FLIP_RUN8 224

AG_INLINE void flips_bytes8_impl(const uint8_t *prev, const uint8_t *cur, size_t n,
                                 uint32_t mag_mask, uint32_t nan_above, uint64_t *count) {
    const uint8_t mm = (uint8_t)mag_mask, na = nan_above > 0xffu ? 0xffu : (uint8_t)nan_above;
    uint64_t total = 0;
    size_t start = 0;
    for (; start + FLIP_RUN8 <= n; start += FLIP_RUN8) {
        const uint8_t *a = prev + start, *b = cur + start;
        uint8_t c = 0;
        for (size_t i = 0; i < FLIP_RUN8; i++) c += flip8(a[i], b[i], mm, na);
        total += c;
    }
    for (; start < n; start++) total += flip8(prev[start], cur[start], mm, na);
    *count = total;
}

/* pack_impl (width 1) and flips_bytes8_impl of prev against the bytes it
 * stores, in one loop: the same bytes and the same count. */
AG_INLINE void pack1_flips_impl(const uint32_t *pt, uint8_t *enc, const uint8_t *prev, size_t n,
                                uint32_t mag_mask, uint32_t nan_above, uint64_t *count) {
    const uint8_t mm = (uint8_t)mag_mask, na = nan_above > 0xffu ? 0xffu : (uint8_t)nan_above;
    uint64_t total = 0;
    /* the last run shorter (2048 = 9 runs and 32): its count fits 8 bits too */
    for (size_t start = 0; start < n; start += FLIP_RUN8) {
        size_t m = n - start < FLIP_RUN8 ? n - start : FLIP_RUN8;
        const uint32_t *p = pt + start;
        const uint8_t *a = prev + start;
        uint8_t *e = enc + start;
        uint8_t c = 0;
        for (size_t i = 0; i < m; i++) {
            /* prev read before the store: its address matches the store's
             * in the low 12 bits (buffers of one size), which would make the
             * load wait for the store (4K aliasing) */
            uint8_t was = a[i], b = (uint8_t)p[i];
            c += flip8(was, b, mm, na);
            e[i] = b;
        }
        total += c;
    }
    *count = total;
}

AG_INLINE void flips_bytes_impl(const uint8_t *prev, const uint8_t *cur, size_t n,
                                uint32_t mag_mask, uint32_t nan_above, uint64_t *count,
                                const int wide) {
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start * (wide ? 2 : 1), *b = cur + start * (wide ? 2 : 1);
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++)
            c += flip_canon(get_pattern(a, i, wide), mag_mask, nan_above) !=
                 flip_canon(get_pattern(b, i, wide), mag_mask, nan_above);
        total += c;
    }
    *count = total;
}

/* Pattern flips with the encoding fused in: the pattern of w[i] / scale (as
 * ag_encode_array makes it) against prev[i], in one pass over w. */
AG_INLINE void flips_encode_impl(const ag_qparams *pp, const ag_eparams *ep, float scale,
                                 const uint8_t *prev, const float *w, size_t n, uint64_t *count,
                                 const int half_down, const int wide) {
    const ag_qparams p = *pp;
    const ag_eparams e = *ep;
    uint64_t total = 0;
    for (size_t start = 0; start < n; start += FLIP_BLOCK) {
        size_t len = n - start < FLIP_BLOCK ? n - start : FLIP_BLOCK;
        const uint8_t *a = prev + start * (wide ? 2 : 1);
        const float *x = w + start;
        uint16_t c = 0;
        for (size_t i = 0; i < len; i++) {
            float xs = x[i] / scale;
            uint32_t b = ag_pattern(&p, &e, xs, ag_qmag_hd(&p, xs, half_down));
            c += flip_canon(get_pattern(a, i, wide), e.mag_mask, e.nan_above) !=
                 flip_canon(b, e.mag_mask, e.nan_above);
        }
        total += c;
    }
    *count = total;
}

/* Value flips at two scales: the two value tables, looked up per element. */
AG_INLINE void flips_table_impl(const float *ta, const float *tb, const uint8_t *prev,
                                const uint8_t *cur, size_t n, uint64_t *count) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        float a = ta[prev[i]], b = tb[cur[i]];
        total += !(a == b || (a != a && b != b));
    }
    *count = total;
}

#define FLIPS_BYTES_PARAMS                                                                         \
    (const uint8_t *prev, const uint8_t *cur, size_t n, uint32_t mag_mask, uint32_t nan_above,     \
     uint64_t *count)
AG_KERNEL_VARIANTS(flips_bytes, FLIPS_BYTES_PARAMS,
                   { flips_bytes8_impl(prev, cur, n, mag_mask, nan_above, count); });
AG_KERNEL_VARIANTS(pack1_flips,
                   (const uint32_t *pt, uint8_t *enc, const uint8_t *prev, size_t n,
                    uint32_t mag_mask, uint32_t nan_above, uint64_t *count),
                   { pack1_flips_impl(pt, enc, prev, n, mag_mask, nan_above, count); });
AG_KERNEL_VARIANTS(flips_bytes_w, FLIPS_BYTES_PARAMS,
                   { flips_bytes_impl(prev, cur, n, mag_mask, nan_above, count, 1); });
#define FLIPS_ENCODE_PARAMS                                                                        \
    (const ag_qparams *p, const ag_eparams *e, float scale, const uint8_t *prev, const float *w,   \
     size_t n, uint64_t *count)
AG_KERNEL_VARIANTS(flips_encode, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 0, 0); });
AG_KERNEL_VARIANTS(flips_encode_hd, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 1, 0); });
AG_KERNEL_VARIANTS(flips_encode_w, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 0, 1); });
AG_KERNEL_VARIANTS(flips_encode_hd_w, FLIPS_ENCODE_PARAMS,
                   { flips_encode_impl(p, e, scale, prev, w, n, count, 1, 1); });
AG_KERNEL_VARIANTS(flips_table,
                   (const float *ta, const float *tb, const uint8_t *prev, const uint8_t *cur,
                    size_t n, uint64_t *count),
                   { flips_table_impl(ta, tb, prev, cur, n, count); });

int ag_count_pattern_changes(const ag_format *fmt, const uint8_t *prev, const uint8_t *cur,
                             size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL) return AG_EINVAL;
    ag_eparams e;
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    (fmt->pattern_bytes == 2 ? flips_bytes_w_variants : flips_bytes_variants)[ag_isa_current()](
        prev, cur, n, e.mag_mask, e.nan_above, &count);
    *flips += count;
    return AG_OK;
}

AG_EXTERN int ag_count_pattern_flips(const ag_format *fmt, float scale, const uint8_t *prev,
                                     const float *w, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || w == NULL || n == 0 || flips == NULL || !scale_ok(scale)) return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    int isa = ag_isa_current();
    int wide = fmt->pattern_bytes == 2;
    if (p.half_down)
        (wide ? flips_encode_hd_w_variants : flips_encode_hd_variants)[isa](&p, &e, scale, prev, w,
                                                                            n, &count);
    else
        (wide ? flips_encode_w_variants : flips_encode_variants)[isa](&p, &e, scale, prev, w, n,
                                                                      &count);
    *flips += count;
    return AG_OK;
}

/* 1 when, at scale s, equal canon() values mean equal values and different
 * ones different values (tab[p] = decode(p) * s, 8-bit patterns, sign at
 * bit 7). Sign-magnitude patterns decode in increasing magnitude, so it is
 * enough that the magnitudes of each sign stay strictly increasing and
 * nonzero after scaling, that the NaNs are exactly the magnitudes above
 * nan_above, and that the two signs mirror each other. */
static int flips_bytes_exact(const float *tab, uint32_t *nan_above) {
    unsigned thr = 0x7f;
    while (thr > 0 && isnan(tab[thr])) thr--;
    for (unsigned m = 0; m < 0x80; m++) {
        float pos = tab[m], neg = tab[m | 0x80];
        if ((m > thr) != (isnan(pos) != 0) || (m > thr) != (isnan(neg) != 0)) return 0;
        if (m > thr) continue;
        if (m == 0 ? (pos != 0.0f || neg != 0.0f) : !(pos > tab[m - 1] && neg == -pos)) return 0;
    }
    *nan_above = thr;
    return 1;
}

AG_EXTERN int ag_count_flips(const ag_format *fmt, const uint8_t *prev, float prev_scale,
                             const uint8_t *cur, float cur_scale, size_t n, uint64_t *flips) {
    if (fmt == NULL) return AG_EFORMAT;
    if (prev == NULL || cur == NULL || n == 0 || flips == NULL || !scale_ok(prev_scale) ||
        !scale_ok(cur_scale))
        return AG_EINVAL;
    ag_qparams p;
    ag_eparams e;
    ag_qparams_of(fmt, &p);
    ag_eparams_of(fmt, &e);
    uint64_t count = 0;
    if (fmt->pattern_bytes == 2) {
        /* wide patterns: decode each element (no 65536-entry tables) */
        for (size_t i = 0; i < n; i++) {
            float a = ag_pattern_value(&p, &e, fmt, get_pattern(prev, i, 1)) * prev_scale;
            float b = ag_pattern_value(&p, &e, fmt, get_pattern(cur, i, 1)) * cur_scale;
            count += !(a == b || (a != a && b != b));
        }
        *flips += count;
        return AG_OK;
    }
    /* Narrow formats are laid out as 8-bit patterns with the sign at bit 7
     * for the tables: a pattern b of a narrower format has its sign at bit
     * E + M, so its table entry is indexed by b itself (the bits above the
     * sign are zero in valid patterns and ignored by decoding). */
    float ta[256], tb[256];
    for (uint32_t b = 0; b < 256; b++) {
        float v = ag_pattern_value(&p, &e, fmt, b);
        ta[b] = v * prev_scale;
        tb[b] = v * cur_scale;
    }
    uint32_t nan_above;
    int isa = ag_isa_current();
    if (fmt->bits == 8 && prev_scale == cur_scale && flips_bytes_exact(ta, &nan_above))
        flips_bytes_variants[isa](prev, cur, n, 0x7fu, nan_above, &count);
    else
        flips_table_variants[isa](ta, tb, prev, cur, n, &count);
    *flips += count;
    return AG_OK;
}
