/*
 * test_validate.c: request validation refuses bad input with a message that
 * names the field, and accepts the limits themselves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "common/pb_wire.h"
#include "validate.h"

static char msg[256];

static void test_request_id(void **state)
{
    char longest[COORD_REQUEST_ID_MAX + 2];
    (void)state;

    assert_int_equal(coord_validate_request_id("request_id", "abc-1.2_3:4", msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(coord_validate_request_id("request_id", "", msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "request_id is required"));
    assert_int_equal(coord_validate_request_id("request_id", "a/b", msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "byte 1"));
    memset(longest, 'x', COORD_REQUEST_ID_MAX);
    longest[COORD_REQUEST_ID_MAX] = '\0';
    assert_int_equal(coord_validate_request_id("request_id", longest, msg, sizeof(msg)), FERRY_OK);
    longest[COORD_REQUEST_ID_MAX] = 'x';
    longest[COORD_REQUEST_ID_MAX + 1] = '\0';
    assert_int_equal(coord_validate_request_id("request_id", longest, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "at most 128"));
}

static void test_token(void **state)
{
    (void)state;
    assert_int_equal(coord_validate_token("access_token", "", 0, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(coord_validate_token("access_token", "", 1, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(coord_validate_token("access_token", "0123456789abcdef", 1, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(coord_validate_token("access_token", "short", 0, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "access_token is 5 bytes"));
    assert_int_equal(coord_validate_token("access_token", "0123456789 abcdef", 0, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
}

static Ferry__V1__Device host = {PROTOBUF_C_MESSAGE_INIT(&ferry__v1__device__descriptor),
                                 FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST, 0};
static Ferry__V1__Device cuda = {PROTOBUF_C_MESSAGE_INIT(&ferry__v1__device__descriptor),
                                 FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA, 0};
static uint8_t bytes[64];

static void fill(Ferry__V1__RdmaMetadata *md, Ferry__V1__Descriptor *d, Ferry__V1__Descriptor **dp,
                 size_t n)
{
    ferry__v1__rdma_metadata__init(md);
    md->kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    md->worker_address.data = bytes;
    md->worker_address.len = 64;
    md->notification_key.data = bytes;
    md->notification_key.len = 16;
    for (size_t i = 0; i < n; i++) {
        ferry__v1__descriptor__init(&d[i]);
        d[i].address = 0x1000;
        d[i].size = 10;
        d[i].device = &host;
        d[i].rkey.data = bytes;
        d[i].rkey.len = 8;
        dp[i] = &d[i];
    }
    md->n_descriptors = n;
    md->descriptors = dp;
}

static void test_metadata(void **state)
{
    Ferry__V1__RdmaMetadata md;
    Ferry__V1__Descriptor d[2];
    Ferry__V1__Descriptor *dp[2];
    (void)state;

    fill(&md, d, dp, 2);
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(coord_validate_metadata("metadata", NULL, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);

    /* The library's rules are the coordinator's (common/md_rules.h): a
     * version newer than this build is refused here too, not only by the
     * writer that would have looked it up. */
    fill(&md, d, dp, 2);
    md.version = 2;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.version 2"));

    fill(&md, d, dp, 2);
    d[1].address = 0;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "metadata.descriptors[1].address is 0 (null pointer)");

    fill(&md, d, dp, 2);
    d[1].device = &cuda;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "descriptors[1].device differs"));

    fill(&md, d, dp, 2);
    md.version = 2; /* no worker of this release reads it */
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "metadata.version 2 is newer than this build (1)");
    md.version = 1;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);

    fill(&md, d, dp, 2);
    md.kind = 0;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.kind"));

    fill(&md, d, dp, 0);
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.descriptors has 0 entries"));

    fill(&md, d, dp, 1);
    md.n_descriptors = COORD_DESCRIPTORS_MAX + 1;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "1025 entries"));

    {
        /* 1024 descriptors with 4 KiB keys: each one valid, the whole too big
         * for an etcd request. */
        static Ferry__V1__Descriptor big[COORD_DESCRIPTORS_MAX];
        static Ferry__V1__Descriptor *bigp[COORD_DESCRIPTORS_MAX];
        static uint8_t key[COORD_RKEY_MAX];
        fill(&md, d, dp, 1);
        for (size_t i = 0; i < COORD_DESCRIPTORS_MAX; i++) {
            big[i] = d[0];
            big[i].rkey.data = key;
            big[i].rkey.len = sizeof(key);
            bigp[i] = &big[i];
        }
        md.n_descriptors = COORD_DESCRIPTORS_MAX;
        md.descriptors = bigp;
        assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                         FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(msg, "bytes packed; at most 1048576"));
    }

    fill(&md, d, dp, 1);
    d[0].rkey.len = 0;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "rkey"));

    /* Names at most 256 bytes, hostname too (audit-s33 N1). */
    {
        char name[COORD_NAME_MAX + 2];
        memset(name, 'h', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        fill(&md, d, dp, 1);
        md.hostname = name;
        assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                         FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(msg, "metadata.hostname is 257 bytes; at most 256"));
        name[COORD_NAME_MAX] = '\0';
        assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
    }

    /* peer_error_handling: unsaid (older metadata), off or on; nothing else. */
    fill(&md, d, dp, 1);
    md.peer_error_handling = (Ferry__V1__PeerErrorHandling)3;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.peer_error_handling: unknown value 3"));
    md.peer_error_handling = FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_UNSPECIFIED;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
    md.peer_error_handling = FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
}

