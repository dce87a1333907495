/*
 * proto.h - internal: the altgrad wire protocol codec (spec: proto/PROTOCOL.md).
 * One msgpack map per nng message. Shared by the client library (encodes the
 * stream, decodes replies) and the daemon (decodes the stream and queries,
 * encodes replies). Decoding validates strictly and never trusts the sender.
 */
/* AG_PROTO_HEADER_STABLE */
#ifndef AG_PROTO_PROTO_H
#define AG_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad/altgrad.h"
#include "core/errctx.h"
#include "proto/queries.h"

/* The version we speak, and the oldest one a receiver still accepts (a
 * version-1 sender is an older libaltgrad: PROTOCOL.md section 6). */
#define AG_PROTO_VERSION 2
#define AG_PROTO_VERSION_MIN 1

/* Limits (PROTOCOL.md section "Limits"); the encoder enforces them too. */
#define AG_PROTO_MAX_MESSAGE (256u * 1024u * 1024u)  /* bytes in one nng message */
#define AG_PROTO_MAX_RECORDS 65536u                  /* records in one stats batch */
#define AG_PROTO_MAX_FORMATS 64u                     /* formats named in one snapshot */
#define AG_PROTO_MAX_METADATA 65536u                 /* bytes of run metadata (JSON) */
#define AG_PROTO_MAX_ERROR_TEXT 1024u                /* bytes of an error reply's text */
#define AG_PROTO_MAX_ITEMS 1048576u                  /* items in one query reply list */
#define AG_PROTO_MAX_DEPTH 8                         /* nesting of skipped unknown values */
#define AG_PROTO_MAX_TEXT 4096u                      /* status version/db_path/formats */
#define AG_PROTO_MAX_BUNDLE 4096u                    /* messages in one bundle (t = 6) */
#define AG_PROTO_MAX_COUNT_ITEMS AG_COUNTS_ITEMS_MAX /* tensors in one counts message */
#define AG_PROTO_MAX_WORLD 65536u                    /* ranks of one run (run_start world) */

/* Each query of proto/queries.h is a request type AG_MSG_Q_<NAME> = q,
 * client -> daemon, and its reply AG_MSG_R_<NAME> = q + 16, daemon -> client
 * (q_run and q_delivery are version 2: which run a client's messages are
 * filed under, and how many of them are stored). */
#define AG_MSG_QR_(NAME, name, q, result, flags, answer)                                           \
    AG_MSG_Q_##NAME = q, AG_MSG_R_##NAME = q + 16,

/* Message types: the "t" key of every message. */
typedef enum ag_msg_type {
    AG_MSG_NONE = 0,
    /* stream: trainer -> daemon over PUSH/PULL */
    AG_MSG_RUN_START = 1,
    AG_MSG_STATS = 2,
    AG_MSG_SNAPSHOT = 3,
    AG_MSG_RUN_END = 4,
    AG_MSG_COUNTS = 5, /* version 2, added later: counts computed by the trainer */
    AG_MSG_BUNDLE = 6, /* version 2, added later: stream messages in one (bundle.c) */
    /* queries: client -> daemon over REQ/REP */
    AG_QUERY_LIST(AG_MSG_QR_) /* AG_MSG_Q_<NAME> = q and its reply AG_MSG_R_<NAME> */
    AG_MSG_R_ERROR = 63
} ag_msg_type;

/* A name such as "run_start"; "unknown" for anything else. */
const char *ag_proto_type_name(int type);
/* 1 for stream types (1..5), 0 otherwise. */
int ag_proto_is_stream(int type);

/* The item columns to send in a reply of reply_type to a request that
 * asked for `asked` (q_history's `cols`): min(asked, the columns this codec
 * knows); for asked = 0 (a requester that predates `cols`), the columns of
 * that reply before any was added (PROTOCOL.md section 6). 0 for a reply
 * without items. */
size_t ag_proto_reply_cols(int reply_type, uint64_t asked);

/* Bytes per element of an ag_dtype; 0 if unknown. */
size_t ag_proto_dtype_size(int dtype);

