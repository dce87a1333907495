/*
 * altgrad.h - the one public header of libaltgrad.
 *
 * Two parts: the quantization core (ExMy formats of 4 to 16 bits, encode/decode,
 * quantize, amax history, scales, bit-stall kernels) and the client that
 * trainers use to stream statistics and gradients to altgradd and to query it.
 * Every function that can fail returns an ag_err code (0 = AG_OK) and
 * ag_strerror() names it. A failed call leaves nothing half-done.
 */
#ifndef ALTGRAD_ALTGRAD_H
#define ALTGRAD_ALTGRAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AG_EXTERN __attribute__((visibility("default")))
#else
#define AG_EXTERN
#endif

#define AG_VERSION_MAJOR 0
#define AG_VERSION_MINOR 2
#define AG_VERSION_PATCH 0
#define AG_VERSION_STRING "0.2.0"

/* ------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------- */
/*
 * The one list of error codes: AG_ERRNO_MAP(XX) calls XX(NAME, value, text)
 * for each. It generates the enum below, ag_strerror() and ag_err_name();
 * python/altgrad/_lib.py's copy is checked against it by a test.
 */
#define AG_ERRNO_MAP(XX)                                                                           \
    XX(OK, 0, "success")                                                                           \
    XX(EINVAL, -1, "invalid argument") /* NULL, zero length, bad value */                          \
    XX(ENOMEM, -2, "out of memory")                                                                \
    XX(EFORMAT, -3, "unknown or impossible format")                                                \
    XX(EEXIST, -4, "a different format is registered under that name")                             \
    XX(ERANGE, -5, "value out of range")                                                           \
    XX(ENOSPC, -6, "table full") /* a fixed-size table */                                          \
    XX(EPROTO, -7, "malformed message")                                                            \
    XX(EVERSION, -8, "unsupported protocol version")                                               \
    XX(ETOOBIG, -9, "message, string or array too large")                                          \
    XX(EAGAIN, -10, "send queue full, message dropped") /* dropped and counted */                  \
    XX(ETIMEDOUT, -11, "timed out")                                                                \
    XX(ECLOSED, -12, "closed")             /* handle closed or shutting down */                    \
    XX(ENOTFOUND, -13, "not found")        /* no such run, tensor or format */                     \
    XX(ETRANSPORT, -14, "transport error") /* nng failure */                                       \
    XX(ESTORE, -15, "database error")                                                              \
    XX(EIO, -16, "I/O error") /* file or system I/O failure */                                     \
    XX(EREMOTE, -17, "the daemon reported an error")                                               \
    XX(ELOST, -18, "messages were lost on the way to the daemon") /* ag_client_flush */

typedef enum ag_err {
#define AG_ERR_ENUM_(name, value, text) AG_##name = value,
    AG_ERRNO_MAP(AG_ERR_ENUM_)
#undef AG_ERR_ENUM_
} ag_err;

/* A static, human-readable description of an ag_err code; never NULL. */
AG_EXTERN const char *ag_strerror(int err);
/* The code's name without its prefix ("EINVAL" for AG_EINVAL), or NULL for a
 * value that is no ag_err. */
AG_EXTERN const char *ag_err_name(int err);
/* Library version string, "MAJOR.MINOR.PATCH". */
AG_EXTERN const char *ag_version(void);

/* ========================================================================
 * Core: formats
 * ======================================================================== */

#define AG_FORMAT_NAME_MAX 15 /* longest format name, without the NUL */
#define AG_FORMATS_MAX 64     /* registry capacity, built-ins included */

/*
 * A sign-magnitude format of 4 to 16 bits: the top bit (bit exponent_bits +
 * mantissa_bits) is the sign, then exponent_bits exponent bits, then
 * mantissa_bits mantissa bits (3 <= exponent_bits + mantissa_bits <= 15).
 * Patterns are passed as uint16_t values; arrays of patterns (ag_encode_array
 * and the rest) hold pattern_bytes bytes per element: one byte for formats
 * of 8 bits or fewer, two (a native-endian uint16_t) for wider ones.
 * Instances live in the registry for the life of the process and are never
 * freed; callers hold const pointers. Fields are read-only for callers.
 * (0.2.0: the 256-entry decode table of 0.1 is gone; use ag_decode.)
 */
typedef struct ag_format {
    char name[AG_FORMAT_NAME_MAX + 1];
    int exponent_bits;
    int mantissa_bits;
    int bias;
    int has_inf;        /* e all ones, m = 0 is +-inf; other m are NaN */
    int has_nan;        /* with has_inf: e all ones, m != 0. Without: only e and m all ones */
    float max_finite;   /* largest finite magnitude */
    float min_positive; /* smallest nonzero magnitude */
    int min_exponent;   /* internal: exponent of the finest grid region */
    int max_exponent;   /* internal: exponent of max_finite */
    int bits;           /* 1 + exponent_bits + mantissa_bits */
    int pattern_bytes;  /* bytes per pattern in arrays: 1 (bits <= 8) or 2 */
    int nan_mode;       /* ag_nan_mode, the same fact as has_inf / has_nan */
    int unscaled;       /* an unscaled twin (ag_format_unscaled): evaluated at scale 1 */
    /* Block scaling (0.3; docs/numerics.md, Block scaling). 0 for a
     * per-tensor format. A block-scaled format (MXFP8_E4M3 ... NVFP4) carries
     * its element format's grid in the fields above. The stall entry points
     * (ag_stall_*, ag_stall_*_multi, ag_block_stall_*) apply its block
     * scales, the scale given being the tensor scale, and so does
     * ag_quant_error_multi; encode, decode, quantize and the flip counts
     * see only the element grid at one scale. */
    int block;                       /* elements per block: 32 (MX), 16 (NVFP4), or 0 */
    const struct ag_format *element; /* the element format (a built-in), or NULL */
    int scale_kind;                  /* ag_scale_kind */
} ag_format;

/* How a block-scaled format's block scale is formed (ag_format.scale_kind). */
typedef enum ag_scale_kind {
    AG_SCALE_TENSOR = 0, /* per-tensor formats: one scale */
    AG_SCALE_E8M0 = 1,   /* MX: 2^(floor(log2(block amax)) - emax), 2^-127..2^127 */
    AG_SCALE_E4M3 = 2,   /* NVFP4: E4M3(block amax / (6 * S)) times the tensor scale S */
} ag_scale_kind;

