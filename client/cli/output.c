/*
 * output.c - renders an ag_cli_doc as an aligned table, JSON or CSV.
 * Everything the daemon or a database sends us is untrusted text: JSON comes
 * from present/json.c (escaped, invalid UTF-8 replaced, non-finite as null),
 * CSV fields are quoted per RFC 4180, table cells lose control characters.
 */
#define _POSIX_C_SOURCE 200809L
#include "output.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "altgrad/altgrad.h"

ag_cli_cell ag_cli_null(void) { return ag_cell_null(); }
ag_cli_cell ag_cli_str(const char *s) { return ag_cell_str(s); }
ag_cli_cell ag_cli_u64(uint64_t u) { return ag_cell_u64(u); }
ag_cli_cell ag_cli_i64(int64_t i) { return ag_cell_i64(i); }
ag_cli_cell ag_cli_f64(double d) { return ag_cell_f64(d); }
ag_cli_cell ag_cli_rate(double d) { return ag_cell_rate(d); }
ag_cli_cell ag_cli_time_ms(int64_t ms) { return ag_cell_time_ms(ms); }

void ag_cli_doc_init(ag_cli_doc *d, const char *list_key) { ag_doc_init(d, list_key); }
void ag_cli_doc_free(ag_cli_doc *d) { ag_doc_free(d); }

int ag_cli_doc_meta(ag_cli_doc *d, const char *key, ag_cli_cell value) {
    return ag_doc_meta(d, key, value);
}

int ag_cli_doc_col(ag_cli_doc *d, const char *name) { return ag_doc_col(d, name); }
int ag_cli_doc_row(ag_cli_doc *d, const ag_cli_cell *cells) { return ag_doc_row(d, cells); }

/* ------------------------------------------------------------------------
 * Scalars
 * ---------------------------------------------------------------------- */

void ag_cli_format_double(char *buf, size_t cap, double d) { ag_json_format_double(buf, cap, d); }

void ag_cli_json_string(FILE *out, const char *s) { ag_json_string(out, s); }

void ag_cli_csv_field(FILE *out, const char *s) {
    const char *p = s ? s : "";
    size_t n = strlen(p);
    int quote = strpbrk(p, ",\"\r\n") != NULL || (n > 0 && (p[0] == ' ' || p[n - 1] == ' '));
    if (!quote) {
        fputs(p, out);
        return;
    }
    fputc('"', out);
    for (; *p; p++) {
        if (*p == '"') fputc('"', out);
        fputc(*p, out);
    }
    fputc('"', out);
}

size_t ag_cli_display_width(const char *s) {
    size_t w = 0;
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    for (; *p; p++)
        if ((*p & 0xC0) != 0x80) w++;
    return w;
}

/* A cell as plain text for tables and CSV (not for JSON strings). */
static void cell_text(const ag_cli_cell *c, ag_cli_mode mode, char *buf, size_t cap) {
    buf[0] = '\0';
    switch (c->kind) {
    case AG_CELL_NULL: snprintf(buf, cap, "%s", mode == AG_CLI_TABLE ? "-" : ""); break;
    case AG_CELL_UNKNOWN: break; /* an empty cell */
    case AG_CELL_STR: snprintf(buf, cap, "%s", c->v.s ? c->v.s : ""); break;
    case AG_CELL_U64: snprintf(buf, cap, "%llu", (unsigned long long)c->v.u); break;
    case AG_CELL_I64: snprintf(buf, cap, "%lld", (long long)c->v.i); break;
    case AG_CELL_TIME_MS:
        if (mode == AG_CLI_TABLE) {
            time_t t = (time_t)(c->v.i / 1000);
            struct tm tm;
            if (c->v.i <= 0 || gmtime_r(&t, &tm) == NULL)
                snprintf(buf, cap, "-");
            else
                strftime(buf, cap, "%Y-%m-%d %H:%M:%SZ", &tm);
        } else {
            snprintf(buf, cap, "%lld", (long long)c->v.i);
        }
        break;
    case AG_CELL_F64:
    case AG_CELL_RATE:
        if (isnan(c->v.d))
            snprintf(buf, cap, "nan");
        else if (isinf(c->v.d))
            snprintf(buf, cap, "%s", c->v.d < 0 ? "-inf" : "inf");
        else if (mode != AG_CLI_TABLE)
            ag_cli_format_double(buf, cap, c->v.d);
        else if (c->kind == AG_CELL_RATE)
            snprintf(buf, cap, "%.4f", c->v.d);
        else
            snprintf(buf, cap, "%.6g", c->v.d);
        break;
    }
}

static int is_numeric(ag_cli_kind k) {
    return k == AG_CELL_U64 || k == AG_CELL_I64 || k == AG_CELL_F64 || k == AG_CELL_RATE;
}

/* ------------------------------------------------------------------------
 * Documents
 * ---------------------------------------------------------------------- */

