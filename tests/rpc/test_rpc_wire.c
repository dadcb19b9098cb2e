/*
 * test_rpc_wire.c: the request walker (rpc_wire.c) refuses strings with a
 * NUL byte or invalid UTF-8 and enum values the enum does not define, in any
 * field at any depth, naming the field's path; and accepts what is valid,
 * unknown fields included. And the span of one field's bytes (rpc_field.c):
 * found where it stands, appended after the other fields, refused when
 * repeated; and a message built from elements of a repeated field packed
 * apart (rpc_msg_pack_repeated) is the message protobuf-c packs whole.
 *
 * Requests are packed with protobuf-c and then patched in place (a marker
 * overwritten by bytes of the same length), since protobuf-c itself cannot
 * pack a string with a NUL inside.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc_int.h"
#include "common/text.h"

static char msg[512];
static uint8_t packed[4096];
static size_t packed_len;

static Ferry__V1__Device devices[2];
static Ferry__V1__Descriptor descs[2];
static Ferry__V1__Descriptor *desc_ptrs[2] = {&descs[0], &descs[1]};
static Ferry__V1__RdmaMetadata md;
static Ferry__V1__RegisterRequest req;

/* A valid RegisterRequest with two descriptors; strings carry markers. */
static void build(void)
{
    static uint8_t addr[8] = {1}, key[16] = {2}, rkey[4] = {3};

    ferry__v1__register_request__init(&req);
    ferry__v1__rdma_metadata__init(&md);
    for (int i = 0; i < 2; i++) {
        ferry__v1__device__init(&devices[i]);
        devices[i].kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST;
        ferry__v1__descriptor__init(&descs[i]);
        descs[i].address = 0x1000;
        descs[i].size = 64;
        descs[i].device = &devices[i];
        descs[i].rkey = (ProtobufCBinaryData){sizeof(rkey), rkey};
    }
    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    md.worker_address = (ProtobufCBinaryData){sizeof(addr), addr};
    md.notification_key = (ProtobufCBinaryData){sizeof(key), key};
    md.n_descriptors = 2;
    md.descriptors = desc_ptrs;
    md.worker_name = "worker-NAME";
    md.hostname = "host-HOST";
    req.request_id = "id-RQID";
    req.access_token = "token-TOKN-0123456789";
    req.owner = "owner-OWNR";
    req.metadata = &md;
}

static void pack(void)
{
    packed_len = ferry__v1__register_request__pack(&req, packed);
    assert_true(packed_len < sizeof(packed));
}

/* Overwrites the 4-byte marker with 4 other bytes. */
static void patch(const char *marker, const char bytes[4])
{
    uint8_t *at = memmem(packed, packed_len, marker, 4);
    assert_non_null(at);
    memcpy(at, bytes, 4);
}

static bool malformed; /* the last check refused the encoding itself */

static ferry_status_t check(void)
{
    msg[0] = '\0';
    malformed = true;
    return rpc__wire_check(&ferry__v1__register_request__descriptor, packed, packed_len, msg,
                           sizeof(msg), &malformed);
}

static void test_valid_request_passes(void **state)
{
    (void)state;
    build();
    req.owner = "Zo\xc3\xab \xe2\x9c\x93 \xf0\x9f\x9a\x80"; /* 2-, 3- and 4-byte forms */
    pack();
    assert_int_equal(check(), FERRY_OK);
    assert_int_equal(
        rpc__wire_check(&ferry__v1__register_request__descriptor, NULL, 0, msg, sizeof(msg), NULL),
        FERRY_OK);
}

static void test_nul_is_refused_with_the_field(void **state)
{
    (void)state;
    build();
    pack();
    patch("RQID", "a\0/.");
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "request_id has a NUL byte at byte 4");
    assert_false(malformed); /* a field's value, which the message names */

    build();
    pack();
    patch("TOKN", "\0\0\0\0");
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "access_token has a NUL byte"));
}

