/*
 * test_coordinator_faults.c: the coordinator across restarts, replicas and
 * etcd outages, with real processes: a restart loses nothing; two replicas
 * over one etcd serve each other's operations; etcd down means UNAVAILABLE
 * for writes (reads of known records still answer from the view) and
 * NOT_SERVING, and etcd back means service again without a restart;
 * SIGTERM ends open streams with a status and exits 0; without --etcd the
 * coordinator runs (and stops) a private etcd.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "coord_harness.h"

#define TOKEN "token-0123456789abcdef"

#define SERVING     1
#define NOT_SERVING 2

static ferry_status_t reg(rpc_channel_t *chan, const char *id, rpc_error_t *err)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    req.ttl_seconds = 60;
    req.metadata = test_coord_metadata(FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE);
    status = test_coord_call(chan, "Register", &req.base, &ferry__v1__register_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__register_response__free_unpacked(resp, NULL);
    }
    return status;
}

static ferry_status_t lookup(rpc_channel_t *chan, const char *id, rpc_error_t *err)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__LookupResponse *resp = NULL;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    status = test_coord_call(chan, "Lookup", &req.base, &ferry__v1__lookup_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        assert_string_equal(resp->operation->request_id, id);
        assert_non_null(resp->operation->metadata);
        ferry__v1__lookup_response__free_unpacked(resp, NULL);
    }
    return status;
}

static void test_restart_loses_nothing(void **state)
{
    test_etcd_t etcd;
    test_coord_t c;
    rpc_channel_t *chan;
    rpc_error_t err;
    (void)state;

    assert_int_equal(test_etcd_start(&etcd, NULL), 0);
    assert_int_equal(test_coord_start(&c, etcd.endpoint, "r1", 5), 0);
    chan = test_coord_channel(&c);
    assert_int_equal(reg(chan, "keep-1", &err), FERRY_OK);
    rpc_channel_destroy(chan);

    assert_int_equal(test_coord_stop(&c), 0);
    assert_int_equal(test_coord_restart(&c), 0);
    chan = test_coord_channel(&c);
    assert_int_equal(lookup(chan, "keep-1", &err), FERRY_OK);
    assert_int_equal(reg(chan, "keep-1", &err), FERRY_ERR_ALREADY_EXISTS);
    rpc_channel_destroy(chan);
    assert_int_equal(test_coord_stop(&c), 0);
    test_coord_cleanup(&c);
    test_etcd_stop(&etcd);
}

static bool stream_has_put(rpc_stream_t *stream, const char *id, int timeout_ms)
{
    long long deadline = test_now_ms() + timeout_ms;
    while (test_now_ms() < deadline) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_error_t err;
        bool hit = false;
        ferry_status_t status =
            rpc_stream_read(stream, deadline - test_now_ms(), (ProtobufCMessage **)&msg, &err);
        if (status == FERRY_ERR_TIMED_OUT && err.grpc_code == 0) {
            continue;
        }
        if (status != FERRY_OK || msg == NULL) {
            return false;
        }
        for (size_t i = 0; i < msg->n_events; i++) {
            hit = hit || strcmp(msg->events[i]->operation->request_id, id) == 0;
        }
        ferry__v1__watch_response__free_unpacked(msg, NULL);
        if (hit) {
            return true;
        }
    }
    return false;
}

static rpc_stream_t *watch_prefix(rpc_channel_t *chan, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *msg = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err;

    req.request_id_prefix = (char *)prefix;
    assert_int_equal(rpc_stream_open(chan, "/ferry.v1.Coordinator/Watch", &req.base,
                                     &ferry__v1__watch_response__descriptor, 60000, &stream),
                     FERRY_OK);
    assert_int_equal(rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err), FERRY_OK);
    assert_true(msg->created);
    ferry__v1__watch_response__free_unpacked(msg, NULL);
    return stream;
}

static void test_two_replicas(void **state)
{
    test_etcd_t etcd;
    test_coord_t a, b;
    rpc_channel_t *ca, *cb;
    rpc_stream_t *stream;
    rpc_error_t err;
    (void)state;

    assert_int_equal(test_etcd_start(&etcd, NULL), 0);
    assert_int_equal(test_coord_start(&a, etcd.endpoint, "a", 5), 0);
    assert_int_equal(test_coord_start(&b, etcd.endpoint, "b", 5), 0);
    ca = test_coord_channel(&a);
    cb = test_coord_channel(&b);
    stream = watch_prefix(cb, "*");

    assert_int_equal(reg(ca, "rep-1", &err), FERRY_OK);
    assert_true(stream_has_put(stream, "rep-1", 10000));
    assert_int_equal(lookup(cb, "rep-1", &err), FERRY_OK);
    /* The ID is taken on both. */
    assert_int_equal(reg(cb, "rep-1", &err), FERRY_ERR_ALREADY_EXISTS);

    rpc_stream_destroy(stream);
    rpc_channel_destroy(ca);
    rpc_channel_destroy(cb);
    assert_int_equal(test_coord_stop(&a), 0);
    assert_int_equal(test_coord_stop(&b), 0);
    test_coord_cleanup(&a);
    test_coord_cleanup(&b);
    test_etcd_stop(&etcd);
}