/* What the all-ones exponent field means (ag_format_define_ex). */
typedef enum ag_nan_mode {
    AG_NAN_NONE = 0,     /* no inf, no NaN: every pattern is finite; overflow saturates */
    AG_NAN_IEEE = 1,     /* e all ones: m = 0 is inf, m != 0 NaN (E5M2, BF16, FP16) */
    AG_NAN_ALL_ONES = 2, /* no inf; NaN only with e and m all ones; overflow saturates
                          * (OCP E4M3, "fn") */
} ag_nan_mode;

/* The seed's five formats E0M7, E1M6, E3M4, E5M2, E7M0, then the built-ins
 * E4M3, E3M2, E2M3, E2M1, BF16, FP16, the block-scaled MXFP8_E4M3, MXFP8_E5M2,
 * MXFP6_E3M2, MXFP6_E2M3, MXFP4, NVFP4 (docs/numerics.md), and any defined
 * later. Name lookup is case-sensitive; NULL if unknown or name is NULL. */
AG_EXTERN const ag_format *ag_format_get(const char *name);
/* Number of registered formats; the first five are the seed's, in order. */
AG_EXTERN size_t ag_format_count(void);
/* The i-th registered format, NULL when i >= ag_format_count(). */
AG_EXTERN const ag_format *ag_format_at(size_t i);
/*
 * Register a further ExMy format. Rejects (AG_EFORMAT) E + M outside 3..15, a
 * name that is empty, too long or not [A-Za-z0-9_-], inf without NaN or
 * without mantissa bits, NaN in a fixed-point format (E = 0), a bias whose
 * grid leaves float32's range (2^(1-bias) below 2^-126, or a largest finite
 * value of 2^128 or more). has_inf and has_nan are the nan mode: (1, 1)
 * AG_NAN_IEEE, (0, 1) AG_NAN_ALL_ONES, (0, 0) AG_NAN_NONE. Defining an
 * identical format again returns the existing one; a different one under a
 * taken name gives AG_EEXIST. A name ending in "-unscaled" names the
 * unscaled twin of its base (ag_format_unscaled): the base's definition, or
 * AG_EFORMAT (no such base) / AG_EEXIST (another definition). Thread-safe.
 */
AG_EXTERN int ag_format_define(const char *name, int exponent_bits, int mantissa_bits, int bias,
                               int has_inf, int has_nan, const ag_format **out);
/* The same with the nan mode named (an ag_nan_mode; others: AG_EFORMAT). */
AG_EXTERN int ag_format_define_ex(const char *name, int exponent_bits, int mantissa_bits, int bias,
                                  int nan_mode, const ag_format **out);
/*
 * Weight storage: the unscaled twin of fmt, the same grid registered as
 * "<name>-unscaled" with unscaled = 1. Wherever a scale rule applies (the
 * daemon's scales, the Python Monitor's device counts) a twin is evaluated at
 * scale 1: "would this update survive in BF16 weights" is BF16-unscaled.
 * The kernels take the scale they are given either way. Created on first
 * use (ag_format_get of the twin's name creates it too when the base is
 * registered); the twin of a twin is itself. AG_ERANGE when the name would
 * pass AG_FORMAT_NAME_MAX, AG_ENOSPC when the registry is full. Thread-safe.
 */
#define AG_UNSCALED_SUFFIX "-unscaled"
AG_EXTERN int ag_format_unscaled(const ag_format *fmt, const ag_format **out);
/* Formats whose width in bits is `bits` (0: all), in registry order: writes
 * at most cap pointers to out (out may be NULL when cap is 0) and returns how
 * many there are. */
AG_EXTERN size_t ag_format_list(int bits, const ag_format **out, size_t cap);

/* ========================================================================
 * Core: encode, decode, quantize
 * ======================================================================== */

/* Nearest pattern, ties to even mantissa (M = 0: to the smaller magnitude);
 * see docs/numerics.md. NULL fmt gives 0. */
AG_EXTERN uint16_t ag_encode(const ag_format *fmt, float x);
/* The value of a pattern (bits above the format's width are ignored); NULL
 * fmt gives NaN. */
AG_EXTERN float ag_decode(const ag_format *fmt, uint16_t bits);
/* out[i] = encode(x[i] / scale). out holds n * fmt->pattern_bytes bytes
 * (uint16_t patterns, native-endian, for formats wider than 8 bits). */
AG_EXTERN int ag_encode_array(const ag_format *fmt, float scale, const float *x, uint8_t *out,
                              size_t n);
/* out[i] = decode(bits[i]) * scale; bits holds n * fmt->pattern_bytes bytes. */
AG_EXTERN int ag_decode_array(const ag_format *fmt, float scale, const uint8_t *bits, float *out,
                              size_t n);
/* out[i] = decode(encode(x[i] / scale)) * scale; out may equal x. Misuse
 * (NULL, n = 0, scale not finite and positive) does nothing; use
 * ag_quantize_checked to learn why. */
AG_EXTERN void ag_quantize(const ag_format *fmt, float scale, const float *x, float *out, size_t n);
AG_EXTERN int ag_quantize_checked(const ag_format *fmt, float scale, const float *x, float *out,
                                  size_t n);
/* out[i] = x[i] * scale; out may equal x. */
AG_EXTERN int ag_dequantize(float scale, const float *x, float *out, size_t n);

/* ========================================================================
 * Core: amax, history, scale
 * ======================================================================== */

/* max |x| over finite elements (0 if none) and the count of NaN/inf ones. */
AG_EXTERN int ag_amax(const float *x, size_t n, float *amax, uint64_t *nonfinite);

/* max(amax / max_finite(fmt), scale_min). NaN for NULL fmt, a negative or
 * NaN amax, or a scale_min that is not finite and positive. */
AG_EXTERN double ag_compute_scale(double amax, const ag_format *fmt, double scale_min);

#define AG_SCALE_MIN 1e-10
#define AG_AMAX_HISTORY_DEFAULT_LEN 16
#define AG_AMAX_HISTORY_MAX_LEN 65536

typedef enum ag_amax_mode {
    AG_AMAX_MAX = 0,        /* maximum over the ring (seed behaviour) */
    AG_AMAX_MOST_RECENT = 1 /* the newest value */
} ag_amax_mode;

typedef struct ag_amax_history ag_amax_history;

/* A ring of the last len amax values (1 <= len <= AG_AMAX_HISTORY_MAX_LEN). */
AG_EXTERN int ag_amax_history_new(ag_amax_history **out, size_t len, ag_amax_mode mode);
AG_EXTERN void ag_amax_history_free(ag_amax_history *h);
/* Push one amax. A NaN, inf or negative value is counted as non-finite and
 * not stored (AG_OK all the same: it is an observation, not misuse). */
