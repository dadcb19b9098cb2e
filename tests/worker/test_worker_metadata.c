/*
 * test_worker_metadata.c: RdmaMetadata encode/decode/validate and the
 * local-to-remote match (worker/metadata.c), and the wire messages
 * (worker/wire.c). Pure functions: no UCX.
 *
 * protobuf_c_message_unpack is wrapped (-Wl,--wrap) to count its calls:
 * metadata that would cost too much to unpack must be refused before it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/md_rules.h"
#include "common/pb_wire.h"
#include "worker/coord_client_int.h"
#include "worker/ferry_int.h"

static int unpacks; /* calls of protobuf_c_message_unpack */

ProtobufCMessage *__real_protobuf_c_message_unpack(const ProtobufCMessageDescriptor *desc,
                                                   ProtobufCAllocator *allocator, size_t len,
                                                   const uint8_t *data);
ProtobufCMessage *__wrap_protobuf_c_message_unpack(const ProtobufCMessageDescriptor *desc,
                                                   ProtobufCAllocator *allocator, size_t len,
                                                   const uint8_t *data);

ProtobufCMessage *__wrap_protobuf_c_message_unpack(const ProtobufCMessageDescriptor *desc,
                                                   ProtobufCAllocator *allocator, size_t len,
                                                   const uint8_t *data)
{
    unpacks++;
    return __real_protobuf_c_message_unpack(desc, allocator, len, data);
}