static void test_invalid_utf8_is_refused_with_the_path(void **state)
{
    static const struct {
        const char *bytes; /* 4 bytes */
        const char *why;
    } bad[] = {
        {"\xc3\x28xx", "a lead byte without its continuation"},
        {"\x80xxx", "a lone continuation byte"},
        {"\xc0\x80xx", "an overlong NUL"},
        {"\xe0\x80\x80x", "an overlong 3-byte form"},
        {"\xed\xa0\x80x", "a UTF-16 surrogate"},
        {"\xf4\x90\x80\x80", "past U+10FFFF"},
        {"\xf5\x80\x80\x80", "a byte never in UTF-8"},
        {"xx\xe2\x82", "cut short at the end"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        build();
        pack();
        patch("HOST", bad[i].bytes);
        print_message("case: %s\n", bad[i].why);
        assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(msg, "metadata.hostname is not valid UTF-8"));
    }
    build();
    pack();
    patch("OWNR", "\xff\xfe\xfd\xfc");
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "owner is not valid UTF-8 (at byte 6)");
    build();
    pack();
    patch("NAME", "\xe2\x9c\x93x"); /* valid */
    assert_int_equal(check(), FERRY_OK);
}

static void test_unknown_enum_is_refused_with_the_path(void **state)
{
    (void)state;
    build();
    devices[1].kind = (Ferry__V1__DeviceKind)9;
    pack();
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "metadata.descriptors[1].device.kind has the value 9, which "
                             "ferry.v1.DeviceKind does not define");

    build();
    md.kind = (Ferry__V1__OperationKind)-1; /* ten bytes on the wire */
    pack();
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.kind has the value -1"));

    /* UNSPECIFIED is defined: whether it is allowed is the handler's call. */
    build();
    devices[0].kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_UNSPECIFIED;
    pack();
    assert_int_equal(check(), FERRY_OK);
}

/* A field this descriptor does not know (a newer client's) is skipped, even
 * when its bytes would not pass as a string. */
static void test_unknown_field_is_skipped(void **state)
{
    (void)state;
    build();
    pack();
    /* field 99, length-delimited: tag varint (99 << 3 | 2) = 0x9a 0x06 */
    const uint8_t extra[] = {0x9a, 0x06, 0x03, 0xff, 0x00, 0xfe, 0xa8, 0x06, 0x09};
    memcpy(packed + packed_len, extra, sizeof(extra));
    packed_len += sizeof(extra);
    assert_int_equal(check(), FERRY_OK);
}

/* At most RPC_WIRE_UNKNOWN_MAX unknown fields: protobuf-c keeps each in an
 * allocation of its own, so many small ones would decode into far more
 * memory than the request's bytes. */
static void test_unknown_fields_are_bounded(void **state)
{
    /* field 101, varint 1: tag (101 << 3 | 0) = 0xa8 0x06 */
    const uint8_t one[] = {0xa8, 0x06, 0x01};
    (void)state;

    build();
    pack();
    for (int i = 0; i < RPC_WIRE_UNKNOWN_MAX; i++) {
        memcpy(packed + packed_len, one, sizeof(one));
        packed_len += sizeof(one);
    }
    assert_int_equal(check(), FERRY_OK);
    memcpy(packed + packed_len, one, sizeof(one));
    packed_len += sizeof(one);
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "fields this server does not know"));
}

/* At most RPC_WIRE_VALUES_MAX strings, bytes and messages in one request:
 * metadata.descriptors as empty messages (two bytes each) past the bound
 * are refused, naming where; a request just under it passes the walk. */
static void test_values_are_bounded(void **state)
{
    size_t n_under = RPC_WIRE_VALUES_MAX - 1; /* the metadata message is one too */
    size_t cap = 16 + 2 * (RPC_WIRE_VALUES_MAX + 1);
    uint8_t *buf = malloc(cap);
    size_t len;
    (void)state;

    assert_non_null(buf);
    for (int over = 0; over < 2; over++) {
        size_t n = n_under + (size_t)over, inner = 2 * n;
        len = 0;
        buf[len++] = 0x12; /* field 2 (metadata), length-delimited */
        len += ferry_pb_put_varint(buf + len, inner);
        for (size_t i = 0; i < n; i++) {
            buf[len++] = 0x22; /* field 4 (descriptors), length-delimited */
            buf[len++] = 0x00; /* an empty Descriptor */
        }
        assert_true(len <= cap);
        msg[0] = '\0';
        assert_int_equal(rpc__wire_check(&ferry__v1__register_request__descriptor, buf, len, msg,
                                         sizeof(msg), NULL),
                         over ? FERRY_ERR_INVALID_ARGUMENT : FERRY_OK);
        if (over) {
            assert_non_null(strstr(msg, "more than"));
            assert_non_null(strstr(msg, "metadata.descriptors["));
        }
    }
    free(buf);
}