AG_EXTERN int ag_amax_history_push(ag_amax_history *h, double amax);
/* Push the amax of x's finite elements and count its non-finite elements.
 * A tensor with no finite element pushes nothing. */
AG_EXTERN int ag_amax_history_update(ag_amax_history *h, const float *x, size_t n);
/* Max (or newest) over the ring; 1.0 when empty or h is NULL. */
AG_EXTERN double ag_amax_history_get(const ag_amax_history *h);
AG_EXTERN size_t ag_amax_history_size(const ag_amax_history *h);     /* values held */
AG_EXTERN size_t ag_amax_history_capacity(const ag_amax_history *h); /* len */
AG_EXTERN uint64_t ag_amax_history_nonfinite(const ag_amax_history *h);
AG_EXTERN void ag_amax_history_reset(ag_amax_history *h);
/* Copy the held values, oldest first, into out[0..cap); *n gets the count.
 * AG_ERANGE if cap is smaller than the count (nothing copied). */
AG_EXTERN int ag_amax_history_values(const ag_amax_history *h, double *out, size_t cap, size_t *n);

/* ========================================================================
 * Core: bit stall, flips
 * ======================================================================== */

#define AG_GRAD_EPSILON 1e-10f /* |g| above this counts in total (SGD form) */

typedef struct ag_stall_counts {
    uint64_t stalled;   /* total elements whose update was lost to rounding */
    uint64_t total;     /* elements meant to move */
    uint64_t overflow;  /* |w / scale| > max_finite */
    uint64_t underflow; /* w != 0 that quantizes to zero */
    uint64_t nonfinite; /* w or g (or u) NaN/inf: excluded from the rest */
} ag_stall_counts;

/* SGD form: u = -lr * g. Adds into *out; 0 on success. scale must be finite
 * and > 0; lr finite. */
AG_EXTERN int ag_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                           const float *g, size_t n, ag_stall_counts *out);
/* Update form: u = w_new - w from any optimizer; total counts u != 0. */
AG_EXTERN int ag_stall_update(const ag_format *fmt, float scale, const float *w, const float *u,
                              size_t n, ag_stall_counts *out);
/* One pass over w and g for nfmt formats at once (1 <= nfmt <= AG_FORMATS_MAX),
 * format i with scales[i], adding into out[i]. Same results as nfmt calls.
 * Block-scaled formats may be among them (scales[i] their tensor scale). */
AG_EXTERN int ag_stall_sgd_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                 float lr, const float *w, const float *g, size_t n,
                                 ag_stall_counts *out);
AG_EXTERN int ag_stall_update_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                    const float *w, const float *u, size_t n, ag_stall_counts *out);
/*
 * Block-scaled formats (fmt->block != 0; docs/numerics.md, Block scaling):
 * what ag_stall_sgd / ag_stall_update (and the _multi pass, beside
 * per-tensor formats) also compute for them: the counts with w and w + u both
 * quantized at the block scale computed from w's block amax. scale is the
 * tensor scale S (finite, > 0): NVFP4's FP32 per-tensor scale; for MX the
 * block scales are computed on w / S (pass 1 for plain MX). Blocks start at
 * element 0; a tail shorter than a block is a block of its own. Adds into
 * *out. AG_EFORMAT for a per-tensor fmt.
 */
AG_EXTERN int ag_block_stall_sgd(const ag_format *fmt, float scale, float lr, const float *w,
                                 const float *g, size_t n, ag_stall_counts *out);
AG_EXTERN int ag_block_stall_update(const ag_format *fmt, float scale, const float *w,
                                    const float *u, size_t n, ag_stall_counts *out);
/* The effective scale of one block of w (len <= fmt->block elements): the
 * float32 divisor its elements are quantized with, X * S for MX, s_b * S for
 * NVFP4 (0 when s_b rounds to 0: the block quantizes to zeros). */
AG_EXTERN int ag_block_scale(const ag_format *fmt, float scale, const float *w, size_t len,
                             float *out);

/* Pattern flips at one scale, the flips altgradd reports (docs/numerics.md):
 * elements whose pattern encode(w[i] / scale) differs from prev[i], where
 * prev holds the previous snapshot encoded at that same scale
 * (ag_encode_array(fmt, scale, w_prev, prev, n)). +0 and -0 count as one
 * pattern, and so do all NaN patterns. A scale that moved between the
 * snapshots does not make elements flip: pass the previous snapshot's scale.
 * Adds into *flips; scale must be finite and > 0. */
AG_EXTERN int ag_count_pattern_flips(const ag_format *fmt, float scale, const uint8_t *prev,
                                     const float *w, size_t n, uint64_t *flips);
/* Value flips: elements whose quantized value decode(prev[i]) * prev_scale
 * differs from decode(cur[i]) * cur_scale (+0 equals -0; NaN equals NaN).
 * When the scales differ nearly every nonzero element counts; altgradd
 * reports ag_count_pattern_flips instead. Adds into *flips. */
AG_EXTERN int ag_count_flips(const ag_format *fmt, const uint8_t *prev, float prev_scale,
                             const uint8_t *cur, float cur_scale, size_t n, uint64_t *flips);
/* (Pattern arrays of both flip functions hold n * fmt->pattern_bytes bytes.) */

/* ========================================================================
 * Core: quantization error
 * ======================================================================== */

/* Sums behind the quantization error of w against Q(w) = quantize(w, fmt,
 * scale), over the finite elements of w (docs/numerics.md): Q saturates
 * (a magnitude past max_finite counts as +-max_finite * scale, also in
 * formats with inf). */
typedef struct ag_quant_error {
    double sq_error;  /* sum of (Q(w) - w)^2 */
    double sq_signal; /* sum of w^2 */
    uint64_t count;   /* finite elements of w */
} ag_quant_error;
/* One pass over w for nfmt formats (1 <= nfmt <= AG_FORMATS_MAX), format i
 * with scales[i], adding into out[i]. A block-scaled format's Q(w) is at
 * its block scales, scales[i] the tensor scale (docs/numerics.md). */
AG_EXTERN int ag_quant_error_multi(const ag_format *const *fmts, const float *scales, size_t nfmt,
                                   const float *w, size_t n, ag_quant_error *out);
/* sq_error / count: the mean squared error; NaN when count is 0. */
AG_EXTERN double ag_quant_mse(const ag_quant_error *e);
/* 10 log10(sq_signal / sq_error) in dB; NaN when either is 0 (an all-zero
 * tensor, or an exact one: no noise to compare with) or count is 0. */
AG_EXTERN double ag_quant_sqnr_db(const ag_quant_error *e);

/* ========================================================================
 * Shared vocabulary: defaults, roles, dtypes, query results
 * ======================================================================== */