typedef struct {
    char bufs[3][64];
    ferry_descriptor_t descs[3];
    uint8_t rkey_bytes[3][8];
    const void *rkeys[3];
    size_t rkey_lens[3];
    uint8_t key[FERRY__KEY_LEN];
    uint8_t address[32];
    uint8_t *bytes;
    size_t len;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    for (int i = 0; i < 3; i++) {
        f->descs[i] =
            (ferry_descriptor_t){f->bufs[i], 16u * (unsigned)(i + 1), FERRY_DEVICE_HOST_INIT};
        memset(f->rkey_bytes[i], 0xa0 + i, sizeof(f->rkey_bytes[i]));
        f->rkeys[i] = f->rkey_bytes[i];
        f->rkey_lens[i] = sizeof(f->rkey_bytes[i]);
    }
    for (int i = 0; i < FERRY__KEY_LEN; i++) {
        f->key[i] = (uint8_t)(i * 17 + 1);
    }
    memset(f->address, 0x5a, sizeof(f->address));
    ferry__metadata_build_t b = {
        .kind = FERRY__KIND_WRITABLE,
        .worker_address = f->address,
        .worker_address_len = sizeof(f->address),
        .descs = f->descs,
        .n = 3,
        .rkeys = f->rkeys,
        .rkey_lens = f->rkey_lens,
        .key = f->key,
        .worker_name = "recv-1",
        .hostname = "node-a",
        .peer_error_handling = true,
    };
    assert_int_equal(ferry__metadata_encode(&b, &f->bytes, &f->len), FERRY_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    free(f->bytes);
    free(f);
    return 0;
}

static void test_round_trip(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__RdmaMetadata *md = NULL;

    assert_int_equal(ferry__metadata_decode(f->bytes, f->len, &md), FERRY_OK);
    assert_int_equal(md->version, 1);
    assert_int_equal(md->kind, FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE);
    assert_int_equal(md->peer_error_handling,
                     FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON);
    assert_int_equal(md->worker_address.len, sizeof(f->address));
    assert_memory_equal(md->worker_address.data, f->address, sizeof(f->address));
    assert_int_equal(md->notification_key.len, FERRY__KEY_LEN);
    assert_memory_equal(md->notification_key.data, f->key, FERRY__KEY_LEN);
    assert_string_equal(md->worker_name, "recv-1");
    assert_string_equal(md->hostname, "node-a");
    assert_int_equal(md->n_descriptors, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(md->descriptors[i]->address, (uint64_t)(uintptr_t)f->bufs[i]);
        assert_int_equal(md->descriptors[i]->size, 16u * (unsigned)(i + 1));
        assert_int_equal(md->descriptors[i]->device->kind,
                         FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST);
        assert_memory_equal(md->descriptors[i]->rkey.data, f->rkey_bytes[i], 8);
    }
    assert_int_equal(ferry__metadata_match(md, FERRY__KIND_WRITE, f->descs, 3), FERRY_OK);
    ferry__metadata_free(md);
}

static void test_kind_mismatch(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__RdmaMetadata *md = NULL;

    assert_int_equal(ferry__metadata_decode(f->bytes, f->len, &md), FERRY_OK);
    assert_int_equal(ferry__metadata_match(md, FERRY__KIND_READ, f->descs, 3),
                     FERRY_ERR_KIND_MISMATCH);
    assert_non_null(strstr(ferry_last_error_message(), "metadata is for a writable operation"));
    md->kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ;
    assert_int_equal(ferry__metadata_match(md, FERRY__KIND_WRITE, f->descs, 3),
                     FERRY_ERR_KIND_MISMATCH);
    assert_non_null(strstr(ferry_last_error_message(), "metadata is for a readable operation"));
    ferry__metadata_free(md);
}

static void test_size_mismatch_names_both(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__RdmaMetadata *md = NULL;
    ferry_descriptor_t local[3];

    memcpy(local, f->descs, sizeof(local));
    local[2].size = 47;
    assert_int_equal(ferry__metadata_decode(f->bytes, f->len, &md), FERRY_OK);
    assert_int_equal(ferry__metadata_match(md, FERRY__KIND_WRITE, local, 3),
                     FERRY_ERR_SIZE_MISMATCH);
    assert_string_equal(ferry_last_error_message(),
                        "descriptor 2: local size 47 != remote size 48");
    assert_int_equal(ferry__metadata_match(md, FERRY__KIND_WRITE, local, 2),
                     FERRY_ERR_SIZE_MISMATCH);
    assert_string_equal(ferry_last_error_message(), "descriptor count mismatch: 2 local, 3 remote");
    ferry__metadata_free(md);
}

static void test_truncated(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__RdmaMetadata *md = NULL;

    /* The optional worker_name, hostname (8 bytes each here) and
     * peer_error_handling (2) come last: every shorter prefix fails to
     * decode or misses a required field. */
    size_t required_end = f->len - 2 * (2 + strlen("recv-1")) - 2;
    for (size_t len = 0; len < required_end; len++) {
        assert_int_equal(ferry__metadata_decode(f->bytes, len, &md), FERRY_ERR_INVALID_ARGUMENT);
        assert_null(md);
        assert_non_null(strstr(ferry_last_error_message(), "metadata"));
    }
}

static void test_random_bytes(void **state)
{
    uint8_t junk[256];
    Ferry__V1__RdmaMetadata *md = NULL;
    unsigned seed = 12345;
    (void)state;

    for (int round = 0; round < 500; round++) {
        size_t len = 1 + (size_t)(rand_r(&seed) % (int)sizeof(junk));
        for (size_t i = 0; i < len; i++) {
            junk[i] = (uint8_t)rand_r(&seed);
        }
        assert_int_equal(ferry__metadata_decode(junk, len, &md), FERRY_ERR_INVALID_ARGUMENT);
        assert_null(md);
    }
}

/* Decodes the fixture, lets mutate() break one field, re-packs, expects the
 * decode to fail naming `field`. */
static void expect_field_error(fixture_t *f, void (*mutate)(Ferry__V1__RdmaMetadata *),
                               const char *field)
{
    Ferry__V1__RdmaMetadata *md = NULL;
    Ferry__V1__RdmaMetadata *again = NULL;
    uint8_t *bytes;
    size_t len;

    Ferry__V1__RdmaMetadata saved;
    Ferry__V1__Descriptor saved_descs[3];
    Ferry__V1__Device saved_devices[3];

    assert_int_equal(ferry__metadata_decode(f->bytes, f->len, &md), FERRY_OK);
    /* Shallow copies, so the unpacked message can be freed intact. */
    saved = *md;
    for (int i = 0; i < 3; i++) {
        saved_descs[i] = *md->descriptors[i];
        saved_devices[i] = *md->descriptors[i]->device;
    }
    mutate(md);
    len = ferry__v1__rdma_metadata__get_packed_size(md);
    bytes = malloc(len + 1);
    ferry__v1__rdma_metadata__pack(md, bytes);
    *md = saved;
    for (int i = 0; i < 3; i++) {
        *md->descriptors[i] = saved_descs[i];
        *md->descriptors[i]->device = saved_devices[i];
    }
    assert_int_equal(ferry__metadata_decode(bytes, len, &again), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(again);
    if (strstr(ferry_last_error_message(), field) == NULL) {
        fail_msg("error \"%s\" does not name %s", ferry_last_error_message(), field);
    }
    free(bytes);
    ferry__metadata_free(md);
}

static void drop_kind(Ferry__V1__RdmaMetadata *md)
{
    md->kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_UNSPECIFIED;
}
static void drop_address(Ferry__V1__RdmaMetadata *md)
{
    md->worker_address.len = 0;
}
/* Bounds the coordinator always had now hold for the library too. */
static uint8_t huge_rkey[4097];
static void huge_rkey_in_1(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[1]->rkey.data = huge_rkey;
    md->descriptors[1]->rkey.len = sizeof(huge_rkey);
}
static void short_key(Ferry__V1__RdmaMetadata *md)
{
    md->notification_key.len = 15;
}
static void drop_descriptors(Ferry__V1__RdmaMetadata *md)
{
    md->n_descriptors = 0;
}
static void zero_size(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[1]->size = 0;
}
static void zero_address(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[2]->address = 0;
}
static void drop_device(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[0]->device = NULL;
}
static void drop_rkey(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[1]->rkey.len = 0;
}
static void mixed_devices(Ferry__V1__RdmaMetadata *md)
{
    md->descriptors[2]->device->kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA;
}
static void future_version(Ferry__V1__RdmaMetadata *md)
{
    md->version = 9;
}

static void test_missing_fields(void **state)
{
    fixture_t *f = *state;

    expect_field_error(f, drop_kind, "kind");
    expect_field_error(f, drop_address, "worker_address");
    expect_field_error(f, short_key, "notification_key");
    expect_field_error(f, huge_rkey_in_1, "descriptors[1].rkey is 4097 bytes");
    expect_field_error(f, drop_descriptors, "descriptors");
    expect_field_error(f, zero_size, "descriptors[1].size");
    expect_field_error(f, zero_address, "descriptors[2].address");
    expect_field_error(f, drop_device, "descriptors[0].device");
    expect_field_error(f, drop_rkey, "descriptors[1].rkey");
    expect_field_error(f, mixed_devices, "descriptors[2].device differs in kind");
    expect_field_error(f, future_version, "version");
}

static void test_wire_round_trip(void **state)
{
    static const ferry__range_t ranges[] = {{0x7f0000001000ull, 4096}, {0x7f0000100000ull, 1}};
    uint8_t address[100];
    ferry__msg_t in = {0}, out;
    uint8_t *buf;
    size_t len;
    (void)state;

    memset(address, 0x33, sizeof(address));
    in.type = FERRY__MSG_CLAIM;
    memset(in.key, 0x44, sizeof(in.key));
    in.op_id = 0x0102030405060708ull;
    in.op_kind = FERRY__KIND_WRITE;
    in.status = FERRY_ERR_CANCELLED;
    memset(in.nonce, 0x5a, sizeof(in.nonce));
    memset(in.claim_nonce, 0xc1, sizeof(in.claim_nonce));
    in.address = address;
    in.address_len = sizeof(address);
    in.ranges = ranges;
    in.n_ranges = 2;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    assert_int_equal(out.type, FERRY__MSG_CLAIM);
    assert_int_equal(out.n_ranges, 2);
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(ferry__msg_range(&out, i).address, ranges[i].address);
        assert_int_equal(ferry__msg_range(&out, i).length, ranges[i].length);
    }
    assert_memory_equal(out.key, in.key, sizeof(in.key));
    assert_int_equal(out.op_id, in.op_id);
    assert_int_equal(out.op_kind, FERRY__KIND_WRITE);
    assert_false(out.peer_errors_said);
    assert_false(out.peer_errors);
    assert_int_equal(out.status, FERRY_ERR_CANCELLED);
    assert_int_equal(out.address_len, sizeof(address));
    assert_memory_equal(out.address, address, sizeof(address));
    assert_memory_equal(out.nonce, in.nonce, sizeof(in.nonce));
    assert_memory_equal(out.claim_nonce, in.claim_nonce, sizeof(in.claim_nonce));
    /* The claimant's peer_error_handling rides in op_kind's top bits: said
     * (0x40), and on (0x80). */
    free(buf);
    in.peer_errors_said = true;
    in.peer_errors = true;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(buf[5], FERRY__KIND_WRITE | 0xc0);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    assert_int_equal(out.op_kind, FERRY__KIND_WRITE);
    assert_true(out.peer_errors_said);
    assert_true(out.peer_errors);
    /* Truncation, a bad magic, an unknown type, a claim without a claim
     * nonce, without ranges or with more than a claim can name: all
     * PROTOCOL. */
    assert_int_equal(ferry__msg_decode(buf, len - 1, &out), FERRY_ERR_PROTOCOL);
    assert_int_equal(ferry__msg_decode(buf, 10, &out), FERRY_ERR_PROTOCOL);
    buf[4] = 9;
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    buf[4] = FERRY__MSG_CLAIM;
    memset(buf + 56, 0, FERRY__NONCE_LEN);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    buf[56] = 1;
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    buf[6] = 0;
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    buf[6] = (uint8_t)(FERRY__CLAIM_RANGES_MAX + 1);
    buf[7] = (uint8_t)((FERRY__CLAIM_RANGES_MAX + 1) >> 8);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    buf[6] = 2;
    buf[7] = 0;
    buf[0] ^= 1;
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    free(buf);
}

/* Each type's tail is exactly what it carries: a CLAIM its ranges and an
 * address (any length but none), CHUNK and CREDIT their 24-byte record, ADMIT and NOTICE
 * nothing. An ADMIT or NOTICE with a tail of up to 64 KiB was taken, and
 * queued whole: a few peers filled the inbox's byte bound for everyone. */
static void test_wire_tails(void **state)
{
    static const ferry__msg_type_t bare[] = {FERRY__MSG_ADMIT, FERRY__MSG_NOTICE};
    static const ferry__range_t range = {0x7f0000001000ull, 4096};
    uint8_t tail[100];
    ferry__msg_t in = {0}, out;
    uint8_t *buf;
    size_t len;
    (void)state;

    memset(tail, 0x5c, sizeof(tail));
    memset(in.claim_nonce, 0xc1, sizeof(in.claim_nonce));
    for (size_t i = 0; i < sizeof(bare) / sizeof(bare[0]); i++) {
        in.type = bare[i];
        in.address = NULL;
        in.address_len = 0;
        assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
        assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
        free(buf);
        in.address = tail;
        in.address_len = sizeof(tail);
        assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
        assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
        /* 24 bytes, a CHUNK's record, is no tail of theirs either. */
        buf[36] = 24;
        assert_int_equal(ferry__msg_decode(buf, 72 + 24, &out), FERRY_ERR_PROTOCOL);
        free(buf);
    }
    /* A CHUNK without its record. */
    in.type = FERRY__MSG_CHUNK;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    buf[36] = 0;
    assert_int_equal(ferry__msg_decode(buf, 72, &out), FERRY_ERR_PROTOCOL);
    free(buf);
    /* A CLAIM: an address of any length, but one, after its ranges. */
    in.type = FERRY__MSG_CLAIM;
    in.address = tail;
    in.address_len = 24;
    in.ranges = &range;
    in.n_ranges = 1;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    assert_int_equal(out.address_len, 24);
    assert_memory_equal(out.address, tail, 24);
    free(buf);
    in.address_len = 0;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_ERR_PROTOCOL);
    free(buf);
}

