/*
 * pb_wire.h: protobuf's encoding, read and written without protobuf-c: a
 * varint, and a message's fields one at a time.
 *
 * The encoding: a message is a run of fields, each a varint tag (field
 * number << 3 | wire type) and a value; a length-delimited value (wire type
 * 2) is a varint length and that many bytes. Fields may come in any order
 * and a repeated field's elements need not be adjacent.
 *
 * protobuf-c allocates as it unpacks (a struct for each message, a block
 * for each string, bytes value and unknown field), so a bound checked on
 * the unpacked message comes after its memory was spent. Code that bounds
 * bytes from outside before they are unpacked walks them with these: the
 * rpc layer's request checks (rpc/rpc_wire.c) and its one field taken as it
 * came (rpc/rpc_field.c), and the metadata's count of descriptors
 * (common/md_rules.c), which libferry's data plane makes without the rpc
 * layer.
 *
 * Threads: pure functions.
 */
#ifndef FERRY_COMMON_PB_WIRE_H
#define FERRY_COMMON_PB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Protobuf's wire types (the low three bits of a tag). */
enum {
    FERRY_PB_VARINT = 0,
    FERRY_PB_FIXED64 = 1,
    FERRY_PB_LEN = 2,
    FERRY_PB_FIXED32 = 5,
};

/* One field as ferry_pb_next_field read it. */
typedef struct {
    uint64_t number;      /* the tag >> 3 */
    unsigned type;        /* the tag's wire type, FERRY_PB_* */
    const uint8_t *value; /* FERRY_PB_LEN: the bytes after the length; else the value's own */
    size_t len;
} ferry_pb_field_t;

/* Reads a base-128 varint at *p (before end) and moves *p past it; false
 * when it runs past end or past 10 bytes. */
bool ferry_pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *value_p);

/* Writes v as a base-128 varint at out (room for 10 bytes); its length. */
size_t ferry_pb_put_varint(uint8_t *out, uint64_t v);

/* Reads the field at *p (before end) into *field_p, its value pointing into
 * the bytes, and moves *p past it; false when the encoding is malformed
 * there (a varint or a value that runs past end, a group, which proto3 does
 * not have, or an undefined wire type). */
bool ferry_pb_next_field(const uint8_t **p, const uint8_t *end, ferry_pb_field_t *field_p);

#endif /* FERRY_COMMON_PB_WIRE_H */