/* At most RPC_WIRE_FIELDS_MAX field occurrences, scalars too: a Register
 * of ttl_seconds (field 4, varint 0: "20 00") repeated, which protobuf-c
 * scans occurrence by occurrence into 32-byte records before it keeps the
 * last, is refused past the bound, and as many as the bound pass the walk
 * (audit-s33 H1: a million of them cost 34 MB to decode). Also inside the
 * metadata, naming where. */
static void test_fields_are_bounded(void **state)
{
    size_t cap = 16 + 2 * (RPC_WIRE_FIELDS_MAX + 1);
    uint8_t *buf = malloc(cap);
    (void)state;

    assert_non_null(buf);
    for (int over = 0; over < 2; over++) {
        size_t n = RPC_WIRE_FIELDS_MAX + (size_t)over, len = 0;
        for (size_t i = 0; i < n; i++) {
            buf[len++] = 0x20;
            buf[len++] = 0x00;
        }
        msg[0] = '\0';
        assert_int_equal(rpc__wire_check(&ferry__v1__register_request__descriptor, buf, len, msg,
                                         sizeof(msg), NULL),
                         over ? FERRY_ERR_INVALID_ARGUMENT : FERRY_OK);
        if (over) {
            assert_non_null(strstr(msg, "more than 32768 fields (at top level)"));
        }
    }
    /* metadata (field 2) of version (field 1, "08 00") repeated */
    size_t len = 0, inner = 2 * (size_t)RPC_WIRE_FIELDS_MAX;
    buf[len++] = 0x12;
    len += ferry_pb_put_varint(buf + len, inner);
    for (size_t i = 0; i < inner / 2; i++) {
        buf[len++] = 0x08;
        buf[len++] = 0x00;
    }
    assert_true(len <= cap);
    assert_int_equal(
        rpc__wire_check(&ferry__v1__register_request__descriptor, buf, len, msg, sizeof(msg), NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "more than 32768 fields (at metadata)"));
    free(buf);
}

static void test_truncated_bytes_are_malformed(void **state)
{
    (void)state;
    build();
    pack();
    packed_len -= 3;
    assert_int_equal(check(), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "malformed"));
    assert_true(malformed); /* the encoding: the caller names the method */
}

static void test_utf8_offsets(void **state)
{
    (void)state;
    assert_int_equal(ferry_utf8_invalid_at("", 0), 0);
    assert_int_equal(ferry_utf8_invalid_at("abc", 3), 3);
    assert_int_equal(ferry_utf8_invalid_at("ab\xc3\xa9", 4), 4);
    assert_int_equal(ferry_utf8_invalid_at("ab\xc3", 3), 2);
    assert_int_equal(ferry_utf8_invalid_at("\xef\xbf\xbf", 3), 3); /* U+FFFF */
    assert_int_equal(ferry_utf8_invalid_at("\xf4\x8f\xbf\xbf", 4), 4);
}

/* --- one field's bytes as they came (rpc_field.c) -------------------------- */

/* The metadata field of a packed RegisterRequest is found as the span of
 * its bytes, wherever it stands; packed back after the other fields it
 * makes a request that decodes to the same metadata. */
