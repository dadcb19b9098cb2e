/*
 * rpc_wire.c: the checks every request passes before its handler sees it,
 * made on the encoded bytes with the request's protoc-c descriptor.
 *
 * protobuf-c hands string fields to C as NUL-terminated strings and does not
 * check their UTF-8. On its own, then, a string with a NUL inside reaches the
 * handler cut short ("a\0/../x" reads as "a"), and a string that is not UTF-8
 * is stored as sent, after which every client that decodes it fails (proto3
 * requires UTF-8 in `string` fields). Enum fields keep values the enum does
 * not define (proto3 enums are open). This walker refuses all three, in every
 * field of every request, nested messages and repeated fields included, and
 * names the field by its path ("metadata.descriptors[0].device.kind"), so no
 * handler has to remember to check, and a field added later is covered too.
 *
 * Only the fields the descriptor knows are checked: an unknown field (a newer
 * client's) is skipped, as protobuf-c skips it, but at most
 * RPC_WIRE_UNKNOWN_MAX of them in one request, and a request holds at most
 * RPC_WIRE_VALUES_MAX strings, bytes and messages in all: protobuf-c keeps
 * each unknown field and each such value in an allocation of its own, so a
 * request of two-byte fields would otherwise decode into some fifty times
 * its size. And at most RPC_WIRE_FIELDS_MAX field occurrences in all,
 * scalars too: protobuf-c scans every occurrence into a record of some 32
 * bytes before it builds the message, so a 2 MB request of one varint
 * field repeated a million times cost 34 MB to decode (audit-s33 H1; an
 * honest Register of 1024 descriptors holds some 7,200). The walk runs before
 * protobuf_c_message_unpack, so that no such request is ever decoded; a
 * malformed encoding is refused here first.
 *
 * Threads: pure functions.
 */
#include "rpc/rpc_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/text.h"

/* Nesting bound: Ferry's messages nest four deep; a request can never make
 * the walk recurse further than its schema allows, but a bound costs
 * nothing. */
#define WIRE_DEPTH_MAX 32
#define WIRE_PATH_MAX  256

typedef struct {
    char path[WIRE_PATH_MAX]; /* "metadata.descriptors[0]" while inside it */
    size_t path_len;
    size_t fields;  /* field occurrences, known or not, so far */
    size_t unknown; /* fields the descriptors do not know, so far */
    size_t values;  /* strings, bytes and messages, so far */
    char *msg;      /* the caller's message buffer */
    size_t cap;
    bool malformed; /* the encoding, not a field's value, was refused */
} wire_walk_t;

__attribute__((format(printf, 2, 3))) static ferry_status_t wire_fail(wire_walk_t *w,
                                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, w->cap, fmt, ap);
    va_end(ap);
    return FERRY_ERR_INVALID_ARGUMENT;
}

static ferry_status_t wire_malformed(wire_walk_t *w)
{
    w->malformed = true;
    return wire_fail(w, RPC_WIRE_MALFORMED " (at %s)", w->path_len > 0 ? w->path : "top level");
}

/* Appends ".name" (or "name" at the top) and "[index]" for a repeated
 * field; returns the length to restore with path_pop. */
static size_t path_push(wire_walk_t *w, const ProtobufCFieldDescriptor *f, unsigned index)
{
    size_t old = w->path_len;
    size_t room = sizeof(w->path) - old;
    int n = f->label == PROTOBUF_C_LABEL_REPEATED
                ? snprintf(w->path + old, room, "%s%s[%u]", old > 0 ? "." : "", f->name, index)
                : snprintf(w->path + old, room, "%s%s", old > 0 ? "." : "", f->name);

    w->path_len = n < 0 || (size_t)n >= room ? sizeof(w->path) - 1 : old + (size_t)n;
    return old;
}

static void path_pop(wire_walk_t *w, size_t old)
{
    w->path_len = old;
    w->path[old] = '\0';
}

static ferry_status_t check_string(wire_walk_t *w, const uint8_t *s, size_t len)
{
    const uint8_t *nul = memchr(s, '\0', len);
    size_t bad;

    if (nul != NULL) {
        return wire_fail(w, "%s has a NUL byte at byte %zu", w->path, (size_t)(nul - s));
    }
    bad = ferry_utf8_invalid_at((const char *)s, len);
    if (bad < len) {
        return wire_fail(w, "%s is not valid UTF-8 (at byte %zu)", w->path, bad);
    }
    return FERRY_OK;
}

static ferry_status_t check_enum(wire_walk_t *w, const ProtobufCFieldDescriptor *f, uint64_t raw)
{
    /* An enum is an int32 on the wire; negative values come sign-extended
     * to 64 bits, so the low 32 bits are the value. */
    int32_t value = (int32_t)(uint32_t)raw;
    const ProtobufCEnumDescriptor *e = f->descriptor;

    if (protobuf_c_enum_descriptor_get_value(e, value) == NULL) {
        return wire_fail(w, "%s has the value %d, which %s does not define", w->path, (int)value,
                         e->name);
    }
    return FERRY_OK;
}

static ferry_status_t walk_message(wire_walk_t *w, const ProtobufCMessageDescriptor *desc,
                                   const uint8_t *p, const uint8_t *end, int depth);