/* A message's status is a peer's number: the decoder gives the codes a
 * peer may report as they are, another code of the table as PEER_FAILED,
 * and anything else as PROTOCOL (wire.c: ferry__msg_peer_status). */
static void test_wire_peer_status(void **state)
{
    static const struct {
        int32_t sent;
        ferry_status_t taken;
    } cases[] = {
        {FERRY_OK, FERRY_OK},
        {FERRY_ERR_CANCELLED, FERRY_ERR_CANCELLED},
        {FERRY_ERR_TRANSPORT, FERRY_ERR_TRANSPORT},
        {FERRY_ERR_NOT_FOUND, FERRY_ERR_NOT_FOUND},
        {FERRY_ERR_EXPIRED, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_MISUSE, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_LEASE_NOT_FOUND, FERRY_ERR_PEER_FAILED},
        {7, FERRY_ERR_PROTOCOL},
        {-1000, FERRY_ERR_PROTOCOL},
        {INT32_MIN, FERRY_ERR_PROTOCOL},
    };
    ferry__msg_t in = {.type = FERRY__MSG_NOTICE}, out;
    uint8_t *buf;
    size_t len;
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        in.status = (ferry_status_t)cases[i].sent;
        assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
        assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
        assert_int_equal(out.status, cases[i].taken);
        free(buf);
    }
}
/* Packed metadata costs protobuf-c far more than its size to unpack (a
 * struct and a pointer for every descriptor), so its size and its count of
 * descriptors are refused on the bytes, before any unpack (audit-s32 L1):
 * 4 MiB of empty descriptors, a Claim answer's bound, used to become some
 * 244 MiB of heap before ferry_md_check counted them. */
