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
 * unpack; and its bytes as sent (coord_validate_register_bytes, which
 * refuses with a message or gives them) make a record that the registry
 * reads back (coordinator/registry_record.c) with exactly those bytes as its
 * metadata, which decode as the writer decodes them.
 */
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "fuzz.h"
#include "registry_int.h"
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

/* A record stored with md as its metadata reads back with exactly md. */
static void check_stored(const uint8_t *md, size_t md_len)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;
    Ferry__V1__RdmaMetadata *decoded;
    coord_record_t rec = {0};
    uint8_t *bytes = NULL;
    size_t len = 0;

    op.request_id = "fuzz";
    op.state = FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED;
    fuzz_assert(registry_record_pack(&op, md, md_len, &bytes, &len) == FERRY_OK);
    fuzz_assert(registry_record_decode(bytes, len, &rec) == FERRY_OK);
    fuzz_assert(rec.op->metadata == NULL && rec.md_len == md_len &&
                memcmp(rec.md, md, md_len) == 0);
    decoded = ferry__v1__rdma_metadata__unpack(NULL, md_len, md);
    fuzz_assert(decoded != NULL);
    ferry__v1__rdma_metadata__free_unpacked(decoded, NULL);
    coord_record_free(&rec);
    free(bytes);
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
    status = rpc__wire_check(method->input, data + 1, size - 1, msg, sizeof(msg), NULL);
    if (status == FERRY_OK) {
        status = coord_validate_request(req, msg, sizeof(msg));
    }
    fuzz_assert(status == FERRY_OK || status == FERRY_ERR_INVALID_ARGUMENT);
    fuzz_assert(status == FERRY_OK || (msg[0] != '\0' && strlen(msg) < sizeof(msg)));
    if (status == FERRY_OK && method->input == &ferry__v1__register_request__descriptor) {
        const uint8_t *md = NULL;
        size_t md_len = 0;

        check_repack(&((Ferry__V1__RegisterRequest *)req)->metadata->base);
        msg[0] = '\0';
        status = coord_validate_register_bytes(data + 1, size - 1, &md, &md_len, msg, sizeof(msg));
        fuzz_assert(status == FERRY_OK ||
                    (status == FERRY_ERR_INVALID_ARGUMENT && strstr(msg, "metadata") != NULL));
        if (status == FERRY_OK) {
            check_stored(md, md_len);
        }
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
}
