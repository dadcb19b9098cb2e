/*
 * validate_request.c: the one check of each ferry.v1.Coordinator request,
 * field by field, before a handler touches the registry. The handlers in
 * service.c and service_watch.c call coord_validate_request and nothing
 * else; the fuzz target (fuzz/fuzz_coord_request.c) calls the same, so what
 * is fuzzed is what is served.
 *
 * By the time a request gets here the RPC layer has already refused strings
 * with NUL bytes or invalid UTF-8 and enums with undefined values
 * (rpc/rpc_wire.c).
 *
 * Pure functions: any thread.
 */
#include "validate.h"

#include <stdio.h>

#include "common/md_rules.h"
#include "rpc/rpc.h"

typedef ferry_status_t (*request_check_fn)(const ProtobufCMessage *m, char *msg, size_t cap);

/* Runs checks in order until one refuses. */
#define CHECK(expr)                      \
    do {                                 \
        ferry_status_t status_ = (expr); \
        if (status_ != FERRY_OK) {       \
            return status_;              \
        }                                \
    } while (0)

/* A positive ID the request must carry. A negative one was sent, so it is
 * refused as negative (coord_validate_not_negative's words): "is required"
 * would tell the caller to send a value it did send. */
static ferry_status_t required(const char *field, int64_t value, char *msg, size_t cap)
{
    if (value > 0) {
        return FERRY_OK;
    }
    if (value < 0) {
        return coord_validate_not_negative(field, value, msg, cap);
    }
    snprintf(msg, cap, "%s is required", field);
    return FERRY_ERR_INVALID_ARGUMENT;
}

static ferry_status_t check_register(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__RegisterRequest *req = (const Ferry__V1__RegisterRequest *)m;

    CHECK(coord_validate_request_id("request_id", req->request_id, msg, cap));
    CHECK(coord_validate_metadata("metadata", req->metadata, msg, cap));
    CHECK(coord_validate_token("access_token", req->access_token, 0, msg, cap));
    CHECK(coord_validate_ttl("ttl_seconds", req->ttl_seconds, msg, cap));
    CHECK(coord_validate_name("owner", req->owner, msg, cap));
    return coord_validate_not_negative("lease_id", req->lease_id, msg, cap);
}

static ferry_status_t check_lookup(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__LookupRequest *req = (const Ferry__V1__LookupRequest *)m;

    CHECK(coord_validate_target(req->request_id, req->access_token, 1, msg, cap));
    return coord_validate_not_negative("wait_ms", req->wait_ms, msg, cap);
}