/* Where altgradd listens when run from a source tree with no arguments
 * (paths relative to its working directory), and under systemd. */
#define AG_DEFAULT_INGEST_URL "ipc://var/ingest.sock"
#define AG_DEFAULT_QUERY_URL "ipc://var/query.sock"
#define AG_DEFAULT_DB_PATH "var/altgrad.db"
#define AG_SYSTEM_INGEST_URL "ipc:///run/altgrad/ingest.sock"
#define AG_SYSTEM_QUERY_URL "ipc:///run/altgrad/query.sock"
#define AG_SYSTEM_DB_PATH "/var/lib/altgrad/altgrad.db"

#define AG_NAME_MAX 255      /* longest run or tensor name, in bytes */
#define AG_LAUNCH_ID_MAX 128 /* longest launch id, in bytes (printable ASCII) */

typedef enum ag_role {
    AG_ROLE_WEIGHT = 0,
    AG_ROLE_GRADIENT = 1,
    AG_ROLE_ACTIVATION = 2,
    AG_ROLE_UPDATE = 3
} ag_role;
/* "weight", "gradient", "activation", "update"; NULL if out of range. */
AG_EXTERN const char *ag_role_name(int role);
/* The role named s, or -1. */
AG_EXTERN int ag_role_parse(const char *s);

typedef enum ag_dtype { AG_DTYPE_F32 = 0, AG_DTYPE_BF16 = 1, AG_DTYPE_F16 = 2 } ag_dtype;
/* Widen n bfloat16 / float16 values (raw 16-bit patterns) to float32. */
AG_EXTERN int ag_bf16_to_f32(const uint16_t *x, float *out, size_t n);
AG_EXTERN int ag_f16_to_f32(const uint16_t *x, float *out, size_t n);

/*
 * Query results. Every query (client or store) returns one pointer that owns
 * all it points to (arrays, strings); free it with one ag_free() call.
 * Steps are uint64; times are Unix milliseconds; a rate with total 0 is 0.
 */
AG_EXTERN void ag_free(void *result);

/* Defaults every query path shares (client, daemon, CLI, HTTP, store). */
#define AG_DEFAULT_FORMAT "E5M2"                      /* a query naming no format */
#define AG_DEFAULT_FORMATS "E0M7,E1M6,E3M4,E5M2,E7M0" /* the daemon's --formats */
#define AG_TOP_LIMIT_DEFAULT 10                       /* top with limit 0 */
#define AG_TOP_LIMIT_MAX 1000000                      /* larger limits are this */

typedef struct ag_run_info {
    const char *name;
    const char *host;
    int64_t pid;
    uint64_t client_id;
    int64_t started_ms;
    int64_t ended_ms; /* 0 while running */
    uint64_t last_step;
    uint64_t messages;    /* stream messages accepted for this run */
    uint64_t dropped;     /* gaps in sequence numbers, client-side drops, and messages
                              * accepted but not filed (the daemon's state budget full) */
    const char *metadata; /* JSON text as sent at run start, "{}" if none */
    /* Added later (0 / NULL from an older daemon): */
    uint64_t world_size;    /* ranks of the run (its first client's world size) */
    uint64_t ranks_seen;    /* distinct ranks among its clients */
    const char *rank_drops; /* JSON object: rank -> messages dropped, the ranks
                             * with drops only ("{}": none) */
    uint64_t incomplete;    /* (tensor, step)s stored incomplete: not every rank
                             * sent its shard */
} ag_run_info;
typedef struct ag_run_list {
    size_t n;
    ag_run_info *items;
} ag_run_list;

typedef struct ag_tensor_info {
    const char *name;
    int role;       /* ag_role of the latest record */
    uint64_t numel; /* element count of the latest record */
    uint64_t first_step;
    uint64_t last_step;
    uint64_t snapshots; /* gradient snapshots evaluated */
    double last_amax;
} ag_tensor_info;
typedef struct ag_tensor_list {
    size_t n;
    ag_tensor_info *items;
} ag_tensor_list;

/* A result's flips when unknown (counts sent by a trainer that did not count
 * them): JSON shows null, tables and CSV an empty cell, Python None. */
#define AG_FLIPS_UNKNOWN UINT64_MAX

typedef struct ag_history_point {
    uint64_t step; /* with downsampling, the last step of the bucket */
    uint64_t stalled;
    uint64_t total;
    double stall_rate; /* stalled / total, 0 when total is 0 */
    uint64_t flips;    /* AG_FLIPS_UNKNOWN when unknown (in a bucket: when any
                        * of its points' is) */
    uint64_t overflow;
    uint64_t underflow;
    uint64_t nonfinite;
    double amax;          /* the snapshot's weight amax */
    double scale;         /* the scale used for this format at this step */
    const char *computed; /* where: "daemon" (from a snapshot), "device" (counts sent by the
                           * trainer), "mixed" (a bucket of both); NULL from an older daemon */
    /* Added later (0 from an older daemon): ranks that reported the step (a
     * sharded tensor's shards; 1 for a tensor of one rank; a bucket: the
     * fewest of its points) and whether that was all of them (1), or the
     * step is incomplete (0: never the whole tensor; a bucket: any point). */
    uint64_t ranks;
    uint64_t complete;
    /* The quantization error of the snapshot's weights in this format at
     * this scale (docs/numerics.md): mean squared error and SQNR in dB. NaN
     * when unknown (counts from a trainer, rows from before 0.2, a
     * downsampled point, an older daemon; sqnr_db also for an exact or
     * all-zero tensor); JSON null, an empty cell in tables and CSV. */
    double mse;
    double sqnr_db;
} ag_history_point;
typedef struct ag_history {
    const char *run;
    const char *tensor;
    const char *format;
    size_t n;
    ag_history_point *points; /* ascending step */
} ag_history;

typedef struct ag_history_query {
    const char *run;
    const char *tensor;
    const char *format; /* NULL: "E5M2" */
    uint64_t from_step; /* inclusive; 0 = from the start */
    uint64_t to_step;   /* inclusive; 0 = to the end */
    uint64_t every;     /* downsample: sum counts over buckets of this many points; 0/1 = all */
} ag_history_query;

typedef struct ag_scale_info {
    const char *tensor;
    uint64_t step; /* step of the latest scale */
    double amax;   /* history amax the scale came from */
    double scale;
} ag_scale_info;
typedef struct ag_scale_list {
    const char *format;
    size_t n;
    ag_scale_info *items;
} ag_scale_list;