static void test_field_find_and_pack_with_field(void **state)
{
    uint32_t number = rpc_field_number(&ferry__v1__register_request__descriptor, "metadata");
    uint8_t md_packed[1024];
    size_t md_len;
    const uint8_t *value;
    size_t value_len;
    uint8_t *again;
    size_t again_len;
    Ferry__V1__RegisterRequest *decoded;

    (void)state;
    assert_int_equal(number, 2);
    build();
    md_len = ferry__v1__rdma_metadata__pack(&md, md_packed);
    pack();
    assert_int_equal(rpc_field_find(packed, packed_len, number, &value, &value_len), FERRY_OK);
    assert_int_equal(value_len, md_len);
    assert_memory_equal(value, md_packed, md_len);

    req.metadata = NULL;
    assert_int_equal(rpc_pack_with_field(&req.base, number, md_packed, md_len, &again, &again_len),
                     FERRY_OK);
    assert_int_equal(rpc_field_find(again, again_len, number, &value, &value_len), FERRY_OK);
    assert_int_equal(value_len, md_len);
    assert_memory_equal(value, md_packed, md_len);
    assert_ptr_equal(value + value_len, again + again_len); /* appended last */
    decoded = ferry__v1__register_request__unpack(NULL, again_len, again);
    assert_non_null(decoded);
    assert_non_null(decoded->metadata);
    assert_string_equal(decoded->metadata->hostname, "host-HOST");
    assert_string_equal(decoded->request_id, "id-RQID");
    ferry__v1__register_request__free_unpacked(decoded, NULL);
    free(again);

    /* NULL value: the message alone. */
    assert_int_equal(rpc_pack_with_field(&req.base, number, NULL, 0, &again, &again_len), FERRY_OK);
    assert_int_equal(rpc_field_find(again, again_len, number, &value, &value_len),
                     FERRY_ERR_NOT_FOUND);
    free(again);
}

/* A repeated field has no one span (a decoder merges the occurrences);
 * other wire types, unknown numbers and broken encodings are told apart. */
