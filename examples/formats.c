/*
 * formats.c - ag_formats: prints the table of registered 8-bit formats
 * (docs/numerics.md, Formats) from the core library, with a few sample encodings. The
 * Makefile's demo falls back to it when the daemon demo is not built.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "altgrad/altgrad.h"

int main(void) {
    static const float samples[] = {0.1f, 1.0f, 3.3f, 100.0f};
    size_t i, k, n = ag_format_count();

    printf("altgrad %s: %zu registered 8-bit formats\n\n", ag_version(), n);
    printf("%-6s %2s %2s %5s %4s %4s %14s %14s   quantize(0.1, 1, 3.3, 100)\n", "name", "E", "M",
           "bias", "inf", "NaN", "min positive", "max finite");
    for (i = 0; i < n; i++) {
        const ag_format *f = ag_format_at(i);
        if (f == NULL) return EXIT_FAILURE;
        printf("%-6s %2d %2d %5d %4s %4s %14.8g %14.8g  ", f->name, f->exponent_bits,
               f->mantissa_bits, f->bias, f->has_inf ? "yes" : "no", f->has_nan ? "yes" : "no",
               (double)f->min_positive, (double)f->max_finite);
        for (k = 0; k < sizeof samples / sizeof samples[0]; k++)
            printf(" %g", (double)ag_decode(f, ag_encode(f, samples[k])));
        printf("\n");
    }
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
