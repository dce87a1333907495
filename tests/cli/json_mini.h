/*
 * json_mini.h - a small strict JSON reader for the CLI tests: it checks that
 * what `altgrad --json` prints is valid JSON (RFC 8259) and lets the tests
 * look inside it. Not part of the product.
 */
#ifndef AG_TEST_JSON_MINI_H
#define AG_TEST_JSON_MINI_H

#include <stddef.h>

typedef enum jm_type { JM_NULL, JM_BOOL, JM_NUMBER, JM_STRING, JM_ARRAY, JM_OBJECT } jm_type;

typedef struct jm_value {
    jm_type type;
    int boolean;
    double number;
    char *string;           /* JM_STRING: decoded UTF-8 (NUL-terminated) */
    size_t n;               /* JM_ARRAY / JM_OBJECT: element count */
    struct jm_value *items; /* elements / member values */
    char **keys;            /* JM_OBJECT: member names */
} jm_value;

/* Parses the whole of text (surrounding whitespace allowed); NULL if it is
 * not exactly one valid JSON value. Free with jm_free. */
jm_value *jm_parse(const char *text);
void jm_free(jm_value *v);
/* The member named key of an object, or NULL. */
const jm_value *jm_get(const jm_value *obj, const char *key);

#endif
