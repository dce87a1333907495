/*
 * check.c - value checks shared by encoder, decoder and client: names,
 * format names, and a strict JSON-object syntax check for run metadata (so
 * the daemon can store it and hand it to JSON consumers unchanged), and the
 * bounds of a counts message.
 */
#define _POSIX_C_SOURCE 200809L /* strnlen */
#include <math.h>
#include <string.h>

#include "proto/internal.h"

int ag_proto_name_ok(const char *s, size_t len) {
    return s && len >= 1 && len <= AG_NAME_MAX && !memchr(s, '\0', len);
}

int ag_proto_format_name_ok(const char *s, size_t len) {
    if (!s || len < 1 || len > AG_FORMAT_NAME_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

int ag_proto_launch_id_ok(const char *s, size_t len) {
    if (!s || len < 1 || len > AG_LAUNCH_ID_MAX) return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

int ag_proto_aligned(const void *p, size_t align) { return align && ((uintptr_t)p % align) == 0; }

/* ---- JSON syntax (RFC 8259), recursive descent with a depth bound -------- */
#define JSON_MAX_DEPTH 32

typedef struct json {
    const char *p;
    const char *end;
} json;

static void ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int lit(json *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return 0;
    j->p += n;
    return 1;
}

static int hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int string(json *j) {
    if (j->p >= j->end || *j->p != '"') return 0;
    j->p++;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') return 1;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (j->p >= j->end) return 0;
            char e = *j->p++;
            if (e == 'u') {
                if (j->end - j->p < 4) return 0;
                for (int i = 0; i < 4; i++)
                    if (!hex(j->p[i])) return 0;
                j->p += 4;
            } else if (!strchr("\"\\/bfnrt", e) || e == '\0') {
                return 0;
            }
        }
    }
    return 0;
}

static int digits(json *j) {
    const char *s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    return j->p > s;
}

static int number(json *j) {
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p < j->end && *j->p == '0')
        j->p++;
    else if (!digits(j))
        return 0;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (!digits(j)) return 0;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (!digits(j)) return 0;
    }
    return 1;
}

static int value(json *j, int depth);

static int container(json *j, int depth, char close, int is_object) {
    if (depth >= JSON_MAX_DEPTH) return 0;
    j->p++; /* the opening bracket */
    ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    for (;;) {
        if (is_object) {
            if (!string(j)) return 0;
            ws(j);
            if (j->p >= j->end || *j->p != ':') return 0;
            j->p++;
            ws(j);
        }
        if (!value(j, depth + 1)) return 0;
        ws(j);
        if (j->p >= j->end) return 0;
        if (*j->p == ',') {
            j->p++;
            ws(j);
            continue;
        }
        if (*j->p == close) {
            j->p++;
            return 1;
        }
        return 0;
    }
}

static int value(json *j, int depth) {
    if (j->p >= j->end) return 0;
    switch (*j->p) {
    case '{': return container(j, depth, '}', 1);
    case '[': return container(j, depth, ']', 0);
    case '"': return string(j);
    case 't': return lit(j, "true");
    case 'f': return lit(j, "false");
    case 'n': return lit(j, "null");
    default: return number(j);
    }
}

int ag_proto_json_object_ok(const char *s, size_t len) {
    if (!s) return 0;
    json j = {s, s + len};
    ws(&j);
    if (j.p >= j.end || *j.p != '{') return 0;
    if (!value(&j, 0)) return 0;
    ws(&j);
    return j.p == j.end;
}

/* ---- counts (PROTOCOL.md 3.5) ------------------------------------------- */

#define WHY(text, code)                                                                            \
    do {                                                                                           \
        *why = (text);                                                                             \
        return (code);                                                                             \
    } while (0)

/* A result's quantization error: mse NaN (unknown) or finite >= 0, sqnr_db
 * NaN or finite and only beside an mse > 0 (it is undefined for an exact
 * tensor), neither when the tensor has no finite element. */
