/*
 * test_error.c - core/error.c: the error context of core/errctx.h, the one
 * channel for a failure's detail text (set records code and text, text
 * reads it back, clear forgets it), and the names of the codes.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "errctx.h"

Test(errctx, set_records_the_code_and_the_formatted_text) {
    ag_errctx e = {0};
    cr_assert_str_eq(ag_errctx_text(&e), "");
    cr_assert_eq(ag_errctx_set(&e, AG_ENOTFOUND, "no run '%s' (%d)", "r1", 3), AG_ENOTFOUND);
    cr_assert_eq(e.code, AG_ENOTFOUND);
    cr_assert_str_eq(ag_errctx_text(&e), "no run 'r1' (3)");
    cr_assert_eq(ag_errctx_set(&e, AG_EPROTO, NULL), AG_EPROTO);
    cr_assert_str_eq(ag_errctx_text(&e), "", "a later failure without text says nothing stale");
}

Test(errctx, clear_forgets_and_null_is_safe) {
    ag_errctx e;
    ag_errctx_set(&e, AG_EIO, "disk");
    ag_errctx_clear(&e);
    cr_assert_eq(e.code, AG_OK);
    cr_assert_str_eq(ag_errctx_text(&e), "");
    cr_assert_eq(ag_errctx_set(NULL, AG_EINVAL, "nowhere"), AG_EINVAL);
    cr_assert_str_eq(ag_errctx_text(NULL), "");
    ag_errctx_clear(NULL);
}

Test(errctx, long_text_is_cut_at_the_limit_and_terminated) {
    static char big[3 * AG_ERRCTX_TEXT_MAX];
    memset(big, 'x', sizeof big - 1);
    ag_errctx e;
    ag_errctx_set(&e, AG_EREMOTE, "%s", big);
    cr_assert_eq(strlen(ag_errctx_text(&e)), AG_ERRCTX_TEXT_MAX);
}

Test(errctx, the_text_may_be_the_previous_text_of_another_context) {
    ag_errctx a, b;
    ag_errctx_set(&a, AG_ESTORE, "store: %s", "locked");
    ag_errctx_set(&b, a.code, "writer: %s", ag_errctx_text(&a));
    cr_assert_str_eq(ag_errctx_text(&b), "writer: store: locked");
    cr_assert_eq(b.code, AG_ESTORE);
}

Test(error, every_code_has_a_name_and_a_text) {
#define CHECK_(name, value, text)                                                                  \
    cr_assert_str_eq(ag_err_name(value), #name);                                                   \
    cr_assert_str_eq(ag_strerror(value), text);
    AG_ERRNO_MAP(CHECK_)
#undef CHECK_
    cr_assert_null(ag_err_name(-1000));
}