typedef struct ag_top_entry {
    const char *tensor;
    uint64_t stalled; /* summed over the window */
    uint64_t total;
    double stall_rate;
    uint64_t steps; /* snapshots in the window */
} ag_top_entry;
typedef struct ag_top_list {
    const char *format;
    uint64_t from_step; /* the window actually used */
    uint64_t to_step;
    size_t n;
    ag_top_entry *items; /* descending stall_rate, then name */
} ag_top_list;

/* One row of the report query: a weight tensor in one format over its whole
 * run. mean_rate is over every point of the series; max_rate the largest of
 * its points once downsampled to fit the sparkline (history --every K, K a
 * multiple of a rollup tier past width points); last_rate the rate at the
 * run's last step (or the series' last point). The sparkline has
 * min(points, width) columns, each one character U+2581..U+2588 (UTF-8, 3
 * bytes) of level round(rate * 7), the rate of the column's summed counts.
 * last_sqnr_db: the SQNR (dB, docs/numerics.md) of the series' last result
 * row (its last snapshot in this format); NaN when unknown (counts from a
 * trainer, a row from before 0.2, an exact or all-zero tensor, an older
 * daemon). */
typedef struct ag_report_row {
    const char *tensor;
    const char *format;
    uint64_t steps; /* result rows (snapshots) of the tensor in this format */
    double last_rate;
    double mean_rate;
    double max_rate;
    const char *sparkline;
    double last_sqnr_db; /* added in 0.2 */
} ag_report_row;
typedef struct ag_report {
    size_t n;
    ag_report_row *items; /* tensors by name, each in the formats' order */
} ag_report;

typedef struct ag_status {
    const char *version;
    double uptime_s;      /* 0 when read from a database file */
    uint64_t messages;    /* stream messages accepted */
    uint64_t bytes;       /* stream bytes received */
    uint64_t rejected;    /* malformed / oversized / bad version */
    uint64_t dropped;     /* sequence gaps and client-reported drops */
    uint64_t queue_depth; /* rows waiting for the writer */
    uint64_t rows_written;
    uint64_t runs;
    uint64_t tensors;
    const char *db_path;
    const char *formats; /* comma-separated formats evaluated by default */
    /* The store's health, live from the daemon: "ok", or "degraded: " and why
     * (the disk refuses writes; the daemon keeps the rows, retries and pushes
     * back on ingest). NULL when read from a database file. */
    const char *store;
    uint64_t discarded; /* rows the daemon gave up (the store refused them for
                              * good, or still failed at stop); never silent */
    /* The daemon's scale rule (docs/numerics.md), so a trainer that computes
     * counts itself (ag_client_log_counts) can use the same scales: amax
     * history length, "max" or "most_recent" over it, "current" (a step's own
     * amax is in the history for its scale) or "delayed", the margin (scale *
     * 2^margin; the daemon accepts fractional margins) and the smallest scale.
     * Read from a file: as that daemon recorded them at its start. 0 / NULL
     * when unknown (an older daemon or file). */
    uint64_t history_len;
    const char *amax_mode;
    const char *scale_mode;
    double margin;
    double scale_min;
    /* AG_CAP_* the daemon has (0 from an older daemon, or a file). Added at
     * the end in 0.2.0. */
    uint64_t caps;
    /* Clients' shared-memory segments (PROTOCOL.md 3.3): mapped now, of
     * those passed over the descriptor socket (trainers of any user), the
     * snapshots whose arrays were read from a segment and the segments
     * refused since the daemon started. 0 from an older daemon, or a file.
     * Added at the end in 0.2.0. */
    uint64_t shm_segments;
    uint64_t shm_passed;
    uint64_t shm_snapshots;
    uint64_t shm_refused;
} ag_status;
/* Capabilities (ag_status.caps, PROTOCOL.md r_run / r_status). */
#define AG_CAP_BUNDLE 1u /* it takes bundles of stream messages */
#define AG_CAP_QERR 2u   /* it reads counts results with mse and sqnr_db (9 values) */
#define AG_CAP_SHM                                                                                 \
    4u /* r_run only: it can map this client's shared-memory segment (the
                          * asker runs as its user on its machine: PROTOCOL.md 3.3.1) */

/*
 * The keys of each result as the documents show it (altgrad --json, CSV and
 * table columns, the daemon's HTTP API, the Python layer's dicts), in
 * order: for the list results, the keys of one row (an item of runs,
 * tensors, history points, scales or top); for AG_RESULT_STATUS, the keys
 * of its record. Each key is also the name of the C member that holds the
 * value (ag_run_info.name, ag_status.uptime_s, ...). Fields a document adds
 * beside the result (status's "source" and "address", the "run" of
 * tensors, ...) are not listed.
 */
typedef enum ag_result {
    AG_RESULT_RUNS = 0,    /* ag_run_info */
    AG_RESULT_TENSORS = 1, /* ag_tensor_info */
    AG_RESULT_HISTORY = 2, /* ag_history_point */
    AG_RESULT_SCALES = 3,  /* ag_scale_info */
    AG_RESULT_TOP = 4,     /* ag_top_entry */
    AG_RESULT_STATUS = 5,  /* ag_status */
    AG_RESULT_REPORT = 6   /* ag_report_row */
} ag_result;
/* The i-th key (from 0) of result (an ag_result); NULL past the last key
 * or for an unknown result. A static string: never free it. */
AG_EXTERN const char *ag_result_key(int result, size_t i);

/* ========================================================================
 * Client (see client/ and proto/PROTOCOL.md)
 * ======================================================================== */

typedef struct ag_client ag_client;

/* What a logging call does when the send queue is full. */
typedef enum ag_queue_policy {
    AG_QUEUE_DROP = 0, /* drop the message, count it, return AG_EAGAIN (default: never stalls) */
    AG_QUEUE_BLOCK = 1 /* wait for room (lossless; stalls while the daemon is away) */
} ag_queue_policy;