/* A range past the top of the address space is refused at Register, naming
 * the field: a descriptor whose last byte wraps around 2^64, and a staging
 * block whose slots end past it. The last byte at UINT64_MAX is allowed. */
static void test_metadata_wraps(void **state)
{
    Ferry__V1__RdmaMetadata md;
    Ferry__V1__Descriptor d[2];
    Ferry__V1__Descriptor *dp[2];
    Ferry__V1__Staging staging = FERRY__V1__STAGING__INIT;
    (void)state;

    fill(&md, d, dp, 2);
    d[0].address = 0xFFFFFFFFFFFFF000ull;
    d[0].size = 0x2000;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "metadata.descriptors[0].size 8192 at address 0xfffffffffffff000 "
                             "wraps around the address space");
    d[0].size = 0x1000; /* its last byte is the last of the address space */
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
    d[1].address = 2;
    d[1].size = UINT64_MAX;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata.descriptors[1].size 18446744073709551615 at address "
                                "0x2 wraps around"));
    d[1].address = 1;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);

    /* 64 slots of 1 GiB (2^36 bytes) from 2^64 - 2^35: past the top. */
    fill(&md, d, dp, 1);
    d[0].rkey.len = 0;
    staging.address = 0xFFFFFFF800000000ull;
    staging.slots = FERRY_MD_SLOTS_MAX;
    staging.slot_size = FERRY_MD_SLOT_SIZE_MAX;
    staging.rkey.data = bytes;
    staging.rkey.len = 8;
    md.staging = &staging;
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "metadata.staging.slots 64 of slot_size 1073741824 at address "
                             "0xfffffff800000000 wrap around the address space");
    staging.slots = FERRY_MD_SLOTS_MAX / 2; /* ends on the last byte */
    assert_int_equal(coord_validate_metadata("metadata", &md, msg, sizeof(msg)), FERRY_OK);
}

/* The pairing rule (common/md_rules.h), which the coordinator's Claim and
 * libferry both apply: count first, then the first size that differs,
 * local before remote. */
