/*
 * pb_wire.c: the varints and fields of pb_wire.h.
 */
#include "common/pb_wire.h"

bool ferry_pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *value_p)
{
    uint64_t value = 0;

    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        value |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *value_p = value;
            return true;
        }
    }
    return false;
}

size_t ferry_pb_put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

bool ferry_pb_next_field(const uint8_t **p, const uint8_t *end, ferry_pb_field_t *field_p)
{
    const uint8_t *q = *p;
    uint64_t tag, v;

    if (!ferry_pb_read_varint(&q, end, &tag)) {
        return false;
    }
    field_p->number = tag >> 3;
    field_p->type = (unsigned)(tag & 7);
    field_p->value = q;
    switch (field_p->type) {
    case FERRY_PB_VARINT:
        if (!ferry_pb_read_varint(&q, end, &v)) {
            return false;
        }
        break;
    case FERRY_PB_FIXED64:
    case FERRY_PB_FIXED32:
        v = field_p->type == FERRY_PB_FIXED64 ? 8 : 4;
        if (v > (uint64_t)(end - q)) {
            return false;
        }
        q += v;
        break;
    case FERRY_PB_LEN:
        if (!ferry_pb_read_varint(&q, end, &v) || v > (uint64_t)(end - q)) {
            return false;
        }
        field_p->value = q;
        q += v;
        break;
    default:
        return false; /* groups (not proto3) and undefined types */
    }
    field_p->len = (size_t)(q - field_p->value);
    *p = q;
    return true;
}
