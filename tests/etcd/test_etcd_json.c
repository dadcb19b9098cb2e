/*
 * test_etcd_json.c: the JSON and base64 side of the etcd client, without an
 * etcd: replies with omitted defaults, 64-bit numbers beyond 2^53 sent as
 * strings, base64 with every padding length, prefix_end edges.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "coordinator/etcd/etcd_int.h"

static cJSON *parse(const char *text)
{
    cJSON *json = cJSON_Parse(text);
    assert_non_null(json);
    return json;
}

static void test_base64_round_trip(void **state)
{
    (void)state;
    uint8_t bytes[260];
    for (size_t i = 0; i < sizeof(bytes); i++) {
        bytes[i] = (uint8_t)(255 - i); /* 0xff first, 0x00 inside */
    }
    /* Lengths 0..7 cover no padding, "=" and "==" twice over. */
    for (size_t len = 0; len < sizeof(bytes); len += len < 8 ? 1 : 37) {
        char *text = etcd__b64_encode(bytes, len);
        assert_non_null(text);
        assert_int_equal(strlen(text), 4 * ((len + 2) / 3));
        uint8_t *out = NULL;
        size_t out_len = 99;
        assert_int_equal(etcd__b64_decode(text, &out, &out_len), FERRY_OK);
        assert_int_equal(out_len, len);
        assert_memory_equal(out, bytes, len);
        assert_int_equal(out[len], 0);
        free(out);
        free(text);
    }
}

static void test_base64_known_values(void **state)
{
    (void)state;
    char *text = etcd__b64_encode("\x00\xff", 2);
    assert_string_equal(text, "AP8=");
    free(text);
    uint8_t *out;
    size_t len;
    assert_int_equal(etcd__b64_decode("eA==", &out, &len), FERRY_OK);
    assert_int_equal(len, 1);
    assert_int_equal(out[0], 'x');
    free(out);
    assert_int_equal(etcd__b64_decode("eA=", &out, &len), FERRY_ERR_PROTOCOL);
    assert_int_equal(etcd__b64_decode("!!!!", &out, &len), FERRY_ERR_PROTOCOL);
}

static void test_int64_strings(void **state)
{
    (void)state;
    cJSON *json = parse("{\"ID\":\"7587869323525491715\",\"max\":\"9223372036854775807\","
                        "\"neg\":\"-5\",\"num\":42,\"bad\":\"12x\",\"big\":\"9223372036854775808\","
                        "\"obj\":{}}");
    int64_t value;
    assert_int_equal(etcd__json_int64(json, "ID", &value), FERRY_OK);
    assert_true(value == INT64_C(7587869323525491715));
    assert_int_equal(etcd__json_int64(json, "max", &value), FERRY_OK);
    assert_true(value == INT64_MAX);
    assert_int_equal(etcd__json_int64(json, "neg", &value), FERRY_OK);
    assert_true(value == -5);
    assert_int_equal(etcd__json_int64(json, "num", &value), FERRY_OK);
    assert_true(value == 42);
    assert_int_equal(etcd__json_int64(json, "missing", &value), FERRY_OK);
    assert_true(value == 0);
    assert_int_equal(etcd__json_int64(json, "bad", &value), FERRY_ERR_PROTOCOL);
    assert_int_equal(etcd__json_int64(json, "big", &value), FERRY_ERR_PROTOCOL);
    assert_int_equal(etcd__json_int64(json, "obj", &value), FERRY_ERR_PROTOCOL);
    cJSON_Delete(json);

    cJSON *out = cJSON_CreateObject();
    assert_int_equal(etcd__json_add_int64(out, "lease", INT64_C(7587869323525491715)), FERRY_OK);
    assert_string_equal(cJSON_GetObjectItem(out, "lease")->valuestring, "7587869323525491715");
    cJSON_Delete(out);
}

