/*
 * fuzz_coord_request.c: every ferry.v1.Coordinator request, from the bytes
 * a client sends through what the server does before a handler acts: the
 * RPC layer's decoding and wire check (rpc/rpc_buf.c, rpc/rpc_wire.c), then
 * the request's one validator (coordinator/validate_request.c), the very
 * functions the server calls.
 *
 * Input: byte 0 picks the method (its index in the service descriptor,
 * modulo the method count); the rest is the packed request.
 *
 * Invariants beyond "no crash": a check either accepts or writes a message
 * naming the field (never INTERNAL: a method whose request has no validator
 * fails here); metadata that Register accepts packs again into bytes that
 * unpack (the registry stores it packed and must read it back).
 */
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "fuzz.h"
#include "rpc/rpc_int.h"
#include "validate.h"

#define MSG_CAP 512

/* Packs a message and unpacks it again: both must work. */
static void check_repack(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len > 0 ? len : 1);
    ProtobufCMessage *again;

    fuzz_assert(buf != NULL);
    fuzz_assert(protobuf_c_message_pack(m, buf) == len);
    again = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
    fuzz_assert(again != NULL);
    protobuf_c_message_free_unpacked(again, NULL);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const ProtobufCServiceDescriptor *svc = &ferry__v1__coordinator__descriptor;
    const ProtobufCMethodDescriptor *method;
    ProtobufCMessage *req;
    char msg[MSG_CAP];
    ferry_status_t status;

    if (size == 0) {
        return 0;
    }
    method = &svc->methods[data[0] % svc->n_methods];
    req = protobuf_c_message_unpack(method->input, NULL, size - 1, data + 1);
    if (req == NULL) {
        return 0; /* the RPC layer answers INVALID_ARGUMENT */
    }
    msg[0] = '\0';
    status = rpc__wire_check(method->input, data + 1, size - 1, msg, sizeof(msg));
    if (status == FERRY_OK) {
        status = coord_validate_request(req, msg, sizeof(msg));
    }
    fuzz_assert(status == FERRY_OK || status == FERRY_ERR_INVALID_ARGUMENT);
    fuzz_assert(status == FERRY_OK || (msg[0] != '\0' && strlen(msg) < sizeof(msg)));
    if (status == FERRY_OK && method->input == &ferry__v1__register_request__descriptor) {
        check_repack(&((Ferry__V1__RegisterRequest *)req)->metadata->base);
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
}
