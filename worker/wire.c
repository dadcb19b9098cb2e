/*
 * wire.c: the active messages two connectors exchange (UCX AM id
 * FERRY__AM_ID). One fixed little-endian layout for every type:
 *
 *   offset  size  field
 *   0       4     magic "FRY4" (0x34595246 read as little-endian u32)
 *   4       1     type: 1 CLAIM, 2 ADMIT, 3 NOTICE, 4 CHUNK, 5 CREDIT
 *   5       1     op_kind (CLAIM: 2 write, 3 read, plus 0x40: the
 *                 claimant says its peer_error_handling, and 0x80: it is
 *                 on, its endpoints ask for peer failure detection; else 0)
 *   6       2     CLAIM: how many ranges (1..FERRY__CLAIM_RANGES_MAX); else 0
 *   8       16    notification key of the passive operation
 *   24      8     active operation id (CLAIM, ADMIT, CREDIT; else 0)
 *   32      4     status, a ferry_status_t (ADMIT, NOTICE, CREDIT; else 0)
 *   36      4     tail length (CLAIM: 16 per range + the address's;
 *                 CHUNK, CREDIT: 24; else 0)
 *   40      16    admission nonce (ADMIT that admits, NOTICE, CHUNK; else 0)
 *   56      16    claim nonce (CLAIM, ADMIT, CREDIT; else 0)
 *   72      ...   the tail: CLAIM: its ranges (u64 address, u64 length
 *                 each), then the claimant's UCX worker address;
 *                 CHUNK, CREDIT: the chunk record below
 *
 * The chunk record (the staged path, staged.c): u32 slot, u32 descriptor
 * index, u64 offset, u64 length. CHUNK (active -> passive) says a slot holds
 * that part of that descriptor (a write), or asks for it in that slot (a
 * read); CREDIT (passive -> active, status FERRY_OK) gives the slot back
 * (write) or says it holds the chunk (read), or stops the writer or reader
 * (an error status: the passive side failed or was cancelled).
 *
 * Each side accepts what comes to it only with a secret it drew itself and
 * sent only to the other. The admission nonce ties a NOTICE (and a CHUNK)
 * to the one writer (or reader) the passive side admitted: the passive
 * side draws it at admission, sends it only in the ADMIT (on the
 * claimant's own connection), and accepts a NOTICE or CHUNK only when it
 * carries it back. The claim nonce is the mirror image: the active side
 * draws it for its CLAIM and accepts an ADMIT or CREDIT only when it
 * carries it back, so that a third party who knows the notification key
 * (anyone holding the metadata) and guesses the active operation's id (they
 * count up) can neither refuse a claim for the passive side nor lend a
 * staging slot that was never filled. Knowing the key is enough to claim,
 * never to complete or to steer a transfer.
 *
 * A CLAIM also names the memory the claimant will write or read: the
 * ranges of the metadata it holds (every descriptor, then the staging
 * block), and the passive side admits it only when they are exactly its
 * own. Metadata is its registrar's word, and a writer puts to the
 * addresses it names: over transports that resolve a remote address in the
 * target process (TCP, CMA, and UCX's self transport, which a connector
 * reaches when the metadata names its own worker or another connector of
 * its process), nothing but this check stops edited metadata from making
 * an honest writer write into an honest target's memory outside the
 * operation (its own memory, when the target is itself), or an honest
 * reader read from there. "FRY1" (no admission nonce), "FRY2" (no claim
 * nonce) and "FRY3" (no ranges) messages are refused as malformed, as is a
 * CLAIM without a claim nonce or without ranges.
 *
 * The decoder trusts nothing: every length is checked against the buffer
 * before it is read, the address it returns is opaque bytes (the passive
 * side never hands a claim's address to UCX before admission), and the
 * status it returns is one a peer may report (ferry__msg_peer_status): the
 * number becomes an operation's error code, which ferry_op_wait returns and
 * the coordinator client reports and stores, so a peer must not be able to
 * invent a code or speak for this side's own lease or caller.
 *
 * Pure functions: any thread.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/ferry_int.h"

#define WIRE_MAGIC       0x34595246u
#define WIRE_FIXED       72u
#define WIRE_MAXADR      (64u * 1024u)
#define WIRE_CHUNK       24u
#define WIRE_RANGE       16u
#define WIRE_PEER_SAID   0x40u /* CLAIM's op_kind: the claimant says ... */
#define WIRE_PEER_ERRORS 0x80u /* ... its peer_error_handling, and it is on */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        v |= (uint32_t)p[i] << (8 * i);
    }
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

bool ferry__nonce_equal(const uint8_t *a, const uint8_t *b)
{
    uint8_t diff = 0;

    for (size_t i = 0; i < FERRY__NONCE_LEN; i++) {
        diff |= (uint8_t)(a[i] ^ b[i]);
    }
    return diff == 0;
}