static void test_range_with_kvs(void **state)
{
    (void)state;
    cJSON *json = parse("{\"header\":{\"revision\":\"9007199254740993\"},\"kvs\":["
                        "{\"key\":\"AP8=\",\"create_revision\":\"2\",\"mod_revision\":\"3\","
                        "\"version\":\"2\",\"value\":\"eQ==\",\"lease\":\"7587869323525491715\"},"
                        "{\"key\":\"eTE=\",\"create_revision\":\"6\",\"mod_revision\":\"6\","
                        "\"version\":\"1\"}],\"more\":true,\"count\":\"5\"}");
    etcd_range_t range;
    assert_int_equal(etcd__parse_range(json, &range), FERRY_OK);
    assert_true(range.revision == INT64_C(9007199254740993)); /* 2^53 + 1 */
    assert_int_equal(range.n_kvs, 2);
    assert_true(range.more);
    assert_true(range.count == 5);
    assert_int_equal(range.kvs[0].key_len, 2);
    assert_memory_equal(range.kvs[0].key, "\x00\xff", 2);
    assert_int_equal(range.kvs[0].value_len, 1);
    assert_true(range.kvs[0].lease == INT64_C(7587869323525491715));
    assert_true(range.kvs[0].create_revision == 2 && range.kvs[0].mod_revision == 3);
    assert_true(range.kvs[0].version == 2);
    /* An empty value is left out of the reply: empty, not NULL. */
    assert_int_equal(range.kvs[1].value_len, 0);
    assert_non_null(range.kvs[1].value);
    assert_true(range.kvs[1].lease == 0);
    etcd_range_free(&range);
    assert_int_equal(range.n_kvs, 0);
    cJSON_Delete(json);
}

static void test_range_empty_omits_everything(void **state)
{
    (void)state;
    cJSON *json = parse("{\"header\":{\"cluster_id\":\"1\",\"revision\":\"12\"}}");
    etcd_range_t range;
    assert_int_equal(etcd__parse_range(json, &range), FERRY_OK);
    assert_true(range.revision == 12);
    assert_int_equal(range.n_kvs, 0);
    assert_null(range.kvs);
    assert_false(range.more);
    assert_true(range.count == 0);
    etcd_range_free(&range);
    cJSON_Delete(json);

    json = parse("{\"kvs\":[{\"key\":\"not base64!\"}]}");
    assert_int_equal(etcd__parse_range(json, &range), FERRY_ERR_PROTOCOL);
    cJSON_Delete(json);
}

static void test_txn_failed_has_no_succeeded(void **state)
{
    (void)state;
    cJSON *json =
        parse("{\"header\":{\"revision\":\"3\"},\"responses\":[{\"response_range\":{\"header\":"
              "{\"revision\":\"3\"},\"kvs\":[{\"key\":\"eA==\",\"create_revision\":\"2\","
              "\"mod_revision\":\"3\",\"version\":\"2\",\"value\":\"eQ==\"}],\"count\":\"1\"}}]}");
    etcd_txn_result_t result;
    assert_int_equal(etcd__parse_txn(json, &result), FERRY_OK);
    assert_false(result.succeeded);
    assert_true(result.revision == 3);
    assert_int_equal(result.n_results, 1);
    assert_int_equal(result.results[0].n_kvs, 1);
    assert_memory_equal(result.results[0].kvs[0].value, "y", 1);
    etcd_txn_result_free(&result);
    cJSON_Delete(json);
}

static void test_txn_succeeded_mixed_ops(void **state)
{
    (void)state;
    cJSON *json = parse("{\"header\":{\"revision\":\"5\"},\"succeeded\":true,\"responses\":["
                        "{\"response_put\":{\"header\":{\"revision\":\"5\"}}},"
                        "{\"response_delete_range\":{\"header\":{\"revision\":\"5\"}}},"
                        "{\"response_range\":{\"header\":{\"revision\":\"5\"}}}]}");
    etcd_txn_result_t result;
    assert_int_equal(etcd__parse_txn(json, &result), FERRY_OK);
    assert_true(result.succeeded);
    assert_int_equal(result.n_results, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(result.results[i].n_kvs, 0);
        assert_true(result.results[i].revision == 5);
    }
    etcd_txn_result_free(&result);
    cJSON_Delete(json);

    json = parse("{\"header\":{\"revision\":\"4\"}}"); /* failed, empty failure branch */
    assert_int_equal(etcd__parse_txn(json, &result), FERRY_OK);
    assert_false(result.succeeded);
    assert_int_equal(result.n_results, 0);
    etcd_txn_result_free(&result);
    cJSON_Delete(json);
}