/* Every stream message carries these. seq and dropped are written as fixed
 * 9-byte uint64 at the very end of the message so a queue can patch them
 * (ag_proto_patch_seq). dropped is cumulative: messages this client dropped
 * before sending, since it started. */
typedef struct ag_stream_hdr {
    const char *run; /* 1..AG_NAME_MAX bytes */
    uint64_t client_id;
    uint64_t seq; /* 0 for run_start, then +1 per message queued */
    uint64_t dropped;
} ag_stream_hdr;

typedef struct ag_msg_run_start {
    const char *host; /* 0..AG_NAME_MAX bytes */
    int64_t pid;
    int64_t time_ms;      /* Unix ms at the client */
    const char *metadata; /* JSON object text, <= AG_PROTO_MAX_METADATA; NULL = "{}" */
    const char *launch;   /* launch id (ag_proto_launch_id_ok); NULL = none (a launch of its own) */
    int resume;           /* 1: continue the latest run of that name */
    /* The client's place in a distributed job (PROTOCOL.md 3.1): rank in
     * 0..world-1, world in 1..AG_PROTO_MAX_WORLD. Encode: world 0 or 1 sends
     * neither key. Decode: absent keys give rank 0, world 1; a world key of 0
     * or a rank outside the world is malformed. */
    uint64_t rank;
    uint64_t world;
} ag_msg_run_start;

typedef struct ag_stat_record {
    uint64_t step;
    const char *tensor; /* 1..AG_NAME_MAX bytes */
    int role;           /* ag_role */
    double amax;        /* finite, >= 0: max |x| over finite elements */
    uint64_t numel;
    uint64_t nonfinite; /* <= numel */
} ag_stat_record;

typedef struct ag_msg_stats {
    size_t n; /* 1..AG_PROTO_MAX_RECORDS */
    const ag_stat_record *records;
} ag_msg_stats;

/*
 * A snapshot's shared-memory key (PROTOCOL.md 3.3.1): the sender's segment
 * (proto/shm.h) and, with has_at, where in it the arrays are. token 0: no
 * key. mark: every record of the segment ending at or below it was sent
 * before this message (or never will be), so the reader may release it.
 */
typedef struct ag_msg_shm {
    uint64_t token; /* != 0: the segment's, also in its header */
    uint64_t fd;    /* the sender's descriptor of it (<= INT32_MAX) */
    uint64_t size;  /* its bytes, header included */
    uint64_t mark;
    uint64_t at; /* has_at: the position of w (x follows), record bounds checked */
    int has_at;  /* 1: the arrays are in the segment and `data` is absent */
} ag_msg_shm;

typedef struct ag_msg_snapshot {
    uint64_t step;
    const char *tensor;
    int dtype;      /* ag_dtype */
    int form;       /* ag_snapshot_form */
    double lr;      /* finite; required for AG_FORM_SGD, 0 otherwise */
    uint64_t n;     /* elements sent per array, >= 1 */
    uint64_t numel; /* elements of the whole tensor (>= n; > n when sampled) */
    int has_scale;
    double scale;               /* when has_scale: finite, > 0 */
    int replicated;             /* 1: every rank holds the whole tensor (count it once) */
    size_t nformats;            /* 0 = the daemon's default formats */
    const char *const *formats; /* names, each 1..AG_FORMAT_NAME_MAX of [A-Za-z0-9_-];
                                 * right after nformats (the codec's K_FMTS) */
    /* Raw little-endian arrays of n elements of dtype. Decoded: pointers into
     * the message buffer (no copy), w then x contiguous; 8-byte aligned
     * relative to the buffer when the sender padded (our encoder always does).
     * Check alignment before reading them as float (ag_proto_aligned). */
    const void *w;
    const void *x; /* g (SGD form) or u (update form) */
    ag_msg_shm shm;
    /* Not on the wire: set by a receiver that pointed w and x into a
     * sender's segment, which the sender may still write; such arrays are
     * copied before they are read twice. */
    int remote;
} ag_msg_snapshot;

