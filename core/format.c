/*
 * format.c - the format registry: the five seed formats, the further
 * built-ins (OCP FP8/FP6/FP4, BF16, FP16) and any ExMy format of 4 to 16 bits
 * defined at run time. Formats are validated once here and never freed, so
 * callers may keep the pointers.
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

/* The decoding rule of docs/numerics.md, Formats, written out directly (in
 * double, before the format is known to fit float32). */
static double decode_formula(const ag_format *f, uint32_t bits) {
    int E = f->exponent_bits, M = f->mantissa_bits;
    int sign = (int)(bits >> (E + M)) & 1;
    int e = (int)(bits >> M) & ((1 << E) - 1);
    int m = (int)bits & ((1 << M) - 1);
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
    return sign ? -v : v;
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
    if (E < 0 || M < 0 || E + M < 3 || E + M > 15) return AG_EFORMAT;
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
    f->nan_mode = has_inf ? AG_NAN_IEEE : has_nan ? AG_NAN_ALL_ONES : AG_NAN_NONE;
    f->bits = 1 + E + M;
    f->pattern_bytes = f->bits <= 8 ? 1 : 2;
    f->min_exponent = E == 0 ? 0 : 1 - bias;

    /* Magnitude patterns decode in increasing order: the largest finite one
     * is just below inf (or the all-ones NaN), the smallest nonzero is 1. */
    uint32_t all = (1u << (E + M)) - 1u, emask = (1u << E) - 1u;
    uint32_t top = has_inf ? (emask << M) - 1u : has_nan ? all - 1u : all;
    double maxd = decode_formula(f, top), mind = decode_formula(f, 1);
    if (!(maxd > 0.0) || !isfinite(maxd) || !(mind > 0.0))
        return AG_EFORMAT; /* e.g. E1M6 with NaN reserving every normal */
    /* The kernels need 2^emin normal in float32 (the uniform grid below it is
     * reached by float32 addition, also through float32 subnormals) and every
     * finite value a finite float32. */
    if (f->min_exponent < -126 || maxd >= 0x1p128) return AG_EFORMAT;
    int exp;
    frexp(maxd, &exp);
    f->max_exponent = exp - 1;
    f->max_finite = (float)maxd;
    f->min_positive = (float)mind;
    return AG_OK;
}

static void register_builtins(void) {
    static const struct {
        const char *name;
        int E, M, bias, inf, nan;
    } builtins[] = {
        /* the seed's five, in their order */
        {"E0M7", 0, 7, 0, 0, 0},
        {"E1M6", 1, 6, 0, 0, 0},
        {"E3M4", 3, 4, 1, 0, 0},
        {"E5M2", 5, 2, 15, 1, 1},
        {"E7M0", 7, 0, 63, 0, 0},
        /* OCP FP8 E4M3 (no inf, NaN at S.1111.111), OCP FP6, OCP FP4 */
        {"E4M3", 4, 3, 7, 0, 1},
        {"E3M2", 3, 2, 3, 0, 0},
        {"E2M3", 2, 3, 1, 0, 0},
        {"E2M1", 2, 1, 1, 0, 0},
        /* 16-bit weight storage */
        {"BF16", 8, 7, 127, 1, 1},
        {"FP16", 5, 10, 15, 1, 1},
    };
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
        int rc = build_format(&registry[i], builtins[i].name, builtins[i].E, builtins[i].M,
                              builtins[i].bias, builtins[i].inf, builtins[i].nan);
        (void)rc; /* the table is constant and valid (tests check every field) */
    }
    registry_count = sizeof builtins / sizeof builtins[0];
    /* Block-scaled formats (docs/numerics.md, Block scaling): the element's
     * grid, a block size and a scale kind. */
    static const struct {
        const char *name;
        size_t element;
        int block, kind;
    } blocks[] = {
        {"MXFP8_E4M3", 5, 32, AG_SCALE_E8M0}, {"MXFP8_E5M2", 3, 32, AG_SCALE_E8M0},
        {"MXFP6_E3M2", 6, 32, AG_SCALE_E8M0}, {"MXFP6_E2M3", 7, 32, AG_SCALE_E8M0},
        {"MXFP4", 8, 32, AG_SCALE_E8M0},      {"NVFP4", 8, 16, AG_SCALE_E4M3},
    };
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
        ag_format *f = &registry[registry_count++];
        *f = registry[blocks[i].element];
        memset(f->name, 0, sizeof f->name);
        memcpy(f->name, blocks[i].name, strlen(blocks[i].name));
        f->block = blocks[i].block;
        f->element = &registry[blocks[i].element];
        f->scale_kind = blocks[i].kind;
    }
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

static const ag_format *find(const char *name) {
    size_t n = count_locked();
    for (size_t i = 0; i < n; i++)
        if (strcmp(registry[i].name, name) == 0) return &registry[i];
    return NULL;
}