/* Get on `chan`, from etcd when linearizable: the state, or -1 (err set). */
static int get_state(rpc_channel_t *chan, const char *id, bool linearizable, rpc_error_t *err)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    int state;

    req.request_id = (char *)id;
    req.linearizable = linearizable;
    if (test_coord_call(chan, "Get", &req.base, &ferry__v1__get_response__descriptor,
                        (ProtobufCMessage **)&resp, err) != FERRY_OK) {
        return -1;
    }
    state = (int)resp->operation->state;
    ferry__v1__get_response__free_unpacked(resp, NULL);
    return state;
}

static void call_ok(rpc_channel_t *chan, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc)
{
    ProtobufCMessage *resp = NULL;
    rpc_error_t err;

    assert_int_equal(test_coord_call(chan, method, req, resp_desc, &resp, &err), FERRY_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* Right after a change acknowledged by replica A, a linearizable Get or
 * Lookup on replica B sees it (a plain one may not: B's view lags by its
 * watch). Claim and Release are the changes the issue saw go stale. */
static void test_linearizable_read_across_replicas(void **state)
{
    enum { ROUNDS = 40 };
    test_etcd_t etcd;
    test_coord_t a, b;
    rpc_channel_t *ca, *cb;
    rpc_error_t err;
    char id[32];
    (void)state;

    assert_int_equal(test_etcd_start(&etcd, NULL), 0);
    assert_int_equal(test_coord_start(&a, etcd.endpoint, "la", 30), 0);
    assert_int_equal(test_coord_start(&b, etcd.endpoint, "lb", 30), 0);
    ca = test_coord_channel(&a);
    cb = test_coord_channel(&b);
    for (int i = 0; i < ROUNDS; i++) {
        Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;
        Ferry__V1__CancelRequest cancel = FERRY__V1__CANCEL_REQUEST__INIT;
        Ferry__V1__ReleaseRequest release = FERRY__V1__RELEASE_REQUEST__INIT;
        Ferry__V1__LookupRequest look = FERRY__V1__LOOKUP_REQUEST__INIT;
        Ferry__V1__LookupResponse *looked = NULL;

        snprintf(id, sizeof(id), "lin-%d", i);
        assert_int_equal(reg(ca, id, &err), FERRY_OK);
        /* B has seen the registration before the change under test. */
        assert_int_equal(get_state(cb, id, true, &err),
                         FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
        claim.request_id = cancel.request_id = release.request_id = look.request_id = id;
        claim.access_token = cancel.access_token = release.access_token = look.access_token = TOKEN;
        call_ok(ca, "Claim", &claim.base, &ferry__v1__claim_response__descriptor);
        assert_int_equal(get_state(cb, id, true, &err),
                         FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
        look.linearizable = true;
        assert_int_equal(test_coord_call(cb, "Lookup", &look.base,
                                         &ferry__v1__lookup_response__descriptor,
                                         (ProtobufCMessage **)&looked, &err),
                         FERRY_OK);
        assert_int_equal(looked->operation->state,
                         FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
        assert_non_null(looked->operation->metadata);
        ferry__v1__lookup_response__free_unpacked(looked, NULL);

        call_ok(ca, "Cancel", &cancel.base, &ferry__v1__cancel_response__descriptor);
        call_ok(ca, "Release", &release.base, &ferry__v1__release_response__descriptor);
        assert_int_equal(get_state(cb, id, true, &err), -1);
        assert_int_equal(err.grpc_code, 5);
    }
    rpc_channel_destroy(ca);
    rpc_channel_destroy(cb);
    assert_int_equal(test_coord_stop(&a), 0);
    assert_int_equal(test_coord_stop(&b), 0);
    test_coord_cleanup(&a);
    test_coord_cleanup(&b);
    test_etcd_stop(&etcd);
}

typedef struct {
    rpc_channel_t *chan;
    int want;
} health_wait_t;

static bool health_is(void *arg)
{
    health_wait_t *h = arg;
    rpc_error_t err;
    return test_coord_health(h->chan, "", &err) == h->want;
}

static void test_etcd_outage(void **state)
{
    test_etcd_t etcd;
    test_coord_t c;
    rpc_channel_t *chan;
    rpc_error_t err;
    health_wait_t h;
    (void)state;

    assert_int_equal(test_etcd_start(&etcd, NULL), 0);
    assert_int_equal(test_coord_start(&c, etcd.endpoint, "o1", 5), 0);
    chan = test_coord_channel(&c);
    h = (health_wait_t){.chan = chan, .want = SERVING};
    assert_true(test_wait_for(health_is, &h, 5000));
    assert_int_equal(reg(chan, "before-1", &err), FERRY_OK);

    test_etcd_down(&etcd);
    h.want = NOT_SERVING;
    assert_true(test_wait_for(health_is, &h, 10000));
    assert_int_equal(reg(chan, "during-1", &err), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(err.grpc_code, 14);
    /* Refused unsent while health says NOT_SERVING, saying why. */
    assert_non_null(strstr(err.message, "etcd cannot commit"));
    /* Any client reads the message: it says what failed, not where etcd
     * lives; the server's log has the detail. */
    assert_null(strstr(err.message, "127.0.0.1"));
    assert_null(strstr(err.message, "http"));
    assert_true(test_coord_log_contains(&c, etcd.endpoint));
    /* A record the replica knows is served from its view while etcd is
     * away (nothing newer can be read); one it does not know needs etcd. */
    assert_int_equal(lookup(chan, "before-1", &err), FERRY_OK);
    assert_int_equal(lookup(chan, "never-registered", &err), FERRY_ERR_UNAVAILABLE);
    assert_null(strstr(err.message, "127.0.0.1"));

    assert_int_equal(test_etcd_up(&etcd), 0);
    h.want = SERVING;
    assert_true(test_wait_for(health_is, &h, 15000));
    assert_int_equal(lookup(chan, "before-1", &err), FERRY_OK);
    assert_int_equal(reg(chan, "after-1", &err), FERRY_OK);
    assert_int_equal(lookup(chan, "after-1", &err), FERRY_OK);
    assert_int_equal(lookup(chan, "during-1", &err), FERRY_ERR_NOT_FOUND);

    rpc_channel_destroy(chan);
    assert_int_equal(test_coord_stop(&c), 0);
    test_coord_cleanup(&c);
    test_etcd_stop(&etcd);
}

static void test_sigterm_ends_streams_and_exits_zero(void **state)
{
    test_etcd_t etcd;
    test_coord_t c;
    rpc_channel_t *chan;
    rpc_stream_t *stream;
    Ferry__V1__WatchResponse *msg = NULL;
    rpc_error_t err;
    ferry_status_t status;
    int wstatus;
    (void)state;

    assert_int_equal(test_etcd_start(&etcd, NULL), 0);
    assert_int_equal(test_coord_start(&c, etcd.endpoint, "t1", 5), 0);
    chan = test_coord_channel(&c);
    stream = watch_prefix(chan, "*");

    kill(c.proc.pid, SIGTERM);
    status = rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err);
    assert_int_equal(status, FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.message, "shutting down"));
    assert_true(test_proc_wait(&c.proc, 10000));
    wstatus = c.proc.status;
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
    assert_true(test_coord_log_contains(&c, "stopped"));

    rpc_stream_destroy(stream);
    rpc_channel_destroy(chan);
    test_coord_cleanup(&c);
    test_etcd_stop(&etcd);
}

static void test_private_etcd(void **state)
{
    test_coord_t c;
    rpc_channel_t *chan;
    rpc_error_t err;
    (void)state;

    assert_int_equal(test_coord_start(&c, NULL, "p1", 5), 0);
    assert_true(test_coord_log_contains(&c, "started a private etcd at unix://"));
    chan = test_coord_channel(&c);
    assert_int_equal(reg(chan, "private-1", &err), FERRY_OK);
    rpc_channel_destroy(chan);
    assert_int_equal(test_coord_stop(&c), 0);
    assert_true(test_coord_log_contains(&c, "private etcd stopped"));

    /* Its data survives: a new coordinator on the same state finds it. */
    assert_int_equal(test_coord_restart(&c), 0);
    chan = test_coord_channel(&c);
    assert_int_equal(lookup(chan, "private-1", &err), FERRY_OK);
    rpc_channel_destroy(chan);
    assert_int_equal(test_coord_stop(&c), 0);
    test_coord_cleanup(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_loses_nothing),
        cmocka_unit_test(test_two_replicas),
        cmocka_unit_test(test_linearizable_read_across_replicas),
        cmocka_unit_test(test_etcd_outage),
        cmocka_unit_test(test_sigterm_ends_streams_and_exits_zero),
        cmocka_unit_test(test_private_etcd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