bool ferry__nonce_is_zero(const uint8_t *nonce)
{
    static const uint8_t zero[FERRY__NONCE_LEN];
    return ferry__nonce_equal(nonce, zero);
}

ferry_status_t ferry__msg_peer_status(int32_t status)
{
    switch ((ferry_status_t)status) {
    case FERRY_OK:
    /* What happens to a transfer at either end: a refusal (admission),
     * the other side's cancel or failure, its transport or memory, a
     * message it found malformed. */
    case FERRY_ERR_INVALID_ARGUMENT:
    case FERRY_ERR_NOT_FOUND:
    case FERRY_ERR_FAILED_PRECONDITION:
    case FERRY_ERR_UNAVAILABLE:
    case FERRY_ERR_CANCELLED:
    case FERRY_ERR_RESOURCE_EXHAUSTED:
    case FERRY_ERR_NO_MEMORY:
    case FERRY_ERR_UNIMPLEMENTED:
    case FERRY_ERR_PROTOCOL:
    case FERRY_ERR_TRANSPORT:
    case FERRY_ERR_PEER_FAILED:
    case FERRY_ERR_IO:
    case FERRY_ERR_INTERNAL:
        return (ferry_status_t)status;
    /* Real codes, but about the peer's own affairs (its lease, its
     * coordinator, its caller's API use): taken as they came they would
     * pass for this side's own (an EXPIRED counts as this side's claim
     * expiring at the coordinator). The peer did report an error. A
     * TIMED_OUT is the peer's own deadline: taken as it came, it would end
     * this side's operation with the code ferry_op_wait returns for a wait
     * whose time ran out, and a caller that waits in slices would take the
     * final operation for one still going. */
    case FERRY_ERR_TIMED_OUT:
    case FERRY_ERR_ALREADY_EXISTS:
    case FERRY_ERR_PERMISSION_DENIED:
    case FERRY_ERR_UNAUTHENTICATED:
    case FERRY_ERR_EXPIRED:
    case FERRY_ERR_ABORTED:
    case FERRY_ERR_MISUSE:
    case FERRY_ERR_LEASE_NOT_FOUND:
    case FERRY_ERR_OUT_OF_RANGE:
    case FERRY_ERR_BUSY:
    case FERRY_ERR_SIZE_MISMATCH:
    case FERRY_ERR_KIND_MISMATCH:
        return FERRY_ERR_PEER_FAILED;
    }
    return FERRY_ERR_PROTOCOL; /* not in the status table: not a status */
}

static bool has_chunk(ferry__msg_type_t type)
{
    return type == FERRY__MSG_CHUNK || type == FERRY__MSG_CREDIT;
}

ferry_status_t ferry__msg_encode(const ferry__msg_t *msg, uint8_t **buf_p, size_t *len_p)
{
    bool claim = msg->type == FERRY__MSG_CLAIM;
    size_t ranges = claim ? (size_t)msg->n_ranges * WIRE_RANGE : 0;
    size_t tail = has_chunk(msg->type) ? WIRE_CHUNK : ranges + msg->address_len;
    size_t len = WIRE_FIXED + tail;
    uint8_t *buf = calloc(1, len);

    if (buf == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "wire: out of memory for a %zu-byte message", len);
    }
    put_u32(buf, WIRE_MAGIC);
    buf[4] = (uint8_t)msg->type;
    buf[5] = msg->op_kind;
    if (claim) {
        buf[5] |= (uint8_t)((msg->peer_errors_said ? WIRE_PEER_SAID : 0) |
                            (msg->peer_errors ? WIRE_PEER_ERRORS : 0));
    }
    if (claim) {
        buf[6] = (uint8_t)msg->n_ranges;
        buf[7] = (uint8_t)(msg->n_ranges >> 8);
    }
    memcpy(buf + 8, msg->key, FERRY__KEY_LEN);
    put_u64(buf + 24, msg->op_id);
    put_u32(buf + 32, (uint32_t)msg->status);
    put_u32(buf + 36, (uint32_t)tail);
    memcpy(buf + 40, msg->nonce, FERRY__NONCE_LEN);
    memcpy(buf + 56, msg->claim_nonce, FERRY__NONCE_LEN);
    if (has_chunk(msg->type)) {
        put_u32(buf + WIRE_FIXED, msg->slot);
        put_u32(buf + WIRE_FIXED + 4, msg->desc);
        put_u64(buf + WIRE_FIXED + 8, msg->offset);
        put_u64(buf + WIRE_FIXED + 16, msg->len);
    } else if (msg->ranges_wire != NULL) {
        memcpy(buf + WIRE_FIXED, msg->ranges_wire, ranges); /* a decoded CLAIM, again */
    } else {
        for (size_t i = 0; i < ranges / WIRE_RANGE; i++) {
            put_u64(buf + WIRE_FIXED + i * WIRE_RANGE, msg->ranges[i].address);
            put_u64(buf + WIRE_FIXED + i * WIRE_RANGE + 8, msg->ranges[i].length);
        }
    }
    if (!has_chunk(msg->type) && msg->address_len > 0) {
        memcpy(buf + WIRE_FIXED + ranges, msg->address, msg->address_len);
    }
    *buf_p = buf;
    *len_p = len;
    return FERRY_OK;
}