/* A zero-initialised struct means defaults everywhere. */
typedef struct ag_client_opts {
    const char *ingest_url;  /* NULL: $ALTGRAD_INGEST, else the daemon's default */
    const char *query_url;   /* NULL: $ALTGRAD_QUERY, else the daemon's default */
    const char *run;         /* the run name asked for; NULL: "run-<host>-<pid>-<time>".
                             * The daemon may file the run as run.2, run.3 ...
                             * (see resume, launch_id and ag_client_run) */
    const char *metadata;    /* JSON object sent with run start (<= 64 KiB); NULL: "{}" */
    int policy;              /* ag_queue_policy */
    size_t queue_messages;   /* messages the send queue holds; 0: 1024 */
    size_t queue_bytes;      /* bytes the send queue holds; 0: 256 MiB */
    size_t batch_bytes;      /* a stats batch is queued once this big; 0: 64 KiB */
    int flush_interval_ms;   /* a partial stats batch waits at most this long; 0: 10 */
    int query_timeout_ms;    /* a query without a reply by then fails AG_ETIMEDOUT; 0: 5000 */
    int close_timeout_ms;    /* how long ag_client_close waits to flush; 0: 2000 */
    int reconnect_ms;        /* first redial delay after the daemon goes away; 0: 100 */
    uint64_t snapshot_every; /* log snapshots only at steps that are multiples; 0/1: all */
    size_t sample_max;       /* snapshots of larger tensors send a fixed subset of this
                             * many elements (the same every step); 0: whole tensors */
    uint64_t sample_seed;    /* seed of that subset; 0: a fixed default */
    /* Fields below were added later; zero still means the default. */
    int resume;            /* nonzero: continue the latest run of this name (the newest
                             * of run, run.2, ...) instead of starting a new one when
                             * the name is taken; 0: a new run (run.2 ... if taken) */
    const char *launch_id; /* the launch this client belongs to: clients of one launch
                             * asking for one run name share the run (the ranks of one
                             * distributed job). 1..AG_LAUNCH_ID_MAX bytes of printable
                             * ASCII. NULL: $TORCHELASTIC_RUN_ID (torchrun's run id) if
                             * set, else $ALTGRAD_LAUNCH_ID, else one unique to this
                             * client (see ag_client_launch_id) */
    /* This client's place in a distributed job: rank in 0..world_size-1,
     * world_size in 1..AG_WORLD_MAX. world_size 0: both from $RANK and
     * $WORLD_SIZE (torchrun sets them) when $WORLD_SIZE is set, else rank 0
     * of 1; rank is then ignored. Tensors that several ranks of one run log
     * at one step are the shards of one tensor (docs/daemon.md, "Ranks");
     * mark those every rank holds whole as replicated. */
    int rank;
    int world_size;
    /* TLS: for tls+tcp:// URLs (docs/daemon.md, "Many nodes"); ignored for
     * ipc:// and tcp://. Paths of PEM files, read and checked at open. */
    const char *tls_cert;        /* this client's certificate, which the daemon checks
                                  * against its --tls-ca; NULL: $ALTGRAD_TLS_CERT, else
                                  * none (a daemon requiring one refuses the client) */
    const char *tls_key;         /* its private key, unencrypted; NULL: $ALTGRAD_TLS_KEY */
    const char *tls_ca;          /* the CA the daemon's certificate must chain to (required
                                  * for tls+tcp://); NULL: $ALTGRAD_TLS_CA */
    const char *tls_server_name; /* the name the daemon's certificate must carry; NULL:
                                  * $ALTGRAD_TLS_SERVER_NAME, else the URL's host */
    /* Snapshots through shared memory (docs/client.md): with an ipc://
     * ingest URL, snapshot arrays are written into a segment of this many
     * bytes that the daemon maps (when it runs as the same user), instead of
     * being sent through the socket; a snapshot that does not fit its free
     * part is sent as before. 0: 64 MiB; AG_SHM_OFF: never. At least 68 KiB,
     * at most 16 GiB. */
    size_t shm_bytes;
} ag_client_opts;

#define AG_SHM_OFF ((size_t)-1)    /* ag_client_opts.shm_bytes: no shared memory */
#define AG_SHM_DEFAULT (64u << 20) /* ... 0: this many bytes */

#define AG_WORLD_MAX 65536 /* ranks of one run */

/*
 * Open a client. Does not wait for the daemon: sockets dial in the background
 * and redial by themselves (the check below takes microseconds, at most
 * 0.2 s per URL when a tcp host is silent). The run starts (run_start is
 * queued) with the first logging call or ag_client_start_run, so a client
 * used only for queries creates no run.
 *
 * When no daemon is found at the ingest or the query URL (an ipc:// socket
 * that does not exist or refuses connections; a tcp:// address that refuses
 * them at once), open prints one line to stderr saying so, naming the socket
 * and where else it looked, e.g. "altgrad: no daemon at ipc://var/ingest.sock:
 * ./var/ingest.sock not found (in /home/me/proj) ..."; it still succeeds.
 *
 * Which run it is: the daemon files a run start under the name asked for,
 * unless that name belongs to a run of another launch (ended or not): then
 * under name.2 (name.3, ... the first free one). A client whose launch
 * already has a run for that name joins it; with resume it continues the
 * newest run of that name. The daemon says which name it used; the client
 * asks as soon as run_start went out, and ag_client_run returns the answer.
 *
 * AG_EINVAL for a bad option (name or launch id empty or not allowed,
 * metadata not a JSON object, rank or world_size out of range (given or
 * from $RANK / $WORLD_SIZE), a TLS file that is no PEM certificate or key,
 * a key not matching its certificate, a tls+tcp:// URL without a CA),
 * AG_EIO for a TLS file that cannot be read, AG_ETOOBIG for a name or launch
 * id over its limit, AG_ETRANSPORT when a URL cannot be used. After a failed
 * open, ag_client_last_error(NULL) says why in one line on that thread
 * (e.g. "tls_key /etc/k.pem: the key does not match the certificate in ...",
 * or "$RANK is not a number ...").
 */
AG_EXTERN int ag_client_open(ag_client **out, const ag_client_opts *opts);

/*
 * Logging. Every call validates its arguments (AG_EINVAL: NULL, n = 0,
 * non-finite lr, bad role; AG_ETOOBIG: a name over AG_NAME_MAX; AG_EFORMAT: a
 * format the library does not know), then queues and returns; it never waits
 * on the daemon under AG_QUEUE_DROP. AG_EAGAIN: the queue was full and the
 * message was dropped (counted, and reported to the daemon in the next
 * message). AG_ECLOSED after ag_client_end_run. Safe from several threads.
 */
/* A float32 snapshot in SGD form (update = -lr * g), evaluated in the daemon's
 * default formats with scales from its amax history. */
AG_EXTERN int ag_client_log_sgd(ag_client *c, uint64_t step, const char *tensor, const float *w,
                                const float *g, size_t n, float lr);
/* A float32 snapshot in update form: u = w_new - w from any optimizer. */
AG_EXTERN int ag_client_log_update(ag_client *c, uint64_t step, const char *tensor, const float *w,
                                   const float *u, size_t n);

/* Snapshot and counts forms. */
typedef enum ag_snapshot_form {
    AG_FORM_SGD = 0,   /* w and g with lr: u = -lr * g */
    AG_FORM_UPDATE = 1 /* w and u = w_new - w */
} ag_snapshot_form;

