/*
 * read.c - a bounded, zero-copy msgpack pull reader. Every read checks the
 * bytes left before touching them and every container count is checked
 * against what remains, so a hostile length can never make us allocate or
 * read past the message. Skipping unknown values is depth-limited.
 */
#include <string.h>

#include "proto/internal.h"

/* The failure path, out of line and cold, so that the hot readers keep no
 * frame for the error context's call (a tail call from them). */
__attribute__((cold, noinline)) static int wrong(ag_rd *r, const char *why) {
    ag_errctx_set(r->err, AG_EPROTO, "%s", why);
    return AG_EPROTO;
}

#define NEED(r, n)                                                                                 \
    do {                                                                                           \
        if ((size_t)((r)->end - (r)->p) < (size_t)(n)) return wrong((r), "truncated message");     \
    } while (0)

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* Any msgpack integer: *neg set when it is a negative signed value. */
static int rd_integer(ag_rd *r, uint64_t *u, int64_t *s, int *neg) {
    NEED(r, 1);
    uint8_t c = *r->p;
    *neg = 0;
    if (c <= 0x7f) {
        r->p++;
        *u = c;
        return AG_OK;
    }
    if (c >= 0xe0) {
        r->p++;
        *s = (int8_t)c;
        *neg = 1;
        return AG_OK;
    }
    int n;
    int is_signed;
    switch (c) {
    case 0xcc:
        n = 1;
        is_signed = 0;
        break;
    case 0xcd:
        n = 2;
        is_signed = 0;
        break;
    case 0xce:
        n = 4;
        is_signed = 0;
        break;
    case 0xcf:
        n = 8;
        is_signed = 0;
        break;
    case 0xd0:
        n = 1;
        is_signed = 1;
        break;
    case 0xd1:
        n = 2;
        is_signed = 1;
        break;
    case 0xd2:
        n = 4;
        is_signed = 1;
        break;
    case 0xd3:
        n = 8;
        is_signed = 1;
        break;
    default: return wrong(r, "expected an integer");
    }
    NEED(r, 1 + n);
    uint64_t v = be(r->p + 1, n);
    r->p += 1 + n;
    if (!is_signed) {
        *u = v;
        return AG_OK;
    }
    /* sign-extend an n-byte two's complement value */
    int64_t sv;
    if (n == 8) {
        memcpy(&sv, &v, sizeof sv);
    } else {
        uint64_t sign = (uint64_t)1 << (8 * n - 1);
        sv = (v & sign) ? (int64_t)v - (int64_t)(2 * sign) : (int64_t)v;
    }
    if (sv < 0) {
        *s = sv;
        *neg = 1;
    } else {
        *u = (uint64_t)sv;
    }
    return AG_OK;
}

int ag_rd_uint(ag_rd *r, uint64_t *v) {
    uint64_t u = 0;
    int64_t s = 0;
    int neg;
    int rc = rd_integer(r, &u, &s, &neg);
    if (rc) return rc;
    if (neg) return wrong(r, "expected a non-negative integer");
    *v = u;
    return AG_OK;
}

int ag_rd_int(ag_rd *r, int64_t *v) {
    uint64_t u = 0;
    int64_t s = 0;
    int neg;
    int rc = rd_integer(r, &u, &s, &neg);
    if (rc) return rc;
    if (neg) {
        *v = s;
        return AG_OK;
    }
    if (u > (uint64_t)INT64_MAX) return wrong(r, "integer out of the int64 range");
    *v = (int64_t)u;
    return AG_OK;
}

int ag_rd_float(ag_rd *r, double *v) {
    NEED(r, 1);
    uint8_t c = *r->p;
    if (c == 0xca) {
        NEED(r, 5);
        uint32_t bits = (uint32_t)be(r->p + 1, 4);
        float f;
        memcpy(&f, &bits, sizeof f);
        *v = f;
        r->p += 5;
        return AG_OK;
    }
    if (c == 0xcb) {
        NEED(r, 9);
        uint64_t bits = be(r->p + 1, 8);
        memcpy(v, &bits, sizeof *v);
        r->p += 9;
        return AG_OK;
    }
    uint64_t u = 0;
    int64_t s = 0;
    int neg;
    int rc = rd_integer(r, &u, &s, &neg);
    if (rc) return wrong(r, "expected a number");
    *v = neg ? (double)s : (double)u;
    return AG_OK;
}