/* Packed repeated enum: a run of varints. */
static ferry_status_t walk_packed_enums(wire_walk_t *w, const ProtobufCFieldDescriptor *f,
                                        unsigned *seen, const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        uint64_t raw;
        size_t old = path_push(w, f, (*seen)++);
        ferry_status_t status =
            ferry_pb_read_varint(&p, end, &raw) ? check_enum(w, f, raw) : wire_malformed(w);
        path_pop(w, old);
        if (status != FERRY_OK) {
            return status;
        }
    }
    return FERRY_OK;
}

/* One length-delimited field the descriptor knows. */
static ferry_status_t walk_len_field(wire_walk_t *w, const ProtobufCFieldDescriptor *f,
                                     unsigned *seen, const uint8_t *p, size_t len, int depth)
{
    ferry_status_t status = FERRY_OK;
    size_t old;

    if (f->type == PROTOBUF_C_TYPE_ENUM && f->label == PROTOBUF_C_LABEL_REPEATED) {
        return walk_packed_enums(w, f, seen, p, p + len);
    }
    if ((f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES ||
         f->type == PROTOBUF_C_TYPE_MESSAGE) &&
        ++w->values > RPC_WIRE_VALUES_MAX) {
        old = path_push(w, f, *seen);
        status = wire_fail(w, "request holds more than %d strings, bytes and messages (at %s)",
                           RPC_WIRE_VALUES_MAX, w->path);
        path_pop(w, old);
        return status;
    }
    if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) {
        *seen += f->type == PROTOBUF_C_TYPE_BYTES;
        return FERRY_OK; /* bytes, or other packed scalars: any value is valid */
    }
    old = path_push(w, f, (*seen)++);
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        status = check_string(w, p, len);
    } else {
        status = walk_message(w, f->descriptor, p, p + len, depth + 1);
    }
    path_pop(w, old);
    return status;
}

/* One field: reads its tag and value, checks it when the descriptor knows it. */
static ferry_status_t walk_field(wire_walk_t *w, const ProtobufCMessageDescriptor *desc,
                                 unsigned *seen, const uint8_t **p, const uint8_t *end, int depth)
{
    const ProtobufCFieldDescriptor *f = NULL;
    ferry_pb_field_t field;
    unsigned *field_seen;
    ferry_status_t status;
    uint64_t value;
    size_t old;

    if (!ferry_pb_next_field(p, end, &field)) {
        return wire_malformed(w); /* groups too: not proto3, refused by protobuf-c */
    }
    if (++w->fields > RPC_WIRE_FIELDS_MAX) {
        return wire_fail(w, "request holds more than %d fields (at %s)", RPC_WIRE_FIELDS_MAX,
                         w->path_len > 0 ? w->path : "top level");
    }
    if (field.number <= UINT32_MAX) {
        f = protobuf_c_message_descriptor_get_field(desc, (unsigned)field.number);
    }
    if (f == NULL) {
        if (++w->unknown > RPC_WIRE_UNKNOWN_MAX) {
            return wire_fail(w,
                             "request carries more than %d fields this server does not know "
                             "(field number %llu at %s)",
                             RPC_WIRE_UNKNOWN_MAX, (unsigned long long)field.number,
                             w->path_len > 0 ? w->path : "top level");
        }
        return FERRY_OK;
    }
    field_seen = &seen[f - desc->fields];
    if (field.type == FERRY_PB_LEN) {
        return walk_len_field(w, f, field_seen, field.value, field.len, depth);
    }
    if (field.type != FERRY_PB_VARINT || f->type != PROTOBUF_C_TYPE_ENUM) {
        return FERRY_OK;
    }
    /* Read again: ferry_pb_next_field proved the varint whole. */
    ferry_pb_read_varint(&field.value, field.value + field.len, &value);
    old = path_push(w, f, (*field_seen)++);
    status = check_enum(w, f, value);
    path_pop(w, old);
    return status;
}

static ferry_status_t walk_message(wire_walk_t *w, const ProtobufCMessageDescriptor *desc,
                                   const uint8_t *p, const uint8_t *end, int depth)
{
    /* How many elements of each repeated field came so far: the index in
     * the path. */
    unsigned *seen;
    ferry_status_t status = FERRY_OK;

    if (depth > WIRE_DEPTH_MAX) {
        return wire_fail(w, "request nests more than %d messages deep (at %s)", WIRE_DEPTH_MAX,
                         w->path);
    }
    seen = calloc(desc->n_fields > 0 ? desc->n_fields : 1, sizeof(*seen));
    if (seen == NULL) {
        snprintf(w->msg, w->cap, "out of memory checking the request");
        return FERRY_ERR_NO_MEMORY;
    }
    while (p < end && status == FERRY_OK) {
        status = walk_field(w, desc, seen, &p, end, depth);
    }
    free(seen);
    return status;
}

ferry_status_t rpc__wire_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                               size_t len, char *msg, size_t cap, bool *malformed_p)
{
    wire_walk_t w = {.path = "", .path_len = 0, .msg = msg, .cap = cap};
    ferry_status_t status = len == 0 ? FERRY_OK /* every field at its default */
                                     : walk_message(&w, desc, data, data + len, 0);

    if (malformed_p != NULL) {
        *malformed_p = w.malformed;
    }
    return status;
}