static ferry_status_t check_claim(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ClaimRequest *req = (const Ferry__V1__ClaimRequest *)m;

    CHECK(coord_validate_target(req->request_id, req->access_token, 1, msg, cap));
    CHECK(coord_validate_ttl("ttl_seconds", req->ttl_seconds, msg, cap));
    CHECK(coord_validate_name("claimant", req->claimant, msg, cap));
    CHECK(coord_validate_not_negative("lease_id", req->lease_id, msg, cap));
    if (req->n_descriptor_sizes > FERRY_MD_DESCRIPTORS_MAX) {
        snprintf(msg, cap, "descriptor_sizes: %zu entries; at most %d", req->n_descriptor_sizes,
                 FERRY_MD_DESCRIPTORS_MAX);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    CHECK(ferry_peer_error_handling_check(NULL, (int)req->peer_error_handling, msg, cap));
    return coord_validate_not_negative("wait_ms", req->wait_ms, msg, cap);
}

static ferry_status_t check_complete(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__CompleteRequest *req = (const Ferry__V1__CompleteRequest *)m;

    CHECK(coord_validate_target(req->request_id, req->access_token, 1, msg, cap));
    CHECK(required("claim_lease_id", req->claim_lease_id, msg, cap));
    return coord_validate_name("error_message", req->error_message, msg, cap);
}

static ferry_status_t check_cancel(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__CancelRequest *req = (const Ferry__V1__CancelRequest *)m;

    CHECK(coord_validate_target(req->request_id, req->access_token, 1, msg, cap));
    return coord_validate_name("reason", req->reason, msg, cap);
}

static ferry_status_t check_release(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ReleaseRequest *req = (const Ferry__V1__ReleaseRequest *)m;

    return coord_validate_target(req->request_id, req->access_token, 1, msg, cap);
}

static ferry_status_t check_keepalive(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__KeepAliveRequest *req = (const Ferry__V1__KeepAliveRequest *)m;

    return required("lease_id", req->lease_id, msg, cap);
}

static ferry_status_t check_revoke(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__RevokeRequest *req = (const Ferry__V1__RevokeRequest *)m;

    return required("lease_id", req->lease_id, msg, cap);
}

static ferry_status_t check_get(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__GetRequest *req = (const Ferry__V1__GetRequest *)m;

    return coord_validate_request_id("request_id", req->request_id, msg, cap);
}

static ferry_status_t check_list(const ProtobufCMessage *m, char *msg, size_t cap)
{
    const Ferry__V1__ListRequest *req = (const Ferry__V1__ListRequest *)m;

    if (req->page_size > COORD_PAGE_SIZE_MAX) {
        snprintf(msg, cap, "page_size is %u; at most %d allowed", req->page_size,
                 COORD_PAGE_SIZE_MAX);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    CHECK(coord_validate_prefix("request_id_prefix", req->request_id_prefix, msg, cap));
    if (req->page_token[0] == '\0') {
        return FERRY_OK;
    }
    coord_page_token_t token;
    return coord_validate_page_token("page_token", req->page_token, &token, msg, cap);
}

static ferry_status_t check_watch(const ProtobufCMessage *m, char *msg, size_t cap)
{
    return coord_validate_watch((const Ferry__V1__WatchRequest *)m, msg, cap);
}

static const struct {
    const ProtobufCMessageDescriptor *descriptor;
    request_check_fn check;
} request_checks[] = {
    {&ferry__v1__register_request__descriptor, check_register},
    {&ferry__v1__lookup_request__descriptor, check_lookup},
    {&ferry__v1__claim_request__descriptor, check_claim},
    {&ferry__v1__complete_request__descriptor, check_complete},
    {&ferry__v1__cancel_request__descriptor, check_cancel},
    {&ferry__v1__release_request__descriptor, check_release},
    {&ferry__v1__keep_alive_request__descriptor, check_keepalive},
    {&ferry__v1__revoke_request__descriptor, check_revoke},
    {&ferry__v1__get_request__descriptor, check_get},
    {&ferry__v1__list_request__descriptor, check_list},
    {&ferry__v1__watch_request__descriptor, check_watch},
};

ferry_status_t coord_validate_request(const ProtobufCMessage *request, char *msg, size_t cap)
{
    for (size_t i = 0; i < sizeof(request_checks) / sizeof(request_checks[0]); i++) {
        if (request_checks[i].descriptor == request->descriptor) {
            return request_checks[i].check(request, msg, cap);
        }
    }
    snprintf(msg, cap, "%s has no request check", request->descriptor->name);
    return FERRY_ERR_INTERNAL;
}

ferry_status_t coord_validate_register_bytes(const uint8_t *request, size_t len,
                                             const uint8_t **md_p, size_t *md_len_p, char *msg,
                                             size_t cap)
{
    uint32_t number = rpc_field_number(&ferry__v1__register_request__descriptor, "metadata");
    ferry_status_t status = rpc_field_find(request, len, number, md_p, md_len_p);

    if (status == FERRY_ERR_NOT_FOUND) {
        snprintf(msg, cap, "metadata is required");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (status != FERRY_OK) {
        snprintf(msg, cap,
                 "metadata occurs more than once; send it once (it is stored as sent, and "
                 "repeats would be merged)");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (*md_len_p > COORD_METADATA_MAX) {
        snprintf(msg, cap, "metadata is %zu bytes as sent; at most %d allowed", *md_len_p,
                 COORD_METADATA_MAX);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    /* As every reader of the record will decode it (libferry refuses the
     * same): stored as sent, it is decoded at every Lookup, Claim and view
     * load (audit-s33 H1). */
    return ferry_md_check_packed("metadata", *md_p, *md_len_p, msg, cap);
}