/* The general snapshot: any dtype, an explicit scale, a list of formats. */
typedef struct ag_snapshot {
    uint64_t step;
    const char *tensor;
    int dtype;     /* ag_dtype of w and g/u (raw 16-bit patterns for bf16/f16) */
    const void *w; /* n elements */
    const void *g; /* gradients (SGD form), or NULL when u is given */
    const void *u; /* update (update form), or NULL when g is given */
    size_t n;
    float lr;                   /* SGD form: finite */
    double scale;               /* > 0: use this scale for every format; 0: the daemon's */
    const char *const *formats; /* NULL: the daemon's defaults; each must be known here
                                 * ("BF16-unscaled": BF16 at scale 1, whatever scale says) */
    size_t nformats;            /* <= AG_FORMATS_MAX */
    /* 0: the tensor has n elements. Else w and g/u hold n of the tensor's
     * numel elements (>= n), a subset the caller took (e.g. on a GPU, before
     * copying); the daemon files numel as the tensor's size. */
    uint64_t numel;
    /* Nonzero: every rank holds this tensor whole (DDP, parameters FSDP or
     * tensor parallelism replicate): counted once, whichever rank sends it,
     * not waiting for the others. 0: with world_size > 1, this rank's shard
     * of the tensor. */
    int replicated;
} ag_snapshot;
AG_EXTERN int ag_client_log_snapshot(ag_client *c, const ag_snapshot *s);

/*
 * Stall counts computed by the caller (on the device where the tensors live,
 * with the daemon's scale rule: ag_status), for many tensors at one step:
 * the daemon stores them as it stores its own results (history computed
 * "device") and feeds each tensor's amax history. Checked like the daemon
 * checks them: names, 1..AG_FORMATS_MAX known formats, numel in 1..INT64_MAX,
 * amax finite and >= 0, nonfinite <= numel, scales finite and > 0 as float,
 * stalled <= total <= numel, overflow, underflow, nonfinite and flips <=
 * numel (flips -1: unknown). Sent in messages of at most AG_COUNTS_ITEMS_MAX
 * tensors, each queued like a snapshot (a full queue under AG_QUEUE_DROP
 * drops a message: AG_EAGAIN once the rest were queued).
 */
#define AG_COUNTS_ITEMS_MAX 4096 /* tensors per counts message */
#define AG_COUNTS_PER_RESULT 5   /* stalled, total, overflow, underflow, nonfinite */
typedef struct ag_counts_batch {
    uint64_t step;
    int form; /* AG_FORM_SGD or AG_FORM_UPDATE */
    size_t ntensors, nformats;
    const char *const *tensors; /* [ntensors] */
    const char *const *formats; /* [nformats] */
    const uint64_t *numel;      /* [ntensors] */
    const double *amax;         /* [ntensors] finite max |w| */
    const uint64_t *nonfinite;  /* [ntensors] non-finite elements of w */
    const float *scales;        /* [ntensors * nformats], tensor-major */
    const uint64_t
        *counts; /* [ntensors * nformats * 5]: stalled, total, overflow, underflow, nonfinite */
    const int64_t *flips; /* NULL (all unknown), or [ntensors * nformats], -1 = unknown */
    /* NULL: none; else [ntensors], nonzero for a tensor every rank holds
     * whole (counted once: ag_snapshot.replicated). Unmarked tensors of a
     * run with world_size > 1 are this rank's shards, counted with the
     * scale of the whole tensor (the same on every rank). */
    const uint8_t *replicated;
    /* The quantization error of w (docs/numerics.md), each NULL (all
     * unknown) or [ntensors * nformats], tensor-major, NaN = unknown: mse
     * finite and >= 0, sqnr_db finite and given only beside an mse > 0;
     * neither for a tensor with no finite element (AG_EINVAL). Sent as
     * counts results of 9 values, which only a daemon whose ag_status.caps
     * has AG_CAP_QERR reads (an older one refuses the message). Added at the
     * end in 0.2.0: zero-initialise the batch (designated initialisers). */
    const double *mse;
    const double *sqnr_db;
} ag_counts_batch;
AG_EXTERN int ag_client_log_counts(ag_client *c, const ag_counts_batch *b);

/* Statistics of one tensor (amax over finite elements and the non-finite
 * count are computed here, so the values never cross the wire). */
AG_EXTERN int ag_client_log_stats(ag_client *c, uint64_t step, const char *tensor, int role,
                                  const float *x, size_t n);
/* The same for float32, bfloat16 or float16 data (ag_dtype). */
AG_EXTERN int ag_client_log_stats_typed(ag_client *c, uint64_t step, const char *tensor, int role,
                                        int dtype, const void *x, size_t n);
/* Statistics computed by the caller: amax finite and >= 0, nonfinite <= numel. */
AG_EXTERN int ag_client_log_amax(ag_client *c, uint64_t step, const char *tensor, int role,
                                 double amax, uint64_t numel, uint64_t nonfinite);

/* Queue run_end (with the highest step logged); later logging calls fail
 * AG_ECLOSED. ag_client_close does it when the caller did not. */
AG_EXTERN int ag_client_end_run(ag_client *c);

/*
 * Delivery. A message handed to the transport may still never arrive (it can
 * sit in the buffer of a connection nobody reads, or die with the daemon), so
 * a message counts as delivered only once the daemon confirms it: flush and
 * close ask the daemon (the q_delivery query on the query URL) how many of
 * this client's messages it has stored, i.e. committed to its database.
 *
 * ag_client_flush: queues the open statistics batch, waits until every
 * message queued before the call was handed to the transport, then until the
 * daemon confirms it stored them all, asking every few milliseconds (each ask
 * bounded by query_timeout_ms). 0 when the daemon confirmed every one of them;
 * AG_ETRANSPORT at once when there is no daemon at the ingest URL (no socket,
 * connection refused; ag_client_last_error says where it looked);
 * AG_ETIMEDOUT when that did not happen within timeout_ms (< 0: wait without
 * limit): still queued, in transit, or a daemon not answering;
 * AG_ELOST at once when the daemon confirmed a later message but not all
 * earlier ones, so those will never arrive; AG_EREMOTE / AG_EPROTO when the
 * daemon cannot answer delivery queries (text in ag_client_last_error);
 * AG_ECLOSED when the client is being closed. Either way
 * ag_client_stats.undelivered then says how many are not confirmed.
 */
