/*
 * format.c - the format registry: the five seed formats and any ExMy format
 * defined at run time. Formats are validated once here, their 256 decoded
 * values tabulated, and never freed, so callers may keep the pointers.
 */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "altgrad/altgrad.h"

/* The registry is process-wide by nature (formats are values, like an enum
 * that can grow); a mutex guards definition, and published entries are
 * immutable, so readers need no lock beyond reading the count. */
static ag_format registry[AG_FORMATS_MAX];
static size_t registry_count;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

/* The decoding rule of docs/numerics.md, Formats, written out directly. */
static float decode_formula(const ag_format *f, uint8_t bits) {
    int sign = bits >> 7;
    int E = f->exponent_bits, M = f->mantissa_bits;
    int e = (bits >> M) & ((1 << E) - 1);
    int m = bits & ((1 << M) - 1);
    double v;
    if (E == 0) {
        v = ldexp((double)m, -M);
    } else if (e == 0) {
        v = ldexp((double)m, 1 - f->bias - M);
    } else if (f->has_inf && e == (1 << E) - 1) {
        if (m != 0) return NAN;
        v = INFINITY;
    } else if (f->has_nan && !f->has_inf && e == (1 << E) - 1 && m == (1 << M) - 1) {
        return NAN;
    } else {
        v = ldexp(1.0 + ldexp((double)m, -M), e - f->bias);
    }
    return (float)(sign ? -v : v);
}

static int valid_name(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > AG_FORMAT_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!isalnum(c) && c != '_' && c != '-') return 0;
    }
    return 1;
}

/* Fill f from its parameters; AG_EFORMAT if it is impossible. */
static int build_format(ag_format *f, const char *name, int E, int M, int bias, int has_inf,
                        int has_nan) {
    if (name == NULL || !valid_name(name)) return AG_EFORMAT;
    if (E < 0 || M < 0 || E + M != 7) return AG_EFORMAT;
    has_inf = has_inf != 0;
    has_nan = has_nan != 0;
    if (has_inf && (!has_nan || M == 0))
        return AG_EFORMAT; /* inf needs e all ones with m = 0, and NaN the rest */
    if (E == 0 && (has_inf || has_nan || bias != 0))
        return AG_EFORMAT; /* fixed point: no exponent to bias or reserve */
    if (bias < -200 || bias > 200) return AG_EFORMAT;
    memset(f, 0, sizeof *f);
    memcpy(f->name, name, strlen(name) + 1);
    f->exponent_bits = E;
    f->mantissa_bits = M;
    f->bias = bias;
    f->has_inf = has_inf;
    f->has_nan = has_nan;
    f->min_exponent = E == 0 ? 0 : 1 - bias;

    float maxf = 0.0f, minp = INFINITY;
    for (int b = 0; b < 256; b++) {
        float v = decode_formula(f, (uint8_t)b);
        f->decode_table[b] = v;
        if (isfinite(v) && v > maxf) maxf = v;
        if (isfinite(v) && v > 0.0f && v < minp) minp = v;
    }
    if (maxf == 0.0f || !isfinite(minp))
        return AG_EFORMAT; /* e.g. E1M6 with NaN reserving every normal */
    int exp;
    frexpf(maxf, &exp);
    f->max_exponent = exp - 1;
    f->max_finite = maxf;
    f->min_positive = minp;
    /* The kernels scale by 2^-k and 2^k with k in [emin - M, max_exponent + 1 - M]:
     * both must be normal float32 values, and every grid value exact. */
    int kmin = f->min_exponent - M, kmax = f->max_exponent + 1 - M;
    if (kmin < -125 || kmax > 125 || f->max_exponent > 126) return AG_EFORMAT;
    return AG_OK;
}

static void register_builtins(void) {
    static const struct {
        const char *name;
        int E, M, bias, inf, nan;
    } seeds[] = {
        {"E0M7", 0, 7, 0, 0, 0},  {"E1M6", 1, 6, 0, 0, 0},  {"E3M4", 3, 4, 1, 0, 0},
        {"E5M2", 5, 2, 15, 1, 1}, {"E7M0", 7, 0, 63, 0, 0},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        int rc = build_format(&registry[i], seeds[i].name, seeds[i].E, seeds[i].M, seeds[i].bias,
                              seeds[i].inf, seeds[i].nan);
        (void)rc; /* the seed table is constant and valid (tests check every field) */
    }
    registry_count = sizeof seeds / sizeof seeds[0];
}

static size_t count_locked(void) {
    pthread_once(&registry_once, register_builtins);
    pthread_mutex_lock(&registry_lock);
    size_t n = registry_count;
    pthread_mutex_unlock(&registry_lock);
    return n;
}

AG_EXTERN size_t ag_format_count(void) { return count_locked(); }

AG_EXTERN const ag_format *ag_format_at(size_t i) {
    return i < count_locked() ? &registry[i] : NULL;
}

AG_EXTERN const ag_format *ag_format_get(const char *name) {
    if (name == NULL) return NULL;
    size_t n = count_locked();
    for (size_t i = 0; i < n; i++)
        if (strcmp(registry[i].name, name) == 0) return &registry[i];
    return NULL;
}

AG_EXTERN int ag_format_define(const char *name, int exponent_bits, int mantissa_bits, int bias,
                               int has_inf, int has_nan, const ag_format **out) {
    ag_format f;
    int rc = build_format(&f, name, exponent_bits, mantissa_bits, bias, has_inf, has_nan);
    if (rc != AG_OK) return rc;
    pthread_once(&registry_once, register_builtins);
    pthread_mutex_lock(&registry_lock);
    const ag_format *found = NULL;
    for (size_t i = 0; i < registry_count; i++) {
        const ag_format *g = &registry[i];
        if (strcmp(g->name, f.name) != 0) continue;
        if (g->exponent_bits != f.exponent_bits || g->bias != f.bias || g->has_inf != f.has_inf ||
            g->has_nan != f.has_nan)
            rc = AG_EEXIST;
        found = g;
        break;
    }
    if (found == NULL && rc == AG_OK) {
        if (registry_count == AG_FORMATS_MAX) {
            rc = AG_ENOSPC;
        } else {
            registry[registry_count] = f;
            found = &registry[registry_count++];
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (rc == AG_OK && out != NULL) *out = found;
    return rc;
}