static void test_keepalive_without_ttl_is_not_found(void **state)
{
    (void)state;
    int64_t ttl = -1;
    cJSON *json = parse("{\"result\":{\"header\":{\"revision\":\"1\"},"
                        "\"ID\":\"7587869323525491715\",\"TTL\":\"10\"}}");
    assert_int_equal(etcd__parse_keepalive(json, &ttl), FERRY_OK);
    assert_true(ttl == 10);
    cJSON_Delete(json);
    json = parse("{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"7587869323525491715\"}}");
    assert_int_equal(etcd__parse_keepalive(json, &ttl), FERRY_ERR_NOT_FOUND);
    cJSON_Delete(json);
    json = parse("{\"header\":{}}");
    assert_int_equal(etcd__parse_keepalive(json, &ttl), FERRY_ERR_PROTOCOL);
    cJSON_Delete(json);
}

static void test_events(void **state)
{
    (void)state;
    cJSON *json = parse(
        "{\"events\":[{\"kv\":{\"key\":\"eA==\",\"create_revision\":\"2\",\"mod_revision\":\"2\","
        "\"version\":\"1\",\"value\":\"eQ==\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"eA==\","
        "\"mod_revision\":\"4\"},\"prev_kv\":{\"key\":\"eA==\",\"create_revision\":\"2\","
        "\"mod_revision\":\"3\",\"version\":\"2\",\"value\":\"eQ==\"}}]}");
    const cJSON *events = cJSON_GetObjectItem(json, "events");
    etcd_event_t event;
    assert_int_equal(etcd__parse_event(cJSON_GetArrayItem(events, 0), &event), FERRY_OK);
    assert_int_equal(event.type, ETCD_EVENT_PUT); /* PUT has no "type" */
    assert_int_equal(event.prev_kv.key_len, 0);
    assert_true(event.kv.mod_revision == 2);
    etcd__event_clear(&event);
    assert_int_equal(etcd__parse_event(cJSON_GetArrayItem(events, 1), &event), FERRY_OK);
    assert_int_equal(event.type, ETCD_EVENT_DELETE);
    assert_true(event.kv.mod_revision == 4);
    assert_int_equal(event.kv.value_len, 0);
    assert_int_equal(event.prev_kv.key_len, 1);
    assert_memory_equal(event.prev_kv.value, "y", 1);
    etcd__event_clear(&event);
    cJSON_Delete(json);
}

/* etcd's revisions count up from 1: a negative one, or INT64_MAX (after
 * which "revision + 1", where a watch resumes, would overflow), can only
 * come from a broken or hostile endpoint and is refused. */
static void test_revisions_out_of_range(void **state)
{
    static const char *bad[] = {"\"-1\"", "\"9223372036854775807\""};
    char text[256];
    int64_t revision;
    etcd_range_t range;
    etcd_event_t event;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "{\"header\":{\"revision\":%s}}", bad[i]);
        cJSON *json = parse(text);
        assert_int_equal(etcd__json_revision(json, &revision), FERRY_ERR_PROTOCOL);
        assert_int_equal(etcd__parse_range(json, &range), FERRY_ERR_PROTOCOL);
        cJSON_Delete(json);

        snprintf(text, sizeof(text), "{\"kv\":{\"key\":\"eA==\",\"mod_revision\":%s}}", bad[i]);
        json = parse(text);
        assert_int_equal(etcd__parse_event(json, &event), FERRY_ERR_PROTOCOL);
        cJSON_Delete(json);

        snprintf(text, sizeof(text), "{\"kv\":{\"key\":\"eA==\",\"create_revision\":%s}}", bad[i]);
        json = parse(text);
        assert_int_equal(etcd__parse_event(json, &event), FERRY_ERR_PROTOCOL);
        cJSON_Delete(json);
    }

    cJSON *json = parse("{\"header\":{\"revision\":\"9223372036854775806\"}}");
    assert_int_equal(etcd__json_revision(json, &revision), FERRY_OK);
    assert_true(revision == INT64_MAX - 1);
    cJSON_Delete(json);
}

