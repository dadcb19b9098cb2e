/*
 * rpc_status.c: the one place where ferry_status_t and gRPC status codes
 * meet. One switch each way, so -Wswitch flags a code that the status table
 * gained but this file did not.
 *
 * Round trips: every gRPC code survives grpc -> ferry ->
 * grpc. Every ferry code survives ferry -> grpc -> ferry except those that
 * share a gRPC code with a closer match:
 *   FERRY_ERR_EXPIRED   -> NOT_FOUND (what KeepAlive answers for a lease
 *                          that expired, see coordinator.proto)
 *   FERRY_ERR_LEASE_NOT_FOUND -> NOT_FOUND (the request's lease_id is gone)
 *   FERRY_ERR_BUSY      -> FAILED_PRECONDITION (a handle closed while in use)
 *   FERRY_ERR_NO_MEMORY -> RESOURCE_EXHAUSTED
 *   FERRY_ERR_TRANSPORT -> UNAVAILABLE (retry, maybe elsewhere)
 *   FERRY_ERR_IO, FERRY_ERR_MISUSE -> INTERNAL (a server-side fault)
 *   FERRY_ERR_SIZE_MISMATCH, FERRY_ERR_KIND_MISMATCH -> INVALID_ARGUMENT
 *                          (the pairing checks: libferry's, and the
 *                          coordinator's Claim, which says them in
 *                          ferry-status)
 * A code outside
 * 0..16 from a peer reads as UNKNOWN does: FERRY_ERR_PEER_FAILED.
 *
 * Threads: pure functions.
 */
#include "rpc/rpc.h"

#include <grpc/status.h>

int rpc_status_to_grpc(ferry_status_t status)
{
    switch (status) {
    case FERRY_OK:
        return GRPC_STATUS_OK;
    case FERRY_ERR_INVALID_ARGUMENT:
    case FERRY_ERR_SIZE_MISMATCH:
    case FERRY_ERR_KIND_MISMATCH:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case FERRY_ERR_NOT_FOUND:
    case FERRY_ERR_EXPIRED:
    case FERRY_ERR_LEASE_NOT_FOUND:
        return GRPC_STATUS_NOT_FOUND;
    case FERRY_ERR_ALREADY_EXISTS:
        return GRPC_STATUS_ALREADY_EXISTS;
    case FERRY_ERR_PERMISSION_DENIED:
        return GRPC_STATUS_PERMISSION_DENIED;
    case FERRY_ERR_UNAUTHENTICATED:
        return GRPC_STATUS_UNAUTHENTICATED;
    case FERRY_ERR_FAILED_PRECONDITION:
    case FERRY_ERR_BUSY:
        return GRPC_STATUS_FAILED_PRECONDITION;
    case FERRY_ERR_TIMED_OUT:
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case FERRY_ERR_UNAVAILABLE:
    case FERRY_ERR_TRANSPORT:
        return GRPC_STATUS_UNAVAILABLE;
    case FERRY_ERR_CANCELLED:
        return GRPC_STATUS_CANCELLED;
    case FERRY_ERR_ABORTED:
        return GRPC_STATUS_ABORTED;
    case FERRY_ERR_RESOURCE_EXHAUSTED:
    case FERRY_ERR_NO_MEMORY:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case FERRY_ERR_UNIMPLEMENTED:
        return GRPC_STATUS_UNIMPLEMENTED;
    case FERRY_ERR_PROTOCOL:
        return GRPC_STATUS_DATA_LOSS;
    case FERRY_ERR_PEER_FAILED:
        return GRPC_STATUS_UNKNOWN;
    case FERRY_ERR_IO:
    case FERRY_ERR_MISUSE:
    case FERRY_ERR_INTERNAL:
        return GRPC_STATUS_INTERNAL;
    case FERRY_ERR_OUT_OF_RANGE:
        return GRPC_STATUS_OUT_OF_RANGE;
    }
    return GRPC_STATUS_INTERNAL;
}

ferry_status_t rpc_status_from_grpc(int grpc_code)
{
    switch ((grpc_status_code)grpc_code) {
    case GRPC_STATUS_OK:
        return FERRY_OK;
    case GRPC_STATUS_CANCELLED:
        return FERRY_ERR_CANCELLED;
    case GRPC_STATUS_UNKNOWN:
        return FERRY_ERR_PEER_FAILED;
    case GRPC_STATUS_INVALID_ARGUMENT:
        return FERRY_ERR_INVALID_ARGUMENT;
    case GRPC_STATUS_OUT_OF_RANGE:
        return FERRY_ERR_OUT_OF_RANGE;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return FERRY_ERR_TIMED_OUT;
    case GRPC_STATUS_NOT_FOUND:
        return FERRY_ERR_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS:
        return FERRY_ERR_ALREADY_EXISTS;
    case GRPC_STATUS_PERMISSION_DENIED:
        return FERRY_ERR_PERMISSION_DENIED;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    case GRPC_STATUS_FAILED_PRECONDITION:
        return FERRY_ERR_FAILED_PRECONDITION;
    case GRPC_STATUS_ABORTED:
        return FERRY_ERR_ABORTED;
    case GRPC_STATUS_UNIMPLEMENTED:
        return FERRY_ERR_UNIMPLEMENTED;
    case GRPC_STATUS_INTERNAL:
        return FERRY_ERR_INTERNAL;
    case GRPC_STATUS_UNAVAILABLE:
        return FERRY_ERR_UNAVAILABLE;
    case GRPC_STATUS_DATA_LOSS:
        return FERRY_ERR_PROTOCOL;
    case GRPC_STATUS_UNAUTHENTICATED:
        return FERRY_ERR_UNAUTHENTICATED;
    case GRPC_STATUS__DO_NOT_USE:
        break;
    }
    return FERRY_ERR_PEER_FAILED;
}

const char *rpc_grpc_code_name(int grpc_code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if (grpc_code < 0 || grpc_code >= (int)(sizeof(names) / sizeof(names[0]))) {
        return "UNKNOWN_CODE";
    }
    return names[grpc_code];
}
