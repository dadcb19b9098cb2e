/*
 * rpc_field.c: one field of an encoded message, taken as it came (see
 * rpc.h): finding its span, and packing a message with it appended.
 *
 * The encoding (protobuf's) is read with common/pb_wire.h. Fields may come
 * in any order, and a singular message field that occurs twice is merged by
 * a decoder, which is why rpc_field_find refuses a repeat instead of
 * choosing one occurrence.
 *
 * Threads: pure functions.
 */
#include "rpc/rpc_int.h"

#include <stdlib.h>
#include <string.h>

ferry_status_t rpc_field_find(const uint8_t *data, size_t len, uint32_t number,
                              const uint8_t **value_p, size_t *value_len_p)
{
    const uint8_t *p = data, *end = data + len;
    const uint8_t *found = NULL;
    size_t found_len = 0;

    while (p < end) {
        ferry_pb_field_t field;

        if (!ferry_pb_next_field(&p, end, &field)) {
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        if (field.number != number) {
            continue;
        }
        if (found != NULL || field.type != FERRY_PB_LEN) {
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        found = field.value;
        found_len = field.len;
    }
    if (found == NULL) {
        return FERRY_ERR_NOT_FOUND;
    }
    *value_p = found;
    *value_len_p = found_len;
    return FERRY_OK;
}

/* True when field `number` of msg's type is a singular length-delimited
 * field that msg leaves unset. */
static bool field_is_free(const ProtobufCMessage *msg, uint32_t number)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(msg->descriptor, number);
    const void *at;

    if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED) {
        return false;
    }
    at = (const char *)msg + f->offset;
    switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void *const *)at == NULL;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)at)->len == 0;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)at;
        return s == NULL || s[0] == '\0';
    }
    default:
        return false;
    }
}

ferry_status_t rpc_pack_with_field(const ProtobufCMessage *msg, uint32_t number,
                                   const uint8_t *value, size_t value_len, uint8_t **data_p,
                                   size_t *len_p)
{
    uint8_t head[20];
    size_t head_len = 0, len;
    uint8_t *data;

    if (!field_is_free(msg, number)) {
        return FERRY_ERR_MISUSE;
    }
    if (value == NULL) {
        value_len = 0;
    } else {
        head_len = ferry_pb_put_varint(head, (uint64_t)number << 3 | FERRY_PB_LEN);
        head_len += ferry_pb_put_varint(head + head_len, value_len);
    }
    len = protobuf_c_message_get_packed_size(msg);
    data = malloc(len + head_len + value_len + 1);
    if (data == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    protobuf_c_message_pack(msg, data);
    if (value != NULL) {
        memcpy(data + len, head, head_len);
        memcpy(data + len + head_len, value, value_len);
        len += head_len + value_len;
    }
    *data_p = data;
    *len_p = len;
    return FERRY_OK;
}

uint32_t rpc_field_number(const ProtobufCMessageDescriptor *desc, const char *name)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, name);

    return f != NULL ? f->id : 0;
}