/* One line of a watch stream each: created, events, canceled, an error. */
static void test_watch_messages(void **state)
{
    etcd_watch_msg_t msg;
    const char *error;
    (void)state;

    cJSON *json = parse("{\"result\":{\"header\":{\"revision\":\"7\"},\"created\":true}}");
    assert_int_equal(etcd__parse_watch_msg(json, &msg, &error), FERRY_OK);
    assert_true(msg.created && !msg.canceled && msg.revision == 7 && msg.n_events == 0);
    etcd__watch_msg_clear(&msg);
    cJSON_Delete(json);

    json = parse("{\"result\":{\"header\":{\"revision\":\"9\"},\"events\":[{\"kv\":{"
                 "\"key\":\"eA==\",\"mod_revision\":\"8\"}},{\"type\":\"DELETE\",\"kv\":{"
                 "\"key\":\"eQ==\",\"mod_revision\":\"9\"}}]}}");
    assert_int_equal(etcd__parse_watch_msg(json, &msg, &error), FERRY_OK);
    assert_int_equal(msg.n_events, 2);
    assert_int_equal(msg.events[1].type, ETCD_EVENT_DELETE);
    assert_true(msg.events[1].kv.mod_revision == 9);
    etcd__watch_msg_clear(&msg);
    cJSON_Delete(json);

    json = parse("{\"result\":{\"events\":[{\"kv\":{\"key\":\"eA==\"}},{\"type\":\"X\"}]}}");
    assert_int_equal(etcd__parse_watch_msg(json, &msg, &error), FERRY_ERR_PROTOCOL);
    assert_null(error);
    cJSON_Delete(json);

    json = parse("{\"result\":{\"canceled\":true,\"compact_revision\":\"3\"}}");
    assert_int_equal(etcd__parse_watch_msg(json, &msg, &error), FERRY_OK);
    assert_true(msg.canceled && msg.compact_revision == 3);
    assert_string_equal(msg.cancel_reason, "");
    etcd__watch_msg_clear(&msg);
    cJSON_Delete(json);

    json = parse("{\"error\":{\"grpc_code\":16,\"message\":\"invalid auth token\"}}");
    assert_int_equal(etcd__parse_watch_msg(json, &msg, &error), FERRY_ERR_UNAUTHENTICATED);
    assert_string_equal(error, "invalid auth token");
    cJSON_Delete(json);
}

/* The same messages as etcd's gRPC Watch sends them (WatchResponse):
 * translated alike, and bad ones (a revision negative or INT64_MAX, an
 * unknown event type, an event without kv, a kv with such a revision) refused
 * FERRY_ERR_PROTOCOL with nothing left to free. */