int ag_proto_qerr_ok(uint64_t numel, uint64_t nonfinite, double mse, double sqnr_db,
                     const char **why) {
    static const char *unused;
    if (!why) why = &unused;
    if (!isnan(mse) && (!isfinite(mse) || mse < 0)) WHY("mse is not finite and >= 0", AG_EINVAL);
    if (!isnan(sqnr_db) && !isfinite(sqnr_db)) WHY("sqnr_db is not finite", AG_EINVAL);
    if (!isnan(sqnr_db) && !(mse > 0)) WHY("sqnr_db without an mse > 0", AG_EINVAL);
    if (!isnan(mse) && nonfinite >= numel) WHY("mse of a tensor with no finite element", AG_EINVAL);
    return AG_OK;
}

/* One tensor's result in one format: the counts' order and bounds. */
static int result_ok(uint64_t numel, float scale, const uint64_t *k, int64_t flips,
                     const char **why) {
    if (!(scale > 0) || !isfinite(scale)) WHY("a scale is not finite and > 0", AG_EINVAL);
    if (k[0] > k[1]) WHY("stalled exceeds total", AG_EINVAL);
    for (int j = 1; j < AG_COUNTS_PER_RESULT; j++)
        if (k[j] > numel) WHY("a count exceeds numel", AG_EINVAL);
    if (flips < -1 || (flips >= 0 && (uint64_t)flips > numel))
        WHY("flips is not -1 (unknown) or 0..numel", AG_EINVAL);
    return AG_OK;
}

int ag_proto_counts_check(const ag_msg_counts *c, const char **why) {
    static const char *unused;
    if (!why) why = &unused;
    if (!c) WHY("no counts", AG_EINVAL);
    if (c->form != AG_FORM_SGD && c->form != AG_FORM_UPDATE) WHY("unknown form", AG_EINVAL);
    if (c->nformats == 0 || !c->formats) WHY("counts need 1..64 formats", AG_EINVAL);
    if (c->nformats > AG_PROTO_MAX_FORMATS) WHY("more than 64 formats", AG_ETOOBIG);
    for (size_t f = 0; f < c->nformats; f++)
        if (!ag_proto_format_name_ok(c->formats[f], c->formats[f] ? strlen(c->formats[f]) : 0))
            WHY("a format name is not 1..15 of [A-Za-z0-9_-]", AG_EINVAL);
    if (c->n == 0 || !c->tensors || !c->numel || !c->amax || !c->nonfinite || !c->scales ||
        !c->counts)
        WHY("counts need at least one tensor and every array", AG_EINVAL);
    for (size_t i = 0; i < c->n; i++) {
        const char *name = c->tensors[i];
        size_t len = name ? strnlen(name, AG_NAME_MAX + 1) : 0;
        if (len > AG_NAME_MAX) WHY("a name is longer than AG_NAME_MAX", AG_ETOOBIG);
        if (!ag_proto_name_ok(name, len)) WHY("a tensor name is empty", AG_EINVAL);
        uint64_t numel = c->numel[i];
        if (numel == 0 || numel > (uint64_t)INT64_MAX) WHY("numel is not 1..2^63-1", AG_EINVAL);
        if (!isfinite(c->amax[i]) || c->amax[i] < 0) WHY("amax is not finite and >= 0", AG_EINVAL);
        if (c->nonfinite[i] > numel) WHY("nonfinite exceeds numel", AG_EINVAL);
        for (size_t f = 0; f < c->nformats; f++) {
            size_t r = i * c->nformats + f;
            int rc = result_ok(numel, c->scales[r], c->counts + r * AG_COUNTS_PER_RESULT,
                               c->flips ? c->flips[r] : -1, why);
            if (!rc)
                rc = ag_proto_qerr_ok(numel, c->nonfinite[i], c->mse ? c->mse[r] : NAN,
                                      c->sqnr_db ? c->sqnr_db[r] : NAN, why);
            if (rc) return rc;
        }
    }
    return AG_OK;
}