static void test_sizes_pair(void **state)
{
    Ferry__V1__RdmaMetadata md;
    Ferry__V1__Descriptor d[3];
    Ferry__V1__Descriptor *dp[3];
    const uint64_t same[3] = {10, 20, 30}, second[3] = {10, 21, 31};
    (void)state;

    fill(&md, d, dp, 3);
    d[1].size = 20;
    d[2].size = 30;
    assert_int_equal(ferry_md_sizes_pair(&md, same, 3, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(ferry_md_sizes_pair(&md, same, 2, msg, sizeof(msg)), FERRY_ERR_SIZE_MISMATCH);
    assert_string_equal(msg, "descriptor count mismatch: 2 local, 3 remote");
    assert_int_equal(ferry_md_sizes_pair(&md, second, 3, msg, sizeof(msg)),
                     FERRY_ERR_SIZE_MISMATCH);
    assert_string_equal(msg, "descriptor 1: local size 21 != remote size 20");
    assert_int_equal(ferry_md_sizes_pair(&md, NULL, 0, msg, sizeof(msg)), FERRY_ERR_SIZE_MISMATCH);
    assert_string_equal(msg, "descriptor count mismatch: 0 local, 3 remote");
}

/* Unpacks valid metadata with `extra` appended: an unknown field. */
static Ferry__V1__RdmaMetadata *with_unknown_field(const uint8_t *extra, size_t extra_len)
{
    Ferry__V1__RdmaMetadata md;
    Ferry__V1__Descriptor d[1];
    Ferry__V1__Descriptor *dp[1];
    uint8_t packed[512];
    size_t len;

    fill(&md, d, dp, 1);
    len = ferry__v1__rdma_metadata__get_packed_size(&md);
    assert_true(len + extra_len <= sizeof(packed));
    ferry__v1__rdma_metadata__pack(&md, packed);
    memcpy(packed + len, extra, extra_len);
    return ferry__v1__rdma_metadata__unpack(NULL, len + extra_len, packed);
}

/* Found by fuzz_coord_request (fuzz/corpus/fuzz_coord_request/
 * crash-register-unknown-field-0): protobuf-c reads an over-long tag of
 * field number 0 as an unknown field but packs it back as a plain 0 tag,
 * which it then refuses to read. The registry stores the metadata packed,
 * so such a Register stored a record no later call could read. */
static void test_metadata_round_trip(void **state)
{
    static const uint8_t field_zero[] = {0x80, 0x00, 0x01}; /* tag 0 in two bytes, varint 1 */
    static const uint8_t field_99[] = {0x98, 0x06, 0x01};   /* a newer client's field 99 */
    Ferry__V1__RdmaMetadata *md;
    (void)state;

    md = with_unknown_field(field_zero, sizeof(field_zero));
    assert_non_null(md);
    assert_int_equal(coord_validate_metadata("metadata", md, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata has an unknown field that cannot be stored"));
    ferry__v1__rdma_metadata__free_unpacked(md, NULL);

    /* Unknown fields with valid numbers are kept, for newer clients. */
    md = with_unknown_field(field_99, sizeof(field_99));
    assert_non_null(md);
    assert_int_equal(coord_validate_metadata("metadata", md, msg, sizeof(msg)), FERRY_OK);
    ferry__v1__rdma_metadata__free_unpacked(md, NULL);
}

/* Register's metadata as sent: its span, once; twice, absent or too large
 * is refused naming metadata. */
static void test_register_bytes(void **state)
{
    /* request_id "r", metadata {version 1}, owner "o" */
    static const uint8_t once[] = {0x0a, 0x01, 'r', 0x12, 0x02, 0x08, 0x01, 0x2a, 0x01, 'o'};
    static const uint8_t twice[] = {0x12, 0x02, 0x08, 0x01, 0x0a, 0x01, 'r', 0x12, 0x00};
    static const uint8_t none[] = {0x0a, 0x01, 'r'};
    static uint8_t big[COORD_METADATA_MAX + 16];
    const uint8_t *md = NULL;
    size_t md_len = 0, n = 0;
    uint64_t v;
    (void)state;

    assert_int_equal(
        coord_validate_register_bytes(once, sizeof(once), &md, &md_len, msg, sizeof(msg)),
        FERRY_OK);
    assert_ptr_equal(md, once + 5);
    assert_int_equal(md_len, 2);
    assert_int_equal(
        coord_validate_register_bytes(twice, sizeof(twice), &md, &md_len, msg, sizeof(msg)),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata occurs more than once"));
    assert_int_equal(
        coord_validate_register_bytes(none, sizeof(none), &md, &md_len, msg, sizeof(msg)),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata is required"));

    /* One byte over the limit, as sent (its packed size may be less). */
    big[n++] = 0x12;
    for (v = COORD_METADATA_MAX + 1; v >= 0x80; v >>= 7) {
        big[n++] = (uint8_t)(v | 0x80);
    }
    big[n++] = (uint8_t)v;
    assert_true(n + COORD_METADATA_MAX + 1 <= sizeof(big));
    assert_int_equal(coord_validate_register_bytes(big, n + COORD_METADATA_MAX + 1, &md, &md_len,
                                                   msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata is 1048577 bytes as sent"));
}

/* Register's metadata within what decoding it costs (ferry_md_check_packed,
 * audit-s33 H1): one scalar field repeated, which decodes to one value and
 * so passes the decoded checks, is refused past FERRY_MD_FIELDS_MAX
 * occurrences, and so are fields counted at every depth (inside the
 * descriptors); the most an honest metadata holds, 1024 descriptors with
 * every field set, passes. */
static void test_register_bytes_fields(void **state)
{
    static Ferry__V1__Descriptor d[COORD_DESCRIPTORS_MAX];
    static Ferry__V1__Descriptor *dp[COORD_DESCRIPTORS_MAX];
    static uint8_t req[65536]; /* the fields bound's, and an honest 1024 descriptors */
    Ferry__V1__Device gpu = FERRY__V1__DEVICE__INIT;
    Ferry__V1__RdmaMetadata md;
    const uint8_t *span = NULL;
    size_t span_len = 0, n, inner;
    (void)state;

    for (int over = 0; over < 2; over++) {
        inner = 2 * (size_t)(FERRY_MD_FIELDS_MAX + over); /* "08 00": version 0 */
        n = 0;
        req[n++] = 0x12; /* metadata */
        n += ferry_pb_put_varint(req + n, inner);
        for (size_t i = 0; i < inner / 2; i++) {
            req[n++] = 0x08;
            req[n++] = 0x00;
        }
        assert_int_equal(coord_validate_register_bytes(req, n, &span, &span_len, msg, sizeof(msg)),
                         over ? FERRY_ERR_INVALID_ARGUMENT : FERRY_OK);
        if (over) {
            assert_non_null(strstr(msg, "metadata holds more than 16448 fields"));
        }
    }

    /* Inside one descriptor (field 4): address (field 1, "08 00") repeated. */
    inner = 2 * (size_t)FERRY_MD_FIELDS_MAX;
    n = 0;
    req[n++] = 0x12;
    n += ferry_pb_put_varint(req + n, inner + 4);
    req[n++] = 0x22;
    n += ferry_pb_put_varint(req + n, inner);
    for (size_t i = 0; i < inner / 2; i++) {
        req[n++] = 0x08;
        req[n++] = 0x00;
    }
    assert_true(n <= sizeof(req));
    assert_int_equal(coord_validate_register_bytes(req, n, &span, &span_len, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "metadata holds more than 16448 fields"));

    fill(&md, d, dp, COORD_DESCRIPTORS_MAX);
    gpu.kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA;
    gpu.id = 3;
    for (size_t i = 0; i < COORD_DESCRIPTORS_MAX; i++) {
        d[i].device = &gpu;
    }
    md.version = 1;
    md.worker_name = "w";
    md.hostname = "h";
    n = 0;
    req[n++] = 0x12;
    n += ferry_pb_put_varint(req + n, ferry__v1__rdma_metadata__get_packed_size(&md));
    assert_true(n + ferry__v1__rdma_metadata__get_packed_size(&md) <= sizeof(req));
    n += ferry__v1__rdma_metadata__pack(&md, req + n);
    assert_int_equal(coord_validate_register_bytes(req, n, &span, &span_len, msg, sizeof(msg)),
                     FERRY_OK);
}

static void test_ttl(void **state)
{
    (void)state;
    assert_int_equal(coord_validate_ttl("ttl_seconds", 0, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(coord_validate_ttl("ttl_seconds", 3600, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(coord_validate_ttl("ttl_seconds", -1, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(coord_validate_ttl("ttl_seconds", 3601, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "ttl_seconds is 3601"));
}

static ferry_status_t watch(const char *id, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    req.request_id = (char *)id;
    req.request_id_prefix = (char *)prefix;
    msg[0] = '\0';
    return coord_validate_watch(&req, msg, sizeof(msg));
}

/* Watch checks its target as every other RPC checks a request ID. */
static void test_watch(void **state)
{
    (void)state;
    assert_int_equal(watch("op-1", ""), FERRY_OK);
    assert_int_equal(watch("", "op-"), FERRY_OK);
    assert_int_equal(watch("", "*"), FERRY_OK);
    assert_int_equal(watch("", ""), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "exactly one"));
    assert_int_equal(watch("a", "b"), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(watch("a/../b", ""), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "request_id has a character"));
    assert_int_equal(watch("", "../"), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "request_id_prefix"));
    assert_int_equal(watch("", "**"), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(coord_validate_prefix("request_id_prefix", "", msg, sizeof(msg)), FERRY_OK);
}

/* A lease ID the request must carry: 0 is missing ("is required"), a
 * negative one was sent and is refused as negative, naming the field. */
static void test_required_lease_ids(void **state)
{
    Ferry__V1__KeepAliveRequest keepalive = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__CompleteRequest complete = FERRY__V1__COMPLETE_REQUEST__INIT;
    (void)state;

    assert_int_equal(coord_validate_request(&keepalive.base, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "lease_id is required");
    keepalive.lease_id = -5;
    assert_int_equal(coord_validate_request(&keepalive.base, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "lease_id is negative");
    keepalive.lease_id = 5;
    assert_int_equal(coord_validate_request(&keepalive.base, msg, sizeof(msg)), FERRY_OK);

    complete.request_id = "op-1";
    complete.access_token = "0123456789abcdef";
    assert_int_equal(coord_validate_request(&complete.base, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "claim_lease_id is required");
    complete.claim_lease_id = -1;
    assert_int_equal(coord_validate_request(&complete.base, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(msg, "claim_lease_id is negative");
    complete.claim_lease_id = 1;
    assert_int_equal(coord_validate_request(&complete.base, msg, sizeof(msg)), FERRY_OK);

    {
        Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;

        claim.request_id = "op-1";
        claim.access_token = "0123456789abcdef";
        claim.peer_error_handling = (Ferry__V1__PeerErrorHandling)-1;
        assert_int_equal(coord_validate_request(&claim.base, msg, sizeof(msg)),
                         FERRY_ERR_INVALID_ARGUMENT);
        assert_string_equal(msg, "peer_error_handling: unknown value -1");
        claim.peer_error_handling = FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_OFF;
        assert_int_equal(coord_validate_request(&claim.base, msg, sizeof(msg)), FERRY_OK);
    }
}

static ferry_status_t page_token(const char *text, coord_page_token_t *token)
{
    msg[0] = '\0';
    return coord_validate_page_token("page_token", text, token, msg, sizeof(msg));
}

/* A page token is "<revision>@<request_id>"; anything else, and a revision
 * that is not a positive int64 in plain decimal, is refused naming the
 * field, and the output is left alone. */
static void test_page_token(void **state)
{
    static const char *const bad[] = {
        "",
        "op-1",
        "@op-1",
        "7@",
        "0@op-1",
        "07@op-1",
        "-7@op-1",
        "+7@op-1",
        " 7@op-1",
        "7 @op-1",
        "7x@op-1",
        "0x7@op-1",
        "7@@op-1",
        "7@op 1",
        "9223372036854775808@op-1",
        "99999999999999999999999@op-1",
    };
    coord_page_token_t token = {.revision = 42, .after = "untouched"};
    (void)state;

    assert_int_equal(page_token("7@op-1", &token), FERRY_OK);
    assert_int_equal(token.revision, 7);
    assert_string_equal(token.after, "op-1");
    assert_int_equal(page_token("9223372036854775807@a:b.c", &token), FERRY_OK);
    assert_int_equal(token.revision, INT64_MAX);
    assert_string_equal(token.after, "a:b.c");
    token = (coord_page_token_t){.revision = 42, .after = "untouched"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(page_token(bad[i], &token), FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(msg, "page_token"));
        assert_int_equal(token.revision, 42);
        assert_string_equal(token.after, "untouched");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_metadata_wraps),
        cmocka_unit_test(test_metadata_round_trip),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_watch),
        cmocka_unit_test(test_page_token),
        cmocka_unit_test(test_register_bytes),
        cmocka_unit_test(test_register_bytes_fields),
        cmocka_unit_test(test_sizes_pair),
        cmocka_unit_test(test_required_lease_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
