/*
 * test_metadata_bytes.c: metadata stays bytes (issue 10). The RdmaMetadata
 * a passive worker registers is stored in etcd and handed to the writer
 * exactly as sent, never decoded and packed again: against a real etcd
 * (read directly, to see what is stored) and a real ferry-coordinator.
 *
 * The metadata sent is one protobuf-c would never pack (a field out of
 * order and a field the schema does not know), so a coordinator that
 * packed it again would change it:
 *   - etcd holds exactly those bytes, and Lookup and Claim answer them;
 *   - after Claim and Complete (and Cancel) the record still holds them;
 *   - a Register whose metadata field occurs twice is refused
 *     INVALID_ARGUMENT naming metadata, and nothing is stored;
 *   - Get and Complete still show no metadata.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "coord_harness.h"
#include "coordinator/etcd/etcd.h"

#define TOKEN      "token-0123456789abcdef"
#define TTL        5
#define PATH(m)    "/ferry.v1.Coordinator/" m
#define KIND_WRITE FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE

static test_etcd_t etcd;
static test_coord_t coord;
static rpc_channel_t *chan;
static etcd_client_t *store;

/* The metadata as sent, and as protobuf-c would pack it. */
static uint8_t md_sent[1024], md_canonical[1024];
static size_t md_sent_len, md_canonical_len;

static int setup(void **state)
{
    etcd_params_t params = {.timeout_ms = 10000};

    (void)state;
    if (test_etcd_start(&etcd, NULL) != 0 ||
        test_coord_start(&coord, etcd.endpoint, "bytes", TTL) != 0) {
        return -1;
    }
    chan = test_coord_channel(&coord);
    params.endpoints = etcd.endpoint;
    return chan != NULL && etcd_client_create(&params, &store) == FERRY_OK ? 0 : -1;
}

/* The coordinator that served the whole suite exits 0 after SIGTERM (not a
 * crash, a hang it was killed for, or under ASan a leak at exit). cmocka
 * 1.1.5 prints a failed group teardown but does not count it, so main()
 * adds this to the result; the cleanup runs either way. */
static bool coord_exit_bad;

static int teardown(void **state)
{
    (void)state;
    etcd_client_destroy(store);
    rpc_channel_destroy(chan);
    coord_exit_bad = !test_coord_stop_clean(&coord);
    test_coord_cleanup(&coord);
    test_etcd_stop(&etcd);
    return coord_exit_bad ? -1 : 0;
}

/* Valid metadata in an order protobuf-c never writes: hostname (field 7)
 * first, then the rest, then field 100 (unknown to the schema; skipped by
 * every check, as for any newer client's field). md_canonical is the same
 * metadata decoded and packed again; they must differ for the test to
 * mean anything. */
static void build_metadata(void)
{
    static const char host[] = "host-in-front";
    Ferry__V1__RdmaMetadata *md = test_coord_metadata(KIND_WRITE);
    Ferry__V1__RdmaMetadata *decoded;
    size_t n = 0;

    md->worker_name = "bytes-worker";
    md->hostname = "";
    md_sent[n++] = 7 << 3 | 2;
    md_sent[n++] = sizeof(host) - 1;
    memcpy(md_sent + n, host, sizeof(host) - 1);
    n += sizeof(host) - 1;
    assert_true(ferry__v1__rdma_metadata__get_packed_size(md) + n + 3 < sizeof(md_sent));
    n += ferry__v1__rdma_metadata__pack(md, md_sent + n);
    md_sent[n++] = 0xa0; /* field 100, varint: tag 800 */
    md_sent[n++] = 0x06;
    md_sent[n++] = 42;
    md_sent_len = n;

    decoded = ferry__v1__rdma_metadata__unpack(NULL, md_sent_len, md_sent);
    assert_non_null(decoded);
    assert_string_equal(decoded->hostname, host);
    md_canonical_len = ferry__v1__rdma_metadata__pack(decoded, md_canonical);
    ferry__v1__rdma_metadata__free_unpacked(decoded, NULL);
    assert_true(md_canonical_len != md_sent_len || memcmp(md_canonical, md_sent, md_sent_len) != 0);
}