static void render_csv(FILE *out, const ag_cli_doc *d) {
    char buf[128];
    size_t i, r, k;
    if (d->list_key == NULL) {
        for (i = 0; i < d->nmeta; i++) {
            if (i > 0) fputc(',', out);
            ag_cli_csv_field(out, d->meta[i].key);
        }
        fputc('\n', out);
        for (i = 0; i < d->nmeta; i++) {
            const ag_cli_cell *c = &d->meta[i].value;
            if (i > 0) fputc(',', out);
            if (c->kind == AG_CELL_STR) {
                ag_cli_csv_field(out, c->v.s);
            } else {
                cell_text(c, AG_CLI_CSV, buf, sizeof buf);
                fputs(buf, out);
            }
        }
        fputc('\n', out);
        return;
    }
    for (k = 0; k < d->ncols; k++) {
        if (k > 0) fputc(',', out);
        ag_cli_csv_field(out, d->cols[k]);
    }
    fputc('\n', out);
    for (r = 0; r < d->nrows; r++) {
        const ag_cli_cell *row = d->cells + r * d->ncols;
        for (k = 0; k < d->ncols; k++) {
            if (k > 0) fputc(',', out);
            if (row[k].kind == AG_CELL_STR) {
                ag_cli_csv_field(out, row[k].v.s);
            } else {
                cell_text(&row[k], AG_CLI_CSV, buf, sizeof buf);
                fputs(buf, out);
            }
        }
        fputc('\n', out);
    }
}

/* Writes text padded to width; numbers go right, text left. The last column
 * of a row is not padded on the right, so lines carry no trailing blanks. */
static void put_padded(FILE *out, const char *text, size_t width, int right, int last) {
    size_t w = ag_cli_display_width(text), pad = width > w ? width - w : 0;
    if (right)
        for (; pad > 0; pad--) fputc(' ', out);
    fputs(text, out);
    if (!right && !last)
        for (; pad > 0; pad--) fputc(' ', out);
}

/* Text in a table must not break the layout: control characters show as '?'. */
static void sanitize_for_terminal(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F) *s = '?';
}

static int render_table(FILE *out, const ag_cli_doc *d) {
    char buf[512];
    size_t width[AG_CLI_COLS_MAX] = {0};
    int right[AG_CLI_COLS_MAX] = {0};
    size_t i, r, k, keyw = 0;

    for (i = 0; i < d->nmeta; i++) {
        size_t w = ag_cli_display_width(d->meta[i].key);
        keyw = w > keyw ? w : keyw;
    }
    for (i = 0; i < d->nmeta; i++) {
        cell_text(&d->meta[i].value, AG_CLI_TABLE, buf, sizeof buf);
        sanitize_for_terminal(buf);
        fputs(d->meta[i].key, out);
        fputc(':', out);
        put_padded(out, "", keyw - ag_cli_display_width(d->meta[i].key) + 1, 0, 0);
        fprintf(out, "%s\n", buf);
    }
    if (d->list_key == NULL) return AG_OK;
    if (d->nmeta > 0) fputc('\n', out);

    for (k = 0; k < d->ncols; k++) {
        width[k] = ag_cli_display_width(d->cols[k]);
        right[k] = d->nrows > 0;
    }
    for (r = 0; r < d->nrows; r++) {
        for (k = 0; k < d->ncols; k++) {
            const ag_cli_cell *c = d->cells + r * d->ncols + k;
            size_t w;
            cell_text(c, AG_CLI_TABLE, buf, sizeof buf);
            sanitize_for_terminal(buf);
            w = ag_cli_display_width(buf);
            width[k] = w > width[k] ? w : width[k];
            if (!is_numeric(c->kind) && c->kind != AG_CELL_NULL && c->kind != AG_CELL_UNKNOWN)
                right[k] = 0;
        }
    }
    for (k = 0; k < d->ncols; k++) {
        if (k > 0) fputs("  ", out);
        put_padded(out, d->cols[k], width[k], right[k], k + 1 == d->ncols);
    }
    fputc('\n', out);
    for (r = 0; r < d->nrows; r++) {
        for (k = 0; k < d->ncols; k++) {
            cell_text(d->cells + r * d->ncols + k, AG_CLI_TABLE, buf, sizeof buf);
            sanitize_for_terminal(buf);
            if (k > 0) fputs("  ", out);
            put_padded(out, buf, width[k], right[k], k + 1 == d->ncols);
        }
        fputc('\n', out);
    }
    if (d->nrows == 0) fputs("(none)\n", out);
    return AG_OK;
}

int ag_cli_render(FILE *out, const ag_cli_doc *d, ag_cli_mode mode) {
    if (out == NULL || d == NULL) return AG_EINVAL;
    switch (mode) {
    case AG_CLI_JSON: ag_json_write_doc(out, d); break;
    case AG_CLI_CSV: render_csv(out, d); break;
    case AG_CLI_TABLE: render_table(out, d); break;
    default: return AG_EINVAL;
    }
    if (fflush(out) != 0 || ferror(out)) return AG_EIO;
    return AG_OK;
}