static void test_grpc_watch_messages(void **state)
{
    Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__KeyValue kv[2] = {ETCDSERVERPB__KEY_VALUE__INIT, ETCDSERVERPB__KEY_VALUE__INIT};
    Etcdserverpb__Event ev[2] = {ETCDSERVERPB__EVENT__INIT, ETCDSERVERPB__EVENT__INIT};
    Etcdserverpb__Event *evs[2] = {&ev[0], &ev[1]};
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    etcd_watch_msg_t msg;
    (void)state;

    header.revision = 7;
    resp.header = &header;
    resp.created = true;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_OK);
    assert_true(msg.created && !msg.canceled && msg.revision == 7 && msg.n_events == 0);
    assert_string_equal(msg.cancel_reason, "");
    etcd__watch_msg_clear(&msg);

    resp.created = false;
    header.revision = 9;
    kv[0].key = (ProtobufCBinaryData){.len = 1, .data = (uint8_t *)"x"};
    kv[0].value = (ProtobufCBinaryData){.len = 2, .data = (uint8_t *)"v\0"};
    kv[0].mod_revision = 8;
    kv[1].key = (ProtobufCBinaryData){.len = 1, .data = (uint8_t *)"y"};
    kv[1].mod_revision = 9;
    ev[0].kv = &kv[0];
    ev[1].kv = &kv[1];
    ev[1].type = ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE;
    resp.n_events = 2;
    resp.events = evs;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_OK);
    assert_int_equal(msg.n_events, 2);
    assert_int_equal(msg.events[0].type, ETCD_EVENT_PUT);
    assert_int_equal(msg.events[0].kv.value_len, 2);
    assert_memory_equal(msg.events[0].kv.value, "v\0", 2);
    assert_int_equal(msg.events[1].type, ETCD_EVENT_DELETE);
    assert_true(msg.events[1].kv.mod_revision == 9);
    assert_int_equal(msg.events[1].prev_kv.key_len, 0);
    etcd__watch_msg_clear(&msg);

    ev[1].type = (Etcdserverpb__Event__EventType)7; /* unknown */
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);
    assert_int_equal(msg.n_events, 0);
    assert_null(msg.events);
    ev[1].type = ETCDSERVERPB__EVENT__EVENT_TYPE__PUT;
    ev[1].kv = NULL;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);
    ev[1].kv = &kv[1];
    kv[1].create_revision = -1;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);
    kv[1].create_revision = 0;
    kv[1].mod_revision = INT64_MAX; /* where the watch would resume: overflow */
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);
    kv[1].mod_revision = 9;
    header.revision = -1;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);
    header.revision = INT64_MAX;
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_ERR_PROTOCOL);

    header.revision = 9;
    resp.n_events = 0;
    resp.events = NULL;
    resp.canceled = true;
    resp.compact_revision = 3;
    resp.cancel_reason = "etcdserver: mvcc: required revision has been compacted";
    assert_int_equal(etcd__grpc_watch_msg(&resp, &msg), FERRY_OK);
    assert_true(msg.canceled && msg.compact_revision == 3);
    assert_string_equal(msg.cancel_reason, resp.cancel_reason);
    etcd__watch_msg_clear(&msg);
}