/* Register with `md` as the metadata field's bytes, `times` times over. */
static ferry_status_t register_bytes(const char *id, const uint8_t *md, size_t md_len, int times,
                                     rpc_error_t *err)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    uint32_t number = rpc_field_number(&ferry__v1__register_request__descriptor, "metadata");
    uint8_t *once = NULL, *packed;
    size_t once_len = 0, len, field_len;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    req.owner = "bytes-test";
    assert_int_equal(rpc_pack_with_field(&req.base, number, md, md_len, &once, &once_len),
                     FERRY_OK);
    /* The field is what rpc_pack_with_field appended after the message. */
    field_len = once_len - ferry__v1__register_request__get_packed_size(&req);
    packed = malloc(once_len + (size_t)times * field_len);
    assert_non_null(packed);
    memcpy(packed, once, once_len);
    len = once_len;
    for (int i = 1; i < times; i++) {
        memcpy(packed + len, once + once_len - field_len, field_len);
        len += field_len;
    }
    status = rpc_unary_packed(chan, PATH("Register"), packed, len,
                              &ferry__v1__register_response__descriptor, 10000,
                              (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__register_response__free_unpacked(resp, NULL);
    }
    free(packed);
    free(once);
    return status;
}

/* Asserts that the encoded Operation op[op_len] carries exactly md_sent as
 * its metadata. */
static void assert_operation_has_sent_bytes(const uint8_t *op, size_t op_len)
{
    const uint8_t *md;
    size_t md_len;

    assert_int_equal(rpc_field_find(op, op_len,
                                    rpc_field_number(&ferry__v1__operation__descriptor, "metadata"),
                                    &md, &md_len),
                     FERRY_OK);
    assert_int_equal(md_len, md_sent_len);
    assert_memory_equal(md, md_sent, md_sent_len);
}