static void test_costly_metadata_refused_before_unpacking(void **state)
{
    static char buf[FERRY_MD_DESCRIPTORS_MAX];
    static ferry_descriptor_t descs[FERRY_MD_DESCRIPTORS_MAX];
    static const void *rkeys[FERRY_MD_DESCRIPTORS_MAX];
    static size_t rkey_lens[FERRY_MD_DESCRIPTORS_MAX];
    fixture_t *f = *state;
    Ferry__V1__RdmaMetadata *md = NULL;
    size_t flood_len = 4u << 20, len;
    uint8_t *flood = malloc(flood_len), *bytes, *more;

    assert_non_null(flood);
    for (size_t i = 0; i < flood_len; i += 2) {
        flood[i] = 0x22;     /* field 4 (descriptors), length-delimited */
        flood[i + 1] = 0x00; /* an empty Descriptor */
    }
    unpacks = 0;
    assert_int_equal(ferry__metadata_decode(flood, flood_len, &md), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(md);
    assert_string_equal(ferry_last_error_message(),
                        "metadata is 4194304 bytes packed; at most 1048576 allowed");
    assert_int_equal(unpacks, 0);
    /* Within the size, one descriptor past the count. */
    assert_int_equal(ferry__metadata_decode(flood, 2 * (FERRY_MD_DESCRIPTORS_MAX + 1), &md),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(ferry_last_error_message(),
                        "metadata.descriptors has more than 1024 entries; 1 to 1024 allowed");
    assert_int_equal(unpacks, 0);
    free(flood);

    /* The most descriptors allowed still decode; one more, anywhere in the
     * bytes, is refused before the unpack. */
    for (size_t i = 0; i < FERRY_MD_DESCRIPTORS_MAX; i++) {
        descs[i] = (ferry_descriptor_t){&buf[i], 1, FERRY_DEVICE_HOST_INIT};
        rkeys[i] = f->rkey_bytes[0];
        rkey_lens[i] = sizeof(f->rkey_bytes[0]);
    }
    ferry__metadata_build_t b = {
        .kind = FERRY__KIND_WRITABLE,
        .worker_address = f->address,
        .worker_address_len = sizeof(f->address),
        .descs = descs,
        .n = FERRY_MD_DESCRIPTORS_MAX,
        .rkeys = rkeys,
        .rkey_lens = rkey_lens,
        .key = f->key,
    };
    assert_int_equal(ferry__metadata_encode(&b, &bytes, &len), FERRY_OK);
    unpacks = 0;
    assert_int_equal(ferry__metadata_decode(bytes, len, &md), FERRY_OK);
    assert_int_equal(md->n_descriptors, FERRY_MD_DESCRIPTORS_MAX);
    assert_int_equal(unpacks, 1); /* the wrap counts */
    ferry__metadata_free(md);
    md = NULL;
    more = malloc(len + 2);
    assert_non_null(more);
    more[0] = 0x22;
    more[1] = 0x00;
    memcpy(more + 2, bytes, len);
    unpacks = 0;
    assert_int_equal(ferry__metadata_decode(more, len + 2, &md), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(md);
    assert_non_null(strstr(ferry_last_error_message(), "metadata.descriptors has more than 1024"));
    assert_int_equal(unpacks, 0);
    free(more);
    free(bytes);
}

/* A Claim answer (ClaimResponse bytes), its fields in the order a
 * coordinator writes them: an operation whose metadata is md[0..md_len),
 * claim_lease_id 77, ttl_seconds 5, lease_token "tok", claim_id 9. Free
 * it. */
static uint8_t *claim_answer(const uint8_t *md, size_t md_len, size_t *len_p)
{
    uint8_t *answer = malloc(md_len + 48), *p = answer;
    size_t op_len;

    assert_non_null(answer);
    *p++ = 0x12; /* operation (2), length-delimited */
    op_len = 1 + ferry_pb_put_varint((uint8_t[10]){0}, md_len) + md_len;
    p += ferry_pb_put_varint(p, op_len);
    *p++ = 0x22; /* metadata (4), length-delimited */
    p += ferry_pb_put_varint(p, md_len);
    memcpy(p, md, md_len);
    p += md_len;
    *p++ = 0x18; /* claim_lease_id (3), a varint */
    p += ferry_pb_put_varint(p, 77);
    *p++ = 0x20; /* ttl_seconds (4) */
    p += ferry_pb_put_varint(p, 5);
    *p++ = 0x2a; /* lease_token (5), length-delimited */
    *p++ = 3;
    memcpy(p, "tok", 3);
    p += 3;
    *p++ = 0x30; /* claim_id (6) */
    p += ferry_pb_put_varint(p, 9);
    *len_p = (size_t)(p - answer);
    return answer;
}

/* The same bounds on a Claim's answer, read on its bytes, nothing of it
 * unpacked (the whole answer's unpack decoded the metadata, protobuf-c
 * building its descriptors: a hostile replica's answer cost ~176 MiB of
 * heap; audit-s32 L1), the claim's lease read first, so that a claim
 * whose metadata is refused can still be given up (review-s32c L1). */
static void test_costly_claim_answer_refused_before_unpacking(void **state)
{
    fixture_t *f = *state;
    ferry_claim_params_t params = {.request_id = "r"};
    size_t flood_len = FERRY_MD_PACKED_MAX + 2, len, md_len;
    uint8_t *flood = malloc(flood_len), *md, *twice;
    claim_out_t out = {0};

    assert_non_null(flood);
    for (size_t i = 0; i < flood_len; i += 2) {
        flood[i] = 0x22;
        flood[i + 1] = 0x00;
    }
    for (int round = 0; round < 2; round++) {
        /* Past the packed bound; then within it, one descriptor too many. */
        size_t n = round == 0 ? flood_len : 2 * (FERRY_MD_DESCRIPTORS_MAX + 1);
        out = (claim_out_t){.answer = claim_answer(flood, n, &len)};
        unpacks = 0;
        assert_int_equal(ferry__coord_claim_read(&params, &out, len), FERRY_ERR_PROTOCOL);
        assert_non_null(strstr(ferry_last_error_message(), "operation.metadata"));
        assert_int_equal(unpacks, 0);
        assert_int_equal(out.lease, 77);
        free(out.answer);
    }
    free(flood);
    /* An operation twice (protobuf would merge them: no one span is it). */
    out = (claim_out_t){.answer = claim_answer((const uint8_t *)"", 0, &len)};
    twice = malloc(2 * len);
    assert_non_null(twice);
    memcpy(twice, out.answer, len);
    memcpy(twice + len, out.answer, len);
    free(out.answer);
    out = (claim_out_t){.answer = twice};
    assert_int_equal(ferry__coord_claim_read(&params, &out, 2 * len), FERRY_ERR_PROTOCOL);
    assert_non_null(strstr(ferry_last_error_message(), "holds its operation twice"));
    assert_int_equal(out.lease, 77);
    free(twice);
    /* Cut short in a field; and no answer at all. */
    out = (claim_out_t){.answer = claim_answer((const uint8_t *)"xy", 2, &len)};
    assert_int_equal(ferry__coord_claim_read(&params, &out, len - 1), FERRY_ERR_PROTOCOL);
    assert_non_null(strstr(ferry_last_error_message(), "malformed"));
    free(out.answer);
    out = (claim_out_t){0};
    assert_int_equal(ferry__coord_claim_read(&params, &out, 0), FERRY_ERR_PROTOCOL);
    assert_non_null(strstr(ferry_last_error_message(), "has no metadata"));

    /* A real one is read: the lease, and the metadata's span as it came. */
    ferry__metadata_build_t b = {
        .kind = FERRY__KIND_WRITABLE,
        .worker_address = f->address,
        .worker_address_len = sizeof(f->address),
        .descs = f->descs,
        .n = 1,
        .rkeys = f->rkeys,
        .rkey_lens = f->rkey_lens,
        .key = f->key,
    };
    assert_int_equal(ferry__metadata_encode(&b, &md, &md_len), FERRY_OK);
    out = (claim_out_t){.answer = claim_answer(md, md_len, &len)};
    unpacks = 0;
    assert_int_equal(ferry__coord_claim_read(&params, &out, len), FERRY_OK);
    assert_int_equal(unpacks, 0); /* the metadata is the data plane's to decode */
    assert_int_equal(out.ttl_s, 5);
    assert_string_equal(out.token, "tok");
    assert_int_equal(out.id, 9);
    assert_int_equal(out.lease, 77);
    assert_int_equal(out.md_len, md_len);
    assert_memory_equal(out.md, md, md_len);
    free(out.answer);
    free(md);
}

/* A Claim answer with field[0..field_len) before claim_answer's fields
 * (whose metadata is "xy"), or after them. Free it. */
static uint8_t *claim_answer_and(const uint8_t *field, size_t field_len, bool before, size_t *len_p)
{
    size_t rest_len;
    uint8_t *rest = claim_answer((const uint8_t *)"xy", 2, &rest_len);
    uint8_t *answer = malloc(field_len + rest_len);

    assert_non_null(answer);
    memcpy(answer + (before ? 0 : rest_len), field, field_len);
    memcpy(answer + (before ? field_len : 0), rest, rest_len);
    free(rest);
    *len_p = field_len + rest_len;
    return answer;
}

/* A known field of a Claim's answer that does not read as its type is
 * refused by name, once the whole answer was read, so that the claim's
 * lease is known to give it up (review-s32e): a lease_token of
 * LEASE_TOKEN_CAP bytes or more, or with a NUL, used to be cut, and
 * failed only at KeepAlive or Complete, as a token that did not match; a
 * scalar of another wire type was skipped (read as its zero value); an
 * operation of another wire type was reported as one held twice. */
static void test_claim_answer_fields_not_of_their_type_refused(void **state)
{
    ferry_claim_params_t params = {.request_id = "r"};
    uint8_t token[3 + LEASE_TOKEN_CAP] = {0x2a}; /* lease_token (5), length-delimited */
    size_t at, len;
    static const struct {
        const char *field;
        size_t field_len;
        const char *name;
    } bad[] = {
        {"\x2a\x03t\0k", 5, "lease_token"}, /* a NUL inside */
        {"\x28\x01", 2, "lease_token"},     /* a varint */
        {"\x1a\x00", 2, "claim_lease_id"},  /* length-delimited */
        {"\x21zzzzzzzz", 9, "ttl_seconds"}, /* fixed64 */
        {"\x35zzzz", 5, "claim_id"},        /* fixed32 */
        {"\x10\x01", 2, "operation"},       /* a varint */
    };
    claim_out_t out;
    char want[64];

    (void)state;
    /* LEASE_TOKEN_CAP bytes: one too many. */
    at = 1 + ferry_pb_put_varint(token + 1, LEASE_TOKEN_CAP);
    memset(token + at, 'k', LEASE_TOKEN_CAP);
    out = (claim_out_t){.answer = claim_answer_and(token, at + LEASE_TOKEN_CAP, true, &len)};
    assert_int_equal(ferry__coord_claim_read(&params, &out, len), FERRY_ERR_PROTOCOL);
    assert_non_null(strstr(ferry_last_error_message(), "malformed lease_token"));
    assert_int_equal(out.lease, 77); /* read after the refused field */
    free(out.answer);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = (claim_out_t){.answer = claim_answer_and((const uint8_t *)bad[i].field,
                                                       bad[i].field_len, true, &len)};
        assert_int_equal(ferry__coord_claim_read(&params, &out, len), FERRY_ERR_PROTOCOL);
        snprintf(want, sizeof(want), "malformed %s", bad[i].name);
        assert_non_null(strstr(ferry_last_error_message(), want));
        assert_null(strstr(ferry_last_error_message(), "twice"));
        assert_int_equal(out.lease, 77);
        free(out.answer);
    }
    /* The longest that fits is read whole (the last of two, as protobuf). */
    at = 1 + ferry_pb_put_varint(token + 1, LEASE_TOKEN_CAP - 1);
    memset(token + at, 'k', LEASE_TOKEN_CAP - 1);
    out = (claim_out_t){.answer = claim_answer_and(token, at + LEASE_TOKEN_CAP - 1, false, &len)};
    assert_int_equal(ferry__coord_claim_read(&params, &out, len), FERRY_OK);
    assert_int_equal(strlen(out.token), LEASE_TOKEN_CAP - 1);
    assert_int_equal(strspn(out.token, "k"), LEASE_TOKEN_CAP - 1);
    free(out.answer);
}

/* A message that wraps the one it replaces, as the callers that add their
 * context do (ferry__fail(s, "...: %s", ferry_last_error_message())),
 * reads whole: it used to be formatted over the buffer it read from, and
 * came out doubled and cut. */
static void test_fail_wraps_its_own_message(void **state)
{
    char inner[200];
    (void)state;

    memset(inner, 'k', sizeof(inner) - 1);
    inner[sizeof(inner) - 1] = '\0';
    assert_int_equal(ferry__fail(FERRY_ERR_IO, "key %s", inner), FERRY_ERR_IO);
    assert_int_equal(ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "metadata: descriptors[%d].rkey: %s",
                                 3, ferry_last_error_message()),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_memory_equal(ferry_last_error_message(), "metadata: descriptors[3].rkey: key kkk",
                        strlen("metadata: descriptors[3].rkey: key kkk"));
    /* all of it: 234 bytes fit the buffer */
    assert_int_equal(strlen(ferry_last_error_message()), 31 + 4 + 199);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kind_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_mismatch_names_both, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_costly_metadata_refused_before_unpacking, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_costly_claim_answer_refused_before_unpacking, setup,
                                        teardown),
        cmocka_unit_test(test_claim_answer_fields_not_of_their_type_refused),
        cmocka_unit_test(test_wire_round_trip),
        cmocka_unit_test(test_wire_tails),
        cmocka_unit_test(test_wire_peer_status),
        cmocka_unit_test(test_fail_wraps_its_own_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
