/*
 * check.c - value checks shared by encoder, decoder and client: names,
 * format names, and a strict JSON-object syntax check for run metadata (so
 * the daemon can store it and hand it to JSON consumers unchanged).
 */
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
