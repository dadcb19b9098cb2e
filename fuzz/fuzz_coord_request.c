/*
 * fuzz_coord_request.c: every ferry.v1.Coordinator request, from the bytes
 * a client sends through protobuf-c's decoding and the checks its handler
 * makes before the registry sees it (coordinator/service.c,
 * service_watch.c; the checks themselves are coordinator/validate.c).
 *
 * Input: byte 0 picks the method (its index in the service descriptor,
 * modulo the method count); the rest is the packed request, unpacked with
 * that method's input descriptor as the RPC layer does (rpc/rpc_buf.c).
 *
 * The check table below repeats, call for call, what each handler checks
 * before it calls the registry; keep it in step when a handler changes.
 * Every method of the service must have a row: a new RPC without one aborts
 * on the first input, so the replay test fails until it is added here.
 *
 * Invariants beyond "no crash": a check either accepts or writes a message
 * naming the field; metadata that Register accepts packs again into bytes
 * that unpack (the registry stores it packed and must read it back).
 */
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "fuzz.h"
#include "validate.h"

#define MSG_CAP 512

typedef ferry_status_t (*check_fn)(const ProtobufCMessage *m, char *msg, size_t cap);

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

static ferry_status_t check_register(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__RegisterRequest *req = (const Ferry__V1__RegisterRequest *)m;
    ferry_status_t status = coord_validate_request_id("request_id", req->request_id, msg, cap);

    if (status == FERRY_OK) {
        status = coord_validate_metadata("metadata", req->metadata, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_token("access_token", req->access_token, 0, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_ttl("ttl_seconds", req->ttl_seconds, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_name("owner", req->owner, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_not_negative("lease_id", req->lease_id, msg, cap);
    }
    if (status == FERRY_OK) {
        /* The registry stores the metadata as received, packed again. */
        check_repack(&req->metadata->base);
    }
    return status;
}

static ferry_status_t check_lookup(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__LookupRequest *req = (const Ferry__V1__LookupRequest *)m;
    ferry_status_t status = coord_validate_target(req->request_id, req->access_token, 1, msg, cap);

    if (status == FERRY_OK) {
        status = coord_validate_not_negative("wait_ms", req->wait_ms, msg, cap);
    }
    return status;
}

static ferry_status_t check_claim(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ClaimRequest *req = (const Ferry__V1__ClaimRequest *)m;
    ferry_status_t status = coord_validate_target(req->request_id, req->access_token, 1, msg, cap);

    if (status == FERRY_OK) {
        status = coord_validate_ttl("ttl_seconds", req->ttl_seconds, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_name("claimant", req->claimant, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_not_negative("lease_id", req->lease_id, msg, cap);
    }
    if (status == FERRY_OK) {
        status = coord_validate_not_negative("wait_ms", req->wait_ms, msg, cap);
    }
    return status;
}

static ferry_status_t check_complete(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__CompleteRequest *req = (const Ferry__V1__CompleteRequest *)m;
    ferry_status_t status = coord_validate_target(req->request_id, req->access_token, 1, msg, cap);

    if (status == FERRY_OK && req->claim_lease_id == 0) {
        snprintf(msg, cap, "claim_lease_id is required");
        status = FERRY_ERR_INVALID_ARGUMENT;
    }
    if (status == FERRY_OK) {
        status = coord_validate_name("error_message", req->error_message, msg, cap);
    }
    return status;
}

static ferry_status_t check_cancel(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__CancelRequest *req = (const Ferry__V1__CancelRequest *)m;
    ferry_status_t status = coord_validate_target(req->request_id, req->access_token, 1, msg, cap);

    if (status == FERRY_OK) {
        status = coord_validate_name("reason", req->reason, msg, cap);
    }
    return status;
}

static ferry_status_t check_release(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ReleaseRequest *req = (const Ferry__V1__ReleaseRequest *)m;

    return coord_validate_target(req->request_id, req->access_token, 1, msg, cap);
}

static ferry_status_t check_keepalive(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__KeepAliveRequest *req = (const Ferry__V1__KeepAliveRequest *)m;

    if (req->lease_id <= 0) {
        snprintf(msg, cap, "lease_id is required");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    return FERRY_OK;
}

static ferry_status_t check_get(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__GetRequest *req = (const Ferry__V1__GetRequest *)m;

    return coord_validate_request_id("request_id", req->request_id, msg, cap);
}

static ferry_status_t check_list(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ListRequest *req = (const Ferry__V1__ListRequest *)m;
    ferry_status_t status = FERRY_OK;

    if (req->page_size > 1000) {
        snprintf(msg, cap, "page_size is %u; at most 1000 allowed", req->page_size);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (req->request_id_prefix[0] != '\0' || req->page_token[0] != '\0') {
        status = coord_validate_request_id(
            req->request_id_prefix[0] != '\0' ? "request_id_prefix" : "page_token",
            req->request_id_prefix[0] != '\0' ? req->request_id_prefix : req->page_token, msg, cap);
    }
    if (status == FERRY_OK && req->request_id_prefix[0] != '\0' && req->page_token[0] != '\0') {
        status = coord_validate_request_id("page_token", req->page_token, msg, cap);
    }
    return status;
}

static ferry_status_t check_watch(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__WatchRequest *req = (const Ferry__V1__WatchRequest *)m;
    int by_id = req->request_id[0] != '\0';
    int by_prefix = req->request_id_prefix[0] != '\0';

    if (by_id == by_prefix) {
        snprintf(msg, cap, "exactly one of request_id and request_id_prefix must be set");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    return FERRY_OK;
}

static const struct {
    const char *method;
    check_fn check;
} checks[] = {
    {"Register", check_register},   {"Lookup", check_lookup}, {"Claim", check_claim},
    {"Complete", check_complete},   {"Cancel", check_cancel}, {"Release", check_release},
    {"KeepAlive", check_keepalive}, {"Get", check_get},       {"List", check_list},
    {"Watch", check_watch},
};

static check_fn check_for(const char *method)
{
    for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        if (strcmp(checks[i].method, method) == 0) {
            return checks[i].check;
        }
    }
    fprintf(stderr, "fuzz_coord_request: no check for method %s: add its handler's checks\n",
            method);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int table_checked;
    const ProtobufCServiceDescriptor *svc = &ferry__v1__coordinator__descriptor;
    const ProtobufCMethodDescriptor *method;
    ProtobufCMessage *req;
    char msg[MSG_CAP];
    ferry_status_t status;

    if (!table_checked) {
        for (size_t i = 0; i < svc->n_methods; i++) {
            (void)check_for(svc->methods[i].name);
        }
        table_checked = 1;
    }
    if (size == 0) {
        return 0;
    }
    method = &svc->methods[data[0] % svc->n_methods];
    req = protobuf_c_message_unpack(method->input, NULL, size - 1, data + 1);
    if (req == NULL) {
        return 0; /* the RPC layer answers INVALID_ARGUMENT */
    }
    msg[0] = '\0';
    status = check_for(method->name)(req, msg, sizeof(msg));
    fuzz_assert(status == FERRY_OK || status == FERRY_ERR_INVALID_ARGUMENT);
    fuzz_assert(status == FERRY_OK || (msg[0] != '\0' && strlen(msg) < sizeof(msg)));
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
}