static void test_field_find_refuses(void **state)
{
    const uint8_t *value;
    size_t value_len;
    /* field 2 twice, length-delimited */
    const uint8_t twice[] = {0x12, 0x01, 0x08, 0x12, 0x01, 0x10};
    /* field 2 as a varint */
    const uint8_t varint[] = {0x10, 0x05};
    /* field 2 says 5 bytes, has 1 */
    const uint8_t cut[] = {0x0a, 0x00, 0x12, 0x05, 0x08};
    /* field 1 (varint), field 15 (fixed64), field 2 */
    const uint8_t mixed[] = {0x08, 0x96, 0x01, 0x79, 1,    2,    3,    4,
                             5,    6,    7,    8,    0x12, 0x02, 0xaa, 0xbb};

    (void)state;
    assert_int_equal(rpc_field_find(twice, sizeof(twice), 2, &value, &value_len),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(rpc_field_find(varint, sizeof(varint), 2, &value, &value_len),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(rpc_field_find(cut, sizeof(cut), 2, &value, &value_len),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(rpc_field_find(mixed, sizeof(mixed), 3, &value, &value_len),
                     FERRY_ERR_NOT_FOUND);
    assert_int_equal(rpc_field_find(mixed, sizeof(mixed), 2, &value, &value_len), FERRY_OK);
    assert_int_equal(value_len, 2);
    assert_ptr_equal(value, mixed + 14);
    assert_int_equal(rpc_field_find(NULL, 0, 2, &value, &value_len), FERRY_ERR_NOT_FOUND);
}

/* The field appended must be one the message leaves free. */
static void test_pack_with_field_misuse(void **state)
{
    uint8_t *out = NULL;
    size_t len = 0;

    (void)state;
    build(); /* metadata set */
    assert_int_equal(rpc_pack_with_field(&req.base, 2, (const uint8_t *)"x", 1, &out, &len),
                     FERRY_ERR_MISUSE);
    /* ttl_seconds (4) is not length-delimited; 99 is no field */
    assert_int_equal(rpc_pack_with_field(&req.base, 4, (const uint8_t *)"x", 1, &out, &len),
                     FERRY_ERR_MISUSE);
    assert_int_equal(rpc_pack_with_field(&req.base, 99, (const uint8_t *)"x", 1, &out, &len),
                     FERRY_ERR_MISUSE);
    assert_null(out);
    assert_int_equal(rpc_field_number(&ferry__v1__register_request__descriptor, "nope"), 0);
}

static void test_msg_pack_repeated(void **state)
{
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__Operation ops[3];
    Ferry__V1__WatchEvent events[3];
    Ferry__V1__WatchEvent *ptrs[3];
    ProtobufCBinaryData values[3];
    const char *ids[3] = {"r-0", "r-1", "r-22"};
    uint8_t whole[1024];
    size_t whole_len;
    rpc_msg_t *m;
    Ferry__V1__WatchResponse *decoded;
    uint32_t number = rpc_field_number(&ferry__v1__watch_response__descriptor, "events");

    (void)state;
    header.revision = 4242;
    header.coordinator = "c";
    resp.header = &header;
    for (int i = 0; i < 3; i++) {
        ferry__v1__operation__init(&ops[i]);
        ops[i].request_id = (char *)ids[i];
        ops[i].state = FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED;
        ferry__v1__watch_event__init(&events[i]);
        events[i].type = FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE;
        events[i].operation = &ops[i];
        ptrs[i] = &events[i];
        values[i].len = ferry__v1__watch_event__get_packed_size(&events[i]);
        values[i].data = malloc(values[i].len);
        ferry__v1__watch_event__pack(&events[i], values[i].data);
    }

    m = rpc_msg_pack_repeated(&resp.base, number, values, 3);
    assert_non_null(m);
    resp.n_events = 3;
    resp.events = ptrs;
    whole_len = ferry__v1__watch_response__pack(&resp, whole);
    assert_int_equal(rpc_msg_size(m), whole_len);
    assert_memory_equal(rpc__msg_bytes(m), whole, whole_len);
    decoded = ferry__v1__watch_response__unpack(NULL, rpc_msg_size(m), rpc__msg_bytes(m));
    assert_non_null(decoded);
    assert_int_equal(decoded->header->revision, 4242);
    assert_int_equal(decoded->n_events, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(decoded->events[i]->operation->request_id, ids[i]);
    }
    ferry__v1__watch_response__free_unpacked(decoded, NULL);
    rpc_msg_unref(m);

    /* None: the message alone. One, out of order: that one. */
    resp.n_events = 0;
    m = rpc_msg_pack_repeated(&resp.base, number, NULL, 0);
    assert_non_null(m);
    decoded = ferry__v1__watch_response__unpack(NULL, rpc_msg_size(m), rpc__msg_bytes(m));
    assert_int_equal(decoded->n_events, 0);
    ferry__v1__watch_response__free_unpacked(decoded, NULL);
    rpc_msg_unref(m);
    m = rpc_msg_pack_repeated(&resp.base, number, &values[2], 1);
    decoded = ferry__v1__watch_response__unpack(NULL, rpc_msg_size(m), rpc__msg_bytes(m));
    assert_int_equal(decoded->n_events, 1);
    assert_string_equal(decoded->events[0]->operation->request_id, "r-22");
    ferry__v1__watch_response__free_unpacked(decoded, NULL);
    rpc_msg_unref(m);

    /* Misuse: a singular field, no such field, a repeated field not empty. */
    assert_null(rpc_msg_pack_repeated(&resp.base, 1, values, 1));
    assert_null(rpc_msg_pack_repeated(&resp.base, 99, values, 1));
    resp.n_events = 1;
    assert_null(rpc_msg_pack_repeated(&resp.base, number, values, 1));
    for (int i = 0; i < 3; i++) {
        free(values[i].data);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_request_passes),
        cmocka_unit_test(test_nul_is_refused_with_the_field),
        cmocka_unit_test(test_invalid_utf8_is_refused_with_the_path),
        cmocka_unit_test(test_unknown_enum_is_refused_with_the_path),
        cmocka_unit_test(test_unknown_field_is_skipped),
        cmocka_unit_test(test_unknown_fields_are_bounded),
        cmocka_unit_test(test_values_are_bounded),
        cmocka_unit_test(test_fields_are_bounded),
        cmocka_unit_test(test_truncated_bytes_are_malformed),
        cmocka_unit_test(test_utf8_offsets),
        cmocka_unit_test(test_field_find_and_pack_with_field),
        cmocka_unit_test(test_field_find_refuses),
        cmocka_unit_test(test_pack_with_field_misuse),
        cmocka_unit_test(test_msg_pack_repeated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