static void test_error_mapping(void **state)
{
    (void)state;
    assert_int_equal(etcd__error_status(400, 11,
                                        "etcdserver: mvcc: required revision has been "
                                        "compacted"),
                     FERRY_ERR_OUT_OF_RANGE);
    /* "compacted" means compaction only with its code: not in a key's
     * name quoted by another error. */
    assert_int_equal(etcd__error_status(400, 3, "key 'compacted' is invalid"),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(etcd__error_status(400, 11,
                                        "etcdserver: mvcc: required revision is a "
                                        "future revision"),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(etcd__error_status(404, 5, "etcdserver: requested lease not found"),
                     FERRY_ERR_NOT_FOUND);
    assert_int_equal(etcd__error_status(401, 16, "etcdserver: invalid auth token"),
                     FERRY_ERR_UNAUTHENTICATED);
    assert_int_equal(etcd__error_status(400, 3, "etcdserver: user name is empty"),
                     FERRY_ERR_UNAUTHENTICATED);
    assert_int_equal(etcd__error_status(400, 3, "illegal base64 data"), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(etcd__error_status(403, 7, "permission denied"), FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(etcd__error_status(503, 14, "etcdserver: request timed out"),
                     FERRY_ERR_UNAVAILABLE);
    /* etcd's own failures and methods it lacks are named as such, not as a
     * malformed reply. */
    assert_int_equal(etcd__error_status(500, 13, "etcdserver: corrupt cluster"),
                     FERRY_ERR_INTERNAL);
    assert_int_equal(etcd__error_status(500, 2, "etcdserver: unknown"), FERRY_ERR_INTERNAL);
    /* A member that did not finish in time, in etcd 3.4's words for it (a
     * linearizable read with no quorum): tried again, as a timeout is. */
    assert_int_equal(etcd__error_status(500, 2, "context deadline exceeded"),
                     FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__error_status(500, 2, "context canceled"), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__error_status(504, 4, "context deadline exceeded"),
                     FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__error_status(408, 1, "context canceled"), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__error_status(501, 12, "unknown method"), FERRY_ERR_UNIMPLEMENTED);
    assert_int_equal(etcd__error_status(409, 10, "aborted"), FERRY_ERR_ABORTED);
    assert_int_equal(etcd__error_status(200, 0, NULL), FERRY_ERR_PROTOCOL);
}

/* A watch's cancel reason is a gRPC status as etcd's Go server writes it;
 * its code and description map as an error's do (etcd 3.4 and 3.5's
 * reasons below); a reason without one is tried again (UNAVAILABLE). */
static void test_cancel_reasons(void **state)
{
    (void)state;
    assert_int_equal(etcd__cancel_reason_status(
                         "rpc error: code = PermissionDenied desc = etcdserver: permission denied"),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(etcd__cancel_reason_status(
                         "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"),
                     FERRY_ERR_UNAUTHENTICATED);
    /* A token older than a change of users or roles: a new one cures it. */
    assert_int_equal(etcd__cancel_reason_status("rpc error: code = InvalidArgument desc = "
                                                "etcdserver: revision of auth store is old"),
                     FERRY_ERR_UNAUTHENTICATED);
    assert_int_equal(
        etcd__cancel_reason_status(
            "rpc error: code = InvalidArgument desc = etcdserver: key is not provided"),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(etcd__cancel_reason_status("rpc error: code = Unavailable desc = "
                                                "etcdserver: no leader"),
                     FERRY_ERR_UNAVAILABLE);
    /* Names only as a code: not inside the description, not a prefix of
     * another name ("Unauthenticated" is not "Unavailable"). */
    assert_int_equal(
        etcd__cancel_reason_status("rpc error: code = Unknown desc = PermissionDenied by a plugin"),
        FERRY_ERR_INTERNAL);
    assert_int_equal(etcd__cancel_reason_status("rpc error: code = Unauth desc = x"),
                     FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__cancel_reason_status("etcdserver: PermissionDenied"),
                     FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__cancel_reason_status(""), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(etcd__cancel_reason_status(NULL), FERRY_ERR_UNAVAILABLE);
}

static void check_prefix_end(const char *prefix, size_t len, const char *want, size_t want_len)
{
    uint8_t *end = NULL;
    size_t end_len = 0;
    assert_int_equal(etcd_prefix_end(prefix, len, &end, &end_len), FERRY_OK);
    assert_int_equal(end_len, want_len);
    assert_memory_equal(end, want, want_len);
    free(end);
}

static void test_prefix_end(void **state)
{
    (void)state;
    check_prefix_end("/ferry/ops/", 11, "/ferry/ops0", 11);
    check_prefix_end("abc", 3, "abd", 3);
    check_prefix_end("a\xff", 2, "b", 1);
    check_prefix_end("a\xfe\xff\xff", 4, "a\xff", 2);
    check_prefix_end("\xff\xff", 2, "\x00", 1); /* no end: "\0" means all keys after */
    check_prefix_end("", 0, "\x00", 1);
}

/* etcd-io/etcd#15247, fixed in 3.4.28 and 3.5.11: the versions the
 * coordinator warns of (a frozen leader revokes live leases on waking). */
static void test_versions_that_revoke_live_leases(void **state)
{
    static const char *affected[] = {"3.4.23", "3.4.0",  "3.4.27", "3.5.0",
                                     "3.5.10", "3.3.25", "2.3.8"};
    static const char *fixed[] = {"3.4.28", "3.4.35", "3.5.11", "3.5.17", "3.6.0", "4.0.0"};
    static const char *not_versions[] = {"", "3", "3.5", "v3.5.1", "abc", "3.x.1"};
    (void)state;

    for (size_t i = 0; i < sizeof(affected) / sizeof(affected[0]); i++) {
        assert_true(etcd_version_revokes_live_leases(affected[i]));
    }
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        assert_false(etcd_version_revokes_live_leases(fixed[i]));
    }
    for (size_t i = 0; i < sizeof(not_versions) / sizeof(not_versions[0]); i++) {
        assert_false(etcd_version_revokes_live_leases(not_versions[i]));
    }
    assert_false(etcd_version_revokes_live_leases(NULL));
}

/* Writes a self-signed certificate valid from now + from_s to now + to_s
 * (seconds) to a fresh file; returns its path (free it, unlink it). */
static char *cert_file(long from_s, long to_s)
{
    char *path = strdup("/tmp/ferry-cert-XXXXXX");
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *f;
    int fd;

    assert_non_null(path);
    assert_non_null(key);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from_s));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to_s));
    assert_int_equal(X509_set_pubkey(x, key), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                                (const unsigned char *)"ferry test", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(x)), 1);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
    return path;
}

/* A file of `len` bytes of `text` (garbage, empty, a NUL inside). */
static char *text_file(const char *text, size_t len)
{
    char *path = strdup("/tmp/ferry-cert-XXXXXX");
    int fd;

    assert_non_null(path);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

/* Whether etcd_client_check_cert warns for a client with cert_file `path`. */
static bool warns_for(const char *path)
{
    etcd_params_t params = {.endpoints = "https://127.0.0.1:1",
                            .cert_file = path,
                            .key_file = path,
                            .kv_gateway = true};
    etcd_client_t *client = NULL;
    bool warned;

    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    warned = etcd_client_check_cert(client);
    etcd_client_destroy(client);
    return warned;
}

/* The client certificate is named when it has expired or is not valid
 * yet, and never when it is valid, absent, unreadable or not a PEM. */
static void test_client_certificate_times(void **state)
{
    static const char garbage[] = "-----BEGIN CERTIFICATE-----\n\x80\xff\0zz\n-----END";
    char *expired = cert_file(-7200, -3600);
    char *valid = cert_file(-3600, 3600);
    char *later = cert_file(3600, 7200);
    char *junk = text_file(garbage, sizeof(garbage) - 1);
    char *empty = text_file("", 0);
    etcd_params_t none = {.endpoints = "https://127.0.0.1:1", .kv_gateway = true};
    etcd_client_t *client = NULL;

    (void)state;
    assert_true(warns_for(expired));
    assert_true(warns_for(later));
    assert_false(warns_for(valid));
    assert_false(warns_for(junk));
    assert_false(warns_for(empty));
    assert_false(warns_for("/nonexistent/ferry-cert.pem"));
    assert_int_equal(etcd_client_create(&none, &client), FERRY_OK);
    assert_false(etcd_client_check_cert(client));
    etcd_client_destroy(client);
    for (char **p = (char *[]){expired, valid, later, junk, empty, NULL}; *p != NULL; p++) {
        unlink(*p);
        free(*p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_round_trip),
        cmocka_unit_test(test_base64_known_values),
        cmocka_unit_test(test_int64_strings),
        cmocka_unit_test(test_range_with_kvs),
        cmocka_unit_test(test_range_empty_omits_everything),
        cmocka_unit_test(test_txn_failed_has_no_succeeded),
        cmocka_unit_test(test_txn_succeeded_mixed_ops),
        cmocka_unit_test(test_keepalive_without_ttl_is_not_found),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_revisions_out_of_range),
        cmocka_unit_test(test_watch_messages),
        cmocka_unit_test(test_grpc_watch_messages),
        cmocka_unit_test(test_error_mapping),
        cmocka_unit_test(test_cancel_reasons),
        cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_versions_that_revoke_live_leases),
        cmocka_unit_test(test_client_certificate_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
