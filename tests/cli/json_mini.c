/*
 * json_mini.c - strict recursive-descent JSON reader for the CLI tests.
 * Rejects what RFC 8259 rejects (trailing commas, control characters in
 * strings, bad escapes, leading zeros, trailing garbage), so a passing test
 * means the CLI's output would load in any JSON library.
 */
#define _POSIX_C_SOURCE 200809L
#include "json_mini.h"

#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *p;
    int depth;
} parser;

static void skip_ws(parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r') ps->p++;
}

static void free_inner(jm_value *v) {
    size_t i;
    if (v == NULL) return;
    free(v->string);
    for (i = 0; i < v->n; i++) {
        free_inner(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

void jm_free(jm_value *v) {
    free_inner(v);
    free(v);
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static char *parse_string(parser *ps) {
    const char *s = ps->p;
    size_t cap = 16, len = 0;
    char *out;
    if (*s != '"') return NULL;
    s++;
    out = malloc(cap);
    if (out == NULL) return NULL;
    for (;;) {
        unsigned char c = (unsigned char)*s;
        if (len + 8 >= cap) {
            char *g = realloc(out, cap * 2);
            if (g == NULL) goto fail;
            out = g;
            cap *= 2;
        }
        if (c == '"') {
            s++;
            break;
        }
        if (c < 0x20) goto fail; /* includes the terminating NUL */
        if (c != '\\') {
            out[len++] = (char)c;
            s++;
            continue;
        }
        s++;
        switch (*s) {
        case '"':
            out[len++] = '"';
            s++;
            break;
        case '\\':
            out[len++] = '\\';
            s++;
            break;
        case '/':
            out[len++] = '/';
            s++;
            break;
        case 'b':
            out[len++] = '\b';
            s++;
            break;
        case 'f':
            out[len++] = '\f';
            s++;
            break;
        case 'n':
            out[len++] = '\n';
            s++;
            break;
        case 'r':
            out[len++] = '\r';
            s++;
            break;
        case 't':
            out[len++] = '\t';
            s++;
            break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(s + 1, &cp) != 0) goto fail;
            s += 5;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (s[0] != '\\' || s[1] != 'u' || hex4(s + 2, &lo) != 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    goto fail;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto fail;
            }
            if (cp == 0) goto fail; /* our strings are C strings */
            len += put_utf8(out + len, cp);
            break;
        }
        default: goto fail;
        }
    }
    out[len] = '\0';
    ps->p = s;
    return out;
fail:
    free(out);
    return NULL;
}

static int parse_value(parser *ps, jm_value *v);

static int parse_number(parser *ps, jm_value *v) {
    const char *s = ps->p, *start = s;
    char *end;
    if (*s == '-') s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9') s++;
    else
        return -1;
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9')) return -1;
        while (*s >= '0' && *s <= '9') s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!(*s >= '0' && *s <= '9')) return -1;
        while (*s >= '0' && *s <= '9') s++;
    }
    v->type = JM_NUMBER;
    v->number = strtod(start, &end);
    if (end != s) return -1;
    ps->p = s;
    return 0;
}

static int push(jm_value *v, size_t *cap, char *key) {
    if (v->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        jm_value *items = realloc(v->items, nc * sizeof *items);
        if (items == NULL) return -1;
        v->items = items;
        if (v->type == JM_OBJECT) {
            char **keys = realloc(v->keys, nc * sizeof *keys);
            if (keys == NULL) return -1;
            v->keys = keys;
        }
        *cap = nc;
    }
    memset(&v->items[v->n], 0, sizeof v->items[v->n]);
    if (v->type == JM_OBJECT) v->keys[v->n] = key;
    v->n++;
    return 0;
}

static int parse_container(parser *ps, jm_value *v, char close) {
    size_t cap = 0;
    if (++ps->depth > 64) return -1;
    v->type = close == '}' ? JM_OBJECT : JM_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (*ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (v->type == JM_OBJECT) {
            key = parse_string(ps);
            if (key == NULL) return -1;
            skip_ws(ps);
            if (*ps->p != ':') {
                free(key);
                return -1;
            }
            ps->p++;
        }
        if (push(v, &cap, key) != 0) {
            free(key);
            return -1;
        }
        if (parse_value(ps, &v->items[v->n - 1]) != 0) return -1;
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return -1;
    }
}

static int parse_value(parser *ps, jm_value *v) {
    skip_ws(ps);
    switch (*ps->p) {
    case '{': return parse_container(ps, v, '}');
    case '[': return parse_container(ps, v, ']');
    case '"':
        v->type = JM_STRING;
        v->string = parse_string(ps);
        return v->string ? 0 : -1;
    case 't':
        if (strncmp(ps->p, "true", 4) != 0) return -1;
        v->type = JM_BOOL;
        v->boolean = 1;
        ps->p += 4;
        return 0;
    case 'f':
        if (strncmp(ps->p, "false", 5) != 0) return -1;
        v->type = JM_BOOL;
        ps->p += 5;
        return 0;
    case 'n':
        if (strncmp(ps->p, "null", 4) != 0) return -1;
        v->type = JM_NULL;
        ps->p += 4;
        return 0;
    default: return parse_number(ps, v);
    }
}

jm_value *jm_parse(const char *text) {
    parser ps;
    jm_value *v;
    if (text == NULL) return NULL;
    v = calloc(1, sizeof *v);
    if (v == NULL) return NULL;
    ps.p = text;
    ps.depth = 0;
    if (parse_value(&ps, v) != 0) goto fail;
    skip_ws(&ps);
    if (*ps.p != '\0') goto fail;
    return v;
fail:
    jm_free(v);
    return NULL;
}

const jm_value *jm_get(const jm_value *obj, const char *key) {
    size_t i;
    if (obj == NULL || obj->type != JM_OBJECT) return NULL;
    for (i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}