/*
 * One step's stall counts of many tensors, computed where the tensors live
 * (PROTOCOL.md 3.5); the arrays of ag_counts_batch (altgrad.h), for the
 * items of one message. Decoded: arrays in the message's bump block; flips
 * then always set (-1 where the message had nil).
 */
typedef struct ag_msg_counts {
    uint64_t step;
    int form;                   /* ag_snapshot_form */
    size_t nformats;            /* 1..AG_PROTO_MAX_FORMATS */
    const char *const *formats; /* right after nformats (the codec's K_FMTS) */
    size_t n;                   /* items (tensors): 1..AG_PROTO_MAX_COUNT_ITEMS */
    const char *const *tensors; /* [n] names */
    const uint64_t *numel;      /* [n] 1..INT64_MAX */
    const double *amax;         /* [n] finite, >= 0 */
    const uint64_t *nonfinite;  /* [n] <= numel */
    const float *scales;        /* [n * nformats] finite, > 0 */
    const uint64_t *counts;     /* [n * nformats * AG_COUNTS_PER_RESULT] */
    const int64_t *flips; /* NULL (all unknown) or [n * nformats]: -1 unknown, else <= numel */
    /* NULL (none), or [n] 0/1: items every rank holds whole (count once).
     * On the wire `repl`, the ascending indexes of the items marked 1. */
    const uint8_t *replicated;
    /* The quantization error of w per result (docs/numerics.md): NULL (all
     * unknown) or [n * nformats], NaN unknown. mse finite >= 0, sqnr_db
     * finite, known only with mse > 0; neither for an item with no finite
     * element. Results go out as 9 values when either array is set, else 7.
     * Decoded: both always set (NaN where the message had nil or 7 values). */
    const double *mse;
    const double *sqnr_db;
} ag_msg_counts;

/* Check c as encoder, decoder and client do (any n >= 1: the item limit
 * per message is the encoder's). AG_OK, or AG_EINVAL / AG_ETOOBIG with
 * *why saying what is wrong. */
int ag_proto_counts_check(const ag_msg_counts *c, const char **why);
/* One result's mse and sqnr_db (NaN: unknown) as ag_proto_counts_check and
 * the decoder take them, for an item of numel elements, nonfinite of them
 * not finite: AG_OK or AG_EINVAL with *why. */
int ag_proto_qerr_ok(uint64_t numel, uint64_t nonfinite, double mse, double sqnr_db,
                     const char **why);

typedef struct ag_msg_run_end {
    uint64_t step; /* last step logged */
    int64_t time_ms;
} ag_msg_run_end;

/* The arguments of every query type; unused fields are 0/NULL. */
typedef struct ag_msg_query {
    const char *run;     /* tensors, history, scales, top */
    const char *tensor;  /* history */
    const char *format;  /* history (NULL = "E5M2"), scales, top (NULL = "E5M2") */
    uint64_t from_step;  /* history */
    uint64_t to_step;    /* history */
    uint64_t every;      /* history */
    uint64_t window;     /* top: most recent steps, 0 = all */
    uint64_t limit;      /* top: 0 = 10 */
    uint64_t client_id;  /* run: the client asked about */
    uint64_t cols;       /* history: item columns the requester reads; 0: those of a
                         * requester that predates the key (ag_proto_reply_cols) */
    const char *formats; /* report: comma-separated format names, NULL: the daemon's */
    uint64_t width;      /* report: sparkline columns, 0: AG_REPORT_WIDTH_DEFAULT */
} ag_msg_query;

/* q_delivery asks for one client id, r_delivery answers: how many of that
 * client's stream messages the daemon has stored (committed to its database)
 * and the highest seq among them. Both by value: nothing to free. */
typedef struct ag_msg_delivery {
    uint64_t client_id;
    uint64_t messages; /* reply */
    uint64_t seq;      /* reply: highest seq stored; 0 when messages is 0 */
} ag_msg_delivery;

