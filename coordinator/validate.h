/*
 * validate.h: checks on what callers send the coordinator, before anything
 * touches etcd. Each check returns FERRY_OK or FERRY_ERR_INVALID_ARGUMENT
 * and writes a message that names the offending field into msg (cap bytes),
 * so the caller can hand it to the client as is.
 *
 * Limits (also in coordinator.proto's comments):
 *   request_id     1..128 bytes of [A-Za-z0-9._:-]
 *   access_token   16..256 printable ASCII bytes (empty: coordinator picks)
 *   descriptors    1..1024, all of one device kind, address != 0, size != 0,
 *                  rkey present and at most 4 KiB
 *   worker_address 1..64 KiB
 *   notification_key exactly 16 bytes
 *   ttl_seconds    0..3600
 *   metadata       at most 1 MiB, packed and as sent; once in a Register
 *                  request (it is stored as sent); packs into bytes that
 *                  unpack again
 *   request_id_prefix  empty, "*" (Watch: all), or as request_id
 *   page_token     empty, or "<revision>@<request_id>" (coord_page_token_t)
 *
 * Strings are NUL-free UTF-8 and enums hold defined values before any of
 * these run: the RPC layer refuses the rest for every field (rpc/rpc_wire.c).
 *
 * Pure functions: any thread.
 */
#ifndef FERRY_COORD_VALIDATE_H
#define FERRY_COORD_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

#include "common/md_rules.h"
#include "ferry/v1/coordinator.pb-c.h"

#define COORD_REQUEST_ID_MAX FERRY_REQUEST_ID_MAX
#define COORD_TOKEN_MIN      FERRY_TOKEN_MIN
#define COORD_TOKEN_MAX      FERRY_TOKEN_MAX
/* The metadata's limits are common/md_rules.h's (one owner). */
#define COORD_DESCRIPTORS_MAX    FERRY_MD_DESCRIPTORS_MAX
#define COORD_RKEY_MAX           FERRY_MD_RKEY_MAX
#define COORD_WORKER_ADDRESS_MAX FERRY_MD_WORKER_ADDRESS_MAX
#define COORD_NOTIFY_KEY_LEN     FERRY_MD_KEY_LEN
#define COORD_TTL_MAX            FERRY_TTL_MAX
#define COORD_NAME_MAX           256
#define COORD_PAGE_SIZE_MAX      FERRY_PAGE_SIZE_MAX
#define COORD_METADATA_MAX       FERRY_MD_PACKED_MAX

ferry_status_t coord_validate_request_id(const char *field, const char *id, char *msg, size_t cap);

/* required: an empty token is refused (Lookup, Claim, ...); otherwise empty
 * is allowed (Register: the coordinator picks one). */
ferry_status_t coord_validate_token(const char *field, const char *token, int required, char *msg,
                                    size_t cap);

ferry_status_t coord_validate_metadata(const char *field, const Ferry__V1__RdmaMetadata *md,
                                       char *msg, size_t cap);

ferry_status_t coord_validate_ttl(const char *field, int64_t ttl_s, char *msg, size_t cap);

/* request_id, then access_token (required or not): the pair nearly every
 * RPC checks first. */
ferry_status_t coord_validate_target(const char *request_id, const char *token, int token_required,
                                     char *msg, size_t cap);

/* A count or id that may be 0 but not negative (wait_ms, lease_id). */
ferry_status_t coord_validate_not_negative(const char *field, int64_t value, char *msg, size_t cap);

/* A prefix of request IDs (List, Watch): empty, or what a request ID may
 * be (a prefix of a valid ID is itself valid). */
ferry_status_t coord_validate_prefix(const char *field, const char *prefix, char *msg, size_t cap);

/* A List page token, as ListResponse.next_page_token carries it:
 * "<revision>@<request_id>". revision is the etcd revision the whole List is
 * read at (decimal, 1..INT64_MAX, no sign, no leading zero), so that every
 * page is one snapshot; request_id is the last one the previous page
 * returned, and the next page starts after it. '@' is outside the request ID
 * alphabet, so the split is unambiguous. Clients treat the token as opaque;
 * the coordinator treats it as hostile until this check passes. Whether the
 * revision is one etcd still holds (not in the future, not compacted) only
 * etcd can say: registry_list.c asks it. */
#define COORD_PAGE_TOKEN_SEP '@'

typedef struct {
    int64_t revision;
    char after[COORD_REQUEST_ID_MAX + 1]; /* the last request ID listed */
} coord_page_token_t;

/* Parses a non-empty page token; *token_p is set only on success. */
ferry_status_t coord_validate_page_token(const char *field, const char *text,
                                         coord_page_token_t *token_p, char *msg, size_t cap);

/* Watch's target: exactly one of request_id (a valid ID) and
 * request_id_prefix ("*" or a valid prefix), as for every other RPC. */
ferry_status_t coord_validate_watch(const Ferry__V1__WatchRequest *req, char *msg, size_t cap);

/* Free-form names (owner, claimant): at most COORD_NAME_MAX bytes. */
ferry_status_t coord_validate_name(const char *field, const char *name, char *msg, size_t cap);

/* Every check a ferry.v1.Coordinator request gets before its handler acts
 * on it, field by field (validate_request.c): the one validator of each
 * request. FERRY_ERR_INTERNAL for a message type without checks (a new RPC
 * must add its own). */
ferry_status_t coord_validate_request(const ProtobufCMessage *request, char *msg, size_t cap);

/* Register's metadata as the request carried it (request: the request's
 * bytes as they arrived, len bytes; after coord_validate_request accepted
 * its decoded copy): *md_p and *md_len_p get the field's bytes, which the
 * registry stores and the writer decodes byte for byte. The field must
 * occur exactly once (protobuf would merge repeats, so no one span would
 * hold what was validated), be at most COORD_METADATA_MAX bytes as sent,
 * and keep ferry_md_check_packed's bounds on what decoding it costs: every
 * reader of the record decodes it. */
ferry_status_t coord_validate_register_bytes(const uint8_t *request, size_t len,
                                             const uint8_t **md_p, size_t *md_len_p, char *msg,
                                             size_t cap);

#endif /* FERRY_COORD_VALIDATE_H */