/* A CLAIM's tail: its ranges, then an address of 1..WIRE_MAXADR bytes. */
static ferry_status_t decode_claim_tail(const uint8_t *buf, uint32_t tail, ferry__msg_t *msg)
{
    uint32_t n = (uint32_t)buf[6] | (uint32_t)buf[7] << 8;

    if (n == 0 || n > FERRY__CLAIM_RANGES_MAX) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: claim with %u ranges (1 to %u)", n,
                           (unsigned)FERRY__CLAIM_RANGES_MAX);
    }
    if (tail <= n * WIRE_RANGE) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: claim without a worker address");
    }
    if (tail - n * WIRE_RANGE > WIRE_MAXADR) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: claim with a %u-byte worker address",
                           tail - n * WIRE_RANGE);
    }
    msg->n_ranges = n;
    msg->ranges_wire = buf + WIRE_FIXED;
    msg->address = buf + WIRE_FIXED + n * WIRE_RANGE;
    msg->address_len = tail - n * WIRE_RANGE;
    return FERRY_OK;
}

ferry__range_t ferry__msg_range(const ferry__msg_t *msg, uint32_t i)
{
    const uint8_t *p = msg->ranges_wire + (size_t)i * WIRE_RANGE;

    return (ferry__range_t){get_u64(p), get_u64(p + 8)};
}

ferry_status_t ferry__msg_decode(const uint8_t *buf, size_t len, ferry__msg_t *msg)
{
    uint32_t tail;

    if (len < WIRE_FIXED || get_u32(buf) != WIRE_MAGIC) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: %zu-byte message without a valid header",
                           len);
    }
    tail = get_u32(buf + 36);
    if (tail > WIRE_MAXADR + WIRE_RANGE * FERRY__CLAIM_RANGES_MAX || len != WIRE_FIXED + tail) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: length %zu does not match tail length %u",
                           len, tail);
    }
    memset(msg, 0, sizeof(*msg));
    msg->type = (ferry__msg_type_t)buf[4];
    if (msg->type < FERRY__MSG_CLAIM || msg->type > FERRY__MSG_CREDIT) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: unknown message type %u", buf[4]);
    }
    /* Each type's tail is exactly what it carries: CHUNK and CREDIT their
     * 24-byte record, ADMIT and NOTICE nothing (a tail there would only be
     * queued whole, and fill the inbox's byte bound for everyone). */
    if (msg->type != FERRY__MSG_CLAIM && tail != (has_chunk(msg->type) ? WIRE_CHUNK : 0)) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "wire: message type %u with a %u-byte tail", buf[4],
                           tail);
    }
    msg->op_kind = buf[5];
    if (msg->type == FERRY__MSG_CLAIM) {
        msg->peer_errors_said = (buf[5] & WIRE_PEER_SAID) != 0;
        msg->peer_errors = (buf[5] & WIRE_PEER_ERRORS) != 0;
        msg->op_kind = buf[5] & (uint8_t) ~(WIRE_PEER_SAID | WIRE_PEER_ERRORS);
    }
    memcpy(msg->key, buf + 8, FERRY__KEY_LEN);
    msg->op_id = get_u64(buf + 24);
    msg->status = ferry__msg_peer_status((int32_t)get_u32(buf + 32));
    memcpy(msg->nonce, buf + 40, FERRY__NONCE_LEN);
    memcpy(msg->claim_nonce, buf + 56, FERRY__NONCE_LEN);
    if (msg->type == FERRY__MSG_CLAIM) {
        if (ferry__nonce_is_zero(msg->claim_nonce)) {
            return ferry__fail(FERRY_ERR_PROTOCOL, "wire: claim without a claim nonce");
        }
        return decode_claim_tail(buf, tail, msg);
    }
    if (has_chunk(msg->type)) {
        msg->slot = get_u32(buf + WIRE_FIXED);
        msg->desc = get_u32(buf + WIRE_FIXED + 4);
        msg->offset = get_u64(buf + WIRE_FIXED + 8);
        msg->len = get_u64(buf + WIRE_FIXED + 16);
    }
    return FERRY_OK;
}