/* The reply to q_run: the run a client's messages are filed under. */
typedef struct ag_run_ident {
    const char *run;    /* the run's name (the daemon may have renamed it) */
    const char *launch; /* the client's launch id as the daemon holds it, "" if none */
    uint64_t caps;      /* AG_CAP_* the daemon has; 0 from one that predates the key */
} ag_run_ident;

/* Capabilities a daemon announces in r_run and r_status (added later within
 * version 2; the bits are AG_CAP_* of altgrad.h). What this build's daemon
 * announces: */
#define AG_CAPS (AG_CAP_BUNDLE | AG_CAP_QERR)

typedef struct ag_msg_error {
    int code;         /* an ag_err (negative) */
    const char *text; /* <= AG_PROTO_MAX_ERROR_TEXT bytes */
} ag_msg_error;

/*
 * One message, encoded from or decoded into. For encoding the caller fills
 * type, hdr (stream types) and the matching union member; nothing is owned.
 * After ag_proto_decode the strings and arrays live in an internal block
 * (freed by ag_msg_clear), tensor payloads point into the caller's buffer,
 * and reply results (u.runs ... u.status) are ag_free-able roots owned by the
 * message until ag_msg_take_result hands them over.
 */
typedef struct ag_msg {
    int type;
    int version; /* encode: 0 = AG_PROTO_VERSION; decode: the sender's version */
    ag_stream_hdr hdr;
    union {
        ag_msg_run_start run_start;
        ag_msg_stats stats;
        ag_msg_snapshot snapshot;
        ag_msg_counts counts;
        ag_msg_run_end run_end;
        ag_msg_query query;
        ag_msg_delivery delivery; /* q_delivery and r_delivery */
        ag_msg_error error;
        ag_run_list *runs;
        ag_tensor_list *tensors;
        ag_history *history;
        ag_scale_list *scales;
        ag_top_list *top;
        ag_status *status;
        ag_run_ident *ident;
        ag_report *report;
    } u;
    size_t cols; /* a reply's item columns: encode, how many to send (0: all);
                  * decode, how many each item carried (the rest are 0/NULL) */
    void *owned; /* internal: what ag_msg_clear frees */
    /* After a failed decode or encode, what was wrong (ag_errctx_text);
     * last, so that clearing the rest keeps it. */
    ag_errctx err;
} ag_msg;

/* Free what a decode left in m (safe on a zeroed or already-cleared msg). */
void ag_msg_clear(ag_msg *m);
/* Hand over a decoded reply's result (free it with ag_free); NULL if none. */
void *ag_msg_take_result(ag_msg *m);
/* The result root a reply of m's type carries (u.runs ... u.ident), decoded
 * or filled in by its answer; NULL for a reply without one (r_delivery). */
void *ag_msg_result(const ag_msg *m);

/* ------------------------------------------------------------------------
 * Output buffers: growable (malloc), fixed (caller's memory) or counting
 * (nothing written, len counts the bytes an encode would need).
 * ---------------------------------------------------------------------- */
typedef struct ag_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int mode; /* internal */
    int err;  /* sticky: first error of a write (AG_ENOMEM / AG_ETOOBIG) */
} ag_buf;

void ag_buf_init(ag_buf *b);
void ag_buf_init_fixed(ag_buf *b, void *mem, size_t cap);
void ag_buf_init_count(ag_buf *b);
void ag_buf_reset(ag_buf *b); /* len = 0, err = 0; keeps the memory */
void ag_buf_free(ag_buf *b);  /* frees growable memory only */

/*
 * Append the encoding of m to b. Validates m against the same rules as the
 * decoder (so we never send what we would reject): AG_EINVAL for a bad field
 * (ag_errctx_text(&m->err) says which), AG_ETOOBIG over a limit, AG_ENOMEM. On failure b->len
 * is restored to its value before the call.
 */
int ag_proto_encode(ag_buf *b, const ag_msg *m);
/* Bytes ag_proto_encode would append for m, or 0 if m is invalid. */
size_t ag_proto_encoded_size(const ag_msg *m);

