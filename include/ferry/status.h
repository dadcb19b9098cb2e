/*
 * ferry/status.h: the one status type of Ferry.
 *
 * Every function that can fail returns a ferry_status_t: FERRY_OK (0) on
 * success, a negative FERRY_ERR_* code otherwise. The codes, their names and
 * their messages come from one table, FERRY_FOREACH_STATUS, so the enum, the
 * name function and the message function cannot drift apart.
 *
 * Two families are kept apart on purpose:
 *   - outcomes: things that happen to a correct program (the peer went away,
 *     the deadline passed, etcd is down, the request ID is taken);
 *   - misuse: the caller broke the API's rules (FERRY_ERR_MISUSE); fixing the
 *     caller is the only cure.
 *
 * FERRY_ERR_LEASE_NOT_FOUND is kept apart from FERRY_ERR_NOT_FOUND inside a
 * process so that code can tell "the lease named in the request is gone"
 * (final: answer at once) from "the request ID is not registered" (maybe
 * not yet: a Lookup or Claim may wait for it); both are NOT_FOUND on the
 * wire.
 *
 * The mapping to and from gRPC status codes lives in exactly one place, the
 * RPC layer (rpc/rpc_status.c).
 */
#ifndef FERRY_STATUS_H
#define FERRY_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Marks libferry's exported functions: the library is built with hidden
 * visibility and a version script, and exports exactly these. */
#ifndef FERRY_API
#define FERRY_API __attribute__((visibility("default")))
#endif

/* _(NAME, value, message) */
#define FERRY_FOREACH_STATUS(_)                                                       \
    _(OK, 0, "success")                                                               \
    _(ERR_INVALID_ARGUMENT, -1, "invalid argument")                                   \
    _(ERR_NOT_FOUND, -2, "not found")                                                 \
    _(ERR_ALREADY_EXISTS, -3, "already exists")                                       \
    _(ERR_PERMISSION_DENIED, -4, "permission denied")                                 \
    _(ERR_UNAUTHENTICATED, -5, "unauthenticated")                                     \
    _(ERR_FAILED_PRECONDITION, -6, "operation is not in a state that allows this")    \
    _(ERR_TIMED_OUT, -7, "deadline exceeded")                                         \
    _(ERR_UNAVAILABLE, -8, "service unavailable")                                     \
    _(ERR_CANCELLED, -9, "cancelled")                                                 \
    _(ERR_EXPIRED, -10, "lease expired: the holder stopped keeping it alive")         \
    _(ERR_ABORTED, -11, "conflict with a concurrent change")                          \
    _(ERR_RESOURCE_EXHAUSTED, -12, "resource exhausted")                              \
    _(ERR_NO_MEMORY, -13, "out of memory")                                            \
    _(ERR_UNIMPLEMENTED, -14, "not implemented by this peer")                         \
    _(ERR_PROTOCOL, -15, "malformed message from a peer")                             \
    _(ERR_TRANSPORT, -16, "transport error")                                          \
    _(ERR_PEER_FAILED, -17, "the remote side reported an error")                      \
    _(ERR_IO, -18, "system call failed")                                              \
    _(ERR_MISUSE, -19, "API misuse by the caller")                                    \
    _(ERR_INTERNAL, -20, "internal error")                                            \
    _(ERR_LEASE_NOT_FOUND, -21, "lease not found: it expired or never existed")       \
    _(ERR_OUT_OF_RANGE, -22, "revision no longer available: read again, then resume") \
    _(ERR_BUSY, -23, "busy: the handle still has live children")                      \
    _(ERR_SIZE_MISMATCH, -24, "local and remote descriptors differ in count or size") \
    _(ERR_KIND_MISMATCH, -25, "the metadata is for the other kind of operation")

typedef enum {
#define FERRY__STATUS_ENUM(name, value, msg) FERRY_##name = (value),
    FERRY_FOREACH_STATUS(FERRY__STATUS_ENUM)
#undef FERRY__STATUS_ENUM
} ferry_status_t;

/* "FERRY_ERR_NOT_FOUND" for FERRY_ERR_NOT_FOUND; "FERRY_UNKNOWN_STATUS" for a
 * value outside the table. The string is static. */
FERRY_API const char *ferry_status_name(ferry_status_t status);

/* A short lowercase sentence for the status; static, never NULL. */
FERRY_API const char *ferry_status_string(ferry_status_t status);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_STATUS_H */