/* The record as etcd holds it, read directly. */
static void assert_stored_bytes(const char *id)
{
    etcd_range_t range = {0};
    char key[256];

    snprintf(key, sizeof(key), "/ferry/ops/%s", id);
    assert_int_equal(etcd_get(store, key, strlen(key), NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_operation_has_sent_bytes(range.kvs[0].value, range.kvs[0].value_len);
    etcd_range_free(&range);
}

/* Calls `method` with `req` and asserts that the answer's operation (field
 * `operation` of `answer_desc`) carries exactly md_sent. */
static void assert_answer_bytes(const char *path, const ProtobufCMessage *req,
                                const ProtobufCMessageDescriptor *answer_desc)
{
    size_t len = protobuf_c_message_get_packed_size(req), answer_len = 0, op_len;
    uint8_t *packed = malloc(len + 1);
    const uint8_t *op;
    void *answer = NULL;
    rpc_error_t err;

    assert_non_null(packed);
    protobuf_c_message_pack(req, packed);
    assert_int_equal(rpc_unary_raw(chan, path, packed, len, 10000, &answer, &answer_len, &err),
                     FERRY_OK);
    assert_int_equal(rpc_field_find(answer, answer_len, rpc_field_number(answer_desc, "operation"),
                                    &op, &op_len),
                     FERRY_OK);
    assert_operation_has_sent_bytes(op, op_len);
    free(answer);
    free(packed);
}

static void assert_lookup_bytes(const char *id)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    assert_answer_bytes(PATH("Lookup"), &req.base, &ferry__v1__lookup_response__descriptor);
    req.linearizable = true; /* from etcd, not the view */
    assert_answer_bytes(PATH("Lookup"), &req.base, &ferry__v1__lookup_response__descriptor);
}

/* Get shows no metadata, token hash or lease. */
static void assert_get_hides(const char *id, Ferry__V1__OperationState state)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    req.request_id = (char *)id;
    assert_int_equal(test_coord_call(chan, "Get", &req.base, &ferry__v1__get_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_OK);
    assert_int_equal(resp->operation->state, state);
    assert_null(resp->operation->metadata);
    assert_int_equal(resp->operation->token_sha256.len, 0);
    assert_int_equal(resp->operation->lease_id, 0);
    ferry__v1__get_response__free_unpacked(resp, NULL);
}

/* (a) stored and answered as sent. */
static void test_metadata_is_stored_and_answered_as_sent(void **state)
{
    rpc_error_t err;

    (void)state;
    build_metadata();
    assert_int_equal(register_bytes("as-sent", md_sent, md_sent_len, 1, &err), FERRY_OK);
    assert_stored_bytes("as-sent");
    assert_lookup_bytes("as-sent");
    assert_get_hides("as-sent", FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
}

/* (b) every transition writes the record again: the bytes stay. */
static void test_metadata_bytes_survive_transitions(void **state)
{
    Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *claimed = NULL;
    Ferry__V1__CompleteRequest complete = FERRY__V1__COMPLETE_REQUEST__INIT;
    Ferry__V1__CompleteResponse *completed = NULL;
    Ferry__V1__CancelRequest cancel = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *cancelled = NULL;
    rpc_error_t err;

    (void)state;
    build_metadata();
    assert_int_equal(register_bytes("transitions", md_sent, md_sent_len, 1, &err), FERRY_OK);
    claim.request_id = "transitions";
    claim.access_token = TOKEN;
    claim.claimant = "writer";
    claim.kind = KIND_WRITE;
    assert_int_equal(test_coord_call(chan, "Claim", &claim.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claimed, &err),
                     FERRY_OK);
    assert_stored_bytes("transitions");
    assert_lookup_bytes("transitions");

    complete.request_id = "transitions";
    complete.access_token = TOKEN;
    complete.claim_lease_id = claimed->claim_lease_id;
    complete.lease_token = claimed->lease_token;
    assert_int_equal(test_coord_call(chan, "Complete", &complete.base,
                                     &ferry__v1__complete_response__descriptor,
                                     (ProtobufCMessage **)&completed, &err),
                     FERRY_OK);
    assert_int_equal(completed->operation->state,
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);
    assert_null(completed->operation->metadata);
    assert_stored_bytes("transitions");
    assert_lookup_bytes("transitions");
    assert_get_hides("transitions", FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);
    ferry__v1__complete_response__free_unpacked(completed, NULL);
    ferry__v1__claim_response__free_unpacked(claimed, NULL);

    /* Claim's own answer carries the bytes too; then a cancel keeps them. */
    assert_int_equal(register_bytes("cancelled", md_sent, md_sent_len, 1, &err), FERRY_OK);
    claim.request_id = "cancelled";
    assert_answer_bytes(PATH("Claim"), &claim.base, &ferry__v1__claim_response__descriptor);
    cancel.request_id = "cancelled";
    cancel.access_token = TOKEN;
    assert_int_equal(test_coord_call(chan, "Cancel", &cancel.base,
                                     &ferry__v1__cancel_response__descriptor,
                                     (ProtobufCMessage **)&cancelled, &err),
                     FERRY_OK);
    assert_null(cancelled->operation->metadata);
    ferry__v1__cancel_response__free_unpacked(cancelled, NULL);
    assert_stored_bytes("cancelled");
}

/* (c) a metadata field twice would be merged by a decoder: no one span
 * holds what was validated, so it is refused and nothing is stored. */
static void test_repeated_metadata_is_refused(void **state)
{
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    (void)state;
    build_metadata();
    assert_int_equal(register_bytes("twice", md_sent, md_sent_len, 2, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(err.grpc_code, 3); /* INVALID_ARGUMENT */
    assert_non_null(strstr(err.message, "metadata"));
    assert_non_null(strstr(err.message, "more than once"));
    get.request_id = "twice";
    get.linearizable = true;
    assert_int_equal(test_coord_call(chan, "Get", &get.base, &ferry__v1__get_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_NOT_FOUND);
    /* Once is fine. */
    assert_int_equal(register_bytes("twice", md_sent, md_sent_len, 1, &err), FERRY_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metadata_is_stored_and_answered_as_sent),
        cmocka_unit_test(test_metadata_bytes_survive_transitions),
        cmocka_unit_test(test_repeated_metadata_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown) + (coord_exit_bad ? 1 : 0);
}