AG_EXTERN int ag_client_flush(ag_client *c, int timeout_ms);
/*
 * Ends the run (queues run_end), flushes with a bounded wait (close_timeout_ms,
 * delivery confirmation included), then frees everything; what is still
 * queued is dropped. Returns how many messages were not confirmed delivered:
 * every message that entered the send queue (each has a sequence number: run
 * start, statistics batches, snapshots, run end) and that the daemon did not
 * confirm before close returned: dropped at close because still queued,
 * dropped on a transport error, or sent but unconfirmed (lost, or no daemon
 * answered within close_timeout_ms: then everything unconfirmed counts).
 * Messages refused with AG_EAGAIN (queue full) never entered the queue: they
 * are counted in ag_client_stats.dropped, and reported to the daemon, but not
 * here. 0 for NULL, and for a client that never logged anything.
 * Threads still inside a call on c (blocked on a full queue, flushing,
 * querying, encoding a snapshot) are woken, get AG_ECLOSED and have left
 * before the free; calls must not start once close has begun.
 * After fork() the child's copy of a handle is refused: every call returns
 * AG_ECLOSED and close frees nothing (the threads and sockets are the
 * parent's) and returns 0; open a new client in the child.
 */
AG_EXTERN int64_t ag_client_close(ag_client *c);

/* Fields are only ever appended at the end. */
typedef struct ag_client_stats {
    uint64_t queued;          /* messages waiting in the send queue now */
    uint64_t sent;            /* messages handed to the transport */
    uint64_t dropped;         /* messages dropped: queue full, or left over at close */
    uint64_t records;         /* statistics records logged */
    uint64_t records_dropped; /* of those, records inside dropped messages */
    uint64_t snapshots;       /* snapshots queued */
    uint64_t skipped;         /* snapshots skipped by snapshot_every */
    uint64_t bytes_sent;
    uint64_t delivered;     /* messages the daemon confirmed it stored, as of the
                             * last confirmation (flush, close) */
    uint64_t undelivered;   /* messages queued (with a sequence number) and not
                             * confirmed: still queued, in transit, awaiting a
                             * flush to confirm them, or lost */
    uint64_t shm_snapshots; /* of snapshots, those whose arrays went through shared
                             * memory (ag_client_opts.shm_bytes) */
} ag_client_stats;
AG_EXTERN int ag_client_get_stats(ag_client *c, ag_client_stats *out);
/*
 * Start the run now, as the first logging call would (run_start is queued
 * once), and wait at most timeout_ms (< 0: without limit) until the daemon
 * says which run it files this client's messages under. AG_OK: the name is
 * known (ag_client_run). AG_ETRANSPORT at once when there is no daemon at the
 * query URL (ag_client_last_error says where it looked). AG_ETIMEDOUT: no
 * answer yet (a slow daemon). Either way logging goes on and the client keeps
 * asking in the background.
 * AG_ECLOSED: the run was ended before it started, or the client is closing.
 * AG_EVERSION / AG_EREMOTE / AG_EPROTO: the daemon cannot say (an older
 * daemon); ag_client_run keeps the name asked for.
 */
AG_EXTERN int ag_client_start_run(ag_client *c, int timeout_ms);
/* This client's random id. */
AG_EXTERN uint64_t ag_client_id(const ag_client *c);
/* The run's name: the one the daemon filed the run under once it said so
 * (ag_client_start_run waits for that), else the one asked for. Never waits.
 * Valid until close. */
AG_EXTERN const char *ag_client_run(const ag_client *c);
/* The launch id this client sends (given, from the environment, or
 * generated at open). Valid until close. */
AG_EXTERN const char *ag_client_launch_id(const ag_client *c);
/* This client's rank and world size (given, from $RANK / $WORLD_SIZE, or 0
 * and 1); -1 for NULL. */
AG_EXTERN int ag_client_rank(const ag_client *c);
AG_EXTERN int ag_client_world_size(const ag_client *c);
/* The URLs in use, as resolved at open (option, environment, default). */
AG_EXTERN const char *ag_client_ingest_url(const ag_client *c);
AG_EXTERN const char *ag_client_query_url(const ag_client *c);

/*
 * Queries (REQ/REP). Results are freed with one ag_free(). AG_ENOTFOUND for
 * an unknown run/tensor/format; AG_ETRANSPORT at once (no waiting) when no
 * daemon is there: while the client has no connection, each query first
 * checks the query URL (an ipc:// socket missing, or refusing connections; a
 * tcp:// address refusing them, or silent for 1 s), and ag_client_last_error
 * names the socket, why, and where else it looked ("no daemon at
 * ipc://var/query.sock: ./var/query.sock not found (in /home/me) ...");
 * AG_ETIMEDOUT when a daemon is there but does not answer within
 * query_timeout_ms; AG_EREMOTE for any other error the daemon reports (its
 * text in ag_client_last_error). window = most recent steps (0 = all);
 * limit 0 = 10; format NULL = "E5M2".
 */
AG_EXTERN int ag_client_runs(ag_client *c, ag_run_list **out);
AG_EXTERN int ag_client_tensors(ag_client *c, const char *run, ag_tensor_list **out);
AG_EXTERN int ag_client_history(ag_client *c, const ag_history_query *q, ag_history **out);
AG_EXTERN int ag_client_scales(ag_client *c, const char *run, const char *format,
                               ag_scale_list **out);
AG_EXTERN int ag_client_top(ag_client *c, const char *run, const char *format, uint64_t window,
                            size_t limit, ag_top_list **out);
AG_EXTERN int ag_client_status(ag_client *c, ag_status **out);
/* Every weight tensor of a run in every format of formats (a comma-separated
 * list; NULL: those the daemon evaluates, and a format a tensor has no rows
 * in is left out) with its stall rates and a sparkline of width columns
 * (0: 40; at most AG_REPORT_WIDTH_MAX): what `altgrad report` prints. */
#define AG_REPORT_WIDTH_DEFAULT 40
#define AG_REPORT_WIDTH_MAX 1000
AG_EXTERN int ag_client_report(ag_client *c, const char *run, const char *formats, size_t width,
                               ag_report **out);
/* The daemon's error text (or a local explanation) for the last failed query
 * on this thread with this handle, or "". With c NULL: why the last
 * ag_client_open on this thread failed, or "". A flush that failed leaves its
 * reason here too: why messages stayed queued (e.g. "no daemon at
 * ipc://var/ingest.sock: ./var/ingest.sock (in /home/me) not found ..."), or
 * what its last ask for confirmation got. With c NULL: why the last failed
 * ag_client_open on this thread failed, where it said ("$RANK is not a
 * number ..."), else "". */
AG_EXTERN const char *ag_client_last_error(const ag_client *c);

#ifdef __cplusplus
}
#endif
#endif /* ALTGRAD_ALTGRAD_H */
