/*
 * json.c - the document model and the JSON writer shared by the altgrad CLI
 * and the daemon's HTTP API (json.h). Everything the daemon or a database
 * holds is untrusted text, so strings are escaped byte by byte with invalid
 * UTF-8 replaced, and non-finite numbers become null.
 */
#include "present/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A cell of the given kind with its value zeroed; the constructors fill it. */
static ag_cell cell_of(ag_cell_kind kind) {
    ag_cell c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    return c;
}

ag_cell ag_cell_null(void) { return cell_of(AG_CELL_NULL); }
ag_cell ag_cell_unknown(void) { return cell_of(AG_CELL_UNKNOWN); }

ag_cell ag_cell_str(const char *s) {
    ag_cell c = cell_of(AG_CELL_STR);
    c.v.s = s;
    return c;
}

ag_cell ag_cell_u64(uint64_t u) {
    ag_cell c = cell_of(AG_CELL_U64);
    c.v.u = u;
    return c;
}

/* TIME_MS and RATE share the storage of I64 and F64. */
static ag_cell cell_i64(ag_cell_kind kind, int64_t i) {
    ag_cell c = cell_of(kind);
    c.v.i = i;
    return c;
}

static ag_cell cell_f64(ag_cell_kind kind, double d) {
    ag_cell c = cell_of(kind);
    c.v.d = d;
    return c;
}

ag_cell ag_cell_i64(int64_t i) { return cell_i64(AG_CELL_I64, i); }
ag_cell ag_cell_time_ms(int64_t ms) { return cell_i64(AG_CELL_TIME_MS, ms); }
ag_cell ag_cell_f64(double d) { return cell_f64(AG_CELL_F64, d); }
ag_cell ag_cell_rate(double d) { return cell_f64(AG_CELL_RATE, d); }

void ag_doc_init(ag_doc *d, const char *list_key) {
    memset(d, 0, sizeof *d);
    d->list_key = list_key;
}

void ag_doc_free(ag_doc *d) {
    if (d == NULL) return;
    free(d->cells);
    d->cells = NULL;
    d->nrows = d->cap_rows = 0;
}

int ag_doc_meta(ag_doc *d, const char *key, ag_cell value) {
    if (d == NULL || key == NULL) return AG_EINVAL;
    if (d->nmeta >= AG_DOC_META_MAX) return AG_ENOSPC;
    d->meta[d->nmeta].key = key;
    d->meta[d->nmeta].value = value;
    d->nmeta++;
    return AG_OK;
}

int ag_doc_col(ag_doc *d, const char *name) {
    if (d == NULL || name == NULL || d->nrows > 0) return AG_EINVAL;
    if (d->ncols >= AG_DOC_COLS_MAX) return AG_ENOSPC;
    d->cols[d->ncols++] = name;
    return AG_OK;
}

int ag_doc_cols(ag_doc *d, const char *const *names) {
    int rc = names == NULL ? AG_EINVAL : AG_OK;
    for (; rc == AG_OK && *names != NULL; names++) rc = ag_doc_col(d, *names);
    return rc;
}

int ag_doc_row(ag_doc *d, const ag_cell *cells) {
    if (d == NULL || cells == NULL || d->ncols == 0) return AG_EINVAL;
    if (d->nrows == d->cap_rows) {
        size_t cap = d->cap_rows ? d->cap_rows * 2 : 16;
        ag_cell *grown;
        if (cap > SIZE_MAX / sizeof *grown / d->ncols) return AG_ENOMEM;
        grown = realloc(d->cells, cap * d->ncols * sizeof *grown);
        if (grown == NULL) return AG_ENOMEM;
        d->cells = grown;
        d->cap_rows = cap;
    }
    memcpy(d->cells + d->nrows * d->ncols, cells, d->ncols * sizeof *cells);
    d->nrows++;
    return AG_OK;
}

/* ------------------------------------------------------------------------
 * JSON
 * ---------------------------------------------------------------------- */

void ag_json_format_double(char *buf, size_t cap, double d) {
    static const int digits[] = {15, 16, 17};
    size_t i;
    for (i = 0; i < sizeof digits / sizeof digits[0]; i++) {
        snprintf(buf, cap, "%.*g", digits[i], d);
        if (strtod(buf, NULL) == d) return;
    }
}

/* Reads past s[0] only while the bytes are continuation bytes, so never
 * past a terminating NUL. */
size_t ag_utf8_sequence(const unsigned char *s) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80) return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        return 4;
    }
    return 0;
}

void ag_json_string(FILE *out, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', out);
    while (*p) {
        size_t len;
        switch (*p) {
        case '"':
            fputs("\\\"", out);
            p++;
            continue;
        case '\\':
            fputs("\\\\", out);
            p++;
            continue;
        case '\n':
            fputs("\\n", out);
            p++;
            continue;
        case '\r':
            fputs("\\r", out);
            p++;
            continue;
        case '\t':
            fputs("\\t", out);
            p++;
            continue;
        case '\b':
            fputs("\\b", out);
            p++;
            continue;
        case '\f':
            fputs("\\f", out);
            p++;
            continue;
        default: break;
        }
        if (*p < 0x20 || *p == 0x7F) {
            fprintf(out, "\\u%04x", (unsigned)*p);
            p++;
            continue;
        }
        len = ag_utf8_sequence(p);
        if (len == 0) {
            fputs("\\ufffd", out);
            p++;
            continue;
        }
        fwrite(p, 1, len, out);
        p += len;
    }
    fputc('"', out);
}

void ag_json_cell(FILE *out, const ag_cell *c) {
    char buf[64];
    switch (c->kind) {
    case AG_CELL_NULL:
    case AG_CELL_UNKNOWN: fputs("null", out); return;
    case AG_CELL_STR: ag_json_string(out, c->v.s); return;
    case AG_CELL_U64: fprintf(out, "%llu", (unsigned long long)c->v.u); return;
    case AG_CELL_I64:
    case AG_CELL_TIME_MS: fprintf(out, "%lld", (long long)c->v.i); return;
    case AG_CELL_F64:
    case AG_CELL_RATE:
        if (!isfinite(c->v.d)) {
            fputs("null", out);
            return;
        }
        ag_json_format_double(buf, sizeof buf, c->v.d);
        fputs(buf, out);
        return;
    }
    fputs("null", out);
}

int ag_json_write_doc(FILE *out, const ag_doc *d) {
    size_t i, r, k;
    if (out == NULL || d == NULL) return AG_EINVAL;
    fputc('{', out);
    for (i = 0; i < d->nmeta; i++) {
        if (i > 0) fputc(',', out);
        ag_json_string(out, d->meta[i].key);
        fputc(':', out);
        ag_json_cell(out, &d->meta[i].value);
    }
    if (d->list_key != NULL) {
        if (d->nmeta > 0) fputc(',', out);
        ag_json_string(out, d->list_key);
        fputs(":[", out);
        for (r = 0; r < d->nrows; r++) {
            const ag_cell *row = d->cells + r * d->ncols;
            fputs(r > 0 ? ",\n{" : "\n{", out);
            for (k = 0; k < d->ncols; k++) {
                if (k > 0) fputc(',', out);
                ag_json_string(out, d->cols[k]);
                fputc(':', out);
                ag_json_cell(out, &row[k]);
            }
            fputc('}', out);
        }
        fputs(d->nrows > 0 ? "\n]" : "]", out);
    }
    fputs("}\n", out);
    return ferror(out) ? AG_EIO : AG_OK;
}
