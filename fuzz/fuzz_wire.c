/*
 * fuzz_wire.c: libferry's active-message decoder (worker/wire.c), which
 * reads every CLAIM, ADMIT and NOTICE a peer sends before anything acts on
 * it.
 *
 * Input: the bytes of one active message, as UCX hands them over.
 *
 * Invariants beyond "no crash": a message that decodes has a known type,
 * a CLAIM carries 1..FERRY__CLAIM_RANGES_MAX ranges, then an address, and
 * a claim nonce, all inside the input; a CHUNK or CREDIT carries its chunk
 * record and no address; its status is the peer's number as
 * ferry__msg_peer_status maps it (one a peer may report); and it encodes
 * back to the same bytes (the reserved bytes of a type other than CLAIM
 * aside, which the decoder ignores and the encoder writes as zero, and the
 * status, which it writes as mapped).
 */
#include <string.h>

#include "fuzz.h"
#include "worker/ferry_int.h"

#define WIRE_RESERVED_OFF 6
#define WIRE_RESERVED_LEN 2
#define WIRE_STATUS_OFF   32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ferry__msg_t msg;
    uint8_t *again;
    size_t again_len;
    uint8_t *expect;
    uint32_t raw;

    if (ferry__msg_decode(data, size, &msg) != FERRY_OK) {
        return 0;
    }
    fuzz_assert(msg.type == FERRY__MSG_CLAIM || msg.type == FERRY__MSG_ADMIT ||
                msg.type == FERRY__MSG_NOTICE || msg.type == FERRY__MSG_CHUNK ||
                msg.type == FERRY__MSG_CREDIT);
    fuzz_assert(msg.type != FERRY__MSG_CLAIM ||
                (msg.address_len > 0 && !ferry__nonce_is_zero(msg.claim_nonce) &&
                 msg.n_ranges >= 1 && msg.n_ranges <= FERRY__CLAIM_RANGES_MAX &&
                 msg.ranges_wire == data + 72 && msg.address == data + 72 + 16 * msg.n_ranges));
    fuzz_assert(msg.type == FERRY__MSG_CLAIM || (msg.n_ranges == 0 && msg.ranges_wire == NULL));
    fuzz_assert((msg.type != FERRY__MSG_CHUNK && msg.type != FERRY__MSG_CREDIT) ||
                (msg.address_len == 0 && size == 72 + 24));
    fuzz_assert(msg.address_len == 0 || (msg.address >= data && msg.address_len <= size &&
                                         msg.address + msg.address_len == data + size));

    raw = (uint32_t)data[WIRE_STATUS_OFF] | (uint32_t)data[WIRE_STATUS_OFF + 1] << 8 |
          (uint32_t)data[WIRE_STATUS_OFF + 2] << 16 | (uint32_t)data[WIRE_STATUS_OFF + 3] << 24;
    fuzz_assert(msg.status == ferry__msg_peer_status((int32_t)raw));
    fuzz_assert(ferry__msg_peer_status(msg.status) == msg.status); /* mapped once is final */

    fuzz_assert(ferry__msg_encode(&msg, &again, &again_len) == FERRY_OK);
    expect = malloc(size);
    fuzz_assert(expect != NULL);
    memcpy(expect, data, size);
    if (msg.type != FERRY__MSG_CLAIM) {
        memset(expect + WIRE_RESERVED_OFF, 0, WIRE_RESERVED_LEN);
    }
    for (int i = 0; i < 4; i++) {
        expect[WIRE_STATUS_OFF + i] = (uint8_t)((uint32_t)msg.status >> (8 * i));
    }
    fuzz_assert(again_len == size && memcmp(again, expect, size) == 0);
    free(expect);
    free(again);
    return 0;
}