/*
 * Decode one message of len bytes. AG_OK, or AG_EPROTO (malformed, wrong
 * types, missing/duplicate keys, counts that disagree with byte lengths,
 * unknown enums, non-finite numbers), AG_EVERSION (v != AG_PROTO_VERSION),
 * AG_ETOOBIG (over a limit), AG_ENOMEM; ag_errctx_text(&out->err) says what was wrong. On
 * failure nothing is left to free. data must outlive the decoded payload
 * pointers. out is overwritten (call ag_msg_clear on a previous decode first).
 */
int ag_proto_decode(const void *data, size_t len, ag_msg *out);

/* Read only the version and type of a message (for counting/logging). */
int ag_proto_peek(const void *data, size_t len, int *version, int *type);

/* Rewrite seq and dropped of an encoded stream message in place. AG_EPROTO
 * if the message does not end with our fixed trailer. */
int ag_proto_patch_seq(void *data, size_t len, uint64_t seq, uint64_t dropped);

/* 1 when p is aligned to align bytes. */
int ag_proto_aligned(const void *p, size_t align);

/* ------------------------------------------------------------------------
 * Incremental stats batches: the client appends records one at a time into
 * one buffer under a short lock, then closes the batch into a message.
 * ---------------------------------------------------------------------- */
typedef struct ag_stats_batch {
    ag_buf buf;
    size_t count_at; /* offset of the array32 record count */
    uint32_t n;
} ag_stats_batch;

/* Start a batch in sb->buf (reset first). */
int ag_stats_batch_begin(ag_stats_batch *sb, const char *run, uint64_t client_id);
/* Append one record (validated; AG_EINVAL/AG_ETOOBIG leave the batch as it was). */
int ag_stats_batch_add(ag_stats_batch *sb, const ag_stat_record *r);
/* Patch the count and append the seq/dropped trailer; sb->buf then holds one
 * complete message. AG_EINVAL for an empty batch. */
int ag_stats_batch_end(ag_stats_batch *sb, uint64_t seq, uint64_t dropped);

/* ------------------------------------------------------------------------
 * Bundles (t = 6, PROTOCOL.md 3.6): complete encoded stream messages, 1 to
 * AG_PROTO_MAX_BUNDLE of them, as the binary items of one message. A bundle
 * is not itself a stream message (ag_proto_decode refuses it); the daemon
 * splits it and decodes each message on its own.
 * ---------------------------------------------------------------------- */
typedef struct ag_bundle_entry {
    const void *data; /* points into the bundle */
    size_t len;
} ag_bundle_entry;

/* Start a bundle of count messages in b (appended); then ag_bundle_add each. */
int ag_bundle_begin(ag_buf *b, uint32_t count);
int ag_bundle_add(ag_buf *b, const void *msg, size_t len);
/* At most the bytes a bundle of count messages of bytes bytes in all takes. */
size_t ag_bundle_size(uint32_t count, size_t bytes);
/* The messages of the bundle data[0..len) into out[0..*n) (max slots):
 * AG_EPROTO for a malformed or empty one, AG_EVERSION below version 2,
 * AG_ETOOBIG past max or AG_PROTO_MAX_BUNDLE messages; err says what. The
 * entries are not checked: each is decoded on its own. */
int ag_proto_bundle_split(const void *data, size_t len, ag_bundle_entry *out, size_t max, size_t *n,
                          ag_errctx *err);

/* Checks shared by codec and client. */
int ag_proto_name_ok(const char *s, size_t len);        /* 1..AG_NAME_MAX, no NUL */
int ag_proto_format_name_ok(const char *s, size_t len); /* 1..15 of [A-Za-z0-9_-] */
/* 1..AG_LAUNCH_ID_MAX bytes of printable ASCII (0x20..0x7e). */
int ag_proto_launch_id_ok(const char *s, size_t len);
/* 1 if s[0..len) is a JSON object (strict RFC 8259 syntax, nesting <= 32). */
int ag_proto_json_object_ok(const char *s, size_t len);

#endif
