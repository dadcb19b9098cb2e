/*
 * test_rpc_health.c: grpc.health.v1.Health as every rpc server serves it:
 * Check for the server, an added service and an unknown one; Watch before
 * and after rpc_server_set_serving; Watch through shutdown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rpc_fixture.h"

#define CHECK_PATH "/grpc.health.v1.Health/Check"
#define WATCH_PATH "/grpc.health.v1.Health/Watch"
#define COORD      "ferry.v1.Coordinator"
#define STATUS(x)  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

/* The status Check answers, or -grpc_code on failure. */
static int check(fixture_t *f, const char *service)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    rpc_error_t err;
    int status;

    req.service = (char *)service;
    if (rpc_unary(f->channel, CHECK_PATH, &req.base,
                  &grpc__health__v1__health_check_response__descriptor, 5000,
                  (ProtobufCMessage **)&resp, &err) != FERRY_OK) {
        return -err.grpc_code;
    }
    status = resp->status;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return status;
}

static rpc_stream_t *watch(fixture_t *f, const char *service)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_stream_t *stream = NULL;

    req.service = (char *)service;
    assert_int_equal(rpc_stream_open(f->channel, WATCH_PATH, &req.base,
                                     &grpc__health__v1__health_check_response__descriptor, 20000,
                                     &stream),
                     FERRY_OK);
    return stream;
}

/* The next status on the stream, or -1 when it ended. */
static int next_status(rpc_stream_t *stream)
{
    ProtobufCMessage *msg = NULL;
    int status;

    if (rpc_stream_read(stream, 10000, &msg, NULL) != FERRY_OK || msg == NULL) {
        return -1;
    }
    status = ((Grpc__Health__V1__HealthCheckResponse *)msg)->status;
    protobuf_c_message_free_unpacked(msg, NULL);
    return status;
}

static void test_check(void **state)
{
    fixture_t *f = *state;

    assert_int_equal(check(f, ""), STATUS(SERVING));
    assert_int_equal(check(f, COORD), STATUS(SERVING));
    assert_int_equal(check(f, "no.such.Service"), -5);
    rpc_server_set_serving(f->server, COORD, false);
    assert_int_equal(check(f, COORD), STATUS(NOT_SERVING));
    assert_int_equal(check(f, ""), STATUS(SERVING));
    rpc_server_set_serving(f->server, "", false);
    assert_int_equal(check(f, ""), STATUS(NOT_SERVING));
    rpc_server_set_serving(f->server, COORD, true);
    assert_int_equal(check(f, COORD), STATUS(SERVING));
}

static void test_check_not_found_message(void **state)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    fixture_t *f = *state;
    rpc_error_t err;

    req.service = "no.such.Service";
    assert_int_equal(rpc_unary(f->channel, CHECK_PATH, &req.base,
                               &grpc__health__v1__health_check_response__descriptor, 5000, &resp,
                               &err),
                     FERRY_ERR_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_non_null(strstr(err.message, "no.such.Service"));
}

static void test_watch_sees_changes(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *stream = watch(f, COORD);
    ProtobufCMessage *msg;

    assert_int_equal(next_status(stream), STATUS(SERVING));
    /* Nothing else until something changes. */
    assert_int_equal(rpc_stream_read(stream, 100, &msg, NULL), FERRY_ERR_TIMED_OUT);
    rpc_server_set_serving(f->server, COORD, false);
    assert_int_equal(next_status(stream), STATUS(NOT_SERVING));
    /* Setting the same status again says nothing. */
    rpc_server_set_serving(f->server, COORD, false);
    rpc_server_set_serving(f->server, COORD, true);
    assert_int_equal(next_status(stream), STATUS(SERVING));
    rpc_stream_destroy(stream);
}

static void test_watch_unknown_service(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *stream = watch(f, "later.Service");

    assert_int_equal(next_status(stream), STATUS(SERVICE_UNKNOWN));
    rpc_server_set_serving(f->server, "later.Service", true);
    assert_int_equal(next_status(stream), STATUS(SERVING));
    assert_int_equal(check(f, "later.Service"), STATUS(SERVING));
    rpc_stream_destroy(stream);
}

static void test_watch_through_shutdown(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *stream = watch(f, "");
    ProtobufCMessage *msg = NULL;
    rpc_error_t err;

    assert_int_equal(next_status(stream), STATUS(SERVING));
    rpc_server_shutdown(f->server, 5000);
    assert_int_equal(next_status(stream), STATUS(NOT_SERVING));
    assert_int_equal(rpc_stream_read(stream, 10000, &msg, &err), FERRY_ERR_UNAVAILABLE);
    assert_null(msg);
    assert_int_equal(err.grpc_code, 14);
    rpc_stream_destroy(stream);
}

static void test_many_watchers_cancelled(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *streams[8];

    for (int i = 0; i < 8; i++) {
        streams[i] = watch(f, COORD);
        assert_int_equal(next_status(streams[i]), STATUS(SERVING));
    }
    for (int i = 0; i < 8; i += 2) {
        rpc_stream_destroy(streams[i]);
    }
    rpc_server_set_serving(f->server, COORD, false);
    for (int i = 1; i < 8; i += 2) {
        assert_int_equal(next_status(streams[i]), STATUS(NOT_SERVING));
        rpc_stream_destroy(streams[i]);
    }
}

/* Watch streams are bounded (the fixture's server: FIXTURE_HEALTH_WATCHES):
 * one more ends RESOURCE_EXHAUSTED, saying so, and holds nothing; once one
 * is closed (its cancel reaches the server), a new one is served again.
 * Check is not bounded. */
static void test_watchers_bounded(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *streams[FIXTURE_HEALTH_WATCHES], *extra;
    ProtobufCMessage *msg = NULL;
    rpc_error_t err;
    long long deadline;
    int status;

    for (int i = 0; i < FIXTURE_HEALTH_WATCHES; i++) {
        streams[i] = watch(f, COORD);
        assert_int_equal(next_status(streams[i]), STATUS(SERVING));
    }
    extra = watch(f, COORD);
    assert_int_equal(rpc_stream_read(extra, 10000, &msg, &err), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_null(msg);
    assert_int_equal(err.grpc_code, 8);
    assert_non_null(strstr(err.message, "Health.Watch: 12 streams are open"));
    rpc_stream_destroy(extra);
    assert_int_equal(check(f, COORD), STATUS(SERVING));

    rpc_stream_destroy(streams[0]);
    deadline = fixture_now_ms() + 10000;
    do { /* the cancel reaches the server in its own time */
        extra = watch(f, COORD);
        status = next_status(extra);
        if (status != STATUS(SERVING)) {
            rpc_stream_destroy(extra);
        }
    } while (status != STATUS(SERVING) && fixture_now_ms() < deadline);
    assert_int_equal(status, STATUS(SERVING));
    streams[0] = extra;
    rpc_server_set_serving(f->server, COORD, false);
    for (int i = 0; i < FIXTURE_HEALTH_WATCHES; i++) {
        assert_int_equal(next_status(streams[i]), STATUS(NOT_SERVING));
        rpc_stream_destroy(streams[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_check, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_check_not_found_message, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_watch_sees_changes, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_watch_unknown_service, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_watch_through_shutdown, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_many_watchers_cancelled, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_watchers_bounded, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
