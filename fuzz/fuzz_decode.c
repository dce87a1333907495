/*
 * fuzz_decode.c - libFuzzer target for the protocol decoder (proto/).
 * Any input must decode or fail cleanly; what decodes must re-encode (the
 * encoder accepts everything the decoder lets through) and decode again to
 * the same type. Built by `make fuzz` (CC=clang, -DAG_FUZZ=ON).
 */
#include <stdint.h>
#include <stdlib.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ag_msg m;
    int v = 0, t = 0;
    (void)ag_proto_peek(data, size, &v, &t);
    if (ag_proto_decode(data, size, &m) != AG_OK) return 0;
    ag_buf b;
    ag_buf_init(&b);
    if (ag_proto_encode(&b, &m) != AG_OK)
        abort(); /* the decoder let through something the encoder refuses */
    ag_msg again;
    if (ag_proto_decode(b.data, b.len, &again) != AG_OK || again.type != m.type) abort();
    ag_msg_clear(&again);
    ag_buf_free(&b);
    ag_msg_clear(&m);
    return 0;
}
