/*
 * dtype.c - widening bfloat16 and float16 to float32, so that snapshots of
 * half-precision tensors can run through the float32 kernels unchanged.
 */
#include <string.h>

#include "altgrad/altgrad.h"

AG_EXTERN int ag_bf16_to_f32(const uint16_t *x, float *out, size_t n) {
    if (x == NULL || out == NULL || n == 0) return AG_EINVAL;
    for (size_t i = 0; i < n; i++) {
        uint32_t b = (uint32_t)x[i] << 16;
        memcpy(&out[i], &b, sizeof b);
    }
    return AG_OK;
}

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Exact. */
static float f16_value(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: normalise the mantissa */
        int shift = 0;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            shift++;
        }
        man &= 0x3ffu;
        bits = sign | ((uint32_t)(113 - shift) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

AG_EXTERN int ag_f16_to_f32(const uint16_t *x, float *out, size_t n) {
    if (x == NULL || out == NULL || n == 0) return AG_EINVAL;
    for (size_t i = 0; i < n; i++) out[i] = f16_value(x[i]);
    return AG_OK;
}
