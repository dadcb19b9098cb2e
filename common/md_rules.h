/*
 * md_rules.h: the one set of rules for ferry.v1.RdmaMetadata, checked by
 * the coordinator when a passive worker registers it (coordinator/
 * validate.c) and by libferry when an active worker decodes it (worker/
 * metadata.c). One owner: the coordinator never stores what the library
 * would refuse, and the two cannot drift apart (they used to check
 * different things: one bounded sizes, the other the version).
 *
 * The rules: version at most FERRY_MD_VERSION; kind READ or WRITE;
 * worker_address 1..FERRY_MD_WORKER_ADDRESS_MAX bytes; notification_key
 * exactly FERRY_MD_KEY_LEN bytes; 1..FERRY_MD_DESCRIPTORS_MAX descriptors,
 * each with a non-zero address and size whose range does not wrap around
 * 2^64, a HOST or CUDA device of the first one's kind, and a
 * 1..FERRY_MD_RKEY_MAX byte rkey; at most FERRY_MD_PACKED_MAX bytes
 * packed; worker_name and hostname at most FERRY_MD_NAME_MAX bytes each. With staging (the
 * staged path, WRITE only): every descriptor's rkey empty, and the staging
 * block's address non-zero, slot_size 1..FERRY_MD_SLOT_SIZE_MAX, slots
 * 1..FERRY_MD_SLOTS_MAX, the block (slots * slot_size bytes from address)
 * not wrapping around 2^64, rkey 1..FERRY_MD_RKEY_MAX bytes. Errors name
 * the field by its path under `field`
 * ("metadata.descriptors[1].size is 0").
 *
 * The pairing rule, the one check between a writer's (reader's) buffers and
 * the operation it pairs with: as many descriptors, of the same sizes, in
 * order. The coordinator checks it at Claim (ClaimRequest.descriptor_sizes)
 * and libferry when it is handed metadata directly; the device kinds may
 * differ (host to CUDA and back).
 *
 * Threads: pure.
 */
#ifndef FERRY_COMMON_MD_RULES_H
#define FERRY_COMMON_MD_RULES_H

#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

#include "ferry/v1/types.pb-c.h"

#define FERRY_MD_VERSION            1
#define FERRY_MD_WORKER_ADDRESS_MAX 65536
#define FERRY_MD_KEY_LEN            16
#define FERRY_MD_DESCRIPTORS_MAX    1024
#define FERRY_MD_RKEY_MAX           4096
#define FERRY_MD_NAME_MAX           256

#define FERRY_MD_SLOT_SIZE_MAX (1ull << 30)
#define FERRY_MD_SLOTS_MAX     64
/* The whole metadata, packed: etcd refuses requests over 1.5 MiB by default
 * (--max-request-bytes), and the record carries more than the metadata. */
#define FERRY_MD_PACKED_MAX (1024 * 1024)

/* FERRY_OK, or FERRY_ERR_INVALID_ARGUMENT with msg naming the field. */
ferry_status_t ferry_md_check(const char *field, const Ferry__V1__RdmaMetadata *md, char *msg,
                              size_t cap);

/* Field occurrences in one metadata, at every depth, known or not: an
 * honest one holds seven per descriptor (itself, four inside, two in its
 * device) and a dozen more, 7,174 at most; twice that leaves newer
 * clients room for fields this build does not know (review-s33). */
#define FERRY_MD_FIELDS_MAX (16 * FERRY_MD_DESCRIPTORS_MAX + 64)

/* The rules that bound what unpacking the metadata costs, checked on its
 * packed bytes[0..len) before they are unpacked: at most
 * FERRY_MD_PACKED_MAX bytes, a valid encoding at every depth, at most
 * FERRY_MD_DESCRIPTORS_MAX descriptors and FERRY_MD_FIELDS_MAX fields.
 * protobuf-c builds every descriptor it finds before ferry_md_check can
 * count them: 4 MiB of empty ones ("\x22\x00" repeated) became ~244 MiB
 * of heap (audit-s32 L1); and it scans every field occurrence into a
 * record of some 32 bytes, so 1 MiB of one scalar field repeated (which
 * unpacks to one value, and so passes ferry_md_check) cost 16 MiB at every
 * decode (audit-s33 H1). The coordinator stores no metadata that fails
 * them (coord_validate_register_bytes). FERRY_OK,
 * or FERRY_ERR_INVALID_ARGUMENT with msg naming the field; the rest of the
 * rules are ferry_md_check's, on the unpacked message. */
ferry_status_t ferry_md_check_packed(const char *field, const uint8_t *bytes, size_t len, char *msg,
                                     size_t cap);

/* FERRY_OK when n local descriptors of sizes[0..n) pair with md's, or
 * FERRY_ERR_SIZE_MISMATCH with msg giving the count or the first size that
 * differs, local then remote ("descriptor 2: local size 47 != remote size
 * 48"). md must have passed ferry_md_check. */
ferry_status_t ferry_md_sizes_pair(const Ferry__V1__RdmaMetadata *md, const uint64_t *sizes,
                                   size_t n, char *msg, size_t cap);

/* Not metadata, but the same one-owner rule: the longest request ID and
 * access token the coordinator accepts (coordinator/validate.h), which
 * libferry's coordinator client keeps copies of (worker/coord_client_int.h):
 * sized from here, a limit raised on one side cannot leave the other
 * holding a cut ID that names another record. */
#define FERRY_REQUEST_ID_MAX 128
#define FERRY_TOKEN_MIN      16
#define FERRY_TOKEN_MAX      256

/* The longest TTL (seconds) a record may ask for, and the largest page a
 * List may ask for: the coordinator's limits (coordinator/validate.h), which
 * ferry-worker's --ttl and ferryctl's --page-size check before asking. */
#define FERRY_TTL_MAX       3600
#define FERRY_PAGE_SIZE_MAX 1000

/* The rules themselves, the coordinator's (coordinator/validate.h) and
 * libferry's, which refuses a bad ID or token at once rather than after a
 * coordinator that cannot be reached has cost the call its timeout. Each
 * returns FERRY_OK or FERRY_ERR_INVALID_ARGUMENT, msg naming `field`.
 * request ID: 1..FERRY_REQUEST_ID_MAX bytes of [A-Za-z0-9._:-]. token:
 * FERRY_TOKEN_MIN..FERRY_TOKEN_MAX printable ASCII bytes; empty (or NULL)
 * refused when required, allowed otherwise. */
ferry_status_t ferry_request_id_check(const char *field, const char *id, char *msg, size_t cap);
ferry_status_t ferry_token_check(const char *field, const char *token, int required, char *msg,
                                 size_t cap);
/* A PeerErrorHandling value (types.proto) this build knows: metadata's
 * field 9 and ClaimRequest's field 11. `parent` names the message the field
 * is in ("metadata"), or NULL at the top level. */
ferry_status_t ferry_peer_error_handling_check(const char *parent, int value, char *msg,
                                               size_t cap);

#endif /* FERRY_COMMON_MD_RULES_H */