static int rd_sized(ag_rd *r, const uint8_t *fix, uint8_t c8, const void **b, size_t *len,
                    const char *what) {
    NEED(r, 1);
    uint8_t c = *r->p;
    size_t hdr;
    uint64_t n;
    if (fix && c >= fix[0] && c <= fix[1]) {
        hdr = 1;
        n = c - fix[0];
    } else if (c == c8) {
        NEED(r, 2);
        hdr = 2;
        n = r->p[1];
    } else if (c == c8 + 1) {
        NEED(r, 3);
        hdr = 3;
        n = be(r->p + 1, 2);
    } else if (c == c8 + 2) {
        NEED(r, 5);
        hdr = 5;
        n = be(r->p + 1, 4);
    } else {
        return wrong(r, what);
    }
    NEED(r, hdr + n);
    *b = r->p + hdr;
    *len = (size_t)n;
    r->p += hdr + n;
    return AG_OK;
}

int ag_rd_str(ag_rd *r, const char **s, size_t *len) {
    static const uint8_t fix[2] = {0xa0, 0xbf};
    const void *b = NULL;
    int rc = rd_sized(r, fix, 0xd9, &b, len, "expected a string");
    if (!rc) *s = b;
    return rc;
}

int ag_rd_bin(ag_rd *r, const void **b, size_t *len) {
    return rd_sized(r, NULL, 0xc4, b, len, "expected binary data");
}

static int rd_container(ag_rd *r, uint8_t fix_lo, uint8_t c16, uint32_t *n, size_t per,
                        const char *what) {
    NEED(r, 1);
    uint8_t c = *r->p;
    uint64_t count;
    size_t hdr;
    if (c >= fix_lo && c <= fix_lo + 15) {
        count = c - fix_lo;
        hdr = 1;
    } else if (c == c16) {
        NEED(r, 3);
        count = be(r->p + 1, 2);
        hdr = 3;
    } else if (c == c16 + 1) {
        NEED(r, 5);
        count = be(r->p + 1, 4);
        hdr = 5;
    } else {
        return wrong(r, what);
    }
    r->p += hdr;
    if (count > (uint64_t)(r->end - r->p) / per)
        return wrong(r, "a count exceeds the bytes that follow");
    *n = (uint32_t)count;
    return AG_OK;
}

int ag_rd_array(ag_rd *r, uint32_t *n) {
    return rd_container(r, 0x90, 0xdc, n, 1, "expected an array");
}

int ag_rd_map(ag_rd *r, uint32_t *n) { return rd_container(r, 0x80, 0xde, n, 2, "expected a map"); }

int ag_rd_skip(ag_rd *r, int depth) {
    if (depth > AG_PROTO_MAX_DEPTH) return wrong(r, "nesting too deep");
    NEED(r, 1);
    uint8_t c = *r->p;
    const void *b;
    size_t len;
    uint32_t n;
    int rc;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) {
        uint64_t u;
        int64_t s;
        int neg;
        return rd_integer(r, &u, &s, &neg);
    }
    if ((c >= 0xa0 && c <= 0xbf) || (c >= 0xd9 && c <= 0xdb)) {
        const char *str;
        return ag_rd_str(r, &str, &len);
    }
    if (c >= 0xc4 && c <= 0xc6) return ag_rd_bin(r, &b, &len);
    if (c == 0xc0 || c == 0xc2 || c == 0xc3) {
        r->p++;
        return AG_OK;
    }
    if (c == 0xca || c == 0xcb) {
        double d;
        return ag_rd_float(r, &d);
    }
    if ((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd) {
        if ((rc = ag_rd_array(r, &n))) return rc;
        for (uint32_t i = 0; i < n; i++)
            if ((rc = ag_rd_skip(r, depth + 1))) return rc;
        return AG_OK;
    }
    if ((c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf) {
        if ((rc = ag_rd_map(r, &n))) return rc;
        for (uint64_t i = 0; i < 2 * (uint64_t)n; i++)
            if ((rc = ag_rd_skip(r, depth + 1))) return rc;
        return AG_OK;
    }
    /* ext types and 0xc1 carry nothing we use: reject them */
    return wrong(r, "unsupported msgpack type");
}
