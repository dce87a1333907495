/*
 * cpu.c - which instruction-set variant of the array kernels runs.
 * Detected once from the CPU; $AG_ISA or ag_isa_force() may pick a lower one
 * (tests run every variant the machine has against the same reference).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"
#include "kernel.h"

static const char *const isa_names[AG_ISA_COUNT] = {"base", "avx2", "avx512"};
static atomic_int current_isa = -1;

int ag_isa_supported(int isa) {
    if (isa == AG_ISA_BASE) return 1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* the avx2 and avx512 variants use fma too (kernel.h, ag_quot) */
    if (isa == AG_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == AG_ISA_AVX512)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

const char *ag_isa_name(int isa) {
    return isa >= 0 && isa < AG_ISA_COUNT ? isa_names[isa] : "unknown";
}

static int detect(void) {
    const char *want = getenv("AG_ISA");
    if (want != NULL)
        for (int i = 0; i < AG_ISA_COUNT; i++)
            if (strcmp(want, isa_names[i]) == 0 && ag_isa_supported(i)) return i;
    for (int i = AG_ISA_COUNT - 1; i > 0; i--)
        if (ag_isa_supported(i)) return i;
    return AG_ISA_BASE;
}

int ag_isa_current(void) {
    int isa = atomic_load_explicit(&current_isa, memory_order_relaxed);
    if (isa < 0) {
        isa = detect();
        atomic_store_explicit(&current_isa, isa, memory_order_relaxed);
    }
    return isa;
}

int ag_isa_force(int isa) {
    if (isa < 0 || isa >= AG_ISA_COUNT || !ag_isa_supported(isa)) return AG_EINVAL;
    atomic_store_explicit(&current_isa, isa, memory_order_relaxed);
    return AG_OK;
}