/* The base name of an unscaled twin's name ("BF16" of "BF16-unscaled") into
 * base (AG_FORMAT_NAME_MAX + 1 bytes); 0 when name is no twin's name. */
static int twin_base(const char *name, char *base) {
    size_t n = strlen(name), k = sizeof AG_UNSCALED_SUFFIX - 1;
    if (n <= k || n > AG_FORMAT_NAME_MAX || strcmp(name + n - k, AG_UNSCALED_SUFFIX) != 0) return 0;
    memcpy(base, name, n - k);
    base[n - k] = '\0';
    return 1;
}

AG_EXTERN const ag_format *ag_format_get(const char *name) {
    if (name == NULL) return NULL;
    const ag_format *f = find(name);
    char base[AG_FORMAT_NAME_MAX + 1];
    if (f == NULL && twin_base(name, base)) {
        const ag_format *b = find(base);
        if (b != NULL && !b->unscaled && ag_format_unscaled(b, &f) != AG_OK) f = NULL;
    }
    return f;
}

AG_EXTERN int ag_format_unscaled(const ag_format *fmt, const ag_format **out) {
    if (fmt == NULL || fmt->block != 0) return AG_EFORMAT; /* block scales are not one scale */
    if (fmt->unscaled) {
        if (out != NULL) *out = fmt;
        return AG_OK;
    }
    size_t n = strlen(fmt->name), k = sizeof AG_UNSCALED_SUFFIX - 1;
    if (n + k > AG_FORMAT_NAME_MAX) return AG_ERANGE;
    ag_format twin = *fmt;
    memcpy(twin.name + n, AG_UNSCALED_SUFFIX, k + 1);
    twin.unscaled = 1;
    pthread_once(&registry_once, register_builtins);
    pthread_mutex_lock(&registry_lock);
    int rc = AG_OK;
    const ag_format *found = NULL;
    for (size_t i = 0; i < registry_count && found == NULL; i++)
        if (strcmp(registry[i].name, twin.name) == 0) found = &registry[i];
    if (found == NULL) {
        if (registry_count == AG_FORMATS_MAX) {
            rc = AG_ENOSPC;
        } else {
            registry[registry_count] = twin;
            found = &registry[registry_count++];
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (rc == AG_OK && out != NULL) *out = found;
    return rc;
}

AG_EXTERN int ag_format_define(const char *name, int exponent_bits, int mantissa_bits, int bias,
                               int has_inf, int has_nan, const ag_format **out) {
    ag_format f;
    int rc = build_format(&f, name, exponent_bits, mantissa_bits, bias, has_inf, has_nan);
    if (rc != AG_OK) return rc;
    char base[AG_FORMAT_NAME_MAX + 1];
    if (twin_base(f.name, base)) {
        /* "NAME-unscaled" is NAME's unscaled twin: the same definition, or
         * nothing */
        const ag_format *t = ag_format_get(f.name);
        if (t == NULL) return AG_EFORMAT;
        if (t->exponent_bits != f.exponent_bits || t->mantissa_bits != f.mantissa_bits ||
            t->bias != f.bias || t->has_inf != f.has_inf || t->has_nan != f.has_nan)
            return AG_EEXIST;
        if (out != NULL) *out = t;
        return AG_OK;
    }
    pthread_once(&registry_once, register_builtins);
    pthread_mutex_lock(&registry_lock);
    const ag_format *found = NULL;
    for (size_t i = 0; i < registry_count; i++) {
        const ag_format *g = &registry[i];
        if (strcmp(g->name, f.name) != 0) continue;
        if (g->block != 0 || g->exponent_bits != f.exponent_bits ||
            g->mantissa_bits != f.mantissa_bits || g->bias != f.bias || g->has_inf != f.has_inf ||
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

AG_EXTERN int ag_format_define_ex(const char *name, int exponent_bits, int mantissa_bits, int bias,
                                  int nan_mode, const ag_format **out) {
    switch (nan_mode) {
    case AG_NAN_NONE: return ag_format_define(name, exponent_bits, mantissa_bits, bias, 0, 0, out);
    case AG_NAN_IEEE: return ag_format_define(name, exponent_bits, mantissa_bits, bias, 1, 1, out);
    case AG_NAN_ALL_ONES:
        return ag_format_define(name, exponent_bits, mantissa_bits, bias, 0, 1, out);
    default: return AG_EFORMAT;
    }
}

AG_EXTERN size_t ag_format_list(int bits, const ag_format **out, size_t cap) {
    size_t n = count_locked(), k = 0;
    for (size_t i = 0; i < n; i++) {
        if (bits != 0 && registry[i].bits != bits) continue;
        if (out != NULL && k < cap) out[k] = &registry[i];
        k++;
    }
    return k;
}
